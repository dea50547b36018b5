// The authentication exchange of a peer-to-peer data channel (README "Peer to peer (WebRTC)"):
// each side proves its HALO key over the channel, bound to both DTLS certificates, before
// anything reaches the Repo. Pure functions and a two-step state machine; no I/O.
//
// Each side sends `{type:'auth', did, peerId, sig}`, `sig` being base64url (no padding) of the
// Ed25519 signature of the UTF-8 bytes of
//
//   kube-p2p-v1\n<own fingerprint>\n<remote fingerprint>\n<own did>\n<own peerId>\n<remote did>
//
// with the SHA-256 DTLS fingerprints of the local and remote session descriptions (upper-case
// hex with colons, RFC 8122 §5). DTLS guarantees each side talks to the holder of the
// certificate its remote description names; the signature says the did's key vouches for that
// very pair of certificates. A man in the middle of signaling (KUBE included) who put his own
// fingerprints in the descriptions leaves each side with a different view of the pair, so no
// proof verifies; a proof from another session names other certificates (browsers make a new
// one per RTCPeerConnection) and does not verify either.

import { verify } from './identity.js';
import { b64url, fromUtf8, utf8 } from './encoding.js';

/** @typedef {import('./identity.js').Identity} Identity */
/** @typedef {{type: 'auth', did: string, peerId: string, sig: string}} AuthMessage */

export const P2P_CONTEXT = 'kube-p2p-v1';
/** The largest authentication message accepted, in bytes (a did, a peerId, a signature). */
export const MAX_AUTH_BYTES = 4096;
/** The longest peerId accepted. */
export const MAX_PEER_ID_CHARS = 256;

const FINGERPRINT = /^[0-9A-F]{2}(:[0-9A-F]{2}){31}$/;

/** Why an exchange failed. `code` names it; all but `misuse` are the remote's (or a man in the
 * middle's) doing, and the connection must close. */
export class AuthError extends Error {
  /** @param {'no-fingerprint'|'several-fingerprints'|'other-hash'|'bad-message'|'wrong-did'|'bad-peer-id'|'bad-signature'|'misuse'} code
   * @param {string} message */
  constructor(code, message) {
    super(message);
    this.name = 'AuthError';
    this.code = code;
  }
}

/**
 * The SHA-256 DTLS fingerprint an SDP names (`a=fingerprint:sha-256 AB:CD:…`), in upper case.
 * Throws an AuthError when there is none, several different ones, or a fingerprint with another
 * hash: by RFC 8122 §5 an endpoint checks the certificate against the strongest hash offered, so
 * an added `sha-512` line would name a certificate the proof does not bind.
 * @param {string} sdp @returns {string}
 */
export function sdpFingerprint(sdp) {
  if (typeof sdp !== 'string') throw new AuthError('no-fingerprint', 'no session description');
  const found = new Set();
  for (const line of sdp.split(/\r?\n/)) {
    const m = /^a=fingerprint:(\S+)\s+(\S+)\s*$/i.exec(line);
    if (!m) {
      if (/^a=fingerprint:/i.test(line)) throw new AuthError('no-fingerprint', `a malformed fingerprint line: ${line.slice(0, 120)}`);
      continue;
    }
    if (m[1].toLowerCase() !== 'sha-256') throw new AuthError('other-hash', `a ${m[1]} fingerprint; only sha-256 is accepted`);
    const fp = m[2].toUpperCase();
    if (!FINGERPRINT.test(fp)) throw new AuthError('no-fingerprint', `a malformed sha-256 fingerprint: ${m[2].slice(0, 120)}`);
    found.add(fp);
  }
  if (found.size === 0) throw new AuthError('no-fingerprint', 'the session description names no sha-256 fingerprint');
  if (found.size > 1) throw new AuthError('several-fingerprints', 'the session description names several sha-256 fingerprints');
  return [...found][0];
}

/** The exact string a proof signs.
 * @param {{ownFingerprint: string, remoteFingerprint: string, ownDid: string, ownPeerId: string, remoteDid: string}} o */
export function proofMessage({ ownFingerprint, remoteFingerprint, ownDid, ownPeerId, remoteDid }) {
  return `${P2P_CONTEXT}\n${ownFingerprint}\n${remoteFingerprint}\n${ownDid}\n${ownPeerId}\n${remoteDid}`;
}

/** @param {unknown} peerId */
function validPeerId(peerId) {
  return typeof peerId === 'string' && peerId !== '' && peerId.length <= MAX_PEER_ID_CHARS && !/[\r\n]/.test(peerId);
}

/**
 * Our proof for this session.
 * @param {object} o
 * @param {Identity} o.identity
 * @param {string} o.peerId our automerge-repo peerId
 * @param {string} o.remoteDid who signaling says is on the other side
 * @param {string} o.localSdp pc.localDescription.sdp
 * @param {string} o.remoteSdp pc.remoteDescription.sdp
 * @returns {AuthMessage}
 */
