//! Who belongs to a space (pure): from the space's credentials, the members and their
//! roles. A member credential holds when a chain of admin credentials leads to the genesis
//! (issued by the space key), every proof verifies, its signer may sign for its issuer
//! (itself, or a device the issuer authorized), nothing on the chain is expired or revoked,
//! and only admins grant roles, so roles never rise along a chain. Linear in the number of
//! credentials: each is verified once and visited once.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use crate::credential::{Assertion, Credential, Role};

/// Why a credential does not count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    BadProof(String),
    /// Signed by a key that may not sign for the issuer.
    WrongSigner,
    Expired,
    /// Issued later than now plus the allowed clock skew.
    FromTheFuture,
    Revoked,
    /// A revocation of a revocation: revocations are final.
    RevokesARevocation,
    /// About another space.
    OtherSpace,
    /// Its issuer is not an admin of the space (or no chain reaches it).
    NoChain,
}

/// How far KUBE lets other clocks be off when it judges a credential's times.
pub const SKEW_SECS: u64 = 300;

/// The clock and how far other clocks may be off.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub now: u64,
    pub skew: u64,
}

/// A `SpaceMember` credential that counts: valid, on a chain, not revoked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub subject: String,
    pub issuer: String,
    pub role: Role,
}

/// The space as its credentials make it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Membership {
    pub roles: BTreeMap<String, Role>,
    /// Every member credential that counts, in the order given.
    pub grants: Vec<Grant>,
    /// Device key → the identity it signs for.
    pub devices: BTreeMap<String, String>,
    pub rejected: Vec<(String, Rejection)>,
}

impl Membership {
    /// The role of a key: its own, or that of the identity it is a device of.
    pub fn role_of(&self, key: &str) -> Option<Role> {
        self.roles
            .get(key)
            .or_else(|| self.devices.get(key).and_then(|id| self.roles.get(id)))
            .copied()
    }
}

