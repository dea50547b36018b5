//! The ECHO peer as a state machine without I/O: authenticated connections in, frames in,
//! [`Action`]s out (frames to send, writes to make durable, sockets to close). The driver
//! must make every [`Action::Store`] of a batch durable before it performs the batch's
//! sends: that is how no peer ever sees KUBE's heads include a change that is not on disk.
//!
//! Access control (PROTOCOL.md §3) lives here: which documents belong to which space, who
//! may read and write them by the space's HALO credentials, and when a new space or object
//! is accepted.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use automerge::Automerge;
use automerge::sync::{self, SyncDoc};
use halo::admission::{Admit, Decision};
use halo::credential::{Credential, Role};
use halo::space::{Clock, Membership};
use serde::{Deserialize, Serialize};

use crate::auth;
use crate::space::{self, Root};
use crate::store::{StoredSpace, Write};
use crate::wire::{self, Incoming, Outgoing};

pub type ConnId = u64;

/// Seconds a connection has to send `join` (a client's abandoned socket would otherwise hold
/// a connection slot for as long as it answers pings).
pub const JOIN_SECS: u64 = 10;

/// Limits a peer cannot exceed (`echo.*` in kube.yml).
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub messages_per_second: u32,
    pub max_docs_per_space: usize,
    pub max_pending_docs: usize,
    pub pending_secs: u64,
    pub strikes: u32,
    /// A document's log is folded into a new snapshot once it is this large (and larger
    /// than the snapshot).
    pub compact_bytes: u64,
    /// Bytes one space may keep on disk; past it, changes and new documents are refused
    /// (an admin's changes to the root still pass, so members can still be revoked).
    pub max_space_bytes: u64,
}

impl Limits {
    /// What one message's compressed changes may inflate to: four times the largest
    /// message (Automerge's own column compression stays far below that).
    pub fn max_inflated_bytes(&self) -> u64 {
        (self.max_message_bytes as u64).saturating_mul(4)
    }

    /// What one message's chunks may declare in values (operations, changes): a quarter
    /// of the largest message in bytes (about 4 million by default). Run lengths let a few
    /// bytes stand for billions of operations, which Automerge would walk one by one.
    pub fn max_values(&self) -> u64 {
        (self.max_message_bytes as u64 / 4).max(1)
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_message_bytes: 16 << 20,
            messages_per_second: 1000,
            max_docs_per_space: 100_000,
            max_pending_docs: 10_000,
            pending_secs: 30,
            strikes: 10,
            compact_bytes: 64 << 10,
            max_space_bytes: 1 << 30,
        }
    }
}

/// What the driver does, in order (all `Store`s of a batch before its sends).
#[derive(Debug, PartialEq)]
pub enum Action {
    Send { conn: ConnId, bytes: Vec<u8> },
    Store(Write),
    Close { conn: ConnId },
}

impl Action {
    /// The write, if this is one.
    pub fn store(&self) -> Option<&Write> {
        match self {
            Action::Store(w) => Some(w),
            _ => None,
        }
    }
}

/// Counters for metrics.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub messages_in: u64,
    pub bytes_in: u64,
    pub messages_out: u64,
    pub bytes_out: u64,
    /// Refused messages and changes by reason.
    pub refused: BTreeMap<&'static str, u64>,
}

/// The reasons a change or message is refused (metric labels).
pub const REFUSALS: [&str; 12] = [
    "malformed",
    "too-large",
    "rate",
    "invalid",
    "reader",
    "not-member",
    "not-admitted",
    "unlisted",
    "too-many-docs",
    "revoked",
    "quarantined",
    "quota",
];

struct Space {
    root: String,
    credentials: Vec<Credential>,
    objects: BTreeMap<String, String>,
    membership: Membership,
    docs: BTreeSet<String>,
    /// Why KUBE does not replicate the space (any more): its credentials no longer admit
    /// KUBE, or `echo.admit` refuses its admin. Nobody is served then; the files stay.
    refusal: Option<halo::admission::Refusal>,
    /// When a credential's time comes (an expiry, or an issue date past the skew) and the
    /// membership must be judged again, in Unix seconds.
    review_at: Option<u64>,
    /// Bytes of its documents' files (for `echo.max_space_bytes`).
    bytes: u64,
    /// Credentials (as JSON) whose proofs verified: entries never change once in a root,
    /// so a root change verifies only the new ones.
    proven: std::collections::HashSet<String>,
}

impl Space {
    /// A space known by its root only; `refresh_root` reads the rest.
    fn new(root: String) -> Space {
        Space {
            root,
            credentials: Vec::new(),
            objects: BTreeMap::new(),
            membership: Membership::default(),
            docs: BTreeSet::new(),
            refusal: None,
            review_at: None,
            bytes: 0,
            proven: std::collections::HashSet::new(),
        }
    }
}

/// The next time after `clock.now` at which one of `creds` starts or stops counting.
fn next_review(creds: &[Credential], clock: Clock) -> Option<u64> {
    creds
        .iter()
        .flat_map(|c| {
            let ends = c
                .expires
                .map(|e| e.saturating_add(clock.skew).saturating_add(1));
            let starts = c.issued.checked_sub(clock.skew);
            [ends, starts]
        })
        .flatten()
        .filter(|t| *t > clock.now)
        .min()
}

struct Doc {
    space: String,
    am: Automerge,
    snapshot_bytes: u64,
    log_bytes: u64,
    last_change: u64,
}

struct Pending {
    am: Automerge,
    state: sync::State,
    since_ms: u64,
}

struct Conn {
    did: String,
    peer: String,
    joined: bool,
    since_ms: u64,
    closed: bool,
    syncs: HashMap<String, sync::State>,
    pending: HashMap<String, Pending>,
    strikes: u32,
    tokens: f64,
    refill_ms: u64,
}

