// Two pages in headless Chromium authenticate to KUBE's signaling with fresh Ed25519 keys,
// find each other in one swarm, exchange offer, answer and ICE candidates through it, and
// open a data channel with iceTransportPolicy 'relay', so every byte goes through KUBE's
// TURN. tests/run runs this inside a network namespace with only `lo` up, so every path
// stays on loopback.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, writeFile, rm, cp } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { KUBE_BIN, run, startKube, stopKube, makeNssHome, launchChromium } from './harness.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const MESSAGES = 200;

describe('WebRTC through KUBE in headless Chromium', { timeout: 180_000 }, () => {
  let root;
  let kube;
  let addrs;
  let failed = false;
  const guard = (fn) => async (t) => {
    try { await fn(t); } catch (e) { failed = true; throw e; }
  };

  before(guard(async () => {
    root = await mkdtemp(path.join(tmpdir(), 'kube-webrtc-'));
    const dataDir = path.join(root, 'data');
    await mkdir(dataDir);
    // Loopback is refused by the relay unless opened on purpose; this test is all loopback.
    const config = path.join(root, 'kube.yml');
    await writeFile(config, 'turn:\n  allow_peers: [127.0.0.0/8]\n  relay_port_min: 40000\n  relay_port_max: 49000\n');
    kube = startKube(dataDir, ['-c', config]);
    addrs = await kube.ready;
    assert.ok(addrs.turn, `turn= in the ready line: ${JSON.stringify(addrs)}`);
    const env = { env: { ...process.env, KUBE_DATA_DIR: dataDir, KUBE_CONFIG: config } };
    const { stdout: pem } = await run(KUBE_BIN, ['trust'], env);
    await writeFile(path.join(root, 'ca.pem'), pem);
    const bundle = path.join(root, 'bundle');
    await cp(path.join(HERE, 'webrtc-app'), bundle, { recursive: true });
    await run(KUBE_BIN, ['app', 'publish', bundle, '--name', 'e2e'], env);
  }));

  after(async () => {
    await stopKube(kube);
    if (failed && kube) {
      console.error(`--- kube stdout ---\n${kube.stdout}`);
      console.error(`--- kube stderr (last 16 KiB) ---\n${kube.stderr.slice(-16384)}`);
    }
    if (root) await rm(root, { recursive: true, force: true });
  });

  it('opens a data channel relayed by KUBE and carries every message', guard(async () => {
    const home = await makeNssHome(root, 'home', path.join(root, 'ca.pem'));
    const browser = await launchChromium(home, [
      '--allow-loopback-in-peer-connection',
      '--use-fake-ui-for-media-stream',
      '--use-fake-device-for-media-stream',
    ]);
    try {
      const port = addrs.https.split(':').pop();
      const swarm = randomBytes(32).toString('hex');
      const url = `https://e2e.localhost:${port}/?swarm=${swarm}&messages=${MESSAGES}`;
      const first = await browser.newPage();
      await first.goto(url);
      await first.waitForFunction(() => window.result && window.result.state === 'joined', null, { timeout: 15_000 });
      const second = await browser.newPage();
      await second.goto(url);
      const done = (want) => `window.result && window.result.received >= ${want}`;
      // The offerer (second) sends MESSAGES; the answerer echoes each one.
      await first.waitForFunction(done(MESSAGES), null, { timeout: 60_000, polling: 100 });
      await second.waitForFunction(done(MESSAGES), null, { timeout: 60_000, polling: 100 });
      for (const page of [first, second]) {
        const result = await page.evaluate(() => window.result);
        assert.deepEqual(result.errors, [], 'no signaling or WebRTC errors');
        assert.ok(result.iceServers.some((u) => u.startsWith('turn:')), JSON.stringify(result.iceServers));
        assert.deepEqual(result.localTypes, ['relay'], 'only relay candidates were offered');
        // getStats() may name the selected pair a moment after the last message.
        await page.waitForFunction(async () => (await window.selectedPair()) !== null, null, { timeout: 10_000, polling: 100 });
        const pair = await page.evaluate(() => window.selectedPair());
        assert.deepEqual(pair, { local: 'relay', remote: 'relay' }, 'the path is relay to relay');
      }
      const metrics = await (await fetch(`http://${addrs.admin}/metrics`)).text();
      const relayed = metrics.match(/^kube_turn_relayed_packets_total\{direction="out"\} (\d+)/m);
      assert.ok(relayed && Number(relayed[1]) >= 2 * MESSAGES, `KUBE relayed the messages: ${relayed && relayed[0]}`);
      assert.match(metrics, /^kube_signal_messages_total\{direction="in",type="signal"\} \d+/m);
    } finally {
      await browser.close();
    }
  }));
});
