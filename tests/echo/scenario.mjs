// The ECHO scenario, run by echo.test.mjs in a child process that trusts KUBE's CA
// (NODE_EXTRA_CA_CERTS). Env: KUBE_URL=https://127.0.0.1:PORT. Over IPC it asks the parent
// to restart kube ({type:'restart'} → {type:'restarted', url}).
//
// Each step is bounded (STEP_MS); the first failure stops the run (exit 1). Prints
// `ok N - step` per step and `all N steps passed` at the end.

import assert from 'node:assert/strict';
import { Repo, splice } from '@automerge/automerge-repo';
import {
  Identity, connectKube, synced, createSpace, addMember, revoke, createObject,
  objects, members, credentials, asString, addCredential,
  createInvitation, Host, connectSignal, serveInvitation, redeemInvitation,
} from '@kube/client';

const STEP_MS = 15_000;
const SYNC_MS = 10_000;
const state = { url: process.env.KUBE_URL };
assert.ok(state.url, 'KUBE_URL is set');

// --- helpers ---------------------------------------------------------------------------------

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

async function eventually(what, cond, ms = SYNC_MS) {
  const t0 = Date.now();
  for (;;) {
    if (await cond()) return;
    if (Date.now() - t0 > ms) throw new Error(`not within ${ms} ms: ${what}`);
    await sleep(25);
  }
}

/** A person's Repo connected to KUBE; `errors` collects KUBE's error messages. */
async function connect(name, identity) {
  const adapter = await connectKube({ url: state.url, identity, retryInterval: 1000 });
  const who = { name, identity, adapter, errors: [], connectionErrors: [] };
  adapter.on('kube-error', (m) => {
    who.errors.push(m);
    console.log(`  (${name} got kube-error: ${m})`);
  });
  adapter.on('kube-connection-error', (e) => who.connectionErrors.push(e));
  who.repo = new Repo({ network: [adapter] });
  await eventually(`${name} connected (KUBE's peer message)`, () => adapter.kubeStorageId !== undefined);
  return who;
}

/** repo.find, bounded: rejects with "unavailable" when KUBE says it has nothing for us. */
const find = (who, id, ms = SYNC_MS) => who.repo.find(id, { signal: AbortSignal.timeout(ms) });

const syncedAll = (who, handles) => Promise.all(handles.map((h) => synced(h, who.adapter, { timeoutMs: SYNC_MS })));

function restartKube() {
  return new Promise((resolve, reject) => {
    const onMessage = (msg) => {
      if (msg?.type === 'restarted') { process.off('message', onMessage); resolve(msg.url); }
      if (msg?.type === 'restart-failed') { process.off('message', onMessage); reject(new Error(msg.error)); }
    };
    process.on('message', onMessage);
    process.send({ type: 'restart' });
  });
}

// automerge-repo may reject timers of repos we shut down (60 s "whenReady" timeouts); those are
// not the scenario's failures, but show them.
process.on('unhandledRejection', (e) => console.log(`  (unhandled rejection, not failing: ${e?.message ?? e})`));

// --- the people ------------------------------------------------------------------------------

const ids = {
  alice: Identity.generate(),
  bob: Identity.generate(),
  carol: Identity.generate(),
  dave: Identity.generate(),
  eve: Identity.generate(),
  frank: Identity.generate(),
};
let alice, bob, carol, dave, eve;
const doc = {}; // documentIds
const cred = {}; // credentials Alice issued
let aRoot, aTask, aList, aNote; // Alice's handles

// --- the steps -------------------------------------------------------------------------------

const steps = [];
const step = (name, fn, ms = STEP_MS) => steps.push({ name, fn, ms });

step('alice connects and learns KUBE\'s did', async () => {
  alice = await connect('alice', ids.alice);
  assert.match(alice.adapter.kubeDid, /^did:key:z6Mk/);
});

step('a token made for another KUBE is refused before the upgrade (HTTP 401)', async () => {
  const adapter = await connectKube({ url: state.url, identity: ids.carol, retryInterval: 500 });
  adapter.kubeDid = Identity.generate().did; // the tokens now name another KUBE as aud
  const failures = [];
  adapter.on('kube-connection-error', (e) => failures.push(e));
  const repo = new Repo({ network: [adapter] });
  try {
    await eventually('a refused connection', () => failures.length > 0);
    assert.match(failures[0].message, /401/);
    assert.equal(adapter.kubeStorageId, undefined, 'never joined');
  } finally {
    await repo.shutdown();
  }
});

