// Who may get and write which space document, decided in the browser (echo/PROTOCOL.md §3)
// for peer-to-peer replication, where KUBE is not on the path to enforce it. Plain state: no
// I/O, no network; a transport (client/src/webrtc.js) asks it before sending or applying.
//
// The rules are ECHO's (echo/src/repo.rs):
// - A space's documents (its root and the objects its root lists) go only to members, any
//   role, validated from the root's own credentials (`validateSpace`).
// - Changes are applied only from a role >= `replicator`; a reader still receives.
// - A documentId belongs to the first space that lists it, and stays with it while that space
//   is registered (a later lister never takes it over); a space root is nobody's object.
// - Membership is judged again when a root changes and when a credential's time comes.
// Before a space's root validates here (a newly admitted guest), its `bootstrap` dids (the
// invitation host) may send and ask for the root, and nothing else.
//
// An object whose own `space` field names another space is not that space's: `spaceOfDoc`
// reads the root listing only, so a transport must call `checkObject` on a received object
// and refuse it when it answers false (ECHO's "unlisted" refusal).
//
// Not enforced here: that a root change keeps every credential entry byte for byte (ECHO's
// `root_change`); that needs the change applied to a copy, which only the transport can do.

import { isValidDocumentId } from '@automerge/automerge-repo';
import * as A from '@automerge/automerge/slim';
import { ROLES, verifyCredential } from './credential.js';
import { SKEW_SECS, validateSpace } from './members.js';
import canonicalize from 'canonicalize';
import { asString, credentials, objects, plainValue, spaceOf } from './space.js';

/** @typedef {import('./credential.js').Role} Role */
/** @typedef {import('./credential.js').Credential} Credential */
/** @typedef {import('@automerge/automerge-repo').DocHandle<any>} DocHandle */

const rank = (/** @type {Role|undefined} */ r) => (r === undefined ? -1 : ROLES.indexOf(r));
const WRITER = rank('replicator');
// setTimeout's longest delay; a later review is reached in steps.
const MAX_DELAY_MS = 2 ** 31 - 1;

/**
 * The next time after `now` at which one of `creds` starts or stops counting (ECHO's
 * `next_review`): an expiry is past once `expires + skew < now`, an issue date counts once
 * `issued <= now + skew`.
 * @param {Credential[]} creds @param {number} now @param {number} skew
 * @returns {number|undefined} Unix seconds
 */
function nextReview(creds, now, skew) {
  let next;
  for (const c of creds) {
    const times = [];
    if (Number.isSafeInteger(c?.expires)) times.push(c.expires + skew + 1);
    if (Number.isSafeInteger(c?.issued)) times.push(c.issued - skew);
    for (const t of times) if (t > now && (next === undefined || t < next)) next = t;
  }
  return next;
}

/**
 * @typedef {object} Entry
 * @property {string} space
 * @property {DocHandle} root
 * @property {string} rootId
 * @property {Set<string>} bootstrap emptied for good once the root validates
 * @property {any} lastDoc the doc from the last 'change' event (before the handle is ready)
 * @property {ReturnType<typeof validateSpace>|undefined} membership undefined: no valid root
 * @property {string[]} listed documentIds the valid root lists, in its order
 * @property {number|undefined} review when the membership must be judged again
 * @property {(e: {doc: any}) => void} onChange
 * @property {AbortController} abort
 */

export class SpaceAccess {
  #now;
  #skew;
  /** @type {Map<string, Entry>} registration order */
  #spaces = new Map();
  /** documentId of each registered root → its space */
  #roots = new Map();
  /** object documentId → the space that claimed it first */
  #claims = new Map();
  /** @type {Map<string, Set<Function>>} */
  #listeners = new Map();
  #timer;
  #signature = '';
  /** documentId → the current Automerge doc, if we hold it (for `checkChanges` on objects). */
  #docOf;

  /**
   * @param {{now?: () => number, skew?: number, docOf?: (documentId: string) => any}} [o]
   *   `now` in Unix seconds; `skew` how far other clocks may be off (halo's SKEW_SECS);
   *   `docOf` the current doc of an object we hold (e.g. from the Repo's handles), so
   *   `checkChanges` judges an object's changes on a copy of it
   */
  constructor({ now = () => Math.floor(Date.now() / 1000), skew = SKEW_SECS, docOf = () => undefined } = {}) {
    if (typeof now !== 'function') throw new Error('now is a function returning Unix seconds');
    this.#now = now;
    this.#skew = skew;
    this.#docOf = docOf;
  }

