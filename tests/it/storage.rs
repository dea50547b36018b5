//! Several KUBEs sharing one S3-compatible store (s3s-fs, in this process): a bundle
//! published at any KUBE is served by all, with rollback and removal; a copy in the store
//! that does not match its hash is refused; one ACME certificate (real Pebble, DNS-01,
//! apex and wildcard) is ordered once for the cluster and served by every KUBE; KUBEs
//! starting at the same moment do not both order.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tests::pebble::{Pebble, free_port};
use tests::s3::S3;
use tests::{Kube, Opts};

fn start(s3: &S3, extra: &str, env: Vec<(String, String)>) -> Kube {
    let mut all = s3.env();
    all.extend(env);
    Kube::start_with(Opts {
        config: Some(format!("{}{extra}", s3.config(1))),
        env: all,
        ..Default::default()
    })
    .unwrap_or_else(|log| panic!("kube did not start:\n{log}"))
}

/// Waits (bounded) until `kube` lists `app` (or, with `want` false, no longer does).
async fn lists(kube: &Kube, app: &str, want: bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let apps = kube.api(reqwest::Method::GET, "/api/apps").await;
        let listed = apps
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x["name"] == app));
        if listed == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{app} listed: {listed} {apps}\n{}",
            kube.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (bounded) until `kube` answers `want` for `app`.
