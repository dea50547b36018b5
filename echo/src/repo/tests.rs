//! The peer without sockets: Automerge clients exchanging frames with [`Echo`] directly.

use automerge::transaction::Transactable;
use automerge::{ObjType, ROOT, ReadDoc};
use ciborium::Value;
use halo::credential::Assertion;
use proptest::prelude::*;

use super::*;

const NOW: u64 = 1_700_000_000_000;

fn key(seed: u8) -> halo::SigningKey {
    halo::SigningKey::from_bytes(&[seed; 32])
}

fn says(issuer: &halo::SigningKey, subject: &str, a: Assertion) -> Credential {
    use ed25519_dalek::Signer;
    let did = halo::did(issuer);
    Credential::issue(&did, subject, a, NOW / 1000 - 10, None, &did, |b| {
        issuer.sign(b).to_bytes()
    })
    .unwrap()
}

fn member(space: &str, role: Role) -> Assertion {
    Assertion::SpaceMember {
        space: space.to_owned(),
        role,
    }
}

/// A space: key 3, admin 1 (genesis), KUBE (key 9) as replicator.
struct World {
    space: String,
    admin: halo::SigningKey,
    creds: Vec<Credential>,
}

fn world() -> World {
    let space_key = key(3);
    let admin = key(1);
    let space = halo::did(&space_key);
    let genesis = says(
        &space_key,
        &halo::did(&admin),
        Assertion::SpaceGenesis {
            space: space.clone(),
        },
    );
    let kube = says(
        &admin,
        &halo::did(&key(9)),
        member(&space, Role::Replicator),
    );
    World {
        space,
        admin,
        creds: vec![genesis, kube],
    }
}

fn echo() -> Echo {
    Echo::new(halo::did(&key(9)), Admit::Any, Limits::default())
}

/// A client: a peer id, its documents and sync states, talking to `echo` as `conn`.
struct Client {
    conn: ConnId,
    peer: String,
    docs: HashMap<String, (Automerge, sync::State)>,
    errors: Vec<String>,
    unavailable: Vec<String>,
    closed: bool,
}

fn frame(pairs: Vec<(&str, Value)>) -> Vec<u8> {
    let map = pairs
        .into_iter()
        .map(|(k, v)| (Value::Text(k.into()), v))
        .collect();
    let mut out = Vec::new();
    ciborium::into_writer(&Value::Map(map), &mut out).unwrap();
    out
}

fn t(s: &str) -> Value {
    Value::Text(s.into())
}

impl Client {
    fn join(echo: &mut Echo, conn: ConnId, k: &halo::SigningKey) -> Client {
        let peer = format!("peer-{conn}");
        echo.connect(
            conn,
            auth::Peer {
                did: halo::did(k),
                peer: peer.clone(),
            },
            NOW,
        );
        let mut c = Client {
            conn,
            peer: peer.clone(),
            docs: HashMap::new(),
            errors: vec![],
            unavailable: vec![],
            closed: false,
        };
        let join = frame(vec![
            ("type", t("join")),
            ("senderId", t(&peer)),
            ("peerMetadata", Value::Map(vec![])),
            ("supportedProtocolVersions", Value::Array(vec![t("1")])),
        ]);
        let actions = echo.receive(conn, &join, NOW);
        assert!(matches!(&actions[..], [Action::Send { .. }]));
        c.absorb(echo, actions);
        c
    }

    fn doc(&mut self, id: &str) -> &mut Automerge {
        &mut self.docs.entry(id.to_owned()).or_default().0
    }

    /// Sends what this client has of `id` and plays the exchange until quiet; returns every
    /// action KUBE produced, in order.
    fn sync(&mut self, echo: &mut Echo, id: &str) -> Vec<Action> {
        let mut all = Vec::new();
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
            let actions = self.send(echo, kind, id, m);
            let progressed = actions.iter().any(|a| matches!(a, Action::Send { .. }));
            all.extend(actions);
            if !progressed || self.closed {
                break;
            }
        }
        all
    }

    /// Sends one sync message (`kind` "sync" or "request") for `id` as it is, and applies
    /// KUBE's answers; returns the actions.
    fn send(&mut self, echo: &mut Echo, kind: &str, id: &str, m: sync::Message) -> Vec<Action> {
        let f = frame(vec![
            ("type", t(kind)),
            ("senderId", t(&self.peer)),
            ("targetId", t(echo.peer_id())),
            ("documentId", t(id)),
            ("data", Value::Bytes(m.encode())),
        ]);
        let actions = echo.receive(self.conn, &f, NOW);
        self.absorb(echo, actions)
    }

    /// Applies KUBE's answers addressed to this client; returns the actions.
    fn absorb(&mut self, _echo: &mut Echo, actions: Vec<Action>) -> Vec<Action> {
        for a in &actions {
            match a {
                Action::Send { conn, bytes } if *conn == self.conn => self.take(bytes),
                Action::Close { conn } if *conn == self.conn => self.closed = true,
                _ => {}
            }
        }
        actions
    }

    fn take(&mut self, bytes: &[u8]) {
        let v: Value = ciborium::from_reader(bytes).unwrap();
        let map = v.as_map().unwrap();
        let get = |k: &str| {
            map.iter()
                .find(|(kk, _)| kk.as_text() == Some(k))
                .map(|(_, v)| v)
        };
        match get("type").and_then(Value::as_text).unwrap() {
            "sync" => {
                let id = get("documentId").unwrap().as_text().unwrap().to_owned();
                let data = get("data").unwrap().as_bytes().unwrap();
                let (am, st) = self.docs.entry(id).or_default();
                am.receive_sync_message(st, sync::Message::decode(data).unwrap())
                    .unwrap();
            }
            "error" => self
                .errors
                .push(get("message").unwrap().as_text().unwrap().to_owned()),
            "doc-unavailable" => self
                .unavailable
                .push(get("documentId").unwrap().as_text().unwrap().to_owned()),
            "peer" | "ephemeral" => {}
            other => panic!("unexpected {other}"),
        }
    }
}

/// Messages to other clients are delivered too (broadcasts).
fn deliver(actions: &[Action], clients: &mut [&mut Client]) {
    for a in actions {
        if let Action::Send { conn, bytes } = a {
            for c in clients.iter_mut() {
                if c.conn == *conn {
                    c.take(bytes);
                }
            }
        }
    }
}

fn root_doc(w: &World, creds: &[Credential]) -> Automerge {
    let mut doc = Automerge::new();
    let mut tx = doc.transaction();
    tx.put(ROOT, "kube", "space").unwrap();
    tx.put(ROOT, "space", w.space.as_str()).unwrap();
    let c = tx.put_object(ROOT, "credentials", ObjType::Map).unwrap();
    for cred in creds {
        tx.put(&c, cred.id.as_str(), serde_json::to_string(cred).unwrap())
            .unwrap();
    }
    tx.put_object(ROOT, "objects", ObjType::Map).unwrap();
    tx.commit();
    doc
}

const ROOT_ID: &str = "RootRootRootRootRootRoot";
const OBJ_ID: &str = "TaskTaskTaskTaskTaskTask";

fn add_credential(doc: &mut Automerge, cred: &Credential) {
    let mut tx = doc.transaction();
    let (_, c) = tx.get(ROOT, "credentials").unwrap().unwrap();
    tx.put(&c, cred.id.as_str(), serde_json::to_string(cred).unwrap())
        .unwrap();
    tx.commit();
}

fn list_object(doc: &mut Automerge, id: &str) {
    let mut tx = doc.transaction();
    let (_, objects) = tx.get(ROOT, "objects").unwrap().unwrap();
    let o = tx.put_object(&objects, id, ObjType::Map).unwrap();
    tx.put(&o, "type", "task").unwrap();
    tx.commit();
}

fn set(doc: &mut Automerge, k: &str, v: &str) {
    let mut tx = doc.transaction();
    tx.put(ROOT, k, v).unwrap();
    tx.commit();
}

fn get(doc: &Automerge, k: &str) -> Option<String> {
    doc.get(ROOT, k)
        .unwrap()
        .and_then(|(v, _)| v.into_string().ok())
}

/// Store actions come before any send that carries the heads they make durable.
fn assert_durable_first(actions: &[Action]) {
    let last_store = actions.iter().rposition(|a| matches!(a, Action::Store(_)));
    let first_send = actions
        .iter()
        .position(|a| matches!(a, Action::Send { .. }));
    if let (Some(s), Some(f)) = (last_store, first_send) {
        // Sends before the last store are only allowed when they are not sync replies
        // (errors). Simplest strong form: every store precedes every send.
        assert!(s < f, "a send before a store: {actions:?}");
    }
}

fn set_up() -> (Echo, World, Client) {
    let mut e = echo();
    let w = world();
    let mut alice = Client::join(&mut e, 1, &w.admin);
    *alice.doc(ROOT_ID) = root_doc(&w, &w.creds);
    let actions = alice.sync(&mut e, ROOT_ID);
    assert!(alice.errors.is_empty(), "{:?}", alice.errors);
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Store(Write::NewSpace { .. })))
    );
    assert_eq!(e.space_count(), 1);
    (e, w, alice)
}

