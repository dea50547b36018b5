// Framing of the peer-to-peer data channel (src/chunk.js): round trips at the edges, bounds,
// and what must close a connection.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  frames, frameCount, Reassembler, FramingError, encodeMessage, decodeMessage, LAST, MORE, KIND_AUTH, KIND_AUTOMERGE,
} from '../index.js';

const CHUNK = 64;

function message(n) {
  const m = new Uint8Array(n);
  for (let i = 0; i < n; i++) m[i] = (i * 31 + 7) & 0xff;
  return m;
}

/** Feeds every frame to a reassembler; returns [completed messages], checking frame sizes. */
function roundTrip(msgs, chunkSize, max = 1 << 20) {
  const r = new Reassembler(max);
  const out = [];
  for (const m of msgs) {
    const fs = [...frames(m, chunkSize)];
    assert.equal(fs.length, frameCount(m.length, chunkSize));
    fs.forEach((f, i) => {
      assert.ok(f.length <= chunkSize && f.length >= 1);
      assert.equal(f[0], i === fs.length - 1 ? LAST : MORE);
      // As a data channel delivers it: an ArrayBuffer of its own.
      const got = r.push(f.slice().buffer);
      if (i < fs.length - 1) assert.equal(got, undefined);
      else out.push(got);
    });
  }
  return out;
}

test('round trips at 0, 1, chunkSize-1, chunkSize and 10×chunkSize+3 bytes', () => {
  for (const n of [0, 1, CHUNK - 1, CHUNK, 10 * CHUNK + 3]) {
    const m = message(n);
    const [got] = roundTrip([m], CHUNK);
    assert.deepEqual(got, m, `size ${n}`);
  }
});

test('frames carry chunkSize - 1 payload bytes, the flag included in chunkSize', () => {
  assert.equal([...frames(message(0), CHUNK)].length, 1);
  assert.deepEqual([...frames(message(0), CHUNK)][0], Uint8Array.of(LAST));
  assert.equal([...frames(message(CHUNK - 1), CHUNK)].length, 1);
  assert.equal([...frames(message(CHUNK), CHUNK)].length, 2);
  assert.equal([...frames(message(10 * CHUNK + 3), CHUNK)].length, 11);
  assert.equal(frameCount(16 * 1024 * 10, 16 * 1024), 11);
});

test('consecutive messages of mixed sizes reassemble in order; byte views are accepted', () => {
  const msgs = [message(5), message(0), message(3 * CHUNK), message(1)];
  assert.deepEqual(roundTrip(msgs, CHUNK), msgs);
  const r = new Reassembler(100);
  const inner = new Uint8Array([9, 9, LAST, 1, 2, 9]).subarray(2, 5);
  assert.deepEqual(r.push(inner), Uint8Array.of(1, 2));
});

test('a message over maxMessageBytes is refused before it is buffered', () => {
  const r = new Reassembler(2 * CHUNK);
  const fs = [...frames(message(3 * CHUNK), CHUNK)];
  assert.equal(r.push(fs[0]), undefined);
  assert.equal(r.push(fs[1]), undefined);
  assert.throws(() => r.push(fs[2]), (e) => e instanceof FramingError && e.code === 'too-large');
  assert.equal(r.pendingBytes, 0);
  // Exactly at the bound is fine.
  assert.deepEqual(roundTrip([message(2 * CHUNK)], CHUNK, 2 * CHUNK)[0], message(2 * CHUNK));
});

test('garbage flags, empty frames and text frames are refused', () => {
  const r = new Reassembler(1000);
  assert.throws(() => r.push(Uint8Array.of(2, 1, 2)), (e) => e.code === 'bad-flag');
  assert.throws(() => r.push(Uint8Array.of(0xff)), (e) => e.code === 'bad-flag');
  assert.throws(() => r.push(new Uint8Array(0)), (e) => e.code === 'empty-frame');
  assert.throws(() => r.push('\x00hello'), (e) => e.code === 'not-binary');
  assert.throws(() => r.push({ length: 3 }), (e) => e.code === 'not-binary');
});

test('chunkSize below 2 is a misuse', () => {
  assert.throws(() => [...frames(message(3), 1)], RangeError);
  assert.throws(() => [...frames(message(3), 2.5)], RangeError);
});

test('a message is its kind byte and body; unknown kinds and empty messages are refused', () => {
  const body = Uint8Array.of(1, 2, 3);
  for (const kind of [KIND_AUTH, KIND_AUTOMERGE]) {
    const m = encodeMessage(kind, body);
    assert.equal(m[0], kind);
    const d = decodeMessage(m);
    assert.equal(d.kind, kind);
    assert.deepEqual(d.body, body);
  }
  assert.throws(() => decodeMessage(new Uint8Array(0)), (e) => e.code === 'empty-message');
  assert.throws(() => decodeMessage(Uint8Array.of(7, 1)), (e) => e.code === 'unknown-kind');
});

test('one payload byte per frame (chunkSize 2) reassembles into one buffer', () => {
  const m = message(5000);
  const [got] = roundTrip([m], 2, 5000);
  assert.deepEqual(got, m);
  assert.equal(frameCount(5000, 2), 5000);
});
