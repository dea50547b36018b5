//! Whether this KUBE replicates a space (pure): the one decision ECHO asks. The space must
//! admit KUBE's key as a `replicator` (or a higher role) through a valid credential, and that
//! credential's issuer must be an admin the operator's policy (`echo.admit`) accepts.

use crate::credential::{Credential, Role};
use crate::space::{self, Clock, Membership};

/// The operator's policy: which space admins this KUBE serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Any space that admits this KUBE.
    Any,
    /// Only spaces whose admission of this KUBE was issued by one of these identities.
    Admins(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Replicate: `granted_by` issued the credential that admits KUBE with `role`.
    Replicate {
        granted_by: String,
        role: Role,
    },
    Refuse(Refusal),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the space has no valid credential admitting this KUBE as replicator")]
    NotAdmitted,
    #[error("the space admits this KUBE only as {0:?}, below replicator")]
    RoleTooLow(Role),
    #[error("admitted by {0}, who is not in echo.admit")]
    AdminNotAllowed(String),
}

/// Decides for `space` (its key as did:key), given all its credentials and KUBE's key.
pub fn decide(
    policy: &Admit,
    kube: &str,
    space: &str,
    credentials: &[Credential],
    clock: Clock,
) -> Decision {
    decide_for(policy, kube, &space::validate(space, credentials, clock))
}

/// [`decide`] on a membership already validated.
pub fn decide_for(policy: &Admit, kube: &str, membership: &Membership) -> Decision {
    let mut best: Option<Refusal> = None;
    for g in membership.grants.iter().filter(|g| g.subject == kube) {
        if g.role < Role::Replicator {
            best.get_or_insert(Refusal::RoleTooLow(g.role));
            continue;
        }
        match policy {
            Admit::Admins(list) if !list.contains(&g.issuer) => {
                best = Some(Refusal::AdminNotAllowed(g.issuer.clone()));
            }
            _ => {
                return Decision::Replicate {
                    granted_by: g.issuer.clone(),
                    role: g.role,
                };
            }
        }
    }
    Decision::Refuse(best.unwrap_or(Refusal::NotAdmitted))
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};

    use super::*;
    use crate::credential::Assertion;

    fn key(seed: u8) -> (SigningKey, String) {
        let k = SigningKey::from_bytes(&[seed; 32]);
        let d = crate::did(&k);
        (k, d)
    }

    fn says(from: &(SigningKey, String), subject: &str, a: Assertion) -> Credential {
        Credential::issue(&from.1, subject, a, 100, None, &from.1, |b| {
            from.0.sign(b).to_bytes()
        })
        .unwrap()
    }

    const CLOCK: Clock = Clock {
        now: 1000,
        skew: 60,
    };

    #[test]
    fn decisions() {
        let space = key(1);
        let alice = key(2);
        let bob = key(3);
        let kube = key(4);
        let stranger = key(5);
        let genesis = says(
            &space,
            &alice.1,
            Assertion::SpaceGenesis {
                space: space.1.clone(),
            },
        );
        let member = |by: &(SigningKey, String), role| {
            says(
                by,
                &kube.1,
                Assertion::SpaceMember {
                    space: space.1.clone(),
                    role,
                },
            )
        };
        let bob_admin = says(
            &alice,
            &bob.1,
            Assertion::SpaceMember {
                space: space.1.clone(),
                role: Role::Admin,
            },
        );
        let d =
            |policy: &Admit, creds: &[Credential]| decide(policy, &kube.1, &space.1, creds, CLOCK);

        // Admitted as replicator by alice.
        let creds = vec![genesis.clone(), member(&alice, Role::Replicator)];
        assert_eq!(
            d(&Admit::Any, &creds),
            Decision::Replicate {
                granted_by: alice.1.clone(),
                role: Role::Replicator
            }
        );
        assert_eq!(
            d(&Admit::Admins(vec![alice.1.clone()]), &creds),
            Decision::Replicate {
                granted_by: alice.1.clone(),
                role: Role::Replicator
            }
        );
        // The policy names another admin.
        assert_eq!(
            d(&Admit::Admins(vec![bob.1.clone()]), &creds),
            Decision::Refuse(Refusal::AdminNotAllowed(alice.1.clone()))
        );
        // Bob, an admin through alice, admits KUBE: a list naming bob accepts it.
        let creds = vec![
            genesis.clone(),
            bob_admin.clone(),
            member(&bob, Role::Replicator),
        ];
        assert!(matches!(
            d(&Admit::Admins(vec![bob.1.clone()]), &creds),
            Decision::Replicate { .. }
        ));
        // Only a reader.
        let creds = vec![genesis.clone(), member(&alice, Role::Reader)];
        assert_eq!(
            d(&Admit::Any, &creds),
            Decision::Refuse(Refusal::RoleTooLow(Role::Reader))
        );
        // A stranger (no chain) claims to admit KUBE.
        let creds = vec![genesis.clone(), member(&stranger, Role::Replicator)];
        assert_eq!(
            d(&Admit::Any, &creds),
            Decision::Refuse(Refusal::NotAdmitted)
        );
        // Admitted, then revoked.
        let m = member(&alice, Role::Replicator);
        let revoke = says(
            &alice,
            &kube.1,
            Assertion::Revocation {
                credential: m.id.clone(),
            },
        );
        let creds = vec![genesis.clone(), m, revoke];
        assert_eq!(
            d(&Admit::Any, &creds),
            Decision::Refuse(Refusal::NotAdmitted)
        );
        // A forged credential carrying the real one's id does not hide it.
        let real = member(&alice, Role::Replicator);
        let mut forged = member(&stranger, Role::Replicator);
        forged.id = real.id.clone();
        let creds = vec![genesis.clone(), forged, real];
        assert!(matches!(d(&Admit::Any, &creds), Decision::Replicate { .. }));
        // No credentials at all.
        assert_eq!(d(&Admit::Any, &[]), Decision::Refuse(Refusal::NotAdmitted));
    }
}