async fn serves(kube: &Kube, app: &str, want: &str) {
    let client = kube.client();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    loop {
        if let Ok(r) = client.get(kube.url(app, "/")).send().await {
            let status = r.status().as_u16().to_string();
            let body = r.text().await.unwrap_or_default();
            if body == want {
                return;
            }
            last = format!("{status} {body}");
        }
        assert!(
            Instant::now() < deadline,
            "{app} never answered {want:?} (last {last:?}):\n{}",
            kube.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn cli_ok(kube: &Kube, args: &[&str]) -> String {
    let out = kube.cli(args);
    assert!(
        out.status.success(),
        "kube {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn a_bundle_published_at_one_kube_is_served_by_all() {
    let s3 = S3::start();
    let a = start(&s3, "", vec![]);
    // B brings an app of its own when it joins: the cluster takes it.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let alone = Kube::start_with(Opts {
        data_dir: Some(data.clone()),
        ..Default::default()
    })
    .unwrap_or_else(|log| panic!("{log}"));
    alone.publish(&[("index.html", b"wiki from b")], "wiki");
    drop(alone);
    let b = Kube::start_with(Opts {
        config: Some(s3.config(1)),
        env: s3.env(),
        data_dir: Some(data),
    })
    .unwrap_or_else(|log| panic!("{log}"));
    let c = start(&s3, "", vec![]);
    serves(&a, "wiki", "wiki from b").await;
    serves(&c, "wiki", "wiki from b").await;

    a.publish(&[("index.html", b"notes 1")], "notes");
    serves(&b, "notes", "notes 1").await;
    serves(&c, "notes", "notes 1").await;
    b.publish(&[("index.html", b"notes 2")], "notes");
    serves(&a, "notes", "notes 2").await;
    serves(&c, "notes", "notes 2").await;
    // Version numbers are the cluster's: B's publish is version 2 everywhere.
    let apps = a.api(reqwest::Method::GET, "/api/apps").await;
    let notes = apps
        .as_array()
        .and_then(|l| l.iter().find(|x| x["name"] == "notes"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(notes["current"], 2, "{apps}");

    // A rollback at C shows at A and B.
    cli_ok(&c, &["app", "rollback", "notes"]);
    serves(&c, "notes", "notes 1").await;
    serves(&a, "notes", "notes 1").await;
    serves(&b, "notes", "notes 1").await;
    // A KUBE that joins now serves what the cluster serves from its first request.
    let d = start(&s3, "", vec![]);
    serves(&d, "notes", "notes 1").await;

    // Removed at A: gone everywhere, and its files leave the store.
    cli_ok(&a, &["app", "remove", "notes"]);
    for k in [&a, &b, &c, &d] {
        lists(k, "notes", false).await;
    }
    assert!(!s3.path("apps/notes/versions").join("1.json").exists());
    // Published again: numbers go on, and no KUBE mistakes it for the old version 1.
    c.publish(&[("index.html", b"notes again")], "notes");
    for k in [&a, &b, &d] {
        serves(k, "notes", "notes again").await;
    }
    let head = std::fs::read_to_string(s3.path("heads/notes")).unwrap();
    assert_eq!(head.trim(), "3", "numbers go on after a removal");
}

#[tokio::test]
async fn a_copy_in_the_store_that_does_not_match_its_hash_is_refused() {
    let s3 = S3::start();
    let a = start(&s3, "", vec![]);
    a.publish(&[("index.html", b"the real page")], "notes");
    // Someone with write access to the bucket swaps the page's blob.
    let blobs = s3.path("apps/notes/blobs");
    let blob = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_file())
        .expect("a blob");
    std::fs::write(&blob, b"a forged page").unwrap();
    let b = start(&s3, "", vec![]);
    // B starts, refuses the copy, serves nothing forged, and says why.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    lists(&b, "notes", false).await;
    assert!(
        b.log().contains("does not match its hash or size"),
        "{}",
        b.log()
    );
    // A, which published it, still serves its own copy.
    serves(&a, "notes", "the real page").await;
}

/// The orders counted in `kube`'s metrics: (succeeded, certificates adopted from the store).
async fn orders(kube: &Kube) -> (u64, u64) {
    let m = kube.metrics().await;
    let value = |prefix: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (
        value("kube_acme_orders_total{result=\"success\"} "),
        value("kube_acme_certificates_adopted_total "),
    )
}

/// Three KUBEs for kube.test: A the DNS primary (Pebble resolves through it), B and C its
/// KUBE secondaries. Started together, only A may order (B and C cannot answer DNS-01):
/// it orders once, and B and C serve the same certificate from the store. The certificate
/// lives 30 s: A renews it at two thirds, and B and C serve the renewal from the store.
#[tokio::test]
async fn one_certificate_is_ordered_for_the_cluster_and_served_by_every_kube() {
    if !crate::acme::have_pebble() {
        return;
    }
    let s3 = S3::start();
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let pebble = Pebble::start(
        free_port(),
        free_port(),
        SocketAddr::from(([127, 0, 0, 1], pa)),
        30,
    );
    let secret = crate::dns::TSIG_SECRET;
    let common = format!(
        "domain: kube.test\ntls:\n  mode: acme\nacme:\n  directory: {}\n  ca_root: {}\n  challenges: [dns-01]\ndns:\n  addresses: [127.0.0.1]\n  rrl:\n    enabled: false\n  tsig_keys:\n    - {{ name: xfr, secret: \"{secret}\" }}\n",
        pebble.directory,
        pebble.tls_ca.display()
    );
    let primary = format!(
        "{common}  secondaries:\n    - {{ address: \"127.0.0.1:{pb}\", key: xfr }}\n    - {{ address: \"127.0.0.1:{pc}\", key: xfr }}\n"
    );
    let secondary = format!("{common}  primary: {{ address: \"127.0.0.1:{pa}\", key: xfr }}\n");
    let dns = |port: u16| vec![("KUBE_DNS_LISTEN".to_string(), format!("127.0.0.1:{port}"))];
    let (a, b, c) = std::thread::scope(|s| {
        let a = s.spawn(|| start(&s3, &primary, dns(pa)));
        let b = s.spawn(|| start(&s3, &secondary, dns(pb)));
        let c = s.spawn(|| start(&s3, &secondary, dns(pc)));
        (a.join().unwrap(), b.join().unwrap(), c.join().unwrap())
    });
    let serial = crate::acme::issued(&a, "*.kube.test", None).await;
    assert_eq!(crate::acme::issued(&b, "*.kube.test", None).await, serial);
    assert_eq!(crate::acme::issued(&c, "kube.test", None).await, serial);
    // Served in the TLS handshake, for the apex and an app host alike.
    let root = pebble.issuing_root().await;
    for (k, name) in [(&b, "kube.test"), (&c, "notes.kube.test")] {
        let (_, cert) = crate::acme::h2(k.https, name, &root).await;
        assert!(!cert.is_empty());
    }
    assert_eq!(orders(&a).await, (1, 0));
    assert_eq!(orders(&b).await, (0, 1));
    assert_eq!(orders(&c).await, (0, 1));
    let status = b.api(reqwest::Method::GET, "/api/status").await;
    assert!(status.to_string().contains("valid"), "{status}");
    // Renewed at A (at 20 s), taken from the store by B and C.
    let renewed = crate::acme::issued(&b, "*.kube.test", Some(&serial)).await;
    assert_eq!(
        crate::acme::issued(&a, "*.kube.test", Some(&serial)).await,
        renewed
    );
    assert_eq!(
        crate::acme::issued(&c, "*.kube.test", Some(&serial)).await,
        renewed
    );
    assert_eq!(orders(&a).await, (2, 0));
    assert_eq!(orders(&b).await, (0, 2));
}

/// Three KUBEs that could each order (each its own DNS; Pebble takes every challenge as
/// answered) start at the same moment: the lease in the store lets one order, and the
/// others serve its certificate.
#[tokio::test]
async fn kubes_starting_together_order_once() {
    if !crate::acme::have_pebble() {
        return;
    }
    let s3 = S3::start();
    let pebble = Pebble::start_validating(
        free_port(),
        free_port(),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        3600,
        false,
    );
    let config = format!(
        "domain: kube.test\ntls:\n  mode: acme\nacme:\n  directory: {}\n  ca_root: {}\n  challenges: [dns-01]\ndns:\n  addresses: [127.0.0.1]\n  rrl:\n    enabled: false\n",
        pebble.directory,
        pebble.tls_ca.display()
    );
    let kubes: Vec<Kube> = std::thread::scope(|s| {
        let started: Vec<_> = (0..3)
            .map(|_| s.spawn(|| start(&s3, &config, vec![])))
            .collect();
        started.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let serial = crate::acme::issued(&kubes[0], "*.kube.test", None).await;
    let mut ordered = 0;
    for k in &kubes {
        assert_eq!(crate::acme::issued(k, "*.kube.test", None).await, serial);
        let (o, adopted) = orders(k).await;
        assert_eq!(o + adopted, 1, "{}", k.log());
        ordered += o;
    }
    assert_eq!(ordered, 1, "exactly one KUBE ordered");
}

#[test]
fn storage_errors_name_the_file_line_and_key() {
    let err = crate::dns::config_errors(
        "storage:\n  endpoint: ftp://store\n  poll_secs: 0\n  region: \"\"\n  ca_file: /nonexistent.pem\n",
    );
    for key in [
        "kube.yml:2:",
        "storage.endpoint: \"ftp://store\" is not an http:// or https:// URL",
        "storage.bucket: is required",
        "storage.poll_secs: must be between 1 and 3600",
        "storage.region: must not be empty",
        "storage.ca_file: /nonexistent.pem is not a readable file",
    ] {
        assert!(err.contains(key), "{key} in:\n{err}");
    }
    let err = crate::dns::config_errors("storage:\n  endpont: http://127.0.0.1:9000\n");
    assert!(
        err.contains("kube.yml:2") && err.contains("endpont"),
        "{err}"
    );
}

/// A store that refuses the credentials, or credentials missing from the environment:
/// KUBE does not start, and says why.
#[test]
fn a_store_that_refuses_the_credentials_stops_the_start() {
    let s3 = S3::start();
    let start = |env: Vec<(&str, &str)>| {
        Kube::start_with(Opts {
            config: Some(s3.config(1)),
            env: env
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ..Default::default()
        })
        .err()
        .expect("kube must not start")
    };
    let log = start(vec![
        ("AWS_ACCESS_KEY_ID", tests::s3::ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", "not-the-secret"),
    ]);
    assert!(log.contains("storage") && log.contains("403"), "{log}");
    let log = start(vec![]);
    assert!(log.contains("storage needs AWS_ACCESS_KEY_ID"), "{log}");
}

/// A store that ignores conditional writes could not hold a lease: KUBE refuses it.
#[test]
fn a_store_without_conditional_writes_is_refused() {
    let s3 = S3::start_with(false);
    let log = Kube::start_with(Opts {
        config: Some(s3.config(1)),
        env: s3.env(),
        ..Default::default()
    })
    .map(|k| k.log())
    .expect_err("kube must not start");
    assert!(log.contains("ignores If-None-Match"), "{log}");
}

/// Two KUBEs that each published an app of one name (both as version 1) before they met
/// serve one of them after joining, the same at both: the number alone is not trusted.
#[tokio::test]
async fn kubes_that_meet_with_apps_of_one_name_agree_on_one() {
    let s3 = S3::start();
    let tmp = tempfile::tempdir().unwrap();
    let mut kubes = Vec::new();
    for (i, body) in ["www of a", "www of b"].into_iter().enumerate() {
        let data = tmp.path().join(format!("data-{i}"));
        let alone = Kube::start_with(Opts {
            data_dir: Some(data.clone()),
            ..Default::default()
        })
        .unwrap_or_else(|log| panic!("{log}"));
        alone.publish(&[("index.html", body.as_bytes())], "www");
        // B has more history of its own: versions 1 to 3.
        if i == 1 {
            alone.publish(&[("index.html", b"b2")], "www");
            alone.publish(&[("index.html", b"www of b")], "www");
        }
        drop(alone);
        kubes.push(
            Kube::start_with(Opts {
                config: Some(s3.config(1)),
                env: s3.env(),
                data_dir: Some(data),
            })
            .unwrap_or_else(|log| panic!("{log}")),
        );
    }
    serves(&kubes[0], "www", "www of a").await;
    serves(&kubes[1], "www", "www of a").await;
    // The next publish anywhere is above every number either had.
    kubes[0].publish(&[("index.html", b"www 2")], "www");
    serves(&kubes[1], "www", "www 2").await;
    let head = std::fs::read_to_string(s3.path("heads/www")).unwrap();
    assert!(head.trim().parse::<u64>().unwrap() >= 2, "{head}");
}

/// Publishes at two KUBEs at once: every one is answered, no version number is used twice,
/// the head never goes back, and both KUBEs end serving the same, newest version.
#[tokio::test]
async fn publishes_at_two_kubes_at_once_end_on_the_newest() {
    let s3 = S3::start();
    let (a, b) = (start(&s3, "", vec![]), start(&s3, "", vec![]));
    a.publish(&[("index.html", b"first")], "notes");
    serves(&b, "notes", "first").await;
    let outcomes: Vec<std::process::Output> = std::thread::scope(|s| {
        let runs: Vec<_> = [&a, &b]
            .into_iter()
            .enumerate()
            .flat_map(|(i, k)| (0..4).map(move |j| (i, j, k)))
            .map(|(i, j, k)| {
                s.spawn(move || {
                    let dir = tests::bundle_dir(&[("index.html", format!("{i}-{j}").as_bytes())]);
                    k.cli(&[
                        "app",
                        "publish",
                        dir.path().to_str().unwrap(),
                        "--name",
                        "notes",
                    ])
                })
            })
            .collect();
        runs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Each publish either landed or was told a newer one landed meanwhile (409).
    for o in &outcomes {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success() || err.contains("meanwhile"), "{err}");
    }
    let versions: Vec<u64> = std::fs::read_dir(s3.path("apps/notes/versions"))
        .unwrap()
        .filter_map(|e| {
            e.unwrap()
                .file_name()
                .to_str()?
                .strip_suffix(".json")?
                .parse()
                .ok()
        })
        .collect();
    let head: u64 = std::fs::read_to_string(s3.path("heads/notes"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        head,
        *versions.iter().max().unwrap(),
        "the head is the newest"
    );
    let body = String::from_utf8(
        std::fs::read(s3.path("apps/notes/versions").join(format!("{head}.json"))).unwrap(),
    )
    .unwrap();
    let hash =
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["files"]["index.html"]["hash"]
            .as_str()
            .unwrap()
            .to_owned();
    let newest =
        String::from_utf8(std::fs::read(s3.path("apps/notes/blobs").join(hash)).unwrap()).unwrap();
    serves(&a, "notes", &newest).await;
    serves(&b, "notes", &newest).await;
}
