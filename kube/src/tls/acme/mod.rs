//! Certificates from an RFC 8555 directory through instant-acme: the account, one order per
//! issuance with every authorization made ready at once (the server validates them in
//! parallel), the three challenge types, storage under `<data_dir>/tls/acme/`, and the loop
//! that renews, backs off and falls back. Decisions live in `plan`.

pub mod plan;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use config::Challenge;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, ExternalAccountKey,
    HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use serde::{Deserialize, Serialize};

use super::CertInfo;
use super::challenges::Challenges;
use crate::datadir;
use crate::dns::DnsHandle;
use crate::dns::records::RecordSpec;

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("the ACME directory {url} is not reachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{0}")]
    Protocol(String),
    #[error(
        "no challenge KUBE can answer for {identifier} (offered: {offered}; acme.challenges allows: {allowed})"
    )]
    NoChallenge {
        identifier: String,
        offered: String,
        allowed: String,
    },
    #[error("the order for {names} ended {status}: {detail}")]
    Order {
        names: String,
        status: String,
        detail: String,
    },
    #[error("the data dir is not writable: {0}")]
    NotWritable(String),
    #[error("{0}")]
    Tls(String),
}

fn protocol(e: instant_acme::Error) -> AcmeError {
    AcmeError::Protocol(e.to_string())
}

/// What is known about the stored certificate (`tls/acme/meta.json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Meta {
    pub names: Vec<String>,
    pub directory: String,
    /// The renewal window the directory suggested (RFC 9773), Unix seconds.
    pub ari_window: Option<(u64, u64)>,
}

/// Files of the ACME state.
#[derive(Clone, Debug)]
pub struct Paths {
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub meta: PathBuf,
}

impl Paths {
    pub fn new(data_dir: &Path) -> Paths {
        let dir = data_dir.join("tls").join("acme");
        Paths {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            meta: dir.join("meta.json"),
            dir,
        }
    }

    fn account(&self, directory: &str) -> PathBuf {
        use sha2::Digest;
        let h = hex::encode(sha2::Sha256::digest(directory.as_bytes()));
        self.dir.join(format!("account-{}.json", &h[..16]))
    }
}

/// Checks that certificates can be written before asking for any.
pub fn check_writable(paths: &Paths) -> Result<(), AcmeError> {
    let probe = paths.dir.join(".write-probe");
    std::fs::create_dir_all(&paths.dir)
        .and_then(|_| std::fs::write(&probe, b"probe"))
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| AcmeError::NotWritable(format!("{}: {e}", paths.dir.display())))
}

/// The stored certificate, when its key matches and it names exactly `names`.
pub fn load(paths: &Paths, names: &[String]) -> Option<(String, String, CertInfo, Meta)> {
    let meta: Meta = serde_json::from_slice(&std::fs::read(&paths.meta).ok()?).ok()?;
    let super::pair::Pair { chain, key } = super::pair::read(&paths.key, &paths.cert).ok()?;
    let info = super::cert_info(&chain).ok()?;
    let mut want = names.to_vec();
    let mut have = meta.names.clone();
    want.sort();
    have.sort();
    (want == have).then_some((chain, key, info, meta))
}

/// Writes the key with its chain as one file (`pair`), then metadata. Metadata last: a crash
/// or a backup in between pairs the new certificate with the old names, which at worst
/// orders again, and with the old renewal window, fetched again on the next start.
pub fn save(paths: &Paths, chain: &str, key: &str, meta: &Meta) -> Result<(), AcmeError> {
    super::pair::write(&paths.key, &paths.cert, chain, key)
        .map_err(|e| AcmeError::NotWritable(e.to_string()))?;
    let json = serde_json::to_vec_pretty(meta).map_err(|e| AcmeError::Protocol(e.to_string()))?;
    datadir::write_atomic(&paths.meta, &json).map_err(|e| AcmeError::NotWritable(e.to_string()))
}

/// Rewrites the metadata alone (a new renewal window).
pub fn save_meta(paths: &Paths, meta: &Meta) -> Result<(), AcmeError> {
    let json = serde_json::to_vec_pretty(meta).map_err(|e| AcmeError::Protocol(e.to_string()))?;
    datadir::write_atomic(&paths.meta, &json).map_err(|e| AcmeError::NotWritable(e.to_string()))
}

/// An HTTPS client trusting the compiled-in web PKI roots, plus `ca_root` when given (a test
/// directory such as Pebble).
pub fn http_client(ca_root: Option<&Path>) -> Result<Box<dyn HttpClient>, AcmeError> {
    let tls = crate::tls::client_config(ca_root).map_err(|e| match ca_root {
        Some(path) => AcmeError::Protocol(format!("acme.ca_root {}: {e}", path.display())),
        None => AcmeError::Protocol(e),
    })?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, instant_acme::BodyWrapper<bytes::Bytes>>(connector);
    Ok(Box::new(client))
}

