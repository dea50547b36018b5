//! The `admin` service: the JSON admin API behind operator signatures (HALO keys listed in
//! `admin.operators`, see `halo::request`) or a bearer token (`<data_dir>/admin.token`), and
//! `/metrics`, `/healthz`, `/readyz` and the operator console (`console`, at `/`) on the same
//! listener.

mod console;

use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use config::Problem;
use futures_util::StreamExt;
use halo::request::{Signed, Verifier};
use http::{HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::apps::cluster::ClusterError;
use crate::apps::{self, AppsHandle, StoreError, bundle::BundleError};
use crate::dns::{DnsHandle, records::RecordSpec};
use crate::http::HttpsHandle;
use crate::metrics::Metrics;
use crate::service::{Board, Context, Service, StartError, Started, Tasks};
use crate::tls::TlsHandle;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen on {addr} (admin): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin token: {0}")]
    Token(#[from] crate::datadir::DataDirError),
}

/// Handles the admin API reads from and acts on.
pub struct AdminDeps {
    pub metrics: Arc<Metrics>,
    pub metrics_enabled: bool,
    pub board: Arc<Board>,
    pub apps: AppsHandle,
    /// With `storage`: bundles go through the object store to every KUBE.
    pub cluster: Option<Arc<crate::apps::cluster::Cluster>>,
    pub tls: TlsHandle,
    /// None when `dns.enabled` is false.
    pub dns: Option<DnsHandle>,
    /// Filled in once `http` has started (it starts after `admin`).
    pub https: Arc<std::sync::OnceLock<HttpsHandle>>,
    /// KUBE's own key, as did:key.
    pub identity: String,
    /// `echo.admit`, for the admission question ECHO asks (and operators may ask here).
    pub admit: halo::admission::Admit,
    /// The supervised processes; filled in once they started (after every service).
    pub processes: Arc<std::sync::OnceLock<crate::processes::ProcessesHandle>>,
    /// Routes to processes: their hosts are named in certificates beside the apps.
    pub routes: Arc<crate::processes::routes::Routes>,
    /// ECHO, when enabled: `kube space …` and its line in `kube status`.
    pub echo: Option<crate::replica::EchoHandle>,
    /// Asks the supervisor to read the configuration again (`kube reload`).
    pub reload: tokio::sync::mpsc::Sender<crate::service::ReloadRequest>,
}

struct Shared {
    deps: AdminDeps,
    token_hash: [u8; 32],
    domain: String,
    data_dir: std::path::PathBuf,
    operators: Mutex<Operators>,
    /// The data dir's size and when it was measured: a walk of every file, so reused for
    /// `DISK_USE_TTL` (the console polls the status).
    disk: tokio::sync::Mutex<Option<(std::time::Instant, u64)>>,
}

const DISK_USE_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// Who may sign, and the nonces seen: replaced whole on reload.
struct Operators {
    dids: Vec<String>,
    verifier: Verifier,
}

impl Operators {
    fn new(section: &config::Admin, identity: &str) -> Operators {
        let started = crate::service::unix_now();
        Operators {
            dids: section.operators.clone(),
            verifier: Verifier::new(
                identity.to_owned(),
                operator_keys(section),
                section.signature_window_secs,
                started,
            ),
        }
    }
}

/// `check` refused bad keys before start or reload; a key that still fails is skipped.
fn operator_keys(section: &config::Admin) -> Vec<halo::PublicKey> {
    section
        .operators
        .iter()
        .filter_map(|d| halo::PublicKey::from_did(d).ok())
        .collect()
}

/// What a reload may change while the listener stays.
#[derive(Clone)]
pub struct AdminHandle {
    shared: Arc<Shared>,
}

impl AdminHandle {
    /// New operator keys and window; nonces already seen stay remembered.
    pub fn reload(&self, section: &config::Admin) {
        let mut ops = lock(&self.shared.operators);
        ops.verifier
            .set_operators(operator_keys(section), section.signature_window_secs);
        ops.dids = section.operators.clone();
    }
}

fn lock(m: &Mutex<Operators>) -> std::sync::MutexGuard<'_, Operators> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub struct AdminService;

impl Service for AdminService {
    const NAME: &'static str = "admin";
    type Section = config::Admin;
    type Deps = AdminDeps;
    type Handle = AdminHandle;

    fn check(section: &config::Admin, _cx: &Context) -> Vec<Problem> {
        let mut p = crate::identity::check_dids("admin.operators", &section.operators);
        let max = halo::request::MAX_WINDOW_SECS;
        if section.signature_window_secs == 0 || section.signature_window_secs > max {
            p.push(Problem::new(
                "admin.signature_window_secs",
                format!("must be between 1 and {max} seconds"),
            ));
        }
        p
    }

    async fn start(
        section: config::Admin,
        cx: &Context,
        deps: AdminDeps,
    ) -> Result<Started<AdminHandle>, StartError> {
        let token = crate::datadir::admin_token(&cx.data_dir).map_err(AdminError::from)?;
        let listener =
            TcpListener::bind(section.listen)
                .await
                .map_err(|source| AdminError::Bind {
                    addr: section.listen,
                    source,
                })?;
        let addr = listener.local_addr()?;
        let operators = Operators::new(&section, &deps.identity);
        let shared = Arc::new(Shared {
            deps,
            token_hash: Sha256::digest(token.as_bytes()).into(),
            domain: cx.domain.clone(),
            data_dir: cx.data_dir.clone(),
            operators: Mutex::new(operators),
            disk: tokio::sync::Mutex::new(None),
        });
        let handle = AdminHandle {
            shared: shared.clone(),
        };
        let api = Router::new()
            .route("/api/status", get(status))
            .route("/api/identity", get(identity))
            .route("/api/echo/admission", post(admission))
            .route("/api/reload", post(reload))
            .route("/api/echo/spaces", get(spaces_list))
            .route("/api/echo/spaces/{space}", get(space_show))
            .route("/api/echo/spaces/{space}/query", get(space_query))
            .route("/api/echo/spaces/{space}/export", get(space_export))
            .route(
                "/api/echo/import",
                post(space_import).layer(DefaultBodyLimit::max(1 << 30)),
            )
            .route("/api/backup", get(backup))
            .route("/api/processes", get(processes_list))
            .route("/api/processes/{name}", get(process_show))
            .route("/api/processes/{name}/logs", get(process_logs))
            .route("/api/processes/{name}/{action}", post(process_action))
            .route("/api/apps", get(list_apps))
            .route(
                "/api/apps/{name}",
                put(publish)
                    .delete(remove)
                    .layer(DefaultBodyLimit::disable()),
            )
            .route("/api/apps/{name}/rollback", post(rollback))
            .route("/api/certs", get(certs))
            .route("/api/certs/renew", post(renew_certs))
            .route("/api/dns", get(dns_status))
            .route("/api/dns/records", post(dns_add).delete(dns_remove))
            .layer(middleware::from_fn_with_state(shared.clone(), authorize));
        let router = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/identity", get(public_identity))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .route("/", get(console_asset))
            .route("/index.html", get(console_asset))
            .route("/console.js", get(console_asset))
            .route("/console.css", get(console_asset))
            .merge(api)
            .with_state(shared);
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let mut tasks = Tasks::new("admin", cancel).listening("admin", addr);
        tasks.spawn(async move {
            let serve =
                axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "admin listener failed");
            }
        });
        tracing::info!(%addr, "admin listening");
        Ok(Started {
            handle,
            running: Box::new(tasks),
        })
    }
}

