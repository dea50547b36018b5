//! Certificates from a real Pebble: each challenge type, a restart that keeps a valid
//! certificate, renewal swapped in under an open HTTP/2 connection, a directory that goes
//! away, and `files` mode reloading replaced PEM files.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tests::pebble::{Pebble, free_port, test_pki};
use tests::{Kube, Opts, require_tools};

pub(crate) fn have_pebble() -> bool {
    let ok = std::process::Command::new("pebble")
        .arg("-h")
        .output()
        .is_ok();
    if !ok {
        assert!(
            !require_tools(),
            "pebble is required (Debian package pebble)"
        );
        eprintln!("pebble not installed: skipped");
    }
    ok
}

struct Setup {
    pebble: Pebble,
    kube: Kube,
    env: Vec<(String, String)>,
    config: String,
}

fn setup(challenges: &str, validity_secs: u64) -> Setup {
    let (http, https, dns) = (free_port(), free_port(), free_port());
    let pebble = Pebble::start(
        http,
        https,
        SocketAddr::from(([127, 0, 0, 1], dns)),
        validity_secs,
    );
    let config = format!(
        "domain: kube.test\ntls:\n  mode: acme\nacme:\n  directory: {}\n  ca_root: {}\n  challenges: [{challenges}]\ndns:\n  addresses: [127.0.0.1]\n  rrl:\n    enabled: false\n",
        pebble.directory,
        pebble.tls_ca.display()
    );
    let env = vec![
        ("KUBE_HTTP_LISTEN".to_string(), format!("127.0.0.1:{http}")),
        (
            "KUBE_HTTP_HTTPS_LISTEN".to_string(),
            format!("127.0.0.1:{https}"),
        ),
        ("KUBE_DNS_LISTEN".to_string(), format!("127.0.0.1:{dns}")),
    ];
    let kube = Kube::start_with(Opts {
        config: Some(config.clone()),
        env: env.clone(),
        ..Default::default()
    })
    .unwrap_or_else(|log| panic!("kube did not start:\n{log}\n{}", pebble.log()));
    Setup {
        pebble,
        kube,
        env,
        config,
    }
}

