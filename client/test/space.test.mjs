// The space documents of echo/PROTOCOL.md §2, made in an in-memory Repo (no network, no KUBE).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Repo, isImmutableString, splice } from '@automerge/automerge-repo';
import {
  Identity, createSpace, addMember, revoke, createObject, credentials, objects, asString,
  verifyCredential, spaceOf,
} from '../index.js';

const alice = Identity.generate();
const bob = Identity.generate();
const kube = Identity.generate();

/** The doc as plain JSON (ImmutableStrings become strings, text becomes a string). */
const plain = (doc) => JSON.parse(JSON.stringify(doc));

test('createSpace: root {kube, space, credentials, objects} with genesis and replicator credentials', () => {
  const repo = new Repo({ network: [] });
  const { space, root, spaceKey, credentials: made } = createSpace(repo, alice, { kubeDid: kube.did, issued: 1_700_000_000 });
  assert.match(space, /^did:key:z6Mk/);
  assert.equal(spaceKey.did, space);
  const doc = root.doc();
  assert.deepEqual(Object.keys(doc).sort(), ['credentials', 'kube', 'objects', 'space']);
  // Scalar strings, not collaborative text.
  assert.ok(isImmutableString(doc.kube) && isImmutableString(doc.space));
  assert.equal(asString(doc.kube), 'space');
  assert.equal(asString(doc.space), space);
  assert.equal(spaceOf(doc), space);
  assert.deepEqual(plain(doc.objects), {});

  const creds = credentials(doc);
  assert.equal(creds.length, 2);
  for (const [id, v] of Object.entries(doc.credentials)) {
    assert.ok(isImmutableString(v), 'a credential is stored as a JSON string');
    const c = JSON.parse(asString(v));
    assert.equal(c.id, id, 'keyed by its id');
    assert.ok(verifyCredential(c));
  }
  const genesis = creds.find((c) => c.assertion.type === 'SpaceGenesis');
  assert.deepEqual(genesis.assertion, { type: 'SpaceGenesis', space });
  assert.equal(genesis.issuer, space, 'genesis is issued by the space key');
  assert.equal(genesis.proof.signer, space);
  assert.equal(genesis.subject, alice.did, 'the first admin is the genesis subject');
  assert.equal(genesis.issued, 1_700_000_000);
  const repl = creds.find((c) => c.assertion.type === 'SpaceMember');
  assert.deepEqual(repl.assertion, { type: 'SpaceMember', space, role: 'replicator' });
  assert.equal(repl.issuer, alice.did);
  assert.equal(repl.proof.signer, alice.did);
  assert.equal(repl.subject, kube.did);
  assert.deepEqual(made.map((c) => c.id).sort(), creds.map((c) => c.id).sort());

  assert.throws(() => createSpace(repo, alice, { kubeDid: 'did:web:kube.example' }), /did:key/);
});

test('addMember and revoke add credentials to the root', () => {
  const repo = new Repo({ network: [] });
  const { space, root } = createSpace(repo, alice, { kubeDid: kube.did });
  const m = addMember(root, alice, bob.did, 'editor', { issued: 1_700_000_001 });
  assert.deepEqual(m.assertion, { type: 'SpaceMember', space, role: 'editor' });
  assert.equal(m.issuer, alice.did);
  assert.equal(m.subject, bob.did);
  assert.equal(JSON.parse(asString(root.doc().credentials[m.id])).id, m.id);
  assert.deepEqual(JSON.parse(asString(root.doc().credentials[m.id])), m);

  const r = revoke(root, alice, m.id);
  assert.deepEqual(r.assertion, { type: 'Revocation', credential: m.id });
  assert.equal(r.subject, bob.did, "a revocation's subject is the revoked credential's subject");
  assert.equal(r.issuer, alice.did);
  assert.ok(verifyCredential(r));
  assert.equal(credentials(root.doc()).length, 4);

  assert.throws(() => revoke(root, alice, 'f'.repeat(64)), /no credential/);
  assert.throws(() => addMember(root, alice, bob.did, 'owner'), /unknown role/);

  // A device of alice's grants in alice's name.
  const laptop = Identity.generate();
  const d = addMember(root, laptop, Identity.generate().did, 'reader', { issuer: alice.did });
  assert.equal(d.issuer, alice.did);
  assert.equal(d.proof.signer, laptop.did);
});

test('createObject: {space, type, props, refs, text} listed in the root objects', () => {
  const repo = new Repo({ network: [] });
  const { space, root } = createSpace(repo, alice, { kubeDid: kube.did });
  const a = createObject(repo, root, { type: 'task', props: { title: 'Buy milk', done: false, n: 3, x: 1.5, none: null } });
  const b = createObject(repo, root, { type: 'note', text: 'Hello', refs: { task: a } });
  const c = createObject(repo, root, { type: 'tag', refs: { task: a.documentId } });

  const da = a.doc();
  assert.deepEqual(Object.keys(da).sort(), ['props', 'refs', 'space', 'type'], 'no text key when no text is given');
  assert.deepEqual(plain(da), { space, type: 'task', props: { title: 'Buy milk', done: false, n: 3, x: 1.5, none: null }, refs: {} });
  assert.ok(isImmutableString(da.space) && isImmutableString(da.type) && isImmutableString(da.props.title));

  const db = b.doc();
  assert.equal(typeof db.text, 'string', 'text is Automerge text (a JS string in the doc)');
  assert.equal(db.text, 'Hello');
  assert.equal(asString(db.refs.task), a.documentId);
  assert.ok(isImmutableString(db.refs.task));
  assert.equal(asString(c.doc().refs.task), a.documentId);

  // Collaborative text can be edited in place.
  b.change((d) => splice(d, ['text'], 5, 0, ', world'));
  assert.equal(b.doc().text, 'Hello, world');
  assert.deepEqual(objects(root.doc()), { [a.documentId]: 'task', [b.documentId]: 'note', [c.documentId]: 'tag' });
  assert.deepEqual(plain(root.doc().objects[a.documentId]), { type: 'task' });
  assert.ok(isImmutableString(root.doc().objects[a.documentId].type));
  // documentIds are automerge-repo's (base58check of 16 bytes)
  assert.match(a.documentId, /^[1-9A-HJ-NP-Za-km-z]+$/);

  assert.throws(() => createObject(repo, root, { type: 'x', props: { bad: { nested: 1 } } }), /prop/);
  assert.throws(() => createObject(repo, root, { type: 'x', props: { bad: NaN } }), /prop/);
  assert.throws(() => createObject(repo, root, { props: {} }), /type/);
  assert.throws(() => createObject(repo, a, { type: 'x' }), /not a space root/);
});
