// Apps: `GET /api/apps` — each app and its versions; roll back, switch version, remove
// (a second click confirms); publish a `.tar.gz`, a folder (packed here into a .tar.gz), or
// either dropped on the drop zone, uploaded with `PUT /api/apps/<name>` showing progress.

import { api, seg, upload } from '../api.js';
import { alertBox, clearAlert, field, h, replace, showAlert, statusBox, table } from '../dom.js';
import * as fmt from '../format.js';
import { tarGz } from '../tar.js';
import { busy, confirmButton, viewHead } from './common.js';

const isTarGz = (name) => /\.(tar\.gz|tgz)$/i.test(name);

/** Drops the first path part: a chosen folder's own name (its files go at the bundle root). */
function underFolder(path) {
  const i = path.indexOf('/');
  return i < 0 ? path : path.slice(i + 1);
}

function readEntries(dir) {
  const reader = dir.createReader();
  const all = [];
  return new Promise((resolve, reject) => {
    const next = () => reader.readEntries((batch) => {
      if (!batch.length) resolve(all);
      else {
        all.push(...batch);
        next();
      }
    }, reject);
    next();
  });
}

const fileOf = (entry) => new Promise((resolve, reject) => entry.file(resolve, reject));

async function walk(entry, prefix, files, dirs) {
  if (entry.isFile) {
    files.push({ path: prefix + entry.name, file: await fileOf(entry) });
  } else if (entry.isDirectory) {
    const path = prefix + entry.name;
    if (path) dirs.push(path);
    for (const child of await readEntries(entry)) await walk(child, path ? `${path}/` : '', files, dirs);
  }
}

