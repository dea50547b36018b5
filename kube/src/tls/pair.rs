//! A certificate chain and its private key kept on disk as one unit. The key file holds the
//! key followed by its chain and is replaced by one rename, so a crash or a backup at any
//! moment finds a key with its own certificate. The chain's file (`cert.pem`, `ca.pem`) is a
//! public copy for people and tools, written after the key file and brought level with it
//! on read. A key file without a chain (a data dir from before) is read with the chain's
//! file and completed.
//!
//! The key comes first: an older kube reads only the first PEM block of a key file.

use std::path::Path;

use super::TlsError;
use crate::datadir;

const CERT_BEGIN: &str = "-----BEGIN CERTIFICATE-----";

/// A chain and its key, as PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pair {
    pub chain: String,
    pub key: String,
}

/// Stores the pair: the key file with its chain (from this rename on the new pair is what
/// every reader sees), then the public copy of the chain.
pub(crate) fn write(
    key_path: &Path,
    cert_path: &Path,
    chain: &str,
    key: &str,
) -> Result<(), TlsError> {
    datadir::write_private(key_path, unit(chain, key).as_bytes())?;
    datadir::write_atomic(cert_path, chain.as_bytes())?;
    Ok(())
}

fn unit(chain: &str, key: &str) -> String {
    let sep = if key.ends_with('\n') { "" } else { "\n" };
    format!("{key}{sep}{chain}")
}

/// Reads the stored pair and checks that the key belongs to the certificate. A stale or
/// missing public copy is rewritten, an older key file completed with its chain; failing to
/// write either is only logged, the pair read is still good.
pub(crate) fn read(key_path: &Path, cert_path: &Path) -> Result<Pair, TlsError> {
    let text = read_file(key_path)?;
    match text.find(CERT_BEGIN) {
        Some(at) => {
            let pair = Pair {
                key: text[..at].to_owned(),
                chain: text[at..].to_owned(),
            };
            check(&pair, key_path)?;
            // A crash or a backup between the two renames leaves the copy a generation off.
            let copy = std::fs::read_to_string(cert_path).ok();
            if copy.as_deref() != Some(pair.chain.as_str()) {
                let path = cert_path.display();
                match datadir::write_atomic(cert_path, pair.chain.as_bytes()) {
                    Ok(()) => tracing::info!(%path, "certificate copy rewritten from its key file"),
                    Err(e) => {
                        tracing::warn!(%path, error = %e, "cannot rewrite a certificate copy")
                    }
                }
            }
            Ok(pair)
        }
        None => {
            let pair = Pair {
                key: text,
                chain: read_file(cert_path)?,
            };
            check(&pair, cert_path)?;
            if let Err(e) =
                datadir::write_private(key_path, unit(&pair.chain, &pair.key).as_bytes())
            {
                tracing::warn!(error = %e, "cannot store a key with its certificate");
            }
            Ok(pair)
        }
    }
}

/// Whether `e` says that `path` does not exist.
pub(crate) fn is_missing(e: &TlsError, path: &Path) -> bool {
    matches!(e, TlsError::Io { path: p, source }
        if p == path && source.kind() == std::io::ErrorKind::NotFound)
}

fn check(pair: &Pair, path: &Path) -> Result<(), TlsError> {
    super::certified_key(&pair.chain, &pair.key)
        .map(|_| ())
        .map_err(|e| match e {
            TlsError::Corrupt { reason, .. } => TlsError::Corrupt {
                path: path.to_owned(),
                reason,
            },
            other => other,
        })
}

fn read_file(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["example.org".into()]).unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn the_key_file_alone_holds_the_pair_and_old_layouts_are_completed() {
        let dir = tempfile::tempdir().unwrap();
        let (key_path, cert_path) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
        let (chain, key) = issue();
        write(&key_path, &cert_path, &chain, &key).unwrap();
        let stored = std::fs::read_to_string(&key_path).unwrap();
        // How an older kube reads a key file: rcgen for the CA (its first PEM block), rustls
        // for a leaf or an ACME certificate (its first key).
        let first = rcgen::KeyPair::from_pem(&stored).unwrap();
        assert_eq!(first.serialize_pem(), key);
        super::super::certified_key(&chain, &stored).unwrap();
        std::fs::remove_file(&cert_path).unwrap();
        let pair = read(&key_path, &cert_path).unwrap();
        assert_eq!(
            pair,
            Pair {
                chain: chain.clone(),
                key: key.clone()
            }
        );
        assert_eq!(
            std::fs::read_to_string(&cert_path).unwrap(),
            chain,
            "copy restored"
        );

        // A key file written before pairs were kept whole.
        std::fs::write(&key_path, &key).unwrap();
        assert_eq!(read(&key_path, &cert_path).unwrap().chain, chain);
        assert_eq!(
            std::fs::read_to_string(&key_path).unwrap(),
            stored,
            "completed"
        );

        // An older pair that does not match is refused, naming the file.
        let (other, _) = issue();
        std::fs::write(&key_path, &key).unwrap();
        std::fs::write(&cert_path, &other).unwrap();
        match read(&key_path, &cert_path) {
            Err(TlsError::Corrupt { path, .. }) => assert_eq!(path, cert_path),
            other => panic!("{other:?}"),
        }
        std::fs::remove_file(&key_path).unwrap();
        assert!(is_missing(
            &read(&key_path, &cert_path).unwrap_err(),
            &key_path
        ));
    }
}
