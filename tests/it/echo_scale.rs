//! ECHO with a few thousand documents (issue 19): after a restart KUBE holds none of them
//! in memory, a client fetching one space reads only that space's documents, a client
//! walking everything stays within `echo.cache_bytes`, and refusals read nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{Automerge, ObjType, ROOT, ReadDoc};
use base64::Engine;
use tests::{Kube, Opts};

use crate::echo::{Peer, get, key, kube_did, space_root_with};

const SPACES: usize = 20;
const PER_SPACE: usize = 100;
/// 2 MiB of documents in memory: about a hundred of these.
const BUDGET: u64 = 2 << 20;

fn id(prefix: &str, s: usize, i: usize) -> String {
    format!("{prefix}{s}x{i}").replace('0', "z")
}

/// Space `s`: its own key, admin key 1, KUBE as replicator, `PER_SPACE` task objects.
fn export(kube: &str, s: usize) -> serde_json::Value {
    let (space, mut root) =
        space_root_with(kube, &halo::SigningKey::from_bytes(&[100 + s as u8; 32]));
    let b64 = |d: &mut Automerge| base64::engine::general_purpose::STANDARD.encode(d.save());
    let mut documents = BTreeMap::new();
    let mut tx = root.transaction();
    let (_, objects) = tx.get(ROOT, "objects").unwrap().unwrap();
    for i in 0..PER_SPACE {
        let o = tx
            .put_object(&objects, id("Task", s, i), ObjType::Map)
            .unwrap();
        tx.put(&o, "type", "task").unwrap();
        let mut doc = Automerge::new();
        let mut dtx = doc.transaction();
        dtx.put(ROOT, "title", format!("task {s}/{i}")).unwrap();
        dtx.put(ROOT, "notes", "n".repeat(400)).unwrap();
        dtx.commit();
        documents.insert(id("Task", s, i), b64(&mut doc));
    }
    tx.commit();
    documents.insert(id("Root", s, 0), b64(&mut root));
    serde_json::json!({
        "format": "kube-space-v1",
        "space": space,
        "root": id("Root", s, 0),
        "documents": documents,
    })
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread")]
async fn documents_are_read_on_demand_within_the_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let opts = || Opts {
        data_dir: Some(data_dir.clone()),
        env: vec![("KUBE_ECHO_CACHE_BYTES".into(), BUDGET.to_string())],
        ..Opts::default()
    };
    let mut kube = Kube::start_with(opts()).unwrap();
    let did = kube_did(&kube).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let empty_kib = status_kib(kube.pid(), "VmRSS:");
    let http = reqwest::Client::new();
    for s in 0..SPACES {
        let r = http
            .post(kube.admin_url("/api/echo/import"))
            .bearer_auth(kube.token())
            .json(&export(&did, s))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "import {s}: {}",
            r.text().await.unwrap()
        );
    }
    let total = SPACES * (PER_SPACE + 1);
    assert!(kube.terminate().success());

    // After a restart: nothing read, memory near an empty KUBE's.
    let kube = Kube::start_with(opts()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = kube.metrics().await;
    assert_eq!(metric(&m, "kube_echo_documents"), total as u64);
    assert_eq!(metric(&m, "kube_echo_cache_documents"), 0);
    assert_eq!(metric(&m, "kube_echo_document_loads_total"), 0);
    let start_kib = status_kib(kube.pid(), "VmRSS:");
    assert!(
        start_kib < empty_kib + 6 * 1024,
        "RSS after start {start_kib} KiB, empty KUBE {empty_kib} KiB"
    );

    // A non-member asks for a space's documents: refused, nothing read.
    let space0: Vec<String> = std::iter::once(id("Root", 0, 0))
        .chain((0..PER_SPACE).map(|i| id("Task", 0, i)))
        .collect();
    let mut mallory = Peer::connect(&kube, &did, &key(7), "mallory").await;
    let got = mallory.fetch_many(&space0, "title", 50).await;
    assert!(got.is_empty());
    assert_eq!(
        metric(&kube.metrics().await, "kube_echo_document_loads_total"),
        0,
        "a refusal reads no document"
    );

    // A member fetches one space: exactly its documents are read.
    let mut alice = Peer::connect(&kube, &did, &key(1), "alice").await;
    let tasks = &space0[1..];
    let got = alice.fetch_many(tasks, "title", 50).await;
    assert_eq!(got.len(), PER_SPACE, "{:?}", alice.errors);
    assert_eq!(
        get(&got[&id("Task", 0, 7)], "title").as_deref(),
        Some("task 0/7")
    );
    let m = kube.metrics().await;
    assert_eq!(
        metric(&m, "kube_echo_document_loads_total"),
        PER_SPACE as u64
    );

    // A walk of everything: the documents in memory stay within the budget.
    let mut peak = 0;
    for s in 0..SPACES {
        let ids: Vec<String> = (0..PER_SPACE).map(|i| id("Task", s, i)).collect();
        let got = alice.fetch_many(&ids, "title", 50).await;
        assert_eq!(got.len(), PER_SPACE, "space {s}: {:?}", alice.errors);
        let m = kube.metrics().await;
        let cached = metric(&m, "kube_echo_cache_bytes");
        assert!(cached <= BUDGET, "{cached} bytes held, budget {BUDGET}");
        peak = peak.max(cached);
    }
    let m = kube.metrics().await;
    assert!(metric(&m, "kube_echo_document_evictions_total") > 1000);
    let walked_kib = status_kib(kube.pid(), "VmRSS:");
    eprintln!(
        "RSS: empty KUBE {empty_kib} KiB; {total} documents: after start {start_kib} KiB, after a walk of all {walked_kib} KiB; cache peak {peak} bytes"
    );
    // The budget is what the gauge shows (calibrated against RSS in bench/echo/scale); RSS
    // itself moves by tens of MiB between runs of a debug build (allocator arenas), so it
    // is only held to a sanity bound here.
    assert!(
        walked_kib < start_kib + 128 * 1024,
        "RSS {walked_kib} KiB after walking {total} documents"
    );
}

