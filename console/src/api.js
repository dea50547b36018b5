// The admin API of the KUBE that served this page (same origin). Each request carries the
// admin token (`Authorization: Bearer …`) or an operator's signature, made exactly as the CLI
// makes it (halo/src/request.rs):
//
//   Authorization: Kube-Ed25519 key=<did>, ts=<unix secs>, nonce=<hex>, body=<sha256 hex>, sig=<b64url>
//   signed text:   kube-admin-v1\n<server did>\n<METHOD>\n<path and query>\n<ts>\n<nonce>\n<body sha256>
//
// `ts` is KUBE's clock (read from /identity) plus the time elapsed here since, so a browser
// whose clock is off still signs within KUBE's window. Nothing goes in cookies or URLs.

import { randomHex, sha256Hex, signText } from './keys.js';

/** What signs requests: `{kind: 'token', token}` or `{kind: 'key', key, did}`; null when out. */
let session = null;
/** KUBE's did and clock: `{did, time, at}` (`at`: performance.now() when `time` was read). */
let server = null;

export class ApiError extends Error {
  constructor(message, status = 0, code = '') {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function signIn(s) {
  session = s;
}

export function signOut() {
  session = null;
}

export function currentSession() {
  return session;
}

/** Reads KUBE's identity and clock from the public `/identity`. */
export async function fetchIdentity() {
  let r;
  try {
    r = await fetch('/identity', { cache: 'no-store', credentials: 'omit' });
  } catch (e) {
    throw new ApiError(`Cannot reach KUBE (${e.message}).`, 0, 'network');
  }
  if (!r.ok) throw await errorOf(r);
  const j = await r.json();
  server = { did: j.identity, time: Number(j.time), at: performance.now() };
  return server;
}

export function serverDid() {
  return server && server.did;
}

/** KUBE's clock now, in unix seconds (the browser's own when KUBE's is not known yet). */
export function serverNow() {
  if (!server || !Number.isFinite(server.time)) return Math.floor(Date.now() / 1000);
  return server.time + Math.floor((performance.now() - server.at) / 1000);
}

const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';

/** The `Authorization` value for a request; `wirePath` is the path and query as sent. */
async function authorization(method, wirePath, body) {
  if (!session) throw new ApiError('Signed out: sign in again.', 401, 'unauthorized');
  if (session.kind === 'token') return `Bearer ${session.token}`;
  if (!server) await fetchIdentity();
  const bodyHash = body && body.byteLength ? await sha256Hex(body) : EMPTY_SHA256;
  const ts = serverNow();
  const nonce = randomHex(16);
  const text = `kube-admin-v1\n${server.did}\n${method}\n${wirePath}\n${ts}\n${nonce}\n${bodyHash}`;
  const sig = await signText(session.key, text);
  return `Kube-Ed25519 key=${session.did}, ts=${ts}, nonce=${nonce}, body=${bodyHash}, sig=${sig}`;
}

/** The URL as the browser will send it, and its path and query as they go on the wire. */
function target(path) {
  const url = new URL(path, location.origin);
  return { url, wire: url.pathname + url.search };
}

/** The API's error as words: its JSON `message`, else the body's text, else the status. */
export async function errorOf(r) {
  let text = '';
  try {
    text = await r.text();
  } catch {
    // No body to read.
  }
  return errorFromText(r.status, r.statusText, text);
}

function errorFromText(status, statusText, text) {
  let message = '';
  let code = '';
  try {
    const j = JSON.parse(text);
    if (j && typeof j.message === 'string') message = j.message;
    if (j && typeof j.error === 'string') code = j.error;
  } catch {
    message = (text || '').trim().slice(0, 500);
  }
  if (!message) message = `KUBE answered ${status} ${statusText || ''}`.trim();
  return new ApiError(message, status, code);
}

/**
 * One API request. `json` is sent as a JSON body; `body` as bytes (with `contentType`).
 * Resolves the answer's JSON (or the Response itself with `raw`); rejects with an ApiError
 * whose message is the API's own. A signed request refused as signed for another KUBE or
 * before its start (KUBE restarted) is signed again once with KUBE's identity read anew.
 */
export async function api(method, path, { json, body, contentType, raw } = {}) {
  let bytes = null;
  if (json !== undefined) {
    bytes = new TextEncoder().encode(JSON.stringify(json));
    contentType = 'application/json';
  } else if (body) {
    bytes = body instanceof Uint8Array ? body : new Uint8Array(body);
  }
  const { url, wire } = target(path);
  for (let attempt = 0; ; attempt += 1) {
    const headers = { Authorization: await authorization(method, wire, bytes) };
    if (contentType) headers['Content-Type'] = contentType;
    let r;
    try {
      r = await fetch(url, { method, headers, body: bytes, cache: 'no-store', credentials: 'omit' });
    } catch (e) {
      throw new ApiError(`Cannot reach KUBE (${e.message}).`, 0, 'network');
    }
    if (r.status === 401 && attempt === 0 && session && session.kind === 'key') {
      const err = await errorOf(r);
      if (/another KUBE|before this server started|timestamp/.test(err.message)) {
        await fetchIdentity();
        continue;
      }
      throw err;
    }
    if (!r.ok) throw await errorOf(r);
    if (raw) return r;
    const text = await r.text();
    try {
      return text ? JSON.parse(text) : null;
    } catch {
      throw new ApiError(`KUBE answered something that is not JSON: ${text.slice(0, 200)}`, r.status, 'bad_answer');
    }
  }
}

/**
 * An upload with progress (XMLHttpRequest: fetch cannot report upload progress). `bytes` is
 * the whole body (its hash is signed); `onProgress(sent, total)`.
 */
export async function upload(method, path, bytes, contentType, onProgress) {
  const { url, wire } = target(path);
  const auth = await authorization(method, wire, bytes);
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, url.href);
    xhr.setRequestHeader('Authorization', auth);
    xhr.setRequestHeader('Content-Type', contentType);
    xhr.withCredentials = false;
    xhr.upload.onprogress = (e) => {
      if (onProgress) onProgress(e.loaded, e.lengthComputable ? e.total : bytes.byteLength);
    };
    xhr.upload.onload = () => {
      if (onProgress) onProgress(bytes.byteLength, bytes.byteLength);
    };
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        try {
          resolve(xhr.responseText ? JSON.parse(xhr.responseText) : null);
        } catch {
          reject(new ApiError(`KUBE answered something that is not JSON: ${xhr.responseText.slice(0, 200)}`, xhr.status, 'bad_answer'));
        }
      } else {
        reject(errorFromText(xhr.status, xhr.statusText, xhr.responseText));
      }
    };
    xhr.onerror = () => reject(new ApiError('The upload failed: KUBE could not be reached or closed the connection.', 0, 'network'));
    xhr.onabort = () => reject(new ApiError('The upload was cancelled.', 0, 'aborted'));
    xhr.send(bytes);
  });
}

/** The public `/metrics` text (Prometheus exposition format). */
export async function fetchMetrics() {
  let r;
  try {
    r = await fetch('/metrics', { cache: 'no-store', credentials: 'omit' });
  } catch (e) {
    throw new ApiError(`Cannot reach KUBE (${e.message}).`, 0, 'network');
  }
  if (!r.ok) throw await errorOf(r);
  return r.text();
}

/** A path segment, percent-encoded. */
export const seg = encodeURIComponent;
