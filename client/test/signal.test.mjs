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
