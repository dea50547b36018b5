// What client.mjs and scale-client.mjs share: the admin identity, the connection to either
// server, writing one space, and fetching documents.
import { Repo } from '@automerge/automerge-repo';
import { WebSocketClientAdapter } from '@automerge/automerge-repo-network-websocket';
import { Identity, connectKube, createSpace, createObject, synced } from '@kube/client';

const ADMIN_SEED = new Uint8Array(32).fill(7);
export const admin = Identity.fromSeed(ADMIN_SEED);

/** A Repo connected to the server at `url`. MODE `kube`: HALO token, KUBE's storage id
 * acknowledges; `js`: the reference server's storage id does. */
export async function connect(url, mode) {
  let net;
  if (mode === 'kube') {
    const adapter = await connectKube({ url, identity: admin });
    net = { adapter, ack: adapter, kubeDid: adapter.kubeDid };
  } else {
    const adapter = new WebSocketClientAdapter(url.replace(/^https/, 'wss'));
    let storageId;
    adapter.on('peer-candidate', ({ peerMetadata }) => { storageId = peerMetadata?.storageId; });
    net = { adapter, ack: { get kubeStorageId() { return storageId; } }, kubeDid: Identity.generate().did };
  }
  return { ...net, repo: new Repo({ network: [net.adapter], sharePolicy: async () => true }) };
}

/** A space root and `n` task documents listed in it, once the server acknowledged every one
 * (its heads cover ours); their urls, the root first. */
export async function writeSpace(net, n, title, wait) {
  const { root } = createSpace(net.repo, admin, { kubeDid: net.kubeDid });
  const handles = [root];
  for (let k = 0; k < n; k++) {
    handles.push(createObject(net.repo, root, { type: 'task', props: { title: title(k), done: false } }));
  }
  await Promise.all(handles.map((h) => synced(h, net.ack, wait)));
  return handles.map((h) => h.url);
}

/** Finds every document of `urls`; throws when one is missing. Returns how many. */
export async function fetchAll(repo, urls) {
  const docs = await Promise.all(urls.map((u) => repo.find(u).then((h) => h.doc())));
  const missing = docs.filter((d) => !d).length;
  if (missing) throw new Error(`${missing} documents not found`);
  return docs.length;
}
