// Who belongs to a space: a port of halo's `space::validate` (halo/src/space.rs), for showing
// members in an app. KUBE decides with the Rust original; this copy may be behind it.

import { verifyCredential, ROLES } from './credential.js';
import { credentials as credentialsOf, spaceOf } from './space.js';

/** @typedef {import('./credential.js').Credential} Credential */
/** @typedef {import('./credential.js').Role} Role */

/** How far other clocks may be off (halo's SKEW_SECS). */
export const SKEW_SECS = 300;

const rank = (/** @type {Role} */ r) => ROLES.indexOf(r);

/**
 * Validates the credentials of `space` as halo does: proofs, times, chains of admins from the
 * genesis, devices, revocations.
 * @param {string} space the space key (did:key)
 * @param {Credential[]} creds
 * @param {{now?: number, skew?: number}} [clock]
 * @returns {{roles: Map<string, Role>, grants: {subject:string, issuer:string, role:Role}[],
 *   devices: Map<string, string>, rejected: [string, string][], roleOf(key: string): Role|undefined}}
 */
export function validateSpace(space, creds, { now = Math.floor(Date.now() / 1000), skew = SKEW_SECS } = {}) {
  /** @type {[string, string][]} */
  const rejected = [];
  // 1. Proofs, time, and the space they speak of.
  const good = [];
  for (const c of creds) {
    const s = c?.assertion?.space;
    if (!verifyCredential(c)) rejected.push([c?.id, 'bad-proof']);
    else if (c.issued > now + skew) rejected.push([c.id, 'from-the-future']);
    else if (c.expires !== undefined && c.expires + skew < now) rejected.push([c.id, 'expired']);
    else if ((c.assertion.type === 'SpaceGenesis' || c.assertion.type === 'SpaceMember') && s !== space) rejected.push([c.id, 'other-space']);
    else good.push(c);
  }
  const byId = new Map(good.map((c) => [c.id, c]));

  // 2. Devices: authorized by the identity itself, signed by the identity.
  const devices = new Map();
  for (const c of good) {
    const a = c.assertion;
    if (a.type === 'AuthorizedDevice' && c.issuer === a.identity && c.subject === a.device && c.proof.signer === c.issuer) {
      devices.set(a.device, a.identity);
    }
  }
  const signerOk = (c) => c.proof.signer === c.issuer || devices.get(c.proof.signer) === c.issuer;

  // 3. Revocations: final; they count when the space key, the revoked credential's issuer,
  //    or (second round) an admin issued them.
  const revocations = [];
  for (const c of good) {
    if (c.assertion.type !== 'Revocation') continue;
    const target = c.assertion.credential;
    if (!signerOk(c)) rejected.push([c.id, 'wrong-signer']);
    else if (byId.get(target)?.assertion.type === 'Revocation') rejected.push([c.id, 'revokes-a-revocation']);
    else revocations.push([c, target]);
  }
  const revoked = new Set(revocations
    .filter(([r, t]) => r.issuer === space || byId.get(t)?.issuer === r.issuer)
    .map(([, t]) => t));
  const first = walk(space, good, revoked, signerOk);
  for (const [r, t] of revocations) if (first.get(r.issuer) === 'admin') revoked.add(t);
  const roles = walk(space, good, revoked, signerOk);

  // 4. What does not count; the member grants that do.
  const grants = [];
  for (const c of good) {
    if (c.assertion.type === 'SpaceMember' && !revoked.has(c.id) && signerOk(c) && roles.get(c.issuer) === 'admin') {
      grants.push({ subject: c.subject, issuer: c.issuer, role: c.assertion.role });
    }
  }
  const reported = new Set(rejected.map(([id]) => id));
  for (const c of good) {
    if (reported.has(c.id)) continue;
    let why;
    if (revoked.has(c.id)) why = 'revoked';
    else if (!signerOk(c)) why = 'wrong-signer';
    else if (c.assertion.type === 'SpaceGenesis' && c.issuer !== space) why = 'no-chain';
    else if (c.assertion.type === 'SpaceMember' && roles.get(c.issuer) !== 'admin') why = 'no-chain';
    if (why) {
      reported.add(c.id);
      rejected.push([c.id, why]);
    }
  }
  const liveDevices = new Map([...devices].filter(([, id]) => roles.has(id)));
  return {
    roles,
    grants,
    devices: liveDevices,
    rejected,
    roleOf: (key) => roles.get(key) ?? roles.get(liveDevices.get(key)),
  };
}

/** Breadth-first from the genesis over credentials issued by admins. */
function walk(space, good, revoked, signerOk) {
  const byIssuer = new Map();
  for (const c of good) {
    if (!revoked.has(c.id) && signerOk(c)) {
      if (!byIssuer.has(c.issuer)) byIssuer.set(c.issuer, []);
      byIssuer.get(c.issuer).push(c);
    }
  }
  /** @type {Map<string, Role>} */
  const roles = new Map();
  const queue = [];
  for (const c of byIssuer.get(space) ?? []) {
    if (c.assertion.type === 'SpaceGenesis' && !roles.has(c.subject)) {
      roles.set(c.subject, 'admin');
      queue.push(c.subject);
    }
  }
  while (queue.length) {
    const admin = queue.shift();
    for (const c of byIssuer.get(admin) ?? []) {
      if (c.assertion.type !== 'SpaceMember') continue;
      const role = c.assertion.role;
      const had = roles.get(c.subject);
      if (had === undefined || rank(had) < rank(role)) {
        roles.set(c.subject, role);
        if (role === 'admin' && had !== 'admin') queue.push(c.subject);
      }
    }
  }
  return roles;
}

/**
 * The members of a space root document and their roles, validated as KUBE does (a port of
 * halo's `space::validate`; KUBE's own decision is the authority).
 * @param {any} rootDoc `root.doc()`
 * @param {{now?: number, skew?: number}} [clock]
 * @returns {Record<string, Role>} did → role (devices not included; see `validateSpace`)
 */
export function members(rootDoc, clock) {
  const m = validateSpace(spaceOf(rootDoc), credentialsOf(rootDoc), clock);
  return Object.fromEntries(m.roles);
}
