// Who belongs to a space: halo's `space::validate` (halo/src/space.rs), rule for rule, for
// browsers that decide on their own which peers get a space's documents and whose changes
// they apply. The shared vectors (halo/tests/vectors/space.json, checked by halo's
// tests/vectors.rs and by test/vectors.test.mjs) keep the two exact: a change to the rules
// is made in both and the vectors regenerated. The rules: halo/CREDENTIALS.md, "Validity in a
// space", "Devices" and "Revocation".

import { verifyCredential, ROLES } from './credential.js';
import { credentials as credentialsOf, spaceOf } from './space.js';

/** @typedef {import('./credential.js').Credential} Credential */
/** @typedef {import('./credential.js').Role} Role */
/** halo's `Rejection`, in kebab case.
 * @typedef {'bad-proof'|'wrong-signer'|'expired'|'from-the-future'|'revoked'
 *   |'revokes-a-revocation'|'other-space'|'no-chain'|'outranked'} Rejection */
/** Whose turn it is to revoke (halo's `Authority`): the space key (anything), an admin at a
 * depth (anything but credentials about admins as close or closer), or anyone else (its own
 * credentials only).
 * @typedef {{by: 'space-key'} | {by: 'admin', depth: number} | {by: 'own-only'}} Authority */

/** How far other clocks may be off (halo's SKEW_SECS). */
export const SKEW_SECS = 300;

const rank = (/** @type {Role} */ r) => ROLES.indexOf(r);

/**
 * Validates the credentials of `space` as halo's `validate` does: proofs, times, chains of
 * admins from the genesis, devices, revocations judged in turns. The result depends on the
 * set of credentials, never on their order.
 * @param {string} space the space key (did:key)
 * @param {Credential[]} creds
 * @param {{now?: number, skew?: number}} [clock] Unix seconds
 * @returns {{roles: Map<string, Role>, grants: {subject:string, issuer:string, role:Role}[],
 *   devices: Map<string, string>, rejected: [string, Rejection][],
 *   roleOf(key: string): Role|undefined}}
 */
