//! Fuzz targets for what ECHO reads from the network: frames (`wire::decode`), the
//! connection token (`auth::Verifier::verify`), and whole frames through `Echo::receive` on
//! authenticated connections of an admin, a reader and a stranger. Ignored by `cargo test`;
//! `bench/fuzz/run` runs them in an optimized build with `PROPTEST_CASES` cases each.
//!
//! Inputs are arbitrary bytes and valid messages under byte-level mutations; the checks go
//! beyond "no panic": decoded frames re-encode to themselves, a token that verifies names
//! the key and peer that signed it, and a reader's or stranger's frames never change a
//! space nor receive its documents.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{Automerge, ObjType, ROOT};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ciborium::Value;
use echo::auth::{self, Verifier};
use echo::store::Write;
use echo::wire::{self, Incoming, Outgoing};
use echo::{Action, ConnId, Echo, Limits};
use halo::admission::Admit;
use halo::credential::{Assertion, Credential, Role};
use proptest::prelude::*;

// ---------------------------------------------------------------- mutations

#[path = "../../bench/fuzz/mutate.rs"]
mod mutations;
use mutations::config;

/// Overwrites favour these bytes (the format's delimiters and edges).
const SPECIAL: &[u8] = &[0, 0xff, 0x7f, 0x80, 0x01, b'"'];

fn bytes_from(templates: Vec<Vec<u8>>, max_random: usize) -> impl Strategy<Value = Vec<u8>> {
    mutations::bytes_from(templates, max_random, SPECIAL)
}

// ---------------------------------------------------------------- a space and its peers

const NOW: u64 = 1_700_000_000_000;
const ROOT_ID: &str = "RootRootRootRootRootRoot";
const OBJ_ID: &str = "TaskTaskTaskTaskTaskTask";
/// Every recorded client uses this automerge-repo peer id, so any template fits any
/// connection.
const PEER: &str = "fuzz-peer";

fn key(seed: u8) -> halo::SigningKey {
    halo::SigningKey::from_bytes(&[seed; 32])
}

const SPACE_KEY: u8 = 3;
const ADMIN: u8 = 1;
const KUBE: u8 = 9;
const READER: u8 = 6;
const STRANGER: u8 = 7;

fn says(issuer: &halo::SigningKey, subject: &str, a: Assertion) -> Credential {
    use ed25519_dalek::Signer;
    let did = halo::did(issuer);
    Credential::issue(&did, subject, a, NOW / 1000 - 10, None, &did, |b| {
        issuer.sign(b).to_bytes()
    })
    .expect("a credential issues")
}

fn frame(pairs: Vec<(&str, Value)>) -> Vec<u8> {
    let map = pairs
        .into_iter()
        .map(|(k, v)| (Value::Text(k.into()), v))
        .collect();
    let mut out = Vec::new();
    ciborium::into_writer(&Value::Map(map), &mut out).expect("CBOR into memory");
    out
}

fn t(s: &str) -> Value {
    Value::Text(s.into())
}

fn join_frame() -> Vec<u8> {
    frame(vec![
        ("type", t("join")),
        ("senderId", t(PEER)),
        ("peerMetadata", Value::Map(vec![])),
        ("supportedProtocolVersions", Value::Array(vec![t("1")])),
    ])
}

/// A client: its documents and sync states, the frames it sent (templates).
#[derive(Default)]
struct Client {
    docs: HashMap<String, (Automerge, sync::State)>,
    sent: Vec<Vec<u8>>,
}

impl Client {
    fn send(&mut self, echo: &mut Echo, conn: ConnId, f: Vec<u8>) -> Vec<Action> {
        let actions = echo.receive(conn, &f, NOW);
        self.sent.push(f);
        for a in &actions {
            if let Action::Send { conn: c, bytes } = a
                && *c == conn
            {
                self.take(bytes);
            }
        }
        actions
    }

    fn take(&mut self, bytes: &[u8]) {
        let Ok(Value::Map(map)) = ciborium::from_reader::<Value, _>(bytes) else {
            return;
        };
        let get = |k: &str| {
            map.iter()
                .find(|(kk, _)| kk.as_text() == Some(k))
                .map(|(_, v)| v)
        };
        if get("type").and_then(Value::as_text) != Some("sync") {
            return;
        }
        let (Some(id), Some(data)) = (
            get("documentId").and_then(Value::as_text),
            get("data").and_then(Value::as_bytes),
        ) else {
            return;
        };
        let (am, st) = self.docs.entry(id.to_owned()).or_default();
        if let Ok(m) = sync::Message::decode(data) {
            let _ = am.receive_sync_message(st, m);
        }
    }

