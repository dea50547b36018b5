//! The `echo` service's driver: one task owns the ECHO peer (`echo::Echo`, pure) and its
//! file store, fed by the WebSocket connections at `/.well-known/kube/echo` and by operator
//! requests from the admin API.
//!
//! Durability is this task's job: it takes every event that is ready (up to a batch), runs
//! them through the peer, makes the batch's writes durable in one round of fsyncs, and only
//! then sends the batch's messages. A peer therefore never sees KUBE's heads include a change
//! that is not on disk, and many peers' changes share one fsync (group commit).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use config::Problem;
use echo::repo::{Export, SpaceDetail, SpaceSummary};
use echo::store::{FileStore, Write};
use echo::{Action, ConnId, Echo, Limits};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::service::{Context, Service, StartError, Started, Tasks};

mod links;

/// What a WebSocket message is to ECHO, whichever library carries it (axum's for the
/// connections KUBE accepts, tungstenite's for the links it opens).
enum Kind {
    /// A frame for the peer: binary, or text (not part of the protocol: the peer refuses
    /// it as malformed).
    Data(Vec<u8>),
    /// Ping, pong: the other side is there.
    Alive,
    End,
}

trait WsMessage: Sized {
    fn kind(self) -> Kind;
    fn binary(bytes: Vec<u8>) -> Self;
    fn ping() -> Self;
    fn close() -> Self;
}

impl WsMessage for Message {
    fn kind(self) -> Kind {
        match self {
            Message::Binary(b) => Kind::Data(b.to_vec()),
            Message::Text(t) => Kind::Data(t.as_bytes().to_vec()),
            Message::Ping(_) | Message::Pong(_) => Kind::Alive,
            Message::Close(_) => Kind::End,
        }
    }
    fn binary(bytes: Vec<u8>) -> Self {
        Message::Binary(bytes.into())
    }
    fn ping() -> Self {
        Message::Ping(Vec::new().into())
    }
    fn close() -> Self {
        Message::Close(None)
    }
}

/// Events the peer's task handles, at most this many per durable batch.
const BATCH: usize = 512;
/// Frames queued to one connection before it counts as not reading (and is closed).
const QUEUE: usize = 4096;
const PING: Duration = Duration::from_secs(20);
/// How often changed spaces' indexes are written (and at stop).
const INDEX_EVERY: Duration = Duration::from_secs(5);
/// Documents read from disk at once, off ECHO's thread.
const READERS: usize = 4;
/// Bytes of frames held while the documents they need are read; beyond it, no new event is
/// taken until reads land.
const HELD_BYTES: usize = 64 << 20;

enum Event {
    Connect {
        conn: ConnId,
        peer: echo::auth::Peer,
        outbox: Outbox,
    },
    Frame {
        conn: ConnId,
        bytes: Vec<u8>,
        at: Instant,
    },
    Closed {
        conn: ConnId,
    },
    /// A link this KUBE opened to another KUBE of `echo.peers`, joined.
    Link {
        conn: ConnId,
        peer: echo::auth::Peer,
        outbox: Outbox,
    },
    Reload {
        limits: Limits,
        policy: halo::admission::Admit,
    },
    Op(Op),
}

/// Operator requests (admin API).
pub enum Op {
    List(oneshot::Sender<Vec<SpaceSummary>>),
    Show(String, oneshot::Sender<Option<SpaceDetail>>),
    Query {
        space: String,
        kind: String,
        wheres: Vec<(String, String)>,
        reply: oneshot::Sender<Option<Vec<serde_json::Value>>>,
    },
    /// `None`: no such space; an error: a document could not be read now.
    Export(String, oneshot::Sender<Option<Result<Export, String>>>),
    Import(Box<Export>, oneshot::Sender<Result<String, String>>),
    Status(oneshot::Sender<EchoStatus>),
}

/// ECHO's line in `kube status`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EchoStatus {
    pub spaces: usize,
    pub documents: usize,
    pub peers: usize,
    pub storage_bytes: u64,
    /// Documents held in memory, and their estimated bytes (`echo.cache_bytes`).
    pub cached_documents: usize,
    pub cache_bytes: usize,
    pub quarantined: Vec<Quarantined>,
    /// The links to the other KUBEs of `echo.peers` (filled in by the handle).
    pub links: Vec<links::LinkStatus>,
}

/// A document whose files do not load.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Quarantined {
    pub space: String,
    pub document: String,
    pub why: String,
}

enum Outgoing {
    Binary(Vec<u8>),
    Close,
}

/// One connection's frames waiting to be sent: at most [`QUEUE`] frames and `cap` bytes
/// (one frame larger than `cap` still goes when nothing else waits). A peer that does not
/// read fills it and is dropped, instead of growing KUBE's memory.
#[derive(Clone)]
struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    queued: Arc<AtomicUsize>,
    cap: usize,
}

impl Outbox {
    fn new(cap: usize) -> (Outbox, mpsc::Receiver<Outgoing>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        (Outbox { tx, queued, cap }, rx)
    }

