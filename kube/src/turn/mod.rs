//! The `turn` service: STUN/TURN over UDP and TCP on `turn.listen`, over TLS on
//! `turn.tls_listen`, and over TLS on the HTTPS port (the http service hands such streams
//! over through [`TurnHandle::serve_tls`]). The protocol and every rule of KUBE's (REST
//! credentials, the peer policy, quotas, bandwidth, lifetimes) live in the pure
//! [`server::Server`]; this module is its driver: sockets, relay sockets, timers, metrics.
//!
//! One `Server` behind a mutex serves every transport: a packet is handed in, the lock is
//! held for the state change only, and what it returns is sent without awaiting (a full
//! socket buffer drops a datagram, as a congested path would).

pub mod policy;
pub mod server;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use config::Problem;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use self::policy::PeerPolicy;
use self::server::{
    Action, AllocId, Client, Meter as _, Now, PortRequest, Server, Settings, Transport,
};
use crate::metrics::Metrics;
use crate::service::{Context, Running, Service, StartError, Started};

#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    #[error("cannot listen on {addr} (turn {what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("turn.secret: {0}")]
    Secret(#[from] crate::datadir::DataDirError),
}

/// Frames queued towards a stream client; when full, its relay socket waits (and the
/// kernel drops what the peers send meanwhile, as a congested path would).
const STREAM_QUEUE: usize = 1024;
/// Socket buffers of the listening UDP socket and of each relay socket: bursts of many
/// clients must not overflow the kernel's default (about 208 KiB). The kernel caps them at
/// `net.core.rmem_max`/`wmem_max` and only uses what is queued.
const LISTEN_BUFFER: usize = 4 << 20;
const RELAY_BUFFER: usize = 1 << 20;
/// The longest frame on a stream: a STUN header and the largest length it can name.
const MAX_FRAME: usize = 20 + 0xFFFF;
/// How long a new TCP or TLS connection has to finish its handshake and send a first
/// frame.
const FIRST_FRAME: Duration = Duration::from_secs(10);
/// How long a TCP or TLS client without an allocation may stay silent (with one: a minute
/// past the longest lifetime a Refresh grants).
const UNALLOCATED_IDLE: Duration = Duration::from_secs(30);
/// How long a port held back by EVEN-PORT's R bit waits for its Allocate (RFC 8656 §14.9
/// suggests about 30 s), and how many are held at once.
const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);
const MAX_RESERVED: usize = 256;

/// What signaling needs to hand out ICE servers, what a reload changes, and where the
/// http service hands TURN-over-TLS streams.
#[derive(Clone)]
pub struct TurnHandle {
    pub addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
    /// Whether TURN over TLS is offered on the HTTPS port.
    pub on_https: bool,
    /// The HTTPS port clients reach (0 until the http service is bound).
    https_port: Arc<std::sync::atomic::AtomicU16>,
    shared: Arc<Shared>,
    data_dir: std::path::PathBuf,
    /// The other KUBEs' STUN/TURN URLs (`turn.cluster`).
    cluster: Arc<std::sync::RwLock<Vec<String>>>,
}

