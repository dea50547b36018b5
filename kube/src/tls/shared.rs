//! The cluster's ACME certificate in the object store (`storage`): one order per name for
//! every KUBE sharing the store. The KUBE whose certificate is due takes the lease
//! `locks/acme/<domain>` (see `storage::lease`), orders, and writes `certs/<domain>.json`
//! fenced by the lease's token; every KUBE takes the certificate from there.

use serde::{Deserialize, Serialize};

use super::CertInfo;
use super::acme::Meta;
use crate::storage::lease::{self, Held};
use crate::storage::{Cond, MAX_SMALL_OBJECT, ObjectStore, StorageError};

/// How long a lease lasts unless renewed; the holder renews it every quarter of this.
/// KUBEs' clocks must agree to well within it.
pub const LEASE_SECS: u64 = 120;

/// `certs/<domain>.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stored {
    pub chain: String,
    pub key: String,
    pub meta: Meta,
    /// The fencing token of the lease it was written under.
    pub token: u64,
}

pub fn cert_key(domain: &str) -> String {
    format!("certs/{domain}.json")
}

pub fn lock_key(domain: &str) -> String {
    format!("locks/acme/{domain}")
}

/// The certificate in the store with its ETag; `None` inside when there is one but it
/// is not usable for `names` (other names, a key that does not match, unreadable).
pub async fn load(
    store: &ObjectStore,
    domain: &str,
    names: &[String],
) -> Result<Option<(Option<(Stored, CertInfo)>, String)>, StorageError> {
    let Some(obj) = store.get(&cert_key(domain), MAX_SMALL_OBJECT).await? else {
        return Ok(None);
    };
    let usable = serde_json::from_slice::<Stored>(&obj.bytes)
        .ok()
        .and_then(|s| {
            let mut want = names.to_vec();
            let mut have = s.meta.names.clone();
            want.sort();
            have.sort();
            if want != have || super::certified_key(&s.chain, &s.key).is_err() {
                return None;
            }
            let info = super::cert_info(&s.chain).ok()?;
            plausible(&info, std::time::SystemTime::now()).then_some((s, info))
        });
    Ok(Some((usable, obj.etag)))
}

/// The fencing token the certificate in the store was written under (0: none).
pub async fn token(store: &ObjectStore, domain: &str) -> Result<u64, StorageError> {
    Ok(store
        .get(&cert_key(domain), MAX_SMALL_OBJECT)
        .await?
        .and_then(|o| serde_json::from_slice::<Stored>(&o.bytes).ok())
        .map_or(0, |s| s.token))
}

/// The longest lifetime a publicly trusted certificate may have (CA/Browser Forum).
const MAX_LIFETIME: std::time::Duration = std::time::Duration::from_secs(398 * 86400);

/// Whether a certificate from the store could have come from an ACME order: no longer
/// than `MAX_LIFETIME`, and already valid (within a day of clock skew). One that is not
/// would otherwise stop every KUBE from renewing until it expires.
fn plausible(info: &CertInfo, now: std::time::SystemTime) -> bool {
    let life = info
        .not_after
        .duration_since(info.not_before)
        .unwrap_or_default();
    life <= MAX_LIFETIME && info.not_before <= now + std::time::Duration::from_secs(86400)
}

/// Why a certificate was not written to the store.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("a newer lease holder wrote the certificate first, or the lease was lost")]
    Fenced,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Writes a certificate ordered under `held`, unless a holder with a newer token wrote one