/// The replica: every space KUBE holds, and the peers connected to it.
pub struct Echo {
    me: String,
    storage_id: String,
    kube: String,
    policy: Admit,
    limits: Limits,
    spaces: BTreeMap<String, Space>,
    docs: HashMap<String, Doc>,
    /// documentId → the space whose root lists it.
    listed: HashMap<String, String>,
    /// documentId of each space's root → the space.
    roots: HashMap<String, String>,
    /// Documents whose files do not load: documentId → (space, why). They are served to
    /// nobody and written by nobody until an operator repairs them (a restore); their
    /// files are never touched.
    quarantined: BTreeMap<String, (String, String)>,
    conns: HashMap<ConnId, Conn>,
    pub stats: Stats,
}

/// One space for `kube space list`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SpaceSummary {
    pub space: String,
    pub root: String,
    pub documents: usize,
    pub members: usize,
    pub bytes: u64,
    pub last_change: u64,
}

/// A member for `kube space show`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Member {
    pub key: String,
    pub role: Role,
    pub granted_by: String,
}

/// A document for `kube space show`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DocSummary {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub bytes: u64,
    pub last_change: u64,
}

/// `kube space show`: the summary's fields, with the members and documents themselves in
/// place of their counts (one key each in JSON).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SpaceDetail {
    pub space: String,
    pub root: String,
    pub bytes: u64,
    pub last_change: u64,
    pub members: Vec<Member>,
    pub devices: BTreeMap<String, String>,
    pub documents: Vec<DocSummary>,
}

/// A whole space in one file (`kube space export`): its documents as Automerge saves; the
/// credentials travel inside the root document.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Export {
    pub format: String,
    pub space: String,
    pub root: String,
    /// documentId → base64 of `Automerge::save()`.
    pub documents: BTreeMap<String, String>,
}

pub const EXPORT_FORMAT: &str = "kube-space-v1";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ImportError {
    #[error("not a {EXPORT_FORMAT} export")]
    Format,
    #[error("space {0} is already here")]
    Exists(String),
    #[error("document {0}: {1}")]
    Document(String, String),
    #[error("the root document is not a space root of {0}")]
    NotARoot(String),
    #[error("document {0} is not listed in the space's root")]
    Unlisted(String),
    #[error("this KUBE does not replicate the space: {0}")]
    NotAdmitted(String),
    #[error("more than {0} documents")]
    TooMany(usize),
}

fn clock(now_ms: u64) -> Clock {
    Clock {
        now: now_ms / 1000,
        skew: halo::space::SKEW_SECS,
    }
}

impl Echo {
    /// `kube` is KUBE's did:key; its peer and storage ids derive from it.
    pub fn new(kube: String, policy: Admit, limits: Limits) -> Echo {
        let tail = kube.rsplit(':').next().unwrap_or("").to_owned();
        Echo {
            me: format!("kube-{tail}"),
            storage_id: format!("kube-{tail}"),
            kube,
            policy,
            limits,
            spaces: BTreeMap::new(),
            docs: HashMap::new(),
            listed: HashMap::new(),
            roots: HashMap::new(),
            quarantined: BTreeMap::new(),
            conns: HashMap::new(),
            stats: Stats::default(),
        }
    }

    pub fn peer_id(&self) -> &str {
        &self.me
    }

    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// A changed `echo.admit` (reload): spaces it refuses stop being served at once (their
    /// open connections are closed); spaces it admits again are served again.
    pub fn set_policy(&mut self, policy: Admit, now_ms: u64) -> Vec<Action> {
        self.policy = policy;
        let mut out = Vec::new();
        let ids: Vec<String> = self.spaces.keys().cloned().collect();
        for id in ids {
            self.membership_changed(&id, now_ms, &mut out);
        }
        out
    }

    /// Puts a space read from disk in place. Documents that do not load are reported and
    /// quarantined: served to nobody, written by nobody, their files untouched.
    pub fn load(&mut self, stored: StoredSpace, now_ms: u64) -> Vec<String> {
        let mut problems = Vec::new();
        let mut space = Space::new(stored.root.clone());
        for (id, d) in stored.docs {
            match load_doc(&d) {
                Ok(am) => {
                    space.docs.insert(id.clone());
                    space.bytes += d.size;
                    self.docs.insert(
                        id,
                        Doc {
                            space: stored.space.clone(),
                            am,
                            snapshot_bytes: d.snapshot.len() as u64,
                            log_bytes: d.size.saturating_sub(d.snapshot.len() as u64),
                            last_change: 0,
                        },
                    );
                }
                Err(why) => {
                    problems.push(format!("{}/{id}: {why} (quarantined)", stored.space));
                    self.quarantined.insert(id, (stored.space.clone(), why));
                }
            }
        }
        self.roots.insert(stored.root.clone(), stored.space.clone());
        self.spaces.insert(stored.space.clone(), space);
        self.refresh_root(&stored.space, now_ms);
        problems
    }

    /// Re-reads a space's root: its credentials, members and object index.
    fn refresh_root(&mut self, space_id: &str, now_ms: u64) {
        let Some(space) = self.spaces.get_mut(space_id) else {
            return;
        };
        let root = self
            .docs
            .get(&space.root)
            .and_then(|d| space::read_root(&d.am))
            .unwrap_or_default();
        space.credentials = root.credentials;
        // Proofs are verified once per credential (the whole credential is the key: a copy
        // that differs anywhere is verified on its own).
        let mut verified: std::collections::HashSet<*const Credential> =
            std::collections::HashSet::new();
        for c in &space.credentials {
            let k = serde_json::to_string(c).unwrap_or_default();
            if space.proven.contains(&k) || c.verify_proof().is_ok() {
                space.proven.insert(k);
                verified.insert(c);
            }
        }
        // (Validation hands back references into this same slice; the rest it verifies
        // again, to report why they fail.)
        space.membership =
            halo::space::validate_with(space_id, &space.credentials, clock(now_ms), &|c| {
                verified.contains(&std::ptr::from_ref(c))
            });
        space.review_at = next_review(&space.credentials, clock(now_ms));
        space.refusal =
            match halo::admission::decide_for(&self.policy, &self.kube, &space.membership) {
                Decision::Replicate { .. } => None,
                Decision::Refuse(r) => Some(r),
            };
        // An id belongs to the first space that lists it, for good once its document is
        // here; a space root is nobody's object. A later lister never takes it over.
        for id in space.objects.keys() {
            if self.listed.get(id).is_some_and(|s| s == space_id) {
                self.listed.remove(id);
            }
        }
        space.objects = root.objects;
        for id in space.objects.keys() {
            let taken = self.roots.contains_key(id)
                || self.docs.get(id).is_some_and(|d| d.space != space_id);
            if !taken {
                self.listed
                    .entry(id.clone())
                    .or_insert_with(|| space_id.to_owned());
            }
        }
    }

