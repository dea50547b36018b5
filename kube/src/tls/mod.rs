//! The `tls` service: owns the certificates the HTTPS listener presents. `local` mode runs
//! KUBE's own CA (`local_ca`), `acme` gets them from a directory (`acme`), `files` serves
//! the operator's PEM files and reloads them when they change. The live certificate sits in
//! a resolver that is swapped without touching open connections.

pub mod acme;
pub mod challenges;
pub mod local_ca;
mod pair;
mod renew;
mod shared;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use config::{Problem, TlsMode};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;

use crate::service::{Context, Idle, Running, Service, StartError, Started};

/// Why the TLS service cannot provide a certificate. Environment faults name the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not usable: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot generate a certificate: {0}")]
    Generate(String),
    #[error("acme: {0}")]
    Acme(String),
}

impl TlsError {
    fn generate(e: impl std::fmt::Display) -> TlsError {
        TlsError::Generate(e.to_string())
    }
}

impl From<crate::datadir::DataDirError> for TlsError {
    fn from(e: crate::datadir::DataDirError) -> TlsError {
        match e {
            crate::datadir::DataDirError::Io { path, source } => TlsError::Io { path, source },
            other => TlsError::Generate(other.to_string()),
        }
    }
}

/// What a certificate says about itself, for status, metrics and renewal decisions.
#[derive(Clone, Debug, Serialize)]
pub struct CertInfo {
    pub names: Vec<String>,
    pub issuer: String,
    pub serial: String,
    #[serde(with = "unix_secs")]
    pub not_before: SystemTime,
    #[serde(with = "unix_secs")]
    pub not_after: SystemTime,
}

mod unix_secs {
    use std::time::SystemTime;
    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(crate::service::unix(*t))
    }
}

/// A TLS client configuration trusting the compiled-in web PKI roots, plus the
/// certificates of the PEM file `extra` when given (a test CA such as Pebble's, or another
/// KUBE's local CA). The error says what is wrong with `extra`.
pub fn client_config(extra: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| e.to_string())?;
        for c in certs {
            roots.add(c).map_err(|e| e.to_string())?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Reads names, issuer and validity from the first certificate of a PEM chain.
pub fn cert_info(chain_pem: &str) -> Result<CertInfo, TlsError> {
    let corrupt = |reason: String| TlsError::Corrupt {
        path: PathBuf::from("<certificate>"),
        reason,
    };
    let der = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .ok_or_else(|| corrupt("no certificate in PEM".into()))?
        .map_err(|e| corrupt(e.to_string()))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| corrupt(e.to_string()))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                    4 => names.push(
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())
                            .to_string(),
                    ),
                    16 => names.push(
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())
                            .to_string(),
                    ),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    let to_time = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(t.timestamp().max(0) as u64)
    };
    Ok(CertInfo {
        names,
        issuer: cert.issuer().to_string(),
        serial: cert.raw_serial_as_string(),
        not_before: to_time(cert.validity().not_before),
        not_after: to_time(cert.validity().not_after),
    })
}

/// The certificate the HTTPS listener presents, swappable while connections stay open.
#[derive(Debug)]
pub struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
    challenges: Arc<challenges::Challenges>,
}

impl CertResolver {
    fn new(key: Arc<CertifiedKey>, challenges: Arc<challenges::Challenges>) -> CertResolver {
        CertResolver {
            current: RwLock::new(key),
            challenges,
        }
    }

    /// Replaces the certificate for every new handshake.
    pub fn swap(&self, key: Arc<CertifiedKey>) {
        match self.current.write() {
            Ok(mut g) => *g = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // TLS-ALPN-01 (RFC 8737 §3): a validator offering only acme-tls/1 gets the challenge
        // certificate for the name it asks for, or no handshake at all.
        let acme = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == challenges::ACME_TLS_ALPN));
        if acme {
            return hello.server_name().and_then(|n| self.challenges.alpn(n));
        }
        let g = match self.current.read() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        Some(g.clone())
    }
}