/// `/api` requires an operator's signature (`Kube-Ed25519 …`, see `halo::request`) or the
/// bearer token. A signed request's body reaches the handler through a check of its hash:
/// a body other than the one signed fails to read, so the handler refuses it.
async fn authorize(State(st): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Some(auth) = auth else {
        return unauthorized("a signed request (Kube-Ed25519) or a bearer token is required");
    };
    if let Some(signed) = Signed::parse(&auth) {
        let signed = match signed {
            Ok(s) => s,
            Err(e) => return unauthorized(e),
        };
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_owned();
        let now = crate::service::unix_now();
        let verified =
            lock(&st.operators)
                .verifier
                .verify(&signed, req.method().as_str(), &path, now);
        return match verified {
            Ok(operator) => {
                tracing::debug!(%operator, method = %req.method(), %path, "signed admin request");
                let (parts, body) = req.into_parts();
                let body = hash_checked(body, signed.body);
                next.run(Request::from_parts(parts, body)).await
            }
            Err(e) => {
                tracing::warn!(error = %e, key = %signed.key, "signed admin request refused");
                unauthorized(e)
            }
        };
    }
    let given = auth
        .strip_prefix("Bearer ")
        .map(|t| Sha256::digest(t.trim().as_bytes()));
    // Comparing digests keeps the comparison independent of where the token differs.
    match given {
        Some(d) if d.as_slice() == st.token_hash => next.run(req).await,
        _ => unauthorized("a valid bearer token is required"),
    }
}

