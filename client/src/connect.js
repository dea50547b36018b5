// Connecting a Repo to a KUBE's ECHO (echo/PROTOCOL.md §1): the stock automerge-repo
// WebSocket client adapter, with a fresh signed token in the URL for every (re)connection.

import { cbor } from '@automerge/automerge-repo';
import { WebSocketClientAdapter } from '@automerge/automerge-repo-network-websocket';
import { verify, didToPublicKey } from './identity.js';
import { b64url, fromUtf8, randomBytes, toHex, utf8 } from './encoding.js';

/** @typedef {import('./identity.js').Identity} Identity */
/** @typedef {import('@automerge/automerge-repo').DocHandle<any>} DocHandle */

export const ECHO_PATH = '/.well-known/kube/echo';
export const IDENTITY_PATH = '/.well-known/kube/identity';
const CONTEXT = 'kube-echo-v1';

/** The exact string an ECHO token's `sig` signs:
 * `kube-echo-v1\n<aud>\n<peer>\n<did>\n<ts>\n<nonce>`.
 * @param {{aud:string, peer:string, did:string, ts:number, nonce:string}} t */
export function echoTokenMessage({ aud, peer, did, ts, nonce }) {
  return `${CONTEXT}\n${aud}\n${peer}\n${did}\n${ts}\n${nonce}`;
}

/**
 * A fresh ECHO auth token (the value of `?auth=`): base64url (no padding) of the UTF-8 JSON
 * `{did, peer, aud, ts, nonce, sig}`. Synchronous.
 * @param {object} o
 * @param {Identity} o.identity the key that connects (an identity or an authorized device)
 * @param {string} o.peer the automerge-repo peerId the connection will `join` as
 * @param {string} o.aud the KUBE's did:key
 * @param {number} [o.ts] Unix seconds (default now)
 * @param {string} [o.nonce] 16–64 lowercase hex digits (default 32 random ones)
 * @returns {string}
 */
export function makeEchoToken({ identity, peer, aud, ts = Math.floor(Date.now() / 1000), nonce = toHex(randomBytes(16)) }) {
  if (typeof peer !== 'string' || peer === '' || peer.includes('\n')) throw new Error('peer must be a non-empty string without a newline');
  if (!/^[0-9a-f]{16,64}$/.test(nonce)) throw new Error('nonce must be 16–64 lowercase hex digits');
  if (!Number.isSafeInteger(ts) || ts < 0) throw new Error('ts must be Unix seconds');
  const did = identity.did;
  const sig = b64url.encode(identity.sign(utf8(echoTokenMessage({ aud, peer, did, ts, nonce }))));
  return b64url.encode(utf8(JSON.stringify({ did, peer, aud, ts, nonce, sig })));
}

/**
 * Decodes and checks a token as KUBE does, minus the nonce memory: the signature, `aud`, and
 * `ts` within `windowSecs` of `now`. Returns the token's fields; throws on any failure. (For
 * tests and tools; KUBE's own check is in Rust.)
 * @param {string} token
 * @param {{aud?: string, now?: number, windowSecs?: number}} [o]
 * @returns {{did:string, peer:string, aud:string, ts:number, nonce:string, sig:string}}
 */
export function verifyEchoToken(token, { aud, now = Math.floor(Date.now() / 1000), windowSecs = 60 } = {}) {
  const t = JSON.parse(fromUtf8(b64url.decode(token)));
  for (const k of ['did', 'peer', 'aud', 'nonce', 'sig']) {
    if (typeof t[k] !== 'string') throw new Error(`token.${k} is missing`);
  }
  if (!Number.isSafeInteger(t.ts)) throw new Error('token.ts is not an integer');
  if (t.peer.includes('\n')) throw new Error('token.peer contains a newline');
  if (!/^[0-9a-f]{16,64}$/.test(t.nonce)) throw new Error('token.nonce is not 16–64 hex digits');
  if (aud !== undefined && t.aud !== aud) throw new Error('token made for another KUBE');
  if (Math.abs(now - t.ts) > windowSecs) throw new Error('token.ts outside the window');
  if (!verify(t.did, utf8(echoTokenMessage(t)), b64url.decode(t.sig))) throw new Error('token signature does not verify');
  return t;
}