    /// Queues a frame; false when the peer is not reading.
    fn push(&self, bytes: Vec<u8>) -> bool {
        let n = bytes.len();
        let q = self.queued.load(Ordering::Relaxed);
        if q > 0 && q.saturating_add(n) > self.cap {
            return false;
        }
        self.queued.fetch_add(n, Ordering::Relaxed);
        if self.tx.try_send(Outgoing::Binary(bytes)).is_err() {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// A frame left the queue.
    fn sent(queued: &AtomicUsize, n: usize) {
        queued.fetch_sub(n, Ordering::Relaxed);
    }

    fn close(&self) {
        let _ = self.tx.try_send(Outgoing::Close);
    }
}

/// One of `echo.max_connections`, taken before the upgrade and given back when the
/// connection ends (or the upgrade never completes).
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| Slot(open.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the HTTPS listener and the admin API need to reach ECHO.
#[derive(Clone)]
pub struct EchoHandle {
    events: mpsc::Sender<Event>,
    next: Arc<AtomicU64>,
    open: Arc<AtomicUsize>,
    max_connections: usize,
    max_frame: usize,
    verifier: Arc<Mutex<echo::auth::Verifier>>,
    did: String,
    /// ECHO's peer id (what its frames are sent from).
    peer_id: String,
    store: Arc<FileStore>,
    /// The links to the other KUBEs of `echo.peers`, as `kube status` shows them.
    links: links::Links,
}

impl EchoHandle {
    /// ECHO's files (a backup holds their writes).
    pub fn store(&self) -> &Arc<FileStore> {
        &self.store
    }

    /// KUBE's did:key, which tokens must name (`GET /.well-known/kube/identity`).
    pub fn did(&self) -> &str {
        &self.did
    }

    /// The links to the other KUBEs of `echo.peers`.
    pub fn links(&self) -> Vec<links::LinkStatus> {
        self.links.all()
    }

    /// Checks the token in `?auth=` and accepts the WebSocket upgrade; 401 without a valid
    /// token, 503 when `echo.max_connections` are open.
    pub fn upgrade(&self, ws: WebSocketUpgrade, token: Option<String>) -> Response {
        let peer = {
            let mut v = match self.verifier.lock() {
                Ok(v) => v,
                Err(poisoned) => poisoned.into_inner(),
            };
            v.verify(token.as_deref(), crate::service::unix_now())
        };
        let peer = match peer {
            Ok(p) => p,
            Err(e @ echo::auth::AuthError::Busy) => {
                return (http::StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response();
            }
            Err(e) => {
                return (http::StatusCode::UNAUTHORIZED, format!("{e}\n")).into_response();
            }
        };
        let Some(slot) = Slot::take(&self.open, self.max_connections) else {
            return (
                http::StatusCode::SERVICE_UNAVAILABLE,
                "too many ECHO connections\n",
            )
                .into_response();
        };
        let this = self.clone();
        // Frames over the limit still arrive (up to twice it) so the peer hears why.
        let cap = self.max_frame.saturating_mul(2).max(1 << 16);
        ws.max_message_size(cap)
            .max_frame_size(cap)
            .on_upgrade(move |socket| async move { this.connection(socket, peer, slot).await })
    }

    async fn connection(self, socket: WebSocket, peer: echo::auth::Peer, _slot: Slot) {
        let conn = self.next.fetch_add(1, Ordering::Relaxed);
        let (outbox, rx) = Outbox::new(self.max_frame.saturating_mul(2));
        let queued = outbox.queued.clone();
        if self
            .events
            .send(Event::Connect { conn, peer, outbox })
            .await
            .is_ok()
        {
            self.pump(conn, rx, queued, socket).await;
            let _ = self.events.send(Event::Closed { conn }).await;
        }
    }

    /// Carries one connection's frames both ways (peer → driver as `Event::Frame`, outbox →
    /// peer), pings it, and returns when either side ends it or it stays silent for three
    /// ping intervals.
    async fn pump<M, E, S>(
        &self,
        conn: ConnId,
        mut rx: mpsc::Receiver<Outgoing>,
        queued: Arc<AtomicUsize>,
        socket: S,
    ) where
        M: WsMessage,
        S: futures_util::Stream<Item = Result<M, E>> + futures_util::Sink<M> + Unpin,
    {
        let (mut sink, mut stream) = socket.split();
        let mut ping = tokio::time::interval(PING);
        ping.tick().await;
        let mut last_seen = Instant::now();
        loop {
            tokio::select! {
                incoming = stream.next() => match incoming.map(|r| r.map(WsMessage::kind)) {
                    Some(Ok(Kind::Data(bytes))) => {
                        last_seen = Instant::now();
                        let ev = Event::Frame { conn, bytes, at: last_seen };
                        if self.events.send(ev).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(Kind::Alive)) => last_seen = Instant::now(),
                    Some(Ok(Kind::End) | Err(_)) | None => break,
                },
                out = rx.recv() => match out {
                    Some(Outgoing::Binary(b)) => {
                        let n = b.len();
                        let sent = sink.send(M::binary(b)).await;
                        Outbox::sent(&queued, n);
                        if sent.is_err() {
                            break;
                        }
                    }
                    Some(Outgoing::Close) | None => {
                        let _ = sink.send(M::close()).await;
                        break;
                    }
                },
                _ = ping.tick() => {
                    if last_seen.elapsed() > PING * 3 {
                        break;
                    }
                    if sink.send(M::ping()).await.is_err() {
                        break;
                    }
                }
            }
        }
    }

    /// Applies a changed `echo` section: limits and `echo.admit` for new decisions, and the
    /// token window. Open connections stay; `enabled`, `max_connections` and the frame cap
    /// of open connections wait for a restart.
    pub async fn reload(&self, e: &config::Echo) {
        if let Ok(mut v) = self.verifier.lock() {
            v.set_window(e.auth_window_secs);
        }
        let event = Event::Reload {
            limits: limits(e),
            policy: crate::identity::admission_policy(&e.admit),
        };
        let _ = self.events.send(event).await;
    }

    /// Asks the peer's task an operator question.
    pub async fn op<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Op) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.events.send(Event::Op(make(tx))).await.ok()?;
        rx.await.ok()
    }
}

fn limits(e: &config::Echo) -> Limits {
    Limits {
        max_message_bytes: e.max_message_bytes,
        messages_per_second: e.messages_per_second,
        max_docs_per_space: e.max_docs_per_space,
        max_space_bytes: e.max_space_bytes,
        max_pending_docs: e.max_pending_docs,
        pending_secs: e.pending_secs,
        strikes: e.strikes,
        cache_bytes: e.cache_bytes,
        ..Limits::default()
    }
}

pub struct EchoService;

pub struct EchoDeps {
    pub metrics: Arc<Metrics>,
    /// KUBE's did:key.
    pub identity: String,
}

impl Service for EchoService {
    const NAME: &'static str = "echo";
    type Section = config::Echo;
    type Deps = EchoDeps;
    type Handle = Option<EchoHandle>;

    fn check(e: &config::Echo, _cx: &Context) -> Vec<Problem> {
        let mut p = Vec::new();
        for (key, v) in [
            ("echo.auth_window_secs", e.auth_window_secs),
            ("echo.max_message_bytes", e.max_message_bytes as u64),
            ("echo.messages_per_second", u64::from(e.messages_per_second)),
            ("echo.max_docs_per_space", e.max_docs_per_space as u64),
            ("echo.max_space_bytes", e.max_space_bytes),
            ("echo.max_pending_docs", e.max_pending_docs as u64),
            ("echo.pending_secs", e.pending_secs),
            ("echo.max_connections", e.max_connections as u64),
            ("echo.strikes", u64::from(e.strikes)),
        ] {
            if v == 0 {
                p.push(Problem::new(key, "must be at least 1"));
            }
        }
        for (i, peer) in e.peers.iter().enumerate() {
            match links::Target::new(peer) {
                Ok(_) => {}
                Err(err @ links::LinkError::Ca { .. }) => {
                    p.push(Problem::new(
                        format!("echo.peers[{i}].ca_file"),
                        err.to_string(),
                    ));
                }
                Err(err @ links::LinkError::Did(..)) => {
                    p.push(Problem::new(
                        format!("echo.peers[{i}].did"),
                        err.to_string(),
                    ));
                }
                Err(err) => p.push(Problem::new(
                    format!("echo.peers[{i}].url"),
                    err.to_string(),
                )),
            }
        }
        p
    }

    async fn start(
        e: config::Echo,
        cx: &Context,
        deps: EchoDeps,
    ) -> Result<Started<Option<EchoHandle>>, StartError> {
        if !e.enabled {
            return Ok(Started {
                handle: None,
                running: Box::new(crate::service::Idle("echo")),
            });
        }
        if !config::is_local_domain(&cx.domain) && e.admit == config::Admit::Any {
            tracing::warn!(
                "echo.admit is `any` on a public domain: anyone who makes a key can store spaces here (up to echo.max_space_bytes each); list your identity instead (kube init does)"
            );
        }
        let dir = cx.data_dir.join("echo");
        let (store, echo, problems) = {
            let did = deps.identity.clone();
            let policy = crate::identity::admission_policy(&e.admit);
            let limits = limits(&e);
            tokio::task::spawn_blocking(move || -> Result<_, echo::store::StoreError> {
                // Start reads each space's index (or, when it is missing or behind its
                // root, the root and the directory), never the documents: they are read
                // when a peer asks for them.
                let store = Arc::new(FileStore::open(&dir)?);
                let mut echo = Echo::new(did, policy, limits);
                echo.set_source(store.clone());
                let mut problems = Vec::new();
                for (space, root) in store.space_roots()? {
                    let now = echo::unix_now_ms();
                    let found = match echo.open(store.scan_space(space, root)?, now) {
                        Ok(found) => found,
                        Err(stale) => {
                            tracing::info!(space = %stale.space, "rebuilding an ECHO space index");
                            let rebuilt = store.rebuild(stale.space, stale.root)?;
                            echo.open(rebuilt, now).unwrap_or_default()
                        }
                    };
                    problems.extend(found);
                }
                write_indexes(&mut echo, &store);
                Ok((store, echo, problems))
            })
            .await??
        };
        for p in problems {
            tracing::error!(problem = %p, "an ECHO document on disk does not load; it is left as it is");
        }
        tracing::info!(
            spaces = echo.space_count(),
            documents = echo.doc_count(),
            "ECHO loaded"
        );
        let (events, rx) = mpsc::channel(8192);
        let cancel = CancellationToken::new();
        let mut tasks = Tasks::new("echo", cancel.clone());
        // The peer runs on a thread of its own: parsing and merging a peer's Automerge data
        // costs CPU, and must not take a worker from HTTPS, DNS or TURN.
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let (st, metrics) = (store.clone(), deps.metrics);
        let link_metrics = metrics.clone();
        let peer_id = echo.peer_id().to_owned();
        let links_cancel = cancel.clone();
        std::thread::Builder::new()
            .name("echo".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(run(echo, st, rx, metrics, cancel)),
                    Err(e) => tracing::error!(error = %e, "ECHO's runtime did not start"),
                }
                let _ = done_tx.send(());
            })?;
        tasks.spawn(async move {
            let _ = done_rx.await;
        });
        let handle = EchoHandle {
            events,
            next: Arc::new(AtomicU64::new(1)),
            open: Arc::new(AtomicUsize::new(0)),
            max_connections: e.max_connections,
            max_frame: e.max_message_bytes,
            verifier: Arc::new(Mutex::new(echo::auth::Verifier::new(
                deps.identity.clone(),
                e.auth_window_secs,
            ))),
            did: deps.identity,
            peer_id,
            store,
            links: links::Links::default(),
        };
        if !e.peers.is_empty() {
            // Links sign their tokens with KUBE's own key (created before services start).
            let key = crate::identity::load(&crate::identity::path(&cx.data_dir))
                .map_err(|err| std::io::Error::other(err.to_string()))?;
            for peer in &e.peers {
                if peer.did == handle.did {
                    tracing::warn!(url = %peer.url, "echo.peers names this KUBE itself; not linked");
                    continue;
                }
                let target = links::Target::new(peer)
                    .map_err(|err| std::io::Error::other(err.to_string()))?;
                tasks.spawn(links::keep(
                    handle.clone(),
                    key.clone(),
                    target,
                    link_metrics.clone(),
                    links_cancel.clone(),
                ));
            }
        }
        Ok(Started {
            handle: Some(handle),
            running: Box::new(tasks),
        })
    }
}