export function validateSpace(space, creds, { now = Math.floor(Date.now() / 1000), skew = SKEW_SECS } = {}) {
  // 1. Proofs, time, and the space they speak of: each credential checked once.
  /** @type {[string, Rejection][]} */
  let rejected = [];
  /** @type {Credential[]} */
  const good = [];
  for (const c of creds) {
    if (!verifyCredential(c)) rejected.push([c?.id, 'bad-proof']);
    // halo: `issued > now + skew`, `expires + skew < now`; rearranged so that no sum leaves
    // the safe integers (verifyCredential keeps times at most 2^53 − 1).
    else if (c.issued - skew > now) rejected.push([c.id, 'from-the-future']);
    else if (c.expires != null && c.expires < now - skew) rejected.push([c.id, 'expired']);
    else if (speaksOfASpace(c) && c.assertion.space !== space) rejected.push([c.id, 'other-space']);
    else good.push(c);
  }
  const byId = new Map(good.map((c) => [c.id, c]));
  // A copy whose proof fails under a good credential's id is noise: reported under that id,
  // it would make the good one look rejected.
  rejected = rejected.filter(([id]) => !byId.has(id));

  // 2. Who says what, by issuer.
  const judge = new Judge(space, byId);
  /** @type {Credential[]} */
  const geneses = [];
  /** @type {Map<string, Credential[]>} issuer → its SpaceMember grants */
  const grantsBy = new Map();
  /** @type {Map<string, Credential[]>} issuer → its revocations */
  const revocationsBy = new Map();
  for (const c of good) {
    switch (c.assertion.type) {
      case 'SpaceGenesis':
        geneses.push(c);
        break;
      case 'SpaceMember':
        push(grantsBy, c.issuer, c);
        break;
      case 'AuthorizedDevice': {
        const pair = binding(c);
        if (pair) judge.bound.set(pairKey(pair), pair);
        break;
      }
      case 'Revocation':
        push(revocationsBy, c.issuer, c);
        break;
    }
  }

  // 3. Turns, from the space key outwards: the space key's revocations, then each layer of
  //    admins (by depth, the genesis subjects 0) revokes before it grants, then everyone else
  //    (only their own credentials). A revocation is judged once, at its issuer's turn, when
  //    that issuer's own standing and devices are final.
  judge.revoke(take(revocationsBy, space), { by: 'space-key' });
  /** @type {string[]} */
  let layer = [];
  for (const c of geneses) {
    if (c.issuer === space && judge.counts(c) && !judge.depth.has(c.subject)) {
      judge.depth.set(c.subject, 0);
      layer.push(c.subject);
    }
  }
  for (let depth = 0; layer.length > 0; depth++) {
    for (const admin of layer) judge.revoke(take(revocationsBy, admin), { by: 'admin', depth });
    const next = [];
    for (const admin of layer) {
      for (const c of grantsBy.get(admin) ?? []) {
        if (c.assertion.role === 'admin' && judge.counts(c) && !judge.depth.has(c.subject)) {
          judge.depth.set(c.subject, depth + 1);
          next.push(c.subject);
        }
      }
    }
    layer = next;
  }
  for (const rs of revocationsBy.values()) judge.revoke(rs, { by: 'own-only' });

  // 4. Roles: admins by their chain, everyone else by the best grant an admin gave.
  /** @type {Map<string, Role>} */
  const roles = new Map([...judge.depth.keys()].map((k) => [k, 'admin']));
  const grants = [];
  for (const c of good) {
    if (c.assertion.type === 'SpaceMember' && judge.depth.has(c.issuer) && judge.counts(c)) {
      const role = c.assertion.role;
      grants.push({ subject: c.subject, issuer: c.issuer, role });
      const had = roles.get(c.subject);
      if (had === undefined || rank(had) < rank(role)) roles.set(c.subject, role);
    }
  }

  // 5. Report what does not count, once each.
  const seen = new Set();
  for (const c of good) {
    if (seen.has(c.id)) continue;
    seen.add(c.id);
    const why = judge.refused.get(c.id)
      ?? (judge.revoked.has(c.id) ? 'revoked' : undefined)
      ?? (judge.signerOk(c) ? undefined : 'wrong-signer')
      ?? standing(c, space, judge.depth);
    if (why) rejected.push([c.id, why]);
  }

  // 6. Devices: a key a single member lets sign for it. Claimed by several, it stays
  //    unlisted: each still signs for each, as a signature names its issuer, but whom it acts
  //    as is ambiguous, and no claim may displace another.
  /** @type {Map<string, string[]>} device → the members whose authorization of it stands */
  const claimants = new Map();
  for (const [key, [device, identity]] of judge.bound) {
    if (!judge.cut.has(key) && roles.has(identity)) push(claimants, device, identity);
  }
  /** @type {Map<string, string>} */
  const devices = new Map();
  for (const [device, ids] of claimants) if (ids.length === 1) devices.set(device, ids[0]);

  const sortedRoles = sorted(roles);
  const sortedDevices = sorted(devices);
  return {
    roles: sortedRoles,
    grants,
    devices: sortedDevices,
    rejected,
    // halo's `Membership::role_of`: its own role, or that of the member it is a device of.
    roleOf: (key) => {
      const own = sortedRoles.get(key);
      if (own !== undefined) return own;
      const identity = sortedDevices.get(key);
      return identity === undefined ? undefined : sortedRoles.get(identity);
    },
  };
}

/** Whether `c` names the space it is about (halo matches `SpaceGenesis` and `SpaceMember`). */
const speaksOfASpace = (/** @type {Credential} */ c) =>
  c.assertion.type === 'SpaceGenesis' || c.assertion.type === 'SpaceMember';

/** Why a credential that is unrevoked and rightly signed still does not count (the end of
 * halo's step 5), or undefined.
 * @param {Credential} c @param {string} space @param {Map<string, number>} depth
 * @returns {Rejection|undefined} */
function standing(c, space, depth) {
  switch (c.assertion.type) {
    case 'SpaceGenesis':
      return c.issuer !== space ? 'no-chain' : undefined;
    case 'SpaceMember':
      return depth.has(c.issuer) ? undefined : 'no-chain';
    case 'AuthorizedDevice':
      return c.proof.signer !== c.issuer ? 'wrong-signer' : undefined;
    default:
      return undefined;
  }
}

/** The (device, identity) an `AuthorizedDevice` binds: issued, signed and named by the
 * identity itself (halo's `binding`).
 * @param {Credential} c @returns {[string, string]|undefined} */
function binding(c) {
  const a = c.assertion;
  if (a.type === 'AuthorizedDevice' && c.issuer === a.identity && c.subject === a.device
    && c.proof.signer === c.issuer) {
    return [a.device, a.identity];
  }
  return undefined;
}