/// Fetches the directory once: is it there at all?
pub async fn check_directory(url: &str, ca_root: Option<&Path>) -> Result<(), AcmeError> {
    let unreachable = |reason: String| AcmeError::Unreachable {
        url: url.to_owned(),
        reason,
    };
    let client = http_client(ca_root)?;
    let req = http::Request::get(url)
        .body(instant_acme::BodyWrapper::default())
        .map_err(|e| unreachable(e.to_string()))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| unreachable("no answer in 10 s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    if !resp.parts.status.is_success() {
        return Err(unreachable(format!("HTTP {}", resp.parts.status)));
    }
    Ok(())
}

/// Everything an issuance needs.
#[derive(Clone)]
pub struct Ctx {
    pub section: config::Acme,
    pub paths: Paths,
    pub challenges: Arc<Challenges>,
    pub dns: Option<DnsHandle>,
    /// With `storage`: the cluster's certificate and the lease guarding its orders.
    pub storage: crate::storage::StorageHandle,
}

async fn account(ctx: &Ctx, directory: &str) -> Result<Account, AcmeError> {
    let http = http_client(ctx.section.ca_root.as_deref())?;
    let path = ctx.paths.account(directory);
    if let Ok(bytes) = std::fs::read(&path) {
        let creds: AccountCredentials = serde_json::from_slice(&bytes)
            .map_err(|e| AcmeError::Protocol(format!("{}: {e}", path.display())))?;
        return Account::builder_with_http(http)
            .from_credentials(creds)
            .await
            .map_err(protocol);
    }
    let contact: Vec<String> = ctx
        .section
        .email
        .iter()
        .map(|e| format!("mailto:{e}"))
        .collect();
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let eab = match (&ctx.section.eab_kid, &ctx.section.eab_hmac_key) {
        (Some(kid), Some(key)) => {
            use base64::Engine;
            let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(key.trim_end_matches('='))
                .map_err(|e| AcmeError::Protocol(format!("acme.eab_hmac_key: {e}")))?;
            Some(ExternalAccountKey::new(kid.clone(), &key))
        }
        _ => None,
    };
    let (account, creds) = Account::builder_with_http(http)
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            directory.to_owned(),
            eab.as_ref(),
        )
        .await
        .map_err(protocol)?;
    let json = serde_json::to_vec_pretty(&creds).map_err(|e| AcmeError::Protocol(e.to_string()))?;
    datadir::write_private(&path, &json).map_err(|e| AcmeError::NotWritable(e.to_string()))?;
    tracing::info!(directory, "ACME account created");
    Ok(account)
}

/// A challenge answer to take down once the order is done, whatever its outcome.
enum Posted {
    Http(String),
    Alpn(String),
    Dns(String, String),
}

fn kind_of(c: &ChallengeType) -> Option<Challenge> {
    match c {
        ChallengeType::Http01 => Some(Challenge::Http01),
        ChallengeType::Dns01 => Some(Challenge::Dns01),
        ChallengeType::TlsAlpn01 => Some(Challenge::TlsAlpn01),
        _ => None,
    }
}

fn challenge_type(c: Challenge) -> ChallengeType {
    match c {
        Challenge::Http01 => ChallengeType::Http01,
        Challenge::Dns01 => ChallengeType::Dns01,
        Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    }
}

/// Orders a certificate for `names` from `directory`; returns (chain PEM, key PEM). A run
/// of rejected nonces (RFC 8555 §6.5; Pebble rejects a share on purpose) outlasts
/// instant-acme's own retries now and then: the order is tried again at once.
pub async fn issue(
    ctx: &Ctx,
    directory: &str,
    names: &[String],
) -> Result<(String, String), AcmeError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match issue_once(ctx, directory, names).await {
            Err(e) if attempts < 3 && e.to_string().contains("badNonce") => {
                tracing::debug!(error = %e, "nonce rejected again; ordering once more");
            }
            other => return other,
        }
    }
}

async fn issue_once(
    ctx: &Ctx,
    directory: &str,
    names: &[String],
) -> Result<(String, String), AcmeError> {
    let account = account(ctx, directory).await?;
    let identifiers: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(protocol)?;
    let mut posted = Vec::new();
    let result = answer_and_finish(ctx, &mut order, names, &mut posted).await;
    for p in posted {
        match p {
            Posted::Http(token) => ctx.challenges.remove_http01(&token),
            Posted::Alpn(name) => ctx.challenges.remove_alpn(&name),
            Posted::Dns(name, value) => {
                if let Some(dns) = &ctx.dns {
                    let dns = dns.clone();
                    let r =
                        tokio::task::spawn_blocking(move || dns.remove(&name, "TXT", Some(&value)))
                            .await;
                    if !matches!(r, Ok(Ok(_))) {
                        tracing::warn!("cannot remove an ACME challenge record");
                    }
                }
            }
        }
    }
    result
}