    /// Plays the sync of `id` until quiet.
    fn sync(&mut self, echo: &mut Echo, conn: ConnId, id: &str) {
        for _ in 0..20 {
            let (am, st) = self.docs.entry(id.to_owned()).or_default();
            let Some(m) = am.generate_sync_message(st) else {
                break;
            };
            let kind = if am.get_heads().is_empty() {
                "request"
            } else {
                "sync"
            };
            let f = frame(vec![
                ("type", t(kind)),
                ("senderId", t(PEER)),
                ("targetId", t("kube")),
                ("documentId", t(id)),
                ("data", Value::Bytes(m.encode())),
            ]);
            let actions = self.send(echo, conn, f);
            if !actions.iter().any(|a| matches!(a, Action::Send { .. })) {
                break;
            }
        }
    }
}

/// ECHO holding one space (root and one object) brought by its admin, every connection
/// gone; and the frames the admin, a reader and a stranger sent to get there.
struct World {
    echo: Echo,
    space: String,
    admin_frames: Vec<Vec<u8>>,
    other_frames: Vec<Vec<u8>>,
}

fn world() -> World {
    let space_key = key(SPACE_KEY);
    let admin = key(ADMIN);
    let space = halo::did(&space_key);
    let creds = [
        says(
            &space_key,
            &halo::did(&admin),
            Assertion::SpaceGenesis {
                space: space.clone(),
            },
        ),
        says(
            &admin,
            &halo::did(&key(KUBE)),
            Assertion::SpaceMember {
                space: space.clone(),
                role: Role::Replicator,
            },
        ),
        says(
            &admin,
            &halo::did(&key(READER)),
            Assertion::SpaceMember {
                space: space.clone(),
                role: Role::Reader,
            },
        ),
    ];
    let mut echo = Echo::new(halo::did(&key(KUBE)), Admit::Any, Limits::default());
    let connect = |echo: &mut Echo, conn: ConnId, k: u8| {
        echo.connect(
            conn,
            auth::Peer {
                did: halo::did(&key(k)),
                peer: PEER.into(),
            },
            NOW,
        );
    };

    // The admin brings the root, then the object it lists.
    let mut alice = Client::default();
    connect(&mut echo, 1, ADMIN);
    alice.send(&mut echo, 1, join_frame());
    let mut obj = Automerge::new();
    {
        let mut tx = obj.transaction();
        tx.put(ROOT, "type", "task").unwrap();
        tx.put(ROOT, "title", "fuzz").unwrap();
        tx.commit();
    }
    let mut root = Automerge::new();
    {
        let mut tx = root.transaction();
        tx.put(ROOT, "kube", "space").unwrap();
        tx.put(ROOT, "space", space.as_str()).unwrap();
        let c = tx.put_object(ROOT, "credentials", ObjType::Map).unwrap();
        for cred in &creds {
            tx.put(&c, cred.id.as_str(), serde_json::to_string(cred).unwrap())
                .unwrap();
        }
        let objects = tx.put_object(ROOT, "objects", ObjType::Map).unwrap();
        let o = tx.put_object(&objects, OBJ_ID, ObjType::Map).unwrap();
        tx.put(&o, "type", "task").unwrap();
        tx.commit();
    }
    alice
        .docs
        .insert(ROOT_ID.into(), (root, sync::State::new()));
    alice.sync(&mut echo, 1, ROOT_ID);
    alice.docs.insert(OBJ_ID.into(), (obj, sync::State::new()));
    alice.sync(&mut echo, 1, OBJ_ID);
    assert_eq!(
        (echo.space_count(), echo.doc_count()),
        (1, 2),
        "the admin's space is accepted"
    );
    // An edit, and a document nobody lists.
    if let Some((am, _)) = alice.docs.get_mut(OBJ_ID) {
        let mut tx = am.transaction();
        tx.put(ROOT, "title", "edited").unwrap();
        tx.commit();
    }
    alice.sync(&mut echo, 1, OBJ_ID);
    let mut stray = Automerge::new();
    {
        let mut tx = stray.transaction();
        tx.put(ROOT, "x", 1).unwrap();
        tx.commit();
    }
    alice
        .docs
        .insert("StrayStrayStrayStray".into(), (stray, sync::State::new()));
    alice.sync(&mut echo, 1, "StrayStrayStrayStray");

    // A reader reads both, then tries to write; a stranger asks for them.
    let mut others = Client::default();
    connect(&mut echo, 2, READER);
    others.send(&mut echo, 2, join_frame());
    others.sync(&mut echo, 2, ROOT_ID);
    others.sync(&mut echo, 2, OBJ_ID);
    if let Some((am, _)) = others.docs.get_mut(OBJ_ID) {
        let mut tx = am.transaction();
        tx.put(ROOT, "title", "graffiti").unwrap();
        tx.commit();
    }
    others.sync(&mut echo, 2, OBJ_ID);
    for (kind, extra) in [
        ("ephemeral", true),
        ("doc-unavailable", false),
        ("remote-heads-changed", false),
    ] {
        let mut pairs = vec![
            ("type", t(kind)),
            ("senderId", t(PEER)),
            ("targetId", t("kube")),
            ("documentId", t(OBJ_ID)),
        ];
        if extra {
            pairs.push(("sessionId", t("s1")));
            pairs.push(("count", Value::Integer(3.into())));
            pairs.push(("data", Value::Bytes(vec![1, 2, 3])));
        }
        others.send(&mut echo, 2, frame(pairs));
    }
    let mut stranger = Client::default();
    connect(&mut echo, 3, STRANGER);
    stranger.send(&mut echo, 3, join_frame());
    stranger.sync(&mut echo, 3, ROOT_ID);
    stranger.sync(&mut echo, 3, OBJ_ID);
    for c in 1..=3 {
        echo.disconnect(c);
    }
    let mut other_frames = others.sent;
    other_frames.extend(stranger.sent);
    // The admin's frames replayed by others are the most interesting of all.
    other_frames.extend(alice.sent.iter().cloned());
    World {
        echo,
        space,
        admin_frames: alice.sent,
        other_frames,
    }
}

