//! Bundles shared through the object store (`storage`): a publish, rollback or removal at
//! any KUBE of a cluster is written to the store first, and every KUBE polls the store and
//! adopts it into its own data dir, which stays what requests are served from.
//!
//! In the store (below `storage.prefix`): `apps/<app>/blobs/<sha256>` (content-addressed,
//! checked against their hash when fetched), `apps/<app>/versions/<n>.json` (manifests, each
//! number claimed with `If-None-Match: *`, so two KUBEs publishing at once get two
//! versions), and `heads/<app>`: the version served, or `removed <last version>`. One
//! listing of `heads/` tells a KUBE which heads changed (by ETag) since it last looked.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::AppsHandle;
use super::manifest::{AppSettings, Manifest};
use super::store::{self, StoreError};
use crate::storage::{Cond, MAX_SMALL_OBJECT, ObjectStore, StorageError};

/// Blobs sent or fetched at once.
const PARALLEL: usize = 8;
/// A blob no kept version names is deleted from the store only this long after it was
/// written: a publish under way at another KUBE may have sent it before its manifest.
const BLOB_GRACE_SECS: u64 = 3600;
/// How long an app whose copy could not be adopted rests before it is tried again.
const RETRY_REFUSED: Duration = Duration::from_secs(30);
/// Versions tried when claiming a number another KUBE took meanwhile.
const CLAIMS: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Local(#[from] StoreError),
    #[error("object store: {0}")]
    Storage(#[from] StorageError),
    #[error("object store copy refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Conflict(String),
}

/// For `move_head`: the head must still be `current`, or another KUBE changed the app
/// meanwhile and the operator's request no longer means what it meant.
fn still(name: &str, current: u64) -> impl Fn(Option<Head>) -> Result<(), ClusterError> + '_ {
    move |now| {
        if now == Some(Head::Version(current)) {
            Ok(())
        } else {
            Err(ClusterError::Conflict(format!(
                "{name} changed at another KUBE meanwhile"
            )))
        }
    }
}

/// The number after `v`, refusing to wrap.
fn next(v: u64) -> Result<u64, ClusterError> {
    v.checked_add(1)
        .filter(|n| *n < u64::MAX / 2)
        .ok_or_else(|| ClusterError::Refused(format!("version {v} is the last there can be")))
}

/// What `heads/<app>` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    Version(u64),
    /// Removed; the last version it had (numbers go on from there).
    Removed(u64),
}

impl Head {
    pub fn parse(bytes: &[u8]) -> Option<Head> {
        let text = std::str::from_utf8(bytes).ok()?.trim();
        match text.strip_prefix("removed") {
            Some(last) => last.trim().parse().ok().map(Head::Removed),
            None => text.parse().ok().map(Head::Version),
        }
    }

    pub fn text(self) -> String {
        match self {
            Head::Version(v) => format!("{v}\n"),
            Head::Removed(v) => format!("removed {v}\n"),
        }
    }
}

fn head_key(name: &str) -> String {
    format!("heads/{name}")
}
fn version_key(name: &str, v: u64) -> String {
    format!("apps/{name}/versions/{v}.json")
}
fn blob_key(name: &str, hash: &str) -> String {
    format!("apps/{name}/blobs/{hash}")
}

/// A staging directory removed when dropped.
struct StagingDir(PathBuf);

impl Drop for StagingDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The bundles of a cluster, as this KUBE sees them.
pub struct Cluster {
    store: Arc<ObjectStore>,
    apps: AppsHandle,
    /// The ETag of each head last adopted: a poll reads only heads that changed.
    seen: Mutex<HashMap<String, String>>,
    /// Apps whose copy in the store could not be adopted: why (logged once), the head's
    /// ETag then, and when. Such a head rests `RETRY_REFUSED` unless it changes.
    failing: Mutex<HashMap<String, (String, String, std::time::Instant)>>,
    /// One change at a time from this KUBE (admin requests and the poll).
    ops: tokio::sync::Mutex<()>,
    /// Bumped whenever the apps served changed through the store.
    changed: watch::Sender<u64>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    pub fn new(store: Arc<ObjectStore>, apps: AppsHandle) -> Arc<Cluster> {
        Arc::new(Cluster {
            store,
            apps,
            seen: Mutex::new(HashMap::new()),
            failing: Mutex::new(HashMap::new()),
            ops: tokio::sync::Mutex::new(()),
            changed: watch::channel(0).0,
        })
    }

