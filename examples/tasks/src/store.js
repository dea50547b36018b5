// What this browser remembers besides the documents (those are in automerge-repo's IndexedDB
// storage): the identity's seed in IndexedDB, and in localStorage the spaces joined, the
// space on screen and the KUBE's did (so the app starts while KUBE is unreachable).

import { Identity } from '@kube/client';

const DB = 'kube-tasks-keys';
const STORE = 'keys';
const KEYS = {
  spaces: 'kube-tasks:spaces',
  current: 'kube-tasks:current',
  kube: 'kube-tasks:kube',
};

function openKeys() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
    req.onblocked = () => reject(new Error('IndexedDB is blocked by another tab'));
  });
}

function request(db, mode, f) {
  return new Promise((resolve, reject) => {
    const tx = db.transaction(STORE, mode);
    const req = f(tx.objectStore(STORE));
    tx.oncomplete = () => resolve(req.result);
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error ?? new Error('IndexedDB transaction aborted'));
  });
}

/** This browser's identity: made on the first visit, its 32-byte seed kept in IndexedDB. Two
 * tabs opening at once both try to add a seed; `add` lets only the first win, and both read it.
 * @returns {Promise<Identity>} */
export async function loadIdentity() {
  const db = await openKeys();
  try {
    let seed = await request(db, 'readonly', (s) => s.get('identity'));
    if (!(seed instanceof Uint8Array) || seed.length !== 32) {
      try {
        await request(db, 'readwrite', (s) => s.add(Identity.generate().exportSeed(), 'identity'));
      } catch {
        // another tab added one first
      }
      seed = await request(db, 'readonly', (s) => s.get('identity'));
    }
    return Identity.fromSeed(seed);
  } finally {
    db.close();
  }
}

function readJson(key, fallback) {
  try {
    const v = JSON.parse(localStorage.getItem(key) ?? 'null');
    return v ?? fallback;
  } catch {
    return fallback;
  }
}

/**
 * @typedef {object} SpaceRecord
 * @property {string} space the space's did:key
 * @property {string} root the root document's id
 * @property {string[]} bootstrap who may bring the root before it validates (the inviter)
 * @property {string} [name] the list's name as the invitation gave it (the doc says it too)
 */

/** @returns {SpaceRecord[]} */
export function loadSpaces() {
  const list = readJson(KEYS.spaces, []);
  return Array.isArray(list)
    ? list.filter((s) => typeof s?.space === 'string' && typeof s?.root === 'string')
      .map((s) => ({ ...s, bootstrap: Array.isArray(s.bootstrap) ? s.bootstrap : [] }))
    : [];
}

/** @param {SpaceRecord[]} list */
export function saveSpaces(list) {
  localStorage.setItem(KEYS.spaces, JSON.stringify(list));
}

export const loadCurrent = () => localStorage.getItem(KEYS.current) ?? undefined;
export const saveCurrent = (space) => localStorage.setItem(KEYS.current, space);

/** KUBE as last seen: `{did, clockOffset}`, or undefined. */
export function loadKube() {
  const k = readJson(KEYS.kube, undefined);
  return typeof k?.did === 'string' ? { did: k.did, clockOffset: Number.isSafeInteger(k.clockOffset) ? k.clockOffset : 0 } : undefined;
}

export function saveKube({ did, clockOffset }) {
  localStorage.setItem(KEYS.kube, JSON.stringify({ did, clockOffset }));
}
