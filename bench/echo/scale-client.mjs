// The client of bench/echo/scale: client.mjs's code for one space, run for many spaces.
//   node scale-client.mjs create URL MODE IDS_DIR PER_SPACE CONC SPACE_INDEX...
//        for each SPACE_INDEX whose IDS_DIR/space-NNNNN.json does not exist yet: a fresh
//        connection and Repo, a space root and PER_SPACE object documents listed in it (as
//        client.mjs create does), waits until the server acknowledged every one (its heads
//        cover ours), then writes the space's document urls to IDS_DIR/space-NNNNN.json and
//        shuts that Repo down. CONC spaces at a time (so at most CONC × (PER_SPACE + 1)
//        documents in flight). Progress on stderr; one JSON line on stdout:
//        {phase, spaces, docs, wall_ms}.
//   node scale-client.mjs fetch URL MODE IDS_FILE
//        a fresh client finds every document of one space (as client.mjs fetch does).
// MODE is `kube` (HALO token, KUBE's storage id) or `js` (the reference server).
import fs from 'node:fs';
import path from 'node:path';
import { Repo } from '@automerge/automerge-repo';
import { WebSocketClientAdapter } from '@automerge/automerge-repo-network-websocket';
import { Identity, connectKube, createSpace, createObject, synced } from '@kube/client';

const [phase, url, mode] = process.argv.slice(2, 5);
const ADMIN_SEED = new Uint8Array(32).fill(7);
const admin = Identity.fromSeed(ADMIN_SEED);
const log = (s) => process.stderr.write(`[scale-client ${process.pid}] ${s}\n`);

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
if (phase === 'create') {
  const [idsDir, perSpace, conc, ...indices] = process.argv.slice(5);
  const n = Number(perSpace);
  const spaceFile = (i) => path.join(idsDir, `space-${String(i).padStart(5, '0')}.json`);
  const todo = indices.map(Number).filter((i) => !fs.existsSync(spaceFile(i)));
  let spaces = 0;
  let docs = 0;
  async function writeSpace(i) {
    const t0 = performance.now();
    const net = await network();
    const repo = new Repo({ network: [net.adapter], sharePolicy: async () => true });
    try {
      const { root } = createSpace(repo, admin, { kubeDid: net.kubeDid });
      const handles = [root];
      for (let k = 0; k < n; k++) {
        handles.push(createObject(repo, root, { type: 'task', props: { title: `task ${i}.${k}`, done: false } }));
      }
      await Promise.all(handles.map((h) => synced(h, net.ack, { timeoutMs: 600_000, pollMs: 1000 })));
      const file = spaceFile(i);
      fs.writeFileSync(`${file}.tmp`, JSON.stringify(handles.map((h) => h.url)));
      fs.renameSync(`${file}.tmp`, file);
      spaces += 1;
      docs += handles.length;
      log(`${mode}: space ${i} acknowledged (${handles.length} documents, ${Math.round(performance.now() - t0)} ms)`);
    } finally {
      await repo.shutdown();
    }
  }
  const queue = [...todo];
  await Promise.all(Array.from({ length: Math.max(1, Number(conc)) }, async () => {
    while (queue.length) await writeSpace(queue.shift());
  }));
  console.log(JSON.stringify({ phase, spaces, docs, wall_ms: Math.round(performance.now() - started) }));
} else {
  const net = await network();
  const repo = new Repo({ network: [net.adapter], sharePolicy: async () => true });
  const urls = JSON.parse(fs.readFileSync(process.argv[5], 'utf8'));
  const docs = await Promise.all(urls.map((u) => repo.find(u).then((h) => h.doc())));
  const missing = docs.filter((d) => !d).length;
  if (missing) throw new Error(`${missing} documents not found`);
  console.log(JSON.stringify({ phase, docs: docs.length, wall_ms: Math.round(performance.now() - started) }));
  await repo.shutdown();
}
process.exit(0);