/// The (did, role) pairs of the space's members.
fn members(echo: &Echo, space: &str) -> Vec<(String, Role)> {
    let mut m: Vec<_> = echo
        .show(space)
        .map(|d| d.members.into_iter().map(|m| (m.key, m.role)).collect())
        .unwrap_or_default();
    m.sort();
    m
}

fn field(bytes: &[u8], key: &str) -> Option<String> {
    let Ok(Value::Map(map)) = ciborium::from_reader::<Value, _>(bytes) else {
        return None;
    };
    map.iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .and_then(|(_, v)| v.as_text())
        .map(str::to_owned)
}

// ---------------------------------------------------------------- what the driver survives

/// Panics in `Echo::receive` caught as `kube/src/replica.rs` catches them (the peer loses
/// its connection, ECHO goes on): how many of each message, and the first one's frame.
static PANICS: AtomicU64 = AtomicU64::new(0);
static PANIC_KINDS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
static FIRST_PANIC: Mutex<Option<String>> = Mutex::new(None);
/// Frames not fed because automerge would allocate 4 bytes per Bloom probe they ask for
/// (see `bloom_probes`), and the first of them.
static BLOOMS: AtomicU64 = AtomicU64::new(0);
static FIRST_BLOOM: Mutex<Option<String>> = Mutex::new(None);
/// Probes above this are a resource-exhaustion finding, not fed (they would take the
/// machine's memory: up to 2^32 probes, 16 GiB, per change hash).
const MAX_PROBES: u64 = 100_000;

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Silences the panic message of a panic the harness catches on purpose.
fn quiet_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let loud = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                loud(info);
            }
        }));
    });
}

fn first(slot: &Mutex<Option<String>>, what: impl FnOnce() -> String) {
    let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
    if s.is_none() {
        *s = Some(what());
    }
}

fn uleb(b: &mut &[u8]) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let Some((&x, rest)) = b.split_first() else {
            break;
        };
        *b = rest;
        v |= u64::from(x & 0x7f) << shift;
        if x & 0x80 == 0 {
            break;
        }
    }
    v
}

