// HALO identities: Ed25519 keys written as did:key (multibase base58btc `z` of the multicodec
// ed25519-pub prefix 0xed 0x01 followed by the 32 key bytes), as halo/src/lib.rs does.

import { ed25519 } from '@noble/curves/ed25519.js';
import { base58 } from './encoding.js';

const PREFIX = 'did:key:z';
const ED25519_PUB = [0xed, 0x01];

/** The did:key of a raw 32-byte Ed25519 public key.
 * @param {Uint8Array} publicKey @returns {string} */
export function publicKeyToDid(publicKey) {
  if (!(publicKey instanceof Uint8Array) || publicKey.length !== 32) {
    throw new TypeError('an Ed25519 public key has 32 bytes');
  }
  const raw = new Uint8Array(34);
  raw.set(ED25519_PUB, 0);
  raw.set(publicKey, 2);
  return PREFIX + base58.encode(raw);
}

/** The 32-byte Ed25519 public key a did:key names; throws on anything else (another key type,
 * bad base58, wrong length, a point that does not decode).
 * @param {string} did @returns {Uint8Array} */
export function didToPublicKey(did) {
  if (typeof did !== 'string' || !did.startsWith(PREFIX)) {
    throw new Error('not a did:key (expected did:key:z…)');
  }
  let raw;
  try {
    raw = base58.decode(did.slice(PREFIX.length));
  } catch {
    throw new Error('did:key is not valid base58btc');
  }
  if (raw.length < 2 || raw[0] !== ED25519_PUB[0] || raw[1] !== ED25519_PUB[1]) {
    throw new Error('did:key names a key of another type; only Ed25519 is supported');
  }
  const key = raw.slice(2);
  if (key.length !== 32) throw new Error(`did:key holds ${key.length} key bytes; Ed25519 keys have 32`);
  try {
    ed25519.Point.fromBytes(key);
  } catch {
    throw new Error('not a valid Ed25519 public key');
  }
  return key;
}

/** Whether `sig` is `did`'s Ed25519 signature of `bytes`. Strict RFC 8032 verification (no
 * ZIP-215 leniency, small-order keys and R refused), as halo's `verify_strict`. Never throws.
 * @param {string} did @param {Uint8Array} bytes @param {Uint8Array} sig @returns {boolean} */
export function verify(did, bytes, sig) {
  try {
    if (!(sig instanceof Uint8Array) || sig.length !== 64) return false;
    const key = didToPublicKey(did);
    if (ed25519.Point.fromBytes(sig.subarray(0, 32)).isSmallOrder()) return false;
    return ed25519.verify(sig, bytes, key, { zip215: false });
  } catch {
    return false;
  }
}

/** An Ed25519 key pair: a HALO identity (or a device key, or a space key). */
export class Identity {
  /** @type {Uint8Array} */
  #seed;
  /** The raw 32-byte public key. @type {Uint8Array} */
  publicKey;
  /** `did:key:z6Mk…` @type {string} */
  did;

  /** @param {Uint8Array} seed 32 bytes (the Ed25519 secret key, RFC 8032) */
  constructor(seed) {
    if (!(seed instanceof Uint8Array) || seed.length !== 32) {
      throw new TypeError('an Ed25519 seed has 32 bytes');
    }
    this.#seed = Uint8Array.from(seed);
    this.publicKey = ed25519.getPublicKey(this.#seed);
    this.did = publicKeyToDid(this.publicKey);
  }

  /** A new random identity. */
  static generate() {
    return new Identity(ed25519.utils.randomSecretKey());
  }

  /** The identity of a known 32-byte seed (e.g. one kept in storage).
   * @param {Uint8Array} seed */
  static fromSeed(seed) {
    return new Identity(seed);
  }

  /** The 32-byte seed, to keep the identity (treat it as a secret). */
  exportSeed() {
    return Uint8Array.from(this.#seed);
  }

  /** The Ed25519 signature (64 bytes) of `bytes`. Synchronous.
   * @param {Uint8Array} bytes @returns {Uint8Array} */
  sign(bytes) {
    return ed25519.sign(bytes, this.#seed);
  }

  toJSON() {
    return { did: this.did };
  }
}
