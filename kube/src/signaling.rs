//! The `signal` service's driver: one task owns the signaling `Hub` (the pure core in the
//! `signal` crate) and is fed a closed set of events by the WebSocket connections, which
//! it answers through per-connection queues. Liveness is WebSocket pings.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use config::Problem;
use futures_util::{SinkExt, StreamExt};
use signal::protocol::ServerMsg;
use signal::{ConnId, Hub, Limits, Out};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::service::{Context, Service, StartError, Started, Tasks};

/// What the hub task hears.
enum Event {
    Connect {
        conn: ConnId,
        origin: String,
        tx: mpsc::Sender<Outgoing>,
    },
    Text {
        conn: ConnId,
        text: String,
    },
    Closed {
        conn: ConnId,
    },
    /// A reload: new limits and ICE servers.
    Reload {
        limits: Limits,
        ice: Option<signal::hub::Ice>,
    },
}

/// What a connection task is told to do.
enum Outgoing {
    Text(String),
    Close,
}

/// What the HTTPS listener needs to hand WebSocket upgrades to signaling.
#[derive(Clone)]
pub struct SignalHandle {
    events: mpsc::Sender<Event>,
    next: Arc<AtomicU64>,
    max_frame: usize,
    ping_interval: Duration,
    ping_timeout: Duration,
    domain: String,
}

impl SignalHandle {
    /// Applies a changed `signal` section (message, rate, swarm and connection limits) and
    /// the TURN secret and credential lifetime: open connections stay. The WebSocket frame
    /// cap and ping timing of open connections, and `enabled`, wait for a restart.
    pub async fn reload(&self, s: &config::Signal, turn: Option<&crate::turn::TurnHandle>) {
        let event = Event::Reload {
            limits: limits(s),
            ice: turn.map(|t| ice(t, &self.domain)),
        };
        let _ = self.events.send(event).await;
    }

