// A WebRTC network adapter for automerge-repo (README "Peer to peer (WebRTC)"): peers find each
// other in KUBE's signaling swarms (signal/PROTOCOL.md), talk over one data channel per pair,
// prove their HALO keys end to end over it (peer-auth.js) and pass only what the space's access
// rules allow. This file is the driver: RTCPeerConnections, signaling, timers. Framing is
// chunk.js and the proof exchange peer-auth.js, both pure.
//
// Invariants:
// - At most one connection per remote did; the did that sorts lower makes every offer.
// - Nothing from a connection reaches the Repo before the remote proved its did (and that did is
//   a member); nothing reaches a peer unless `access` says it may have it.
// - Every timer and queue belongs to a connection or to the signaling session and is bounded;
//   disconnect() clears them all.

import { NetworkAdapter, cbor } from '@automerge/automerge-repo/slim';
import { decodeSyncMessage, encodeSyncMessage } from '@automerge/automerge/slim';
import { sha256 } from '@noble/hashes/sha2.js';
import { KIND_AUTH, KIND_AUTOMERGE, Reassembler, decodeMessage, encodeMessage, frames } from './chunk.js';
import { MAX_AUTH_BYTES, encodeAuth, sdpFingerprint, startAuth } from './peer-auth.js';
import { randomBytes, toHex, utf8 } from './encoding.js';

/** @typedef {import('./identity.js').Identity} Identity */
/** @typedef {import('./signal.js').SignalClient} SignalClient */
/** @typedef {import('@automerge/automerge-repo').Message} Message */
/** @typedef {import('@automerge/automerge-repo').PeerId} PeerId */
/**
 * What the adapter asks of a space's access rules (client/src/access.js). Every method must
 * answer synchronously with a boolean; anything but `true` (a throw included) denies.
 * @typedef {object} SpaceAccess
 * @property {(did: string, documentId: string) => boolean} mayShare may `did` read the document
 * @property {(did: string, documentId: string, o: {changes: boolean}) => boolean} mayReceive may
 *   `did` send us this sync message (`changes`: whether it carries changes)
 * @property {(did: string) => boolean} isPeerAllowed may `did` connect at all (a member)
 * @property {(type: 'change', fn: () => void) => void} on
 * @property {(type: 'change', fn: () => void) => void} off
 */
/**
 * @typedef {object} PeerInfo
 * @property {string} did
 * @property {string|undefined} peerId the proven automerge-repo peerId, once open
 * @property {'connecting'|'authenticating'|'open'} state
 * @property {'direct'|'relay'|undefined} path
 */

const SWARM_CONTEXT = 'kube-space-v1';
/** Stop writing to a data channel above this many buffered bytes… */
const HIGH_WATER = 1 << 20;
/** …and resume when it drains to this. */
const LOW_WATER = 256 << 10;
/** A connection that stays `disconnected` this long is given up (ICE may recover sooner). */
const DISCONNECTED_GRACE_MS = 5_000;
/** From the first offer to authenticated. */
const OPEN_TIMEOUT_MS = 30_000;
/** How long a new signaling session waits for ICE servers before joining swarms. */
const ICE_TIMEOUT_MS = 3_000;
/** Retry a failed swarm join after this long. */
const JOIN_RETRY_MS = 2_000;
const MAX_PENDING_CANDIDATES = 64;
const MAX_SDP_CHARS = 64 * 1024;
const MAX_CANDIDATE_CHARS = 1024;
/** Remote `bye` reasons after which the offerer dials again (with backoff). */
const REDIAL_AFTER_BYE = new Set(['failed', 'busy']);

/** How often, and how long apart, an open channel waits for its session descriptions. */
const DESCRIPTION_WAITS = 100;
const DESCRIPTION_WAIT_MS = 50;

/** The longest ephemeral session id taken from a peer (automerge-repo's are UUID-sized). */
const MAX_SESSION_ID = 64;
/** The largest ephemeral payload taken from a peer (presence, cursors). */
const MAX_EPHEMERAL_BYTES = 64 * 1024;

/** The peerId our Repo knows a p2p peer by. @param {string} did */
export const peerAlias = (did) => `webrtc:${did}`;

/**
 * The signaling swarm of a space: hex SHA-256 of `kube-space-v1\n<spaceDid>` (64 lowercase hex).
 * @param {string} spaceDid @returns {string}
 */
export function spaceSwarm(spaceDid) {
  if (typeof spaceDid !== 'string' || spaceDid === '') throw new TypeError('spaceDid must be a non-empty string');
  return toHex(sha256(utf8(`${SWARM_CONTEXT}\n${spaceDid}`)));
}

/** @param {number} ms ±25 % */
const jitter = (ms) => Math.round(ms * (0.75 + Math.random() * 0.5));
/** @param {unknown} cid */
const validCid = (cid) => typeof cid === 'string' && /^[0-9a-f]{8,64}$/.test(cid);

/** One RTCPeerConnection to one remote did, from the first offer to close. */
class Connection {
  /** @type {any} RTCPeerConnection */ pc;
  /** @type {any} RTCDataChannel */ dc;
  /** @type {'connecting'|'authenticating'|'open'} */ state = 'connecting';
  /** The name our Repo knows the peer by: `webrtc:<did>`, chosen here, never by the peer.
   * @type {string|undefined} */ peerId;
  /** The automerge peerId the remote proved (its messages' senderId, ours' targetId).
   * @type {string|undefined} */ remotePeerId;
  /** The one ephemeral session the remote may use on this connection. @type {string|undefined} */ sessionId;
  /** @type {'direct'|'relay'|undefined} */ path;
  /** Set while the remote's proof is awaited. @type {import('./peer-auth.js').AwaitingProof|undefined} */ auth;
  /** Outgoing messages not yet handed to the channel, each a frame iterator (`started` once a
   * frame of it went; `documentId` the document it carries, if any).
   * @type {{frames: Iterator<Uint8Array>, size: number, documentId?: string, started: boolean}[]} */
  queue = [];
  queuedBytes = 0;
  /** Candidates that came before the remote description. @type {any[]} */ pendingCandidates = [];
  remoteSet = false;
  answered = false;
  closed = false;
  /** @type {any} */ openTimer;
  /** Waiting for both session descriptions after the channel opened. */
  descriptionWaits = 0;
  /** @type {any} */ descriptionTimer;
  /** The remote's proof, when it came before ours could go out. @type {Uint8Array|undefined} */ earlyAuth;
  /** @type {any} */ disconnectedTimer;

