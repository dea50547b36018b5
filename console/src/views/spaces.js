// Spaces: `GET /api/echo/spaces` — the spaces ECHO keeps; one chosen (#/spaces/<space>)
// shows `GET /api/echo/spaces/<space>` (members and roles, devices, documents), a query
// (`…/query?type=T&where=p=v`) and "Export" (`…/export`, downloaded as a JSON file).

import { api, seg, serverNow } from '../api.js';
import { alertBox, clearAlert, field, h, replace, showAlert, statusBox, table } from '../dom.js';
import * as fmt from '../format.js';
import { busy, updateFacts, viewHead } from './common.js';

const short = (did) => (did && did.length > 24 ? `${did.slice(0, 16)}…${did.slice(-6)}` : did);

export function spacesView(main, rest) {
  const space = rest && rest[0];
  return space ? spaceDetail(main, space) : spaceList(main);
}

function spaceList(main) {
  const head = viewHead(main, 'Spaces', 'The spaces ECHO keeps a replica of.', () => load());
  const spaces = table('Spaces', ['Space', 'Documents', 'Members', 'Size', 'Last change']);
  main.append(spaces.wrap);

  async function load() {
    let list;
    try {
      list = await api('GET', '/api/echo/spaces');
    } catch (e) {
      head.error(e);
      return;
    }
    head.ok();
    const now = serverNow();
    replace(spaces.tbody, list.length ? list.map((s) => h('tr', {},
      h('th', { scope: 'row' }, h('a', { href: `#/spaces/${seg(s.space)}`, class: 'did' }, s.space)),
      h('td', {}, String(s.documents)),
      h('td', {}, String(s.members)),
      h('td', {}, fmt.bytes(s.bytes)),
      h('td', {}, s.last_change ? `${fmt.dateTime(s.last_change)} (${fmt.ago(s.last_change, now)})` : '—')))
      : h('tr', {}, h('td', { colspan: '5', class: 'muted' }, 'No space yet: a space is kept here once one of its admins syncs it to KUBE.')));
  }

  load();
  return null;
}

