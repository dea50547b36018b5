//! The hub driven in memory: a fake clock, real Ed25519 keys, no sockets.

use std::time::{Duration, Instant};

use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};

use super::*;
use crate::protocol::{ServerMsg, auth_message};

struct Client {
    key: SigningKey,
    conn: ConnId,
}

impl Client {
    fn did(&self) -> String {
        PublicKey::from_bytes(self.key.verifying_key().as_bytes())
            .unwrap()
            .to_did()
    }
}

const SWARM: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const OTHER: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

fn msg(v: serde_json::Value) -> String {
    let mut v = v;
    v.as_object_mut().unwrap().insert("v".into(), 1.into());
    v.to_string()
}

fn connect(hub: &mut Hub, conn: ConnId, seed: u8, now: Instant) -> (Client, Vec<Out>) {
    let client = Client {
        key: SigningKey::from_bytes(&[seed; 32]),
        conn,
    };
    let out = hub.connect(conn, [seed; 32], "https://app.example", now);
    let Some(Out::Send(_, ServerMsg::Challenge { nonce })) = out.first() else {
        panic!("expected a challenge: {out:?}");
    };
    let sig = client.key.sign(&auth_message(nonce, "https://app.example"));
    let auth = msg(serde_json::json!({"type": "auth", "id": client.did(),
        "signature": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig.to_bytes())}));
    let out = hub.receive(conn, &auth, now, 0);
    (client, out)
}

fn sends_to(out: &[Out], conn: ConnId) -> Vec<ServerMsg> {
    out.iter()
        .filter_map(|o| match o {
            Out::Send(c, m) if *c == conn => Some(m.clone()),
            _ => None,
        })
        .collect()
}

fn closed(out: &[Out], conn: ConnId) -> bool {
    out.iter()
        .any(|o| matches!(o, Out::Close(c, _) if *c == conn))
}

fn error_code(out: &[Out], conn: ConnId) -> Option<ErrorCode> {
    sends_to(out, conn).into_iter().find_map(|m| match m {
        ServerMsg::Error { code, .. } => Some(code),
        _ => None,
    })
}

#[test]
fn auth_join_signal_leave() {
    let now = Instant::now();
    let mut hub = Hub::new(Limits::default(), None);
    let (a, out) = connect(&mut hub, 1, 1, now);
    assert_eq!(sends_to(&out, 1), vec![ServerMsg::Welcome { id: a.did() }]);
    let (b, _) = connect(&mut hub, 2, 2, now);
    let (c, _) = connect(&mut hub, 3, 3, now);
    let out = hub.receive(
        1,
        &msg(serde_json::json!({"type": "join", "swarm": SWARM})),
        now,
        0,
    );
    assert_eq!(
        sends_to(&out, 1),
        vec![ServerMsg::Peers {
            swarm: SWARM.into(),
            peers: vec![]
        }]
    );
    let out = hub.receive(
        2,
        &msg(serde_json::json!({"type": "join", "swarm": SWARM.to_uppercase()})),
        now,
        0,
    );
    assert_eq!(
        sends_to(&out, 2),
        vec![ServerMsg::Peers {
            swarm: SWARM.into(),
            peers: vec![a.did()]
        }]
    );
    assert_eq!(
        sends_to(&out, 1),
        vec![ServerMsg::PeerJoined {
            swarm: SWARM.into(),
            peer: b.did()
        }]
    );
    hub.receive(
        3,
        &msg(serde_json::json!({"type": "join", "swarm": OTHER})),
        now,
        0,
    );

    // Within the swarm: delivered, from the authenticated key.
    let out = hub.receive(1, &msg(serde_json::json!({"type": "signal", "to": b.did(), "swarm": SWARM, "payload": {"sdp": "offer"}})), now, 0);
    assert_eq!(
        sends_to(&out, 2),
        vec![ServerMsg::Signal {
            from: a.did(),
            swarm: SWARM.into(),
            payload: serde_json::json!({"sdp": "offer"})
        }]
    );
    // Outside it: refused, nothing reaches c.
    let out = hub.receive(
        1,
        &msg(serde_json::json!({"type": "signal", "to": c.did(), "swarm": SWARM, "payload": 1})),
        now,
        0,
    );
    assert_eq!(error_code(&out, 1), Some(ErrorCode::UnknownPeer));
    assert!(sends_to(&out, 3).is_empty());
    let out = hub.receive(
        3,
        &msg(serde_json::json!({"type": "signal", "to": a.did(), "swarm": SWARM, "payload": 1})),
        now,
        0,
    );
    assert_eq!(error_code(&out, 3), Some(ErrorCode::NotInSwarm));

    let out = hub.receive(
        2,
        &msg(serde_json::json!({"type": "leave", "swarm": SWARM})),
        now,
        0,
    );
    assert_eq!(
        sends_to(&out, 1),
        vec![ServerMsg::PeerLeft {
            swarm: SWARM.into(),
            peer: b.did()
        }]
    );
    let out = hub.disconnect(1);
    assert!(out.is_empty(), "nobody left in the swarm to tell");
    assert_eq!(
        hub.stats(),
        Stats {
            connections: 2,
            peers: 2,
            swarms: 1
        }
    );
    let _ = c.conn;
}

