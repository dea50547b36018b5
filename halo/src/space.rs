//! Who belongs to a space (pure): from the space's credentials, the members, their roles and
//! their devices. A member credential holds when a chain of admin credentials leads to the
//! genesis (issued by the space key), every proof verifies, its signer may sign for its issuer
//! (itself, or a device the issuer authorized, the authorization not revoked), nothing on the
//! chain is expired or revoked, and only admins grant roles, so roles never rise along a
//! chain. Revocations are judged in turns, from the space key outwards by distance from the
//! genesis, so a demoted admin revokes nothing, the closer of two admins wins, and the order
//! of the credentials never matters (`CREDENTIALS.md`, "Revocation"). Linear in the number of
//! credentials: each is verified once and judged once.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::credential::{Assertion, Credential, Role};

/// Why a credential does not count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    BadProof(String),
    /// Signed by a key that may not sign for the issuer, or by a device where only the
    /// issuer's own key may sign: a device authorization and a revocation of one.
    WrongSigner,
    Expired,
    /// Issued later than now plus the allowed clock skew.
    FromTheFuture,
    Revoked,
    /// A revocation of a revocation: revocations are final.
    RevokesARevocation,
    /// About another space.
    OtherSpace,
    /// Its issuer is not an admin of the space (or no chain reaches it); for a revocation,
    /// nor the space key, nor the revoked credential's issuer.
    NoChain,
    /// A revocation of a credential about an admin at least as close to the genesis as
    /// its issuer (its admin grant or a device authorization).
    Outranked,
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
    /// Device key → the member it acts for: keys exactly one member authorized (and nobody
    /// revoked). A key claimed by several members is listed for none.
    pub devices: BTreeMap<String, String>,
    /// What does not count and why. A copy with a bad proof under the id of a credential
    /// that is good is left out: it changes nothing.
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
    validate_with(space, credentials, clock, &|_| false)
}

