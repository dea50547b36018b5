//! Reload under load: signaling WebSockets and an HTTPS load stay connected and error-free
//! across several reloads (SIGHUP and `kube reload`), one of them with a bad config that is
//! refused with its errors while the running one stays.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use tests::{Kube, Opts};

use crate::signal::{peer, recv, send};

const SWARM: &str = "5151515151515151515151515151515151515151515151515151515151515151";

fn config(records: &str, operators: &str) -> String {
    format!("domain: localhost\ndns:\n  records:\n{records}\nadmin:\n  operators: [{operators}]\n")
}

/// The second reload's file: also the log level, app and signaling limits, TURN secret.
fn config_more(records: &str, operators: &str) -> String {
    config(records, operators)
        + "log:\n  level: debug\napps:\n  keep_versions: 3\nsignal:\n  messages_per_second: 40\nturn:\n  secret: rotated\necho:\n  messages_per_second: 500\n"
}

/// Records in the zone served.
async fn dns_records(kube: &Kube) -> u64 {
    let v = kube.api(reqwest::Method::GET, "/api/dns").await;
    v["records"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_drop_nobody() {
    let one = "    - { name: one, type: TXT, value: '\"1\"' }";
    let kube = Kube::start_with(Opts {
        config: Some(config(one, "")),
        // The level comes from kube.yml, so a reload may change it.
        env: vec![("KUBE_LOG".into(), String::new())],
        ..Opts::default()
    })
    .unwrap_or_else(|log| panic!("kube did not start:\n{log}"));
    let file = kube.data_dir.parent().unwrap().join("kube.yml");
    kube.publish(&[("index.html", b"<h1>load</h1>")], "load");

    // Ten signaling peers in one swarm.
    let mut peers = Vec::new();
    for seed in 80..90u8 {
        let (mut ws, did) = peer(&kube, seed).await;
        send(&mut ws, json!({"type": "join", "swarm": SWARM})).await;
        assert_eq!(recv(&mut ws).await["type"], "peers");
        peers.push((ws, did));
    }
    // Drain the peer-joined notices.
    for i in 0..peers.len() {
        for _ in i + 1..peers.len() {
            assert_eq!(recv(&mut peers[i].0).await["type"], "peer-joined");
        }
    }

    // An ECHO peer with a space, its WebSocket open across the reloads.
    let did = crate::echo::kube_did(&kube).await;
    let (_space, mut root) = crate::echo::space_root(&did);
    let mut echo_peer =
        crate::echo::Peer::connect(&kube, &did, &crate::echo::key(1), "alice").await;
    let mut echo_state = automerge::sync::State::new();
    assert!(
        echo_peer
            .sync(crate::echo::ROOT_ID, &mut root, &mut echo_state)
            .await
    );

    // HTTPS load on the app until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (client, url) = (kube.client(), kube.url("load", "/"));
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let good = match client.get(&url).send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if good {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    // 1. SIGHUP with a new DNS record.
    let before = dns_records(&kube).await;
    let two = format!("{one}\n    - {{ name: two, type: TXT, value: '\"2\"' }}");
    std::fs::write(&file, config(&two, "")).unwrap();
    kube.send_signal("-HUP");
    let mut applied = false;
    for _ in 0..100 {
        if dns_records(&kube).await == before + 1 {
            applied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(applied, "the SIGHUP reload added the record");

    // 2. `kube reload` with a new operator, log level, limits and TURN secret: says what
    //    applied.
    let op = halo::did(&halo::SigningKey::from_bytes(&[90; 32]));
    std::fs::write(&file, config_more(&two, &op)).unwrap();
    let out = kube.cli(&["reload"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for part in ["admin.operators", "log.level", "apps", "signal", "turn"] {
        assert!(said.contains(part), "{part} not applied: {said}");
    }
    assert!(!said.contains("restart"), "{said}");
    // ice-servers now hands out credentials under the new TURN secret.
    send(&mut peers[0].0, json!({"type": "ice-servers"})).await;
    let ice = recv(&mut peers[0].0).await;
    let server = &ice["servers"][1];
    let user = server["username"].as_str().unwrap();
    assert_eq!(
        server["credential"],
        signal::ice::password(b"rotated", user),
        "{ice}"
    );
    let id = kube.api(reqwest::Method::GET, "/api/identity").await;
    assert_eq!(id["operators"], json!([op]));

    // 3. A bad config: refused with file, line and key; the running one stays.
    std::fs::write(&file, "domain: localhost\ndns:\n  ttl: many\n").unwrap();
    let out = kube.cli(&["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("kube.yml:3") && err.contains("dns.ttl"),
        "{err}"
    );
    assert_eq!(dns_records(&kube).await, before + 1, "the zone stays");

    // 4. SIGHUP back to the first file.
    std::fs::write(&file, config_more(one, &op)).unwrap();
    kube.send_signal("-HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "HTTPS requests failed across reloads ({ok} ok)");
    assert!(ok > 20, "the load ran ({ok} requests)");

    // Every WebSocket is still there: each signals the next and hears from the previous.
    let n = peers.len();
    for i in 0..n {
        let to = peers[(i + 1) % n].1.clone();
        send(
            &mut peers[i].0,
            json!({"type": "signal", "to": to, "swarm": SWARM, "payload": {"i": i}}),
        )
        .await;
    }
    for (i, (ws, _)) in peers.iter_mut().enumerate() {
        let got = recv(ws).await;
        assert_eq!(got["type"], "signal", "peer {i} after the reloads: {got}");
        assert_eq!(got["payload"]["i"], ((i + n - 1) % n) as u64);
    }
    // The ECHO connection is the same one and still syncs.
    crate::echo::set(&mut root, "after", "reloads");
    assert!(
        echo_peer
            .sync(crate::echo::ROOT_ID, &mut root, &mut echo_state)
            .await,
        "ECHO after the reloads: {:?}",
        echo_peer.errors
    );
    assert!(!echo_peer.closed);
    assert!(!kube.log().contains("panicked"));
}
