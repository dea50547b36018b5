// What every view shares: a heading with a Refresh button, an alert, periodic refresh.

import { alertBox, clearAlert, h, showAlert } from '../dom.js';

/**
 * Renders a view's head into `main`: `<h1>` (focused on navigation), an optional intro, a
 * Refresh button calling `refresh`, and the view's alert. Returns `{alert, error, ok}`:
 * `error(e)` shows an Error's message, `ok()` hides the alert.
 */
export function viewHead(main, title, intro, refresh) {
  const alert = alertBox();
  const head = h('div', { class: 'view-head' },
    h('h1', { tabindex: '-1' }, title),
    refresh ? h('button', { type: 'button', class: 'secondary', onclick: () => refresh() }, 'Refresh') : null);
  main.append(head);
  if (intro) main.append(h('p', { class: 'lead' }, intro));
  main.append(alert);
  return {
    alert,
    error: (e) => showAlert(alert, e && e.message ? e.message : String(e)),
    ok: () => clearAlert(alert),
  };
}

/** Runs `fn` now and every `ms` (not overlapping) until the returned stop is called. */
export function every(ms, fn) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    timer = null;
    if (stopped) return;
    try {
      await fn();
    } finally {
      if (!stopped) timer = setTimeout(tick, ms);
    }
  };
  tick();
  return () => {
    stopped = true;
    if (timer) clearTimeout(timer);
  };
}

/** A `<dl>` of `[term, value]` pairs (values: text or nodes). */
export function facts(pairs) {
  return h('dl', { class: 'facts' }, pairs.filter(Boolean).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

/**
 * Shows `pairs` in `container` as a `<dl>`, touching only the values whose text changed (so
 * a selection in the others stays while a view refreshes).
 */
export function updateFacts(container, pairs) {
  pairs = pairs.filter(Boolean);
  const dl = container.firstElementChild;
  const terms = dl ? [...dl.querySelectorAll('dt')].map((dt) => dt.textContent) : [];
  if (!dl || terms.join('\n') !== pairs.map(([k]) => k).join('\n')) {
    container.replaceChildren(facts(pairs));
    return;
  }
  const dds = dl.querySelectorAll('dd');
  pairs.forEach(([, v], i) => {
    const text = v instanceof Node ? v.textContent : String(v);
    if (dds[i].textContent !== text) dds[i].replaceChildren(v);
  });
}

/** A button that asks for a second click before `action`: its text becomes `confirmText`. */
export function confirmButton(text, confirmText, action, { className = 'danger' } = {}) {
  let armed = false;
  let timer = null;
  const disarm = () => {
    armed = false;
    if (timer) clearTimeout(timer);
    timer = null;
    btn.textContent = text;
    btn.classList.remove('armed');
  };
  const btn = h('button', {
    type: 'button',
    class: className,
    onclick: async () => {
      if (!armed) {
        armed = true;
        btn.textContent = confirmText;
        btn.classList.add('armed');
        timer = setTimeout(disarm, 10_000);
        return;
      }
      disarm();
      btn.disabled = true;
      try {
        await action();
      } finally {
        btn.disabled = false;
      }
    },
    onkeydown: (e) => {
      if (e.key === 'Escape' && armed) disarm();
    },
  }, text);
  return btn;
}

/** Runs an action from a button: disabled while it runs, errors to `onError`. */
export async function busy(button, work, onError) {
  button.disabled = true;
  try {
    return await work();
  } catch (e) {
    onError(e);
    return undefined;
  } finally {
    button.disabled = false;
  }
}
