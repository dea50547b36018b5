// A small client for KUBE's signaling (signal/PROTOCOL.md) and the invitation exchange over it
// (halo/CREDENTIALS.md "Invitations"): host and guest meet in the swarm
// `invitationSwarm(invitation)` and pass the Host/Guest messages as `signal` payloads.

import WebSocket from 'isomorphic-ws';
import { Guest, InvitationError, invitationSwarm } from './invitation.js';
import { b64url, utf8 } from './encoding.js';

/** @typedef {import('./identity.js').Identity} Identity */
/** @typedef {import('./invitation.js').Host} Host */
/** @typedef {import('./invitation.js').Invitation} Invitation */
/** @typedef {import('./credential.js').Credential} Credential */

export const SIGNAL_PATH = '/.well-known/kube/signal';

/** `https://host:port` → `wss://host:port/.well-known/kube/signal` (http → ws). */
function signalEndpoint(url) {
  const u = new URL(url);
  if (u.protocol !== 'https:' && u.protocol !== 'http:') throw new Error(`KUBE url must be https://…, not ${url}`);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  u.pathname = SIGNAL_PATH;
  u.search = '';
  u.hash = '';
  return u.toString();
}

/** Whether `s` looks like an RTCIceServer (`urls` a string or strings). @param {any} s */
function isIceServer(s) {
  const urls = s?.urls;
  return typeof urls === 'string' || (Array.isArray(urls) && urls.length > 0 && urls.every((u) => typeof u === 'string'));
}

/** Listeners by message type, for the signaling clients below. */
class Emitter {
  #listeners = new Map();