/// A batch whose writes are being made durable on a blocking thread, with what waits for
/// them.
struct Flight {
    handle: tokio::task::JoinHandle<Result<(), echo::store::StoreError>>,
    /// Its sends and closes, in order: they go once its writes are durable.
    sends: Vec<Action>,
    /// The documents it writes: kept in memory until the writes land.
    docs: HashSet<String>,
    /// When its oldest frame arrived (for `kube_echo_sync_lag_seconds`).
    oldest: Option<Instant>,
}

/// What batches handled while a flight is out produced: their writes go when it lands
/// (writes are made durable in order, one flight at a time), their sends after that.
#[derive(Default)]
struct Waiting {
    writes: Vec<Write>,
    sends: Vec<Action>,
    docs: HashSet<String>,
    oldest: Option<Instant>,
    events: usize,
}

impl Waiting {
    fn add(&mut self, actions: Vec<Action>, oldest: Option<Instant>, events: usize) {
        for a in actions {
            match a {
                Action::Store(w) => {
                    self.docs.insert(written_doc(&w).to_owned());
                    self.writes.push(w);
                }
                other => self.sends.push(other),
            }
        }
        self.oldest = match (self.oldest, oldest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.events += events;
    }

    fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.sends.is_empty()
    }
}

/// Documents being read from disk off ECHO's thread (reading and loading a large document
/// is the slow part of its first use), and the frames that wait for them. Frames of one
/// document are handled in the order they came; frames of other documents, and other
/// peers, go on meanwhile.
#[derive(Default)]
struct Reads {
    /// Frames waiting for a document, by documentId, in arrival order.
    held: HashMap<String, Vec<(ConnId, Vec<u8>, Instant)>>,
    /// Documents to read once a reader is free (each has frames in `held`).
    queue: std::collections::VecDeque<(String, String)>,
    running: tokio::task::JoinSet<echo::repo::Preload>,
    ids: HashMap<tokio::task::Id, String>,
    /// Frames (and their bytes) each connection has held; one that closes meanwhile
    /// closes once they are handled (what a peer sent before it left is kept, as without a
    /// read).
    per_conn: HashMap<ConnId, (usize, usize)>,
    closing: HashSet<ConnId>,
    bytes: usize,
}