impl TurnHandle {
    /// The other KUBEs' STUN/TURN URLs, handed out beside this KUBE's own.
    pub fn cluster(&self) -> Vec<String> {
        self.cluster
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The secret new credentials are signed with.
    pub fn secret(&self) -> Vec<u8> {
        self.shared.lock().settings().secret.to_vec()
    }

    /// The public HTTPS port, where TURN over TLS is offered too; None when it is not.
    pub fn https_port(&self) -> Option<u16> {
        let port = self.https_port.load(Ordering::Relaxed);
        (self.on_https && port != 0).then_some(port)
    }

    pub fn set_https_port(&self, port: u16) {
        self.https_port.store(port, Ordering::Relaxed);
    }

    pub fn ttl_secs(&self) -> u64 {
        self.shared.ttl_secs.load(Ordering::Relaxed)
    }

    /// Applies a changed `turn` section: secret, credential lifetime, limits and the
    /// lifetime cap. Live allocations keep working on the key they were made with.
    /// Addresses, realm, relay ports and peers need a restart. Returns whether anything
    /// changed.
    pub fn reload(&self, s: &config::Turn) -> Result<bool, TurnError> {
        let secret: Arc<[u8]> = if s.secret.is_empty() {
            secret_from(&self.data_dir)?.into()
        } else {
            s.secret.clone().into_bytes().into()
        };
        let cluster_changed = {
            let mut c = self.cluster.write().unwrap_or_else(|p| p.into_inner());
            let changed = *c != s.cluster;
            c.clone_from(&s.cluster);
            changed
        };
        let mut server = self.shared.lock();
        let old = server.settings().clone();
        let new = Settings {
            realm: old.realm.clone(),
            secret,
            max_allocations: s.max_allocations,
            max_per_user: s.max_allocations_per_user,
            bytes_per_sec: s.max_bytes_per_sec,
            max_lifetime: Duration::from_secs(s.max_lifetime_secs),
        };
        let changed = cluster_changed
            || *old.secret != *new.secret
            || old.max_allocations != new.max_allocations
            || old.max_per_user != new.max_per_user
            || old.bytes_per_sec != new.bytes_per_sec
            || old.max_lifetime != new.max_lifetime
            || self
                .shared
                .ttl_secs
                .swap(s.credential_ttl_secs, Ordering::Relaxed)
                != s.credential_ttl_secs;
        server.set_settings(new);
        Ok(changed)
    }

    /// Serves one TURN-over-TLS stream the http service accepted on the HTTPS port.
    pub async fn serve_tls<S>(&self, stream: S, peer: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Ok(_permit) = self.shared.connections.clone().try_acquire_owned() else {
            self.shared.meter.refused("connections");
            return;
        };
        serve_stream(self.shared.clone(), stream, peer, Transport::Tls).await;
    }
}

/// Relay sockets held back for a later Allocate, by reservation token, until when.
type Reserved = HashMap<u64, ((UdpSocket, SocketAddr), Instant)>;

/// Everything the driver's tasks share.
struct Shared {
    server: Mutex<Server<Arc<Relay>>>,
    udp: Arc<UdpSocket>,
    /// Writers of the stream clients, by connection.
    streams: Mutex<HashMap<u64, mpsc::Sender<Vec<u8>>>>,
    reserved: Mutex<Reserved>,
    next_conn: AtomicU64,
    connections: Arc<Semaphore>,
    relay_ip: IpAddr,
    /// The local address relay sockets bind (unspecified when `turn.listen` is).
    bind_ip: IpAddr,
    ports: (u16, u16),
    ttl_secs: AtomicU64,
    meter: Arc<Meter>,
    cancel: CancellationToken,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Server<Arc<Relay>>> {
        self.server.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands a packet from `client` to the server and carries out what it says; returns
    /// the answer for the client.
    fn on_client(self: &Arc<Self>, client: Client, packet: &[u8]) -> Option<Vec<u8>> {
        let now = now();
        let step = self.lock().on_client(client, packet, now);
        match step.action {
            Action::None => {}
            Action::Relay { io, peer, range } => {
                // Never awaited: a full socket buffer drops the datagram.
                if io.socket.try_send_to(&packet[range], peer).is_err() {
                    self.meter.dropped();
                }
            }
            Action::Release(io) => io.cancel.cancel(),
            Action::Bind { id, v6, port } => return self.bind(id, v6, port, packet, now),
        }
        step.reply
    }

    /// Binds allocation `id`'s relay socket from the port range (or takes the one held
    /// under a reservation token) and starts its task.
    fn bind(
        self: &Arc<Self>,
        id: AllocId,
        v6: bool,
        port: PortRequest,
        request: &[u8],
        now: Now,
    ) -> Option<Vec<u8>> {
        let (socket, token) = match port {
            PortRequest::Reserved(token) => {
                (self.reserved_lock().remove(&token).map(|(s, _)| s), None)
            }
            PortRequest::Any => (self.bind_relay(v6, false), None),
            PortRequest::Even { reserve: false } => (self.bind_relay(v6, true), None),
            PortRequest::Even { reserve: true } => match self.bind_pair(v6) {
                Some((socket, next)) => {
                    let token = rand::random::<u64>();
                    let mut reserved = self.reserved_lock();
                    // Bounded: a held port outlives no allocation by long, and no more are
                    // held than allocations may exist.
                    if reserved.len() < MAX_RESERVED {
                        reserved.insert(token, (next, now.at + RESERVATION_LIFETIME));
                        (Some(socket), Some(token))
                    } else {
                        (Some(socket), None)
                    }
                }
                None => (None, None),
            },
        };
        let bound = socket.map(|(socket, addr)| {
            let relay = Arc::new(Relay {
                socket: Arc::new(socket),
                cancel: self.cancel.child_token(),
            });
            (relay, addr)
        });
        let io = bound.as_ref().map(|(r, _)| r.clone());
        let reply = self.lock().allocated(id, request, bound, token, now);
        if let Some(relay) = io {
            if reply.is_some() {
                tokio::spawn(relay_task(self.clone(), id, relay));
            } else {
                relay.cancel.cancel();
            }
        }
        reply
    }

    fn reserved_lock(&self) -> std::sync::MutexGuard<'_, Reserved> {
        self.reserved.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The local address relay sockets bind in `v6`'s family.
    fn bind_ip(&self, v6: bool) -> Option<IpAddr> {
        match (v6, self.bind_ip) {
            (true, ip @ IpAddr::V6(_)) | (false, ip @ IpAddr::V4(_)) => Some(ip),
            _ => None,
        }
    }

    fn bind_port(&self, ip: IpAddr, port: u16) -> Option<(UdpSocket, SocketAddr)> {
        let socket = std::net::UdpSocket::bind(SocketAddr::new(ip, port)).ok()?;
        socket.set_nonblocking(true).ok()?;
        set_buffers(&socket, RELAY_BUFFER);
        let socket = UdpSocket::from_std(socket).ok()?;
        Some((socket, SocketAddr::new(self.relay_ip, port)))
    }

    /// A relay socket on a random free port of the range (an even one when `even`).
    fn bind_relay(&self, v6: bool, even: bool) -> Option<(UdpSocket, SocketAddr)> {
        let ip = self.bind_ip(v6)?;
        let (min, max) = self.ports;
        for _ in 0..20 {
            let mut port = rand::random_range(min..=max);
            if even && port % 2 == 1 {
                match port
                    .checked_add(1)
                    .filter(|p| *p <= max)
                    .or(port.checked_sub(1).filter(|p| *p >= min))
                {
                    Some(p) => port = p,
                    None => continue,
                }
            }
            if let Some(bound) = self.bind_port(ip, port) {
                return Some(bound);
            }
        }
        tracing::warn!(min, max, "turn: no free relay port");
        None
    }

    /// An even port and the one after it, both free.
    fn bind_pair(&self, v6: bool) -> Option<((UdpSocket, SocketAddr), (UdpSocket, SocketAddr))> {
        let ip = self.bind_ip(v6)?;
        let (min, max) = self.ports;
        for _ in 0..20 {
            let port = rand::random_range(min..=max.saturating_sub(1)) & !1;
            if port < min {
                continue;
            }
            if let Some(first) = self.bind_port(ip, port)
                && let Some(next) = self.bind_port(ip, port + 1)
            {
                return Some((first, next));
            }
        }
        tracing::warn!(min, max, "turn: no free pair of relay ports");
        None
    }

    /// Sends `packet` to `client`: over UDP at once (a full socket buffer drops it), over
    /// a stream through its bounded queue, waiting while that is full.
    async fn to_client(&self, client: Client, packet: Vec<u8>) {
        let sent = match client.transport {
            Transport::Udp => self.udp.try_send_to(&packet, client.addr).is_ok(),
            Transport::Tcp | Transport::Tls => {
                let tx = self
                    .streams
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&client.conn)
                    .cloned();
                match tx {
                    Some(tx) => tx.send(packet).await.is_ok(),
                    None => false,
                }
            }
        };
        if !sent {
            self.meter.dropped();
        }
    }
}

/// An allocation's relay socket, as the server holds it.
#[derive(Debug)]
pub struct Relay {
    socket: Arc<UdpSocket>,
    cancel: CancellationToken,
}

fn now() -> Now {
    Now {
        at: Instant::now(),
        unix: crate::service::unix_now(),
    }
}

/// The server's counts, exported as KUBE's metrics.
struct Meter {
    metrics: Arc<Metrics>,
    packets_in: IntCounter,
    packets_out: IntCounter,
}

impl Meter {
    fn new(metrics: Arc<Metrics>) -> Meter {
        Meter {
            packets_in: metrics.turn_packets.with_label_values(&["in"]),
            packets_out: metrics.turn_packets.with_label_values(&["out"]),
            metrics,
        }
    }
}

impl server::Meter for Meter {
    fn refused(&self, reason: &'static str) {
        self.metrics.turn_refused.with_label_values(&[reason]).inc();
    }
    fn relayed(&self, out: bool, bytes: usize) {
        if out {
            self.packets_out.inc();
        } else {
            self.packets_in.inc();
        }
        self.metrics.turn_relayed_bytes.inc_by(bytes as u64);
    }
    fn dropped(&self) {
        self.metrics.turn_dropped.inc();
    }
    fn allocations(&self, live: usize) {
        self.metrics
            .turn_allocations
            .set(i64::try_from(live).unwrap_or(i64::MAX));
    }
}

pub struct TurnService;

/// What the turn service needs from earlier ones.
pub struct TurnDeps {
    pub metrics: Arc<Metrics>,
    /// The certificates of TURN over TLS: the same resolver as HTTPS.
    pub tls: crate::tls::TlsHandle,
}

impl Service for TurnService {
    const NAME: &'static str = "turn";
    type Section = config::Turn;
    type Deps = TurnDeps;
    type Handle = Option<TurnHandle>;

