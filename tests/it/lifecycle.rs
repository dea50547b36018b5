//! Start, stop and restart: the data dir and its modes, the lock, graceful shutdown with a
//! request in flight, and state that survives a restart.

use std::os::unix::fs::PermissionsExt;

use reqwest::StatusCode;
use tests::{Kube, Opts};

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn data_dir_lock_and_restart() {
    let mut kube = Kube::start();
    let d = kube.data_dir.clone();
    assert_eq!(mode(&d), 0o700, "data dir");
    assert_eq!(mode(&d.join("tls/ca.key")), 0o600, "CA key");
    assert_eq!(mode(&d.join("tls/local/key.pem")), 0o600, "leaf key");
    assert_eq!(mode(&d.join("admin.token")), 0o600, "admin token");
    let out = kube.stdout();
    assert!(
        out.contains("kube trust"),
        "the banner says how to trust the CA: {out}"
    );
    assert!(
        out.contains(&format!("https://localhost:{}/", kube.https.port())),
        "{out}"
    );

    // A second kube on the same data dir refuses with a clear message.
    let err = Kube::start_with(Opts {
        data_dir: Some(d.clone()),
        ..Default::default()
    })
    .err()
    .expect("second start must fail");
    assert!(err.contains("already running on data dir"), "{err}");

    let trust = kube.cli(&["trust"]);
    assert!(trust.status.success());
    assert_eq!(
        trust.stdout,
        std::fs::read(d.join("tls/ca.pem")).unwrap(),
        "kube trust prints the CA"
    );

    kube.publish(&[("index.html", b"kept")], "keep");
    let ca = std::fs::read(d.join("tls/ca.pem")).unwrap();
    let leaf = std::fs::read(d.join("tls/local/cert.pem")).unwrap();
    let status = kube.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    assert!(!d.join("run.json").exists(), "run.json removed on stop");

    let again = Kube::start_with(Opts {
        data_dir: Some(d.clone()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(std::fs::read(d.join("tls/ca.pem")).unwrap(), ca, "CA kept");
    assert_eq!(
        std::fs::read(d.join("tls/local/cert.pem")).unwrap(),
        leaf,
        "valid leaf not reissued"
    );
    let r = again
        .client()
        .get(again.url("keep", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "kept", "apps survive a restart");
}

#[tokio::test]
async fn sigterm_lets_a_request_in_flight_finish() {
    let mut kube = Kube::start();
    let big: Vec<u8> = (0..8_000_000u32).map(|i| (i % 253) as u8).collect();
    kube.publish(&[("big.bin", &big)], "big");
    let mut r = kube
        .client()
        .get(kube.url("big", "/big.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut got = r.chunk().await.unwrap().expect("first chunk").to_vec();
    let pid = kube.pid();
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    while let Some(chunk) = r.chunk().await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got.len(), big.len(), "the whole body arrived after SIGTERM");
    assert!(got == big);
    let status = kube.terminate();
    assert!(status.success());
}

#[tokio::test]
async fn kill_9_loses_no_acknowledged_publish_and_leaves_no_stale_lock() {
    let mut kube = Kube::start();
    let d = kube.data_dir.clone();
    kube.publish(&[("index.html", b"acknowledged")], "app");
    kube.kill();
    let again = Kube::start_with(Opts {
        data_dir: Some(d),
        ..Default::default()
    })
    .unwrap_or_else(|log| panic!("restart after kill -9 failed:\n{log}"));
    let r = again
        .client()
        .get(again.url("app", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "acknowledged");
}

#[tokio::test]
async fn a_crash_during_upload_leaves_the_previous_version() {
    let mut kube = Kube::start();
    let d = kube.data_dir.clone();
    kube.publish(&[("index.html", b"v1")], "app");
    // An upload that never finishes: its first bytes arrive, then kube is killed.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
    let url = kube.admin_url("/api/apps/app");
    let token = kube.token();
    let upload = tokio::spawn(async move {
        reqwest::Client::new()
            .put(url)
            .bearer_auth(token)
            .body(body)
            .send()
            .await
    });
    tx.send(Ok(vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0]))
        .await
        .unwrap();
    let staging = d.join("apps/.staging");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !staging.exists() || std::fs::read_dir(&staging).unwrap().count() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "upload never reached staging"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    kube.kill();
    let _ = upload.await;
    let again = Kube::start_with(Opts {
        data_dir: Some(d.clone()),
        ..Default::default()
    })
    .unwrap();
    let r = again
        .client()
        .get(again.url("app", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "v1");
    assert_eq!(
        std::fs::read_dir(&staging).map(|r| r.count()).unwrap_or(0),
        0,
        "staging cleaned on start"
    );
}

/// A stream of chunks from a channel, for a request body sent piece by piece.
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[test]
fn sigint_stops_cleanly_too() {
    let mut kube = Kube::start();
    let run = kube.data_dir.join("run.json");
    assert!(run.exists());
    assert!(kube.signal_and_wait("-INT").success());
    assert!(!run.exists());
}
