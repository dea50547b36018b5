// Several KUBEs (issue 18) with @kube/client: two kubes on loopback linked by echo.peers
// (each trusting the other's local CA), and the scenario (cluster-scenario.mjs) in a child
// `node` that trusts both CAs. Run from the repo root: node --test tests/echo/

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { fork } from 'node:child_process';
import { mkdtemp, mkdir, writeFile, readFile, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { KUBE_BIN, run, startKube, stopKube } from '../browser/harness.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SCENARIO = path.join(HERE, 'cluster-scenario.mjs');
const TIMEOUT_MS = 90_000;

/** A free loopback TCP port. */
function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

describe('ECHO across two linked KUBEs with @kube/client', { timeout: TIMEOUT_MS + 30_000 }, () => {
  let root;
  const nodes = [];
  const kubes = [];

  before(async () => {
    root = await mkdtemp(path.join(tmpdir(), 'kube-cluster-'));
    for (const name of ['a', 'b']) {
      const dataDir = path.join(root, name, 'data');
      await mkdir(dataDir, { recursive: true });
      nodes.push({ name, dataDir, port: await freePort() });
    }
    // First starts make each KUBE's identity and local CA.
    for (const n of nodes) {
      const k = startKube(n.dataDir, [], { KUBE_HTTP_HTTPS_LISTEN: `127.0.0.1:${n.port}` });
      await k.ready;
      await stopKube(k);
      const { stdout } = await run(KUBE_BIN, ['identity'], { env: { ...process.env, KUBE_DATA_DIR: n.dataDir } });
      n.did = stdout.match(/did:key:z[1-9A-HJ-NP-Za-km-z]+/)[0];
    }
    for (const [i, n] of nodes.entries()) {
      const other = nodes[1 - i];
      const config = path.join(root, n.name, 'kube.yml');
      await writeFile(config, `echo:\n  peers:\n    - { url: "https://localhost:${other.port}", did: "${other.did}", ca_file: "${path.join(other.dataDir, 'tls', 'ca.pem')}" }\n`);
      const k = startKube(n.dataDir, ['-c', config], { KUBE_HTTP_HTTPS_LISTEN: `127.0.0.1:${n.port}` });
      await k.ready;
      kubes.push(k);
    }
  });

  after(async () => {
    for (const k of kubes) if (!k.exited) await stopKube(k);
    if (root) await rm(root, { recursive: true, force: true });
  });

  it('a client lists both KUBEs; clients of either see the same space', async () => {
    const cas = await Promise.all(nodes.map((n) => readFile(path.join(n.dataDir, 'tls', 'ca.pem'), 'utf8')));
    const caPath = path.join(root, 'cas.pem');
    await writeFile(caPath, cas.join('\n'));
    const child = fork(SCENARIO, [], {
      env: {
        ...process.env,
        NODE_EXTRA_CA_CERTS: caPath,
        KUBE_A: `https://127.0.0.1:${nodes[0].port}`,
        KUBE_B: `https://127.0.0.1:${nodes[1].port}`,
      },
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      execArgv: [],
    });
    let out = '';
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { out += d; });
    const exit = await new Promise((resolve) => {
      const timer = setTimeout(() => { child.kill('SIGKILL'); resolve({ code: null, signal: 'timeout' }); }, TIMEOUT_MS);
      child.on('exit', (code, signal) => { clearTimeout(timer); resolve({ code, signal }); });
    });
    const logs = kubes.map((k, i) => `--- kube ${nodes[i].name} stderr ---\n${k.stderr.slice(-8192)}`).join('\n');
    assert.equal(exit.code, 0, `the scenario failed (${JSON.stringify(exit)}):\n${out.slice(-8192)}\n${logs}`);
    assert.match(out, /^all 6 steps passed$/m);
  });
});
