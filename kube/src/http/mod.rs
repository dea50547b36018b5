//! The `http` service: the HTTPS listener (apex landing page and every app host, HTTP/1.1 and
//! HTTP/2 by ALPN, certificates from the `tls` resolver) and the plain HTTP listener that
//! redirects to HTTPS. Connections are drained on stop.

pub mod host;
mod prefixed;
pub mod proxy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use config::{Hsts, Problem};
use http::{HeaderValue, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::apps::{self, AppsHandle};
use crate::metrics::Metrics;
use crate::processes::routes::Lookup;
use crate::service::{Context, Running, Service, StartError, Started};
use crate::tls::TlsHandle;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Handles the `http` service needs.
pub struct HttpDeps {
    pub tls: TlsHandle,
    /// Signaling, served at `/.well-known/kube/signal` when enabled.
    pub signal: Option<crate::signaling::SignalHandle>,
    /// ECHO, served at `/.well-known/kube/echo` when enabled.
    pub echo: Option<crate::replica::EchoHandle>,
    pub apps: AppsHandle,
    pub metrics: Arc<Metrics>,
    /// TURN, when it is offered over TLS on the HTTPS port.
    pub turn: Option<crate::turn::TurnHandle>,
    /// Routes to supervised processes (written by the `processes` service).
    pub routes: Arc<crate::processes::routes::Routes>,
}

/// The ALPN protocol of TURN over TLS (RFC 7443).
const STUN_TURN_ALPN: &[u8] = b"stun.turn";

/// The query of an ECHO upgrade: the peer's signed token (echo/PROTOCOL.md).
#[derive(serde::Deserialize)]
struct EchoQuery {
    auth: Option<String>,
}

/// Where the HTTPS listener can be reached, for links and redirects.
#[derive(Clone, Debug)]
pub struct HttpsHandle {
    pub public_port: u16,
}

struct Shared {
    challenges: Arc<crate::tls::challenges::Challenges>,
    domain: String,
    port_suffix: String,
    hsts: bool,
    apps: AppsHandle,
    metrics: Arc<Metrics>,
    routes: Arc<crate::processes::routes::Routes>,
    proxy: proxy::Proxy,
}

pub struct HttpService;

impl Service for HttpService {
    const NAME: &'static str = "http";
    type Section = config::Http;
    type Deps = HttpDeps;
    type Handle = HttpsHandle;

    fn check(section: &config::Http, _cx: &Context) -> Vec<Problem> {
        let mut p = Vec::new();
        if section.public_https_port == Some(0) {
            p.push(Problem::new(
                "http.public_https_port",
                "must be a port from 1 to 65535",
            ));
        }
        p
    }

    async fn start(
        section: config::Http,
        cx: &Context,
        deps: HttpDeps,
    ) -> Result<Started<HttpsHandle>, StartError> {
        let https = bind("https", section.https_listen).await?;
        let plain = bind("http", section.listen).await?;
        let https_addr = https.local_addr()?;
        let http_addr = plain.local_addr()?;
        let public_port = section.public_https_port.unwrap_or(https_addr.port());
        let port_suffix = if public_port == 443 {
            String::new()
        } else {
            format!(":{public_port}")
        };
        let hsts = match section.hsts {
            Hsts::On => true,
            Hsts::Off => false,
            Hsts::Auto => !config::is_local_domain(&cx.domain),
        };
        let shared = Arc::new(Shared {
            challenges: deps.tls.challenges.clone(),
            domain: cx.domain.to_ascii_lowercase(),
            port_suffix: port_suffix.clone(),
            hsts,
            apps: deps.apps,
            metrics: deps.metrics,
            routes: deps.routes,
            proxy: proxy::Proxy::default(),
        });
        let mut router = Router::new();
        if let Some(signal) = deps.signal {
            router = router.route(
                "/.well-known/kube/signal",
                axum::routing::get(move |ws: axum::extract::ws::WebSocketUpgrade, headers: http::HeaderMap| async move {
                    let origin = headers
                        .get(header::ORIGIN)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    signal.upgrade(ws, origin)
                }),
            );
        }
        if let Some(echo) = deps.echo {
            let did = echo.did().to_owned();
            router = router
                .route(
                    "/.well-known/kube/echo",
                    axum::routing::get(
                        move |ws: axum::extract::ws::WebSocketUpgrade,
                              q: axum::extract::Query<EchoQuery>| async move {
                            echo.upgrade(ws, q.0.auth)
                        },
                    ),
                )
                .route(
                    "/.well-known/kube/identity",
                    axum::routing::get(move || {
                        let did = did.clone();
                        async move {
                            // KUBE's clock beside its identity: a client whose clock is off still
                            // makes tokens inside `echo.auth_window_secs` (echo/PROTOCOL.md §1).
                            let time = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map_or(0, |d| d.as_secs());
                            (
                                [
                                    (header::CONTENT_TYPE, "application/json"),
                                    (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
                                    (header::CACHE_CONTROL, "no-store"),
                                ],
                                serde_json::json!({ "did": did, "time": time }).to_string(),
                            )
                        }
                    }),
                );
        }
        let router = router.fallback(handle_https).with_state(shared.clone());
        let redirect = Router::new().fallback(handle_redirect).with_state(shared);

        let cancel = CancellationToken::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(section.header_timeout_secs));
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30));
        let mut tls = deps.tls.server_config();
        if deps.turn.is_some() {
            // TURN clients that offer ALPN (coturn's offer http/1.1 and stun.turn) are to get
            // `stun.turn` (RFC 7443); browsers never offer it.
            let mut cfg = (*tls).clone();
            cfg.alpn_protocols.insert(1, STUN_TURN_ALPN.to_vec());
            tls = Arc::new(cfg);
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let graceful = Arc::new(hyper_util::server::graceful::GracefulShutdown::new());
        let mut loops = JoinSet::new();
        loops.spawn(accept_loop(
            https,
            Some((acceptor, deps.turn.clone())),
            router,
            builder.clone(),
            graceful.clone(),
            cancel.clone(),
        ));
        loops.spawn(accept_loop(
            plain,
            None,
            redirect,
            builder,
            graceful.clone(),
            cancel.clone(),
        ));
        tracing::info!(%https_addr, %http_addr, "http listening");
        Ok(Started {
            handle: HttpsHandle { public_port },
            running: Box::new(RunningHttp {
                https_addr,
                http_addr,
                cancel,
                loops,
                graceful,
            }),
        })
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { what, addr, source })
}