function spaceDetail(main, space) {
  main.append(h('p', { class: 'crumbs' }, h('a', { href: '#/spaces' }, '← Back to the list')));
  const head = viewHead(main, `Space ${short(space)}`, null, () => load());
  const summary = h('div');
  const exportStatus = statusBox();
  const exportButton = h('button', {
    type: 'button',
    onclick: () => busy(exportButton, async () => {
      head.ok();
      exportStatus.textContent = '';
      const r = await api('GET', `/api/echo/spaces/${seg(space)}/export`, { raw: true });
      const blob = await r.blob();
      const url = URL.createObjectURL(new Blob([blob], { type: 'application/json' }));
      const a = h('a', { href: url, download: `${space.replace(/[^A-Za-z0-9._-]+/g, '-')}.json`, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
      exportStatus.textContent = `Exported ${fmt.bytes(blob.size)}: the documents and credentials of the space. Keep the file private.`;
    }, head.error),
  }, 'Export');
  const members = table('Members', ['Key', 'Role', 'Granted by']);
  const devices = table('Devices', ['Device key', 'Of']);
  const docs = table('Documents', ['Document', 'Type', 'Size', 'Last change']);

  // The query form.
  const qAlert = alertBox();
  const qType = h('input', { type: 'text', name: 'type', autocomplete: 'off', spellcheck: 'false', autocapitalize: 'none' });
  const qProp = h('input', { type: 'text', name: 'property', autocomplete: 'off', spellcheck: 'false', autocapitalize: 'none' });
  const qValue = h('input', { type: 'text', name: 'value', autocomplete: 'off', spellcheck: 'false', autocapitalize: 'none' });
  const qButton = h('button', { type: 'submit' }, 'Query');
  const results = h('div', { class: 'results', 'aria-live': 'polite' });
  const qForm = h('form', {
    class: 'card',
    onsubmit: (e) => {
      e.preventDefault();
      clearAlert(qAlert);
      const type = qType.value.trim();
      const prop = qProp.value.trim();
      const value = qValue.value;
      if (!type) {
        showAlert(qAlert, 'Enter a type (the objects\' "type", e.g. task).');
        qType.focus();
        return;
      }
      if (!prop && value) {
        showAlert(qAlert, 'Enter the property the value is for.');
        qProp.focus();
        return;
      }
      let path = `/api/echo/spaces/${seg(space)}/query?type=${seg(type)}`;
      if (prop) path += `&where=${seg(`${prop}=${value}`)}`;
      busy(qButton, async () => {
        const found = await api('GET', path);
        showResults(found, type, prop, value);
      }, (err) => showAlert(qAlert, err.message));
    },
  },
  h('h2', { id: 'space-query' }, 'Query'),
  h('p', { class: 'muted' }, 'Objects of a type, optionally where a property equals a value (text, or JSON such as false or 3).'),
  h('div', { class: 'row' },
    field('Type', qType),
    field('Property', qProp),
    field('Value', qValue)),
  h('div', { class: 'actions' }, qButton),
  qAlert,
  results);
  qForm.noValidate = true;

  main.append(
    h('section', {},
      h('h2', { id: 'space-about' }, 'About'), summary,
      h('div', { class: 'actions' }, exportButton), exportStatus),
    h('section', {}, h('h2', { id: 'space-members' }, 'Members and roles'), members.wrap),
    h('section', {}, h('h2', { id: 'space-devices' }, 'Devices'), devices.wrap),
    h('section', {}, h('h2', { id: 'space-docs' }, 'Documents'), docs.wrap),
    qForm,
  );

  function showResults(found, type, prop, value) {
    const what = prop ? `${type} where ${prop} = ${value}` : type;
    if (!found.length) {
      replace(results, h('p', {}, `No object of type ${what}.`));
      return;
    }
    const t = table(`Query results: ${what}`, ['Object', 'Type', 'Content'], { showCaption: true });
    replace(t.tbody, found.map((o) => {
      const { id, type: ty, space: _space, ...shown } = o;
      if (shown.refs && typeof shown.refs === 'object' && !Object.keys(shown.refs).length) delete shown.refs;
      return h('tr', {},
        h('th', { scope: 'row' }, h('code', {}, id || '—')),
        h('td', {}, ty || '—'),
        h('td', { class: 'wrap' }, h('pre', { class: 'json' }, JSON.stringify(shown, null, 1))));
    }));
    replace(results, h('p', {}, `${found.length} object${found.length === 1 ? '' : 's'} of type ${what}.`), t.wrap);
  }

  async function load() {
    let d;
    try {
      d = await api('GET', `/api/echo/spaces/${seg(space)}`);
    } catch (e) {
      head.error(e);
      return;
    }
    head.ok();
    const now = serverNow();
    updateFacts(summary, [
      ['Space', h('code', { class: 'did' }, d.space)],
      ['Root document', h('code', {}, d.root)],
      ['Documents', String(d.documents.length)],
      ['Members', String(d.members.length)],
      ['Size', fmt.bytes(d.bytes)],
      ['Last change', d.last_change ? `${fmt.dateTime(d.last_change)} (${fmt.ago(d.last_change, now)})` : '—'],
    ]);
    replace(members.tbody, d.members.length ? d.members.map((m) => h('tr', {},
      h('th', { scope: 'row' }, h('code', { class: 'did', title: m.key }, m.key)),
      h('td', {}, m.role),
      h('td', {}, h('code', { class: 'did', title: m.granted_by }, short(m.granted_by)))))
      : h('tr', {}, h('td', { colspan: '3', class: 'muted' }, 'No members.')));
    const devs = Object.entries(d.devices || {});
    replace(devices.tbody, devs.length ? devs.map(([dev, of]) => h('tr', {},
      h('th', { scope: 'row' }, h('code', { class: 'did' }, dev)),
      h('td', {}, h('code', { class: 'did' }, of))))
      : h('tr', {}, h('td', { colspan: '2', class: 'muted' }, 'No devices.')));
    replace(docs.tbody, d.documents.length ? d.documents.map((doc) => h('tr', {},
      h('th', { scope: 'row' }, h('code', {}, doc.id)),
      h('td', {}, doc.type || '—'),
      h('td', {}, fmt.bytes(doc.bytes)),
      h('td', {}, doc.last_change ? fmt.dateTime(doc.last_change) : '—')))
      : h('tr', {}, h('td', { colspan: '4', class: 'muted' }, 'No documents.')));
  }

  load();
  return null;
}