/**
 * The stock WebSocket client adapter, authenticated to one KUBE: every connect() and every
 * reconnect sets `url` to `wss://…/.well-known/kube/echo?auth=<fresh token>` first.
 *
 * Events besides the stock ones:
 * - `'kube-error'` (message: string): an `error` message from KUBE, e.g. `"refused: …"` for a
 *   reader's change or `"revoked: …"` before KUBE closes the connection.
 * - `'kube-connection-error'` (error: Error): the socket failed (TLS, HTTP 401, …). The stock
 *   adapter throws these in Node (crashing the process); this one reports them and retries.
 *
 * `disconnect()` stays down until `reconnect()`; a connection KUBE closes (e.g. after
 * "revoked") is retried every `retryInterval` ms as by the stock adapter.
 */
export class KubeAdapter extends WebSocketClientAdapter {
  /** The KUBE's did:key (the tokens' `aud`). @type {string} */
  kubeDid;
  /** KUBE's storage id, from its `peer` message; undefined until then. @type {string|undefined} */
  kubeStorageId;
  /** KUBE's peerId, from its `peer` message. @type {string|undefined} */
  kubePeerId;
  /** @type {Identity} */
  #identity;
  /** `wss://host:port/.well-known/kube/echo` @type {string} */
  #endpoint;
  /** @type {string|undefined} */
  #expectedPeerId;
  /** Seconds to add to the local clock for token times: KUBE's clock minus ours, from the
   * identity endpoint, so a client with a skewed clock still makes tokens KUBE accepts. */
  clockOffset;
  /** Set by disconnect(): the stock adapter may still have a retry timer that would call
   * connect() again; it is ignored until reconnect(). */
  #stopped = false;

  /**
   * @param {object} o
   * @param {string} o.endpoint `wss://host:port/.well-known/kube/echo`
   * @param {Identity} o.identity
   * @param {string} o.kubeDid
   * @param {string} [o.peerId] if given, connect() refuses any other peerId
   * @param {number} [o.retryInterval] ms between reconnection attempts (stock default 5000)
   * @param {number} [o.clockOffset] seconds KUBE's clock is ahead of ours (default 0)
   */
  constructor({ endpoint, identity, kubeDid, peerId, retryInterval = 5000, clockOffset = 0 }) {
    super(endpoint, retryInterval);
    this.#endpoint = endpoint;
    this.#identity = identity;
    this.kubeDid = kubeDid;
    this.#expectedPeerId = peerId;
    this.clockOffset = Number.isSafeInteger(clockOffset) ? clockOffset : 0;
  }

