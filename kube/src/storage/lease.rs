//! A lease in the object store: at most one KUBE holds it at a time, a dead holder's lease
//! expires, and every grant carries a fencing token one above the last, so what a holder
//! writes can be refused once a newer holder has written (the way certmagic's storage
//! locks guard ACME orders, made safe by the store's conditional writes).
//!
//! The decision is pure (`next`); `acquire`, `renew` and `release` send it to the store
//! with `If-None-Match: *` (no lease yet) or `If-Match: <etag>` (over the copy read), so
//! of two KUBEs racing for one lease exactly one write succeeds.

use serde::{Deserialize, Serialize};

use super::{Cond, MAX_SMALL_OBJECT, ObjectStore, StorageError};

/// What the lease object holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Who holds it (`ObjectStore::holder`).
    pub holder: String,
    /// One above the token of every earlier grant.
    pub token: u64,
    /// Unix seconds after which anyone may take it; 0 once released.
    pub expires: u64,
}

/// What to do about a lease read from the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Write this grant under this condition.
    Take(Lease, Cond),
    /// Someone else holds it until `expires`.
    Held(Lease),
}

/// Decides whether `me` may take the lease at `now` for `ttl` seconds, given the copy in
/// the store (with its ETag). A lease that cannot be read is treated as held by nobody,
/// and replaced only over that copy.
///
/// `floor` is the highest token known to have written anything (the certificate's): a
/// lease object lost or replaced never hands out a token at or below it.
pub fn next(
    now: u64,
    me: &str,
    ttl: u64,
    floor: u64,
    current: Option<(Option<&Lease>, &str)>,
) -> Step {
    let token = |l: Option<&Lease>| l.map_or(0, |l| l.token).max(floor).saturating_add(1);
    match current {
        None => Step::Take(
            Lease {
                holder: me.into(),
                token: token(None),
                expires: now + ttl,
            },
            Cond::Absent,
        ),
        Some((Some(l), _)) if l.expires > now && l.holder != me => Step::Held(l.clone()),
        Some((l, etag)) => Step::Take(
            Lease {
                holder: me.into(),
                token: token(l),
                expires: now + ttl,
            },
            Cond::Match(etag.into()),
        ),
    }
}

/// A lease this KUBE holds: the grant and the ETag of its copy in the store.
#[derive(Clone, Debug)]
pub struct Held {
    pub key: String,
    pub lease: Lease,
    etag: String,
}

/// Reads the lease at `key`: None when there is none, with an unreadable copy as `None`
/// inside (so it can be replaced).
async fn read(
    store: &ObjectStore,
    key: &str,
) -> Result<Option<(Option<Lease>, String)>, StorageError> {
    Ok(store
        .get(key, MAX_SMALL_OBJECT)
        .await?
        .map(|o| (serde_json::from_slice(&o.bytes).ok(), o.etag)))
}

/// Takes the lease at `key` for `ttl` seconds if nobody else holds it: `Ok(Err(lease))`
/// names the holder otherwise.
pub async fn acquire(
    store: &ObjectStore,
    key: &str,
    now: u64,
    ttl: u64,
    floor: u64,
) -> Result<Result<Held, Lease>, StorageError> {
    store.check_conditional_writes().await?;
    let current = read(store, key).await?;
    let step = next(
        now,
        &store.holder,
        ttl,
        floor,
        current.as_ref().map(|(l, e)| (l.as_ref(), e.as_str())),
    );
    match step {
        Step::Held(l) => Ok(Err(l)),
        Step::Take(lease, cond) => {
            let json = serde_json::to_vec(&lease).unwrap_or_default();
            match store.put_bytes(key, json, &cond).await {
                Ok(etag) => Ok(Ok(Held {
                    key: key.into(),
                    lease,
                    etag,
                })),
                // Another KUBE wrote first: it holds the lease now.
                Err(StorageError::Conflict { .. }) => match read(store, key).await? {
                    Some((Some(l), _)) => Ok(Err(l)),
                    _ => Err(StorageError::Conflict { key: key.into() }),
                },
                Err(e) => Err(e),
            }
        }
    }
}

/// Extends a held lease to `now + ttl`; `Conflict` when it was lost meanwhile.
pub async fn renew(
    store: &ObjectStore,
    held: &mut Held,
    now: u64,
    ttl: u64,
) -> Result<(), StorageError> {
    let lease = Lease {
        expires: now + ttl,
        ..held.lease.clone()
    };
    let json = serde_json::to_vec(&lease).unwrap_or_default();
    held.etag = store
        .put_bytes(&held.key, json, &Cond::Match(held.etag.clone()))
        .await?;
    held.lease = lease;
    Ok(())
}

