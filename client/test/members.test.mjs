// validateSpace/members: the scenarios of halo/src/space/tests.rs, against the JS port. The
// shared vectors (vectors.test.mjs) check it against halo case by case.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Repo } from '@automerge/automerge-repo';
import {
  Identity, issueCredential, spaceGenesis, spaceMember, authorizedDevice, revocation,
  validateSpace, members, createSpace, addMember, revoke,
} from '../index.js';

const CLOCK = { now: 1_000, skew: 60 };
const K = (b) => Identity.fromSeed(new Uint8Array(32).fill(b));
const says = (from, subject, assertion, issued = 100, expires) =>
  issueCredential({ issuer: from.did, subject: subject.did, assertion, issued, expires, signer: from });
const member = (space, role) => spaceMember(space.did, role);
const genesis = (space, admin) => says(space, admin, spaceGenesis(space.did));

test('a valid chain', () => {
  const [space, alice, bob, carol] = [K(1), K(2), K(3), K(4)];
  const m = validateSpace(space.did, [
    genesis(space, alice), says(alice, bob, member(space, 'admin')), says(bob, carol, member(space, 'reader')),
  ], CLOCK);
  assert.equal(m.roleOf(alice.did), 'admin');
  assert.equal(m.roleOf(bob.did), 'admin');
  assert.equal(m.roleOf(carol.did), 'reader');
  assert.deepEqual(m.rejected, []);
});

test('a missing link or a foreign genesis', () => {
  const [space, alice, bob, mallory] = [K(1), K(2), K(3), K(9)];
  const m = validateSpace(space.did, [
    says(alice, bob, member(space, 'editor')), says(mallory, mallory, spaceGenesis(space.did)),
  ], CLOCK);
  assert.equal(m.roles.size, 0);
  assert.ok(m.rejected.every(([, r]) => r === 'no-chain'), JSON.stringify(m.rejected));
});

test('revoked admins and members; revocations are final', () => {
  const [space, alice, bob, carol, dave] = [K(1), K(2), K(3), K(4), K(5)];
  const bobAdmin = says(alice, bob, member(space, 'admin'));
  const carolEditor = says(bob, carol, member(space, 'editor'));
  const daveReader = says(alice, dave, member(space, 'reader'));
  const revokeBob = says(alice, bob, revocation(bobAdmin.id));
  const creds = [genesis(space, alice), bobAdmin, carolEditor, daveReader, revokeBob, says(alice, dave, revocation(daveReader.id))];
  let m = validateSpace(space.did, creds, CLOCK);
  assert.equal(m.roleOf(bob.did), undefined, 'revoked admin');
  assert.equal(m.roleOf(carol.did), undefined, 'granted by a revoked admin');
  assert.equal(m.roleOf(dave.did), undefined, 'revoked member');
  assert.equal(m.roleOf(alice.did), 'admin');
  const undo = says(alice, bob, revocation(revokeBob.id));
  m = validateSpace(space.did, [...creds, undo], CLOCK);
  assert.equal(m.roleOf(bob.did), undefined);
  assert.ok(m.rejected.some(([id, r]) => id === undo.id && r === 'revokes-a-revocation'));
});

test('expiry and clock skew', () => {
  const [space, alice, bob, carol] = [K(1), K(2), K(3), K(4)];
  let m = validateSpace(space.did, [
    genesis(space, alice),
    says(alice, bob, member(space, 'editor'), 100, 900),
    says(alice, carol, member(space, 'reader'), 1_030, 970),
  ], CLOCK);
  assert.equal(m.roleOf(bob.did), undefined, 'expired');
  assert.equal(m.roleOf(carol.did), 'reader', 'within the skew');
  const late = says(alice, carol, member(space, 'reader'), 2_000);
  m = validateSpace(space.did, [genesis(space, alice), late], CLOCK);
  assert.ok(m.rejected.some(([id, r]) => id === late.id && r === 'from-the-future'));
});

test('roles never rise along a chain; cycles without a genesis grant nothing', () => {
  const [space, alice, bob, carol] = [K(1), K(2), K(3), K(4)];
  let m = validateSpace(space.did, [
    genesis(space, alice), says(alice, bob, member(space, 'editor')),
    says(bob, carol, member(space, 'admin')), says(bob, bob, member(space, 'admin')),
  ], CLOCK);
  assert.equal(m.roleOf(bob.did), 'editor');
  assert.equal(m.roleOf(carol.did), undefined);
  const cycle = [says(alice, bob, member(space, 'admin')), says(bob, alice, member(space, 'admin'))];
  assert.equal(validateSpace(space.did, cycle, CLOCK).roles.size, 0);
  assert.equal(validateSpace(space.did, [...cycle, genesis(space, alice)], CLOCK).roles.size, 2);
});

test('devices sign for their identity only', () => {
  const [space, alice, laptop, bob, carol] = [K(1), K(2), K(6), K(3), K(4)];
  const byDevice = issueCredential({ issuer: alice.did, subject: bob.did, assertion: member(space, 'editor'), issued: 100, signer: laptop });
  const forged = issueCredential({ issuer: carol.did, subject: bob.did, assertion: member(space, 'admin'), issued: 100, signer: laptop });
  const m = validateSpace(space.did, [
    genesis(space, alice), says(alice, carol, member(space, 'admin')),
    says(alice, laptop, authorizedDevice(alice.did, laptop.did)), byDevice, forged,
  ], CLOCK);
  assert.equal(m.roleOf(bob.did), 'editor');
  assert.equal(m.roleOf(laptop.did), 'admin', "a device acts with its identity's role");
  assert.ok(m.rejected.some(([id, r]) => id === forged.id && r === 'wrong-signer'));
});

test('members(rootDoc) of a space made with createSpace/addMember/revoke', () => {
  const repo = new Repo({ network: [] });
  const [alice, bob, eve, kube] = [Identity.generate(), Identity.generate(), Identity.generate(), Identity.generate()];
  const { root } = createSpace(repo, alice, { kubeDid: kube.did });
  addMember(root, alice, bob.did, 'editor');
  const e = addMember(root, alice, eve.did, 'editor');
  assert.deepEqual(members(root.doc()), { [alice.did]: 'admin', [kube.did]: 'replicator', [bob.did]: 'editor', [eve.did]: 'editor' });
  revoke(root, alice, e.id);
  assert.deepEqual(members(root.doc()), { [alice.did]: 'admin', [kube.did]: 'replicator', [bob.did]: 'editor' });
});
