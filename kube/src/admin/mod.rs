//! The `admin` service: the JSON admin API behind a bearer token (`<data_dir>/admin.token`),
//! and `/metrics`, `/healthz`, `/readyz` on the same listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use config::Problem;
use futures_util::StreamExt;
use http::{HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
    pub tls: TlsHandle,
    /// None when `dns.enabled` is false.
    pub dns: Option<DnsHandle>,
    /// Filled in once `http` has started (it starts after `admin`).
    pub https: Arc<std::sync::OnceLock<HttpsHandle>>,
}

struct Shared {
    deps: AdminDeps,
    token_hash: [u8; 32],
    domain: String,
}

pub struct AdminService;

impl Service for AdminService {
    const NAME: &'static str = "admin";
    type Section = config::Admin;
    type Deps = AdminDeps;
    type Handle = ();

    fn check(_section: &config::Admin, _cx: &Context) -> Vec<Problem> {
        Vec::new()
    }

    async fn start(
        section: config::Admin,
        cx: &Context,
        deps: AdminDeps,
    ) -> Result<Started<()>, StartError> {
        let token = crate::datadir::admin_token(&cx.data_dir).map_err(AdminError::from)?;
        let listener =
            TcpListener::bind(section.listen)
                .await
                .map_err(|source| AdminError::Bind {
                    addr: section.listen,
                    source,
                })?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            deps,
            token_hash: Sha256::digest(token.as_bytes()).into(),
            domain: cx.domain.clone(),
        });
        let api = Router::new()
            .route("/api/status", get(status))
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
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
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
            handle: (),
            running: Box::new(tasks),
        })
    }
}

/// Bearer token check for `/api`. Operator signatures (HALO) will sit beside it.
async fn authorize(State(st): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| Sha256::digest(t.trim().as_bytes()));
    // Comparing digests keeps the comparison independent of where the token differs.
    match given {
        Some(d) if d.as_slice() == st.token_hash => next.run(req).await,
        _ => error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        ),
    }
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
        let secs = c
            .not_after
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
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
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "domain": st.domain,
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
    }))
    .into_response()
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
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let task_store = store.clone();
    let task_name = name.clone();
    let result =
        tokio::task::spawn_blocking(move || task_store.publish(&task_name, &upload, now)).await;
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
    let names: Vec<String> = st.deps.apps.list().into_iter().map(|a| a.name).collect();
    if let Some(dns) = &st.deps.dns {
        let (dns, names) = (dns.clone(), names.clone());
        match tokio::task::spawn_blocking(move || dns.set_apps(names)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot update the app hosts in DNS"),
            Err(e) => tracing::error!(error = %e, "dns update task failed"),
        }
    }
    if let Err(e) = st.deps.tls.set_app_hosts(names).await {
        tracing::error!(error = %e, "cannot reissue the local certificate for the app hosts");
    }
}

async fn certs(State(st): State<Arc<Shared>>) -> Response {
    Json(json!({
        "mode": format!("{:?}", st.deps.tls.mode).to_lowercase(),
        "certificates": st.deps.tls.certificates(),
        "acme": st.deps.tls.acme_status(),
    }))
    .into_response()
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
async fn dns_add(State(st): State<Arc<Shared>>, Json(spec): Json<RecordSpec>) -> Response {
    let Some(dns) = st.deps.dns.clone() else {
        return dns_disabled();
    };
    let r = tokio::task::spawn_blocking(move || dns.add(spec)).await;
    dns_answer(r, |()| json!({"added": true}))
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
async fn dns_remove(State(st): State<Arc<Shared>>, Json(r): Json<RemoveRecord>) -> Response {
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
    match tokio::task::spawn_blocking(move || store.rollback(&n, req.version)).await {
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
    let store = st.deps.apps.clone();
    let n = name.clone();
    match tokio::task::spawn_blocking(move || store.remove(&n)).await {
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
