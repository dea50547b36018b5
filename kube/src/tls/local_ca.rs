//! KUBE's own certificate authority for domains with no public name (`localhost`): a CA kept
//! in the data dir and a leaf for the apex and `*.domain`, reissued before it expires.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::{CertInfo, TlsError, pair};

const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const LEAF_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// A leaf is reissued when less than a third of its lifetime is left.
const LEAF_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Files of the local CA and its leaf under `<data_dir>/tls/`.
pub struct LocalCaPaths {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub leaf_cert: PathBuf,
    pub leaf_key: PathBuf,
}

impl LocalCaPaths {
    pub fn new(data_dir: &Path) -> LocalCaPaths {
        let tls = data_dir.join("tls");
        LocalCaPaths {
            ca_cert: tls.join("ca.pem"),
            ca_key: tls.join("ca.key"),
            leaf_cert: tls.join("local").join("cert.pem"),
            leaf_key: tls.join("local").join("key.pem"),
        }
    }
}

/// The names a leaf for `domain` must carry. Each app host is named too: TLS clients
/// (OpenSSL, browsers) refuse a wildcard right below a single-label name like `localhost`.
pub fn leaf_names(domain: &str, apps: &[String]) -> Vec<String> {
    let mut names = vec![domain.to_owned()];
    if domain.parse::<IpAddr>().is_err() {
        names.push(format!("*.{domain}"));
        names.extend(apps.iter().map(|a| format!("{a}.{domain}")));
    }
    if domain == "localhost" {
        names.push("127.0.0.1".into());
        names.push("::1".into());
    }
    names
}

/// Whether a leaf with these names and expiry must be reissued at `now` (pure).
pub fn needs_reissue(have: &CertInfo, want: &[String], now: SystemTime) -> bool {
    let mut a = have.names.clone();
    let mut b = want.to_vec();
    a.sort();
    b.sort();
    a != b || have.not_after <= now + LEAF_RENEW_BEFORE || have.not_before > now
}

/// Loads the CA and leaf, creating or reissuing what is missing or due. Returns the leaf
/// chain (leaf, CA) and key as PEM, with what the leaf says about itself.
pub fn ensure(
    paths: &LocalCaPaths,
    domain: &str,
    apps: &[String],
    now: SystemTime,
) -> Result<(String, String, CertInfo), TlsError> {
    let (ca_pem, ca_key) = load_or_create_ca(paths, domain, now)?;
    let want = leaf_names(domain, apps);
    match pair::read(&paths.leaf_key, &paths.leaf_cert)
        .and_then(|p| super::cert_info(&p.chain).map(|info| (p, info)))
    {
        Ok((p, info)) if !needs_reissue(&info, &want, now) && p.chain.contains(ca_pem.trim()) => {
            return Ok((p.chain, p.key, info));
        }
        Ok(_) => tracing::info!("local certificate is due or its names changed: reissuing"),
        Err(e) if pair::is_missing(&e, &paths.leaf_key) => {}
        Err(e) => tracing::warn!(error = %e, "local certificate unusable: reissuing"),
    }
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(TlsError::generate)?;
    let key = KeyPair::generate().map_err(TlsError::generate)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = want
        .iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n.clone().try_into().map(SanType::DnsName),
        })
        .collect::<Result<_, _>>()
        .map_err(TlsError::generate)?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, domain.to_owned());
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + LEAF_LIFETIME).into();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let leaf = params
        .signed_by(&key, &issuer)
        .map_err(TlsError::generate)?;
    let chain = format!("{}{}", leaf.pem(), ca_pem);
    let key_pem = key.serialize_pem();
    pair::write(&paths.leaf_key, &paths.leaf_cert, &chain, &key_pem)?;
    let info = super::cert_info(&chain)?;
    tracing::info!(names = ?info.names, "issued local certificate");
    Ok((chain, key_pem, info))
}

fn load_or_create_ca(
    paths: &LocalCaPaths,
    domain: &str,
    now: SystemTime,
) -> Result<(String, KeyPair), TlsError> {
    let missing = |missing: &Path, have: &Path| TlsError::Corrupt {
        path: missing.to_owned(),
        reason: format!(
            "is missing but {} exists: restore it, or remove both to create a new CA (browsers must then trust the new one)",
            have.display()
        ),
    };
    if paths.ca_key.exists() {
        // The key file holds the certificate too; only an older one needs `ca.pem`.
        let p = pair::read(&paths.ca_key, &paths.ca_cert).map_err(|e| {
            if pair::is_missing(&e, &paths.ca_cert) {
                missing(&paths.ca_cert, &paths.ca_key)
            } else {
                e
            }
        })?;
        let key = KeyPair::from_pem(&p.key).map_err(|e| TlsError::Corrupt {
            path: paths.ca_key.clone(),
            reason: e.to_string(),
        })?;
        return Ok((p.chain, key));
    }
    if paths.ca_cert.exists() {
        return Err(missing(&paths.ca_key, &paths.ca_cert));
    }
    let key = KeyPair::generate().map_err(TlsError::generate)?;
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "KUBE");
    params.distinguished_name.push(
        DnType::CommonName,
        format!(
            "KUBE local CA for {domain} ({})",
            hex::encode(rand::random::<[u8; 4]>())
        ),
    );
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + CA_LIFETIME).into();
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).map_err(TlsError::generate)?;
    pair::write(
        &paths.ca_key,
        &paths.ca_cert,
        &cert.pem(),
        &key.serialize_pem(),
    )?;
    tracing::info!(path = %paths.ca_cert.display(), "created local CA");
    Ok((cert.pem(), key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_kept_and_leaf_reissued_only_when_due() {
        let dir = tempfile::tempdir().unwrap();
        let paths = LocalCaPaths::new(dir.path());
        let now = SystemTime::now();
        let (chain1, _, info1) = ensure(&paths, "localhost", &[], now).unwrap();
        let ca1 = std::fs::read_to_string(&paths.ca_cert).unwrap();
        assert!(info1.names.contains(&"*.localhost".to_string()));
        let (chain2, _, _) = ensure(&paths, "localhost", &[], now).unwrap();
        assert_eq!(chain1, chain2, "a valid leaf is not reissued");
        let later = now + LEAF_LIFETIME - Duration::from_secs(3600);
        let (chain3, _, info3) = ensure(&paths, "localhost", &[], later).unwrap();
        assert_ne!(chain1, chain3, "a leaf near expiry is reissued");
        assert!(info3.not_after > info1.not_after);
        assert_eq!(
            ca1,
            std::fs::read_to_string(&paths.ca_cert).unwrap(),
            "CA kept"
        );
        let apps = vec!["demo".to_string()];
        let (_, _, info4) = ensure(&paths, "dev.localhost", &apps, later).unwrap();
        assert!(
            info4.names.contains(&"*.dev.localhost".to_string()),
            "names follow the domain"
        );
        assert!(
            info4.names.contains(&"demo.dev.localhost".to_string()),
            "apps are named"
        );
    }
}
