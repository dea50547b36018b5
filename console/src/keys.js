// Operator keys in the browser: a PKCS#8 PEM Ed25519 key (as `kube identity new` writes it)
// becomes a non-extractable WebCrypto key, named by its did:key. The only copy kept is that
// CryptoKey (in IndexedDB when asked): its private half cannot be read back out of it.

const B58 = '123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz';

/** base58btc (Bitcoin alphabet), as did:key's multibase `z` uses. */
export function base58(bytes) {
  let zeros = 0;
  while (zeros < bytes.length && bytes[zeros] === 0) zeros += 1;
  const digits = []; // base 58, least significant first
  for (let i = zeros; i < bytes.length; i += 1) {
    let carry = bytes[i];
    for (let j = 0; j < digits.length; j += 1) {
      carry += digits[j] << 8;
      digits[j] = carry % 58;
      carry = (carry / 58) | 0;
    }
    while (carry > 0) {
      digits.push(carry % 58);
      carry = (carry / 58) | 0;
    }
  }
  let out = '1'.repeat(zeros);
  for (let i = digits.length - 1; i >= 0; i -= 1) out += B58[digits[i]];
  return out;
}

/** `did:key:z…` of a 32-byte Ed25519 public key (multicodec ed25519-pub, 0xed 0x01). */
export function didOf(publicKey) {
  const prefixed = new Uint8Array(2 + publicKey.length);
  prefixed.set([0xed, 0x01]);
  prefixed.set(publicKey, 2);
  return `did:key:z${base58(prefixed)}`;
}

export function base64urlEncode(bytes) {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

export function base64urlDecode(text) {
  const b64 = text.replace(/-/g, '+').replace(/_/g, '/');
  const bin = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

export function hex(bytes) {
  let s = '';
  for (const b of bytes) s += b.toString(16).padStart(2, '0');
  return s;
}

/** Lowercase hex SHA-256 of `bytes` (a BufferSource). */
export async function sha256Hex(bytes) {
  return hex(new Uint8Array(await crypto.subtle.digest('SHA-256', bytes)));
}

/** The DER inside a `-----BEGIN PRIVATE KEY-----` PEM, or an Error saying what is wrong. */
export function pemToDer(text) {
  const m = /-----BEGIN PRIVATE KEY-----([\s\S]*?)-----END PRIVATE KEY-----/.exec(text);
  if (!m) {
    if (/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(text)) {
      throw new Error('this key file is not PKCS#8 ("BEGIN PRIVATE KEY"); make one with: kube identity new FILE');
    }
    throw new Error('not a PEM private key file ("-----BEGIN PRIVATE KEY-----"); make one with: kube identity new FILE');
  }
  const b64 = m[1].replace(/\s+/g, '');
  try {
    const bin = atob(b64);
    return Uint8Array.from(bin, (c) => c.charCodeAt(0));
  } catch {
    throw new Error('the key file\'s base64 does not decode');
  }
}

/**
 * Imports a PEM operator key: `{key, did}` with `key` a non-extractable Ed25519 signing key.
 * The public key comes from an extractable import's JWK `x`; that import is dropped at once.
 */
export async function importOperatorKey(pemText) {
  const der = pemToDer(pemText);
  const alg = { name: 'Ed25519' };
  let did;
  try {
    const extractable = await crypto.subtle.importKey('pkcs8', der, alg, true, ['sign']);
    const jwk = await crypto.subtle.exportKey('jwk', extractable);
    did = didOf(base64urlDecode(jwk.x));
    jwk.d = '';
  } catch (e) {
    der.fill(0);
    if (e && e.name === 'NotSupportedError') {
      throw new Error('this browser cannot sign with Ed25519 keys (WebCrypto); use the admin token, or a current browser');
    }
    throw new Error('the key file does not hold an Ed25519 private key (PKCS#8)');
  }
  const key = await crypto.subtle.importKey('pkcs8', der, alg, false, ['sign']);
  der.fill(0);
  return { key, did };
}

export async function signText(key, text) {
  const sig = await crypto.subtle.sign({ name: 'Ed25519' }, key, new TextEncoder().encode(text));
  return base64urlEncode(new Uint8Array(sig));
}

export function randomHex(n) {
  return hex(crypto.getRandomValues(new Uint8Array(n)));
}

// IndexedDB: one record, the non-extractable CryptoKey and its did.
const DB = 'kube-console';
const STORE = 'operator';
const RECORD = 'key';

function openDb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function withStore(mode, fn) {
  const db = await openDb();
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction(STORE, mode);
      const req = fn(tx.objectStore(STORE));
      tx.oncomplete = () => resolve(req && req.result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  } finally {
    db.close();
  }
}

export async function saveKey(key, did) {
  await withStore('readwrite', (s) => s.put({ key, did }, RECORD));
}

/** The stored `{key, did}`, or null. */
export async function loadKey() {
  try {
    const rec = await withStore('readonly', (s) => s.get(RECORD));
    return rec && rec.key && rec.did ? rec : null;
  } catch {
    return null;
  }
}

export async function forgetKey() {
  try {
    await withStore('readwrite', (s) => s.clear());
  } catch {
    // Nothing stored, or storage unavailable: nothing to forget.
  }
  await new Promise((resolve) => {
    const req = indexedDB.deleteDatabase(DB);
    req.onsuccess = req.onerror = req.onblocked = () => resolve();
  });
}
