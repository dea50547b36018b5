// The peer-to-peer authentication exchange (src/peer-auth.js), between in-memory peers: a valid
// exchange, a man in the middle of signaling, wrong dids, replays, bad session descriptions.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  Identity, startAuth, verifyProof, makeProof, sdpFingerprint, proofMessage, encodeAuth, decodeAuth,
  AuthError, Authenticated, b64url,
} from '../index.js';

/** A colon-separated upper-case SHA-256 fingerprint made of one repeated byte. */
const fp = (byte) => Array(32).fill(byte.toString(16).padStart(2, '0').toUpperCase()).join(':');

/** A minimal data-channel SDP naming `fingerprint` (at session and media level, as browsers do). */
const sdp = (fingerprint, { lower = false, extra = '' } = {}) => [
  'v=0', 'o=- 1 2 IN IP4 127.0.0.1', 's=-', 't=0 0',
  `a=fingerprint:sha-256 ${lower ? fingerprint.toLowerCase() : fingerprint}`,
  'm=application 9 UDP/DTLS/SCTP webrtc-datachannel', 'c=IN IP4 0.0.0.0', 'a=mid:0',
  `a=fingerprint:sha-256 ${fingerprint}`, extra, '',
].filter((l, i, a) => l !== '' || i === a.length - 1).join('\r\n');

const alice = Identity.generate();
const bob = Identity.generate();
const mallory = Identity.generate();

/** Runs both sides; `aliceView`/`bobView` are each side's {localSdp, remoteSdp}. */
function exchange({ aliceView, bobView, aliceRemoteDid = bob.did, bobRemoteDid = alice.did }) {
  const a = startAuth({ identity: alice, peerId: 'peer-alice', remoteDid: aliceRemoteDid, ...aliceView });
  const b = startAuth({ identity: bob, peerId: 'peer-bob', remoteDid: bobRemoteDid, ...bobView });
  // Over the wire: UTF-8 JSON.
  const toBob = encodeAuth(a.send);
  const toAlice = encodeAuth(b.send);
  return {
    a, b,
    atBob: () => b.next.receive(toBob),
    atAlice: () => a.next.receive(toAlice),
  };
}

const A = fp(0xa1);
const B = fp(0xb2);

test('a valid exchange proves both dids and peerIds', () => {
  const { a, atBob, atAlice } = exchange({
    aliceView: { localSdp: sdp(A), remoteSdp: sdp(B) },
    bobView: { localSdp: sdp(B), remoteSdp: sdp(A, { lower: true }) }, // case does not matter
  });
  assert.deepEqual(Object.keys(a.send).sort(), ['did', 'peerId', 'sig', 'type']);
  assert.equal(a.send.type, 'auth');
  assert.equal(a.send.did, alice.did);
  const provenAlice = atBob();
  assert.ok(provenAlice instanceof Authenticated);
  assert.deepEqual({ ...provenAlice }, { did: alice.did, peerId: 'peer-alice' });
  assert.deepEqual({ ...atAlice() }, { did: bob.did, peerId: 'peer-bob' });
});

test('the signature covers exactly kube-p2p-v1\\n<own fp>\\n<remote fp>\\n<own did>\\n<own peerId>\\n<remote did>', () => {
  const m = makeProof({ identity: alice, peerId: 'p1', remoteDid: bob.did, localSdp: sdp(A), remoteSdp: sdp(B) });
  const text = `kube-p2p-v1\n${A}\n${B}\n${alice.did}\np1\n${bob.did}`;
  assert.equal(proofMessage({ ownFingerprint: A, remoteFingerprint: B, ownDid: alice.did, ownPeerId: 'p1', remoteDid: bob.did }), text);
  assert.deepEqual(b64url.decode(m.sig), alice.sign(new TextEncoder().encode(text)));
});

test('a man in the middle who swapped the fingerprints in signaling fails both ways', () => {
  // Mallory relays signaling and terminates DTLS with both: Alice holds M1 as Bob's
  // fingerprint, Bob holds M2 as Alice's.
  const M1 = fp(0x01);
  const M2 = fp(0x02);
  const { atBob, atAlice } = exchange({
    aliceView: { localSdp: sdp(A), remoteSdp: sdp(M1) },
    bobView: { localSdp: sdp(B), remoteSdp: sdp(M2) },
  });
  assert.throws(atBob, (e) => e instanceof AuthError && e.code === 'bad-signature');
  assert.throws(atAlice, (e) => e instanceof AuthError && e.code === 'bad-signature');
});

test('a man in the middle who adds a fingerprint of another hash is refused', () => {
  // RFC 8122 §5: the endpoint would check the certificate against the stronger sha-512 only.
  const added = sdp(A, { extra: `a=fingerprint:sha-512 ${Array(64).fill('0C').join(':')}` });
  assert.throws(() => sdpFingerprint(added), (e) => e.code === 'other-hash');
  assert.throws(
    () => startAuth({ identity: bob, peerId: 'peer-bob', remoteDid: alice.did, localSdp: sdp(B), remoteSdp: added }),
    (e) => e.code === 'other-hash',
  );
});

