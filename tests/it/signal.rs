//! Signaling through the running KUBE with real WebSocket clients over TLS: authentication,
//! swarms, delivery only within a shared swarm, peer-left on close and on silence,
//! reconnection without ghosts, and the limits.

use std::time::Duration;

use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tests::{Kube, Opts, Ws};
use tokio_tungstenite::tungstenite::Message;

const SWARM: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const OTHER: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
const ORIGIN: &str = "https://app.localhost";

async fn open(kube: &Kube) -> Ws {
    tests::ws_connect(
        kube.https,
        "localhost",
        &kube.ca_pem(),
        "/.well-known/kube/signal",
        ORIGIN,
    )
    .await
}

pub(crate) async fn recv(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .unwrap();
        match m {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

pub(crate) async fn send(ws: &mut Ws, mut v: Value) {
    v.as_object_mut().unwrap().insert("v".into(), 1.into());
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

fn did(key: &SigningKey) -> String {
    halo::PublicKey::from_bytes(key.verifying_key().as_bytes())
        .unwrap()
        .to_did()
}

/// Connects and authenticates as the key made from `seed`.
pub(crate) async fn peer(kube: &Kube, seed: u8) -> (Ws, String) {
    let key = SigningKey::from_bytes(&[seed; 32]);
    let mut ws = open(kube).await;
    let challenge = recv(&mut ws).await;
    assert_eq!(challenge["type"], "challenge");
    assert_eq!(challenge["v"], 1);
    let nonce = challenge["nonce"].as_str().unwrap();
    let signed = format!("kube-signal-v1\n{nonce}\n{ORIGIN}");
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(key.sign(signed.as_bytes()).to_bytes());
    send(
        &mut ws,
        json!({"type": "auth", "id": did(&key), "signature": sig}),
    )
    .await;
    let welcome = recv(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["id"], did(&key));
    (ws, did(&key))
}

async fn closed(ws: &mut Ws) -> bool {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return true,
            Ok(Some(Ok(_))) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn swarms_and_delivery_within_them() {
    let kube = Kube::start();
    let (mut a, a_id) = peer(&kube, 1).await;
    let (mut b, b_id) = peer(&kube, 2).await;
    let (mut c, c_id) = peer(&kube, 3).await;
    send(&mut a, json!({"type": "join", "swarm": SWARM})).await;
    assert_eq!(
        recv(&mut a).await,
        json!({"v": 1, "type": "peers", "swarm": SWARM, "peers": []})
    );
    send(&mut b, json!({"type": "join", "swarm": SWARM})).await;
    assert_eq!(recv(&mut b).await["peers"], json!([a_id]));
    assert_eq!(
        recv(&mut a).await,
        json!({"v": 1, "type": "peer-joined", "swarm": SWARM, "peer": b_id})
    );
    send(&mut c, json!({"type": "join", "swarm": OTHER})).await;
    recv(&mut c).await;

    send(&mut a, json!({"type": "signal", "to": b_id, "swarm": SWARM, "payload": {"sdp": "v=0", "kind": "offer"}})).await;
    assert_eq!(
        recv(&mut b).await,
        json!({"v": 1, "type": "signal", "from": a_id, "swarm": SWARM, "payload": {"sdp": "v=0", "kind": "offer"}})
    );
    send(
        &mut a,
        json!({"type": "signal", "to": c_id, "swarm": SWARM, "payload": 1}),
    )
    .await;
    assert_eq!(recv(&mut a).await["code"], "unknown-peer");
    send(
        &mut c,
        json!({"type": "signal", "to": a_id, "swarm": SWARM, "payload": 1}),
    )
    .await;
    assert_eq!(recv(&mut c).await["code"], "not-in-swarm");

    // Leaving, and closing the socket, each tell the swarm.
    send(&mut b, json!({"type": "leave", "swarm": SWARM})).await;
    assert_eq!(
        recv(&mut a).await,
        json!({"v": 1, "type": "peer-left", "swarm": SWARM, "peer": b_id})
    );
    send(&mut b, json!({"type": "join", "swarm": SWARM})).await;
    recv(&mut b).await;
    recv(&mut a).await;
    b.close(None).await.unwrap();
    assert_eq!(
        recv(&mut a).await,
        json!({"v": 1, "type": "peer-left", "swarm": SWARM, "peer": b_id})
    );

    let m = kube.metrics().await;
    assert!(
        m.contains("kube_signal_messages_total{direction=\"in\",type=\"signal\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("kube_signal_errors_total{code=\"unknown-peer\"} 1"),
        "{m}"
    );
    assert!(m.contains("kube_signal_swarms 2"), "{m}");
}

#[tokio::test]
async fn authentication_failures() {
    let kube = Kube::start();
    // A signature over another origin is refused and the socket closed.
    let key = SigningKey::from_bytes(&[5; 32]);
    let mut ws = open(&kube).await;
    let nonce = recv(&mut ws).await["nonce"].as_str().unwrap().to_owned();
    let sig = key.sign(format!("kube-signal-v1\n{nonce}\nhttps://evil.example").as_bytes());
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig.to_bytes());
    send(
        &mut ws,
        json!({"type": "auth", "id": did(&key), "signature": sig}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["code"], "auth-failed");
    assert!(closed(&mut ws).await);
    // Nothing before auth.
    let mut ws = open(&kube).await;
    recv(&mut ws).await;
    send(&mut ws, json!({"type": "join", "swarm": SWARM})).await;
    assert_eq!(recv(&mut ws).await["code"], "unauthenticated");
    ws.send(Message::Text("{\"type\":\"join\"}".into()))
        .await
        .unwrap();
    assert_eq!(recv(&mut ws).await["code"], "bad-version");
}

#[tokio::test]
async fn reconnect_replaces_and_silence_ends_a_session() {
    let kube = Kube::start_with(Opts {
        env: vec![
            ("KUBE_SIGNAL_PING_INTERVAL_SECS".into(), "1".into()),
            ("KUBE_SIGNAL_PING_TIMEOUT_SECS".into(), "1".into()),
            ("KUBE_SIGNAL_AUTH_TIMEOUT_SECS".into(), "1".into()),
        ],
        ..Default::default()
    })
    .unwrap();
    let (mut a, a_id) = peer(&kube, 1).await;
    let (mut b, _) = peer(&kube, 2).await;
    send(&mut a, json!({"type": "join", "swarm": SWARM})).await;
    recv(&mut a).await;
    send(&mut b, json!({"type": "join", "swarm": SWARM})).await;
    recv(&mut b).await;
    recv(&mut a).await;
    // a connects again: the old session is closed and b sees it leave, once.
    let (mut a2, _) = peer(&kube, 1).await;
    assert!(closed(&mut a).await, "old session closed");
    assert_eq!(
        recv(&mut b).await,
        json!({"v": 1, "type": "peer-left", "swarm": SWARM, "peer": a_id})
    );
    send(&mut a2, json!({"type": "join", "swarm": SWARM})).await;
    assert_eq!(
        recv(&mut a2).await["peers"].as_array().unwrap().len(),
        1,
        "no ghost of the old a"
    );
    assert_eq!(recv(&mut b).await["type"], "peer-joined");

    // a2 goes silent (stops reading, so it answers no pings): b hears peer-left in bounded time.
    let started = std::time::Instant::now();
    let silent = a2;
    let left = recv(&mut b).await;
    assert_eq!(
        left,
        json!({"v": 1, "type": "peer-left", "swarm": SWARM, "peer": a_id})
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    drop(silent);

    // A connection that never authenticates is closed after auth_timeout_secs.
    let mut lazy = open(&kube).await;
    recv(&mut lazy).await;
    assert_eq!(recv(&mut lazy).await["code"], "unauthenticated");
    assert!(closed(&mut lazy).await);
}

#[tokio::test]
async fn limits_refuse_and_repeated_abuse_closes() {
    let kube = Kube::start_with(Opts {
        env: vec![
            ("KUBE_SIGNAL_MAX_MESSAGE_BYTES".into(), "512".into()),
            ("KUBE_SIGNAL_MAX_SWARMS_PER_PEER".into(), "1".into()),
            ("KUBE_SIGNAL_MAX_PEERS_PER_SWARM".into(), "1".into()),
            ("KUBE_SIGNAL_MESSAGES_PER_SECOND".into(), "20".into()),
            ("KUBE_SIGNAL_STRIKES".into(), "5".into()),
            ("KUBE_SIGNAL_MAX_CONNECTIONS".into(), "3".into()),
        ],
        ..Default::default()
    })
    .unwrap();
    let (mut a, _) = peer(&kube, 1).await;
    let (mut b, _) = peer(&kube, 2).await;
    send(&mut a, json!({"type": "join", "swarm": SWARM})).await;
    recv(&mut a).await;
    send(&mut a, json!({"type": "join", "swarm": OTHER})).await;
    assert_eq!(recv(&mut a).await["code"], "swarm-limit");
    send(&mut b, json!({"type": "join", "swarm": SWARM})).await;
    assert_eq!(recv(&mut b).await["code"], "swarm-full");
    send(
        &mut b,
        json!({"type": "signal", "to": "x", "swarm": SWARM, "payload": "y".repeat(600)}),
    )
    .await;
    assert_eq!(recv(&mut b).await["code"], "too-large");
    // A third connection is the limit; a fourth is closed at once.
    let _c = open(&kube).await;
    let mut d = open(&kube).await;
    assert!(closed(&mut d).await, "max_connections");
    // Flooding: rate-limited replies, then the socket is closed.
    for _ in 0..40 {
        if b.send(Message::Text("{\"v\":1,\"type\":\"ice-servers\"}".into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut codes = Vec::new();
    while let Ok(Some(Ok(Message::Text(t)))) =
        tokio::time::timeout(Duration::from_secs(5), b.next()).await
    {
        let v: Value = serde_json::from_str(&t).unwrap();
        codes.push(v["code"].as_str().unwrap_or("").to_owned());
    }
    assert!(
        codes.iter().any(|c| c == "rate-limited") || codes.iter().any(|c| c == "no-ice-servers"),
        "{codes:?}"
    );
    assert!(closed(&mut b).await, "repeated abuse closes the socket");
    // Garbage frames are refused with an error, not a crash.
    ws_garbage(&kube).await;
}

async fn ws_garbage(kube: &Kube) {
    let (mut e, _) = peer(kube, 9).await;
    for g in [
        "",
        "[]",
        "{\"v\":1,\"type\":\"join\",\"swarm\":\"zz\"}",
        "\u{0}",
    ] {
        e.send(Message::Text(g.into())).await.unwrap();
        assert!(recv(&mut e).await["code"].is_string(), "{g:?}");
    }
    e.send(Message::Binary(vec![0xff; 10].into()))
        .await
        .unwrap();
    assert_eq!(recv(&mut e).await["code"], "bad-message");
    let r = kube.client().get(kube.url("", "/")).send().await.unwrap();
    assert_eq!(r.status(), 200, "still serving");
}

#[tokio::test]
async fn ice_servers_point_at_kubes_turn_with_rest_credentials() {
    let kube = Kube::start();
    let (mut a, a_id) = peer(&kube, 1).await;
    send(&mut a, json!({"type": "ice-servers"})).await;
    let ice = recv(&mut a).await;
    assert_eq!(ice["type"], "ice-servers", "{ice}");
    let turn = kube.ready_addr("turn").unwrap();
    assert_eq!(ice["servers"][0]["urls"], json!([format!("stun:{turn}")]));
    let https = kube.ready_addr("https").unwrap();
    // UDP and TCP on turn.listen, and TLS on the HTTPS port under the certificate's name.
    assert_eq!(
        ice["servers"][1]["urls"],
        json!([
            format!("turn:{turn}?transport=udp"),
            format!("turn:{turn}?transport=tcp"),
            format!("turns:localhost:{}?transport=tcp", https.port()),
        ])
    );
    let user = ice["servers"][1]["username"].as_str().unwrap();
    let (expiry, who) = user.split_once(':').unwrap();
    assert_eq!(who, a_id);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(expiry.parse::<u64>().unwrap() > now, "not yet expired");
    let secret = std::fs::read_to_string(kube.data_dir.join("turn.secret")).unwrap();
    assert_eq!(
        ice["servers"][1]["credential"],
        signal::ice::password(secret.trim().as_bytes(), user)
    );
}

/// Several KUBEs (issue 18): `ice-servers` hands out the other KUBEs' TURN servers of
/// `turn.cluster` beside KUBE's own, and the credentials it makes relay there too (the
/// KUBEs share `turn.secret`): coturn's client relays through B on A's credentials.
#[tokio::test(flavor = "multi_thread")]
async fn ice_servers_name_every_kube_and_their_credentials_relay_through_any() {
    use crate::turn::{SECRET, Via, have_coturn, received, start, uclient};
    if !have_coturn() {
        return;
    }
    let (b, b_turn) = start("  allow_peers: [127.0.0.0/8]\n");
    let other = format!("turn:{b_turn}?transport=udp");
    let (a, _) = start(&format!("  cluster: [\"{other}\"]\n"));
    let (mut ws, _) = peer(&a, 1).await;
    send(&mut ws, json!({"type": "ice-servers"})).await;
    let ice = recv(&mut ws).await;
    let urls = ice["servers"][1]["urls"].as_array().unwrap().clone();
    assert!(urls.contains(&json!(other)), "{ice}");
    let user = ice["servers"][1]["username"].as_str().unwrap().to_owned();
    let password = ice["servers"][1]["credential"].as_str().unwrap().to_owned();
    assert_eq!(password, signal::ice::password(SECRET.as_bytes(), &user));
    let out =
        tokio::task::spawn_blocking(move || uclient(&b, Via::Udp, &["-u", &user, "-w", &password]))
            .await
            .unwrap();
    assert!(received(&out) > 0, "nothing relayed through B:\n{out}");
}