fn unauthorized(message: impl std::fmt::Display) -> Response {
    error(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

#[derive(Debug, thiserror::Error)]
#[error("the body does not match the hash the request signed")]
struct BodyMismatch;

/// The body, failing at its end unless it hashed to `expected` (lowercase hex SHA-256).
fn hash_checked(body: Body, expected: String) -> Body {
    let hasher = Arc::new(Mutex::new(Sha256::new()));
    let feed = hasher.clone();
    let data = body.into_data_stream().map(move |chunk| {
        if let Ok(bytes) = &chunk {
            feed.lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .update(bytes);
        }
        chunk.map_err(axum::BoxError::from)
    });
    let end = futures_util::stream::once(async move {
        let digest =
            std::mem::take(&mut *hasher.lock().unwrap_or_else(|p| p.into_inner())).finalize();
        (hex::encode(digest) != expected).then(|| Err(axum::BoxError::from(BodyMismatch)))
    })
    .filter_map(std::future::ready);
    Body::from_stream(data.chain(end))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdmissionQuery {
    space: String,
    credentials: Vec<halo::credential::Credential>,
}

/// Would this KUBE replicate a space with these credentials? The same decision ECHO makes
/// (`halo::admission::decide`), so an operator or app developer can see why not.
async fn admission(
    State(st): State<Arc<Shared>>,
    body: Result<Json<AdmissionQuery>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(q) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", e.body_text()),
    };
    let now = crate::service::unix_now();
    let clock = halo::space::Clock {
        now,
        skew: halo::space::SKEW_SECS,
    };
    let decision = halo::admission::decide(
        &st.deps.admit,
        &st.deps.identity,
        &q.space,
        &q.credentials,
        clock,
    );
    Json(match decision {
        halo::admission::Decision::Replicate { granted_by, role } => json!({
            "replicate": true, "granted_by": granted_by, "role": role,
        }),
        halo::admission::Decision::Refuse(why) => json!({
            "replicate": false, "reason": why.to_string(),
        }),
    })
    .into_response()
}

/// A snapshot of the data dir as `.tar.gz` (see `backup`): written to a temporary file in
/// the data dir off the async threads, then streamed; the file is unlinked once open.
async fn backup(State(st): State<Arc<Shared>>) -> Response {
    let tmp = st.data_dir.join(format!(
        "{}{}.tar.gz",
        crate::backup::BACKUP_PREFIX,
        hex::encode(rand::random::<[u8; 6]>())
    ));
    let (path, apps, identity) = (tmp.clone(), st.deps.apps.clone(), st.deps.identity.clone());
    let echo = st.deps.echo.as_ref().map(|e| e.store().clone());
    let data_dir = st.data_dir.clone();
    let written = tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| crate::backup::BackupError::Io {
                path: path.clone(),
                source,
            })?;
        let now = crate::service::unix_now();
        crate::backup::write(
            &data_dir,
            std::io::BufWriter::new(file),
            &apps,
            echo.as_deref(),
            &identity,
            now,
        )
    })
    .await;
    let opened = match written {
        Ok(Ok(())) => tokio::fs::File::open(&tmp).await,
        Ok(Err(e)) => {
            let _ = std::fs::remove_file(&tmp);
            tracing::error!(error = %e, "backup failed");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "backup_failed", e);
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return error(StatusCode::INTERNAL_SERVER_ERROR, "backup_failed", e);
        }
    };
    let _ = std::fs::remove_file(&tmp);
    match opened {
        Ok(file) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/gzip"),
            )],
            Body::from_stream(tokio_util::io::ReaderStream::new(file)),
        )
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "backup_failed", e),
    }
}

