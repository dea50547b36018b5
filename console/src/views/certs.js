// Certificates: `GET /api/certs` — each certificate's names, issuer and expiry, ACME's state
// and last error; "Renew" orders now (`POST /api/certs/renew`).

import { api, serverNow } from '../api.js';
import { h, replace, statusBox, table } from '../dom.js';
import * as fmt from '../format.js';
import { busy, updateFacts, viewHead } from './common.js';

export function certsView(main) {
  const head = viewHead(main, 'Certificates', null, () => load());
  const mode = h('p');
  const status = statusBox();
  const renew = h('button', {
    type: 'button',
    onclick: () => busy(renew, async () => {
      head.ok();
      status.textContent = '';
      const r = await api('POST', '/api/certs/renew');
      status.textContent = r && r.renewing ? 'Renewal started: KUBE is ordering a new certificate now.' : 'Renewal asked.';
      setTimeout(load, 1500);
    }, head.error),
  }, 'Renew');
  const certs = table('Certificates', ['Names', 'Issuer', 'Valid from', 'Expires', 'Serial']);
  const acme = h('div');
  main.append(
    h('section', {},
      h('h2', { id: 'cert-list' }, 'Served certificates'),
      mode, certs.wrap,
      h('div', { class: 'actions' }, renew), status),
    h('section', {}, h('h2', { id: 'cert-acme' }, 'ACME'), acme),
  );

  async function load() {
    let r;
    try {
      r = await api('GET', '/api/certs');
    } catch (e) {
      head.error(e);
      return;
    }
    head.ok();
    const now = serverNow();
    const modes = {
      local: 'Mode: local — KUBE\'s own certificate authority issues the certificate.',
      acme: 'Mode: ACME — certificates come from the ACME directory below.',
      files: 'Mode: files — the operator\'s certificate and key files.',
    };
    mode.textContent = modes[r.mode] || `Mode: ${r.mode}`;
    const list = r.certificates || [];
    replace(certs.tbody, list.length ? list.map((c) => h('tr', {},
      h('td', {}, h('ul', { class: 'plain' }, (c.names || []).map((n) => h('li', {}, n)))),
      h('td', { class: 'wrap' }, c.issuer),
      h('td', {}, fmt.date(c.not_before)),
      h('td', { class: c.not_after - now < 14 * 86400 ? 'warn' : null },
        h('time', { datetime: new Date(c.not_after * 1000).toISOString() }, fmt.date(c.not_after)),
        ' ', h('span', { class: 'muted' }, `(${fmt.inDays(c.not_after, now)})`)),
      h('td', {}, h('code', { class: 'serial' }, c.serial)))) : h('tr', {}, h('td', { colspan: '5' }, 'No certificate yet.')));
    const a = r.acme;
    if (!a) {
      replace(acme, h('p', {}, r.mode === 'acme' ? 'No ACME state yet.' : 'Not used in this mode.'));
    } else {
      updateFacts(acme, [
        ['State', a.state],
        ['Directory', a.directory],
        ['Failures in a row', String(a.failures)],
        ['Last error', a.last_error || 'none'],
        ['Last success', a.last_success ? `${fmt.dateTime(a.last_success)} (${fmt.ago(a.last_success, now)})` : 'never'],
        ['Next attempt', a.next_attempt ? `${fmt.dateTime(a.next_attempt)} (${fmt.ago(a.next_attempt, now)})` : '—'],
      ]);
    }
  }

  load();
  return null;
}
