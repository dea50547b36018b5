// Spaces as automerge-repo documents (echo/PROTOCOL.md §2).
//
// Root:   {kube: "space", space: <space did>, credentials: {<id>: <credential JSON>}, objects: {<documentId>: {type}}}
// Object: {space: <space did>, type, props: {name: scalar}, refs: {name: documentId}, text?: Automerge text}
//
// Every string here except an object's `text` is written as an Automerge scalar string
// (ImmutableString), not as collaborative text: credentials, dids, type names and ids are
// replaced whole, never edited, and KUBE reads them as plain strings. Reading them back from
// a doc gives ImmutableString objects; `asString` turns either form into a JS string.

import { ImmutableString, isImmutableString } from '@automerge/automerge-repo';
import { Identity, didToPublicKey } from './identity.js';
import {
  ROLES, credentialToJson, issueCredential, revocation, spaceGenesis, spaceMember,
} from './credential.js';

/** @typedef {import('./credential.js').Credential} Credential */
/** @typedef {import('./credential.js').Role} Role */
/** @typedef {import('./credential.js').Signer} Signer */
/** @typedef {import('@automerge/automerge-repo').Repo} Repo */
/** @typedef {import('@automerge/automerge-repo').DocHandle<any>} DocHandle */

/** A JS string from a doc value that is a string, an ImmutableString, or undefined.
 * @param {unknown} v @returns {string|undefined} */
export function asString(v) {
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'string') return v;
  if (isImmutableString(v)) return /** @type {any} */ (v).val;
  return String(v);
}

const scalar = (/** @type {string} */ s) => new ImmutableString(s);
const nowSecs = () => Math.floor(Date.now() / 1000);

/** The root doc of a ready root handle, checked to be a space root. */
function rootDoc(/** @type {DocHandle} */ root) {
  const doc = root.doc();
  if (asString(doc?.kube) !== 'space' || !asString(doc?.space)) {
    throw new Error(`document ${root.documentId} is not a space root`);
  }
  return doc;
}

/** The space key (did:key) of a root or object document.
 * @param {any} doc @returns {string|undefined} */
export const spaceOf = (doc) => asString(doc?.space);

/** Adds a credential to a root document (the server checks it; nothing is validated here).
 * @param {DocHandle} root @param {Credential} cred */
export function addCredential(root, cred) {
  root.change((d) => {
    d.credentials[cred.id] = scalar(credentialToJson(cred));
  });
}

/**
 * Creates a space: a fresh space key, its `SpaceGenesis` credential (issued and signed by the
 * space key, subject = `admin`, which makes `admin` the space's first admin: halo's
 * `space::validate` needs no separate `SpaceMember` credential for it), and a
 * `SpaceMember {role: "replicator"}` credential for the KUBE, issued by `admin`, so that KUBE
 * admits and stores the space.
 *
 * @param {Repo} repo
 * @param {Identity} admin the first admin's key (signs the replicator credential)
 * @param {object} o
 * @param {string} o.kubeDid the KUBE's did:key (`adapter.kubeDid` after `connectKube`)
 * @param {number} [o.issued] Unix seconds (default now)
 * @returns {{space: string, root: DocHandle, spaceKey: Identity, credentials: Credential[]}}
 *   `spaceKey` can revoke anything in the space; keep it secret, or drop it.
 */
export function createSpace(repo, admin, { kubeDid, issued = nowSecs() } = /** @type {any} */ ({})) {
  didToPublicKey(kubeDid); // throws unless it is an Ed25519 did:key
  const spaceKey = Identity.generate();
  const space = spaceKey.did;
  const genesis = issueCredential({
    issuer: space, subject: admin.did, assertion: spaceGenesis(space), issued, signer: spaceKey,
  });
  const replicator = issueCredential({
    issuer: admin.did, subject: kubeDid, assertion: spaceMember(space, 'replicator'), issued, signer: admin,
  });
  const credentials = {};
  for (const c of [genesis, replicator]) credentials[c.id] = scalar(credentialToJson(c));
  const root = repo.create({ kube: scalar('space'), space: scalar(space), credentials, objects: {} });
  return { space, root, spaceKey, credentials: [genesis, replicator] };
}

/**
 * Grants `role` in the root's space to `subjectDid`: a `SpaceMember` credential issued by
 * `issuer` (default `admin.did`; pass the identity's did when `admin` is one of its authorized
 * devices) and signed by `admin`, added to the root.
 * @param {DocHandle} root
 * @param {Signer} admin
 * @param {string} subjectDid
 * @param {Role} role
 * @param {{issued?: number, expires?: number, issuer?: string}} [o]
 * @returns {Credential}
 */
