//! Chains of credentials, valid and not.

use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use proptest::prelude::*;

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
    /// A credential in `issuer`'s name, signed by this key (a device of the issuer's).
    fn signs_for(&self, issuer: &Key, subject: &str, assertion: Assertion) -> Credential {
        Credential::issue(
            &issuer.did(),
            subject,
            assertion,
            100,
            None,
            &self.did(),
            |b| self.0.sign(b).to_bytes(),
        )
        .unwrap()
    }
    /// This identity lets `device` sign for it.
    fn authorizes(&self, device: &Key) -> Credential {
        self.says(
            device,
            Assertion::AuthorizedDevice {
                identity: self.did(),
                device: device.did(),
            },
        )
    }
    /// A revocation of `c`, issued and signed by this key.
    fn revokes(&self, c: &Credential) -> Credential {
        self.revokes_for(self, c)
    }
    /// A revocation of `c` in `issuer`'s name, signed by this key.
    fn revokes_for(&self, issuer: &Key, c: &Credential) -> Credential {
        self.signs_for(
            issuer,
            &c.subject,
            Assertion::Revocation {
                credential: c.id.clone(),
            },
        )
    }
}

/// A copy of `c` that keeps its id but whose proof fails: signed by another key.
fn forged(c: &Credential) -> Credential {
    let mut f = c.clone();
    let bytes = c.signed_bytes().unwrap();
    f.proof.signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Key::new(99).0.sign(&bytes).to_bytes());
    assert!(f.verify_proof().is_err());
    f
}

/// A membership with the order of the input taken out: what must not depend on it.
type Normal = (
    BTreeMap<String, Role>,
    Vec<(String, String, Role)>,
    BTreeMap<String, String>,
    Vec<(String, String)>,
);

fn normal(m: &Membership) -> Normal {
    let mut grants: Vec<_> = m
        .grants
        .iter()
        .map(|g| (g.subject.clone(), g.issuer.clone(), g.role))
        .collect();
    grants.sort();
    let mut rejected: Vec<_> = m
        .rejected
        .iter()
        .map(|(id, why)| (id.clone(), format!("{why:?}")))
        .collect();
    rejected.sort();
    (m.roles.clone(), grants, m.devices.clone(), rejected)
}

/// Every order of `items` (Heap's algorithm).
fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    fn go<T: Clone>(k: usize, v: &mut Vec<T>, out: &mut Vec<Vec<T>>) {
        if k <= 1 {
            out.push(v.clone());
            return;
        }
        go(k - 1, v, out);
        for i in 0..k - 1 {
            v.swap(if k.is_multiple_of(2) { i } else { 0 }, k - 1);
            go(k - 1, v, out);
        }
    }
    let mut out = Vec::new();
    go(items.len(), &mut items.to_vec(), &mut out);
    out
}

