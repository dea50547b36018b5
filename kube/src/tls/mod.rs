//! The `tls` service: owns the certificates the HTTPS listener presents. `local` mode runs
//! KUBE's own CA (`local_ca`); the live certificate sits in a resolver that can be swapped
//! without touching open connections.

pub mod local_ca;

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

/// How often a running KUBE checks whether its local certificate is due.
const LOCAL_RENEW_CHECK: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

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
    #[error("tls.mode {0:?} is not available in this version of kube")]
    Unsupported(TlsMode),
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
    use std::time::{SystemTime, UNIX_EPOCH};
    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let secs = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        s.serialize_u64(secs)
    }
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
}

impl CertResolver {
    fn new(key: Arc<CertifiedKey>) -> CertResolver {
        CertResolver {
            current: RwLock::new(key),
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
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let g = match self.current.read() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        Some(g.clone())
    }
}

pub(crate) fn certified_key(chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, TlsError> {
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
    let ck = CertifiedKey::new(certs, signing);
    // A key that does not belong to the certificate would fail every handshake silently.
    ck.keys_match()
        .map_err(|e| corrupt(format!("the key does not match the certificate: {e}")))?;
    Ok(Arc::new(ck))
}

/// What other services get from `tls`: the resolver and what is being served.
#[derive(Clone, Debug)]
pub struct TlsHandle {
    pub resolver: Arc<CertResolver>,
    info: Arc<RwLock<Vec<CertInfo>>>,
    pub mode: TlsMode,
    /// The local CA certificate users may trust (local mode only).
    pub ca_path: Option<PathBuf>,
    local: Option<Arc<LocalState>>,
}

/// What local mode needs to reissue its leaf: the domain, the app hosts, what is served.
#[derive(Debug)]
struct LocalState {
    cx: Context,
    /// App hosts and the chain now served; one lock so reissues do not interleave.
    current: std::sync::Mutex<(Vec<String>, String)>,
}

impl TlsHandle {
    /// Local mode: names every app host in the leaf (reissued and swapped in when the set
    /// changes). Other modes cover app hosts otherwise (a wildcard), so this does nothing.
    pub async fn set_app_hosts(&self, apps: Vec<String>) -> Result<(), TlsError> {
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
        let (chain, key, info) =
            local_ca::ensure(&paths, &local.cx.domain, &apps, SystemTime::now())?;
        if chain != current.1 {
            self.resolver.swap(certified_key(&chain, &key)?);
            *self.info.write().unwrap_or_else(|p| p.into_inner()) = vec![info];
            tracing::info!("local certificate reissued and swapped in");
        }
        *current = (apps, chain);
        Ok(())
    }

    pub fn certificates(&self) -> Vec<CertInfo> {
        match self.info.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// A rustls server config presenting the resolver's certificate, with ALPN h2 then
    /// http/1.1.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.resolver.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

/// The `tls` service.
pub struct Tls;

impl Service for Tls {
    const NAME: &'static str = "tls";
    type Section = config::Tls;
    /// The published app names, to name in a local leaf.
    type Deps = Vec<String>;
    type Handle = TlsHandle;

    fn check(section: &config::Tls, cx: &Context) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mode = config::tls_mode(section, &cx.domain);
        if mode == TlsMode::Acme {
            problems.push(Problem::new(
                "tls.mode",
                "acme is not available in this version yet; use local or files",
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

    /// Loads or creates the certificate to serve. Nothing to stop: it owns no socket.
    async fn start(
        section: config::Tls,
        cx: &Context,
        apps: Vec<String>,
    ) -> Result<Started<TlsHandle>, StartError> {
        let mode = config::tls_mode(&section, &cx.domain);
        let (chain, key, info, ca_path) = match mode {
            TlsMode::Local => {
                let paths = local_ca::LocalCaPaths::new(&cx.data_dir);
                let (chain, key, info) =
                    local_ca::ensure(&paths, &cx.domain, &apps, SystemTime::now())?;
                (chain, key, info, Some(paths.ca_cert))
            }
            TlsMode::Files => {
                let read = |p: &Option<PathBuf>| -> Result<String, TlsError> {
                    let p = p.clone().unwrap_or_default();
                    std::fs::read_to_string(&p).map_err(|source| TlsError::Io { path: p, source })
                };
                let chain = read(&section.cert_file)?;
                let key = read(&section.key_file)?;
                let info = cert_info(&chain)?;
                (chain, key, info, None)
            }
            TlsMode::Acme => return Err(TlsError::Unsupported(mode).into()),
        };
        let resolver = Arc::new(CertResolver::new(certified_key(&chain, &key)?));
        let local = (mode == TlsMode::Local).then(|| {
            Arc::new(LocalState {
                cx: cx.clone(),
                current: std::sync::Mutex::new((apps, chain)),
            })
        });
        let handle = TlsHandle {
            resolver,
            info: Arc::new(RwLock::new(vec![info])),
            mode,
            ca_path,
            local,
        };
        let running: Box<dyn Running> = if mode == TlsMode::Local {
            Box::new(renew_local(handle.clone()))
        } else {
            Box::new(Idle("tls"))
        };
        Ok(Started { handle, running })
    }
}

/// The local leaf is reissued while KUBE runs (a laptop KUBE may run for months).
fn renew_local(handle: TlsHandle) -> RenewTask {
    let cancel = tokio_util::sync::CancellationToken::new();
    let stop = cancel.clone();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(LOCAL_RENEW_CHECK) => {}
            }
            let h = handle.clone();
            match tokio::task::spawn_blocking(move || h.refresh_local(None)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "local certificate renewal failed; serving the last good one")
                }
                Err(e) => tracing::error!(error = %e, "local certificate renewal task failed"),
            }
        }
    });
    RenewTask { cancel, task }
}

struct RenewTask {
    cancel: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running for RenewTask {
    fn name(&self) -> &'static str {
        "tls"
    }
    fn bound(&self) -> Vec<(&'static str, std::net::SocketAddr)> {
        Vec::new()
    }
    fn stop(
        self: Box<Self>,
        _deadline: std::time::Instant,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            self.cancel.cancel();
            let _ = self.task.await;
        })
    }
}
