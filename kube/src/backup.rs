//! Backups: a consistent snapshot of the data dir as a `.tar.gz`, made by the running KUBE
//! (`GET /api/backup`, `kube backup FILE`), and its restore into an empty data dir
//! (`kube restore FILE`, KUBE stopped). Every durable file is written by an atomic rename,
//! so each file is read whole; app publishes are held off for the length of the snapshot so
//! versions and blobs agree. A certificate needs no hold: it is stored in its key's file
//! (`tls::pair`), so a renewal during the snapshot cannot part them. Per-run files
//! (`run.json`, `kube.lock`) and work in progress (`apps/.staging`, temporary files) are
//! left out.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::apps::AppsHandle;
use crate::datadir::{self, FORMAT};

/// The first entry of every backup.
pub const MANIFEST: &str = "kube-backup.json";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// The data dir format of the files inside.
    pub format: u32,
    pub kube: String,
    /// Unix seconds.
    pub created: u64,
    pub identity: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not empty: restore only into a new or empty data dir")]
    NotEmpty(PathBuf),
    #[error("not a kube backup: {0}")]
    NotABackup(String),
    #[error(
        "the backup has data dir format {0}, newer than this kube understands (up to {FORMAT})"
    )]
    TooNew(u32),
    #[error("unsafe entry in the backup, refused: {0}")]
    Unsafe(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Left out of backups: per-run files and work in progress.
fn skipped(rel: &Path) -> bool {
    let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
    rel == Path::new("run.json")
        || rel == Path::new("kube.lock")
        || rel.starts_with("apps/.staging")
        || (name.starts_with('.') && (name.ends_with(".tmp") || name.ends_with(".new")))
        || name.starts_with(BACKUP_PREFIX)
        || name.starts_with(RESTORE_PREFIX)
}

/// Writes the snapshot of `data_dir` to `out`.
pub fn write(
    data_dir: &Path,
    out: impl Write,
    apps: &AppsHandle,
    echo: Option<&echo::store::FileStore>,
    identity: &str,
    now: u64,
) -> Result<(), BackupError> {
    write_observed(data_dir, out, apps, echo, identity, now, &mut |_| {})
}

/// As [`write`], calling `before_read` with each file's relative path just before the file
/// is opened: tests change the data dir there, as a concurrent writer could.
fn write_observed(
    data_dir: &Path,
    out: impl Write,
    apps: &AppsHandle,
    echo: Option<&echo::store::FileStore>,
    identity: &str,
    now: u64,
    before_read: &mut dyn FnMut(&Path),
) -> Result<(), BackupError> {
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    let manifest = Manifest {
        format: FORMAT,
        kube: env!("CARGO_PKG_VERSION").to_owned(),
        created: now,
        identity: identity.to_owned(),
    };
    let bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o600);
    header.set_mtime(now);
    header.set_cksum();
    tar.append_data(&mut header, MANIFEST, bytes.as_slice())
        .map_err(io(Path::new(MANIFEST)))?;
    {
        let _held = apps.hold_writes();
        // ECHO's batches wait too: a snapshot and its log are read as one state.
        let _echo = echo.map(|e| e.hold_writes());
        add_dir(&mut tar, data_dir, Path::new(""), before_read)?;
    }
    let gz = tar.into_inner().map_err(io(data_dir))?;
    gz.finish()
        .map_err(io(data_dir))?
        .flush()
        .map_err(io(data_dir))?;
    Ok(())
}

fn add_dir<W: Write>(
    tar: &mut tar::Builder<W>,
    root: &Path,
    rel: &Path,
    before_read: &mut dyn FnMut(&Path),
) -> Result<(), BackupError> {
    let dir = root.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .map_err(io(&dir))?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    entries.sort();
    for name in entries {
        let rel = rel.join(&name);
        if skipped(&rel) {
            continue;
        }
        let path = root.join(&rel);
        // A file removed between listing and reading (an old version pruned) is skipped.
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&path)(e)),
        };
        if meta.is_dir() {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o700);
            header.set_size(0);
            header.set_mtime(meta.mtime().max(0) as u64);
            header.set_cksum();
            tar.append_data(&mut header, &rel, std::io::empty())
                .map_err(io(&path))?;
            add_dir(tar, root, &rel, before_read)?;
        } else if meta.is_file() {
            before_read(&rel);
            let mut file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&path)(e)),
            };
            // The open file is what is read, even if a rename replaces the name meanwhile.
            let len = file.metadata().map_err(io(&path))?.len();
            let mut header = tar::Header::new_gnu();
            header.set_size(len);
            header.set_mode(meta.mode() & 0o644);
            header.set_mtime(meta.mtime().max(0) as u64);
            header.set_cksum();
            tar.append_data(&mut header, &rel, (&mut file).take(len))
                .map_err(io(&path))?;
        }
    }
    Ok(())
}

