// SpaceAccess: ECHO's access rules (echo/PROTOCOL.md §3) decided in the browser, against real
// space documents in an in-memory Repo (no network) and a fake clock.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Repo } from '@automerge/automerge-repo';
import * as A from '@automerge/automerge';
import {
  Identity, SpaceAccess, SKEW_SECS, createSpace, addMember, addCredential, revoke, createObject,
  issueCredential, authorizedDevice,
} from '../index.js';

const T0 = 1_700_000_000;
const alice = Identity.generate(); // admin (genesis)
const ed = Identity.generate(); // editor
const edPhone = Identity.generate(); // a device of ed
const rita = Identity.generate(); // reader
const kube = Identity.generate(); // replicator
const stranger = Identity.generate();

/** A fake clock in Unix seconds. */
function fakeClock(t = T0) {
  const clock = { t, now: () => clock.t };
  return clock;
}

/** A space with one member of each role and two objects, registered in a SpaceAccess. */
function world(clock = fakeClock()) {
  const repo = new Repo({ network: [] });
  const { space, root } = createSpace(repo, alice, { kubeDid: kube.did, issued: T0 });
  const edCred = addMember(root, alice, ed.did, 'editor', { issued: T0 });
  const ritaCred = addMember(root, alice, rita.did, 'reader', { issued: T0 });
  addCredential(root, issueCredential({
    issuer: ed.did, subject: edPhone.did, assertion: authorizedDevice(ed.did, edPhone.did), issued: T0, signer: ed,
  }));
  const task = createObject(repo, root, { type: 'task', props: { title: 'Buy milk' } });
  const note = createObject(repo, root, { type: 'note', text: 'hi' });
  const access = new SpaceAccess({ now: clock.now });
  access.addSpace({ space, root });
  return { repo, space, root, task, note, access, clock, edCred, ritaCred };
}

/** Counts 'change' events. */
function counter(access) {
  const c = { n: 0 };
  access.on('change', () => { c.n += 1; });
  return c;
}

test('roles decide sharing and writing, for the root and for objects', (t) => {
  const { space, root, task, note, access } = world();
  t.after(() => access.close());
  assert.deepEqual(access.spaces(), [space]);
  assert.equal(access.spaceOfDoc(root.documentId), space);
  assert.equal(access.spaceOfDoc(task.documentId), space);
  assert.equal(access.spaceOfDoc(note.documentId), space);

  assert.equal(access.roleOf(alice.did, space), 'admin');
  assert.equal(access.roleOf(ed.did, space), 'editor');
  assert.equal(access.roleOf(edPhone.did, space), 'editor', 'a device has its identity\'s role');
  assert.equal(access.roleOf(rita.did, space), 'reader');
  assert.equal(access.roleOf(kube.did, space), 'replicator');
  assert.equal(access.roleOf(stranger.did, space), undefined);

  for (const doc of [root, task, note].map((h) => h.documentId)) {
    for (const who of [alice, ed, edPhone, kube]) {
      assert.ok(access.mayShare(who.did, doc));
      assert.ok(access.mayReceive(who.did, doc, { changes: true }), 'writers are role >= replicator');
      assert.ok(access.mayReceive(who.did, doc, { changes: false }));
    }
  }
  assert.deepEqual(access.members(space), new Map([
    [alice.did, 'admin'], [ed.did, 'editor'], [rita.did, 'reader'], [kube.did, 'replicator'],
  ]));
  assert.deepEqual(access.writers(space), new Map([
    [alice.did, 'admin'], [ed.did, 'editor'], [kube.did, 'replicator'],
  ]));
  assert.deepEqual(access.members('did:key:z6MkNotRegistered'), new Map());
});