/// What [`Reads::hold`] did with a frame.
enum Held {
    Yes,
    /// Not held: handle it now.
    No(Vec<u8>),
    /// The connection holds too much already.
    Over,
}

/// Bytes of frames one connection may have held beyond one message of the largest size.
const PER_CONN_SLACK: usize = 1 << 20;

impl Reads {
    /// Holds `bytes` if its document is being read, or needs to be; gives it back if not.
    /// Every frame naming a document being read waits (a `doc-unavailable` or ephemeral
    /// message too, so nothing overtakes an earlier sync); a frame over `max_frame` is
    /// never held (it is refused at once); a connection that would hold more than one such
    /// frame and [`PER_CONN_SLACK`] is `Over` (the driver closes it).
    fn hold(
        &mut self,
        echo: &Echo,
        store: &Arc<FileStore>,
        conn: ConnId,
        bytes: Vec<u8>,
        at: Instant,
        max_frame: usize,
    ) -> Held {
        if bytes.len() > max_frame {
            return Held::No(bytes);
        }
        // One light look at the frame (its type and document), not a second decode.
        let Some(head) = echo::wire::head(&bytes) else {
            return Held::No(bytes);
        };
        let read = if self.held.contains_key(&head.doc) {
            None
        } else if head.sync
            && let Some(space) = echo.wants(conn, &head.doc, bytes.len())
        {
            Some(space)
        } else {
            return Held::No(bytes);
        };
        let held_here = self.per_conn.get(&conn).map_or(0, |(_, b)| *b);
        if held_here + bytes.len() > max_frame.saturating_add(PER_CONN_SLACK) {
            return Held::Over;
        }
        let doc = head.doc;
        if let Some(space) = read {
            self.held.insert(doc.clone(), Vec::new());
            self.queue.push_back((space, doc.clone()));
            self.start(store);
        }
        self.bytes += bytes.len();
        let entry = self.per_conn.entry(conn).or_default();
        entry.0 += 1;
        entry.1 += bytes.len();
        if let Some(frames) = self.held.get_mut(&doc) {
            frames.push((conn, bytes, at));
        }
        Held::Yes
    }

