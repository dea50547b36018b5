//! The service life cycle every service follows: `check` its section (pure), `start` it
//! (binds every listener, returns once ready, hands out a typed handle), `stop` it
//! (stop accepting, let in-flight work finish until a deadline, flush).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use config::Problem;
use serde::Serialize;

/// What every service may read besides its own section.
#[derive(Clone, Debug)]
pub struct Context {
    pub domain: String,
    pub data_dir: PathBuf,
}

/// A start failure, kept as the service's own typed error.
pub type StartError = Box<dyn std::error::Error + Send + Sync>;

/// One service. The supervisor calls `check` for `kube config check` and before starting,
/// then `start` in dependency order, passing handles from earlier services as `Deps`.
pub trait Service {
    const NAME: &'static str;
    type Section;
    type Deps;
    type Handle;

    fn check(section: &Self::Section, cx: &Context) -> Vec<Problem>;

    fn start(
        section: Self::Section,
        cx: &Context,
        deps: Self::Deps,
    ) -> impl Future<Output = Result<Started<Self::Handle>, StartError>> + Send;
}

/// What `start` returns: the handle for other services and the running part to stop.
pub struct Started<H> {
    pub handle: H,
    pub running: Box<dyn Running>,
}

/// A started service.
pub trait Running: Send {
    fn name(&self) -> &'static str;
    /// Every address it listens on, with a short label (`https`, `admin`).
    fn bound(&self) -> Vec<(&'static str, SocketAddr)>;
    /// Stops accepting, lets in-flight work finish until `deadline`, then returns.
    fn stop(self: Box<Self>, deadline: Instant) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// A running part with nothing to stop (a service that owns no socket or task).
pub struct Idle(pub &'static str);

impl Running for Idle {
    fn name(&self) -> &'static str {
        self.0
    }
    fn bound(&self) -> Vec<(&'static str, SocketAddr)> {
        Vec::new()
    }
    fn stop(self: Box<Self>, _deadline: Instant) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async {})
    }
}

/// What `kube status` shows of each service.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceStatus {
    pub name: &'static str,
    pub state: &'static str,
    pub listen: Vec<String>,
}

/// The supervisor's view of every service, shared read-only with the admin API.
#[derive(Debug)]
pub struct Board {
    started: Instant,
    ready: AtomicBool,
    services: RwLock<Vec<ServiceStatus>>,
}

impl Board {
    pub fn new() -> Arc<Board> {
        Arc::new(Board {
            started: Instant::now(),
            ready: AtomicBool::new(false),
            services: RwLock::new(Vec::new()),
        })
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn record(&self, status: ServiceStatus) {
        let mut s = self.services.write().unwrap_or_else(|p| p.into_inner());
        s.retain(|x| x.name != status.name);
        s.push(status);
    }

    pub fn services(&self) -> Vec<ServiceStatus> {
        self.services
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The running part of most services: background tasks with one stop switch, and the
/// addresses they listen on. `stop` cancels, waits until the deadline, then aborts.
pub struct Tasks {
    name: &'static str,
    bound: Vec<(&'static str, SocketAddr)>,
    cancel: tokio_util::sync::CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

impl Tasks {
    pub fn new(name: &'static str, cancel: tokio_util::sync::CancellationToken) -> Tasks {
        Tasks {
            name,
            bound: Vec::new(),
            cancel,
            tasks: tokio::task::JoinSet::new(),
        }
    }

    pub fn listening(mut self, label: &'static str, addr: SocketAddr) -> Tasks {
        self.bound.push((label, addr));
        self
    }

    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }
}

impl Running for Tasks {
    fn name(&self) -> &'static str {
        self.name
    }
    fn bound(&self) -> Vec<(&'static str, SocketAddr)> {
        self.bound.clone()
    }
    fn stop(self: Box<Self>, deadline: Instant) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let Tasks {
                name,
                cancel,
                mut tasks,
                ..
            } = *self;
            cancel.cancel();
            let all = async { while tasks.join_next().await.is_some() {} };
            if tokio::time::timeout_at(deadline.into(), all).await.is_err() {
                tracing::warn!(
                    service = name,
                    "still busy at the shutdown deadline: aborting"
                );
                tasks.abort_all();
            }
        })
    }
}

/// The next TCP connection, or None once `cancel` fires. Accept errors (out of file
/// descriptors and the like) are logged and retried after a short pause instead of spinning.
pub async fn accept(
    listener: &tokio::net::TcpListener,
    cancel: &tokio_util::sync::CancellationToken,
    service: &'static str,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return None,
            r = listener.accept() => match r {
                Ok(x) => return Some(x),
                Err(e) => {
                    tracing::warn!(service, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// What a reload did: sections applied live, sections that wait for a restart, and
/// sections whose new values were refused (each keeps running as it was).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ReloadReport {
    pub applied: Vec<&'static str>,
    pub restart: Vec<&'static str>,
    pub failed: Vec<String>,
}

/// A reload asked for through the admin API (`kube reload`): the supervisor answers with
/// the report, or the configuration's problems (then nothing was applied).
pub type ReloadRequest = tokio::sync::oneshot::Sender<Result<ReloadReport, String>>;

/// Unix seconds of `t` (0 before 1970).
pub fn unix(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    unix(std::time::SystemTime::now())
}

/// Binds UDP and TCP on the same address (DNS and TURN serve both on one port); with port
/// 0, on the same free port, trying again while TCP finds the port UDP got taken. A failure
/// names the protocol and the address.
pub async fn bind_udp_tcp(
    listen: SocketAddr,
) -> Result<
    (tokio::net::UdpSocket, tokio::net::TcpListener),
    (&'static str, SocketAddr, std::io::Error),
> {
    let mut last = None;
    for _ in 0..20 {
        let udp = tokio::net::UdpSocket::bind(listen)
            .await
            .map_err(|e| ("udp", listen, e))?;
        let port = udp.local_addr().map(|a| a.port()).unwrap_or(listen.port());
        let tcp_addr = SocketAddr::new(listen.ip(), port);
        match tokio::net::TcpListener::bind(tcp_addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if listen.port() == 0 => last = Some(e),
            Err(e) => return Err(("tcp", tcp_addr, e)),
        }
    }
    Err((
        "tcp",
        listen,
        last.unwrap_or_else(|| std::io::Error::other("no free port")),
    ))
}