  /** @param {string} type @param {any} msg */
  emit(type, msg) {
    for (const fn of [...(this.#listeners.get(type) ?? [])]) fn(msg);
  }

  /** @param {string} type @param {(msg: any) => void} fn @returns {() => void} unsubscribe */
  on(type, fn) {
    if (!this.#listeners.has(type)) this.#listeners.set(type, new Set());
    this.#listeners.get(type).add(fn);
    return () => this.#listeners.get(type)?.delete(fn);
  }
}

/** An authenticated signaling connection. Events (`on(type, fn)`): `peers`, `peer-joined`,
 * `peer-left`, `signal`, `error` (the server's messages, as objects) and `close`. */
export class SignalClient extends Emitter {
  /** @type {WebSocket} */
  #ws;
  /** The did KUBE welcomed. */
  id;

  constructor(ws, id) {
    super();
    this.#ws = ws;
    this.id = id;
    ws.onmessage = (ev) => {
      let msg;
      try {
        msg = JSON.parse(String(ev.data));
      } catch {
        return;
      }
      this.emit(msg?.type, msg);
    };
    ws.onclose = () => this.emit('close', {});
  }

  #send(msg) {
    this.#ws.send(JSON.stringify({ v: 1, ...msg }));
  }

  /** Joins `swarm`; resolves the other peers in it (KUBE's `peers` answer).
   * @param {string} swarm 64 hex @returns {Promise<string[]>} */
  join(swarm, { timeoutMs = 10_000 } = {}) {
    return new Promise((resolve, reject) => {
      const done = (f) => { offPeers(); offError(); clearTimeout(timer); f(); };
      const offPeers = this.on('peers', (m) => { if (m.swarm === swarm.toLowerCase()) done(() => resolve(m.peers)); });
      const offError = this.on('error', (m) => done(() => reject(new Error(`signaling: ${m.code}: ${m.message}`))));
      const timer = setTimeout(() => done(() => reject(new Error(`signaling: no answer to join within ${timeoutMs} ms`))), timeoutMs);
      this.#send({ type: 'join', swarm });
    });
  }

  /**
   * Asks KUBE for its STUN and TURN servers (`ice-servers`): resolves `{servers, ttl}`,
   * `servers` being RTCIceServer objects (TURN with REST credentials valid `ttl` seconds).
   * Rejects with `code: 'no-ice-servers'` when KUBE has TURN disabled, or on timeout or close.
   * @param {{timeoutMs?: number}} [o]
   * @returns {Promise<{servers: RTCIceServer[], ttl: number}>}
   */
  iceServers({ timeoutMs = 10_000 } = {}) {
    return new Promise((resolve, reject) => {
      const done = (f) => { offAnswer(); offError(); offClose(); clearTimeout(timer); f(); };
      const fail = (message, code) => done(() => reject(Object.assign(new Error(message), { code })));
      const offAnswer = this.on('ice-servers', (m) => {
        const servers = Array.isArray(m.servers) ? m.servers.filter(isIceServer) : [];
        done(() => resolve({ servers, ttl: Number.isFinite(m.ttl) ? m.ttl : 0 }));
      });
      // Errors are not tied to a request; only this code answers `ice-servers`.
      const offError = this.on('error', (m) => { if (m.code === 'no-ice-servers') fail(`signaling: ${m.code}: ${m.message}`, m.code); });
      const offClose = this.on('close', () => fail('signaling closed', 'closed'));
      const timer = setTimeout(() => fail(`signaling: no ice-servers answer within ${timeoutMs} ms`, 'timeout'), timeoutMs);
      this.#send({ type: 'ice-servers' });
    });
  }

  /** @param {string} swarm */
  leave(swarm) {
    this.#send({ type: 'leave', swarm });
  }

  /** Sends `payload` to `to` in `swarm` (both must have joined it).
   * @param {string} to @param {string} swarm @param {any} payload */
  send(to, swarm, payload) {
    this.#send({ type: 'signal', to, swarm, payload });
  }

  close() {
    this.#ws.close();
  }
}

/**
 * Connects to KUBE's signaling and authenticates with `identity`: signs
 * `kube-signal-v1\n<nonce>\n<origin>`, where origin is what the WebSocket request's `Origin`
 * header carried (a browser page's origin; none, so empty, from Node).
 * @param {object} o
 * @param {string} o.url `https://host:port` of the KUBE
 * @param {Identity} o.identity
 * @param {string} [o.origin] default `location.origin` in a browser, else ''
 * @param {number} [o.timeoutMs]
 * @returns {Promise<SignalClient>}
 */
export function connectSignal({ url, identity, origin = globalThis.location?.origin ?? '', timeoutMs = 10_000 }) {
  const ws = new WebSocket(signalEndpoint(url));
  return new Promise((resolve, reject) => {
    const fail = (e) => {
      clearTimeout(timer);
      try { ws.close(); } catch { /* already closed */ }
      reject(e);
    };
    const timer = setTimeout(() => fail(new Error(`signaling: not welcomed within ${timeoutMs} ms`)), timeoutMs);
    ws.onerror = (ev) => fail(ev?.error instanceof Error ? ev.error : new Error('signaling: WebSocket error'));
    ws.onclose = () => fail(new Error('signaling: closed before welcome'));
    ws.onmessage = (ev) => {
      let msg;
      try {
        msg = JSON.parse(String(ev.data));
      } catch {
        return fail(new Error('signaling: a frame that is not JSON'));
      }
      if (msg.type === 'challenge') {
        const signature = b64url.encode(identity.sign(utf8(`kube-signal-v1\n${msg.nonce}\n${origin}`)));
        ws.send(JSON.stringify({ v: 1, type: 'auth', id: identity.did, signature }));
      } else if (msg.type === 'welcome') {
        clearTimeout(timer);
        ws.onerror = null;
        resolve(new SignalClient(ws, msg.id));
      } else if (msg.type === 'error') {
        fail(new Error(`signaling: ${msg.code}: ${msg.message}`));
      }
    };
  });
}

/**
 * Signaling through every KUBE of a cluster at once (SPEC §6: clients get every KUBE in their
 * signaling list), with the interface of one `SignalClient`, so a `WebRTCAdapter` or an
 * invitation uses it unchanged. Peers joined at any of the KUBEs are found: `join` answers the
 * union of the peers each KUBE reports, `peer-joined` fires when a peer appears at its first
 * KUBE and `peer-left` when it has left its last, `send` goes through a KUBE where the peer is
 * (the first one otherwise), `ice-servers` merges every KUBE's servers, and `close` fires once
 * every connection has closed. Signaling ids are dids, so one peer is one id at every KUBE.
 */
export class SignalCluster extends Emitter {
  /** @type {SignalClient[]} */
  #clients;
  /** `${swarm} ${peer}` → the clients (indexes) where the peer is present. */
  #presence = new Map();
  #open;
  /** The did the KUBEs welcomed. */
  id;

  /** @param {SignalClient[]} clients connected with the same identity */
  constructor(clients) {
    super();
    if (clients.length === 0) throw new Error('SignalCluster needs at least one connection');
    this.#clients = clients;
    this.id = clients[0].id;
    this.#open = clients.length;
    clients.forEach((c, i) => {
      c.on('peer-joined', (m) => { if (this.#add(m.swarm, m.peer, i)) this.emit('peer-joined', m); });
      c.on('peer-left', (m) => { if (this.#remove(m.swarm, m.peer, i)) this.emit('peer-left', m); });
      c.on('signal', (m) => this.emit('signal', m));
      c.on('error', (m) => this.emit('error', m));
      c.on('close', () => {
        for (const [key, at] of this.#presence) {
          if (at.delete(i) && at.size === 0) {
            this.#presence.delete(key);
            const [swarm, peer] = key.split(' ');
            this.emit('peer-left', { type: 'peer-left', swarm, peer });
          }
        }
        this.#open -= 1;
        if (this.#open === 0) this.emit('close', {});
      });
    });
  }

  /** Whether the peer is new to the cluster's view. */
  #add(swarm, peer, i) {
    const key = `${String(swarm).toLowerCase()} ${peer}`;
    const at = this.#presence.get(key) ?? new Set();
    const fresh = at.size === 0;
    at.add(i);
    this.#presence.set(key, at);
    return fresh;
  }

  /** Whether the peer has left its last KUBE. */
  #remove(swarm, peer, i) {
    const key = `${String(swarm).toLowerCase()} ${peer}`;
    const at = this.#presence.get(key);
    if (!at || !at.delete(i)) return false;
    if (at.size > 0) return false;
    this.#presence.delete(key);
    return true;
  }

  /** Joins `swarm` at every KUBE; resolves the peers found at any of them (rejects only when
   * every KUBE refused). @param {string} swarm @returns {Promise<string[]>} */
  async join(swarm, o = {}) {
    const results = await Promise.allSettled(this.#clients.map((c) => c.join(swarm, o)));
    const peers = new Set();
    results.forEach((r, i) => {
      if (r.status !== 'fulfilled') return;
      for (const p of r.value) {
        this.#add(swarm, p, i);
        peers.add(p);
      }
    });
    if (results.every((r) => r.status === 'rejected')) throw results[0].reason;
    return [...peers];
  }

  /** Every KUBE's STUN/TURN servers (a relay through any of them), the shortest `ttl`. */
  async iceServers(o = {}) {
    const results = await Promise.allSettled(this.#clients.map((c) => c.iceServers(o)));
    const ok = results.filter((r) => r.status === 'fulfilled').map((r) => r.value);
    if (ok.length === 0) throw results[0].reason;
    const servers = [];
    const seen = new Set();
    for (const { servers: list } of ok) {
      for (const s of list) {
        const key = JSON.stringify(s.urls);
        if (!seen.has(key)) {
          seen.add(key);
          servers.push(s);
        }
      }
    }
    return { servers, ttl: Math.min(...ok.map((r) => r.ttl)) };
  }

  /** @param {string} swarm */
  leave(swarm) {
    for (const c of this.#clients) c.leave(swarm);
    const prefix = `${swarm.toLowerCase()} `;
    for (const key of [...this.#presence.keys()]) if (key.startsWith(prefix)) this.#presence.delete(key);
  }

  /** Sends `payload` to `to` through a KUBE where it is in `swarm`.
   * @param {string} to @param {string} swarm @param {any} payload */
  send(to, swarm, payload) {
    const at = this.#presence.get(`${swarm.toLowerCase()} ${to}`);
    const i = at && at.size > 0 ? Math.min(...at) : 0;
    this.#clients[i].send(to, swarm, payload);
  }

  close() {
    for (const c of this.#clients) c.close();
  }
}

/**
 * Connects to the signaling of every KUBE in `urls` with `identity` (as `connectSignal`) and
 * returns one `SignalCluster` over the connections that succeed; rejects when none does.
 * @param {{urls: string[], identity: Identity, origin?: string, timeoutMs?: number}} o
 * @returns {Promise<SignalCluster>}
 */
export async function connectSignals({ urls, identity, origin, timeoutMs }) {
  const results = await Promise.allSettled(urls.map((url) => connectSignal({ url, identity, origin, timeoutMs })));
  const clients = results.filter((r) => r.status === 'fulfilled').map((r) => r.value);
  if (clients.length === 0) throw results[0]?.reason ?? new Error('no KUBE to signal through');
  return new SignalCluster(clients);
}

/**
 * The host's side over signaling: joins the invitation's swarm and answers every guest with
 * `host.handle` until `stop()`. `admitted` resolves with the credential issued (add it to the
 * space root with `addCredential`), or rejects when the invitation is dead or expired.
 * @param {SignalClient} signal connected with the host key
 * @param {Host} host
 * @returns {Promise<{admitted: Promise<Credential>, stop(): void}>}
 */
export async function serveInvitation(signal, host) {
  const swarm = invitationSwarm(host.invitation);
  let off;
  const admitted = new Promise((resolve, reject) => {
    off = signal.on('signal', (m) => {
      if (m.swarm !== swarm) return;
      const reply = host.handle(m.from, m.payload);
      signal.send(m.from, swarm, reply);
      // Settles once; the host keeps answering (later guests hear `used`, `dead`, …) until stop().
      if (reply.type === 'admitted') {
        resolve(reply.credential);
      } else if (reply.type === 'refused' && (reply.code === 'dead' || reply.code === 'expired')) {
        reject(new InvitationError(`refused: ${reply.message}`, { code: reply.code }));
      }
    });
  });
  admitted.catch(() => {}); // the caller may only want stop()
  await signal.join(swarm);
  return { admitted, stop: () => { off(); signal.leave(swarm); } };
}

/**
 * The guest's side over signaling: joins the invitation's swarm, waits for the host, runs one
 * attempt. Resolves `{credential, root}`: the `SpaceMember` credential, and the space root's
 * documentId when the host named it (undefined otherwise); rejects with an `InvitationError`
 * (its `code` says why the host refused: `wrong-code` with `attemptsLeft`, `expired`, …).
 * @param {SignalClient} signal connected with `key`
 * @param {{invitation: Invitation, code?: string, key: Identity, timeoutMs?: number}} o
 * @returns {Promise<{credential: Credential, root?: string}>}
 */
export async function redeemInvitation(signal, { invitation, code, key, timeoutMs = 30_000 }) {
  const guest = new Guest({ invitation, code, key });
  const swarm = invitationSwarm(invitation);
  const offs = [];
  const result = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new InvitationError(`no answer from the host within ${timeoutMs} ms`)), timeoutMs);
    const finish = (f) => (v) => { clearTimeout(timer); offs.forEach((o) => o()); f(v); };
    const ok = finish(resolve);
    const fail = finish(reject);
    offs.push(signal.on('signal', (m) => {
      if (m.swarm !== swarm || m.from !== invitation.host) return; // others cannot break the attempt
      try {
        const r = guest.handle(m.from, m.payload);
        if (r.send) signal.send(invitation.host, swarm, r.send);
        else ok({ credential: r.credential, root: r.root });
      } catch (e) {
        fail(e);
      }
    }));
    offs.push(signal.on('peer-joined', (m) => {
      if (m.swarm === swarm && m.peer === invitation.host) signal.send(invitation.host, swarm, guest.hello);
    }));
    offs.push(signal.on('close', () => fail(new InvitationError('signaling closed'))));
  });
  const peers = await signal.join(swarm);
  if (peers.includes(invitation.host)) signal.send(invitation.host, swarm, guest.hello);
  try {
    return await result;
  } finally {
    signal.leave(swarm);
  }
}
