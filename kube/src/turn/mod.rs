//! The `turn` service: STUN/TURN on UDP through the `turn` crate (webrtc-rs), with our
//! policy around it: REST credentials checked against the shared secret (expired ones
//! refused), a front door (`filter`) that answers wrong credentials with 401 and refuses
//! malformed peer addresses and peers `policy` forbids, relay sockets that re-check every
//! peer they send to, and relays bounded in number and bandwidth.
//!
//! TURN over TCP or TLS is not offered: the `turn` crate serves packet connections only
//! (its `Server` takes a fixed list of `Conn`s at start, one read loop each), and RFC 6062
//! TCP allocations are not implemented there. Carrying TURN over TCP would need a server
//! per accepted stream, or a crate that speaks it.

pub mod filter;
pub mod policy;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use config::Problem;
use tokio::net::UdpSocket;
use webrtc_util::Conn;

use self::filter::Verdict;
use self::policy::PeerPolicy;
use crate::metrics::Metrics;
use crate::service::{Context, Running, Service, StartError, Started};

#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    #[error("cannot listen on {addr} (turn): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("turn.secret: {0}")]
    Secret(#[from] crate::datadir::DataDirError),
    #[error("turn server: {0}")]
    Server(String),
}

/// What signaling needs to hand out ICE servers, and what a reload changes.
#[derive(Clone)]
pub struct TurnHandle {
    pub addr: SocketAddr,
    live: Arc<Live>,
    data_dir: std::path::PathBuf,
}

impl TurnHandle {
    /// The secret new credentials are signed with.
    pub fn secret(&self) -> Vec<u8> {
        self.live.secrets().current.to_vec()
    }

    pub fn ttl_secs(&self) -> u64 {
        self.live.ttl_secs.load(Ordering::Relaxed)
    }

    /// Applies a changed `turn` section: secret, credential lifetime and limits. Live
    /// allocations keep working: their users stay on the secret they authenticated with
    /// until the allocation ends. Listen address, realm, relay ports and peers need a
    /// restart. Returns whether anything changed.
    pub fn reload(&self, s: &config::Turn) -> Result<bool, TurnError> {
        let secret = if s.secret.is_empty() {
            secret_from(&self.data_dir)?
        } else {
            s.secret.clone().into_bytes()
        };
        let mut changed = false;
        {
            let mut secrets = self.live.secrets_mut();
            if *secrets.current != *secret {
                let old = std::mem::replace(&mut secrets.current, secret.into());
                let live_users: Vec<String> = self
                    .live
                    .users
                    .live
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .keys()
                    .cloned()
                    .collect();
                for user in live_users {
                    secrets.kept.entry(user).or_insert_with(|| old.clone());
                }
                changed = true;
            }
        }
        for (slot, v) in [
            (&self.live.ttl_secs, s.credential_ttl_secs),
            (&self.live.bytes_per_sec, s.max_bytes_per_sec),
        ] {
            changed |= slot.swap(v, Ordering::Relaxed) != v;
        }
        for (slot, v) in [
            (&self.live.max_allocations, s.max_allocations),
            (&self.live.max_per_user, s.max_allocations_per_user),
        ] {
            changed |= slot.swap(v, Ordering::Relaxed) != v;
        }
        Ok(changed)
    }
}

/// The settings a reload changes, shared by the front door, the relays, the auth handler
/// and signaling.
struct Live {
    secrets: std::sync::RwLock<Secrets>,
    ttl_secs: std::sync::atomic::AtomicU64,
    bytes_per_sec: std::sync::atomic::AtomicU64,
    max_allocations: AtomicU32,
    max_per_user: AtomicU32,
    users: Arc<Users>,
}

struct Secrets {
    /// Shared, not copied: the front door reads it for every packet.
    current: Arc<[u8]>,
    /// Users with allocations made before the secret changed, and the secret they used.
    kept: HashMap<String, Arc<[u8]>>,
}

impl Live {
    fn secrets(&self) -> std::sync::RwLockReadGuard<'_, Secrets> {
        self.secrets.read().unwrap_or_else(|p| p.into_inner())
    }
    fn secrets_mut(&self) -> std::sync::RwLockWriteGuard<'_, Secrets> {
        self.secrets.write().unwrap_or_else(|p| p.into_inner())
    }
    /// The secret `user`'s credentials are checked against.
    fn secret_for(&self, user: &str) -> Arc<[u8]> {
        let s = self.secrets();
        s.kept.get(user).unwrap_or(&s.current).clone()
    }
    /// An allocation of `user` ended.
    fn released(&self, user: &str) {
        self.users.release(user);
        if self.users.count(user) == 0 {
            self.secrets_mut().kept.remove(user);
        }
    }
}