/// Reloads the configuration (as SIGHUP does) and says what applied, or why not.
async fn reload(State(st): State<Arc<Shared>>) -> Response {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if st.deps.reload.send(tx).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "kube is stopping",
        );
    }
    match rx.await {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(problems)) => error(StatusCode::UNPROCESSABLE_ENTITY, "config_refused", problems),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "kube is stopping",
        ),
    }
}

/// KUBE's public key, unauthenticated: operator clients sign requests for it.
/// KUBE's identity and clock: what a signer needs (the console signs with the server's
/// time, so a skewed browser clock still makes a valid request).
async fn public_identity(State(st): State<Arc<Shared>>) -> Response {
    Json(json!({"identity": st.deps.identity, "time": crate::service::unix_now()})).into_response()
}

async fn console_asset(uri: http::Uri) -> Response {
    console::asset(uri.path()).unwrap_or_else(|| StatusCode::NOT_FOUND.into_response())
}

/// KUBE's key and its operators (`kube identity` asks the running KUBE through this).
async fn identity(State(st): State<Arc<Shared>>) -> Response {
    Json(json!({
        "identity": st.deps.identity,
        "operators": lock(&st.operators).dids,
    }))
    .into_response()
}

fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    (
        status,
        Json(json!({"error": code, "message": message.to_string()})),
    )
        .into_response()
}

/// One place that maps store errors to HTTP answers.
fn store_error(e: StoreError) -> Response {
    match &e {
        StoreError::Bundle(BundleError::UploadTooLarge { .. }) => {
            error(StatusCode::PAYLOAD_TOO_LARGE, "bundle_too_large", &e)
        }
        StoreError::Bundle(_) => error(StatusCode::UNPROCESSABLE_ENTITY, "bundle_refused", &e),
        StoreError::NoApp(_) | StoreError::NoVersion { .. } => {
            error(StatusCode::NOT_FOUND, "not_found", &e)
        }
        StoreError::NoPrevious(_) => error(StatusCode::CONFLICT, "no_previous_version", &e),
        StoreError::Io { .. } | StoreError::Corrupt { .. } => {
            tracing::error!(error = %e, "app store failure");
            error(StatusCode::INTERNAL_SERVER_ERROR, "storage", &e)
        }
    }
}

/// The object store failed or held something refused: nothing changed here.
fn cluster_error(e: ClusterError) -> Response {
    match e {
        ClusterError::Local(e) => store_error(e),
        ClusterError::Conflict(_) => error(StatusCode::CONFLICT, "changed_meanwhile", &e),
        e => {
            tracing::error!(error = %e, "object store failure");
            error(StatusCode::BAD_GATEWAY, "object_store", &e)
        }
    }
}

