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
import { connect, writeSpace, fetchAll } from './common.mjs';

const [phase, url, mode] = process.argv.slice(2, 5);
const log = (s) => process.stderr.write(`[scale-client ${process.pid}] ${s}\n`);

const started = performance.now();
if (phase === 'create') {
  const [idsDir, perSpace, conc, ...indices] = process.argv.slice(5);
  const n = Number(perSpace);
  const spaceFile = (i) => path.join(idsDir, `space-${String(i).padStart(5, '0')}.json`);
  const todo = indices.map(Number).filter((i) => !fs.existsSync(spaceFile(i)));
  let spaces = 0;
  let docs = 0;
  async function writeOne(i) {
    const t0 = performance.now();
    const net = await connect(url, mode);
    try {
      const urls = await writeSpace(net, n, (k) => `task ${i}.${k}`, { timeoutMs: 600_000, pollMs: 1000 });
      const file = spaceFile(i);
      fs.writeFileSync(`${file}.tmp`, JSON.stringify(urls));
      fs.renameSync(`${file}.tmp`, file);
      spaces += 1;
      docs += urls.length;
      log(`${mode}: space ${i} acknowledged (${urls.length} documents, ${Math.round(performance.now() - t0)} ms)`);
    } finally {
      await net.repo.shutdown();
    }
  }
  const queue = [...todo];
  await Promise.all(Array.from({ length: Math.max(1, Number(conc)) }, async () => {
    while (queue.length) await writeOne(queue.shift());
  }));
  console.log(JSON.stringify({ phase, spaces, docs, wall_ms: Math.round(performance.now() - started) }));
} else {
  const net = await connect(url, mode);
  const docs = await fetchAll(net.repo, JSON.parse(fs.readFileSync(process.argv[5], 'utf8')));
  console.log(JSON.stringify({ phase, docs, wall_ms: Math.round(performance.now() - started) }));
  await net.repo.shutdown();
}
process.exit(0);