#[test]
fn an_admin_brings_a_space_and_kube_keeps_it_durable_first() {
    let (mut e, w, mut alice) = set_up();
    // An object, listed in the root: accepted, stored before it is acknowledged.
    set(alice.doc(OBJ_ID), "title", "first");
    list_object(alice.doc(ROOT_ID), OBJ_ID);
    let a = alice.sync(&mut e, OBJ_ID);
    assert!(
        !a.iter().any(|a| matches!(a, Action::Store(_))),
        "held until listed"
    );
    let a = alice.sync(&mut e, ROOT_ID);
    assert_durable_first(&a);
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::Store(Write::Append { doc, .. }) if doc == OBJ_ID)),
        "a new document's first save starts its log"
    );
    assert_eq!(e.doc_count(), 2);
    let show = e.show(&w.space).unwrap();
    assert_eq!(show.documents.len(), 2);
    // An edit: appended to the log before the reply.
    set(alice.doc(OBJ_ID), "title", "second");
    let a = alice.sync(&mut e, OBJ_ID);
    assert_durable_first(&a);
    assert!(a.iter().any(|a| matches!(a, Action::Store(_))));
    let q = e
        .query(&w.space, "", &[])
        .unwrap()
        .into_iter()
        .collect::<Vec<_>>();
    assert!(q.is_empty(), "objects have no type set in this test");
}

/// Found by the browser test of the sample app: a new object reached KUBE from its author
/// and (before the root listed it) as bare heads from a peer it had synced with; when the
/// listing came, the second, empty copy replaced the first, which KUBE had acknowledged.
#[test]
fn a_document_held_by_two_connections_keeps_what_either_brought() {
    let (mut e, w, mut alice) = set_up();
    let bob_key = key(4);
    let mut root = alice.doc(ROOT_ID).clone();
    add_credential(
        &mut root,
        &says(
            &w.admin,
            &halo::did(&bob_key),
            member(&w.space, Role::Editor),
        ),
    );
    *alice.doc(ROOT_ID) = root;
    alice.sync(&mut e, ROOT_ID);
    let mut bob = Client::join(&mut e, 2, &bob_key);
    // Alice's new object, not listed yet: held for her connection, content included.
    set(alice.doc(OBJ_ID), "title", "first");
    alice.sync(&mut e, OBJ_ID);
    // Bob has it too (from Alice, peer to peer) and offers it: his first message carries
    // heads only, so KUBE holds an empty copy for him and asks for the changes.
    *bob.doc(OBJ_ID) = alice.doc(OBJ_ID).clone();
    let (am, st) = bob.docs.get_mut(OBJ_ID).unwrap();
    let m = am.generate_sync_message(st).unwrap();
    assert!(m.changes.is_empty());
    bob.send(&mut e, "sync", OBJ_ID, m);
    // The listing arrives: both held copies are decided.
    list_object(alice.doc(ROOT_ID), OBJ_ID);
    alice.sync(&mut e, ROOT_ID);
    let heads = alice.doc(OBJ_ID).get_heads();
    assert_eq!(e.am(OBJ_ID).get_heads(), heads, "the content stays");
    // And Bob, syncing on, ends level with it.
    bob.sync(&mut e, OBJ_ID);
    assert_eq!(bob.doc(OBJ_ID).get_heads(), heads);
    assert!(
        alice.errors.is_empty() && bob.errors.is_empty(),
        "{:?} {:?}",
        alice.errors,
        bob.errors
    );
}

#[test]
fn members_read_non_members_see_nothing_readers_cannot_write() {
    let (mut e, w, mut alice) = set_up();
    let (bob, carol, dave) = (key(4), key(5), key(6));
    let mut doc = alice.doc(ROOT_ID).clone();
    add_credential(
        &mut doc,
        &says(&w.admin, &halo::did(&bob), member(&w.space, Role::Editor)),
    );
    add_credential(
        &mut doc,
        &says(&w.admin, &halo::did(&dave), member(&w.space, Role::Reader)),
    );
    *alice.doc(ROOT_ID) = doc;
    alice.sync(&mut e, ROOT_ID);

    let mut b = Client::join(&mut e, 2, &bob);
    b.sync(&mut e, ROOT_ID);
    assert_eq!(get(b.doc(ROOT_ID), "kube").as_deref(), Some("space"));

    let mut c = Client::join(&mut e, 3, &carol);
    c.sync(&mut e, ROOT_ID);
    assert_eq!(c.unavailable, vec![ROOT_ID.to_owned()]);
    assert!(c.doc(ROOT_ID).get_heads().is_empty(), "no content leaks");

    let mut d = Client::join(&mut e, 4, &dave);
    d.sync(&mut e, ROOT_ID);
    assert_eq!(get(d.doc(ROOT_ID), "kube").as_deref(), Some("space"));
    let heads = e.am(ROOT_ID).get_heads();
    set(d.doc(ROOT_ID), "graffiti", "x");
    let a = d.sync(&mut e, ROOT_ID);
    assert!(
        d.errors.iter().any(|m| m.starts_with("refused: a reader")),
        "{:?}",
        d.errors
    );
    assert!(
        !a.iter().any(|a| matches!(a, Action::Store(_))),
        "never stored"
    );
    assert_eq!(e.am(ROOT_ID).get_heads(), heads, "never applied");
    deliver(&a, &mut [&mut b]);
    assert_eq!(get(b.doc(ROOT_ID), "graffiti"), None, "never forwarded");

    // Bob's edit reaches Alice through KUBE.
    set(b.doc(ROOT_ID), "title", "bob was here");
    let a = b.sync(&mut e, ROOT_ID);
    deliver(&a, &mut [&mut alice]);
    alice.sync(&mut e, ROOT_ID);
    assert_eq!(
        get(alice.doc(ROOT_ID), "title").as_deref(),
        Some("bob was here")
    );
}

#[test]
fn a_revocation_cuts_the_member_off_on_the_open_connection() {
    let (mut e, w, mut alice) = set_up();
    let eve = key(7);
    let grant = says(&w.admin, &halo::did(&eve), member(&w.space, Role::Editor));
    add_credential(alice.doc(ROOT_ID), &grant);
    alice.sync(&mut e, ROOT_ID);
    let mut ev = Client::join(&mut e, 5, &eve);
    ev.sync(&mut e, ROOT_ID);
    assert!(ev.errors.is_empty());
    let revoke = says(
        &w.admin,
        &halo::did(&eve),
        Assertion::Revocation {
            credential: grant.id.clone(),
        },
    );
    add_credential(alice.doc(ROOT_ID), &revoke);
    let a = alice.sync(&mut e, ROOT_ID);
    deliver(&a, &mut [&mut ev]);
    assert!(a.iter().any(|a| matches!(a, Action::Close { conn: 5 })));
    assert!(
        ev.errors.iter().any(|m| m.starts_with("revoked:")),
        "{:?}",
        ev.errors
    );
}

#[test]
fn a_root_cannot_lose_credentials_or_be_replaced() {
    let (mut e, w, mut alice) = set_up();
    let id = w.creds[0].id.clone();
    let before = e.am(ROOT_ID).get_heads();
    {
        let doc = alice.doc(ROOT_ID);
        let mut tx = doc.transaction();
        let (_, c) = tx.get(ROOT, "credentials").unwrap().unwrap();
        tx.delete(&c, id.as_str()).unwrap();
        tx.commit();
    }
    alice.sync(&mut e, ROOT_ID);
    assert!(
        alice
            .errors
            .iter()
            .any(|m| m.contains("may not be removed"))
    );
    assert_eq!(e.am(ROOT_ID).get_heads(), before);
    // A second root for the same space is refused.
    let mut other = Client::join(&mut e, 8, &w.admin);
    *other.doc("SecondRootSecondRoot") = root_doc(&w, &w.creds);
    other.sync(&mut e, "SecondRootSecondRoot");
    assert!(
        other
            .errors
            .iter()
            .any(|m| m.contains("already has a root"))
    );
    assert_eq!(e.space_count(), 1);
}

/// From the attacker's review of the peer-to-peer path: a root change held back for a
/// missing dependency is invisible to the check of its own message; it must not escape the
/// check of the message that releases it.
#[test]
fn a_root_change_held_for_a_missing_dependency_is_judged_when_it_applies() {
    let (mut e, w, mut alice) = set_up();
    let id = w.creds[0].id.clone();
    let before = e.am(ROOT_ID).get_heads();
    let doc = alice.doc(ROOT_ID);
    let mut tx = doc.transaction();
    let (_, objects) = tx.get(ROOT, "objects").unwrap().unwrap();
    tx.put(&objects, "harmless", "task").unwrap();
    let h1 = tx.commit().0.unwrap();
    let mut tx = doc.transaction();
    let (_, c) = tx.get(ROOT, "credentials").unwrap().unwrap();
    tx.delete(&c, id.as_str()).unwrap();
    let h2 = tx.commit().0.unwrap();
    let bytes = |h| doc.get_change_by_hash(&h).unwrap().raw_bytes().to_vec();
    let (c1, c2) = (bytes(h1), bytes(h2));
    let send = |alice: &mut Client, e: &mut Echo, chunk: Vec<u8>| {
        let (am, st) = alice.docs.get_mut(ROOT_ID).unwrap();
        let mut m = am.generate_sync_message(st).unwrap_or_else(|| {
            *st = sync::State::new();
            am.generate_sync_message(st).unwrap()
        });
        m.changes = sync::ChunkList::from(chunk);
        alice.send(e, "sync", ROOT_ID, m);
    };
    // c2 alone (it drops a credential, but waits for c1): nothing changes.
    send(&mut alice, &mut e, c2);
    assert_eq!(e.am(ROOT_ID).get_heads(), before);
    // c1 alone, harmless, releases c2: the message is judged with c2 and refused.
    send(&mut alice, &mut e, c1);
    assert!(
        alice
            .errors
            .iter()
            .any(|m| m.contains("may not be removed")),
        "{:?}",
        alice.errors
    );
    assert_eq!(e.am(ROOT_ID).get_heads(), before);
    let root = space::read_root(e.am(ROOT_ID)).unwrap();
    assert!(root.entries.contains_key(&id));
}

