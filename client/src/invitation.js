// Invitations (halo/CREDENTIALS.md "Invitations", halo/src/invitation.rs): the host (an admin's
// device) and the guest run hello → challenge → proof → admitted/refused through the signaling
// swarm `invitationSwarm(invitation)`. These are the two state machines only, without I/O, as
// in halo: the app carries each returned message to the other side as a signaling payload,
// together with the sender's key as signaling authenticated it (`from`).

import { x25519 } from '@noble/curves/ed25519.js';
import { hmac } from '@noble/hashes/hmac.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { issueCredential, spaceMember, verifyCredential, ROLES } from './credential.js';
import { didToPublicKey, verify } from './identity.js';
import { b64url, randomBytes, toHex, utf8 } from './encoding.js';

/** @typedef {import('./credential.js').Credential} Credential */
/** @typedef {import('./credential.js').Role} Role */
/** @typedef {import('./identity.js').Identity} Identity */
/**
 * @typedef {object} Invitation
 * @property {string} id 32 lowercase hex digits
 * @property {string} space
 * @property {Role} role
 * @property {string} host the key that answers and signs the member credential
 * @property {number} expires Unix seconds
 * @property {{type:'code'} | {type:'key', guest:string}} method
 */

/** Wrong codes an invitation survives: the third wrong one kills it. */
export const CODE_ATTEMPTS = 3;
/** Guests a host talks to at once. */
export const MAX_PENDING = 16;
/** Seconds a guest has to answer a challenge. */
export const PENDING_SECS = 60;
const CONTEXT = 'kube-invite-v1';

const REFUSALS = {
  unknown: 'this host holds no such invitation',
  expired: 'the invitation has expired',
  used: 'the invitation has been used',
  dead: 'the invitation is dead: too many wrong codes',
  'wrong-code': 'wrong code',
  'wrong-key': 'the invitation is for another key',
  'bad-proof': 'the proof does not verify',
  busy: 'the host is busy with other guests; try again',
};

/** A refusal from the host, or a local failure of the exchange. */
export class InvitationError extends Error {
  /** @param {string} message @param {{code?: string, attemptsLeft?: number}} [o] */
  constructor(message, { code, attemptsLeft } = {}) {
    super(message);
    this.name = 'InvitationError';
    /** The host's refusal code (`wrong-code`, `expired`, …), if the host refused. */
    this.code = code;
    /** For `wrong-code`: how many attempts the invitation has left. */
    this.attemptsLeft = attemptsLeft;
  }
}

/** The swarm host and guest meet in: hex SHA-256 of `kube-invite-v1\n<id>`.
 * @param {Invitation} invitation */
export const invitationSwarm = (invitation) => toHex(sha256(utf8(`${CONTEXT}\n${invitation.id}`)));

/** The bytes both sides sign or MAC. */
export const transcript = (step, id, guest, guestEph, hostEph) => `${CONTEXT}\n${step}\n${id}\n${guest}\n${guestEph}\n${hostEph}`;

/** `HMAC-SHA256(key = shared secret ‖ code, message = proof transcript)`. */
export function codeMac(shared, code, proofTranscript) {
  const key = new Uint8Array(shared.length + code.length);
  key.set(shared, 0);
  key.set(utf8(code), shared.length);
  return hmac(sha256, key, utf8(proofTranscript));
}

/** A fresh 6-digit code from 4 random bytes (as halo's `new_code`).
 * @param {Uint8Array} [random] 4 bytes */
export function newCode(random = randomBytes(4)) {
  const n = new DataView(random.buffer, random.byteOffset, 4).getUint32(0, true);
  return String(n % 1_000_000).padStart(6, '0');
}

/**
 * A new invitation to `space` with `role`, answered by `host`.
 * @param {object} o
 * @param {string} o.space
 * @param {Role} o.role
 * @param {string} o.host the did of the key that will run the `Host`
 * @param {number} [o.expires] Unix seconds (default: in 10 minutes)
 * @param {string} [o.guest] only this did may redeem it (a key invitation); else a code invitation
 * @returns {{invitation: Invitation, code?: string}} the code goes to the guest by another channel
 */
export function createInvitation({ space, role, host, expires = Math.floor(Date.now() / 1000) + 600, guest }) {
  if (!ROLES.includes(role)) throw new Error(`unknown role ${JSON.stringify(role)}`);
  const method = guest === undefined ? { type: 'code' } : { type: 'key', guest };
  const invitation = { id: toHex(randomBytes(16)), space, role, host, expires, method };
  return guest === undefined ? { invitation, code: newCode() } : { invitation };
}

const isCode = (c) => typeof c === 'string' && /^[0-9]{6}$/.test(c);

function checkCodeMatchesMethod(invitation, code) {
  const byCode = invitation?.method?.type === 'code';
  if (byCode && code === undefined) throw new InvitationError('a code invitation needs a code');
  if (!byCode && code !== undefined) throw new InvitationError('only a code invitation has a code');
  if (byCode && !isCode(code)) throw new InvitationError('the code must be 6 digits');
}