async fn readyz(State(st): State<Arc<Shared>>) -> Response {
    if st.deps.board.is_ready() {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

async fn metrics(State(st): State<Arc<Shared>>) -> Response {
    if !st.deps.metrics_enabled {
        return error(StatusCode::NOT_FOUND, "not_found", "metrics are disabled");
    }
    st.deps
        .metrics
        .apps_published
        .set(st.deps.apps.list().len() as i64);
    st.deps.metrics.cert_not_after.reset();
    for c in st.deps.tls.certificates() {
        let secs = crate::service::unix(c.not_after);
        for n in &c.names {
            st.deps
                .metrics
                .cert_not_after
                .with_label_values(&[n])
                .set(secs as i64);
        }
    }
    let mut r = st.deps.metrics.render().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

#[derive(Serialize)]
struct AppView {
    name: String,
    url: Option<String>,
    current: u64,
    versions: Vec<apps::store::VersionSummary>,
}

fn app_url(st: &Shared, name: &str) -> Option<String> {
    st.deps.https.get().map(|h| {
        let port = if h.public_port == 443 {
            String::new()
        } else {
            format!(":{}", h.public_port)
        };
        format!("https://{name}.{}{port}/", st.domain)
    })
}

fn app_views(st: &Shared) -> Vec<AppView> {
    st.deps
        .apps
        .list()
        .into_iter()
        .map(|a| AppView {
            url: app_url(st, &a.name),
            name: a.name,
            current: a.current,
            versions: a.versions,
        })
        .collect()
}

async fn status(State(st): State<Arc<Shared>>) -> Response {
    let disk = {
        // One walk at a time; callers in between get its result.
        let mut cached = st.disk.lock().await;
        match *cached {
            Some((at, bytes)) if at.elapsed() < DISK_USE_TTL => bytes,
            _ => {
                let dir = st.data_dir.clone();
                let bytes = tokio::task::spawn_blocking(move || disk_use(&dir))
                    .await
                    .unwrap_or(0);
                *cached = Some((std::time::Instant::now(), bytes));
                bytes
            }
        }
    };
    let echo_status = match &st.deps.echo {
        Some(e) => e.op(crate::replica::Op::Status).await.map(|mut s| {
            s.links = e.links();
            s
        }),
        None => None,
    };
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "domain": st.domain,
        "identity": st.deps.identity,
        "ready": st.deps.board.is_ready(),
        "uptime_secs": st.deps.board.uptime().as_secs(),
        "services": st.deps.board.services(),
        "tls": {
            "mode": format!("{:?}", st.deps.tls.mode).to_lowercase(),
            "ca": st.deps.tls.ca_path.as_ref().map(|p| p.display().to_string()),
        },
        "certificates": st.deps.tls.certificates(),
        "acme": st.deps.tls.acme_status(),
        "dns": st.deps.dns.as_ref().map(|d| d.status()),
        "apps": app_views(&st),
        "signal": {
            "connections": st.deps.metrics.signal_connections.get(),
            "peers": st.deps.metrics.signal_peers.get(),
            "swarms": st.deps.metrics.signal_swarms.get(),
        },
        "turn": {
            "allocations": st.deps.metrics.turn_allocations.get(),
            "relayed_bytes": st.deps.metrics.turn_relayed_bytes.get(),
        },
        "echo": echo_status,
        "processes": match st.deps.processes.get() {
            Some(p) => p.list().await,
            None => Vec::new(),
        },
        "disk": {
            "data_dir": st.data_dir.display().to_string(),
            "bytes": disk,
        },
    }))
    .into_response()
}

fn echo_disabled() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "echo_disabled",
        "ECHO is not enabled (echo.enabled)",
    )
}

fn no_space(space: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no_space",
        format!("no space {space} here"),
    )
}

fn gone() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "echo_stopped",
        "ECHO is stopping",
    )
}

async fn spaces_list(State(st): State<Arc<Shared>>) -> Response {
    let Some(echo) = st.deps.echo.as_ref() else {
        return echo_disabled();
    };
    match echo.op(crate::replica::Op::List).await {
        Some(list) => Json(list).into_response(),
        None => gone(),
    }
}

async fn space_show(State(st): State<Arc<Shared>>, Path(space): Path<String>) -> Response {
    let Some(echo) = st.deps.echo.as_ref() else {
        return echo_disabled();
    };
    match echo
        .op(|tx| crate::replica::Op::Show(space.clone(), tx))
        .await
    {
        Some(Some(detail)) => Json(detail).into_response(),
        Some(None) => no_space(&space),
        None => gone(),
    }
}

/// `?type=T&where=prop=value&where=…` (each `where` percent-encoded as a whole).
async fn space_query(
    State(st): State<Arc<Shared>>,
    Path(space): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let Some(echo) = st.deps.echo.as_ref() else {
        return echo_disabled();
    };
    let mut kind = None;
    let mut wheres = Vec::new();
    for pair in query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_encoding::percent_decode_str(&v.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned();
        match k {
            "type" => kind = Some(v),
            "where" => match v.split_once('=') {
                Some((p, want)) => wheres.push((p.to_owned(), want.to_owned())),
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        format!("where={v}: expected prop=value"),
                    );
                }
            },
            _ => {}
        }
    }
    let Some(kind) = kind else {
        return error(StatusCode::BAD_REQUEST, "bad_request", "type=… is required");
    };
    let answer = echo
        .op(|reply| crate::replica::Op::Query {
            space: space.clone(),
            kind,
            wheres,
            reply,
        })
        .await;
    match answer {
        Some(Some(found)) => Json(found).into_response(),
        Some(None) => no_space(&space),
        None => gone(),
    }
}

