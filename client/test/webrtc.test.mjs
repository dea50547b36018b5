// The WebRTC adapter (src/webrtc.js) between real automerge-repo Repos, over an in-memory
// RTCPeerConnection/RTCDataChannel pair and an in-memory signaling hub. No browser, no KUBE.

import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { Repo, cbor } from '@automerge/automerge-repo';
import { Identity, WebRTCAdapter, SignalClient, spaceSwarm, sdpFingerprint, encodeMessage, KIND_AUTOMERGE } from '../index.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { randomBytes } from 'node:crypto';

// ---- An in-memory WebRTC ------------------------------------------------------------------------

const later = (fn) => setImmediate(fn);

/** Pairs fake peer connections by the endpoint id in their SDPs (so that rewriting the
 * fingerprints, as a man in the middle would, does not stop them from connecting). */
class FakeNet {
  pcs = new Map();
  nextId = 1;
  /** Every RTCPeerConnection config seen. */
  configs = [];
  /** When set, data channels accept frames but never drain (a dead peer). */
  stalled = false;
  /** The candidate type the next connections report ('host' or 'relay'). */
  candidateType = 'host';

  /** The RTCPeerConnection class one adapter gets; its connections carry `owner`. */
  RTCPeerConnectionFor(owner) {
    const net = this;
    return class extends FakePeerConnection {
      constructor(config) { super(net, config, owner); }
    };
  }

  /** The live peer connections `owner` made. */
  pcsOf(owner) {
    return [...this.pcs.values()].filter((pc) => pc.owner === owner);
  }

  /** Pairs of connected fake peer connections still open. */
  openPairs() {
    let n = 0;
    for (const pc of this.pcs.values()) if (pc.connectionState === 'connected' && pc.peer && pc.id < pc.peer.id) n++;
    return n;
  }
}

const fingerprintOf = (id) => Array.from({ length: 32 }, (_, i) => ((id * 37 + i) & 0xff).toString(16).padStart(2, '0').toUpperCase()).join(':');

class FakePeerConnection {
  localDescription = null;
  remoteDescription = null;
  connectionState = 'new';
  onicecandidate = null;
  onconnectionstatechange = null;
  channels = [];
  candidates = [];
  peer = null;

  constructor(net, config, owner) {
    this.net = net;
    this.owner = owner;
    this.id = net.nextId++;
    this.config = config;
    this.fingerprint = fingerprintOf(this.id);
    net.pcs.set(this.id, this);
    net.configs.push(config);
  }

