// The tasks app: a collaborative task list with shared notes. One automerge-repo Repo keeps
// the documents in IndexedDB and syncs them over two networks at once: KUBE's ECHO (a
// WebSocket; KUBE keeps a replica) and WebRTC data channels between the members' browsers
// (KUBE only introduces them), so two browsers keep working together while KUBE is down.
// Who may get and change what is decided from each space's root credentials (SpaceAccess).

import { Repo, isValidDocumentId } from '@automerge/automerge-repo/slim';
import { ImmutableString, initializeWasm } from '@automerge/automerge/slim';
import { IndexedDBStorageAdapter } from '@automerge/automerge-repo-storage-indexeddb';
import {
  ECHO_PATH, KubeAdapter, SpaceAccess, WebRTCAdapter, addCredential, asString, connectKube,
  connectSignal, createObject, createSpace, credentials, objects, redeemInvitation, revoke,
  validateSpace,
} from '@kube/client';
import { bindNotes } from './notes.js';
import { invitationLink, offerInvitation, parseJoinHash } from './invite.js';
import {
  loadCurrent, loadIdentity, loadKube, loadSpaces, saveCurrent, saveKube, saveSpaces,
} from './store.js';

/* global __AUTOMERGE_WASM__ */
// Set by build.mjs: the hashed URL of Automerge's wasm. Fetched at once, compiled while it
// streams in (index.html preloads it too).
const wasm = initializeWasm(fetch(__AUTOMERGE_WASM__));

const KUBE_URL = location.origin;
const RELAY_ONLY = new URLSearchParams(location.search).get('relay') === '1';
const WRITERS = new Set(['admin', 'editor', 'replicator']);
const $ = (id) => /** @type {any} */ (document.querySelector(`[data-testid="${id}"]`));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const short = (did) => (typeof did === 'string' && did.length > 24 ? `${did.slice(8, 14)}…${did.slice(-8)}` : String(did));