    /// Accepts a WebSocket upgrade on `/.well-known/kube/signal`.
    pub fn upgrade(&self, ws: WebSocketUpgrade, origin: String) -> Response {
        let this = self.clone();
        // Far larger than any refused-with-a-reply message: the socket just closes.
        // Signaling frames are small: small buffers keep ten thousand idle peers cheap
        // (tungstenite's 128 KiB default read buffer would cost that much per peer).
        ws.max_message_size(self.max_frame * 4)
            .max_frame_size(self.max_frame * 4)
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0)
            .on_upgrade(move |socket| async move { this.connection(socket, origin).await })
    }

    async fn connection(self, socket: WebSocket, origin: String) {
        let conn = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel(256);
        if self
            .events
            .send(Event::Connect { conn, origin, tx })
            .await
            .is_err()
        {
            return;
        }
        let (mut sink, mut stream) = socket.split();
        let mut ping = tokio::time::interval(self.ping_interval);
        ping.tick().await;
        let mut last_seen = Instant::now();
        loop {
            tokio::select! {
                incoming = stream.next() => match incoming {
                    Some(Ok(Message::Text(text))) => {
                        last_seen = Instant::now();
                        if self.events.send(Event::Text { conn, text: text.to_string() }).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        last_seen = Instant::now();
                        // Binary frames are not part of the protocol: the hub refuses them.
                        if self.events.send(Event::Text { conn, text: String::from("<binary frame>") }).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(Message::Pong(_) | Message::Ping(_))) => last_seen = Instant::now(),
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                },
                out = rx.recv() => match out {
                    Some(Outgoing::Text(t)) => {
                        if sink.send(Message::Text(t.into())).await.is_err() {
                            break;
                        }
                    }
                    Some(Outgoing::Close) | None => {
                        let _ = sink.send(Message::Close(None)).await;
                        break;
                    }
                },
                _ = ping.tick() => {
                    if last_seen.elapsed() > self.ping_interval + self.ping_timeout {
                        tracing::debug!(conn, "signaling peer stopped answering pings");
                        break;
                    }
                    if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = self.events.send(Event::Closed { conn }).await;
    }
}

pub struct SignalService;

pub struct SignalDeps {
    pub metrics: Arc<Metrics>,
    /// KUBE's TURN server, when it runs: `ice-servers` hands out its URLs and credentials.
    pub turn: Option<crate::turn::TurnHandle>,
    pub domain: String,
}

impl Service for SignalService {
    const NAME: &'static str = "signal";
    type Section = config::Signal;
    type Deps = SignalDeps;
    type Handle = Option<SignalHandle>;

    fn check(s: &config::Signal, _cx: &Context) -> Vec<Problem> {
        let mut p = Vec::new();
        for (key, v) in [
            ("signal.max_message_bytes", s.max_message_bytes),
            ("signal.max_swarms_per_peer", s.max_swarms_per_peer),
            ("signal.max_peers_per_swarm", s.max_peers_per_swarm),
            ("signal.max_connections", s.max_connections),
        ] {
            if v == 0 {
                p.push(Problem::new(key, "must be at least 1"));
            }
        }
        for (key, v) in [
            (
                "signal.messages_per_second",
                u64::from(s.messages_per_second),
            ),
            ("signal.auth_timeout_secs", s.auth_timeout_secs),
            ("signal.ping_interval_secs", s.ping_interval_secs),
            ("signal.ping_timeout_secs", s.ping_timeout_secs),
            ("signal.strikes", u64::from(s.strikes)),
        ] {
            if v == 0 {
                p.push(Problem::new(key, "must be at least 1"));
            }
        }
        p
    }

    async fn start(
        s: config::Signal,
        _cx: &Context,
        deps: SignalDeps,
    ) -> Result<Started<Option<SignalHandle>>, StartError> {
        if !s.enabled {
            return Ok(Started {
                handle: None,
                running: Box::new(crate::service::Idle("signal")),
            });
        }
        let ice = deps.turn.as_ref().map(|t| ice(t, &deps.domain));
        let hub = Hub::new(limits(&s), ice);
        let (events, rx) = mpsc::channel(4096);
        let cancel = CancellationToken::new();
        let mut tasks = Tasks::new("signal", cancel.clone());
        tasks.spawn(run_hub(hub, rx, deps.metrics, cancel));
        Ok(Started {
            handle: Some(SignalHandle {
                events,
                next: Arc::new(AtomicU64::new(1)),
                max_frame: s.max_message_bytes,
                ping_interval: Duration::from_secs(s.ping_interval_secs),
                ping_timeout: Duration::from_secs(s.ping_timeout_secs),
                domain: deps.domain,
            }),
            running: Box::new(tasks),
        })
    }
}

fn limits(s: &config::Signal) -> Limits {
    Limits {
        max_message_bytes: s.max_message_bytes,
        messages_per_second: s.messages_per_second,
        max_swarms_per_peer: s.max_swarms_per_peer,
        max_peers_per_swarm: s.max_peers_per_swarm,
        max_connections: s.max_connections,
        auth_timeout: Duration::from_secs(s.auth_timeout_secs),
        strikes: s.strikes,
    }
}

/// ICE servers from KUBE's TURN: clients reach it by the domain's name (loopback on a
/// local domain) over UDP and TCP on `turn.listen`, over TLS on `turn.tls_listen`, and over
/// TLS on the HTTPS port, so a browser whose network lets nothing but 443 out still relays;
/// then the other KUBEs' servers of `turn.cluster`.
fn ice(t: &crate::turn::TurnHandle, domain: &str) -> signal::hub::Ice {
    let host = if config::is_local_domain(domain) && t.addr.ip().is_loopback() {
        t.addr.ip().to_string()
    } else {
        domain.to_owned()
    };
    let at = format!("{host}:{}", t.addr.port());
    let mut turn = vec![
        format!("turn:{at}?transport=udp"),
        format!("turn:{at}?transport=tcp"),
    ];
    // TLS needs the name the certificate carries, never an address.
    if let Some(tls) = t.tls_addr {
        turn.push(format!("turns:{domain}:{}?transport=tcp", tls.port()));
    }
    if let Some(port) = t.https_port() {
        turn.push(format!("turns:{domain}:{port}?transport=tcp"));
    }
    let mut stun = vec![format!("stun:{at}")];
    // The other KUBEs of a cluster (`turn.cluster`): the same credentials work there.
    for url in t.cluster() {
        if url.starts_with("stun:") {
            stun.push(url);
        } else {
            turn.push(url);
        }
    }
    signal::hub::Ice {
        stun,
        turn,
        secret: t.secret(),
        ttl_secs: t.ttl_secs(),
    }
}

/// The hub's task: every event in order, outputs to the connections' queues.
async fn run_hub(
    mut hub: Hub,
    mut events: mpsc::Receiver<Event>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut conns: HashMap<ConnId, mpsc::Sender<Outgoing>> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        let now = Instant::now();
        let outs = tokio::select! {
            _ = cancel.cancelled() => {
                for tx in conns.values() {
                    let _ = tx.try_send(Outgoing::Close);
                }
                return;
            }
            _ = tick.tick() => hub.tick(now),
            e = events.recv() => match e {
                None => return,
                Some(Event::Connect { conn, origin, tx }) => {
                    conns.insert(conn, tx);
                    hub.connect(conn, rand::random(), &origin, now)
                }
                Some(Event::Text { conn, text }) => {
                    metrics.signal_messages.with_label_values(&["in", kind_in(&text)]).inc();
                    let unix = crate::service::unix_now();
                    hub.receive(conn, &text, now, unix)
                }
                Some(Event::Closed { conn }) => {
                    conns.remove(&conn);
                    hub.disconnect(conn)
                }
                Some(Event::Reload { limits, ice }) => {
                    hub.set_limits(limits);
                    hub.set_ice(ice);
                    Vec::new()
                }
            },
        };
        for out in outs {
            match out {
                Out::Send(conn, msg) => {
                    metrics
                        .signal_messages
                        .with_label_values(&["out", kind_out(&msg)])
                        .inc();
                    if let ServerMsg::Error { code, .. } = &msg {
                        metrics
                            .signal_errors
                            .with_label_values(&[error_label(*code)])
                            .inc();
                    }
                    if let Some(tx) = conns.get(&conn)
                        && tx
                            .try_send(Outgoing::Text(signal::protocol::encode(&msg)))
                            .is_err()
                    {
                        // A client that does not read its messages is dropped, not buffered.
                        if let Some(tx) = conns.remove(&conn) {
                            let _ = tx.try_send(Outgoing::Close);
                        }
                    }
                }
                Out::Close(conn, reason) => {
                    tracing::debug!(conn, reason, "closing signaling connection");
                    if let Some(tx) = conns.remove(&conn) {
                        let _ = tx.try_send(Outgoing::Close);
                    }
                }
            }
        }
        let stats = hub.stats();
        metrics.signal_connections.set(stats.connections as i64);
        metrics.signal_peers.set(stats.peers as i64);
        metrics.signal_swarms.set(stats.swarms as i64);
    }
}

/// The `type` of an incoming message, for metrics (bounded to the protocol's types).
fn kind_in(text: &str) -> &'static str {
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<&'a str>,
    }
    match serde_json::from_str::<Kind>(text).ok().and_then(|k| k.kind) {
        Some("auth") => "auth",
        Some("join") => "join",
        Some("leave") => "leave",
        Some("signal") => "signal",
        Some("ice-servers") => "ice-servers",
        _ => "other",
    }
}