    /// A connection that proved its key.
    pub fn connect(&mut self, conn: ConnId, peer: auth::Peer, now_ms: u64) {
        self.conns.insert(
            conn,
            Conn {
                did: peer.did,
                peer: peer.peer,
                joined: false,
                since_ms: now_ms,
                closed: false,
                syncs: HashMap::new(),
                pending: HashMap::new(),
                strikes: 0,
                tokens: f64::from(self.limits.messages_per_second) * 10.0,
                refill_ms: now_ms,
            },
        );
    }

    pub fn disconnect(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
    }

    pub fn peers(&self) -> usize {
        self.conns.len()
    }

    pub fn space_count(&self) -> usize {
        self.spaces.len()
    }

    /// Takes a document out of service without touching its files (they hold what was
    /// acknowledged): after a panic while applying a peer's changes to it, its state in
    /// memory cannot be trusted, and nothing of it may be written or sent. A restart loads
    /// it from disk again.
    pub fn quarantine(&mut self, doc: &str, why: &str) {
        let Some(d) = self.docs.remove(doc) else {
            return;
        };
        if let Some(s) = self.spaces.get_mut(&d.space) {
            s.docs.remove(doc);
        }
        for c in self.conns.values_mut() {
            c.syncs.remove(doc);
        }
        self.quarantined
            .insert(doc.to_owned(), (d.space, why.to_owned()));
    }

    /// Documents whose files do not load: (space, documentId, why).
    pub fn quarantined(&self) -> Vec<(String, String, String)> {
        self.quarantined
            .iter()
            .map(|(doc, (space, why))| (space.clone(), doc.clone(), why.clone()))
            .collect()
    }

    pub fn quarantined_count(&self) -> usize {
        self.quarantined.len()
    }

    pub fn doc_count(&self) -> usize {
        self.docs.len()
    }

    fn send(&mut self, conn: ConnId, msg: &Outgoing<'_>, out: &mut Vec<Action>) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let bytes = wire::encode(&self.me, &c.peer, msg);
        self.stats.messages_out += 1;
        self.stats.bytes_out += bytes.len() as u64;
        out.push(Action::Send { conn, bytes });
    }

    fn close(&mut self, conn: ConnId, out: &mut Vec<Action>) {
        if let Some(c) = self.conns.get_mut(&conn)
            && !c.closed
        {
            c.closed = true;
            c.syncs.clear();
            c.pending.clear();
            out.push(Action::Close { conn });
        }
    }

