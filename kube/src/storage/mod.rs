//! The `storage` service: the S3-compatible object store the KUBEs of one cluster share
//! (`storage` in kube.yml). Requests are signed by `rusty-s3` (presigned, Sans-IO) and
//! sent with `reqwest`; what is kept there, and how KUBEs agree on it, lives with its
//! owner: bundles in `apps::cluster`, the certificate and its lease in `tls::shared`.
//!
//! Keys (below `storage.prefix`): `apps/<app>/blobs/<sha256>`, `apps/<app>/versions/<n>.json`,
//! `heads/<app>` (the version served, or `removed`), `certs/<domain>.json` and
//! `locks/acme/<domain>` (see `lease`).

pub mod lease;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use config::Problem;
use futures_util::StreamExt;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use crate::service::{Context, Idle, Service, StartError, Started};

/// How long a signed request stays valid: long enough to send a large blob.
const SIGNED_FOR: Duration = Duration::from_secs(600);
/// The largest object read whole into memory (manifests, heads, certificates, leases).
pub const MAX_SMALL_OBJECT: u64 = 16 << 20;
/// Listing pages followed at most (1,000 keys each).
const MAX_PAGES: usize = 100;
/// The longest a request for a small object may take, start to end.
const SMALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A large object gets this much time on top for each MiB.
const PER_MIB: Duration = Duration::from_secs(4);

/// How long a request carrying `len` bytes may take.
fn timeout_for(len: u64) -> Duration {
    SMALL_TIMEOUT
        + PER_MIB
            * u32::try_from(len >> 20)
                .unwrap_or(u32::MAX / 8)
                .min(1 << 20)
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{key}: changed in the store meanwhile (precondition failed)")]
    Conflict { key: String },
    #[error("{op} {key}: the store answered {status}: {body}")]
    Status {
        op: &'static str,
        key: String,
        status: u16,
        body: String,
    },
    #[error("{op} {key}: {reason}")]
    Transport {
        op: &'static str,
        key: String,
        reason: String,
    },
    #[error("{key}: larger than {limit} bytes")]
    TooLarge { key: String, limit: u64 },
    #[error("{0}")]
    Setup(String),
}

/// The condition of a write: none, only if absent, or only over the copy with this ETag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cond {
    Any,
    Absent,
    Match(String),
}

/// An object read whole, with its ETag (for a later conditional write).
#[derive(Clone, Debug)]
pub struct Object {
    pub bytes: Bytes,
    pub etag: String,
}

/// One key of a listing (without `storage.prefix`).
#[derive(Clone, Debug)]
pub struct Listed {
    pub key: String,
    /// Empty when the store does not say.
    pub etag: String,
    /// Unix seconds, when the store says.
    pub modified: Option<u64>,
}

/// The object store client every user of the store shares.
pub struct ObjectStore {
    bucket: Bucket,
    credentials: Credentials,
    http: reqwest::Client,
    prefix: String,
    /// How often users look for changes made by other KUBEs.
    pub poll: Duration,
    /// This KUBE in leases: its identity and a nonce of this run.
    pub holder: String,
    /// Set once the store was seen to honour conditional writes.
    conditional: tokio::sync::OnceCell<()>,
}

