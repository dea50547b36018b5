// The notes textarea's edit logic (src/notes.js) against real Automerge documents: a keystroke
// becomes one splice at the caret, and a remote patch moves the caret so that what this side
// types next stays in one piece. Run: npm test (node --test, no browser).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import * as A from '@automerge/automerge/slim';
import { caretSplice, movePosition } from '../src/notes.js';

await A.initializeWasm(readFileSync(createRequire(import.meta.url).resolve('@automerge/automerge/automerge.wasm')));

test('a keystroke is one splice at the caret, also between equal characters', () => {
  assert.deepEqual(caretSplice('ab', 'axb', 2), { index: 1, remove: 0, insert: 'x' });
  assert.deepEqual(caretSplice('a  b', 'a   b', 3), { index: 2, remove: 0, insert: ' ' });
  assert.deepEqual(caretSplice('abc', 'ac', 1), { index: 1, remove: 1, insert: '' }); // backspace
  assert.deepEqual(caretSplice('abcd', 'aXd', 2), { index: 1, remove: 2, insert: 'X' }); // over a selection
  assert.equal(caretSplice('abc', 'xyz', 1), undefined); // not an edit at the caret
});

test('remote patches move the caret; an insertion at the caret stays after it', () => {
  const patches = [
    { action: 'splice', path: ['text', 0], value: 'xx' },
    { action: 'splice', path: ['text', 5], value: 'yy' },
    { action: 'splice', path: ['text', 9], value: 'zz' }, // at the caret (9): it stays after it
    { action: 'del', path: ['text', 1], length: 1 },
  ];
  assert.equal(movePosition(5, patches), 8); // in order: 7, 9, 9 (the insertion at it), 8
  assert.equal(movePosition(0, [{ action: 'del', path: ['text', 0], length: 3 }]), 0);
  assert.equal(movePosition(2, [{ action: 'del', path: ['text', 0], length: 5 }]), 0);
  assert.equal(movePosition(4, [{ action: 'put', path: ['props', 'title'], value: 'x' }]), 4);
});

/** One side of the test: a doc, what its textarea shows, and its caret. */
function side(doc) {
  return { doc, shown: doc.text, caret: doc.text.length };
}
function type(s, ch) {
  const after = s.shown.slice(0, s.caret) + ch + s.shown.slice(s.caret);
  const edit = caretSplice(s.shown, after, s.caret + ch.length);
  s.doc = A.change(s.doc, (d) => A.splice(d, ['text'], edit.index, edit.remove, edit.insert));
  s.shown = after;
  s.caret += ch.length;
}
function receive(s, other) {
  const before = A.getHeads(s.doc);
  s.doc = A.merge(s.doc, other.doc);
  s.caret = movePosition(s.caret, A.diff(s.doc, before, A.getHeads(s.doc)));
  s.shown = s.doc.text;
}

test('two people appending at once, seeing each other between keystrokes, keep their words whole', () => {
  const base = A.from({ text: 'notes:' });
  const alice = side(A.clone(base, { actor: 'aa'.repeat(16) }));
  const bob = side(A.clone(base, { actor: 'bb'.repeat(16) }));
  const a = ' from alice';
  const b = ' from bob';
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if (i < a.length) type(alice, a[i]);
    if (i < b.length) type(bob, b[i]);
    // each keystroke reaches the other before the next one
    const [ad, bd] = [alice.doc, bob.doc];
    receive(alice, { doc: bd });
    receive(bob, { doc: ad });
  }
  assert.equal(alice.doc.text, bob.doc.text);
  assert.ok(alice.doc.text.includes('from alice'), alice.doc.text);
  assert.ok(alice.doc.text.includes('from bob'), alice.doc.text);
});
