//! The data dir: created 0700, locked by one `kube start` at a time, and the helpers every
//! service uses to write files so that a crash leaves either the old or the new content.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another kube is already running on data dir {dir} ({holder}); stop it first or use another data_dir"
    )]
    Locked { dir: PathBuf, holder: String },
    #[error(
        "data dir {dir} has format {found}, newer than this kube ({version}) understands (up to {FORMAT}); run the newer kube, or restore a backup made by this version"
    )]
    TooNew {
        dir: PathBuf,
        found: u32,
        version: &'static str,
    },
    #[error("{path}: not a data dir format file: {reason}")]
    BadFormat { path: PathBuf, reason: String },
}

/// The layout of the data dir this binary reads and writes. A newer binary migrates an
/// older layout on start; an older binary refuses a newer one.
///
/// - 0: no `format.json` (kube before the format was recorded); same files as 1.
/// - 1: `format.json` present.
pub const FORMAT: u32 = 1;

/// `<data_dir>/format.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FormatFile {
    pub format: u32,
    /// The kube version that last wrote it.
    pub written_by: String,
}

pub fn format_path(dir: &Path) -> PathBuf {
    dir.join("format.json")
}

/// The data dir's format: 0 when it has none yet.
pub fn read_format(dir: &Path) -> Result<u32, DataDirError> {
    let path = format_path(dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str::<FormatFile>(&text)
            .map(|f| f.format)
            .map_err(|e| DataDirError::BadFormat {
                path,
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io(&path)(e)),
    }
}

/// Checks the format on start (with the lock held): refuses a newer one, migrates an older
/// one step by step, and records the current one.
pub fn check_format(dir: &Path) -> Result<(), DataDirError> {
    let found = read_format(dir)?;
    if found > FORMAT {
        return Err(DataDirError::TooNew {
            dir: dir.to_owned(),
            found,
            version: env!("CARGO_PKG_VERSION"),
        });
    }
    if found < FORMAT {
        // 0 → 1: the layout is unchanged; only the record is new.
        tracing::info!(from = found, to = FORMAT, "data dir format migrated");
    }
    let record = FormatFile {
        format: FORMAT,
        written_by: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let text = serde_json::to_string_pretty(&record).unwrap_or_default();
    let current = std::fs::read_to_string(format_path(dir)).unwrap_or_default();
    if current != text {
        write_atomic(&format_path(dir), text.as_bytes())?;
    }
    Ok(())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates `dir` and its parents; the data dir itself is 0700.
pub fn create_private_dir(dir: &Path) -> Result<(), DataDirError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))
}

/// Writes a file atomically: a temporary sibling, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataDirError> {
    write_with_mode(path, bytes, 0o644)
}

/// As [`write_atomic`], readable by the owner only (keys, tokens).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), DataDirError> {
    write_with_mode(path, bytes, 0o600)
}

fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DataDirError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let tmp = parent.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        hex::encode(rand::random::<[u8; 6]>())
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(parent)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io(path))
}

/// Makes a rename or a new entry in `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The lock held for the life of `kube start`: released by the kernel when the process dies,
/// so a `kill -9` never leaves a stale lock.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

pub fn lock(dir: &Path) -> Result<Lock, DataDirError> {
    let path = dir.join("kube.lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .map(|pid| format!("pid {pid}"))
                .unwrap_or_else(|| "lock held".into());
            return Err(DataDirError::Locked {
                dir: dir.to_owned(),
                holder,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
    }
    file.set_len(0).map_err(io(&path))?;
    writeln!(file, "{}", std::process::id()).map_err(io(&path))?;
    Ok(Lock { _file: file })
}

/// The bearer token local scripts and the CLI use on the admin API; created on first start.
pub fn admin_token(dir: &Path) -> Result<String, DataDirError> {
    let path = token_path(dir);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&path)(e)),
    }
    let token = hex::encode(rand::random::<[u8; 32]>());
    write_private(&path, format!("{token}\n").as_bytes())?;
    Ok(token)
}

pub fn token_path(dir: &Path) -> PathBuf {
    dir.join("admin.token")
}

/// Where a running KUBE can be reached, written once it is ready, for the CLI.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunInfo {
    pub pid: u32,
    pub admin: String,
    pub https: Option<String>,
    pub http: Option<String>,
    pub domain: String,
    pub public_https_port: Option<u16>,
    /// KUBE's did:key: what operator signatures name.
    #[serde(default)]
    pub identity: String,
}

pub fn run_info_path(dir: &Path) -> PathBuf {
    dir.join("run.json")
}