  /** @param {string} did @param {string} cid @param {boolean} offerer @param {Reassembler} reassembler */
  constructor(did, cid, offerer, reassembler) {
    this.did = did;
    this.cid = cid;
    this.offerer = offerer;
    this.reassembler = reassembler;
  }
}

/**
 * automerge-repo network adapter over WebRTC data channels, peers found through KUBE's
 * signaling and authenticated end to end with their HALO keys.
 *
 * Events (besides the NetworkAdapter ones the Repo listens to):
 * - `'peers'` (PeerInfo[]): whenever `peers()` changes.
 * - `'refused'` ({did, documentId, reason, direction, code?}): a message or connection dropped.
 * - `'signal-state'` ('connecting'|'open'|'closed'): whenever `signalState` changes.
 * - `'p2p-error'` (Error): the `signal` factory or the RTCPeerConnection constructor threw.
 */
export class WebRTCAdapter extends NetworkAdapter {
  /** @type {Identity} */ #identity;
  /** @type {() => Promise<SignalClient>} */ #signalFactory;
  /** @type {SpaceAccess} */ #access;
  /** @type {'all'|'relay'} */ #iceTransportPolicy;
  /** @type {any} */ #RTC;
  #chunkSize;
  #maxMessageBytes;
  #maxQueueBytes;
  #retry;

  #running = false;
  /** Bumped by connect() and disconnect(): async work of an older session stops. */
  #session = 0;
  /** @type {'connecting'|'open'|'closed'} */ #signalState = 'closed';
  /** @type {SignalClient|undefined} */ #signal;
  /** Ends the current signaling session (its listeners, joins, ICE refresh). @type {(() => void)|undefined} */ #endSignal;
  /** Swarms joined on the current signaling connection are ready to use (ICE servers known). */
  #signalReady = false;
  /** Cuts the signaling backoff short. @type {(() => void)|undefined} */ #wake;
  /** @type {RTCIceServer[]} */ #iceServers = [];
  /** @type {any} */ #iceTimer;

  /** Wanted swarms: swarm → space did. @type {Map<string, string>} */ #spaces = new Map();
  /** Swarms joined on the current signaling connection. @type {Set<string>} */ #joined = new Set();
  /** @type {Map<string, any>} */ #joinRetries = new Map();
  /** Which swarms each remote did was last seen in. @type {Map<string, Set<string>>} */ #presence = new Map();
  /** @type {Map<string, Connection>} */ #conns = new Map();
  /** Open connections by the remote's proven peerId. @type {Map<string, Connection>} */ #byPeerId = new Map();
  /** Offerer's redial backoff per did. @type {Map<string, {attempt: number, timer: any}>} */ #redials = new Map();
  /** @type {(() => void)[]} */ #globalOffs = [];

  /**
   * @param {object} o
   * @param {Identity} o.identity the HALO key that proves who we are
   * @param {() => Promise<SignalClient>} o.signal a fresh signaling connection; called at
   *   connect() and again, with backoff, whenever the last one closed. The adapter owns (and
   *   closes) what it returns.
   * @param {SpaceAccess} o.access
   * @param {'all'|'relay'} [o.iceTransportPolicy]
   * @param {any} [o.RTCPeerConnection] default globalThis.RTCPeerConnection
   * @param {number} [o.chunkSize] data-channel bytes per frame, flag byte included (default 16 KiB)
   * @param {number} [o.maxMessageBytes] a larger reassembled message closes the connection
   * @param {number} [o.maxQueueBytes] bytes queued for one peer beyond which it is given up
   * @param {{minMs?: number, maxMs?: number}} [o.retry] backoff of signaling reconnects and
   *   redials (default 1 s doubling to 30 s, jittered ±25 %)
   */
  constructor({
    identity,
    signal,
    access,
    iceTransportPolicy = 'all',
    RTCPeerConnection = globalThis.RTCPeerConnection,
    chunkSize = 16 * 1024,
    maxMessageBytes = 64 << 20,
    maxQueueBytes = 64 << 20,
    retry = {},
  }) {
    super();
    if (!identity?.did || typeof identity.sign !== 'function') throw new TypeError('identity must be an Identity');
    if (typeof signal !== 'function') throw new TypeError('signal must be a function returning a SignalClient');
    for (const m of ['mayShare', 'mayReceive', 'isPeerAllowed', 'on', 'off']) {
      if (typeof access?.[m] !== 'function') throw new TypeError(`access.${m} must be a function`);
    }
    if (iceTransportPolicy !== 'all' && iceTransportPolicy !== 'relay') throw new TypeError("iceTransportPolicy must be 'all' or 'relay'");
    if (typeof RTCPeerConnection !== 'function') throw new TypeError('no RTCPeerConnection here: pass one');
    if (!Number.isSafeInteger(chunkSize) || chunkSize < 2) throw new RangeError('chunkSize must be an integer ≥ 2');
    if (!(maxMessageBytes > MAX_AUTH_BYTES)) throw new RangeError(`maxMessageBytes must be over ${MAX_AUTH_BYTES}`);
    this.#identity = identity;
    this.#signalFactory = signal;
    this.#access = access;
    this.#iceTransportPolicy = iceTransportPolicy;
    this.#RTC = RTCPeerConnection;
    this.#chunkSize = chunkSize;
    this.#maxMessageBytes = maxMessageBytes;
    this.#maxQueueBytes = maxQueueBytes;
    this.#retry = { minMs: retry.minMs ?? 1_000, maxMs: retry.maxMs ?? 30_000 };
  }

  // ---- NetworkAdapter ------------------------------------------------------------------------

  /** Always ready: the Repo must work while KUBE (and so every peer) is out of reach. */
  isReady() {
    return true;
  }

  whenReady() {
    return Promise.resolve();
  }

  /** Called by the Repo: starts signaling and joins the remembered swarms.
   * @param {PeerId} peerId @param {any} [peerMetadata] */
  connect(peerId, peerMetadata) {
    if (this.#running) {
      if (peerId !== this.peerId) throw new Error(`already connected as ${this.peerId}`);
      return;
    }
    this.peerId = peerId;
    this.peerMetadata = peerMetadata ?? this.peerMetadata ?? {};
    this.#running = true;
    const session = ++this.#session;
    this.#access.on('change', this.#onAccessChange);
    this.#listenGlobals();
    void this.#signalLoop(session);
  }