impl std::fmt::Debug for ObjectStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStore")
            .field("bucket", &self.bucket.base_url().as_str())
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl ObjectStore {
    /// A client for `section` (which has an endpoint), with credentials from the
    /// environment.
    pub fn new(section: &config::Storage, identity: &str) -> Result<ObjectStore, StorageError> {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    StorageError::Setup(format!("storage needs {name} in the environment"))
                })
        };
        let credentials = match std::env::var("AWS_SESSION_TOKEN").ok() {
            Some(token) if !token.is_empty() => Credentials::new_with_token(
                var("AWS_ACCESS_KEY_ID")?,
                var("AWS_SECRET_ACCESS_KEY")?,
                token,
            ),
            _ => Credentials::new(var("AWS_ACCESS_KEY_ID")?, var("AWS_SECRET_ACCESS_KEY")?),
        };
        ObjectStore::with_credentials(section, credentials, identity)
    }

    /// A client for `section` with these credentials.
    pub fn with_credentials(
        section: &config::Storage,
        credentials: Credentials,
        identity: &str,
    ) -> Result<ObjectStore, StorageError> {
        let setup = StorageError::Setup;
        let endpoint = section
            .endpoint
            .as_deref()
            .ok_or_else(|| setup("storage.endpoint is not set".into()))?;
        let url = endpoint
            .parse()
            .map_err(|e| setup(format!("storage.endpoint {endpoint:?}: {e}")))?;
        let style = if section.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(url, style, section.bucket.clone(), section.region.clone())
            .map_err(|e| setup(format!("storage.endpoint {endpoint:?}: {e}")))?;
        let tls = crate::tls::client_config(section.ca_file.as_deref()).map_err(setup)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| setup(e.to_string()))?;
        let mut prefix = section.prefix.trim_matches('/').to_owned();
        if !prefix.is_empty() {
            prefix.push('/');
        }
        Ok(ObjectStore {
            bucket,
            credentials,
            http,
            prefix,
            poll: Duration::from_secs(section.poll_secs.max(1)),
            holder: format!("{identity}#{}", hex::encode(rand::random::<[u8; 4]>())),
            conditional: tokio::sync::OnceCell::new(),
        })
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// A GET of `key` within `timeout`: None when there is no such key.
    async fn fetch(
        &self,
        key: &str,
        timeout: Duration,
    ) -> Result<Option<reqwest::Response>, StorageError> {
        let full = self.full(key);
        let url = self
            .bucket
            .get_object(Some(&self.credentials), &full)
            .sign(SIGNED_FOR);
        let resp = self
            .send("GET", key, self.http.get(url).timeout(timeout))
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        check("GET", key, resp).await.map(Some)
    }

    /// Reads `key` whole, refusing more than `limit` bytes; None when there is no such key.
    pub async fn get(&self, key: &str, limit: u64) -> Result<Option<Object>, StorageError> {
        let Some(resp) = self.fetch(key, SMALL_TIMEOUT).await? else {
            return Ok(None);
        };
        let etag = etag_of(&resp);
        let bytes = read_limited(key, resp, limit).await?;
        Ok(Some(Object { bytes, etag }))
    }

    /// Streams `key` into `out`, refusing more than `limit` bytes; false when there is no
    /// such key.
    pub async fn get_into(
        &self,
        key: &str,
        limit: u64,
        out: &mut (impl tokio::io::AsyncWrite + Unpin),
        seen: impl FnMut(&[u8]),
    ) -> Result<bool, StorageError> {
        let Some(resp) = self.fetch(key, timeout_for(limit)).await? else {
            return Ok(false);
        };
        copy_limited(key, resp, limit, out, seen).await?;
        Ok(true)
    }

    /// Writes `key` under `cond`; returns the new ETag. `Conflict` when the condition
    /// does not hold.
    pub async fn put(
        &self,
        key: &str,
        body: reqwest::Body,
        len: u64,
        cond: &Cond,
    ) -> Result<String, StorageError> {
        let full = self.full(key);
        // The condition goes as a plain header beside the presigned URL (only x-amz-*
        // headers must be signed).
        let header = match cond {
            Cond::Any => None,
            Cond::Absent => Some(("if-none-match", "*".to_owned())),
            Cond::Match(etag) => Some(("if-match", etag.clone())),
        };
        let url = self
            .bucket
            .put_object(Some(&self.credentials), &full)
            .sign(SIGNED_FOR);
        let mut req = self
            .http
            .put(url)
            .timeout(timeout_for(len))
            .header(http::header::CONTENT_LENGTH, len)
            .body(body);
        if let Some((name, value)) = header {
            req = req.header(name, value);
        }
        let resp = self.send("PUT", key, req).await?;
        // 412, or 409 from stores that say so for a write racing another; a write over a
        // copy that is gone altogether (If-Match) is answered 404.
        let failed = resp.status() == reqwest::StatusCode::PRECONDITION_FAILED
            || resp.status() == reqwest::StatusCode::CONFLICT
            || (matches!(cond, Cond::Match(_)) && resp.status() == reqwest::StatusCode::NOT_FOUND);
        if failed {
            return Err(StorageError::Conflict { key: key.into() });
        }
        let resp = check("PUT", key, resp).await?;
        Ok(etag_of(&resp))
    }

    /// Writes small `bytes` to `key` under `cond`.
    pub async fn put_bytes(
        &self,
        key: &str,
        bytes: Vec<u8>,
        cond: &Cond,
    ) -> Result<String, StorageError> {
        let len = bytes.len() as u64;
        self.put(key, reqwest::Body::from(bytes), len, cond).await
    }

    /// Removes `key` (absent already is fine).
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let full = self.full(key);
        let url = self
            .bucket
            .delete_object(Some(&self.credentials), &full)
            .sign(SIGNED_FOR);
        let resp = self
            .send("DELETE", key, self.http.delete(url).timeout(SMALL_TIMEOUT))
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        check("DELETE", key, resp).await.map(|_| ())
    }

    /// Every key below `prefix`, page after page.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StorageError> {
        let full = self.full(prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut action = self.bucket.list_objects_v2(Some(&self.credentials));
            action.with_prefix(full.as_str());
            if let Some(t) = &token {
                action.with_continuation_token(t.clone());
            }
            let url = action.sign(SIGNED_FOR);
            let resp = self
                .send("LIST", prefix, self.http.get(url).timeout(SMALL_TIMEOUT))
                .await?;
            let resp = check("LIST", prefix, resp).await?;
            let body = read_limited(prefix, resp, MAX_SMALL_OBJECT).await?;
            let page: ListPage = quick_xml::de::from_reader(body.as_ref())
                .map_err(|e| reason("LIST", prefix, format!("unreadable listing: {e}")))?;
            for c in page.contents {
                let Some(key) = c.key.strip_prefix(&self.prefix) else {
                    continue;
                };
                out.push(Listed {
                    key: key.to_owned(),
                    etag: c.etag,
                    modified: c.last_modified.as_deref().and_then(parse_time),
                });
            }
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(out),
            }
        }
        Err(reason("LIST", prefix, "more than 100,000 keys"))
    }

    /// Leases and version numbers rest on conditional writes: a store that ignores
    /// `If-None-Match` or `If-Match`, or gives no ETags, would let two KUBEs order or
    /// publish as one. Tried until it once succeeds: at start when the store answers, and
    /// before the first lease and the first join otherwise.
    pub async fn check_conditional_writes(&self) -> Result<(), StorageError> {
        self.conditional
            .get_or_try_init(|| self.probe_conditional_writes())
            .await
            .map(|_| ())
    }

    async fn probe_conditional_writes(&self) -> Result<(), StorageError> {
        let key = format!("probes/{}", hex::encode(rand::random::<[u8; 8]>()));
        let etag = self.put_bytes(&key, b"1".to_vec(), &Cond::Absent).await?;
        let read = self
            .get(&key, 16)
            .await?
            .map(|o| o.etag)
            .unwrap_or_default();
        if etag.is_empty() || read.is_empty() {
            let _ = self.delete(&key).await;
            return Err(StorageError::Setup(
                "the object store gives no ETag: writes over a copy read cannot be made \
                 conditional"
                    .into(),
            ));
        }
        let again = self.put_bytes(&key, b"2".to_vec(), &Cond::Absent).await;
        let stale = self
            .put_bytes(&key, b"3".to_vec(), &Cond::Match("\"stale\"".into()))
            .await;
        let _ = self.delete(&key).await;
        let ignored = |what: &str| {
            StorageError::Setup(format!(
                "the object store ignores {what} on PUT: it cannot hold leases (use a store \
                 with conditional writes: AWS S3, MinIO, Cloudflare R2, s3s)"
            ))
        };
        match (again, stale) {
            (Err(StorageError::Conflict { .. }), Err(StorageError::Conflict { .. })) => Ok(()),
            (Ok(_), _) => Err(ignored("If-None-Match")),
            (_, Ok(_)) => Err(ignored("If-Match")),
            (Err(StorageError::Conflict { .. }), Err(e)) | (Err(e), _) => Err(e),
        }
    }

    async fn send(
        &self,
        op: &'static str,
        key: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, StorageError> {
        req.send().await.map_err(|e| transport(op, key, e))
    }
}