struct RunningHttp {
    https_addr: SocketAddr,
    http_addr: SocketAddr,
    cancel: CancellationToken,
    loops: JoinSet<()>,
    graceful: Arc<hyper_util::server::graceful::GracefulShutdown>,
}

impl Running for RunningHttp {
    fn name(&self) -> &'static str {
        "http"
    }
    fn bound(&self) -> Vec<(&'static str, SocketAddr)> {
        vec![("https", self.https_addr), ("http", self.http_addr)]
    }
    fn stop(
        self: Box<Self>,
        deadline: Instant,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            let RunningHttp {
                cancel,
                mut loops,
                graceful,
                ..
            } = *self;
            cancel.cancel();
            while loops.join_next().await.is_some() {}
            // The accept loops are gone, so this is the last handle. Idle keep-alive
            // connections close now; requests in flight get until the deadline.
            let Ok(graceful) = Arc::try_unwrap(graceful) else {
                tracing::warn!("http: connections not tracked at shutdown");
                return;
            };
            if tokio::time::timeout_at(deadline.into(), graceful.shutdown())
                .await
                .is_err()
            {
                tracing::warn!("http: connections still open at the shutdown deadline");
            }
        })
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<(tokio_rustls::TlsAcceptor, Option<crate::turn::TurnHandle>)>,
    router: Router,
    builder: auto::Builder<TokioExecutor>,
    graceful: Arc<hyper_util::server::graceful::GracefulShutdown>,
    cancel: CancellationToken,
) {
    let mut conns = JoinSet::new();
    loop {
        let Some((tcp, peer)) = crate::service::accept(&listener, &cancel, "http").await else {
            break;
        };
        // Reap finished connection tasks so the set does not grow without bound.
        while conns.try_join_next().is_some() {}
        let _ = tcp.set_nodelay(true);
        // The client's address, for the proxy's X-Forwarded-For.
        let svc = TowerToHyperService::new(tower::ServiceExt::map_request(
            router.clone(),
            move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(proxy::ClientAddr(peer));
                req
            },
        ));
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        conns.spawn(async move {
            match tls {
                Some((acceptor, turn)) => {
                    let mut stream =
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    let alpn = stream.get_ref().1.alpn_protocol();
                    // A TLS-ALPN-01 validation ends with the handshake (RFC 8737 §3).
                    if alpn == Some(crate::tls::challenges::ACME_TLS_ALPN) {
                        return;
                    }
                    // TURN over TLS (RFC 8656 §3.1) offers no ALPN, or `stun.turn` (RFC
                    // 7443), and speaks first: a STUN message's first byte has its top two
                    // bits clear, an HTTP request starts with a letter. Browsers loading
                    // pages always offer h2 or http/1.1 and are never read ahead of hyper.
                    let mut prefix = Vec::new();
                    let to_turn = match (&turn, alpn) {
                        (Some(_), Some(STUN_TURN_ALPN)) => true,
                        (Some(_), None) => {
                            let mut first = [0u8; 1];
                            match tokio::time::timeout(
                                Duration::from_secs(10),
                                stream.read(&mut first),
                            )
                            .await
                            {
                                Ok(Ok(1)) => prefix.push(first[0]),
                                _ => return,
                            }
                            first[0] >> 6 == 0
                        }
                        _ => false,
                    };
                    if let (true, Some(turn)) = (to_turn, &turn) {
                        turn.serve_tls(prefixed::Prefixed::new(prefix, stream), peer)
                            .await;
                        return;
                    }
                    let io = TokioIo::new(prefixed::Prefixed::new(prefix, stream));
                    let conn = builder.serve_connection_with_upgrades(io, svc);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                None => {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), svc);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
            }
        });
    }
    // The connection tasks are owned by the graceful watcher from here on.
    conns.detach_all();
}