test('a reader receives everything but its changes are refused', (t) => {
  const { root, task, access } = world();
  t.after(() => access.close());
  assert.ok(access.isPeerAllowed(rita.did));
  for (const doc of [root.documentId, task.documentId]) {
    assert.ok(access.mayShare(rita.did, doc));
    assert.ok(access.mayReceive(rita.did, doc, { changes: false }), 'heads and needs are answered');
    assert.equal(access.mayReceive(rita.did, doc, { changes: true }), false);
    assert.equal(access.mayReceive(rita.did, doc), false, 'changes assumed when not said');
  }
});

test('a stranger gets nothing', (t) => {
  const { root, task, access } = world();
  t.after(() => access.close());
  assert.equal(access.isPeerAllowed(stranger.did), false);
  for (const doc of [root.documentId, task.documentId, 'unknownDocumentIdxxxxxxxxxx']) {
    assert.equal(access.mayShare(stranger.did, doc), false);
    assert.equal(access.mayReceive(stranger.did, doc, { changes: false }), false);
  }
  assert.equal(access.mayShare(alice.did, 'unknownDocumentIdxxxxxxxxxx'), false, 'no space, nobody');
});

test('bootstrap dids may bring the root only until it validates', async (t) => {
  const host = new Repo({ network: [] });
  const { space, root: hostRoot } = createSpace(host, alice, { kubeDid: kube.did, issued: T0 });
  const obj = createObject(host, hostRoot, { type: 'task' });
  const relay = Identity.generate(); // trusted to bring the root, but no member

  const guest = new Repo({ network: [] });
  const { handle } = guest.findWithProgress(hostRoot.documentId); // not ready: we have nothing
  const clock = fakeClock();
  const access = new SpaceAccess({ now: clock.now });
  t.after(() => access.close());
  const changes = counter(access);
  access.addSpace({ space, root: handle, bootstrap: [alice.did, relay.did] });
  assert.equal(changes.n, 1);

  const rootId = hostRoot.documentId;
  assert.equal(access.spaceOfDoc(rootId), space);
  assert.equal(access.roleOf(alice.did, space), undefined, 'no root yet');
  for (const b of [alice, relay]) {
    assert.ok(access.isPeerAllowed(b.did));
    assert.ok(access.mayShare(b.did, rootId), 'we may ask a bootstrap did for the root');
    assert.ok(access.mayReceive(b.did, rootId, { changes: true }), 'and take it from them');
    assert.equal(access.mayShare(b.did, obj.documentId), false, 'the root only');
  }
  assert.equal(access.isPeerAllowed(stranger.did), false);
  assert.equal(access.mayReceive(stranger.did, rootId, { changes: true }), false);

  // A document we hold that is no root of this space (another space's) is refused as its root.
  const bogus = guest.create({ kube: 'space', space: stranger.did, credentials: {}, objects: {} });
  const other = new SpaceAccess({ now: clock.now });
  t.after(() => other.close());
  assert.throws(() => other.addSpace({ space, root: bogus, bootstrap: [relay.did] }), /not the root/);
  assert.equal(other.mayReceive(relay.did, bogus.documentId, { changes: true }), false);

  // The root arrives (as a bootstrap peer's sync would bring it): 'change' comes before ready.
  guest.import(A.save(hostRoot.doc()), { docId: rootId });
  assert.equal(changes.n, 2);
  assert.equal(access.roleOf(alice.did, space), 'admin');
  assert.ok(access.mayShare(alice.did, rootId), 'alice is a member now');
  assert.equal(access.isPeerAllowed(relay.did), false, 'bootstrap is ignored once the root validates');
  assert.equal(access.mayShare(relay.did, rootId), false);
  assert.equal(access.mayReceive(relay.did, rootId, { changes: true }), false);
  assert.equal(access.spaceOfDoc(obj.documentId), space, 'the root lists the object');
  await handle.whenReady(); // the pending whenReady changes nothing more
  await new Promise((r) => setImmediate(r));
  assert.equal(changes.n, 2);
});

