// KubeAdapter, connectKube and synced() against a stand-in for KUBE: a plain automerge-repo
// sync server (in-memory storage, so it announces a storageId) behind an HTTP server that
// serves /.well-known/kube/identity and checks the ECHO token of every WebSocket upgrade as
// PROTOCOL.md §1 says. It does no access control: that is KUBE's, tested in tests/echo/.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { WebSocketServer } from 'ws';
import { Repo, cbor } from '@automerge/automerge-repo';
import { WebSocketServerAdapter } from '@automerge/automerge-repo-network-websocket';
import {
  Identity, connectKube, synced, verifyEchoToken, createSpace, createObject, addMember, KubeAdapter,
} from '../index.js';

/** automerge-repo's StorageAdapter interface, in memory. */
class MemoryStorage {
  #data = new Map();
  #k = (key) => key.join('\u0000');
  async load(key) { return this.#data.get(this.#k(key))?.data; }
  async save(key, data) { this.#data.set(this.#k(key), { key, data }); }
  async remove(key) { this.#data.delete(this.#k(key)); }
  async loadRange(prefix) {
    const p = this.#k(prefix);
    return [...this.#data.entries()].filter(([k]) => k === p || k.startsWith(p + '\u0000')).map(([, v]) => v);
  }
  async removeRange(prefix) {
    for (const { key } of await this.loadRange(prefix)) this.#data.delete(this.#k(key));
  }
}

/** The stand-in KUBE: resolves {url, kube (Identity), repo, connections, close}. */
async function startFakeKube() {
  const kube = Identity.generate();
  const nonces = new Set();
  const fake = { kube, connections: [], refused: 0, refuseAll: false, sockets: new Set() };
  const server = http.createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/.well-known/kube/identity') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ did: kube.did }));
    } else {
      res.writeHead(404).end();
    }
  });
  const wss = new WebSocketServer({ noServer: true });
  server.on('upgrade', (req, socket, head) => {
    const u = new URL(req.url, 'http://x');
    let token;
    try {
      if (fake.refuseAll) throw new Error('refusing everyone');
      if (u.pathname !== '/.well-known/kube/echo') throw new Error(`path ${u.pathname}`);
      token = verifyEchoToken(u.searchParams.get('auth') ?? '', { aud: kube.did });
      if (nonces.has(token.nonce)) throw new Error('nonce replayed');
      nonces.add(token.nonce);
    } catch (e) {
      fake.refused += 1;
      socket.end(`HTTP/1.1 401 Unauthorized\r\ncontent-length: ${e.message.length}\r\n\r\n${e.message}`);
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      const conn = { token, ws, first: null };
      fake.connections.push(conn);
      fake.sockets.add(ws);
      ws.on('close', () => fake.sockets.delete(ws));
      ws.once('message', (data) => { conn.first = cbor.decode(new Uint8Array(data)); });
      wss.emit('connection', ws, req);
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  fake.url = `http://127.0.0.1:${server.address().port}`;
  // Like KUBE, it announces no document to anyone: peers ask for what they want.
  fake.repo = new Repo({
    network: [new WebSocketServerAdapter(wss)],
    storage: new MemoryStorage(),
    peerId: 'fake-kube',
    shareConfig: { announce: async () => false, access: async () => true },
  });
  fake.close = async () => {
    for (const ws of fake.sockets) ws.terminate();
    await fake.repo.shutdown();
    wss.close();
    await new Promise((resolve) => server.close(resolve));
  };
  return fake;
}

const waitFor = async (what, cond, ms = 5000) => {
  const t0 = Date.now();
  while (!(await cond())) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
};

let fake;
before(async () => { fake = await startFakeKube(); });
after(async () => { await fake?.close(); });

test('connectKube: identity lookup, a signed token per connection, join as the token peer, synced()', { timeout: 20_000 }, async () => {
  const alice = Identity.generate();
  const adapter = await connectKube({ url: fake.url, identity: alice, retryInterval: 200 });
  assert.ok(adapter instanceof KubeAdapter);
  assert.equal(adapter.kubeDid, fake.kube.did);
  const repo = new Repo({ network: [adapter], peerId: 'alice-peer' });
  try {
    await waitFor('the peer message', () => adapter.kubeStorageId !== undefined);
    assert.equal(adapter.kubePeerId, 'fake-kube');
    assert.equal(adapter.kubeStorageId, await fake.repo.storageSubsystem.id());
    const conn = fake.connections.at(-1);
    assert.equal(conn.token.did, alice.did);
    assert.equal(conn.token.peer, 'alice-peer');
    assert.equal(conn.token.aud, fake.kube.did);
    assert.equal(conn.first.type, 'join', 'the first message is join');
    assert.equal(conn.first.senderId, conn.token.peer, 'join senderId == token peer');

    const { root } = createSpace(repo, alice, { kubeDid: adapter.kubeDid });
    const note = createObject(repo, root, { type: 'note', text: 'hello' });
    await synced(note, adapter, { timeoutMs: 5000 });
    await synced(root, adapter, { timeoutMs: 5000 });
    assert.deepEqual(root.getSyncInfo(adapter.kubeStorageId).lastHeads, root.heads());
    // The server has them.
    const there = await fake.repo.find(note.documentId);
    assert.equal(there.doc().text, 'hello');

    // synced() waits for changes made after it was called, and times out on its bound.
    note.change((d) => { d.props.pinned = true; });
    await synced(note, adapter.kubeStorageId, { timeoutMs: 5000 });
    await assert.rejects(synced(note, 'not-kubes-storage-id', { timeoutMs: 100 }), /not synced with KUBE within 100 ms/);
  } finally {
    await repo.shutdown();
  }
});

test('every reconnection carries a fresh token (new nonce, same peer)', { timeout: 20_000 }, async () => {
  const bob = Identity.generate();
  const adapter = await connectKube({ url: fake.url, identity: bob, retryInterval: 100 });
  const repo = new Repo({ network: [adapter] });
  try {
    await waitFor('first connection', () => adapter.kubeStorageId !== undefined);
    const mine = () => fake.connections.filter((c) => c.token.did === bob.did);
    assert.equal(mine().length, 1);
    const refusedBefore = fake.refused;
    // KUBE drops the connection; the stock reconnect path runs our connect() again.
    mine()[0].ws.close();
    await waitFor('a reconnection', () => mine().length === 2 && mine()[1].first !== null);
    const [a, b] = mine();
    assert.equal(a.token.peer, repo.peerId);
    assert.equal(b.token.peer, repo.peerId);
    assert.notEqual(a.token.nonce, b.token.nonce);
    assert.equal(fake.refused, refusedBefore, 'no token was refused (none replayed)');

    // Explicit disconnect stays down; reconnect() connects with a fresh token again.
    adapter.disconnect();
    adapter.disconnect(); // idempotent
    await new Promise((r) => setTimeout(r, 400));
    assert.equal(mine().length, 2, 'no reconnection after disconnect()');
    adapter.reconnect();
    await waitFor('reconnect()', () => mine().length === 3 && mine()[2].first?.type === 'join');
    assert.notEqual(mine()[2].token.nonce, b.token.nonce);
    // Sync still works over the new connection (the Repo's storage metadata was kept).
    const h = repo.create({ n: 1 });
    await synced(h, adapter, { timeoutMs: 5000 });
  } finally {
    await repo.shutdown();
  }
});

test("KUBE's error messages are emitted as 'kube-error'", { timeout: 20_000 }, async () => {
  const carol = Identity.generate();
  const adapter = await connectKube({ url: fake.url, identity: carol, retryInterval: 100 });
  const repo = new Repo({ network: [adapter] });
  try {
    await waitFor('connection', () => adapter.kubeStorageId !== undefined);
    const errors = [];
    adapter.on('kube-error', (m) => errors.push(m));
    const conn = fake.connections.find((c) => c.token.did === carol.did);
    conn.ws.send(cbor.encode({ type: 'error', message: 'refused: a reader may not change this space' }));
    await waitFor('kube-error', () => errors.length === 1);
    assert.equal(errors[0], 'refused: a reader may not change this space');
    // The adapter keeps working after an error message.
    const h = repo.create({ still: 'works' });
    await synced(h, adapter, { timeoutMs: 5000 });
  } finally {
    await repo.shutdown();
  }
});

test('a refused upgrade (HTTP 401) is reported, retried, and does not crash the process', { timeout: 20_000 }, async () => {
  const dave = Identity.generate();
  const adapter = await connectKube({ url: fake.url, identity: dave, retryInterval: 100 });
  const failures = [];
  adapter.on('kube-connection-error', (e) => failures.push(e));
  fake.refuseAll = true;
  const repo = new Repo({ network: [adapter] });
  try {
    await waitFor('two failed attempts', () => failures.length >= 2);
    assert.match(String(failures[0].message), /401/);
    fake.refuseAll = false;
    await waitFor('a connection once KUBE accepts', () => adapter.kubeStorageId !== undefined);
  } finally {
    fake.refuseAll = false;
    await repo.shutdown();
  }
});

test('connectKube refuses a KUBE whose identity is not an Ed25519 did:key', async () => {
  const fakeFetch = async () => new Response(JSON.stringify({ did: 'did:web:evil.example' }), { status: 200 });
  await assert.rejects(connectKube({ url: 'https://kube.example', identity: Identity.generate(), fetch: fakeFetch }), /did:key/);
  const notFound = async () => new Response('', { status: 404 });
  await assert.rejects(connectKube({ url: 'https://kube.example', identity: Identity.generate(), fetch: notFound }), /HTTP 404/);
  await assert.rejects(connectKube({ url: 'ftp://kube.example', identity: Identity.generate() }), /https/);
});

test('the adapter connects only with the peerId it was made for, when given one', async () => {
  const adapter = new KubeAdapter({ endpoint: 'ws://127.0.0.1:9/.well-known/kube/echo', identity: Identity.generate(), kubeDid: fake.kube.did, peerId: 'p1' });
  assert.throws(() => adapter.connect('p2', {}), /made for peerId p1/);
});

test('a member added while connected is just a credential in the root (sanity for tests/echo)', { timeout: 20_000 }, async () => {
  const alice = Identity.generate();
  const bob = Identity.generate();
  const a1 = await connectKube({ url: fake.url, identity: alice, retryInterval: 200 });
  const aliceRepo = new Repo({ network: [a1] });
  const b1 = await connectKube({ url: fake.url, identity: bob, retryInterval: 200 });
  const bobRepo = new Repo({ network: [b1] });
  try {
    await waitFor('alice connected', () => a1.kubeStorageId !== undefined);
    const { root } = createSpace(aliceRepo, alice, { kubeDid: a1.kubeDid });
    const task = createObject(aliceRepo, root, { type: 'task', props: { title: 'x' } });
    const cred = addMember(root, alice, bob.did, 'editor');
    await synced(root, a1);
    await synced(task, a1);
    await waitFor('bob connected', () => b1.kubeStorageId !== undefined);
    const bRoot = await bobRepo.find(root.documentId);
    assert.ok(bRoot.doc().credentials[cred.id]);
    const bTask = await bobRepo.find(task.documentId);
    bTask.change((d) => { d.props.title = 'y'; });
    await synced(bTask, b1);
    await waitFor("alice sees bob's edit", () => String(task.doc().props.title) === 'y');
  } finally {
    await aliceRepo.shutdown();
    await bobRepo.shutdown();
  }
});

test("connectKube makes tokens on KUBE's clock, not a skewed local one", async () => {
  const kubeDid = fake.kube.did;
  const ahead = 3600; // KUBE's clock is an hour ahead of ours (or ours an hour behind)
  const fakeFetch = async () => new Response(JSON.stringify({ did: kubeDid, time: Math.floor(Date.now() / 1000) + ahead }), { status: 200 });
  const adapter = await connectKube({ url: fake.url, identity: Identity.generate(), fetch: fakeFetch });
  assert.ok(Math.abs(adapter.clockOffset - ahead) <= 1, `offset ${adapter.clockOffset}`);
  // The stand-in checks tokens on the local clock, so it refuses this one (401).
  const refused = new Promise((resolve) => adapter.once('kube-connection-error', resolve));
  adapter.connect('p1', {});
  await refused;
  try {
    const token = new URL(adapter.url).searchParams.get('auth');
    const kubeNow = Math.floor(Date.now() / 1000) + ahead;
    assert.ok(verifyEchoToken(token, { aud: kubeDid, now: kubeNow, windowSecs: 5 }));
    assert.throws(() => verifyEchoToken(token, { aud: kubeDid, windowSecs: 60 }), /window/);
  } finally {
    adapter.disconnect();
  }
  // An older KUBE without `time`: the local clock, as before.
  const old = async () => new Response(JSON.stringify({ did: kubeDid }), { status: 200 });
  assert.equal((await connectKube({ url: 'https://kube.example', identity: Identity.generate(), fetch: old })).clockOffset, 0);
});