async fn space_export(State(st): State<Arc<Shared>>, Path(space): Path<String>) -> Response {
    let Some(echo) = st.deps.echo.as_ref() else {
        return echo_disabled();
    };
    match echo
        .op(|tx| crate::replica::Op::Export(space.clone(), tx))
        .await
    {
        Some(Some(Ok(export))) => Json(export).into_response(),
        Some(Some(Err(why))) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unreadable",
            format!("a document of the space cannot be read now: {why}"),
        ),
        Some(None) => no_space(&space),
        None => gone(),
    }
}

async fn space_import(
    State(st): State<Arc<Shared>>,
    body: Result<Json<echo::repo::Export>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Some(echo) = st.deps.echo.as_ref() else {
        return echo_disabled();
    };
    let Json(export) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", e.body_text()),
    };
    match echo
        .op(|tx| crate::replica::Op::Import(Box::new(export), tx))
        .await
    {
        Some(Ok(space)) => Json(json!({ "imported": space })).into_response(),
        Some(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, "import_refused", e),
        None => gone(),
    }
}

/// Bytes under `dir` (files only; symlinks not followed), for `kube status`.
fn disk_use(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

async fn list_apps(State(st): State<Arc<Shared>>) -> Response {
    Json(app_views(&st)).into_response()
}

/// Streams the upload into a staging file (bounded by `apps.max_bundle_bytes`), then
/// unpacks and activates it off the async threads.
async fn publish(State(st): State<Arc<Shared>>, Path(name): Path<String>, body: Body) -> Response {
    if let Err(why) = apps::check_name(&name) {
        return error(StatusCode::BAD_REQUEST, "bad_name", why);
    }
    let store = st.deps.apps.clone();
    let limit = store.limits().max_bytes;
    let staging = match store.staging_dir() {
        Ok(d) => d,
        Err(e) => return store_error(e),
    };
    // If the client goes away mid-upload this handler is dropped; the guard still removes
    // what was received.
    let _cleanup = StagingGuard(staging.clone());
    let upload = staging.join("upload.tar.gz");
    let received = async {
        let mut file = tokio::fs::File::create(&upload).await?;
        let mut stream = body.into_data_stream();
        let mut total: u64 = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(std::io::Error::other)?;
            total += chunk.len() as u64;
            if total > limit {
                return Ok(Err(BundleError::UploadTooLarge { limit }));
            }
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        Ok::<_, std::io::Error>(Ok(()))
    }
    .await;
    let refused = match received {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(StoreError::Bundle(e)),
        Err(e) => Some(StoreError::Bundle(BundleError::Archive {
            reason: format!("upload interrupted: {e}"),
        })),
    };
    if let Some(e) = refused {
        let _ = tokio::fs::remove_dir_all(&staging).await;
        return store_error(e);
    }
    let now = crate::service::unix_now();
    let task_store = store.clone();
    let task_name = name.clone();
    let result = match st.deps.cluster.clone() {
        // Checked here, then sent to the store, then served here.
        Some(cluster) => {
            let dir = staging.clone();
            let staged = tokio::task::spawn_blocking(move || task_store.stage(&upload, &dir)).await;
            match staged {
                Ok(Ok(staged)) => match cluster.publish(&name, staged, now).await {
                    Ok(m) => Ok(Ok(m)),
                    Err(ClusterError::Local(e)) => Ok(Err(e)),
                    Err(e) => return cluster_error(e),
                },
                Ok(Err(e)) => Ok(Err(e)),
                Err(e) => Err(e),
            }
        }
        None => {
            tokio::task::spawn_blocking(move || task_store.publish(&task_name, &upload, now)).await
        }
    };
    match result {
        Ok(Ok(m)) => {
            tracing::info!(app = %name, version = m.version, files = m.files.len(), "published");
            name_app_hosts(&st).await;
            Json(json!({"name": name, "version": m.version, "files": m.files.len(), "bytes": m.bytes(), "url": app_url(&st, &name)})).into_response()
        }
        Ok(Err(e)) => {
            tracing::warn!(app = %name, error = %e, "publish refused");
            store_error(e)
        }
        Err(e) => {
            let _ = tokio::fs::remove_dir_all(&staging).await;
            tracing::error!(app = %name, error = %e, "publish task failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "publish failed",
            )
        }
    }
}

/// Keeps the certificate naming every app host (local mode); the app serves either way, so
/// a failure is logged, not returned.
async fn name_app_hosts(st: &Shared) {
    crate::supervisor::name_hosts(
        &st.deps.apps,
        &st.deps.routes,
        st.deps.dns.as_ref(),
        &st.deps.tls,
    )
    .await;
}

async fn certs(State(st): State<Arc<Shared>>) -> Response {
    Json(json!({
        "mode": format!("{:?}", st.deps.tls.mode).to_lowercase(),
        "certificates": st.deps.tls.certificates(),
        "acme": st.deps.tls.acme_status(),
    }))
    .into_response()
}

fn processes_of(st: &Shared) -> Result<&crate::processes::ProcessesHandle, Box<Response>> {
    st.deps.processes.get().ok_or_else(|| {
        Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting",
            "processes start after every service",
        ))
    })
}

