// KUBE's operator console: sign-in (admin token, or an operator key that signs each request),
// then one view per part of KUBE, chosen by the URL's hash (#/apps). Every action goes
// through the admin API of the KUBE that served the page.

import { ApiError, api, currentSession, fetchIdentity, signIn, signOut } from './api.js';
import { alertBox, clearAlert, field, h, replace, showAlert } from './dom.js';
import { forgetKey, importOperatorKey, loadKey, saveKey } from './keys.js';
import { startMetrics, stopMetrics } from './metrics.js';
import { appsView } from './views/apps.js';
import { certsView } from './views/certs.js';
import { dnsView } from './views/dns.js';
import { metricsView } from './views/metrics.js';
import { overviewView } from './views/overview.js';
import { processesView } from './views/processes.js';
import { spacesView } from './views/spaces.js';

const ROUTES = [
  { path: 'overview', title: 'Overview', view: overviewView },
  { path: 'certs', title: 'Certificates', view: certsView },
  { path: 'apps', title: 'Apps', view: appsView },
  { path: 'dns', title: 'DNS', view: dnsView },
  { path: 'spaces', title: 'Spaces', view: spacesView },
  { path: 'processes', title: 'Processes', view: processesView },
  { path: 'metrics', title: 'Metrics', view: metricsView },
];

const root = document.getElementById('app');
let unmount = null;
let shell = null;

/** `#/spaces/abc` → `{route, rest: ['abc']}`. */
function parseHash() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').map((p) => {
    try {
      return decodeURIComponent(p);
    } catch {
      return p;
    }
  });
  const route = ROUTES.find((r) => r.path === parts[0]);
  return { route, rest: parts.slice(1).filter(Boolean) };
}

function stopView() {
  if (unmount) {
    try {
      unmount();
    } catch {
      // A view that fails to clean up must not keep the next one from showing.
    }
  }
  unmount = null;
}

function render(focus) {
  if (!currentSession()) return;
  const { route, rest } = parseHash();
  if (!route) {
    location.replace('#/overview');
    return;
  }
  stopView();
  if (!shell) shell = buildShell();
  for (const a of shell.nav.querySelectorAll('a')) {
    if (a.dataset.route === route.path) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  document.title = `${route.title} · KUBE console`;
  const main = replace(shell.main);
  unmount = route.view(main, rest) || null;
  if (focus) {
    const heading = main.querySelector('h1');
    if (heading) heading.focus({ preventScroll: false });
  }
}

function buildShell() {
  const session = currentSession();
  const who = session.kind === 'token'
    ? 'Signed in with the admin token'
    : h('span', {}, 'Signed in as operator ', h('code', { class: 'did' }, session.did));
  const nav = h('nav', { 'aria-label': 'Console sections' },
    h('ul', {}, ROUTES.map((r) => h('li', {}, h('a', { href: `#/${r.path}`, 'data-route': r.path }, r.title)))));
  const main = h('main', { id: 'main' });
  const header = h('header', { class: 'top' },
    h('a', { class: 'skip', href: '#main', onclick: (e) => { e.preventDefault(); main.querySelector('h1')?.focus(); } }, 'Skip to content'),
    h('p', { class: 'brand' }, 'KUBE console'),
    h('p', { class: 'who' }, who),
    h('button', { type: 'button', class: 'secondary', onclick: doSignOut }, 'Sign out'));
  replace(root, header, nav, main);
  return { nav, main };
}

async function doSignOut() {
  stopView();
  stopMetrics();
  signOut();
  shell = null;
  await forgetKey();
  if (location.hash) history.replaceState(null, '', location.pathname + location.search);
  showSignIn();
}

/** Checks a new session with `GET /api/status`; on refusal the session is dropped. */
async function verify(session) {
  signIn(session);
  try {
    await api('GET', '/api/status');
  } catch (e) {
    signOut();
    throw e;
  }
}

function enter() {
  shell = null;
  startMetrics();
  if (!parseHash().route) history.replaceState(null, '', '#/overview');
  render(true);
}

function showSignIn(message) {
  stopView();
  shell = null;
  document.title = 'Sign in · KUBE console';
  const alert = alertBox();
  const token = h('input', { type: 'password', name: 'token', autocomplete: 'off', spellcheck: 'false', required: true });
  const keyFile = h('input', { type: 'file', name: 'key', accept: '.key,.pem,application/x-pem-file,text/plain' });
  let busy = false;
  const run = async (button, work) => {
    if (busy) return;
    busy = true;
    button.disabled = true;
    clearAlert(alert);
    try {
      await work();
    } catch (e) {
      showAlert(alert, e instanceof ApiError || e instanceof Error ? e.message : String(e));
      busy = false;
      button.disabled = false;
    }
  };
  const tokenButton = h('button', { type: 'submit' }, 'Sign in with token');
  const keyButton = h('button', { type: 'submit' }, 'Sign in with key');
  const tokenForm = h('form', {
    class: 'card',
    onsubmit: (e) => {
      e.preventDefault();
      run(tokenButton, async () => {
        const t = token.value.trim();
        if (!t) throw new Error('Enter the admin token (it is in the data dir, admin.token).');
        await verify({ kind: 'token', token: t });
        token.value = '';
        enter();
      });
    },
  },
  h('h2', { id: 'signin-token' }, 'With the admin token'),
  field('Admin token', token, 'The contents of admin.token in KUBE\'s data dir. Kept in this page only: a reload asks again.'),
  tokenButton);
  tokenForm.noValidate = true;
  const keyForm = h('form', {
    class: 'card',
    onsubmit: (e) => {
      e.preventDefault();
      run(keyButton, async () => {
        const file = keyFile.files && keyFile.files[0];
        if (!file) throw new Error('Choose an operator key file (kube identity new FILE writes one).');
        if (file.size > 64 * 1024) throw new Error('That file is too large to be an operator key.');
        const { key, did } = await importOperatorKey(await file.text());
        await verify({ kind: 'key', key, did });
        keyFile.value = '';
        try {
          await saveKey(key, did);
        } catch {
          // Without IndexedDB a reload asks again; signing works all the same.
        }
        enter();
      });
    },
  },
  h('h2', { id: 'signin-key' }, 'With an operator key'),
  field('Operator key file', keyFile, 'A PKCS#8 PEM Ed25519 key listed in admin.operators. It signs each request here; this browser keeps it, unreadable, until you sign out.'),
  keyButton);
  replace(root, h('main', { id: 'main', class: 'signin' },
    h('h1', { tabindex: '-1' }, 'Sign in'),
    h('p', { class: 'lead' }, 'KUBE console: sign in with the admin token or with an operator key.'),
    alert,
    h('div', { class: 'signin-ways' }, tokenForm, keyForm)));
  if (message) showAlert(alert, message);
}

async function boot() {
  replace(root, h('main', { id: 'main' }, h('p', { class: 'loading' }, 'Loading…')));
  let problem = null;
  try {
    await fetchIdentity();
  } catch (e) {
    problem = e.message;
  }
  const stored = await loadKey();
  if (stored && !problem) {
    try {
      await verify({ kind: 'key', key: stored.key, did: stored.did });
      enter();
      return;
    } catch (e) {
      if (e.status === 401) await forgetKey();
      problem = e.message;
    }
  }
  showSignIn(problem);
}

window.addEventListener('hashchange', () => render(true));
boot();
