// Load generator for bench/signal/run (see there): holds CONNS authenticated
// signaling WebSockets to KUBE, each joined to one of SWARMS swarms, then sends
// `signal` messages between pairs of peers in the same swarm at RATE per second
// for DURATION seconds and measures their delivery latency (receive - send, one clock).
//
// Env: URL (wss://localhost:<port>/.well-known/kube/signal), CA (PEM file),
//      KUBE_PID (its RSS and CPU are read from /proc), CONNS, SWARMS,
//      CONCURRENCY (connections being opened at once), DURATION (s), RATE (msg/s),
//      SETTLE (s to wait after all joined before reading RSS), OPEN_TIMEOUT (s).
// Progress goes to stderr; results go to stdout as `key value` lines.
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import { performance } from 'node:perf_hooks';
import WebSocket from 'ws';

const env = (k, d) => process.env[k] ?? d;
const URL_ = env('URL');
const CA = fs.readFileSync(env('CA'));
const KUBE_PID = env('KUBE_PID');
const CONNS = +env('CONNS', 10000);
const SWARMS = +env('SWARMS', 1000);
const CONCURRENCY = +env('CONCURRENCY', 200);
const DURATION = +env('DURATION', 5);
const RATE = +env('RATE', 1000);
const SETTLE = +env('SETTLE', 2);
const OPEN_TIMEOUT = +env('OPEN_TIMEOUT', 300);

const log = (...a) => console.error('[load]', ...a);
const out = (k, v) => console.log(`${k} ${v}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const CLK_TCK = +env('CLK_TCK', 100); // getconf CLK_TCK
function kubeStat() {
  const status = fs.readFileSync(`/proc/${KUBE_PID}/status`, 'utf8');
  const kib = (k) => +(status.match(new RegExp(`^${k}:\\s+(\\d+)`, 'm')) || [0, 0])[1];
  const stat = fs.readFileSync(`/proc/${KUBE_PID}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { rss: kib('VmRSS'), hwm: kib('VmHWM'), cpu: (+f[11] + +f[12]) / CLK_TCK };
}

// did:key for an Ed25519 public key: z + base58btc(0xed 0x01 || key).
const B58 = '123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz';
function base58(buf) {
  let n = BigInt('0x' + buf.toString('hex'));
  let s = '';
  while (n > 0n) {
    s = B58[Number(n % 58n)] + s;
    n /= 58n;
  }
  for (const b of buf) {
    if (b !== 0) break;
    s = '1' + s;
  }
  return s;
}
function identity() {
  const { publicKey, privateKey } = crypto.generateKeyPairSync('ed25519');
  const raw = publicKey.export({ type: 'spki', format: 'der' }).subarray(-32);
  return { did: 'did:key:z' + base58(Buffer.concat([Buffer.from([0xed, 0x01]), raw])), key: privateKey };
}
const swarmId = (k) => crypto.createHash('sha256').update(`kube-bench-swarm-${k}`).digest('hex');

// ---------------------------------------------------------------- connections
const peers = new Array(CONNS); // { ws, did, swarm, k }
const lat = []; // ms
const counts = { sent: 0, recv: 0, errors: 0, closed: 0, failed: 0, unexpected: 0 };
const errorCodes = {};
let measuring = false;

function open(i) {
  return new Promise((resolve) => {
    const id = identity();
    const k = i % SWARMS;
    const swarm = swarmId(k);
    const p = { did: id.did, swarm, k, ready: false };
    peers[i] = p;
    let done = false;
    const finish = (ok, why) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (!ok) {
        counts.failed++;
        if (counts.failed <= 5) log(`connection ${i} failed: ${why}`);
        try { ws.terminate(); } catch {}
      }
      resolve(ok);
    };
    const timer = setTimeout(() => finish(false, 'timeout'), 30_000);
    // No Origin header: the signed origin is the empty string. IPv4 only (KUBE
    // listens on 127.0.0.1); SNI and Host are `localhost`.
    const ws = new WebSocket(URL_, { ca: CA, family: 4, perMessageDeflate: false, handshakeTimeout: 30_000 });
    p.ws = ws;
    ws.on('error', (e) => finish(false, e.message));
    ws.on('close', () => {
      if (p.ready) counts.closed++;
      p.ready = false;
      finish(false, 'closed');
    });
    ws.on('message', (data) => {
      let m;
      try { m = JSON.parse(data); } catch { counts.unexpected++; return; }
      switch (m.type) {
        case 'challenge': {
          const msg = Buffer.from(`kube-signal-v1\n${m.nonce}\n`, 'utf8');
          const sig = crypto.sign(null, msg, id.key).toString('base64url');
          ws.send(JSON.stringify({ v: 1, type: 'auth', id: id.did, signature: sig }));
          break;
        }
        case 'welcome':
          ws.send(JSON.stringify({ v: 1, type: 'join', swarm }));
          break;
        case 'peers':
          p.ready = true;
          finish(true);
          break;
        case 'signal': {
          if (measuring && m.payload && typeof m.payload.t === 'number') {
            lat.push(performance.now() - m.payload.t);
            counts.recv++;
          }
          break;
        }
        case 'peer-joined':
        case 'peer-left':
          break;
        case 'error':
          counts.errors++;
          errorCodes[m.code] = (errorCodes[m.code] || 0) + 1;
          if (!done) finish(false, `error ${m.code}: ${m.message}`);
          break;
        default:
          counts.unexpected++;
      }
    });
  });
}