  /**
   * Registers a space by its root document's handle (ready or not, possibly empty).
   * @param {{space: string, root: DocHandle, bootstrap?: Iterable<string>}} o
   */
  addSpace({ space, root, bootstrap = [] } = /** @type {any} */ ({})) {
    if (typeof space !== 'string' || !space.startsWith('did:key:')) throw new Error('space is a did:key');
    if (!root || typeof root.documentId !== 'string' || typeof root.on !== 'function') {
      throw new Error('root is the DocHandle of the space root');
    }
    if (this.#spaces.has(space)) throw new Error(`space ${space} is already registered`);
    const other = this.#roots.get(root.documentId);
    if (other !== undefined) throw new Error(`document ${root.documentId} is already the root of ${other}`);
    // A root id comes from an invitation link, i.e. from the host: it must not be a document
    // we already know as something else (an object of another space, which the host could
    // otherwise make writable for itself under the bootstrap rule).
    let held;
    try {
      held = root.isReady() ? root.doc() : undefined;
    } catch {
      held = undefined;
    }
    const isRootOfSpace = asString(held?.kube) === 'space' && spaceOf(held) === space;
    const claimed = this.#claims.get(root.documentId);
    if (claimed !== undefined && !isRootOfSpace) throw new Error(`document ${root.documentId} is an object of space ${claimed}, not a root`);
    if (held && Object.keys(held).length > 0 && !isRootOfSpace) {
      throw new Error(`document ${root.documentId} is not the root of space ${space}`);
    }
    /** @type {Entry} */
    const entry = {
      space,
      root,
      rootId: root.documentId,
      bootstrap: new Set([...bootstrap].filter((d) => typeof d === 'string')),
      lastDoc: undefined,
      membership: undefined,
      listed: [],
      review: undefined,
      onChange: (e) => {
        entry.lastDoc = e?.doc;
        this.#refresh(entry);
        this.#settle();
      },
      abort: new AbortController(),
    };
    this.#spaces.set(space, entry);
    this.#roots.set(entry.rootId, space);
    root.on('change', entry.onChange);
    if (!root.isReady()) {
      root.whenReady(['ready'], { signal: entry.abort.signal }).then(
        () => {
          if (this.#spaces.get(space) !== entry) return;
          this.#refresh(entry);
          this.#settle();
        },
        () => {}, // aborted or timed out: a later 'change' event still brings the doc
      );
    }
    this.#refresh(entry);
    this.#settle();
  }

  /** Forgets a space: its documents go to nobody, its objects may be claimed by another. */
  removeSpace(space) {
    const entry = this.#spaces.get(space);
    if (!entry) return;
    this.#detach(entry);
    this.#spaces.delete(space);
    this.#roots.delete(entry.rootId);
    for (const [id, s] of this.#claims) if (s === space) this.#claims.delete(id);
    this.#settle();
  }

  /** @returns {string[]} the registered space dids, in registration order */
  spaces() {
    return [...this.#spaces.keys()];
  }

  /**
   * The space a document belongs to: a registered root's own id → its space; an id a valid
   * registered root lists in `objects` → the first space that listed it.
   * @param {string} documentId @returns {string|undefined}
   */
  spaceOfDoc(documentId) {
    return this.#roots.get(documentId) ?? this.#claims.get(documentId);
  }

  /** @param {string} did @param {string} space @returns {Role|undefined} (devices resolved) */
  roleOf(did, space) {
    return this.#spaces.get(space)?.membership?.roleOf(did);
  }

  /**
   * May we send this document's data (sync, request, ephemeral) to `did`?
   * @param {string} did @param {string} documentId @returns {boolean}
   */
  mayShare(did, documentId) {
    return this.#decide(did, documentId) !== undefined;
  }

  /**
   * May we apply a message from `did` for this document? Without changes (heads, needs) any
   * member may; changes only from a role >= replicator, or a bootstrap did bringing the root.
   * @param {string} did @param {string} documentId
   * @param {{changes?: boolean}} [o] whether the sync message carries changes (default true)
   * @returns {boolean}
   */
  mayReceive(did, documentId, { changes = true } = {}) {
    const d = this.#decide(did, documentId);
    if (d === undefined) return false;
    return !changes || d === 'bootstrap' || rank(d) >= WRITER;
  }

  /** Whether `did` may talk to us at all: a member of a registered space, or a bootstrap did
   * of a space without a valid root yet. @param {string} did @returns {boolean} */
  isPeerAllowed(did) {
    for (const e of this.#spaces.values()) {
      if (e.membership?.roleOf(did) !== undefined) return true;
      if (!e.membership && e.bootstrap.has(did)) return true;
    }
    return false;
  }

  /** @param {string} space @returns {Map<string, Role>} did → role of the writers (>= replicator) */
  writers(space) {
    return new Map([...this.members(space)].filter(([, r]) => rank(r) >= WRITER));
  }

  /** @param {string} space @returns {Map<string, Role>} did → role (identities; devices not listed) */
  members(space) {
    return new Map(this.#spaces.get(space)?.membership?.roles ?? []);
  }

  /**
   * Whether a received document may be taken as part of the space `documentId` belongs to:
   * false when no registered space claims it, or when its own `space` field names another.
   * @param {string} documentId @param {any} doc @returns {boolean}
   */
  checkObject(documentId, doc) {
    const space = this.spaceOfDoc(documentId);
    if (space === undefined) return false;
    const named = spaceOf(doc);
    return named === undefined || named === space;
  }

  /**
   * Whether changes `did` sent for `documentId` may be applied, judged on a copy as ECHO
   * does (echo/src/repo.rs, `space::root_change`): a root must stay this space's root and
   * keep every credential entry byte for byte (a credential can be added, never changed or
   * removed, so no editor hides a revocation or bricks the space), and every added entry
   * must be a credential under its own id whose proof verifies; an object must not come to
   * name another space. Call it after `mayReceive` said yes. Changes whose dependencies are
   * missing are judged on what they change once applied to the copy.
   * @param {string} did @param {string} documentId @param {Uint8Array[]} changes
   * @returns {{ok: true, held?: number[]} | {ok: false, reason: string}} `held`: the indexes
   *   of changes that wait for a dependency we lack; the caller strips them
   */
  checkChanges(did, documentId, changes) {
    const space = this.spaceOfDoc(documentId);
    const e = space === undefined ? undefined : this.#spaces.get(space);
    if (!e) return { ok: false, reason: 'unlisted' };
    if (!changes.length) return { ok: true };
    const isRoot = documentId === e.rootId;
    const old = isRoot ? this.#doc(e) : undefined;
    let next;
    try {
      let base = old;
      if (!isRoot) {
        try {
          base = this.#docOf(documentId);
        } catch {
          base = undefined;
        }
      }
      const copy = base && isAutomerge(base) ? A.clone(base) : A.init();
      // A sync message's "changes" are change chunks or, to a peer that has nothing yet,
      // a whole saved document: loadIncremental takes both (applyChanges only the first).
      next = copy;
      for (const c of changes) next = A.loadIncremental(next, c);
    } catch {
      return { ok: false, reason: 'invalid' };
    }
    // Changes whose dependencies we lack are held back by Automerge, invisible on the copy
    // and released later by whatever brings the dependency — possibly a message nobody
    // checks (from KUBE). So they must not reach the Repo: `held` lists them (indexes into
    // `changes`) for the caller to strip; the sender, seeing our heads, sends them again
    // with their dependencies, and then they are judged with them.
    /** @type {number[]} */
    const held = [];
    if (A.getMissingDeps(next, A.getHeads(next)).length > 0) {
      changes.forEach((c, i) => {
        let hash;
        try {
          hash = A.decodeChange(c).hash;
        } catch {
          return; // a whole document chunk: never waits for anything
        }
        if (!A.hasHeads(next, [hash])) held.push(i);
      });
    }
    if (!isRoot) {
      const named = spaceOf(next);
      return named === undefined || named === space ? { ok: true, held } : { ok: false, reason: 'other-space' };
    }
    if (asString(next?.kube) !== 'space' || spaceOf(next) !== e.space) return { ok: false, reason: 'not-a-root' };
    // The first root, from a bootstrap did: it only has to be this space's root (what it
    // says of members is judged by validateSpace once it is here).
    if (!e.membership) return { ok: true, held };
    const before = rawCredentials(old);
    const after = rawCredentials(next);
    for (const [id, entry] of before) {
      if (!after.has(id)) return { ok: false, reason: 'credential-removed' };
      if (after.get(id)?.same !== entry.same) return { ok: false, reason: 'credential-changed' };
    }
    for (const [id, entry] of after) {
      if (before.has(id)) continue;
      let c;
      try {
        c = entry.parse();
      } catch {
        return { ok: false, reason: 'bad-credential' };
      }
      if (c?.id !== id || !verifyCredential(c)) return { ok: false, reason: 'bad-credential' };
    }
    return { ok: true, held };
  }

  /** @param {'change'} event @param {() => void} fn */
  on(event, fn) {
    if (!this.#listeners.has(event)) this.#listeners.set(event, new Set());
    this.#listeners.get(event).add(fn);
    return this;
  }

  /** @param {'change'} event @param {() => void} fn */
  off(event, fn) {
    this.#listeners.get(event)?.delete(fn);
    return this;
  }

  /** Stops listening to every root and clears the timer; everything is refused afterwards. */
  close() {
    for (const e of this.#spaces.values()) this.#detach(e);
    this.#spaces.clear();
    this.#roots.clear();
    this.#claims.clear();
    this.#listeners.clear();
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#signature = '';
  }

  // ---- inside ----

  /** The role `did` has for `documentId`, 'bootstrap', or undefined (nothing). */
  #decide(did, documentId) {
    const space = this.spaceOfDoc(documentId);
    const e = space === undefined ? undefined : this.#spaces.get(space);
    if (!e) return undefined;
    const role = e.membership?.roleOf(did);
    if (role !== undefined) return role;
    if (!e.membership && documentId === e.rootId && e.bootstrap.has(did)) return 'bootstrap';
    return undefined;
  }

  #detach(/** @type {Entry} */ e) {
    e.root.off('change', e.onChange);
    e.abort.abort();
  }

  /** The root document as last seen, or undefined. */
  #doc(/** @type {Entry} */ e) {
    if (e.root.isReady()) {
      try {
        return e.root.doc();
      } catch {
        return e.lastDoc;
      }
    }
    return e.lastDoc;
  }

  /** Judges one space again from its root document. */
  #refresh(/** @type {Entry} */ e) {
    const doc = this.#doc(e);
    const now = this.#now();
    e.membership = undefined;
    e.listed = [];
    e.review = undefined;
    if (asString(doc?.kube) !== 'space' || spaceOf(doc) !== e.space) return;
    const creds = credentials(doc);
    e.review = nextReview(creds, now, this.#skew);
    let m;
    try {
      m = validateSpace(e.space, creds, { now, skew: this.#skew });
    } catch {
      return; // a root we cannot judge shares nothing (and this runs inside a handle's event)
    }
    if (m.roles.size === 0) return; // no genesis that holds (yet)
    e.membership = m;
    e.bootstrap.clear(); // the root speaks for itself from now on
    e.listed = Object.keys(objects(doc)).filter((id) => isValidDocumentId(id));
  }

  /** After any refresh: object claims, the review timer, and 'change' if anything moved. */
  #settle() {
    // A registered root is nobody's object, even if it was claimed before it was registered.
    for (const id of this.#claims.keys()) if (this.#roots.has(id)) this.#claims.delete(id);
    for (const e of this.#spaces.values()) {
      for (const id of e.listed) {
        if (!this.#roots.has(id) && !this.#claims.has(id)) this.#claims.set(id, e.space);
      }
    }
    this.#schedule();
    const sig = this.#sign();
    if (sig !== this.#signature) {
      this.#signature = sig;
      this.#emit('change');
    }
  }

  /** Everything a decision depends on, as one string. */
  #sign() {
    const spaces = [...this.#spaces.values()].map((e) => [
      e.space,
      e.rootId,
      [...e.bootstrap].sort(),
      e.membership ? [...e.membership.roles].sort() : null,
      e.membership ? [...e.membership.devices].sort() : null,
    ]);
    return JSON.stringify([spaces, [...this.#claims].sort()]);
  }

  #schedule() {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    let at;
    for (const e of this.#spaces.values()) {
      if (e.review !== undefined && (at === undefined || e.review < at)) at = e.review;
    }
    if (at === undefined) return;
    const delay = Math.min(MAX_DELAY_MS, Math.max(0, (at - this.#now()) * 1000));
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      for (const e of this.#spaces.values()) this.#refresh(e);
      this.#settle();
    }, delay);
    // Node: a pending review must not keep the process alive.
    /** @type {any} */ (this.#timer)?.unref?.();
  }

  #emit(event) {
    for (const fn of [...(this.#listeners.get(event) ?? [])]) {
      try {
        fn();
      } catch (err) {
        // One bad listener must not stop the others nor leave this state half updated.
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }
}

/** Whether `doc` is an Automerge document (not a plain object from an event). */
function isAutomerge(doc) {
  try {
    A.getHeads(doc);
    return true;
  } catch {
    return false;
  }
}

/** A root's credential entries: id → `same` (what must not change: a string entry's exact
 * text; a map entry's canonical JSON, which is what ECHO's equality of JSON values amounts
 * to — KUBE reads map entries too) and `parse()` (the credential as JSON data). */
function rawCredentials(doc) {
  /** @type {Map<string, {same: string, parse: () => any}>} */
  const out = new Map();
  const map = doc?.credentials;
  if (!map || typeof map !== 'object') return out;
  for (const [id, v] of Object.entries(map)) {
    if (typeof v === 'string' || (v && typeof v.val === 'string')) {
      const text = /** @type {string} */ (asString(v));
      out.set(id, { same: `string:${text}`, parse: () => JSON.parse(text) });
    } else {
      const data = plainValue(v);
      out.set(id, { same: `value:${canonicalize(data) ?? 'undefined'}`, parse: () => data });
    }
  }
  return out;
}