#[test]
fn bad_proofs_and_unauthenticated_messages() {
    let now = Instant::now();
    let mut hub = Hub::new(Limits::default(), None);
    hub.connect(1, [9; 32], "https://app.example", now);
    let out = hub.receive(
        1,
        &msg(serde_json::json!({"type": "join", "swarm": SWARM})),
        now,
        0,
    );
    assert_eq!(error_code(&out, 1), Some(ErrorCode::Unauthenticated));
    // A signature for another origin does not verify here.
    let key = SigningKey::from_bytes(&[9; 32]);
    let did = PublicKey::from_bytes(key.verifying_key().as_bytes())
        .unwrap()
        .to_did();
    let sig = key.sign(&auth_message(
        &hex::encode([9u8; 32]),
        "https://evil.example",
    ));
    let auth = msg(
        serde_json::json!({"type": "auth", "id": did, "signature": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig.to_bytes())}),
    );
    let out = hub.receive(1, &auth, now, 0);
    assert_eq!(error_code(&out, 1), Some(ErrorCode::AuthFailed));
    assert!(closed(&out, 1));
    hub.connect(2, [1; 32], "", now);
    let out = hub.receive(
        2,
        &msg(serde_json::json!({"type": "auth", "id": "did:web:x", "signature": "AAAA"})),
        now,
        0,
    );
    assert!(closed(&out, 2));
}

#[test]
fn reconnect_replaces_the_old_session() {
    let now = Instant::now();
    let mut hub = Hub::new(Limits::default(), None);
    let (a, _) = connect(&mut hub, 1, 1, now);
    let (_b, _) = connect(&mut hub, 2, 2, now);
    hub.receive(
        1,
        &msg(serde_json::json!({"type": "join", "swarm": SWARM})),
        now,
        0,
    );
    hub.receive(
        2,
        &msg(serde_json::json!({"type": "join", "swarm": SWARM})),
        now,
        0,
    );
    let (_a2, out) = connect(&mut hub, 3, 1, now);
    assert!(closed(&out, 1), "the old session is closed");
    assert_eq!(
        sends_to(&out, 2),
        vec![ServerMsg::PeerLeft {
            swarm: SWARM.into(),
            peer: a.did()
        }]
    );
    let out = hub.receive(
        3,
        &msg(serde_json::json!({"type": "join", "swarm": SWARM})),
        now,
        0,
    );
    assert_eq!(
        sends_to(&out, 2),
        vec![ServerMsg::PeerJoined {
            swarm: SWARM.into(),
            peer: a.did()
        }]
    );
    // The late disconnect of the old socket changes nothing.
    assert!(hub.disconnect(1).is_empty());
    assert_eq!(
        hub.stats(),
        Stats {
            connections: 2,
            peers: 2,
            swarms: 1
        }
    );
}

