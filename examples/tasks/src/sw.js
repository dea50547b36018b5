// The service worker: the app opens while KUBE is down. Installing caches index.html and every
// hashed asset of this build (build.mjs injects the list); hashed assets are then served from
// the cache first (their names change with their bytes), page loads from the network first
// with the cached index.html when KUBE does not answer. KUBE's own endpoints
// (/.well-known/kube/*) are never cached: they are live (identity and clock, sockets).

/* global __PRECACHE__, __VERSION__ */
const PRECACHE = __PRECACHE__;
const CACHE = `kube-tasks-${__VERSION__}`;
const INDEX = '/';
const HASHED = /\.[0-9a-f]{16,64}\.[a-z0-9]+$/;
const NAVIGATION_TIMEOUT_MS = 4000;

self.addEventListener('install', (event) => {
  event.waitUntil(
    caches.open(CACHE)
      .then((cache) => cache.addAll(PRECACHE.map((url) => new Request(url, { cache: 'reload' }))))
      .then(() => self.skipWaiting()),
  );
});

self.addEventListener('activate', (event) => {
  event.waitUntil(
    caches.keys()
      .then((keys) => Promise.all(keys
        .filter((k) => k.startsWith('kube-tasks-') && k !== CACHE)
        .map((k) => caches.delete(k))))
      .then(() => self.clients.claim()),
  );
});

self.addEventListener('fetch', (event) => {
  const req = event.request;
  if (req.method !== 'GET') return;
  const url = new URL(req.url);
  if (url.origin !== self.location.origin) return;
  if (url.pathname.startsWith('/.well-known/kube/')) return; // live, never cached
  if (req.mode === 'navigate') {
    event.respondWith(navigate(req));
  } else if (HASHED.test(url.pathname)) {
    event.respondWith(cacheFirst(req));
  }
});

/** The network's index.html (kept for next time), or the cached one when KUBE is away. */
async function navigate(req) {
  const cache = await caches.open(CACHE);
  try {
    const res = await fetch(req, { signal: AbortSignal.timeout(NAVIGATION_TIMEOUT_MS) });
    if (res.ok && (res.headers.get('content-type') ?? '').startsWith('text/html')) {
      await cache.put(INDEX, res.clone());
    }
    return res;
  } catch (e) {
    const cached = await cache.match(INDEX);
    if (cached) return cached;
    throw e;
  }
}

async function cacheFirst(req) {
  const cache = await caches.open(CACHE);
  const hit = await cache.match(req);
  if (hit) return hit;
  const res = await fetch(req);
  if (res.ok) await cache.put(req, res.clone());
  return res;
}