pub(crate) fn certified_key(chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let ck = certified_key_unchecked(chain_pem, key_pem)?;
    // A key that does not belong to the certificate would fail every handshake silently.
    ck.keys_match().map_err(|e| TlsError::Corrupt {
        path: PathBuf::from("<certificate>"),
        reason: format!("the key does not match the certificate: {e}"),
    })?;
    Ok(ck)
}

/// As [`certified_key`] without the pair check, for a certificate made here with its key
/// (a TLS-ALPN-01 certificate carries a critical extension the check cannot parse).
pub(crate) fn certified_key_unchecked(
    chain_pem: &str,
    key_pem: &str,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let corrupt = |reason: String| TlsError::Corrupt {
        path: PathBuf::from("<certificate>"),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| corrupt(e.to_string()))?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| corrupt(e.to_string()))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| corrupt(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(certs, signing)))
}

/// What other services get from `tls`: the resolver, what is being served, the challenge
/// answers, and for ACME its state.
#[derive(Clone, Debug)]
pub struct TlsHandle {
    pub resolver: Arc<CertResolver>,
    info: Arc<RwLock<Vec<CertInfo>>>,
    pub mode: TlsMode,
    /// The local CA certificate users may trust (local mode only).
    pub ca_path: Option<PathBuf>,
    pub challenges: Arc<challenges::Challenges>,
    local: Option<Arc<LocalState>>,
    acme: Option<Arc<renew::AcmeShared>>,
    files: Option<Arc<FilesState>>,
}

/// What local mode needs to reissue its leaf: the domain, the app hosts, what is served.
#[derive(Debug)]
struct LocalState {
    cx: Context,
    /// App hosts and the chain now served; one lock so reissues do not interleave.
    current: std::sync::Mutex<(Vec<String>, String)>,
}

/// `files` mode: the operator's files and what was last loaded from them.
#[derive(Debug)]
struct FilesState {
    cert: PathBuf,
    key: PathBuf,
    loaded: std::sync::Mutex<Option<(SystemTime, SystemTime)>>,
}

impl TlsHandle {
    /// Names every app host: local mode reissues its leaf, ACME without DNS-01 orders a
    /// certificate naming them. A wildcard covers them otherwise.
    pub async fn set_app_hosts(&self, apps: Vec<String>) -> Result<(), TlsError> {
        if let Some(acme) = &self.acme {
            acme.set_apps(apps);
            return Ok(());
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.refresh_local(Some(apps)))
            .await
            .map_err(|e| TlsError::Generate(e.to_string()))?
    }

    /// Reissues the local leaf when it is due or its names changed, and swaps it in for new
    /// handshakes; open connections keep theirs. Blocking.
    fn refresh_local(&self, apps: Option<Vec<String>>) -> Result<(), TlsError> {
        let Some(local) = &self.local else {
            return Ok(());
        };
        let mut current = local.current.lock().unwrap_or_else(|p| p.into_inner());
        let apps = apps.unwrap_or_else(|| current.0.clone());
        let paths = local_ca::LocalCaPaths::new(&local.cx.data_dir);
        let (chain, key, _) = local_ca::ensure(&paths, &local.cx.domain, &apps, SystemTime::now())?;
        if chain != current.1 {
            self.install(&chain, &key)?;
            tracing::info!("local certificate reissued and swapped in");
        }
        *current = (apps, chain);
        Ok(())
    }