    fn check(s: &config::Turn, _cx: &Context) -> Vec<Problem> {
        let mut p = Vec::new();
        for (i, cidr) in s.allow_peers.iter().enumerate() {
            if cidr.parse::<ipnet::IpNet>().is_err() {
                p.push(Problem::new(
                    format!("turn.allow_peers[{i}]"),
                    format!("{cidr:?} is not a CIDR (e.g. 127.0.0.0/8)"),
                ));
            }
        }
        if s.relay_port_min == 0 || s.relay_port_min > s.relay_port_max {
            p.push(Problem::new(
                "turn.relay_port_min",
                "must be at least 1 and not above turn.relay_port_max",
            ));
        }
        for (key, v) in [
            ("turn.max_allocations", u64::from(s.max_allocations)),
            (
                "turn.max_allocations_per_user",
                u64::from(s.max_allocations_per_user),
            ),
            ("turn.max_bytes_per_sec", s.max_bytes_per_sec),
            ("turn.credential_ttl_secs", s.credential_ttl_secs),
            ("turn.max_connections", u64::from(s.max_connections)),
        ] {
            if v == 0 {
                p.push(Problem::new(key, "must be at least 1"));
            }
        }
        if !(600..=u64::from(u32::MAX)).contains(&s.max_lifetime_secs) {
            p.push(Problem::new(
                "turn.max_lifetime_secs",
                "must be at least 600 (the default lifetime of RFC 8656)",
            ));
        }
        if let (Some(tls), true) = (s.tls_listen, s.enabled)
            && tls == s.listen
            && tls.port() != 0
        {
            p.push(Problem::new(
                "turn.tls_listen",
                "must differ from turn.listen (TCP is served there)",
            ));
        }
        if !s.cluster.is_empty() && s.secret.is_empty() {
            p.push(Problem::new(
                "turn.secret",
                "must be set (the same on every KUBE) when turn.cluster lists other KUBEs: their TURN servers check the credentials this one hands out",
            ));
        }
        for (i, url) in s.cluster.iter().enumerate() {
            let scheme_ok = ["turn:", "turns:", "stun:"]
                .iter()
                .any(|p| url.strip_prefix(p).is_some_and(|rest| !rest.is_empty()));
            if !scheme_ok || url.chars().any(char::is_whitespace) {
                p.push(Problem::new(
                    format!("turn.cluster[{i}]"),
                    format!("{url:?} is not a turn:, turns: or stun: URL"),
                ));
            }
        }
        p
    }