/// Validates the credentials of `space` (its key as did:key).
pub fn validate(space: &str, credentials: &[Credential], clock: Clock) -> Membership {
    let mut rejected = Vec::new();
    // 1. Proofs, time, and the space they speak of: each credential checked once.
    let mut good: Vec<&Credential> = Vec::with_capacity(credentials.len());
    for c in credentials {
        if let Err(e) = c.verify_proof() {
            rejected.push((c.id.clone(), Rejection::BadProof(e.to_string())));
        } else if c.issued > clock.now.saturating_add(clock.skew) {
            rejected.push((c.id.clone(), Rejection::FromTheFuture));
        } else if c
            .expires
            .is_some_and(|e| e.saturating_add(clock.skew) < clock.now)
        {
            rejected.push((c.id.clone(), Rejection::Expired));
        } else if matches!(&c.assertion, Assertion::SpaceGenesis { space: s } | Assertion::SpaceMember { space: s, .. } if s != space)
        {
            rejected.push((c.id.clone(), Rejection::OtherSpace));
        } else {
            good.push(c);
        }
    }
    let by_id: HashMap<&str, &Credential> = good.iter().map(|c| (c.id.as_str(), *c)).collect();

    // 2. Devices: authorized by the identity itself, signed by the identity.
    let mut devices: HashMap<&str, &str> = HashMap::new();
    for c in &good {
        if let Assertion::AuthorizedDevice { identity, device } = &c.assertion
            && c.issuer == *identity
            && c.subject == *device
            && c.proof.signer == c.issuer
        {
            devices.insert(device.as_str(), identity.as_str());
        }
    }
    let signer_ok = |c: &Credential| {
        c.proof.signer == c.issuer
            || devices.get(c.proof.signer.as_str()) == Some(&c.issuer.as_str())
    };

    // 3. Revocations. One that targets a revocation is refused; one counts when the space
    //    key, the revoked credential's own issuer, or (second round) an admin issued it.
    let mut revocations: Vec<(&Credential, &str)> = Vec::new();
    for c in &good {
        if let Assertion::Revocation { credential } = &c.assertion {
            if !signer_ok(c) {
                rejected.push((c.id.clone(), Rejection::WrongSigner));
            } else if by_id
                .get(credential.as_str())
                .is_some_and(|t| matches!(t.assertion, Assertion::Revocation { .. }))
            {
                rejected.push((c.id.clone(), Rejection::RevokesARevocation));
            } else {
                revocations.push((c, credential.as_str()));
            }
        }
    }
    let mut revoked: HashSet<&str> = revocations
        .iter()
        .filter(|(r, target)| {
            r.issuer == space || by_id.get(target).is_some_and(|t| t.issuer == r.issuer)
        })
        .map(|(_, t)| *t)
        .collect();
    let first = walk(space, &good, &revoked, &signer_ok);
    for (r, target) in &revocations {
        if first.get(r.issuer.as_str()) == Some(&Role::Admin) {
            revoked.insert(target);
        }
    }
    let roles = walk(space, &good, &revoked, &signer_ok);

    // 4. Report what does not count, once each; collect the member grants that do. (Ids are
    //    no key here: a forged credential may carry a good one's id, and is not in `good`.)
    let mut grants = Vec::new();
    for c in &good {
        if let Assertion::SpaceMember { role, .. } = c.assertion
            && !revoked.contains(c.id.as_str())
            && signer_ok(c)
            && roles.get(c.issuer.as_str()) == Some(&Role::Admin)
        {
            grants.push(Grant {
                subject: c.subject.clone(),
                issuer: c.issuer.clone(),
                role,
            });
        }
    }
    let mut reported: HashSet<String> = rejected.iter().map(|(id, _)| id.clone()).collect();
    for c in &good {
        if reported.contains(&c.id) {
            continue;
        }
        let why = if revoked.contains(c.id.as_str()) {
            Some(Rejection::Revoked)
        } else if !signer_ok(c) {
            Some(Rejection::WrongSigner)
        } else {
            match &c.assertion {
                Assertion::SpaceGenesis { .. } if c.issuer != space => Some(Rejection::NoChain),
                Assertion::SpaceMember { .. }
                    if roles.get(c.issuer.as_str()) != Some(&Role::Admin) =>
                {
                    Some(Rejection::NoChain)
                }
                _ => None,
            }
        };
        if let Some(why) = why {
            reported.insert(c.id.clone());
            rejected.push((c.id.clone(), why));
        }
    }
    let live_devices = devices
        .into_iter()
        .filter(|(_, id)| roles.contains_key(*id))
        .map(|(d, id)| (d.to_owned(), id.to_owned()))
        .collect();
    Membership {
        roles: roles.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        grants,
        devices: live_devices,
        rejected,
    }
}

/// Breadth-first from the genesis over credentials issued by admins.
fn walk<'a>(
    space: &str,
    good: &[&'a Credential],
    revoked: &HashSet<&str>,
    signer_ok: &dyn Fn(&Credential) -> bool,
) -> HashMap<&'a str, Role> {
    let mut by_issuer: HashMap<&str, Vec<&'a Credential>> = HashMap::new();
    for c in good {
        if !revoked.contains(c.id.as_str()) && signer_ok(c) {
            by_issuer.entry(c.issuer.as_str()).or_default().push(c);
        }
    }
    let mut roles: HashMap<&'a str, Role> = HashMap::new();
    let mut queue: VecDeque<&'a str> = VecDeque::new();
    for c in by_issuer.get(space).into_iter().flatten() {
        if matches!(c.assertion, Assertion::SpaceGenesis { .. })
            && roles.insert(c.subject.as_str(), Role::Admin).is_none()
        {
            queue.push_back(c.subject.as_str());
        }
    }
    while let Some(admin) = queue.pop_front() {
        for c in by_issuer.get(admin).into_iter().flatten() {
            if let Assertion::SpaceMember { role, .. } = c.assertion {
                let had = roles.get(c.subject.as_str()).copied();
                if had.is_none_or(|r| r < role) {
                    roles.insert(c.subject.as_str(), role);
                    if role == Role::Admin && had != Some(Role::Admin) {
                        queue.push_back(c.subject.as_str());
                    }
                }
            }
        }
    }
    roles
}

#[cfg(test)]
mod tests;
