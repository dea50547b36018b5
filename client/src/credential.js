// HALO credentials, byte for byte as halo/src/credential.rs makes them (see
// halo/CREDENTIALS.md): the signed bytes are the RFC 8785 (JCS) canonical JSON of
// {issuer, subject, assertion, issued, expires?, signer}; `id` is the lowercase hex SHA-256 of
// those bytes; `proof.signature` is the signer's Ed25519 signature of them, base64url without
// padding.

import canonicalize from 'canonicalize';
import { ed25519 } from '@noble/curves/ed25519.js';
import { bytesToNumberLE, concatBytes, equalBytes } from '@noble/curves/utils.js';
import { sha256, sha512 } from '@noble/hashes/sha2.js';
import { didToPublicKey, verify } from './identity.js';
import { b64url, toHex, utf8 } from './encoding.js';

/** @typedef {'admin'|'editor'|'replicator'|'reader'} Role */
/**
 * @typedef {{type:'SpaceGenesis', space:string}
 *   | {type:'SpaceMember', space:string, role:Role}
 *   | {type:'AuthorizedDevice', identity:string, device:string}
 *   | {type:'Revocation', credential:string}} Assertion
 */
/**
 * @typedef {object} Credential
 * @property {string} id hex SHA-256 of the signed bytes
 * @property {string} issuer did:key
 * @property {string} subject did:key
 * @property {Assertion} assertion
 * @property {number} issued Unix seconds
 * @property {number} [expires] Unix seconds; absent (not null) when it never expires
 * @property {{signer:string, signature:string}} proof
 */
/** Anything that signs: an {@link import('./identity.js').Identity}.
 * @typedef {{did:string, sign(bytes:Uint8Array):Uint8Array}} Signer */

/** The largest time a credential may carry (halo's `MAX_TIME`): JCS writes numbers as IEEE
 * doubles, so above 2^53 − 1 two times share one encoding and the signature would not pin it. */
export const MAX_TIME = 2 ** 53 - 1;

/** The roles, lowest first (halo's `Role` order). */
export const ROLES = Object.freeze(['reader', 'replicator', 'editor', 'admin']);

/** `SpaceGenesis`: issued by the space key; its subject is the space's first admin.
 * @param {string} space @returns {Assertion} */
export const spaceGenesis = (space) => ({ type: 'SpaceGenesis', space });

/** `SpaceMember`: the subject is a member of `space` with `role`.
 * @param {string} space @param {Role} role @returns {Assertion} */
export const spaceMember = (space, role) => {
  if (!ROLES.includes(role)) throw new Error(`unknown role ${JSON.stringify(role)}; one of ${ROLES.join(', ')}`);
  return { type: 'SpaceMember', space, role };
};

/** `AuthorizedDevice`: `device` may sign for `identity` (issued and signed by the identity).
 * @param {string} identity @param {string} device @returns {Assertion} */
export const authorizedDevice = (identity, device) => ({ type: 'AuthorizedDevice', identity, device });

/** `Revocation`: the credential with this id no longer holds.
 * @param {string} credential the revoked credential's id @returns {Assertion} */
export const revocation = (credential) => ({ type: 'Revocation', credential });

/** A JSON object (not an array, not null). @param {unknown} v */
const isObject = (v) => typeof v === 'object' && v !== null && !Array.isArray(v);

/** A string halo can hold: a lone UTF-16 surrogate is not text, and serde_json refuses it.
 * @param {string} what @param {unknown} v */
function checkString(what, v) {
  if (typeof v !== 'string') throw new Error(`${what} must be a string`);
  if (/\p{Cs}/u.test(v)) throw new Error(`${what} holds a lone surrogate`);
}

// The exact fields of each assertion (halo's serde enum has deny_unknown_fields).
const ASSERTION_FIELDS = {
  SpaceGenesis: ['space'],
  SpaceMember: ['space', 'role'],
  AuthorizedDevice: ['identity', 'device'],
  Revocation: ['credential'],
};

/** A copy of `a` with exactly halo's fields, or a thrown error.
 * @param {any} a @returns {Assertion} */
function checkAssertion(a) {
  const fields = isObject(a) && Object.hasOwn(ASSERTION_FIELDS, a.type) && ASSERTION_FIELDS[a.type];
  if (!fields) throw new Error(`unknown assertion type ${JSON.stringify(a?.type)}`);
  const out = { type: a.type };
  for (const k of Object.keys(a)) {
    if (k !== 'type' && !fields.includes(k)) throw new Error(`${a.type} has no field ${k}`);
  }
  for (const k of fields) {
    checkString(`${a.type}.${k}`, a[k]);
    out[k] = a[k];
  }
  if (a.type === 'SpaceMember' && !ROLES.includes(a.role)) throw new Error(`unknown role ${JSON.stringify(a.role)}`);
  return /** @type {Assertion} */ (out);
}

/** Unix seconds as halo's u64, at most MAX_TIME (halo: `CredentialError::TimeTooLarge`).
 * @param {string} what @param {unknown} v */
function checkSecs(what, v) {
  if (!Number.isInteger(v) || /** @type {number} */ (v) < 0) {
    throw new Error(`${what} must be a non-negative integer (Unix seconds)`);
  }
  if (/** @type {number} */ (v) > MAX_TIME) throw new Error(`${what} must be at most 2^53 - 1`);
}

// halo's `Credential` and `Proof` (serde, deny_unknown_fields). What halo cannot parse, ECHO
// skips, so it must count for nothing here either.
const CREDENTIAL_FIELDS = ['id', 'issuer', 'subject', 'assertion', 'issued', 'expires', 'proof'];
const PROOF_FIELDS = ['signer', 'signature'];

