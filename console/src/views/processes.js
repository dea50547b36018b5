// Processes: `GET /api/processes` every 2 s — state, readiness, pid, port, restarts, last
// exit; "Restart <name>" (`POST /api/processes/<name>/restart`) and "Logs <name>", which
// tails `GET /api/processes/<name>/logs?lines=200&since=<ms>` every 2 s into a <pre>.

import { api, seg } from '../api.js';
import { h, replace, setText, statusBox, syncRows, table } from '../dom.js';
import { busy, every, viewHead } from './common.js';

const POLL_MS = 2000;
const MAX_LOG_LINES = 5000;

/** The unix ms a log line starts with (`2026-12-03T08:39:41.132Z out …`), or NaN. */
function lineMs(line) {
  const sp = line.indexOf(' ');
  return Date.parse(sp > 0 ? line.slice(0, sp) : line);
}

export function processesView(main) {
  const head = viewHead(main, 'Processes', null, () => load());
  const status = statusBox();
  const procs = table('Supervised processes', ['Name', 'State', 'Ready', 'PID', 'Port', 'Restarts', 'Last exit', 'Actions']);
  const empty = h('p', { class: 'muted', hidden: true }, 'No process is configured (processes in kube.yml).');
  const logSection = h('section', { class: 'log', hidden: true });
  main.append(
    h('section', {}, procs.wrap, empty, status),
    logSection,
  );

  let tail = null; // {name, stop}

  function openLog(name) {
    if (tail) tail.stop();
    const pre = h('pre', { class: 'logtext', role: 'region', 'aria-label': `Log of ${name}`, tabindex: '0' });
    const follow = h('input', { type: 'checkbox', id: 'log-follow', checked: true });
    const note = h('p', { class: 'muted' });
    const close = h('button', { type: 'button', class: 'secondary', onclick: () => closeLog() }, 'Close log');
    logSection.hidden = false;
    replace(logSection,
      h('div', { class: 'view-head' }, h('h2', { id: 'proc-log' }, `Log of ${name}`), close),
      h('div', { class: 'checkbox' }, follow, h('label', { for: 'log-follow' }, 'Follow (scroll to new lines)')),
      pre, note);
    let lastMs = null;
    let atLast = []; // lines already shown whose time is lastMs
    let count = 0;
    let loaded = false;
    const addLines = (lines) => {
      // `since` returns the lines at or after it: those at `lastMs` were shown already.
      const shown = atLast.slice();
      const fresh = [];
      for (const line of lines) {
        const ms = lineMs(line);
        if (Number.isNaN(ms)) {
          if (!loaded) fresh.push(line); // KUBE keeps these in every answer: show them once
          continue;
        }
        if (lastMs !== null && ms < lastMs) continue;
        if (ms === lastMs) {
          const i = shown.indexOf(line);
          if (i >= 0) {
            shown.splice(i, 1);
            continue;
          }
        }
        fresh.push(line);
      }
      loaded = true;
      let newest = lastMs;
      for (const line of lines) {
        const ms = lineMs(line);
        if (!Number.isNaN(ms) && (newest === null || ms > newest)) newest = ms;
      }
      if (newest !== null && lines.length) {
        lastMs = newest;
        atLast = lines.filter((l) => lineMs(l) === newest);
      }
      if (!fresh.length) return;
      const nearBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40;
      pre.append(document.createTextNode(`${fresh.join('\n')}\n`));
      count += fresh.length;
      if (count > MAX_LOG_LINES) {
        const text = pre.textContent.split('\n');
        const keep = text.slice(text.length - 1 - MAX_LOG_LINES).join('\n');
        pre.textContent = keep;
        count = MAX_LOG_LINES;
      }
      if (follow.checked || nearBottom) pre.scrollTop = pre.scrollHeight;
    };
    const fetchLines = async () => {
      const q = lastMs === null ? 'lines=200' : `lines=200&since=${lastMs}`;
      try {
        const r = await api('GET', `/api/processes/${seg(name)}/logs?${q}`);
        addLines(r.lines || []);
        note.textContent = count ? '' : 'No output yet.';
      } catch (e) {
        head.error(e);
      }
    };
    const stop = every(POLL_MS, fetchLines);
    tail = { name, stop };
    pre.focus({ preventScroll: true });
    logSection.scrollIntoView({ block: 'nearest' });
  }

  function closeLog() {
    if (tail) tail.stop();
    tail = null;
    logSection.hidden = true;
    replace(logSection);
  }

  function createRow(p) {
    const restart = h('button', { type: 'button', class: 'small' }, `Restart ${p.name}`);
    restart.addEventListener('click', () => busy(restart, async () => {
      head.ok();
      status.textContent = '';
      const r = await api('POST', `/api/processes/${seg(p.name)}/restart`);
      status.textContent = `Restarting ${p.name} (it was ${r.state}).`;
      await load();
    }, head.error));
    const logs = h('button', { type: 'button', class: 'secondary small', onclick: () => openLog(p.name) }, `Logs ${p.name}`);
    return h('tr', {},
      h('th', { scope: 'row' }),
      h('td', { class: 'wrap' }), h('td'), h('td'), h('td'), h('td'), h('td'),
      h('td', {}, h('div', { class: 'buttons' }, restart, logs)));
  }

  function updateRow(tr, p) {
    const c = tr.cells;
    setText(c[0], p.name);
    setText(c[1], p.state + (p.notice ? ` — ${p.notice}` : '') + (p.next_start_ms ? ` (next start in ${Math.ceil(p.next_start_ms / 1000)} s)` : ''));
    c[1].className = `wrap state state-${String(p.state).replace(/[^a-z-]/g, '')}`;
    setText(c[2], p.ready === null || p.ready === undefined ? '—' : p.ready ? 'yes' : 'no');
    setText(c[3], p.pid ?? '—');
    setText(c[4], p.port ?? '—');
    setText(c[5], p.restarts ?? 0);
    setText(c[6], p.last_exit ?? '—');
  }

  let listFailed = false; // the alert shows a failed refresh: the next good one clears it
  async function load() {
    let r;
    try {
      r = await api('GET', '/api/processes');
    } catch (e) {
      head.error(e);
      listFailed = true;
      return;
    }
    if (listFailed) head.ok();
    listFailed = false;
    const list = r.processes || [];
    empty.hidden = list.length > 0;
    syncRows(procs.tbody, list, (p) => p.name, createRow, updateRow);
  }

  const stopList = every(POLL_MS, load);
  return () => {
    stopList();
    if (tail) tail.stop();
  };
}