#[test]
fn kube_keeps_only_spaces_that_admit_it() {
    let mut e = echo();
    let w = world();
    let mut alice = Client::join(&mut e, 1, &w.admin);
    *alice.doc(ROOT_ID) = root_doc(&w, &w.creds[..1]); // no replicator credential for KUBE
    let a = alice.sync(&mut e, ROOT_ID);
    assert!(!a.iter().any(|a| matches!(a, Action::Store(_))));
    assert!(
        alice.errors.iter().any(|m| m.contains("replicator")),
        "{:?}",
        alice.errors
    );
    assert_eq!(e.space_count(), 0);
    // A non-admin cannot bring a root either.
    let mut mallory = Client::join(&mut e, 2, &key(8));
    *mallory.doc(ROOT_ID) = root_doc(&w, &w.creds);
    mallory.sync(&mut e, ROOT_ID);
    assert!(mallory.errors.iter().any(|m| m.contains("only an admin")));
    assert_eq!(e.space_count(), 0);
}

#[test]
fn unlisted_documents_expire_and_bad_input_closes_after_strikes() {
    let (mut e, _w, mut alice) = set_up();
    set(alice.doc(OBJ_ID), "x", "y");
    alice.sync(&mut e, OBJ_ID);
    let a = e.tick(NOW + 31_000);
    deliver(&a, &mut [&mut alice]);
    assert!(alice.errors.iter().any(|m| m.contains("not listed")));
    assert_eq!(e.doc_count(), 1);

    // A connection that never joins is closed.
    e.connect(
        11,
        auth::Peer {
            did: halo::did(&key(4)),
            peer: "silent".into(),
        },
        NOW,
    );
    assert!(
        e.tick(NOW + 9_000)
            .iter()
            .all(|a| !matches!(a, Action::Close { conn: 11 }))
    );
    assert!(e.tick(NOW + 10_000).contains(&Action::Close { conn: 11 }));

    let mut junk = Client::join(&mut e, 9, &key(4));
    for _ in 0..10 {
        let a = e.receive(9, b"\xff\xfe not cbor", NOW);
        junk.absorb(&mut e, a);
    }
    assert!(junk.closed);
    assert_eq!(junk.errors.len(), 10);
    // A sender other than the joined peer is refused and closed at once.
    let mut liar = Client::join(&mut e, 10, &key(4));
    let f = frame(vec![
        ("type", t("sync")),
        ("senderId", t("someone-else")),
        ("documentId", t(ROOT_ID)),
        ("data", Value::Bytes(vec![])),
    ]);
    let a = e.receive(10, &f, NOW);
    liar.absorb(&mut e, a);
    assert!(liar.closed);
}

