//! Chains of credentials, valid and not.

use ed25519_dalek::{Signer, SigningKey};

use super::*;
use crate::PublicKey;
use crate::credential::{Assertion, Credential, Role};

struct Key(SigningKey);

impl Key {
    fn new(seed: u8) -> Key {
        Key(SigningKey::from_bytes(&[seed; 32]))
    }
    fn did(&self) -> String {
        PublicKey::from_bytes(self.0.verifying_key().as_bytes())
            .unwrap()
            .to_did()
    }
    /// A credential from this key about `subject`.
    fn says(&self, subject: &Key, assertion: Assertion) -> Credential {
        self.says_at(subject, assertion, 100, None)
    }
    fn says_at(
        &self,
        subject: &Key,
        assertion: Assertion,
        issued: u64,
        expires: Option<u64>,
    ) -> Credential {
        Credential::issue(
            &self.did(),
            &subject.did(),
            assertion,
            issued,
            expires,
            &self.did(),
            |b| self.0.sign(b).to_bytes(),
        )
        .unwrap()
    }
}

const CLOCK: Clock = Clock {
    now: 1_000,
    skew: 60,
};

fn member(space: &Key, role: Role) -> Assertion {
    Assertion::SpaceMember {
        space: space.did(),
        role,
    }
}

fn genesis(space: &Key, admin: &Key) -> Credential {
    space.says(admin, Assertion::SpaceGenesis { space: space.did() })
}

#[test]
fn a_valid_chain() {
    let (space, alice, bob, carol) = (Key::new(1), Key::new(2), Key::new(3), Key::new(4));
    let creds = vec![
        genesis(&space, &alice),
        alice.says(&bob, member(&space, Role::Admin)),
        bob.says(&carol, member(&space, Role::Reader)),
    ];
    let m = validate(&space.did(), &creds, CLOCK);
    assert_eq!(m.role_of(&alice.did()), Some(Role::Admin));
    assert_eq!(m.role_of(&bob.did()), Some(Role::Admin));
    assert_eq!(m.role_of(&carol.did()), Some(Role::Reader));
    assert!(m.rejected.is_empty(), "{:?}", m.rejected);
}

#[test]
fn a_missing_link_or_a_foreign_genesis() {
    let (space, alice, bob, mallory) = (Key::new(1), Key::new(2), Key::new(3), Key::new(9));
    // Bob's grant comes from Alice, but nothing makes Alice an admin.
    let creds = vec![
        alice.says(&bob, member(&space, Role::Editor)),
        mallory.says(&mallory, Assertion::SpaceGenesis { space: space.did() }),
    ];
    let m = validate(&space.did(), &creds, CLOCK);
    assert!(m.roles.is_empty());
    assert!(
        m.rejected.iter().all(|(_, r)| *r == Rejection::NoChain),
        "{:?}",
        m.rejected
    );
}

#[test]
fn revoked_admins_and_members() {
    let (space, alice, bob, carol, dave) = (
        Key::new(1),
        Key::new(2),
        Key::new(3),
        Key::new(4),
        Key::new(5),
    );
    let bob_admin = alice.says(&bob, member(&space, Role::Admin));
    let carol_editor = bob.says(&carol, member(&space, Role::Editor));
    let dave_reader = alice.says(&dave, member(&space, Role::Reader));
    let revoke_bob = alice.says(
        &bob,
        Assertion::Revocation {
            credential: bob_admin.id.clone(),
        },
    );
    let revoke_dave = alice.says(
        &dave,
        Assertion::Revocation {
            credential: dave_reader.id.clone(),
        },
    );
    let creds = vec![
        genesis(&space, &alice),
        bob_admin,
        carol_editor,
        dave_reader,
        revoke_bob.clone(),
        revoke_dave,
    ];
    let m = validate(&space.did(), &creds, CLOCK);
    assert_eq!(m.role_of(&bob.did()), None, "revoked admin");
    assert_eq!(m.role_of(&carol.did()), None, "granted by a revoked admin");
    assert_eq!(m.role_of(&dave.did()), None, "revoked member");
    assert_eq!(m.role_of(&alice.did()), Some(Role::Admin));
    // Revoking the revocation changes nothing: revocations are final.
    let undo = alice.says(
        &bob,
        Assertion::Revocation {
            credential: revoke_bob.id.clone(),
        },
    );
    let mut creds2 = creds.clone();
    creds2.push(undo.clone());
    let m = validate(&space.did(), &creds2, CLOCK);
    assert_eq!(m.role_of(&bob.did()), None);
    assert!(
        m.rejected
            .contains(&(undo.id, Rejection::RevokesARevocation))
    );
}

