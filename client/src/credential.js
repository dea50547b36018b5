// HALO credentials, byte for byte as halo/src/credential.rs makes them (see
// halo/CREDENTIALS.md): the signed bytes are the RFC 8785 (JCS) canonical JSON of
// {issuer, subject, assertion, issued, expires?, signer}; `id` is the lowercase hex SHA-256 of
// those bytes; `proof.signature` is the signer's Ed25519 signature of them, base64url without
// padding.

import canonicalize from 'canonicalize';
import { sha256 } from '@noble/hashes/sha2.js';
import { verify } from './identity.js';
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
  const fields = a && ASSERTION_FIELDS[a.type];
  if (!fields) throw new Error(`unknown assertion type ${JSON.stringify(a?.type)}`);
  const out = { type: a.type };
  for (const k of Object.keys(a)) {
    if (k !== 'type' && !fields.includes(k)) throw new Error(`${a.type} has no field ${k}`);
  }
  for (const k of fields) {
    if (typeof a[k] !== 'string') throw new Error(`${a.type}.${k} must be a string`);
    out[k] = a[k];
  }
  if (a.type === 'SpaceMember' && !ROLES.includes(a.role)) throw new Error(`unknown role ${JSON.stringify(a.role)}`);
  return /** @type {Assertion} */ (out);
}

/** Unix seconds as halo's u64: a non-negative safe integer.
 * @param {string} what @param {unknown} v */
function checkSecs(what, v) {
  if (!Number.isSafeInteger(v) || /** @type {number} */ (v) < 0) {
    throw new Error(`${what} must be a non-negative integer (Unix seconds)`);
  }
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

/** Checks the id and that `proof.signer` signed exactly these bytes (halo's `verify_proof`).
 * Whether the signer may sign for the issuer, and whether the credential holds in a space, is
 * the space's question (halo `space::validate`), not answered here.
 * @param {Credential} cred @returns {boolean} */
export function verifyCredential(cred) {
  try {
    checkAssertion(cred.assertion);
    checkSecs('issued', cred.issued);
    if (cred.expires !== undefined) checkSecs('expires', cred.expires);
    const bytes = signedBytes(cred);
    if (toHex(sha256(bytes)) !== cred.id) return false;
    return verify(cred.proof.signer, bytes, b64url.decode(cred.proof.signature));
  } catch {
    return false;
  }
}

/** The JSON string a space root stores for a credential (key order as halo serializes).
 * @param {Credential} cred @returns {string} */
export function credentialToJson(cred) {
  const o = { id: cred.id, issuer: cred.issuer, subject: cred.subject, assertion: cred.assertion, issued: cred.issued };
  if (cred.expires !== undefined) o.expires = cred.expires;
  o.proof = { signer: cred.proof.signer, signature: cred.proof.signature };
  return JSON.stringify(o);
}