/// The most Bloom probes a sync frame's `have` filters ask for: automerge 0.12
/// (`sync/bloom.rs`, `get_probes`) allocates that many `u32`s for every change hash it
/// checks against the filter, unbounded by the message's size.
fn bloom_probes(frame: &[u8]) -> u64 {
    let Ok(Incoming::Sync { data, .. }) = wire::decode(frame) else {
        return 0;
    };
    let Ok(m) = sync::Message::decode(&data) else {
        return 0;
    };
    m.have
        .iter()
        .map(|h| {
            let bytes = h.bloom.to_bytes();
            let mut b = &bytes[..];
            let (entries, _bits, probes) = (uleb(&mut b), uleb(&mut b), uleb(&mut b));
            if entries == 0 { 0 } else { probes }
        })
        .max()
        .unwrap_or(0)
}

fn report() {
    let panics = PANICS.load(Ordering::Relaxed);
    if panics > 0 {
        let f = FIRST_PANIC.lock().unwrap_or_else(|p| p.into_inner());
        let kinds = PANIC_KINDS.lock().unwrap_or_else(|p| p.into_inner());
        eprintln!(
            "\nFUZZ-NOTE: {panics} panics in Echo::receive, caught as the driver catches them \
             ({kinds:?}); first: {}",
            f.as_deref().unwrap_or("")
        );
    }
    let blooms = BLOOMS.load(Ordering::Relaxed);
    if blooms > 0 {
        let f = FIRST_BLOOM.lock().unwrap_or_else(|p| p.into_inner());
        eprintln!(
            "\nFUZZ-NOTE: {blooms} frames not fed: a Bloom filter asking for over {MAX_PROBES} probes per hash; first: {}",
            f.as_deref().unwrap_or("")
        );
    }
}

thread_local! {
    static WORLD: RefCell<Option<World>> = const { RefCell::new(None) };
    static TEMPLATES: (Vec<Vec<u8>>, Vec<Vec<u8>>) = {
        let w = world();
        (w.admin_frames, w.other_frames)
    };
    static NEXT: RefCell<ConnId> = const { RefCell::new(100) };
}

fn admin_templates() -> Vec<Vec<u8>> {
    TEMPLATES.with(|t| t.0.clone())
}

fn other_templates() -> Vec<Vec<u8>> {
    TEMPLATES.with(|t| t.1.clone())
}

