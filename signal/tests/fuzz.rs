//! Fuzz targets for signaling: the JSON frame parse (`protocol::decode`) and the `Hub`
//! fed sequences of connects, frames, ticks and disconnects from several clients, checked
//! against a model of who is connected, authenticated and in which swarm. Ignored by
//! `cargo test`; `bench/fuzz/run` runs them in an optimized build with `PROPTEST_CASES`
//! cases each.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer, SigningKey};
use proptest::prelude::*;
use signal::hub::Ice;
use signal::protocol::{self, ClientMsg, ServerMsg};
use signal::{ConnId, Hub, Limits, Out};

// ---------------------------------------------------------------- mutations

#[path = "../../bench/fuzz/mutate.rs"]
mod mutations;
use mutations::config;

/// Overwrites favour these bytes (the format's delimiters and edges).
const SPECIAL: &[u8] = b"\"\\{[01 ";

fn text_from(templates: Vec<String>, max_random: usize) -> impl Strategy<Value = String> {
    mutations::text_from(templates, max_random, SPECIAL)
}

// ---------------------------------------------------------------- clients

const ORIGIN: &str = "https://app.example";
/// Connection slots; a connection id is `slot + SLOTS * generation`, never reused.
const SLOTS: u64 = 4;
const KEYS: u8 = 3;
const SWARMS: [&str; 4] = [
    "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
    "FFEEDDCCBBAA99887766554433221100FFEEDDCCBBAA99887766554433221100",
    "0011",
    "zz112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
];

fn key(k: u8) -> SigningKey {
    SigningKey::from_bytes(&[k + 1; 32])
}

fn dids() -> &'static Vec<String> {
    static D: OnceLock<Vec<String>> = OnceLock::new();
    D.get_or_init(|| (0..KEYS + 1).map(|k| halo::did(&key(k))).collect())
}

fn nonce(slot: u64) -> [u8; 32] {
    [slot as u8 + 1; 32]
}

fn frame(mut v: serde_json::Value) -> String {
    if let Some(o) = v.as_object_mut() {
        o.insert("v".into(), 1.into());
    }
    v.to_string()
}

/// The auth frame of key `k` on slot `slot` (signatures are precomputed: they cost).
fn auth_frame(slot: u64, k: u8) -> &'static str {
    static A: OnceLock<Vec<Vec<String>>> = OnceLock::new();
    let table = A.get_or_init(|| {
        (0..SLOTS)
            .map(|s| {
                (0..KEYS)
                    .map(|k| {
                        let sig =
                            key(k).sign(&protocol::auth_message(&hex::encode(nonce(s)), ORIGIN));
                        frame(
                            serde_json::json!({"type": "auth", "id": dids()[usize::from(k)],
                            "signature": URL_SAFE_NO_PAD.encode(sig.to_bytes())}),
                        )
                    })
                    .collect()
            })
            .collect()
    });
    &table[slot as usize][usize::from(k)]
}

fn payloads() -> [serde_json::Value; 4] {
    [
        serde_json::json!({"sdp": "v=0\r\n", "type": "offer"}),
        serde_json::json!(null),
        serde_json::json!([1, -2.5e-300, "\u{0}\u{ffff}", {"a": {"b": [true]}}]),
        serde_json::json!(18446744073709551615u64),
    ]
}

