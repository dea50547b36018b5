#!/usr/bin/env node
// Development server for the console: serves dist/ as the kube binary does (same paths, same
// Content-Security-Policy) and passes everything else (/api, /identity, /metrics) to a
// running KUBE's admin listener, so the page and the API share one origin. Loopback only.
//
//   node build.mjs && node dev.mjs --kube 127.0.0.1:9180 [--port 8088]
//
// Rebuild (node build.mjs) and reload the page to see a change; the kube binary itself only
// serves the dist/ it was compiled with.

import http from 'node:http';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const DIST = path.join(HERE, 'dist');
// Kept equal to kube/src/admin/console.rs.
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
  + "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'";
const ASSETS = {
  '/': ['index.html', 'text/html; charset=utf-8'],
  '/index.html': ['index.html', 'text/html; charset=utf-8'],
  '/console.js': ['console.js', 'text/javascript; charset=utf-8'],
  '/console.css': ['console.css', 'text/css; charset=utf-8'],
};

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i > 0 && process.argv[i + 1] ? process.argv[i + 1] : fallback;
}

const kube = arg('--kube', process.env.KUBE_ADMIN || '127.0.0.1:9180');
const port = Number(arg('--port', '8088'));
const [kubeHost, kubePort] = [kube.slice(0, kube.lastIndexOf(':')), Number(kube.slice(kube.lastIndexOf(':') + 1))];

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://localhost');
  const asset = req.method === 'GET' ? ASSETS[url.pathname] : undefined;
  if (asset) {
    try {
      const body = await readFile(path.join(DIST, asset[0]));
      res.writeHead(200, {
        'content-type': asset[1],
        'content-security-policy': CSP,
        'x-content-type-options': 'nosniff',
        'referrer-policy': 'no-referrer',
        'x-frame-options': 'DENY',
        'cache-control': 'no-cache',
      });
      res.end(body);
    } catch (e) {
      res.writeHead(500, { 'content-type': 'text/plain' });
      res.end(`cannot read dist/${asset[0]}: ${e.message} (run node build.mjs)\n`);
    }
    return;
  }
  // Everything else goes to KUBE as it came (path, query, headers and body untouched, so a
  // signature over the path and body still verifies).
  const headers = { ...req.headers, host: kube };
  const up = http.request({ host: kubeHost, port: kubePort, method: req.method, path: req.url, headers }, (r) => {
    res.writeHead(r.statusCode || 502, r.headers);
    r.pipe(res);
  });
  up.on('error', (e) => {
    if (!res.headersSent) res.writeHead(502, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: 'proxy', message: `dev server: KUBE at ${kube} did not answer (${e.message})` }));
  });
  req.pipe(up);
});

server.listen(port, '127.0.0.1', () => {
  const a = server.address();
  console.log(`console dev server on http://127.0.0.1:${a.port}/ → KUBE admin ${kube}`);
});
