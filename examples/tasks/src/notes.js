// A <textarea> bound to an object's collaborative `text`: local input becomes one Automerge
// splice at the caret (so concurrent typing merges character by character), and remote patches
// move the caret and selection the way the text around them moved.

import { splice, updateText } from '@automerge/automerge/slim';

const asText = (v) => (typeof v === 'string' ? v : v === undefined || v === null ? '' : String(v));

function commonPrefix(a, b) {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a.charCodeAt(i) === b.charCodeAt(i)) i++;
  return i;
}

/**
 * The one splice that turns `before` into `after` when the caret ended at `caret`: what
 * follows the caret is unchanged text, so the edit ends there. Undefined when that does not
 * hold (a drop, an undo elsewhere): the caller diffs the whole text instead.
 * @returns {{index: number, remove: number, insert: string}|undefined}
 */
export function caretSplice(before, after, caret) {
  const tail = after.length - caret;
  if (tail < 0 || tail > before.length || before.slice(before.length - tail) !== after.slice(caret)) return undefined;
  const oldMid = before.slice(0, before.length - tail);
  const newMid = after.slice(0, caret);
  const index = commonPrefix(oldMid, newMid);
  return { index, remove: oldMid.length - index, insert: newMid.slice(index) };
}

/**
 * Where `pos` goes when the text changes by `patches` (Automerge patches; only those at
 * `['text', i]` matter). A remote insertion exactly at the caret stays after it, so what this
 * side types next stays in one piece.
 */
export function movePosition(pos, patches) {
  for (const p of patches) {
    if (p.path?.length !== 2 || p.path[0] !== 'text' || typeof p.path[1] !== 'number') continue;
    const i = p.path[1];
    if (p.action === 'splice') {
      if (i < pos) pos += asText(p.value).length;
    } else if (p.action === 'del') {
      const n = p.length ?? 1;
      if (i < pos) pos -= Math.min(n, pos - i);
    }
  }
  return pos;
}

/** Binds `el` to handles given one after another with `show(handle)` (undefined: none). */
export function bindNotes(el, { canWrite }) {
  let handle;
  let composing = false;
  let pending; // a remote change that arrived mid-composition

  const text = () => {
    try {
      return asText(handle?.isReady() ? handle.doc()?.text : '');
    } catch {
      return '';
    }
  };

  const onChange = ({ doc, patches, patchInfo }) => {
    const next = asText(doc?.text);
    if (el.value === next) return; // our own change, or nothing for the text
    if (composing) {
      pending = true;
      return;
    }
    const shown = el.value;
    const focused = document.activeElement === el;
    const { selectionStart: s, selectionEnd: e, selectionDirection: dir } = el;
    const before = asText(patchInfo?.before?.text);
    el.value = next;
    if (!focused) return;
    if (before === shown) {
      el.setSelectionRange(movePosition(s, patches), movePosition(e, patches), dir);
    } else {
      el.setSelectionRange(Math.min(s, next.length), Math.min(e, next.length), dir);
    }
  };

  const apply = () => {
    if (!handle?.isReady() || !canWrite()) return;
    const before = text();
    const after = el.value;
    if (before === after) return;
    const edit = caretSplice(before, after, el.selectionEnd);
    handle.change((d) => {
      if (typeof d.text !== 'string') d.text = '';
      if (edit && d.text === before) splice(d, ['text'], edit.index, edit.remove, edit.insert);
      else updateText(d, ['text'], after);
    });
  };

  el.addEventListener('input', () => {
    if (!composing) apply();
  });
  el.addEventListener('compositionstart', () => {
    composing = true;
  });
  el.addEventListener('compositionend', () => {
    composing = false;
    apply();
    if (pending) {
      pending = false;
      const next = text();
      if (el.value !== next) el.value = next;
    }
  });

  return {
    show(h) {
      if (h === handle) return;
      handle?.off('change', onChange);
      handle = h;
      handle?.on('change', onChange);
      el.value = text();
    },
    /** Brings the box level with the doc (after the handle became ready). */
    refresh() {
      if (!composing && document.activeElement !== el) {
        const next = text();
        if (el.value !== next) el.value = next;
      }
    },
    get handle() {
      return handle;
    },
  };
}