    /// Changes whenever apps came, went or changed version through the store.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn poll_every(&self) -> Duration {
        self.store.poll
    }

    /// Publishes a checked upload: blobs, then a new version number claimed in the store,
    /// then the head (never moved back past a newer version another KUBE published
    /// meanwhile); then here.
    pub async fn publish(
        &self,
        name: &str,
        staged: store::Staged,
        now: u64,
    ) -> Result<Arc<Manifest>, ClusterError> {
        super::check_name(name).map_err(ClusterError::Refused)?;
        let _one = self.ops.lock().await;
        self.send_blobs(name, &staged.files, |hash| staged.blobs.join(hash))
            .await?;
        let head = self.head(name).await?;
        let first = head.as_ref().map(|(h, _)| *h);
        let last = self
            .versions(name)
            .await?
            .into_iter()
            .max()
            .unwrap_or(0)
            .max(match head {
                Some((Head::Version(v) | Head::Removed(v), _)) => v,
                None => 0,
            })
            .max(self.apps.next_version(name) - 1);
        let mut manifest = Manifest {
            version: next(last)?,
            published: now,
            files: staged.files.clone(),
            settings: staged.settings.clone(),
        };
        self.claim(name, &mut manifest).await?;
        let v = manifest.version;
        // Every blob must still be there before the head names them (pruning at another
        // KUBE may have raced the upload).
        self.send_blobs(name, &staged.files, |hash| staged.blobs.join(hash))
            .await?;
        self.move_head(name, Head::Version(v), |current| match current {
            Some(Head::Version(h)) if h > v => Err(ClusterError::Conflict(format!(
                "version {h} of {name} was published at another KUBE meanwhile; this upload is kept as version {v}"
            ))),
            Some(removed @ Head::Removed(_)) if Some(removed) != first => {
                Err(ClusterError::Conflict(format!(
                    "{name} was removed at another KUBE meanwhile"
                )))
            }
            _ => Ok(()),
        })
        .await?;
        let apps = self.apps.clone();
        let n = name.to_owned();
        let m = tokio::task::spawn_blocking(move || apps.commit(&n, &staged, Some(v), now))
            .await
            .map_err(|e| ClusterError::Refused(e.to_string()))??;
        // Tidying the store is no part of the publish: it runs on after the answer.
        let (store, apps, n) = (self.store.clone(), self.apps.clone(), name.to_owned());
        tokio::spawn(async move {
            if let Err(e) = prune(&store, &apps, &n).await {
                tracing::warn!(app = %n, error = %e, "cannot prune old versions in the object store");
            }
        });
        Ok(m)
    }

    /// Writes `head` over the head read (only if it is still that one), after `allow`
    /// agreed with the head read; tried again when another KUBE wrote in between. The next
    /// poll looks at the head again whatever happens here.
    async fn move_head(
        &self,
        name: &str,
        head: Head,
        allow: impl Fn(Option<Head>) -> Result<(), ClusterError>,
    ) -> Result<(), ClusterError> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        for _ in 0..CLAIMS {
            let current = self.head(name).await?;
            allow(current.as_ref().map(|(h, _)| *h))?;
            let cond = match current {
                Some((_, etag)) if !etag.is_empty() => Cond::Match(etag),
                Some(_) => {
                    return Err(ClusterError::Refused(format!(
                        "the store gave heads/{name} no ETag: it cannot be changed safely"
                    )));
                }
                None => Cond::Absent,
            };
            match self
                .store
                .put_bytes(&head_key(name), head.text().into_bytes(), &cond)
                .await
            {
                Ok(_) => return Ok(()),
                Err(StorageError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ClusterError::Conflict(format!(
            "the head of {name} kept changing at other KUBEs"
        )))
    }

    /// Writes `manifest` under the first free version number from its own.
    async fn claim(&self, name: &str, manifest: &mut Manifest) -> Result<(), ClusterError> {
        for _ in 0..CLAIMS {
            let json = serde_json::to_vec_pretty(&*manifest)
                .map_err(|e| ClusterError::Refused(e.to_string()))?;
            match self
                .store
                .put_bytes(&version_key(name, manifest.version), json, &Cond::Absent)
                .await
            {
                Ok(_) => return Ok(()),
                Err(StorageError::Conflict { .. }) => manifest.version = next(manifest.version)?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ClusterError::Conflict(format!(
            "{CLAIMS} version numbers of {name} taken while publishing"
        )))
    }

    /// Makes `version` (or the one before the current) the head, then serves it here. A
    /// head changed at another KUBE meanwhile fails it (409).
    pub async fn rollback(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<Arc<Manifest>, ClusterError> {
        super::check_name(name).map_err(ClusterError::Refused)?;
        let _one = self.ops.lock().await;
        let current = match self.head(name).await? {
            Some((Head::Version(v), _)) => v,
            _ => return Err(StoreError::NoApp(name.into()).into()),
        };
        let versions = self.versions(name).await?;
        let target = match version {
            Some(v) if versions.contains(&v) => v,
            Some(v) => {
                return Err(StoreError::NoVersion {
                    app: name.into(),
                    version: v,
                }
                .into());
            }
            None => versions
                .iter()
                .copied()
                .filter(|v| *v < current)
                .max()
                .ok_or_else(|| StoreError::NoPrevious(name.into()))?,
        };
        self.move_head(name, Head::Version(target), still(name, current))
            .await?;
        self.adopt(name, target).await
    }

    /// Removes `name` from the cluster: the head says so first (only over the head read),
    /// then its files go.
    pub async fn remove(&self, name: &str) -> Result<(), ClusterError> {
        super::check_name(name).map_err(ClusterError::Refused)?;
        let _one = self.ops.lock().await;
        let (current, last) = match self.head(name).await? {
            Some((Head::Version(v), _)) => (
                v,
                v.max(self.versions(name).await?.into_iter().max().unwrap_or(0)),
            ),
            _ => return Err(StoreError::NoApp(name.into()).into()),
        };
        self.move_head(name, Head::Removed(last), still(name, current))
            .await?;
        for o in self.store.list(&format!("apps/{name}/")).await? {
            self.store.delete(&o.key).await?;
        }
        let apps = self.apps.clone();
        let n = name.to_owned();
        match tokio::task::spawn_blocking(move || apps.remove(&n)).await {
            Ok(Ok(())) | Ok(Err(StoreError::NoApp(_))) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(ClusterError::Refused(e.to_string())),
        }
    }

    /// At start: apps only this KUBE has (it joins a cluster with them) are sent to the
    /// store, each as its current version, unless another KUBE sent one of that name
    /// first. Then every head is adopted.
    pub async fn join(&self) -> Result<(), ClusterError> {
        self.store.check_conditional_writes().await?;
        {
            let _one = self.ops.lock().await;
            let heads: Vec<String> = self
                .store
                .list("heads/")
                .await?
                .into_iter()
                .filter_map(|l| l.key.strip_prefix("heads/").map(str::to_owned))
                .collect();
            for app in self.apps.list() {
                if heads.contains(&app.name) {
                    continue;
                }
                // One app that cannot be sent keeps the others, and this KUBE, in the
                // cluster; it is sent at the next start.
                if let Err(e) = self.send_local(&app.name, app.current).await {
                    tracing::warn!(app = %app.name, error = %e, "cannot send this app to the object store; it stays served here only");
                }
            }
        }
        self.sync().await
    }

    /// Sends version `v` of a local app the store has no head for, and makes it the head
    /// unless another KUBE made one first.
    async fn send_local(&self, name: &str, v: u64) -> Result<(), ClusterError> {
        let (apps, n) = (self.apps.clone(), name.to_owned());
        let mut m = tokio::task::spawn_blocking(move || apps.manifest(&n, v))
            .await
            .map_err(|e| ClusterError::Refused(e.to_string()))??;
        self.send_blobs(name, &m.files, |hash| self.apps.blob_path(name, hash))
            .await?;
        // The number may be taken (a publish cut short before its head): the same
        // manifest is this one; another gets the next free number.
        let same = self.manifest(name, v).await.is_ok_and(|there| there == m);
        if !same {
            self.claim(name, &mut m).await?;
        }
        match self
            .store
            .put_bytes(
                &head_key(name),
                Head::Version(m.version).text().into_bytes(),
                &Cond::Absent,
            )
            .await
        {
            Ok(_) => {
                tracing::info!(
                    app = name,
                    version = m.version,
                    "app sent to the object store"
                );
                Ok(())
            }
            Err(StorageError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// One look at the store: every head that changed since the last look is adopted.
    /// An app whose copy is refused keeps serving what it served, and is tried again.
    pub async fn sync(&self) -> Result<(), ClusterError> {
        let _one = self.ops.lock().await;
        let heads = self.store.list("heads/").await?;
        let mut changed = false;
        for listed in heads {
            let Some(name) = listed.key.strip_prefix("heads/") else {
                continue;
            };
            if super::check_name(name).is_err() {
                continue;
            }
            let seen = self
                .seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(name)
                .is_some_and(|e| !e.is_empty() && *e == listed.etag);
            // A copy that was refused is not fetched again at every poll.
            let resting = self
                .failing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(name)
                .is_some_and(|(_, etag, since)| {
                    since.elapsed() < RETRY_REFUSED
                        && (listed.etag.is_empty() || *etag == listed.etag)
                });
            if seen || resting {
                continue;
            }
            match self.follow(name).await {
                Ok(moved) => {
                    changed |= moved;
                    self.seen
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(name.to_owned(), listed.etag);
                }
                Err(e) => {
                    // Said once per cause; tried again at every poll.
                    let text = e.to_string();
                    let again = self
                        .failing
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(
                            name.to_owned(),
                            (text.clone(), listed.etag.clone(), std::time::Instant::now()),
                        )
                        .is_some_and(|(before, _, _)| before == text);
                    if again {
                        tracing::debug!(app = name, error = %text, "still cannot adopt the app");
                    } else {
                        tracing::warn!(app = name, error = %text, "cannot adopt the app from the object store; still serving what was served");
                    }
                    continue;
                }
            }
            self.failing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(name);
        }
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    /// Serves here what the head of `name` says; true when that changed anything.
    async fn follow(&self, name: &str) -> Result<bool, ClusterError> {
        let current = self.apps.current(name).map(|m| m.version);
        match self.head(name).await? {
            None => Ok(false),
            Some((Head::Removed(_), _)) => {
                if current.is_none() {
                    return Ok(false);
                }
                let apps = self.apps.clone();
                let n = name.to_owned();
                match tokio::task::spawn_blocking(move || apps.remove(&n)).await {
                    Ok(Ok(())) | Ok(Err(StoreError::NoApp(_))) => {
                        tracing::info!(app = name, "removed at another KUBE");
                        Ok(true)
                    }
                    Ok(Err(e)) => Err(e.into()),
                    Err(e) => Err(ClusterError::Refused(e.to_string())),
                }
            }
            // The same number here: the same version only if the manifests agree (two
            // KUBEs that each published an app of one name before they met both have a 1).
            Some((Head::Version(v), _)) if current == Some(v) => {
                let here = self.apps.current(name);
                let there = self.manifest(name, v).await?;
                if here.is_some_and(|m| *m == there) {
                    return Ok(false);
                }
                self.adopt(name, v).await?;
                tracing::info!(
                    app = name,
                    version = v,
                    "the store's version replaces another of the same number here"
                );
                Ok(true)
            }
            Some((Head::Version(v), _)) => {
                self.adopt(name, v).await?;
                tracing::info!(
                    app = name,
                    version = v,
                    "version from the object store now served"
                );
                Ok(true)
            }
        }
    }

    /// Makes `version` of `name` current here, fetching it from the store unless the
    /// same version (the same manifest) is stored here already.
    async fn adopt(&self, name: &str, version: u64) -> Result<Arc<Manifest>, ClusterError> {
        let manifest = self.manifest(name, version).await?;
        let (apps, n) = (self.apps.clone(), name.to_owned());
        let local = tokio::task::spawn_blocking(move || {
            apps.has_version(&n, version)
                .then(|| apps.manifest(&n, version).ok())
                .flatten()
        })
        .await
        .map_err(|e| ClusterError::Refused(e.to_string()))?;
        // Gone with the guard, even when this future is dropped midway.
        let staging = StagingDir(self.apps.staging_dir()?);
        self.fetch_and_commit(name, manifest, local, &staging.0)
            .await
    }

    /// Version `version` of `name` as the store has it, checked against the limits.
    async fn manifest(&self, name: &str, version: u64) -> Result<Manifest, ClusterError> {
        let limits = self.apps.limits();
        let Some(obj) = self
            .store
            .get(&version_key(name, version), MAX_SMALL_OBJECT)
            .await?
        else {
            return Err(ClusterError::Refused(format!(
                "{name} version {version} has no manifest in the store"
            )));
        };
        let manifest = store::parse_manifest(&obj.bytes).map_err(ClusterError::Refused)?;
        if manifest.version != version {
            return Err(ClusterError::Refused(format!(
                "the manifest of {name} version {version} says version {}",
                manifest.version
            )));
        }
        let total = manifest
            .files
            .values()
            .try_fold(0u64, |sum, f| sum.checked_add(f.size));
        if manifest.files.len() as u64 > u64::from(limits.max_files)
            || total.is_none_or(|t| t > limits.max_bytes)
        {
            return Err(ClusterError::Refused(format!(
                "{name} version {version} is over apps.max_files or apps.max_bundle_bytes"
            )));
        }
        Ok(manifest)
    }

    async fn fetch_and_commit(
        &self,
        name: &str,
        manifest: Manifest,
        local: Option<Manifest>,
        staging: &Path,
    ) -> Result<Arc<Manifest>, ClusterError> {
        let apps = self.apps.clone();
        let n = name.to_owned();
        if local.as_ref() == Some(&manifest) {
            let v = manifest.version;
            let staged = store::Staged {
                files: manifest.files,
                settings: manifest.settings,
                blobs: staging.to_owned(),
            };
            return Ok(tokio::task::spawn_blocking(move || {
                apps.commit(&n, &staged, Some(v), manifest.published)
            })
            .await
            .map_err(|e| ClusterError::Refused(e.to_string()))??);
        }
        let blobs = staging.join("blobs");
        tokio::fs::create_dir_all(&blobs)
            .await
            .map_err(|e| ClusterError::Refused(format!("{}: {e}", blobs.display())))?;
        // Replacing another version of the same number takes the whole app away first,
        // blobs included: then every blob is fetched.
        let replace = local.is_some();
        let mut wanted: BTreeMap<String, u64> = BTreeMap::new();
        for f in manifest.files.values() {
            if replace || !self.apps.blob_path(name, &f.hash).exists() {
                wanted.insert(f.hash.clone(), f.size);
            }
        }
        let dir = &blobs;
        futures_util::stream::iter(wanted)
            .map(|(hash, size)| async move { self.fetch_blob(name, &hash, size, dir).await })
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<()>>()
            .await?;
        // The settings must be what the bundle's own kube.app.json says.
        let settings = match manifest.files.get("kube.app.json") {
            Some(f) => {
                let mut p = blobs.join(&f.hash);
                if !p.exists() {
                    p = self.apps.blob_path(name, &f.hash);
                }
                let bytes = tokio::fs::read(&p)
                    .await
                    .map_err(|e| ClusterError::Refused(format!("{}: {e}", p.display())))?;
                AppSettings::parse(&bytes, manifest.files.contains_key("index.html"))
                    .map_err(|e| ClusterError::Refused(e.to_string()))?
            }
            None => AppSettings::default(),
        };
        if settings != manifest.settings {
            return Err(ClusterError::Refused(format!(
                "{name} version {}: settings differ from its kube.app.json",
                manifest.version
            )));
        }
        let v = manifest.version;
        let published = manifest.published;
        let staged = store::Staged {
            files: manifest.files,
            settings: manifest.settings,
            blobs,
        };
        Ok(tokio::task::spawn_blocking(move || {
            // A version of the same number but other content (kept from before the app
            // was removed and published again): the app starts over from the store.
            if replace {
                apps.remove(&n)?;
            }
            apps.commit(&n, &staged, Some(v), published)
        })
        .await
        .map_err(|e| ClusterError::Refused(e.to_string()))??)
    }

    /// Fetches one blob into `dir`, checking its size and hash.
    async fn fetch_blob(
        &self,
        name: &str,
        hash: &str,
        size: u64,
        dir: &Path,
    ) -> Result<(), ClusterError> {
        let tmp = dir.join(format!(".part-{hash}"));
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| ClusterError::Refused(format!("{}: {e}", tmp.display())))?;
        let mut hasher = Sha256::new();
        let mut got = 0u64;
        let found = self
            .store
            .get_into(&blob_key(name, hash), size, &mut file, |chunk| {
                hasher.update(chunk);
                got += chunk.len() as u64;
            })
            .await?;
        if !found {
            return Err(ClusterError::Refused(format!(
                "blob {hash} of {name} is missing from the store"
            )));
        }
        if got != size || hex::encode(hasher.finalize()) != hash {
            return Err(ClusterError::Refused(format!(
                "blob {hash} of {name} in the store does not match its hash or size"
            )));
        }
        file.sync_all()
            .await
            .map_err(|e| ClusterError::Refused(e.to_string()))?;
        tokio::fs::rename(&tmp, dir.join(hash))
            .await
            .map_err(|e| ClusterError::Refused(e.to_string()))?;
        Ok(())
    }

    /// Sends each blob of `files` the store lacks, read from `path(hash)`.
    async fn send_blobs(
        &self,
        name: &str,
        files: &BTreeMap<String, super::manifest::FileEntry>,
        path: impl Fn(&str) -> PathBuf,
    ) -> Result<(), ClusterError> {
        // One listing says which blobs the store has (a new version mostly shares them).
        // One written more than half the pruning grace ago is sent again: pruning at
        // another KUBE may be about to take it as unused, and the write makes it young.
        let prefix = format!("apps/{name}/blobs/");
        let fresh_since = crate::service::unix_now().saturating_sub(BLOB_GRACE_SECS / 2);
        let have: std::collections::BTreeSet<String> = self
            .store
            .list(&prefix)
            .await?
            .into_iter()
            .filter(|l| l.modified.is_some_and(|t| t >= fresh_since))
            .filter_map(|l| l.key.strip_prefix(&prefix).map(str::to_owned))
            .collect();
        let mut unique: BTreeMap<String, u64> = BTreeMap::new();
        for f in files.values() {
            if !have.contains(&f.hash) {
                unique.insert(f.hash.clone(), f.size);
            }
        }
        futures_util::stream::iter(unique)
            .map(|(hash, size)| {
                let p = path(&hash);
                async move {
                    let key = blob_key(name, &hash);
                    let file = tokio::fs::File::open(&p)
                        .await
                        .map_err(|e| ClusterError::Refused(format!("{}: {e}", p.display())))?;
                    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
                    self.store.put(&key, body, size, &Cond::Any).await?;
                    Ok::<(), ClusterError>(())
                }
            })
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// The head of `name` and its ETag.
    async fn head(&self, name: &str) -> Result<Option<(Head, String)>, ClusterError> {
        read_head(&self.store, name).await
    }

    /// The version numbers of `name` in the store.
    async fn versions(&self, name: &str) -> Result<Vec<u64>, ClusterError> {
        versions(&self.store, name).await
    }
}

/// The head of `name` and its ETag.
async fn read_head(
    store: &ObjectStore,
    name: &str,
) -> Result<Option<(Head, String)>, ClusterError> {
    let Some(obj) = store.get(&head_key(name), 4096).await? else {
        return Ok(None);
    };
    let head = Head::parse(&obj.bytes).ok_or_else(|| {
        ClusterError::Refused(format!("heads/{name} is neither a version nor \"removed\""))
    })?;
    Ok(Some((head, obj.etag)))
}

/// The version numbers of `name` in the store.
async fn versions(store: &ObjectStore, name: &str) -> Result<Vec<u64>, ClusterError> {
    let prefix = format!("apps/{name}/versions/");
    Ok(store
        .list(&prefix)
        .await?
        .into_iter()
        .filter_map(|l| {
            l.key
                .strip_prefix(&prefix)
                .and_then(|f| f.strip_suffix(".json"))
                .and_then(|n| n.parse().ok())
        })
        .collect())
}

/// Keeps the newest `apps.keep_versions` versions of `name` in the store (and the one its
/// head names), and the blobs they name. Blobs are listed before manifests, and one is
/// deleted only `BLOB_GRACE_SECS` after it was last written: a publish under way sends
/// (or sends again) every blob it names before its manifest.
async fn prune(store: &ObjectStore, apps: &AppsHandle, name: &str) -> Result<(), ClusterError> {
    let prefix = format!("apps/{name}/blobs/");
    let version = async || -> Result<Option<u64>, ClusterError> {
        Ok(match read_head(store, name).await? {
            Some((Head::Version(v), _)) => Some(v),
            _ => None,
        })
    };
    let Some(current) = version().await? else {
        return Ok(());
    };
    let all = versions(store, name).await?;
    for v in store::versions_to_drop(&all, current, apps.keep_versions()) {
        // Read again before each: a rollback at another KUBE may have just made it current.
        if version().await? != Some(v) {
            store.delete(&version_key(name, v)).await?;
        }
    }
    let before = store.list(&prefix).await?;
    let mut live = std::collections::BTreeSet::new();
    for v in versions(store, name).await? {
        let Some(obj) = store.get(&version_key(name, v), MAX_SMALL_OBJECT).await? else {
            continue;
        };
        let m = store::parse_manifest(&obj.bytes).map_err(ClusterError::Refused)?;
        live.extend(m.files.into_values().map(|f| f.hash));
    }
    // Old in the listings before and after the manifests were read: a publish that sent
    // (or sent again) a blob meanwhile made it young in the second.
    let now = crate::service::unix_now();
    let old = |l: &crate::storage::Listed| l.modified.is_some_and(|t| t + BLOB_GRACE_SECS < now);
    let old_before: std::collections::BTreeSet<String> = before
        .iter()
        .filter(|l| old(l))
        .map(|l| l.key.clone())
        .collect();
    for blob in store.list(&prefix).await? {
        let Some(hash) = blob.key.strip_prefix(&prefix) else {
            continue;
        };
        if old(&blob) && old_before.contains(&blob.key) && !live.contains(hash) {
            store.delete(&blob.key).await?;
        }
    }
    Ok(())
}

/// Polls the store every `storage.poll_secs` until cancelled (joining first, when that
/// failed at start).
pub async fn poll(
    cluster: Arc<Cluster>,
    mut joined: bool,
    stop: tokio_util::sync::CancellationToken,
) {
    let every = cluster.poll_every();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let result = if joined {
            cluster.sync().await
        } else {
            cluster.join().await
        };
        match result {
            Ok(()) => joined = true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the object store; apps stay as they are")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Head;

    #[test]
    fn heads_are_read_and_written() {
        for h in [Head::Version(7), Head::Removed(3)] {
            assert_eq!(Head::parse(h.text().as_bytes()), Some(h));
        }
        assert_eq!(Head::parse(b"removed"), None);
        assert_eq!(Head::parse(b"-1"), None);
        assert_eq!(Head::parse(&[0xff, 0xfe]), None);
    }
}