#[test]
fn every_limit() {
    let now = Instant::now();
    let limits = Limits {
        max_message_bytes: 200,
        messages_per_second: 5,
        max_swarms_per_peer: 1,
        max_peers_per_swarm: 1,
        max_connections: 3,
        auth_timeout: Duration::from_secs(2),
        strikes: 4,
    };
    let ice = Ice {
        stun: vec!["stun:x".into()],
        ..Ice::default()
    };
    let mut hub = Hub::new(limits, Some(ice));
    connect(&mut hub, 1, 1, now);
    connect(&mut hub, 2, 2, now);
    hub.receive(
        1,
        &msg(serde_json::json!({"type": "join", "swarm": SWARM})),
        now,
        0,
    );
    let out = hub.receive(
        1,
        &msg(serde_json::json!({"type": "join", "swarm": OTHER})),
        now,
        0,
    );
    assert_eq!(error_code(&out, 1), Some(ErrorCode::SwarmLimit));
    let out = hub.receive(
        2,
        &msg(serde_json::json!({"type": "join", "swarm": SWARM})),
        now,
        0,
    );
    assert_eq!(error_code(&out, 2), Some(ErrorCode::SwarmFull));
    let big = msg(
        serde_json::json!({"type": "signal", "to": "x", "swarm": SWARM, "payload": "y".repeat(300)}),
    );
    let out = hub.receive(2, &big, now, 0);
    assert_eq!(error_code(&out, 2), Some(ErrorCode::TooLarge));
    assert!(!closed(&out, 2), "two strikes");
    let out = hub.receive(2, "not json", now, 0);
    assert!(!closed(&out, 2), "three strikes");
    let out = hub.receive(2, "not json", now, 0);
    assert!(closed(&out, 2), "the fourth strike closes");

    // Rate: the connection spent 3 of its 5 (auth, two joins); two more pass, then refused.
    for _ in 0..2 {
        let out = hub.receive(1, &msg(serde_json::json!({"type": "ice-servers"})), now, 0);
        assert_ne!(error_code(&out, 1), Some(ErrorCode::RateLimited));
    }
    let out = hub.receive(1, &msg(serde_json::json!({"type": "ice-servers"})), now, 0);
    assert_eq!(error_code(&out, 1), Some(ErrorCode::RateLimited));
    let later = now + Duration::from_secs(1);
    let out = hub.receive(1, "{\"v\":1,\"type\":\"nope\"}", later, 0);
    assert_eq!(error_code(&out, 1), Some(ErrorCode::BadMessage));

    // Connections and the auth deadline.
    hub.connect(4, [4; 32], "", now);
    hub.connect(5, [5; 32], "", now);
    let out = hub.connect(6, [6; 32], "", now);
    assert!(closed(&out, 6), "max_connections");
    assert_eq!(hub.next_deadline(), Some(now + Duration::from_secs(2)));
    let out = hub.tick(now + Duration::from_secs(3));
    assert!(closed(&out, 4) && closed(&out, 5));
    let out = hub.receive(1, "{\"type\":\"join\"}", later, 0);
    assert_eq!(error_code(&out, 1), Some(ErrorCode::BadVersion));
}

#[test]
fn ice_servers_carry_rest_credentials() {
    let now = Instant::now();
    let ice = Ice {
        stun: vec!["stun:kube.test:3478".into()],
        turn: vec!["turn:kube.test:3478?transport=udp".into()],
        secret: b"s3cret".to_vec(),
        ttl_secs: 600,
    };
    let mut hub = Hub::new(Limits::default(), Some(ice));
    let (a, _) = connect(&mut hub, 1, 1, now);
    let out = hub.receive(
        1,
        &msg(serde_json::json!({"type": "ice-servers"})),
        now,
        1_000,
    );
    let sent = sends_to(&out, 1);
    let [ServerMsg::IceServers { servers, ttl }] = sent.as_slice() else {
        panic!("{out:?}");
    };
    assert_eq!(*ttl, 600);
    let turn = &servers[1];
    let user = turn.username.clone().unwrap();
    assert_eq!(user, format!("1600:{}", a.did()));
    assert_eq!(
        turn.credential.clone().unwrap(),
        crate::ice::password(b"s3cret", &user)
    );
}

#[test]
fn garbage_never_panics() {
    let now = Instant::now();
    let mut hub = Hub::new(
        Limits {
            strikes: u32::MAX,
            messages_per_second: u32::MAX,
            ..Limits::default()
        },
        None,
    );
    connect(&mut hub, 1, 1, now);
    for s in [
        "",
        "null",
        "[]",
        "{",
        "{\"v\":1}",
        "{\"v\":1,\"type\":\"join\",\"swarm\":\"zz\"}",
        "{\"v\":\"1\"}",
        "\u{0}",
        "{\"v\":1,\"type\":\"signal\",\"to\":5}",
    ] {
        let out = hub.receive(1, s, now, 0);
        assert!(error_code(&out, 1).is_some(), "{s}");
    }
}
