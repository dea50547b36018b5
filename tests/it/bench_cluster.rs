//! Benchmarks for several KUBEs (issue 18), ignored in the tests: `bench/cluster/run` runs
//! them against the release binary (`KUBE_BIN`) and prints the Markdown for BENCHMARKS.md.
//!
//! - ECHO: one change written at KUBE B by a client there, timed until a client of KUBE A
//!   (linked to B) has it, and until a second client of B has it (the same server, as the
//!   reference): p50/p99 over `BENCH_CHANGES` (1,000) changes, one after another.
//! - DNS: a record added at a primary until a Knot secondary serves it (NOTIFY, IXFR): with
//!   KUBE as the primary (admin API), and with Knot as the primary (`knotc zone-set` and
//!   commit), `BENCH_RECORDS` (100) records each.
//! - Bundles: a publish to the object store (s3s-fs in this process) against a local one,
//!   and the time until a second KUBE serves it.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{Automerge, ROOT, ReadDoc, sync};
use tests::{Kube, Opts};

use crate::echo::{Peer, ROOT_ID, key, space_root_for};
use crate::echo_cluster::{Cluster, list, object};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

const DOC: &str = "BenchDocBenchDocBenchDocAb";

/// A reader syncing `DOC` until the counter reaches `last`, noting when it first sees each
/// value.
async fn read_all(mut p: Peer, last: i64, seen: Arc<Mutex<HashMap<i64, Instant>>>) {
    let mut doc = Automerge::new();
    let mut st = sync::State::new();
    let counter = |d: &Automerge| {
        d.get(ROOT, "n")
            .ok()
            .flatten()
            .and_then(|(v, _)| v.as_i64())
    };
    // Ask for the document, then follow it.
    p.request(DOC, &doc, &mut st).await;
    loop {
        if !p
            .step(DOC, &mut doc, &mut st, Duration::from_secs(10))
            .await
        {
            return;
        }
        if let Some(n) = counter(&doc) {
            seen.lock().unwrap().entry(n).or_insert_with(Instant::now);
            if n >= last {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: bench/cluster/run"]
async fn bench_echo_propagation() {
    let changes = env_or("BENCH_CHANGES", 1000) as i64;
    let cluster = Cluster::new(2).await;
    let (a, b) = (cluster.start(0), cluster.start(1));
    let dids = &cluster.dids;
    let (da, db) = (dids[0].as_str(), dids[1].as_str());
    let (space, mut root) = space_root_for(&[da, db], &key(3));
    list(&mut root, DOC);
    let mut doc = object(&space, "bench");
    let mut writer = Peer::connect(&b, db, &key(1), "writer").await;
    let mut rst = sync::State::new();
    assert!(writer.sync(ROOT_ID, &mut root, &mut rst).await);
    let mut st = sync::State::new();
    {
        let mut tx = doc.transaction();
        tx.put(ROOT, "n", 0i64).unwrap();
        tx.commit();
    }
    assert!(writer.sync(DOC, &mut doc, &mut st).await);
    // Wait until A has the document.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut p = Peer::connect(&a, da, &key(1), "probe").await;
        if p.first_answer(DOC, Duration::from_secs(2)).await.as_deref() == Some("sync") {
            break;
        }
        assert!(Instant::now() < deadline, "A never got the document");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen_a = Arc::new(Mutex::new(HashMap::new()));
    let seen_b = Arc::new(Mutex::new(HashMap::new()));
    let ra = tokio::spawn(read_all(
        Peer::connect(&a, da, &key(1), "reader-a").await,
        changes,
        seen_a.clone(),
    ));
    let rb = tokio::spawn(read_all(
        Peer::connect(&b, db, &key(1), "reader-b").await,
        changes,
        seen_b.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut sent = HashMap::new();
    for n in 1..=changes {
        {
            let mut tx = doc.transaction();
            tx.put(ROOT, "n", n).unwrap();
            tx.commit();
        }
        sent.insert(n, Instant::now());
        assert!(
            writer.sync(DOC, &mut doc, &mut st).await,
            "change {n} not acknowledged"
        );
        // One change at a time: the next goes once both readers have this one (bounded).
        let wait = Instant::now() + Duration::from_secs(10);
        while !(seen_a.lock().unwrap().contains_key(&n) && seen_b.lock().unwrap().contains_key(&n))
        {
            assert!(Instant::now() < wait, "change {n} did not arrive");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), ra).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), rb).await;
    let delays = |seen: &Arc<Mutex<HashMap<i64, Instant>>>| {
        let seen = seen.lock().unwrap();
        let mut d: Vec<Duration> = (1..=changes)
            .filter_map(|n| Some(seen.get(&n)?.saturating_duration_since(sent[&n])))
            .collect();
        d.sort();
        d
    };
    let (da_, db_) = (delays(&seen_a), delays(&seen_b));
    println!("| path | changes | p50 ms | p99 ms |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| client at B → KUBE B → client at B (one KUBE, reference) | {} | {} | {} |",
        db_.len(),
        ms(percentile(&db_, 0.5)),
        ms(percentile(&db_, 0.99))
    );
    println!(
        "| client at B → KUBE B → link → KUBE A → client at A | {} | {} | {} |",
        da_.len(),
        ms(percentile(&da_, 0.5)),
        ms(percentile(&da_, 0.99))
    );
    println!(
        "\nratio (cluster hop / one KUBE): p50 {:.2}, p99 {:.2}",
        percentile(&da_, 0.5).as_secs_f64() / percentile(&db_, 0.5).as_secs_f64(),
        percentile(&da_, 0.99).as_secs_f64() / percentile(&db_, 0.99).as_secs_f64()
    );
}

/// A query for `name` A over UDP to `port`: whether an answer with `ip` came back.
fn answers(socket: &std::net::UdpSocket, port: u16, name: &str, id: u16, ip: [u8; 4]) -> bool {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    if socket.send_to(&q, ("127.0.0.1", port)).is_err() {
        return false;
    }
    let mut buf = [0u8; 1500];
    match socket.recv(&mut buf) {
        Ok(n) => n >= 4 && buf[..2] == id.to_be_bytes() && buf[..n].windows(4).any(|w| w == ip),
        Err(_) => false,
    }
}

/// Times until Knot at `port` serves each of `records` names, one after another, each
/// added by `add` (which returns once the primary has committed it).
fn notify_to_serve(port: u16, records: usize, mut add: impl FnMut(usize)) -> Vec<Duration> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut out = Vec::new();
    for i in 0..records {
        add(i);
        let t0 = Instant::now();
        let ip = [192, 0, 2, (i % 250) as u8 + 1];
        let name = format!("r{i}.kube.test");
        let mut id = 0u16;
        while !answers(&socket, port, &name, id, ip) {
            id = id.wrapping_add(1);
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{name} never served"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        out.push(t0.elapsed());
    }
    out.sort();
    out
}

#[test]
#[ignore = "benchmark: bench/cluster/run"]
fn bench_notify_to_serve() {
    let records = env_or("BENCH_RECORDS", 100);
    // KUBE as the primary.
    let knot_port = crate::dns::free_port();
    let kube = Kube::start_with(Opts {
        config: Some(format!(
            "domain: kube.test\ntls:\n  mode: local\ndns:\n  addresses: [127.0.0.1]\n  rrl:\n    enabled: false\n  tsig_keys:\n    - {{ name: xfr, secret: \"{}\" }}\n  secondaries:\n    - {{ address: \"127.0.0.1:{knot_port}\", key: xfr }}\n",
            crate::dns::TSIG_SECRET
        )),
        ..Default::default()
    })
    .unwrap();
    let knot = crate::dns::Knot::start(knot_port, kube.dns.unwrap().port(), true);
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !answers(&socket, knot_port, "kube.test", 1, [127, 0, 0, 1]) {
        assert!(
            Instant::now() < deadline,
            "knot never got the zone: {}",
            knot.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let kube_times = notify_to_serve(knot_port, records, |i| {
        let body = format!(
            r#"{{"name": "r{i}", "type": "A", "value": "192.0.2.{}"}}"#,
            (i % 250) + 1
        );
        let r = crate::dns::api(&kube, reqwest::Method::POST, "/api/dns/records", &body);
        assert!(r.contains("added"), "{r}");
    });
    if std::env::var_os("BENCH_LOG").is_some() {
        eprintln!("{}\n{}", kube.log(), knot.log());
    }
    drop(knot);
    drop(kube);

    // Knot as the primary, the same secondary setup.
    let (primary_port, secondary_port) = (crate::dns::free_port(), crate::dns::free_port());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    std::fs::create_dir_all(dir.path().join("zones")).unwrap();
    std::fs::write(
        dir.path().join("zones/kube.test.zone"),
        "$ORIGIN kube.test.\n$TTL 300\n@ SOA ns1 hostmaster 1 3600 900 1209600 300\n@ NS ns1\nns1 A 127.0.0.1\n@ A 127.0.0.1\n",
    )
    .unwrap();
    let conf = format!(
        "server:\n    rundir: \"{d}\"\n    listen: 127.0.0.1@{primary_port}\n\
         database:\n    storage: \"{d}/db\"\n\
         key:\n  - id: xfr\n    algorithm: hmac-sha256\n    secret: {}\n\
         remote:\n  - id: secondary\n    address: 127.0.0.1@{secondary_port}\n    key: xfr\n\
         acl:\n  - id: to_secondary\n    address: 127.0.0.1\n    key: xfr\n    action: transfer\n\
         zone:\n  - domain: kube.test\n    storage: \"{d}/zones\"\n    notify: secondary\n    acl: to_secondary\n    zonefile-sync: -1\n    journal-content: changes\n\
         log:\n  - target: stderr\n    any: info\n",
        crate::dns::TSIG_SECRET
    );
    std::fs::create_dir_all(dir.path().join("db")).unwrap();
    std::fs::write(dir.path().join("knot.conf"), conf).unwrap();
    let mut primary = Command::new("knotd")
        .arg("-c")
        .arg(dir.path().join("knot.conf"))
        .stderr(std::fs::File::create(dir.path().join("knot.log")).unwrap())
        .spawn()
        .unwrap();
    let secondary = crate::dns::Knot::start(secondary_port, primary_port, true);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !answers(&socket, secondary_port, "kube.test", 2, [127, 0, 0, 1]) {
        assert!(
            Instant::now() < deadline,
            "the secondary never got the zone: {}\n{}",
            secondary.log(),
            std::fs::read_to_string(dir.path().join("knot.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let knotc = |args: &[&str]| {
        let out = Command::new("knotc")
            .arg("-c")
            .arg(dir.path().join("knot.conf"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "knotc {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let knot_times = notify_to_serve(secondary_port, records, |i| {
        let ip = format!("192.0.2.{}", (i % 250) + 1);
        knotc(&["zone-begin", "kube.test"]);
        knotc(&["zone-set", "kube.test", &format!("r{i}"), "300", "A", &ip]);
        knotc(&["zone-commit", "kube.test"]);
    });
    if std::env::var_os("BENCH_LOG").is_some() {
        eprintln!("{}", secondary.log());
    }
    let _ = primary.kill();
    let _ = primary.wait();
    println!("| primary → Knot secondary | records | p50 ms | p99 ms |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| KUBE (admin API add, NOTIFY, IXFR) | {} | {} | {} |",
        kube_times.len(),
        ms(percentile(&kube_times, 0.5)),
        ms(percentile(&kube_times, 0.99))
    );
    println!(
        "| Knot 3.2 (`knotc zone-set` + commit, NOTIFY, IXFR) | {} | {} | {} |",
        knot_times.len(),
        ms(percentile(&knot_times, 0.5)),
        ms(percentile(&knot_times, 0.99))
    );
    println!(
        "\nratio KUBE/Knot: p50 {:.2}, p99 {:.2}",
        percentile(&kube_times, 0.5).as_secs_f64() / percentile(&knot_times, 0.5).as_secs_f64(),
        percentile(&kube_times, 0.99).as_secs_f64() / percentile(&knot_times, 0.99).as_secs_f64()
    );
}

/// A bundle of `files` files of `size` bytes each (distinct per `round`), plus an index
/// naming the round; with `changed_only`, every file but the index is the same each round.
fn bundle(round: usize, files: usize, size: usize, changed_only: bool) -> Vec<u8> {
    let seed = if changed_only { 0 } else { round };
    let bodies: Vec<(String, Vec<u8>)> = (0..files)
        .map(|i| {
            let mut data = vec![0u8; size];
            let mut x = (seed as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64 + 1);
            for b in data.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            (format!("assets/f{i}.bin"), data)
        })
        .collect();
    let index = format!("round {round}");
    let mut entries: Vec<tests::RawEntry> = bodies
        .iter()
        .map(|(n, d)| tests::RawEntry {
            name: n.as_bytes(),
            kind: tar::EntryType::Regular,
            data: d,
            link: None,
        })
        .collect();
    entries.push(tests::RawEntry {
        name: b"index.html",
        kind: tar::EntryType::Regular,
        data: index.as_bytes(),
        link: None,
    });
    tests::raw_targz(&entries)
}

async fn publish_timed(kube: &Kube, body: Vec<u8>) -> Duration {
    let started = Instant::now();
    let r = reqwest::Client::new()
        .put(kube.admin_url("/api/apps/site"))
        .bearer_auth(kube.token())
        .body(body)
        .send()
        .await
        .expect("publish");
    assert!(
        r.status().is_success(),
        "{}",
        r.text().await.unwrap_or_default()
    );
    started.elapsed()
}

/// The cost of a publish to the object store (s3s-fs on loopback) against a local publish:
/// `BENCH_PUBLISHES` (20) publishes of 100 files of 20 KiB with only the index changed, then
/// as many with every file new; and the time until a second KUBE on the store serves each
/// new version (it polls every second).
#[tokio::test]
#[ignore = "benchmark: bench/cluster/run"]
async fn bench_publish_to_the_store() {
    let rounds = env_or("BENCH_PUBLISHES", 20);
    let s3 = tests::s3::S3::start();
    let local = Kube::start();
    let with_store = |_: ()| {
        Kube::start_with(Opts {
            config: Some(s3.config(1)),
            env: s3.env(),
            ..Default::default()
        })
        .unwrap_or_else(|log| panic!("{log}"))
    };
    let (a, b) = (with_store(()), with_store(()));
    println!("| publish (100 files × 20 KiB) | local p50 | store p50 | store / local |");
    println!("| --- | --- | --- | --- |");
    let mut served = Vec::new();
    for changed_only in [true, false] {
        let (mut l, mut s) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            l.push(publish_timed(&local, bundle(round, 100, 20 << 10, changed_only)).await);
            s.push(publish_timed(&a, bundle(round, 100, 20 << 10, changed_only)).await);
            let published = Instant::now();
            let want = format!("round {round}");
            let client = b.client();
            loop {
                if let Ok(r) = client.get(b.url("site", "/")).send().await
                    && r.text().await.unwrap_or_default() == want
                {
                    break;
                }
                assert!(
                    published.elapsed() < Duration::from_secs(30),
                    "B never served {want}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            served.push(published.elapsed());
        }
        l.sort();
        s.sort();
        let (lp, sp) = (percentile(&l, 0.5), percentile(&s, 0.5));
        println!(
            "| {} | {} ms | {} ms | {:.2}× |",
            if changed_only {
                "only the index changed"
            } else {
                "every file new"
            },
            ms(lp),
            ms(sp),
            sp.as_secs_f64() / lp.as_secs_f64()
        );
    }
    served.sort();
    println!(
        "| served at a second KUBE (poll 1 s) | | p50 {} ms, p99 {} ms | |",
        ms(percentile(&served, 0.5)),
        ms(percentile(&served, 0.99))
    );
}