#[test]
fn export_and_import_round_trip_and_are_verified() {
    let (mut e, w, mut alice) = set_up();
    set(alice.doc(OBJ_ID), "title", "t");
    list_object(alice.doc(ROOT_ID), OBJ_ID);
    alice.sync(&mut e, OBJ_ID);
    alice.sync(&mut e, ROOT_ID);
    let exp = e.export(&w.space).unwrap().unwrap();
    assert_eq!(exp.documents.len(), 2);

    let mut fresh = echo();
    let actions = fresh.import(exp.clone(), NOW).unwrap();
    assert_eq!(actions.len(), 3);
    assert_eq!(fresh.show(&w.space).unwrap().documents.len(), 2);
    assert_eq!(
        fresh.import(exp.clone(), NOW),
        Err(ImportError::Exists(w.space.clone()))
    );

    // Another KUBE's key is not admitted.
    let mut stranger = Echo::new(halo::did(&key(11)), Admit::Any, Limits::default());
    assert!(matches!(
        stranger.import(exp.clone(), NOW),
        Err(ImportError::NotAdmitted(_))
    ));
    // A document the root does not list is refused.
    let mut extra = exp;
    extra
        .documents
        .insert("ExtraExtraExtra".into(), extra.documents[OBJ_ID].clone());
    assert_eq!(
        echo().import(extra, NOW),
        Err(ImportError::Unlisted("ExtraExtraExtra".into()))
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    // For any role, a member's changes are kept exactly when the role may write, a
    // non-member never receives content, and nothing ever panics.
    #[test]
    fn access_follows_the_role(role in prop::option::of(prop_oneof![
        Just(Role::Reader), Just(Role::Replicator), Just(Role::Editor), Just(Role::Admin)
    ])) {
        let (mut e, w, mut alice) = set_up();
        let who = key(20);
        if let Some(r) = role {
            add_credential(alice.doc(ROOT_ID), &says(&w.admin, &halo::did(&who), member(&w.space, r)));
            alice.sync(&mut e, ROOT_ID);
        }
        let mut p = Client::join(&mut e, 30, &who);
        p.sync(&mut e, ROOT_ID);
        let got_content = !p.doc(ROOT_ID).get_heads().is_empty();
        prop_assert_eq!(got_content, role.is_some());
        if role.is_some() {
            let before = e.am(ROOT_ID).get_heads();
            set(p.doc(ROOT_ID), "note", "hello");
            p.sync(&mut e, ROOT_ID);
            let kept = e.am(ROOT_ID).get_heads() != before;
            prop_assert_eq!(kept, role >= Some(Role::Replicator));
        }
    }
}

#[test]
fn limits_refuse_with_an_error_and_others_are_unaffected() {
    let mut e = Echo::new(
        halo::did(&key(9)),
        Admit::Any,
        Limits {
            max_message_bytes: 4096,
            messages_per_second: 2,
            max_docs_per_space: 1,
            strikes: 25,
            ..Limits::default()
        },
    );
    let w = world();
    let mut alice = Client::join(&mut e, 1, &w.admin);
    *alice.doc(ROOT_ID) = root_doc(&w, &w.creds);
    alice.sync(&mut e, ROOT_ID);
    assert_eq!(e.space_count(), 1);

    // The space is full (its root is its one document): a listed object is refused.
    set(alice.doc(OBJ_ID), "x", "y");
    list_object(alice.doc(ROOT_ID), OBJ_ID);
    let later = NOW + 60_000; // a refilled rate bucket
    let mut all = Vec::new();
    for _ in 0..4 {
        for id in [ROOT_ID, OBJ_ID] {
            let (am, st) = alice.docs.get_mut(id).unwrap();
            if let Some(m) = am.generate_sync_message(st) {
                let f = frame(vec![
                    ("type", t("sync")),
                    ("senderId", t(&alice.peer)),
                    ("documentId", t(id)),
                    ("data", Value::Bytes(m.encode())),
                ]);
                let a = e.receive(1, &f, later);
                all.extend(alice.absorb(&mut e, a));
            }
        }
    }
    assert!(
        alice
            .errors
            .iter()
            .any(|m| m.contains("max_docs_per_space")),
        "{:?}",
        alice.errors
    );
    assert_eq!(e.doc_count(), 1);

    let mut b = Client::join(&mut e, 2, &key(4));
    // Invalid Automerge data in a well-formed frame.
    let bad = frame(vec![
        ("type", t("sync")),
        ("senderId", t(&b.peer)),
        ("documentId", t(ROOT_ID)),
        ("data", Value::Bytes(vec![0x42, 0xff, 0x00, 0x13])),
    ]);
    let a = e.receive(2, &bad, later);
    b.absorb(&mut e, a);
    assert!(
        b.errors[0].contains("invalid sync message"),
        "{:?}",
        b.errors
    );
    // Too large.
    let big = vec![0u8; 5000];
    let a = e.receive(2, &big, later);
    b.absorb(&mut e, a);
    assert!(b.errors[1].contains("over the limit"), "{:?}", b.errors);
    // Too many per second: the bucket (ten seconds' worth, 20) runs dry.
    for _ in 0..30 {
        let a = e.receive(2, &bad, later);
        b.absorb(&mut e, a);
    }
    assert!(
        b.errors.iter().any(|m| m.contains("too many messages")),
        "{:?}",
        b.errors
    );
    assert!(b.closed, "closed after repeated refusals");
    assert!(e.stats.refused["invalid"] > 0);
    assert_eq!(e.stats.refused["too-large"], 1);
    // Alice's connection is untouched.
    assert!(!alice.closed);
    set(alice.doc(ROOT_ID), "still", "fine");
    alice.errors.clear();
    let a = alice.sync(&mut e, ROOT_ID);
    assert!(a.iter().any(|a| matches!(a, Action::Store(_))));
    let _ = all;
}

#[test]
fn logs_are_compacted_into_snapshots_that_load_back() {
    let (mut e, w, mut alice) = set_up();
    let tmp = tempfile::tempdir().unwrap();
    let store = crate::store::FileStore::open(tmp.path()).unwrap();
    store
        .apply(&[Write::NewSpace {
            space: w.space.clone(),
            root: ROOT_ID.into(),
        }])
        .unwrap();
    let mut snapshots = 0;
    for i in 0..200 {
        set(alice.doc(ROOT_ID), &format!("k{i}"), &"x".repeat(1024));
        let actions = alice.sync(&mut e, ROOT_ID);
        let writes: Vec<Write> = actions.iter().filter_map(Action::store).cloned().collect();
        snapshots += writes
            .iter()
            .filter(|w| matches!(w, Write::Snapshot { .. }))
            .count();
        store.apply(&writes).unwrap();
    }
    assert!(snapshots >= 2, "{snapshots} compactions");
    let mut fresh = echo();
    for s in store.load().unwrap() {
        assert!(fresh.load(s, NOW).is_empty());
    }
    let reloaded = fresh.am(ROOT_ID);
    assert_eq!(reloaded.get_heads(), e.am(ROOT_ID).get_heads());
    assert_eq!(get(reloaded, "k199").map(|v| v.len()), Some(1024));
}

// ---- attacks (issue 14) ----

/// A credential entry put under any key of the root's `credentials` map, as raw JSON text.
fn put_entry(doc: &mut Automerge, key: &str, json: &str) {
    let mut tx = doc.transaction();
    let (_, c) = tx.get(ROOT, "credentials").unwrap().unwrap();
    tx.put(&c, key, json).unwrap();
    tx.commit();
}

/// A copy of `c` whose signature no longer verifies (same claimed id).
fn forged(c: &Credential) -> String {
    let mut f = c.clone();
    f.proof.signature = "A".repeat(86);
    serde_json::to_string(&f).unwrap()
}

#[test]
fn an_editor_cannot_brick_a_space_with_a_forged_copy_of_the_genesis() {
    let (mut e, w, mut alice) = set_up();
    let bob = key(4);
    let grant = says(&w.admin, &halo::did(&bob), member(&w.space, Role::Editor));
    add_credential(alice.doc(ROOT_ID), &grant);
    alice.sync(&mut e, ROOT_ID);
    let mut b = Client::join(&mut e, 2, &bob);
    b.sync(&mut e, ROOT_ID);
    let before = e.am(ROOT_ID).get_heads();
    // Under a key that sorts after the real entry, and under one that sorts before it.
    for k in [format!("{}z", w.creds[0].id), "0".to_owned()] {
        let mut doc = b.doc(ROOT_ID).clone();
        put_entry(&mut doc, &k, &forged(&w.creds[0]));
        *b.doc(ROOT_ID) = doc;
        b.sync(&mut e, ROOT_ID);
        assert_eq!(e.am(ROOT_ID).get_heads(), before, "refused at the door");
        assert!(
            b.errors.iter().any(|m| m.starts_with("refused:")),
            "{:?}",
            b.errors
        );
        assert_eq!(
            e.role(1, &w.space),
            Some(Role::Admin),
            "the admin keeps the space"
        );
        assert_eq!(e.role(2, &w.space), Some(Role::Editor));
    }
    // Changing an existing entry in place (same key, other bytes) is refused too.
    let mut doc = alice.doc(ROOT_ID).clone();
    put_entry(&mut doc, &w.creds[0].id, &forged(&w.creds[0]));
    *alice.doc(ROOT_ID) = doc;
    alice.errors.clear();
    alice.sync(&mut e, ROOT_ID);
    assert!(alice.errors.iter().any(|m| m.starts_with("refused:")));
    assert_eq!(e.am(ROOT_ID).get_heads(), before);
}

#[test]
fn a_forged_copy_cannot_hide_a_revocation() {
    let (mut e, w, mut alice) = set_up();
    let mallory = key(4);
    let admin_grant = says(
        &w.admin,
        &halo::did(&mallory),
        member(&w.space, Role::Admin),
    );
    let editor_grant = says(
        &w.admin,
        &halo::did(&mallory),
        member(&w.space, Role::Editor),
    );
    add_credential(alice.doc(ROOT_ID), &admin_grant);
    add_credential(alice.doc(ROOT_ID), &editor_grant);
    let revoke = says(
        &w.admin,
        &halo::did(&mallory),
        Assertion::Revocation {
            credential: admin_grant.id.clone(),
        },
    );
    add_credential(alice.doc(ROOT_ID), &revoke);
    alice.sync(&mut e, ROOT_ID);
    let mut m = Client::join(&mut e, 2, &mallory);
    m.sync(&mut e, ROOT_ID);
    assert_eq!(e.role(2, &w.space), Some(Role::Editor));
    let mut doc = m.doc(ROOT_ID).clone();
    put_entry(&mut doc, &format!("{}~", revoke.id), &forged(&revoke));
    *m.doc(ROOT_ID) = doc;
    m.sync(&mut e, ROOT_ID);
    assert_eq!(e.role(2, &w.space), Some(Role::Editor), "still demoted");

    // A root that already holds such an entry (written before this rule, or imported)
    // still counts the real revocation and the real genesis.
    let mut json = space::to_json(e.am(ROOT_ID));
    let creds = json["credentials"].as_object_mut().unwrap();
    creds.insert(format!("{}~", revoke.id), forged(&revoke).into());
    creds.insert(format!("{}~", w.creds[0].id), forged(&w.creds[0]).into());
    let root = space::root_from_json(&json).unwrap();
    let m = halo::space::validate(&w.space, &root.credentials, clock(NOW));
    assert_eq!(m.role_of(&halo::did(&mallory)), Some(Role::Editor));
    assert_eq!(m.role_of(&halo::did(&w.admin)), Some(Role::Admin));
}

#[test]
fn an_expired_credential_loses_access_on_time_without_a_root_change() {
    use ed25519_dalek::Signer;
    let (mut e, w, mut alice) = set_up();
    let bob = key(4);
    let expires = NOW / 1000 + 100;
    let admin = halo::did(&w.admin);
    let grant = Credential::issue(
        &admin,
        &halo::did(&bob),
        member(&w.space, Role::Editor),
        NOW / 1000 - 10,
        Some(expires),
        &admin,
        |b| w.admin.sign(b).to_bytes(),
    )
    .unwrap();
    add_credential(alice.doc(ROOT_ID), &grant);
    alice.sync(&mut e, ROOT_ID);
    let mut b = Client::join(&mut e, 2, &bob);
    b.sync(&mut e, ROOT_ID);
    assert_eq!(e.role(2, &w.space), Some(Role::Editor));
    // Still inside the allowed skew: nothing happens.
    let a = e.tick(NOW + 100_000);
    assert!(!a.iter().any(|a| matches!(a, Action::Close { conn: 2 })));
    let after = NOW + (100 + halo::space::SKEW_SECS + 1) * 1000;
    let a = e.tick(after);
    b.absorb(&mut e, a);
    assert!(b.closed, "the expired member's open connection is cut");
    assert_eq!(e.role(2, &w.space), None);
    assert_eq!(e.role(1, &w.space), Some(Role::Admin));
}

#[test]
fn a_space_that_stops_admitting_kube_is_no_longer_served() {
    let (mut e, w, mut alice) = set_up();
    let bob = key(4);
    add_credential(
        alice.doc(ROOT_ID),
        &says(&w.admin, &halo::did(&bob), member(&w.space, Role::Editor)),
    );
    alice.sync(&mut e, ROOT_ID);
    // The admin revokes KUBE's replicator credential.
    let revoke = says(
        &w.admin,
        &halo::did(&key(9)),
        Assertion::Revocation {
            credential: w.creds[1].id.clone(),
        },
    );
    add_credential(alice.doc(ROOT_ID), &revoke);
    alice.sync(&mut e, ROOT_ID);
    let mut b = Client::join(&mut e, 2, &bob);
    b.sync(&mut e, ROOT_ID);
    assert_eq!(
        b.unavailable,
        vec![ROOT_ID.to_owned()],
        "not served any more"
    );
    assert!(b.doc(ROOT_ID).get_heads().is_empty());
    assert_eq!(e.space_count(), 1, "the files stay: nothing is deleted");
    // The admin can still reach the root and admit KUBE again; then it is served again.
    let again = {
        use ed25519_dalek::Signer;
        let admin = halo::did(&w.admin);
        // Another issue date: a credential of its own, not the revoked one again.
        Credential::issue(
            &admin,
            &halo::did(&key(9)),
            member(&w.space, Role::Replicator),
            NOW / 1000 - 5,
            None,
            &admin,
            |b| w.admin.sign(b).to_bytes(),
        )
        .unwrap()
    };
    assert!(alice.closed, "the admin's open connection was closed too");
    let mut a2 = Client::join(&mut e, 4, &w.admin);
    *a2.doc(ROOT_ID) = alice.doc(ROOT_ID).clone();
    add_credential(a2.doc(ROOT_ID), &again);
    a2.sync(&mut e, ROOT_ID);
    assert!(a2.errors.is_empty(), "{:?}", a2.errors);
    let mut b2 = Client::join(&mut e, 3, &bob);
    b2.sync(&mut e, ROOT_ID);
    assert!(b2.unavailable.is_empty(), "served again");
    assert_eq!(get(b2.doc(ROOT_ID), "kube").as_deref(), Some("space"));

    // An `echo.admit` change on reload drops spaces the new policy refuses.
    let (mut e, w, mut alice) = set_up();
    let a = e.set_policy(Admit::Admins(vec![halo::did(&key(8))]), NOW);
    alice.absorb(&mut e, a);
    assert!(alice.closed, "{:?}", alice.errors);
    let mut a2 = Client::join(&mut e, 3, &w.admin);
    a2.sync(&mut e, ROOT_ID);
    assert_eq!(a2.unavailable, vec![ROOT_ID.to_owned()]);
    // And admits them again when the policy does.
    let _ = e.set_policy(Admit::Admins(vec![halo::did(&w.admin)]), NOW);
    let mut a3 = Client::join(&mut e, 4, &w.admin);
    a3.sync(&mut e, ROOT_ID);
    assert!(a3.unavailable.is_empty());
    assert_eq!(get(a3.doc(ROOT_ID), "kube").as_deref(), Some("space"));
}

/// Mallory's own space (key 13, Mallory key 4 its admin, KUBE its replicator) with a root
/// at `root_id` listing `objects`.
fn mallorys_space(e: &mut Echo, conn: ConnId, root_id: &str, objects: &[&str]) -> Client {
    let w = World {
        space: halo::did(&key(13)),
        admin: key(4),
        creds: vec![],
    };
    let genesis = says(
        &key(13),
        &halo::did(&key(4)),
        Assertion::SpaceGenesis {
            space: w.space.clone(),
        },
    );
    let kube = says(
        &key(4),
        &halo::did(&key(9)),
        member(&w.space, Role::Replicator),
    );
    let mut m = Client::join(e, conn, &key(4));
    let mut doc = root_doc(&w, &[genesis, kube]);
    for o in objects {
        list_object(&mut doc, o);
    }
    *m.doc(root_id) = doc;
    m.sync(e, root_id);
    assert!(m.errors.is_empty(), "{:?}", m.errors);
    m
}

#[test]
fn an_id_another_space_listed_first_cannot_be_taken_over() {
    let (mut e, w, mut alice) = set_up();
    // Alice lists her object; its content is on its way.
    list_object(alice.doc(ROOT_ID), OBJ_ID);
    alice.sync(&mut e, ROOT_ID);
    // Mallory lists the same id in her space, then changes her root again.
    let mroot = "MxyRootMxyRootMxyRoot123";
    let mut m = mallorys_space(&mut e, 2, mroot, &[OBJ_ID]);
    list_object(m.doc(mroot), "ThemThemThemThemThemThem");
    m.sync(&mut e, mroot);
    // Mallory's upload of that id is refused; Alice's lands in her space.
    set(m.doc(OBJ_ID), "title", "mallory's");
    let a = m.sync(&mut e, OBJ_ID);
    let a2 = e.tick(NOW + 31_000);
    assert!(
        !a.iter().chain(&a2).any(|a| matches!(a, Action::Store(_))),
        "mallory's copy is never stored"
    );
    set(alice.doc(OBJ_ID), "title", "alice's");
    alice.sync(&mut e, OBJ_ID);
    assert_eq!(e.space_of(OBJ_ID).unwrap(), w.space);
    assert_eq!(get(e.am(OBJ_ID), "title").as_deref(), Some("alice's"));
}

#[test]
fn a_space_root_cannot_be_listed_as_another_spaces_object() {
    let (mut e, _w, _alice) = set_up();
    let mroot = "MxyRootMxyRootMxyRoot123";
    let _m = mallorys_space(&mut e, 2, mroot, &[ROOT_ID]);
    assert_eq!(e.listed_by(ROOT_ID), None, "a root is nobody's object");
    // Nor can an id another space lists become a new space's root.
    let mut e = echo();
    let w = world();
    let _m = mallorys_space(&mut e, 2, "MxyRootMxyRootMxyRoot123", &[ROOT_ID]);
    let mut alice = Client::join(&mut e, 1, &w.admin);
    *alice.doc(ROOT_ID) = root_doc(&w, &w.creds);
    alice.sync(&mut e, ROOT_ID);
    assert!(
        alice.errors.iter().any(|m| m.contains("listed")),
        "{:?}",
        alice.errors
    );
    assert_eq!(e.space_count(), 1);
}

#[test]
fn a_document_that_does_not_load_is_quarantined_and_never_overwritten() {
    use crate::store::{StoredDoc, StoredSpace};
    let (mut e, w, mut alice) = set_up();
    set(alice.doc(OBJ_ID), "title", "acknowledged");
    list_object(alice.doc(ROOT_ID), OBJ_ID);
    alice.sync(&mut e, OBJ_ID);
    alice.sync(&mut e, ROOT_ID);
    assert!(e.space_of(OBJ_ID).is_some());
    for damage in ["snapshot", "log"] {
        let mut stored = StoredSpace {
            space: w.space.clone(),
            root: ROOT_ID.into(),
            docs: BTreeMap::new(),
        };
        stored.docs.insert(
            ROOT_ID.into(),
            StoredDoc {
                snapshot: e.am(ROOT_ID).save(),
                ..StoredDoc::default()
            },
        );
        let obj = if damage == "snapshot" {
            StoredDoc {
                snapshot: b"not automerge".to_vec(),
                ..StoredDoc::default()
            }
        } else {
            StoredDoc {
                snapshot: e.am(OBJ_ID).save(),
                corrupt: Some("the log frame at byte 13 is damaged".into()),
                ..StoredDoc::default()
            }
        };
        stored.docs.insert(OBJ_ID.into(), obj);
        let mut e2 = echo();
        let problems = e2.load(stored, NOW);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(e2.quarantined().len(), 1);
        // A writer who still has the document sends it: nothing may overwrite the files.
        let mut a2 = Client::join(&mut e2, 1, &w.admin);
        *a2.doc(ROOT_ID) = alice.doc(ROOT_ID).clone();
        *a2.doc(OBJ_ID) = alice.doc(OBJ_ID).clone();
        set(a2.doc(OBJ_ID), "title", "overwrite");
        a2.sync(&mut e2, ROOT_ID);
        let mut all = a2.sync(&mut e2, OBJ_ID);
        all.extend(e2.tick(NOW + 60_000));
        assert!(
            !all.iter()
                .any(|a| matches!(a, Action::Store(w) if format!("{w:?}").contains(OBJ_ID))),
            "{damage}: never written"
        );
        assert!(
            a2.errors.iter().any(|m| m.contains("quarantined")),
            "{damage}: {:?}",
            a2.errors
        );
    }
}

#[test]
fn a_failed_import_is_undone_in_memory_and_on_disk() {
    let (mut e, w, mut alice) = set_up();
    set(alice.doc(OBJ_ID), "title", "t");
    list_object(alice.doc(ROOT_ID), OBJ_ID);
    alice.sync(&mut e, OBJ_ID);
    alice.sync(&mut e, ROOT_ID);
    let exp = e.export(&w.space).unwrap().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let store = crate::store::FileStore::open(tmp.path()).unwrap();
    // The store cannot make the space's directory: a file is in the way.
    std::fs::write(tmp.path().join("spaces").join(&w.space), b"in the way").unwrap();
    let mut fresh = echo();
    let writes = fresh.import(exp.clone(), NOW).unwrap();
    assert!(store.apply(&writes).is_err());
    fresh.forget_import(&w.space);
    store.remove_written(&writes).unwrap();
    assert_eq!((fresh.space_count(), fresh.doc_count()), (0, 0));
    assert!(fresh.list().is_empty());
    std::fs::remove_file(tmp.path().join("spaces").join(&w.space)).unwrap();
    // Nothing of it is left: the same import succeeds now, and loads back. A file the
    // import did not write stays.
    let other = tmp
        .path()
        .join("spaces")
        .join(&w.space)
        .join("other.snapshot");
    let writes = fresh.import(exp, NOW).unwrap();
    store.apply(&writes).unwrap();
    std::fs::write(&other, b"not the import's").unwrap();
    let again_writes = echo()
        .import(fresh.export(&w.space).unwrap().unwrap(), NOW)
        .unwrap();
    store.remove_written(&again_writes).unwrap();
    assert!(other.exists(), "only the import's own files are removed");
    std::fs::remove_file(&other).unwrap();
    store.apply(&writes).unwrap();
    let mut again = echo();
    for s in store.load().unwrap() {
        assert!(again.load(s, NOW).is_empty());
    }
    assert_eq!(again.doc_count(), 2);
}

#[test]
fn a_space_over_its_byte_quota_refuses_changes_but_not_its_admins_root_changes() {
    let mut e = Echo::new(
        halo::did(&key(9)),
        Admit::Any,
        Limits {
            max_space_bytes: 4000,
            ..Limits::default()
        },
    );
    let w = world();
    let mut alice = Client::join(&mut e, 1, &w.admin);
    *alice.doc(ROOT_ID) = root_doc(&w, &w.creds);
    alice.sync(&mut e, ROOT_ID);
    let bob = key(4);
    let grant = says(&w.admin, &halo::did(&bob), member(&w.space, Role::Editor));
    add_credential(alice.doc(ROOT_ID), &grant);
    alice.sync(&mut e, ROOT_ID);
    let mut b = Client::join(&mut e, 2, &bob);
    b.sync(&mut e, ROOT_ID);
    let mut refused = false;
    for i in 0..20 {
        set(b.doc(ROOT_ID), &format!("k{i}"), &"x".repeat(1000));
        let a = b.sync(&mut e, ROOT_ID);
        if b.errors.iter().any(|m| m.contains("quota")) {
            assert!(!a.iter().any(|a| matches!(a, Action::Store(_))));
            refused = true;
            break;
        }
    }
    assert!(refused, "the quota held: {:?}", b.errors);
    // The admin can still revoke Bob.
    let revoke = says(
        &w.admin,
        &halo::did(&bob),
        Assertion::Revocation {
            credential: grant.id.clone(),
        },
    );
    add_credential(alice.doc(ROOT_ID), &revoke);
    let a = alice.sync(&mut e, ROOT_ID);
    assert!(a.iter().any(|a| matches!(a, Action::Close { conn: 2 })));
}

/// A sync message whose changes are one compressed change that inflates to `mib` MiB.
fn bomb_message(mib: usize) -> Vec<u8> {
    let mut m = Automerge::new()
        .generate_sync_message(&mut sync::State::new())
        .unwrap();
    m.changes = crate::bound::compressed_chunk(&crate::bound::zeros_bomb(mib)).into();
    m.encode()
}

#[test]
fn a_decompression_bomb_is_refused_before_automerge_inflates_it() {
    let (mut e, _w, _alice) = set_up();
    let mut m = Client::join(&mut e, 2, &key(8)); // a stranger with a key
    let data = bomb_message(1024);
    assert!(data.len() < Limits::default().max_message_bytes);
    let start = std::time::Instant::now();
    for doc in [OBJ_ID, ROOT_ID] {
        let f = frame(vec![
            ("type", t("sync")),
            ("senderId", t(&m.peer)),
            ("targetId", t(e.peer_id())),
            ("documentId", t(doc)),
            ("data", Value::Bytes(data.clone())),
        ]);
        let a = e.receive(2, &f, NOW);
        m.absorb(&mut e, a);
    }
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(m.errors.len(), 2, "{:?}", m.errors);
    assert!(m.errors.iter().all(|e| e.contains("inflates to more than")));
    assert_eq!(e.stats.refused.get("too-large"), Some(&2));
}

#[test]
fn a_document_taken_out_of_service_after_a_panic_is_never_written() {
    let (mut e, w, mut alice) = set_up();
    set(alice.doc(OBJ_ID), "title", "acknowledged");
    list_object(alice.doc(ROOT_ID), OBJ_ID);
    alice.sync(&mut e, OBJ_ID);
    alice.sync(&mut e, ROOT_ID);
    e.quarantine(OBJ_ID, "panicked");
    assert_eq!(e.quarantined().len(), 1);
    set(alice.doc(OBJ_ID), "title", "after");
    let a = alice.sync(&mut e, OBJ_ID);
    assert!(!a.iter().any(|a| matches!(a, Action::Store(_))));
    assert!(alice.errors.iter().any(|m| m.contains("quarantined")));
    assert_eq!(e.show(&w.space).unwrap().documents.len(), 1);
}

// ---- documents on demand (issue 19) ----

fn obj(i: usize) -> String {
    format!("Doc{}", i.to_string().replace('0', "z"))
}

fn apply(store: &crate::store::FileStore, actions: &[Action]) {
    let writes: Vec<Write> = actions.iter().filter_map(Action::store).cloned().collect();
    store.apply(&writes).unwrap();
}

fn flush(e: &mut Echo, store: &crate::store::FileStore) {
    for i in e.take_indexes() {
        store.write_index(&i).unwrap();
    }
}

/// A space of `n` objects written through `alice` to a store, and ECHO over that store.
fn stored_space(
    n: usize,
) -> (
    tempfile::TempDir,
    std::sync::Arc<crate::store::FileStore>,
    World,
    Echo,
    Client,
) {
    let tmp = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(crate::store::FileStore::open(tmp.path()).unwrap());
    let mut e = echo();
    e.set_source(store.clone());
    let w = world();
    let mut alice = Client::join(&mut e, 1, &w.admin);
    *alice.doc(ROOT_ID) = root_doc(&w, &w.creds);
    let a = alice.sync(&mut e, ROOT_ID);
    apply(&store, &a);
    for i in 0..n {
        let id = obj(i);
        list_object(alice.doc(ROOT_ID), &id);
        set(alice.doc(&id), "title", &format!("task {i}"));
        let a = alice.sync(&mut e, &id);
        apply(&store, &a);
        let a = alice.sync(&mut e, ROOT_ID);
        apply(&store, &a);
    }
    assert!(alice.errors.is_empty(), "{:?}", alice.errors);
    (tmp, store, w, e, alice)
}

fn reopen(store: &std::sync::Arc<crate::store::FileStore>, limits: Limits) -> (Echo, Vec<String>) {
    let mut e = Echo::new(halo::did(&key(9)), Admit::Any, limits);
    e.set_source(store.clone());
    let mut problems = Vec::new();
    for s in store.scan().unwrap() {
        let found = match e.open(s, NOW) {
            Ok(found) => found,
            Err(stale) => e
                .open(store.rebuild(stale.space, stale.root).unwrap(), NOW)
                .unwrap(),
        };
        problems.extend(found);
    }
    (e, problems)
}

/// Fetches `id` as a fresh client would (a request, then the exchange).
fn fetch(e: &mut Echo, c: &mut Client, id: &str) -> Option<String> {
    c.docs.remove(id);
    c.sync(e, id);
    c.docs.get(id).and_then(|(am, _)| get(am, "title"))
}

#[test]
fn documents_are_read_when_asked_for_and_let_go_under_the_budget() {
    let (_tmp, store, w, mut e, _alice) = stored_space(40);
    flush(&mut e, &store);
    let scanned = store.scan().unwrap();
    assert!(
        matches!(scanned[0].found, Scanned::Indexed { .. }),
        "a current index is used"
    );
    let budget = 6 * estimate(200);
    let limits = Limits {
        cache_bytes: budget,
        ..Limits::default()
    };
    let (mut e, problems) = reopen(&store, limits);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(e.cache().0, 0, "nothing read on start");
    assert_eq!((e.doc_count(), e.stats.loads), (41, 0));
    let summary = &e.list()[0];
    assert_eq!(summary.documents, 41);
    assert!(summary.bytes > 0);
    assert_eq!(e.show(&w.space).unwrap().documents.len(), 41);

    // A non-member's requests, and a non-member's changes, read nothing.
    let mut mallory = Client::join(&mut e, 7, &key(7));
    assert_eq!(fetch(&mut e, &mut mallory, &obj(3)), None);
    set(mallory.doc(&obj(4)), "title", "mine");
    mallory.sync(&mut e, &obj(4));
    assert_eq!(fetch(&mut e, &mut mallory, ROOT_ID), None);
    assert_eq!(e.stats.loads, 0, "a refusal costs no document read");
    assert!(mallory.unavailable.contains(&obj(3)));

    // A member's fetch reads that document only.
    let mut alice = Client::join(&mut e, 2, &w.admin);
    assert_eq!(
        fetch(&mut e, &mut alice, &obj(3)).as_deref(),
        Some("task 3")
    );
    assert_eq!(e.stats.loads, 1);

    // A walk of everything stays within the budget after each batch.
    for i in 0..40 {
        assert_eq!(
            fetch(&mut e, &mut alice, &obj(i)).as_deref(),
            Some(format!("task {i}").as_str())
        );
        e.evict(|_| false);
        assert!(e.cache().1 <= budget, "{} > {budget}", e.cache().1);
    }
    assert!(e.stats.evictions > 20, "{} evictions", e.stats.evictions);

    // A document let go between two acknowledged changes keeps both.
    let id = obj(5);
    for title in ["one", "two"] {
        set(alice.doc(&id), "title", title);
        let a = alice.sync(&mut e, &id);
        assert_durable_first(&a);
        assert!(
            a.iter().any(|a| a.store().is_some()),
            "acknowledged after a write"
        );
        apply(&store, &a);
        let others: Vec<String> = (10..30).map(obj).collect();
        for o in &others {
            fetch(&mut e, &mut alice, o);
        }
        e.evict(|_| false);
        assert!(!e.loaded.contains_key(id.as_str()), "let go");
    }
    let (mut again, _) = reopen(&store, Limits::default());
    let mut bob = Client::join(&mut again, 3, &w.admin);
    assert_eq!(fetch(&mut again, &mut bob, &id).as_deref(), Some("two"));
}

#[test]
fn an_index_behind_its_root_is_rebuilt_and_unknown_files_are_found() {
    let (_tmp, store, w, mut e, mut alice) = stored_space(5);
    // No index written at all (a crash, or a data dir from before indexes): rebuilt.
    assert!(matches!(
        store.scan().unwrap()[0].found,
        Scanned::Rebuild { .. }
    ));
    let (mut e2, problems) = reopen(&store, Limits::default());
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(e2.doc_count(), 6);
    let mut bob = Client::join(&mut e2, 2, &w.admin);
    assert_eq!(fetch(&mut e2, &mut bob, &obj(2)).as_deref(), Some("task 2"));

    // An index written after a new object was listed, before its document came: the
    // document's files are found when it is asked for.
    flush(&mut e, &store);
    let late = obj(99);
    list_object(alice.doc(ROOT_ID), &late);
    let a = alice.sync(&mut e, ROOT_ID);
    apply(&store, &a);
    // The root changed after the index was written (a crash before the next write of it):
    // the index is not used.
    let mut fresh = echo();
    let stale = fresh.open(store.scan().unwrap().remove(0), NOW);
    assert_eq!(stale.unwrap_err().root, ROOT_ID);
    flush(&mut e, &store);
    set(alice.doc(&late), "title", "late");
    let a = alice.sync(&mut e, &late);
    apply(&store, &a);
    let (mut e3, _) = reopen(&store, Limits::default());
    assert!(matches!(
        store.scan().unwrap()[0].found,
        Scanned::Indexed { .. }
    ));
    assert_eq!(e3.doc_count(), 6, "the index does not know it");
    let mut carol = Client::join(&mut e3, 3, &w.admin);
    assert_eq!(fetch(&mut e3, &mut carol, &late).as_deref(), Some("late"));
    assert_eq!(e3.doc_count(), 7);
    // A non-member's request for it does not look for it.
    let (mut e4, _) = reopen(&store, Limits::default());
    let mut mallory = Client::join(&mut e4, 7, &key(7));
    assert_eq!(fetch(&mut e4, &mut mallory, &late), None);
    assert_eq!(e4.stats.loads, 0);
}

#[test]
fn a_document_that_does_not_load_is_quarantined_when_first_read() {
    let (tmp, store, w, mut e, _alice) = stored_space(3);
    flush(&mut e, &store);
    let log = tmp
        .path()
        .join(format!("spaces/{}/{}.log", w.space, obj(1)));
    let mut bytes = std::fs::read(&log).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x40;
    std::fs::write(&log, &bytes).unwrap();
    let (mut e, problems) = reopen(&store, Limits::default());
    assert!(problems.is_empty(), "not read on start");
    let mut alice = Client::join(&mut e, 2, &w.admin);
    assert_eq!(fetch(&mut e, &mut alice, &obj(1)), None);
    assert!(
        alice.errors.iter().any(|m| m.contains("quarantined")),
        "{:?}",
        alice.errors
    );
    assert_eq!(e.quarantined().len(), 1);
    assert_eq!(e.take_problems().len(), 1);
    assert_eq!(std::fs::read(&log).unwrap(), bytes, "never rewritten");
    assert_eq!(
        fetch(&mut e, &mut alice, &obj(2)).as_deref(),
        Some("task 2")
    );
}

/// A request frame for `id` from `c`, as `Client::send` makes it.
fn request_frame(e: &Echo, c: &Client, id: &str) -> Vec<u8> {
    let m = Automerge::new()
        .generate_sync_message(&mut sync::State::new())
        .unwrap();
    frame(vec![
        ("type", t("request")),
        ("senderId", t(&c.peer)),
        ("targetId", t(e.peer_id())),
        ("documentId", t(id)),
        ("data", Value::Bytes(m.encode())),
    ])
}

#[test]
fn documents_read_off_the_thread_are_taken_only_while_still_current() {
    let (_tmp, store, w, mut e, _alice) = stored_space(5);
    flush(&mut e, &store);
    let (mut e, _) = reopen(&store, Limits::default());
    let mallory = Client::join(&mut e, 7, &key(7));
    let mut alice = Client::join(&mut e, 2, &w.admin);

    // A non-member's frame needs no read; a member's does, of a document not in memory.
    assert_eq!(
        e.wants(
            mallory.conn,
            &obj(1),
            request_frame(&e, &mallory, &obj(1)).len()
        ),
        None
    );
    let wanted = e.wants(
        alice.conn,
        &obj(1),
        request_frame(&e, &alice, &obj(1)).len(),
    );
    assert_eq!(wanted, Some(w.space.clone()));
    assert_eq!(
        e.wants(
            alice.conn,
            "unknown",
            request_frame(&e, &alice, "unknown").len()
        ),
        None
    );

    // Read off the thread and put in place: served with no read of its own.
    let p = preload(&*store, w.space.clone(), obj(1));
    e.preloaded(p);
    assert_eq!(e.stats.loads, 1);
    assert_eq!(
        e.wants(
            alice.conn,
            &obj(1),
            request_frame(&e, &alice, &obj(1)).len()
        ),
        None
    );
    assert_eq!(
        fetch(&mut e, &mut alice, &obj(1)).as_deref(),
        Some("task 1")
    );
    assert_eq!(e.stats.loads, 1);

    // A read that began before the document changed is dropped: the change stays.
    let stale = preload(&*store, w.space.clone(), obj(1));
    set(alice.doc(&obj(1)), "title", "changed");
    let a = alice.sync(&mut e, &obj(1));
    apply(&store, &a);
    e.loaded.clear();
    e.cached = 0;
    e.preloaded(stale);
    assert!(
        !e.loaded.contains_key(obj(1).as_str()),
        "a stale read is not taken"
    );
    let mut bob = Client::join(&mut e, 3, &w.admin);
    assert_eq!(fetch(&mut e, &mut bob, &obj(1)).as_deref(), Some("changed"));

    // A read of a document already in memory is dropped too (memory may be ahead).
    let again = preload(&*store, w.space.clone(), obj(1));
    let held = e.cache();
    e.preloaded(again);
    assert_eq!(e.cache(), held);

    // Files that do not load are quarantined, as on a read on the thread.
    let (mut e2, _) = reopen(&store, Limits::default());
    let bad = Preload {
        space: w.space.clone(),
        id: obj(2),
        read: Ok((
            {
                let en = &e2.ids[obj(2).as_str()];
                [u64::from(en.snapshot_bytes), u64::from(en.log_bytes)]
            },
            Err("damaged".into()),
        )),
    };
    e2.preloaded(bad);
    assert_eq!(e2.quarantined_count(), 1);
    assert_eq!(e2.take_problems().len(), 1);
}

/// A disk that fails every read (EIO, a full file table).
struct Failing;

impl Source for Failing {
    fn read_doc(
        &self,
        space: &str,
        _doc: &str,
    ) -> Result<Option<crate::store::StoredDoc>, crate::store::StoreError> {
        Err(crate::store::StoreError::Io {
            path: space.into(),
            source: std::io::Error::other("injected read failure"),
        })
    }
}

#[test]
fn a_read_that_fails_is_never_taken_for_a_new_document() {
    let (tmp, store, w, mut e, mut alice) = stored_space(2);
    // The root lists X and the index is written; X's files come after it (and a crash
    // follows before the next index): the index does not know X has files.
    let x = obj(7);
    list_object(alice.doc(ROOT_ID), &x);
    apply(&store, &alice.sync(&mut e, ROOT_ID));
    flush(&mut e, &store);
    set(alice.doc(&x), "title", "acknowledged");
    apply(&store, &alice.sync(&mut e, &x));
    let log = tmp.path().join(format!("spaces/{}/{x}.log", w.space));
    let on_disk = std::fs::read(&log).unwrap();

    // After the restart the disk fails: a member's own copy of X is not taken for new.
    let (mut e, _) = reopen(&store, Limits::default());
    e.set_source(std::sync::Arc::new(Failing));
    let mut bob = Client::join(&mut e, 2, &w.admin);
    set(bob.doc(&x), "title", "bob's");
    set(bob.doc(&x), "other", "bob's");
    let a = bob.sync(&mut e, &x);
    assert!(
        a.iter().all(|a| a.store().is_none()),
        "nothing written: {a:?}"
    );
    assert!(
        bob.errors.iter().any(|m| m.contains("cannot be read")),
        "{:?}",
        bob.errors
    );
    assert_eq!(std::fs::read(&log).unwrap(), on_disk);

    // An export is never short of X: it fails while the disk does, and has X after.
    let (mut e3, _) = reopen(&store, Limits::default());
    e3.set_source(std::sync::Arc::new(Failing));
    assert!(matches!(e3.export(&w.space), Some(Err(_))));
    e3.set_source(store.clone());
    let exp = e3.export(&w.space).unwrap().unwrap();
    assert!(exp.documents.contains_key(&x), "{:?}", exp.documents.keys());

    // The disk is back: bob's copy merges into X's files, nothing acknowledged is lost.
    e.set_source(store.clone());
    let mut bob = Client::join(&mut e, 3, &w.admin);
    set(bob.doc(&x), "other", "bob's");
    apply(&store, &bob.sync(&mut e, &x));
    let (mut again, _) = reopen(&store, Limits::default());
    let mut carol = Client::join(&mut again, 4, &w.admin);
    fetch(&mut again, &mut carol, &x);
    let doc = &carol.docs[&x].0;
    assert_eq!(get(doc, "other").as_deref(), Some("bob's"));
    assert_eq!(get(doc, "title").as_deref(), Some("acknowledged"));
}

#[test]
fn a_space_whose_root_does_not_load_serves_nobody() {
    let (tmp, store, w, mut e, _alice) = stored_space(2);
    flush(&mut e, &store);
    let log = tmp.path().join(format!("spaces/{}/{ROOT_ID}.log", w.space));
    let mut bytes = std::fs::read(&log).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x40;
    std::fs::write(&log, &bytes).unwrap();
    let (mut e, problems) = reopen(&store, Limits::default());
    let mut alice = Client::join(&mut e, 2, &w.admin);
    if problems.is_empty() {
        // The index is current: the root is read when first asked for.
        assert_eq!(
            fetch(&mut e, &mut alice, &obj(1)).as_deref(),
            Some("task 1"),
            "served on the indexed credentials until the root is read"
        );
        assert_eq!(fetch(&mut e, &mut alice, ROOT_ID), None);
    }
    assert_eq!(e.quarantined().len(), 1);
    assert_eq!(fetch(&mut e, &mut alice, &obj(0)), None, "nobody is served");
    assert!(alice.unavailable.contains(&obj(0)));
    assert_eq!(std::fs::read(&log).unwrap(), bytes, "never rewritten");
}

#[test]
fn ids_nobody_lists_any_more_are_forgotten() {
    let (mut e, _w, mut alice) = set_up();
    let mut peak = 0;
    for round in 0..30 {
        let ids: Vec<String> = (0..200)
            .map(|i| format!("Gone{round}x{i}").replace('0', "z"))
            .collect();
        for id in &ids {
            list_object(alice.doc(ROOT_ID), id);
        }
        alice.sync(&mut e, ROOT_ID);
        let mut tx = alice.doc(ROOT_ID).transaction();
        let (_, objects) = tx.get(automerge::ROOT, "objects").unwrap().unwrap();
        for id in &ids {
            tx.delete(&objects, id.as_str()).unwrap();
        }
        tx.commit();
        alice.sync(&mut e, ROOT_ID);
        peak = peak.max(e.ids.len());
    }
    assert!(alice.errors.is_empty(), "{:?}", alice.errors);
    assert!(
        peak < 2 * 200 + 1024 + 400,
        "{peak} ids held for at most 200 listed"
    );
}

/// Sync messages `actions` send to `conn`, by documentId.
fn synced_to(actions: &[Action], conn: ConnId) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { conn: c, bytes } if *c == conn => {
                let v: Value = ciborium::from_reader(&bytes[..]).ok()?;
                let map = v.as_map()?;
                let text = |k: &str| {
                    map.iter()
                        .find(|(kk, _)| kk.as_text() == Some(k))
                        .and_then(|(_, v)| v.as_text())
                        .map(str::to_owned)
                };
                (text("type")? == "sync")
                    .then(|| text("documentId"))
                    .flatten()
            }
            _ => None,
        })
        .collect()
}