pub struct TurnService;

impl Service for TurnService {
    const NAME: &'static str = "turn";
    type Section = config::Turn;
    type Deps = Arc<Metrics>;
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
        ] {
            if v == 0 {
                p.push(Problem::new(key, "must be at least 1"));
            }
        }
        p
    }

    async fn start(
        s: config::Turn,
        cx: &Context,
        metrics: Arc<Metrics>,
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
        let socket = UdpSocket::bind(s.listen)
            .await
            .map_err(|source| TurnError::Bind {
                addr: s.listen,
                source,
            })?;
        let addr = socket.local_addr()?;
        let relay_ip = s.relay_address.unwrap_or_else(|| {
            if addr.ip().is_unspecified() {
                default_route_ip().unwrap_or(IpAddr::from([127, 0, 0, 1]))
            } else {
                addr.ip()
            }
        });
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
        let users = Arc::new(Users::default());
        let live = Arc::new(Live {
            secrets: std::sync::RwLock::new(Secrets {
                current: secret.into(),
                kept: HashMap::new(),
            }),
            ttl_secs: std::sync::atomic::AtomicU64::new(s.credential_ttl_secs),
            bytes_per_sec: std::sync::atomic::AtomicU64::new(s.max_bytes_per_sec),
            max_allocations: AtomicU32::new(s.max_allocations),
            max_per_user: AtomicU32::new(s.max_allocations_per_user),
            users: users.clone(),
        });
        let policy = Arc::new(PeerPolicy::new(&allow, &own));
        let front = Arc::new(FrontDoor {
            socket,
            policy: policy.clone(),
            realm: realm.clone(),
            metrics: metrics.clone(),
            users: users.clone(),
            live: live.clone(),
        });
        let relays = Relays {
            inner: turn::relay::relay_range::RelayAddressGeneratorRanges {
                relay_address: relay_ip,
                min_port: s.relay_port_min,
                max_port: s.relay_port_max,
                max_retries: 10,
                address: if addr.ip().is_unspecified() {
                    "0.0.0.0".into()
                } else {
                    addr.ip().to_string()
                },
                net: Arc::new(webrtc_util::vnet::net::Net::new(None)),
            },
            live: Arc::new(AtomicU32::new(0)),
            settings: live.clone(),
            policy,
            metrics: metrics.clone(),
        };
        let (closed_tx, mut closed_rx) =
            tokio::sync::mpsc::channel::<turn::allocation::AllocationInfo>(1024);
        let server = turn::server::Server::new(turn::server::config::ServerConfig {
            conn_configs: vec![turn::server::config::ConnConfig {
                conn: front,
                relay_addr_generator: Box::new(relays),
            }],
            realm,
            auth_handler: Arc::new(RestAuth { live: live.clone() }),
            channel_bind_timeout: Duration::from_secs(0),
            alloc_close_notify: Some(closed_tx),
        })
        .await
        .map_err(|e| TurnError::Server(e.to_string()))?;
        let released = live.clone();
        let watcher = tokio::spawn(async move {
            while let Some(info) = closed_rx.recv().await {
                released.released(&info.username);
            }
        });
        tracing::info!(%addr, %relay_ip, "turn listening (udp)");
        Ok(Started {
            handle: Some(TurnHandle {
                addr,
                live,
                data_dir: cx.data_dir.clone(),
            }),
            running: Box::new(RunningTurn {
                addr,
                server,
                watcher,
            }),
        })
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
    server: turn::server::Server,
    watcher: tokio::task::JoinHandle<()>,
}

impl Running for RunningTurn {
    fn name(&self) -> &'static str {
        "turn"
    }
    fn bound(&self) -> Vec<(&'static str, SocketAddr)> {
        vec![("turn", self.addr)]
    }
    fn stop(
        self: Box<Self>,
        _deadline: Instant,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            if let Err(e) = self.server.close().await {
                tracing::debug!(error = %e, "turn server close");
            }
            self.watcher.abort();
        })
    }
}

/// Long-term credentials in the REST scheme: the username carries its expiry, the password
/// is the HMAC of the username under the shared secret.
struct RestAuth {
    live: Arc<Live>,
}

