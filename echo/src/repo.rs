//! The ECHO peer as a state machine without I/O: authenticated connections in, frames in,
//! [`Action`]s out (frames to send, writes to make durable, sockets to close). The driver
//! must make every [`Action::Store`] of a batch durable before it performs the batch's
//! sends: that is how no peer ever sees KUBE's heads include a change that is not on disk.
//!
//! Access control (PROTOCOL.md §3) lives here: which documents belong to which space, who
//! may read and write them by the space's HALO credentials, and when a new space or object
//! is accepted.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use automerge::Automerge;
use automerge::sync::{self, SyncDoc};
use halo::admission::{Admit, Decision};
use halo::credential::{Credential, Role};
use halo::space::{Clock, Membership};
use serde::{Deserialize, Serialize};

use crate::auth;
use crate::space::{self, Root};
use crate::store::{IndexedDoc, Scanned, ScannedSpace, Source, SpaceIndex, StoredSpace, Write};
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
    /// Memory (estimated) the documents held in memory may take; past it, the least
    /// recently used are dropped after each durable batch and read from disk again when
    /// next needed (`echo.cache_bytes`). Only with a [`Source`] to read them from.
    pub cache_bytes: usize,
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
            cache_bytes: 64 << 20,
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
    /// Documents read from disk, and dropped from memory under `cache_bytes`.
    pub loads: u64,
    pub evictions: u64,
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
    /// Its place in `Echo::names` (what each [`Entry`] names it by).
    ix: SpaceIx,
    root: String,
    credentials: Vec<Credential>,
    /// Listing generation: an entry is listed by this space while its `listing` is this.
    listing: u32,
    /// Objects its root lists now.
    objects: usize,
    membership: Membership,
    /// Documents with files here, quarantined ones not counted.
    doc_count: usize,
    /// Why KUBE does not replicate the space (any more): its credentials no longer admit
    /// KUBE, or `echo.admit` refuses its admin. Nobody is served then; the files stay.
    refusal: Option<halo::admission::Refusal>,
    /// When a credential's time comes (an expiry, or an issue date past the skew) and the
    /// membership must be judged again, in Unix seconds.
    review_at: Option<u64>,
    /// Bytes of its documents' files (for `echo.max_space_bytes`).
    bytes: u64,
    last_change: u64,
    /// Credentials (as JSON) whose proofs verified: entries never change once in a root,
    /// so a root change verifies only the new ones.
    proven: std::collections::HashSet<String>,
    /// Its index on disk is older than this.
    dirty: bool,
}