#[test]
fn expiry_and_clock_skew() {
    let (space, alice, bob, carol) = (Key::new(1), Key::new(2), Key::new(3), Key::new(4));
    let creds = vec![
        genesis(&space, &alice),
        alice.says_at(&bob, member(&space, Role::Editor), 100, Some(900)),
        // 30 s in the future is within the skew; expired 30 s ago is too.
        alice.says_at(&carol, member(&space, Role::Reader), 1_030, Some(970)),
    ];
    let m = validate(&space.did(), &creds, CLOCK);
    assert_eq!(m.role_of(&bob.did()), None, "expired");
    assert_eq!(
        m.role_of(&carol.did()),
        Some(Role::Reader),
        "within the skew"
    );
    let late = alice.says_at(&carol, member(&space, Role::Reader), 2_000, None);
    let m = validate(
        &space.did(),
        &[genesis(&space, &alice), late.clone()],
        CLOCK,
    );
    assert!(m.rejected.contains(&(late.id, Rejection::FromTheFuture)));
}

#[test]
fn roles_never_rise_along_a_chain() {
    let (space, alice, bob, carol) = (Key::new(1), Key::new(2), Key::new(3), Key::new(4));
    let creds = vec![
        genesis(&space, &alice),
        alice.says(&bob, member(&space, Role::Editor)),
        bob.says(&carol, member(&space, Role::Admin)),
        bob.says(&bob, member(&space, Role::Admin)),
    ];
    let m = validate(&space.did(), &creds, CLOCK);
    assert_eq!(m.role_of(&bob.did()), Some(Role::Editor));
    assert_eq!(m.role_of(&carol.did()), None);
}

#[test]
fn devices_sign_for_their_identity_only() {
    let (space, alice, laptop, bob, carol) = (
        Key::new(1),
        Key::new(2),
        Key::new(6),
        Key::new(3),
        Key::new(4),
    );
    let authorize = alice.says(
        &laptop,
        Assertion::AuthorizedDevice {
            identity: alice.did(),
            device: laptop.did(),
        },
    );
    // The laptop signs a grant issued by Alice: valid.
    let by_device = Credential::issue(
        &alice.did(),
        &bob.did(),
        member(&space, Role::Editor),
        100,
        None,
        &laptop.did(),
        |b| laptop.0.sign(b).to_bytes(),
    )
    .unwrap();
    // The laptop signs a grant claiming to be from Carol: refused.
    let forged = Credential::issue(
        &carol.did(),
        &bob.did(),
        member(&space, Role::Admin),
        100,
        None,
        &laptop.did(),
        |b| laptop.0.sign(b).to_bytes(),
    )
    .unwrap();
    let creds = vec![
        genesis(&space, &alice),
        alice.says(&carol, member(&space, Role::Admin)),
        authorize,
        by_device,
        forged.clone(),
    ];
    let m = validate(&space.did(), &creds, CLOCK);
    assert_eq!(m.role_of(&bob.did()), Some(Role::Editor));
    assert_eq!(
        m.role_of(&laptop.did()),
        Some(Role::Admin),
        "a device acts with its identity's role"
    );
    assert!(m.rejected.contains(&(forged.id, Rejection::WrongSigner)));
}

#[test]
fn cycles_without_a_genesis_grant_nothing() {
    let (space, alice, bob) = (Key::new(1), Key::new(2), Key::new(3));
    let creds = vec![
        alice.says(&bob, member(&space, Role::Admin)),
        bob.says(&alice, member(&space, Role::Admin)),
    ];
    assert!(validate(&space.did(), &creds, CLOCK).roles.is_empty());
    // With a genesis, the cycle terminates too.
    let mut with = creds.clone();
    with.push(genesis(&space, &alice));
    let m = validate(&space.did(), &with, CLOCK);
    assert_eq!(m.roles.len(), 2);
}

#[test]
fn any_changed_byte_invalidates_a_credential() {
    let (space, alice, bob) = (Key::new(1), Key::new(2), Key::new(3));
    let c = alice.says(&bob, member(&space, Role::Editor));
    c.verify_proof().unwrap();
    let json = serde_json::to_vec(&c).unwrap();
    for i in 0..json.len() {
        let mut b = json.clone();
        b[i] ^= 0x01;
        if let Ok(changed) = serde_json::from_slice::<Credential>(&b)
            && changed != c
        {
            assert!(
                changed.verify_proof().is_err(),
                "byte {i} changed and still verifies"
            );
        }
    }
}

#[test]
fn two_thousand_members() {
    let (space, alice) = (Key::new(1), Key::new(2));
    let mut creds = vec![genesis(&space, &alice)];
    for i in 0..2_000u32 {
        let mut seed = [0u8; 32];
        seed[..4].copy_from_slice(&i.to_le_bytes());
        seed[31] = 7;
        let k = Key(SigningKey::from_bytes(&seed));
        creds.push(alice.says(&k, member(&space, Role::Reader)));
    }
    let m = validate(&space.did(), &creds, CLOCK);
    assert_eq!(m.roles.len(), 2_001);
    assert!(m.rejected.is_empty());
}