/// Carries `actions` of `a` (to its link `a_conn`) to `b` (as its connection `b_conn`) and
/// back, until neither has anything more to say; returns every action `b` produced.
fn exchange(
    a: &mut Echo,
    a_conn: ConnId,
    b: &mut Echo,
    b_conn: ConnId,
    actions: Vec<Action>,
    now: u64,
) -> Vec<Action> {
    let mut from_b_all = Vec::new();
    let mut to_b: Vec<Vec<u8>> = sends(&actions, a_conn);
    for _ in 0..200 {
        if to_b.is_empty() {
            break;
        }
        let mut to_a = Vec::new();
        for bytes in to_b.drain(..) {
            let acts = b.receive(b_conn, &bytes, now);
            to_a.extend(sends(&acts, b_conn));
            from_b_all.extend(acts);
        }
        for bytes in to_a {
            to_b.extend(sends(&a.receive(a_conn, &bytes, now), a_conn));
        }
    }
    from_b_all
}

fn sends(actions: &[Action], conn: ConnId) -> Vec<Vec<u8>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { conn: c, bytes } if *c == conn => Some(bytes.clone()),
            _ => None,
        })
        .collect()
}

/// A space (root and three objects) at KUBE 9 whose credentials also make KUBE 8 a
/// replicator, and KUBE 9 linked to `other` (KUBE 8) as its connection 30.
fn linked(other: &mut Echo) -> (Echo, World) {
    let (mut e, w, mut alice) = set_up();
    add_credential(
        alice.doc(ROOT_ID),
        &says(
            &w.admin,
            &halo::did(&key(8)),
            member(&w.space, Role::Replicator),
        ),
    );
    for i in 0..3 {
        list_object(alice.doc(ROOT_ID), &obj(i));
        set(alice.doc(&obj(i)), "title", "t");
    }
    alice.sync(&mut e, ROOT_ID);
    for i in 0..3 {
        alice.sync(&mut e, &obj(i));
    }
    assert!(alice.errors.is_empty(), "{:?}", alice.errors);
    let peer = |did: &halo::SigningKey, id: &str| auth::Peer {
        did: halo::did(did),
        peer: id.to_owned(),
    };
    e.connect_kube(20, peer(&key(8), other.peer_id()), NOW);
    other.connect(30, peer(&key(9), e.peer_id()), NOW);
    assert!(!sends(&other.receive(30, &wire::join(e.peer_id()), NOW), 30).is_empty());
    (e, w)
}