/// A transport error without its URL: a presigned URL carries the access key id and a
/// signature that stays valid for minutes.
fn transport(op: &'static str, key: &str, e: reqwest::Error) -> StorageError {
    reason(op, key, e.without_url())
}

fn reason(op: &'static str, key: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Transport {
        op,
        key: key.into(),
        reason: e.to_string(),
    }
}

async fn check(
    op: &'static str,
    key: &str,
    resp: reqwest::Response,
) -> Result<reqwest::Response, StorageError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let body = read_limited(key, resp, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).chars().take(300).collect())
        .unwrap_or_default();
    Err(StorageError::Status {
        op,
        key: key.into(),
        status,
        body,
    })
}

fn etag_of(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(http::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn read_limited(
    key: &str,
    resp: reqwest::Response,
    limit: u64,
) -> Result<Bytes, StorageError> {
    let mut out = Vec::new();
    copy_limited(key, resp, limit, &mut out, |_| {}).await?;
    Ok(Bytes::from(out))
}

/// Streams an answer's body into `out` (showing each chunk to `seen` first), refusing more
/// than `limit` bytes: at once when the length is announced, else as soon as it is passed.
async fn copy_limited(
    key: &str,
    resp: reqwest::Response,
    limit: u64,
    out: &mut (impl tokio::io::AsyncWrite + Unpin),
    mut seen: impl FnMut(&[u8]),
) -> Result<(), StorageError> {
    use tokio::io::AsyncWriteExt;
    let too_large = || StorageError::TooLarge {
        key: key.into(),
        limit,
    };
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut total = 0u64;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| transport("GET", key, e))?;
        total += chunk.len() as u64;
        if total > limit {
            return Err(too_large());
        }
        seen(&chunk);
        out.write_all(&chunk)
            .await
            .map_err(|e| reason("GET", key, e))?;
    }
    Ok(())
}