/// Waits (bounded) until the served certificate comes from Pebble and names `name`;
/// returns its serial.
pub(crate) async fn issued(kube: &Kube, name: &str, not_serial: Option<&str>) -> String {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let certs = kube.api(reqwest::Method::GET, "/api/certs").await;
        let c = &certs["certificates"][0];
        let from_pebble = c["issuer"].as_str().unwrap_or("").contains("Pebble");
        let named = c["names"]
            .as_array()
            .is_some_and(|n| n.iter().any(|x| x == name));
        let serial = c["serial"].as_str().unwrap_or("").to_owned();
        if from_pebble && named && not_serial != Some(serial.as_str()) {
            return serial;
        }
        assert!(
            Instant::now() < deadline,
            "no certificate for {name}: {certs}\n{}",
            kube.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One HTTP/2 connection to `name` at `addr` trusting only `root`; returns the request
/// sender and the certificate the server presented.
pub(crate) async fn h2(
    addr: SocketAddr,
    name: &str,
    root: &[u8],
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    Vec<u8>,
) {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let server = ServerName::try_from(name.to_owned()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(server, tcp)
        .await
        .unwrap_or_else(|e| panic!("TLS to {name}: {e}"));
    let cert = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    (send, cert)
}

async fn get(
    send: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    name: &str,
    port: u16,
) -> u16 {
    let req = http::Request::get(format!("https://{name}:{port}/"))
        .body(Empty::new())
        .unwrap();
    send.send_request(req).await.unwrap().status().as_u16()
}

#[tokio::test]
async fn dns01_gets_the_apex_and_a_wildcard() {
    if !have_pebble() {
        return;
    }
    let s = setup("dns-01", 3600);
    issued(&s.kube, "*.kube.test", None).await;
    let root = s.pebble.issuing_root().await;
    let (mut apex, _) = h2(s.kube.https, "kube.test", &root).await;
    assert_eq!(get(&mut apex, "kube.test", s.kube.https.port()).await, 200);
    let (mut app, _) = h2(s.kube.https, "notes.kube.test", &root).await;
    assert_eq!(
        get(&mut app, "notes.kube.test", s.kube.https.port()).await,
        404,
        "TLS fine, no app yet"
    );
    // The challenge record is gone once the order is done.
    let dns = s.kube.api(reqwest::Method::GET, "/api/dns").await;
    assert_eq!(
        dns["runtime_records"].as_array().map(|a| a.len()),
        Some(0),
        "{dns}"
    );
    let m = s.kube.metrics().await;
    assert!(
        m.contains("kube_acme_orders_total{result=\"success\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("kube_cert_not_after_seconds{name=\"*.kube.test\"}"),
        "{m}"
    );
}

/// DNS-01 with a secondary: Pebble resolves through a Knot secondary of KUBE that does not
/// take NOTIFY and polls KUBE's serial every 2 s. KUBE tells Pebble to validate only
/// once the secondary answers the serial with the TXT record, so the order succeeds (asked
/// at once, Pebble would find no record there and fail the order).
#[tokio::test]
async fn dns01_waits_until_every_secondary_has_the_record() {
    if !have_pebble() || !crate::dns::have_knotd() {
        return;
    }
    let (http, https, dns, knot_port) = (free_port(), free_port(), free_port(), free_port());
    // Knot first: its port is then taken before Pebble picks its own.
    let knot = crate::dns::Knot::start(knot_port, dns, false);
    let pebble = Pebble::start(
        http,
        https,
        SocketAddr::from(([127, 0, 0, 1], knot_port)),
        3600,
    );
    let secret = crate::dns::TSIG_SECRET;
    let config = format!(
        "domain: kube.test\ntls:\n  mode: acme\nacme:\n  directory: {}\n  ca_root: {}\n  challenges: [dns-01]\ndns:\n  addresses: [127.0.0.1]\n  rrl:\n    enabled: false\n  tsig_keys:\n    - {{ name: xfr, secret: \"{secret}\" }}\n  secondaries:\n    - {{ address: \"127.0.0.1:{knot_port}\", key: xfr }}\n",
        pebble.directory,
        pebble.tls_ca.display()
    );
    let kube = Kube::start_with(Opts {
        config: Some(config),
        env: vec![
            ("KUBE_HTTP_LISTEN".into(), format!("127.0.0.1:{http}")),
            (
                "KUBE_HTTP_HTTPS_LISTEN".into(),
                format!("127.0.0.1:{https}"),
            ),
            ("KUBE_DNS_LISTEN".into(), format!("127.0.0.1:{dns}")),
        ],
        ..Default::default()
    })
    .unwrap_or_else(|log| panic!("kube did not start:\n{log}\n{}", pebble.log()));
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let certs = kube.api(reqwest::Method::GET, "/api/certs").await;
        let c = &certs["certificates"][0];
        if c["issuer"].as_str().unwrap_or("").contains("Pebble") {
            break;
        }
        let m = kube.metrics().await;
        let failed = m
            .lines()
            .find_map(|l| l.strip_prefix("kube_acme_orders_total{result=\"failure\"} "))
            .is_some_and(|v| v.trim() != "0");
        assert!(
            !failed,
            "an order failed:\n{}\n{}\n{}",
            kube.log(),
            pebble.log(),
            knot.log()
        );
        assert!(
            Instant::now() < deadline,
            "no certificate: {certs}\n{}\n{}",
            kube.log(),
            knot.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(knot.log().contains("zone updated"), "{}", knot.log());
}

#[tokio::test]
async fn http01_names_each_app() {
    if !have_pebble() {
        return;
    }
    let s = setup("http-01", 3600);
    issued(&s.kube, "kube.test", None).await;
    s.kube.publish(&[("index.html", b"notes")], "notes");
    issued(&s.kube, "notes.kube.test", None).await;
    let root = s.pebble.issuing_root().await;
    let (mut app, _) = h2(s.kube.https, "notes.kube.test", &root).await;
    assert_eq!(
        get(&mut app, "notes.kube.test", s.kube.https.port()).await,
        200
    );
}

#[tokio::test]
async fn tls_alpn01_and_a_restart_that_keeps_the_certificate() {
    if !have_pebble() {
        return;
    }
    let mut s = setup("tls-alpn-01", 3600);
    let serial = issued(&s.kube, "kube.test", None).await;
    let root = s.pebble.issuing_root().await;
    let (mut apex, _) = h2(s.kube.https, "kube.test", &root).await;
    assert_eq!(get(&mut apex, "kube.test", s.kube.https.port()).await, 200);
    let d = s.kube.data_dir.clone();
    s.kube.kill();
    let again = Kube::start_with(Opts {
        config: Some(s.config.clone()),
        env: s.env.clone(),
        data_dir: Some(d),
    })
    .unwrap();
    let certs = again.api(reqwest::Method::GET, "/api/certs").await;
    assert_eq!(
        certs["certificates"][0]["serial"],
        serial.as_str(),
        "served from disk at once"
    );
    assert_eq!(certs["acme"]["state"], "valid");
    assert_eq!(
        s.pebble.log().matches("Issued certificate").count(),
        1,
        "not issued again"
    );
}

#[tokio::test]
async fn renewal_is_swapped_in_under_an_open_connection() {
    if !have_pebble() {
        return;
    }
    // A 15-second certificate is due after 10 seconds.
    let s = setup("dns-01", 15);
    let first = issued(&s.kube, "kube.test", None).await;
    let root = s.pebble.issuing_root().await;
    let port = s.kube.https.port();
    let (mut old, old_cert) = h2(s.kube.https, "kube.test", &root).await;
    assert_eq!(get(&mut old, "kube.test", port).await, 200);
    // A WebSocket (signaling) opened before the swap, too.
    let mut ws = tests::ws_connect(
        s.kube.https,
        "kube.test",
        &root,
        "/.well-known/kube/signal",
        "",
    )
    .await;
    let challenge = next_text(&mut ws).await;
    assert!(challenge.contains("challenge"), "{challenge}");
    let second = issued(&s.kube, "kube.test", Some(&first)).await;
    assert_ne!(first, second);
    assert_eq!(
        get(&mut old, "kube.test", port).await,
        200,
        "the open HTTP/2 connection stays up"
    );
    // The WebSocket still carries messages both ways after the swap.
    use futures_util::SinkExt;
    let ask = r#"{"v":1,"type":"ice-servers"}"#;
    ws.send(tokio_tungstenite::tungstenite::Message::Text(ask.into()))
        .await
        .expect("the WebSocket stays open");
    let reply = next_text(&mut ws).await;
    assert!(
        reply.contains("unauthenticated"),
        "answered over the old connection: {reply}"
    );
    let (mut new, new_cert) = h2(s.kube.https, "kube.test", &root).await;
    assert_ne!(
        old_cert, new_cert,
        "new connections get the new certificate"
    );
    assert_eq!(get(&mut new, "kube.test", port).await, 200);
}

#[tokio::test]
async fn a_failing_directory_keeps_the_last_good_certificate() {
    if !have_pebble() {
        return;
    }
    let mut s = setup("dns-01", 3600);
    let serial = issued(&s.kube, "kube.test", None).await;
    let root = s.pebble.issuing_root().await;
    s.pebble.stop();
    let r = s.kube.api(reqwest::Method::POST, "/api/certs/renew").await;
    assert_eq!(r["renewing"], true);
    let deadline = Instant::now() + Duration::from_secs(30);
    let certs = loop {
        let c = s.kube.api(reqwest::Method::GET, "/api/certs").await;
        if c["acme"]["state"] == "failing" {
            break c;
        }
        assert!(Instant::now() < deadline, "no failure reported: {c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(certs["certificates"][0]["serial"], serial.as_str());
    assert!(
        certs["acme"]["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{certs}"
    );
    assert!(
        certs["acme"]["next_attempt"].as_u64().is_some(),
        "a retry is planned: {certs}"
    );
    let (mut c, _) = h2(s.kube.https, "kube.test", &root).await;
    assert_eq!(
        get(&mut c, "kube.test", s.kube.https.port()).await,
        200,
        "still served"
    );
    let m = s.kube.metrics().await;
    assert!(
        m.contains("kube_acme_orders_total{result=\"failure\"} 1"),
        "{m}"
    );
    let out = s.kube.cli(&["cert", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("acme: failing") && text.contains("last error"),
        "{text}"
    );
}

#[test]
fn an_unreachable_directory_fails_the_first_start_clearly() {
    let port = free_port();
    let err = Kube::start_with(Opts {
        config: Some(format!(
            "domain: kube.test\ntls:\n  mode: acme\nacme:\n  directory: https://127.0.0.1:{port}/dir\n"
        )),
        ..Default::default()
    })
    .err()
    .expect("no certificate and no directory: start must fail");
    assert!(err.contains("is not reachable"), "{err}");
}

#[tokio::test]
async fn files_mode_serves_replaced_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let (ca_a, cert_a, key_a) = test_pki(&a, &["kube.test"]);
    let (ca_b, cert_b, key_b) = test_pki(&b, &["kube.test"]);
    let live = dir.path().join("live");
    std::fs::create_dir_all(&live).unwrap();
    std::fs::copy(&cert_a, live.join("cert.pem")).unwrap();
    std::fs::copy(&key_a, live.join("key.pem")).unwrap();
    let kube = Kube::start_with(Opts {
        config: Some(format!(
            "domain: kube.test\ntls:\n  mode: files\n  cert_file: {}\n  key_file: {}\n",
            live.join("cert.pem").display(),
            live.join("key.pem").display()
        )),
        ..Default::default()
    })
    .unwrap();
    let mut roots = std::fs::read(&ca_a).unwrap();
    roots.extend(std::fs::read(&ca_b).unwrap());
    let (_, first) = h2(kube.https, "kube.test", &roots).await;
    // Replace the pair (key first, as an operator's tool would write both).
    std::fs::copy(&key_b, live.join("key.pem")).unwrap();
    std::fs::copy(&cert_b, live.join("cert.pem")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, now) = h2(kube.https, "kube.test", &roots).await;
        if now != first {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replaced files not served:\n{}",
            kube.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn an_unwritable_certificate_store_fails_the_start_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Where the ACME state goes, a file stands: nothing can be written there.
    std::fs::create_dir_all(data.join("tls")).unwrap();
    std::fs::write(data.join("tls/acme"), b"not a directory").unwrap();
    let err = Kube::start_with(Opts {
        config: Some("domain: kube.test\ntls:\n  mode: acme\n".into()),
        data_dir: Some(data),
        ..Default::default()
    })
    .err()
    .expect("an unwritable store must stop the start");
    assert!(err.contains("not writable"), "{err}");
}

async fn next_text(ws: &mut tests::Ws) -> String {
    use futures_util::StreamExt;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("frame");
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            return t.to_string();
        }
    }
}