export function makeProof({ identity, peerId, remoteDid, localSdp, remoteSdp }) {
  if (!validPeerId(peerId)) throw new AuthError('misuse', 'our peerId must be a non-empty string without a newline');
  const ownFingerprint = sdpFingerprint(localSdp);
  const remoteFingerprint = sdpFingerprint(remoteSdp);
  const bytes = utf8(proofMessage({ ownFingerprint, remoteFingerprint, ownDid: identity.did, ownPeerId: peerId, remoteDid }));
  return { type: 'auth', did: identity.did, peerId, sig: b64url.encode(identity.sign(bytes)) };
}

/**
 * Checks the remote's proof against our own view of the session: the remote's fingerprint is
 * the remote description's, ours the local description's. Returns the proven did and peerId;
 * throws an AuthError otherwise.
 * @param {unknown} message the decoded authentication message
 * @param {object} o
 * @param {string} o.ownDid
 * @param {string} o.remoteDid who signaling says sent it (`from`)
 * @param {string} o.localSdp
 * @param {string} o.remoteSdp
 * @returns {{did: string, peerId: string}}
 */
export function verifyProof(message, { ownDid, remoteDid, localSdp, remoteSdp }) {
  const m = /** @type {any} */ (message);
  if (!m || typeof m !== 'object' || Array.isArray(m) || m.type !== 'auth') throw new AuthError('bad-message', 'not an authentication message');
  for (const k of Object.keys(m)) {
    if (!['type', 'did', 'peerId', 'sig'].includes(k)) throw new AuthError('bad-message', `unknown field ${JSON.stringify(k).slice(0, 40)}`);
  }
  if (typeof m.did !== 'string' || typeof m.sig !== 'string') throw new AuthError('bad-message', 'did and sig must be strings');
  if (m.did !== remoteDid) throw new AuthError('wrong-did', 'the proof is for another did than signaling named');
  if (!validPeerId(m.peerId)) throw new AuthError('bad-peer-id', 'peerId must be a non-empty string without a newline');
  let sig;
  try {
    sig = b64url.decode(m.sig);
  } catch {
    throw new AuthError('bad-message', 'sig is not base64url');
  }
  const bytes = utf8(proofMessage({
    ownFingerprint: sdpFingerprint(remoteSdp), // the remote's own = our remote description's
    remoteFingerprint: sdpFingerprint(localSdp),
    ownDid: m.did,
    ownPeerId: m.peerId,
    remoteDid: ownDid,
  }));
  if (!verify(m.did, bytes, sig)) throw new AuthError('bad-signature', 'the proof does not verify');
  return { did: m.did, peerId: m.peerId };
}

/** The wire form of an authentication message (UTF-8 JSON). @param {AuthMessage} m */
export function encodeAuth(m) {
  return utf8(JSON.stringify(m));
}

/** Parses an authentication message's bytes (checked by verifyProof).
 * @param {Uint8Array} bytes @returns {unknown} */
export function decodeAuth(bytes) {
  if (bytes.length > MAX_AUTH_BYTES) throw new AuthError('bad-message', 'authentication message too large');
  try {
    return JSON.parse(fromUtf8(bytes));
  } catch {
    throw new AuthError('bad-message', 'authentication message is not UTF-8 JSON');
  }
}

/**
 * Step one: the data channel is open. Reads both fingerprints (refusing bad descriptions before
 * anything is signed), makes our proof, and returns it with the state that awaits the remote's.
 * @param {object} o
 * @param {Identity} o.identity
 * @param {string} o.peerId
 * @param {string} o.remoteDid the signaling `from`
 * @param {string} o.localSdp
 * @param {string} o.remoteSdp
 * @returns {{send: AuthMessage, next: AwaitingProof}}
 */
export function startAuth({ identity, peerId, remoteDid, localSdp, remoteSdp }) {
  const send = makeProof({ identity, peerId, remoteDid, localSdp, remoteSdp });
  return { send, next: new AwaitingProof({ ownDid: identity.did, remoteDid, localSdp, remoteSdp }) };
}

/** Step two: awaits the remote's proof. Consumed by `receive`. */
export class AwaitingProof {
  #view;
  #spent = false;

  /** @param {{ownDid: string, remoteDid: string, localSdp: string, remoteSdp: string}} view */
  constructor(view) {
    this.#view = view;
  }

  /**
   * Takes the remote's authentication message (bytes as received, or already parsed).
   * @param {Uint8Array|unknown} message
   * @returns {Authenticated}
   */
  receive(message) {
    if (this.#spent) throw new AuthError('misuse', 'this exchange already took a proof');
    this.#spent = true;
    const parsed = message instanceof Uint8Array ? decodeAuth(message) : message;
    const { did, peerId } = verifyProof(parsed, this.#view);
    return new Authenticated(did, peerId);
  }
}

/** The end state: the remote proved `did` and presents `peerId`. */
export class Authenticated {
  /** @param {string} did @param {string} peerId */
  constructor(did, peerId) {
    this.did = did;
    this.peerId = peerId;
  }
}
