// Shared pieces of the browser tests: running kube on loopback with every port 0, and
// headless Chromium (Debian's) trusting only the CAs put in a fresh NSS database.

import { spawn, execFile } from 'node:child_process';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const KUBE_BIN = process.env.KUBE_BIN || path.join(REPO, 'target', 'debug', 'kube');
export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const READY_TIMEOUT_MS = Number(process.env.KUBE_READY_TIMEOUT_MS || 20_000);
const CMD_TIMEOUT_MS = 30_000;

// Loopback only, no outside network: keep Chromium quiet and offline.
export const CHROMIUM_ARGS = [
  '--no-sandbox', // we run as root in a container
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--no-proxy-server',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-dev-shm-usage',
];

/** Run a command with a timeout; resolve {stdout, stderr}, reject with both on failure. */
export function run(file, args, opts = {}) {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: CMD_TIMEOUT_MS, maxBuffer: 16 << 20, ...opts }, (err, stdout, stderr) => {
      if (err) {
        err.message += `\n--- stdout ---\n${stdout}\n--- stderr ---\n${stderr}`;
        reject(err);
      } else {
        resolve({ stdout, stderr });
      }
    });
  });
}

/** Spawn `kube start` on port 0 everywhere (or the addresses in `envOverrides`, e.g. to
 * restart on the same ports); `kube.ready` resolves the `kube ready` line's addresses. */
export function startKube(dataDir, args = [], envOverrides = {}) {
  const env = {
    ...process.env,
    KUBE_DATA_DIR: dataDir,
    KUBE_HTTP_LISTEN: '127.0.0.1:0',
    KUBE_HTTP_HTTPS_LISTEN: '127.0.0.1:0',
    KUBE_ADMIN_LISTEN: '127.0.0.1:0',
    KUBE_DNS_LISTEN: '127.0.0.1:0',
    KUBE_TURN_LISTEN: '127.0.0.1:0',
    ...envOverrides,
  };
  const child = spawn(KUBE_BIN, ['start', ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const kube = { child, stdout: '', stderr: '', exited: null };
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => { kube.stderr += d; });
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => {
    kube.exited = { code, signal };
    resolve(kube.exited);
  }));
  kube.waitExit = () => exited;

  kube.ready = new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`no "kube ready" line within ${READY_TIMEOUT_MS} ms`)),
      READY_TIMEOUT_MS,
    );
    child.on('error', (e) => { clearTimeout(timer); reject(e); });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`kube exited before ready (code=${code}, signal=${signal})`));
    });
    child.stdout.on('data', (d) => {
      kube.stdout += d;
      // `kube ready https=H:P http=H:P admin=H:P` (keys in any order).
      const m = kube.stdout.match(/^kube ready (.*)$/m);
      if (m) {
        const addrs = Object.fromEntries(m[1].trim().split(/\s+/).map((kv) => kv.split('=', 2)));
        clearTimeout(timer);
        if (addrs.https) resolve(addrs);
        else reject(new Error(`no https= in ready line: ${m[0]}`));
      }
    });
  });
  return kube;
}

/** SIGTERM kube, SIGKILL after 5 s; returns how it exited. */
export async function stopKube(kube) {
  if (!kube || kube.exited) return kube?.exited;
  kube.child.kill('SIGTERM');
  const t = setTimeout(() => kube.child.kill('SIGKILL'), 5_000);
  const res = await kube.waitExit();
  clearTimeout(t);
  return res;
}

/** The end of a test file: stops `kube`, shows its output when a step `failed`, removes
 * the test's temporary `root`. */
export async function finishKube(kube, root, failed) {
  await stopKube(kube);
  if (failed && kube) {
    console.error(`--- kube stdout ---\n${kube.stdout}`);
    console.error(`--- kube stderr (last 16 KiB) ---\n${kube.stderr.slice(-16384)}`);
  }
  if (root) await rm(root, { recursive: true, force: true });
}

/** A fresh HOME whose NSS database ($HOME/.pki/nssdb) trusts only `caPem` (or nothing). */
export async function makeNssHome(root, label, caPath) {
  const home = path.join(root, label);
  const db = path.join(home, '.pki', 'nssdb');
  await mkdir(db, { recursive: true });
  await run('certutil', ['-d', `sql:${db}`, '-N', '--empty-password']);
  if (caPath) {
    await run('certutil', ['-d', `sql:${db}`, '-A', '-t', 'C,,', '-n', 'kube-local-ca', '-i', caPath]);
  }
  return home;
}

/** Launch headless Chromium with HOME pointing at `home` (so it reads that NSS db). */
export function launchChromium(home, extraArgs = []) {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [...CHROMIUM_ARGS, ...extraArgs],
    env: { ...process.env, HOME: home },
    timeout: 30_000,
  });
}

