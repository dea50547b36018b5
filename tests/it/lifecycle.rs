//! Start, stop and restart: the data dir and its modes, the lock, graceful shutdown with a
//! request in flight, and state that survives a restart.

use std::os::unix::fs::PermissionsExt;

use reqwest::StatusCode;
use tests::{Kube, Opts, bundle_dir};

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

    let dir = bundle_dir(&[("index.html", b"kept")]);
    assert!(
        kube.cli(&[
            "app",
            "publish",
            dir.path().to_str().unwrap(),
            "--name",
            "keep"
        ])
        .status
        .success()
    );
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
    let dir = bundle_dir(&[("big.bin", &big)]);
    assert!(
        kube.cli(&[
            "app",
            "publish",
            dir.path().to_str().unwrap(),
            "--name",
            "big"
        ])
        .status
        .success()
    );
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
async fn kill_9_never_leaves_a_stale_lock() {
    let kube = Kube::start();
    let d = kube.data_dir.clone();
    let _ = std::process::Command::new("kill")
        .arg("-KILL")
        .arg(kube.pid().to_string())
        .status();
    drop(kube);
    let again = Kube::start_with(Opts {
        data_dir: Some(d),
        ..Default::default()
    });
    assert!(again.is_ok(), "restart after kill -9: {:?}", again.err());
}
