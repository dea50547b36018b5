// DNS: `GET /api/dns` — the zone, its serial, every record it serves (`zone_records`), and
// the run-time records (added through the API, kept in dns/records.json); add one
// (`POST /api/dns/records`) or remove one (`DELETE /api/dns/records`). Records from
// kube.yml and the app hosts are served but are not run-time records.

import { api } from '../api.js';
import { alertBox, clearAlert, field, h, replace, showAlert, statusBox, table } from '../dom.js';
import { busy, updateFacts, viewHead } from './common.js';

const TYPES = ['A', 'AAAA', 'CNAME', 'TXT', 'MX', 'SRV', 'CAA'];
const EXAMPLES = {
  A: '192.0.2.10',
  AAAA: '2001:db8::10',
  CNAME: 'www (or an absolute name ending with a dot)',
  TXT: '"v=spf1 -all" (quoted as in a zone file)',
  MX: '10 mail',
  SRV: '10 5 5060 sip',
  CAA: '0 issue "letsencrypt.org"',
};

export function dnsView(main) {
  const head = viewHead(main, 'DNS', null, () => load());
  const zone = h('div');
  const status = statusBox();
  const records = table('Run-time records', ['Name', 'Type', 'Value', 'TTL', 'Action']);
  const served = table('Records served', ['Name', 'Type', 'TTL', 'Value']);
  main.append(
    h('section', {}, h('h2', { id: 'dns-zone' }, 'Zone'), zone),
    h('section', {},
      h('h2', { id: 'dns-runtime' }, 'Run-time records'),
      h('p', { class: 'muted' }, 'Records added here or through the API; they can be removed here.'),
      records.wrap, status),
    h('section', {},
      h('h2', { id: 'dns-served' }, 'Records served'),
      h('p', { class: 'muted' }, 'Everything the zone answers: the SOA and NS, the apex and app hosts, records from kube.yml and the run-time records.'),
      served.wrap),
  );

  const formAlert = alertBox();
  const name = h('input', { type: 'text', name: 'name', autocomplete: 'off', spellcheck: 'false', autocapitalize: 'none' });
  const type = h('select', { name: 'type' }, TYPES.map((t) => h('option', { value: t }, t)));
  const value = h('input', { type: 'text', name: 'value', autocomplete: 'off', spellcheck: 'false', autocapitalize: 'none' });
  const ttl = h('input', { type: 'number', name: 'ttl', min: '0', max: '2147483647', step: '1', inputmode: 'numeric' });
  const valueHint = h('small', { class: 'hint', id: 'dns-value-hint' });
  const setHint = () => {
    valueHint.textContent = `As in a zone file, e.g. ${EXAMPLES[type.value]}`;
  };
  type.addEventListener('change', setHint);
  setHint();
  const valueField = field('Value', value);
  value.setAttribute('aria-describedby', valueHint.id);
  valueField.append(valueHint);
  const add = h('button', { type: 'submit' }, 'Add record');
  const form = h('form', {
    class: 'card',
    onsubmit: (e) => {
      e.preventDefault();
      clearAlert(formAlert);
      status.textContent = '';
      const rec = { name: name.value.trim(), type: type.value, value: value.value.trim() };
      const t = ttl.value.trim();
      if (!rec.name) {
        showAlert(formAlert, 'Enter a name: relative to the zone, or @ for the apex.');
        name.focus();
        return;
      }
      if (!rec.value) {
        showAlert(formAlert, 'Enter a value.');
        value.focus();
        return;
      }
      if (t) {
        if (!/^\d+$/.test(t) || Number(t) > 2147483647) {
          showAlert(formAlert, 'The TTL is a whole number of seconds.');
          ttl.focus();
          return;
        }
        rec.ttl = Number(t);
      }
      busy(add, async () => {
        await api('POST', '/api/dns/records', { json: rec });
        status.textContent = `Added ${rec.name} ${rec.type} ${rec.value}.`;
        value.value = '';
        await load();
      }, (err) => showAlert(formAlert, err.message));
    },
  },
  h('h2', { id: 'dns-add' }, 'Add a record'),
  h('div', { class: 'row' },
    field('Name', name, 'Relative to the zone (www, _acme-challenge), @ for the apex.'),
    field('Type', type),
    valueField,
    field('TTL', ttl, 'Seconds; empty for the zone\'s default.')),
  h('div', { class: 'actions' }, add),
  formAlert);
  form.noValidate = true;
  main.append(form);

  async function load() {
    let d;
    try {
      d = await api('GET', '/api/dns');
    } catch (e) {
      head.error(e);
      return;
    }
    updateFacts(zone, [
      ['Zone', d.zone],
      ['Serial', String(d.serial)],
      ['Records served', String(d.records)],
    ]);
    const all = d.zone_records || [];
    replace(served.tbody, all.map((r) => h('tr', {},
      h('td', {}, r.name),
      h('td', {}, r.type),
      h('td', {}, String(r.ttl)),
      h('td', { class: 'wrap' }, h('code', {}, r.value)))));
    const rows = d.runtime_records || [];
    replace(records.tbody, rows.length ? rows.map((r) => {
      const label = `Remove ${r.name} ${r.type} ${r.value}`;
      const b = h('button', {
        type: 'button',
        class: 'danger small',
        onclick: () => busy(b, async () => {
          head.ok();
          status.textContent = '';
          await api('DELETE', '/api/dns/records', { json: { name: r.name, type: r.type, value: r.value } });
          status.textContent = `Removed ${r.name} ${r.type} ${r.value}.`;
          await load();
        }, head.error),
      }, label);
      return h('tr', {},
        h('td', {}, r.name),
        h('td', {}, r.type),
        h('td', { class: 'wrap' }, h('code', {}, r.value)),
        h('td', {}, r.ttl === undefined || r.ttl === null ? 'default' : String(r.ttl)),
        h('td', {}, b));
    }) : h('tr', {}, h('td', { colspan: '5', class: 'muted' }, 'No run-time records.')));
  }

  load();
  return null;
}