#[test]
fn linked_kubes_replicate_a_space_root_first_then_its_objects() {
    let mut other = Echo::new(halo::did(&key(8)), Admit::Any, Limits::default());
    let (mut e, w) = linked(&mut other);
    // The first offer is the root alone; the objects wait until KUBE 8 holds it.
    let first = e.tick(NOW + 1000);
    assert_eq!(synced_to(&first, 20), [ROOT_ID.to_owned()]);
    exchange(&mut e, 20, &mut other, 30, first, NOW + 1000);
    assert_eq!(other.list()[0].documents, 1, "the root arrived");
    for t in 2..6 {
        let a = e.tick(NOW + t * 1000);
        exchange(&mut e, 20, &mut other, 30, a, NOW + t * 1000);
    }
    assert_eq!(other.list()[0].space, w.space);
    assert_eq!(other.list()[0].documents, 4, "root and three objects");

    // A change at KUBE 9 reaches KUBE 8 as it reaches any peer syncing the document.
    let mut bob = Client::join(&mut e, 3, &w.admin);
    fetch(&mut e, &mut bob, &obj(1));
    set(bob.doc(&obj(1)), "title", "changed");
    let a = bob.sync(&mut e, &obj(1));
    exchange(&mut e, 20, &mut other, 30, a, NOW + 7000);
    let mut carol = Client::join(&mut other, 4, &w.admin);
    assert_eq!(
        fetch(&mut other, &mut carol, &obj(1)).as_deref(),
        Some("changed")
    );
}