/// A small deterministic generator (xorshift64*), so that failures replay.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// Runs `check` on every order of `creds` (all orders up to six credentials, 200 shuffles
/// beyond) and asserts that they all validate alike.
fn in_every_order(space: &Key, creds: &[Credential], check: impl Fn(&Membership)) {
    let orders = if creds.len() <= 6 {
        permutations(creds)
    } else {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        (0..200)
            .map(|_| {
                let mut v = creds.to_vec();
                rng.shuffle(&mut v);
                v
            })
            .collect()
    };
    let first = normal(&validate(&space.did(), creds, CLOCK));
    for order in orders {
        let m = validate(&space.did(), &order, CLOCK);
        check(&m);
        assert_eq!(
            normal(&m),
            first,
            "the order of the credentials changed the result"
        );
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

#[test]
fn a_revoked_device_signs_nothing() {
    let (space, alice, bob, carol, dave) = (
        Key::new(1),
        Key::new(2),
        Key::new(3),
        Key::new(4),
        Key::new(5),
    );
    let (laptop, phone) = (Key::new(6), Key::new(7));
    let laptop_ok = alice.authorizes(&laptop);
    let phone_ok = alice.authorizes(&phone);
    let carol_reader = alice.says(&carol, member(&space, Role::Reader));
    // What the laptop signed, before or after it was stolen: nothing tells them apart.
    let bob_editor = laptop.signs_for(&alice, &bob.did(), member(&space, Role::Editor));
    let cut_carol = laptop.revokes_for(&alice, &carol_reader);
    // The thief's attempt to lock Alice out of her phone: devices do not unmake devices.
    let cut_phone = laptop.revokes_for(&alice, &phone_ok);
    let dave_reader = phone.signs_for(&alice, &dave.did(), member(&space, Role::Reader));
    let cut_laptop = alice.revokes(&laptop_ok);
    let creds = vec![
        genesis(&space, &alice),
        laptop_ok.clone(),
        phone_ok,
        carol_reader,
        bob_editor.clone(),
        cut_carol.clone(),
        cut_phone.clone(),
        dave_reader,
        cut_laptop,
    ];
    in_every_order(&space, &creds, |m| {
        assert_eq!(m.role_of(&bob.did()), None, "granted by the revoked laptop");
        assert_eq!(
            m.role_of(&carol.did()),
            Some(Role::Reader),
            "revoked by the revoked laptop"
        );
        assert_eq!(m.role_of(&laptop.did()), None);
        assert!(!m.devices.contains_key(&laptop.did()), "{:?}", m.devices);
        assert_eq!(m.devices.get(&phone.did()), Some(&alice.did()));
        assert_eq!(
            m.role_of(&dave.did()),
            Some(Role::Reader),
            "the phone still signs"
        );
        for (id, why) in [
            (&laptop_ok.id, Rejection::Revoked),
            (&bob_editor.id, Rejection::WrongSigner),
            (&cut_carol.id, Rejection::WrongSigner),
            (&cut_phone.id, Rejection::WrongSigner),
        ] {
            assert!(
                m.rejected.contains(&(id.clone(), why.clone())),
                "{why:?}: {:?}",
                m.rejected
            );
        }
    });
}

#[test]
fn a_device_binding_cannot_be_hijacked() {
    let (space, alice, bob, mallory, stranger) = (
        Key::new(1),
        Key::new(2),
        Key::new(3),
        Key::new(9),
        Key::new(10),
    );
    let laptop = Key::new(6);
    let laptop_ok = alice.authorizes(&laptop);
    let by_laptop = laptop.signs_for(&alice, &bob.did(), member(&space, Role::Editor));
    // Mallory, an editor, claims Alice's laptop as her own device; so does a key that is
    // no member. Each is issued and signed by its claimant, as the format asks.
    let claim = mallory.authorizes(&laptop);
    let stranger_claim = stranger.authorizes(&laptop);
    let base = vec![
        genesis(&space, &alice),
        alice.says(&mallory, member(&space, Role::Editor)),
        laptop_ok,
        by_laptop.clone(),
    ];
    let with = |extra: &[&Credential]| {
        let mut v = base.clone();
        v.extend(extra.iter().map(|c| (*c).clone()));
        v
    };
    for extra in [
        vec![&claim],
        vec![&stranger_claim],
        vec![&claim, &stranger_claim],
    ] {
        in_every_order(&space, &with(&extra), |m| {
            assert_eq!(
                m.role_of(&bob.did()),
                Some(Role::Editor),
                "the laptop still signs for Alice"
            );
            assert!(!m.rejected.iter().any(|(id, _)| *id == by_laptop.id));
            let listed = m.devices.get(&laptop.did());
            assert!(listed.is_none_or(|id| *id == alice.did()), "{listed:?}");
        });
    }
    // Claimed by two members, the laptop is listed for neither (its own role is none);
    // a key that is no member contests nothing.
    let m = validate(&space.did(), &with(&[&claim]), CLOCK);
    assert_eq!(m.devices.get(&laptop.did()), None);
    assert_eq!(m.role_of(&laptop.did()), None);
    let m = validate(&space.did(), &with(&[&stranger_claim]), CLOCK);
    assert_eq!(m.devices.get(&laptop.did()), Some(&alice.did()));
    // Mallory withdraws her claim, or an admin revokes it: the laptop is Alice's again.
    for undo in [mallory.revokes(&claim), alice.revokes(&claim)] {
        let m = validate(&space.did(), &with(&[&claim, &undo]), CLOCK);
        assert_eq!(m.devices.get(&laptop.did()), Some(&alice.did()));
        assert_eq!(m.role_of(&laptop.did()), Some(Role::Admin));
    }
}

#[test]
fn a_demoted_admin_revokes_nothing() {
    let (space, alice, bob, carol) = (Key::new(1), Key::new(2), Key::new(3), Key::new(4));
    let bob_admin = alice.says(&bob, member(&space, Role::Admin));
    let carol_editor = alice.says(&carol, member(&space, Role::Editor));
    let demote = alice.revokes(&bob_admin);
    // Issued after (or, by its clock, before) his demotion: it does not count either way.
    let cut_carol = bob.revokes(&carol_editor);
    let creds = vec![
        genesis(&space, &alice),
        bob_admin,
        carol_editor,
        demote,
        cut_carol.clone(),
    ];
    in_every_order(&space, &creds, |m| {
        assert_eq!(m.role_of(&bob.did()), None);
        assert_eq!(m.role_of(&carol.did()), Some(Role::Editor));
        assert!(
            m.rejected
                .contains(&(cut_carol.id.clone(), Rejection::NoChain))
        );
    });
}

#[test]
fn the_admin_closer_to_the_genesis_wins() {
    let (space, alice, bob, carol, erin) = (
        Key::new(1),
        Key::new(2),
        Key::new(3),
        Key::new(4),
        Key::new(5),
    );
    // Alice (the genesis) made Bob and Carol admins; Bob made Erin one.
    let g = genesis(&space, &alice);
    let bob_admin = alice.says(&bob, member(&space, Role::Admin));
    let carol_admin = alice.says(&carol, member(&space, Role::Admin));
    let erin_admin = bob.says(&erin, member(&space, Role::Admin));

    // Peers revoke each other: neither counts, in every order.
    let (bob_cuts_carol, carol_cuts_bob) = (bob.revokes(&carol_admin), carol.revokes(&bob_admin));
    let creds = [
        g.clone(),
        bob_admin.clone(),
        carol_admin.clone(),
        bob_cuts_carol.clone(),
        carol_cuts_bob.clone(),
    ];
    in_every_order(&space, &creds, |m| {
        assert_eq!(m.role_of(&bob.did()), Some(Role::Admin));
        assert_eq!(m.role_of(&carol.did()), Some(Role::Admin));
        for r in [&bob_cuts_carol, &carol_cuts_bob] {
            assert!(m.rejected.contains(&(r.id.clone(), Rejection::Outranked)));
        }
    });

    // A junior admin cannot unseat a senior one, nor the genesis.
    let erin_cuts_bob = erin.revokes(&bob_admin);
    let erin_cuts_genesis = erin.revokes(&g);
    let creds = [
        g.clone(),
        bob_admin.clone(),
        erin_admin.clone(),
        erin_cuts_bob.clone(),
        erin_cuts_genesis.clone(),
    ];
    in_every_order(&space, &creds, |m| {
        assert_eq!(m.role_of(&alice.did()), Some(Role::Admin));
        assert_eq!(m.role_of(&bob.did()), Some(Role::Admin));
        assert_eq!(m.role_of(&erin.did()), Some(Role::Admin));
        for r in [&erin_cuts_bob, &erin_cuts_genesis] {
            assert!(m.rejected.contains(&(r.id.clone(), Rejection::Outranked)));
        }
    });

    // Alice and Erin revoke each other: Alice, closer to the genesis, wins.
    let alice_cuts_erin = alice.revokes(&erin_admin);
    let creds = [
        g,
        bob_admin,
        erin_admin.clone(),
        alice_cuts_erin,
        erin_cuts_bob.clone(),
        erin_cuts_genesis.clone(),
    ];
    in_every_order(&space, &creds, |m| {
        assert_eq!(m.role_of(&alice.did()), Some(Role::Admin));
        assert_eq!(m.role_of(&bob.did()), Some(Role::Admin));
        assert_eq!(m.role_of(&erin.did()), None);
        assert!(
            m.rejected
                .contains(&(erin_admin.id.clone(), Rejection::Revoked))
        );
        for r in [&erin_cuts_bob, &erin_cuts_genesis] {
            assert!(m.rejected.contains(&(r.id.clone(), Rejection::NoChain)));
        }
    });
}

#[test]
fn the_space_key_always_wins() {
    let (space, alice, bob, carol) = (Key::new(1), Key::new(2), Key::new(3), Key::new(4));
    let laptop = Key::new(6);
    let g = genesis(&space, &alice);
    let laptop_ok = alice.authorizes(&laptop);
    let bob_admin = alice.says(&bob, member(&space, Role::Admin));
    let carol_editor = laptop.signs_for(&alice, &carol.did(), member(&space, Role::Editor));
    // The space key cuts the founder's laptop (no admin may) and Bob's admin grant.
    let cut_laptop = space.revokes(&laptop_ok);
    let cut_bob = space.revokes(&bob_admin);
    // Nobody undoes it or turns on the genesis.
    let bob_cuts_genesis = bob.revokes(&g);
    let alice_undoes = alice.revokes(&cut_bob);
    let creds = [
        g.clone(),
        laptop_ok,
        bob_admin,
        carol_editor.clone(),
        cut_laptop,
        cut_bob,
        bob_cuts_genesis.clone(),
        alice_undoes.clone(),
    ];
    in_every_order(&space, &creds, |m| {
        assert_eq!(m.role_of(&alice.did()), Some(Role::Admin));
        assert_eq!(m.role_of(&bob.did()), None);
        assert_eq!(m.role_of(&carol.did()), None);
        assert!(!m.devices.contains_key(&laptop.did()));
        for (id, why) in [
            (&carol_editor.id, Rejection::WrongSigner),
            (&bob_cuts_genesis.id, Rejection::NoChain),
            (&alice_undoes.id, Rejection::RevokesARevocation),
        ] {
            assert!(m.rejected.contains(&(id.clone(), why)), "{:?}", m.rejected);
        }
    });
    // And the space key may revoke the genesis itself.
    let m = validate(&space.did(), &[g.clone(), space.revokes(&g)], CLOCK);
    assert!(m.roles.is_empty());
}

/// A space of a few keys, so that claims, chains and revocations collide, built from random
/// steps of six bytes each: one credential a step, issued mostly by identities already
/// granted something so that chains grow deep.
fn random_space(space: &Key, steps: &[[u8; 6]]) -> Vec<Credential> {
    let ids: Vec<Key> = (2..=6).map(Key::new).collect();
    let devices: Vec<Key> = (7..=9).map(Key::new).collect();
    let roles = [Role::Reader, Role::Replicator, Role::Editor, Role::Admin];
    let mut creds = vec![genesis(space, &ids[0])];
    let mut granted = vec![0];
    for &[kind, who, pick, signer, a, b] in steps {
        let issuer = match who % 12 {
            0 => space,
            1..=3 => &ids[usize::from(pick) % ids.len()],
            _ => &ids[granted[usize::from(pick) % granted.len()]],
        };
        let signer = match signer % 3 {
            0 => &devices[usize::from(signer / 3) % devices.len()],
            _ => issuer,
        };
        let earlier = &creds[(usize::from(a) << 8 | usize::from(b)) % creds.len()];
        let c = match kind % 10 {
            0..=3 => {
                let subject = usize::from(a) % ids.len();
                granted.push(subject);
                let role = roles[usize::from(b % 6).min(roles.len() - 1)];
                signer.signs_for(issuer, &ids[subject].did(), member(space, role))
            }
            4 | 5 => issuer.authorizes(&devices[usize::from(a) % devices.len()]),
            6..=8 => signer.revokes_for(issuer, earlier),
            _ => forged(earlier),
        };
        creds.push(c);
    }
    creds
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]

    // The result depends on the set of credentials, not their order; and every revocation
    // left out of `rejected` had the authority to count.
    #[test]
    fn validation_ignores_the_order_of_credentials(
        (steps, order) in proptest::collection::vec(any::<[u8; 6]>(), 3..18)
            .prop_flat_map(|steps| {
                let order: Vec<usize> = (0..=steps.len()).collect();
                (Just(steps), Just(order).prop_shuffle())
            })
    ) {
        let space = Key::new(1);
        let creds = random_space(&space, &steps);
        let m = validate(&space.did(), &creds, CLOCK);
        let rejected: HashSet<&str> = m.rejected.iter().map(|(id, _)| id.as_str()).collect();
        let good: Vec<&Credential> = creds.iter().filter(|c| c.verify_proof().is_ok()).collect();
        for r in &good {
            if let Assertion::Revocation { credential } = &r.assertion
                && !rejected.contains(r.id.as_str())
            {
                let own = good.iter().any(|t| t.id == *credential && t.issuer == r.issuer);
                prop_assert!(
                    r.issuer == space.did() || own || m.roles.get(&r.issuer) == Some(&Role::Admin),
                    "a revocation by a non-admin counted"
                );
            }
        }
        let shuffled: Vec<Credential> = order.iter().map(|i| creds[*i].clone()).collect();
        prop_assert_eq!(normal(&validate(&space.did(), &shuffled, CLOCK)), normal(&m));
    }
}

#[test]
fn a_forged_copy_changes_nothing() {
    let (space, alice, bob, dave) = (Key::new(1), Key::new(2), Key::new(3), Key::new(5));
    let g = genesis(&space, &alice);
    let bob_admin = alice.says(&bob, member(&space, Role::Admin));
    let dave_reader = alice.says(&dave, member(&space, Role::Reader));
    let revoke_bob = alice.revokes(&bob_admin);
    let good = vec![
        g.clone(),
        bob_admin.clone(),
        dave_reader,
        revoke_bob.clone(),
    ];
    let expected = validate(&space.did(), &good, CLOCK);
    assert_eq!(expected.role_of(&bob.did()), None);
    assert_eq!(expected.role_of(&dave.did()), Some(Role::Reader));
    // Copies with a good one's id: a broken signature, or other content under that id.
    let mut other = revoke_bob.clone();
    other.assertion = Assertion::Revocation {
        credential: g.id.clone(),
    };
    let copies = [forged(&g), forged(&revoke_bob), forged(&bob_admin), other];
    for copy in &copies {
        for at in 0..=good.len() {
            let mut creds = good.clone();
            creds.insert(at, copy.clone());
            assert_eq!(validate(&space.did(), &creds, CLOCK), expected, "at {at}");
        }
    }
    let mut all = copies.to_vec();
    all.extend(good.iter().cloned());
    assert_eq!(validate(&space.did(), &all, CLOCK), expected);
    all.rotate_left(copies.len() + 1);
    assert_eq!(
        normal(&validate(&space.did(), &all, CLOCK)),
        normal(&expected)
    );
}