fn request_host(req: &Request) -> String {
    req.uri()
        .host()
        .map(str::to_owned)
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// Answers one HTTPS request; a panic in it is logged, counted and answered 500, and the
/// connection and the server go on.
async fn handle_https(State(st): State<Arc<Shared>>, req: Request) -> Response {
    use futures_util::FutureExt;
    let started = Instant::now();
    let answer = std::panic::AssertUnwindSafe(route_https(&st, req))
        .catch_unwind()
        .await;
    let (label, mut resp) = answer.unwrap_or_else(|_| {
        tracing::error!("request handler panicked");
        st.metrics.http_panics.inc();
        let r = apps::text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
        ("_panic".to_owned(), r)
    });
    if st.hsts {
        resp.headers_mut().insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    let class = match resp.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    st.metrics
        .http_requests
        .with_label_values(&[&label, class])
        .inc();
    st.metrics
        .http_duration
        .with_label_values(&[&label, class])
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// Which site the request is for, and its answer; the label names the app for metrics.
async fn route_https(st: &Shared, req: Request) -> (String, Response) {
    let host = request_host(&req);
    let site = host::route(&host, &st.domain);
    // A process routed under this host and path comes before the app's bundle.
    if let host::Site::App(label) = site {
        match st.routes.find(label, req.uri().path()) {
            Lookup::None => {}
            Lookup::NotReady { process } => {
                let mut r = apps::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the process {process} is not ready\n"),
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return (label.to_owned(), r);
            }
            Lookup::Proxy { process, backend } => {
                let label = label.to_owned();
                let r = st.proxy.forward(&process, backend, req).await;
                return (label, r);
            }
        }
    }
    match site {
        host::Site::Apex => ("_apex".to_owned(), apex(st, &req)),
        host::Site::App(app) if st.apps.current(app).is_some() => {
            let path = req.uri().path();
            let r = apps::respond(&st.apps, app, req.method(), path, req.headers()).await;
            (app.to_owned(), r)
        }
        host::Site::App(_) => (
            "_unknown".to_owned(),
            apps::text(StatusCode::NOT_FOUND, "no such app\n"),
        ),
        host::Site::Unknown => (
            "_unknown".to_owned(),
            apps::text(StatusCode::NOT_FOUND, "unknown host\n"),
        ),
    }
}

fn apex(st: &Shared, req: &Request) -> Response {
    if req.uri().path() != "/" {
        return apps::text(StatusCode::NOT_FOUND, "not found\n");
    }
    let names: Vec<String> = st.apps.list().into_iter().map(|a| a.name).collect();
    let mut r = Response::new(Body::from(host::landing_page(
        &st.domain,
        &st.port_suffix,
        &names,
    )));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// Plain HTTP: ACME HTTP-01 answers (RFC 8555 §8.3); every other request is sent to the same
/// host and path over HTTPS.
async fn handle_redirect(State(st): State<Arc<Shared>>, req: Request) -> Response {
    if let Some(token) = req
        .uri()
        .path()
        .strip_prefix("/.well-known/acme-challenge/")
    {
        return match st.challenges.http01(token) {
            Some(key_authorization) => {
                let mut r = Response::new(Body::from(key_authorization));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                r
            }
            None => apps::text(StatusCode::NOT_FOUND, "no such challenge\n"),
        };
    }
    let host = request_host(&req);
    let name = match host::route(&host, &st.domain) {
        host::Site::Unknown => st.domain.clone(),
        _ => host
            .rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map(|(h, _)| h.to_owned())
            .unwrap_or(host),
    };
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let location = format!("https://{name}{}{path}", st.port_suffix);
    let mut r = apps::text(StatusCode::PERMANENT_REDIRECT, "moved to https\n");
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            r.headers_mut().insert(header::LOCATION, v);
        }
        Err(_) => *r.status_mut() = StatusCode::BAD_REQUEST,
    }
    r
}
