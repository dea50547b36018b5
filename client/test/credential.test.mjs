// Identities and credentials, byte for byte as halo (halo/CREDENTIALS.md, credential.rs, lib.rs).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import canonicalize from 'canonicalize';
import { ed25519 } from '@noble/curves/ed25519.js';
import { sha512 } from '@noble/hashes/sha2.js';
import { MAX_TIME } from '../src/credential.js';
import { utf8 } from '../src/encoding.js';
import {
  Identity, didToPublicKey, publicKeyToDid, verify,
  issueCredential, signedBytes, verifyCredential, credentialToJson,
  spaceGenesis, spaceMember, authorizedDevice, revocation,
} from '../index.js';

const seed = (b) => new Uint8Array(32).fill(b);
const text = (b) => new TextDecoder().decode(b);

// The vector of halo/CREDENTIALS.md (checked in Rust by credential::tests::byte_level_vector).
const VECTOR = {
  issuer: 'did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX',
  subject: 'did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH',
  space: 'did:key:z6MkvRXNYcE7MMduynWTgeKbDaT1iijDSC8pZqXZc8rHPrf2',
  bytes: '{"assertion":{"role":"editor","space":"did:key:z6MkvRXNYcE7MMduynWTgeKbDaT1iijDSC8pZqXZc8rHPrf2","type":"SpaceMember"},"issued":1700000000,"issuer":"did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX","signer":"did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX","subject":"did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH"}',
  id: '0852e3171365b01d77111936c5bccb9209853f984ba9264869ae83b6e0e59818',
  signature: 'dJARS7RDQUeFO5Xzt1kC_6kVtbxKRW2qLWjY6Bxrw78vbck78T8lMi_ybmkCIDGqCfuYpknys32ctNfj-r_yCw',
};

/** Node's own (OpenSSL) Ed25519 public key object for a raw 32-byte key. */
const nodeKey = (raw) => crypto.createPublicKey({
  key: Buffer.concat([Buffer.from('302a300506032b6570032100', 'hex'), Buffer.from(raw)]),
  format: 'der',
  type: 'spki',
});

test('the CREDENTIALS.md byte-level vector', () => {
  const issuer = Identity.fromSeed(seed(1));
  const subject = Identity.fromSeed(seed(2));
  const space = Identity.fromSeed(seed(3));
  assert.equal(issuer.did, VECTOR.issuer);
  assert.equal(subject.did, VECTOR.subject);
  assert.equal(space.did, VECTOR.space);

  const c = issueCredential({
    issuer: issuer.did,
    subject: subject.did,
    assertion: spaceMember(space.did, 'editor'),
    issued: 1_700_000_000,
    signer: issuer,
  });
  assert.equal(text(signedBytes(c)), VECTOR.bytes);
  assert.equal(c.id, VECTOR.id);
  assert.equal(c.proof.signature, VECTOR.signature);
  assert.equal(c.proof.signer, VECTOR.issuer);
  assert.equal('expires' in c, false, 'no expiry: the key is absent, not null');
  assert.ok(verifyCredential(c));

  // Independently: OpenSSL's SHA-256 and Ed25519 over the same bytes.
  const bytes = Buffer.from(VECTOR.bytes, 'utf8');
  assert.equal(crypto.createHash('sha256').update(bytes).digest('hex'), VECTOR.id);
  assert.ok(crypto.verify(null, bytes, nodeKey(issuer.publicKey), Buffer.from(VECTOR.signature, 'base64url')));
});

test('the credential JSON has halo field names and order, and round-trips', () => {
  const issuer = Identity.fromSeed(seed(1));
  const c = issueCredential({
    issuer: issuer.did, subject: VECTOR.subject, assertion: spaceMember(VECTOR.space, 'editor'),
    issued: 1_700_000_000, expires: 1_800_000_000, signer: issuer,
  });
  assert.deepEqual(Object.keys(c), ['id', 'issuer', 'subject', 'assertion', 'issued', 'expires', 'proof']);
  assert.deepEqual(Object.keys(c.proof), ['signer', 'signature']);
  assert.match(text(signedBytes(c)), /"expires":1800000000,"issued":1700000000,/);
  const json = credentialToJson(c);
  assert.equal(json, JSON.stringify(c));
  assert.ok(verifyCredential(JSON.parse(json)));
});

