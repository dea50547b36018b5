// Several KUBEs (issue 18), run by cluster.test.mjs in a child that trusts both KUBEs' CAs
// (NODE_EXTRA_CA_CERTS). Env: KUBE_A and KUBE_B (https://127.0.0.1:PORT), two KUBEs linked
// by echo.peers. A client lists both KUBEs (one adapter each, the stock automerge-repo way)
// and makes a space that admits both as replicators; a client of B alone and a client of A
// alone then read and write the same object, each through the KUBE it knows.

import assert from 'node:assert/strict';
import { Repo } from '@automerge/automerge-repo';
import {
  Identity, connectKube, synced, createSpace, addMember, createObject, asString,
  connectSignal, connectSignals,
} from '@kube/client';

const MS = 15_000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function eventually(what, cond, ms = MS) {
  const t0 = Date.now();
  for (;;) {
    try {
      if (await cond()) return;
    } catch {
      // not there yet
    }
    if (Date.now() - t0 > ms) throw new Error(`not within ${ms} ms: ${what}`);
    await sleep(50);
  }
}

/** An adapter to the KUBE at `url` (it connects once a Repo uses it). */
async function adapter(url, identity) {
  const a = await connectKube({ url, identity, retryInterval: 500 });
  a.on('kube-connection-error', (e) => console.log(`  (${url}: ${e.message})`));
  return a;
}

/** A Repo on `adapters`, once each KUBE has answered. */
async function repoOn(...adapters) {
  const repo = new Repo({ network: adapters });
  for (const a of adapters) await eventually('connected', () => a.kubeStorageId !== undefined);
  return repo;
}

const [A, B] = [process.env.KUBE_A, process.env.KUBE_B];
assert.ok(A && B, 'KUBE_A and KUBE_B are set');
const alice = Identity.generate();

// 1. A client that lists both KUBEs.
const toA = await adapter(A, alice);
const toB = await adapter(B, alice);
const both = await repoOn(toA, toB);
const { root } = createSpace(both, alice, { kubeDid: toA.kubeDid });
addMember(root, alice, toB.kubeDid, 'replicator');
const task = createObject(both, root, { type: 'task', props: { title: 'one' } });
await Promise.all([synced(root, toA, { timeoutMs: MS }), synced(task, toA, { timeoutMs: MS })]);
await Promise.all([synced(root, toB, { timeoutMs: MS }), synced(task, toB, { timeoutMs: MS })]);
console.log('ok 1 - a client listing both KUBEs has its space acknowledged by both');
// That client leaves: from here on only the KUBEs' link carries changes between them.
toA.disconnect();
toB.disconnect();

// 2. A client of B alone changes the object.
const onlyB = await adapter(B, alice);
const repoB = await repoOn(onlyB);
const atB = await repoB.find(task.url, { signal: AbortSignal.timeout(MS) });
assert.equal(asString(atB.doc().props.title), 'one');
atB.change((d) => { d.props.title = 'two'; });
await synced(atB, onlyB, { timeoutMs: MS });
console.log('ok 2 - a client of B alone reads and writes the object');

// 3. A client of A alone sees B's change (it reached A over the KUBEs' link).
const onlyA = await adapter(A, alice);
const repoA = await repoOn(onlyA);
await eventually('B\'s change at A', async () => {
  const h = await repoA.find(task.url, { signal: AbortSignal.timeout(2000) });
  return asString(h.doc().props.title) === 'two';
});
console.log('ok 3 - a client of A alone sees the change written at B');

// 4. A stranger gets nothing from either KUBE.
const mallory = Identity.generate();
for (const url of [A, B]) {
  const r = await repoOn(await adapter(url, mallory));
  await assert.rejects(r.find(task.url, { signal: AbortSignal.timeout(3000) }));
}
console.log('ok 4 - a stranger gets nothing from either KUBE');

// 5. Signaling through both KUBEs: a peer listing both finds peers joined at either one, and
//    its signals reach each through the KUBE where it is.
const swarm = 'ab'.repeat(32);
const [yan, zoe, xia] = [Identity.generate(), Identity.generate(), Identity.generate()];
const y = await connectSignal({ url: B, identity: yan });
const z = await connectSignal({ url: A, identity: zoe });
assert.deepEqual(await y.join(swarm), []);
assert.deepEqual(await z.join(swarm), []);
const x = await connectSignals({ urls: [A, B], identity: xia });
const seen = (await x.join(swarm)).sort();
assert.deepEqual(seen, [yan.did, zoe.did].sort());
const got = (client, from) => new Promise((resolve) => {
  const off = client.on('signal', (m) => { if (m.from === from) { off(); resolve(m.payload); } });
});
const atY = got(y, xia.did);
const atZ = got(z, xia.did);
x.send(yan.did, swarm, { hello: 'yan' });
x.send(zoe.did, swarm, { hello: 'zoe' });
assert.deepEqual(await atY, { hello: 'yan' });
assert.deepEqual(await atZ, { hello: 'zoe' });
console.log('ok 5 - a peer signalling through both KUBEs reaches peers joined at either');

// 6. Its ICE servers come from both KUBEs; a peer leaving its only KUBE is gone.
const { servers } = await x.iceServers();
const urls = servers.flatMap((s) => s.urls);
assert.ok(urls.length >= 4, JSON.stringify(urls));
const left = new Promise((resolve) => x.on('peer-left', (m) => { if (m.peer === zoe.did) resolve(); }));
z.leave(swarm);
await left;
x.close();
y.close();
z.close();
console.log('ok 6 - ICE servers of both KUBEs; a peer that left its KUBE is gone');
console.log('all 6 steps passed');
process.exit(0);