function x25519Public(s) {
  let raw;
  try {
    raw = b64url.decode(s);
  } catch {
    return undefined;
  }
  return raw.length === 32 ? raw : undefined;
}

/** X25519, refusing low-order points (their all-zero secret anyone can compute). */
function sharedSecret(secret, theirs) {
  try {
    const s = x25519.getSharedSecret(secret, theirs);
    return s.some((b) => b !== 0) ? s : undefined;
  } catch {
    return undefined;
  }
}

function equalBytes(a, b) {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

const validDid = (d) => {
  try {
    didToPublicKey(d);
    return true;
  } catch {
    return false;
  }
};

/** The host's side: holds the invitation, its code, and the key that signs for the space. */
export class Host {
  #invitation;
  #code;
  #key;
  #issuer;
  #root;
  /** @type {{open: number} | 'used' | 'dead'} */
  #state = { open: CODE_ATTEMPTS };
  /** from → pending challenge */
  #pending = new Map();

  /**
   * @param {object} o
   * @param {Invitation} o.invitation
   * @param {string} [o.code] for a code invitation
   * @param {Identity} o.key the invitation's host key
   * @param {string} [o.issuer] when `key` is a device: the identity credentials are issued for
   * @param {string} [o.root] the space root's documentId, named in `admitted` so the guest
   *   needs no other channel for it
   */
  constructor({ invitation, code, key, issuer, root }) {
    checkCodeMatchesMethod(invitation, code);
    if (key.did !== invitation.host) throw new InvitationError("the host key is not the invitation's host");
    if (root !== undefined && !isDocumentId(root)) throw new InvitationError('root is not an automerge documentId');
    this.#invitation = invitation;
    this.#code = code;
    this.#key = key;
    this.#issuer = issuer ?? invitation.host;
    this.#root = root;
  }

  get invitation() {
    return this.#invitation;
  }

  /** `{open: attemptsLeft}`, `'used'` or `'dead'`. */
  get state() {
    return typeof this.#state === 'string' ? this.#state : { ...this.#state };
  }

  #refuse(code) {
    const msg = { type: 'refused', code, message: REFUSALS[code] };
    if (code === 'wrong-code') msg.attempts_left = typeof this.#state === 'string' ? 0 : this.#state.open;
    return msg;
  }

  /**
   * Handles a message from the signaling peer `from` (as signaling authenticated it); returns
   * the reply to send to `from`.
   * @param {string} from
   * @param {any} msg
   * @param {{now?: number, random?: Uint8Array}} [o] `random`: 32 bytes for a fresh X25519 key
   */
  handle(from, msg, { now = Math.floor(Date.now() / 1000), random = randomBytes(32) } = {}) {
    if (this.#state === 'used') return this.#refuse('used');
    if (this.#state === 'dead') return this.#refuse('dead');
    if (now > this.#invitation.expires) {
      this.#pending.clear();
      return this.#refuse('expired');
    }
    if (msg?.type === 'hello') return this.#hello(from, msg, now, random);
    if (msg?.type === 'proof') return this.#proof(from, msg, now);
    return this.#refuse('bad-proof');
  }

  #hello(from, { invitation, guest, eph }, now, random) {
    if (invitation !== this.#invitation.id) return this.#refuse('unknown');
    if (guest !== from || !validDid(guest) || typeof eph !== 'string' || !x25519Public(eph)) return this.#refuse('bad-proof');
    const m = this.#invitation.method;
    if (m.type === 'key' && m.guest !== guest) return this.#refuse('wrong-key');
    for (const [k, p] of this.#pending) if (now - p.since > PENDING_SECS) this.#pending.delete(k);
    if (this.#pending.size >= MAX_PENDING && !this.#pending.has(from)) return this.#refuse('busy');
    const secret = Uint8Array.from(random);
    const hostEph = b64url.encode(x25519.getPublicKey(secret));
    const signed = transcript('challenge', invitation, guest, eph, hostEph);
    const signature = b64url.encode(this.#key.sign(utf8(signed)));
    this.#pending.set(from, { since: now, guest, guestEph: eph, hostEph, secret });
    return { type: 'challenge', eph: hostEph, signature };
  }

  #proof(from, { signature, mac }, now) {
    // A challenge answers once: a replayed proof finds nothing pending.
    const p = this.#pending.get(from);
    this.#pending.delete(from);
    if (!p || now - p.since > PENDING_SECS) return this.#refuse('bad-proof');
    const id = this.#invitation.id;
    const signed = transcript('proof', id, p.guest, p.guestEph, p.hostEph);
    let sig;
    try {
      sig = b64url.decode(signature);
    } catch {
      return this.#refuse('bad-proof');
    }
    if (!verify(p.guest, utf8(signed), sig)) return this.#refuse('bad-proof');
    if (this.#code !== undefined) {
      const shared = sharedSecret(p.secret, x25519Public(p.guestEph));
      if (!shared) return this.#refuse('bad-proof');
      let given = new Uint8Array(0);
      try {
        if (typeof mac === 'string') given = b64url.decode(mac);
      } catch {
        // a malformed MAC is a wrong code
      }
      if (!equalBytes(codeMac(shared, this.#code, signed), given)) {
        if (typeof this.#state === 'string') return this.#refuse('dead');
        const left = Math.max(0, this.#state.open - 1);
        if (left === 0) {
          this.#state = 'dead';
          this.#pending.clear();
        } else {
          this.#state = { open: left };
        }
        return this.#refuse('wrong-code');
      }
    }
    const credential = issueCredential({
      issuer: this.#issuer,
      subject: p.guest,
      assertion: spaceMember(this.#invitation.space, this.#invitation.role),
      issued: now,
      signer: this.#key,
    });
    this.#state = 'used';
    this.#pending.clear();
    return this.#root === undefined ? { type: 'admitted', credential } : { type: 'admitted', credential, root: this.#root };
  }
}

const BASE58 = /^[1-9A-HJ-NP-Za-km-z]{20,40}$/;

/**
 * Whether `id` has the shape of an automerge-repo documentId (base58 of a checksummed 16-byte
 * id: 20 to 40 characters), as `halo::invitation::is_document_id` judges it.
 * @param {unknown} id
 */
export function isDocumentId(id) {
  return typeof id === 'string' && BASE58.test(id);
}

/** The guest's side of one attempt (after a wrong code, a new attempt is a new `Guest`). */
export class Guest {
  #invitation;
  #code;
  #key;
  #secret;
  #eph;
  #done = false;
  #challenged = false;
  /** The first message, to send to the host. */
  hello;

  /**
   * @param {object} o
   * @param {Invitation} o.invitation
   * @param {string} [o.code] the 6-digit code, for a code invitation
   * @param {Identity} o.key the guest's key (becomes the credential's subject)
   * @param {Uint8Array} [o.random] 32 bytes for the X25519 key (default random)
   */
  constructor({ invitation, code, key, random = randomBytes(32) }) {
    checkCodeMatchesMethod(invitation, code);
    this.#invitation = invitation;
    this.#code = code;
    this.#key = key;
    this.#secret = Uint8Array.from(random);
    this.#eph = b64url.encode(x25519.getPublicKey(this.#secret));
    this.hello = { type: 'hello', invitation: invitation.id, guest: key.did, eph: this.#eph };
  }

  /**
   * Handles a message from the signaling peer `from`. Returns `{send: message}` (a proof to
   * send to the host) or `{credential, root}` (admitted; `root` is the space root's
   * documentId when the host named one with its shape, else undefined. It is not signed: the
   * root a guest syncs is trusted once it validates under the space key). Throws an `InvitationError` when the host
   * refused (`err.code`), and for messages from anyone but the host or out of order (those
   * leave the attempt as it was).
   * @param {string} from @param {any} msg
   * @returns {{send: any} | {credential: Credential, root?: string}}
   */
  handle(from, msg) {
    if (from !== this.#invitation.host) throw new InvitationError(`a message from ${from}, not from the invitation's host: ignored`);
    if (this.#done) throw new InvitationError('unexpected message after the end');
    if (msg?.type === 'challenge' && !this.#challenged) {
      const me = this.#key.did;
      const id = this.#invitation.id;
      const challenge = transcript('challenge', id, me, this.#eph, msg.eph);
      let sig;
      try {
        sig = b64url.decode(msg.signature);
      } catch {
        sig = new Uint8Array(0);
      }
      if (typeof msg.eph !== 'string' || !verify(this.#invitation.host, utf8(challenge), sig)) {
        throw new InvitationError("the host's signature does not verify: not the invitation's host");
      }
      let mac;
      const proof = transcript('proof', id, me, this.#eph, msg.eph);
      if (this.#code !== undefined) {
        const theirs = x25519Public(msg.eph);
        const shared = theirs && sharedSecret(this.#secret, theirs);
        if (!shared) throw new InvitationError('an X25519 key that is not 32 base64url bytes, or gives no shared secret');
        mac = b64url.encode(codeMac(shared, this.#code, proof));
      }
      this.#challenged = true;
      const send = { type: 'proof', signature: b64url.encode(this.#key.sign(utf8(proof))) };
      if (mac !== undefined) send.mac = mac;
      return { send };
    }
    if (msg?.type === 'admitted' && this.#challenged) {
      this.#done = true;
      this.#checkCredential(msg.credential);
      return { credential: msg.credential, root: isDocumentId(msg.root) ? msg.root : undefined };
    }
    if (msg?.type === 'refused') {
      this.#done = true;
      throw new InvitationError(`refused: ${msg.message}`, { code: msg.code, attemptsLeft: msg.attempts_left });
    }
    throw new InvitationError(`unexpected message ${msg?.type} in this state`);
  }

  #checkCredential(c) {
    const bad = (why) => new InvitationError(`the credential received is not the one invited to: ${why}`);
    if (!c || !verifyCredential(c)) throw bad('its proof does not verify');
    if (c.proof.signer !== this.#invitation.host) throw bad('not signed by the host');
    if (c.subject !== this.#key.did) throw bad('about another key');
    const a = c.assertion;
    if (a.type !== 'SpaceMember' || a.space !== this.#invitation.space || a.role !== this.#invitation.role) {
      throw bad('another space or role');
    }
  }
}
