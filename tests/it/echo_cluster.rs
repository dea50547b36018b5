//! Several KUBEs for one domain (issue 18): ECHO links between three KUBEs (`echo.peers`).
//! A space written at B reaches A and C; A is killed with `kill -9`, a change is written at
//! C, A restarts: all three converge and no acknowledged change is lost; a document added
//! at A after its restart reaches B and C; a non-member gets nothing from any of them.

use std::time::{Duration, Instant};

use automerge::sync;
use automerge::transaction::Transactable;
use automerge::{Automerge, ObjType, ROOT, ReadDoc};
use tests::{Kube, Opts};

use crate::echo::{Peer, ROOT_ID, get, key, kube_did, set, space_root_for};

const TASK: &str = "CrewTaskCrewTaskCrewTaskAb";
const LATER: &str = "CrewLaterCrewLaterCrewAb";

/// A free loopback port (see `tests::pebble::free_port`).
pub(crate) fn free_port() -> u16 {
    tests::pebble::free_port()
}

pub(crate) struct Node {
    pub(crate) dir: std::path::PathBuf,
    pub(crate) port: u16,
}

impl Node {
    pub(crate) fn opts(&self, config: Option<String>) -> Opts {
        Opts {
            config,
            env: vec![(
                "KUBE_HTTP_HTTPS_LISTEN".into(),
                format!("127.0.0.1:{}", self.port),
            )],
            data_dir: Some(self.dir.clone()),
        }
    }
}

/// The title of document `id` as a member fetching it at `kube` finds it (None: not there).
async fn title_at(kube: &Kube, did: &str, id: &str) -> Option<String> {
    let mut p = Peer::connect(kube, did, &key(1), "reader").await;
    let got = p.fetch_many(&[id.to_owned()], "title", 1).await;
    got.get(id).and_then(|d| get(d, "title"))
}