const t0 = performance.now();
const idle = kubeStat();
let next = 0;
let opened = 0;
let lastLog = t0;
const deadline = t0 + OPEN_TIMEOUT * 1000;
async function worker() {
  while (next < CONNS && performance.now() < deadline) {
    const i = next++;
    if (await open(i)) opened++;
    const now = performance.now();
    if (now - lastLog > 2000) {
      lastLog = now;
      log(`${opened}/${CONNS} connected and joined (${counts.failed} failed), ${((now - t0) / 1000).toFixed(1)} s`);
    }
  }
}
await Promise.all(Array.from({ length: Math.min(CONCURRENCY, CONNS) }, worker));
const openSecs = (performance.now() - t0) / 1000;
log(`${opened}/${CONNS} connected and joined in ${openSecs.toFixed(1)} s (${counts.failed} failed)`);
const afterOpen = kubeStat();

await sleep(SETTLE * 1000);
const loaded = kubeStat();
const held = peers.filter((p) => p && p.ready).length;
log(`holding ${held}; kube RSS ${(loaded.rss / 1024).toFixed(1)} MiB`);

// ---------------------------------------------------------------- latency
// Pairs (2j, 2j+1) of each swarm's ready members; signals go round-robin over
// pairs and both directions, RATE per second in all.
const bySwarm = new Map();
for (const p of peers) {
  if (!p || !p.ready) continue;
  if (!bySwarm.has(p.k)) bySwarm.set(p.k, []);
  bySwarm.get(p.k).push(p);
}
const pairs = [];
for (const members of bySwarm.values()) {
  for (let j = 0; j + 1 < members.length; j += 2) pairs.push([members[j], members[j + 1]]);
}
if (pairs.length === 0) {
  log('no pair of ready peers in one swarm: nothing to measure');
}
const cpuBefore = kubeStat().cpu;
measuring = true;
let rr = 0;
let due = 0;
const tStart = performance.now();
if (pairs.length) {
  // Every ~10 ms, send what is due at RATE since tStart (catches up after a slow tick).
  while (performance.now() - tStart < DURATION * 1000) {
    for (const target = Math.floor(((performance.now() - tStart) / 1000) * RATE); due < target; due++) {
      const pair = pairs[rr % pairs.length];
      const dir = Math.floor(rr / pairs.length) % 2;
      rr++;
      const [a, b] = dir ? [pair[1], pair[0]] : pair;
      if (!a.ready || !b.ready) continue;
      a.ws.send(JSON.stringify({ v: 1, type: 'signal', to: b.did, swarm: a.swarm, payload: { t: performance.now(), n: rr } }));
      counts.sent++;
    }
    await sleep(10);
  }
}
const sendSecs = (performance.now() - tStart) / 1000;
// Drain: wait until every signal arrived, at most 5 s.
for (let w = 0; w < 50 && counts.recv < counts.sent; w++) await sleep(100);
measuring = false;
const cpuAfter = kubeStat().cpu;
const end = kubeStat();
const stillHeld = peers.filter((p) => p && p.ready).length;

lat.sort((x, y) => x - y);
const q = (f) => (lat.length ? lat[Math.min(lat.length - 1, Math.floor(f * lat.length))] : NaN);
log(`signals: ${counts.sent} sent, ${counts.recv} received in ${sendSecs.toFixed(1)} s; p50 ${q(0.5).toFixed(2)} ms, p99 ${q(0.99).toFixed(2)} ms`);
if (counts.errors) log(`errors from kube: ${JSON.stringify(errorCodes)}`);

// ---------------------------------------------------------------- results
out('conns', CONNS);
out('swarms', SWARMS);
out('opened', opened);
out('failed', counts.failed);
out('held', held);
out('held_end', stillHeld);
out('closed', counts.closed);
out('open_secs', openSecs.toFixed(2));
out('rss_idle_kib', idle.rss);
out('rss_after_open_kib', afterOpen.rss);
out('rss_loaded_kib', loaded.rss);
out('rss_end_kib', end.rss);
out('hwm_kib', end.hwm);
out('cpu_open_secs', (afterOpen.cpu - idle.cpu).toFixed(2));
out('cpu_signal_secs', (cpuAfter - cpuBefore).toFixed(2));
out('cpu_total_secs', (end.cpu - idle.cpu).toFixed(2));
out('pairs', pairs.length);
out('signals_sent', counts.sent);
out('signals_recv', counts.recv);
out('signal_secs', sendSecs.toFixed(2));
out('lat_p50_ms', q(0.5).toFixed(3));
out('lat_p90_ms', q(0.9).toFixed(3));
out('lat_p99_ms', q(0.99).toFixed(3));
out('lat_max_ms', lat.length ? lat[lat.length - 1].toFixed(3) : 'NaN');
out('errors', counts.errors);
out('error_codes', JSON.stringify(errorCodes));
out('client_rss_kib', Math.round(process.memoryUsage().rss / 1024));
out('client_cores', os.cpus().length);

for (const p of peers) {
  if (p && p.ws) {
    p.ready = false;
    try { p.ws.terminate(); } catch {}
  }
}
process.exit(0);