fn unknown_process(e: crate::processes::ProcessError) -> Response {
    error(StatusCode::NOT_FOUND, "unknown_process", e)
}

async fn processes_list(State(st): State<Arc<Shared>>) -> Response {
    match processes_of(&st) {
        Ok(p) => Json(json!({ "processes": p.list().await })).into_response(),
        Err(r) => *r,
    }
}

async fn process_show(State(st): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    match processes_of(&st) {
        Ok(p) => match p.show(&name).await {
            Ok(s) => Json(s).into_response(),
            Err(e) => unknown_process(e),
        },
        Err(r) => *r,
    }
}

/// `?since=<unix ms>&lines=<n>` (at most 10,000 lines; default 200).
#[derive(serde::Deserialize)]
struct LogQuery {
    since: Option<u64>,
    lines: Option<usize>,
}

async fn process_logs(
    State(st): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(q): Query<LogQuery>,
) -> Response {
    let p = match processes_of(&st) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let lines = q.lines.unwrap_or(200).min(10_000);
    match p.logs(&name, q.since, lines).await {
        Ok(lines) => Json(json!({ "lines": lines })).into_response(),
        Err(e) => unknown_process(e),
    }
}

async fn process_action(
    State(st): State<Arc<Shared>>,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let p = match processes_of(&st) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let done = match action.as_str() {
        "start" => p.start(&name).await,
        "stop" => p.stop(&name).await,
        "restart" => p.restart(&name).await,
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "unknown_action",
                "expected start, stop or restart",
            );
        }
    };
    match done {
        Ok(()) => match p.show(&name).await {
            Ok(s) => Json(s).into_response(),
            Err(e) => unknown_process(e),
        },
        Err(e) => unknown_process(e),
    }
}

async fn renew_certs(State(st): State<Arc<Shared>>) -> Response {
    match st.deps.tls.renew() {
        Ok(()) => Json(json!({"renewing": true})).into_response(),
        Err(why) => error(StatusCode::CONFLICT, "not_renewable", why),
    }
}

fn dns_disabled() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "dns_disabled",
        "dns.enabled is false",
    )
}

async fn dns_status(State(st): State<Arc<Shared>>) -> Response {
    match &st.deps.dns {
        Some(dns) => Json(dns.status()).into_response(),
        None => dns_disabled(),
    }
}