/** One string for a (device, identity) pair, unambiguous whatever the strings hold. */
const pairKey = (/** @type {[string, string]} */ pair) => JSON.stringify(pair);

/** What the turns have settled so far (halo's `Judge`). */
class Judge {
  /** @param {string} space @param {Map<string, Credential>} byId */
  constructor(space, byId) {
    this.space = space;
    this.byId = byId;
    /** (device, identity) pairs some authorization binds, by `pairKey`.
     * @type {Map<string, [string, string]>} */
    this.bound = new Map();
    /** `pairKey`s of the pairs a revocation cut. @type {Set<string>} */
    this.cut = new Set();
    /** ids of revoked credentials. @type {Set<string>} */
    this.revoked = new Set();
    /** Revocations that do not count, and why. @type {Map<string, Rejection>} */
    this.refused = new Map();
    /** Admins and how many admin grants separate them from the genesis.
     * @type {Map<string, number>} */
    this.depth = new Map();
  }

  /** Whether `c`'s signer may sign for its issuer: itself, or a device whose binding stands. */
  signerOk(/** @type {Credential} */ c) {
    if (c.proof.signer === c.issuer) return true;
    const key = pairKey([c.proof.signer, c.issuer]);
    return this.bound.has(key) && !this.cut.has(key);
  }

  counts(/** @type {Credential} */ c) {
    return !this.revoked.has(c.id) && this.signerOk(c);
  }

  /** Judges one issuer's revocations: those its key signed first, as they may cut its
   * devices, then those its devices signed.
   * @param {Credential[]} revocations @param {Authority} by */
  revoke(revocations, by) {
    for (const keys of [true, false]) {
      for (const r of revocations) {
        if ((r.proof.signer === r.issuer) !== keys) continue;
        const target = /** @type {{credential: string}} */ (r.assertion).credential;
        const why = this.judge(r, target, by);
        if (why) {
          this.refused.set(r.id, why);
        } else {
          this.revoked.add(target);
          const t = this.byId.get(target);
          const pair = t && binding(t);
          if (pair) this.cut.add(pairKey(pair));
        }
      }
    }
  }

  /** Why revocation `r` of `targetId` does not count, or undefined if it does.
   * @param {Credential} r @param {string} targetId @param {Authority} by
   * @returns {Rejection|undefined} */
  judge(r, targetId, by) {
    if (!this.signerOk(r)) return 'wrong-signer';
    const target = this.byId.get(targetId);
    if (target?.assertion.type === 'Revocation') return 'revokes-a-revocation';
    // Devices are made and unmade by keys: a stolen device cannot lock out the others.
    if (target?.assertion.type === 'AuthorizedDevice' && r.proof.signer !== r.issuer) return 'wrong-signer';
    if (by.by === 'space-key') return undefined;
    if (target !== undefined && target.issuer === r.issuer) return undefined; // its own
    if (by.by === 'admin') return target !== undefined && this.outranks(target, by.depth) ? 'outranked' : undefined;
    return 'no-chain';
  }

  /** Whether `c` is about the space key or an admin at most `depth` from the genesis: its
   * grant's subject, or its device authorization's identity.
   * @param {Credential} c @param {number} depth */
  outranks(c, depth) {
    const about = c.assertion.type === 'AuthorizedDevice' ? c.issuer : c.subject;
    const d = this.depth.get(about);
    return about === this.space || (d !== undefined && d <= depth);
  }
}

/** @template V @param {Map<string, V[]>} map @param {string} key @param {V} value */
function push(map, key, value) {
  const list = map.get(key);
  if (list) list.push(value);
  else map.set(key, [value]);
}

/** Removes and returns `map`'s list under `key` (empty if none).
 * @template V @param {Map<string, V[]>} map @param {string} key @returns {V[]} */
function take(map, key) {
  const list = map.get(key) ?? [];
  map.delete(key);
  return list;
}

/** A copy of `map` in key order, as halo's BTreeMap lists it (for ASCII keys such as dids).
 * @template V @param {Map<string, V>} map @returns {Map<string, V>} */
const sorted = (map) => new Map([...map].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));

/**
 * The members of a space root document and their roles, validated as KUBE does.
 * @param {any} rootDoc `root.doc()`
 * @param {{now?: number, skew?: number}} [clock]
 * @returns {Record<string, Role>} did → role (devices not included; see `validateSpace`)
 */
export function members(rootDoc, clock) {
  const m = validateSpace(spaceOf(rootDoc), credentialsOf(rootDoc), clock);
  return Object.fromEntries(m.roles);
}