    async fn start(
        s: config::Turn,
        cx: &Context,
        deps: TurnDeps,
    ) -> Result<Started<Option<TurnHandle>>, StartError> {
        if !s.enabled {
            return Ok(Started {
                handle: None,
                running: Box::new(crate::service::Idle("turn")),
            });
        }
        let secret = if s.secret.is_empty() {
            secret_from(&cx.data_dir)?
        } else {
            s.secret.clone().into_bytes()
        };
        let realm = if s.realm.is_empty() {
            cx.domain.clone()
        } else {
            s.realm.clone()
        };
        let bind = |what, addr| move |source| TurnError::Bind { what, addr, source };
        let (udp, tcp) = crate::service::bind_udp_tcp(s.listen)
            .await
            .map_err(|(what, addr, source)| TurnError::Bind { what, addr, source })?;
        set_buffers(&udp, LISTEN_BUFFER);
        let addr = udp.local_addr()?;
        let tls = match s.tls_listen {
            Some(at) => Some(TcpListener::bind(at).await.map_err(bind("tls", at))?),
            None => None,
        };
        let tls_addr = tls.as_ref().map(|l| l.local_addr()).transpose()?;
        let relay_ip = s.relay_address.unwrap_or_else(|| {
            if addr.ip().is_unspecified() {
                default_route_ip().unwrap_or(IpAddr::from([127, 0, 0, 1]))
            } else {
                addr.ip()
            }
        });
        let bind_ip = if addr.ip().is_unspecified() || relay_ip.is_ipv6() != addr.is_ipv6() {
            if relay_ip.is_ipv6() {
                IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::from([0, 0, 0, 0])
            }
        } else {
            addr.ip()
        };
        let allow: Vec<ipnet::IpNet> = s
            .allow_peers
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect();
        let mut own = vec![relay_ip];
        if !addr.ip().is_unspecified() {
            own.push(addr.ip());
        }
        // KUBE's own addresses are refused unless opened on purpose (loopback in tests).
        own.retain(|ip| !allow.iter().any(|n| n.contains(ip)));
        let meter = Arc::new(Meter::new(deps.metrics.clone()));
        let settings = Settings {
            realm,
            secret: secret.into(),
            max_allocations: s.max_allocations,
            max_per_user: s.max_allocations_per_user,
            bytes_per_sec: s.max_bytes_per_sec,
            max_lifetime: Duration::from_secs(s.max_lifetime_secs),
        };
        let server = Server::new(
            settings,
            PeerPolicy::new(&allow, &own),
            relay_ip.is_ipv6(),
            meter.clone(),
        );
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared {
            server: Mutex::new(server),
            udp: Arc::new(udp),
            streams: Mutex::new(HashMap::new()),
            reserved: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            connections: Arc::new(Semaphore::new(s.max_connections as usize)),
            relay_ip,
            bind_ip,
            ports: (s.relay_port_min, s.relay_port_max),
            ttl_secs: AtomicU64::new(s.credential_ttl_secs),
            meter,
            cancel: cancel.clone(),
        });
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(udp_task(shared.clone()));
        tasks.spawn(tick_task(shared.clone()));
        tasks.spawn(accept_task(shared.clone(), tcp, None));
        if let Some(tls) = tls {
            // A port of TURN's own negotiates no ALPN: whatever a client offers, it speaks
            // TURN here.
            let mut cfg = (*deps.tls.server_config()).clone();
            cfg.alpn_protocols.clear();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
            tasks.spawn(accept_task(shared.clone(), tls, Some(acceptor)));
        }
        tracing::info!(%addr, ?tls_addr, %relay_ip, on_https = s.on_https, "turn listening (udp, tcp, tls)");
        Ok(Started {
            handle: Some(TurnHandle {
                addr,
                tls_addr,
                on_https: s.on_https,
                https_port: Arc::default(),
                shared,
                data_dir: cx.data_dir.clone(),
                cluster: Arc::new(std::sync::RwLock::new(s.cluster.clone())),
            }),
            running: Box::new(RunningTurn {
                addr,
                tls_addr,
                cancel,
                tasks,
            }),
        })
    }
}