test('a revocation emits change and flips decisions at once', (t) => {
  const { space, root, task, access, edCred } = world();
  t.after(() => access.close());
  const seen = [];
  access.on('change', () => seen.push(access.mayShare(ed.did, task.documentId)));
  assert.ok(access.mayReceive(ed.did, task.documentId, { changes: true }));
  revoke(root, alice, edCred.id, { issued: T0 });
  assert.deepEqual(seen, [false], 'synchronously, already decided anew');
  assert.equal(access.roleOf(ed.did, space), undefined);
  assert.equal(access.roleOf(edPhone.did, space), undefined, 'the device goes with it');
  assert.equal(access.isPeerAllowed(ed.did), false);
  assert.equal(access.mayShare(ed.did, root.documentId), false);
  assert.equal(access.mayReceive(ed.did, task.documentId, { changes: true }), false);
  assert.ok(access.mayShare(rita.did, task.documentId), 'the others stay');

  // A change that moves nothing (a new object's props) emits nothing.
  task.change((d) => { d.props.done = true; });
  root.change((d) => { d.objects[task.documentId].seen = true; });
  assert.equal(seen.length, 1);

  // off() stops a listener.
  const fn = () => seen.push('again');
  access.on('change', fn).off('change', fn);
  addMember(root, alice, stranger.did, 'reader', { issued: T0 });
  assert.equal(seen.length, 2);
  assert.ok(access.isPeerAllowed(stranger.did));
});

test('expiry and issue dates take effect by the timer', (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const clock = fakeClock();
  const { space, root, task, access } = world(clock);
  t.after(() => access.close());
  const changes = counter(access);
  const temp = Identity.generate();
  const later = Identity.generate();
  addMember(root, alice, temp.did, 'editor', { issued: T0, expires: T0 + 100 });
  addMember(root, alice, later.did, 'reader', { issued: T0 + 1000 });
  assert.equal(changes.n, 1, 'temp joins; later is not valid yet');
  assert.equal(access.roleOf(temp.did, space), 'editor');
  assert.equal(access.roleOf(later.did, space), undefined);

  /** Advances the fake clock and the timers together. */
  const advance = (secs) => {
    clock.t += secs;
    t.mock.timers.tick(secs * 1000);
  };
  // Past the expiry, the skew still holds it; one second more and it is gone.
  advance(100 + SKEW_SECS);
  assert.equal(access.roleOf(temp.did, space), 'editor');
  assert.equal(changes.n, 1);
  advance(1);
  assert.equal(changes.n, 2);
  assert.equal(access.roleOf(temp.did, space), undefined);
  assert.equal(access.mayShare(temp.did, task.documentId), false);
  assert.equal(access.mayReceive(temp.did, task.documentId, { changes: true }), false);

  // `later` counts once issued - skew <= now.
  assert.ok(clock.t < T0 + 1000 - SKEW_SECS);
  advance(T0 + 1000 - SKEW_SECS - 1 - clock.t);
  assert.equal(changes.n, 2);
  assert.equal(access.roleOf(later.did, space), undefined);
  advance(1);
  assert.equal(changes.n, 3);
  assert.equal(access.roleOf(later.did, space), 'reader');
  assert.ok(access.mayShare(later.did, task.documentId));
  assert.equal(access.isPeerAllowed(temp.did), false);

  // Nothing is due any more: no change, however long.
  advance(10 * 365 * 86400);
  assert.equal(changes.n, 3);
});

test('an expiry beyond setTimeout\'s range is reached in steps', (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const clock = fakeClock();
  const { space, root, access } = world(clock);
  t.after(() => access.close());
  const days = 60 * 86400; // more than 2^31 ms
  addMember(root, alice, stranger.did, 'editor', { issued: T0, expires: T0 + days });
  const changes = counter(access);
  for (let i = 0; i < 59; i += 1) {
    clock.t += 86400;
    t.mock.timers.tick(86400 * 1000);
  }
  assert.equal(changes.n, 0);
  assert.equal(access.roleOf(stranger.did, space), 'editor');
  clock.t = T0 + days + SKEW_SECS + 1;
  t.mock.timers.tick(2 * 86400 * 1000); // the last step was scheduled from day 50's clock
  assert.equal(changes.n, 1);
  assert.equal(access.roleOf(stranger.did, space), undefined);
});