  /** Closes every connection (saying `bye`), leaves the swarms, closes signaling. connect()
   * starts again and re-joins the spaces joined before. */
  disconnect() {
    if (!this.#running) return;
    this.#running = false;
    this.#session++;
    for (const conn of [...this.#conns.values()]) this.#close(conn, { reason: 'closed', bye: 'closed' });
    for (const r of this.#redials.values()) clearTimeout(r.timer);
    this.#redials.clear();
    const signal = this.#signal;
    if (signal) {
      for (const swarm of this.#joined) {
        try { signal.leave(swarm); } catch { /* closing anyway */ }
      }
    }
    this.#endSignal?.();
    try { signal?.close(); } catch { /* already closed */ }
    this.#wake?.();
    this.#presence.clear();
    this.#access.off('change', this.#onAccessChange);
    for (const off of this.#globalOffs) off();
    this.#globalOffs = [];
    this.#setSignalState('closed');
  }

  /** Called by the Repo for every message to a peer; drops what access forbids.
   * @param {Message} message */
  send(message) {
    const conn = this.#byPeerId.get(message?.targetId);
    if (!conn || conn.state !== 'open') return;
    const documentId = message.documentId;
    const refuse = (/** @type {string} */ reason) => this.#refuse({ did: conn.did, documentId, reason, direction: 'out' });
    if (!['sync', 'request', 'ephemeral', 'doc-unavailable'].includes(message.type)) return refuse('unsupported-type');
    // The remote accepts messages from us only (see #receive): relaying others' is wasted.
    if (message.type === 'ephemeral' && message.senderId !== this.peerId) return refuse('relayed-ephemeral');
    if (typeof documentId !== 'string' || !this.#may('mayShare', conn.did, documentId)) {
      // Our Repo asked a peer who may not have the document: answer for it, as it cannot help,
      // so that find() does not wait for an answer that never comes.
      if (message.type === 'request' && typeof documentId === 'string') this.#unavailableFrom(conn, documentId);
      return refuse('not-allowed');
    }
    const body = cbor.encode({ ...message, targetId: conn.remotePeerId });
    if (body.length + 1 > this.#maxMessageBytes) return refuse('too-large');
    this.#enqueue(conn, encodeMessage(KIND_AUTOMERGE, body), documentId);
  }

  // ---- Public API ----------------------------------------------------------------------------

  /** 'connecting' | 'open' | 'closed' */
  get signalState() {
    return this.#signalState;
  }

  /** Joins the signaling swarm of a space (remembered and joined again after reconnects).
   * @param {string} spaceDid */
  joinSpace(spaceDid) {
    const swarm = spaceSwarm(spaceDid);
    if (this.#spaces.has(swarm)) return;
    this.#spaces.set(swarm, spaceDid);
    if (this.#signalReady) this.#join(swarm);
  }

  /** Leaves a space's swarm and closes connections to peers met in no other joined swarm.
   * @param {string} spaceDid */
  leaveSpace(spaceDid) {
    const swarm = spaceSwarm(spaceDid);
    if (!this.#spaces.delete(swarm)) return;
    clearTimeout(this.#joinRetries.get(swarm));
    this.#joinRetries.delete(swarm);
    if (this.#joined.delete(swarm)) {
      try { this.#signal?.leave(swarm); } catch { /* the connection is going */ }
    }
    for (const [did, swarms] of [...this.#presence]) {
      if (!swarms.delete(swarm) || swarms.size > 0) continue;
      const conn = this.#conns.get(did);
      if (conn) this.#close(conn, { reason: 'closed', bye: 'closed' }); // while we can still say so
      this.#forget(did);
    }
  }

  /** @returns {PeerInfo[]} */
  peers() {
    return [...this.#conns.values()].map((c) => ({ did: c.did, peerId: c.peerId, state: c.state, path: c.path }));
  }

  /** The proven did behind an automerge peerId of an open connection.
   * @param {string} peerId @returns {string|undefined} */
  didOf(peerId) {
    return this.#byPeerId.get(peerId)?.did;
  }

  /**
   * How the connection to `did` runs, from its selected ICE candidate pair: 'relay' when either
   * end is a TURN relay candidate, else 'direct'; undefined without a connection or a pair.
   * @param {string} did @returns {Promise<'direct'|'relay'|undefined>}
   */
  async pathOf(did) {
    return (await this.stats(did))?.path;
  }

  /**
   * The connection to `did` as RTCPeerConnection.getStats() sees it (for apps and tests):
   * `dataChannel` (its state and message and byte counts), `pair` (the selected candidate
   * pair's local and remote candidate types: host, srflx, prflx, relay) and `path`. Undefined
   * without a connection.
   * @param {string} did
   * @returns {Promise<{path: 'direct'|'relay'|undefined, pair?: {local?: string, remote?: string, state?: string},
   *   dataChannel?: {label?: string, state?: string, messagesSent?: number, messagesReceived?: number, bytesSent?: number, bytesReceived?: number}}|undefined>}
   */
  async stats(did) {
    const pc = this.#conns.get(did)?.pc;
    if (typeof pc?.getStats !== 'function') return undefined;
    let report;
    try {
      report = await pc.getStats();
    } catch {
      return undefined;
    }
    /** @type {Map<string, any>} */
    const all = new Map();
    report.forEach((/** @type {any} */ s) => all.set(s.id, s));
    let selected;
    let channel;
    for (const s of all.values()) {
      if (s.type === 'transport' && s.selectedCandidatePairId) selected = all.get(s.selectedCandidatePairId);
      if (s.type === 'data-channel' && (s.label === 'automerge' || channel === undefined)) channel = s;
    }
    if (!selected) {
      // Firefox marks the pair itself.
      for (const s of all.values()) {
        if (s.type === 'candidate-pair' && (s.selected || (s.nominated && s.state === 'succeeded'))) { selected = s; break; }
      }
    }
    const local = selected && all.get(selected.localCandidateId)?.candidateType;
    const remote = selected && all.get(selected.remoteCandidateId)?.candidateType;
    const known = local !== undefined || remote !== undefined;
    return {
      path: known ? (local === 'relay' || remote === 'relay' ? 'relay' : 'direct') : undefined,
      pair: selected ? { local, remote, state: selected.state } : undefined,
      dataChannel: channel ? {
        label: channel.label,
        state: channel.state,
        messagesSent: channel.messagesSent,
        messagesReceived: channel.messagesReceived,
        bytesSent: channel.bytesSent,
        bytesReceived: channel.bytesReceived,
      } : undefined,
    };
  }

  // ---- Signaling -----------------------------------------------------------------------------

  /** @param {'connecting'|'open'|'closed'} state */
  #setSignalState(state) {
    if (this.#signalState === state) return;
    this.#signalState = state;
    this.emit('signal-state', state);
  }

  /** Keeps one signaling connection up while running: 1 s doubling to 30 s between attempts,
   * back to 1 s after a connection that lasted. @param {number} session */
  async #signalLoop(session) {
    const { minMs, maxMs } = this.#retry;
    let delay = minMs;
    while (this.#running && session === this.#session) {
      this.#setSignalState('connecting');
      let client;
      try {
        client = await this.#signalFactory();
      } catch (e) {
        this.emit('p2p-error', e);
      }
      if (session !== this.#session) {
        try { client?.close(); } catch { /* not ours any more */ }
        return;
      }
      if (client) {
        const since = Date.now();
        await this.#runSignal(client);
        if (session !== this.#session) return;
        if (Date.now() - since >= maxMs) delay = minMs;
      }
      this.#setSignalState('closed');
      await this.#sleep(jitter(delay));
      delay = Math.min(delay * 2, maxMs);
    }
  }

  /** @param {number} ms */
  #sleep(ms) {
    return new Promise((resolve) => {
      const done = () => { clearTimeout(timer); this.#wake = undefined; resolve(undefined); };
      const timer = setTimeout(done, ms);
      this.#wake = done;
    });
  }

  /** Runs one signaling connection; resolves when it closed (or disconnect() ended it).
   * @param {SignalClient} client */
  #runSignal(client) {
    return new Promise((resolve) => {
      /** @type {(() => void)[]} */
      const offs = [];
      const end = () => {
        if (this.#signal !== client) return;
        for (const off of offs) off();
        this.#signal = undefined;
        this.#endSignal = undefined;
        this.#signalReady = false;
        this.#joined.clear();
        for (const t of this.#joinRetries.values()) clearTimeout(t);
        this.#joinRetries.clear();
        clearTimeout(this.#iceTimer);
        resolve(undefined);
      };
      this.#signal = client;
      this.#endSignal = end;
      offs.push(client.on('close', end));
      offs.push(client.on('peer-joined', (m) => this.#onPeerJoined(m)));
      offs.push(client.on('peer-left', (m) => this.#onPeerLeft(m)));
      offs.push(client.on('signal', (m) => this.#onSignal(m)));
      this.#setSignalState('open');
      void this.#startSignal(client);
    });
  }

  /** ICE servers first, so that no connection is made without TURN; then the swarms.
   * @param {SignalClient} client */
  async #startSignal(client) {
    await this.#refreshIce(client);
    if (this.#signal !== client) return;
    this.#signalReady = true;
    for (const swarm of this.#spaces.keys()) this.#join(swarm);
  }

  /** @param {SignalClient} client */
  async #refreshIce(client) {
    if (typeof client.iceServers !== 'function') return;
    try {
      const { servers, ttl } = await client.iceServers({ timeoutMs: ICE_TIMEOUT_MS });
      if (this.#signal !== client) return;
      this.#iceServers = servers;
      clearTimeout(this.#iceTimer);
      if (ttl > 0) {
        // Fresh credentials well before these expire, for the connections made meanwhile.
        const ms = Math.min(Math.max(ttl * 800, 60_000), 2 ** 31 - 1);
        this.#iceTimer = setTimeout(() => { if (this.#signal === client) void this.#refreshIce(client); }, ms);
      }
    } catch (e) {
      if (/** @type {any} */ (e)?.code === 'no-ice-servers' && this.#signal === client) this.#iceServers = [];
      // Otherwise keep what we had: host candidates still work, and the next session asks again.
    }
  }

  /** @param {string} swarm */
  #join(swarm) {
    const client = this.#signal;
    if (!client || this.#joined.has(swarm)) return;
    this.#joined.add(swarm);
    client.join(swarm).then(
      (peers) => {
        if (this.#signal !== client || !this.#joined.has(swarm)) return;
        const listed = new Set(Array.isArray(peers) ? peers.filter((p) => typeof p === 'string' && p !== this.#identity.did) : []);
        for (const [did, swarms] of [...this.#presence]) {
          if (swarms.has(swarm) && !listed.has(did)) this.#gone(did, swarm);
        }
        for (const did of listed) this.#present(did, swarm);
        for (const did of listed) this.#seen(did);
      },
      () => {
        // A refusal (swarm-limit, rate-limited…) or an unrelated error: signaling errors are not
        // tied to requests. Try again while the swarm is wanted and the connection lasts.
        if (this.#signal !== client) return;
        this.#joined.delete(swarm);
        if (!this.#spaces.has(swarm) || this.#joinRetries.has(swarm)) return;
        this.#joinRetries.set(swarm, setTimeout(() => {
          this.#joinRetries.delete(swarm);
          if (this.#signal === client && this.#spaces.has(swarm)) this.#join(swarm);
        }, jitter(JOIN_RETRY_MS)));
      },
    );
  }

  /** @param {string} did @param {string} swarm */
  #present(did, swarm) {
    let swarms = this.#presence.get(did);
    if (!swarms) this.#presence.set(did, (swarms = new Set()));
    swarms.add(swarm);
  }

  /** `did` left `swarm`; once in no swarm, a connection not yet open is dropped (the remote's
   * signaling is gone, the negotiation cannot finish) and its redial forgotten.
   * @param {string} did @param {string} swarm */
  #gone(did, swarm) {
    const swarms = this.#presence.get(did);
    if (!swarms?.delete(swarm) || swarms.size > 0) return;
    const conn = this.#conns.get(did);
    if (conn && conn.state !== 'open') this.#close(conn, { reason: 'gone' });
    this.#forget(did);
  }

  /** @param {string} did */
  #forget(did) {
    this.#presence.delete(did);
    clearTimeout(this.#redials.get(did)?.timer);
    this.#redials.delete(did);
  }

  /** @param {any} m */
  #onPeerJoined(m) {
    if (!this.#joined.has(m?.swarm) || typeof m.peer !== 'string' || m.peer === this.#identity.did) return;
    this.#present(m.peer, m.swarm);
    this.#seen(m.peer);
  }

  /** @param {any} m */
  #onPeerLeft(m) {
    if (!this.#joined.has(m?.swarm) || typeof m.peer !== 'string') return;
    this.#gone(m.peer, m.swarm);
  }

  /** A member we have no connection to is around: dial it, or ask it to dial us.
   * @param {string} did */
  #seen(did) {
    if (!this.#running || !this.peerId || did === this.#identity.did) return;
    if (this.#conns.has(did) || !this.#allowed(did)) return;
    if (this.#isOfferer(did)) this.#dial(did);
    else this.#sendSignal(did, { kind: 'dial' });
  }

  /** The lower did offers (string order), so two peers never offer to each other at once.
   * @param {string} did */
  #isOfferer(did) {
    return this.#identity.did < did;
  }

  /** Sends a payload to `did` through any swarm we share. @param {string} did @param {object} payload */
  #sendSignal(did, payload) {
    const client = this.#signal;
    const swarm = [...(this.#presence.get(did) ?? [])].find((s) => this.#joined.has(s));
    if (!client || !swarm) return false;
    try {
      client.send(did, swarm, payload);
      return true;
    } catch {
      return false;
    }
  }

  /** @param {any} m */
  #onSignal(m) {
    if (!this.#running || !this.peerId) return;
    const from = m?.from;
    if (typeof from !== 'string' || from === this.#identity.did || !this.#joined.has(m.swarm)) return;
    this.#present(from, m.swarm);
    const p = m.payload;
    if (!p || typeof p !== 'object') return;
    if (p.kind !== 'bye' && !this.#allowed(from)) {
      if (p.kind === 'dial' || p.kind === 'offer') {
        this.#refuse({ did: from, reason: 'not-member', direction: 'in' });
        if (p.kind === 'offer' && validCid(p.cid)) this.#sendSignal(from, { kind: 'bye', cid: p.cid, reason: 'refused' });
      }
      return;
    }
    switch (p.kind) {
      case 'dial': return this.#onDial(from);
      case 'offer': return void this.#onOffer(from, p);
      case 'answer': return void this.#onAnswer(from, p);
      case 'candidate': return this.#onCandidate(from, p);
      case 'bye': return this.#onBye(from, p);
      default: return undefined;
    }
  }

  /** The remote has no connection to us and asks us (the offerer) to dial.
   * @param {string} from */
  #onDial(from) {
    if (!this.#isOfferer(from)) return;
    const conn = this.#conns.get(from);
    if (conn) {
      // One under way: the remote asked before our offer reached it.
      if (conn.state !== 'open') return;
      // Ours is open but the remote has none: ours is dead and does not know it yet.
      this.#close(conn, { reason: 'stale' });
    }
    this.#dial(from);
  }

  /** @param {string} did */
  #dial(did) {
    clearTimeout(this.#redials.get(did)?.timer);
    if (this.#conns.has(did) || !this.#signal) return;
    const conn = this.#newConnection(did, toHex(randomBytes(8)), true);
    if (!conn) return;
    void (async () => {
      try {
        const offer = await conn.pc.createOffer();
        if (conn.closed) return;
        await conn.pc.setLocalDescription(offer);
        if (conn.closed) return;
        const sdp = conn.pc.localDescription?.sdp;
        sdpFingerprint(sdp); // ours must pass the check the remote will make
        if (!this.#sendSignal(did, { kind: 'offer', cid: conn.cid, sdp })) this.#close(conn, { reason: 'gone' });
      } catch {
        this.#close(conn, { reason: 'failed', bye: 'failed' });
      }
    })();
  }

  /** @param {string} from @param {any} p */
  async #onOffer(from, p) {
    if (this.#isOfferer(from)) return; // only the lower did offers
    if (!validCid(p.cid) || typeof p.sdp !== 'string' || p.sdp.length > MAX_SDP_CHARS) return;
    try {
      sdpFingerprint(p.sdp);
    } catch (e) {
      this.#refuse({ did: from, reason: 'auth-failed', code: /** @type {any} */ (e).code, direction: 'in' });
      this.#sendSignal(from, { kind: 'bye', cid: p.cid, reason: 'refused' });
      return;
    }
    const old = this.#conns.get(from);
    if (old) {
      if (old.cid === p.cid) return;
      if (old.state === 'open') {
        // Never two live connections; ours ends by `bye`, channel close or the disconnected
        // grace, and the remote's backoff brings the offer again.
        this.#sendSignal(from, { kind: 'bye', cid: p.cid, reason: 'busy' });
        return;
      }
      this.#close(old, { reason: 'replaced' });
    }
    const conn = this.#newConnection(from, p.cid, false);
    if (!conn) return;
    try {
      await conn.pc.setRemoteDescription({ type: 'offer', sdp: p.sdp });
      if (conn.closed) return;
      this.#remoteSet(conn);
      const answer = await conn.pc.createAnswer();
      if (conn.closed) return;
      await conn.pc.setLocalDescription(answer);
      if (conn.closed) return;
      const sdp = conn.pc.localDescription?.sdp;
      sdpFingerprint(sdp);
      this.#sendSignal(from, { kind: 'answer', cid: conn.cid, sdp });
    } catch {
      this.#close(conn, { reason: 'failed', bye: 'failed' });
    }
  }

  /** @param {string} from @param {any} p */
  async #onAnswer(from, p) {
    const conn = this.#conns.get(from);
    if (!conn || conn.cid !== p.cid || !conn.offerer || conn.answered) return;
    if (typeof p.sdp !== 'string' || p.sdp.length > MAX_SDP_CHARS) return;
    conn.answered = true;
    try {
      sdpFingerprint(p.sdp);
    } catch (e) {
      this.#refuse({ did: from, reason: 'auth-failed', code: /** @type {any} */ (e).code, direction: 'in' });
      this.#close(conn, { reason: 'refused', bye: 'refused' });
      return;
    }
    try {
      await conn.pc.setRemoteDescription({ type: 'answer', sdp: p.sdp });
      if (!conn.closed) this.#remoteSet(conn);
    } catch {
      this.#close(conn, { reason: 'failed', bye: 'failed' });
    }
  }

  /** @param {Connection} conn */
  #remoteSet(conn) {
    conn.remoteSet = true;
    for (const c of conn.pendingCandidates) conn.pc.addIceCandidate(c).catch(() => {});
    conn.pendingCandidates = [];
  }

  /** @param {string} from @param {any} p */
  #onCandidate(from, p) {
    const conn = this.#conns.get(from);
    if (!conn || conn.cid !== p.cid) return;
    const c = p.candidate;
    if (!c || typeof c.candidate !== 'string' || c.candidate.length > MAX_CANDIDATE_CHARS) return;
    const candidate = {
      candidate: c.candidate,
      sdpMid: typeof c.sdpMid === 'string' ? c.sdpMid : null,
      sdpMLineIndex: Number.isInteger(c.sdpMLineIndex) ? c.sdpMLineIndex : null,
      ...(typeof c.usernameFragment === 'string' ? { usernameFragment: c.usernameFragment } : {}),
    };
    if (conn.remoteSet) conn.pc.addIceCandidate(candidate).catch(() => {});
    else if (conn.pendingCandidates.length < MAX_PENDING_CANDIDATES) conn.pendingCandidates.push(candidate);
  }

  /** @param {string} from @param {any} p */
  #onBye(from, p) {
    const conn = this.#conns.get(from);
    if (conn && conn.cid === p.cid) {
      this.#close(conn, { reason: 'bye', remoteReason: String(p.reason ?? '') });
    } else if (p.reason === 'refused' || p.reason === 'closed') {
      // About a connection already gone: stop dialing someone who does not want us.
      clearTimeout(this.#redials.get(from)?.timer);
    }
  }

  // ---- Connections ---------------------------------------------------------------------------

  /** @param {string} did @param {string} cid @param {boolean} offerer */
  #newConnection(did, cid, offerer) {
    let pc;
    let dc;
    try {
      pc = new this.#RTC({ iceServers: this.#iceServers, iceTransportPolicy: this.#iceTransportPolicy });
      dc = pc.createDataChannel('automerge', { negotiated: true, id: 0, ordered: true });
    } catch (e) {
      try { pc?.close(); } catch { /* never opened */ }
      this.emit('p2p-error', e);
      return undefined;
    }
    // Until the remote is authenticated, only an authentication message fits.
    const conn = new Connection(did, cid, offerer, new Reassembler(1 + MAX_AUTH_BYTES));
    conn.pc = pc;
    conn.dc = dc;
    dc.binaryType = 'arraybuffer';
    dc.bufferedAmountLowThreshold = LOW_WATER;
    pc.onicecandidate = (/** @type {any} */ e) => {
      const c = e?.candidate;
      if (!c || conn.closed) return;
      const json = typeof c.toJSON === 'function' ? c.toJSON() : c;
      this.#sendSignal(did, {
        kind: 'candidate',
        cid,
        candidate: { candidate: json.candidate, sdpMid: json.sdpMid ?? null, sdpMLineIndex: json.sdpMLineIndex ?? null, usernameFragment: json.usernameFragment ?? undefined },
      });
    };
    pc.onconnectionstatechange = () => this.#onConnectionState(conn);
    dc.onopen = () => this.#onChannelOpen(conn);
    dc.onmessage = (/** @type {any} */ e) => this.#onFrame(conn, e.data);
    dc.onclose = () => this.#close(conn, { reason: 'failed', bye: 'failed' });
    dc.onbufferedamountlow = () => this.#flush(conn);
    conn.openTimer = setTimeout(() => this.#close(conn, { reason: 'failed', bye: 'failed' }), OPEN_TIMEOUT_MS);
    this.#conns.set(did, conn);
    this.#emitPeers();
    return conn;
  }

  /** @param {Connection} conn */
  #onConnectionState(conn) {
    if (conn.closed) return;
    const s = conn.pc.connectionState;
    if (s === 'failed' || s === 'closed') {
      this.#close(conn, { reason: 'failed', bye: 'failed' });
    } else if (s === 'disconnected') {
      conn.disconnectedTimer ??= setTimeout(() => this.#close(conn, { reason: 'failed', bye: 'failed' }), DISCONNECTED_GRACE_MS);
    } else if (s === 'connected') {
      clearTimeout(conn.disconnectedTimer);
      conn.disconnectedTimer = undefined;
      if (conn.state === 'open') this.#updatePath(conn);
    }
  }

  /** The channel is up: send our proof, await theirs. @param {Connection} conn */
  #onChannelOpen(conn) {
    if (conn.closed || conn.state !== 'connecting') return;
    // The channel can open a moment before our side has both session descriptions in place
    // (seen in Chromium on the offerer); the proof needs both fingerprints, so wait for them.
    if (!conn.pc.localDescription?.sdp || !conn.pc.remoteDescription?.sdp) {
      if (conn.descriptionWaits++ >= DESCRIPTION_WAITS) return this.#fail(conn, 'auth-failed', new Error('no session descriptions after the channel opened'));
      clearTimeout(conn.descriptionTimer);
      conn.descriptionTimer = setTimeout(() => this.#onChannelOpen(conn), DESCRIPTION_WAIT_MS);
      return;
    }
    conn.state = 'authenticating';
    this.#emitPeers();
    try {
      const { send, next } = startAuth({
        identity: this.#identity,
        peerId: /** @type {string} */ (this.peerId),
        remoteDid: conn.did,
        localSdp: conn.pc.localDescription?.sdp,
        remoteSdp: conn.pc.remoteDescription?.sdp,
      });
      conn.auth = next;
      this.#enqueue(conn, encodeMessage(KIND_AUTH, encodeAuth(send)));
    } catch (e) {
      return this.#fail(conn, 'auth-failed', e);
    }
    // The remote's proof may have come while we waited for the descriptions.
    const early = conn.earlyAuth;
    conn.earlyAuth = undefined;
    if (early) this.#onAuth(conn, early);
  }

  /** @param {Connection} conn @param {unknown} data */
  #onFrame(conn, data) {
    if (conn.closed) return;
    // Should a message overtake the open event, the proof must still go first.
    if (conn.state === 'connecting' && conn.dc.readyState === 'open') this.#onChannelOpen(conn);
    if (conn.closed) return;
    let kind;
    let body;
    try {
      const message = conn.reassembler.push(data);
      if (!message) return;
      ({ kind, body } = decodeMessage(message));
    } catch (e) {
      return this.#fail(conn, 'framing', e);
    }
    if (kind === KIND_AUTH) {
      if (conn.state === 'connecting' && !conn.auth && conn.earlyAuth === undefined) {
        conn.earlyAuth = body; // ours is not out yet (descriptions pending): keep theirs, once
        return;
      }
      return this.#onAuth(conn, body);
    }
    if (conn.state !== 'open') return this.#fail(conn, 'bad-message', new Error('an automerge message before authentication'));
    let message;
    try {
      message = cbor.decode(body);
    } catch (e) {
      return this.#fail(conn, 'bad-message', e);
    }
    if (!message || typeof message !== 'object' || typeof message.type !== 'string') {
      return this.#fail(conn, 'bad-message', new Error('not an automerge-repo message'));
    }
    this.#receive(conn, message);
  }

  /** The remote's proof. @param {Connection} conn @param {Uint8Array} body */
  #onAuth(conn, body) {
    const auth = conn.auth;
    if (!auth) return this.#fail(conn, 'bad-message', new Error('an authentication message out of turn'));
    conn.auth = undefined;
    let proven;
    try {
      proven = auth.receive(body);
    } catch (e) {
      return this.#fail(conn, 'auth-failed', e);
    }
    return this.#authenticated(conn, proven);
  }

  /** @param {Connection} conn @param {{did: string, peerId: string}} proven */
  #authenticated(conn, { did, peerId }) {
    if (!this.#allowed(did)) return this.#fail(conn, 'not-member');
    // Our Repo keys peers by bare peerId across all adapters: a peer that chose KUBE's peerId
    // (public) or another member's would take over their routes and sync state. So the Repo
    // knows each p2p peer by a name derived from its proven did, and the remote's own
    // peerId stays on the wire.
    const alias = peerAlias(did);
    const holder = this.#byPeerId.get(alias);
    if (peerId === this.peerId || (holder && holder !== conn)) return this.#fail(conn, 'peer-id-taken');
    conn.peerId = alias;
    conn.remotePeerId = peerId;
    conn.state = 'open';
    conn.reassembler.maxMessageBytes = this.#maxMessageBytes;
    clearTimeout(conn.openTimer);
    this.#byPeerId.set(alias, conn);
    clearTimeout(this.#redials.get(did)?.timer);
    this.#redials.delete(did);
    this.#emitPeers();
    // The remote's storageId is not taken: a member could claim KUBE's and make `synced()` trust
    // heads KUBE never acknowledged. Sync state with p2p peers is therefore not persisted.
    this.emit('peer-candidate', { peerId: /** @type {PeerId} */ (alias), peerMetadata: {} });
    this.#updatePath(conn);
  }

  /** The access filter on everything from an open connection. @param {Connection} conn @param {any} msg */
  #receive(conn, msg) {
    const documentId = typeof msg.documentId === 'string' ? msg.documentId : undefined;
    const refuse = (/** @type {string} */ reason) => this.#refuse({ did: conn.did, documentId, reason, direction: 'in' });
    if (msg.senderId !== conn.remotePeerId) return refuse('wrong-sender');
    if (msg.targetId !== this.peerId) return refuse('wrong-target');
    switch (msg.type) {
      case 'sync':
      case 'request': {
        if (!documentId || !(msg.data instanceof Uint8Array)) return refuse('bad-message');
        if (msg.type === 'request' && !this.#may('mayShare', conn.did, documentId)) {
          // It asks for a document it may not have: say we have none (true for it) rather than
          // let it wait, and do not bother the Repo.
          this.#enqueue(conn, encodeMessage(KIND_AUTOMERGE, cbor.encode({ type: 'doc-unavailable', senderId: this.peerId, targetId: conn.remotePeerId, documentId })));
          return refuse('not-allowed');
        }
        let decoded;
        try {
          decoded = decodeSyncMessage(msg.data);
        } catch {
          return refuse('bad-sync-message');
        }
        const changes = decoded.changes.length > 0;
        // 'reader': it may read but not write this document; 'not-allowed': not even read.
        if (!this.#may('mayReceive', conn.did, documentId, { changes })) return refuse(changes && this.#may('mayShare', conn.did, documentId) ? 'reader' : 'not-allowed');
        // A writer's changes pass the space's rules on a copy first (a root keeps every
        // credential; an object stays in its space), as KUBE judges them.
        if (changes && typeof this.#access.checkChanges === 'function') {
          let verdict;
          try {
            verdict = this.#access.checkChanges(conn.did, documentId, decoded.changes);
          } catch {
            verdict = { ok: false, reason: 'invalid' };
          }
          if (!verdict?.ok) return refuse(`invalid:${verdict?.reason ?? 'unknown'}`);
          const held = new Set(verdict.held ?? []);
          if (held.size > 0) {
            // Changes waiting for a dependency are judged when it comes, with it: until then
            // they stay out of our Repo, which will ask for them again.
            const kept = decoded.changes.filter((/** @type {Uint8Array} */ _, /** @type {number} */ i) => !held.has(i));
            msg = { ...msg, data: encodeSyncMessage({ ...decoded, changes: kept }) };
            this.#refuse({ did: conn.did, documentId, reason: 'held-back', direction: 'in' });
          }
        }
        break;
      }
      case 'ephemeral': {
        if (!documentId) return refuse('bad-message');
        if (!this.#may('mayShare', conn.did, documentId)) return refuse('not-allowed');
        // The Repo keeps a counter per sender and session for ever: one short session per
        // connection, a sane count and a small payload, or nothing.
        const { sessionId, count, data } = msg;
        if (typeof sessionId !== 'string' || sessionId.length === 0 || sessionId.length > MAX_SESSION_ID) return refuse('bad-message');
        if (conn.sessionId === undefined) conn.sessionId = sessionId;
        if (sessionId !== conn.sessionId) return refuse('another-session');
        if (!Number.isSafeInteger(count) || count < 0) return refuse('bad-message');
        if (!(data instanceof Uint8Array) || data.length > MAX_EPHEMERAL_BYTES) return refuse('bad-message');
        break;
      }
      case 'doc-unavailable':
        if (!documentId) return refuse('bad-message');
        if (!this.#may('mayShare', conn.did, documentId)) return refuse('not-allowed');
        break;
      default:
        return refuse('unsupported-type');
    }
    this.emit('message', { ...msg, senderId: conn.peerId });
  }

  /** Tells our Repo that `conn`'s peer cannot provide `documentId` (after we withheld our
   * request from it). Asynchronous: the Repo is in the middle of sending.
   * @param {Connection} conn @param {string} documentId */
  #unavailableFrom(conn, documentId) {
    const { peerId } = conn;
    queueMicrotask(() => {
      if (conn.closed || !this.#running) return;
      this.emit('message', { type: 'doc-unavailable', senderId: /** @type {PeerId} */ (peerId), targetId: /** @type {PeerId} */ (this.peerId), documentId: /** @type {any} */ (documentId) });
    });
  }

  /** @param {Connection} conn @param {Uint8Array} message */
  /** @param {Connection} conn @param {Uint8Array} message @param {string} [documentId] the
   * document it carries, so it can be withdrawn if the peer loses access before it went */
  #enqueue(conn, message, documentId) {
    if (conn.closed) return;
    if (conn.queuedBytes + message.length > this.#maxQueueBytes) {
      // The remote stopped reading (or the Repo outruns the link by far): give it up.
      this.#refuse({ did: conn.did, reason: 'queue-overflow', direction: 'out' });
      this.#close(conn, { reason: 'failed', bye: 'failed' });
      return;
    }
    conn.queue.push({ frames: frames(message, this.#chunkSize), size: message.length, documentId, started: false });
    conn.queuedBytes += message.length;
    this.#flush(conn);
  }

  /** Hands frames to the channel until it holds HIGH_WATER bytes; `bufferedamountlow` resumes.
   * @param {Connection} conn */
  #flush(conn) {
    const dc = conn.dc;
    if (conn.closed || dc.readyState !== 'open') return;
    try {
      while (conn.queue.length > 0 && dc.bufferedAmount <= HIGH_WATER) {
        const head = conn.queue[0];
        const next = head.frames.next();
        head.started = true;
        if (next.done) {
          conn.queue.shift();
          conn.queuedBytes -= head.size;
        } else {
          dc.send(next.value);
        }
      }
    } catch {
      this.#close(conn, { reason: 'failed', bye: 'failed' });
    }
  }

  /** @param {Connection} conn */
  #updatePath(conn) {
    this.pathOf(conn.did).then((path) => {
      if (conn.closed || this.#conns.get(conn.did) !== conn || path === conn.path) return;
      conn.path = path;
      this.#emitPeers();
    }, () => {});
  }

  /** The remote (or a man in the middle) misbehaved: refuse and close.
   * @param {Connection} conn @param {string} reason @param {any} [err] */
  #fail(conn, reason, err) {
    this.#refuse({ did: conn.did, reason, code: err?.code, message: err?.message, direction: 'in' });
    this.#close(conn, { reason: 'refused', bye: 'refused' });
  }

  /**
   * @param {Connection} conn
   * @param {{reason: string, bye?: string, remoteReason?: string}} o `bye`: tell the remote,
   *   with this reason (`closed`, `refused`, `failed`, `busy`)
   */
  #close(conn, { reason, bye, remoteReason }) {
    if (conn.closed) return;
    conn.closed = true;
    clearTimeout(conn.openTimer);
    clearTimeout(conn.disconnectedTimer);
    clearTimeout(conn.descriptionTimer);
    conn.queue = [];
    conn.queuedBytes = 0;
    conn.pendingCandidates = [];
    conn.auth = undefined;
    if (this.#conns.get(conn.did) === conn) this.#conns.delete(conn.did);
    if (conn.peerId && this.#byPeerId.get(conn.peerId) === conn) this.#byPeerId.delete(conn.peerId);
    const { pc, dc } = conn;
    dc.onopen = dc.onmessage = dc.onclose = dc.onbufferedamountlow = null;
    pc.onicecandidate = pc.onconnectionstatechange = null;
    try { dc.close(); } catch { /* already closed */ }
    try { pc.close(); } catch { /* already closed */ }
    if (bye) this.#sendSignal(conn.did, { kind: 'bye', cid: conn.cid, reason: bye });
    if (conn.state === 'open') this.emit('peer-disconnected', { peerId: /** @type {PeerId} */ (conn.peerId) });
    this.#emitPeers();
    const redial = reason === 'failed' || (reason === 'bye' && REDIAL_AFTER_BYE.has(remoteReason ?? ''));
    if (conn.offerer && redial) this.#scheduleRedial(conn.did);
  }

  /** @param {string} did */
  #scheduleRedial(did) {
    if (!this.#running || !this.#presence.has(did) || !this.#allowed(did)) return;
    const r = this.#redials.get(did) ?? { attempt: 0, timer: undefined };
    clearTimeout(r.timer);
    const { minMs, maxMs } = this.#retry;
    const ms = jitter(Math.min(minMs * 2 ** r.attempt, maxMs));
    r.attempt = Math.min(r.attempt + 1, 30);
    r.timer = setTimeout(() => {
      r.timer = undefined;
      this.#seen(did);
    }, ms);
    this.#redials.set(did, r);
  }

  // ---- Access ----------------------------------------------------------------------------------

  /** @param {string} did */
  #allowed(did) {
    try {
      return this.#access.isPeerAllowed(did) === true;
    } catch {
      return false;
    }
  }

  /** @param {'mayShare'|'mayReceive'} method @param {...any} args */
  #may(method, ...args) {
    try {
      return /** @type {any} */ (this.#access)[method](...args) === true;
    } catch {
      return false;
    }
  }

  /** Revoked members are dropped at once; newly allowed ones dialed. */
  #onAccessChange = () => {
    if (!this.#running) return;
    for (const conn of [...this.#conns.values()]) {
      if (this.#allowed(conn.did)) continue;
      this.#refuse({ did: conn.did, reason: 'revoked', direction: 'in' });
      this.#close(conn, { reason: 'refused', bye: 'refused' });
    }
    // A peer still allowed (a member of another space we share) may have lost this one:
    // what is queued for it of documents it may no longer have does not go out.
    for (const conn of this.#conns.values()) {
      if (conn.closed || conn.queue.length === 0) continue;
      conn.queue = conn.queue.filter((q) => {
        if (q.started || q.documentId === undefined || this.#may('mayShare', conn.did, q.documentId)) return true;
        conn.queuedBytes -= q.size;
        this.#refuse({ did: conn.did, documentId: q.documentId, reason: 'withdrawn', direction: 'out' });
        return false;
      });
    }
    for (const did of this.#presence.keys()) this.#seen(did);
  };

  // ---- Misc ------------------------------------------------------------------------------------

  /** @param {{did: string, documentId?: string, reason: string, direction: 'in'|'out', code?: string, message?: string}} e */
  #refuse(e) {
    this.emit('refused', e);
  }

  #emitPeers() {
    this.emit('peers', this.peers());
  }

  /** Back online or back in front: retry signaling now and redo what failed meanwhile. */
  #recheck = () => {
    if (!this.#running) return;
    if (!this.#signal) this.#wake?.();
    for (const conn of [...this.#conns.values()]) {
      const s = conn.pc.connectionState;
      if (s === 'failed' || s === 'closed') this.#close(conn, { reason: 'failed', bye: 'failed' });
    }
    for (const did of this.#presence.keys()) this.#seen(did);
  };

  #listenGlobals() {
    const g = /** @type {any} */ (globalThis);
    if (typeof g.addEventListener === 'function') {
      g.addEventListener('online', this.#recheck);
      this.#globalOffs.push(() => g.removeEventListener('online', this.#recheck));
    }
    const doc = g.document;
    if (typeof doc?.addEventListener === 'function') {
      const onVisible = () => { if (doc.visibilityState === 'visible') this.#recheck(); };
      doc.addEventListener('visibilitychange', onVisible);
      this.#globalOffs.push(() => doc.removeEventListener('visibilitychange', onVisible));
    }
  }
}
