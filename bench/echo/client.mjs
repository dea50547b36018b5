// The one client script for both servers.
//   node client.mjs create URL MODE N IDS_FILE   creates a space root and N object documents,
//        waits until the server acknowledged every one (its heads cover ours), writes the
//        document ids to IDS_FILE
//   node client.mjs fetch URL MODE IDS_FILE      a fresh client finds every document
// MODE is `kube` (HALO token, KUBE's storage id) or `js` (the reference server). Prints one
// JSON line: {phase, docs, wall_ms}.
import fs from 'node:fs';
import { Repo } from '@automerge/automerge-repo';
import { WebSocketClientAdapter } from '@automerge/automerge-repo-network-websocket';
import { Identity, connectKube, createSpace, createObject, synced } from '@kube/client';

const [phase, url, mode] = process.argv.slice(2, 5);
const ADMIN_SEED = new Uint8Array(32).fill(7);
const admin = Identity.fromSeed(ADMIN_SEED);

async function network() {
  if (mode === 'kube') {
    const adapter = await connectKube({ url, identity: admin });
    return { adapter, ack: adapter, kubeDid: adapter.kubeDid };
  }
  const adapter = new WebSocketClientAdapter(url.replace(/^https/, 'wss'));
  let storageId;
  adapter.on('peer-candidate', ({ peerMetadata }) => { storageId = peerMetadata?.storageId; });
  return { adapter, ack: { get kubeStorageId() { return storageId; } }, kubeDid: Identity.generate().did };
}

const started = performance.now();
const net = await network();
const repo = new Repo({ network: [net.adapter], sharePolicy: async () => true });
if (phase === 'create') {
  const n = Number(process.argv[5]);
  const idsFile = process.argv[6];
  const { root } = createSpace(repo, admin, { kubeDid: net.kubeDid });
  const handles = [root];
  for (let i = 0; i < n; i++) {
    handles.push(createObject(repo, root, { type: 'task', props: { title: `task ${i}`, done: false } }));
  }
  await Promise.all(handles.map((h) => synced(h, net.ack, { timeoutMs: 300_000, pollMs: 200 })));
  fs.writeFileSync(idsFile, JSON.stringify(handles.map((h) => h.url)));
  console.log(JSON.stringify({ phase, docs: handles.length, wall_ms: Math.round(performance.now() - started) }));
} else {
  const urls = JSON.parse(fs.readFileSync(process.argv[5], 'utf8'));
  const docs = await Promise.all(urls.map((u) => repo.find(u).then((h) => h.doc())));
  const missing = docs.filter((d) => !d).length;
  if (missing) throw new Error(`${missing} documents not found`);
  console.log(JSON.stringify({ phase, docs: docs.length, wall_ms: Math.round(performance.now() - started) }));
}
await repo.shutdown();
process.exit(0);