step('alice creates a space (bob editor, dave reader, eve editor) with 3 objects; KUBE acknowledges all', async () => {
  const { space, root } = createSpace(alice.repo, ids.alice, { kubeDid: alice.adapter.kubeDid });
  aRoot = root;
  cred.bob = addMember(root, ids.alice, ids.bob.did, 'editor');
  cred.dave = addMember(root, ids.alice, ids.dave.did, 'reader');
  cred.eve = addMember(root, ids.alice, ids.eve.did, 'editor');
  aTask = createObject(alice.repo, root, { type: 'task', props: { title: 'Write the ECHO test', done: false } });
  aList = createObject(alice.repo, root, { type: 'list', props: { name: 'Today' }, refs: { first: aTask } });
  aNote = createObject(alice.repo, root, { type: 'note', props: { title: 'Notes' }, text: 'Hello from Alice.' });
  Object.assign(doc, { space, root: root.documentId, task: aTask.documentId, list: aList.documentId, note: aNote.documentId });
  await syncedAll(alice, [aRoot, aTask, aList, aNote]);
  assert.deepEqual(members(aRoot.doc()), {
    [ids.alice.did]: 'admin',
    [alice.adapter.kubeDid]: 'replicator',
    [ids.bob.did]: 'editor',
    [ids.dave.did]: 'reader',
    [ids.eve.did]: 'editor',
  });
  assert.deepEqual(alice.errors, []);
});

step('alice disconnects', async () => {
  alice.adapter.disconnect();
  assert.equal(alice.adapter.socket, undefined);
});

step('bob connects later and finds the space and all its objects from KUBE alone', async () => {
  bob = await connect('bob', ids.bob);
  const root = await find(bob, doc.root);
  assert.equal(asString(root.doc().kube), 'space');
  assert.equal(asString(root.doc().space), doc.space);
  assert.deepEqual(objects(root.doc()), { [doc.task]: 'task', [doc.list]: 'list', [doc.note]: 'note' });
  const task = await find(bob, doc.task);
  assert.equal(asString(task.doc().props.title), 'Write the ECHO test');
  assert.equal(task.doc().props.done, false);
  const list = await find(bob, doc.list);
  assert.equal(asString(list.doc().refs.first), doc.task);
  const note = await find(bob, doc.note);
  assert.equal(note.doc().text, 'Hello from Alice.');
  assert.equal(asString(note.doc().space), doc.space);
});

step('bob edits the note text and the task; KUBE acknowledges', async () => {
  const task = await find(bob, doc.task);
  const note = await find(bob, doc.note);
  note.change((d) => splice(d, ['text'], 0, 0, 'Bob was here. '));
  task.change((d) => { d.props.done = true; });
  await syncedAll(bob, [note, task]);
  assert.deepEqual(bob.errors, []);
});

step('alice comes back and sees bob\'s edits', async () => {
  alice.adapter.reconnect();
  await eventually("bob's edits at alice", () => aNote.doc().text === 'Bob was here. Hello from Alice.' && aTask.doc().props.done === true);
});

step('carol, not a member, gets nothing: the root and the objects are unavailable', async () => {
  carol = await connect('carol', ids.carol);
  for (const id of [doc.root, doc.task, doc.note]) {
    await assert.rejects(find(carol, id), /unavailable/, `carol must not get ${id}`);
  }
  await carol.repo.shutdown();
});

step('dave, a reader, reads; his change is refused and reaches nobody', async () => {
  dave = await connect('dave', ids.dave);
  await find(dave, doc.root);
  const note = await find(dave, doc.note);
  assert.equal(note.doc().text, 'Bob was here. Hello from Alice.');
  note.change((d) => splice(d, ['text'], 0, 0, 'DAVE '));
  await eventually("'refused' for dave", () => dave.errors.some((m) => /^refused/.test(m)));
  // KUBE never acknowledges it …
  await assert.rejects(synced(note, dave.adapter, { timeoutMs: 1500 }), /not synced/);
  // … and a later change of bob's reaches alice without dave's.
  const bNote = await find(bob, doc.note);
  bNote.change((d) => { d.props.afterDave = true; });
  await synced(bNote, bob.adapter, { timeoutMs: SYNC_MS });
  await eventually('bob\'s later change at alice', () => aNote.doc().props.afterDave === true);
  assert.ok(!aNote.doc().text.includes('DAVE'), `alice has dave's change: ${aNote.doc().text}`);
  assert.ok(!bNote.doc().text.includes('DAVE'), `bob has dave's change: ${bNote.doc().text}`);
  await dave.repo.shutdown();
});