/// Feeds `frames` to a fresh connection of `who` on the shared world; `Err` names the
/// broken invariant. The world is rebuilt after a case that changed it (only an admin's
/// frames may), so every case starts from the same state.
fn receive_case(who: u8, join: bool, frames: &[Vec<u8>]) -> Result<(), String> {
    WORLD.with(|cell| {
        let mut slot = cell.borrow_mut();
        let w = slot.get_or_insert_with(world);
        let conn = NEXT.with(|n| {
            let mut n = n.borrow_mut();
            *n += 1;
            *n
        });
        let before = members(&w.echo, &w.space);
        w.echo.connect(
            conn,
            auth::Peer {
                did: halo::did(&key(who)),
                peer: PEER.into(),
            },
            NOW,
        );
        let mut changed = false;
        let mut result = Ok(());
        let mut now = NOW;
        let mut all = Vec::new();
        if join {
            all.extend(w.echo.receive(conn, &join_frame(), now));
        }
        for f in frames {
            now += 7;
            let probes = bloom_probes(f);
            if probes > MAX_PROBES {
                BLOOMS.fetch_add(1, Ordering::Relaxed);
                first(&FIRST_BLOOM, || {
                    format!("{probes} probes in frame {f:02x?}")
                });
                continue;
            }
            QUIET.with(|q| q.set(true));
            let step = std::panic::catch_unwind(AssertUnwindSafe(|| w.echo.receive(conn, f, now)));
            QUIET.with(|q| q.set(false));
            match step {
                Ok(actions) => all.extend(actions),
                Err(payload) => {
                    PANICS.fetch_add(1, Ordering::Relaxed);
                    let msg = payload
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    *PANIC_KINDS
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(msg.clone())
                        .or_default() += 1;
                    first(&FIRST_PANIC, || format!("{msg:?} on frame {f:02x?}"));
                    // The driver closes the connection and goes on with the same Echo; the
                    // checks below look at that Echo, then the next case starts afresh.
                    changed = true;
                    break;
                }
            }
        }
        all.extend(w.echo.tick(now + 120_000));
        for a in &all {
            match a {
                Action::Store(write) => {
                    changed = true;
                    let doc = match write {
                        Write::NewSpace { root, .. } => root,
                        Write::Append { doc, .. } | Write::Snapshot { doc, .. } => doc,
                    };
                    if !wire::valid_doc_id(doc) {
                        result = Err(format!("a write to an unsafe document id {doc:?}"));
                    } else if who != ADMIN {
                        result = Err(format!("a peer who may not write stored {write:?}"));
                    }
                }
                Action::Send { conn: c, bytes } => {
                    if *c != conn {
                        result = Err(format!("a send to connection {c}, not the sender"));
                    }
                    let doc = field(bytes, "documentId");
                    if who == STRANGER
                        && field(bytes, "type").as_deref() == Some("sync")
                        && matches!(doc.as_deref(), Some(ROOT_ID | OBJ_ID))
                    {
                        result = Err(format!("a stranger was sent {doc:?}"));
                    }
                }
                Action::Close { conn: c } if *c != conn => {
                    result = Err(format!("connection {c} closed by another's frames"));
                }
                Action::Close { .. } => {}
            }
        }
        w.echo.disconnect(conn);
        if result.is_ok() {
            let after = members(&w.echo, &w.space);
            if before.iter().any(|m| !after.contains(m)) {
                result = Err(format!("members lost: {before:?} → {after:?}"));
            } else if who != ADMIN && after != before {
                result = Err(format!("membership changed: {before:?} → {after:?}"));
            } else if w.echo.peers() != 0 {
                result = Err("a connection outlived its disconnect".into());
            }
        }
        if changed {
            *slot = None;
        }
        result
    })
}

// ---------------------------------------------------------------- templates

fn wire_templates() -> Vec<Vec<u8>> {
    let mut out = admin_templates();
    out.extend(other_templates());
    for msg in [
        Outgoing::Peer { storage_id: "st" },
        Outgoing::Sync {
            doc: OBJ_ID,
            data: vec![0x42, 1, 2],
        },
        Outgoing::DocUnavailable { doc: ROOT_ID },
        Outgoing::Ephemeral {
            sender: "p",
            doc: OBJ_ID,
            session: "s",
            count: u64::MAX,
            data: &[9; 40],
        },
        Outgoing::Error { message: "m" },
    ] {
        out.push(wire::encode("kube", "p", &msg));
    }
    out.push(frame(vec![
        ("type", t("ephemeral")),
        ("senderId", t("p")),
        ("documentId", t(OBJ_ID)),
        ("sessionId", t("s")),
        ("count", Value::Integer((-1).into())),
        ("data", Value::Bytes(vec![])),
    ]));
    out.push(frame(vec![
        ("type", t("sync")),
        ("senderId", Value::Integer(1.into())),
        ("documentId", Value::Bytes(b"../x".to_vec())),
        ("data", t("not bytes")),
    ]));
    // Deep nesting and a tag: what a CBOR decoder must survive.
    let mut deep = vec![0x81u8; 200];
    deep.push(0xa0);
    out.push(deep);
    out.push(vec![0xc0, 0x74, b'2', b'0', b'1', b'3']);
    out.push(vec![0x5f, 0x41, 0, 0xff]);
    out
}

/// Re-encodes a decoded frame; decoding that again must give the same message.
fn round_trip(msg: &Incoming) -> Option<Incoming> {
    let bytes = match msg {
        Incoming::Sync {
            sender,
            doc,
            data,
            request: false,
        } => wire::encode(
            sender,
            "x",
            &Outgoing::Sync {
                doc,
                data: data.clone(),
            },
        ),
        Incoming::DocUnavailable { sender, doc } => {
            wire::encode(sender, "x", &Outgoing::DocUnavailable { doc })
        }
        Incoming::Ephemeral {
            sender,
            doc,
            session,
            count,
            data,
        } => wire::encode(
            "kube",
            "x",
            &Outgoing::Ephemeral {
                sender,
                doc,
                session,
                count: *count,
                data,
            },
        ),
        _ => return None,
    };
    Some(wire::decode(&bytes).expect("our own encoding decodes"))
}