/// One page of a ListObjectsV2 answer: what KUBE reads of it. Some stores leave out the
/// ETag (s3s-fs), so it may be empty.
#[derive(serde::Deserialize)]
struct ListPage {
    #[serde(rename = "Contents", default)]
    contents: Vec<ListEntry>,
    #[serde(rename = "NextContinuationToken")]
    next_continuation_token: Option<String>,
}

#[derive(serde::Deserialize)]
struct ListEntry {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "ETag", default)]
    etag: String,
    #[serde(rename = "LastModified")]
    last_modified: Option<String>,
}

/// An RFC 3339 time of a listing as Unix seconds.
fn parse_time(s: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp()).ok()
}

/// What other services get from `storage`: the client, when a store is configured.
pub type StorageHandle = Option<Arc<ObjectStore>>;

/// What `storage` needs besides its section: this KUBE's identity, named in leases.
pub struct StorageDeps {
    pub identity: String,
}

/// The `storage` service: checks the store answers, and hands out the client.
pub struct Storage;

impl Service for Storage {
    const NAME: &'static str = "storage";
    type Section = config::Storage;
    type Deps = StorageDeps;
    type Handle = StorageHandle;

    fn check(section: &config::Storage, _cx: &Context) -> Vec<Problem> {
        let mut problems = Vec::new();
        let Some(endpoint) = &section.endpoint else {
            return problems;
        };
        match endpoint.parse::<reqwest::Url>() {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
            _ => problems.push(Problem::new(
                "storage.endpoint",
                format!("{endpoint:?} is not an http:// or https:// URL"),
            )),
        }
        if section.bucket.is_empty() {
            problems.push(Problem::new(
                "storage.bucket",
                "is required when storage.endpoint is set",
            ));
        }
        if section.region.is_empty() {
            problems.push(Problem::new("storage.region", "must not be empty"));
        }
        if !(1..=3600).contains(&section.poll_secs) {
            problems.push(Problem::new(
                "storage.poll_secs",
                "must be between 1 and 3600",
            ));
        }
        if let Some(p) = &section.ca_file
            && !p.is_file()
        {
            problems.push(Problem::new(
                "storage.ca_file",
                format!("{} is not a readable file", p.display()),
            ));
        }
        problems
    }