/// [`validate`] for a caller that has already verified some proofs (ECHO keeps a space's
/// credentials, which never change once written, and verifies only new ones): a credential
/// for which `proven` says true is taken as having passed [`Credential::verify_proof`].
pub fn validate_with(
    space: &str,
    credentials: &[Credential],
    clock: Clock,
    proven: &dyn Fn(&Credential) -> bool,
) -> Membership {
    // 1. Proofs, time, and the space they speak of: each credential checked once.
    let mut rejected = Vec::new();
    let mut good: Vec<&Credential> = Vec::with_capacity(credentials.len());
    for c in credentials {
        let proof = if proven(c) {
            Ok(())
        } else {
            c.verify_proof().map(|_| ())
        };
        if let Err(e) = proof {
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
    // A copy whose proof fails under a good credential's id is noise: reported under that
    // id, it would make the good one look rejected. (Two good ones with one id have the same
    // signed bytes, so the same meaning.)
    rejected.retain(|(id, _)| !by_id.contains_key(id.as_str()));

    // 2. Who says what, by issuer.
    let mut judge = Judge {
        space,
        by_id,
        bound: HashSet::new(),
        cut: HashSet::new(),
        revoked: HashSet::new(),
        refused: HashMap::new(),
        depth: HashMap::new(),
    };
    let mut geneses = Vec::new();
    let mut grants_by: HashMap<&str, Vec<&Credential>> = HashMap::new();
    let mut revocations_by: HashMap<&str, Vec<(&Credential, &str)>> = HashMap::new();
    for c in &good {
        match &c.assertion {
            Assertion::SpaceGenesis { .. } => geneses.push(*c),
            Assertion::SpaceMember { .. } => grants_by.entry(&c.issuer).or_default().push(c),
            Assertion::AuthorizedDevice { .. } => {
                if let Some(pair) = binding(c) {
                    judge.bound.insert(pair);
                }
            }
            Assertion::Revocation { credential } => revocations_by
                .entry(&c.issuer)
                .or_default()
                .push((c, credential)),
        }
    }

    // 3. Turns, from the space key outwards: the space key's revocations, then each layer
    //    of admins (by depth, the genesis subjects 0) revokes before it grants, then
    //    everyone else (only their own credentials). A revocation is judged once, at its
    //    issuer's turn, when that issuer's own standing and devices are final: only the
    //    space key, the issuer itself and admins closer to the genesis can change them.
    if let Some(rs) = revocations_by.remove(space) {
        judge.revoke(&rs, Authority::SpaceKey);
    }
    let mut layer: Vec<&str> = Vec::new();
    for c in geneses {
        if c.issuer == space && judge.counts(c) && !judge.depth.contains_key(c.subject.as_str()) {
            judge.depth.insert(&c.subject, 0);
            layer.push(&c.subject);
        }
    }
    let mut depth = 0;
    while !layer.is_empty() {
        for admin in &layer {
            if let Some(rs) = revocations_by.remove(admin) {
                judge.revoke(&rs, Authority::Admin(depth));
            }
        }
        let mut next = Vec::new();
        for admin in &layer {
            for c in grants_by.get(admin).into_iter().flatten() {
                if matches!(
                    c.assertion,
                    Assertion::SpaceMember {
                        role: Role::Admin,
                        ..
                    }
                ) && judge.counts(c)
                    && !judge.depth.contains_key(c.subject.as_str())
                {
                    judge.depth.insert(&c.subject, depth + 1);
                    next.push(c.subject.as_str());
                }
            }
        }
        layer = next;
        depth += 1;
    }
    for rs in revocations_by.values() {
        judge.revoke(rs, Authority::OwnOnly);
    }

    // 4. Roles: admins by their chain, everyone else by the best grant an admin gave.
    let mut roles: HashMap<&str, Role> = judge.depth.keys().map(|k| (*k, Role::Admin)).collect();
    let mut grants = Vec::new();
    for c in &good {
        if let Assertion::SpaceMember { role, .. } = c.assertion
            && judge.depth.contains_key(c.issuer.as_str())
            && judge.counts(c)
        {
            grants.push(Grant {
                subject: c.subject.clone(),
                issuer: c.issuer.clone(),
                role,
            });
            let r = roles.entry(&c.subject).or_insert(role);
            *r = (*r).max(role);
        }
    }

    // 5. Report what does not count, once each.
    let mut seen: HashSet<&str> = HashSet::new();
    for c in &good {
        if !seen.insert(&c.id) {
            continue;
        }
        let why = if let Some(why) = judge.refused.get(c.id.as_str()) {
            Some(why.clone())
        } else if judge.revoked.contains(c.id.as_str()) {
            Some(Rejection::Revoked)
        } else if !judge.signer_ok(c) {
            Some(Rejection::WrongSigner)
        } else {
            match &c.assertion {
                Assertion::SpaceGenesis { .. } if c.issuer != space => Some(Rejection::NoChain),
                Assertion::SpaceMember { .. } if !judge.depth.contains_key(c.issuer.as_str()) => {
                    Some(Rejection::NoChain)
                }
                Assertion::AuthorizedDevice { .. } if c.proof.signer != c.issuer => {
                    Some(Rejection::WrongSigner)
                }
                _ => None,
            }
        };
        if let Some(why) = why {
            rejected.push((c.id.clone(), why));
        }
    }

    // 6. Devices: a key a single member lets sign for it. Claimed by several, it stays
    //    unlisted: each still signs for each, as a signature names its issuer, but whom it
    //    acts as is ambiguous, and no claim may displace another.
    let mut claimants: HashMap<&str, Vec<&str>> = HashMap::new();
    for (device, identity) in &judge.bound {
        if !judge.cut.contains(&(*device, *identity)) && roles.contains_key(identity) {
            claimants.entry(device).or_default().push(identity);
        }
    }
    let devices = claimants
        .into_iter()
        .filter_map(|(d, ids)| match ids[..] {
            [id] => Some((d.to_owned(), id.to_owned())),
            _ => None,
        })
        .collect();
    Membership {
        roles: roles.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        grants,
        devices,
        rejected,
    }
}

/// The (device, identity) an `AuthorizedDevice` binds: issued, signed and named by the
/// identity itself.
fn binding(c: &Credential) -> Option<(&str, &str)> {
    match &c.assertion {
        Assertion::AuthorizedDevice { identity, device }
            if c.issuer == *identity && c.subject == *device && c.proof.signer == c.issuer =>
        {
            Some((device, identity))
        }
        _ => None,
    }
}

/// Whose turn it is to revoke, and so what its revocations may reach.
#[derive(Clone, Copy)]
enum Authority {
    /// Anything.
    SpaceKey,
    /// An admin at this depth: anything but credentials about admins as close or closer.
    Admin(u32),
    /// Not an admin: its own credentials only.
    OwnOnly,
}

/// What the turns have settled so far.
struct Judge<'a> {
    space: &'a str,
    by_id: HashMap<&'a str, &'a Credential>,
    /// (device, identity) pairs that some authorization binds, and those a revocation cut.
    bound: HashSet<(&'a str, &'a str)>,
    cut: HashSet<(&'a str, &'a str)>,
    revoked: HashSet<&'a str>,
    /// Revocations that do not count, and why.
    refused: HashMap<&'a str, Rejection>,
    /// Admins and how many admin grants separate them from the genesis.
    depth: HashMap<&'a str, u32>,
}

impl<'a> Judge<'a> {
    fn signer_ok(&self, c: &Credential) -> bool {
        let pair = (c.proof.signer.as_str(), c.issuer.as_str());
        c.proof.signer == c.issuer || (self.bound.contains(&pair) && !self.cut.contains(&pair))
    }

    fn counts(&self, c: &Credential) -> bool {
        !self.revoked.contains(c.id.as_str()) && self.signer_ok(c)
    }

    /// Judges one issuer's revocations: those its key signed first, as they may cut its
    /// devices, then those its devices signed.
    fn revoke(&mut self, revocations: &[(&'a Credential, &'a str)], by: Authority) {
        for keys in [true, false] {
            for (r, target) in revocations {
                if (r.proof.signer == r.issuer) != keys {
                    continue;
                }
                match self.judge(r, target, by) {
                    Err(why) => {
                        self.refused.insert(&r.id, why);
                    }
                    Ok(()) => {
                        self.revoked.insert(target);
                        if let Some(pair) = self.by_id.get(target).and_then(|t| binding(t)) {
                            self.cut.insert(pair);
                        }
                    }
                }
            }
        }
    }

    fn judge(&self, r: &Credential, target: &str, by: Authority) -> Result<(), Rejection> {
        if !self.signer_ok(r) {
            return Err(Rejection::WrongSigner);
        }
        let target = self.by_id.get(target).copied();
        match target.map(|t| &t.assertion) {
            Some(Assertion::Revocation { .. }) => return Err(Rejection::RevokesARevocation),
            // Devices are made and unmade by keys: a stolen device cannot lock out the others.
            Some(Assertion::AuthorizedDevice { .. }) if r.proof.signer != r.issuer => {
                return Err(Rejection::WrongSigner);
            }
            _ => {}
        }
        let own = target.is_some_and(|t| t.issuer == r.issuer);
        match by {
            Authority::SpaceKey => Ok(()),
            _ if own => Ok(()),
            Authority::Admin(depth) if target.is_some_and(|t| self.outranks(t, depth)) => {
                Err(Rejection::Outranked)
            }
            Authority::Admin(_) => Ok(()),
            Authority::OwnOnly => Err(Rejection::NoChain),
        }
    }

    /// Whether `c` is about the space key or an admin at most `depth` from the genesis: its
    /// grant's subject, or its device authorization's identity.
    fn outranks(&self, c: &Credential, depth: u32) -> bool {
        let about = match c.assertion {
            Assertion::AuthorizedDevice { .. } => &c.issuer,
            _ => &c.subject,
        };
        about == self.space || self.depth.get(about.as_str()).is_some_and(|d| *d <= depth)
    }
}

#[cfg(test)]
mod tests;