    /// Starts reads while readers are free.
    fn start(&mut self, store: &Arc<FileStore>) {
        while self.running.len() < READERS {
            let Some((space, id)) = self.queue.pop_front() else {
                break;
            };
            let st = store.clone();
            let doc = id.clone();
            let h = self
                .running
                .spawn_blocking(move || echo::repo::preload(&*st, space, doc));
            self.ids.insert(h.id(), id);
        }
    }

    /// The frames that waited for `id`, now to be handled; the connection of each.
    fn release(&mut self, id: &str) -> Vec<(ConnId, Vec<u8>, Instant)> {
        let frames = self.held.remove(id).unwrap_or_default();
        for (_, b, _) in &frames {
            self.bytes -= b.len();
        }
        frames
    }

    /// One of `conn`'s held frames (of `len` bytes) has been handled: whether it closed
    /// meanwhile and this was its last.
    fn handled(&mut self, conn: ConnId, len: usize) -> bool {
        let Some((n, bytes)) = self.per_conn.get_mut(&conn) else {
            return false;
        };
        *n -= 1;
        *bytes = bytes.saturating_sub(len);
        if *n > 0 {
            return false;
        }
        self.per_conn.remove(&conn);
        self.closing.remove(&conn)
    }

    /// Whether `conn` has frames held (so its close waits for them).
    fn holds(&self, conn: ConnId) -> bool {
        self.per_conn.contains_key(&conn)
    }
}

/// Handles one frame of a peer. A panic in Automerge on a peer's bytes costs that peer its
/// connection, not ECHO.
fn receive(
    echo: &mut Echo,
    conns: &mut HashMap<ConnId, Outbox>,
    conn: ConnId,
    bytes: &[u8],
    now_ms: u64,
) -> Vec<Action> {
    let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        echo.receive(conn, bytes, now_ms)
    }));
    match step {
        Ok(a) => a,
        Err(_) => {
            tracing::error!(
                conn,
                "ECHO panicked on a peer's message; closing that connection"
            );
            *echo.stats.refused.entry("invalid").or_default() += 1;
            // The document it touched may be half-changed in memory: out of service (its
            // files are as acknowledged) until a restart.
            if let Ok(echo::wire::Incoming::Sync { doc, .. }) = echo::wire::decode(bytes) {
                echo.quarantine(&doc, "ECHO panicked while applying a peer's changes; restart KUBE to load it from disk again");
            }
            if let Some(outbox) = conns.remove(&conn) {
                outbox.close();
            }
            echo.disconnect(conn);
            Vec::new()
        }
    }
}

fn written_doc(w: &Write) -> &str {
    match w {
        Write::NewSpace { root, .. } => root,
        Write::Append { doc, .. } | Write::Snapshot { doc, .. } => doc,
    }
}