    async fn start(
        section: config::Storage,
        _cx: &Context,
        deps: StorageDeps,
    ) -> Result<Started<StorageHandle>, StartError> {
        if section.endpoint.is_none() {
            return Ok(Started {
                handle: None,
                running: Box::new(Idle("storage")),
            });
        }
        let store = ObjectStore::new(&section, &deps.identity)?;
        // One listing: a store that refuses the credentials or has no such bucket is the
        // operator's to fix, so KUBE does not start; one that cannot be reached now may be
        // back soon, and its users try again.
        match store.list("heads/").await {
            Ok(_) => {
                store.check_conditional_writes().await?;
                tracing::info!(bucket = %section.bucket, endpoint = ?section.endpoint, "object store reachable")
            }
            Err(
                e @ StorageError::Status {
                    status: 400..=499, ..
                },
            ) => return Err(e.into()),
            Err(e) => {
                tracing::error!(error = %e, "the object store cannot be reached now; trying again as it is used")
            }
        }
        Ok(Started {
            handle: Some(Arc::new(store)),
            running: Box::new(Idle("storage")),
        })
    }
}

/// A client of a test store (s3s-fs in this process) for unit tests, as `holder`.
#[cfg(test)]
pub fn test_store(s3: &::tests::s3::S3, holder: &str) -> ObjectStore {
    let section = config::Storage {
        endpoint: Some(s3.endpoint()),
        bucket: ::tests::s3::BUCKET.into(),
        ..config::Storage::default()
    };
    let creds = Credentials::new(::tests::s3::ACCESS_KEY, ::tests::s3::SECRET_KEY);
    let mut store = ObjectStore::with_credentials(&section, creds, "test").expect("client");
    store.holder = holder.into();
    store
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_listing_is_read_with_or_without_etags() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>kube</Name><IsTruncated>true</IsTruncated>
<Contents><Key>heads/a</Key><LastModified>2026-12-03T14:26:07.000Z</LastModified><ETag>"e1"</ETag><Size>2</Size></Contents>
<Contents><Key>heads/b</Key><Size>2</Size></Contents>
<NextContinuationToken>heads/b</NextContinuationToken></ListBucketResult>"#;
        let page: super::ListPage = quick_xml::de::from_str(xml).unwrap();
        assert_eq!(page.contents.len(), 2);
        assert_eq!(page.contents[0].etag, "\"e1\"");
        assert_eq!(page.contents[1].etag, "");
        assert_eq!(page.next_continuation_token.as_deref(), Some("heads/b"));
    }

    /// A failed request's error names the operation and the key, never the presigned URL
    /// (the key id and a signature valid for minutes).
    #[tokio::test]
    async fn errors_never_carry_the_signed_url() {
        let section = config::Storage {
            endpoint: Some("http://127.0.0.1:1".into()),
            bucket: "kube".into(),
            ..config::Storage::default()
        };
        let creds = rusty_s3::Credentials::new("AKIDKUBETEST", "secret");
        let store = super::ObjectStore::with_credentials(&section, creds, "t").unwrap();
        let e = store.get("certs/kube.test.json", 100).await.unwrap_err();
        let text = e.to_string();
        assert!(text.contains("GET certs/kube.test.json"), "{text}");
        assert!(
            !text.contains("X-Amz") && !text.contains("AKIDKUBETEST"),
            "{text}"
        );
    }

    /// Against a real store: what is written is listed with its time and ETag (when the
    /// store gives one), read back with its ETag, and deleted.
    #[tokio::test]
    async fn a_real_store_lists_what_was_written() {
        let s3 = ::tests::s3::S3::start();
        let store = super::test_store(&s3, "t");
        let etag = store
            .put_bytes("apps/x/blobs/a", b"abc".to_vec(), &super::Cond::Absent)
            .await
            .unwrap();
        let listed = store.list("apps/x/").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].key, "apps/x/blobs/a");
        let now = crate::service::unix_now();
        assert!(
            listed[0]
                .modified
                .is_some_and(|t| t + 60 > now && t <= now + 60),
            "{:?}",
            listed[0].modified
        );
        let got = store.get("apps/x/blobs/a", 10).await.unwrap().unwrap();
        assert_eq!(&got.bytes[..], b"abc");
        assert_eq!(got.etag, etag);
        assert!(matches!(
            store.get("apps/x/blobs/a", 2).await,
            Err(super::StorageError::TooLarge { .. })
        ));
        store.delete("apps/x/blobs/a").await.unwrap();
        assert!(store.get("apps/x/blobs/a", 10).await.unwrap().is_none());
    }

    #[test]
    fn listing_times_are_read() {
        assert_eq!(super::parse_time("1970-01-01T00:01:40.000Z"), Some(100));
        assert_eq!(super::parse_time("yesterday"), None);
    }
}