test('removeSpace and close clear the timer', (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const clock = fakeClock();
  const { space, root, access } = world(clock);
  t.after(() => access.close());
  addMember(root, alice, stranger.did, 'editor', { issued: T0, expires: T0 + 10 });
  const changes = counter(access);
  access.removeSpace(space);
  assert.equal(changes.n, 1);
  assert.deepEqual(access.spaces(), []);
  assert.equal(access.mayShare(alice.did, root.documentId), false);
  clock.t += 3600;
  t.mock.timers.tick(3600 * 1000);
  assert.equal(changes.n, 1, 'no review for a removed space');
  addMember(root, alice, rita.did, 'editor', { issued: T0 });
  assert.equal(changes.n, 1, 'its root is no longer listened to');

  const w = world(fakeClock());
  addMember(w.root, alice, stranger.did, 'editor', { issued: T0, expires: T0 + 10 });
  let fired = 0;
  w.access.on('change', () => { fired += 1; });
  w.access.close();
  w.clock.t += 3600;
  t.mock.timers.tick(3600 * 1000);
  addMember(w.root, alice, rita.did, 'editor', { issued: T0 });
  assert.equal(fired, 0);
  assert.deepEqual(w.access.spaces(), []);
  assert.equal(w.access.mayShare(alice.did, w.root.documentId), false);
});

test('an object listed by two spaces belongs to the first', (t) => {
  const repo = new Repo({ network: [] });
  const a = createSpace(repo, alice, { kubeDid: kube.did, issued: T0 });
  const b = createSpace(repo, ed, { kubeDid: kube.did, issued: T0 });
  const shared = createObject(repo, a.root, { type: 'task' });
  b.root.change((d) => { d.objects[shared.documentId] = { type: 'task' }; });
  const access = new SpaceAccess({ now: fakeClock().now });
  t.after(() => access.close());
  access.addSpace({ space: a.space, root: a.root });
  access.addSpace({ space: b.space, root: b.root });
  assert.equal(access.spaceOfDoc(shared.documentId), a.space);
  assert.ok(access.mayShare(alice.did, shared.documentId));
  assert.equal(access.mayShare(ed.did, shared.documentId), false, 'b\'s admin gets nothing of a\'s object');

  // A later lister never takes an object over, even one registered earlier.
  const c = createObject(repo, b.root, { type: 'note' });
  assert.equal(access.spaceOfDoc(c.documentId), b.space);
  a.root.change((d) => { d.objects[c.documentId] = { type: 'note' }; });
  assert.equal(access.spaceOfDoc(c.documentId), b.space);
  assert.equal(access.mayShare(alice.did, c.documentId), false);

  // Once the first space is gone, the other's listing counts.
  access.removeSpace(a.space);
  assert.equal(access.spaceOfDoc(shared.documentId), b.space);
  assert.ok(access.mayShare(ed.did, shared.documentId));
  assert.equal(access.mayShare(alice.did, shared.documentId), false);
});

