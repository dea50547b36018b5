// connectSignal, serveInvitation and redeemInvitation against a stand-in for KUBE's signaling
// hub (signal/PROTOCOL.md: challenge/auth/welcome, join/peers/peer-joined, signal relay).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import crypto from 'node:crypto';
import { WebSocketServer } from 'ws';
import {
  Identity, verify, connectSignal, serveInvitation, redeemInvitation, createInvitation, Host,
  verifyCredential, InvitationError,
} from '../index.js';

/** The hub: resolves {url, close, frames} (every client frame, parsed). */
async function startFakeHub() {
  const server = http.createServer((_, res) => res.writeHead(404).end());
  const wss = new WebSocketServer({ server, path: '/.well-known/kube/signal' });
  const peers = new Map(); // did → ws
  const swarms = new Map(); // swarm → Set(did)
  const frames = [];
  wss.on('connection', (ws, req) => {
    const nonce = crypto.randomBytes(32).toString('hex');
    const origin = req.headers.origin ?? '';
    let id;
    const send = (m) => ws.send(JSON.stringify({ v: 1, ...m }));
    send({ type: 'challenge', nonce });
    ws.on('message', (data) => {
      const m = JSON.parse(String(data));
      frames.push(m);
      if (m.v !== 1) return send({ type: 'error', code: 'bad-version', message: 'v' });
      if (!id) {
        const ok = m.type === 'auth' && verify(m.id, new TextEncoder().encode(`kube-signal-v1\n${nonce}\n${origin}`), Buffer.from(m.signature, 'base64url'));
        if (!ok) { send({ type: 'error', code: 'auth-failed', message: 'no' }); ws.close(); return; }
        id = m.id;
        peers.set(id, ws);
        return send({ type: 'welcome', id });
      }
      if (m.type === 'join') {
        const set = swarms.get(m.swarm) ?? new Set();
        swarms.set(m.swarm, set);
        const others = [...set].filter((p) => p !== id);
        set.add(id); // in the swarm before anyone hears of it, so their replies reach it
        for (const p of others) peers.get(p)?.send(JSON.stringify({ v: 1, type: 'peer-joined', swarm: m.swarm, peer: id }));
        send({ type: 'peers', swarm: m.swarm, peers: others });
      } else if (m.type === 'leave') {
        swarms.get(m.swarm)?.delete(id);
      } else if (m.type === 'signal') {
        const set = swarms.get(m.swarm);
        if (set?.has(id) && set.has(m.to)) peers.get(m.to)?.send(JSON.stringify({ v: 1, type: 'signal', from: id, swarm: m.swarm, payload: m.payload }));
      }
    });
    ws.on('close', () => { if (id) { peers.delete(id); for (const s of swarms.values()) s.delete(id); } });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    frames,
    close: async () => {
      for (const ws of wss.clients) ws.terminate();
      wss.close();
      await new Promise((r) => server.close(r));
    },
  };
}

let hub;
before(async () => { hub = await startFakeHub(); });
after(async () => { await hub?.close(); });

test('connectSignal authenticates with kube-signal-v1\\n<nonce>\\n<origin> and sends v:1 frames', async () => {
  const me = Identity.generate();
  const s = await connectSignal({ url: hub.url, identity: me });
  try {
    assert.equal(s.id, me.did);
    const auth = hub.frames.find((f) => f.type === 'auth' && f.id === me.did);
    assert.deepEqual(Object.keys(auth).sort(), ['id', 'signature', 'type', 'v']);
    assert.deepEqual(await s.join('ab'.repeat(32)), []);
  } finally {
    s.close();
  }
  // A wrong origin makes the signature fail.
  await assert.rejects(connectSignal({ url: hub.url, identity: me, origin: 'https://evil.example' }), /auth-failed/);
});

test('an invitation redeemed over signaling: wrong code, then the right one', { timeout: 20_000 }, async () => {
  const alice = Identity.generate();
  const frank = Identity.generate();
  const space = Identity.generate().did;
  const { invitation, code } = createInvitation({ space, role: 'editor', host: alice.did });
  const hostSig = await connectSignal({ url: hub.url, identity: alice });
  const guestSig = await connectSignal({ url: hub.url, identity: frank });
  try {
    // The guest comes first and waits for the host to join.
    const early = redeemInvitation(guestSig, { invitation, code: code === '000000' ? '000001' : '000000', key: frank, timeoutMs: 5000 });
    await new Promise((r) => setTimeout(r, 100));
    const root = '3JzZ5sdWw3yV1Qb1VMYqrqMUXgk8';
    const serving = await serveInvitation(hostSig, new Host({ invitation, code, key: alice, root }));
    await assert.rejects(early, (e) => e instanceof InvitationError && e.code === 'wrong-code' && e.attemptsLeft === 2);
    const { credential: c, root: named } = await redeemInvitation(guestSig, { invitation, code, key: frank, timeoutMs: 5000 });
    assert.deepEqual(await serving.admitted, c);
    assert.equal(named, root, 'admitted names the space root');
    assert.ok(verifyCredential(c));
    assert.equal(c.subject, frank.did);
    assert.equal(c.issuer, alice.did);
    assert.deepEqual(c.assertion, { type: 'SpaceMember', space, role: 'editor' });
    // Used: a second redemption is refused.
    await assert.rejects(redeemInvitation(guestSig, { invitation, code, key: frank, timeoutMs: 5000 }), (e) => e.code === 'used');
    serving.stop();
  } finally {
    hostSig.close();
    guestSig.close();
  }
});

/** A stand-in for one KUBE's SignalClient: records what is sent, emits what the test says. */
class FakeSignal {
  constructor(name, peers = []) {
    this.id = 'did:me';
    this.name = name;
    this.peers = peers;
    this.sent = [];
    this.listeners = new Map();
  }
  on(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(fn);
    return () => this.listeners.get(type).delete(fn);
  }
  emit(type, msg) {
    for (const fn of this.listeners.get(type) ?? []) fn(msg);
  }
  async join() { return this.peers; }
  async iceServers() { return { servers: [{ urls: [`turn:${this.name}`] }, { urls: ['stun:shared'] }], ttl: this.name === 'a' ? 60 : 30 }; }
  leave() {}
  send(to, swarm, payload) { this.sent.push({ to, swarm, payload }); }
  close() { this.emit('close', {}); }
}

test('SignalCluster: peers of every KUBE once, signals through the KUBE where the peer is', async () => {
  const { SignalCluster } = await import('../index.js');
  const swarm = 'cd'.repeat(32);
  const a = new FakeSignal('a', ['did:y']);
  const b = new FakeSignal('b', ['did:y', 'did:z']);
  const cluster = new SignalCluster([a, b]);
  const events = [];
  for (const t of ['peer-joined', 'peer-left', 'close']) cluster.on(t, (m) => events.push([t, m.peer]));
  assert.deepEqual((await cluster.join(swarm)).sort(), ['did:y', 'did:z']);
  cluster.send('did:z', swarm, 1);
  cluster.send('did:y', swarm, 2);
  assert.deepEqual(b.sent, [{ to: 'did:z', swarm, payload: 1 }], 'z is only at b');
  assert.deepEqual(a.sent, [{ to: 'did:y', swarm, payload: 2 }], 'y is at both: the first');
  // A peer seen at a second KUBE is not new; it is gone once it left both.
  a.emit('peer-joined', { type: 'peer-joined', swarm, peer: 'did:z' });
  b.emit('peer-left', { type: 'peer-left', swarm, peer: 'did:z' });
  assert.deepEqual(events, []);
  a.emit('peer-left', { type: 'peer-left', swarm, peer: 'did:z' });
  assert.deepEqual(events, [['peer-left', 'did:z']]);
  const { servers, ttl } = await cluster.iceServers();
  assert.deepEqual(servers.map((s) => s.urls[0]), ['turn:a', 'stun:shared', 'turn:b']);
  assert.equal(ttl, 30, 'the shortest');
  // y is at both KUBEs: closing one keeps it; closing the last drops it, then closes.
  a.close();
  assert.equal(events.length, 1);
  b.close();
  assert.deepEqual(events.slice(1), [['peer-left', 'did:y'], ['close', undefined]]);
});