fn frame_templates() -> Vec<String> {
    let mut out = vec![auth_frame(0, 0).to_owned(), auth_frame(1, 1).to_owned()];
    for s in SWARMS {
        out.push(frame(serde_json::json!({"type": "join", "swarm": s})));
        out.push(frame(serde_json::json!({"type": "leave", "swarm": s})));
    }
    for p in payloads() {
        out.push(frame(serde_json::json!({"type": "signal", "to": dids()[1],
            "swarm": SWARMS[0], "payload": p})));
    }
    out.push(frame(serde_json::json!({"type": "ice-servers"})));
    out.push(r#"{"v":2,"type":"join","swarm":"00"}"#.into());
    out.push(r#"{"type":"join","swarm":"00"}"#.into());
    out.push(r#"{"v":1,"type":"join","swarm":"00","extra":1}"#.into());
    out.push(r#"[{"v":1}]"#.into());
    out.push(format!("{}{}", "[".repeat(200), "]".repeat(200)));
    out
}

/// What a client does.
#[derive(Clone, Debug)]
enum Op {
    Connect(u64),
    Close(u64),
    /// Seconds pass, then the driver's timer runs `tick`.
    Tick(u8),
    Auth {
        slot: u64,
        key: u8,
        own_nonce: bool,
    },
    Join(u64, usize),
    Leave(u64, usize),
    Signal {
        slot: u64,
        to: u8,
        swarm: usize,
        payload: usize,
    },
    Ice(u64),
    Text(u64, String),
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..SLOTS;
    prop_oneof![
        3 => slot.clone().prop_map(Op::Connect),
        1 => slot.clone().prop_map(Op::Close),
        1 => prop_oneof![Just(1u8), Just(11), any::<u8>()].prop_map(Op::Tick),
        3 => (slot.clone(), 0..KEYS, proptest::bool::weighted(0.9))
            .prop_map(|(slot, key, own_nonce)| Op::Auth { slot, key, own_nonce }),
        3 => (slot.clone(), prop_oneof![4 => 0..2usize, 1 => 0..SWARMS.len()])
            .prop_map(|(s, w)| Op::Join(s, w)),
        1 => (slot.clone(), 0..SWARMS.len()).prop_map(|(s, w)| Op::Leave(s, w)),
        3 => (slot.clone(), 0..KEYS + 1, 0..2usize, 0..4usize)
            .prop_map(|(slot, to, swarm, payload)| Op::Signal { slot, to, swarm, payload }),
        1 => slot.clone().prop_map(Op::Ice),
        2 => (slot, text_from(frame_templates(), 200)).prop_map(|(s, t)| Op::Text(s, t)),
    ]
}

/// The model: per live connection, its key once authenticated and its swarms (lowercase).
#[derive(Default)]
struct Model {
    conns: BTreeMap<ConnId, (Option<u8>, BTreeSet<String>)>,
    generation: [u64; SLOTS as usize],
}

impl Model {
    fn id(&self, slot: u64) -> ConnId {
        slot + SLOTS * self.generation[slot as usize]
    }

    fn key_of(&self, c: ConnId) -> Option<u8> {
        self.conns.get(&c).and_then(|(k, _)| *k)
    }

    fn members(&self, swarm: &str) -> BTreeSet<String> {
        self.conns
            .values()
            .filter(|(k, s)| k.is_some() && s.contains(swarm))
            .filter_map(|(k, _)| k.map(|k| dids()[usize::from(k)].clone()))
            .collect()
    }

    fn check_stats(&self, hub: &Hub) -> Result<(), String> {
        let swarms: BTreeSet<&String> = self
            .conns
            .values()
            .filter(|(k, _)| k.is_some())
            .flat_map(|(_, s)| s)
            .collect();
        let want = signal::Stats {
            connections: self.conns.len(),
            peers: self.conns.values().filter(|(k, _)| k.is_some()).count(),
            swarms: swarms.len(),
        };
        if hub.stats() != want {
            return Err(format!("stats {:?}, model {want:?}", hub.stats()));
        }
        Ok(())
    }
}

/// Whether `text` is an auth frame whose signature verifies for connection `c`'s nonce.
fn verifies(text: &str, slot: u64) -> Option<String> {
    let ClientMsg::Auth { id, signature } = protocol::decode(text).ok()? else {
        return None;
    };
    let key = halo::PublicKey::from_did(&id).ok()?;
    let sig = URL_SAFE_NO_PAD
        .decode(signature.trim_end_matches('='))
        .ok()?;
    let msg = protocol::auth_message(&hex::encode(nonce(slot)), ORIGIN);
    key.verify(&msg, &sig).ok()?;
    Some(id)
}

/// Plays `ops` against a hub and the model; `Err` names the first broken invariant.
fn play(ops: &[Op]) -> Result<(), String> {
    let limits = Limits {
        max_swarms_per_peer: 2,
        max_peers_per_swarm: 2,
        max_connections: 3,
        strikes: 4,
        ..Limits::default()
    };
    let ice = Ice {
        stun: vec!["stun:kube.test:3478".into()],
        turn: vec!["turn:kube.test:3478".into()],
        secret: b"s".to_vec(),
        ttl_secs: 600,
    };
    let mut hub = Hub::new(limits, Some(ice));
    let mut m = Model::default();
    let start = Instant::now();
    let mut now = start;
    for op in ops {
        now += Duration::from_millis(30);
        // The frame a slot sends, and what a valid one means.
        let (slot, text): (u64, String) = match op {
            Op::Connect(slot) => {
                if m.conns.contains_key(&m.id(*slot)) {
                    continue;
                }
                let c = m.id(*slot);
                let out = hub.connect(c, nonce(*slot), ORIGIN, now);
                match out.as_slice() {
                    [Out::Send(x, ServerMsg::Challenge { nonce: n })]
                        if *x == c && *n == hex::encode(nonce(*slot)) =>
                    {
                        m.conns.insert(c, (None, BTreeSet::new()));
                    }
                    [Out::Close(x, _)] if *x == c && m.conns.len() >= 3 => {
                        m.generation[*slot as usize] += 1;
                    }
                    other => return Err(format!("connect gave {other:?}")),
                }
                m.check_stats(&hub)?;
                continue;
            }
            Op::Close(slot) => {
                let c = m.id(*slot);
                let out = hub.disconnect(c);
                apply(&mut m, c, &out, None)?;
                if m.conns.remove(&c).is_some() {
                    m.generation[*slot as usize] += 1;
                }
                m.check_stats(&hub)?;
                continue;
            }
            Op::Tick(secs) => {
                now += Duration::from_secs(u64::from(*secs));
                let out = hub.tick(now);
                for o in &out {
                    if let Out::Close(c, _) = o
                        && m.key_of(*c).is_some()
                    {
                        return Err(format!("tick closed the authenticated {c}"));
                    }
                }
                apply(&mut m, u64::MAX, &out, None)?;
                m.check_stats(&hub)?;
                continue;
            }
            Op::Auth {
                slot,
                key,
                own_nonce,
            } => {
                let from = if *own_nonce {
                    *slot
                } else {
                    (*slot + 1) % SLOTS
                };
                (*slot, auth_frame(from, *key).to_owned())
            }
            Op::Join(slot, w) => (
                *slot,
                frame(serde_json::json!({"type": "join", "swarm": SWARMS[*w]})),
            ),
            Op::Leave(slot, w) => (
                *slot,
                frame(serde_json::json!({"type": "leave", "swarm": SWARMS[*w]})),
            ),
            Op::Signal {
                slot,
                to,
                swarm,
                payload,
            } => (
                *slot,
                frame(
                    serde_json::json!({"type": "signal", "to": dids()[usize::from(*to)],
                    "swarm": SWARMS[*swarm], "payload": payloads()[*payload]}),
                ),
            ),
            Op::Ice(slot) => (*slot, frame(serde_json::json!({"type": "ice-servers"}))),
            Op::Text(slot, t) => (*slot, t.clone()),
        };
        let c = m.id(slot);
        if !m.conns.contains_key(&c) {
            continue;
        }
        let out = hub.receive(c, &text, now, 1_700_000_000);
        // A welcome must answer a valid proof for this connection's own challenge.
        for o in &out {
            if let Out::Send(x, ServerMsg::Welcome { id }) = o {
                if *x != c || m.key_of(c).is_some() {
                    return Err(format!("welcome to {x} after a frame from {c}"));
                }
                if verifies(&text, slot).as_deref() != Some(id.as_str()) {
                    return Err(format!("welcomed {id} for {text:?}"));
                }
            }
        }
        let decoded = protocol::decode(&text).ok();
        apply(&mut m, c, &out, decoded.as_ref())?;
        m.check_stats(&hub)?;
    }
    for c in m.conns.keys().copied().collect::<Vec<_>>() {
        let out = hub.disconnect(c);
        apply(&mut m, c, &out, None)?;
        m.conns.remove(&c);
    }
    if hub.stats() != signal::Stats::default() {
        return Err(format!(
            "state left after every disconnect: {:?}",
            hub.stats()
        ));
    }
    Ok(())
}

/// Checks the hub's outputs for one input from `from` (which sent `msg`, if a frame) and
/// updates the model.
fn apply(m: &mut Model, from: ConnId, out: &[Out], msg: Option<&ClientMsg>) -> Result<(), String> {
    let refused = out
        .iter()
        .any(|o| matches!(o, Out::Send(c, ServerMsg::Error { .. }) if *c == from));
    let mut closed = Vec::new();
    for o in out {
        match o {
            Out::Send(c, msg_out) => {
                if !m.conns.contains_key(c) || closed.contains(c) {
                    return Err(format!(
                        "a send to {c}, which is not connected: {msg_out:?}"
                    ));
                }
                let authed = m.key_of(*c).is_some();
                match msg_out {
                    ServerMsg::Welcome { id } => {
                        let k = dids()
                            .iter()
                            .position(|d| d == id)
                            .ok_or("welcome to an unknown key")?;
                        if let Some(entry) = m.conns.get_mut(c) {
                            entry.0 = Some(k as u8);
                        }
                    }
                    ServerMsg::Peers { swarm, peers } => {
                        if !authed {
                            return Err("peers to an unauthenticated connection".into());
                        }
                        let swarm = swarm.to_lowercase();
                        let me = &dids()[usize::from(m.key_of(*c).unwrap_or(0))];
                        let mut want = m.members(&swarm);
                        want.remove(me);
                        let got: BTreeSet<String> = peers.iter().cloned().collect();
                        if got != want || got.len() != peers.len() {
                            return Err(format!("peers {peers:?} in {swarm}, model {want:?}"));
                        }
                        if let Some(entry) = m.conns.get_mut(c) {
                            entry.1.insert(swarm);
                        }
                    }
                    ServerMsg::PeerJoined { swarm, peer } | ServerMsg::PeerLeft { swarm, peer } => {
                        if !authed || !m.conns[c].1.contains(swarm) {
                            return Err(format!("{msg_out:?} to {c}, not in that swarm"));
                        }
                        if peer == &dids()[usize::from(m.key_of(*c).unwrap_or(0))] {
                            return Err(format!("{msg_out:?} about itself"));
                        }
                    }
                    ServerMsg::Signal {
                        from: who,
                        swarm,
                        payload,
                    } => {
                        let Some(ClientMsg::Signal {
                            to,
                            swarm: sent_swarm,
                            payload: sent,
                        }) = msg
                        else {
                            return Err(format!("a signal out of nowhere: {msg_out:?}"));
                        };
                        let sender = m.key_of(from).ok_or("a signal from a stranger")?;
                        let receiver = m.key_of(*c).ok_or("a signal to a stranger")?;
                        if who != &dids()[usize::from(sender)]
                            || to != &dids()[usize::from(receiver)]
                        {
                            return Err(format!("{msg_out:?} delivered to {c}, meant for {to}"));
                        }
                        if swarm != &sent_swarm.to_lowercase()
                            || !m.conns[&from].1.contains(swarm)
                            || !m.conns[c].1.contains(swarm)
                            || payload != sent
                        {
                            return Err(format!("{msg_out:?} across swarms or altered"));
                        }
                    }
                    ServerMsg::IceServers { servers, .. } => {
                        if !authed || servers.is_empty() {
                            return Err("ICE servers to an unauthenticated connection".into());
                        }
                    }
                    ServerMsg::Challenge { .. } => {
                        return Err("a second challenge".into());
                    }
                    ServerMsg::Error { .. } => {}
                }
            }
            Out::Close(c, _) => {
                if !m.conns.contains_key(c) {
                    return Err(format!("close of {c}, which is not connected"));
                }
                closed.push(*c);
            }
        }
    }
    // A successful leave answers nothing to the leaver.
    if let Some(ClientMsg::Leave { swarm }) = msg
        && !refused
        && let Some(entry) = m.conns.get_mut(&from)
    {
        entry.1.remove(&swarm.to_lowercase());
    }
    for c in closed {
        m.conns.remove(&c);
        let slot = c % SLOTS;
        m.generation[slot as usize] += 1;
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// `protocol::decode` never panics, and what it accepts encodes back to itself.
    #[test]
    #[ignore = "fuzz: bench/fuzz/run"]
    fn fuzz_signal_decode(text in text_from(frame_templates(), 400)) {
        if let Ok(msg) = protocol::decode(&text) {
            let mut v = serde_json::to_value(&msg).expect("a message serializes");
            if let Some(o) = v.as_object_mut() {
                o.insert("v".into(), 1.into());
            }
            prop_assert_eq!(protocol::decode(&v.to_string()), Ok(msg));
        }
    }

    /// The hub against the model: sends only to live connections, welcomes only valid
    /// proofs of the connection's own challenge, lists and relays only within swarms both
    /// joined, counts what the model counts, and keeps nothing once everyone has left.
    #[test]
    #[ignore = "fuzz: bench/fuzz/run"]
    fn fuzz_signal_hub(ops in proptest::collection::vec(op(), 1..24)) {
        let r = play(&ops);
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}

/// The templates are what they claim: an honest session passes the model.
#[test]
#[ignore = "fuzz: bench/fuzz/run"]
fn fuzz_templates_are_valid() {
    for t in frame_templates().iter().take(2) {
        assert!(matches!(protocol::decode(t), Ok(ClientMsg::Auth { .. })));
    }
    assert_eq!(verifies(auth_frame(2, 1), 2), Some(dids()[1].clone()));
    play(&[
        Op::Connect(0),
        Op::Connect(1),
        Op::Auth {
            slot: 0,
            key: 0,
            own_nonce: true,
        },
        Op::Auth {
            slot: 1,
            key: 1,
            own_nonce: true,
        },
        Op::Join(0, 0),
        Op::Join(1, 1),
        Op::Join(1, 0),
        Op::Signal {
            slot: 0,
            to: 1,
            swarm: 0,
            payload: 2,
        },
        Op::Ice(1),
        Op::Leave(0, 0),
        Op::Tick(30),
    ])
    .unwrap();
}