test('a space root listed as an object of another space is not an object', (t) => {
  const repo = new Repo({ network: [] });
  const a = createSpace(repo, alice, { kubeDid: kube.did, issued: T0 });
  const b = createSpace(repo, ed, { kubeDid: kube.did, issued: T0 });
  a.root.change((d) => { d.objects[b.root.documentId] = { type: 'task' }; });
  const access = new SpaceAccess({ now: fakeClock().now });
  t.after(() => access.close());
  access.addSpace({ space: a.space, root: a.root });
  assert.equal(access.spaceOfDoc(b.root.documentId), a.space, 'b is not registered yet: a claims it');
  const changes = counter(access);
  access.addSpace({ space: b.space, root: b.root });
  assert.equal(changes.n, 1);
  assert.equal(access.spaceOfDoc(b.root.documentId), b.space, 'a registered root is nobody\'s object');
  assert.equal(access.mayShare(alice.did, b.root.documentId), false);
  assert.ok(access.mayShare(ed.did, b.root.documentId));

  assert.throws(() => access.addSpace({ space: a.space, root: a.root }), /already registered/);
  assert.throws(() => access.addSpace({ space: stranger.did, root: a.root }), /already the root/);
});

test('checkObject refuses an object naming another space', (t) => {
  const { space, root, task, access } = world();
  t.after(() => access.close());
  assert.ok(access.checkObject(task.documentId, task.doc()));
  assert.ok(access.checkObject(root.documentId, root.doc()));
  assert.ok(access.checkObject(task.documentId, {}), 'no space field: the listing decides');
  assert.equal(access.checkObject(task.documentId, { ...task.doc(), space: stranger.did }), false);
  assert.equal(access.checkObject('unknownDocumentIdxxxxxxxxxx', { space }), false, 'listed by no space');
});

test("a writer's changes pass the space's rules on a copy: a root keeps every credential, an object its space", (t) => {
  const { repo, space, root, task, edCred } = world();
  const access = new SpaceAccess({ now: () => T0, docOf: (id) => repo.handles[id]?.doc() });
  access.addSpace({ space, root });
  t.after(() => access.close());
  /** The changes an editor's copy of `handle` makes with `fn`. */
  const changesBy = (handle, fn) => {
    const before = handle.doc();
    const after = A.change(A.clone(before), fn);
    return A.getChanges(before, after);
  };
  // Listing a new object in the root (what creating a task does) is fine.
  const listed = changesBy(root, (d) => { d.objects['2Xc4BPfXqo8CHZFFa6uNJGMHR6v3'] = { type: 'task' }; });
  assert.deepEqual(access.checkChanges(ed.did, root.documentId, listed), { ok: true, held: [] });
  // Taking a credential away (hiding a revocation, dropping a member) is not.
  const removed = changesBy(root, (d) => { delete d.credentials[edCred.id]; });
  assert.deepEqual(access.checkChanges(ed.did, root.documentId, removed), { ok: false, reason: 'credential-removed' });
  const changed = changesBy(root, (d) => { d.credentials[edCred.id] = new A.ImmutableString('{}'); });
  assert.deepEqual(access.checkChanges(ed.did, root.documentId, changed), { ok: false, reason: 'credential-changed' });
  // A forged entry (an admin grant the editor signed itself, under another id) is refused.
  const forged = issueCredential({ issuer: alice.did, subject: stranger.did, assertion: { type: 'SpaceMember', space, role: 'admin' }, issued: T0, signer: alice });
  const entry = JSON.stringify({ ...JSON.parse(JSON.stringify(forged)), subject: ed.did });
  const bad = changesBy(root, (d) => { d.credentials[forged.id] = new A.ImmutableString(entry); });
  assert.deepEqual(access.checkChanges(ed.did, root.documentId, bad), { ok: false, reason: 'bad-credential' });
  const otherSpace = changesBy(root, (d) => { d.space = new A.ImmutableString(stranger.did); });
  assert.deepEqual(access.checkChanges(ed.did, root.documentId, otherSpace), { ok: false, reason: 'not-a-root' });
  // An object may not come to name another space.
  const moved = changesBy(task, (d) => { d.space = new A.ImmutableString(stranger.did); });
  assert.deepEqual(access.checkChanges(ed.did, task.documentId, moved), { ok: false, reason: 'other-space' });
  const edit = changesBy(task, (d) => { d.props.title = new A.ImmutableString('Buy oat milk'); });
  assert.deepEqual(access.checkChanges(ed.did, task.documentId, edit), { ok: true, held: [] });
});