export function addMember(root, admin, subjectDid, role, { issued = nowSecs(), expires, issuer = admin.did } = {}) {
  if (!ROLES.includes(role)) throw new Error(`unknown role ${JSON.stringify(role)}`);
  didToPublicKey(subjectDid);
  const space = asString(rootDoc(root).space);
  const cred = issueCredential({
    issuer, subject: subjectDid, assertion: spaceMember(space, role), issued, expires, signer: admin,
  });
  addCredential(root, cred);
  return cred;
}

/**
 * Revokes the credential `credentialId` of the root's space: a `Revocation` credential (subject =
 * the revoked credential's subject) issued by `issuer` (default `admin.did`), added to the root.
 * It counts when an admin, the space key, or the revoked credential's own issuer issued it.
 * @param {DocHandle} root
 * @param {Signer} admin
 * @param {string} credentialId
 * @param {{issued?: number, issuer?: string}} [o]
 * @returns {Credential}
 */
export function revoke(root, admin, credentialId, { issued = nowSecs(), issuer = admin.did } = {}) {
  const target = credentials(rootDoc(root)).find((c) => c.id === credentialId);
  if (!target) throw new Error(`no credential ${credentialId} in this space`);
  const cred = issueCredential({
    issuer, subject: target.subject, assertion: revocation(credentialId), issued, signer: admin,
  });
  addCredential(root, cred);
  return cred;
}

/** The credentials of a root document, parsed (unparsable entries are skipped). No validation:
 * KUBE decides with halo's `space::validate`.
 * @param {any} doc a root document (`root.doc()`) @returns {Credential[]} */
export function credentials(doc) {
  const out = [];
  for (const v of Object.values(doc?.credentials ?? {})) {
    if (typeof v === 'string' || isImmutableString(v)) {
      try {
        out.push(JSON.parse(asString(v)));
      } catch {
        // not JSON: KUBE ignores it too
      }
    } else if (v && typeof v === 'object') {
      // A credential written as a map, not as a JSON string: KUBE reads it too
      // (echo/src/space.rs `check_entry`), so it counts here as well.
      out.push(plainValue(v));
    }
  }
  return out;
}

/** A doc value as plain JSON data: scalar strings become strings, maps and lists copies.
 * @param {any} v @returns {any} */
export function plainValue(v) {
  if (typeof v === 'string' || isImmutableString(v)) return asString(v);
  if (Array.isArray(v)) return v.map(plainValue);
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plainValue(x)]));
  return v;
}

/** The object index of a root document: documentId → type name.
 * @param {any} doc @returns {Record<string, string>} */
export function objects(doc) {
  return Object.fromEntries(Object.entries(doc?.objects ?? {}).map(([id, v]) => [id, asString(v?.type)]));
}

function checkProps(props) {
  const out = {};
  for (const [k, v] of Object.entries(props ?? {})) {
    if (typeof v === 'string') out[k] = scalar(v);
    else if (v === null || typeof v === 'boolean' || isImmutableString(v)) out[k] = v;
    else if (typeof v === 'number' && Number.isFinite(v)) out[k] = v;
    else throw new Error(`props.${k}: a prop is a string, a finite number, a boolean or null`);
  }
  return out;
}

function checkRefs(refs) {
  const out = {};
  for (const [k, v] of Object.entries(refs ?? {})) {
    const id = typeof v === 'string' ? v : v?.documentId;
    if (typeof id !== 'string') throw new Error(`refs.${k}: a ref is a documentId or a DocHandle`);
    out[k] = scalar(id);
  }
  return out;
}

/**
 * Creates an object document of the root's space and lists it in the root's `objects`.
 * @param {Repo} repo
 * @param {DocHandle} root a ready space root handle
 * @param {object} o
 * @param {string} o.type a type name, e.g. "task"
 * @param {Record<string, string|number|boolean|null>} [o.props]
 * @param {Record<string, string|DocHandle>} [o.refs] name → documentId (or handle) of another object
 * @param {string} [o.text] initial collaborative text (omitted: no `text` key)
 * @returns {DocHandle}
 */
export function createObject(repo, root, { type, props = {}, refs = {}, text } = /** @type {any} */ ({})) {
  if (typeof type !== 'string' || type === '') throw new Error('an object needs a type name');
  const space = asString(rootDoc(root).space);
  const init = { space: scalar(space), type: scalar(type), props: checkProps(props), refs: checkRefs(refs) };
  if (text !== undefined) {
    if (typeof text !== 'string') throw new Error('text is a string');
    init.text = text; // a plain JS string becomes Automerge text
  }
  const handle = repo.create(init);
  root.change((d) => {
    d.objects[handle.documentId] = { type: scalar(type) };
  });
  return handle;
}