const AUD: &str = "did:key:z6MkkUbMHTdQJtCzJ2rB8wRqXf3Sp2ycXhnPDtybH7SbLQFD";
const NONCE: &str = "00112233445566778899aabbccddeeff";

fn token_templates() -> Vec<Vec<u8>> {
    let aud = halo::did(&key(KUBE));
    let mut out = vec![
        auth::token(&key(ADMIN), &aud, "peer-a", NOW / 1000, NONCE).into_bytes(),
        auth::token(&key(READER), &aud, "p", NOW / 1000 - 59, &"f".repeat(64)).into_bytes(),
        auth::token(&key(ADMIN), AUD, "peer-a", NOW / 1000, NONCE).into_bytes(),
    ];
    // The JSON inside, for mutations that keep the base64 valid (re-encoded after).
    let json: Vec<Vec<u8>> = out
        .iter()
        .map(|t| URL_SAFE_NO_PAD.decode(t).expect("our token is base64url"))
        .collect();
    out.extend(json);
    out
}

fn token_input() -> impl Strategy<Value = String> {
    (bytes_from(token_templates(), 600), any::<bool>()).prop_map(|(b, reencode)| {
        // Mutated JSON (the second half of the templates) is sent base64url-encoded.
        if reencode && b.first() == Some(&b'{') {
            URL_SAFE_NO_PAD.encode(&b)
        } else {
            String::from_utf8_lossy(&b).into_owned()
        }
    })
}

fn frames(templates: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::vec(bytes_from(templates, 256), 1..5)
}

proptest! {
    #![proptest_config(config())]

    /// `wire::decode` is total, gives only safe document ids, and what it decodes
    /// re-encodes to the same message.
    #[test]
    #[ignore = "fuzz: bench/fuzz/run"]
    fn fuzz_wire_decode(bytes in bytes_from(wire_templates(), 512)) {
        if let Ok(msg) = wire::decode(&bytes) {
            match &msg {
                Incoming::Sync { doc, .. }
                | Incoming::DocUnavailable { doc, .. }
                | Incoming::Ephemeral { doc, .. } => {
                    prop_assert!(wire::valid_doc_id(doc), "unsafe id {doc:?}");
                }
                _ => {}
            }
            if let Some(again) = round_trip(&msg) {
                prop_assert_eq!(again, msg);
            }
        }
    }

    /// `auth::Verifier::verify` never panics, and a token that verifies names the key
    /// and peer that signed it (mutations never forge another identity).
    #[test]
    #[ignore = "fuzz: bench/fuzz/run"]
    fn fuzz_echo_token(token in token_input(), missing in proptest::bool::weighted(0.01)) {
        let mut v = Verifier::new(halo::did(&key(KUBE)), 60);
        let got = v.verify((!missing).then_some(token.as_str()), NOW / 1000);
        if let Ok(p) = got {
            let signed_by = [halo::did(&key(ADMIN)), halo::did(&key(READER))];
            prop_assert!(signed_by.contains(&p.did), "{p:?} from {token}");
            prop_assert!(p.peer == "peer-a" || p.peer == "p", "{p:?} from {token}");
            prop_assert_eq!(
                v.verify(Some(&token), NOW / 1000),
                Err(auth::AuthError::Replayed)
            );
        }
    }

}