test('assertions use halo type tags and field names', () => {
  const d = VECTOR.space;
  assert.deepEqual(spaceGenesis(d), { type: 'SpaceGenesis', space: d });
  assert.deepEqual(spaceMember(d, 'reader'), { type: 'SpaceMember', space: d, role: 'reader' });
  assert.deepEqual(authorizedDevice(VECTOR.issuer, VECTOR.subject), { type: 'AuthorizedDevice', identity: VECTOR.issuer, device: VECTOR.subject });
  assert.deepEqual(revocation(VECTOR.id), { type: 'Revocation', credential: VECTOR.id });
  assert.throws(() => spaceMember(d, 'owner'), /unknown role/);
  const issuer = Identity.fromSeed(seed(1));
  const base = { issuer: issuer.did, subject: VECTOR.subject, issued: 1, signer: issuer };
  assert.throws(() => issueCredential({ ...base, assertion: { type: 'SpaceMember', space: d, role: 'editor', extra: 1 } }), /no field extra/);
  assert.throws(() => issueCredential({ ...base, assertion: { type: 'Nope' } }), /unknown assertion/);
  assert.throws(() => issueCredential({ ...base, assertion: spaceGenesis(d), issued: 1.5 }), /issued/);
  assert.throws(() => issueCredential({ ...base, assertion: spaceGenesis(d), issued: -1 }), /issued/);
});

test('a device signs for its identity; the proof names the device', () => {
  const alice = Identity.fromSeed(seed(1));
  const laptop = Identity.fromSeed(seed(4));
  const c = issueCredential({
    issuer: alice.did, subject: VECTOR.subject, assertion: spaceMember(VECTOR.space, 'reader'),
    issued: 1_700_000_000, signer: laptop,
  });
  assert.equal(c.issuer, alice.did);
  assert.equal(c.proof.signer, laptop.did);
  assert.match(text(signedBytes(c)), new RegExp(`"signer":"${laptop.did}"`));
  assert.ok(verifyCredential(c));
});

test('verifyCredential refuses any change', () => {
  const issuer = Identity.fromSeed(seed(1));
  const c = issueCredential({
    issuer: issuer.did, subject: VECTOR.subject, assertion: spaceMember(VECTOR.space, 'editor'),
    issued: 1_700_000_000, signer: issuer,
  });
  const tamper = (f) => { const x = structuredClone(c); f(x); return verifyCredential(x); };
  assert.equal(tamper((x) => { x.assertion.role = 'admin'; }), false, 'changed assertion (id no longer matches)');
  assert.equal(tamper((x) => { x.issued += 1; }), false);
  assert.equal(tamper((x) => { x.expires = 2_000_000_000; }), false);
  assert.equal(tamper((x) => { x.id = x.id.replace(/^./, (ch) => (ch === '0' ? '1' : '0')); }), false);
  assert.equal(tamper((x) => { x.proof.signature = x.proof.signature.slice(0, -2) + 'AA'; }), false);
  assert.equal(tamper((x) => { x.proof.signature += '='; }), false, 'padding is not base64url-no-pad');
  // Re-signed by someone else but claiming the same signer.
  const mallory = Identity.fromSeed(seed(5));
  assert.equal(tamper((x) => { x.proof.signature = Buffer.from(mallory.sign(signedBytes(c))).toString('base64url'); }), false);
});

test('did:key: published vectors, round trip, errors', () => {
  // halo/src/lib.rs published_did_key_vectors (publicKeyBase58 of the did documents).
  const b58 = (s) => {
    const A = '123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz';
    let n = 0n;
    for (const ch of s) n = n * 58n + BigInt(A.indexOf(ch));
    return Uint8Array.from(Buffer.from(n.toString(16).padStart(64, '0'), 'hex'));
  };
  for (const [did, key58] of [
    ['did:key:z6MkmjY8GnV5i9YTDtPETC2uUAW6ejw3nk5mXF5yci5ab7th', '8HH5gYEeNc3z7PYXmd54d4x6qAfCNrqQqEB3nS7Zfu7K'],
    ['did:key:z6Mkgg342Ycpuk263R9d8Aq6MUaxPn1DDeHyGo38EefXmgDL', '3Dn1SJNPaCXcvvJvSbsFWP2xaCjMom3can8CQNhWrTRx'],
  ]) {
    assert.equal(publicKeyToDid(b58(key58)), did);
    assert.deepEqual(didToPublicKey(did), b58(key58));
  }
  const me = Identity.fromSeed(seed(7));
  assert.match(me.did, /^did:key:z6Mk/);
  assert.deepEqual(didToPublicKey(me.did), me.publicKey);
  assert.throws(() => didToPublicKey('did:web:example.com'), /not a did:key/);
  assert.throws(() => didToPublicKey('did:key:z0OIl'), /base58/);
  assert.throws(() => didToPublicKey('did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme'), /another type/);
});

test('sign and verify agree with OpenSSL; verify never throws', () => {
  const me = Identity.generate();
  const other = Identity.generate();
  assert.notEqual(me.did, other.did);
  const msg = new TextEncoder().encode('hello');
  const sig = me.sign(msg);
  assert.equal(sig.length, 64);
  assert.ok(verify(me.did, msg, sig));
  assert.ok(crypto.verify(null, msg, nodeKey(me.publicKey), sig));
  assert.equal(verify(me.did, new TextEncoder().encode('hellO'), sig), false);
  assert.equal(verify(other.did, msg, sig), false);
  assert.equal(verify(me.did, msg, sig.subarray(0, 3)), false);
  assert.equal(verify('did:web:x', msg, sig), false);
  // fromSeed(exportSeed()) is the same key; OpenSSL's signature (deterministic) is the same.
  const again = Identity.fromSeed(me.exportSeed());
  assert.equal(again.did, me.did);
  const pkcs8 = Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), Buffer.from(me.exportSeed())]);
  const nodePriv = crypto.createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' });
  assert.deepEqual(Buffer.from(crypto.sign(null, msg, nodePriv)), Buffer.from(sig));
  assert.equal(JSON.stringify(me), JSON.stringify({ did: me.did }), 'JSON never shows the seed');
});

