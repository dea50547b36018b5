// Driver of bench/p2p/run: the tasks app (examples/tasks) in one headless Chromium, one
// browser context per person (separate storage), against the KUBE that run started. Prints
// the markdown report on stdout, progress on stderr. Measures, in this order:
//   1. first load: fresh contexts, bytes transferred (resource timing) and kubeApp.interactiveAt;
//   2. edit-to-visible latency between two pages, sequential edits, over the WebRTC data
//      channel only (KUBE's WebSocket adapter disconnected) and through KUBE only (the
//      WebRTC adapter disconnected);
//   3. KUBE's CPU while PAIRS pairs edit at RATE/s each way: idle, peer to peer, through
//      KUBE, and both networks (the app as shipped).
// The split between paths goes through what main.js exposes on window.kubeApp: `kube` (the
// KubeAdapter: disconnect()/reconnect()) and `p2p` (the WebRTCAdapter: disconnect()/connect()),
// and each mode is checked on the Repo's peer list before it is measured.

import { readFileSync, readdirSync } from 'node:fs';
import { chromium } from 'playwright-core';

const num = (k, d) => {
  const v = Number(process.env[k] ?? d);
  if (!Number.isFinite(v) || v < 0) throw new Error(`${k} must be a number ≥ 0`);
  return v;
};
const APP_URL = process.env.APP_URL;
const KUBE_PID = Number(process.env.KUBE_PID);
const CLK_TCK = num('CLK_TCK', 100);
const EDITS = num('EDITS', 200);
const PAIRS = Math.max(1, num('PAIRS', 10));
const LOAD_SECS = num('LOAD_SECS', 20);
const RATE = num('RATE', 5);
const LOADS = Math.max(1, num('LOADS', 5));
const DOCS = Math.max(1, num('BENCH_DOCS', 8));
const QUIET_MS = num('QUIET_MS', 120);
const PAUSE_MS = num('PAUSE_MS', 20);
const IDLE_SECS = num('IDLE_SECS', 5);
const MIN_AVAILABLE_MIB = num('MIN_AVAILABLE_MIB', 1024);
const EDIT_TIMEOUT_MS = 10_000;
const DRAIN_MS = 15_000;
const WAIT = { timeout: 30_000 };
const SWITCH_WAIT = { timeout: 90_000, polling: 250 };
const P2P_WAIT_MS = num('P2P_WAIT_MS', 20_000);
let p2pRestarts = 0;
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--no-sandbox', // root in a container
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--no-proxy-server',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-dev-shm-usage',
  '--allow-loopback-in-peer-connection',
  // Host candidates as plain addresses (127.0.0.1), not mDNS names nobody resolves here.
  '--disable-features=WebRtcHideLocalIpsWithMdns',
];