/** Throws unless `cred` has exactly the shape halo parses. @param {any} cred */
function checkShape(cred) {
  if (!isObject(cred)) throw new Error('a credential is a JSON object');
  for (const k of Object.keys(cred)) {
    if (!CREDENTIAL_FIELDS.includes(k)) throw new Error(`a credential has no field ${k}`);
  }
  for (const k of ['id', 'issuer', 'subject']) checkString(k, cred[k]);
  checkAssertion(cred.assertion);
  checkSecs('issued', cred.issued);
  // serde reads `"expires": null` as absent, as `signedObject` does.
  if (cred.expires !== undefined && cred.expires !== null) checkSecs('expires', cred.expires);
  if (!isObject(cred.proof)) throw new Error('proof is a JSON object');
  for (const k of Object.keys(cred.proof)) {
    if (!PROOF_FIELDS.includes(k)) throw new Error(`a proof has no field ${k}`);
  }
  for (const k of PROOF_FIELDS) checkString(`proof.${k}`, cred.proof[k]);
}

/**
 * Whether R = [s]B − [k]A holds exactly, the equation halo's `verify_strict` (ed25519-dalek)
 * checks. noble checks it multiplied by the cofactor 8, which also holds when R or A carries
 * a small-order component: a signature only a key's holder can make, which halo refuses.
 * Called after `verify` has checked the encodings, s < L and the small-order cases.
 * (identity.js's `verify` is the natural home for this check.)
 * @param {string} did @param {Uint8Array} bytes @param {Uint8Array} sig @returns {boolean}
 */
function cofactorless(did, bytes, sig) {
  const { Point } = ed25519;
  const key = didToPublicKey(did);
  const r = sig.subarray(0, 32);
  const k = Point.Fn.create(bytesToNumberLE(sha512(concatBytes(r, key, bytes))));
  const s = bytesToNumberLE(sig.subarray(32));
  const expected = Point.BASE.multiplyUnsafe(s).subtract(Point.fromBytes(key).multiplyUnsafe(k));
  return equalBytes(expected.toBytes(), r);
}

/** The signed part, as halo's `Signed` struct. */
function signedObject({ issuer, subject, assertion, issued, expires, signer }) {
  const o = { issuer, subject, assertion, issued };
  if (expires !== undefined && expires !== null) o.expires = expires;
  o.signer = signer;
  return o;
}

/** The exact bytes a credential's proof signs (JCS of the signed part).
 * @param {{issuer:string, subject:string, assertion:Assertion, issued:number, expires?:number,
 *   proof:{signer:string}}} cred
 * @returns {Uint8Array} */
export function signedBytes(cred) {
  return signedBytesOf({ ...cred, signer: cred.proof.signer });
}

function signedBytesOf(fields) {
  return utf8(canonicalize(signedObject(fields)));
}

/**
 * Issues a credential.
 * @param {object} o
 * @param {string} o.issuer did:key in whose name the credential speaks
 * @param {string} o.subject did:key it is about
 * @param {Assertion} o.assertion
 * @param {number} [o.issued] Unix seconds (default now)
 * @param {number} [o.expires] Unix seconds (default: never)
 * @param {Signer} o.signer the issuer's key, or a device key the issuer authorized
 * @returns {Credential}
 */
export function issueCredential({ issuer, subject, assertion, issued = Math.floor(Date.now() / 1000), expires, signer }) {
  if (typeof issuer !== 'string' || typeof subject !== 'string') throw new Error('issuer and subject are did:key strings');
  if (!signer || typeof signer.did !== 'string' || typeof signer.sign !== 'function') {
    throw new Error('signer must be an Identity (the issuer or a device it authorized)');
  }
  const a = checkAssertion(assertion);
  checkSecs('issued', issued);
  if (expires !== undefined && expires !== null) checkSecs('expires', expires);
  const bytes = signedBytesOf({ issuer, subject, assertion: a, issued, expires, signer: signer.did });
  const signature = b64url.encode(signer.sign(bytes));
  /** @type {Credential} */
  const cred = { id: toHex(sha256(bytes)), issuer, subject, assertion: a, issued };
  if (expires !== undefined && expires !== null) cred.expires = expires;
  cred.proof = { signer: signer.did, signature };
  return cred;
}

/** Checks that `cred` is a credential as halo parses it (exactly its fields, times at most
 * MAX_TIME), the id, and that `proof.signer` signed exactly these bytes (halo's `serde` parse
 * and `verify_proof`). Whether the signer may sign for the issuer, and whether the credential
 * holds in a space, is the space's question (`validateSpace`), not answered here.
 * @param {Credential} cred @returns {boolean} */
export function verifyCredential(cred) {
  try {
    checkShape(cred);
    const bytes = signedBytes(cred);
    if (toHex(sha256(bytes)) !== cred.id) return false;
    const sig = b64url.decode(cred.proof.signature);
    return verify(cred.proof.signer, bytes, sig) && cofactorless(cred.proof.signer, bytes, sig);
  } catch {
    return false;
  }
}

/** The JSON string a space root stores for a credential (key order as halo serializes).
 * @param {Credential} cred @returns {string} */
export function credentialToJson(cred) {
  const o = { id: cred.id, issuer: cred.issuer, subject: cred.subject, assertion: cred.assertion, issued: cred.issued };
  if (cred.expires !== undefined && cred.expires !== null) o.expires = cred.expires;
  o.proof = { signer: cred.proof.signer, signature: cred.proof.signature };
  return JSON.stringify(o);
}