test('times up to 2^53 - 1, as halo (credential.rs MAX_TIME)', () => {
  const issuer = Identity.fromSeed(seed(1));
  const base = { issuer: issuer.did, subject: VECTOR.subject, assertion: spaceMember(VECTOR.space, 'editor'), issued: 1, signer: issuer };
  assert.equal(MAX_TIME, 2 ** 53 - 1);
  assert.ok(verifyCredential(issueCredential({ ...base, expires: MAX_TIME })));
  assert.throws(() => issueCredential({ ...base, expires: MAX_TIME + 1 }), /expires/);
  assert.throws(() => issueCredential({ ...base, issued: 2 ** 60 }), /issued/);
  // Signed over the bytes JCS writes for 2^53 (it prints doubles): refused all the same.
  const c = issueCredential({ ...base, expires: MAX_TIME });
  const bytes = utf8(canonicalize({ ...JSON.parse(text(signedBytes(c))), expires: 2 ** 53 }));
  const big = { ...c, expires: 2 ** 53, id: crypto.createHash('sha256').update(bytes).digest('hex'),
    proof: { signer: issuer.did, signature: Buffer.from(issuer.sign(bytes)).toString('base64url') } };
  assert.equal(text(signedBytes(big)), text(bytes));
  assert.equal(verifyCredential(big), false);
});

test('verifyCredential takes exactly what halo parses', () => {
  const issuer = Identity.fromSeed(seed(1));
  const c = issueCredential({
    issuer: issuer.did, subject: VECTOR.subject, assertion: spaceMember(VECTOR.space, 'editor'),
    issued: 1_700_000_000, signer: issuer,
  });
  const changed = (f) => { const x = structuredClone(c); f(x); return verifyCredential(x); };
  assert.equal(changed((x) => { x.expires = null; }), true, 'serde reads null as absent');
  assert.equal(credentialToJson({ ...c, expires: null }), credentialToJson(c));
  assert.equal(changed((x) => { x.note = 'hi'; }), false, 'unknown field');
  assert.equal(changed((x) => { x.proof.alg = 'EdDSA'; }), false, 'unknown proof field');
  assert.equal(changed((x) => { x.assertion.note = 'hi'; }), false, 'unknown assertion field');
  assert.equal(changed((x) => { x.issued = String(x.issued); }), false);
  assert.equal(changed((x) => { delete x.proof; }), false);
  assert.equal(changed((x) => { x.assertion.type = 'constructor'; }), false);
  assert.equal(verifyCredential([c.id, c.issuer]), false);
  // A lone surrogate is no text: serde_json refuses it (the id would not match anyway; the
  // check comes first).
  assert.equal(changed((x) => { x.subject += '\ud800'; }), false);
});

test('signatures as ed25519-dalek verify_strict: no small-order component', () => {
  // A key with a component of order 8 (A' = aB + T) signs with its scalar a: the cofactored
  // equation noble checks holds, the exact one halo checks does not.
  const { Point } = ed25519;
  const s0 = seed(9);
  const { scalar: a } = ed25519.utils.getExtendedPublicKey(s0);
  const T = Point.fromHex('26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05');
  const mixed = Point.BASE.multiply(a).add(T).toBytes();
  const signer = { did: publicKeyToDid(mixed), sign: (m) => signWith(a, mixed, m) };
  const c = issueCredential({
    issuer: signer.did, subject: VECTOR.subject, assertion: spaceMember(VECTOR.space, 'editor'),
    issued: 1_700_000_000, signer,
  });
  const sig = Buffer.from(c.proof.signature, 'base64url');
  assert.ok(ed25519.verify(sig, signedBytes(c), mixed, { zip215: false }), 'noble alone accepts it');
  assert.equal(verifyCredential(c), false);

  function signWith(scalar, pub, m) {
    const L = Point.Fn.ORDER;
    const le = (b) => BigInt(`0x${Buffer.from(b).reverse().toString('hex') || '0'}`);
    const r = le(sha512(new Uint8Array([7, ...m]))) % L;
    const R = Point.BASE.multiply(r).toBytes();
    const k = le(sha512(new Uint8Array([...R, ...pub, ...m]))) % L;
    const s = (r + k * scalar) % L;
    return new Uint8Array([...R, ...Buffer.from(s.toString(16).padStart(64, '0'), 'hex').reverse()]);
  }
});