#[test]
fn a_kube_that_does_not_replicate_a_space_refuses_it_without_striking_the_link() {
    // KUBE 8 replicates only spaces an admin it does not know admitted.
    let policy = Admit::Admins(vec![halo::did(&key(99))]);
    let mut other = Echo::new(halo::did(&key(8)), policy, Limits::default());
    let (mut e, w) = linked(&mut other);
    let mut from_other = Vec::new();
    let mut objects_offered = 0;
    for t in 1..8 {
        let a = e.tick(NOW + t * 1000);
        objects_offered += synced_to(&a, 20).iter().filter(|d| *d != ROOT_ID).count();
        from_other.extend(exchange(&mut e, 20, &mut other, 30, a, NOW + t * 1000));
    }
    assert_eq!(other.space_count(), 0, "refused");
    assert_eq!(
        objects_offered, 0,
        "nothing of a refused space after its root"
    );
    assert!(e.conns[&20].refused.contains(&w.space));
    assert_eq!(other.conns[&30].strikes, 0, "told, not struck");
    assert!(
        !from_other.iter().any(|a| matches!(a, Action::Close { .. })),
        "the link stays open"
    );
}

#[test]
fn offers_to_a_link_are_paced() {
    let mut other = Echo::new(halo::did(&key(8)), Admit::Any, Limits::default());
    let (mut e, _w) = linked(&mut other);
    e.set_limits(Limits {
        messages_per_second: 8,
        ..Limits::default()
    });
    // The root is held there; then two offers a second (a quarter of messages_per_second).
    let a = e.tick(NOW + 1000);
    exchange(&mut e, 20, &mut other, 30, a, NOW + 1000);
    let next = e.tick(NOW + 2000);
    assert_eq!(synced_to(&next, 20).len(), 2, "{:?}", synced_to(&next, 20));
}

#[test]
fn a_kube_admitted_later_is_offered_the_space_then() {
    let (mut e, w, mut alice) = set_up();
    let seven = auth::Peer {
        did: halo::did(&key(7)),
        peer: "kube-seven".into(),
    };
    e.connect_kube(21, seven, NOW);
    assert!(
        synced_to(&e.tick(NOW + 1000), 21).is_empty(),
        "not a replicator yet"
    );
    add_credential(
        alice.doc(ROOT_ID),
        &says(
            &w.admin,
            &halo::did(&key(7)),
            member(&w.space, Role::Replicator),
        ),
    );
    alice.sync(&mut e, ROOT_ID);
    assert_eq!(synced_to(&e.tick(NOW + 2000), 21), [ROOT_ID.to_owned()]);
}