const log = (...a) => console.error('[bench]', ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
if (!APP_URL || !KUBE_PID) throw new Error('APP_URL and KUBE_PID are set by bench/p2p/run');

// ---------------------------------------------------------------- measuring helpers

/** KUBE's utime + stime in seconds (/proc/PID/stat fields 14 and 15). */
function kubeCpu() {
  const stat = readFileSync(`/proc/${KUBE_PID}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / CLK_TCK;
}
const now = () => performance.timeOrigin + performance.now();
/** CPU of KUBE (and of Chromium) over `fn()`: seconds, wall seconds, % of one core. */
async function cpuOver(fn) {
  const b0 = chromiumCpu();
  const c0 = kubeCpu();
  const t0 = now();
  const out = await fn();
  const cpu = kubeCpu() - c0;
  const wall = (now() - t0) / 1000;
  let browserCpu = 0;
  for (const [pid, c] of chromiumCpu()) browserCpu += c - (b0.get(pid) ?? 0);
  return { out, cpu, wall, pct: (100 * cpu) / wall, browserPct: (100 * browserCpu) / wall };
}
const memAvailableMiB = () => Number(/MemAvailable:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'))[1]) / 1024;
/** This process's descendants: Chromium's processes. */
function chromiumPids() {
  const parent = new Map();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const s = readFileSync(`/proc/${d}/stat`, 'utf8');
      parent.set(Number(d), Number(s.slice(s.lastIndexOf(')') + 2).split(' ')[1]));
    } catch { /* gone */ }
  }
  return [...parent.keys()].filter((pid) => {
    let p = parent.get(pid);
    while (p && p !== process.pid) p = parent.get(p);
    return p === process.pid;
  });
}
/** utime + stime of Chromium's processes, seconds: pid → seconds. */
function chromiumCpu() {
  const m = new Map();
  for (const pid of chromiumPids()) {
    try {
      const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
      m.set(pid, (Number(f[11]) + Number(f[12])) / CLK_TCK);
    } catch { /* gone */ }
  }
  return m;
}
/** PSS of Chromium's processes, MiB. */
function chromiumPssMiB() {
  let kib = 0;
  for (const pid of chromiumPids()) {
    try {
      kib += Number(/^Pss:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))[1]);
    } catch { /* gone */ }
  }
  return kib / 1024;
}
/** Nearest-rank percentile of numbers. */
function pct(xs, q) {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))];
}
const median = (xs) => pct(xs, 0.5);
const ms = (x) => (Number.isFinite(x) ? x.toFixed(1) : '–');

// ---------------------------------------------------------------- in the page

/** Installed in each page of a pair: watches the bench objects, sends edits, runs load. */
async function installBench({ ids, me, other, otherDid }) {
  const clock = () => performance.timeOrigin + performance.now();
  const app = window.kubeApp;
  const handles = await Promise.race([
    Promise.all(ids.map((id) => app.repo.find(id))),
    new Promise((_, rej) => setTimeout(() => rej(new Error('bench objects not ready in 30 s')), 30_000)),
  ]);
  const arrivals = new Map(); // the other's seq → [sent, received] (page clock, ms)
  const waiters = new Map();
  const seqKey = `${other}_seq`;
  const sentKey = `${other}_sent`;
  for (const h of handles) {
    h.on('change', ({ doc }) => {
      const seq = doc?.props?.[seqKey];
      if (typeof seq !== 'number' || arrivals.has(seq)) return;
      const t = clock();
      arrivals.set(seq, [doc.props[sentKey], t]);
      const w = waiters.get(seq);
      if (w) {
        waiters.delete(seq);
        w(t);
      }
    });
  }
  const send = (k, seq) => {
    const t = clock();
    handles[k].change((d) => {
      d.props[`${me}_seq`] = seq;
      d.props[`${me}_sent`] = t;
    });
    return t;
  };
  const root = app.repo.handles[app.current().root];
  const covered = (h, sid) => {
    const remote = h.getSyncInfo(sid)?.lastHeads;
    return !!remote && h.heads().every((x) => remote.includes(x));
  };
  const state = { kubeOff: false, p2pOff: false };
  window.__bench = {
    send,
    wait(seq, timeoutMs) {
      if (arrivals.has(seq)) return Promise.resolve(arrivals.get(seq)[1]);
      return new Promise((resolve) => {
        const timer = setTimeout(() => {
          waiters.delete(seq);
          resolve(null);
        }, timeoutMs);
        waiters.set(seq, (t) => {
          clearTimeout(timer);
          resolve(t);
        });
      });
    },
    /** Whether the other's last edit of every object in [seq0, seq0 + n) is visible here
     * (an earlier one may have been merged into a later sync message and never seen alone). */
    caughtUp(seq0, n) {
      // The other's last edit of each object: one of the last `handles.length` it sent.
      for (let i = Math.max(0, n - handles.length); i < n; i++) if (!arrivals.has(seq0 + i)) return false;
      return true;
    },
    arrivals: (lo, hi) => [...arrivals].filter(([s]) => s >= lo && s < hi).map(([s, [sent, recv]]) => [s, sent, recv]),
    /** `n` edits at `rate`/s from `startAt` (page clock), rotating over the objects from
     * `docOffset` (Alice and Bob half the objects apart: no object gets both edits at once). */
    load({ startAt, rate, n, seq0, docOffset }) {
      const period = 1000 / rate;
      let i = 0;
      let first;
      let last;
      return new Promise((resolve) => {
        const step = () => {
          if (i >= n) return resolve({ first, last });
          last = send((i + docOffset) % handles.length, seq0 + i);
          first ??= last;
          i += 1;
          setTimeout(step, Math.max(0, startAt + i * period - clock()));
          return undefined;
        };
        setTimeout(step, Math.max(0, startAt - clock()));
      });
    },
    /** Switches this page's networks: 'p2p' (KUBE's WebSocket off), 'kube' (WebRTC off), 'both'. */
    setNetworks(mode) {
      const wantKube = mode !== 'p2p';
      const wantP2p = mode !== 'kube';
      if (wantKube && state.kubeOff) app.kube.reconnect();
      if (wantP2p && state.p2pOff) app.p2p.connect(app.repo.peerId);
      if (!wantKube && !state.kubeOff) app.kube.disconnect();
      state.kubeOff = !wantKube;
      state.p2pOff = !wantP2p;
    },
    /** Turns WebRTC off once KUBE has everything (so the KUBE-only phase starts in sync). */
    p2pOff() {
      if (!state.p2pOff) app.p2p.disconnect();
      state.p2pOff = true;
    },
    networks() {
      const k = app.kube;
      const peer = app.p2p.peers().find((p) => p.did === otherDid && p.state === 'open');
      const kubeUp = !!k && k.socket?.readyState === 1 && app.repo.peers.includes(k.remotePeerId);
      return {
        kube: kubeUp,
        kubeSynced: kubeUp && !!k.kubeStorageId && [root, ...handles].every((h) => covered(h, k.kubeStorageId)),
        p2p: !!peer && app.repo.peers.includes(peer.peerId),
        p2pPath: peer?.path,
        p2pConns: app.p2p.peers().length,
        repoPeers: app.repo.peers.length,
      };
    },
    /** (timeOrigin + now) − Date.now(), averaged: compares the clocks of two pages. */
    clockOffset() {
      let sum = 0;
      const n = 20000;
      for (let j = 0; j < n; j++) sum += clock() - Date.now();
      return sum / n;
    },
  };
}

// ---------------------------------------------------------------- the app

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: CHROMIUM_ARGS,
  env: { ...process.env }, // HOME holds the NSS db trusting KUBE's CA (run made it)
  timeout: 30_000,
});
let closing = false;
const shutdown = async (code) => {
  if (closing) return;
  closing = true;
  await browser.close().catch(() => {});
  process.exit(code);
};
process.on('SIGTERM', () => shutdown(143));
process.on('SIGINT', () => shutdown(130));

const pageErrors = [];
async function openPage(context, who, url = APP_URL) {
  const page = await context.newPage();
  page.on('pageerror', (e) => {
    pageErrors.push(`${who}: ${e.message}`);
    if (pageErrors.length <= 10) log(`page error [${who}]: ${e.message}`);
  });
  await page.goto(url);
  await page.waitForSelector('body[data-ready="1"]', WAIT);
  return page;
}

/** Alice creates a space with DOCS bench tasks and invites Bob (link and code, through the
 * UI); both see the objects over an open data channel and are connected to KUBE. */
async function makePair(i) {
  const aliceCtx = await browser.newContext();
  const alice = await openPage(aliceCtx, `alice${i}`);
  await alice.getByTestId('space-name').fill(`bench ${i}`);
  await alice.getByTestId('create-space').click();
  await alice.getByTestId('task-list').waitFor(WAIT);
  for (let k = 0; k < DOCS; k++) {
    await alice.getByTestId('task-title').fill(`bench ${k}`);
    await alice.getByTestId('task-add').click();
    await alice.waitForFunction((n) => document.querySelectorAll('[data-testid="task-item"]').length >= n, k + 1, WAIT);
  }
  const ids = await alice.evaluate(() => [...document.querySelectorAll('[data-testid="task-item"]')].map((li) => li.dataset.id));
  await alice.getByTestId('invite-role').selectOption('editor');
  await alice.getByTestId('invite').click();
  await alice.getByTestId('invite-link').waitFor(WAIT);
  const link = (await alice.getByTestId('invite-link').textContent()).trim();
  const code = (await alice.getByTestId('invite-code').textContent()).trim();
  const bobCtx = await browser.newContext();
  const bob = await openPage(bobCtx, `bob${i}`, link);
  await bob.getByTestId('join-code').fill(code);
  await bob.getByTestId('join-submit').click();
  await bob.getByTestId('task-list').waitFor(WAIT);
  await bob.waitForFunction((n) => document.querySelectorAll('[data-testid="task-item"]').length >= n, DOCS, WAIT);
  const [aliceDid, bobDid] = await Promise.all([alice, bob].map((p) => p.evaluate(() => window.kubeApp.identity.did)));
  await Promise.all([
    alice.evaluate(installBench, { ids, me: 'alice', other: 'bob', otherDid: bobDid }),
    bob.evaluate(installBench, { ids, me: 'bob', other: 'alice', otherDid: aliceDid }),
  ]);
  const pair = { i, alice, bob, contexts: [aliceCtx, bobCtx] };
  await networks([pair], 'both');
  return pair;
}

/** The data channel of each pair should open on its own; where it has not after P2P_WAIT_MS,
 * say so and restart both WebRTC adapters of the pair (what a reload would do), at most twice. */
async function ensureP2p(pairsList) {
  await Promise.all(pairsList.map(async ({ i, alice, bob }) => {
    for (let attempt = 0; ; attempt++) {
      try {
        await Promise.all([alice, bob].map((pg) => pg.waitForFunction(() => window.__bench.networks().p2p, null, { timeout: P2P_WAIT_MS, polling: 250 })));
        return;
      } catch (e) {
        if (attempt >= 2) throw new Error(`pair ${i}: no data channel after ${attempt + 1} tries: ${e.message}`);
        p2pRestarts += 1;
        for (const [who, pg] of [['alice', alice], ['bob', bob]]) log(`  pair ${i} ${who}: no open data channel after ${P2P_WAIT_MS} ms: ${await diag(pg)}`);
        log(`  pair ${i}: restarting both WebRTC adapters`);
        await Promise.all([alice, bob].map((pg) => pg.evaluate(() => {
          window.kubeApp.p2p.disconnect();
          window.kubeApp.p2p.connect(window.kubeApp.repo.peerId);
        })));
      }
    }
  }));
}

/** What a page's networks look like, for diagnostics. */
const diag = (page) => page.evaluate(() => JSON.stringify({
  ...(window.__bench?.networks() ?? {}),
  peers: window.kubeApp.p2p.peers(),
  signal: window.kubeApp.p2p.signalState,
  refused: window.kubeApp.refused.slice(-5),
})).catch((e) => String(e));

/** Puts every page of `pairs` on `mode` and waits until its Repo has exactly those peers. */
async function networks(pairs, mode) {
  const pages = pairs.flatMap((p) => [p.alice, p.bob]);
  if (mode === 'kube') {
    // KUBE first catches up with what went peer to peer, then WebRTC goes off.
    await Promise.all(pages.map((p) => p.evaluate(() => window.__bench.setNetworks('both'))));
    await Promise.all(pages.map((p) => p.waitForFunction(() => window.__bench.networks().kubeSynced, null, SWITCH_WAIT)));
    await Promise.all(pages.map((p) => p.evaluate(() => window.__bench.p2pOff())));
  } else {
    await Promise.all(pages.map((p) => p.evaluate((m) => window.__bench.setNetworks(m), mode)));
    await ensureP2p(pairs);
  }
  const want = { both: [true, true], p2p: [false, true], kube: [true, false] }[mode];
  try {
    await Promise.all(pages.map((p) => p.waitForFunction(([k, d]) => {
      const n = window.__bench.networks();
      return n.kube === k && n.p2p === d && n.repoPeers === (k ? 1 : 0) + (d ? 1 : 0) && (d || n.p2pConns === 0)
        && (!k || n.kubeSynced);
    }, want, SWITCH_WAIT)));
  } catch (e) {
    for (const [j, p] of pages.entries()) log(`  page ${j}: ${await diag(p)}`);
    throw new Error(`switching to '${mode}' did not complete: ${e.message}`);
  }
  return Promise.all(pages.map((p) => p.evaluate(() => window.__bench.networks())));
}

// ---------------------------------------------------------------- 1. first load

const results = { chromium: browser.version() };
{
  log(`first load: ${LOADS} fresh contexts`);
  const runs = [];
  for (let i = 0; i < LOADS; i++) {
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    const encodings = new Map();
    page.on('response', (r) => encodings.set(r.url(), r.headers()['content-encoding'] ?? 'identity'));
    await page.goto(APP_URL);
    await page.waitForSelector('body[data-ready="1"]', WAIT);
    await page.waitForLoadState('load');
    const r = await page.evaluate(() => ({
      interactiveAt: window.kubeApp.interactiveAt,
      entries: [...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource')].map((e) => ({
        name: e.name,
        start: e.startTime,
        transfer: e.transferSize,
        encoded: e.encodedBodySize,
        decoded: e.decodedBodySize,
      })),
    }));
    await ctx.close();
    const first = r.entries.filter((e) => e.start <= r.interactiveAt);
    const run = {
      tti: r.interactiveAt,
      bytes: first.reduce((n, e) => n + e.transfer, 0),
      decoded: first.reduce((n, e) => n + e.decoded, 0),
      files: first.map((e) => ({ ...e, path: new URL(e.name).pathname, encoding: encodings.get(e.name) ?? '?' })),
      later: r.entries.filter((e) => e.start > r.interactiveAt).map((e) => new URL(e.name).pathname),
    };
    runs.push(run);
    log(`  load ${i + 1}: ${run.bytes} bytes, interactive at ${ms(run.tti)} ms (${run.files.length} requests)`);
  }
  const byTti = [...runs].sort((a, b) => a.tti - b.tti);
  results.firstLoad = {
    runs,
    tti: median(runs.map((r) => r.tti)),
    ttiMin: byTti[0].tti,
    ttiMax: byTti.at(-1).tti,
    bytes: median(runs.map((r) => r.bytes)),
    decoded: median(runs.map((r) => r.decoded)),
    median: byTti[Math.floor((byTti.length - 1) / 2)],
  };
}

// ---------------------------------------------------------------- 2. edit-to-visible latency

const pairs = [];
let seqBase = 1_000_000; // every phase its own range of sequence numbers

/** EDITS each way, one at a time: A→B, B→A, … each waiting for the last to arrive. */
async function latency(pair, label) {
  const lo = seqBase;
  seqBase += 1_000_000;
  const lastTouch = new Array(DOCS).fill(0);
  const samples = { ab: [], ba: [] };
  let lost = 0;
  for (let i = 0; i < 2 * EDITS; i++) {
    const k = i % DOCS; // Alice and Bob never write one object back to back
    // automerge-repo sends a document's changes at most every 100 ms (DocSynchronizer's
    // syncDebounceRate): wait for the object to be quiet so one edit is one sync message.
    const quiet = lastTouch[k] + QUIET_MS - Date.now();
    await sleep(Math.max(PAUSE_MS, quiet));
    const [from, to, dir] = i % 2 === 0 ? [pair.alice, pair.bob, 'ab'] : [pair.bob, pair.alice, 'ba'];
    const seq = lo + i;
    const arrived = to.evaluate(([s, t]) => window.__bench.wait(s, t), [seq, EDIT_TIMEOUT_MS]);
    const sent = await from.evaluate(([kk, s]) => window.__bench.send(kk, s), [k, seq]);
    const recv = await arrived;
    lastTouch[k] = Date.now();
    if (recv === null) {
      lost += 1;
      log(`  ${label}: edit ${seq - lo} (${dir}) not visible after ${EDIT_TIMEOUT_MS} ms`);
      if (lost > 10) throw new Error(`${label}: more than 10 edits lost`);
      continue;
    }
    samples[dir].push(recv - sent);
  }
  const all = [...samples.ab, ...samples.ba];
  const r = {
    n: all.length,
    lost,
    p50: pct(all, 0.5),
    p99: pct(all, 0.99),
    max: Math.max(...all),
    ab: { p50: pct(samples.ab, 0.5), p99: pct(samples.ab, 0.99) },
    ba: { p50: pct(samples.ba, 0.5), p99: pct(samples.ba, 0.99) },
  };
  log(`  ${label}: ${r.n} edits, p50 ${ms(r.p50)} ms, p99 ${ms(r.p99)} ms (lost ${lost})`);
  return r;
}

log('pair 0: Alice creates a space, invites Bob by link and code');
pairs.push(await makePair(0));
{
  const p = pairs[0];
  const [a, b] = await Promise.all([p.alice, p.bob].map((x) => x.evaluate(() => window.__bench.clockOffset())));
  results.clockSkew = a - b;
  log(`clock check: (timeOrigin + now) of the two pages differ by ${(a - b).toFixed(3)} ms`);
  const direct = await networks([p], 'p2p');
  results.path = direct[0].p2pPath;
  log(`latency, WebRTC data channel only (path ${results.path}): ${EDITS} edits each way`);
  results.direct = await latency(p, 'direct');
  await networks([p], 'kube');
  log(`latency, through KUBE only: ${EDITS} edits each way`);
  results.viaKube = await latency(p, 'via KUBE');
  await networks([p], 'both');
}

// ---------------------------------------------------------------- 3. KUBE's CPU under load

log(`${PAIRS - 1} more pairs (memory available: ${memAvailableMiB().toFixed(0)} MiB)`);
for (let i = 1; i < PAIRS; i++) {
  const avail = memAvailableMiB();
  if (avail < MIN_AVAILABLE_MIB) {
    log(`only ${avail.toFixed(0)} MiB available: stopping at ${pairs.length} pairs`);
    break;
  }
  pairs.push(await makePair(i));
  log(`  pair ${i} ready (${((now() - performance.timeOrigin) / 1000).toFixed(0)} s into the run)`);
}
results.pairs = pairs.length;

/** Every page sends RATE/s for LOAD_SECS; returns delivery and latency under load. */
async function load(label) {
  const lo = seqBase;
  seqBase += 1_000_000;
  const n = Math.round(RATE * LOAD_SECS);
  const startAt = Date.now() + 1000;
  const period = 1000 / RATE;
  const pages = pairs.flatMap((p) => [p.alice, p.bob]);
  const running = Promise.all(pairs.flatMap((p) => [
    // Pairs start spread over half a period, Bob half a period after Alice.
    p.alice.evaluate((o) => window.__bench.load(o), { startAt: startAt + (p.i * period) / pairs.length / 2, rate: RATE, n, seq0: lo, docOffset: 0 }),
    p.bob.evaluate((o) => window.__bench.load(o), { startAt: startAt + period / 2 + (p.i * period) / pairs.length / 2, rate: RATE, n, seq0: lo, docOffset: Math.floor(DOCS / 2) }),
  ]));
  await sleep(startAt - Date.now());
  // From the first edit until every edit is visible on the other side (or DRAIN_MS more).
  let caughtUp = false;
  const { out: spans, cpu, wall, pct: cpuPct, browserPct } = await cpuOver(async () => {
    const sent = await running;
    const deadline = Date.now() + DRAIN_MS;
    for (;;) {
      const got = await Promise.all(pages.map((pg) => pg.evaluate(([a, b]) => window.__bench.caughtUp(a, b), [lo, n])));
      caughtUp = got.every(Boolean);
      if (caughtUp || Date.now() > deadline) break;
      await sleep(250);
    }
    return sent;
  });
  const sendSecs = (Math.max(...spans.map((x) => x.last)) - Math.min(...spans.map((x) => x.first))) / 1000;
  const arrivals = (await Promise.all(pages
    .map((pg) => pg.evaluate(([a, b]) => window.__bench.arrivals(a, b), [lo, lo + n])))).flat();
  const lat = arrivals.map(([, sent, recv]) => recv - sent);
  const r = {
    sent: 2 * n * pairs.length,
    seen: arrivals.length,
    caughtUp,
    rate: (2 * n * pairs.length) / sendSecs,
    sendSecs,
    cpu,
    wall,
    pct: cpuPct,
    browserPct,
    p50: pct(lat, 0.5),
    p99: pct(lat, 0.99),
  };
  log(`  ${label}: ${r.sent} edits in ${sendSecs.toFixed(1)} s (${r.rate.toFixed(0)}/s), ${r.seen} seen one by one, ` +
    `${caughtUp ? 'all' : 'NOT all'} visible; Chromium ${browserPct.toFixed(0)} % of a core; KUBE ${r.cpu.toFixed(2)} s CPU in ${wall.toFixed(1)} s = ${r.pct.toFixed(1)} % of a core; latency p50 ${ms(r.p50)} p99 ${ms(r.p99)} ms`);
  return r;
}

log(`load: ${pairs.length} pairs, ${RATE} edits/s each way for ${LOAD_SECS} s, per mode`);
results.load = {};
await networks(pairs, 'p2p');
await sleep(1000);
{
  const idle = await cpuOver(() => sleep(IDLE_SECS * 1000));
  results.load.idle = { ...idle, sent: 0, seen: 0 };
  log(`  idle (${pairs.length * 2} pages open, peer to peer, no edits): ${idle.pct.toFixed(2)} % of a core`);
}
results.load.p2p = await load('peer to peer');
await networks(pairs, 'kube');
await sleep(1000);
results.load.kube = await load('through KUBE');
await networks(pairs, 'both');
await sleep(1000);
results.load.both = await load('both (as shipped)');
results.chromiumPss = chromiumPssMiB();
results.kubeRss = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${KUBE_PID}/status`, 'utf8'))[1]) / 1024;
results.kubeHwm = Number(/VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${KUBE_PID}/status`, 'utf8'))[1]) / 1024;
results.pageErrors = pageErrors.length;
results.p2pRestarts = p2pRestarts;
log(`Chromium PSS with ${pairs.length * 2} pages: ${results.chromiumPss.toFixed(0)} MiB; KUBE RSS ${results.kubeRss.toFixed(1)} MiB`);

// ---------------------------------------------------------------- report

const d = results.direct;
const v = results.viaKube;
const fl = results.firstLoad;
const ratio = (a, b) => (b > 0 ? `${(a / b).toFixed(a / b < 0.1 ? 3 : 2)}×` : '–');
const kib = (n) => `${(n / 1024).toFixed(1)} KiB`;
const out = [];
const p = (s = '') => out.push(s);
p(`### Peer to peer: the tasks app in Chromium, loopback (${new Date().toISOString().slice(0, 10)})`);
p();
p(`${process.env.SETUP_DESC ?? ''} Chromium ${results.chromium} (headless, playwright-core), one context per person; ` +
  `${process.env.NETNS_DESC ?? 'loopback'}.`);
p();
p('Command:');
p();
p('```sh');
p(process.env.BENCH_CMD ?? 'bench/p2p/run');
p('```');
p();
p(`**Edit-to-visible latency**, one pair in one space (Bob invited by link and code through the UI), ` +
  `${EDITS} sequential edits each way per path: the sender writes its clock (\`performance.timeOrigin + performance.now()\`) ` +
  `into an object's props, the receiver's DocHandle \`change\` event reads its own clock (both pages: same machine clock, ` +
  `offset between them ${results.clockSkew.toFixed(3)} ms). One edit at a time, each after the object was quiet ${QUIET_MS} ms ` +
  `(automerge-repo sends a document's changes at most every 100 ms), rotating over ${DOCS} objects.`);
p();
p('| path | edits seen / sent | p50 | p99 | max | p50 A→B / B→A |');
p('| --- | ---: | ---: | ---: | ---: | ---: |');
p(`| WebRTC data channel only (${results.path ?? '?'}; KUBE's WebSocket disconnected) | ${d.n} / ${2 * EDITS} | ${ms(d.p50)} ms | ${ms(d.p99)} ms | ${ms(d.max)} ms | ${ms(d.ab.p50)} / ${ms(d.ba.p50)} ms |`);
p(`| through KUBE only (WebSocket, WebRTC disconnected) | ${v.n} / ${2 * EDITS} | ${ms(v.p50)} ms | ${ms(v.p99)} ms | ${ms(v.max)} ms | ${ms(v.ab.p50)} / ${ms(v.ba.p50)} ms |`);
p(`| **KUBE / direct** | | **${ratio(v.p50, d.p50)}** | **${ratio(v.p99, d.p99)}** | | |`);
p();
const L = results.load;
const cores = Number(process.env.CORES ?? 2);
p(`**KUBE's CPU under load**: ${results.pairs} spaces, one Alice/Bob pair each (${results.pairs * 2} pages, one Chromium), ` +
  `each page scheduled to edit ${RATE}/s for ${LOAD_SECS} s (${results.pairs * 2 * RATE} edits/s in all), rotating over its space's ${DOCS} objects (Alice and Bob ${Math.floor(DOCS / 2)} apart). ` +
  `CPU = utime + stime of /proc/PID/stat (CLK_TCK ${CLK_TCK}) from the first edit until the last edit of every object was visible ` +
  `on the other side, as % of one core (KUBE; Chromium = all its processes); "achieved" = edits / (last send − first send), ` +
  `lower than scheduled when Chromium saturates the ${cores} cores it shares with KUBE; edits "merged" reached the other side ` +
  `inside a later sync message of the same object (automerge-repo batches a document's changes while it is behind), so they ` +
  `have no latency sample of their own.`);
p();
p('| networks | edits (achieved /s) | merged | KUBE CPU | KUBE % of one core | KUBE CPU per edit | Chromium % of one core | latency p50 / p99 |');
p('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
const perEdit = (r) => `${((1e6 * r.cpu) / r.sent).toFixed(0)} µs`;
const row = (name, r) => p(`| ${name} | ${r.sent} (${r.rate.toFixed(0)}/s)${r.caughtUp ? '' : ' **not all visible**'} | ${r.sent - r.seen} | ` +
  `${r.cpu.toFixed(2)} s | ${r.pct.toFixed(2)} % | ${perEdit(r)} | ${r.browserPct.toFixed(0)} % | ${ms(r.p50)} / ${ms(r.p99)} ms |`);
p(`| idle (${results.pairs * 2} pages, peer to peer, no edits, ${IDLE_SECS} s) | – | – | ${L.idle.cpu.toFixed(2)} s | ${L.idle.pct.toFixed(2)} % | – | ${L.idle.browserPct.toFixed(0)} % | – |`);
row("peer to peer (KUBE's WebSocket disconnected; KUBE only signals)", L.p2p);
row('through KUBE only (WebRTC disconnected)', L.kube);
row('both networks (the app as shipped; KUBE keeps a replica)', L.both);
const tick = (r) => (100 / CLK_TCK) / r.wall; // one clock tick over the window, % of a core
p(`| **peer to peer / through KUBE** | | | | **${L.p2p.cpu > 0 ? ratio(L.p2p.pct, L.kube.pct) : `< ${(tick(L.p2p) / L.kube.pct).toFixed(3)}× (no clock tick)`}** | ` +
  `**${L.p2p.cpu > 0 ? ratio(L.p2p.cpu / L.p2p.sent, L.kube.cpu / L.kube.sent) : '–'}** | | |`);
p();
p(`Memory at the end: Chromium ${results.chromiumPss.toFixed(0)} MiB (PSS of its processes, ${results.pairs * 2} pages), ` +
  `KUBE RSS ${results.kubeRss.toFixed(1)} MiB (peak ${results.kubeHwm.toFixed(1)} MiB).` +
  (results.pageErrors ? ` ${results.pageErrors} page errors (see stderr).` : '') +
  (results.p2pRestarts ? ` ${results.p2pRestarts} time(s) a pair's data channel had not opened ${P2P_WAIT_MS / 1000} s after the invitation and both WebRTC adapters were restarted (see stderr).` : ''));
p();
p(`**First load** (fresh context, no cache, no service worker yet; brotli), median of ${LOADS}: ` +
  `**${fl.bytes} bytes** transferred (${kib(fl.bytes)}; sum of \`transferSize\` of the navigation and resource timing entries ` +
  `started by the time the app was interactive, headers included; ${kib(fl.decoded)} decoded), ` +
  `interactive (\`kubeApp.interactiveAt\`) at **${ms(fl.tti)} ms** (min ${ms(fl.ttiMin)}, max ${ms(fl.ttiMax)}).`);
p();
p('| request (the median run) | encoding | transferred | decoded |');
p('| --- | --- | ---: | ---: |');
for (const f of fl.median.files) p(`| \`${f.path}\` | ${f.encoding} | ${f.transfer} | ${f.decoded} |`);
console.log(out.join('\n'));
await shutdown(0);