step('eve, an editor, is revoked while connected: "revoked", the connection closes, her edits go nowhere', async () => {
  eve = await connect('eve', ids.eve);
  await find(eve, doc.root);
  const note = await find(eve, doc.note);
  const closed = new Promise((resolve) => eve.adapter.once('peer-disconnected', resolve));
  cred.eveRevocation = revoke(aRoot, ids.alice, cred.eve.id);
  await synced(aRoot, alice.adapter, { timeoutMs: SYNC_MS });
  await eventually("'revoked' for eve", () => eve.errors.some((m) => /^revoked/.test(m)));
  await withTimeout(closed, SYNC_MS, "eve's connection closed by KUBE");
  assert.equal(members(aRoot.doc())[ids.eve.did], undefined);
  // Eve's adapter reconnects on its own; as a non-member now, her change must not spread.
  note.change((d) => splice(d, ['text'], 0, 0, 'EVE '));
  await sleep(1500);
  const bNote = await find(bob, doc.note);
  bNote.change((d) => { d.props.afterEve = true; });
  await synced(bNote, bob.adapter, { timeoutMs: SYNC_MS });
  await eventually("bob's change after eve's revocation at alice", () => aNote.doc().props.afterEve === true);
  assert.ok(!aNote.doc().text.includes('EVE'), `alice has eve's change: ${aNote.doc().text}`);
  await eve.repo.shutdown();
});

step('frank redeems a code invitation from alice over KUBE\'s signaling (one wrong code first), then edits', async () => {
  const { invitation, code } = createInvitation({ space: doc.space, role: 'editor', host: ids.alice.did });
  const hostSignal = await connectSignal({ url: state.url, identity: ids.alice });
  const guestSignal = await connectSignal({ url: state.url, identity: ids.frank });
  try {
    // The host names the space root in `admitted`: frank needs no other channel for it.
    const serving = await serveInvitation(hostSignal, new Host({ invitation, code, key: ids.alice, root: aRoot.documentId }));
    const wrong = code === '000000' ? '000001' : '000000';
    await assert.rejects(
      redeemInvitation(guestSignal, { invitation, code: wrong, key: ids.frank, timeoutMs: SYNC_MS }),
      (e) => e.code === 'wrong-code' && e.attemptsLeft === 2,
    );
    const { credential, root } = await redeemInvitation(guestSignal, { invitation, code, key: ids.frank, timeoutMs: SYNC_MS });
    assert.deepEqual(await serving.admitted, credential);
    assert.equal(root, aRoot.documentId);
    assert.equal(credential.subject, ids.frank.did);
    assert.deepEqual(credential.assertion, { type: 'SpaceMember', space: doc.space, role: 'editor' });
    cred.frank = credential;
    addCredential(aRoot, credential);
    await synced(aRoot, alice.adapter, { timeoutMs: SYNC_MS });
  } finally {
    hostSignal.close();
    guestSignal.close();
  }
  const frank = await connect('frank', ids.frank);
  const note = await find(frank, doc.note);
  note.change((d) => { d.props.byFrank = true; });
  await synced(note, frank.adapter, { timeoutMs: SYNC_MS });
  await eventually("frank's change at alice", () => aNote.doc().props.byFrank === true);
  assert.deepEqual(frank.errors, []);
  await frank.repo.shutdown();
});

step('kube restarts with the same data dir', async () => {
  await alice.repo.shutdown();
  await bob.repo.shutdown();
  state.url = await withTimeout(restartKube(), 25_000, 'kube restart');
}, 30_000);

step('after the restart, bob (a fresh repo) still finds everything, as it was left', async () => {
  bob = await connect('bob again', ids.bob);
  const root = await find(bob, doc.root);
  assert.deepEqual(objects(root.doc()), { [doc.task]: 'task', [doc.list]: 'list', [doc.note]: 'note' });
  const ids7 = credentials(root.doc()).map((c) => c.id).sort();
  assert.equal(ids7.length, 7, 'genesis, replicator, bob, dave, eve, eve\'s revocation, frank');
  assert.ok(ids7.includes(cred.eveRevocation.id) && ids7.includes(cred.frank.id));
  assert.equal(members(root.doc())[ids.frank.did], 'editor');
  assert.equal(members(root.doc())[ids.eve.did], undefined);
  const note = await find(bob, doc.note);
  assert.equal(note.doc().text, 'Bob was here. Hello from Alice.');
  assert.equal(note.doc().props.afterDave, true);
  assert.equal(note.doc().props.afterEve, true);
  assert.equal(note.doc().props.byFrank, true);
  const task = await find(bob, doc.task);
  assert.equal(task.doc().props.done, true);
  await find(bob, doc.list);
  assert.deepEqual(bob.errors, []);
  await bob.repo.shutdown();
});

// --- run ---------------------------------------------------------------------------------------

let n = 0;
for (const s of steps) {
  n += 1;
  const t0 = Date.now();
  try {
    await withTimeout(s.fn(), s.ms, s.name);
    console.log(`ok ${n} - ${s.name} (${Date.now() - t0} ms)`);
  } catch (e) {
    console.log(`not ok ${n} - ${s.name} (${Date.now() - t0} ms)`);
    console.error(e?.stack || e);
    process.exit(1);
  }
}
console.log(`all ${steps.length} steps passed`);
process.exit(0);
