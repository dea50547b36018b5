//! ECHO through the running KUBE with a Rust automerge-repo client over TLS WebSockets:
//! authentication before anything, spaces, access, durability across `kill -9`, bad input,
//! the operator commands and the metrics. (The JavaScript interop is tests/echo/.)

use std::time::{Duration, Instant};

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{Automerge, ObjType, ROOT, ReadDoc};
use ciborium::Value;
use ed25519_dalek::Signer;
use futures_util::{SinkExt, StreamExt};
use halo::credential::{Assertion, Credential, Role};
use tests::{Kube, Opts, Ws};
use tokio_tungstenite::tungstenite::Message;

pub(crate) const ROOT_ID: &str = "RootRootRootRootRootRoot";
const TASK_ID: &str = "TaskTaskTaskTaskTaskTask";

pub(crate) fn key(seed: u8) -> halo::SigningKey {
    halo::SigningKey::from_bytes(&[seed; 32])
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn says(issuer: &halo::SigningKey, subject: &str, a: Assertion) -> Credential {
    let did = halo::did(issuer);
    Credential::issue(&did, subject, a, now() - 5, None, &did, |b| {
        issuer.sign(b).to_bytes()
    })
    .unwrap()
}

pub(crate) async fn kube_did(kube: &Kube) -> String {
    let v: serde_json::Value = kube
        .client()
        .get(format!(
            "https://localhost:{}/.well-known/kube/identity",
            kube.https.port()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // KUBE's clock beside its identity, for clients whose clocks are off.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let time = v["time"].as_u64().expect("time in the identity");
    assert!(time.abs_diff(now) <= 5, "KUBE's time {time}, ours {now}");
    v["did"].as_str().unwrap().to_owned()
}

/// A space (key 3) whose genesis makes key 1 admin and that admits `kube` as replicator.
pub(crate) fn space_root(kube: &str) -> (String, Automerge) {
    space_root_with(kube, &key(3))
}

/// The same for the space of `space_key`.
pub(crate) fn space_root_with(kube: &str, space_key: &halo::SigningKey) -> (String, Automerge) {
    space_root_for(&[kube], space_key)
}

/// The space of `space_key`, admitting every KUBE of `kubes` as replicator.
pub(crate) fn space_root_for(kubes: &[&str], space_key: &halo::SigningKey) -> (String, Automerge) {
    let space = halo::did(space_key);
    let genesis = says(
        space_key,
        &halo::did(&key(1)),
        Assertion::SpaceGenesis {
            space: space.clone(),
        },
    );
    let replicators = kubes.iter().map(|kube| {
        says(
            &key(1),
            kube,
            Assertion::SpaceMember {
                space: space.clone(),
                role: Role::Replicator,
            },
        )
    });
    let mut doc = Automerge::new();
    let mut tx = doc.transaction();
    tx.put(ROOT, "kube", "space").unwrap();
    tx.put(ROOT, "space", space.as_str()).unwrap();
    let c = tx.put_object(ROOT, "credentials", ObjType::Map).unwrap();
    for cred in std::iter::once(genesis).chain(replicators) {
        tx.put(&c, cred.id.as_str(), serde_json::to_string(&cred).unwrap())
            .unwrap();
    }
    tx.put_object(ROOT, "objects", ObjType::Map).unwrap();
    tx.commit();
    (space, doc)
}

pub(crate) fn t(s: &str) -> Value {
    Value::Text(s.into())
}

pub(crate) fn frame(pairs: Vec<(&str, Value)>) -> Vec<u8> {
    let map = pairs.into_iter().map(|(k, v)| (t(k), v)).collect();
    let mut out = Vec::new();
    ciborium::into_writer(&Value::Map(map), &mut out).unwrap();
    out
}

pub(crate) fn field<'a>(v: &'a Value, k: &str) -> Option<&'a Value> {
    v.as_map()?
        .iter()
        .find(|(kk, _)| kk.as_text() == Some(k))
        .map(|(_, v)| v)
}

pub(crate) fn text_of(v: &Value, k: &str) -> String {
    field(v, k)
        .and_then(Value::as_text)
        .unwrap_or("")
        .to_owned()
}

/// One automerge-repo peer connected to KUBE's ECHO.
pub(crate) struct Peer {
    ws: Ws,
    me: String,
    pub(crate) errors: Vec<String>,
    unavailable: Vec<String>,
    pub(crate) closed: bool,
}

fn token_path(kube_did: &str, k: &halo::SigningKey, me: &str) -> String {
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let tok = echo::auth::token(k, kube_did, me, now(), &nonce);
    format!("/.well-known/kube/echo?auth={tok}")
}

impl Peer {
    pub(crate) async fn connect(
        kube: &Kube,
        kube_did: &str,
        k: &halo::SigningKey,
        me: &str,
    ) -> Peer {
        let path = token_path(kube_did, k, me);
        let ws = tests::ws_connect(
            kube.https,
            "localhost",
            &kube.ca_pem(),
            &path,
            "https://app.localhost",
        )
        .await;
        let mut p = Peer {
            ws,
            me: me.to_owned(),
            errors: vec![],
            unavailable: vec![],
            closed: false,
        };
        p.send(frame(vec![
            ("type", t("join")),
            ("senderId", t(me)),
            ("peerMetadata", Value::Map(vec![])),
            ("supportedProtocolVersions", Value::Array(vec![t("1")])),
        ]))
        .await;
        let peer = p.recv(Duration::from_secs(10)).await.expect("peer message");
        assert_eq!(text_of(&peer, "type"), "peer");
        assert_eq!(text_of(&peer, "targetId"), me);
        p
    }

    /// Sends one sync message (`kind`: "sync" or "request") for `id`.
    pub(crate) async fn send_sync(&mut self, kind: &str, id: &str, m: sync::Message) {
        let f = frame(vec![
            ("type", t(kind)),
            ("senderId", t(&self.me)),
            ("targetId", t("kube")),
            ("documentId", t(id)),
            ("data", Value::Bytes(m.encode())),
        ]);
        self.send(f).await;
    }

    pub(crate) async fn send(&mut self, bytes: Vec<u8>) {
        let _ = self.ws.send(Message::Binary(bytes.into())).await;
    }

    pub(crate) async fn recv(&mut self, wait: Duration) -> Option<Value> {
        loop {
            match tokio::time::timeout(wait, self.ws.next()).await {
                Ok(Some(Ok(Message::Binary(b)))) => {
                    let v: Value = ciborium::from_reader(&b[..]).unwrap();
                    match text_of(&v, "type").as_str() {
                        "error" => self.errors.push(text_of(&v, "message")),
                        "doc-unavailable" => self.unavailable.push(text_of(&v, "documentId")),
                        _ => {}
                    }
                    return Some(v);
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => {
                    self.closed = true;
                    return None;
                }
                Ok(Some(Ok(_))) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Syncs `doc` with KUBE until KUBE's heads equal ours (acknowledged), or until KUBE
    /// stops answering (refused, unavailable); bounded.
    pub(crate) async fn sync(
        &mut self,
        id: &str,
        doc: &mut Automerge,
        st: &mut sync::State,
    ) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && !self.closed {
            if let Some(m) = doc.generate_sync_message(st) {
                let kind = if doc.get_heads().is_empty() {
                    "request"
                } else {
                    "sync"
                };
                self.send_sync(kind, id, m).await;
            }
            if !doc.get_heads().is_empty()
                && st.their_heads.as_deref() == Some(&doc.get_heads()[..])
            {
                return true;
            }
            let Some(v) = self.recv(Duration::from_secs(2)).await else {
                return false;
            };
            if text_of(&v, "type") == "sync" && text_of(&v, "documentId") == id {
                let data = field(&v, "data").and_then(Value::as_bytes).unwrap();
                doc.receive_sync_message(st, sync::Message::decode(data).unwrap())
                    .unwrap();
            } else if text_of(&v, "type") == "doc-unavailable" {
                return false;
            }
        }
        false
    }
}

impl Peer {
    /// Sends what `doc` has for KUBE now (one sync message, no waiting), then closes the
    /// connection at once.
    pub(crate) async fn send_and_leave(mut self, id: &str, doc: &Automerge, st: &mut sync::State) {
        if let Some(m) = doc.generate_sync_message(st) {
            self.send_sync("sync", id, m).await;
        }
        let _ = self.ws.close(None).await;
    }

    /// Asks KUBE for `id`, which `doc` (empty) does not have yet.
    pub(crate) async fn request(&mut self, id: &str, doc: &Automerge, st: &mut sync::State) {
        if let Some(m) = doc.generate_sync_message(st) {
            self.send_sync("request", id, m).await;
        }
    }

    /// Takes KUBE's next message about `id` (waiting up to `wait`), applies it to `doc` and
    /// answers as a syncing client does; false when the connection closed or nothing came.
    pub(crate) async fn step(
        &mut self,
        id: &str,
        doc: &mut Automerge,
        st: &mut sync::State,
        wait: Duration,
    ) -> bool {
        let Some(v) = self.recv(wait).await else {
            return false;
        };
        if text_of(&v, "type") == "sync" && text_of(&v, "documentId") == id {
            let data = field(&v, "data").and_then(Value::as_bytes).unwrap();
            doc.receive_sync_message(st, sync::Message::decode(data).unwrap())
                .unwrap();
            if let Some(m) = doc.generate_sync_message(st) {
                self.send_sync("sync", id, m).await;
            }
        }
        true
    }

    /// Asks KUBE for `id` as a client without it does, and waits for KUBE's first message
    /// about it (its first sync message, or doc-unavailable); bounded by `wait`.
    pub(crate) async fn first_answer(&mut self, id: &str, wait: Duration) -> Option<String> {
        let (doc, mut st) = (Automerge::new(), sync::State::new());
        self.request(id, &doc, &mut st).await;
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            let v = self.recv(deadline - Instant::now()).await?;
            if text_of(&v, "documentId") == id {
                return Some(text_of(&v, "type"));
            }
        }
        None
    }

    /// Fetches many documents at once, as a fresh client would (a request for each, then
    /// the exchanges, interleaved), `window` in flight; returns each document KUBE gave
    /// (those it did not are absent). Done when every document has `key`, or is refused.
    pub(crate) async fn fetch_many(
        &mut self,
        ids: &[String],
        key: &str,
        window: usize,
    ) -> std::collections::HashMap<String, Automerge> {
        let mut got = std::collections::HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        for chunk in ids.chunks(window.max(1)) {
            let mut open: std::collections::HashMap<String, (Automerge, sync::State)> =
                std::collections::HashMap::new();
            for id in chunk {
                let (doc, mut st) = (Automerge::new(), sync::State::new());
                if let Some(m) = doc.generate_sync_message(&mut st) {
                    self.send_sync("request", id, m).await;
                }
                open.insert(id.clone(), (doc, st));
            }
            while !open.is_empty() && Instant::now() < deadline && !self.closed {
                let Some(v) = self.recv(Duration::from_secs(5)).await else {
                    break;
                };
                let id = text_of(&v, "documentId");
                match text_of(&v, "type").as_str() {
                    "sync" => {
                        let Some((doc, st)) = open.get_mut(&id) else {
                            continue;
                        };
                        let data = field(&v, "data").and_then(Value::as_bytes).unwrap();
                        doc.receive_sync_message(st, sync::Message::decode(data).unwrap())
                            .unwrap();
                        if let Some(m) = doc.generate_sync_message(st) {
                            self.send_sync("sync", &id, m).await;
                        }
                        if get(doc, key).is_some()
                            && let Some((doc, _)) = open.remove(&id)
                        {
                            got.insert(id, doc);
                        }
                    }
                    "doc-unavailable" => {
                        open.remove(&id);
                    }
                    _ => {}
                }
            }
        }
        got
    }
}

pub(crate) fn set(doc: &mut Automerge, k: &str, v: &str) {
    let mut tx = doc.transaction();
    tx.put(ROOT, k, v).unwrap();
    tx.commit();
}

pub(crate) fn get(doc: &Automerge, k: &str) -> Option<String> {
    doc.get(ROOT, k)
        .unwrap()
        .and_then(|(v, _)| v.into_string().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_is_needed_and_checked() {
    let kube = Kube::start();
    let did = kube_did(&kube).await;
    let ca = kube.ca_pem();
    let origin = "https://app.localhost";
    let refused = |path: String| {
        let ca = ca.clone();
        let addr = kube.https;
        async move {
            match tests::ws_try_connect(addr, "localhost", &ca, &path, origin).await {
                Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
                Err(e) => panic!("{e}"),
                Ok(_) => 101,
            }
        }
    };
    assert_eq!(refused("/.well-known/kube/echo".into()).await, 401);
    // Made for another KUBE.
    assert_eq!(
        refused(token_path(&halo::did(&key(42)), &key(1), "p")).await,
        401
    );
    // Replayed.
    let path = token_path(&did, &key(1), "p");
    assert_eq!(refused(path.clone()).await, 101);
    assert_eq!(refused(path).await, 401);
    // A join naming another peer than the token is refused and closed.
    let mut p = Peer::connect(&kube, &did, &key(1), "alice").await;
    p.send(frame(vec![
        ("type", t("request")),
        ("senderId", t("mallory")),
        ("targetId", t("kube")),
        ("documentId", t(ROOT_ID)),
        ("data", Value::Bytes(vec![0x42])),
    ]))
    .await;
    while p.recv(Duration::from_secs(5)).await.is_some() {}
    assert!(p.closed);
    assert!(p.errors[0].contains("senderId"), "{:?}", p.errors);
}

#[tokio::test(flavor = "multi_thread")]
async fn spaces_sync_with_access_control_and_operator_commands() {
    let kube = Kube::start();
    let did = kube_did(&kube).await;
    let (space, mut root) = space_root(&did);
    let mut alice = Peer::connect(&kube, &did, &key(1), "alice").await;
    let mut st = sync::State::new();
    assert!(
        alice.sync(ROOT_ID, &mut root, &mut st).await,
        "{:?}",
        alice.errors
    );

    // An object, listed in the root.
    let mut task = Automerge::new();
    {
        let mut tx = task.transaction();
        tx.put(ROOT, "space", space.as_str()).unwrap();
        tx.put(ROOT, "type", "task").unwrap();
        let p = tx.put_object(ROOT, "props", ObjType::Map).unwrap();
        tx.put(&p, "title", "write tests").unwrap();
        tx.put(&p, "done", false).unwrap();
        tx.commit();
        let mut tx = root.transaction();
        let (_, objects) = tx.get(ROOT, "objects").unwrap().unwrap();
        let o = tx.put_object(&objects, TASK_ID, ObjType::Map).unwrap();
        tx.put(&o, "type", "task").unwrap();
        tx.commit();
    }
    assert!(alice.sync(ROOT_ID, &mut root, &mut st).await);
    let mut tst = sync::State::new();
    assert!(
        alice.sync(TASK_ID, &mut task, &mut tst).await,
        "{:?}",
        alice.errors
    );

    // A stranger sees nothing.
    let mut carol = Peer::connect(&kube, &did, &key(5), "carol").await;
    let mut empty = Automerge::new();
    assert!(
        !carol
            .sync(ROOT_ID, &mut empty, &mut sync::State::new())
            .await
    );
    assert_eq!(carol.unavailable, vec![ROOT_ID.to_owned()]);
    assert!(empty.get_heads().is_empty());

    // Bad input: errors, then a closed socket; Alice is unaffected.
    let mut junk = Peer::connect(&kube, &did, &key(6), "junk").await;
    for _ in 0..10 {
        junk.send(b"\xff\x00garbage".to_vec()).await;
    }
    while junk.recv(Duration::from_secs(5)).await.is_some() {}
    assert!(junk.closed);
    assert!(
        junk.errors
            .iter()
            .all(|e| e.starts_with("refused: not CBOR")),
        "{:?}",
        junk.errors
    );
    set(&mut root, "note", "still here");
    assert!(alice.sync(ROOT_ID, &mut root, &mut st).await);

    // Operators.
    let list = kube.cli(&["space", "list"]);
    let out = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success(), "{out}");
    assert!(out.contains(&space) && out.contains("2 documents"), "{out}");
    let show = kube.cli(&["space", "show", &space]);
    let out =
        String::from_utf8_lossy(&show.stdout).into_owned() + &String::from_utf8_lossy(&show.stderr);
    assert!(
        out.contains(&halo::did(&key(1))) && out.contains("admin"),
        "{out}"
    );
    assert!(out.contains(TASK_ID) && out.contains("task"), "{out}");
    let q = kube.cli(&[
        "space",
        "query",
        &space,
        "--type",
        "task",
        "--where",
        "done=false",
    ]);
    let found: serde_json::Value = serde_json::from_slice(&q.stdout).unwrap();
    assert_eq!(found[0]["props"]["title"], "write tests");
    assert_eq!(found[0]["id"], TASK_ID);
    let none = kube.cli(&[
        "space",
        "query",
        &space,
        "--type",
        "task",
        "--where",
        "done=true",
    ]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&none.stdout).unwrap(),
        serde_json::json!([])
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("space.json");
    let file = file.to_str().unwrap();
    let ex = kube.cli(&["space", "export", &space, file]);
    assert!(
        ex.status.success(),
        "{}",
        String::from_utf8_lossy(&ex.stderr)
    );
    // Import into a fresh KUBE with the same identity (a replica moving house).
    let fresh_dir = tempfile::tempdir().unwrap();
    let data = fresh_dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(
        kube.data_dir.join("identity.key"),
        data.join("identity.key"),
    )
    .unwrap();
    let second = Kube::start_with(Opts {
        data_dir: Some(data),
        ..Opts::default()
    })
    .unwrap();
    let im = second.cli(&["space", "import", file]);
    assert!(
        im.status.success(),
        "{}",
        String::from_utf8_lossy(&im.stderr)
    );
    let again = second.cli(&["space", "import", file]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already here"), "{err}");
    let mut reader = Peer::connect(&second, &did, &key(1), "alice-2").await;
    let mut copy = Automerge::new();
    reader
        .sync(ROOT_ID, &mut copy, &mut sync::State::new())
        .await;
    assert_eq!(get(&copy, "note").as_deref(), Some("still here"));

    // Metrics and status.
    let m = kube.metrics().await;
    assert!(m.contains("kube_echo_spaces 1"), "{m}");
    assert!(m.contains("kube_echo_documents 2"));
    assert!(
        m.contains("kube_echo_refused_total{reason=\"malformed\"} 10"),
        "{m}"
    );
    assert!(
        m.contains("kube_echo_refused_total{reason=\"not-member\"} 1"),
        "{m}"
    );
    let status = kube.api(reqwest::Method::GET, "/api/status").await;
    assert_eq!(status["echo"]["spaces"], 1);
}

/// A change a peer sends just before it leaves is kept, also when the document has to be
/// read from disk first (`echo.cache_bytes: 1` lets it go after every batch, so the change
/// waits for a read while the connection closes).
#[tokio::test(flavor = "multi_thread")]
async fn a_change_sent_just_before_leaving_is_kept() {
    let kube = Kube::start_with(Opts {
        env: vec![("KUBE_ECHO_CACHE_BYTES".into(), "1".into())],
        ..Opts::default()
    })
    .unwrap();
    let did = kube_did(&kube).await;
    let (_space, mut root) = space_root(&did);
    let mut st = sync::State::new();
    let mut alice = Peer::connect(&kube, &did, &key(1), "alice").await;
    assert!(alice.sync(ROOT_ID, &mut root, &mut st).await);
    for round in 0..20 {
        // The document is let go after the acknowledgement; the next change reads it back.
        tokio::time::sleep(Duration::from_millis(20)).await;
        set(&mut root, &format!("late{round}"), "kept");
        alice.send_and_leave(ROOT_ID, &root, &mut st).await;
        let mut bob = Peer::connect(&kube, &did, &key(1), &format!("bob{round}")).await;
        let got = bob
            .fetch_many(&[ROOT_ID.to_owned()], &format!("late{round}"), 1)
            .await;
        assert_eq!(
            got.get(ROOT_ID)
                .and_then(|d| get(d, &format!("late{round}")))
                .as_deref(),
            Some("kept"),
            "round {round}"
        );
        alice = Peer::connect(&kube, &did, &key(1), &format!("alice{round}")).await;
        st = sync::State::new();
        assert!(alice.sync(ROOT_ID, &mut root, &mut st).await);
    }
}

/// 100 rounds of: two changes acknowledged by KUBE, `kill -9`, restart on the same data
/// dir, and a fresh peer finding every acknowledged change (across log appends and
/// compactions). `echo.cache_bytes` is 1, so KUBE lets the document go after every batch:
/// the second change of each round lands on a document read back from disk after the
/// first, and no index is ever current after a `kill -9`.
#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_changes_survive_kill_9() {
    const ROUNDS: usize = 100;
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let opts = || Opts {
        data_dir: Some(data_dir.clone()),
        env: vec![("KUBE_ECHO_CACHE_BYTES".into(), "1".into())],
        ..Opts::default()
    };
    let mut kube = Kube::start_with(opts()).unwrap();
    let did = kube_did(&kube).await;
    let (_space, mut root) = space_root(&did);
    let started = Instant::now();
    for round in 0..ROUNDS {
        let mut alice = Peer::connect(&kube, &did, &key(1), &format!("alice-{round}")).await;
        // About 2 KiB a round, so the log is compacted into snapshots several times.
        let mut state = sync::State::new();
        set(&mut root, &format!("k{round}"), &format!("v{round}"));
        assert!(
            alice.sync(ROOT_ID, &mut root, &mut state).await,
            "round {round}: not acknowledged: {:?}",
            alice.errors
        );
        set(&mut root, &format!("pad{round}"), &"x".repeat(2048));
        assert!(
            alice.sync(ROOT_ID, &mut root, &mut state).await,
            "round {round}: second change not acknowledged: {:?}",
            alice.errors
        );
        if round == 0 {
            let m = kube.metrics().await;
            let loads = m
                .lines()
                .find_map(|l| l.strip_prefix("kube_echo_document_loads_total "))
                .and_then(|v| v.trim().parse::<u64>().ok());
            assert!(
                loads.is_some_and(|n| n >= 1),
                "read back from disk: {loads:?}"
            );
        }
        // Killed right after the acknowledgement, with the socket still open.
        kube.kill();
        drop(alice);
        kube = Kube::start_with(opts())
            .unwrap_or_else(|log| panic!("round {round}: restart failed:\n{log}"));
        let mut check = Peer::connect(&kube, &did, &key(1), &format!("check-{round}")).await;
        let mut copy = Automerge::new();
        check
            .sync(ROOT_ID, &mut copy, &mut sync::State::new())
            .await;
        for i in 0..=round {
            assert_eq!(
                get(&copy, &format!("k{i}")),
                Some(format!("v{i}")),
                "round {round}: change {i} lost"
            );
        }
    }
    eprintln!("{ROUNDS} kill -9 rounds in {:?}", started.elapsed());
}

/// Peak resident memory of a process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// Issue 14 (3): one frame of 2 MiB that Automerge would inflate to 2 GiB, sent by a
/// stranger with a key for a document nobody has: refused before it is inflated, KUBE's
/// peak memory stays low, and every other service keeps answering.
#[tokio::test(flavor = "multi_thread")]
async fn a_decompression_bomb_does_not_raise_kubes_memory() {
    let kube = Kube::start();
    let did = kube_did(&kube).await;
    let mut p = Peer::connect(&kube, &did, &key(8), "stranger").await;
    let before = peak_rss(kube.pid());
    let mut m = Automerge::new()
        .generate_sync_message(&mut sync::State::new())
        .unwrap();
    m.changes = echo::bound::compressed_chunk(&echo::bound::zeros_bomb(2048)).into();
    let data = m.encode();
    assert!(data.len() < 4 << 20);
    p.send(frame(vec![
        ("type", t("sync")),
        ("senderId", t("stranger")),
        ("targetId", t("kube")),
        ("documentId", t(TASK_ID)),
        ("data", Value::Bytes(data)),
    ]))
    .await;
    while p.errors.is_empty() && p.recv(Duration::from_secs(20)).await.is_some() {}
    assert!(
        p.errors.iter().any(|e| e.contains("inflates to more than")),
        "{:?}",
        p.errors
    );
    let after = peak_rss(kube.pid());
    assert!(
        after < before + (256 << 20),
        "peak RSS grew from {before} to {after} bytes"
    );
    let ready = kube
        .client()
        .get(kube.admin_url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert!(!kube.log().contains("panicked"));
}