test('a whole saved document in a sync message (what a peer that has nothing gets) is judged too', (t) => {
  const { repo, space, root, task } = world();
  const access = new SpaceAccess({ now: () => T0, docOf: () => undefined });
  access.addSpace({ space, root });
  t.after(() => access.close());
  // The object as one document chunk, judged on an empty copy.
  assert.deepEqual(access.checkChanges(ed.did, task.documentId, [A.save(task.doc())]), { ok: true, held: [] });
  const moved = A.change(A.clone(task.doc()), (d) => { d.space = new A.ImmutableString(stranger.did); });
  assert.deepEqual(access.checkChanges(ed.did, task.documentId, [A.save(moved)]), { ok: false, reason: 'other-space' });
  assert.ok(repo);
});

test('an invitation cannot make an object of another space (or any other document) a root', (t) => {
  const { repo, space, root, task, access } = world();
  t.after(() => access.close());
  const other = Identity.generate().did;
  // The host of an invitation to `other` names this space's task as the root.
  assert.throws(() => access.addSpace({ space: other, root: task, bootstrap: [rita.did] }), /object of space|not the root/);
  // A document we hold that is no root of that space.
  const plain = repo.create({ hello: 'world' });
  assert.throws(() => access.addSpace({ space: other, root: plain, bootstrap: [rita.did] }), /not the root/);
  assert.equal(access.spaceOfDoc(task.documentId), space);
  assert.equal(access.mayReceive(rita.did, task.documentId, { changes: true }), false);
  assert.ok(root);
});

test('changes that wait for a missing dependency are held out, and judged with it', (t) => {
  const { root, access, ritaCred } = world();
  t.after(() => access.close());
  const rev = revoke(root, alice, ritaCred.id, { issued: T0 + 1 });
  assert.ok(rev);
  // An editor builds c1 (harmless) then c2 on top of it (drops the revocation), and sends c2 alone.
  const before = root.doc();
  const c1doc = A.change(A.clone(before), (d) => { d.objects['2Xc4BPfXqo8CHZFFa6uNJGMHR6v3'] = { type: 'task' }; });
  const c2doc = A.change(A.clone(c1doc), (d) => { delete d.credentials[rev.id]; });
  const [c2] = A.getChanges(c1doc, c2doc);
  // c2 alone waits for c1: it is held out (index 0), so it never sits in our Repo waiting
  // for a c1 that might come from a path nobody checks.
  assert.deepEqual(access.checkChanges(ed.did, root.documentId, [c2]), { ok: true, held: [0] });
  const [c1] = A.getChanges(before, c1doc);
  assert.deepEqual(access.checkChanges(ed.did, root.documentId, [c1]), { ok: true, held: [] });
  assert.deepEqual(access.checkChanges(ed.did, root.documentId, [c1, c2]), { ok: false, reason: 'credential-removed' });
  assert.deepEqual(access.checkChanges(ed.did, root.documentId, [c2, c1]), { ok: false, reason: 'credential-removed' });
});

test('credentials written as maps count and may not change, as at KUBE', (t) => {
  const { root, space, access } = world();
  t.after(() => access.close());
  const dev = Identity.generate();
  const cred = issueCredential({ issuer: ed.did, subject: dev.did, assertion: authorizedDevice(ed.did, dev.did), issued: T0, signer: ed });
  root.change((d) => { d.credentials[cred.id] = JSON.parse(JSON.stringify(cred)); });
  assert.equal(access.roleOf(dev.did, space), 'editor', 'a map-form device authorization counts');
  const before = root.doc();
  const after = A.change(A.clone(before), (d) => { d.credentials[cred.id].issued = T0 + 5; });
  assert.deepEqual(access.checkChanges(ed.did, root.documentId, A.getChanges(before, after)), { ok: false, reason: 'credential-changed' });
});
