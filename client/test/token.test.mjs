// The ECHO auth token of echo/PROTOCOL.md §1, checked independently of the package's code.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { Identity, makeEchoToken, verifyEchoToken, echoTokenMessage } from '../index.js';

const seed = (b) => new Uint8Array(32).fill(b);
const nodeKey = (raw) => crypto.createPublicKey({
  key: Buffer.concat([Buffer.from('302a300506032b6570032100', 'hex'), Buffer.from(raw)]),
  format: 'der',
  type: 'spki',
});

const alice = Identity.fromSeed(seed(1));
const kube = Identity.fromSeed(seed(9));

test('token: base64url(no padding) JSON {did, peer, aud, ts, nonce, sig}, sig over the exact string', () => {
  const token = makeEchoToken({
    identity: alice, peer: 'peer-abc123', aud: kube.did, ts: 1_700_000_000, nonce: '0123456789abcdef0123456789abcdef',
  });
  assert.match(token, /^[A-Za-z0-9_-]+$/, 'base64url alphabet, no padding: safe in a query string as is');
  const json = Buffer.from(token, 'base64url').toString('utf8');
  assert.equal(Buffer.from(json, 'utf8').toString('base64url'), token, 'exactly base64url of the UTF-8 JSON');
  const t = JSON.parse(json);
  assert.deepEqual(Object.keys(t), ['did', 'peer', 'aud', 'ts', 'nonce', 'sig']);
  assert.equal(t.did, alice.did);
  assert.equal(t.peer, 'peer-abc123');
  assert.equal(t.aud, kube.did);
  assert.equal(t.ts, 1_700_000_000);
  assert.equal(t.nonce, '0123456789abcdef0123456789abcdef');

  // The signed string, written out by hand.
  const signed = `kube-echo-v1\n${kube.did}\npeer-abc123\n${alice.did}\n1700000000\n0123456789abcdef0123456789abcdef`;
  assert.equal(echoTokenMessage(t), signed);
  const sig = Buffer.from(t.sig, 'base64url');
  assert.equal(sig.length, 64);
  assert.equal(sig.toString('base64url'), t.sig, 'sig is base64url without padding');
  assert.ok(crypto.verify(null, Buffer.from(signed, 'utf8'), nodeKey(alice.publicKey), sig), 'OpenSSL verifies sig');
  assert.ok(!crypto.verify(null, Buffer.from(signed + 'x', 'utf8'), nodeKey(alice.publicKey), sig));

  assert.deepEqual(verifyEchoToken(token, { aud: kube.did, now: 1_700_000_030 }), t);
  assert.throws(() => verifyEchoToken(token, { aud: alice.did, now: 1_700_000_030 }), /another KUBE/);
  assert.throws(() => verifyEchoToken(token, { aud: kube.did, now: 1_700_000_061 }), /window/);
});

test('a forged token does not verify', () => {
  const mallory = Identity.fromSeed(seed(5));
  const t = JSON.parse(Buffer.from(makeEchoToken({ identity: mallory, peer: 'p', aud: kube.did }), 'base64url').toString());
  t.did = alice.did; // claim to be alice with mallory's signature
  const forged = Buffer.from(JSON.stringify(t)).toString('base64url');
  assert.throws(() => verifyEchoToken(forged, { aud: kube.did }), /signature/);
});

test('fresh tokens: now, a new 32-hex nonce each time', () => {
  const before = Math.floor(Date.now() / 1000);
  const a = verifyEchoToken(makeEchoToken({ identity: alice, peer: 'p1', aud: kube.did }), { aud: kube.did });
  const b = verifyEchoToken(makeEchoToken({ identity: alice, peer: 'p1', aud: kube.did }), { aud: kube.did });
  assert.match(a.nonce, /^[0-9a-f]{32}$/);
  assert.notEqual(a.nonce, b.nonce);
  assert.ok(a.ts >= before && a.ts <= before + 2);
});

test('a peer with a newline and malformed nonces are refused', () => {
  assert.throws(() => makeEchoToken({ identity: alice, peer: 'a\nb', aud: kube.did }), /newline/);
  assert.throws(() => makeEchoToken({ identity: alice, peer: 'p', aud: kube.did, nonce: 'xyz' }), /nonce/);
  assert.throws(() => makeEchoToken({ identity: alice, peer: 'p', aud: kube.did, nonce: 'ABCDEF0123456789' }), /nonce/);
});