enum Wake {
    Stop,
    Landed(Result<(), String>),
    /// A document read off ECHO's thread (or the id of one whose read failed).
    Read(Result<Box<echo::repo::Preload>, String>),
    Tick,
    Event(Option<Event>),
}

/// The peer's task: batches of events, made durable, then answered. While one batch's
/// writes are being made durable, the next batches are handled (their writes wait for it,
/// and their sends for their writes): peers of other documents are not held up by a slow
/// fsync more than their own durability needs.
async fn run(
    mut echo: Echo,
    store: Arc<FileStore>,
    mut events: mpsc::Receiver<Event>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut conns: HashMap<ConnId, Outbox> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut published = echo::repo::Stats::default();
    let mut failed = false;
    let mut flight: Option<Flight> = None;
    let mut waiting = Waiting::default();
    let mut reads = Reads::default();
    update_gauges(&echo, &metrics);
    let mut indexed_at = Instant::now();
    loop {
        let wake = tokio::select! {
            _ = cancel.cancelled() => Wake::Stop,
            r = async {
                match flight.as_mut() {
                    Some(f) => (&mut f.handle).await,
                    None => std::future::pending().await,
                }
            }, if flight.is_some() => {
                Wake::Landed(match r {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                })
            }
            Some(r) = reads.running.join_next_with_id(), if !reads.running.is_empty() => {
                Wake::Read(match r {
                    Ok((id, p)) => {
                        reads.ids.remove(&id);
                        Ok(Box::new(p))
                    }
                    Err(e) => Err(reads.ids.remove(&e.id()).unwrap_or_default()),
                })
            }
            _ = tick.tick() => Wake::Tick,
            // While a flight is out, at most a batch's worth of events waits behind it.
            e = events.recv(), if waiting.events < BATCH && reads.bytes < HELD_BYTES => Wake::Event(e),
        };
        let mut batch = Vec::new();
        let mut released = Vec::new();
        match wake {
            Wake::Stop => {
                for outbox in conns.values() {
                    outbox.close();
                }
                // Nothing more is acknowledged; what was handled is still made durable, so
                // the indexes written now match the disk.
                let mut landed = true;
                if let Some(f) = flight.take() {
                    landed = matches!(f.handle.await, Ok(Ok(())));
                }
                if landed && !failed && !waiting.writes.is_empty() {
                    let writes = std::mem::take(&mut waiting.writes);
                    let st = store.clone();
                    landed = matches!(
                        tokio::task::spawn_blocking(move || st.apply(&writes)).await,
                        Ok(Ok(()))
                    );
                }
                if landed && !failed {
                    write_indexes(&mut echo, &store);
                }
                // KUBE is stopping, and everything acknowledged is on disk. Freeing every
                // document one allocation at a time cost 2 s of a stop at 100,000 documents
                // (bench/echo/scale); the memory goes back with the process instead.
                std::mem::forget(echo);
                return;
            }
            Wake::Landed(result) => {
                let Some(f) = flight.take() else {
                    continue;
                };
                if let Err(err) = result {
                    // Nothing of this batch (or of those waiting) may be acknowledged, and
                    // the replica in memory is now ahead of the disk: stop serving rather
                    // than risk acknowledging it.
                    tracing::error!(error = %err, "ECHO cannot write to its store; closing every connection and refusing new ones until a restart");
                    failed = true;
                    waiting = Waiting::default();
                    reads = Reads::default();
                    for outbox in conns.values() {
                        outbox.close();
                    }
                    conns.clear();
                    continue;
                }
                perform(f.sends, &mut conns, &mut echo, &mut reads);
                if let Some(at) = f.oldest {
                    metrics.echo_sync_lag.observe(at.elapsed().as_secs_f64());
                }
                let next = std::mem::take(&mut waiting);
                if !next.writes.is_empty() {
                    flight = Some(take_off(&store, next));
                } else {
                    perform(next.sends, &mut conns, &mut echo, &mut reads);
                }
            }
            Wake::Read(r) => {
                let id = match r {
                    Ok(p) => {
                        let id = p.id.clone();
                        echo.preloaded(*p);
                        id
                    }
                    Err(id) => id,
                };
                // Handled below; when the read was not taken (or failed), they read the
                // document as any frame does.
                released = reads.release(&id);
                reads.start(&store);
            }
            Wake::Tick => {}
            Wake::Event(None) => return,
            Wake::Event(Some(e)) => batch.push(e),
        }
        while !batch.is_empty() && batch.len() < BATCH {
            match events.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        let now_ms = echo::unix_now_ms();
        let mut actions = echo.tick(now_ms);
        let mut oldest: Option<Instant> = None;
        let handled = batch.len();
        for (conn, bytes, at) in released {
            oldest = Some(oldest.map_or(at, |o| o.min(at)));
            actions.extend(receive(&mut echo, &mut conns, conn, &bytes, now_ms));
            if reads.handled(conn, bytes.len()) {
                conns.remove(&conn);
                echo.disconnect(conn);
            }
        }
        for e in batch {
            match e {
                Event::Connect { conn, peer, outbox } => {
                    if failed {
                        outbox.close();
                        continue;
                    }
                    conns.insert(conn, outbox);
                    echo.connect(conn, peer, now_ms);
                }
                Event::Frame { conn, bytes, at } => {
                    // Frames whose document is being read wait for it, off this thread.
                    if failed {
                        continue;
                    }
                    let max_frame = echo.max_message_bytes();
                    let bytes = match reads.hold(&echo, &store, conn, bytes, at, max_frame) {
                        Held::Yes => continue,
                        Held::No(bytes) => bytes,
                        Held::Over => {
                            // Sending on while its documents load: no more is taken from it.
                            tracing::info!(
                                conn,
                                "ECHO: a peer's frames waiting for reads are over the limit; closing it"
                            );
                            *echo.stats.refused.entry("too-large").or_default() += 1;
                            close_when_read(conn, &mut conns, &mut echo, &mut reads);
                            continue;
                        }
                    };
                    oldest = Some(oldest.map_or(at, |o| o.min(at)));
                    actions.extend(receive(&mut echo, &mut conns, conn, &bytes, now_ms));
                }
                Event::Link { conn, peer, outbox } => {
                    if failed {
                        outbox.close();
                        continue;
                    }
                    conns.insert(conn, outbox);
                    echo.connect_kube(conn, peer, now_ms);
                }
                Event::Closed { conn } => {
                    if reads.holds(conn) {
                        reads.closing.insert(conn);
                        continue;
                    }
                    conns.remove(&conn);
                    echo.disconnect(conn);
                }
                Event::Reload { limits, policy } => {
                    echo.set_limits(limits);
                    actions.extend(echo.set_policy(policy, now_ms));
                }
                Event::Op(op) => actions.extend(operate(&mut echo, op, &store, now_ms)),
            }
        }
        if failed {
            // Nothing more is written or acknowledged until a restart.
            actions.clear();
        }
        if !actions.is_empty() {
            waiting.add(actions, oldest, handled);
            if flight.is_none() {
                let next = std::mem::take(&mut waiting);
                if next.writes.is_empty() {
                    // Nothing to wait for: no write is out, and none comes with these.
                    perform(next.sends, &mut conns, &mut echo, &mut reads);
                } else {
                    flight = Some(take_off(&store, next));
                }
            }
        }
        // Documents whose writes are not durable yet stay in memory; the rest read back
        // from disk with every acknowledged change.
        let keep = |id: &str| {
            waiting.docs.contains(id) || flight.as_ref().is_some_and(|f| f.docs.contains(id))
        };
        echo.evict(keep);
        for p in echo.take_problems() {
            tracing::error!(problem = %p, "an ECHO document on disk does not load; it is left as it is");
        }
        // Only while memory matches the disk (nothing out or waiting, no failed write).
        if !failed && flight.is_none() && waiting.is_empty() && indexed_at.elapsed() > INDEX_EVERY {
            indexed_at = Instant::now();
            write_indexes(&mut echo, &store);
        }
        publish(&echo, &mut published, &metrics);
        update_gauges(&echo, &metrics);
    }
}

/// Starts making `batch`'s writes durable.
fn take_off(store: &Arc<FileStore>, batch: Waiting) -> Flight {
    let st = store.clone();
    let writes = batch.writes;
    Flight {
        handle: tokio::task::spawn_blocking(move || st.apply(&writes)),
        sends: batch.sends,
        docs: batch.docs,
        oldest: batch.oldest,
    }
}

/// Sends and closes, in order.
/// Closes `conn`'s socket now; ECHO forgets it once its held frames are handled (what it
/// sent before is kept, as for a peer that leaves).
fn close_when_read(
    conn: ConnId,
    conns: &mut HashMap<ConnId, Outbox>,
    echo: &mut Echo,
    reads: &mut Reads,
) {
    if let Some(outbox) = conns.remove(&conn) {
        outbox.close();
    }
    if reads.holds(conn) {
        reads.closing.insert(conn);
    } else {
        echo.disconnect(conn);
    }
}

fn perform(
    actions: Vec<Action>,
    conns: &mut HashMap<ConnId, Outbox>,
    echo: &mut Echo,
    reads: &mut Reads,
) {
    for a in actions {
        match a {
            Action::Send { conn, bytes } => {
                if let Some(outbox) = conns.get(&conn)
                    && !outbox.push(bytes)
                {
                    // A peer that does not read (or is gone) is dropped, not buffered
                    // without end; frames it sent that wait for a read are still handled.
                    close_when_read(conn, conns, echo, reads);
                }
            }
            Action::Close { conn } => {
                if let Some(outbox) = conns.remove(&conn) {
                    outbox.close();
                }
            }
            Action::Store(_) => {}
        }
    }
}

/// Writes the indexes of the spaces changed since the last time (a cache: a failure is
/// logged, and the next start rebuilds what is missing).
fn write_indexes(echo: &mut Echo, store: &FileStore) {
    for index in echo.take_indexes() {
        if let Err(e) = store.write_index(&index) {
            tracing::warn!(error = %e, "writing an ECHO space index");
        }
    }
}

fn update_gauges(echo: &Echo, metrics: &Metrics) {
    metrics.echo_spaces.set(echo.space_count() as i64);
    metrics.echo_documents.set(echo.doc_count() as i64);
    metrics.echo_peers.set(echo.peers() as i64);
    let (held, bytes) = echo.cache();
    metrics.echo_cache_documents.set(held as i64);
    metrics.echo_cache_bytes.set(bytes as i64);
    metrics
        .echo_quarantined
        .set(echo.quarantined_count() as i64);
    metrics.echo_storage_bytes.set(echo.bytes() as i64);
}

/// Moves the peer's counters into the metrics (as increments since the last time).
fn publish(echo: &Echo, last: &mut echo::repo::Stats, metrics: &Metrics) {
    let s = &echo.stats;
    let m = &metrics.echo_messages;
    m.with_label_values(&["in"])
        .inc_by(s.messages_in - last.messages_in);
    m.with_label_values(&["out"])
        .inc_by(s.messages_out - last.messages_out);
    let b = &metrics.echo_bytes;
    b.with_label_values(&["in"])
        .inc_by(s.bytes_in - last.bytes_in);
    b.with_label_values(&["out"])
        .inc_by(s.bytes_out - last.bytes_out);
    metrics.echo_loads.inc_by(s.loads - last.loads);
    metrics.echo_evictions.inc_by(s.evictions - last.evictions);
    for (reason, n) in &s.refused {
        let before = last.refused.get(reason).copied().unwrap_or(0);
        metrics
            .echo_refused
            .with_label_values(&[reason])
            .inc_by(n - before);
    }
    *last = s.clone();
}

fn operate(echo: &mut Echo, op: Op, store: &Arc<FileStore>, now_ms: u64) -> Vec<Action> {
    match op {
        Op::List(reply) => {
            let _ = reply.send(echo.list());
        }
        Op::Show(space, reply) => {
            let _ = reply.send(echo.show(&space));
        }
        Op::Query {
            space,
            kind,
            wheres,
            reply,
        } => {
            let _ = reply.send(echo.query(&space, &kind, &wheres));
        }
        Op::Export(space, reply) => {
            let _ = reply.send(echo.export(&space));
        }
        Op::Import(export, reply) => {
            let space = export.space.clone();
            match echo.import(*export, now_ms) {
                Ok(writes) => {
                    // Written here, before the answer, so an import that reports success
                    // is on disk; one that fails leaves ECHO and its files as they were.
                    // (This is ECHO's own thread: blocking here holds up only ECHO.)
                    let result = store.apply(&writes);
                    if let Err(e) = &result {
                        tracing::error!(error = %e, %space, "import failed while writing; undone");
                        echo.forget_import(&space);
                        if let Err(e) = store.remove_written(&writes) {
                            tracing::error!(error = %e, %space, "removing a failed import's files");
                        }
                    }
                    let _ = reply.send(result.map(|()| space).map_err(|e| e.to_string()));
                }
                Err(e) => {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
        Op::Status(reply) => {
            let _ = reply.send(EchoStatus {
                spaces: echo.space_count(),
                documents: echo.doc_count(),
                peers: echo.peers(),
                storage_bytes: echo.bytes(),
                cached_documents: echo.cache().0,
                cache_bytes: echo.cache().1,
                quarantined: echo
                    .quarantined()
                    .into_iter()
                    .map(|(space, document, why)| Quarantined {
                        space,
                        document,
                        why,
                    })
                    .collect(),
                links: Vec::new(),
            });
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_slots_never_exceed_the_cap() {
        let open = Arc::new(AtomicUsize::new(0));
        let slots: Vec<Slot> = (0..3).filter_map(|_| Slot::take(&open, 3)).collect();
        assert_eq!(slots.len(), 3);
        assert!(
            Slot::take(&open, 3).is_none(),
            "taken before counted, so never over"
        );
        drop(slots);
        assert_eq!(open.load(Ordering::Relaxed), 0);
        // Many takers at once: never more than the cap held together.
        let held: Vec<Slot> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        (0..100)
                            .filter_map(|_| Slot::take(&open, 50))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(held.len(), 50);
    }

    #[test]
    fn an_outbox_is_bounded_in_bytes() {
        let (outbox, mut rx) = Outbox::new(1000);
        assert!(
            outbox.push(vec![0; 5000]),
            "one large frame goes when nothing waits"
        );
        assert!(!outbox.push(vec![0; 10]), "but nothing more while it waits");
        let Some(Outgoing::Binary(b)) = rx.try_recv().ok() else {
            panic!("queued")
        };
        Outbox::sent(&outbox.queued, b.len());
        for _ in 0..10 {
            assert!(outbox.push(vec![0; 100]));
        }
        assert!(!outbox.push(vec![0; 100]), "1000 bytes wait: the cap");
    }
}