/// Gives the lease up (it expires at once) if it is still this grant, whatever its ETag (a
/// renewal may have been cut short); a lease lost meanwhile is left alone.
pub async fn release(store: &ObjectStore, held: Held) -> Result<(), StorageError> {
    let etag = match read(store, &held.key).await? {
        Some((Some(l), etag)) if l.holder == held.lease.holder && l.token == held.lease.token => {
            etag
        }
        _ => return Ok(()),
    };
    let lease = Lease {
        expires: 0,
        ..held.lease
    };
    let json = serde_json::to_vec(&lease).unwrap_or_default();
    match store.put_bytes(&held.key, json, &Cond::Match(etag)).await {
        Ok(_) | Err(StorageError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether the grant `held` is still the lease in the store, and live (read just before
/// a fenced write; a renewal under way may have moved its expiry).
pub async fn still_held(store: &ObjectStore, held: &Held, now: u64) -> Result<bool, StorageError> {
    Ok(match read(store, &held.key).await? {
        Some((Some(l), _)) => {
            l.holder == held.lease.holder && l.token == held.lease.token && l.expires > now
        }
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, token: u64, expires: u64) -> Lease {
        Lease {
            holder: holder.into(),
            token,
            expires,
        }
    }

    #[test]
    fn a_missing_lease_is_created_only_if_still_missing() {
        assert_eq!(
            next(100, "a", 60, 0, None),
            Step::Take(lease("a", 1, 160), Cond::Absent)
        );
    }

    #[test]
    fn a_live_lease_of_another_is_left_alone() {
        let l = lease("b", 7, 150);
        assert_eq!(
            next(100, "a", 60, 0, Some((Some(&l), "e1"))),
            Step::Held(l.clone())
        );
    }

    #[test]
    fn an_expired_or_released_lease_is_taken_over_the_copy_read_with_a_higher_token() {
        for l in [lease("b", 7, 100), lease("b", 7, 0)] {
            assert_eq!(
                next(100, "a", 60, 0, Some((Some(&l), "e1"))),
                Step::Take(lease("a", 8, 160), Cond::Match("e1".into()))
            );
        }
    }

    #[test]
    fn its_own_lease_is_taken_again_with_a_new_token() {
        let l = lease("a", 3, 500);
        assert_eq!(
            next(100, "a", 60, 0, Some((Some(&l), "e"))),
            Step::Take(lease("a", 4, 160), Cond::Match("e".into()))
        );
    }

    #[test]
    fn an_unreadable_lease_is_replaced_only_over_that_copy() {
        assert_eq!(
            next(100, "a", 60, 0, Some((None, "bad"))),
            Step::Take(lease("a", 1, 160), Cond::Match("bad".into()))
        );
    }

    /// Against a real store: of many KUBEs asking at the same moment exactly one gets the
    /// lease; an expired lease goes to the next with a higher token; the old holder can
    /// neither renew nor release it then.
    #[tokio::test]
    async fn one_holder_at_a_time_in_a_real_store() {
        let s3 = ::tests::s3::S3::start();
        let stores: Vec<_> = (0..8)
            .map(|i| crate::storage::test_store(&s3, &format!("kube-{i}")))
            .collect();
        let asks = stores.iter().map(|s| acquire(s, "locks/x", 100, 60, 0));
        let results = futures_util::future::join_all(asks).await;
        let won: Vec<Held> = results
            .into_iter()
            .filter_map(|r| r.expect("store answers").ok())
            .collect();
        assert_eq!(won.len(), 1, "exactly one holder");
        let mut first = won.into_iter().next().unwrap();
        assert_eq!(first.lease.token, 1);
        // Before it expires nobody else gets it; after, the next one does, token 2.
        let other = &stores[if first.lease.holder == "kube-0" { 1 } else { 0 }];
        assert!(
            acquire(other, "locks/x", 159, 60, 0)
                .await
                .unwrap()
                .is_err()
        );
        let second = acquire(other, "locks/x", 161, 60, 0)
            .await
            .unwrap()
            .expect("expired");
        assert_eq!(second.lease.token, 2);
        let old = stores
            .iter()
            .find(|s| s.holder == first.lease.holder)
            .unwrap();
        assert!(matches!(
            renew(old, &mut first, 162, 60).await,
            Err(StorageError::Conflict { .. })
        ));
        assert!(!still_held(old, &first, 162).await.unwrap());
        release(old, first).await.unwrap();
        assert!(
            still_held(other, &second, 162).await.unwrap(),
            "a stale release changes nothing"
        );
    }

    #[test]
    fn a_lost_lease_object_never_hands_out_a_token_already_used() {
        assert_eq!(
            next(100, "a", 60, 20, None),
            Step::Take(lease("a", 21, 160), Cond::Absent)
        );
        let l = lease("b", 3, 0);
        assert_eq!(
            next(100, "a", 60, 20, Some((Some(&l), "e"))),
            Step::Take(lease("a", 21, 160), Cond::Match("e".into()))
        );
    }

    #[test]
    fn a_token_never_wraps() {
        let l = lease("b", u64::MAX, 0);
        let Step::Take(new, _) = next(100, "a", 60, 0, Some((Some(&l), "e"))) else {
            panic!("expired lease not taken");
        };
        assert_eq!(new.token, u64::MAX);
    }
}
