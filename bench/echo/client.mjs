// The one client script for both servers.
//   node client.mjs create URL MODE N IDS_FILE   creates a space root and N object documents,
//        waits until the server acknowledged every one (its heads cover ours), writes the
//        document ids to IDS_FILE
//   node client.mjs fetch URL MODE IDS_FILE      a fresh client finds every document
// MODE is `kube` (HALO token, KUBE's storage id) or `js` (the reference server). Prints one
// JSON line: {phase, docs, wall_ms}.
import fs from 'node:fs';
import { connect, writeSpace, fetchAll } from './common.mjs';

const [phase, url, mode] = process.argv.slice(2, 5);
const started = performance.now();
const net = await connect(url, mode);
const { repo } = net;
if (phase === 'create') {
  const urls = await writeSpace(net, Number(process.argv[5]), (i) => `task ${i}`, { timeoutMs: 300_000, pollMs: 200 });
  fs.writeFileSync(process.argv[6], JSON.stringify(urls));
  console.log(JSON.stringify({ phase, docs: urls.length, wall_ms: Math.round(performance.now() - started) }));
} else {
  const docs = await fetchAll(repo, JSON.parse(fs.readFileSync(process.argv[5], 'utf8')));
  console.log(JSON.stringify({ phase, docs, wall_ms: Math.round(performance.now() - started) }));
}
await repo.shutdown();
process.exit(0);