/// Waits (bounded) until every KUBE of `at` serves `id` with `title`.
async fn converge(at: &[(&Kube, &str, &str)], id: &str, title: &str) -> Duration {
    let began = Instant::now();
    for (kube, did, name) in at {
        loop {
            let now = title_at(kube, did, id).await;
            if now.as_deref() == Some(title) {
                break;
            }
            assert!(
                began.elapsed() < Duration::from_secs(30),
                "{name} has {now:?} for {id}, not {title:?}:\n{}",
                kube.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    began.elapsed()
}

/// KUBEs on loopback ports of their own, each started once already (its identity and local
/// CA made), to be started again linked to all the others.
pub(crate) struct Cluster {
    _tmp: tempfile::TempDir,
    nodes: Vec<Node>,
    pub(crate) dids: Vec<String>,
}

impl Cluster {
    pub(crate) async fn new(n: usize) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let nodes: Vec<Node> = (0..n)
            .map(|i| Node {
                dir: tmp.path().join(i.to_string()).join("data"),
                port: free_port(),
            })
            .collect();
        let mut dids = Vec::new();
        for n in &nodes {
            let mut k = Kube::start_with(n.opts(None)).unwrap();
            dids.push(kube_did(&k).await);
            assert!(k.terminate().success());
        }
        Cluster {
            _tmp: tmp,
            nodes,
            dids,
        }
    }

    /// KUBE `me`, linked to every other (trusting their CAs).
    pub(crate) fn start(&self, me: usize) -> Kube {
        let mut c = String::from("echo:\n  peers:\n");
        for (i, n) in self.nodes.iter().enumerate() {
            if i != me {
                c.push_str(&format!(
                    "    - {{ url: \"https://localhost:{}\", did: \"{}\", ca_file: \"{}\" }}\n",
                    n.port,
                    self.dids[i],
                    n.dir.join("tls/ca.pem").display()
                ));
            }
        }
        Kube::start_with(self.nodes[me].opts(Some(c)))
            .unwrap_or_else(|log| panic!("kube {me} did not start:\n{log}"))
    }
}

pub(crate) fn object(space: &str, title: &str) -> Automerge {
    let mut doc = Automerge::new();
    let mut tx = doc.transaction();
    tx.put(ROOT, "space", space).unwrap();
    tx.put(ROOT, "type", "task").unwrap();
    tx.put(ROOT, "title", title).unwrap();
    tx.commit();
    doc
}

pub(crate) fn list(root: &mut Automerge, id: &str) {
    let mut tx = root.transaction();
    let (_, objects) = tx.get(ROOT, "objects").unwrap().unwrap();
    let o = tx.put_object(&objects, id, ObjType::Map).unwrap();
    tx.put(&o, "type", "task").unwrap();
    tx.commit();
}

#[tokio::test(flavor = "multi_thread")]
async fn three_kubes_replicate_spaces_and_converge_after_kill_9() {
    let cluster = Cluster::new(3).await;
    let start = |i: usize| cluster.start(i);
    let mut a = start(0);
    let b = start(1);
    let c = start(2);
    let dids = &cluster.dids;
    let (da, db, dc) = (dids[0].as_str(), dids[1].as_str(), dids[2].as_str());

    // Alice writes a space at B.
    let (space, mut root) = space_root_for(&[da, db, dc], &key(3));
    let mut task = object(&space, "from B");
    list(&mut root, TASK);
    let mut alice = Peer::connect(&b, db, &key(1), "alice").await;
    let mut rst = sync::State::new();
    assert!(
        alice.sync(ROOT_ID, &mut root, &mut rst).await,
        "{:?}",
        alice.errors
    );
    let mut tst = sync::State::new();
    assert!(
        alice.sync(TASK, &mut task, &mut tst).await,
        "{:?}",
        alice.errors
    );
    let took = converge(&[(&a, da, "A"), (&c, dc, "C")], TASK, "from B").await;
    eprintln!("a space written at B reached A and C in {took:?}");
    // Each KUBE shows its two links up (`kube status`, metrics).
    for k in [&a, &b, &c] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = k.api(reqwest::Method::GET, "/api/status").await;
            let links = status["echo"]["links"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if links.len() == 2 && links.iter().all(|l| l["up"] == true) {
                break;
            }
            assert!(Instant::now() < deadline, "{status}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(k.metrics().await.contains("kube_echo_links_up 2"));
    }

    // A dies; a change is written at C; A comes back and catches up.
    a.kill();
    let mut alice_c = Peer::connect(&c, dc, &key(1), "alice-c").await;
    let mut at_c = Automerge::new();
    let mut cst = sync::State::new();
    assert!(alice_c.sync(TASK, &mut at_c, &mut cst).await || at_c.get_heads().len() == 1);
    set(&mut at_c, "title", "from C");
    assert!(
        alice_c.sync(TASK, &mut at_c, &mut cst).await,
        "{:?}",
        alice_c.errors
    );
    let a = start(0);
    let took = converge(
        &[(&b, db, "B"), (&a, da, "A"), (&c, dc, "C")],
        TASK,
        "from C",
    )
    .await;
    eprintln!("after A's kill -9 and restart, all three have C's change in {took:?}");

    // A document added at A after its restart reaches B and C.
    let mut alice_a = Peer::connect(&a, da, &key(1), "alice-a").await;
    let mut root_a = Automerge::new();
    let mut ast = sync::State::new();
    assert!(alice_a.sync(ROOT_ID, &mut root_a, &mut ast).await || !root_a.get_heads().is_empty());
    list(&mut root_a, LATER);
    assert!(
        alice_a.sync(ROOT_ID, &mut root_a, &mut ast).await,
        "{:?}",
        alice_a.errors
    );
    let mut later = object(&space, "added at A");
    let mut lst = sync::State::new();
    assert!(
        alice_a.sync(LATER, &mut later, &mut lst).await,
        "{:?}",
        alice_a.errors
    );
    converge(&[(&b, db, "B"), (&c, dc, "C")], LATER, "added at A").await;

    // A stranger gets nothing from any of them.
    for (kube, did) in [(&a, da), (&b, db), (&c, dc)] {
        let mut mallory = Peer::connect(kube, did, &key(7), "mallory").await;
        let got = mallory
            .fetch_many(&[TASK.to_owned(), ROOT_ID.to_owned()], "title", 2)
            .await;
        assert!(got.is_empty(), "a non-member got {:?}", got.keys());
    }
}

/// A link is made only to the KUBE `echo.peers` names: a server answering with another
/// identity gets no token and no document (a token for another KUBE could be replayed
/// there).
#[tokio::test(flavor = "multi_thread")]
async fn a_link_goes_only_to_the_kube_it_names() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (
        Node {
            dir: tmp.path().join("a/data"),
            port: free_port(),
        },
        Node {
            dir: tmp.path().join("b/data"),
            port: free_port(),
        },
    );
    let b_kube = Kube::start_with(b.opts(None)).unwrap();
    let wrong = halo::did(&key(42));
    let config = format!(
        "echo:\n  peers:\n    - {{ url: \"https://localhost:{}\", did: \"{wrong}\", ca_file: \"{}\" }}\n",
        b.port,
        b.dir.join("tls/ca.pem").display()
    );
    let a_kube = Kube::start_with(a.opts(Some(config))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !a_kube.log().contains("not the") {
        assert!(Instant::now() < deadline, "{}", a_kube.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!a_kube.log().contains("ECHO linked"), "{}", a_kube.log());
    let status = a_kube.api(reqwest::Method::GET, "/api/status").await;
    let link = &status["echo"]["links"][0];
    assert_eq!(link["up"], false, "{status}");
    assert!(
        link["error"].as_str().unwrap_or("").contains("not the"),
        "{status}"
    );
    let out = a_kube.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("link https://localhost:") && text.contains("DOWN"),
        "{text}"
    );
    let m = b_kube.metrics().await;
    assert!(
        m.contains("kube_echo_peers 0"),
        "B saw no connection from A:\n{m}"
    );
}
