// A WebRTC peer for the end-to-end test: a fresh Ed25519 HALO key (WebCrypto), KUBE's
// signaling to find the other page in a swarm, KUBE's TURN as the only path (relay).
// Progress and results go to window.result for the test to read.
'use strict';

const ALPHABET = '123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz';
function base58(bytes) {
  let n = 0n;
  for (const b of bytes) n = n * 256n + BigInt(b);
  let s = '';
  while (n > 0n) { s = ALPHABET[Number(n % 58n)] + s; n /= 58n; }
  for (const b of bytes) { if (b === 0) s = '1' + s; else break; }
  return s;
}
function base64url(bytes) {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

const params = new URLSearchParams(location.search);
const SWARM = params.get('swarm');
const MESSAGES = Number(params.get('messages') || 200);
window.result = { state: 'starting', received: 0, sent: 0, errors: [] };
const state = (s) => { window.result.state = s; document.getElementById('state').textContent = s; };

async function main() {
  const key = await crypto.subtle.generateKey({ name: 'Ed25519' }, true, ['sign', 'verify']);
  const raw = new Uint8Array(await crypto.subtle.exportKey('raw', key.publicKey));
  const did = 'did:key:z' + base58(new Uint8Array([0xed, 0x01, ...raw]));
  window.result.did = did;
  const ws = new WebSocket(`wss://${location.host}/.well-known/kube/signal`);
  const send = (m) => ws.send(JSON.stringify({ v: 1, ...m }));
  let pc = null;
  let other = null;
  let iceServers = null;
  const pendingCandidates = [];

  const makePc = () => {
    pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: 'relay' });
    pc.onicecandidate = (e) => {
      if (e.candidate) {
        window.result.localTypes = [...new Set([...(window.result.localTypes || []), e.candidate.type])];
        send({ type: 'signal', to: other, swarm: SWARM, payload: { candidate: e.candidate.toJSON() } });
      }
    };
    pc.ondatachannel = (e) => wire(e.channel, false);
  };

  const wire = (channel, offerer) => {
    channel.onopen = async () => {
      state('open');
      if (!offerer) return;
      // Send with a bounded buffer: queuing a whole burst makes throughput collapse.
      channel.bufferedAmountLowThreshold = 16 * 1024;
      for (let i = 0; i < MESSAGES; i++) {
        while (channel.bufferedAmount > 64 * 1024) {
          await new Promise((r) => { channel.onbufferedamountlow = r; });
        }
        channel.send(`message ${i} ` + 'x'.repeat(1000));
        window.result.sent++;
      }
    };
    channel.onmessage = (e) => {
      window.result.received++;
      if (!offerer) channel.send('echo'); // every message answered: both directions relay
    };
  };

  ws.onmessage = async (ev) => {
    const m = JSON.parse(ev.data);
    try {
      if (m.type === 'challenge') {
        const msg = new TextEncoder().encode(`kube-signal-v1\n${m.nonce}\n${location.origin}`);
        const sig = new Uint8Array(await crypto.subtle.sign('Ed25519', key.privateKey, msg));
        send({ type: 'auth', id: did, signature: base64url(sig) });
      } else if (m.type === 'welcome') {
        state('authenticated');
        send({ type: 'ice-servers' });
      } else if (m.type === 'ice-servers') {
        iceServers = m.servers;
        window.result.iceServers = m.servers.map((s) => s.urls).flat();
        send({ type: 'join', swarm: SWARM });
      } else if (m.type === 'peers') {
        state('joined');
        if (m.peers.length > 0) {
          // The second to arrive makes the offer.
          other = m.peers[0];
          makePc();
          wire(pc.createDataChannel('kube-e2e'), true);
          await pc.setLocalDescription(await pc.createOffer());
          send({ type: 'signal', to: other, swarm: SWARM, payload: { sdp: pc.localDescription.toJSON() } });
        }
      } else if (m.type === 'peer-joined') {
        other = m.peer;
      } else if (m.type === 'signal') {
        other = m.from;
        if (!pc) makePc();
        if (m.payload.sdp) {
          await pc.setRemoteDescription(m.payload.sdp);
          for (const c of pendingCandidates.splice(0)) await pc.addIceCandidate(c);
          if (m.payload.sdp.type === 'offer') {
            await pc.setLocalDescription(await pc.createAnswer());
            send({ type: 'signal', to: other, swarm: SWARM, payload: { sdp: pc.localDescription.toJSON() } });
          }
        } else if (m.payload.candidate) {
          if (pc.remoteDescription) await pc.addIceCandidate(m.payload.candidate);
          else pendingCandidates.push(m.payload.candidate);
        }
      } else if (m.type === 'error') {
        window.result.errors.push(m);
      }
    } catch (e) {
      window.result.errors.push(String(e));
    }
  };
  window.selectedPair = async () => {
    const stats = await pc.getStats();
    // The transport names its selected pair; older reports only mark it nominated.
    let pair = null;
    stats.forEach((s) => { if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId) || pair; });
    if (!pair) stats.forEach((s) => { if (s.type === 'candidate-pair' && s.state === 'succeeded' && s.nominated) pair = s; });
    if (!pair) return null;
    const local = stats.get(pair.localCandidateId);
    const remote = stats.get(pair.remoteCandidateId);
    return { local: local && local.candidateType, remote: remote && remote.candidateType };
  };
}
main().catch((e) => { window.result.errors.push(String(e)); state('failed'); });