/// The UDP listener: every datagram to the server, every answer straight back.
async fn udp_task(shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            r = shared.udp.recv_from(&mut buf) => match r {
                Ok(r) => r,
                // ICMP errors from earlier sends surface here on some systems; go on.
                Err(e) => {
                    tracing::debug!(error = %e, "turn udp receive");
                    continue;
                }
            },
        };
        let client = Client {
            transport: Transport::Udp,
            addr: from,
            conn: 0,
        };
        if let Some(reply) = shared.on_client(client, &buf[..n]) {
            let _ = shared.udp.try_send_to(&reply, from);
        }
    }
}

/// One allocation's relay socket: datagrams from peers to the server, then to the client.
async fn relay_task(shared: Arc<Shared>, id: AllocId, relay: Arc<Relay>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, peer) = tokio::select! {
            _ = relay.cancel.cancelled() => return,
            r = relay.socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "turn relay receive");
                    continue;
                }
            },
        };
        let out = shared.lock().on_peer(id, peer, &buf[..n], now());
        if let Some((client, packet)) = out {
            tokio::select! {
                _ = relay.cancel.cancelled() => return,
                () = shared.to_client(client, packet) => {}
            }
        }
    }
}

/// Expiry of allocations, permissions and channels, once a second.
async fn tick_task(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = now();
        for relay in shared.lock().expire(now) {
            relay.cancel.cancel();
        }
        shared
            .reserved_lock()
            .retain(|_, (_, until)| *until > now.at);
    }
}

