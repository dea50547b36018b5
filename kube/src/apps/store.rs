//! The app store on disk: `apps/<name>/blobs/<sha256>` (content-addressed files),
//! `apps/<name>/versions/<n>.json` (manifests) and `apps/<name>/current` (the version
//! served). A publish writes blobs, then the manifest, then switches `current` by rename,
//! each step fsynced, so a crash at any point leaves the previous version serving.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::bundle::{BundleError, Checker, EntryKind, Limits};
use super::manifest::{AppSettings, FileEntry, Manifest};
use crate::datadir;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("bundle refused: {0}")]
    Bundle(#[from] BundleError),
    #[error("no app named {0:?}")]
    NoApp(String),
    #[error("app {app:?} has no version {version}")]
    NoVersion { app: String, version: u64 },
    #[error("app {0:?} has no version before the current one")]
    NoPrevious(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid manifest: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

impl From<datadir::DataDirError> for StoreError {
    fn from(e: datadir::DataDirError) -> StoreError {
        match e {
            datadir::DataDirError::Io { path, source } => StoreError::Io { path, source },
            other => StoreError::Io {
                path: PathBuf::new(),
                source: std::io::Error::other(other.to_string()),
            },
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Debug)]
struct AppState {
    current: Arc<Manifest>,
    versions: BTreeMap<u64, VersionSummary>,
}

/// One version, as listed to operators.
#[derive(Clone, Debug, Serialize)]
pub struct VersionSummary {
    pub version: u64,
    pub published: u64,
    pub files: usize,
    pub bytes: u64,
}

impl VersionSummary {
    fn of(m: &Manifest) -> VersionSummary {
        VersionSummary {
            version: m.version,
            published: m.published,
            files: m.files.len(),
            bytes: m.bytes(),
        }
    }
}

/// An app, as listed to operators.
#[derive(Clone, Debug, Serialize)]
pub struct AppSummary {
    pub name: String,
    pub current: u64,
    pub versions: Vec<VersionSummary>,
}

#[derive(Debug)]
pub struct AppStore {
    root: PathBuf,
    /// Bundle limits and versions kept: read per publish, replaced on reload.
    settings: RwLock<(Limits, u32)>,
    apps: RwLock<BTreeMap<String, AppState>>,
    /// Serializes changes (publish commit, rollback, remove); reads never wait on it.
    write: Mutex<()>,
    /// Small files by content hash. Content-addressed, so an entry is never stale.
    small: Mutex<SmallCache>,
}

/// A checked upload, not yet stored: its files and settings, with the blobs in `blobs`.
#[derive(Debug)]
pub struct Staged {
    pub files: BTreeMap<String, FileEntry>,
    pub settings: AppSettings,
    pub blobs: PathBuf,
}

/// Files up to this size are kept in memory once read.
pub const SMALL_FILE: u64 = 64 * 1024;
/// The most the small-file cache holds; it starts over when full.
const SMALL_CACHE_BYTES: usize = 32 * 1024 * 1024;

#[derive(Debug, Default)]
struct SmallCache {
    files: std::collections::HashMap<String, bytes::Bytes>,
    bytes: usize,
}

impl AppStore {
    /// Opens `root`, dropping unfinished uploads and loading each app's current version.
    pub fn open(root: &Path, limits: Limits, keep: u32) -> Result<AppStore, StoreError> {
        std::fs::create_dir_all(root).map_err(io(root))?;
        let staging = root.join(".staging");
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
        }
        let mut apps = BTreeMap::new();
        for entry in std::fs::read_dir(root).map_err(io(root))? {
            let entry = entry.map_err(io(root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || super::check_name(&name).is_err() {
                continue;
            }
            let dir = entry.path();
            let current_path = dir.join("current");
            let Ok(text) = std::fs::read_to_string(&current_path) else {
                tracing::warn!(app = %name, "no current version: skipped");
                continue;
            };
            let current: u64 = text.trim().parse().map_err(|_| StoreError::Corrupt {
                path: current_path.clone(),
                reason: format!("{:?} is not a version number", text.trim()),
            })?;
            let mut versions = BTreeMap::new();
            let mut current_manifest = None;
            let vdir = dir.join("versions");
            for v in std::fs::read_dir(&vdir).map_err(io(&vdir))? {
                let p = v.map_err(io(&vdir))?.path();
                if p.extension().and_then(|e| e.to_str()) != Some("json") {
                    continue;
                }
                let m = read_manifest(&p)?;
                versions.insert(m.version, VersionSummary::of(&m));
                if m.version == current {
                    current_manifest = Some(Arc::new(m));
                }
            }
            let current = current_manifest.ok_or_else(|| StoreError::Corrupt {
                path: current_path,
                reason: format!("version {current} has no manifest"),
            })?;
            apps.insert(name, AppState { current, versions });
        }
        Ok(AppStore {
            root: root.to_owned(),
            settings: RwLock::new((limits, keep)),
            apps: RwLock::new(apps),
            write: Mutex::new(()),
            small: Mutex::new(SmallCache::default()),
        })
    }

    pub fn limits(&self) -> Limits {
        self.settings().0
    }

    /// Versions kept per app (`apps.keep_versions`).
    pub fn keep_versions(&self) -> u32 {
        self.settings().1
    }

    fn settings(&self) -> (Limits, u32) {
        *self
            .settings
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// New limits and versions kept (a reload); publishes under way keep the old limits,
    /// and the next publish prunes to the new count.
    pub fn set_limits(&self, limits: Limits, keep: u32) {
        *self
            .settings
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = (limits, keep);
    }

    /// Holds off publishes, rollbacks and removals (and their pruning) while the guard
    /// lives, so a backup sees one consistent set of versions and blobs.
    pub fn hold_writes(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A fresh directory for one upload; removed by `publish` whatever happens.
    pub fn staging_dir(&self) -> Result<PathBuf, StoreError> {
        let dir = self
            .root
            .join(".staging")
            .join(hex::encode(rand::random::<[u8; 8]>()));
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(dir)
    }

    /// The current version of `name`.
    pub fn current(&self, name: &str) -> Option<Arc<Manifest>> {
        self.read().get(name).map(|a| a.current.clone())
    }

    pub fn blob_path(&self, name: &str, hash: &str) -> PathBuf {
        self.root.join(name).join("blobs").join(hash)
    }

    /// A small file's bytes, when they were read before.
    pub fn cached(&self, hash: &str) -> Option<bytes::Bytes> {
        self.small
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .files
            .get(hash)
            .cloned()
    }

    /// Keeps a small file's bytes for the next request; the cache is bounded by starting
    /// over when full.
    pub fn remember(&self, hash: &str, data: bytes::Bytes) {
        let mut c = self.small.lock().unwrap_or_else(|p| p.into_inner());
        if c.bytes + data.len() > SMALL_CACHE_BYTES {
            c.files.clear();
            c.bytes = 0;
        }
        c.bytes += data.len();
        c.files.insert(hash.to_owned(), data);
    }

    pub fn list(&self) -> Vec<AppSummary> {
        self.read()
            .iter()
            .map(|(name, a)| AppSummary {
                name: name.clone(),
                current: a.current.version,
                versions: a.versions.values().cloned().collect(),
            })
            .collect()
    }

    /// Unpacks the `.tar.gz` at `upload` (inside a staging dir), checks every entry, stores
    /// the new version and makes it current. Blocking: run it off the async threads.
    pub fn publish(
        &self,
        name: &str,
        upload: &Path,
        now_unix: u64,
    ) -> Result<Arc<Manifest>, StoreError> {
        // The upload sits in its own staging dir, which goes away whatever happens.
        let Some(staging) = upload
            .parent()
            .filter(|p| p.starts_with(self.root.join(".staging")))
        else {
            return Err(StoreError::Io {
                path: upload.to_owned(),
                source: std::io::Error::other("an upload must be inside the staging dir"),
            });
        };
        let staging = staging.to_owned();
        let result = self.publish_staged(name, upload, &staging, now_unix);
        if let Err(e) = std::fs::remove_dir_all(&staging) {
            tracing::warn!(path = %staging.display(), error = %e, "cannot remove staging dir");
        }
        result
    }

    fn publish_staged(
        &self,
        name: &str,
        upload: &Path,
        staging: &Path,
        now_unix: u64,
    ) -> Result<Arc<Manifest>, StoreError> {
        let staged = self.stage(upload, staging)?;
        self.commit(name, &staged, None, now_unix)
    }

    /// Unpacks the `.tar.gz` at `upload` into `staging/blobs`, checking every entry against
    /// the limits: what a publish would store, not yet stored. Blocking.
    pub fn stage(&self, upload: &Path, staging: &Path) -> Result<Staged, StoreError> {
        let archive_err = |e: std::io::Error| BundleError::Archive {
            reason: e.to_string(),
        };
        let file = File::open(upload).map_err(io(upload))?;
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
        let mut checker = Checker::new(self.limits());
        let mut files = BTreeMap::new();
        let blobs = staging.join("blobs");
        std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
        for entry in archive.entries().map_err(archive_err)? {
            let mut entry = entry.map_err(archive_err)?;
            let kind = EntryKind::from_tar(entry.header().entry_type());
            let size = entry.size();
            let raw = entry.path_bytes().into_owned();
            let Some(path) = checker.entry(&raw, kind, size)? else {
                continue;
            };
            let hash = store_blob(&mut entry, &blobs).map_err(archive_err)?;
            files.insert(path, FileEntry { hash, size });
        }
        checker.finish()?;
        let settings = match files.get("kube.app.json") {
            Some(f) => {
                let p = blobs.join(&f.hash);
                let bytes = std::fs::read(&p).map_err(io(&p))?;
                AppSettings::parse(&bytes, files.contains_key("index.html"))?
            }
            None => AppSettings::default(),
        };
        Ok(Staged {
            files,
            settings,
            blobs,
        })
    }

    /// Stores `staged` as `version` (the next one when None) of `name`, published at
    /// `published`, and makes it current. A version already here is made current as it
    /// is. Blocking.
    pub fn commit(
        &self,
        name: &str,
        staged: &Staged,
        version: Option<u64>,
        published: u64,
    ) -> Result<Arc<Manifest>, StoreError> {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = version
            && self
                .read()
                .get(name)
                .is_some_and(|a| a.versions.contains_key(&v))
        {
            return self.make_current(name, v);
        }
        let app_dir = self.root.join(name);
        let app_blobs = app_dir.join("blobs");
        let versions_dir = app_dir.join("versions");
        let first = !app_dir.exists();
        for d in [&app_blobs, &versions_dir] {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        if first {
            // The new app's own directory entry must be durable too.
            datadir::sync_dir(&self.root).map_err(io(&self.root))?;
            datadir::sync_dir(&app_dir).map_err(io(&app_dir))?;
        }
        for f in staged.files.values() {
            let dst = app_blobs.join(&f.hash);
            if !dst.exists() {
                let src = staged.blobs.join(&f.hash);
                std::fs::rename(&src, &dst).map_err(io(&dst))?;
            }
        }
        datadir::sync_dir(&app_blobs).map_err(io(&app_blobs))?;
        let version = version.unwrap_or_else(|| self.next_version(name));
        let manifest = Manifest {
            version,
            published,
            files: staged.files.clone(),
            settings: staged.settings.clone(),
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| StoreError::Corrupt {
            path: versions_dir.clone(),
            reason: e.to_string(),
        })?;
        datadir::write_atomic(&versions_dir.join(format!("{version}.json")), &json)?;
        datadir::write_atomic(&app_dir.join("current"), format!("{version}\n").as_bytes())?;
        let manifest = Arc::new(manifest);
        {
            let mut apps = self.apps.write().unwrap_or_else(|p| p.into_inner());
            let state = apps.entry(name.to_owned()).or_insert_with(|| AppState {
                current: manifest.clone(),
                versions: BTreeMap::new(),
            });
            state.current = manifest.clone();
            state
                .versions
                .insert(version, VersionSummary::of(&manifest));
        }
        // The new version is live; failing to tidy old ones must not report it as failed.
        if let Err(e) = self.prune(name) {
            tracing::warn!(app = name, error = %e, "cannot prune old versions");
        }
        Ok(manifest)
    }

    /// The number the next local publish of `name` gets.
    pub fn next_version(&self, name: &str) -> u64 {
        self.read()
            .get(name)
            .and_then(|a| a.versions.keys().next_back().copied())
            .unwrap_or(0)
            + 1
    }

    /// Whether `version` of `name` is stored here.
    pub fn has_version(&self, name: &str, version: u64) -> bool {
        self.read()
            .get(name)
            .is_some_and(|a| a.versions.contains_key(&version))
    }

    /// A stored version's manifest.
    pub fn manifest(&self, name: &str, version: u64) -> Result<Manifest, StoreError> {
        read_manifest(
            &self
                .root
                .join(name)
                .join("versions")
                .join(format!("{version}.json")),
        )
    }

    /// Makes `version` (or the one before the current) current again.
    pub fn rollback(&self, name: &str, version: Option<u64>) -> Result<Arc<Manifest>, StoreError> {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let target = {
            let apps = self.read();
            let app = apps
                .get(name)
                .ok_or_else(|| StoreError::NoApp(name.into()))?;
            match version {
                Some(v) if app.versions.contains_key(&v) => v,
                Some(v) => {
                    return Err(StoreError::NoVersion {
                        app: name.into(),
                        version: v,
                    });
                }
                None => {
                    *app.versions
                        .range(..app.current.version)
                        .next_back()
                        .ok_or_else(|| StoreError::NoPrevious(name.into()))?
                        .0
                }
            }
        };
        self.make_current(name, target)
    }

    /// Switches `current` of `name` to a stored `version`; the caller holds `write`.
    fn make_current(&self, name: &str, version: u64) -> Result<Arc<Manifest>, StoreError> {
        let app_dir = self.root.join(name);
        let manifest = Arc::new(read_manifest(
            &app_dir.join("versions").join(format!("{version}.json")),
        )?);
        datadir::write_atomic(&app_dir.join("current"), format!("{version}\n").as_bytes())?;
        let mut apps = self.apps.write().unwrap_or_else(|p| p.into_inner());
        if let Some(app) = apps.get_mut(name) {
            app.current = manifest.clone();
        }
        Ok(manifest)
    }

    /// Removes an app and every version of it.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        if !self.read().contains_key(name) {
            return Err(StoreError::NoApp(name.into()));
        }
        // Renamed away first, so a crash mid-delete never leaves a half app behind; only
        // then is it gone from what is served.
        let dir = self.root.join(name);
        let trash = self.staging_dir()?.join(name);
        std::fs::rename(&dir, &trash).map_err(io(&dir))?;
        datadir::sync_dir(&self.root).map_err(io(&self.root))?;
        self.apps
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        if let Some(parent) = trash.parent() {
            std::fs::remove_dir_all(parent).map_err(io(parent))?;
        }
        Ok(())
    }

    /// Keeps the newest `keep` versions (and the current one), and only their blobs.
    fn prune(&self, name: &str) -> Result<(), StoreError> {
        let app_dir = self.root.join(name);
        let (drop, current) = {
            let apps = self.read();
            let Some(app) = apps.get(name) else {
                return Ok(());
            };
            let current = app.current.version;
            let versions: Vec<u64> = app.versions.keys().copied().collect();
            (
                versions_to_drop(&versions, current, self.settings().1),
                current,
            )
        };
        if drop.is_empty() {
            return Ok(());
        }
        for v in &drop {
            let p = app_dir.join("versions").join(format!("{v}.json"));
            std::fs::remove_file(&p).map_err(io(&p))?;
        }
        let mut live = BTreeSet::new();
        {
            let mut apps = self.apps.write().unwrap_or_else(|p| p.into_inner());
            if let Some(app) = apps.get_mut(name) {
                for v in &drop {
                    app.versions.remove(v);
                }
            }
        }
        let kept: Vec<u64> = self
            .read()
            .get(name)
            .map(|a| a.versions.keys().copied().collect())
            .unwrap_or_default();
        for v in kept.into_iter().chain([current]) {
            let m = read_manifest(&app_dir.join("versions").join(format!("{v}.json")))?;
            live.extend(m.files.into_values().map(|f| f.hash));
        }
        let blobs = app_dir.join("blobs");
        for entry in std::fs::read_dir(&blobs).map_err(io(&blobs))? {
            let entry = entry.map_err(io(&blobs))?;
            let hash = entry.file_name().to_string_lossy().into_owned();
            if !live.contains(&hash) {
                let p = entry.path();
                std::fs::remove_file(&p).map_err(io(&p))?;
            }
        }
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, AppState>> {
        self.apps.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Copies one entry into `dir` under its SHA-256 name, fsynced.
fn store_blob(reader: &mut impl Read, dir: &Path) -> std::io::Result<String> {
    let tmp = dir.join(format!(".tmp-{}", hex::encode(rand::random::<[u8; 8]>())));
    let mut out = File::create(&tmp)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    out.sync_all()?;
    let hash = hex::encode(hasher.finalize());
    std::fs::rename(&tmp, dir.join(&hash))?;
    Ok(hash)
}

/// Which versions pruning removes (pure): all but the newest `keep`, never `current`.
pub fn versions_to_drop(versions: &[u64], current: u64, keep: u32) -> Vec<u64> {
    let mut sorted = versions.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted
        .into_iter()
        .skip(keep as usize)
        .filter(|v| *v != current)
        .collect()
}

/// Reads a manifest, refusing one whose hashes could name anything but a blob.
fn read_manifest(path: &Path) -> Result<Manifest, StoreError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    parse_manifest(&bytes).map_err(|reason| StoreError::Corrupt {
        path: path.to_owned(),
        reason,
    })
}

/// A manifest from its JSON, refusing one whose hashes could name anything but a blob.
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, String> {
    let m: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    for (file, entry) in &m.files {
        if !is_hash(&entry.hash) {
            return Err(format!("{file}: {:?} is not a SHA-256 hash", entry.hash));
        }
    }
    Ok(m)
}

/// Whether `s` is a SHA-256 in lowercase hex, the only names blobs have.
pub fn is_hash(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::versions_to_drop;

    #[test]
    fn pruning_keeps_the_newest_and_the_current() {
        assert_eq!(versions_to_drop(&[1, 2, 3, 4, 5], 5, 2), vec![3, 2, 1]);
        assert_eq!(
            versions_to_drop(&[5, 1, 3, 2, 4], 2, 2),
            vec![3, 1],
            "a rolled-back current stays"
        );
        assert_eq!(versions_to_drop(&[1, 2], 2, 5), Vec::<u64>::new());
    }
}