async fn answer_and_finish(
    ctx: &Ctx,
    order: &mut instant_acme::Order,
    names: &[String],
    posted: &mut Vec<Posted>,
) -> Result<(String, String), AcmeError> {
    let dns_running = ctx.dns.is_some();
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(protocol)?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => {
                return Err(AcmeError::Order {
                    names: names.join(", "),
                    status: format!("{other:?}"),
                    detail: "an authorization is not pending".into(),
                });
            }
        }
        let offered: Vec<Challenge> = authz
            .challenges
            .iter()
            .filter_map(|c| kind_of(&c.r#type))
            .collect();
        let ident = authz.identifier();
        let Identifier::Dns(base) = ident.identifier else {
            return Err(AcmeError::Protocol(
                "only DNS identifiers are ordered".into(),
            ));
        };
        let shown = if ident.wildcard {
            format!("*.{base}")
        } else {
            base.clone()
        };
        let base = base.clone();
        let Some(kind) =
            plan::challenge_for(&shown, &ctx.section.challenges, &offered, dns_running)
        else {
            return Err(AcmeError::NoChallenge {
                identifier: shown,
                offered: format!("{offered:?}"),
                allowed: format!("{:?}", ctx.section.challenges),
            });
        };
        let Some(mut challenge) = authz.challenge(challenge_type(kind)) else {
            return Err(AcmeError::Protocol(format!(
                "{kind:?} vanished for {shown}"
            )));
        };
        let ka = challenge.key_authorization();
        match kind {
            Challenge::Http01 => {
                ctx.challenges.set_http01(&challenge.token, ka.as_str());
                posted.push(Posted::Http(challenge.token.clone()));
            }
            Challenge::TlsAlpn01 => {
                ctx.challenges
                    .set_alpn(&base, ka.digest().as_ref())
                    .map_err(|e| AcmeError::Tls(e.to_string()))?;
                posted.push(Posted::Alpn(base.clone()));
            }
            Challenge::Dns01 => {
                let dns = ctx
                    .dns
                    .clone()
                    .ok_or_else(|| AcmeError::Protocol("dns-01 without KUBE's DNS".into()))?;
                let name = format!("_acme-challenge.{base}.");
                let value = format!("\"{}\"", ka.dns_value());
                let spec = RecordSpec {
                    name: name.clone(),
                    kind: "TXT".into(),
                    value: value.clone(),
                    ttl: Some(10),
                };
                let adding = dns.clone();
                tokio::task::spawn_blocking(move || adding.add(spec))
                    .await
                    .map_err(|e| AcmeError::Protocol(e.to_string()))?
                    .map_err(|e| AcmeError::Protocol(format!("cannot publish {name}: {e}")))?;
                posted.push(Posted::Dns(name, value));
                // The CA may ask any authoritative server: every secondary must answer the
                // record before it is told to look.
                let late = dns.propagated(Duration::from_secs(60)).await;
                if !late.is_empty() {
                    tracing::warn!(
                        ?late,
                        "dns-01: secondaries still behind after 60 s; asking the CA anyway"
                    );
                }
            }
        }
        tracing::debug!(identifier = %shown, challenge = ?kind, "challenge ready");
        challenge.set_ready().await.map_err(protocol)?;
    }
    // Pebble validates in milliseconds and sends no Retry-After: poll promptly.
    let quick = RetryPolicy::new()
        .initial_delay(Duration::from_millis(25))
        .backoff(1.5)
        .timeout(Duration::from_secs(90));
    let status = order.poll_ready(&quick).await.map_err(protocol)?;
    if status != OrderStatus::Ready {
        let detail = order
            .state()
            .error
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "no detail".into());
        return Err(AcmeError::Order {
            names: names.join(", "),
            status: format!("{status:?}"),
            detail,
        });
    }
    let key = order.finalize().await.map_err(protocol)?;
    let chain = order.poll_certificate(&quick).await.map_err(protocol)?;
    Ok((chain, key))
}

/// The directory's renewal window for `chain` (RFC 9773), when it offers one.
pub async fn renewal_window(ctx: &Ctx, directory: &str, chain: &str) -> Option<(u64, u64)> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::pem_slice_iter(chain.as_bytes())
        .next()?
        .ok()?;
    let id = instant_acme::CertificateIdentifier::try_from(&der).ok()?;
    let account = account(ctx, directory).await.ok()?;
    match account.renewal_info(&id).await {
        Ok((info, _retry_after)) => {
            let w = info.suggested_window;
            Some((
                w.start.unix_timestamp().max(0) as u64,
                w.end.unix_timestamp().max(0) as u64,
            ))
        }
        Err(e) => {
            tracing::debug!(error = %e, "no renewal information");
            None
        }
    }
}

pub use crate::service::unix;

pub fn from_unix(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

#[cfg(test)]
mod tests;
