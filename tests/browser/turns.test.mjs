// TURNS on the HTTPS port: two pages in headless Chromium, loaded over HTTPS from KUBE's
// HTTPS port, connect with iceTransportPolicy 'relay' when the only ICE server is
// `turns:localhost:<that same port>?transport=tcp`, while UDP to KUBE is dropped by
// nftables, and carry data-channel messages both ways. The selected pair's local candidate
// must be a relay candidate allocated over TLS.
//
// It changes the firewall, so it runs only inside the network namespace tests/run makes
// (KUBE_NETNS=1), never on the host. The rules live in their own nft table and drop UDP to
// every port this KUBE has bound outside its relay range (its TURN and DNS listeners): not
// all UDP on `lo`, because other test files may run at the same time in the same namespace
// with their own KUBE. Relay-to-relay traffic (UDP between relay ports on loopback) passes.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, writeFile } from 'node:fs/promises';
import { createHmac, randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { KUBE_BIN, run, startKube, finishKube, makeNssHome, launchChromium } from './harness.mjs';

// Below Linux's ephemeral ports (32768-60999), so that no port-0 listener of KUBE (its TURN
// port above all) can fall in the relay range the drop rule leaves open.
const RELAY_MIN = 20_000;
const RELAY_MAX = 20_999;
const MESSAGES = 20;
const TABLE = 'kubetest_turns';
const CONNECT_TIMEOUT_MS = 10_000;

const SKIP = process.env.KUBE_NETNS === '1'
  ? false
  : 'changes nftables rules: runs only in the network namespace of tests/run (KUBE_NETNS=1)';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Does a STUN Binding request over UDP to `addr` get an answer within `ms`? */
function stunAnswersOverUdp(addr, ms = 1_000) {
  const i = addr.lastIndexOf(':');
  const host = addr.slice(0, i).replace(/^\[|\]$/g, '');
  const port = Number(addr.slice(i + 1));
  const req = Buffer.alloc(20);
  req.writeUInt16BE(0x0001, 0); // Binding request, no attributes
  req.writeUInt32BE(0x2112a442, 4);
  randomBytes(12).copy(req, 8);
  return new Promise((resolve) => {
    const sock = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
    let resends;
    const done = (v) => { clearInterval(resends); clearTimeout(timer); sock.close(); resolve(v); };
    const timer = setTimeout(() => done(false), ms);
    sock.on('message', (m) => { if (m.length >= 20 && m.subarray(8, 20).equals(req.subarray(8, 20))) done(true); });
    sock.on('error', () => {}); // EPERM from a dropped send: no answer
    const send = () => sock.send(req, port, host, () => {});
    send();
    resends = setInterval(send, 250);
  });
}

/** The UDP ports process `pid` has bound (from `ss`, in this namespace). */
async function udpPortsOf(pid) {
  const { stdout } = await run('ss', ['-uanpH']);
  const ports = new Set();
  for (const line of stdout.split('\n')) {
    if (!line.includes(`pid=${pid},`)) continue;
    const local = line.trim().split(/\s+/)[3];
    const port = Number(local && local.slice(local.lastIndexOf(':') + 1));
    if (port) ports.add(port);
  }
  return [...ports];
}

/** Page side: one RTCPeerConnection (relay only) on window.peer, with helpers. */
function setupPeer(iceServers) {
  const p = { candidates: [], seen: [], errors: [], received: [], channel: null };
  window.peer = p;
  p.pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: 'relay' });
  p.pc.onicecandidate = (e) => {
    if (e.candidate && e.candidate.candidate) {
      p.candidates.push(e.candidate.toJSON());
      p.seen.push(e.candidate.candidate);
    }
  };
  p.pc.onicecandidateerror = (e) => p.errors.push(`${e.url} ${e.errorCode} ${e.errorText}`);
  p.wire = (ch) => { p.channel = ch; ch.onmessage = (e) => p.received.push(e.data); };
  p.pc.ondatachannel = (e) => p.wire(e.channel);
  p.state = () => ({
    ice: p.pc.iceConnectionState,
    connection: p.pc.connectionState,
    gathering: p.pc.iceGatheringState,
    channel: p.channel && p.channel.readyState,
    candidates: p.seen,
    errors: p.errors,
  });
  p.selected = async () => {
    const stats = await p.pc.getStats();
    let pair = null;
    stats.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId) || pair;
    });
    if (!pair) return null;
    const l = stats.get(pair.localCandidateId);
    const r = stats.get(pair.remoteCandidateId);
    return {
      state: pair.state,
      local: l && { type: l.candidateType, relayProtocol: l.relayProtocol, url: l.url },
      remote: r && { type: r.candidateType },
    };
  };
}