/// Issue 19: a document that is slow to read (here: one with 150,000 operations, about a
/// second to load in a debug build) holds up nobody but the peers that asked for it. It is
/// read off ECHO's thread; another member fetching twenty documents of another space
/// meanwhile is done long before it is.
///
/// It compares two timings, so it runs alone: `tests/run` runs it after the other suites
/// (beside them, on two busy cores, both timings stretch unevenly).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "timing: tests/run runs it alone, after the other suites"]
async fn a_slow_document_holds_up_no_other_space() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let opts = || Opts {
        data_dir: Some(data_dir.clone()),
        ..Opts::default()
    };
    let mut kube = Kube::start_with(opts()).unwrap();
    let did = kube_did(&kube).await;
    let heavy = id("Heavy", 0, 0);
    let mut space0 = export(&did, 0);
    let mut doc = Automerge::new();
    let mut tx = doc.transaction();
    tx.put(ROOT, "title", "heavy").unwrap();
    let text = tx.put_object(ROOT, "text", ObjType::Text).unwrap();
    tx.splice_text(&text, 0, 0, &"x".repeat(150_000)).unwrap();
    tx.commit();
    space0["documents"][&heavy] = base64::engine::general_purpose::STANDARD
        .encode(doc.save())
        .into();
    // The heavy document is listed by space 0's root as an object.
    let root_id = id("Root", 0, 0);
    let root_b64 = space0["documents"][&root_id].as_str().unwrap().to_owned();
    let mut root = Automerge::load(
        &base64::engine::general_purpose::STANDARD
            .decode(root_b64)
            .unwrap(),
    )
    .unwrap();
    let mut tx = root.transaction();
    let (_, objects) = tx.get(ROOT, "objects").unwrap().unwrap();
    let o = tx.put_object(&objects, &heavy, ObjType::Map).unwrap();
    tx.put(&o, "type", "blob").unwrap();
    tx.commit();
    space0["documents"][&root_id] = base64::engine::general_purpose::STANDARD
        .encode(root.save())
        .into();
    let http = reqwest::Client::new();
    for export in [space0, export(&did, 1)] {
        let r = http
            .post(kube.admin_url("/api/echo/import"))
            .bearer_auth(kube.token())
            .json(&export)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
    assert!(kube.terminate().success());
    let kube = Kube::start_with(opts()).unwrap();

    let mut alice = Peer::connect(&kube, &did, &key(1), "alice").await;
    let mut bob = Peer::connect(&kube, &did, &key(1), "bob").await;
    let asked = std::time::Instant::now();
    let heavy_answer = tokio::spawn(async move {
        let answer = alice.first_answer(&heavy, Duration::from_secs(60)).await;
        (answer, asked.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let ids: Vec<String> = (0..20).map(|i| id("Task", 1, i)).collect();
    let started = std::time::Instant::now();
    let got = bob.fetch_many(&ids, "title", 20).await;
    let bob_took = started.elapsed();
    assert_eq!(got.len(), 20, "{:?}", bob.errors);
    let (answer, heavy_took) = heavy_answer.await.unwrap();
    assert_eq!(answer.as_deref(), Some("sync"));
    eprintln!(
        "the heavy document's first answer took {heavy_took:?}; another space's 20 documents {bob_took:?} meanwhile"
    );
    assert!(
        heavy_took > Duration::from_millis(300),
        "the heavy document loads in {heavy_took:?}: too fast to show anything"
    );
    assert!(
        bob_took < heavy_took / 2,
        "another space's fetch took {bob_took:?}, held up behind a read of {heavy_took:?}"
    );
}