  #sdp() {
    return [
      'v=0', `o=- ${this.id} 2 IN IP4 127.0.0.1`, 's=-', 't=0 0', 'a=group:BUNDLE 0',
      'm=application 9 UDP/DTLS/SCTP webrtc-datachannel', 'c=IN IP4 0.0.0.0',
      `a=ice-ufrag:u${this.id}`, `a=fingerprint:sha-256 ${this.fingerprint}`, 'a=setup:actpass', 'a=mid:0',
      `a=x-fake-endpoint:${this.id}`, '',
    ].join('\r\n');
  }

  createDataChannel(label, options) {
    assert.equal(label, 'automerge');
    assert.deepEqual(options, { negotiated: true, id: 0, ordered: true });
    const dc = new FakeDataChannel(this, label);
    this.channels.push(dc);
    return dc;
  }

  async createOffer() { return { type: 'offer', sdp: this.#sdp() }; }

  async createAnswer() {
    if (!this.remoteDescription) throw new Error('no remote description');
    return { type: 'answer', sdp: this.#sdp() };
  }

  async setLocalDescription(d) {
    this.localDescription = { type: d.type, sdp: d.sdp };
    later(() => {
      if (this.connectionState === 'closed') return;
      this.onicecandidate?.({ candidate: { candidate: `candidate:1 1 udp 2122260223 192.0.2.${this.id} 5000 typ host`, sdpMid: '0', sdpMLineIndex: 0, toJSON() { return { candidate: this.candidate, sdpMid: this.sdpMid, sdpMLineIndex: this.sdpMLineIndex }; } } });
      this.onicecandidate?.({ candidate: null });
    });
    this.#tryConnect();
  }

  async setRemoteDescription(d) {
    if (this.connectionState === 'closed') throw new Error('closed');
    this.remoteDescription = { type: d.type, sdp: d.sdp };
    this.#tryConnect();
  }

  async addIceCandidate(c) { this.candidates.push(c); }

  #endpoint(desc) {
    return Number(/a=x-fake-endpoint:(\d+)/.exec(desc?.sdp ?? '')?.[1]);
  }

  #tryConnect() {
    if (!this.localDescription || !this.remoteDescription || this.peer) return;
    const other = this.net.pcs.get(this.#endpoint(this.remoteDescription));
    if (!other || other.peer || !other.localDescription || !other.remoteDescription) return;
    if (this.#endpoint(other.remoteDescription) !== this.id || other.connectionState === 'closed') return;
    this.peer = other;
    other.peer = this;
    later(() => {
      for (const pc of [this, other]) {
        if (pc.connectionState === 'closed') continue;
        pc.connectionState = 'connected';
        pc.onconnectionstatechange?.();
      }
      for (const a of this.channels) {
        const b = other.channels.find((c) => c.id === a.id);
        if (!b) continue;
        a.peer = b;
        b.peer = a;
        for (const ch of [a, b]) {
          if (ch.readyState !== 'connecting') continue;
          ch.readyState = 'open';
          ch.onopen?.();
        }
      }
    });
  }

  async getStats() {
    const t = this.net.candidateType;
    return new Map([
      ['T', { id: 'T', type: 'transport', selectedCandidatePairId: 'CP' }],
      ['CP', { id: 'CP', type: 'candidate-pair', localCandidateId: 'L', remoteCandidateId: 'R', state: 'succeeded', nominated: true }],
      ['L', { id: 'L', type: 'local-candidate', candidateType: t }],
      ['R', { id: 'R', type: 'remote-candidate', candidateType: 'host' }],
      ['D', { id: 'D', type: 'data-channel', label: 'automerge', state: this.channels[0]?.readyState, messagesSent: 3, messagesReceived: 4, bytesSent: 30, bytesReceived: 40 }],
    ]);
  }

  close() {
    if (this.connectionState === 'closed') return;
    this.connectionState = 'closed';
    for (const ch of this.channels) ch.close();
    this.net.pcs.delete(this.id);
    const other = this.peer;
    if (other && other.connectionState !== 'closed') {
      later(() => {
        if (other.connectionState === 'closed') return;
        other.connectionState = 'disconnected';
        other.onconnectionstatechange?.();
      });
    }
  }
}

class FakeDataChannel {
  readyState = 'connecting';
  binaryType = 'blob';
  bufferedAmount = 0;
  bufferedAmountLowThreshold = 0;
  onopen = null;
  onmessage = null;
  onclose = null;
  onbufferedamountlow = null;
  peer = null;
  /** Largest bufferedAmount seen, for the backpressure test. */
  maxBuffered = 0;

  constructor(pc, label) {
    this.pc = pc;
    this.label = label;
    this.id = 0;
  }

  send(data) {
    if (this.readyState !== 'open') throw new Error('InvalidStateError: not open');
    const copy = typeof data === 'string' ? data : new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice();
    const n = typeof copy === 'string' ? copy.length : copy.byteLength;
    if (n > 256 * 1024) throw new Error('OperationError: message too large');
    this.bufferedAmount += n;
    this.maxBuffered = Math.max(this.maxBuffered, this.bufferedAmount);
    if (this.pc.net.stalled) return;
    later(() => {
      const before = this.bufferedAmount;
      this.bufferedAmount -= n;
      if (before > this.bufferedAmountLowThreshold && this.bufferedAmount <= this.bufferedAmountLowThreshold) this.onbufferedamountlow?.();
      const peer = this.peer;
      if (peer?.readyState === 'open') peer.onmessage?.({ data: typeof copy === 'string' ? copy : copy.buffer });
    });
  }

  close() {
    if (this.readyState === 'closed') return;
    this.readyState = 'closed';
    later(() => this.onclose?.());
    const peer = this.peer;
    if (peer && peer.readyState !== 'closed') later(() => peer.close());
  }
}

// ---- An in-memory signaling hub (signal/PROTOCOL.md, minus authentication) -------------------

class FakeHub {
  up = true;
  clients = new Map(); // did → client
  swarms = new Map(); // swarm → Set(did)
  /** Every frame a client sent: {from, type, …}. */
  frames = [];
  servers = [{ urls: ['turn:turn.example:3478?transport=udp'], username: '1:x', credential: 'c' }];
  /** Rewrites signal payloads in transit (a man in the middle). */
  rewrite = (payload) => payload;

  connect(did) {
    if (!this.up) return Promise.reject(new Error('signaling: KUBE is down'));
    this.clients.get(did)?.drop(); // one connection per key, as KUBE does
    const client = new FakeSignalClient(this, did);
    this.clients.set(did, client);
    return new Promise((resolve) => later(() => resolve(client)));
  }

  /** KUBE goes away: every socket closes; connect() fails until restart(). */
  stop() {
    this.up = false;
    for (const c of [...this.clients.values()]) c.drop();
  }

  restart() {
    this.up = true;
  }

  deliver(did, msg) {
    const c = this.clients.get(did);
    if (c) later(() => c.emit(msg.type, msg));
  }

  leaveAll(did) {
    for (const [swarm, set] of this.swarms) {
      if (!set.delete(did)) continue;
      for (const p of set) this.deliver(p, { type: 'peer-left', swarm, peer: did });
    }
  }

  joinCount(did, swarm) {
    return this.frames.filter((f) => f.from === did && f.type === 'join' && f.swarm === swarm).length;
  }
}

class FakeSignalClient {
  #listeners = new Map();
  closed = false;

  constructor(hub, did) {
    this.hub = hub;
    this.id = did;
  }

  on(type, fn) {
    if (!this.#listeners.has(type)) this.#listeners.set(type, new Set());
    this.#listeners.get(type).add(fn);
    return () => this.#listeners.get(type)?.delete(fn);
  }

  emit(type, msg) {
    if (this.closed && type !== 'close') return;
    for (const fn of [...(this.#listeners.get(type) ?? [])]) fn(msg);
  }

  #frame(m) {
    if (this.closed) return false;
    this.hub.frames.push({ from: this.id, ...m });
    return true;
  }

  join(swarm) {
    if (!this.#frame({ type: 'join', swarm })) return Promise.reject(new Error('closed'));
    const set = this.hub.swarms.get(swarm) ?? new Set();
    this.hub.swarms.set(swarm, set);
    const others = [...set].filter((p) => p !== this.id);
    set.add(this.id);
    for (const p of others) this.hub.deliver(p, { type: 'peer-joined', swarm, peer: this.id });
    return new Promise((resolve) => later(() => resolve(others)));
  }

  leave(swarm) {
    if (!this.#frame({ type: 'leave', swarm })) return;
    const set = this.hub.swarms.get(swarm);
    if (!set?.delete(this.id)) return;
    for (const p of set) this.hub.deliver(p, { type: 'peer-left', swarm, peer: this.id });
  }

  send(to, swarm, payload) {
    if (!this.#frame({ type: 'signal', to, swarm, payload })) return;
    const set = this.hub.swarms.get(swarm);
    if (!set?.has(this.id) || !set.has(to)) return;
    const p = this.hub.rewrite(structuredClone(payload));
    this.hub.deliver(to, { type: 'signal', from: this.id, swarm, payload: p });
  }

  iceServers() {
    this.#frame({ type: 'ice-servers' });
    return new Promise((resolve) => later(() => resolve({ servers: structuredClone(this.hub.servers), ttl: 3600 })));
  }

  /** The server side closed the socket. */
  drop() {
    if (this.closed) return;
    this.closed = true;
    if (this.hub.clients.get(this.id) === this) {
      this.hub.clients.delete(this.id);
      this.hub.leaveAll(this.id);
    }
    later(() => this.emit('close', {}));
  }

  close() {
    this.drop();
  }
}

// ---- Access stubs and helpers -----------------------------------------------------------------

/** A SpaceAccess stand-in: `members` (did → role); readers may not send changes. */
class StubAccess {
  #fns = new Set();
  constructor(members) { this.members = new Map(Object.entries(members)); }
  isPeerAllowed(did) { return this.members.has(did); }
  mayShare(did) { return this.members.has(did); }
  mayReceive(did, _documentId, { changes }) {
    const role = this.members.get(did);
    return role !== undefined && (!changes || role !== 'reader');
  }
  on(type, fn) { if (type === 'change') this.#fns.add(fn); }
  off(type, fn) { if (type === 'change') this.#fns.delete(fn); }
  set(did, role) {
    if (role === undefined) this.members.delete(did);
    else this.members.set(did, role);
    for (const fn of [...this.#fns]) fn();
  }
  get listeners() { return this.#fns.size; }
}

/** Polls `cond` until true (or fails after `ms`). No fixed sleeps. */
async function waitFor(cond, what, ms = 5000) {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const SPACE = 'did:key:z6MkSpaceForTheseTests';
const cleanups = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()();
});

/** A peer: identity, adapter, Repo. */
function makePeer({ hub, net, access, identity = Identity.generate(), repo = true, ...opts }) {
  const adapter = new WebRTCAdapter({
    identity,
    signal: () => hub.connect(identity.did),
    access,
    RTCPeerConnection: net.RTCPeerConnectionFor(identity.did),
    retry: { minMs: 10, maxMs: 100 },
    ...opts,
  });
  const refused = [];
  adapter.on('refused', (e) => refused.push(e));
  const r = repo ? new Repo({ network: [adapter], peerId: `peer-${identity.did.slice(-6)}` }) : undefined;
  cleanups.push(async () => {
    if (r) await r.shutdown();
    else adapter.disconnect();
  });
  return { identity, did: identity.did, adapter, repo: r, refused };
}

const openPeer = (p, did) => p.adapter.peers().find((x) => x.did === did && x.state === 'open');

/** Two member ids, ordered so that `low` makes the offers. */
function twoIds() {
  const [x, y] = [Identity.generate(), Identity.generate()];
  return x.did < y.did ? [x, y] : [y, x];
}

/** Two editors in one swarm (the lower did, `a`, offers), connected. `aOptions(net, x)` adds
 * to a's adapter options, e.g. its own `access` or `RTCPeerConnection`. */
async function openPair({ aOptions = () => ({}) } = {}) {
  const hub = new FakeHub();
  const net = new FakeNet();
  const [x, y] = twoIds();
  const members = { [x.did]: 'editor', [y.did]: 'editor' };
  const a = makePeer({ hub, net, identity: x, access: new StubAccess(members), ...aOptions(net, x, members) });
  const b = makePeer({ hub, net, identity: y, access: new StubAccess(members) });
  a.adapter.joinSpace(SPACE);
  b.adapter.joinSpace(SPACE);
  await waitFor(() => openPeer(a, b.did) && openPeer(b, a.did), 'open');
  return { hub, net, x, y, a, b };
}

// ---- Tests --------------------------------------------------------------------------------------

test('spaceSwarm is hex SHA-256 of kube-space-v1\\n<spaceDid>', () => {
  const want = Buffer.from(sha256(new TextEncoder().encode(`kube-space-v1\n${SPACE}`))).toString('hex');
  assert.equal(spaceSwarm(SPACE), want);
  assert.match(spaceSwarm(SPACE), /^[0-9a-f]{64}$/);
});

test('two Repos sync a document over the adapter; a non-member gets nothing', async () => {
  const hub = new FakeHub();
  const net = new FakeNet();
  const [lowId, highId] = twoIds();
  const outsiderId = Identity.generate();
  const members = { [lowId.did]: 'editor', [highId.did]: 'editor' };
  const a = makePeer({ hub, net, identity: lowId, access: new StubAccess(members) });
  const b = makePeer({ hub, net, identity: highId, access: new StubAccess(members) });
  // The outsider would talk to anyone: it is the members who refuse it.
  const c = makePeer({ hub, net, identity: outsiderId, access: new StubAccess({ [lowId.did]: 'editor', [highId.did]: 'editor', [outsiderId.did]: 'editor' }) });

  const states = [];
  a.adapter.on('peers', (ps) => states.push(...ps.map((p) => p.state)));
  for (const p of [a, b, c]) p.adapter.joinSpace(SPACE);

  await waitFor(() => openPeer(a, b.did) && openPeer(b, a.did), 'a and b open');
  assert.equal(a.adapter.signalState, 'open');
  assert.ok(states.includes('connecting') && states.includes('authenticating') && states.includes('open'));
  // ICE servers came from signaling and went into every RTCPeerConnection.
  assert.ok(net.configs.length >= 2);
  for (const cfg of net.configs) assert.deepEqual(cfg, { iceServers: hub.servers, iceTransportPolicy: 'all' });
  // The Repo knows b by a name from b's proven did, never by the peerId b chose (which
  // could be KUBE's); didOf maps it back; pathOf reads the selected candidate pair.
  const bPeerId = openPeer(a, b.did).peerId;
  assert.equal(bPeerId, `webrtc:${b.did}`);
  assert.notEqual(bPeerId, b.repo.peerId);
  assert.equal(a.adapter.didOf(bPeerId), b.did);
  assert.equal(a.adapter.didOf(b.repo.peerId), undefined);
  assert.equal(await a.adapter.pathOf(b.did), 'direct');
  const st = await a.adapter.stats(b.did);
  assert.deepEqual(st.pair, { local: 'host', remote: 'host', state: 'succeeded' });
  assert.equal(st.dataChannel.state, 'open');
  assert.equal(st.dataChannel.messagesReceived, 4);
  assert.equal(await a.adapter.stats('did:key:zNobody'), undefined);
  await waitFor(() => openPeer(a, b.did).path === 'direct', 'path in peers()');

  const handle = a.repo.create({ title: 'hello' });
  const atB = await b.repo.find(handle.url);
  assert.equal(atB.doc().title, 'hello');
  atB.change((d) => { d.title = 'hello from b'; });
  await waitFor(() => handle.doc().title === 'hello from b', 'b\'s change at a');

  // The outsider: refused by both members, holds no open connection, cannot find the doc.
  await waitFor(() => a.refused.some((e) => e.did === c.did) && b.refused.some((e) => e.did === c.did), 'members refuse c');
  assert.ok(a.refused.filter((e) => e.did === c.did).every((e) => e.reason === 'not-member'));
  assert.equal(a.adapter.peers().filter((p) => p.did === c.did).length, 0);
  assert.equal(b.adapter.peers().filter((p) => p.did === c.did).length, 0);
  assert.equal(c.adapter.peers().filter((p) => p.state === 'open').length, 0);
  await assert.rejects(c.repo.find(handle.url), /unavailable/);
  assert.equal(net.openPairs(), 1);
});

test('changes from a peer the access rules call a reader are dropped, its reads served', async () => {
  const hub = new FakeHub();
  const net = new FakeNet();
  const [x, y] = twoIds();
  // a thinks b is a reader; b thinks a is an editor.
  const a = makePeer({ hub, net, identity: x, access: new StubAccess({ [x.did]: 'admin', [y.did]: 'reader' }) });
  const b = makePeer({ hub, net, identity: y, access: new StubAccess({ [x.did]: 'admin', [y.did]: 'reader' }) });
  a.adapter.joinSpace(SPACE);
  b.adapter.joinSpace(SPACE);
  await waitFor(() => openPeer(a, b.did) && openPeer(b, a.did), 'open');

  const handle = a.repo.create({ n: 1 });
  const atB = await b.repo.find(handle.url); // a reader may read
  assert.equal(atB.doc().n, 1);
  atB.change((d) => { d.n = 2; });
  await waitFor(() => a.refused.some((e) => e.reason === 'reader' && e.documentId === handle.documentId), 'a refuses b\'s change');
  assert.equal(handle.doc().n, 1);
  const r = a.refused.find((e) => e.reason === 'reader');
  assert.equal(r.did, b.did);
  assert.equal(r.direction, 'in');
  // a's own changes still reach b.
  handle.change((d) => { d.m = 'from a'; });
  await waitFor(() => atB.doc().m === 'from a', 'a\'s change at b');
  assert.equal(handle.doc().n, 1);
});

test('documents access does not share are not sent', async () => {
  const hub = new FakeHub();
  const net = new FakeNet();
  const [x, y] = twoIds();
  const members = { [x.did]: 'editor', [y.did]: 'editor' };
  const secretAccess = new StubAccess(members);
  let secret;
  secretAccess.mayShare = (did, documentId) => documentId !== secret;
  const a = makePeer({ hub, net, identity: x, access: secretAccess });
  const b = makePeer({ hub, net, identity: y, access: new StubAccess(members) });
  a.adapter.joinSpace(SPACE);
  b.adapter.joinSpace(SPACE);
  await waitFor(() => openPeer(a, b.did) && openPeer(b, a.did), 'open');
  const hidden = a.repo.create({ s: 'secret' });
  secret = hidden.documentId;
  const shown = a.repo.create({ s: 'public' });
  assert.equal((await b.repo.find(shown.url)).doc().s, 'public');
  await assert.rejects(b.repo.find(hidden.url), /unavailable/);
  assert.ok(a.refused.some((e) => e.direction === 'out' && e.reason === 'not-allowed' && e.documentId === secret));
});

test('flipping access emits change and closes the connection at once', async () => {
  const hub = new FakeHub();
  const net = new FakeNet();
  const [x, y] = twoIds();
  const members = { [x.did]: 'editor', [y.did]: 'editor' };
  const accessA = new StubAccess(members);
  const a = makePeer({ hub, net, identity: x, access: accessA });
  const b = makePeer({ hub, net, identity: y, access: new StubAccess(members) });
  a.adapter.joinSpace(SPACE);
  b.adapter.joinSpace(SPACE);
  await waitFor(() => openPeer(a, b.did) && openPeer(b, a.did), 'open');
  const bPeerId = openPeer(a, b.did).peerId;
  const disconnected = [];
  a.adapter.on('peer-disconnected', (e) => disconnected.push(e.peerId));

  accessA.set(b.did, undefined); // b revoked
  assert.deepEqual(disconnected, [bPeerId], 'peer-disconnected synchronously with the change');
  assert.equal(a.adapter.peers().length, 0);
  assert.equal(a.adapter.didOf(bPeerId), undefined);
  assert.ok(a.refused.some((e) => e.did === b.did && e.reason === 'revoked'));
  // b hears the bye (or the channel close) and drops its side too; nobody redials.
  await waitFor(() => b.adapter.peers().length === 0, 'b drops its side');
  await waitFor(() => net.openPairs() === 0, 'no connected pair');
  // A change made now does not reach b.
  const h = a.repo.create({ after: 'revocation' });
  await assert.rejects(b.repo.find(h.url), /unavailable/);
  assert.equal(a.adapter.peers().length, 0);

  // Allowed again: the connection comes back.
  accessA.set(b.did, 'editor');
  await waitFor(() => openPeer(a, b.did) && openPeer(b, a.did), 'open again');
});

test('both sides dialing at once end with exactly one connection', async () => {
  const hub = new FakeHub();
  const net = new FakeNet();
  const [x, y] = twoIds();
  const members = { [x.did]: 'editor', [y.did]: 'editor' };
  const a = makePeer({ hub, net, identity: x, access: new StubAccess(members) });
  const b = makePeer({ hub, net, identity: y, access: new StubAccess(members) });
  await waitFor(() => a.adapter.signalState === 'open' && b.adapter.signalState === 'open', 'signaling');
  // Same tick: each sees the other (peers or peer-joined), the high one asks, the low one dials.
  a.adapter.joinSpace(SPACE);
  b.adapter.joinSpace(SPACE);
  await waitFor(() => openPeer(a, b.did) && openPeer(b, a.did), 'open');
  const swarm = spaceSwarm(SPACE);
  const offers = () => hub.frames.filter((f) => f.type === 'signal' && f.payload.kind === 'offer');

  // The high did asking again while connected, a stray second offer from the low did (both
  // "dialing at once"), a duplicate peer-joined: none makes a second connection.
  const clientOf = (did) => hub.clients.get(did);
  clientOf(a.did).emit('peer-joined', { type: 'peer-joined', swarm, peer: b.did });
  clientOf(b.did).emit('peer-joined', { type: 'peer-joined', swarm, peer: a.did });
  const offer = offers().at(-1).payload;
  clientOf(b.did).emit('signal', { type: 'signal', from: a.did, swarm, payload: { ...offer, cid: 'ffffffffffffffff' } });
  // The high did may not offer at all.
  clientOf(a.did).emit('signal', { type: 'signal', from: b.did, swarm, payload: { ...offer, cid: 'eeeeeeeeeeeeeeee' } });
  await waitFor(() => hub.frames.some((f) => f.type === 'signal' && f.payload.kind === 'bye' && f.payload.reason === 'busy'), 'b answers the stray offer with busy');
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));

  assert.equal(a.adapter.peers().length, 1);
  assert.equal(b.adapter.peers().length, 1);
  assert.ok(openPeer(a, b.did) && openPeer(b, a.did));
  assert.equal(net.openPairs(), 1);
  // Only the low did ever offered.
  assert.ok(offers().every((f) => f.from === a.did));
});

test('a man in the middle of signaling who swaps fingerprints gets refused on both sides', async () => {
  const hub = new FakeHub();
  const net = new FakeNet();
  const [x, y] = twoIds();
  const members = { [x.did]: 'editor', [y.did]: 'editor' };
  hub.rewrite = (p) => {
    if (p.kind === 'offer' || p.kind === 'answer') {
      p.sdp = p.sdp.replace(/a=fingerprint:sha-256 \S+/g, `a=fingerprint:sha-256 ${Array(32).fill('EE').join(':')}`);
    }
    return p;
  };
  const a = makePeer({ hub, net, identity: x, access: new StubAccess(members) });
  const b = makePeer({ hub, net, identity: y, access: new StubAccess(members) });
  a.adapter.joinSpace(SPACE);
  b.adapter.joinSpace(SPACE);
  await waitFor(() => a.refused.some((e) => e.code === 'bad-signature') && b.refused.some((e) => e.code === 'bad-signature'), 'both refuse');
  await waitFor(() => a.adapter.peers().length === 0 && b.adapter.peers().length === 0, 'closed');
  assert.ok(sdpFingerprint(hub.frames.find((f) => f.payload?.kind === 'offer').payload.sdp));
});

test('signaling closing and coming back re-joins; open connections stay up meanwhile', async () => {
  const hub = new FakeHub();
  const net = new FakeNet();
  const [x, y] = twoIds();
  const z = Identity.generate();
  const members = { [x.did]: 'editor', [y.did]: 'editor', [z.did]: 'editor' };
  const a = makePeer({ hub, net, identity: x, access: new StubAccess(members) });
  const b = makePeer({ hub, net, identity: y, access: new StubAccess(members) });
  const states = [];
  a.adapter.on('signal-state', (s) => states.push(s));
  a.adapter.joinSpace(SPACE);
  b.adapter.joinSpace(SPACE);
  await waitFor(() => openPeer(a, b.did) && openPeer(b, a.did), 'open');
  const swarm = spaceSwarm(SPACE);
  assert.equal(hub.joinCount(a.did, swarm), 1);
  const iceAsks = hub.frames.filter((f) => f.from === a.did && f.type === 'ice-servers').length;

  hub.stop(); // KUBE restarts
  await waitFor(() => a.adapter.signalState !== 'open', 'a notices');
  // Attempts fail while KUBE is down; the p2p connection does not care.
  await waitFor(() => states.filter((s) => s === 'connecting').length >= 3, 'retries with backoff');
  assert.ok(openPeer(a, b.did));
  const handle = a.repo.create({ during: 'outage' });
  assert.equal((await b.repo.find(handle.url)).doc().during, 'outage');

  hub.restart();
  await waitFor(() => hub.joinCount(a.did, swarm) === 2 && hub.joinCount(b.did, swarm) === 2, 're-joined');
  await waitFor(() => a.adapter.signalState === 'open', 'open again');
  assert.ok(hub.frames.filter((f) => f.from === a.did && f.type === 'ice-servers').length > iceAsks, 'ICE servers refreshed');
  assert.equal(net.openPairs(), 1, 'no reconnection of the p2p link');

  // A member who arrives after the restart is found through the re-joined swarm.
  const c = makePeer({ hub, net, identity: z, access: new StubAccess(members) });
  c.adapter.joinSpace(SPACE);
  await waitFor(() => openPeer(c, a.did) && openPeer(c, b.did), 'c meets both');
  assert.equal((await c.repo.find(handle.url)).doc().during, 'outage');
});

test('a connection that fails is redialed; disconnect() says bye and cleans up', async () => {
  const hub = new FakeHub();
  const net = new FakeNet();
  const [x, y] = twoIds();
  const members = { [x.did]: 'editor', [y.did]: 'editor' };
  const accessA = new StubAccess(members);
  const a = makePeer({ hub, net, identity: x, access: accessA, iceTransportPolicy: 'relay' });
  const b = makePeer({ hub, net, identity: y, access: new StubAccess(members) });
  net.candidateType = 'relay';
  a.adapter.joinSpace(SPACE);
  b.adapter.joinSpace(SPACE);
  await waitFor(() => openPeer(a, b.did) && openPeer(b, a.did), 'open');
  assert.equal(net.configs[0].iceTransportPolicy, 'relay');
  assert.equal(await a.adapter.pathOf(b.did), 'relay');
  const firstPeerId = openPeer(a, b.did).peerId;

  // The transport fails under a (ICE failure): a closes, says bye, and dials again.
  const [pcA] = net.pcsOf(a.did);
  pcA.connectionState = 'failed';
  pcA.onconnectionstatechange();
  assert.equal(a.adapter.peers().length, 0);
  await waitFor(() => openPeer(a, b.did) && openPeer(b, a.did) && net.openPairs() === 1, 'redialed');
  assert.equal(openPeer(a, b.did).peerId, firstPeerId);

  // disconnect(): bye to b, leave the swarm, close signaling, no listener left behind.
  a.adapter.disconnect();
  assert.equal(a.adapter.peers().length, 0);
  assert.equal(a.adapter.signalState, 'closed');
  assert.equal(accessA.listeners, 0);
  await waitFor(() => b.adapter.peers().length === 0, 'b hears bye');
  assert.ok(hub.frames.some((f) => f.from === a.did && f.type === 'leave'));
  assert.ok(hub.frames.some((f) => f.from === a.did && f.payload?.kind === 'bye' && f.payload.reason === 'closed'));
  await waitFor(() => !hub.clients.has(a.did), 'signaling closed');

  // connect() again (the Repo's reconnect) re-joins the remembered space.
  a.adapter.connect(a.repo.peerId);
  await waitFor(() => openPeer(a, b.did) && openPeer(b, a.did), 'back');
});

test('backpressure: big documents wait on bufferedAmount; a stalled peer past the bound is dropped', async () => {
  const hub = new FakeHub();
  const net = new FakeNet();
  const [x, y] = twoIds();
  const members = { [x.did]: 'editor', [y.did]: 'editor' };
  const a = makePeer({ hub, net, identity: x, access: new StubAccess(members), maxQueueBytes: 8 << 20 });
  const b = makePeer({ hub, net, identity: y, access: new StubAccess(members) });
  a.adapter.joinSpace(SPACE);
  b.adapter.joinSpace(SPACE);
  await waitFor(() => openPeer(a, b.did) && openPeer(b, a.did), 'open');

  // 3 MiB of incompressible bytes (a bytes scalar: a string would be millions of operations).
  const big = new Uint8Array(randomBytes(3 << 20));
  const handle = a.repo.create({ big });
  const atB = await b.repo.find(handle.url);
  assert.deepEqual(new Uint8Array(atB.doc().big), big);
  const channels = [...net.pcs.values()].flatMap((pc) => pc.channels);
  const peak = Math.max(...channels.map((c) => c.maxBuffered));
  assert.ok(peak > 1 << 20, `a big message was under way (peak ${peak})`);
  assert.ok(peak <= (1 << 20) + 16 * 1024, `never more than ~1 MiB handed to the channel (peak ${peak})`);

  // Now b stops reading: a queues up to maxQueueBytes, then gives the connection up. (Fed to
  // send() as the Repo would: the sync protocol itself waits for b's answers.)
  net.stalled = true;
  const bPeerId = openPeer(a, b.did).peerId;
  for (let i = 0; i < 6 && openPeer(a, b.did); i++) {
    a.adapter.send({ type: 'sync', senderId: a.repo.peerId, targetId: bPeerId, documentId: handle.documentId, data: randomBytes(2 << 20) });
  }
  await waitFor(() => a.refused.some((e) => e.reason === 'queue-overflow'), 'queue overflow');
  assert.equal(a.adapter.peers().filter((p) => p.did === b.did && p.state === 'open').length, 0);
});

test('garbage on the channel closes the connection', async () => {
  const { net, a, b } = await openPair();
  // A text frame from b's channel.
  net.pcsOf(b.did)[0].channels[0].send('hello');
  await waitFor(() => [...a.refused, ...b.refused].some((e) => e.reason === 'framing' && e.code === 'not-binary'), 'framing refusal');
  assert.ok(a.refused.some((e) => e.reason === 'framing' && e.code === 'not-binary'));
  assert.equal(openPeer(a, b.did), undefined);
});

test('the adapter is ready at once (the Repo works offline) and validates its options', async () => {
  const hub = new FakeHub();
  hub.stop();
  const net = new FakeNet();
  const access = new StubAccess({});
  const p = makePeer({ hub, net, access });
  assert.equal(p.adapter.isReady(), true);
  await p.adapter.whenReady();
  const h = p.repo.create({ offline: true });
  assert.equal(h.doc().offline, true);
  await waitFor(() => p.adapter.signalState === 'connecting' || p.adapter.signalState === 'closed', 'trying');
  assert.throws(() => new WebRTCAdapter({ identity: p.identity, signal: () => {}, access: {}, RTCPeerConnection: net.RTCPeerConnectionFor('x') }), /access\.mayShare/);
  assert.throws(() => new WebRTCAdapter({ identity: p.identity, signal: () => {}, access, RTCPeerConnection: undefined }), /RTCPeerConnection/);
  assert.throws(() => new WebRTCAdapter({ identity: p.identity, signal: () => {}, access, RTCPeerConnection: net.RTCPeerConnectionFor('x'), iceTransportPolicy: 'none' }), /iceTransportPolicy/);
});

test('SignalClient.iceServers() asks ice-servers and resolves servers and ttl, or the refusal', async () => {
  const sent = [];
  const ws = { send: (d) => sent.push(JSON.parse(d)), close() { this.onclose?.(); } };
  const client = new SignalClient(ws, 'did:key:zMe');
  const reply = (m) => ws.onmessage({ data: JSON.stringify({ v: 1, ...m }) });

  const asked = client.iceServers();
  assert.deepEqual(sent.at(-1), { v: 1, type: 'ice-servers' });
  const servers = [{ urls: ['stun:kube.example:3478', 'turn:kube.example:3478?transport=udp'], username: '1700000000:did:key:zMe', credential: 'c2VjcmV0' }];
  reply({ type: 'ice-servers', servers: [...servers, { urls: 7 }], ttl: 3600 });
  assert.deepEqual(await asked, { servers, ttl: 3600 });

  const refused = client.iceServers();
  reply({ type: 'error', code: 'rate-limited', message: 'not for this request' });
  reply({ type: 'error', code: 'no-ice-servers', message: 'TURN is disabled' });
  await assert.rejects(refused, (e) => e.code === 'no-ice-servers');

  const closed = client.iceServers();
  ws.close();
  await assert.rejects(closed, (e) => e.code === 'closed');
  await assert.rejects(new SignalClient(ws, 'x').iceServers({ timeoutMs: 10 }), (e) => e.code === 'timeout');
});

test('ephemeral messages: one short session per connection, a small payload, a sane count', async () => {
  const { net, a, b } = await openPair();
  const seen = [];
  a.adapter.on('message', (m) => { if (m.type === 'ephemeral') seen.push(m); });
  const documentId = '2Xc4BPfXqo8CHZFFa6uNJGMHR6v3';
  /** b writes one raw automerge message on its channel (one frame: flag 0, then the message). */
  const raw = (fields) => {
    const msg = encodeMessage(KIND_AUTOMERGE, cbor.encode({ type: 'ephemeral', senderId: b.repo.peerId, targetId: a.repo.peerId, documentId, count: 1, data: new Uint8Array(4), ...fields }));
    const frame = new Uint8Array(msg.length + 1);
    frame.set(msg, 1);
    net.pcsOf(b.did)[0].channels[0].send(frame);
  };
  raw({ sessionId: 's1' });
  raw({ sessionId: 's2', count: 2 }); // a second session on one connection
  raw({ sessionId: 'x'.repeat(65) });
  raw({ sessionId: 's1', data: new Uint8Array(64 * 1024 + 1) });
  raw({ sessionId: 's1', count: -1 });
  raw({ sessionId: 's1', data: 12 });
  raw({ sessionId: 's1', count: 3 });
  await waitFor(() => seen.length === 2 && a.refused.length >= 5, 'two ephemeral messages through, five refused');
  assert.deepEqual(seen.map((m) => [m.sessionId, m.count, m.senderId]), [['s1', 1, `webrtc:${b.did}`], ['s1', 3, `webrtc:${b.did}`]]);
  assert.deepEqual(a.refused.map((e) => e.reason).sort(), ['another-session', 'bad-message', 'bad-message', 'bad-message', 'bad-message']);
});

test('a channel that opens before our session descriptions are in place waits for them (seen in Chromium)', async () => {
  // a's connections report no remote description for their first reads after the channel
  // opens, as Chromium's offerer did now and then.
  const late = (net, x) => class extends net.RTCPeerConnectionFor(x.did) {
    constructor(config) {
      super(config);
      let real = null;
      let hidden = 0;
      Object.defineProperty(this, 'remoteDescription', {
        get: () => (real && this.connectionState === 'connected' && hidden++ < 3 ? null : real),
        set: (v) => { real = v; },
      });
    }
  };
  const { a, b } = await openPair({ aOptions: (net, x) => ({ RTCPeerConnection: late(net, x) }) });
  assert.deepEqual([...a.refused, ...b.refused].filter((e) => e.reason === 'auth-failed'), []);
});

test('what is queued of a document a still-allowed peer lost access to does not go out', async () => {
  // A peer in two spaces: it keeps the connection but loses the documents of one of them.
  const hidden = new Set();
  let access;
  const { net, y, a, b } = await openPair({
    aOptions: (_net, _x, members) => {
      access = new StubAccess(members);
      access.mayShare = (did, documentId) => access.members.has(did) && !hidden.has(documentId);
      return { access };
    },
  });
  net.stalled = true; // b reads nothing for now: a's messages wait in its queue
  const bPeerId = openPeer(a, b.did).peerId;
  const lost = '2Xc4BPfXqo8CHZFFa6uNJGMHR6v3';
  const kept = '3Xc4BPfXqo8CHZFFa6uNJGMHR6v3';
  for (const documentId of [lost, lost, kept, lost]) {
    a.adapter.send({ type: 'sync', senderId: a.repo.peerId, targetId: bPeerId, documentId, data: randomBytes(1 << 20) });
  }
  hidden.add(lost);
  access.set(y.did, 'editor'); // a 'change': still allowed, no longer for `lost`
  const withdrawn = a.refused.filter((e) => e.reason === 'withdrawn');
  // The first message was already going out (its frames had started); the other two go nowhere.
  assert.equal(withdrawn.length, 2, JSON.stringify(a.refused));
  assert.ok(withdrawn.every((e) => e.documentId === lost));
  assert.ok(openPeer(a, b.did), 'the connection stays');
});
