// Reads KUBE's own /metrics every 2 s from sign-in on, and keeps the last five minutes of
// each chart's series, so the Metrics view shows history as soon as it opens.

import { fetchMetrics } from './api.js';
import { has, parse, sum } from './prom.js';

export const POLL_MS = 2000;
export const WINDOW_SECS = 300;

/**
 * The charts. `rate`: per-second increase of a counter (every label set summed); `avg`: a
 * histogram's rate(sum) / rate(count), none while nothing was observed; `gauge`: the value.
 */
export const CHARTS = [
  { title: 'HTTP requests', kind: 'rate', metric: 'kube_http_requests_total', unit: 'rate' },
  { title: 'HTTP latency', kind: 'avg', metric: 'kube_http_request_duration_seconds', unit: 'seconds' },
  { title: 'DNS queries', kind: 'rate', metric: 'kube_dns_queries_total', unit: 'rate' },
  { title: 'Signaling peers', kind: 'gauge', metric: 'kube_signal_peers', unit: 'count' },
  { title: 'TURN allocations', kind: 'gauge', metric: 'kube_turn_allocations', unit: 'count' },
  { title: 'TURN bytes', kind: 'rate', metric: 'kube_turn_relayed_bytes_total', unit: 'bytes' },
  { title: 'ECHO peers', kind: 'gauge', metric: 'kube_echo_peers', unit: 'count' },
  { title: 'ECHO sync lag', kind: 'avg', metric: 'kube_echo_sync_lag_seconds', unit: 'seconds' },
];

const state = {
  running: false,
  gen: 0, // a poll of an earlier sign-in drops its answer
  timer: null,
  prev: null, // {t, samples}
  series: CHARTS.map(() => ({ x: [], y: [] })),
  error: null,
  listeners: new Set(),
};

function value(chart, now, prev, dt) {
  if (chart.kind === 'gauge') return has(now, chart.metric) ? sum(now, chart.metric) : null;
  if (!prev || dt <= 0) return undefined; // no sample yet
  if (chart.kind === 'rate') {
    const d = sum(now, chart.metric) - sum(prev, chart.metric);
    return d < 0 ? null : d / dt; // a reset (KUBE restarted) leaves a gap
  }
  const dSum = sum(now, `${chart.metric}_sum`) - sum(prev, `${chart.metric}_sum`);
  const dCount = sum(now, `${chart.metric}_count`) - sum(prev, `${chart.metric}_count`);
  if (dCount < 0 || dSum < 0) return null;
  return dCount > 0 ? dSum / dCount : null;
}

async function poll() {
  state.timer = null;
  const gen = state.gen;
  if (!state.running) return;
  try {
    const text = await fetchMetrics();
    if (!state.running || gen !== state.gen) return;
    const samples = parse(text);
    const t = Date.now() / 1000;
    const prev = state.prev;
    const dt = prev ? t - prev.t : 0;
    CHARTS.forEach((chart, i) => {
      const v = value(chart, samples, prev && prev.samples, dt);
      if (v === undefined) return;
      const s = state.series[i];
      s.x.push(t);
      s.y.push(v);
      while (s.x.length && s.x[0] < t - WINDOW_SECS) {
        s.x.shift();
        s.y.shift();
      }
    });
    state.prev = { t, samples };
    state.error = null;
  } catch (e) {
    if (gen !== state.gen) return;
    state.error = e.message;
  }
  for (const fn of state.listeners) fn();
  if (state.running) state.timer = setTimeout(poll, POLL_MS);
}

export function startMetrics() {
  if (state.running) return;
  state.running = true;
  state.prev = null;
  state.series = CHARTS.map(() => ({ x: [], y: [] }));
  poll();
}

export function stopMetrics() {
  state.running = false;
  state.gen += 1;
  if (state.timer) clearTimeout(state.timer);
  state.timer = null;
  state.prev = null;
  state.series = CHARTS.map(() => ({ x: [], y: [] }));
  state.error = null;
}

/** Calls `fn` after each poll; returns the unsubscribe function. */
export function onMetrics(fn) {
  state.listeners.add(fn);
  return () => state.listeners.delete(fn);
}

export function metricsState() {
  return state;
}