impl Space {
    /// A space known by its root only; `set_root` reads the rest.
    fn new(ix: SpaceIx, root: String) -> Space {
        Space {
            ix,
            root,
            credentials: Vec::new(),
            listing: 1,
            objects: 0,
            membership: Membership::default(),
            doc_count: 0,
            refusal: None,
            review_at: None,
            bytes: 0,
            last_change: 0,
            proven: std::collections::HashSet::new(),
            dirty: true,
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

type SpaceIx = u32;

/// The document has files in `space`.
const PRESENT: u8 = 1;
/// The document is `space`'s root (nobody's object).
const ROOT: u8 = 2;
/// Its files do not load, or it was taken out of service: served to nobody.
const QUARANTINED: u8 = 4;

/// What ECHO knows of a documentId without reading it: kept for every document and every
/// listed object, so it stays small (about 40 bytes and the id).
struct Entry {
    /// With [`PRESENT`]: the space it belongs to, for good. Otherwise the first space whose
    /// root listed it.
    space: SpaceIx,
    /// Its type in the listing (an index into `Echo::kinds`).
    kind: u16,
    /// Listed by `space`'s root while this equals the space's `listing` (0: never).
    listing: u32,
    flags: u8,
    snapshot_bytes: u32,
    log_bytes: u32,
    last_change: u32,
}

impl Entry {
    fn bytes(&self) -> u64 {
        u64::from(self.snapshot_bytes) + u64::from(self.log_bytes)
    }
}

fn small(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A document held in memory.
struct Loaded {
    am: Automerge,
    /// Estimated bytes of memory (see [`estimate`]).
    mem: usize,
    /// When it was last used (`Echo::uses`).
    used: u64,
}

/// What an Automerge document of `file_bytes` on disk is taken to cost in memory: a fixed
/// part (in `bench/echo/scale`, holding one space's 1,001 small documents of about 200
/// bytes each raised KUBE's RSS by 25.6 MiB, about 26 KiB each, sync states included)
/// and its operations expanded, taken as 16 times their compressed size.
fn estimate(file_bytes: u64) -> usize {
    usize::try_from(file_bytes.saturating_mul(16))
        .unwrap_or(usize::MAX)
        .saturating_add(24 << 10)
}

/// A space whose index is missing, torn or older than its root: rebuild it.
#[derive(Debug, PartialEq)]
pub struct StaleIndex {
    pub space: String,
    pub root: String,
}

/// Why a document could not be had.
enum Missing {
    /// Not here, or quarantined.
    NotHere,
    /// Its files did not load just now: it is quarantined.
    Quarantined,
    /// Reading failed (the disk, not the document): try again later.
    Io(String),
}

struct Pending {
    am: Automerge,
    state: sync::State,
    since_ms: u64,
}

struct Conn {
    did: String,
    peer: String,
    /// A link this KUBE opened to another KUBE (`echo.peers`): offered every document of
    /// the spaces both replicate, paced by `budget` (see `Echo::tick`).
    kube: bool,
    offer: std::collections::VecDeque<String>,
    /// A link's objects waiting until the other KUBE holds their space's root (by space),
    /// and the spaces it refused: their objects are not offered (they would only cost the
    /// link strikes there).
    parked: HashMap<String, Vec<String>>,
    refused: std::collections::HashSet<String>,
    budget: f64,
    budget_ms: u64,
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
    /// Space names by [`SpaceIx`] (a forgotten import leaves its name unused).
    names: Vec<String>,
    /// Every documentId ECHO holds or a root lists.
    ids: HashMap<Box<str>, Entry>,
    /// Object types by index (`Entry::kind`); 0 is "".
    kinds: Vec<String>,
    kind_ix: HashMap<String, u16>,
    /// Documents in memory, at most `limits.cache_bytes` of them after each batch.
    loaded: HashMap<Box<str>, Loaded>,
    cached: usize,
    uses: u64,
    /// Where documents not in memory are read from; without one, every document stays in
    /// memory.
    source: Option<std::sync::Arc<dyn Source>>,
    /// Documents whose files do not load: documentId → (space, why). They are served to
    /// nobody and written by nobody until an operator repairs them (a restore); their
    /// files are never touched.
    quarantined: BTreeMap<String, (String, String)>,
    /// Found since the last `take_problems` (documents quarantined when first read).
    problems: Vec<String>,
    /// Present, not quarantined documents.
    present: usize,
    /// Objects listed by the spaces' roots (the sum of `Space::objects`).
    listed: usize,
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
            names: Vec::new(),
            ids: HashMap::new(),
            kinds: vec![String::new()],
            kind_ix: HashMap::from([(String::new(), 0)]),
            loaded: HashMap::new(),
            cached: 0,
            uses: 0,
            source: None,
            quarantined: BTreeMap::new(),
            problems: Vec::new(),
            present: 0,
            listed: 0,
            conns: HashMap::new(),
            stats: Stats::default(),
        }
    }

    /// Reads documents on demand from `source` (and lets them go under
    /// `limits.cache_bytes`); the spaces come from [`Echo::open`].
    pub fn set_source(&mut self, source: std::sync::Arc<dyn Source>) {
        self.source = Some(source);
    }

    pub fn peer_id(&self) -> &str {
        &self.me
    }

    /// The largest message a peer may send (`echo.max_message_bytes`).
    pub fn max_message_bytes(&self) -> usize {
        self.limits.max_message_bytes
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
            self.membership_changed(&id, None, now_ms, &mut out);
        }
        out
    }

    fn kind(&mut self, name: &str) -> u16 {
        if let Some(k) = self.kind_ix.get(name) {
            return *k;
        }
        let Ok(k) = u16::try_from(self.kinds.len()) else {
            return 0; // 65,536 types: the rest show without one
        };
        self.kinds.push(name.to_owned());
        self.kind_ix.insert(name.to_owned(), k);
        k
    }

    fn add_space(&mut self, space: &str, root: &str) -> SpaceIx {
        let ix = small(self.names.len() as u64);
        self.names.push(space.to_owned());
        self.spaces
            .insert(space.to_owned(), Space::new(ix, root.to_owned()));
        ix
    }

    fn name(&self, ix: SpaceIx) -> &str {
        self.names.get(ix as usize).map_or("", String::as_str)
    }

    /// The space a document with files here belongs to (not when quarantined).
    fn space_of(&self, id: &str) -> Option<&str> {
        let e = self.ids.get(id)?;
        (e.flags & PRESENT != 0 && e.flags & QUARANTINED == 0).then(|| self.name(e.space))
    }

    /// The space whose root lists `id` now (a root is nobody's object).
    fn listed_by(&self, id: &str) -> Option<&str> {
        let e = self.ids.get(id)?;
        let name = self.name(e.space);
        let listing = self.spaces.get(name)?.listing;
        (e.flags & ROOT == 0 && e.listing != 0 && e.listing == listing).then_some(name)
    }

    /// Records a document with files in space `ix`.
    fn add_doc(&mut self, ix: SpaceIx, id: &str, sizes: [u64; 2], last_change: u64, root: bool) {
        let e = self.ids.entry(id.into()).or_insert(Entry {
            space: ix,
            kind: 0,
            listing: 0,
            flags: 0,
            snapshot_bytes: 0,
            log_bytes: 0,
            last_change: 0,
        });
        if e.flags & PRESENT != 0 {
            return;
        }
        if e.space != ix {
            // Listed by another space, which loses it to the space that holds it.
            e.listing = 0;
            e.space = ix;
        }
        e.flags |= PRESENT | if root { ROOT } else { 0 };
        e.snapshot_bytes = small(sizes[0]);
        e.log_bytes = small(sizes[1]);
        e.last_change = small(last_change);
        self.present += 1;
        let name = self.name(ix).to_owned();
        if let Some(s) = self.spaces.get_mut(&name) {
            s.doc_count += 1;
            s.bytes += sizes[0] + sizes[1];
            s.last_change = s.last_change.max(last_change);
            s.dirty = true;
        }
    }

    fn hold(&mut self, id: &str, am: Automerge) {
        let bytes = self.ids.get(id).map_or(0, Entry::bytes);
        self.uses += 1;
        let mem = estimate(bytes);
        self.cached += mem;
        if let Some(old) = self.loaded.insert(
            id.into(),
            Loaded {
                am,
                mem,
                used: self.uses,
            },
        ) {
            self.cached -= old.mem;
        }
    }

    /// A document whose files do not load (read just now): reported, and quarantined.
    fn unloadable(&mut self, id: &str, space: &str, why: &str) {
        self.problems
            .push(format!("{space}/{id}: {why} (quarantined)"));
        self.set_quarantined(id, space, why);
    }

    /// Marks a document quarantined (its files are never touched). A space whose root is
    /// quarantined serves nobody: who may do what is read from the root.
    fn set_quarantined(&mut self, id: &str, space: &str, why: &str) {
        let is_root = self.spaces.get(space).is_some_and(|s| s.root == id);
        if let Some(e) = self.ids.get_mut(id)
            && e.flags & QUARANTINED == 0
        {
            e.flags |= QUARANTINED;
            if e.flags & PRESENT != 0 {
                self.present -= 1;
                let name = self.names.get(e.space as usize);
                if let Some(s) = name.and_then(|n| self.spaces.get_mut(n)) {
                    s.doc_count = s.doc_count.saturating_sub(1);
                }
            }
        }
        if let Some(l) = self.loaded.remove(id) {
            self.cached -= l.mem;
        }
        for c in self.conns.values_mut() {
            c.syncs.remove(id);
        }
        self.quarantined
            .insert(id.to_owned(), (space.to_owned(), why.to_owned()));
        if is_root {
            // No credentials: no member, and KUBE not admitted (the time does not matter
            // without credentials).
            self.set_root(space, None, 0);
        }
    }

    /// Puts a space read whole from disk in place ([`crate::store::FileStore::load`]),
    /// every document in memory. Documents that do not load are reported and quarantined:
    /// served to nobody, written by nobody, their files untouched.
    pub fn load(&mut self, stored: StoredSpace, now_ms: u64) -> Vec<String> {
        let mut problems = Vec::new();
        let ix = self.add_space(&stored.space, &stored.root);
        for (id, d) in stored.docs {
            let snap = d.snapshot.len() as u64;
            self.add_doc(
                ix,
                &id,
                [snap, d.size.saturating_sub(snap)],
                0,
                id == stored.root,
            );
            match load_doc(&d) {
                Ok(am) => self.hold(&id, am),
                Err(why) => {
                    problems.push(format!("{}/{id}: {why} (quarantined)", stored.space));
                    self.set_quarantined(&id, &stored.space, &why);
                }
            }
        }
        let root = self.read_root_doc(&stored.root);
        self.set_root(&stored.space, root, now_ms);
        problems
    }

    /// Puts a space found by [`crate::store::FileStore::scan`] in place without reading
    /// its documents (only its root when its index has to be rebuilt). Returns problems
    /// found (a root that does not load is quarantined, and the space serves nobody), or
    /// [`StaleIndex`] when the space's index is not current: the caller then rebuilds
    /// ([`crate::store::FileStore::rebuild`]) and opens that.
    pub fn open(&mut self, scanned: ScannedSpace, now_ms: u64) -> Result<Vec<String>, StaleIndex> {
        let ScannedSpace { space, root, found } = scanned;
        if self.spaces.contains_key(&space) {
            return Ok(vec![format!(
                "{space}: opened twice; the second is ignored"
            )]);
        }
        match found {
            Scanned::Indexed { bytes, root_files } => {
                let Some(index) =
                    SpaceIndex::parse(&bytes).filter(|i| i.current(&space, &root, root_files))
                else {
                    return Err(StaleIndex { space, root });
                };
                self.open_indexed(&space, &root, index, now_ms);
                Ok(Vec::new())
            }
            Scanned::Rebuild { root: stored, docs } => {
                let ix = self.add_space(&space, &root);
                let mut problems = Vec::new();
                for (id, [snap, log, modified]) in docs {
                    if wire::valid_doc_id(&id) {
                        self.add_doc(ix, &id, [snap, log], modified, id == root);
                    }
                }
                if stored.size > 0 || stored.corrupt.is_some() {
                    match load_doc(&stored) {
                        Ok(am) => self.hold(&root, am),
                        Err(why) => {
                            problems.push(format!("{space}/{root}: {why} (quarantined)"));
                            self.set_quarantined(&root, &space, &why);
                        }
                    }
                }
                let r = self.read_root_doc(&root);
                self.set_root(&space, r, now_ms);
                Ok(problems)
            }
        }
    }

    /// A space from its current index: one entry per document, nothing read.
    fn open_indexed(&mut self, space: &str, root: &str, index: SpaceIndex<'_>, now_ms: u64) {
        let ix = self.add_space(space, root);
        self.ids.reserve(index.docs.len() + 1);
        let (mut count, mut bytes, mut last_change) = (0, 0, index.root_last_change);
        let mut objects = 0;
        let listing = 1; // a new space's first generation
        let mut last_kind: Option<(Cow<'_, str>, u16)> = None;
        for IndexedDoc(id, kind, listed, present, snap, log, last) in index.docs {
            if !wire::valid_doc_id(&id) || id == root || !(listed || present) {
                continue;
            }
            // Objects of a space mostly share a few types: the last one is kept at hand.
            let kind = match &last_kind {
                _ if !listed => 0,
                Some((k, ix)) if *k == kind => *ix,
                _ => {
                    let ix = self.kind(&kind);
                    last_kind = Some((kind, ix));
                    ix
                }
            };
            let fresh = Entry {
                space: ix,
                kind,
                listing: if listed { listing } else { 0 },
                flags: if present { PRESENT } else { 0 },
                snapshot_bytes: small(snap),
                log_bytes: small(log),
                last_change: small(last),
            };
            match self.ids.entry(Box::from(&*id)) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(fresh);
                }
                // Another space (opened earlier) has it: the space holding its files keeps
                // it; between two listings, the first.
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    if !present || o.get().flags & PRESENT != 0 {
                        continue;
                    }
                    o.insert(fresh);
                }
            }
            if present {
                count += 1;
                bytes += snap + log;
                last_change = last_change.max(last);
            }
            objects += usize::from(listed);
        }
        let [snap, log] = index.root_files;
        if snap + log > 0 {
            self.add_doc(ix, root, [snap, log], index.root_last_change, true);
        }
        self.present += count;
        self.listed += objects;
        if let Some(s) = self.spaces.get_mut(space) {
            s.objects = objects;
            s.doc_count += count;
            s.bytes += bytes;
            s.last_change = s.last_change.max(last_change);
            let mut credentials = Vec::with_capacity(index.credentials.len());
            for (c, proven) in index.credentials {
                if proven {
                    s.proven
                        .insert(serde_json::to_string(&c).unwrap_or_default());
                }
                credentials.push(c);
            }
            s.credentials = credentials;
            // Read from what is on disk now: it is current.
            s.dirty = false;
        }
        self.judge(space, now_ms);
    }

    /// What the root document `id` says, if it is in memory (or can be read) and is one.
    fn read_root_doc(&mut self, id: &str) -> Option<Root> {
        self.ensure(id).ok()?;
        self.loaded.get(id).and_then(|l| space::read_root(&l.am))
    }

    /// Takes in what a space's root says: its credentials (new ones verified) and its
    /// object listing; then judges the membership.
    fn set_root(&mut self, space_id: &str, root: Option<Root>, now_ms: u64) {
        let root = root.unwrap_or_default();
        let Some(space) = self.spaces.get_mut(space_id) else {
            return;
        };
        space.dirty = true;
        space.credentials = root.credentials;
        for c in &space.credentials {
            let k = serde_json::to_string(c).unwrap_or_default();
            if !space.proven.contains(&k) && c.verify_proof().is_ok() {
                space.proven.insert(k);
            }
        }
        // A new generation: what this root no longer lists stops being listed by it.
        space.listing = space.listing.wrapping_add(1).max(1);
        self.listed = (self.listed + root.objects.len()).saturating_sub(space.objects);
        space.objects = root.objects.len();
        let (ix, listing) = (space.ix, space.listing);
        for (id, kind) in root.objects {
            let k = self.kind(&kind);
            match self.ids.get_mut(id.as_str()) {
                None => {
                    self.ids.insert(
                        id.into(),
                        Entry {
                            space: ix,
                            kind: k,
                            listing,
                            flags: 0,
                            snapshot_bytes: 0,
                            log_bytes: 0,
                            last_change: 0,
                        },
                    );
                }
                Some(e) if e.space == ix && e.flags & ROOT == 0 => {
                    e.listing = listing;
                    e.kind = k;
                }
                Some(e) => {
                    // An id belongs to the first space that lists it, for good once its
                    // document is here; a space root is nobody's object. A later lister
                    // takes it only once the first has stopped listing it.
                    let other = self.names.get(e.space as usize);
                    let still = other
                        .and_then(|n| self.spaces.get(n))
                        .is_some_and(|o| e.listing != 0 && e.listing == o.listing);
                    if e.flags & (PRESENT | ROOT) == 0 && !still {
                        e.space = ix;
                        e.listing = listing;
                        e.kind = k;
                    }
                }
            }
        }
        self.sweep();
        self.judge(space_id, now_ms);
    }

    /// Forgets the ids no root lists any more and that have no files here, once they
    /// outnumber what is listed and held (an admin listing and unlisting new ids would
    /// otherwise grow `ids` until a restart). Amortized: each sweep follows at least as
    /// many new ids as it keeps.
    fn sweep(&mut self) {
        let live = self.present + self.quarantined.len() + self.spaces.len() + self.listed;
        if self.ids.len() <= 2 * live + 1024 {
            return;
        }
        let listing: Vec<u32> = self
            .names
            .iter()
            .map(|n| self.spaces.get(n).map_or(0, |s| s.listing))
            .collect();
        self.ids.retain(|_, e| {
            e.flags & (PRESENT | ROOT | QUARANTINED) != 0
                || (e.listing != 0 && listing.get(e.space as usize) == Some(&e.listing))
        });
    }

    /// Judges a space's membership again from its credentials, at `now_ms`.
    fn judge(&mut self, space_id: &str, now_ms: u64) {
        let Some(space) = self.spaces.get_mut(space_id) else {
            return;
        };
        let verified: std::collections::HashSet<*const Credential> = space
            .credentials
            .iter()
            .filter(|c| {
                space
                    .proven
                    .contains(&serde_json::to_string(c).unwrap_or_default())
            })
            .map(std::ptr::from_ref)
            .collect();
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
    }

    /// Makes sure document `id` (one with files here) is in memory, reading it through the
    /// source when it is not. A document that does not load is quarantined then.
    fn ensure(&mut self, id: &str) -> Result<(), Missing> {
        self.uses += 1;
        if let Some(l) = self.loaded.get_mut(id) {
            l.used = self.uses;
            return Ok(());
        }
        let Some(space) = self.space_of(id).map(str::to_owned) else {
            return Err(Missing::NotHere);
        };
        let Some(source) = self.source.clone() else {
            return Err(Missing::NotHere);
        };
        match source.read_doc(&space, id) {
            Err(e) => Err(Missing::Io(e.to_string())),
            Ok(None) => Err(Missing::NotHere),
            Ok(Some(stored)) => {
                self.stats.loads += 1;
                self.resize(id, &space, &stored);
                match load_doc(&stored) {
                    Ok(am) => {
                        self.hold(id, am);
                        Ok(())
                    }
                    Err(why) => {
                        self.unloadable(id, &space, &why);
                        Err(Missing::Quarantined)
                    }
                }
            }
        }
    }

    /// Takes a document's sizes from its files as just read (an index rebuilt after a
    /// crash may be behind on them).
    fn resize(&mut self, id: &str, space: &str, stored: &crate::store::StoredDoc) {
        let Some(e) = self.ids.get_mut(id) else {
            return;
        };
        let before = e.bytes();
        let snap = stored.snapshot.len() as u64;
        e.snapshot_bytes = small(snap);
        e.log_bytes = small(stored.size.saturating_sub(snap));
        let after = e.bytes();
        if before != after
            && let Some(s) = self.spaces.get_mut(space)
        {
            s.bytes = (s.bytes + after).saturating_sub(before);
            s.dirty = true;
        }
    }

    /// A document listed by a space but not known to have files: the files are looked
    /// for (an index written before a crash may not know them yet). `Ok(true)`: found
    /// and in memory; `Ok(false)`: it has no files here. A read that fails is an error,
    /// never "no files": taking it for a new document would write over the files.
    fn probe(&mut self, id: &str) -> Result<bool, Missing> {
        let Some(space) = self.listed_by(id).map(str::to_owned) else {
            return Ok(false);
        };
        if self.quarantined.contains_key(id) {
            return Err(Missing::Quarantined);
        }
        if self.space_of(id).is_some() {
            return Ok(false);
        }
        let Some(source) = self.source.clone() else {
            return Ok(false);
        };
        let stored = match source.read_doc(&space, id) {
            Ok(Some(stored)) => stored,
            Ok(None) => return Ok(false),
            Err(e) => return Err(Missing::Io(e.to_string())),
        };
        let Some(ix) = self.spaces.get(&space).map(|s| s.ix) else {
            return Ok(false);
        };
        self.stats.loads += 1;
        let snap = stored.snapshot.len() as u64;
        self.add_doc(ix, id, [snap, stored.size.saturating_sub(snap)], 0, false);
        match load_doc(&stored) {
            Ok(am) => {
                self.hold(id, am);
                Ok(true)
            }
            Err(why) => {
                self.unloadable(id, &space, &why);
                Err(Missing::Quarantined)
            }
        }
    }

    /// The space of document `doc`, if a sync or request of `frame_len` bytes from `conn`
    /// for it needs the document read from disk before it can be handled: one of a member
    /// (so a refusal still reads nothing) for a document with files here that is not in
    /// memory. The driver reads it off ECHO's
    /// thread ([`preload`]) and holds the frame, and later ones for that document, until
    /// [`Echo::preloaded`] has put it in place; everyone else goes on meanwhile.
    pub fn wants(&self, conn: ConnId, doc: &str, frame_len: usize) -> Option<String> {
        self.source.as_ref()?;
        let c = self.conns.get(&conn)?;
        if c.closed || !c.joined || frame_len > self.limits.max_message_bytes {
            return None;
        }
        if self.loaded.contains_key(doc) {
            return None;
        }
        let space = self.space_of(doc)?;
        let is_root = self.spaces.get(space).is_some_and(|s| s.root == doc);
        self.role(conn, space).or_else(|| {
            is_root
                .then(|| self.admin_of_refused(conn, space))
                .flatten()
        })?;
        Some(space.to_owned())
    }

    /// Puts a document read by [`preload`] in place, unless what ECHO knows of it changed
    /// since the read began: it is in memory already (read by someone else, perhaps
    /// changed since), no longer has files in that space, or its files are not the sizes
    /// ECHO last wrote (an index rebuilt after a crash may be behind). Then the read is
    /// dropped, and the frames waiting for it read the document as any other frame does.
    pub fn preloaded(&mut self, p: Preload) {
        let Preload { space, id, read } = p;
        if self.loaded.contains_key(id.as_str()) || self.space_of(&id) != Some(space.as_str()) {
            return;
        }
        let Ok((sizes, loaded)) = read else {
            return;
        };
        let Some(e) = self.ids.get(id.as_str()) else {
            return;
        };
        if [e.snapshot_bytes, e.log_bytes] != [small(sizes[0]), small(sizes[1])] {
            return;
        }
        self.stats.loads += 1;
        match loaded {
            Ok(am) => self.hold(&id, am),
            Err(why) => {
                self.unloadable(&id, &space, &why);
            }
        }
    }

    /// Lets go of the least recently used documents until those in memory fit
    /// `cache_bytes` again (to three quarters of it, so this runs seldom), except those
    /// `keep` names: the driver keeps every document whose writes are not durable yet, so
    /// a document dropped reads back with every change acknowledged or about to be.
    pub fn evict(&mut self, keep: impl Fn(&str) -> bool) {
        if self.source.is_none() || self.cached <= self.limits.cache_bytes {
            return;
        }
        let target = self.limits.cache_bytes / 4 * 3;
        let mut by_age: Vec<(u64, Box<str>)> = self
            .loaded
            .iter()
            .filter(|(k, _)| !keep(k))
            .map(|(k, l)| (l.used, k.clone()))
            .collect();
        by_age.sort_unstable();
        for (_, id) in by_age {
            if self.cached <= target {
                break;
            }
            if let Some(l) = self.loaded.remove(&id) {
                self.cached -= l.mem;
                self.stats.evictions += 1;
            }
        }
    }

    /// Documents in memory, and their estimated bytes.
    pub fn cache(&self) -> (usize, usize) {
        (self.loaded.len(), self.cached)
    }

    /// Problems found since the last call (documents quarantined when first read).
    pub fn take_problems(&mut self) -> Vec<String> {
        std::mem::take(&mut self.problems)
    }

    /// The indexes of spaces changed since they were last taken, to be written after the
    /// batch that changed them is durable.
    pub fn take_indexes(&mut self) -> Vec<SpaceIndex<'static>> {
        let dirty: HashMap<SpaceIx, usize> = self
            .spaces
            .values()
            .filter(|s| s.dirty)
            .enumerate()
            .map(|(n, s)| (s.ix, n))
            .collect();
        if dirty.is_empty() {
            return Vec::new();
        }
        let mut out: Vec<SpaceIndex<'static>> = self
            .spaces
            .iter()
            .filter(|(_, s)| s.dirty)
            .map(|(name, s)| {
                let (root_files, root_last_change) = self
                    .ids
                    .get(s.root.as_str())
                    .filter(|e| e.flags & PRESENT != 0 && e.space == s.ix)
                    .map_or(([0, 0], 0), |e| {
                        (
                            [u64::from(e.snapshot_bytes), u64::from(e.log_bytes)],
                            u64::from(e.last_change),
                        )
                    });
                SpaceIndex {
                    format: crate::store::INDEX_FORMAT.into(),
                    space: name.clone().into(),
                    root: s.root.clone().into(),
                    root_files,
                    root_last_change,
                    credentials: s
                        .credentials
                        .iter()
                        .map(|c| {
                            let k = serde_json::to_string(c).unwrap_or_default();
                            (c.clone(), s.proven.contains(&k))
                        })
                        .collect(),
                    docs: Vec::new(),
                }
            })
            .collect();
        for (id, e) in &self.ids {
            let Some(n) = dirty.get(&e.space) else {
                continue;
            };
            if e.flags & ROOT != 0 {
                continue;
            }
            let listing = self.spaces.get(self.name(e.space)).map_or(0, |s| s.listing);
            let listed = e.listing != 0 && e.listing == listing;
            let present = e.flags & PRESENT != 0;
            if !listed && !present {
                continue;
            }
            out[*n].docs.push(IndexedDoc(
                id.to_string().into(),
                self.kinds
                    .get(e.kind as usize)
                    .cloned()
                    .unwrap_or_default()
                    .into(),
                listed,
                present,
                u64::from(e.snapshot_bytes),
                u64::from(e.log_bytes),
                u64::from(e.last_change),
            ));
        }
        for s in self.spaces.values_mut() {
            s.dirty = false;
        }
        for i in &mut out {
            i.docs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
        out
    }
    /// A connection that proved its key.
    pub fn connect(&mut self, conn: ConnId, peer: auth::Peer, now_ms: u64) {
        self.conns.insert(
            conn,
            Conn {
                did: peer.did,
                peer: peer.peer,
                kube: false,
                offer: std::collections::VecDeque::new(),
                parked: HashMap::new(),
                refused: std::collections::HashSet::new(),
                budget: 0.0,
                budget_ms: now_ms,
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

    /// A link this KUBE opened to another KUBE (`echo.peers`), which answered its `join` as
    /// `peer` (its did, and the peer id it sends from). The other KUBE's frames are handled
    /// as any peer's, under the same access rules for its did. Every document of the spaces
    /// where that did is a replicator (or admin) is offered to it, roots first, at most a
    /// quarter of `messages_per_second` a second (the other KUBE limits what this one
    /// sends as it limits anyone); new documents and spaces are offered as they come.
    pub fn connect_kube(&mut self, conn: ConnId, peer: auth::Peer, now_ms: u64) {
        self.connect(conn, peer, now_ms);
        let shared: Vec<String> = self
            .spaces
            .keys()
            .filter(|id| self.replicates(conn, id))
            .cloned()
            .collect();
        if let Some(c) = self.conns.get_mut(&conn) {
            c.joined = true;
            c.kube = true;
        }
        for space in shared {
            self.offer_space(conn, &space);
        }
    }

    /// Offers a whole space to a link: its root now, its objects once the other KUBE holds
    /// the root (`sync_known` sees its heads cover the root's).
    fn offer_space(&mut self, conn: ConnId, space_id: &str) {
        let Some(s) = self.spaces.get(space_id) else {
            return;
        };
        let (ix, root) = (s.ix, s.root.clone());
        let mut objects: Vec<String> = self
            .ids
            .iter()
            .filter(|(_, e)| {
                e.space == ix && e.flags & PRESENT != 0 && e.flags & (ROOT | QUARANTINED) == 0
            })
            .map(|(id, _)| id.to_string())
            .collect();
        objects.sort_unstable();
        if let Some(c) = self.conns.get_mut(&conn) {
            c.refused.remove(space_id);
            c.offer.push_back(root);
            c.parked
                .entry(space_id.to_owned())
                .or_default()
                .extend(objects);
        }
    }

    /// A link's other KUBE holds `space`'s root now: its objects follow.
    fn unpark(&mut self, conn: ConnId, space_id: &str) {
        if let Some(c) = self.conns.get_mut(&conn)
            && let Some(objects) = c.parked.remove(space_id)
        {
            c.offer.extend(objects);
        }
    }

    /// A link's other KUBE does not take `space` (it refused the root): nothing more of it
    /// is offered over this link until the space changes.
    fn refused_by_link(&mut self, conn: ConnId, doc_id: &str) {
        let Some(space) = self
            .space_of(doc_id)
            .filter(|s| self.spaces.get(*s).is_some_and(|sp| sp.root == doc_id))
            .map(str::to_owned)
        else {
            return;
        };
        if let Some(c) = self.conns.get_mut(&conn)
            && c.kube
        {
            c.parked.remove(&space);
            c.refused.insert(space);
        }
    }

    /// Whether `conn`'s did replicates `space` here (a replicator or an admin of it).
    fn replicates(&self, conn: ConnId, space: &str) -> bool {
        self.role(conn, space)
            .is_some_and(|r| r >= Role::Replicator && r != Role::Editor)
    }

    /// Offers a new document of `space` to the linked KUBEs that replicate it.
    fn offer_to_kubes(&mut self, doc_id: &str, space: &str) {
        let links: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.kube && !c.closed && !c.syncs.contains_key(doc_id))
            .map(|(id, _)| *id)
            .collect();
        let is_root = self.spaces.get(space).is_some_and(|s| s.root == doc_id);
        for conn in links {
            if !self.replicates(conn, space) {
                continue;
            }
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            if c.refused.contains(space) {
                continue;
            }
            match c.parked.get_mut(space) {
                // The root is not held there yet: the object waits with the others.
                Some(waiting) if !is_root => waiting.push(doc_id.to_owned()),
                _ => c.offer.push_back(doc_id.to_owned()),
            }
        }
    }

    /// Offers what linked KUBEs are due (see [`Echo::connect_kube`]): a sync message for
    /// each document from a fresh state; the exchange that follows brings either side what
    /// it lacks.
    fn offer(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let rate = f64::from(self.limits.messages_per_second.max(4)) / 4.0;
        let links: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.kube && !c.closed && !c.offer.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for conn in links {
            while let Some(c) = self.conns.get_mut(&conn) {
                let elapsed = now_ms.saturating_sub(c.budget_ms) as f64 / 1000.0;
                c.budget = (c.budget + elapsed * rate).min(rate);
                c.budget_ms = now_ms;
                if c.budget < 1.0 {
                    break;
                }
                let Some(doc) = c.offer.pop_front() else {
                    break;
                };
                if c.syncs.contains_key(&doc) {
                    continue;
                }
                c.budget -= 1.0;
                let Some(space) = self.space_of(&doc).map(str::to_owned) else {
                    continue;
                };
                if !self.replicates(conn, &space) || self.ensure(&doc).is_err() {
                    continue;
                }
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.syncs.insert(doc.clone(), sync::State::new());
                }
                self.reply(conn, &doc, out);
            }
        }
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
        let Some(space) = self.space_of(doc).map(str::to_owned) else {
            return;
        };
        self.set_quarantined(doc, &space, why);
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

    /// Bytes of the documents' files, as ECHO accounts them (`kube_echo_storage_bytes`;
    /// cheaper than walking a hundred thousand files).
    pub fn bytes(&self) -> u64 {
        self.spaces.values().map(|s| s.bytes).sum()
    }

    /// Documents ECHO serves (in memory or not).
    pub fn doc_count(&self) -> usize {
        self.present
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
                            let known = if self.space_of(&doc).is_some() {
                                Ok(true)
                            } else if self
                                .listed_by(&doc)
                                .is_some_and(|s| self.role(conn, s).is_some())
                            {
                                // Files an index written before a crash did not know
                                // of are looked for, for a member only.
                                self.probe(&doc)
                            } else {
                                Ok(false)
                            };
                            match known {
                                Ok(true) => self.sync_known(conn, &doc, m, now_ms, &mut out),
                                Ok(false) => {
                                    self.sync_unknown(conn, &doc, m, request, now_ms, &mut out)
                                }
                                Err(missing) => self.missing(conn, &doc, missing, &mut out),
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
                self.refused_by_link(conn, &doc);
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

    /// Tells a peer a document cannot be had now, and why.
    fn missing(&mut self, conn: ConnId, doc_id: &str, m: Missing, out: &mut Vec<Action>) {
        let message = match m {
            Missing::NotHere => None,
            Missing::Quarantined => {
                *self.stats.refused.entry("quarantined").or_default() += 1;
                Some(format!(
                    "refused: {doc_id} is quarantined (its files on this KUBE do not load); an operator must restore it"
                ))
            }
            Missing::Io(e) => {
                tracing::error!(doc = doc_id, error = %e, "reading an ECHO document");
                Some(format!(
                    "refused: {doc_id} cannot be read on this KUBE now; try again later"
                ))
            }
        };
        if let Some(c) = self.conns.get_mut(&conn) {
            c.syncs.remove(doc_id);
        }
        if let Some(message) = message {
            self.send(conn, &Outgoing::Error { message: &message }, out);
        }
        self.send(conn, &Outgoing::DocUnavailable { doc: doc_id }, out);
    }

    fn sync_known(
        &mut self,
        conn: ConnId,
        doc_id: &str,
        mut msg: sync::Message,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        let Some(space_id) = self.space_of(doc_id).map(str::to_owned) else {
            return;
        };
        let is_root = self.spaces.get(&space_id).map(|s| s.root.as_str()) == Some(doc_id);
        // Access is decided before the document is read: a refusal costs no load.
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
        if self.conns.get(&conn).is_none_or(|c| c.closed) {
            return;
        }
        if let Err(m) = self.ensure(doc_id) {
            self.missing(conn, doc_id, m, out);
            return;
        }
        let (Some(c), Some(doc)) = (self.conns.get_mut(&conn), self.loaded.get_mut(doc_id)) else {
            return;
        };
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
                        .and_then(|new| space::root_change(&old, &new).map(|_| new));
                    verdict.map(|new| {
                        doc.am = copy;
                        *state = st;
                        Some(new)
                    })
                }
                Err(e) => Err(e.to_string()),
            }
        } else {
            doc.am
                .receive_sync_message(state, msg)
                .map(|()| None)
                .map_err(|e| e.to_string())
        };
        let new_root = match result {
            Ok(r) => r,
            Err(e) => {
                let m = format!("refused: changes to {doc_id}: {e}");
                self.strike(conn, "invalid", &m, out);
                return;
            }
        };
        let changed = doc.am.get_heads() != before;
        let held_there = is_root && {
            let heads = doc.am.get_heads();
            state
                .their_heads
                .as_ref()
                .is_some_and(|theirs| heads.iter().all(|h| theirs.contains(h)))
        };
        if changed {
            self.persist_since(doc_id, &space_id, &before, now_ms, out);
            if is_root {
                self.membership_changed(&space_id, new_root, now_ms, out);
            }
            self.broadcast(doc_id, Some(conn), out);
        }
        if held_there && self.conns.get(&conn).is_some_and(|c| c.kube) {
            self.unpark(conn, &space_id);
        }
        self.reply(conn, doc_id, out);
    }

    /// Sends `conn` what it lacks of `doc_id`, if anything.
    fn reply(&mut self, conn: ConnId, doc_id: &str, out: &mut Vec<Action>) {
        let (Some(c), Some(doc)) = (self.conns.get_mut(&conn), self.loaded.get(doc_id)) else {
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
            // Only a member learns that it exists, and why it is not served.
            if self.role(conn, space).is_some() {
                let m = format!(
                    "refused: {doc_id} of {space} is quarantined (its files on this KUBE do not load); an operator must restore it"
                );
                *self.stats.refused.entry("quarantined").or_default() += 1;
                self.send(conn, &Outgoing::Error { message: &m }, out);
            }
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
        if self.quarantined.contains_key(doc_id) {
            // Its files are never touched, nor written to.
            let m = format!("refused: {doc_id} is quarantined on this KUBE");
            self.refuse_pending(conn, doc_id, "quarantined", &m, out);
            return;
        }
        let did = c.did.clone();
        if let Some(root) = space::read_root(&p.am) {
            let taken = self
                .listed_by(doc_id)
                .or_else(|| self.space_of(doc_id))
                .map(str::to_owned);
            let verdict = match taken {
                Some(other) => Err((
                    "invalid",
                    format!("refused: {doc_id} is listed as an object of space {other}"),
                )),
                None => self.judge_root(&did, &root, now_ms),
            };
            match verdict {
                Ok(()) => self.promote(conn, doc_id, Some(root), now_ms, out),
                Err((reason, m))
                    if reason == "not-admitted"
                        && halo::space::validate(&root.space, &root.credentials, clock(now_ms))
                            .role_of(&did)
                            == Some(Role::Replicator) =>
                {
                    // Another KUBE offering a space this one does not replicate (its own
                    // `echo.admit`) is not misbehaving: told, not struck.
                    *self.stats.refused.entry(reason).or_default() += 1;
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.pending.remove(doc_id);
                    }
                    self.send(conn, &Outgoing::Error { message: &m }, out);
                    self.send(conn, &Outgoing::DocUnavailable { doc: doc_id }, out);
                }
                Err((reason, m)) => self.refuse_pending(conn, doc_id, reason, &m, out),
            }
            return;
        }
        let Some(space_id) = self.listed_by(doc_id).map(str::to_owned) else {
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
                    .map_or((0, 0), |s| (s.doc_count, s.bytes));
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
        // An admin brings a new space, or a replicator (another KUBE of a cluster, which
        // the space's admins admitted as this KUBE's admission below also requires).
        if !matches!(
            membership.role_of(did),
            Some(Role::Admin | Role::Replicator)
        ) {
            return Err((
                "not-member",
                format!(
                    "refused: only an admin or a replicator of {} may bring its root",
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

    /// Makes a held document part of a space (a new one when `new_space` is its root),
    /// durable first.
    fn promote(
        &mut self,
        conn: ConnId,
        doc_id: &str,
        new_space: Option<Root>,
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
            Some(r) => r.space.clone(),
            None => match self.listed_by(doc_id) {
                Some(s) => s.to_owned(),
                None => return,
            },
        };
        // Files an index written before a crash did not know of are looked for: a
        // document with files merges into them, and one whose files cannot be read now
        // waits (taking it for new would write over them).
        if new_space.is_none()
            && self.space_of(doc_id).is_none()
            && let Err(m) = self.probe(doc_id)
        {
            self.missing(conn, doc_id, m, out);
            return;
        }
        // Several connections may hold the same document (a new object reaches KUBE from
        // its author and from a peer it already synced with); the first promoted is the
        // document, later ones merge into it. Replacing it would drop changes KUBE has
        // already acknowledged (the later copy may still be empty).
        if new_space.is_none() && self.space_of(doc_id).is_some() {
            if let Err(m) = self.ensure(doc_id) {
                self.missing(conn, doc_id, m, out);
                return;
            }
            let Some(doc) = self.loaded.get_mut(doc_id) else {
                return;
            };
            let mut am = p.am;
            let before = doc.am.get_heads();
            let changed = doc.am.merge(&mut am).is_ok() && doc.am.get_heads() != before;
            if changed {
                self.persist_since(doc_id, &space_id, &before, now_ms, out);
                self.broadcast(doc_id, Some(conn), out);
            }
            if let Some(c) = self.conns.get_mut(&conn) {
                // What the peer has is learnt again from its next message.
                c.syncs.insert(doc_id.to_owned(), sync::State::new());
            }
            self.reply(conn, doc_id, out);
            return;
        }
        if new_space.is_some() {
            out.push(Action::Store(Write::NewSpace {
                space: space_id.clone(),
                root: doc_id.to_owned(),
            }));
            self.add_space(&space_id, doc_id);
        }
        let Some(ix) = self.spaces.get(&space_id).map(|s| s.ix) else {
            return;
        };
        // A new document's first save starts its log: one file per document until the log
        // outgrows `compact_bytes` and becomes a snapshot.
        let bytes = p.am.save();
        let len = bytes.len() as u64 + FRAME;
        out.push(Action::Store(Write::Append {
            space: space_id.clone(),
            doc: doc_id.to_owned(),
            chunk: bytes,
        }));
        self.add_doc(ix, doc_id, [0, len], now_ms / 1000, new_space.is_some());
        self.hold(doc_id, p.am);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.syncs.insert(doc_id.to_owned(), p.state);
        }
        if new_space.is_some() {
            self.membership_changed(&space_id, new_space, now_ms, out);
        }
        self.offer_to_kubes(doc_id, &space_id);
        self.reply(conn, doc_id, out);
    }

    /// After a root changed (`root`: what it says now), a credential's time came or the
    /// policy changed: the space is judged again, new members and revocations take effect
    /// on open connections, and held documents the index now lists are decided.
    fn membership_changed(
        &mut self,
        space_id: &str,
        root: Option<Root>,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        let before: HashMap<ConnId, bool> = self
            .conns
            .keys()
            .map(|id| (*id, self.role(*id, space_id).is_some()))
            .collect();
        match root {
            Some(r) => self.set_root(space_id, Some(r), now_ms),
            None => self.judge(space_id, now_ms),
        }
        let Some(space) = self.spaces.get(space_id) else {
            return;
        };
        let mut cut = Vec::new();
        let mut held = Vec::new();
        for (id, c) in &self.conns {
            if c.closed {
                continue;
            }
            let uses_space = c.syncs.keys().any(|d| self.space_of(d) == Some(space_id));
            if before.get(id) == Some(&true)
                && uses_space
                && (space.refusal.is_some() || space.membership.role_of(&c.did).is_none())
            {
                cut.push(*id);
                continue;
            }
            for d in c.pending.keys() {
                if self.listed_by(d) == Some(space_id) {
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
        // A linked KUBE this space now admits as a replicator is offered all of it.
        let gained: Vec<ConnId> = before
            .iter()
            .filter(|(id, had)| {
                !**had
                    && self.conns.get(id).is_some_and(|c| c.kube && !c.closed)
                    && self.replicates(**id, space_id)
            })
            .map(|(id, _)| *id)
            .collect();
        for conn in gained {
            self.offer_space(conn, space_id);
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
        let Some(space_id) = self.space_of(doc_id).map(str::to_owned) else {
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
            self.membership_changed(&id, None, now_ms, &mut out);
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
        self.offer(now_ms, &mut out);
        out
    }

    /// Stores what document `id` (in memory) gained since `before`: appended to its log, or
    /// folded into a new snapshot once the log outgrows `compact_bytes` and the snapshot.
    fn persist_since(
        &mut self,
        id: &str,
        space_id: &str,
        before: &[automerge::ChangeHash],
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        let (Some(doc), Some(e)) = (self.loaded.get_mut(id), self.ids.get_mut(id)) else {
            return;
        };
        let chunk = doc.am.save_after(before);
        let len = chunk.len() as u64;
        let size = e.bytes();
        e.last_change = small(now_ms / 1000);
        if u64::from(e.log_bytes) + len >= self.limits.compact_bytes.max(e.snapshot_bytes.into()) {
            let bytes = doc.am.save();
            e.snapshot_bytes = small(bytes.len() as u64);
            e.log_bytes = 0;
            out.push(Action::Store(Write::Snapshot {
                space: space_id.to_owned(),
                doc: id.to_owned(),
                bytes,
            }));
        } else {
            e.log_bytes = small(u64::from(e.log_bytes) + len + FRAME);
            out.push(Action::Store(Write::Append {
                space: space_id.to_owned(),
                doc: id.to_owned(),
                chunk,
            }));
        }
        let after = e.bytes();
        let mem = estimate(after);
        self.cached = self.cached - doc.mem + mem;
        doc.mem = mem;
        if let Some(s) = self.spaces.get_mut(space_id) {
            s.bytes = (s.bytes + after).saturating_sub(size);
            s.last_change = s.last_change.max(now_ms / 1000);
            s.dirty = true;
        }
    }

    // ---- operators ----

    fn summary(&self, id: &str, s: &Space) -> SpaceSummary {
        SpaceSummary {
            space: id.to_owned(),
            root: s.root.clone(),
            documents: s.doc_count,
            members: s.membership.roles.len(),
            bytes: s.bytes,
            last_change: s.last_change,
        }
    }

    pub fn list(&self) -> Vec<SpaceSummary> {
        self.spaces
            .iter()
            .map(|(id, s)| self.summary(id, s))
            .collect()
    }

    /// The documents with files in a space, in documentId order (a walk of every entry:
    /// for operators, not for peers).
    fn docs_of(&self, s: &Space) -> Vec<(&str, &Entry)> {
        let mut docs: Vec<(&str, &Entry)> = self
            .ids
            .iter()
            .filter(|(_, e)| e.space == s.ix && e.flags & PRESENT != 0)
            .map(|(id, e)| (&**id, e))
            .collect();
        docs.sort_unstable_by_key(|(id, _)| *id);
        docs
    }

    /// Runs `f` on a document, reading it for the occasion when it is not in memory (an
    /// operator's walk does not displace the peers' documents).
    /// `Ok(None)`: it is not here (or does not load, and is quarantined now); `Err`: its
    /// files could not be read.
    fn with_doc<R>(
        &mut self,
        id: &str,
        f: impl FnOnce(&Automerge) -> R,
    ) -> Result<Option<R>, String> {
        if let Some(l) = self.loaded.get(id) {
            return Ok(Some(f(&l.am)));
        }
        let Some(space) = self.space_of(id).map(str::to_owned) else {
            return Ok(None);
        };
        let Some(source) = self.source.clone() else {
            return Ok(None);
        };
        let stored = match source.read_doc(&space, id) {
            Ok(Some(stored)) => stored,
            Ok(None) => return Ok(None),
            Err(e) => return Err(format!("{space}/{id}: {e}")),
        };
        self.stats.loads += 1;
        match load_doc(&stored) {
            Ok(am) => Ok(Some(f(&am))),
            Err(why) => {
                self.unloadable(id, &space, &why);
                Ok(None)
            }
        }
    }

    /// Looks for the files of the objects `space` lists that ECHO does not know to have
    /// files (an index written before a crash may not know them), so an operator's walk
    /// of the space sees every document.
    fn probe_listed(&mut self, space_id: &str) -> Result<(), String> {
        let Some(s) = self.spaces.get(space_id) else {
            return Ok(());
        };
        let (ix, listing) = (s.ix, s.listing);
        let absent: Vec<String> = self
            .ids
            .iter()
            .filter(|(_, e)| {
                e.space == ix && e.listing == listing && e.flags & (PRESENT | ROOT) == 0
            })
            .map(|(id, _)| id.to_string())
            .collect();
        for id in absent {
            match self.probe(&id) {
                Ok(_) | Err(Missing::Quarantined | Missing::NotHere) => {}
                Err(Missing::Io(e)) => return Err(format!("{space_id}/{id}: {e}")),
            }
        }
        Ok(())
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
        let documents = self
            .docs_of(s)
            .into_iter()
            .filter(|(_, e)| e.flags & QUARANTINED == 0)
            .map(|(id, e)| {
                let kind = if e.flags & ROOT != 0 {
                    "space-root".to_owned()
                } else if e.listing != 0 && e.listing == s.listing {
                    self.kinds.get(e.kind as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                };
                DocSummary {
                    id: id.to_owned(),
                    kind,
                    bytes: e.bytes(),
                    last_change: e.last_change.into(),
                }
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
        &mut self,
        space_id: &str,
        ty: &str,
        wheres: &[(String, String)],
    ) -> Option<Vec<serde_json::Value>> {
        // (A document that cannot be read now is left out of the answer and logged.)
        if let Err(e) = self.probe_listed(space_id) {
            self.problems.push(format!("{e} (not read for a query)"));
        }
        let s = self.spaces.get(space_id)?;
        let ids: Vec<String> = self
            .docs_of(s)
            .into_iter()
            .filter(|(_, e)| e.flags & (ROOT | QUARANTINED) == 0)
            .map(|(id, _)| id.to_owned())
            .collect();
        let mut found = Vec::new();
        for id in ids {
            let mut v = match self.with_doc(&id, space::to_json) {
                Ok(Some(v)) => v,
                Ok(None) => continue,
                Err(e) => {
                    self.problems.push(format!("{e} (not read for a query)"));
                    continue;
                }
            };
            if space::matches(&v, ty, wheres) {
                if let Some(o) = v.as_object_mut() {
                    o.insert("id".into(), id.into());
                }
                found.push(v);
            }
        }
        Some(found)
    }

    /// A space whole, for `kube space export` and backups: `None` when it is not here,
    /// an error when one of its documents cannot be read now (an export is never short of
    /// a document silently).
    pub fn export(&mut self, space_id: &str) -> Option<Result<Export, String>> {
        use base64::Engine;
        if let Err(e) = self.probe_listed(space_id) {
            return Some(Err(e));
        }
        let s = self.spaces.get(space_id)?;
        let root = s.root.clone();
        let ids: Vec<String> = self
            .docs_of(s)
            .into_iter()
            .filter(|(_, e)| e.flags & QUARANTINED == 0)
            .map(|(id, _)| id.to_owned())
            .collect();
        let mut documents = BTreeMap::new();
        for id in ids {
            match self.with_doc(&id, Automerge::save) {
                Ok(Some(bytes)) => {
                    documents.insert(id, base64::engine::general_purpose::STANDARD.encode(bytes));
                }
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
        Some(Ok(Export {
            format: EXPORT_FORMAT.to_owned(),
            space: space_id.to_owned(),
            root,
            documents,
        }))
    }

    /// Undoes an [`Echo::import`] whose writes failed, so ECHO is as it was before it: the
    /// space and its documents are gone from memory (nobody has seen them yet: the driver
    /// writes an import before it handles anything else).
    pub fn forget_import(&mut self, space_id: &str) {
        let Some(space) = self.spaces.remove(space_id) else {
            return;
        };
        let mut gone = 0;
        self.ids.retain(|_, e| {
            let keep = e.space != space.ix;
            if !keep && e.flags & PRESENT != 0 && e.flags & QUARANTINED == 0 {
                gone += 1;
            }
            keep
        });
        self.present -= gone;
        self.listed = self.listed.saturating_sub(space.objects);
        let ids: Vec<Box<str>> = self.loaded.keys().cloned().collect();
        for id in ids {
            if !self.ids.contains_key(&id)
                && let Some(l) = self.loaded.remove(&id)
            {
                self.cached -= l.mem;
            }
        }
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
            let here = self
                .ids
                .get(id.as_str())
                .is_some_and(|e| e.flags & PRESENT != 0);
            if here || self.quarantined.contains_key(id) {
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
        if let Decision::Refuse(r) = halo::admission::decide(
            &self.policy,
            &self.kube,
            &e.space,
            &root.credentials,
            clock(now_ms),
        ) {
            return Err(ImportError::NotAdmitted(r.to_string()));
        }
        let mut out = vec![Write::NewSpace {
            space: e.space.clone(),
            root: e.root.clone(),
        }];
        let ix = self.add_space(&e.space, &e.root);
        for (id, am) in docs {
            let bytes = am.save();
            self.add_doc(
                ix,
                &id,
                [bytes.len() as u64, 0],
                now_ms / 1000,
                id == e.root,
            );
            self.hold(&id, am);
            out.push(Write::Snapshot {
                space: e.space.clone(),
                doc: id,
                bytes,
            });
        }
        self.set_root(&e.space, Some(root), now_ms);
        Ok(out)
    }

    /// A document in memory, read if it is not (tests).
    #[cfg(test)]
    fn am(&mut self, id: &str) -> &Automerge {
        assert!(self.ensure(id).is_ok(), "{id} loads");
        &self.loaded[id].am
    }
}

/// A document read and loaded off ECHO's thread, for [`Echo::preloaded`].
pub struct Preload {
    pub space: String,
    pub id: String,
    /// The sizes of its files (snapshot, log) and the document, or why it does not load;
    /// or why it could not be read.
    read: Result<([u64; 2], Result<Automerge, String>), String>,
}

/// Reads document `id` of `space` from `source` and loads it (on a blocking thread: this
/// is the slow part of a document's first use). A panic in Automerge on the files counts
/// as a document that does not load.
pub fn preload(source: &dyn Source, space: String, id: String) -> Preload {
    let read = match source.read_doc(&space, &id) {
        Err(e) => Err(e.to_string()),
        Ok(None) => Err("no files".into()),
        Ok(Some(stored)) => {
            let snap = stored.snapshot.len() as u64;
            Ok(([snap, stored.size.saturating_sub(snap)], load_doc(&stored)))
        }
    };
    Preload { space, id, read }
}

/// Bytes a log frame adds to its chunk.
const FRAME: u64 = 8;

/// A document from its files: the snapshot, then every log chunk. Any failure (a damaged
/// log, a snapshot or chunk Automerge refuses) is returned, for the document to be
/// quarantined rather than served short of acknowledged changes.
fn load_doc(d: &crate::store::StoredDoc) -> Result<Automerge, String> {
    // Files that make Automerge panic are a document that does not load, not the end of
    // ECHO's thread.
    std::panic::catch_unwind(|| load_files(d))
        .unwrap_or_else(|_| Err("Automerge panicked while loading it".into()))
}

fn load_files(d: &crate::store::StoredDoc) -> Result<Automerge, String> {
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

#[cfg(test)]
mod tests;