fn kind_out(m: &ServerMsg) -> &'static str {
    match m {
        ServerMsg::Challenge { .. } => "challenge",
        ServerMsg::Welcome { .. } => "welcome",
        ServerMsg::Peers { .. } => "peers",
        ServerMsg::PeerJoined { .. } => "peer-joined",
        ServerMsg::PeerLeft { .. } => "peer-left",
        ServerMsg::Signal { .. } => "signal",
        ServerMsg::IceServers { .. } => "ice-servers",
        ServerMsg::Error { .. } => "error",
    }
}

fn error_label(code: signal::protocol::ErrorCode) -> &'static str {
    use signal::protocol::ErrorCode as E;
    match code {
        E::BadMessage => "bad-message",
        E::BadVersion => "bad-version",
        E::TooLarge => "too-large",
        E::RateLimited => "rate-limited",
        E::Unauthenticated => "unauthenticated",
        E::AuthFailed => "auth-failed",
        E::AlreadyAuthenticated => "already-authenticated",
        E::BadSwarm => "bad-swarm",
        E::NotInSwarm => "not-in-swarm",
        E::UnknownPeer => "unknown-peer",
        E::SwarmLimit => "swarm-limit",
        E::SwarmFull => "swarm-full",
        E::NoIceServers => "no-ice-servers",
    }
}
