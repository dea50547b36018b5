//! KUBE's own HALO identity: `<data_dir>/identity.key`, an Ed25519 key in PKCS#8 PEM, 0600,
//! created on first start. The same file format holds operator keys (`kube identity new`,
//! `--key`/`KUBE_KEY`). Also the bridge from `echo.admit` to HALO's admission decision.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use halo::SigningKey;

use crate::datadir::{self, DataDirError};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Format {
        path: PathBuf,
        source: halo::keyfile::KeyFileError,
    },
    #[error("{0}")]
    Write(#[from] DataDirError),
    #[error("{0} exists; choose another file (a key is never overwritten)")]
    Exists(PathBuf),
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("identity.key")
}

/// Reads a key file.
pub fn load(path: &Path) -> Result<SigningKey, IdentityError> {
    let text = std::fs::read_to_string(path).map_err(|source| IdentityError::Io {
        path: path.to_owned(),
        source,
    })?;
    halo::keyfile::from_pem(&text).map_err(|source| IdentityError::Format {
        path: path.to_owned(),
        source,
    })
}

/// KUBE's key: read it, or make it on first start. A key file others can read is made
/// private again, with a warning.
pub fn load_or_create(data_dir: &Path) -> Result<SigningKey, IdentityError> {
    let path = path(data_dir);
    match std::fs::metadata(&path) {
        Ok(meta) => {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "identity key was readable by others; set to 0600");
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(
                    |source| IdentityError::Io {
                        path: path.clone(),
                        source,
                    },
                )?;
            }
            load(&path)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
            write_key(&path, &key)?;
            tracing::info!(identity = %halo::did(&key), "created this KUBE's identity");
            Ok(key)
        }
        Err(source) => Err(IdentityError::Io { path, source }),
    }
}

/// Writes a new key file (0600); never replaces one, even one that appears meanwhile: the
/// key goes to a temporary file first and is linked into place, which fails if the name
/// exists.
pub fn create(path: &Path) -> Result<SigningKey, IdentityError> {
    if path.exists() {
        return Err(IdentityError::Exists(path.to_owned()));
    }
    let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let tmp = path.with_file_name(format!(
        ".{}.{}.new",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("key"),
        hex::encode(rand::random::<[u8; 6]>())
    ));
    write_key(&tmp, &key)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(IdentityError::Exists(path.to_owned()))
        }
        Err(source) => Err(IdentityError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn write_key(path: &Path, key: &SigningKey) -> Result<(), IdentityError> {
    let pem = halo::keyfile::to_pem(key).map_err(|source| IdentityError::Format {
        path: path.to_owned(),
        source,
    })?;
    datadir::write_private(path, pem.as_bytes())?;
    Ok(())
}

/// `echo.admit` as HALO's policy type; ECHO passes it to [`halo::admission::decide`].
pub fn admission_policy(admit: &config::Admit) -> halo::admission::Admit {
    match admit {
        config::Admit::Any => halo::admission::Admit::Any,
        config::Admit::Admins(list) => halo::admission::Admit::Admins(list.clone()),
    }
}

/// Problems with did:keys in a config list, as `section.key[i]`.
pub fn check_dids(path: &str, dids: &[String]) -> Vec<config::Problem> {
    dids.iter()
        .enumerate()
        .filter_map(|(i, d)| {
            halo::PublicKey::from_did(d)
                .err()
                .map(|e| config::Problem::new(format!("{path}[{i}]"), format!("{d:?}: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
        std::fs::set_permissions(path(dir.path()), std::fs::Permissions::from_mode(0o644)).unwrap();
        load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            create(&path(dir.path())),
            Err(IdentityError::Exists(_))
        ));
        std::fs::write(path(dir.path()), "garbage").unwrap();
        let e = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(e.contains("identity.key") && e.contains("PKCS#8"), "{e}");
    }
}
