//! Refused bundles: each is refused at publish with a message naming the entry, and nothing
//! of it is stored; the previous version keeps serving.

use reqwest::StatusCode;
use tar::EntryType;
use tests::{Kube, Opts, RawEntry, bundle_dir, raw_targz};

fn file<'a>(name: &'a [u8], data: &'a [u8]) -> RawEntry<'a> {
    RawEntry {
        name,
        kind: EntryType::Regular,
        data,
        link: None,
    }
}

async fn upload(kube: &Kube, name: &str, body: Vec<u8>) -> (StatusCode, String) {
    let r = reqwest::Client::new()
        .put(kube.admin_url(&format!("/api/apps/{name}")))
        .bearer_auth(kube.token())
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

fn stored_entries(kube: &Kube) -> Vec<String> {
    let mut out = Vec::new();
    let root = kube.data_dir.join("apps");
    for e in std::fs::read_dir(&root).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name == ".staging" {
            // Only the staging dir itself may remain, empty.
            assert_eq!(
                std::fs::read_dir(e.path()).unwrap().count(),
                0,
                "staging is cleaned"
            );
            continue;
        }
        out.push(name);
    }
    out
}

#[tokio::test]
async fn hostile_bundles_are_refused_by_entry() {
    let kube = Kube::start_with(Opts {
        env: vec![
            ("KUBE_APPS_MAX_BUNDLE_BYTES".into(), "100000".into()),
            ("KUBE_APPS_MAX_FILES".into(), "5".into()),
        ],
        ..Default::default()
    })
    .unwrap();
    // A good version first: it must keep serving through every refusal.
    let (s, _) = upload(&kube, "app", raw_targz(&[file(b"index.html", b"good")])).await;
    assert_eq!(s, StatusCode::OK);
    let blobs_before = std::fs::read_dir(kube.data_dir.join("apps/app/blobs"))
        .unwrap()
        .count();

    let big = vec![b'x'; 100_001];
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "parent dir",
            raw_targz(&[file(b"index.html", b"x"), file(b"a/../../evil.txt", b"x")]),
            "a/../../evil.txt",
        ),
        (
            "absolute",
            raw_targz(&[file(b"/etc/cron.d/evil", b"x")]),
            "/etc/cron.d/evil",
        ),
        (
            "symlink",
            raw_targz(&[RawEntry {
                name: b"link",
                kind: EntryType::Symlink,
                data: b"",
                link: Some(b"/etc/passwd"),
            }]),
            "link",
        ),
        (
            "hard link",
            raw_targz(&[
                file(b"index.html", b"x"),
                RawEntry {
                    name: b"hard",
                    kind: EntryType::Link,
                    data: b"",
                    link: Some(b"index.html"),
                },
            ]),
            "hard",
        ),
        (
            "char device",
            raw_targz(&[RawEntry {
                name: b"dev/null",
                kind: EntryType::Char,
                data: b"",
                link: None,
            }]),
            "dev/null",
        ),
        (
            "fifo",
            raw_targz(&[RawEntry {
                name: b"pipe",
                kind: EntryType::Fifo,
                data: b"",
                link: None,
            }]),
            "pipe",
        ),
        (
            "too large",
            raw_targz(&[file(b"index.html", b"x"), file(b"huge.bin", &big)]),
            "huge.bin",
        ),
        (
            "too many files",
            raw_targz(&[
                file(b"1", b""),
                file(b"2", b""),
                file(b"3", b""),
                file(b"4", b""),
                file(b"5", b""),
                file(b"6", b""),
            ]),
            "6",
        ),
        (
            "duplicate",
            raw_targz(&[file(b"a.txt", b"1"), file(b"./a.txt", b"2")]),
            "a.txt",
        ),
        (
            "bad app json",
            raw_targz(&[
                file(b"index.html", b"x"),
                file(b"kube.app.json", b"{\"spa\": \"yes\"}"),
            ]),
            "kube.app.json",
        ),
        ("not gzip", b"this is not a tarball".to_vec(), "gzip"),
    ];
    for (what, body, entry) in cases {
        let (status, text) = upload(&kube, "app", body).await;
        assert!(status.is_client_error(), "{what}: {status} {text}");
        assert!(
            text.contains(entry),
            "{what}: message names {entry:?}: {text}"
        );
        assert_eq!(
            stored_entries(&kube),
            vec!["app".to_string()],
            "{what}: nothing stored"
        );
        let blobs = std::fs::read_dir(kube.data_dir.join("apps/app/blobs"))
            .unwrap()
            .count();
        assert_eq!(blobs, blobs_before, "{what}: no blob stored");
        let r = kube
            .client()
            .get(kube.url("app", "/"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.text().await.unwrap(),
            "good",
            "{what}: the previous version still serves"
        );
    }

    // An upload over the limit is cut off while streaming.
    let (status, text) = upload(&kube, "other", vec![0u8; 200_000]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
    assert_eq!(stored_entries(&kube), vec!["app".to_string()]);

    // App names must be DNS labels.
    for bad in ["Upper", "-dash", "a.b", "x_y"] {
        let (status, text) = upload(&kube, bad, raw_targz(&[file(b"index.html", b"x")])).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {text}");
        assert!(text.contains("DNS label"), "{text}");
    }
}

#[tokio::test]
async fn cli_names_the_symlink_in_a_directory() {
    let kube = Kube::start();
    let dir = bundle_dir(&[("index.html", b"x")]);
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("passwd")).unwrap();
    let out = kube.cli(&[
        "app",
        "publish",
        dir.path().to_str().unwrap(),
        "--name",
        "app",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("passwd") && err.contains("symlink"), "{err}");
    assert!(!kube.data_dir.join("apps/app").exists());
    let out = kube.cli(&["app", "publish", "/nonexistent", "--name", "app"]);
    assert!(!out.status.success());
    let out = kube.cli(&[
        "app",
        "publish",
        dir.path().to_str().unwrap(),
        "--name",
        "Bad_Name",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("DNS label"));
}

#[tokio::test]
async fn a_tarball_publishes_too() {
    let kube = Kube::start();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bundle.tar.gz");
    std::fs::write(&path, raw_targz(&[file(b"./index.html", b"from tar")])).unwrap();
    let out = kube.cli(&["app", "publish", path.to_str().unwrap(), "--name", "tarred"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = kube
        .client()
        .get(kube.url("tarred", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "from tar");
}