    /// `files` mode: loads the files again if they changed since the last load. Blocking.
    /// On error the last good certificate stays.
    pub fn reload_files(&self) -> Result<bool, TlsError> {
        let Some(files) = &self.files else {
            return Ok(false);
        };
        let mtime = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let stamp = mtime(&files.cert).zip(mtime(&files.key));
        let mut loaded = files.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if stamp.is_none() || stamp == *loaded {
            return Ok(false);
        }
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).map_err(|source| TlsError::Io {
                path: p.clone(),
                source,
            })
        };
        let (chain, key) = (read(&files.cert)?, read(&files.key)?);
        self.install(&chain, &key)?;
        *loaded = stamp;
        tracing::info!(cert = %files.cert.display(), "certificate files reloaded");
        Ok(true)
    }

    /// Serves `chain`/`key` from the next handshake on.
    pub(crate) fn install(&self, chain: &str, key: &str) -> Result<(), TlsError> {
        let ck = certified_key(chain, key)?;
        let info = cert_info(chain)?;
        self.resolver.swap(ck);
        *self.info.write().unwrap_or_else(|p| p.into_inner()) = vec![info];
        Ok(())
    }

    /// Asks for a new certificate now (`kube cert renew`).
    pub fn renew(&self) -> Result<(), String> {
        match (&self.acme, &self.local) {
            (Some(acme), _) => {
                acme.force();
                Ok(())
            }
            (None, Some(_)) => {
                let this = self.clone();
                std::thread::spawn(move || this.force_local());
                Ok(())
            }
            _ => Err("tls.mode files: replace the files (they are reloaded on change)".into()),
        }
    }

    fn force_local(&self) {
        if let Some(local) = &self.local {
            // The key file holds the stored pair: without it the leaf is issued again.
            let paths = local_ca::LocalCaPaths::new(&local.cx.data_dir);
            let _ = std::fs::remove_file(&paths.leaf_key);
        }
        if let Err(e) = self.refresh_local(None) {
            tracing::error!(error = %e, "local certificate renewal failed");
        }
    }

    /// ACME's state, for `kube status` and `kube cert list`.
    pub fn acme_status(&self) -> Option<renew::AcmeStatus> {
        self.acme.as_ref().map(|a| a.status())
    }

    /// Called once the listeners that answer challenges are up.
    pub fn listeners_ready(&self) {
        if let Some(acme) = &self.acme {
            acme.listeners_ready();
        }
    }

    pub fn certificates(&self) -> Vec<CertInfo> {
        match self.info.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// A rustls server config presenting the resolver's certificate, with ALPN h2, then
    /// http/1.1, then acme-tls/1 (offered alone only by TLS-ALPN-01 validators).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.resolver.clone());
        cfg.alpn_protocols = vec![
            b"h2".to_vec(),
            b"http/1.1".to_vec(),
            challenges::ACME_TLS_ALPN.to_vec(),
        ];
        Arc::new(cfg)
    }
}

/// Handles the `tls` service needs.
pub struct TlsDeps {
    /// Published app names, to name in a local leaf or an ACME order without DNS-01.
    pub apps: Vec<String>,
    /// KUBE's DNS, for DNS-01; None when `dns.enabled` is false.
    pub dns: Option<crate::dns::DnsHandle>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// `acme`: the section (read here only; ACME is part of the TLS service).
    pub acme: config::Acme,
    /// The object store a cluster shares its certificate through.
    pub storage: crate::storage::StorageHandle,
}

/// The `tls` service.
pub struct Tls;

impl Service for Tls {
    const NAME: &'static str = "tls";
    type Section = config::Tls;
    type Deps = TlsDeps;
    type Handle = TlsHandle;