    /// Refuses something with an `error` message; the connection closes on the last strike.
    fn strike(&mut self, conn: ConnId, reason: &'static str, message: &str, out: &mut Vec<Action>) {
        *self.stats.refused.entry(reason).or_default() += 1;
        self.send(conn, &Outgoing::Error { message }, out);
        let limit = self.limits.strikes;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.strikes += 1;
            if c.strikes >= limit {
                self.close(conn, out);
            }
        }
    }

    /// Handles one frame from `conn`.
    pub fn receive(&mut self, conn: ConnId, frame: &[u8], now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(c) = self.conns.get_mut(&conn) else {
            return out;
        };
        if c.closed {
            return out;
        }
        self.stats.messages_in += 1;
        self.stats.bytes_in += frame.len() as u64;
        // Rate: a bucket of ten seconds' worth, refilled continuously.
        let rate = f64::from(self.limits.messages_per_second.max(1));
        let elapsed = now_ms.saturating_sub(c.refill_ms) as f64 / 1000.0;
        c.tokens = (c.tokens + elapsed * rate).min(rate * 10.0);
        c.refill_ms = now_ms;
        if c.tokens < 1.0 {
            self.strike(
                conn,
                "rate",
                "refused: too many messages per second",
                &mut out,
            );
            return out;
        }
        c.tokens -= 1.0;
        if frame.len() > self.limits.max_message_bytes {
            let m = format!(
                "refused: message of {} bytes is over the limit of {}",
                frame.len(),
                self.limits.max_message_bytes
            );
            self.strike(conn, "too-large", &m, &mut out);
            return out;
        }
        let msg = match wire::decode(frame) {
            Ok(m) => m,
            Err(e) => {
                self.strike(conn, "malformed", &format!("refused: {e}"), &mut out);
                return out;
            }
        };
        let (joined, peer) = (c.joined, c.peer.clone());
        if msg.sender() != peer {
            let m = format!("refused: senderId must be {peer}, the peer id the token names");
            self.strike(conn, "malformed", &m, &mut out);
            self.close(conn, &mut out);
            return out;
        }
        match msg {
            Incoming::Join { versions, .. } => {
                if joined || !versions.iter().any(|v| v == "1") {
                    self.strike(
                        conn,
                        "malformed",
                        "refused: join once, with protocol version 1",
                        &mut out,
                    );
                    self.close(conn, &mut out);
                    return out;
                }
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.joined = true;
                }
                let storage_id = self.storage_id.clone();
                self.send(
                    conn,
                    &Outgoing::Peer {
                        storage_id: &storage_id,
                    },
                    &mut out,
                );
            }
            _ if !joined => {
                self.strike(conn, "malformed", "refused: join first", &mut out);
                self.close(conn, &mut out);
            }
            Incoming::Sync {
                doc, data, request, ..
            } => match sync::Message::decode(&data) {
                // Compressed changes are measured before Automerge inflates them.
                Ok(m) => {
                    let bounded =
                        crate::bound::check_blooms(m.have.iter().map(|h| h.bloom.to_bytes()))
                            .and_then(|()| {
                                crate::bound::check_with(
                                    m.changes.iter(),
                                    self.limits.max_inflated_bytes(),
                                    self.limits.max_values(),
                                )
                            });
                    match bounded {
                        Err(e) => {
                            let m = format!("refused: changes to {doc}: {e}");
                            self.strike(conn, "too-large", &m, &mut out);
                        }
                        Ok(()) => {
                            if self.docs.contains_key(&doc) {
                                self.sync_known(conn, &doc, m, now_ms, &mut out);
                            } else {
                                self.sync_unknown(conn, &doc, m, request, now_ms, &mut out);
                            }
                        }
                    }
                }
                Err(e) => {
                    let m = format!("refused: invalid sync message for {doc}: {e}");
                    self.strike(conn, "invalid", &m, &mut out);
                }
            },
            Incoming::DocUnavailable { doc, .. } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.syncs.remove(&doc);
                    c.pending.remove(&doc);
                }
            }
            e @ Incoming::Ephemeral { .. } => self.ephemeral(conn, &e, &mut out),
            Incoming::Ignored { .. } => {}
        }
        out
    }

    /// An admin of a space KUBE no longer replicates still reaches its root, so the space
    /// can admit KUBE again (a new replicator credential) and be served again.
    fn admin_of_refused(&self, conn: ConnId, space: &str) -> Option<Role> {
        let c = self.conns.get(&conn)?;
        let s = self.spaces.get(space)?;
        // Not when the operator's `echo.admit` refuses the space: that is final until reload.
        let by_credentials = !matches!(
            s.refusal,
            None | Some(halo::admission::Refusal::AdminNotAllowed(_))
        );
        (by_credentials && s.membership.role_of(&c.did) == Some(Role::Admin)).then_some(Role::Admin)
    }

    /// The role `conn` has in `space`; none in a space KUBE does not replicate.
    fn role(&self, conn: ConnId, space: &str) -> Option<Role> {
        let c = self.conns.get(&conn)?;
        let s = self.spaces.get(space)?;
        if s.refusal.is_some() {
            return None;
        }
        s.membership.role_of(&c.did)
    }

    fn sync_known(
        &mut self,
        conn: ConnId,
        doc_id: &str,
        mut msg: sync::Message,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        let Some(space_id) = self.docs.get(doc_id).map(|d| d.space.clone()) else {
            return;
        };
        let is_root = self.spaces.get(&space_id).map(|s| s.root.as_str()) == Some(doc_id);
        let Some(role) = self.role(conn, &space_id).or_else(|| {
            is_root
                .then(|| self.admin_of_refused(conn, &space_id))
                .flatten()
        }) else {
            *self.stats.refused.entry("not-member").or_default() += 1;
            if let Some(c) = self.conns.get_mut(&conn) {
                c.syncs.remove(doc_id);
            }
            self.send(conn, &Outgoing::DocUnavailable { doc: doc_id }, out);
            return;
        };
        if !msg.changes.is_empty() && role < Role::Replicator {
            let m = format!("refused: a reader's changes to {doc_id} are not accepted");
            self.strike(conn, "reader", &m, out);
            msg.changes = sync::ChunkList::empty();
        }
        let used = self.spaces.get(&space_id).map_or(0, |s| s.bytes);
        // An admin's root changes (revocations) pass the quota, up to twice it.
        let hard = self.limits.max_space_bytes.saturating_mul(2);
        if !msg.changes.is_empty()
            && used >= self.limits.max_space_bytes
            && (!(is_root && role == Role::Admin) || used >= hard)
        {
            let m = format!(
                "refused: space {space_id} holds {used} bytes, its quota (echo.max_space_bytes) is {}",
                self.limits.max_space_bytes
            );
            self.strike(conn, "quota", &m, out);
            msg.changes = sync::ChunkList::empty();
        }
        let (Some(c), Some(doc)) = (self.conns.get_mut(&conn), self.docs.get_mut(doc_id)) else {
            return;
        };
        if c.closed {
            return;
        }
        let state = c.syncs.entry(doc_id.to_owned()).or_default();
        let before = doc.am.get_heads();
        let result = if is_root && !msg.changes.is_empty() {
            // Changes to a root apply to a copy first: they must keep it the same space's
            // root and may not take credentials away (membership only changes by
            // credentials, revocations included).
            let mut copy = doc.am.clone();
            let mut st = state.clone();
            // Changes whose dependencies are missing wait inside the copy, unseen by the
            // check; they apply in a later message that brings the dependency, and that
            // message's result is judged whole (held changes included), so none escapes it.
            match copy.receive_sync_message(&mut st, msg) {
                Ok(()) => {
                    let old = space::read_root(&doc.am).unwrap_or_default();
                    let verdict = space::read_root(&copy)
                        .ok_or_else(|| "a root must stay a space root".to_owned())
                        .and_then(|new| space::root_change(&old, &new));
                    verdict.map(|_| {
                        doc.am = copy;
                        *state = st;
                    })
                }
                Err(e) => Err(e.to_string()),
            }
        } else {
            doc.am
                .receive_sync_message(state, msg)
                .map_err(|e| e.to_string())
        };
        if let Err(e) = result {
            let m = format!("refused: changes to {doc_id}: {e}");
            self.strike(conn, "invalid", &m, out);
            return;
        }
        let changed = doc.am.get_heads() != before;
        if changed {
            let grown = persist_since(doc, doc_id, &before, now_ms, self.limits.compact_bytes, out);
            if let Some(s) = self.spaces.get_mut(&space_id) {
                s.bytes = s.bytes.saturating_add_signed(grown);
            }
            if is_root {
                self.membership_changed(&space_id, now_ms, out);
            }
            self.broadcast(doc_id, Some(conn), out);
        }
        self.reply(conn, doc_id, out);
    }

    /// Sends `conn` what it lacks of `doc_id`, if anything.
    fn reply(&mut self, conn: ConnId, doc_id: &str, out: &mut Vec<Action>) {
        let (Some(c), Some(doc)) = (self.conns.get_mut(&conn), self.docs.get(doc_id)) else {
            return;
        };
        if c.closed {
            return;
        }
        let Some(state) = c.syncs.get_mut(doc_id) else {
            return;
        };
        if let Some(m) = doc.am.generate_sync_message(state) {
            self.send(
                conn,
                &Outgoing::Sync {
                    doc: doc_id,
                    data: m.encode(),
                },
                out,
            );
        }
    }

    /// Tells every other connection syncing `doc_id` about its new changes.
    fn broadcast(&mut self, doc_id: &str, except: Option<ConnId>, out: &mut Vec<Action>) {
        let mut others: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(id, c)| Some(**id) != except && c.syncs.contains_key(doc_id))
            .map(|(id, _)| *id)
            .collect();
        others.sort_unstable();
        for other in others {
            self.reply(other, doc_id, out);
        }
    }

    fn sync_unknown(
        &mut self,
        conn: ConnId,
        doc_id: &str,
        msg: sync::Message,
        request: bool,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        let max_pending = self.limits.max_pending_docs;
        if let Some((space, _)) = self.quarantined.get(doc_id) {
            let m = format!(
                "refused: {doc_id} of {space} is quarantined (its files on this KUBE do not load); an operator must restore it"
            );
            *self.stats.refused.entry("quarantined").or_default() += 1;
            self.send(conn, &Outgoing::Error { message: &m }, out);
            self.send(conn, &Outgoing::DocUnavailable { doc: doc_id }, out);
            return;
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.pending.contains_key(doc_id) {
            if request || (msg.heads.is_empty() && msg.changes.is_empty()) {
                // Neither side has it.
                self.send(conn, &Outgoing::DocUnavailable { doc: doc_id }, out);
                return;
            }
            if c.pending.len() >= max_pending {
                let m = format!("refused: more than {max_pending} documents waiting for a space");
                self.strike(conn, "too-many-docs", &m, out);
                self.send(conn, &Outgoing::DocUnavailable { doc: doc_id }, out);
                return;
            }
            c.pending.insert(
                doc_id.to_owned(),
                Pending {
                    am: Automerge::new(),
                    state: sync::State::new(),
                    since_ms: now_ms,
                },
            );
        }
        let Some(p) = c.pending.get_mut(doc_id) else {
            return;
        };
        if let Err(e) = p.am.receive_sync_message(&mut p.state, msg) {
            c.pending.remove(doc_id);
            let m = format!("refused: changes to {doc_id}: {e}");
            self.strike(conn, "invalid", &m, out);
            return;
        }
        if p.am.get_heads().is_empty() {
            // Nothing received yet: ask for it. Empty heads acknowledge nothing.
            if let Some(m) = p.am.generate_sync_message(&mut p.state) {
                let data = m.encode();
                self.send(conn, &Outgoing::Sync { doc: doc_id, data }, out);
            }
            return;
        }
        self.try_promote(conn, doc_id, now_ms, out);
    }

    /// Decides a document held for `conn`: a new space's root, an object of a space the
    /// connection may write, a refusal, or (not listed yet) more waiting.
    fn try_promote(&mut self, conn: ConnId, doc_id: &str, now_ms: u64, out: &mut Vec<Action>) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let Some(p) = c.pending.get(doc_id) else {
            return;
        };
        let did = c.did.clone();
        if let Some(root) = space::read_root(&p.am) {
            let verdict = match self.listed.get(doc_id) {
                Some(other) => Err((
                    "invalid",
                    format!("refused: {doc_id} is listed as an object of space {other}"),
                )),
                None => self.judge_root(&did, &root, now_ms),
            };
            match verdict {
                Ok(()) => self.promote(conn, doc_id, Some(root.space), now_ms, out),
                Err((reason, m)) => self.refuse_pending(conn, doc_id, reason, &m, out),
            }
            return;
        }
        let Some(space_id) = self.listed.get(doc_id).cloned() else {
            return; // not listed (yet): wait for the root, up to pending_secs
        };
        // The object names its space itself; one that names another is not this space's.
        if let Some(named) = space::object_space(&p.am)
            && named != space_id
        {
            let m = format!("refused: {doc_id} names space {named}, but {space_id} lists it");
            self.refuse_pending(conn, doc_id, "unlisted", &m, out);
            return;
        }
        match self.role(conn, &space_id) {
            Some(r) if r >= Role::Replicator => {
                let (count, used) = self
                    .spaces
                    .get(&space_id)
                    .map_or((0, 0), |s| (s.docs.len(), s.bytes));
                if used >= self.limits.max_space_bytes {
                    let m = format!(
                        "refused: space {space_id} holds {used} bytes, its quota (echo.max_space_bytes)"
                    );
                    self.refuse_pending(conn, doc_id, "quota", &m, out);
                } else if count >= self.limits.max_docs_per_space {
                    let m = format!(
                        "refused: space {space_id} already has {count} documents (echo.max_docs_per_space)"
                    );
                    self.refuse_pending(conn, doc_id, "too-many-docs", &m, out);
                } else {
                    self.promote(conn, doc_id, None, now_ms, out);
                }
            }
            Some(_) => {
                let m = format!("refused: a reader may not add {doc_id} to {space_id}");
                self.refuse_pending(conn, doc_id, "reader", &m, out);
            }
            None => {
                let m = format!("refused: not a member of {space_id}");
                self.refuse_pending(conn, doc_id, "not-member", &m, out);
            }
        }
    }

    /// Whether `did` may create the space `root` describes here.
    fn judge_root(
        &self,
        did: &str,
        root: &Root,
        now_ms: u64,
    ) -> Result<(), (&'static str, String)> {
        if self.spaces.contains_key(&root.space) {
            return Err((
                "invalid",
                format!("refused: space {} already has a root document", root.space),
            ));
        }
        for (k, v) in &root.entries {
            if let Err(e) = space::check_entry(k, v) {
                return Err(("invalid", format!("refused: {e}")));
            }
        }
        let creds = &root.credentials;
        let membership = halo::space::validate(&root.space, creds, clock(now_ms));
        if membership.role_of(did) != Some(Role::Admin) {
            return Err((
                "not-member",
                format!(
                    "refused: only an admin of {} may bring its root",
                    root.space
                ),
            ));
        }
        match halo::admission::decide(&self.policy, &self.kube, &root.space, creds, clock(now_ms)) {
            Decision::Replicate { .. } => Ok(()),
            Decision::Refuse(r) => Err(("not-admitted", format!("refused: {r}"))),
        }
    }

    fn refuse_pending(
        &mut self,
        conn: ConnId,
        doc_id: &str,
        reason: &'static str,
        message: &str,
        out: &mut Vec<Action>,
    ) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.pending.remove(doc_id);
        }
        self.strike(conn, reason, message, out);
        self.send(conn, &Outgoing::DocUnavailable { doc: doc_id }, out);
    }

    /// Makes a held document part of a space (a new one when `new_space`), durable first.
    fn promote(
        &mut self,
        conn: ConnId,
        doc_id: &str,
        new_space: Option<String>,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        let Some(p) = self
            .conns
            .get_mut(&conn)
            .and_then(|c| c.pending.remove(doc_id))
        else {
            return;
        };
        let space_id = match &new_space {
            Some(s) => s.clone(),
            None => match self.listed.get(doc_id) {
                Some(s) => s.clone(),
                None => return,
            },
        };
        // Several connections may hold the same document (a new object reaches KUBE from
        // its author and from a peer it already synced with); the first promoted is the
        // document, later ones merge into it. Replacing it would drop changes KUBE has
        // already acknowledged (the later copy may still be empty).
        if new_space.is_none()
            && let Some(doc) = self.docs.get_mut(doc_id)
        {
            let mut am = p.am;
            let before = doc.am.get_heads();
            let changed = doc.am.merge(&mut am).is_ok() && doc.am.get_heads() != before;
            if changed {
                let grown =
                    persist_since(doc, doc_id, &before, now_ms, self.limits.compact_bytes, out);
                if let Some(s) = self.spaces.get_mut(&space_id) {
                    s.bytes = s.bytes.saturating_add_signed(grown);
                }
                self.broadcast(doc_id, Some(conn), out);
            }
            if let Some(c) = self.conns.get_mut(&conn) {
                // What the peer has is learnt again from its next message.
                c.syncs.insert(doc_id.to_owned(), sync::State::new());
            }
            self.reply(conn, doc_id, out);
            return;
        }
        if let Some(s) = &new_space {
            out.push(Action::Store(Write::NewSpace {
                space: s.clone(),
                root: doc_id.to_owned(),
            }));
            self.roots.insert(doc_id.to_owned(), s.clone());
            self.spaces.insert(s.clone(), Space::new(doc_id.to_owned()));
        }
        let bytes = p.am.save();
        let snapshot_bytes = bytes.len() as u64;
        out.push(Action::Store(Write::Snapshot {
            space: space_id.clone(),
            doc: doc_id.to_owned(),
            bytes,
        }));
        self.docs.insert(
            doc_id.to_owned(),
            Doc {
                space: space_id.clone(),
                am: p.am,
                snapshot_bytes,
                log_bytes: 0,
                last_change: now_ms / 1000,
            },
        );
        if let Some(s) = self.spaces.get_mut(&space_id) {
            s.docs.insert(doc_id.to_owned());
            s.bytes += snapshot_bytes;
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.syncs.insert(doc_id.to_owned(), p.state);
        }
        if new_space.is_some() {
            self.membership_changed(&space_id, now_ms, out);
        }
        self.reply(conn, doc_id, out);
    }

    /// After a root changed, a credential's time came or the policy changed: the space is
    /// judged again, new members and revocations take effect on open connections, and held
    /// documents the index now lists are decided.
    fn membership_changed(&mut self, space_id: &str, now_ms: u64, out: &mut Vec<Action>) {
        let before: HashMap<ConnId, bool> = self
            .conns
            .keys()
            .map(|id| (*id, self.role(*id, space_id).is_some()))
            .collect();
        self.refresh_root(space_id, now_ms);
        let Some(space) = self.spaces.get(space_id) else {
            return;
        };
        let mut cut = Vec::new();
        let mut held = Vec::new();
        for (id, c) in &self.conns {
            if c.closed {
                continue;
            }
            let uses_space = c
                .syncs
                .keys()
                .any(|d| d == &space.root || space.docs.contains(d));
            if before.get(id) == Some(&true)
                && uses_space
                && (space.refusal.is_some() || space.membership.role_of(&c.did).is_none())
            {
                cut.push(*id);
                continue;
            }
            for d in c.pending.keys() {
                if space.objects.contains_key(d) {
                    held.push((*id, d.clone()));
                }
            }
        }
        cut.sort_unstable();
        held.sort_unstable();
        for id in cut {
            let did = self
                .conns
                .get(&id)
                .map(|c| c.did.clone())
                .unwrap_or_default();
            *self.stats.refused.entry("revoked").or_default() += 1;
            let m = match self.spaces.get(space_id).and_then(|s| s.refusal.as_ref()) {
                Some(why) => format!("revoked: this KUBE no longer replicates {space_id}: {why}"),
                None => format!("revoked: {did} is no longer a member of {space_id}"),
            };
            self.send(id, &Outgoing::Error { message: &m }, out);
            self.close(id, out);
        }
        for (id, doc) in held {
            self.try_promote(id, &doc, now_ms, out);
        }
    }

    /// Passes an ephemeral message (presence, cursors) on to the other readers of its
    /// document; from a peer who may not read it, it goes nowhere.
    fn ephemeral(&mut self, conn: ConnId, e: &Incoming, out: &mut Vec<Action>) {
        let Incoming::Ephemeral {
            sender,
            doc: doc_id,
            session,
            count,
            data,
        } = e
        else {
            return;
        };
        let Some(space_id) = self.docs.get(doc_id).map(|d| d.space.clone()) else {
            return;
        };
        if self.role(conn, &space_id).is_none() {
            return;
        }
        let mut targets: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(id, c)| **id != conn && !c.closed && c.syncs.contains_key(doc_id))
            .map(|(id, _)| *id)
            .collect();
        targets.sort_unstable();
        for t in targets {
            if self.role(t, &space_id).is_some() {
                let msg = Outgoing::Ephemeral {
                    sender,
                    doc: doc_id,
                    session,
                    count: *count,
                    data,
                };
                self.send(t, &msg, out);
            }
        }
    }

    /// Expires documents held longer than `echo.pending_secs` without a space listing them,
    /// and closes connections that did not `join` within [`JOIN_SECS`].
    pub fn tick(&mut self, now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        let due: Vec<String> = self
            .spaces
            .iter()
            .filter(|(_, s)| s.review_at.is_some_and(|t| t <= now_ms / 1000))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.membership_changed(&id, now_ms, &mut out);
        }
        let mut silent: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                !c.joined && !c.closed && now_ms.saturating_sub(c.since_ms) >= JOIN_SECS * 1000
            })
            .map(|(id, _)| *id)
            .collect();
        silent.sort_unstable();
        for id in silent {
            *self.stats.refused.entry("malformed").or_default() += 1;
            let m = format!("refused: no join within {JOIN_SECS} s");
            self.send(id, &Outgoing::Error { message: &m }, &mut out);
            self.close(id, &mut out);
        }
        let limit = self.limits.pending_secs * 1000;
        let mut expired: Vec<(ConnId, String)> = self
            .conns
            .iter()
            .flat_map(|(id, c)| {
                c.pending
                    .iter()
                    .filter(|(_, p)| now_ms.saturating_sub(p.since_ms) >= limit)
                    .map(|(d, _)| (*id, d.clone()))
            })
            .collect();
        expired.sort_unstable();
        for (id, doc) in expired {
            let m = format!(
                "refused: {doc} is not listed by a space you may write (held {}s)",
                self.limits.pending_secs
            );
            self.refuse_pending(id, &doc, "unlisted", &m, &mut out);
        }
        out
    }

    // ---- operators ----

    fn summary(&self, id: &str, s: &Space) -> SpaceSummary {
        let docs = s.docs.iter().filter_map(|d| self.docs.get(d));
        let (mut bytes, mut last) = (0, 0);
        for d in docs {
            bytes += d.snapshot_bytes + d.log_bytes;
            last = last.max(d.last_change);
        }
        SpaceSummary {
            space: id.to_owned(),
            root: s.root.clone(),
            documents: s.docs.len(),
            members: s.membership.roles.len(),
            bytes,
            last_change: last,
        }
    }

    pub fn list(&self) -> Vec<SpaceSummary> {
        self.spaces
            .iter()
            .map(|(id, s)| self.summary(id, s))
            .collect()
    }

    pub fn show(&self, space_id: &str) -> Option<SpaceDetail> {
        let s = self.spaces.get(space_id)?;
        let mut members: Vec<Member> = s
            .membership
            .grants
            .iter()
            .filter(|g| s.membership.roles.get(&g.subject) == Some(&g.role))
            .map(|g| Member {
                key: g.subject.clone(),
                role: g.role,
                granted_by: g.issuer.clone(),
            })
            .collect();
        members.dedup_by(|a, b| a.key == b.key);
        for (key, role) in &s.membership.roles {
            if !members.iter().any(|m| &m.key == key) {
                members.push(Member {
                    key: key.clone(),
                    role: *role,
                    granted_by: space_id.to_owned(),
                });
            }
        }
        let documents = s
            .docs
            .iter()
            .filter_map(|id| {
                let d = self.docs.get(id)?;
                let kind = if *id == s.root {
                    "space-root".to_owned()
                } else {
                    s.objects.get(id).cloned().unwrap_or_default()
                };
                Some(DocSummary {
                    id: id.clone(),
                    kind,
                    bytes: d.snapshot_bytes + d.log_bytes,
                    last_change: d.last_change,
                })
            })
            .collect();
        let summary = self.summary(space_id, s);
        Some(SpaceDetail {
            space: summary.space,
            root: summary.root,
            bytes: summary.bytes,
            last_change: summary.last_change,
            members,
            devices: s.membership.devices.clone(),
            documents,
        })
    }

    /// The objects of a space of type `ty` whose props match every `prop=value`, as JSON
    /// (with their documentId under `id`).
    pub fn query(
        &self,
        space_id: &str,
        ty: &str,
        wheres: &[(String, String)],
    ) -> Option<Vec<serde_json::Value>> {
        let s = self.spaces.get(space_id)?;
        let mut found = Vec::new();
        for id in &s.docs {
            if *id == s.root {
                continue;
            }
            let Some(d) = self.docs.get(id) else {
                continue;
            };
            let mut v = space::to_json(&d.am);
            if space::matches(&v, ty, wheres) {
                if let Some(o) = v.as_object_mut() {
                    o.insert("id".into(), id.clone().into());
                }
                found.push(v);
            }
        }
        Some(found)
    }

    pub fn export(&self, space_id: &str) -> Option<Export> {
        use base64::Engine;
        let s = self.spaces.get(space_id)?;
        let documents = s
            .docs
            .iter()
            .filter_map(|id| {
                let d = self.docs.get(id)?;
                Some((
                    id.clone(),
                    base64::engine::general_purpose::STANDARD.encode(d.am.save()),
                ))
            })
            .collect();
        Some(Export {
            format: EXPORT_FORMAT.to_owned(),
            space: space_id.to_owned(),
            root: s.root.clone(),
            documents,
        })
    }

    /// Undoes an [`Echo::import`] whose writes failed, so ECHO is as it was before it: the
    /// space and its documents are gone from memory (nobody has seen them yet: the driver
    /// writes an import before it handles anything else).
    pub fn forget_import(&mut self, space_id: &str) {
        let Some(space) = self.spaces.remove(space_id) else {
            return;
        };
        for d in &space.docs {
            self.docs.remove(d);
        }
        self.listed.retain(|_, s| s != space_id);
        self.roots.remove(&space.root);
    }

    /// Brings an exported space in after checking it: the root is that space's, its
    /// credentials admit this KUBE under `echo.admit`, every document loads and is listed.
    /// Returns the writes that make it durable.
    pub fn import(&mut self, e: Export, now_ms: u64) -> Result<Vec<Write>, ImportError> {
        use base64::Engine;
        if e.format != EXPORT_FORMAT {
            return Err(ImportError::Format);
        }
        if self.spaces.contains_key(&e.space) {
            return Err(ImportError::Exists(e.space));
        }
        if e.documents.len() > self.limits.max_docs_per_space {
            return Err(ImportError::TooMany(self.limits.max_docs_per_space));
        }
        let mut docs = BTreeMap::new();
        for (id, b64) in &e.documents {
            if !wire::valid_doc_id(id) {
                return Err(ImportError::Document(id.clone(), "bad documentId".into()));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|err| ImportError::Document(id.clone(), err.to_string()))?;
            let am = Automerge::load(&bytes)
                .map_err(|err| ImportError::Document(id.clone(), err.to_string()))?;
            if self.docs.contains_key(id) || self.quarantined.contains_key(id) {
                return Err(ImportError::Document(id.clone(), "already here".into()));
            }
            docs.insert(id.clone(), am);
        }
        let root = docs
            .get(&e.root)
            .and_then(space::read_root)
            .filter(|r| r.space == e.space)
            .ok_or_else(|| ImportError::NotARoot(e.space.clone()))?;
        for id in docs.keys() {
            if *id != e.root && !root.objects.contains_key(id) {
                return Err(ImportError::Unlisted(id.clone()));
            }
        }
        let creds = root.credentials;
        if let Decision::Refuse(r) =
            halo::admission::decide(&self.policy, &self.kube, &e.space, &creds, clock(now_ms))
        {
            return Err(ImportError::NotAdmitted(r.to_string()));
        }
        let mut out = vec![Write::NewSpace {
            space: e.space.clone(),
            root: e.root.clone(),
        }];
        let mut space = Space::new(e.root.clone());
        for (id, am) in docs {
            let bytes = am.save();
            space.docs.insert(id.clone());
            space.bytes += bytes.len() as u64;
            self.docs.insert(
                id.clone(),
                Doc {
                    space: e.space.clone(),
                    am,
                    snapshot_bytes: bytes.len() as u64,
                    log_bytes: 0,
                    last_change: now_ms / 1000,
                },
            );
            out.push(Write::Snapshot {
                space: e.space.clone(),
                doc: id,
                bytes,
            });
        }
        self.roots.insert(e.root.clone(), e.space.clone());
        self.spaces.insert(e.space.clone(), space);
        self.refresh_root(&e.space, now_ms);
        Ok(out)
    }
}

