// The invitation exchange of halo/CREDENTIALS.md (halo/src/invitation.rs), host and guest state
// machines talking directly, mirroring halo's invitation tests.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import {
  Identity, Host, Guest, InvitationError, createInvitation, invitationSwarm, newCode, transcript, codeMac,
  verifyCredential, CODE_ATTEMPTS, isDocumentId,
} from '../index.js';

const NOW = 1_000;
const key = (b) => Identity.fromSeed(new Uint8Array(32).fill(b));
const bytes = (b) => new Uint8Array(32).fill(b);

function invitation(host, method = { type: 'code' }) {
  return {
    id: '00112233445566778899aabbccddeeff',
    space: key(9).did,
    role: 'editor',
    host: host.did,
    expires: NOW + 600,
    method,
  };
}

/** One attempt: hello, challenge, proof, answer; returns the credential or throws the refusal. */
function attempt(host, inv, guestKey, code, now = NOW, seed = 1) {
  const guest = new Guest({ invitation: inv, code, key: guestKey, random: bytes(seed) });
  const from = guestKey.did;
  // Messages travel as JSON signaling payloads.
  const wire = (m) => JSON.parse(JSON.stringify(m));
  const challenge = host.handle(from, wire(guest.hello), { now, random: bytes((seed + 100) & 255) });
  const step = guest.handle(inv.host, wire(challenge));
  assert.ok(step.send, 'a proof to send');
  const answer = host.handle(from, wire(step.send), { now, random: bytes(0) });
  const done = guest.handle(inv.host, wire(answer));
  return done.credential;
}

const refusal = (f) => {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof InvitationError, String(e));
    return [e.code, e.attemptsLeft];
  }
  assert.fail('expected a refusal');
};

test('a code invitation admits the guest with a SpaceMember credential, once', () => {
  const admin = key(1);
  const bob = key(2);
  const inv = invitation(admin);
  const host = new Host({ invitation: inv, code: '123456', key: admin });
  const c = attempt(host, inv, bob, '123456');
  assert.equal(c.subject, bob.did);
  assert.equal(c.issuer, admin.did);
  assert.equal(c.issued, NOW);
  assert.deepEqual(c.assertion, { type: 'SpaceMember', space: inv.space, role: 'editor' });
  assert.ok(verifyCredential(c));
  assert.equal(host.state, 'used');
  assert.deepEqual(refusal(() => attempt(host, inv, bob, '123456')), ['used', undefined]);
});

test('wrong codes count down, the third kills the invitation', () => {
  const admin = key(1);
  const inv = invitation(admin);
  const host = new Host({ invitation: inv, code: '123456', key: admin });
  assert.deepEqual(refusal(() => attempt(host, inv, key(2), '000000')), ['wrong-code', 2]);
  assert.deepEqual(host.state, { open: 2 });
  assert.deepEqual(refusal(() => attempt(host, inv, key(2), '111111', NOW, 2)), ['wrong-code', 1]);
  assert.deepEqual(refusal(() => attempt(host, inv, key(3), '222222', NOW, 3)), ['wrong-code', 0]);
  assert.equal(host.state, 'dead');
  assert.deepEqual(refusal(() => attempt(host, inv, key(2), '123456', NOW, 4)), ['dead', undefined]);
  assert.equal(CODE_ATTEMPTS, 3);
});