/// Runs `receive_case` over `inputs`; panics inside `Echo::receive` are counted and
/// reported (`FUZZ-NOTE`), as the driver survives them; a broken invariant fails.
fn run_receive(inputs: impl Strategy<Value = (u8, bool, Vec<Vec<u8>>)>) {
    quiet_panics();
    let mut runner = proptest::test_runner::TestRunner::new(config());
    let result = runner.run(&inputs, |(who, join, frames)| {
        let r = receive_case(who, join, &frames);
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
        Ok(())
    });
    report();
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// `Echo::receive` on a reader's or a stranger's connection (joined or not): no write, no
/// membership change, sends only to that connection, and a stranger is never sent the
/// space's documents.
#[test]
#[ignore = "fuzz: bench/fuzz/run"]
fn fuzz_echo_receive_reader_stranger() {
    run_receive(
        (
            any::<bool>(),
            proptest::bool::weighted(0.9),
            frames(other_templates()),
        )
            .prop_map(|(stranger, join, f)| (if stranger { STRANGER } else { READER }, join, f)),
    );
}

/// `Echo::receive` on the admin's connection with the admin's own frames mutated: writes
/// only to safe document ids, no member ever lost.
#[test]
#[ignore = "fuzz: bench/fuzz/run"]
fn fuzz_echo_receive_admin() {
    run_receive(
        (proptest::bool::weighted(0.9), frames(admin_templates()))
            .prop_map(|(join, f)| (ADMIN, join, f)),
    );
}

/// A reader's sync frame for the root whose `have` Bloom filter is `bloom` (its encoding:
/// entries, bits per entry, probes as LEB128, then the bits).
fn bloom_frame(bloom: &[u8]) -> Vec<u8> {
    let one = automerge::sync::BloomFilter::from_hashes([automerge::ChangeHash([1; 32])].iter());
    let mut m = Automerge::new()
        .generate_sync_message(&mut sync::State::new())
        .expect("a first message");
    m.have = vec![sync::Have {
        last_sync: vec![],
        bloom: one.clone(),
    }];
    // Heads KUBE lacks: with none, automerge would send the whole document and never look
    // at the filter.
    m.heads = vec![automerge::ChangeHash([2; 32])];
    let mut data = m.encode();
    // One entry, 10 bits per entry, 7 probes: five bytes after their length.
    let honest = [&[5u8][..], &one.to_bytes()].concat();
    let at = data
        .windows(honest.len())
        .position(|w| w == honest.as_slice())
        .expect("the filter in the encoding");
    let mut patched = vec![u8::try_from(bloom.len()).expect("a short filter")];
    patched.extend_from_slice(bloom);
    data.splice(at..at + honest.len(), patched);
    frame(vec![
        ("type", t("sync")),
        ("senderId", t(PEER)),
        ("targetId", t("kube")),
        ("documentId", t(ROOT_ID)),
        ("data", Value::Bytes(data)),
    ])
}

/// Finding (SECURITY.md, fixed): a member's sync message whose Bloom filter asks for 2^32 − 1
/// probes made automerge 0.12 allocate 16 GiB per change hash it checks
/// (`BloomFilter::get_probes`), an abort no `catch_unwind` stops; and one with zero bits per
/// entry made it divide by zero. ECHO refuses both before automerge sees them.
#[test]
fn finding_bloom_filters_out_of_bounds_are_refused() {
    for (bloom, want) in [
        (
            &[1, 10, 0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0][..],
            u64::from(u32::MAX),
        ),
        (&[1, 0, 7][..], 7),
    ] {
        let f = bloom_frame(bloom);
        assert_eq!(bloom_probes(&f), want);
        let mut w = world();
        w.echo.connect(
            50,
            auth::Peer {
                did: halo::did(&key(READER)),
                peer: PEER.into(),
            },
            NOW,
        );
        w.echo.receive(50, &join_frame(), NOW);
        let a = w.echo.receive(50, &f, NOW);
        assert!(
            a.iter().any(|a| matches!(a, Action::Send { bytes, .. }
                if String::from_utf8_lossy(bytes).contains("Bloom filter"))),
            "{a:?}"
        );
    }
}

/// The templates are what they claim: the world builds, unmutated frames pass.
#[test]
#[ignore = "fuzz: bench/fuzz/run"]
fn fuzz_templates_are_valid() {
    assert!(admin_templates().len() >= 3);
    for f in other_templates() {
        receive_case(READER, true, std::slice::from_ref(&f)).unwrap();
        receive_case(STRANGER, true, &[f]).unwrap();
    }
    receive_case(ADMIN, true, &admin_templates()).unwrap();
    for tok in &token_templates()[..2] {
        let tok = std::str::from_utf8(tok).unwrap();
        let mut v = Verifier::new(halo::did(&key(KUBE)), 60);
        v.verify(Some(tok), NOW / 1000).unwrap();
    }
    for f in wire_templates() {
        let _ = wire::decode(&f);
    }
    assert_eq!(bloom_probes(&bloom_frame(&[1, 10, 7, 0, 0])), 7);
}
