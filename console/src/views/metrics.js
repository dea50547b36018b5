// Metrics: live charts (uPlot) of what `metrics.js` reads from KUBE's /metrics every 2 s,
// the last five minutes. Each chart is a <figure aria-label="<title>"> whose `data-samples`
// (points drawn) and `data-last` (latest value) attributes follow the data.

import uPlot from 'uplot';
import { h, setText } from '../dom.js';
import * as fmt from '../format.js';
import { CHARTS, WINDOW_SECS, metricsState, onMetrics } from '../metrics.js';
import { viewHead } from './common.js';

const HEIGHT = 170;

function formatValue(unit, v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return '—';
  switch (unit) {
    case 'rate': return `${fmt.num(v)} /s`;
    case 'bytes': return `${fmt.bytes(v)}/s`;
    case 'seconds': return v < 1 ? `${fmt.num(v * 1000)} ms` : `${fmt.num(v)} s`;
    default: return fmt.num(v);
  }
}

function axisValue(unit, v) {
  if (unit === 'bytes') return fmt.bytes(v);
  if (unit === 'seconds') return v < 1 ? `${fmt.num(v * 1000)} ms` : `${fmt.num(v)} s`;
  return fmt.num(v);
}

function colors() {
  const css = getComputedStyle(document.documentElement);
  const get = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
  return {
    line: get('--chart-line', '#2563eb'),
    fill: get('--chart-fill', 'rgba(37, 99, 235, 0.12)'),
    axis: get('--muted', '#555'),
    grid: get('--grid', 'rgba(0, 0, 0, 0.08)'),
  };
}

function lastValue(ys) {
  for (let i = ys.length - 1; i >= 0; i -= 1) if (ys[i] !== null && Number.isFinite(ys[i])) return ys[i];
  return null;
}

export function metricsView(main) {
  const head = viewHead(main, 'Metrics', `KUBE's own /metrics, read every 2 s; the last ${WINDOW_SECS / 60} minutes.`);
  const grid = h('div', { class: 'charts' });
  main.append(grid);

  const charts = CHARTS.map((c) => {
    const value = h('p', { class: 'chart-value' }, '—');
    const plot = h('div', { class: 'plot', 'aria-hidden': 'true' });
    const figure = h('figure', { class: 'chart card', 'aria-label': c.title, 'data-samples': '0', 'data-last': '' },
      h('figcaption', {}, c.title), value, plot);
    grid.append(figure);
    return { c, figure, value, plot, u: null };
  });

  function build(ch) {
    if (ch.u) ch.u.destroy();
    const col = colors();
    const width = Math.max(200, Math.floor(ch.plot.clientWidth || 300));
    const axis = { stroke: col.axis, grid: { stroke: col.grid, width: 1 }, ticks: { stroke: col.grid, width: 1 } };
    ch.u = new uPlot({
      width,
      height: HEIGHT,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: {
        x: { time: true },
        y: { range: (u, min, max) => [0, max > 0 ? max * 1.15 : 1] },
      },
      series: [
        {},
        { label: ch.c.title, stroke: col.line, fill: col.fill, width: 2, spanGaps: false, points: { show: true, size: 3 } },
      ],
      axes: [
        { ...axis },
        { ...axis, size: 64, values: (u, splits) => splits.map((v) => axisValue(ch.c.unit, v)) },
      ],
    }, [[], []], ch.plot);
  }

  function draw() {
    const st = metricsState();
    if (st.error) head.error(`Cannot read /metrics: ${st.error}`);
    else head.ok();
    charts.forEach((ch, i) => {
      const s = st.series[i];
      if (!ch.u) build(ch);
      ch.u.setData([s.x.slice(), s.y.slice()]);
      const last = lastValue(s.y);
      ch.figure.setAttribute('data-samples', String(s.x.length));
      ch.figure.setAttribute('data-last', last === null ? '' : String(last));
      setText(ch.value, last === null ? 'no data yet' : formatValue(ch.c.unit, last));
    });
  }

  const resize = new ResizeObserver(() => {
    for (const ch of charts) {
      const w = Math.floor(ch.plot.clientWidth);
      if (ch.u && w > 0 && Math.abs(ch.u.width - w) > 2) ch.u.setSize({ width: Math.max(200, w), height: HEIGHT });
    }
  });
  resize.observe(grid);
  const scheme = window.matchMedia('(prefers-color-scheme: dark)');
  const rebuild = () => {
    for (const ch of charts) build(ch);
    draw();
  };
  scheme.addEventListener('change', rebuild);
  const unsubscribe = onMetrics(draw);
  // Build once laid out, so the charts take their container's width.
  const raf = requestAnimationFrame(() => draw());

  return () => {
    cancelAnimationFrame(raf);
    unsubscribe();
    resize.disconnect();
    scheme.removeEventListener('change', rebuild);
    for (const ch of charts) if (ch.u) ch.u.destroy();
  };
}