test('a key invitation admits only its key, without a code', () => {
  const admin = key(1);
  const bob = key(2);
  const inv = invitation(admin, { type: 'key', guest: bob.did });
  const host = new Host({ invitation: inv, key: admin });
  assert.deepEqual(refusal(() => attempt(host, inv, key(3), undefined)), ['wrong-key', undefined]);
  const c = attempt(host, inv, bob, undefined);
  assert.equal(c.subject, bob.did);
  assert.throws(() => new Guest({ invitation: inv, code: '123456', key: bob }), /only a code invitation/);
  assert.throws(() => new Host({ invitation: invitation(admin), key: admin }), /needs a code/);
  assert.throws(() => new Host({ invitation: invitation(admin), code: '12345', key: admin }), /6 digits/);
  assert.throws(() => new Host({ invitation: inv, key: bob }), /not the invitation's host/);
});

test('expiry, unknown invitations, senders that are not the guest, replayed proofs', () => {
  const admin = key(1);
  const bob = key(2);
  const inv = invitation(admin);
  const host = new Host({ invitation: inv, code: '123456', key: admin });
  assert.deepEqual(refusal(() => attempt(host, inv, bob, '123456', inv.expires + 1)), ['expired', undefined]);

  const guest = new Guest({ invitation: inv, code: '123456', key: bob, random: bytes(1) });
  assert.equal(host.handle(bob.did, { ...guest.hello, invitation: 'ff'.repeat(16) }, { now: NOW }).code, 'unknown');
  // Signaling says the hello came from someone else: refused.
  assert.equal(host.handle(key(3).did, guest.hello, { now: NOW }).code, 'bad-proof');
  // A proof with no challenge pending.
  assert.equal(host.handle(bob.did, { type: 'proof', signature: 'AA' }, { now: NOW }).code, 'bad-proof');

  const challenge = host.handle(bob.did, guest.hello, { now: NOW, random: bytes(7) });
  const { send: proof } = guest.handle(admin.did, challenge);
  // A proof with a bad signature is refused without using an attempt (and uses up the challenge).
  assert.equal(host.handle(bob.did, { ...proof, signature: proof.signature.replace(/^./, (c) => (c === 'A' ? 'B' : 'A')) }, { now: NOW }).code, 'bad-proof');
  assert.deepEqual(host.state, { open: 3 });
  // The real proof now finds no pending challenge: a replay gets nothing.
  assert.equal(host.handle(bob.did, proof, { now: NOW }).code, 'bad-proof');
  // A challenge answered too late.
  const g2 = new Guest({ invitation: inv, code: '123456', key: bob, random: bytes(2) });
  const ch2 = host.handle(bob.did, g2.hello, { now: NOW });
  assert.equal(host.handle(bob.did, g2.handle(admin.did, ch2).send, { now: NOW + 61 }).code, 'bad-proof');
});

test('the guest ignores other senders and refuses a challenge not signed by the host', () => {
  const admin = key(1);
  const relay = key(6);
  const bob = key(2);
  const inv = invitation(admin);
  const host = new Host({ invitation: inv, code: '123456', key: admin });
  const guest = new Guest({ invitation: inv, code: '123456', key: bob, random: bytes(1) });
  const challenge = host.handle(bob.did, guest.hello, { now: NOW, random: bytes(8) });
  assert.throws(() => guest.handle(relay.did, challenge), /not from the invitation's host/);
  // A relay that substitutes its own X25519 key cannot sign for the host.
  const forged = { ...challenge, eph: Buffer.from(bytes(5)).toString('base64url') };
  assert.throws(() => guest.handle(admin.did, forged), /host's signature does not verify/);
  // The genuine challenge still works afterwards.
  assert.ok(guest.handle(admin.did, challenge).send);
});

test('the MAC is HMAC-SHA256(X25519(x, Y) ‖ code, proof transcript), as OpenSSL computes it', () => {
  const admin = key(1);
  const bob = key(2);
  const inv = invitation(admin);
  const host = new Host({ invitation: inv, code: '123456', key: admin });
  const guest = new Guest({ invitation: inv, code: '123456', key: bob, random: bytes(1) });
  const challenge = host.handle(bob.did, guest.hello, { now: NOW, random: bytes(101) });
  const { send: proof } = guest.handle(admin.did, challenge);
  const X = guest.hello.eph;
  const Y = challenge.eph;
  const signed = transcript('proof', inv.id, bob.did, X, Y);
  assert.equal(signed, `kube-invite-v1\nproof\n${inv.id}\n${bob.did}\n${X}\n${Y}`);
  // Node's X25519 with the guest's secret (raw 32 bytes 0x01…) and the host's public Y.
  const priv = crypto.createPrivateKey({ key: Buffer.concat([Buffer.from('302e020100300506032b656e04220420', 'hex'), Buffer.from(bytes(1))]), format: 'der', type: 'pkcs8' });
  const pub = crypto.createPublicKey({ key: Buffer.concat([Buffer.from('302a300506032b656e032100', 'hex'), Buffer.from(Y, 'base64url')]), format: 'der', type: 'spki' });
  assert.equal(Buffer.from(crypto.createPublicKey(priv).export({ format: 'der', type: 'spki' })).subarray(12).toString('base64url'), X);
  const shared = crypto.diffieHellman({ privateKey: priv, publicKey: pub });
  const mac = crypto.createHmac('sha256', Buffer.concat([shared, Buffer.from('123456')])).update(signed).digest('base64url');
  assert.equal(proof.mac, mac);
  assert.equal(Buffer.from(codeMac(shared, '123456', signed)).toString('base64url'), mac);
  // The host's challenge signature is over the challenge transcript.
  const cht = transcript('challenge', inv.id, bob.did, X, Y);
  const hostKey = crypto.createPublicKey({ key: Buffer.concat([Buffer.from('302a300506032b6570032100', 'hex'), Buffer.from(admin.publicKey)]), format: 'der', type: 'spki' });
  assert.ok(crypto.verify(null, Buffer.from(cht), hostKey, Buffer.from(challenge.signature, 'base64url')));
});

test('a device host issues in its identity\'s name; helpers', () => {
  const alice = key(1);
  const device = key(4);
  const { invitation: inv, code } = createInvitation({ space: key(9).did, role: 'reader', host: device.did });
  assert.match(inv.id, /^[0-9a-f]{32}$/);
  assert.match(code, /^[0-9]{6}$/);
  assert.deepEqual(inv.method, { type: 'code' });
  const host = new Host({ invitation: inv, code, key: device, issuer: alice.did });
  const guest = key(2);
  const now = Math.floor(Date.now() / 1000);
  const c = attempt(host, inv, guest, code, now);
  assert.equal(c.issuer, alice.did);
  assert.equal(c.proof.signer, device.did);
  assert.deepEqual(c.assertion, { type: 'SpaceMember', space: inv.space, role: 'reader' });

  const keyed = createInvitation({ space: key(9).did, role: 'editor', host: alice.did, guest: guest.did });
  assert.equal(keyed.code, undefined);
  assert.deepEqual(keyed.invitation.method, { type: 'key', guest: guest.did });

  assert.equal(
    invitationSwarm({ id: '00112233445566778899aabbccddeeff' }),
    crypto.createHash('sha256').update('kube-invite-v1\n00112233445566778899aabbccddeeff').digest('hex'),
  );
  // new_code: u32 little-endian mod 10^6, zero-padded.
  assert.equal(newCode(Uint8Array.of(1, 0, 0, 0)), '000001');
  assert.equal(newCode(Uint8Array.of(0xff, 0xff, 0xff, 0xff)), String(4294967295 % 1_000_000).padStart(6, '0'));
});

test('admitted names the space root when the host knows it; the guest keeps only a documentId', () => {
  const admin = key(1);
  const bob = key(2);
  const inv = invitation(admin, { type: 'key', guest: bob.did });
  const root = '3JzZ5sdWw3yV1Qb1VMYqrqMUXgk8';
  const run = (answerFor) => {
    const host = new Host({ invitation: inv, key: admin, root });
    const guest = new Guest({ invitation: inv, key: bob, random: bytes(1) });
    const challenge = host.handle(bob.did, guest.hello, { now: NOW, random: bytes(2) });
    const answer = host.handle(bob.did, guest.handle(inv.host, challenge).send, { now: NOW, random: bytes(0) });
    assert.equal(answer.root, root);
    return guest.handle(inv.host, answerFor(answer));
  };
  assert.equal(run((a) => a).root, root);
  // What signaling may have changed on the way is kept only when it has the shape.
  assert.equal(run((a) => ({ ...a, root: '../x' })).root, undefined);
  assert.equal(run((a) => ({ ...a, root: 7 })).root, undefined);
  assert.equal(run(({ root: _r, ...a }) => a).root, undefined, 'a host that names none');
  assert.throws(() => new Host({ invitation: inv, key: admin, root: 'not a documentId' }), /documentId/);
  assert.ok(isDocumentId(root));
  assert.ok(!isDocumentId('0OIl0OIl0OIl0OIl0OIl'));
});