export function appsView(main) {
  const head = viewHead(main, 'Apps', null, () => load());
  const status = statusBox();
  const list = h('div', { class: 'apps' });
  main.append(h('section', {},
    h('h2', { id: 'apps-list' }, 'Published apps'), status, list));

  // The publish form.
  const pubAlert = alertBox();
  const pubStatus = statusBox();
  const name = h('input', { type: 'text', name: 'app', autocomplete: 'off', spellcheck: 'false', autocapitalize: 'none', pattern: '[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?' });
  const fileInput = h('input', { type: 'file', name: 'bundle', accept: '.tar.gz,.tgz,application/gzip,application/x-gzip' });
  const folderInput = h('input', { type: 'file', name: 'folder', webkitdirectory: true, multiple: true });
  const chosen = h('p', { class: 'chosen', 'aria-live': 'polite' }, 'No bundle chosen yet.');
  const progress = h('progress', { max: '100', value: '0' });
  const progressText = h('span', { class: 'muted' });
  const drop = h('div', { id: 'drop-zone', class: 'dropzone' },
    h('p', {}, 'Drop a folder or a .tar.gz bundle here'));
  const publishButton = h('button', { type: 'submit' }, 'Publish');
  /** `{kind: 'file', file}` or `{kind: 'folder', label, files: [{path, file}], dirs}`. */
  let bundle = null;

  const choose = (b) => {
    bundle = b;
    clearAlert(pubAlert);
    pubStatus.textContent = '';
    if (!b) {
      chosen.textContent = 'No bundle chosen yet.';
    } else if (b.kind === 'file') {
      chosen.textContent = `Chosen: ${b.file.name} (${fmt.bytes(b.file.size)}).`;
    } else {
      const size = b.files.reduce((n, f) => n + f.file.size, 0);
      chosen.textContent = `Chosen: folder ${b.label} — ${b.files.length} file${b.files.length === 1 ? '' : 's'}, ${fmt.bytes(size)}; packed into a .tar.gz when you publish.`;
    }
  };

  fileInput.addEventListener('change', () => {
    const f = fileInput.files && fileInput.files[0];
    folderInput.value = '';
    choose(f ? { kind: 'file', file: f } : null);
  });
  folderInput.addEventListener('change', () => {
    const all = [...(folderInput.files || [])];
    fileInput.value = '';
    if (!all.length) {
      choose(null);
      return;
    }
    const first = all[0].webkitRelativePath || all[0].name;
    const label = first.includes('/') ? first.slice(0, first.indexOf('/')) : 'chosen';
    choose({
      kind: 'folder',
      label,
      files: all.map((f) => ({ path: underFolder(f.webkitRelativePath || f.name), file: f })),
      dirs: [],
    });
  });

  for (const type of ['dragenter', 'dragover']) {
    drop.addEventListener(type, (e) => {
      e.preventDefault();
      if (e.dataTransfer) e.dataTransfer.dropEffect = 'copy';
      drop.classList.add('over');
    });
  }
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    const dt = e.dataTransfer;
    if (!dt) return;
    // Entries must be taken while the event lasts; they are read afterwards.
    const entries = [...(dt.items || [])]
      .filter((i) => i.kind === 'file')
      .map((i) => (typeof i.webkitGetAsEntry === 'function' ? i.webkitGetAsEntry() : null));
    const plain = [...(dt.files || [])];
    fileInput.value = '';
    folderInput.value = '';
    dropped(entries, plain).catch((err) => showAlert(pubAlert, `The dropped items cannot be read: ${err.message}`));
  });

  async function dropped(entries, plain) {
    const usable = entries.length && entries.every(Boolean);
    if (usable && entries.length === 1 && entries[0].isDirectory) {
      const files = [];
      const dirs = [];
      await walk(entries[0], '', files, dirs);
      if (!files.length) throw new Error(`the folder ${entries[0].name} has no files`);
      choose({ kind: 'folder', label: entries[0].name, files, dirs });
      return;
    }
    if (plain.length === 1 && isTarGz(plain[0].name) && !(usable && entries[0].isDirectory)) {
      choose({ kind: 'file', file: plain[0] });
      return;
    }
    const files = [];
    const dirs = [];
    if (usable) {
      for (const entry of entries) await walk(entry, '', files, dirs);
    } else {
      for (const f of plain) files.push({ path: f.webkitRelativePath || f.name, file: f });
    }
    if (!files.length) throw new Error('nothing to publish was dropped');
    choose({ kind: 'folder', label: `of ${files.length} dropped item${files.length === 1 ? '' : 's'}`, files, dirs });
  }

  const form = h('form', {
    class: 'card',
    onsubmit: (e) => {
      e.preventDefault();
      publish();
    },
  },
  h('h2', { id: 'apps-publish' }, 'Publish'),
  field('App name', name, 'A DNS label: lowercase letters, digits and hyphens. Publishing to an existing name adds a version.'),
  h('div', { class: 'sources' },
    field('Bundle file (.tar.gz)', fileInput),
    field('Bundle folder', folderInput, 'Its files go at the bundle\'s root (index.html first).')),
  drop,
  chosen,
  h('div', { class: 'actions' }, publishButton),
  h('div', { class: 'field progress' }, field('Upload progress', progress), progressText),
  pubAlert,
  pubStatus);
  form.noValidate = true;
  main.append(form);

  async function publish() {
    clearAlert(pubAlert);
    pubStatus.textContent = '';
    const app = name.value.trim();
    if (!app) {
      showAlert(pubAlert, 'Enter an app name.');
      name.focus();
      return;
    }
    if (!bundle) {
      showAlert(pubAlert, 'Choose a bundle: a .tar.gz file, a folder, or drop one on the drop zone.');
      return;
    }
    publishButton.disabled = true;
    progress.value = 0;
    progressText.textContent = '';
    try {
      let bytes;
      if (bundle.kind === 'file') {
        bytes = new Uint8Array(await bundle.file.arrayBuffer());
      } else {
        pubStatus.textContent = `Packing ${bundle.files.length} files…`;
        bytes = await tarGz(bundle.files, bundle.dirs);
      }
      pubStatus.textContent = `Uploading ${fmt.bytes(bytes.byteLength)}…`;
      const r = await upload('PUT', `/api/apps/${seg(app)}`, bytes, 'application/gzip', (sent, total) => {
        progress.value = total ? Math.round((sent / total) * 100) : 0;
        progressText.textContent = `${fmt.bytes(sent)} of ${fmt.bytes(total)} sent`;
      });
      progress.value = 100;
      replace(pubStatus,
        `Published ${r.name} version ${r.version}: ${r.files} file${r.files === 1 ? '' : 's'}, ${fmt.bytes(r.bytes)}.`,
        r.url ? [' ', h('a', { href: r.url, target: '_blank', rel: 'noopener noreferrer' }, r.url)] : null);
      load();
    } catch (e) {
      pubStatus.textContent = '';
      showAlert(pubAlert, `Publishing ${app} failed: ${e.message}`);
    } finally {
      publishButton.disabled = false;
    }
  }

  function appSection(a) {
    const actionError = (e) => {
      status.textContent = '';
      head.error(e);
    };
    const rollback = h('button', {
      type: 'button',
      onclick: () => busy(rollback, async () => {
        head.ok();
        status.textContent = '';
        const r = await api('POST', `/api/apps/${seg(a.name)}/rollback`);
        status.textContent = `Rolled ${a.name} back to version ${r.version}.`;
        await load();
      }, actionError),
    }, `Roll back ${a.name}`);
    const remove = confirmButton(`Remove ${a.name}`, `Confirm remove ${a.name}`, async () => {
      head.ok();
      status.textContent = '';
      try {
        await api('DELETE', `/api/apps/${seg(a.name)}`);
        status.textContent = `Removed ${a.name}.`;
        await load();
      } catch (e) {
        actionError(e);
      }
    });
    const versions = table(`Versions of ${a.name}`, ['Version', 'Published', 'Files', 'Size', 'State'], { showCaption: true });
    const ordered = [...(a.versions || [])].sort((x, y) => y.version - x.version);
    replace(versions.tbody, ordered.map((v) => {
      const current = v.version === a.current;
      let cell;
      if (current) {
        cell = h('strong', { class: 'current' }, 'current');
      } else {
        const b = h('button', {
          type: 'button',
          class: 'secondary small',
          onclick: () => busy(b, async () => {
            head.ok();
            status.textContent = '';
            const r = await api('POST', `/api/apps/${seg(a.name)}/rollback`, { json: { version: v.version } });
            status.textContent = `${a.name} now serves version ${r.version}.`;
            await load();
          }, actionError),
        }, `Switch ${a.name} to version ${v.version}`);
        cell = b;
      }
      return h('tr', { class: current ? 'is-current' : null },
        h('th', { scope: 'row' }, String(v.version), current ? ' (current)' : ''),
        h('td', {}, fmt.dateTime(v.published)),
        h('td', {}, String(v.files)),
        h('td', {}, fmt.bytes(v.bytes)),
        h('td', {}, cell));
    }));
    const titleId = `app-${a.name}`;
    return h('section', { class: 'card app' },
      h('h3', { id: titleId }, a.name),
      a.url ? h('p', {}, h('a', { href: a.url, target: '_blank', rel: 'noopener noreferrer' }, a.url)) : null,
      versions.wrap,
      h('div', { class: 'actions' }, rollback, remove));
  }

  async function load() {
    let apps;
    try {
      apps = await api('GET', '/api/apps');
    } catch (e) {
      head.error(e);
      return;
    }
    replace(list, apps.length ? apps.map(appSection) : h('p', { class: 'muted' }, 'No app is published yet.'));
  }

  load();
  return null;
}