/// TURN over TCP (`tls` None) or TLS on a listener of its own.
async fn accept_task(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Some((tcp, peer)) = crate::service::accept(&listener, &shared.cancel, "turn").await
        else {
            break;
        };
        while conns.try_join_next().is_some() {}
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            shared.meter.refused("connections");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let tls = tls.clone();
        conns.spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_stream(shared, tcp, peer, Transport::Tcp).await,
                Some(acceptor) => {
                    match tokio::time::timeout(FIRST_FRAME, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => serve_stream(shared, stream, peer, Transport::Tls).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "turn: TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "turn: TLS handshake timed out"),
                    }
                }
            }
        });
    }
    conns.abort_all();
}

/// One TCP or TLS client: frames in (RFC 8656 §12.5), answers and relayed data out through
/// a bounded queue. The client's allocation ends with the connection.
async fn serve_stream<S>(shared: Arc<Shared>, stream: S, peer: SocketAddr, transport: Transport)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let client = Client {
        transport,
        addr: peer,
        conn,
    };
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(STREAM_QUEUE);
    shared
        .streams
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(conn, tx.clone());
    let (mut read, mut write) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        while let Some(p) = rx.recv().await {
            if write.write_all(&p).await.is_err() {
                break;
            }
        }
        let _ = write.shutdown().await;
    });
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut first = true;
    'read: loop {
        // A connection holds a slot of `turn.max_connections`: without an allocation it
        // must keep talking; with one, its lifetime (refreshed by the client) bounds it.
        let idle = if first {
            FIRST_FRAME
        } else {
            let server = shared.lock();
            if server.has_allocation(client) {
                server.settings().max_lifetime + Duration::from_secs(60)
            } else {
                UNALLOCATED_IDLE
            }
        };
        let n = tokio::select! {
            _ = shared.cancel.cancelled() => break,
            r = tokio::time::timeout(idle, read.read(&mut chunk)) => match r {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => n,
            },
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let len = match server::frame_len(&buf) {
                None => break,
                Some(Ok(len)) if len <= MAX_FRAME => len,
                Some(_) => {
                    shared.meter.refused("malformed");
                    break 'read;
                }
            };
            if buf.len() < len {
                break;
            }
            first = false;
            // Answers wait for room in the queue: a client that does not read stops
            // being read (TCP's own backpressure).
            if let Some(reply) = shared.on_client(client, &buf[..len])
                && tx.send(reply).await.is_err()
            {
                break 'read;
            }
            buf.drain(..len);
        }
    }
    shared
        .streams
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&conn);
    if let Some(relay) = shared.lock().client_closed(client) {
        relay.cancel.cancel();
    }
    drop(tx);
    let _ = writer.await;
}