/// Adds a run-time record: `{"name": "_acme-challenge", "type": "TXT", "value": "\"x\""}`.
async fn dns_add(
    State(st): State<Arc<Shared>>,
    spec: Result<Json<RecordSpec>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(spec) = match spec {
        Ok(s) => s,
        Err(e) => return bad_json(e),
    };
    let Some(dns) = st.deps.dns.clone() else {
        return dns_disabled();
    };
    let r = tokio::task::spawn_blocking(move || dns.add(spec)).await;
    dns_answer(r, |()| json!({"added": true}))
}

/// A JSON body that does not parse, answered like every other refusal.
fn bad_json(e: axum::extract::rejection::JsonRejection) -> Response {
    error(e.status(), "bad_request", e.body_text())
}

/// The one mapping from a DNS change's outcome to an answer.
fn dns_answer<T>(
    r: Result<Result<T, crate::dns::DnsError>, tokio::task::JoinError>,
    ok: impl FnOnce(T) -> serde_json::Value,
) -> Response {
    match r {
        Ok(Ok(v)) => Json(ok(v)).into_response(),
        Ok(Err(e @ crate::dns::DnsError::Record(_))) => {
            error(StatusCode::BAD_REQUEST, "bad_record", e)
        }
        Ok(Err(e @ crate::dns::DnsError::Secondary(_))) => {
            error(StatusCode::CONFLICT, "secondary", e)
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "dns", e),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "dns task failed",
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveRecord {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    value: Option<String>,
}

/// Removes run-time records of a name and type (one value, when given).
async fn dns_remove(
    State(st): State<Arc<Shared>>,
    r: Result<Json<RemoveRecord>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(r) = match r {
        Ok(r) => r,
        Err(e) => return bad_json(e),
    };
    let Some(dns) = st.deps.dns.clone() else {
        return dns_disabled();
    };
    let r =
        tokio::task::spawn_blocking(move || dns.remove(&r.name, &r.kind, r.value.as_deref())).await;
    dns_answer(r, |n| json!({"removed": n}))
}

/// Removes an upload's staging dir when the request ends, however it ends.
struct StagingGuard(std::path::PathBuf);

impl Drop for StagingGuard {
    fn drop(&mut self) {
        if self.0.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.0)
        {
            tracing::warn!(path = %self.0.display(), error = %e, "cannot remove staging dir");
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    version: Option<u64>,
}

async fn rollback(
    State(st): State<Arc<Shared>>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(why) = apps::check_name(&name) {
        return error(StatusCode::BAD_REQUEST, "bad_name", why);
    }
    let req: RollbackBody = if body.is_empty() {
        RollbackBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", e),
        }
    };
    let store = st.deps.apps.clone();
    let n = name.clone();
    let result = match &st.deps.cluster {
        Some(cluster) => match cluster.rollback(&name, req.version).await {
            Ok(m) => Ok(Ok(m)),
            Err(ClusterError::Local(e)) => Ok(Err(e)),
            Err(e) => return cluster_error(e),
        },
        None => tokio::task::spawn_blocking(move || store.rollback(&n, req.version)).await,
    };
    match result {
        Ok(Ok(m)) => {
            tracing::info!(app = %name, version = m.version, "rolled back");
            Json(json!({"name": name, "version": m.version, "url": app_url(&st, &name)}))
                .into_response()
        }
        Ok(Err(e)) => store_error(e),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "rollback failed",
        ),
    }
}

async fn remove(State(st): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    if let Err(why) = apps::check_name(&name) {
        return error(StatusCode::BAD_REQUEST, "bad_name", why);
    }
    let store = st.deps.apps.clone();
    let n = name.clone();
    let result = match &st.deps.cluster {
        Some(cluster) => match cluster.remove(&name).await {
            Ok(()) => Ok(Ok(())),
            Err(ClusterError::Local(e)) => Ok(Err(e)),
            Err(e) => return cluster_error(e),
        },
        None => tokio::task::spawn_blocking(move || store.remove(&n)).await,
    };
    match result {
        Ok(Ok(())) => {
            tracing::info!(app = %name, "removed");
            name_app_hosts(&st).await;
            Json(json!({"name": name, "removed": true})).into_response()
        }
        Ok(Err(e)) => store_error(e),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "remove failed",
        ),
    }
}