impl turn::auth::AuthHandler for RestAuth {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        _src: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        let now = crate::service::unix_now();
        match signal::ice::expiry(username) {
            Some(expiry) if expiry > now => {}
            _ => return Err(turn::Error::ErrNoSuchUser),
        }
        let password = signal::ice::password(&self.live.secret_for(username), username);
        Ok(turn::auth::generate_auth_key(username, realm, &password))
    }
}

/// Live allocations per user (for `turn.max_allocations_per_user`).
#[derive(Default)]
struct Users {
    live: Mutex<HashMap<String, u32>>,
    /// Allocate requests seen, by transaction id, until their answer goes out.
    pending: Mutex<HashMap<[u8; 12], String>>,
}

impl Users {
    fn count(&self, user: &str) -> u32 {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
            .copied()
            .unwrap_or(0)
    }
    fn release(&self, user: &str) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = live.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                live.remove(user);
            }
        }
    }
}

/// The listening socket as the TURN server sees it: incoming packets pass the front door
/// first; outgoing Allocate successes are counted per user.
struct FrontDoor {
    socket: UdpSocket,
    policy: Arc<PeerPolicy>,
    realm: String,
    metrics: Arc<Metrics>,
    users: Arc<Users>,
    live: Arc<Live>,
}

#[async_trait]
impl Conn for FrontDoor {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(self.socket.connect(addr).await?)
    }
    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.socket.recv(buf).await?)
    }
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = self.socket.recv_from(buf).await?;
            let now = crate::service::unix_now();
            let secret_for = |user: &str| self.live.secret_for(user);
            match filter::judge(&buf[..n], &self.policy, &self.realm, now, secret_for) {
                Verdict::Pass => {}
                Verdict::Refuse { response, reason } => {
                    self.metrics.turn_refused.with_label_values(&[reason]).inc();
                    if !response.is_empty() {
                        let _ = self.socket.send_to(&response, from).await;
                    }
                    continue;
                }
            }
            if let Some((txid, user)) = filter::allocate_request(&buf[..n]) {
                if self.users.count(&user) >= self.live.max_per_user.load(Ordering::Relaxed) {
                    self.metrics
                        .turn_refused
                        .with_label_values(&["user-quota"])
                        .inc();
                    if let Some(r) = filter::quota_reached(&buf[..n], &self.live.secret_for(&user))
                    {
                        let _ = self.socket.send_to(&r, from).await;
                    }
                    continue;
                }
                self.users
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(txid, user);
            }
            return Ok((n, from));
        }
    }
    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        Ok(self.socket.send(buf).await?)
    }
    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if let Some((txid, success)) = filter::allocate_answer(buf) {
            let user = self
                .users
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&txid);
            if let (Some(user), true) = (user, success) {
                *self
                    .users
                    .live
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(user)
                    .or_insert(0) += 1;
            }
        }
        Ok(self.socket.send_to(buf, target).await?)
    }
    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }
    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// Relay sockets from the configured port range, at most `max` at once, each bounded to
/// `bytes_per_sec` in each direction.
struct Relays {
    inner: turn::relay::relay_range::RelayAddressGeneratorRanges,
    live: Arc<AtomicU32>,
    /// `max_allocations` and `max_bytes_per_sec`, as reloaded.
    settings: Arc<Live>,
    policy: Arc<PeerPolicy>,
    metrics: Arc<Metrics>,
}

#[async_trait]
impl turn::relay::RelayAddressGenerator for Relays {
    fn validate(&self) -> Result<(), turn::Error> {
        self.inner.validate()
    }

    async fn allocate_conn(
        &self,
        use_ipv4: bool,
        requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), turn::Error> {
        let max = self.settings.max_allocations.load(Ordering::Relaxed);
        if self.live.fetch_add(1, Ordering::SeqCst) >= max {
            self.live.fetch_sub(1, Ordering::SeqCst);
            self.metrics
                .turn_refused
                .with_label_values(&["total-quota"])
                .inc();
            return Err(turn::Error::Other("allocation quota reached".into()));
        }
        match self.inner.allocate_conn(use_ipv4, requested_port).await {
            Ok((conn, addr)) => {
                self.metrics.turn_allocations.inc();
                let bytes_per_sec = self.settings.bytes_per_sec.load(Ordering::Relaxed);
                let relay = Relay {
                    inner: conn,
                    live: self.live.clone(),
                    policy: self.policy.clone(),
                    metrics: self.metrics.clone(),
                    out: Mutex::new(Bucket::new(bytes_per_sec)),
                    inb: Mutex::new(Bucket::new(bytes_per_sec)),
                };
                Ok((Arc::new(relay), addr))
            }
            Err(e) => {
                self.live.fetch_sub(1, Ordering::SeqCst);
                Err(e)
            }
        }
    }
}