/// Asks for `bytes` of receive and send buffer; the kernel may grant less.
fn set_buffers(socket: &impl std::os::fd::AsFd, bytes: usize) {
    let s = socket2::SockRef::from(socket);
    if let Err(e) = s
        .set_recv_buffer_size(bytes)
        .and(s.set_send_buffer_size(bytes))
    {
        tracing::debug!(error = %e, "turn: socket buffers");
    }
}

/// The generated shared secret, kept in the data dir.
fn secret_from(data_dir: &std::path::Path) -> Result<Vec<u8>, TurnError> {
    let path = data_dir.join("turn.secret");
    if let Ok(s) = std::fs::read_to_string(&path)
        && !s.trim().is_empty()
    {
        return Ok(s.trim().as_bytes().to_vec());
    }
    let s = hex::encode(rand::random::<[u8; 32]>());
    crate::datadir::write_private(&path, format!("{s}\n").as_bytes())?;
    Ok(s.into_bytes())
}

/// The source address the kernel would use towards the internet (no packet is sent).
fn default_route_ip() -> Option<IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

struct RunningTurn {
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    cancel: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

impl Running for RunningTurn {
    fn name(&self) -> &'static str {
        "turn"
    }
    fn bound(&self) -> Vec<(&'static str, SocketAddr)> {
        let mut b = vec![("turn", self.addr)];
        if let Some(tls) = self.tls_addr {
            b.push(("turn-tls", tls));
        }
        b
    }
    fn stop(
        self: Box<Self>,
        deadline: Instant,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            let RunningTurn {
                cancel, mut tasks, ..
            } = *self;
            // Relay tasks hold child tokens of this one.
            cancel.cancel();
            let _ = tokio::time::timeout_at(deadline.into(), async {
                while tasks.join_next().await.is_some() {}
            })
            .await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(s: &config::Turn) -> Vec<String> {
        let cx = Context {
            domain: "localhost".into(),
            data_dir: std::env::temp_dir(),
        };
        TurnService::check(s, &cx)
            .into_iter()
            .map(|p| p.path)
            .collect()
    }

    #[test]
    fn the_new_keys_are_checked() {
        let ok = config::Turn::default();
        assert!(problems(&ok).is_empty());
        let short = config::Turn {
            max_lifetime_secs: 60,
            max_connections: 0,
            ..ok.clone()
        };
        assert_eq!(
            problems(&short),
            ["turn.max_connections", "turn.max_lifetime_secs"]
        );
        let clash = config::Turn {
            tls_listen: Some(ok.listen),
            ..ok.clone()
        };
        assert_eq!(problems(&clash), ["turn.tls_listen"]);
        // Port 0 on both is two ports.
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let zero = config::Turn {
            listen: any,
            tls_listen: Some(any),
            ..ok
        };
        assert!(problems(&zero).is_empty());
    }
}