/// Unpacks a backup into `data_dir`, which must be missing or empty (a Docker volume's
/// mount point or systemd's `StateDirectory` symlink work as they are). The files go to a
/// staging directory inside it first and are moved into place once all arrived, the format
/// record last; on any failure the data dir is left empty.
pub fn restore(input: impl Read, data_dir: &Path) -> Result<Manifest, BackupError> {
    datadir::create_private_dir(data_dir).map_err(|e| BackupError::Io {
        path: data_dir.to_owned(),
        source: std::io::Error::other(e.to_string()),
    })?;
    if std::fs::read_dir(data_dir)
        .map_err(io(data_dir))?
        .next()
        .is_some()
    {
        return Err(BackupError::NotEmpty(data_dir.to_owned()));
    }
    let staging = data_dir.join(format!(
        "{RESTORE_PREFIX}{}",
        hex::encode(rand::random::<[u8; 6]>())
    ));
    let mut moved: Vec<PathBuf> = Vec::new();
    let result = unpack(input, &staging).and_then(|manifest| {
        let mut names: Vec<_> = std::fs::read_dir(&staging)
            .map_err(io(&staging))?
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        // The format record last: a data dir without it is not yet whole.
        names.sort_by_key(|n| n == "format.json");
        for name in names {
            let to = data_dir.join(&name);
            std::fs::rename(staging.join(&name), &to).map_err(io(&to))?;
            moved.push(to);
        }
        std::fs::remove_dir(&staging).map_err(io(&staging))?;
        datadir::sync_dir(data_dir).map_err(io(data_dir))?;
        Ok(manifest)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
        for path in moved {
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
    }
    result
}

/// Names of work in progress in the data dir, removed on start.
pub const RESTORE_PREFIX: &str = ".restore-";
pub const BACKUP_PREFIX: &str = ".backup-";

/// Removes what an interrupted backup or restore left in the data dir.
pub fn clean_leftovers(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(RESTORE_PREFIX) || name.starts_with(BACKUP_PREFIX) {
            let path = e.path();
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
            tracing::info!(path = %path.display(), "removed an interrupted backup or restore");
        }
    }
}

fn unpack(input: impl Read, staging: &Path) -> Result<Manifest, BackupError> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(staging)
        .map_err(io(staging))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(input));
    let entries = archive
        .entries()
        .map_err(|e| BackupError::NotABackup(e.to_string()))?;
    let mut manifest: Option<Manifest> = None;
    for entry in entries {
        let mut entry = entry.map_err(|e| BackupError::NotABackup(e.to_string()))?;
        let rel = entry
            .path()
            .map_err(|e| BackupError::NotABackup(e.to_string()))?
            .into_owned();
        if rel.as_os_str().is_empty()
            || !rel.components().all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(BackupError::Unsafe(rel.display().to_string()));
        }
        if manifest.is_none() {
            if rel != Path::new(MANIFEST) {
                return Err(BackupError::NotABackup(format!(
                    "it starts with {}, not {MANIFEST}",
                    rel.display()
                )));
            }
            let mut text = String::new();
            entry
                .take(64 * 1024)
                .read_to_string(&mut text)
                .map_err(|e| BackupError::NotABackup(e.to_string()))?;
            let m: Manifest = serde_json::from_str(&text)
                .map_err(|e| BackupError::NotABackup(format!("{MANIFEST}: {e}")))?;
            if m.format > FORMAT {
                return Err(BackupError::TooNew(m.format));
            }
            manifest = Some(m);
            continue;
        }
        let path = staging.join(&rel);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&path)
                    .map_err(io(&path))?;
            }
            tar::EntryType::Regular => {
                if let Some(dir) = path.parent() {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)
                        .map_err(io(dir))?;
                }
                let mode = entry.header().mode().unwrap_or(0o600) & 0o644;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&path)
                    .map_err(io(&path))?;
                std::io::copy(&mut entry, &mut file).map_err(io(&path))?;
                file.sync_all().map_err(io(&path))?;
            }
            other => {
                return Err(BackupError::Unsafe(format!(
                    "{} is a {other:?}, not a file or directory",
                    rel.display()
                )));
            }
        }
    }
    let manifest = manifest.ok_or_else(|| BackupError::NotABackup("empty archive".into()))?;
    datadir::sync_dir(staging).map_err(io(staging))?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targz(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (name, data) in entries {
            // The name written as is, `..` included, as a hostile archive would.
            let mut h = tar::Header::new_old();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_size(data.len() as u64);
            h.set_mode(0o600);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            tar.append(&h, *data).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn refuses_what_is_not_a_backup_of_this_format() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("data");
        let e = restore(targz(&[("identity.key", b"x")]).as_slice(), &target).unwrap_err();
        assert!(matches!(e, BackupError::NotABackup(_)), "{e}");
        let newer = br#"{"format": 99, "kube": "9.0.0", "created": 1, "identity": "d"}"#;
        let e = restore(targz(&[(MANIFEST, newer)]).as_slice(), &target).unwrap_err();
        assert!(matches!(e, BackupError::TooNew(99)), "{e}");
        assert_eq!(
            std::fs::read_dir(&target).unwrap().count(),
            0,
            "nothing left behind"
        );
        let ok = br#"{"format": 1, "kube": "0.1.0", "created": 1, "identity": "d"}"#;
        std::fs::create_dir_all(target.join("x")).unwrap();
        let e = restore(targz(&[(MANIFEST, ok)]).as_slice(), &target).unwrap_err();
        assert!(matches!(e, BackupError::NotEmpty(_)), "{e}");
        std::fs::remove_dir(target.join("x")).unwrap();
        // A restore that fails half-way leaves the data dir empty.
        let bad = targz(&[(MANIFEST, ok), ("apps/a", b"x"), ("../escape", b"x")]);
        let e = restore(bad.as_slice(), &target).unwrap_err();
        assert!(matches!(e, BackupError::Unsafe(_)), "{e}");
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
        assert!(!dir.path().join("escape").exists());
        // Into a data dir reached through a symlink (systemd's StateDirectory).
        let real = dir.path().join("private");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let good = targz(&[
            (MANIFEST, ok),
            ("format.json", b"{}"),
            ("dns/records.json", b"[]"),
        ]);
        restore(good.as_slice(), &link).unwrap();
        assert!(real.join("dns/records.json").exists() && real.join("format.json").exists());
    }

    /// A certificate renewal that runs while the backup is part way through `tls/acme/`
    /// (after it read some of the files, before the rest): whatever the moment, the restored
    /// data dir holds a certificate and key that belong together, served without a new order.
    #[test]
    fn a_renewal_during_a_backup_restores_a_matching_pair() {
        use crate::tls::acme;
        let names = vec!["example.org".to_string()];
        let meta = acme::Meta {
            names: names.clone(),
            directory: "https://ca.test/directory".into(),
            ari_window: None,
        };
        let issue = || {
            let key = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(names.clone()).unwrap();
            (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
        };
        for at in ["cert.pem", "key.pem", "meta.json"] {
            let dir = tempfile::tempdir().unwrap();
            let data = dir.path().join("data");
            let paths = acme::Paths::new(&data);
            let (old, new) = (issue(), issue());
            acme::save(&paths, &old.0, &old.1, &meta).unwrap();
            let limits = crate::apps::bundle::Limits {
                max_bytes: 1 << 20,
                max_files: 16,
            };
            let apps = std::sync::Arc::new(
                crate::apps::AppStore::open(&data.join("apps"), limits, 2).unwrap(),
            );
            let mut renewed = false;
            let mut out = Vec::new();
            write_observed(&data, &mut out, &apps, None, "did:key:z", 1, &mut |rel| {
                if rel == Path::new("tls/acme").join(at) {
                    acme::save(&paths, &new.0, &new.1, &meta).unwrap();
                    renewed = true;
                }
            })
            .unwrap();
            assert!(renewed, "the renewal ran during the backup, before {at}");
            let restored = dir.path().join("restored");
            restore(out.as_slice(), &restored).unwrap();
            let (chain, key, _, _) = acme::load(&acme::Paths::new(&restored), &names)
                .unwrap_or_else(|| panic!("renewed before {at}: no usable pair restored"));
            let pair = (chain, key);
            assert!(pair == old || pair == new, "renewed before {at}");
        }
    }
}
