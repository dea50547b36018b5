//! Backups while clients write, restored into an empty data dir and compared; the data dir
//! format: an older layout is migrated, a newer one refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tests::{Kube, Opts, cli_in};

/// Every file under `dir` but the per-run ones, by relative path.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(root.join(rel)).unwrap() {
            let e = e.unwrap();
            let rel = rel.join(e.file_name());
            let t = e.file_type().unwrap();
            if t.is_dir() {
                walk(root, &rel, out);
            } else if t.is_file() {
                out.insert(rel.clone(), std::fs::read(root.join(&rel)).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, Path::new(""), &mut out);
    out.remove(Path::new("run.json"));
    out.remove(Path::new("kube.lock"));
    out
}

fn add_record(kube: &Kube, i: u32) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = reqwest::Client::new()
            .post(kube.admin_url("/api/dns/records"))
            .bearer_auth(kube.token())
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"name": "w{i}", "type": "TXT", "value": "\"{i}\""}}"#
            ))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    });
}

#[test]
fn backup_while_writing_then_restore_and_compare() {
    let tmp = tempfile::tempdir().unwrap();
    let kube = Arc::new(
        Kube::start_with(Opts {
            data_dir: Some(tmp.path().join("data")),
            ..Opts::default()
        })
        .unwrap_or_else(|log| panic!("kube did not start:\n{log}")),
    );
    kube.publish(&[("index.html", b"v0")], "notes");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let did = rt.block_on(crate::echo::kube_did(&kube));

    // Writers: new app versions, DNS records and ECHO changes, while backups are taken.
    let echo_stop = Arc::new(AtomicBool::new(false));
    let echo_writer = {
        let (kube, flag, did) = (kube.clone(), echo_stop.clone(), did.clone());
        rt.spawn(async move {
            let (_space, mut root) = crate::echo::space_root(&did);
            let mut p =
                crate::echo::Peer::connect(&kube, &did, &crate::echo::key(1), "writer").await;
            let mut st = automerge::sync::State::new();
            let mut i = 0u32;
            while !flag.load(Ordering::Relaxed) && i < 300 {
                crate::echo::set(&mut root, &format!("k{i}"), "v");
                assert!(p.sync(crate::echo::ROOT_ID, &mut root, &mut st).await);
                i += 1;
            }
            i
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (kube, stop) = (kube.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 1u32;
            while !stop.load(Ordering::Relaxed) && i < 200 {
                let page = format!("v{i}");
                kube.publish(&[("index.html", page.as_bytes())], "notes");
                add_record(&kube, i);
                i += 1;
            }
            i
        })
    };
    let during = tmp.path().join("during.tar.gz");
    std::thread::sleep(std::time::Duration::from_millis(300));
    for _ in 0..3 {
        let out = kube.cli(&["backup", during.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
    }
    stop.store(true, Ordering::Relaxed);
    echo_stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert!(written > 2, "the writers ran ({written})");
    let changes = rt.block_on(echo_writer).unwrap();
    assert!(changes > 2, "the ECHO writer ran ({changes})");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&during).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "a backup holds private keys");

    // A quiet backup equals the data dir, file for file.
    let quiet = tmp.path().join("quiet.tar.gz");
    assert!(
        kube.cli(&["backup", quiet.to_str().unwrap()])
            .status
            .success()
    );
    let restored = tmp.path().join("restored");
    let out = cli_in(&restored, &["restore", quiet.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let original = files(&kube.data_dir);
    let copy = files(&restored);
    assert_eq!(
        original.keys().collect::<Vec<_>>(),
        copy.keys().collect::<Vec<_>>()
    );
    assert!(original == copy, "restored files differ");
    let mode = std::fs::metadata(restored.join("identity.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Restoring over a data dir with content is refused.
    let out = cli_in(&restored, &["restore", quiet.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));

    // The backup taken during the writes restores into a KUBE that serves a whole version.
    let identity = String::from_utf8_lossy(&kube.cli(&["identity"]).stdout)
        .lines()
        .next()
        .unwrap()
        .to_owned();
    drop(kube);
    let from_during = tmp.path().join("from-during");
    let out = cli_in(&from_during, &["restore", during.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let again = Kube::start_with(Opts {
        data_dir: Some(from_during.clone()),
        ..Opts::default()
    })
    .unwrap_or_else(|log| panic!("restored kube did not start:\n{log}"));
    let out = again.cli(&["identity"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&identity));
    rt.block_on(async {
        let page = again
            .client()
            .get(again.url("notes", "/"))
            .send()
            .await
            .unwrap();
        assert!(page.status().is_success());
        let body = page.text().await.unwrap();
        assert!(body.starts_with('v'), "{body}");
        // The records of that moment are there too (at least the first ones).
        let dns = again.api(reqwest::Method::GET, "/api/dns").await;
        assert!(dns.to_string().contains("w1"), "{dns}");
        // So is the space, with the changes of that moment (at least the first ones).
        let mut p = crate::echo::Peer::connect(&again, &did, &crate::echo::key(1), "reader").await;
        let mut copy = automerge::Automerge::new();
        p.sync(
            crate::echo::ROOT_ID,
            &mut copy,
            &mut automerge::sync::State::new(),
        )
        .await;
        assert_eq!(crate::echo::get(&copy, "k0").as_deref(), Some("v"));
    });
    // The restored store lists the app.
    let list = String::from_utf8_lossy(&again.cli(&["app", "list"]).stdout).into_owned();
    assert!(list.contains("notes"), "{list}");
}

#[test]
fn data_dir_format_is_recorded_migrated_and_guarded() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let kube = Kube::start_with(Opts {
        data_dir: Some(data.clone()),
        ..Opts::default()
    })
    .unwrap();
    drop(kube);
    let format: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("format.json")).unwrap()).unwrap();
    assert_eq!(format["format"], 1);

    // An older layout (no format.json) is migrated on start.
    std::fs::remove_file(data.join("format.json")).unwrap();
    let kube = Kube::start_with(Opts {
        data_dir: Some(data.clone()),
        ..Opts::default()
    })
    .unwrap();
    drop(kube);
    assert!(data.join("format.json").exists());

    // A newer one is refused, saying why; nothing is changed.
    std::fs::write(
        data.join("format.json"),
        r#"{"format": 7, "written_by": "9.0.0"}"#,
    )
    .unwrap();
    let err = Kube::start_with(Opts {
        data_dir: Some(data.clone()),
        ..Opts::default()
    })
    .err()
    .expect("refused");
    assert!(err.contains("format 7") && err.contains("newer"), "{err}");
    assert!(
        std::fs::read_to_string(data.join("format.json"))
            .unwrap()
            .contains("\"format\": 7")
    );
}

/// The leaf certificate `kube` presents for `localhost`, trusting only its CA.
fn served_leaf(kube: &Kube) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&kube.ca_pem()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(kube.https).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .unwrap_or_else(|e| panic!("TLS to localhost: {e}\n{}", kube.log()));
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    })
}

/// The first certificate of a PEM chain, as DER.
fn leaf_of(chain: &[u8]) -> Vec<u8> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(chain)
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// A renewal replaces the certificate and its key; a backup taken between the two can hold
/// the certificate file from before and the key file from after. The restored KUBE serves
/// the stored pair as it is (no new certificate, which for ACME would be a new order) and
/// brings the certificate file level with its key.
#[test]
fn a_backup_between_the_renames_of_a_renewal_restores_a_matching_pair() {
    let tmp = tempfile::tempdir().unwrap();
    let kube = Kube::start_with(Opts {
        data_dir: Some(tmp.path().join("data")),
        ..Opts::default()
    })
    .unwrap_or_else(|log| panic!("kube did not start:\n{log}"));
    let (cert, key) = (
        Path::new("tls/local/cert.pem"),
        Path::new("tls/local/key.pem"),
    );
    let read = |p: &Path| std::fs::read(kube.data_dir.join(p)).ok();
    let before = read(cert).unwrap();
    let key_before = read(key).unwrap();
    let out = kube.cli(&["cert", "renew"]);
    assert!(out.status.success(), "{out:?}");
    // The renewal is done once the served certificate is the new one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while read(cert).is_none_or(|c| leaf_of(&c) == leaf_of(&before))
        || served_leaf(&kube) == leaf_of(&before)
    {
        assert!(std::time::Instant::now() < deadline, "{}", kube.log());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (after, key_after) = (read(cert).unwrap(), read(key).unwrap());
    assert_ne!(key_after, key_before);
    let backup = tmp.path().join("b.tar.gz");
    assert!(
        kube.cli(&["backup", backup.to_str().unwrap()])
            .status
            .success()
    );
    drop(kube);

    let restored = tmp.path().join("restored");
    let out = cli_in(&restored, &["restore", backup.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    // What a backup that read the certificate before the renewal and the key after holds.
    std::fs::write(restored.join(cert), &before).unwrap();
    let again = Kube::start_with(Opts {
        data_dir: Some(restored.clone()),
        ..Opts::default()
    })
    .unwrap_or_else(|log| panic!("restored kube did not start:\n{log}"));
    assert!(
        served_leaf(&again) == leaf_of(&after),
        "the stored pair is served, not a new one"
    );
    assert_eq!(
        std::fs::read(restored.join(key)).unwrap(),
        key_after,
        "no new key"
    );
    assert_eq!(
        std::fs::read(restored.join(cert)).unwrap(),
        after,
        "brought level"
    );
}
