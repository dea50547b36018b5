// The sample app (examples/tasks) as people use it: KUBE serves the published bundle, and
// separate Chromium contexts (separate storage: Alice, Bob, Carol, Mallory) drive it through
// its data-testid controls. The spaces' documents flow peer to peer over WebRTC data channels
// that each side authenticates with its HALO key; KUBE signals, relays when asked to, and
// keeps a replica. tests/run builds the bundle (examples/tasks/build.mjs) before this runs and
// runs it in a network namespace with only `lo` up.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, writeFile, access } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { KUBE_BIN, REPO, run, startKube, stopKube, finishKube, makeNssHome, launchChromium } from './harness.mjs';

const DIST = path.join(REPO, 'examples', 'tasks', 'dist');
const WAIT = { timeout: 30_000 };
// Environment variable for each address in the `kube ready` line: a restart keeps them.
const LISTEN_ENV = {
  https: 'KUBE_HTTP_HTTPS_LISTEN',
  http: 'KUBE_HTTP_LISTEN',
  admin: 'KUBE_ADMIN_LISTEN',
  dns: 'KUBE_DNS_LISTEN',
  turn: 'KUBE_TURN_LISTEN',
};

describe('the tasks app, peer to peer in headless Chromium', { timeout: 300_000 }, () => {
  let root;
  let dataDir;
  let config;
  let kube;
  let addrs;
  let browser;
  let appUrl;
  let env;
  let failed = false;
  const guard = (fn) => async (t) => {
    try { await fn(t); } catch (e) { failed = true; throw e; }
  };
  const contexts = {};
  const pages = {};
  let space; // {space, root} of the space Alice creates

  const start = async (same = false) => {
    const overrides = same
      ? Object.fromEntries(Object.entries(LISTEN_ENV).filter(([k]) => addrs[k]).map(([k, v]) => [v, addrs[k]]))
      : {};
    kube = startKube(dataDir, ['-c', config], overrides);
    addrs = await kube.ready;
  };
  const kubeCli = (...args) => run(KUBE_BIN, args, env);

  /** Opens the app in `who`'s context and waits until it says it is interactive. */
  const open = async (who, query = '') => {
    if (!contexts[who]) contexts[who] = await browser.newContext();
    const page = await contexts[who].newPage();
    page.on('pageerror', (e) => console.error(`[${who}] page error: ${e.message}`));
    await page.goto(`${appUrl}${query}`);
    await page.waitForSelector('body[data-ready="1"]', WAIT);
    pages[who] = page;
    return page;
  };
  const addTask = async (page, title) => {
    await page.getByTestId('task-title').fill(title);
    await page.getByTestId('task-add').click();
  };
  const titles = (page) => page.getByTestId('task-text').allTextContents();
  const waitTitles = (page, want) => page.waitForFunction(
    (want) => {
      const have = [...document.querySelectorAll('[data-testid="task-text"]')].map((e) => e.textContent);
      return want.every((t) => have.includes(t));
    },
    want,
    WAIT,
  );
  const notes = (page) => page.getByTestId('notes').inputValue();
  const waitNotes = (page, parts) => page.waitForFunction(
    (parts) => parts.every((p) => document.querySelector('[data-testid="notes"]').value.includes(p)),
    parts,
    WAIT,
  );
  const appendNotes = async (page, text) => {
    const box = page.getByTestId('notes');
    await box.focus();
    await page.keyboard.press('Control+End');
    // One edit per string: typed key by key, two writers at the end of one text interleave
    // their letters (Automerge's tie-break decides the order; either is convergent).
    await page.keyboard.insertText(text);
  };
  const did = (page) => page.evaluate(() => window.kubeApp.identity.did);
  /** The state and path of `page`'s connection to the peer `other` (undefined when none). */
  const peerOf = (page, other) => page.evaluate(async (other) => {
    const p = window.kubeApp.p2p.peers().find((x) => x.did === other);
    if (!p) return undefined;
    return { state: p.state, path: p.state === 'open' ? await window.kubeApp.p2p.pathOf(other) : undefined };
  }, other);
  const waitPeer = (page, other, want = 'open') => page.waitForFunction(
    (a) => window.kubeApp.p2p.peers().some((x) => x.did === a.other && x.state === a.want),
    { other, want },
    WAIT,
  );
  /** A data channel with bytes both ways, from RTCPeerConnection.getStats(). */
  const channelStats = (page, other) => page.evaluate((other) => window.kubeApp.p2p.stats(other), other);
  const invite = async (page, role) => {
    await page.getByTestId('invite-role').selectOption(role);
    await page.getByTestId('invite').click();
    const link = page.getByTestId('invite-link');
    await link.waitFor(WAIT);
    const code = page.getByTestId('invite-code');
    return { link: (await link.textContent()).trim(), code: (await code.textContent()).trim() };
  };
  const join = async (who, { link, code }) => {
    if (!contexts[who]) contexts[who] = await browser.newContext();
    const page = await contexts[who].newPage();
    page.on('pageerror', (e) => console.error(`[${who}] page error: ${e.message}`));
    await page.goto(link);
    await page.waitForSelector('body[data-ready="1"]', WAIT);
    await page.getByTestId('join-code').fill(code);
    await page.getByTestId('join-submit').click();
    await page.getByTestId('task-list').waitFor(WAIT);
    pages[who] = page;
    return page;
  };
  const kubeTitles = async () => {
    const { stdout } = await kubeCli('space', 'query', space.space, '--type', 'task');
    return JSON.parse(stdout).map((o) => String(o.props?.title ?? ''));
  };
  const waitKubeTitles = async (want) => {
    const deadline = Date.now() + 30_000;
    let have = [];
    while (Date.now() < deadline) {
      try {
        have = await kubeTitles();
        if (want.every((t) => have.includes(t))) return have;
      } catch { /* KUBE may still be starting */ }
      await new Promise((r) => setTimeout(r, 250));
    }
    assert.fail(`KUBE's replica has ${JSON.stringify(have)}, wanted ${JSON.stringify(want)}`);
  };

  before(guard(async () => {
    await access(path.join(DIST, 'index.html')).catch(() => {
      throw new Error(`${DIST} is missing: build it with \`node examples/tasks/build.mjs\` (tests/run does)`);
    });
    root = await mkdtemp(path.join(tmpdir(), 'kube-tasks-'));
    dataDir = path.join(root, 'data');
    await mkdir(dataDir);
    config = path.join(root, 'kube.yml');
    // The relay refuses loopback peers unless opened on purpose; this test is all loopback.
    await writeFile(config, 'turn:\n  allow_peers: [127.0.0.0/8]\n  relay_port_min: 40000\n  relay_port_max: 49000\n');
    await start();
    env = { env: { ...process.env, KUBE_DATA_DIR: dataDir, KUBE_CONFIG: config } };
    const { stdout: pem } = await kubeCli('trust');
    await writeFile(path.join(root, 'ca.pem'), pem);
    await kubeCli('app', 'publish', DIST, '--name', 'tasks');
    const home = await makeNssHome(root, 'home', path.join(root, 'ca.pem'));
    browser = await launchChromium(home, [
      '--allow-loopback-in-peer-connection',
      // Host candidates as plain addresses (127.0.0.1), not mDNS names nobody resolves here.
      '--disable-features=WebRtcHideLocalIpsWithMdns',
    ]);
    appUrl = `https://tasks.localhost:${addrs.https.split(':').pop()}/`;
  }));

  after(async () => {
    if (browser) {
      if (failed) {
        for (const [who, page] of Object.entries(pages)) {
          try {
            const state = await page.evaluate(() => ({
              peers: window.kubeApp?.p2p?.peers(),
              signal: window.kubeApp?.p2p?.signalState,
              refused: window.kubeApp?.refused?.slice(-20),
              kube: document.querySelector('[data-testid="kube-status"]')?.textContent,
            }));
            console.error(`[${who}] ${JSON.stringify(state)}`);
            await page.screenshot({ path: path.join(tmpdir(), `kube-tasks-${who}.png`) });
            console.error(`[${who}] screenshot: ${path.join(tmpdir(), `kube-tasks-${who}.png`)}`);
          } catch { /* closed */ }
        }
      }
      await browser.close();
    }
    await finishKube(kube, root, failed);
  });

  it('Alice creates a space and invites Bob; concurrent edits converge over a direct data channel', guard(async () => {
    const alice = await open('alice');
    // The newcomer's path: KUBE's landing page links to the published app.
    const landing = await contexts.alice.newPage();
    await landing.goto(`https://localhost:${addrs.https.split(':').pop()}/`);
    assert.equal(await landing.locator(`a[href="${appUrl}"]`).count(), 1, await landing.content());
    await landing.close();
    await alice.getByTestId('create-space').click();
    await alice.getByTestId('task-list').waitFor(WAIT);
    space = await alice.evaluate(() => window.kubeApp.current());
    assert.match(space.space, /^did:key:z/);
    await addTask(alice, 'buy milk');
    const bob = await join('bob', await invite(alice, 'editor'));
    await waitTitles(bob, ['buy milk']);
    const [aliceDid, bobDid] = [await did(alice), await did(bob)];
    await waitPeer(alice, bobDid);
    await waitPeer(bob, aliceDid);

    // Both edit at once: tasks and the same notes text.
    await Promise.all([
      (async () => { await addTask(alice, 'alice 1'); await addTask(alice, 'alice 2'); await appendNotes(alice, ' from alice'); })(),
      (async () => { await addTask(bob, 'bob 1'); await addTask(bob, 'bob 2'); await appendNotes(bob, ' from bob'); })(),
    ]);
    await alice.getByTestId('task-done').first().check();
    const all = ['buy milk', 'alice 1', 'alice 2', 'bob 1', 'bob 2'];
    for (const page of [alice, bob]) {
      await waitTitles(page, all);
      await waitNotes(page, ['from alice', 'from bob']);
    }
    await bob.waitForFunction(() => document.querySelector('[data-testid="task-done"]:checked') !== null, null, WAIT);
    assert.equal(await notes(alice), await notes(bob), 'the notes converge to one text');
    assert.deepEqual((await titles(alice)).sort(), (await titles(bob)).sort());

    // The documents travelled on a data channel between the two browsers, not only via KUBE.
    for (const [page, other] of [[alice, bobDid], [bob, aliceDid]]) {
      const peer = await peerOf(page, other);
      assert.deepEqual(peer, { state: 'open', path: 'direct' });
      const s = await channelStats(page, other);
      assert.ok(s.dataChannel && s.dataChannel.state === 'open', JSON.stringify(s));
      assert.ok(s.dataChannel.messagesReceived > 0 && s.dataChannel.messagesSent > 0, JSON.stringify(s));
      // Host or server-reflexive (KUBE's STUN answers 127.0.0.1 here): a path between the
      // two browsers, never through the relay.
      assert.ok(['host', 'srflx', 'prflx'].includes(s.pair.local), JSON.stringify(s.pair));
      assert.ok(['host', 'srflx', 'prflx'].includes(s.pair.remote), JSON.stringify(s.pair));
    }
    await waitKubeTitles(all);
  }));

  it('with KUBE killed (-9) they keep editing and converge directly; a restarted KUBE catches up', guard(async () => {
    const { alice, bob } = pages;
    kube.child.kill('SIGKILL');
    await kube.waitExit();
    await alice.getByTestId('kube-status').filter({ hasText: /offline/i }).waitFor(WAIT);
    await addTask(alice, 'while down: alice');
    await addTask(bob, 'while down: bob');
    await appendNotes(bob, ' offline bob');
    for (const page of [alice, bob]) {
      await waitTitles(page, ['while down: alice', 'while down: bob']);
      await waitNotes(page, ['offline bob']);
    }
    await start(true);
    await waitKubeTitles(['while down: alice', 'while down: bob']);
    const { stdout } = await kubeCli('space', 'show', space.space);
    assert.match(stdout, /task/);
  }));

  it("Bob gets Alice's edits from KUBE alone, and reloads keep identity and data; the app opens with KUBE down", guard(async () => {
    const { alice, bob } = pages;
    const aliceDid = await did(alice);
    const bobDid = await did(bob);
    await bob.close();
    await addTask(alice, 'while bob was away');
    await waitKubeTitles(['while bob was away']);
    await alice.close();
    const bob2 = await open('bob');
    assert.equal(await did(bob2), bobDid, "Bob's identity survives a reload");
    await bob2.getByTestId('task-list').waitFor(WAIT);
    await waitTitles(bob2, ['buy milk', 'while bob was away']);
    const alice2 = await open('alice');
    assert.equal(await did(alice2), aliceDid);
    await waitTitles(alice2, ['buy milk', 'while bob was away']);

    // KUBE down: the service worker serves the app, which shows what the browser keeps.
    await stopKube(kube);
    await bob2.close();
    const bob3 = await open('bob');
    await bob3.getByTestId('task-list').waitFor(WAIT);
    await waitTitles(bob3, ['buy milk', 'while down: alice', 'while bob was away']);
    await bob3.getByTestId('kube-status').filter({ hasText: /offline/i }).waitFor(WAIT);
    await bob3.close();
    await start(true);
  }));

  it('relay only (iceTransportPolicy relay through KUBE\'s TURN) converges too', guard(async () => {
    await pages.alice.close();
    const alice = await open('alice', '?relay=1');
    const bob = await open('bob', '?relay=1');
    const [aliceDid, bobDid] = [await did(alice), await did(bob)];
    await waitPeer(alice, bobDid);
    await waitPeer(bob, aliceDid);
    await addTask(alice, 'relayed alice');
    await addTask(bob, 'relayed bob');
    for (const page of [alice, bob]) await waitTitles(page, ['relayed alice', 'relayed bob']);
    assert.deepEqual(await peerOf(alice, bobDid), { state: 'open', path: 'relay' });
    const s = await channelStats(alice, bobDid);
    assert.equal(s.pair.local, 'relay');
  }));

  it('a stranger in the swarm gets nothing; a reader\'s edits are dropped by the peers; a revoked member is cut off', guard(async () => {
    const { alice, bob } = pages;
    const aliceDid = await did(alice);
    const bobDid = await did(bob);

    // Mallory knows the space and joins its swarm (signaling only checks keys).
    const mallory = await open('mallory');
    await mallory.evaluate((s) => window.kubeApp.p2p.joinSpace(s.space), space);
    // The peers authenticate her, find she is no member and close: no open connection, and
    // her copy of the root stays empty.
    await alice.waitForFunction(
      () => window.kubeApp.refused.some((r) => r.reason === 'not-member' || r.reason === 'not-allowed'),
      null,
      WAIT,
    ).catch(() => {});
    const malloryDid = await did(mallory);
    assert.equal((await peerOf(alice, malloryDid))?.state === 'open', false);
    const got = await mallory.evaluate(async (s) => {
      const h = window.kubeApp.repo.find(s.root, { allowableStates: ['ready', 'unavailable', 'requesting'] });
      const handle = await Promise.race([h, new Promise((r) => setTimeout(() => r(null), 5000))]);
      const doc = handle?.isReady?.() ? handle.doc() : undefined;
      return doc ? Object.keys(doc.objects ?? {}).length : 0;
    }, space);
    assert.equal(got, 0, 'Mallory received no document of the space');

    // Carol joins as a reader; her edit reaches neither Alice nor Bob.
    const carol = await join('carol', await invite(alice, 'reader'));
    const carolDid = await did(carol);
    await waitTitles(carol, ['buy milk']);
    await waitPeer(alice, carolDid);
    await carol.evaluate(() => window.kubeApp.forceEdit('buy milk', 'edited by a reader'));
    await alice.waitForFunction(
      (d) => window.kubeApp.refused.some((r) => r.did === d && r.reason === 'reader'),
      carolDid,
      WAIT,
    );
    await new Promise((r) => setTimeout(r, 1000));
    for (const page of [alice, bob]) {
      assert.ok(!(await titles(page)).includes('edited by a reader'), "a reader's change was applied");
    }

    // Alice revokes Carol: both peers drop her connection, and so does KUBE.
    await alice.getByTestId('member').filter({ hasText: carolDid.slice(-8) }).getByTestId('member-revoke').click();
    for (const page of [alice, bob]) {
      await page.waitForFunction((d) => !window.kubeApp.p2p.peers().some((x) => x.did === d && x.state === 'open'), carolDid, WAIT);
    }
    // KUBE closes her ECHO connection too (counted as a refusal for `revoked`).
    const deadline = Date.now() + 15_000;
    let revoked = 0;
    while (Date.now() < deadline && revoked < 1) {
      const metrics = await (await fetch(`http://${addrs.admin}/metrics`)).text();
      revoked = Number(metrics.match(/^kube_echo_refused_total\{reason="revoked"\} (\d+)/m)?.[1] ?? 0);
      if (revoked < 1) await new Promise((r) => setTimeout(r, 250));
    }
    assert.ok(revoked >= 1, 'KUBE closed the revoked member\'s connection');
    await addTask(alice, 'after carol left');
    await waitTitles(bob, ['after carol left']);
    await new Promise((r) => setTimeout(r, 1000));
    assert.ok(!(await titles(carol)).includes('after carol left'), 'a revoked member still receives changes');
    assert.ok(aliceDid && bobDid);
  }));
});
