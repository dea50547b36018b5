//! The `apps` service: versioned app bundles on disk and how requests to them are answered.
//! `bundle`, `manifest` and `serve` are pure; `store` and the functions here do the I/O.

pub mod bundle;
pub mod cluster;
pub mod manifest;
pub mod serve;
pub mod store;

use std::io::SeekFrom;
use std::sync::Arc;

use axum::body::Body;
use http::{HeaderMap, Method, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::service::{Context, Idle, Service, StartError, Started};
pub use store::{AppStore, StoreError};

/// App names are DNS labels: they become `<name>.<domain>`. The one home of this rule.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "app name {name:?} must be a DNS label: 1 to 63 lowercase letters, digits and inner hyphens"
        ))
    }
}

/// What other services get from `apps`.
pub type AppsHandle = Arc<AppStore>;

/// What `apps` hands out: the store served from, and with `storage` the cluster's bundles.
pub struct AppsStarted {
    pub store: AppsHandle,
    pub cluster: Option<Arc<cluster::Cluster>>,
}

/// The `apps` service.
pub struct Apps;

impl Service for Apps {
    const NAME: &'static str = "apps";
    type Section = config::Apps;
    /// The object store, when `storage` names one.
    type Deps = crate::storage::StorageHandle;
    type Handle = AppsStarted;

    fn check(_section: &config::Apps, _cx: &Context) -> Vec<config::Problem> {
        // Its limits are checked where they are typed, in the config crate.
        Vec::new()
    }

    async fn start(
        section: config::Apps,
        cx: &Context,
        storage: crate::storage::StorageHandle,
    ) -> Result<Started<AppsStarted>, StartError> {
        let limits = limits(&section);
        let root = cx.data_dir.join("apps");
        let keep = section.keep_versions;
        let store = Arc::new(
            tokio::task::spawn_blocking(move || AppStore::open(&root, limits, keep)).await??,
        );
        let Some(objects) = storage else {
            return Ok(Started {
                handle: AppsStarted {
                    store,
                    cluster: None,
                },
                running: Box::new(Idle("apps")),
            });
        };
        // Ready once serving what the cluster serves; while the store cannot be reached,
        // what is here is served and joining is tried again at every poll.
        let cluster = cluster::Cluster::new(objects, store.clone());
        let joined = match cluster.join().await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "cannot join the cluster's apps in the object store yet; serving the apps here");
                false
            }
        };
        let cancel = tokio_util::sync::CancellationToken::new();
        let mut tasks = crate::service::Tasks::new("apps", cancel.clone());
        tasks.spawn(cluster::poll(cluster.clone(), joined, cancel));
        Ok(Started {
            handle: AppsStarted {
                store,
                cluster: Some(cluster),
            },
            running: Box::new(tasks),
        })
    }
}

/// Answers one request for app `name` (the driver around `serve::plan`).
pub async fn respond(
    store: &AppStore,
    name: &str,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Response<Body> {
    let Some(manifest) = store.current(name) else {
        return text(StatusCode::NOT_FOUND, "no such app\n");
    };
    match serve::plan(&manifest, method, path, headers) {
        serve::Plan::Status {
            status,
            headers,
            body,
        } => {
            let mut r = text(status, body);
            r.headers_mut().extend(headers);
            r
        }
        serve::Plan::File {
            status,
            headers,
            file,
            range,
            body,
        } => {
            let span = range.clone().unwrap_or(0..file.size);
            let len = span.end - span.start;
            let body = if body {
                match read_blob(store, name, &file.hash, file.size, span.start, len).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(app = name, hash = %file.hash, error = %e, "blob unreadable");
                        return text(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "stored file unreadable\n",
                        );
                    }
                }
            } else {
                Body::empty()
            };
            let mut r = Response::new(body);
            *r.status_mut() = status;
            r.headers_mut().extend(headers);
            r.headers_mut()
                .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
            r
        }
    }
}

/// The body for `len` bytes at `start` of a blob: small files from memory (read once),
/// larger ones streamed from disk.
async fn read_blob(
    store: &AppStore,
    name: &str,
    hash: &str,
    size: u64,
    start: u64,
    len: u64,
) -> std::io::Result<Body> {
    let range = start as usize..(start + len) as usize;
    if size <= store::SMALL_FILE {
        if let Some(data) = store.cached(hash) {
            return Ok(Body::from(data.slice(range)));
        }
        let data = bytes::Bytes::from(tokio::fs::read(store.blob_path(name, hash)).await?);
        if data.len() as u64 != size {
            return Err(std::io::Error::other("stored file has the wrong size"));
        }
        store.remember(hash, data.clone());
        return Ok(Body::from(data.slice(range)));
    }
    let mut f = tokio::fs::File::open(store.blob_path(name, hash)).await?;
    if start > 0 {
        f.seek(SeekFrom::Start(start)).await?;
    }
    Ok(Body::from_stream(tokio_util::io::ReaderStream::new(
        f.take(len),
    )))
}

/// A plain-text answer: a static text costs no copy, a formatted one is moved in.
pub fn text(status: StatusCode, body: impl Into<std::borrow::Cow<'static, str>>) -> Response<Body> {
    let body = body.into();
    let empty = body.is_empty();
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    if !empty {
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    r
}

pub fn limits(section: &config::Apps) -> bundle::Limits {
    bundle::Limits {
        max_bytes: section.max_bundle_bytes,
        max_files: section.max_files,
    }
}