describe('TURNS on the HTTPS port in headless Chromium, UDP to KUBE dropped', { timeout: 60_000, skip: SKIP }, () => {
  let root;
  let kube;
  let addrs;
  let secret;
  let browser;
  let tableAdded = false;
  let failed = false;
  const guard = (fn) => async (t) => {
    try { await fn(t); } catch (e) { failed = true; throw e; }
  };

  before(guard(async () => {
    await run('nft', ['--version']).catch((e) => {
      throw new Error(`nft not found (apt-get install nftables): ${e.message}`);
    });
    root = await mkdtemp(path.join(tmpdir(), 'kube-turns-'));
    const dataDir = path.join(root, 'data');
    await mkdir(dataDir);
    secret = randomBytes(16).toString('hex');
    const config = path.join(root, 'kube.yml');
    await writeFile(config, [
      'turn:',
      `  secret: "${secret}"`,
      '  allow_peers: [127.0.0.0/8]',
      '  relay_address: 127.0.0.1',
      `  relay_port_min: ${RELAY_MIN}`,
      `  relay_port_max: ${RELAY_MAX}`,
      '',
    ].join('\n'));
    kube = startKube(dataDir, ['-c', config]);
    addrs = await kube.ready;
    assert.ok(addrs.turn, `turn= in the ready line: ${JSON.stringify(addrs)}`);

    const env = { env: { ...process.env, KUBE_DATA_DIR: dataDir, KUBE_CONFIG: config } };
    const { stdout: pem } = await run(KUBE_BIN, ['trust'], env);
    await writeFile(path.join(root, 'ca.pem'), pem);
    const bundle = path.join(root, 'bundle');
    await mkdir(bundle);
    await writeFile(path.join(bundle, 'index.html'),
      '<!doctype html><html><head><meta charset="utf-8"><title>turns</title></head>'
      + '<body><p id="out">served over https</p></body></html>\n');
    await run(KUBE_BIN, ['app', 'publish', bundle, '--name', 'turns'], env);

    // UDP to KUBE reaches it before the rules, and not after.
    assert.ok(await stunAnswersOverUdp(addrs.turn), `KUBE answers STUN over UDP at ${addrs.turn} before the drop rules`);
    const turnPort = Number(addrs.turn.split(':').pop());
    assert.ok(turnPort < RELAY_MIN || turnPort > RELAY_MAX, `TURN port ${turnPort} outside the relay range`);
    const ports = (await udpPortsOf(kube.child.pid)).filter((p) => p < RELAY_MIN || p > RELAY_MAX);
    assert.ok(ports.includes(turnPort), `ss lists KUBE's UDP port ${turnPort}: ${ports}`);
    await run('nft', ['add', 'table', 'inet', TABLE]);
    tableAdded = true;
    await run('nft', ['add', 'chain', 'inet', TABLE, 'out', '{ type filter hook output priority 0; policy accept; }']);
    await run('nft', ['add', 'rule', 'inet', TABLE, 'out',
      'udp', 'dport', `{ ${ports.join(', ')} }`, 'drop']);
    assert.equal(await stunAnswersOverUdp(addrs.turn), false, `UDP to ${addrs.turn} is dropped`);
  }));

  after(async () => {
    if (browser) await browser.close().catch(() => {});
    if (tableAdded) await run('nft', ['delete', 'table', 'inet', TABLE]).catch((e) => console.error(e.message));
    await finishKube(kube, root, failed);
  });

  it('relays a data channel over TLS on the HTTPS port, which still serves the app', guard(async () => {
    const home = await makeNssHome(root, 'home', path.join(root, 'ca.pem'));
    browser = await launchChromium(home, ['--allow-loopback-in-peer-connection']);
    const port = addrs.https.split(':').pop();

    // The pages load the app over HTTPS on that port (HTTP/2 or HTTP/1.1 by ALPN).
    const pages = [];
    for (let i = 0; i < 2; i++) {
      const page = await browser.newPage();
      const res = await page.goto(`https://turns.localhost:${port}/`, { timeout: 10_000 });
      assert.equal(res.status(), 200);
      assert.equal(await page.textContent('#out'), 'served over https');
      const alpn = await page.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol);
      assert.match(alpn, /^(h2|http\/1\.1)$/, `the page came over HTTPS with ALPN ${alpn}`);
      pages.push(page);
    }
    const [a, b] = pages;

    // REST credentials from the configured secret; the only ICE server is TURNS on `port`.
    const username = `${Math.floor(Date.now() / 1000) + 3600}:turns-test`;
    const credential = createHmac('sha1', secret).update(username).digest('base64');
    const iceServers = [{ urls: `turns:localhost:${port}?transport=tcp`, username, credential }];
    for (const page of pages) await page.evaluate(setupPeer, iceServers);

    const offer = await a.evaluate(async () => {
      window.peer.wire(window.peer.pc.createDataChannel('turns'));
      await window.peer.pc.setLocalDescription();
      return window.peer.pc.localDescription.toJSON();
    });
    const answer = await b.evaluate(async (sdp) => {
      await window.peer.pc.setRemoteDescription(sdp);
      await window.peer.pc.setLocalDescription();
      return window.peer.pc.localDescription.toJSON();
    }, offer);
    await a.evaluate((sdp) => window.peer.pc.setRemoteDescription(sdp), answer);

    // Trickle candidates through the test until both ends of the channel are open.
    const deadline = Date.now() + CONNECT_TIMEOUT_MS;
    for (;;) {
      for (const [from, to] of [[a, b], [b, a]]) {
        const cands = await from.evaluate(() => window.peer.candidates.splice(0));
        if (cands.length) {
          await to.evaluate(async (cs) => { for (const c of cs) await window.peer.pc.addIceCandidate(c); }, cands);
        }
      }
      const states = await Promise.all(pages.map((p) => p.evaluate(() => window.peer.state())));
      if (states.every((s) => s.channel === 'open')) break;
      if (Date.now() > deadline || states.some((s) => s.connection === 'failed')) {
        assert.fail(`data channel not open within ${CONNECT_TIMEOUT_MS} ms: ${JSON.stringify(states, null, 2)}`);
      }
      await sleep(100);
    }

    // Messages both ways, every one in order.
    for (const [page, tag] of [[a, 'a'], [b, 'b']]) {
      await page.evaluate(({ n, tag }) => {
        for (let i = 0; i < n; i++) window.peer.channel.send(`${tag} ${i}`);
      }, { n: MESSAGES, tag });
    }
    for (const [page, from] of [[b, 'a'], [a, 'b']]) {
      await page.waitForFunction((n) => window.peer.received.length >= n, MESSAGES, { timeout: 10_000, polling: 50 });
      const got = await page.evaluate(() => window.peer.received);
      assert.deepEqual(got, Array.from({ length: MESSAGES }, (_, i) => `${from} ${i}`));
    }

    // Each side's selected pair: its own relay candidate, allocated over TLS, to the other's.
    for (const page of pages) {
      await page.waitForFunction(async () => (await window.peer.selected()) !== null, null, { timeout: 10_000, polling: 100 });
      const pair = await page.evaluate(() => window.peer.selected());
      assert.equal(pair.local?.type, 'relay', `local candidate of the selected pair: ${JSON.stringify(pair)}`);
      assert.equal(pair.local.relayProtocol, 'tls', `relay allocated over TLS: ${JSON.stringify(pair)}`);
      assert.equal(pair.remote?.type, 'relay', `remote candidate of the selected pair: ${JSON.stringify(pair)}`);
      if (pair.local.url) assert.match(pair.local.url, new RegExp(`^turns:localhost:${port}\\b`));
      const { candidates } = await page.evaluate(() => window.peer.state());
      assert.ok(candidates.length > 0 && candidates.every((c) => / typ relay /.test(c)), `only relay candidates: ${candidates}`);
    }

    // KUBE relayed them (relay to relay, UDP between relay ports on loopback).
    const metrics = await (await fetch(`http://${addrs.admin}/metrics`)).text();
    const out = [...metrics.matchAll(/^kube_turn_relayed_packets_total\{[^}]*direction="out"[^}]*\} (\d+)/gm)]
      .reduce((n, m) => n + Number(m[1]), 0);
    assert.ok(out >= 2 * MESSAGES, `KUBE relayed the messages: ${out} packets out`);
  }));
});