/// A document from its files: the snapshot, then every log chunk. Any failure (a damaged
/// log, a snapshot or chunk Automerge refuses) is returned, for the document to be
/// quarantined rather than served short of acknowledged changes.
fn load_doc(d: &crate::store::StoredDoc) -> Result<Automerge, String> {
    if let Some(why) = &d.corrupt {
        return Err(why.clone());
    }
    let mut am = if d.snapshot.is_empty() {
        Automerge::new()
    } else {
        Automerge::load(&d.snapshot).map_err(|e| format!("snapshot: {e}"))?
    };
    for (i, chunk) in d.log.iter().enumerate() {
        am.load_incremental(chunk)
            .map_err(|e| format!("log chunk {i}: {e}"))?;
    }
    Ok(am)
}

/// Stores what `doc` gained since `before` (see [`persist`]); returns how many bytes the
/// document's files grew by (negative after a compaction).
fn persist_since(
    doc: &mut Doc,
    id: &str,
    before: &[automerge::ChangeHash],
    now_ms: u64,
    compact_bytes: u64,
    out: &mut Vec<Action>,
) -> i64 {
    let chunk = doc.am.save_after(before);
    doc.last_change = now_ms / 1000;
    let size = doc.snapshot_bytes + doc.log_bytes;
    persist(doc, id, chunk, compact_bytes, out);
    (doc.snapshot_bytes + doc.log_bytes) as i64 - size as i64
}

/// Records new changes of `doc`: appended to its log, or folded into a new snapshot once
/// the log outgrows `compact_bytes` and the snapshot.
fn persist(doc: &mut Doc, id: &str, chunk: Vec<u8>, compact_bytes: u64, out: &mut Vec<Action>) {
    let len = chunk.len() as u64;
    if doc.log_bytes + len >= compact_bytes.max(doc.snapshot_bytes) {
        let bytes = doc.am.save();
        doc.snapshot_bytes = bytes.len() as u64;
        doc.log_bytes = 0;
        out.push(Action::Store(Write::Snapshot {
            space: doc.space.clone(),
            doc: id.to_owned(),
            bytes,
        }));
    } else {
        doc.log_bytes += len + 8;
        out.push(Action::Store(Write::Append {
            space: doc.space.clone(),
            doc: id.to_owned(),
            chunk,
        }));
    }
}

#[cfg(test)]
mod tests;