async function main() {
  const [identity] = await Promise.all([loadIdentity(), wasm]);

  // ---- networks ----

  let repo;
  // `docOf` lets SpaceAccess judge an object's incoming changes on a copy of our current doc.
  const access = new SpaceAccess({
    docOf: (id) => {
      const h = repo?.handles[id];
      return h?.isReady() ? h.doc() : undefined;
    },
  });
  /** @type {Promise<import('@kube/client').SignalClient>|undefined} */
  let signalConn;
  /** One signaling connection for WebRTC and invitations alike: KUBE closes the older of two
   * connections made with the same key. A new one is made when it closed. */
  const signal = () => {
    if (!signalConn) {
      const p = connectSignal({ url: KUBE_URL, identity }).then((s) => {
        s.on('close', () => {
          if (signalConn === p) signalConn = undefined;
          schedule();
        });
        return s;
      });
      p.catch(() => {
        if (signalConn === p) signalConn = undefined;
      });
      signalConn = p;
    }
    return signalConn;
  };

  const refused = [];
  // Without WebRTC (an old browser, a locked-down profile) the app still works through KUBE.
  let p2p;
  if (typeof RTCPeerConnection === 'function') {
    p2p = new WebRTCAdapter({ identity, signal, access, iceTransportPolicy: RELAY_ONLY ? 'relay' : 'all' });
  } else {
    console.warn('no WebRTC in this browser: syncing through KUBE only');
  }

  let kube; // the KubeAdapter, once KUBE's did is known (cached or fetched)
  let kubeOnline = false;
  const kubeKnown = loadKube();
  const kubeWaiters = [];

  const makeKube = ({ did, clockOffset }) => {
    const endpoint = new URL(ECHO_PATH, KUBE_URL);
    endpoint.protocol = endpoint.protocol === 'https:' ? 'wss:' : 'ws:';
    const k = new KubeAdapter({ endpoint: endpoint.toString(), identity, kubeDid: did, clockOffset });
    k.on('peer-candidate', () => setKubeOnline(true));
    k.on('peer-disconnected', () => setKubeOnline(false));
    k.on('kube-error', (m) => {
      console.warn('KUBE:', m);
      if (/^revoked/.test(m)) showMessage(`KUBE: ${m}`);
    });
    k.on('kube-connection-error', () => setKubeOnline(false));
    return k;
  };
  if (kubeKnown) kube = makeKube(kubeKnown);

  const isKubePeer = (peerId) => (kube !== undefined && peerId === kube.kubePeerId)
    || !p2p || p2p.didOf(peerId) === undefined;
  /** KUBE gets everything (it enforces its own rules); a browser peer gets a space's
   * documents only while the space's credentials make it a member. */
  const share = async (peerId, documentId) => {
    if (isKubePeer(peerId)) return true;
    const did = p2p.didOf(peerId);
    return documentId !== undefined && did !== undefined && access.mayShare(did, documentId);
  };

  repo = new Repo({
    storage: new IndexedDBStorageAdapter('kube-tasks'),
    network: [kube, p2p].filter(Boolean),
    shareConfig: { announce: share, access: share },
  });
  access.on('change', () => {
    repo.shareConfigChanged();
    schedule();
  });
  if (p2p) {
    p2p.on('peers', schedule);
    p2p.on('signal-state', schedule);
    p2p.on('refused', (e) => {
      refused.push(e && typeof e === 'object' ? e : { reason: String(e) });
      if (refused.length > 1000) refused.splice(0, refused.length - 1000);
      schedule();
    });
  }

  /** KUBE's did and clock from /.well-known/kube/identity, retried until KUBE answers once:
   * the first time it makes the adapter (the Repo starts without one), later it brings the
   * cached did and clock up to date. */
  const refreshKube = async () => {
    for (let delay = 1000; ; delay = Math.min(2 * delay, 30_000)) {
      try {
        const fresh = await connectKube({ url: KUBE_URL, identity, fetch: fetchWithTimeout });
        const seen = { did: fresh.kubeDid, clockOffset: fresh.clockOffset };
        saveKube(seen);
        if (!kube) {
          kube = makeKube(seen);
          repo.networkSubsystem.addNetworkAdapter(kube);
        } else if (kube.kubeDid !== seen.did) {
          kube.kubeDid = seen.did; // a new KUBE on this origin
          kube.clockOffset = seen.clockOffset;
          if (kube.peerId) kube.reconnect();
        } else {
          kube.clockOffset = seen.clockOffset;
        }
        kubeWaiters.splice(0).forEach((f) => f());
        schedule();
        return;
      } catch {
        await sleep(delay);
      }
    }
  };
  /** KUBE's did, waiting up to `ms` for the identity endpoint when it was never seen. */
  const kubeDid = async (ms = 10_000) => {
    if (kube) return kube.kubeDid;
    await Promise.race([new Promise((r) => kubeWaiters.push(r)), sleep(ms)]);
    if (!kube) throw new Error('KUBE is not reachable, and this browser has never seen it: try again when it is.');
    return kube.kubeDid;
  };

  function setKubeOnline(v) {
    if (kubeOnline !== v) {
      kubeOnline = v;
      schedule();
    }
  }

  // ---- documents ----

  /** @type {Map<string, any>} documentId → DocHandle, each watched once */
  const handles = new Map();
  const handleOf = (id) => {
    let h = handles.get(id);
    if (!h) {
      h = repo.findWithProgress(id).handle;
      handles.set(id, h);
      h.on('change', schedule);
      h.on('remote-heads', schedule);
      h.whenReady(['ready']).then(schedule, () => {});
    }
    return h;
  };
  const docOf = (h) => {
    try {
      return h?.isReady() ? h.doc() : undefined;
    } catch {
      return undefined;
    }
  };

  let spaces = loadSpaces();
  let current = loadCurrent();
  if (!spaces.some((s) => s.space === current)) current = spaces[0]?.space;

  const registerSpace = (rec) => {
    const root = handleOf(rec.root);
    if (!access.spaces().includes(rec.space)) {
      try {
        access.addSpace({ space: rec.space, root, bootstrap: rec.bootstrap });
      } catch (e) {
        console.warn(`space ${rec.space}:`, e);
      }
    }
    if (p2p) Promise.resolve().then(() => p2p.joinSpace(rec.space)).catch((e) => console.warn('joinSpace:', e));
  };
  const addSpaceRecord = (rec) => {
    spaces = [...spaces.filter((s) => s.space !== rec.space), rec];
    saveSpaces(spaces);
    registerSpace(rec);
    setCurrent(rec.space);
  };
  const setCurrent = (space) => {
    current = space;
    saveCurrent(space);
    schedule();
  };
  const currentRecord = () => spaces.find((s) => s.space === current);

  /** The current space as the screen shows it. */
  const view = () => {
    const rec = currentRecord();
    if (!rec) return undefined;
    const root = handleOf(rec.root);
    const rootDoc = docOf(root);
    const index = rootDoc ? objects(rootDoc) : {};
    const ids = Object.keys(index).filter((id) => isValidDocumentId(id));
    const notesId = ids.filter((id) => index[id] === 'notes').sort()[0];
    const notes = notesId ? handleOf(notesId) : undefined;
    const tasks = [];
    for (const id of ids) {
      if (index[id] !== 'task') continue;
      const d = docOf(handleOf(id));
      if (!d) continue;
      tasks.push({
        id,
        title: asString(d.props?.title) ?? '',
        done: d.props?.done === true,
        created: typeof d.props?.created === 'number' ? d.props.created : 0,
      });
    }
    tasks.sort((a, b) => a.created - b.created || (a.id < b.id ? -1 : 1));
    const role = access.roleOf(identity.did, rec.space);
    const title = asString(docOf(notes)?.props?.title) || rec.name || 'Tasks';
    return { rec, root, rootDoc, ids, notes, tasks, role, title };
  };

  // ---- actions ----

  async function createList(name) {
    const did = await kubeDid();
    const { space, root } = createSpace(repo, identity, { kubeDid: did });
    createObject(repo, root, { type: 'notes', props: { title: name }, text: '' });
    addSpaceRecord({ space, root: root.documentId, bootstrap: [], name });
  }

  function addTask(title) {
    const v = view();
    if (!v?.rootDoc || !WRITERS.has(v.role)) return;
    createObject(repo, v.root, { type: 'task', props: { title, done: false, created: Date.now() } });
  }

  function setDone(id, done) {
    handleOf(id).change((d) => {
      d.props.done = done;
    });
  }

  /** Revokes every credential that makes `did` a member (an admin's revocation counts). */
  function revokeMember(did) {
    const v = view();
    if (!v?.rootDoc) return;
    const creds = credentials(v.rootDoc);
    const m = validateSpace(v.rec.space, creds);
    const gone = new Set(m.rejected.filter(([, why]) => why === 'revoked').map(([id]) => id));
    for (const c of creds) {
      const t = c?.assertion?.type;
      if ((t === 'SpaceMember' || t === 'SpaceGenesis') && c.subject === did && !gone.has(c.id)) {
        revoke(v.root, identity, c.id);
      }
    }
  }

  /** For tests: change a task's title whatever the UI allows (a reader's edit). */
  function forceEdit(from, to) {
    const v = view();
    const t = v?.tasks.find((x) => x.title === from);
    if (!t) return false;
    handleOf(t.id).change((d) => {
      d.props.title = new ImmutableString(to);
    });
    return true;
  }

  // ---- invitations ----

  let invite; // what the invite panel shows: {space, link, code, status, error}
  async function startInvite(role) {
    const v = view();
    if (!v?.rootDoc) return;
    const { rec, root, title } = v;
    // This invitation's panel state; a later invitation replaces it on screen, while this one
    // is still served until used or expired.
    const slot = { space: rec.space, status: 'Preparing an invitation…' };
    invite = slot;
    render(); // at once: the previous link and code must not stay readable meanwhile
    try {
      const offered = await offerInvitation({
        signal,
        identity,
        space: rec.space,
        root: rec.root,
        role,
        onAdmitted: (cred) => {
          addCredential(root, cred);
          slot.status = `${short(cred.subject)} joined as ${role}.`;
          schedule();
        },
        onEnded: (e) => {
          slot.status = e.message;
          schedule();
        },
      });
      slot.link = invitationLink({ invitation: offered.invitation, kube: kube?.kubeDid, name: title });
      slot.code = offered.code;
      slot.status = `Waiting for someone to use it (valid for 10 minutes, once, as ${role}).`;
    } catch (e) {
      console.warn('invite:', e);
      slot.error = 'KUBE is not reachable right now: inviting needs it to introduce you.';
    }
    schedule();
  }

  let joining; // {info, error, busy} while an invitation link is open
  const clearHash = () => history.replaceState(null, '', location.pathname + location.search);
  function readJoinHash() {
    let info;
    try {
      info = parseJoinHash(location.hash);
    } catch (e) {
      joining = { error: e.message };
      schedule();
      return;
    }
    if (!info) return;
    const have = spaces.find((s) => s.space === info.invitation.space);
    if (have) {
      clearHash();
      joining = undefined;
      setCurrent(have.space);
      return;
    }
    joining = { info };
    if (!isValidDocumentId(info.root)) joining.error = 'This invitation link is damaged: copy the whole link.';
    else if (info.invitation.expires * 1000 < Date.now()) joining.error = 'This invitation has expired: ask for a new one.';
    schedule();
  }

  const joinErrors = {
    'wrong-code': (e) => `Wrong code. ${e.attemptsLeft ?? 'No'} attempt${e.attemptsLeft === 1 ? '' : 's'} left.`,
    expired: () => 'This invitation has expired: ask for a new one.',
    used: () => 'This invitation has been used already: ask for a new one.',
    dead: () => 'Too many wrong codes: ask for a new invitation.',
    unknown: () => 'The person who invited you no longer offers this invitation: ask for a new one.',
    busy: () => 'The person who invited you is busy with other guests: try again in a minute.',
    'wrong-key': () => 'This invitation is for someone else.',
  };
  async function join(code) {
    const j = joining;
    if (!j?.info || j.busy) return;
    code = code.replace(/\s+/g, '');
    if (!/^[0-9]{6}$/.test(code)) {
      j.error = 'The code has six digits.';
      schedule();
      return;
    }
    j.busy = true;
    j.error = undefined;
    schedule();
    const { invitation, name } = j.info;
    let root;
    try {
      let s;
      try {
        s = await signal();
      } catch {
        throw new Error('KUBE is not reachable: joining needs it to reach the person who invited you.');
      }
      const redeemed = await redeemInvitation(s, { invitation, code, key: identity });
      // The host names the root in `admitted`; an older link carries it instead.
      root = redeemed.root ?? j.info.root;
      if (!root) throw new Error('The person who invited you runs an older version of the app: ask them for a new link.');
    } catch (e) {
      j.busy = false;
      j.error = joinErrors[e?.code]?.(e)
        ?? (/no answer from the host/.test(e?.message) ? 'The person who invited you is not reachable: they need to have the app open.' : e?.message ?? String(e));
      schedule();
      return;
    }
    joining = undefined;
    clearHash();
    addSpaceRecord({ space: invitation.space, root, bootstrap: [invitation.host], name });
  }

  // ---- screen ----

  const el = {
    title: $('space-title'),
    select: $('space-select'),
    status: $('kube-status'),
    message: $('app-message'),
    join: $('join'),
    joinName: $('join-name'),
    joinCode: $('join-code'),
    joinSubmit: $('join-submit'),
    joinError: $('join-error'),
    welcome: $('welcome'),
    space: $('space'),
    taskTitle: $('task-title'),
    taskAdd: $('task-add'),
    taskList: $('task-list'),
    notes: $('notes'),
    synced: $('kube-synced'),
    invitePanel: $('invite-panel'),
    inviteRole: $('invite-role'),
    invite: $('invite'),
    inviteResult: $('invite-result'),
    inviteLink: $('invite-link'),
    inviteCode: $('invite-code'),
    inviteStatus: $('invite-status'),
    myRole: $('my-role'),
    members: $('members'),
    peers: $('peers'),
    signalState: $('signal-state'),
    identity: $('identity'),
  };
  let canWrite = false;
  const notes = bindNotes(el.notes, { canWrite: () => canWrite });

  let messageTimer;
  function showMessage(text) {
    el.message.textContent = text;
    el.message.hidden = false;
    clearTimeout(messageTimer);
    messageTimer = setTimeout(() => {
      el.message.hidden = true;
    }, 8000);
  }

  const label = (did) => {
    if (did === identity.did) return 'you';
    if (did === (kube?.kubeDid ?? kubeKnown?.did)) return 'KUBE';
    return short(did);
  };

  function renderTasks(tasks, writable) {
    const list = el.taskList;
    const old = new Map([...list.children].map((li) => [li.dataset.id, li]));
    let prev = null;
    for (const t of tasks) {
      let li = old.get(t.id);
      old.delete(t.id);
      if (!li) {
        li = document.createElement('li');
        li.dataset.testid = 'task-item';
        li.dataset.id = t.id;
        const box = document.createElement('input');
        box.type = 'checkbox';
        box.dataset.testid = 'task-done';
        box.addEventListener('change', () => setDone(t.id, box.checked));
        const text = document.createElement('span');
        text.dataset.testid = 'task-text';
        const lab = document.createElement('label');
        lab.append(box, text);
        li.append(lab);
      }
      const box = li.querySelector('[data-testid="task-done"]');
      const text = li.querySelector('[data-testid="task-text"]');
      if (box.checked !== t.done) box.checked = t.done;
      box.disabled = !writable;
      if (text.textContent !== t.title) text.textContent = t.title;
      li.classList.toggle('done', t.done);
      const want = prev ? prev.nextSibling : list.firstChild;
      if (want !== li) list.insertBefore(li, want);
      prev = li;
    }
    for (const li of old.values()) li.remove();
  }

  /** Replaces a list's items with `items` ({key, make(), update(li)}), keeping unchanged ones. */
  function renderList(list, items) {
    const old = new Map([...list.children].map((li) => [li.dataset.key, li]));
    let prev = null;
    for (const item of items) {
      let li = old.get(item.key);
      old.delete(item.key);
      if (!li) {
        li = item.make();
        li.dataset.key = item.key;
      }
      item.update(li);
      const want = prev ? prev.nextSibling : list.firstChild;
      if (want !== li) list.insertBefore(li, want);
      prev = li;
    }
    for (const li of old.values()) li.remove();
  }

  function render() {
    const v = view();
    const online = kubeOnline && kube?.socket?.readyState === 1;
    el.status.textContent = online ? 'KUBE online' : 'KUBE offline';
    el.status.dataset.state = online ? 'online' : 'offline';
    el.identity.textContent = identity.did;

    // Spaces
    el.select.hidden = spaces.length < 2;
    renderList(el.select, spaces.map((s) => ({
      key: s.space,
      make: () => document.createElement('option'),
      update: (o) => {
        o.value = s.space;
        const n = s.space === current && v ? v.title : (s.name || short(s.space));
        if (o.textContent !== n) o.textContent = n;
      },
    })));
    if (current && el.select.value !== current) el.select.value = current;

    // Join
    el.join.hidden = !joining;
    if (joining) {
      el.joinName.textContent = joining.info?.name ? `“${joining.info.name}”` : 'a list';
      el.joinSubmit.disabled = !!joining.busy || !joining.info;
      el.joinSubmit.textContent = joining.busy ? 'Joining…' : 'Join';
      el.joinError.textContent = joining.error ?? '';
      el.joinError.hidden = !joining.error;
    }
    el.welcome.hidden = !!(v || joining);

    // The space
    el.space.hidden = !v;
    el.invitePanel.hidden = !(v && v.role === 'admin');
    const title = v ? v.title : 'Tasks';
    if (el.title.textContent !== title) el.title.textContent = title;
    document.title = `${title} · KUBE`;
    canWrite = !!v && WRITERS.has(v.role);
    el.taskTitle.disabled = !canWrite;
    el.taskAdd.disabled = !canWrite;
    el.notes.readOnly = !canWrite;
    $('read-only').hidden = !v?.role || canWrite;
    el.myRole.textContent = v?.role ? `(you: ${v.role})` : '';
    renderTasks(v ? v.tasks : [], canWrite);
    notes.show(v?.notes);
    notes.refresh();
    el.notes.disabled = !v?.notes?.isReady();

    // What KUBE has confirmed of this space (its heads cover ours).
    const sid = kube?.kubeStorageId;
    if (v?.rootDoc && sid) {
      const docs = [v.root, ...v.ids.map(handleOf)].filter((h) => h.isReady());
      const behind = docs.filter((h) => {
        const remote = h.getSyncInfo(sid)?.lastHeads;
        return !remote || !h.heads().every((x) => remote.includes(x));
      }).length;
      el.synced.dataset.pending = String(behind);
      el.synced.textContent = behind === 0 ? 'Everything here is saved on KUBE.'
        : `${behind} document${behind === 1 ? '' : 's'} with changes KUBE has not confirmed yet.`;
    } else {
      el.synced.textContent = '';
      delete el.synced.dataset.pending;
    }

    // Invitation
    const inv = invite && v && invite.space === v.rec.space ? invite : undefined;
    el.inviteResult.hidden = !inv?.link;
    if (inv?.link) {
      el.inviteLink.href = inv.link;
      el.inviteLink.textContent = inv.link;
      el.inviteCode.textContent = inv.code;
    }
    el.inviteStatus.textContent = inv ? (inv.error ?? inv.status ?? '') : '';

    // Members, from the root's credentials
    el.members.closest('section').hidden = !v;
    const members = v ? [...access.members(v.rec.space)] : [];
    const rank = { admin: 0, editor: 1, replicator: 2, reader: 3 };
    members.sort(([a, ra], [b, rb]) => (rank[ra] ?? 9) - (rank[rb] ?? 9) || (a < b ? -1 : 1));
    const admin = v?.role === 'admin';
    renderList(el.members, members.map(([did, role]) => ({
      key: did,
      make: () => {
        const li = document.createElement('li');
        li.dataset.testid = 'member';
        li.dataset.did = did;
        const name = document.createElement('span');
        name.className = 'who';
        name.title = did;
        const r = document.createElement('span');
        r.className = 'role';
        li.append(name, ' ', r);
        return li;
      },
      update: (li) => {
        li.dataset.role = role;
        li.querySelector('.who').textContent = `${label(did)}${label(did) === short(did) ? '' : ` ${short(did)}`}`;
        li.querySelector('.role').textContent = role;
        // Admins may revoke anyone but themselves and KUBE (without KUBE the space has no replica).
        const revocable = admin && did !== identity.did && did !== kube?.kubeDid;
        const button = li.querySelector('button');
        if (revocable && !button) {
          const b = document.createElement('button');
          b.type = 'button';
          b.dataset.testid = 'member-revoke';
          b.textContent = 'Revoke';
          b.addEventListener('click', () => {
            b.disabled = true;
            revokeMember(did);
          });
          li.append(' ', b);
        } else if (!revocable && button) {
          button.remove();
        }
      },
    })));

    // Peers (browsers), with the path their data channel takes
    const peers = p2p ? p2p.peers() : [];
    el.signalState.textContent = p2p ? `signaling ${p2p.signalState ?? ''}`.trim() : 'peer-to-peer unavailable';
    renderList(el.peers, peers.map((p) => ({
      key: `${p.did}|${p.peerId ?? ''}`,
      make: () => {
        const li = document.createElement('li');
        li.dataset.testid = 'peer';
        li.dataset.did = p.did;
        return li;
      },
      update: (li) => {
        const path = p.state === 'open' ? p.path : undefined;
        li.dataset.state = p.state ?? '';
        if (path) li.dataset.path = path;
        else delete li.dataset.path;
        const role = v ? access.roleOf(p.did, v.rec.space) : undefined;
        const text = `${short(p.did)}${role ? ` (${role})` : ''} · ${p.state ?? '?'}${path ? ` · ${path}` : ''}`;
        if (li.textContent !== text) li.textContent = text;
      },
    })));
  }

  let scheduled = false;
  function schedule() {
    if (scheduled) return;
    scheduled = true;
    setTimeout(() => {
      scheduled = false;
      try {
        render();
      } catch (e) {
        console.error('render:', e);
      }
    }, 0);
  }

  // ---- controls ----

  $('create-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const input = $('space-name');
    const name = input.value.trim() || 'Tasks';
    try {
      await createList(name);
      input.value = '';
    } catch (e) {
      showMessage(e.message);
    }
  });
  $('task-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const title = el.taskTitle.value.trim();
    if (!title) return;
    addTask(title);
    el.taskTitle.value = '';
    el.taskTitle.focus();
  });
  $('invite-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    startInvite(el.inviteRole.value === 'reader' ? 'reader' : 'editor');
  });
  $('join-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    join(el.joinCode.value);
  });
  $('invite-copy').addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(el.inviteLink.textContent);
      showMessage('Link copied. Tell the code by another channel.');
    } catch {
      getSelection()?.selectAllChildren(el.inviteLink); // copy it by hand
    }
  });
  el.select.addEventListener('change', () => setCurrent(el.select.value));
  window.addEventListener('hashchange', readJoinHash);

  // ---- start ----

  for (const rec of spaces) registerSpace(rec);
  readJoinHash();
  render();

  window.kubeApp = {
    repo,
    p2p,
    access,
    identity,
    get kube() {
      return kube;
    },
    get spaces() {
      return spaces.map((s) => ({ ...s }));
    },
    current: () => {
      const r = currentRecord();
      return r ? { space: r.space, root: r.root } : null;
    },
    refused,
    forceEdit,
    ready: true,
    interactiveAt: performance.now(),
  };
  document.body.dataset.ready = '1';

  // Background work: never in the way of the first paint.
  refreshKube();
  setInterval(() => {
    const up = kubeOnline && kube?.socket?.readyState === 1;
    if (el.status.dataset.state !== (up ? 'online' : 'offline')) schedule();
    nudge();
  }, 1000);
  // Changes reach IndexedDB after a short debounce: write them out when the page goes away.
  const flush = () => {
    repo.flush().catch(() => {});
  };
  addEventListener('pagehide', flush);
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'hidden') flush();
  });
  if ('serviceWorker' in navigator) {
    navigator.serviceWorker.register('/sw.js').catch((e) => console.warn('service worker:', e));
  }

  // KUBE answers a request for a document its asker may not have (yet) with doc-unavailable
  // and forgets it; a guest's root is like that until the host's credential reaches KUBE.
  // The other way round, a new object offered to KUBE before the root that lists it got
  // there is answered the same way, and KUBE does not ask for it later. A new connection
  // offers and asks again, with growing pauses while something stays missing or
  // unconfirmed (writers only: KUBE never confirms a reader's changes).
  let nudgeAt = 0;
  let nudgeDelay = 2000;
  function nudge() {
    if (!kube || !kubeOnline) return;
    const wanted = [];
    for (const rec of spaces) {
      wanted.push(rec.root);
      const d = docOf(handleOf(rec.root));
      if (d) wanted.push(...Object.keys(objects(d)).filter((id) => isValidDocumentId(id)));
    }
    const missing = wanted.some((id) => ['unavailable', 'requesting'].includes(handleOf(id).state));
    const sid = kube.kubeStorageId;
    const unconfirmed = sid !== undefined && spaces.some((rec) => {
      if (!WRITERS.has(access.roleOf(identity.did, rec.space))) return false;
      const d = docOf(handleOf(rec.root));
      const ids = [rec.root, ...(d ? Object.keys(objects(d)).filter((id) => isValidDocumentId(id)) : [])];
      return ids.some((id) => {
        const h = handleOf(id);
        if (!h.isReady()) return false;
        const remote = h.getSyncInfo(sid)?.lastHeads;
        return !remote || !h.heads().every((x) => remote.includes(x));
      });
    });
    if (!missing && !unconfirmed) {
      nudgeDelay = 2000;
      nudgeAt = 0;
      return;
    }
    const now = Date.now();
    if (nudgeAt === 0) nudgeAt = now + nudgeDelay;
    if (now < nudgeAt) return;
    nudgeDelay = Math.min(nudgeDelay * 2, 60_000);
    nudgeAt = now + nudgeDelay;
    kube.reconnect();
  }
}

/** fetch that gives up after 4 s, so a KUBE that accepts but never answers is "offline". */
function fetchWithTimeout(url, init = {}) {
  return fetch(url, { ...init, signal: AbortSignal.timeout(4000) });
}

main().catch((e) => {
  console.error(e);
  const m = document.querySelector('[data-testid="app-message"]');
  if (m) {
    m.textContent = `The app could not start: ${e?.message ?? e}`;
    m.hidden = false;
  }
});