test('a proof for another did than signaling named is refused, even if it verifies', () => {
  // Mallory (a valid key) answers where signaling said Alice would be.
  const m = makeProof({ identity: mallory, peerId: 'peer-m', remoteDid: bob.did, localSdp: sdp(A), remoteSdp: sdp(B) });
  const view = { ownDid: bob.did, remoteDid: alice.did, localSdp: sdp(B), remoteSdp: sdp(A) };
  assert.throws(() => verifyProof(m, view), (e) => e.code === 'wrong-did');
  // And Alice's genuine proof is refused where signaling named someone else.
  const { atBob } = exchange({
    aliceView: { localSdp: sdp(A), remoteSdp: sdp(B) },
    bobView: { localSdp: sdp(B), remoteSdp: sdp(A) },
    bobRemoteDid: mallory.did,
  });
  assert.throws(atBob, (e) => e.code === 'wrong-did');
});

test('a proof naming another remote did does not verify', () => {
  // Alice made this proof for Mallory; Mallory forwards it to Bob over the same fingerprints.
  const m = makeProof({ identity: alice, peerId: 'peer-alice', remoteDid: mallory.did, localSdp: sdp(A), remoteSdp: sdp(B) });
  assert.throws(() => verifyProof(m, { ownDid: bob.did, remoteDid: alice.did, localSdp: sdp(B), remoteSdp: sdp(A) }), (e) => e.code === 'bad-signature');
});

test('a proof replayed from another session fails', () => {
  const old = makeProof({ identity: alice, peerId: 'peer-alice', remoteDid: bob.did, localSdp: sdp(A), remoteSdp: sdp(B) });
  // A new session: new certificates on both sides.
  const view = { ownDid: bob.did, remoteDid: alice.did, localSdp: sdp(fp(0xb3)), remoteSdp: sdp(fp(0xa4)) };
  assert.throws(() => verifyProof(old, view), (e) => e.code === 'bad-signature');
  // Even when the attacker kept one side's certificate.
  assert.throws(() => verifyProof(old, { ...view, remoteSdp: sdp(A) }), (e) => e.code === 'bad-signature');
});

test('a proof with a changed peerId does not verify', () => {
  const m = makeProof({ identity: alice, peerId: 'peer-alice', remoteDid: bob.did, localSdp: sdp(A), remoteSdp: sdp(B) });
  const view = { ownDid: bob.did, remoteDid: alice.did, localSdp: sdp(B), remoteSdp: sdp(A) };
  assert.throws(() => verifyProof({ ...m, peerId: 'peer-kube' }, view), (e) => e.code === 'bad-signature');
});

test('an SDP with no, several different, or malformed sha-256 fingerprints is refused', () => {
  assert.equal(sdpFingerprint(sdp(A)), A);
  assert.equal(sdpFingerprint(sdp(A, { lower: true })), A);
  assert.throws(() => sdpFingerprint('v=0\r\ns=-\r\n'), (e) => e.code === 'no-fingerprint');
  assert.throws(() => sdpFingerprint(undefined), (e) => e.code === 'no-fingerprint');
  assert.throws(() => sdpFingerprint(sdp(A, { extra: `a=fingerprint:sha-256 ${B}` })), (e) => e.code === 'several-fingerprints');
  assert.throws(() => sdpFingerprint(sdp(A, { extra: 'a=fingerprint:sha-256 AB:CD' })), (e) => e.code === 'no-fingerprint');
  // Our own description is checked too, before anything is signed.
  assert.throws(
    () => startAuth({ identity: alice, peerId: 'p', remoteDid: bob.did, localSdp: sdp(A, { extra: `a=fingerprint:sha-256 ${B}` }), remoteSdp: sdp(B) }),
    (e) => e.code === 'several-fingerprints',
  );
});

test('malformed messages and peerIds are refused; the state takes one proof only', () => {
  const view = { ownDid: bob.did, remoteDid: alice.did, localSdp: sdp(B), remoteSdp: sdp(A) };
  const good = makeProof({ identity: alice, peerId: 'peer-alice', remoteDid: bob.did, localSdp: sdp(A), remoteSdp: sdp(B) });
  assert.throws(() => verifyProof(null, view), (e) => e.code === 'bad-message');
  assert.throws(() => verifyProof({ ...good, type: 'hello' }, view), (e) => e.code === 'bad-message');
  assert.throws(() => verifyProof({ ...good, extra: 1 }, view), (e) => e.code === 'bad-message');
  assert.throws(() => verifyProof({ ...good, sig: '!!' }, view), (e) => e.code === 'bad-message');
  assert.throws(() => verifyProof({ ...good, peerId: '' }, view), (e) => e.code === 'bad-peer-id');
  assert.throws(() => verifyProof({ ...good, peerId: 'a\nb' }, view), (e) => e.code === 'bad-peer-id');
  assert.throws(() => verifyProof({ ...good, peerId: 7 }, view), (e) => e.code === 'bad-peer-id');
  assert.throws(() => decodeAuth(new TextEncoder().encode('{nope')), (e) => e.code === 'bad-message');
  assert.throws(() => decodeAuth(new Uint8Array(5000)), (e) => e.code === 'bad-message');
  assert.throws(() => makeProof({ identity: alice, peerId: '', remoteDid: bob.did, localSdp: sdp(A), remoteSdp: sdp(B) }), (e) => e.code === 'misuse');

  const { b } = exchange({ aliceView: { localSdp: sdp(A), remoteSdp: sdp(B) }, bobView: { localSdp: sdp(B), remoteSdp: sdp(A) } });
  assert.throws(() => b.next.receive({ ...good, sig: good.sig.replace(/^./, (c) => (c === 'A' ? 'B' : 'A')) }), (e) => e.code === 'bad-signature');
  assert.throws(() => b.next.receive(good), (e) => e.code === 'misuse');
});
