// Small DOM helpers. Text always goes in as text (never as HTML), so nothing the API returns
// can become markup.

/**
 * `h('button', {type: 'button', onclick: fn}, 'Text')`. Attributes: `class`, `on<event>`
 * listeners, booleans (set when true, left out when false), `null`/`undefined` left out;
 * children: nodes, strings, numbers, arrays of them, `null`/`false` skipped.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') {
      el.addEventListener(k.slice(2), v);
    } else if (k === 'value' || k === 'checked' || k === 'selected') {
      el[k] = v;
    } else if (v === true) {
      el.setAttribute(k, '');
    } else {
      el.setAttribute(k, String(v));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Replaces every child of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

let fieldSeq = 0;
/** A fresh id for a label's `for`. */
export function uid(prefix = 'f') {
  fieldSeq += 1;
  return `${prefix}-${fieldSeq}`;
}

/** A labelled control: `<div class="field"><label for>text</label>control</div>`. */
export function field(label, control, hint) {
  if (!control.id) control.id = uid();
  const parts = [h('label', { for: control.id }, label), control];
  if (hint) {
    const hintEl = h('small', { class: 'hint', id: uid('hint') }, hint);
    control.setAttribute('aria-describedby', hintEl.id);
    parts.push(hintEl);
  }
  return h('div', { class: 'field' }, parts);
}

/**
 * The alert regions (role="alert") hold errors. Only one is shown at a time, so a screen
 * reader hears the latest and nothing stale stays on screen; an empty one is `hidden`.
 */
export function alertBox() {
  return h('p', { role: 'alert', class: 'alert', hidden: true });
}

export function showAlert(el, message) {
  for (const other of document.querySelectorAll('[role="alert"]')) {
    if (other !== el) clearAlert(other);
  }
  el.textContent = message;
  el.hidden = false;
  if (typeof el.scrollIntoView === 'function') el.scrollIntoView({ block: 'nearest' });
}

export function clearAlert(el) {
  if (!el) return;
  el.textContent = '';
  el.hidden = true;
}

/** A polite live region for what went right. */
export function statusBox() {
  return h('p', { role: 'status', class: 'status' });
}

/**
 * A table in a horizontally scrolling wrapper (focusable, so it scrolls from the keyboard);
 * `head` is a list of column titles. The caption names the table for screen readers; it is
 * shown only with `showCaption` (a heading above usually says the same).
 */
export function table(caption, head, { className, showCaption = false } = {}) {
  const tbody = h('tbody');
  const t = h('table', { class: className },
    caption ? h('caption', { class: showCaption ? null : 'sr-only' }, caption) : null,
    h('thead', {}, h('tr', {}, head.map((c) => h('th', { scope: 'col' }, c)))),
    tbody);
  const wrap = h('div', { class: 'table-wrap', tabindex: '0', role: 'region', 'aria-label': caption || head.join(', ') }, t);
  return { wrap, table: t, tbody };
}

/**
 * Keeps a tbody's rows in step with `items` without rebuilding rows that stay, so a focused
 * button in a row keeps its focus across a refresh. `create(item)` returns a `<tr>` and
 * `update(tr, item)` refreshes it.
 */
export function syncRows(tbody, items, key, create, update) {
  const old = new Map();
  for (const tr of tbody.children) old.set(tr.dataset.key, tr);
  let prev = null;
  for (const item of items) {
    const k = key(item);
    let tr = old.get(k);
    if (tr) {
      old.delete(k);
    } else {
      tr = create(item);
      tr.dataset.key = k;
    }
    update(tr, item);
    const want = prev ? prev.nextSibling : tbody.firstChild;
    if (want !== tr) tbody.insertBefore(tr, want);
    prev = tr;
  }
  for (const tr of old.values()) tr.remove();
}

/** Sets a node's text only when it changed (keeps selections and screen readers calm). */
export function setText(el, text) {
  const s = String(text);
  if (el.textContent !== s) el.textContent = s;
}
