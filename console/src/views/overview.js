// Overview: `GET /api/status` — KUBE's identity, version, uptime, and every service with its
// state and addresses; a line each for what the other views show in full.

import { api, serverNow } from '../api.js';
import { h, setText, syncRows, table } from '../dom.js';
import * as fmt from '../format.js';
import { every, updateFacts, viewHead } from './common.js';

export function overviewView(main) {
  const head = viewHead(main, 'Overview', null, () => load());
  const about = h('section', {}, h('h2', { id: 'ov-kube' }, 'This KUBE'));
  const aboutFacts = h('div');
  about.append(aboutFacts);
  const services = table('Services', ['Service', 'State', 'Addresses']);
  const svcSection = h('section', {},
    h('h2', { id: 'ov-services' }, 'Services'), services.wrap);
  const summary = h('div');
  const sumSection = h('section', {},
    h('h2', { id: 'ov-summary' }, 'At a glance'), summary);
  main.append(about, svcSection, sumSection);

  async function load() {
    let s;
    try {
      s = await api('GET', '/api/status');
    } catch (e) {
      head.error(e);
      return;
    }
    head.ok();
    updateFacts(aboutFacts, [
      ['Identity', h('code', { class: 'did' }, s.identity)],
      ['Domain', s.domain],
      ['Version', s.version],
      ['Uptime', fmt.duration(s.uptime_secs)],
      ['Ready', s.ready ? 'yes' : 'no (starting)'],
      ['Data dir', s.disk ? `${s.disk.data_dir} (${fmt.bytes(s.disk.bytes)})` : '—'],
    ]);
    syncRows(services.tbody, s.services || [], (x) => x.name,
      () => h('tr', {}, h('th', { scope: 'row' }), h('td'), h('td')),
      (tr, x) => {
        setText(tr.cells[0], x.name);
        setText(tr.cells[1], x.state);
        tr.cells[1].className = `state state-${String(x.state).replace(/[^a-z-]/g, '')}`;
        setText(tr.cells[2], (x.listen || []).join(', ') || '—');
      });
    const now = serverNow();
    const certs = s.certificates || [];
    const soonest = certs.reduce((m, c) => (m === null || c.not_after < m ? c.not_after : m), null);
    const running = (s.processes || []).filter((p) => p.state === 'running').length;
    const quarantined = s.echo && s.echo.quarantined ? s.echo.quarantined.length : 0;
    updateFacts(summary, [
      ['Certificates', certs.length
        ? `${certs.length} (${s.tls ? s.tls.mode : ''}), first expiry ${fmt.date(soonest)}, ${fmt.inDays(soonest, now)}`
        : 'none yet'],
      s.acme ? ['ACME', `${s.acme.state}${s.acme.last_error ? `: ${s.acme.last_error}` : ''}`] : null,
      ['Apps', `${(s.apps || []).length} published`],
      ['DNS', s.dns ? `zone ${s.dns.zone}, serial ${s.dns.serial}, ${fmt.count(s.dns.records, 'record')}` : 'disabled'],
      ['Processes', `${(s.processes || []).length} (${running} running)`],
      ['Signaling', s.signal ? `${fmt.count(s.signal.peers, 'peer')} in ${fmt.count(s.signal.swarms, 'swarm')}, ${fmt.count(s.signal.connections, 'connection')}` : '—'],
      ['TURN', s.turn ? `${fmt.count(s.turn.allocations, 'allocation')}, ${fmt.bytes(s.turn.relayed_bytes)} relayed` : '—'],
      ['ECHO', s.echo
        ? `${fmt.count(s.echo.spaces, 'space')}, ${fmt.count(s.echo.documents, 'document')}, ${fmt.count(s.echo.peers, 'peer')}, ${fmt.bytes(s.echo.storage_bytes)}${quarantined ? `, ${quarantined} quarantined` : ''}`
        : 'disabled'],
    ]);
  }

  return every(10_000, load);
}