/// A byte bucket: `rate` bytes a second, a second's worth of burst.
struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u64) -> Bucket {
        Bucket {
            rate: rate as f64,
            tokens: rate as f64,
            last: Instant::now(),
        }
    }

    fn take(&mut self, n: usize) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.rate);
        self.last = now;
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

/// One allocation's relay socket: counted, bounded in bandwidth (excess is dropped, as a
/// congested path would), and sending to no peer the policy refuses. The front door
/// already refuses every request naming such a peer; this is the second line, should a
/// parser ever read an address otherwise than the front door did.
struct Relay {
    inner: Arc<dyn Conn + Send + Sync>,
    live: Arc<AtomicU32>,
    policy: Arc<PeerPolicy>,
    metrics: Arc<Metrics>,
    out: Mutex<Bucket>,
    inb: Mutex<Bucket>,
}

impl Relay {
    /// Whether the policy refuses `peer`; a refusal is counted and logged.
    fn refuses(&self, peer: SocketAddr) -> bool {
        let Some(range) = self.policy.refused(peer.ip()) else {
            return false;
        };
        tracing::warn!(%peer, range, "relay socket refused a peer the front door let by");
        self.metrics
            .turn_refused
            .with_label_values(&["relay-socket"])
            .inc();
        true
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
        self.metrics.turn_allocations.dec();
    }
}

#[async_trait]
impl Conn for Relay {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        if self.refuses(addr) {
            return Err(webrtc_util::Error::Other(format!("peer {addr} refused")));
        }
        self.inner.connect(addr).await
    }
    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        self.inner.recv(buf).await
    }
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = self.inner.recv_from(buf).await?;
            if self.inb.lock().unwrap_or_else(|p| p.into_inner()).take(n) {
                self.metrics.turn_packets.with_label_values(&["in"]).inc();
                self.metrics.turn_relayed_bytes.inc_by(n as u64);
                return Ok((n, from));
            }
            self.metrics.turn_dropped.inc();
        }
    }
    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.inner.send(buf).await
    }
    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if self.refuses(target) {
            return Ok(buf.len());
        }
        if !self
            .out
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(buf.len())
        {
            self.metrics.turn_dropped.inc();
            return Ok(buf.len());
        }
        self.metrics.turn_packets.with_label_values(&["out"]).inc();
        self.metrics.turn_relayed_bytes.inc_by(buf.len() as u64);
        self.inner.send_to(buf, target).await
    }
    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        self.inner.local_addr()
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.remote_addr()
    }
    async fn close(&self) -> webrtc_util::Result<()> {
        self.inner.close().await
    }
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Defence in depth: whatever the parsers made of a request, the relay socket itself
    /// sends nothing to a refused peer, and counts what it dropped.
    #[tokio::test]
    async fn the_relay_socket_never_sends_to_a_refused_peer() {
        let metrics = Arc::new(Metrics::new());
        let relay = Relay {
            inner: Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()),
            live: Arc::new(AtomicU32::new(1)),
            policy: Arc::new(PeerPolicy::new(&[], &[])),
            metrics: metrics.clone(),
            out: Mutex::new(Bucket::new(1 << 20)),
            inb: Mutex::new(Bucket::new(1 << 20)),
        };
        let host = UdpSocket::bind("0.0.0.0:0").await.unwrap();
        let port = host.local_addr().unwrap().port();
        for to in ["0.0.0.0", "127.0.0.1", "127.1.2.3"] {
            let to = SocketAddr::new(to.parse().unwrap(), port);
            // Dropped as a congested path would drop it: the server sees no error.
            assert_eq!(relay.send_to(b"hello", to).await.unwrap(), 5, "{to}");
        }
        let mut buf = [0u8; 16];
        let got = tokio::time::timeout(Duration::from_millis(300), host.recv_from(&mut buf)).await;
        assert!(got.is_err(), "a refused peer received {got:?}");
        assert_eq!(
            metrics
                .turn_refused
                .with_label_values(&["relay-socket"])
                .get(),
            3
        );
    }
}