  /** @param {string} peerId @param {any} [peerMetadata] */
  connect(peerId, peerMetadata) {
    if (this.#stopped) return;
    if (this.#expectedPeerId !== undefined && peerId !== this.#expectedPeerId) {
      throw new Error(`this adapter was made for peerId ${this.#expectedPeerId}, not ${peerId}`);
    }
    const ts = Math.floor(Date.now() / 1000) + this.clockOffset;
    const token = makeEchoToken({ identity: this.#identity, peer: peerId, aud: this.kubeDid, ts });
    this.url = `${this.#endpoint}?auth=${token}`;
    // NetworkSubsystem.reconnect() passes no metadata; keep what the Repo first gave (its
    // storageId), which the stock adapter forgets after disconnect().
    super.connect(peerId, peerMetadata ?? this.peerMetadata);
  }

  /** Closes the connection and stays down (also against the stock adapter's pending retries)
   * until reconnect(). Safe to call twice (Repo.shutdown() calls it too). */
  disconnect() {
    this.#stopped = true;
    if (this.socket && this.peerId) super.disconnect();
  }

  /** Connects again (after disconnect(), or to force a new connection) with a fresh token. */
  reconnect() {
    if (!this.peerId) throw new Error('not connected yet: give the adapter to a Repo first');
    if (this.socket) super.disconnect(); // the stock reconnect path would leave the old socket open
    this.#stopped = false;
    this.connect(this.peerId, this.peerMetadata);
  }

  /** @param {ArrayBuffer|Uint8Array} messageBytes */
  receiveMessage(messageBytes) {
    let message;
    try {
      message = cbor.decode(new Uint8Array(messageBytes));
    } catch {
      return super.receiveMessage(messageBytes); // the stock adapter logs and drops it
    }
    if (message?.type === 'peer') {
      this.kubePeerId = message.senderId;
      this.kubeStorageId = message.peerMetadata?.storageId;
    } else if (message?.type === 'error') {
      this.emit('kube-error', String(message.message ?? ''));
    } else if (messageBytes.byteLength > 0 && this.socket) {
      // Everything else goes to the Repo as the stock adapter does, without decoding twice.
      this.emit('message', message);
      return;
    }
    super.receiveMessage(messageBytes);
  }

  /** Replaces the stock handler, which throws (in Node) on anything but ECONNREFUSED. */
  onError = (/** @type {any} */ event) => {
    const err = event?.error instanceof Error ? event.error : new Error(event?.message || 'WebSocket error');
    this.emit('kube-connection-error', err);
  };
}

/** `https://host:port` → `wss://host:port/.well-known/kube/echo` (http → ws). */
function echoEndpoint(url) {
  const u = new URL(url);
  if (u.protocol !== 'https:' && u.protocol !== 'http:') throw new Error(`KUBE url must be https://…, not ${url}`);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  u.pathname = ECHO_PATH;
  u.search = '';
  u.hash = '';
  return u.toString();
}

/**
 * Looks up a KUBE's did and clock (`GET {url}/.well-known/kube/identity` answers
 * `{did, time}`) and returns an adapter for a Repo:
 * `new Repo({ network: [await connectKube({ url, identity })] })`. Its tokens use KUBE's
 * clock (`clockOffset`), so a client whose clock is minutes off still connects.
 * @param {object} o
 * @param {string} o.url `https://host:port` of the KUBE
 * @param {Identity} o.identity the key to connect with
 * @param {string} [o.peerId] the Repo's peerId, if you set one; connect() then checks it
 * @param {number} [o.retryInterval] ms between reconnection attempts (default 5000)
 * @param {typeof fetch} [o.fetch] a fetch to use (default globalThis.fetch)
 * @returns {Promise<KubeAdapter>}
 */
export async function connectKube({ url, identity, peerId, retryInterval, fetch: fetchFn = globalThis.fetch }) {
  const endpoint = echoEndpoint(url);
  const res = await fetchFn(new URL(IDENTITY_PATH, url).toString(), { headers: { accept: 'application/json' } });
  if (!res.ok) throw new Error(`GET ${IDENTITY_PATH}: HTTP ${res.status}`);
  const { did, time } = await res.json();
  didToPublicKey(did); // throws unless an Ed25519 did:key
  const clockOffset = Number.isSafeInteger(time) ? time - Math.floor(Date.now() / 1000) : 0;
  return new KubeAdapter({ endpoint, identity, kubeDid: did, peerId, retryInterval, clockOffset });
}

/** Whether KUBE's last known heads include every local head of `handle`. Both lists are
 * automerge-repo's encoded (bs58check) heads, so they compare as strings. */
function covered(handle, storageId) {
  if (!storageId || !handle.isReady()) return false;
  const remote = handle.getSyncInfo(storageId)?.lastHeads;
  if (!remote) return false;
  return handle.heads().every((h) => remote.includes(h));
}

/**
 * Resolves once KUBE acknowledged every local change of `handle`, i.e. KUBE's heads for the
 * document (`handle.getSyncInfo(storageId).lastHeads`) cover `handle.heads()`. By PROTOCOL.md §4
 * KUBE sends no heads it has not fsynced, so the changes are then on KUBE's disk. Rejects after
 * `timeoutMs`. (When KUBE is ahead, e.g. holds someone else's change on top of ours, this
 * resolves once that change has reached us too and the heads agree.)
 * @param {DocHandle} handle
 * @param {KubeAdapter|string} adapterOrStorageId the adapter (its `kubeStorageId` is read when
 *   needed, so it may still be connecting) or KUBE's storage id
 * @param {{timeoutMs?: number, pollMs?: number}} [o]
 * @returns {Promise<void>}
 */
export function synced(handle, adapterOrStorageId, { timeoutMs = 10_000, pollMs = 20 } = {}) {
  const storageId = () => (typeof adapterOrStorageId === 'string' ? adapterOrStorageId : adapterOrStorageId?.kubeStorageId);
  return new Promise((resolve, reject) => {
    if (covered(handle, storageId())) return resolve();
    const check = () => {
      if (covered(handle, storageId())) {
        done();
        resolve();
      }
    };
    const done = () => {
      clearInterval(poll);
      clearTimeout(timer);
      handle.off('remote-heads', check);
    };
    // 'remote-heads' fires on every change of KUBE's heads; the poll catches the storage id
    // arriving and local changes made meanwhile.
    handle.on('remote-heads', check);
    const poll = setInterval(check, pollMs);
    const timer = setTimeout(() => {
      done();
      const sid = storageId();
      reject(new Error(
        `not synced with KUBE within ${timeoutMs} ms: document ${handle.documentId}, ` +
        (sid ? `KUBE heads ${JSON.stringify(handle.getSyncInfo(sid)?.lastHeads ?? null)}, ` : 'KUBE storage id unknown (no peer message yet), ') +
        `local heads ${JSON.stringify(handle.isReady() ? handle.heads() : null)}`,
      ));
    }, timeoutMs);
  });
}
