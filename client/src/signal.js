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

/** An authenticated signaling connection. Events (`on(type, fn)`): `peers`, `peer-joined`,
 * `peer-left`, `signal`, `error` (the server's messages, as objects) and `close`. */
export class SignalClient {
  /** @type {WebSocket} */
  #ws;
  #listeners = new Map();
  /** The did KUBE welcomed. */
  id;

  constructor(ws, id) {
    this.#ws = ws;
    this.id = id;
    ws.onmessage = (ev) => {
      let msg;
      try {
        msg = JSON.parse(String(ev.data));
      } catch {
        return;
      }
      this.#emit(msg?.type, msg);
    };
    ws.onclose = () => this.#emit('close', {});
  }

  #emit(type, msg) {
    for (const fn of [...(this.#listeners.get(type) ?? [])]) fn(msg);
  }

  /** @param {string} type @param {(msg: any) => void} fn @returns {() => void} unsubscribe */
  on(type, fn) {
    if (!this.#listeners.has(type)) this.#listeners.set(type, new Set());
    this.#listeners.get(type).add(fn);
    return () => this.#listeners.get(type)?.delete(fn);
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