    fn check(section: &config::Tls, cx: &Context) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mode = config::tls_mode(section, &cx.domain);
        if mode == TlsMode::Acme && config::is_local_domain(&cx.domain) {
            problems.push(Problem::new(
                "tls.mode",
                format!(
                    "acme needs a public domain; {} can only use local or files",
                    cx.domain
                ),
            ));
        }
        if mode == TlsMode::Files {
            for (key, path) in [
                ("tls.cert_file", &section.cert_file),
                ("tls.key_file", &section.key_file),
            ] {
                if let Some(p) = path
                    && !p.is_file()
                {
                    problems.push(Problem::new(
                        key,
                        format!("{} is not a readable file", p.display()),
                    ));
                }
            }
        }
        problems
    }

    /// Loads or creates the certificate to serve, and starts what keeps it fresh.
    async fn start(
        section: config::Tls,
        cx: &Context,
        deps: TlsDeps,
    ) -> Result<Started<TlsHandle>, StartError> {
        let mode = config::tls_mode(&section, &cx.domain);
        let challenges = Arc::new(challenges::Challenges::default());
        let mut acme_start = None;
        let (chain, key, ca_path) = match mode {
            TlsMode::Local => {
                let paths = local_ca::LocalCaPaths::new(&cx.data_dir);
                let (chain, key, _) =
                    local_ca::ensure(&paths, &cx.domain, &deps.apps, SystemTime::now())?;
                (chain, key, Some(paths.ca_cert))
            }
            TlsMode::Files => {
                let read = |p: &Option<PathBuf>| -> Result<String, TlsError> {
                    let p = p.clone().unwrap_or_default();
                    std::fs::read_to_string(&p).map_err(|source| TlsError::Io { path: p, source })
                };
                (read(&section.cert_file)?, read(&section.key_file)?, None)
            }
            TlsMode::Acme => {
                let paths = acme::Paths::new(&cx.data_dir);
                acme::check_writable(&paths)?;
                let dns01 = acme::plan::dns01_possible(&deps.acme.challenges, deps.dns.is_some());
                let names = acme::plan::names(&cx.domain, dns01, &deps.apps);
                let stored = acme::load(&paths, &names);
                let (chain, key) = match &stored {
                    Some((chain, key, _, _)) => (chain.clone(), key.clone()),
                    None => {
                        // Nothing to serve yet: fail now with a clear message rather than
                        // loop against a directory that is not there.
                        acme::check_directory(&deps.acme.directory, deps.acme.ca_root.as_deref())
                            .await?;
                        placeholder(&cx.domain)?
                    }
                };
                acme_start = Some((paths, stored.is_some()));
                (chain, key, None)
            }
        };
        let resolver = Arc::new(CertResolver::new(
            certified_key(&chain, &key)?,
            challenges.clone(),
        ));
        let info = cert_info(&chain)?;
        let local = (mode == TlsMode::Local).then(|| {
            Arc::new(LocalState {
                cx: cx.clone(),
                current: std::sync::Mutex::new((deps.apps.clone(), chain)),
            })
        });
        let files = match (mode, &section.cert_file, &section.key_file) {
            (TlsMode::Files, Some(cert), Some(key)) => {
                let mtime = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
                Some(Arc::new(FilesState {
                    loaded: std::sync::Mutex::new(mtime(cert).zip(mtime(key))),
                    cert: cert.clone(),
                    key: key.clone(),
                }))
            }
            _ => None,
        };
        let acme_shared = acme_start.as_ref().map(|(_, have)| {
            renew::AcmeShared::new(&deps.acme.directory, deps.apps.clone(), *have)
        });
        let handle = TlsHandle {
            resolver,
            info: Arc::new(RwLock::new(vec![info])),
            mode,
            ca_path,
            challenges: challenges.clone(),
            local,
            acme: acme_shared.clone(),
            files,
        };
        let running: Box<dyn Running> = match (mode, acme_start, acme_shared) {
            (TlsMode::Local, _, _) => Box::new(renew::local(handle.clone())),
            (TlsMode::Files, _, _) => Box::new(renew::files(handle.clone())),
            (TlsMode::Acme, Some((paths, _)), Some(shared)) => {
                let ctx = acme::Ctx {
                    section: deps.acme,
                    paths,
                    challenges,
                    dns: deps.dns,
                    storage: deps.storage,
                };
                Box::new(renew::acme(
                    handle.clone(),
                    shared,
                    ctx,
                    cx.domain.clone(),
                    deps.metrics,
                ))
            }
            _ => Box::new(Idle("tls")),
        };
        Ok(Started { handle, running })
    }
}

/// Served until ACME delivers: a self-signed certificate for the domain, so the listener
/// runs (TLS-ALPN-01 needs it) and says plainly that no real certificate is there yet.
fn placeholder(domain: &str) -> Result<(String, String), TlsError> {
    let key = rcgen::KeyPair::generate().map_err(TlsError::generate)?;
    let mut params =
        rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(TlsError::generate)?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "KUBE placeholder: waiting for ACME",
    );
    let cert = params.self_signed(&key).map_err(TlsError::generate)?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl From<acme::AcmeError> for TlsError {
    fn from(e: acme::AcmeError) -> TlsError {
        TlsError::Acme(e.to_string())
    }
}

#[cfg(test)]
mod tests;