/// or the lease is no longer this KUBE's: the write is conditional on the copy read.
pub async fn save(
    store: &ObjectStore,
    domain: &str,
    held: &Held,
    chain: &str,
    key: &str,
    meta: &Meta,
    now: u64,
) -> Result<(), SaveError> {
    let k = cert_key(domain);
    let cond = match store.get(&k, MAX_SMALL_OBJECT).await? {
        Some(obj) => {
            let theirs = serde_json::from_slice::<Stored>(&obj.bytes)
                .map(|s| s.token)
                .unwrap_or(0);
            if theirs > held.lease.token {
                return Err(SaveError::Fenced);
            }
            Cond::Match(obj.etag)
        }
        None => Cond::Absent,
    };
    if !lease::still_held(store, held, now).await? {
        return Err(SaveError::Fenced);
    }
    let stored = Stored {
        chain: chain.into(),
        key: key.into(),
        meta: meta.clone(),
        token: held.lease.token,
    };
    let json = serde_json::to_vec(&stored).unwrap_or_default();
    match store.put_bytes(&k, json, &cond).await {
        Ok(_) => Ok(()),
        Err(StorageError::Conflict { .. }) => Err(SaveError::Fenced),
        Err(e) => Err(e.into()),
    }
}

/// Keeps `held` renewed until it cannot be: returns when the lease is lost or the store
/// fails (the order under way must then not be written). The grant (holder, token) stays
/// the same; only the expiry and the ETag move.
pub async fn keep(store: &ObjectStore, held: &mut Held) -> StorageError {
    let mut wait = LEASE_SECS / 4;
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
        match lease::renew(store, held, crate::service::unix_now(), LEASE_SECS).await {
            Ok(()) => wait = LEASE_SECS / 4,
            // Taken by another: nothing to keep.
            Err(e @ StorageError::Conflict { .. }) => return e,
            // A slow or failing store: tried again while the lease has time left.
            Err(e) => {
                if held.lease.expires <= crate::service::unix_now() + 10 {
                    return e;
                }
                tracing::warn!(error = %e, "cannot renew the ACME lease yet; trying again");
                wait = 5;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::test_store;

    fn pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["kube.test".to_owned()]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now;
        params.not_after = now + time::Duration::days(90);
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    /// A holder whose lease expired and went to another KUBE cannot write its certificate
    /// over the newer holder's, even when its order finishes last.
    #[tokio::test]
    async fn a_stale_holder_cannot_overwrite_the_newer_certificate() {
        let s3 = ::tests::s3::S3::start();
        let (a, b) = (test_store(&s3, "a"), test_store(&s3, "b"));
        let lock = lock_key("kube.test");
        let held_a = lease::acquire(&a, &lock, 100, LEASE_SECS, 0)
            .await
            .unwrap()
            .unwrap();
        let later = 100 + LEASE_SECS + 1;
        let held_b = lease::acquire(&b, &lock, later, LEASE_SECS, 0)
            .await
            .unwrap()
            .unwrap();
        let meta = Meta {
            names: vec!["kube.test".into()],
            ..Meta::default()
        };
        let (chain_b, key_b) = pair();
        save(&b, "kube.test", &held_b, &chain_b, &key_b, &meta, later)
            .await
            .expect("the holder writes");
        let (chain_a, key_a) = pair();
        assert!(matches!(
            save(&a, "kube.test", &held_a, &chain_a, &key_a, &meta, later).await,
            Err(SaveError::Fenced)
        ));
        let names = vec!["kube.test".to_owned()];
        let (found, _) = load(&b, "kube.test", &names).await.unwrap().unwrap();
        let (stored, _) = found.expect("usable");
        assert_eq!(stored.chain, chain_b);
        assert_eq!(stored.token, held_b.lease.token);
        // A certificate for ten years, planted in the store: not usable.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["kube.test".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let planted = Stored {
            chain: params.self_signed(&key).unwrap().pem(),
            key: key.serialize_pem(),
            meta: meta.clone(),
            token: 99,
        };
        b.put_bytes(
            &cert_key("kube.test"),
            serde_json::to_vec(&planted).unwrap(),
            &Cond::Any,
        )
        .await
        .unwrap();
        assert!(matches!(
            load(&b, "kube.test", &names).await.unwrap(),
            Some((None, _))
        ));
        // Another name set, or a key that is not the certificate's: not usable.
        assert!(matches!(
            load(&b, "kube.test", &["other.test".to_owned()])
                .await
                .unwrap(),
            Some((None, _))
        ));
    }
}
