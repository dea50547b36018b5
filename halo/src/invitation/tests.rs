//! Invitation exchanges, host and guest state machines talking directly.

use super::*;

const NOW: u64 = 1_000;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn invitation(host: &SigningKey, method: Method) -> Invitation {
    Invitation {
        id: "00112233445566778899aabbccddeeff".into(),
        space: did(&key(9)),
        role: Role::Editor,
        host: did(host),
        expires: NOW + 600,
        method,
    }
}

/// One attempt: hello, challenge, proof, answer. Returns the guest's result.
fn attempt(
    host: &mut Host,
    inv: &Invitation,
    guest_key: &SigningKey,
    code: Option<&str>,
    now: u64,
    seed: u8,
) -> Result<Box<Credential>, InvitationError> {
    let (mut guest, hello) = Guest::new(
        inv.clone(),
        code.map(str::to_owned),
        guest_key.clone(),
        [seed; 32],
    )?;
    let from = did(guest_key);
    let reply = host.handle(&from, hello, now, [seed.wrapping_add(100); 32]);
    let host_did = inv.host.clone();
    let GuestStep::Send(proof) = guest.handle(&host_did, reply)? else {
        panic!("a proof to send")
    };
    let answer = host.handle(&from, proof, now, [0; 32]);
    match guest.handle(&host_did, answer)? {
        GuestStep::Done(c) => Ok(c),
        GuestStep::Send(m) => panic!("unexpected {m:?}"),
    }
}

fn refusal(r: Result<Box<Credential>, InvitationError>) -> (Refusal, Option<u8>) {
    match r {
        Err(InvitationError::Refused {
            code,
            attempts_left,
            ..
        }) => (code, attempts_left),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn code_accepted_gives_a_member_credential() {
    let admin = key(1);
    let bob = key(2);
    let inv = invitation(&admin, Method::Code);
    let mut host = Host::new(inv.clone(), Some("123456".into()), admin.clone()).unwrap();
    let c = attempt(&mut host, &inv, &bob, Some("123456"), NOW, 1).unwrap();
    assert_eq!(c.subject, did(&bob));
    assert_eq!(c.issuer, did(&admin));
    assert_eq!(
        c.assertion,
        Assertion::SpaceMember {
            space: inv.space.clone(),
            role: Role::Editor
        }
    );
    c.verify_proof().unwrap();
    assert_eq!(host.state(), HostState::Used);
    // Single use: a second redemption, even with the right code, is refused.
    assert_eq!(
        refusal(attempt(&mut host, &inv, &bob, Some("123456"), NOW, 2)).0,
        Refusal::Used
    );
}

#[test]
fn three_wrong_codes_kill_the_invitation() {
    let admin = key(1);
    let bob = key(2);
    let inv = invitation(&admin, Method::Code);
    let mut host = Host::new(inv.clone(), Some("123456".into()), admin.clone()).unwrap();
    for (i, left) in [(1u8, 2u8), (2, 1), (3, 0)] {
        assert_eq!(
            refusal(attempt(&mut host, &inv, &bob, Some("654321"), NOW, i)),
            (Refusal::WrongCode, Some(left))
        );
    }
    assert_eq!(host.state(), HostState::Dead);
    // Dead even for the right code now.
    assert_eq!(
        refusal(attempt(&mut host, &inv, &bob, Some("123456"), NOW, 9)).0,
        Refusal::Dead
    );
}

#[test]
fn expired_invitation_is_refused() {
    let admin = key(1);
    let inv = invitation(&admin, Method::Code);
    let mut host = Host::new(inv.clone(), Some("123456".into()), admin.clone()).unwrap();
    assert_eq!(
        refusal(attempt(
            &mut host,
            &inv,
            &key(2),
            Some("123456"),
            inv.expires + 1,
            1
        ))
        .0,
        Refusal::Expired
    );
}

#[test]
fn known_key_invitation() {
    let admin = key(1);
    let bob = key(2);
    let inv = invitation(&admin, Method::Key { guest: did(&bob) });
    let mut host = Host::new(inv.clone(), None, admin.clone()).unwrap();
    // Somebody else is refused and does not use it up.
    assert_eq!(
        refusal(attempt(&mut host, &inv, &key(3), None, NOW, 1)).0,
        Refusal::WrongKey
    );
    let c = attempt(&mut host, &inv, &bob, None, NOW, 2).unwrap();
    assert_eq!(c.subject, did(&bob));
}

#[test]
fn replayed_proof_is_refused() {
    let admin = key(1);
    let bob = key(2);
    let inv = invitation(&admin, Method::Code);
    let mut host = Host::new(inv.clone(), Some("123456".into()), admin.clone()).unwrap();
    let (mut guest, hello) =
        Guest::new(inv.clone(), Some("000000".into()), bob.clone(), [1; 32]).unwrap();
    let challenge = host.handle(&did(&bob), hello, NOW, [2; 32]);
    let GuestStep::Send(proof) = guest.handle(&inv.host, challenge).unwrap() else {
        panic!()
    };
    // Wrong code once; the same proof again finds no challenge and costs nothing.
    assert!(matches!(
        host.handle(&did(&bob), proof.clone(), NOW, [0; 32]),
        Message::Refused {
            code: Refusal::WrongCode,
            ..
        }
    ));
    assert!(matches!(
        host.handle(&did(&bob), proof, NOW, [0; 32]),
        Message::Refused {
            code: Refusal::BadProof,
            ..
        }
    ));
    assert_eq!(host.state(), HostState::Open { attempts_left: 2 });
}

#[test]
fn the_guest_must_be_who_signaling_says() {
    let admin = key(1);
    let inv = invitation(&admin, Method::Code);
    let mut host = Host::new(inv.clone(), Some("123456".into()), admin.clone()).unwrap();
    let (_, hello) = Guest::new(inv.clone(), Some("123456".into()), key(2), [1; 32]).unwrap();
    assert!(matches!(
        host.handle(&did(&key(3)), hello, NOW, [2; 32]),
        Message::Refused {
            code: Refusal::BadProof,
            ..
        }
    ));
}

/// A relay that answers in the host's place cannot sign the challenge; one that forwards the
/// real challenge cannot learn the code from the proof (it would need the host's X25519
/// secret), and a proof it alters fails the guest's signature.
#[test]
fn a_relay_cannot_impersonate_the_host_or_alter_the_proof() {
    let admin = key(1);
    let bob = key(2);
    let relay = key(7);
    let inv = invitation(&admin, Method::Code);
    let (mut guest, hello) =
        Guest::new(inv.clone(), Some("123456".into()), bob.clone(), [1; 32]).unwrap();
    let Message::Hello { eph: guest_eph, .. } = &hello else {
        panic!()
    };
    let fake_eph = b64(XPublic::from(&StaticSecret::from([5; 32])).as_bytes());
    let signed = transcript("challenge", &inv.id, &did(&bob), guest_eph, &fake_eph);
    let forged = Message::Challenge {
        eph: fake_eph,
        signature: b64(&relay.sign(signed.as_bytes()).to_bytes()),
    };
    // Sent by another peer: ignored. Relayed as if from the host: its signature fails, and
    // the guest still takes the real challenge afterwards.
    assert_eq!(
        guest.handle(&did(&relay), forged.clone()),
        Err(InvitationError::NotFromHost(did(&relay)))
    );
    assert_eq!(
        guest.handle(&inv.host, forged),
        Err(InvitationError::HostNotAuthentic)
    );
    let mut host = Host::new(inv.clone(), Some("123456".into()), admin.clone()).unwrap();
    let real = host.handle(&did(&bob), hello, NOW, [2; 32]);
    assert!(matches!(
        guest.handle(&inv.host, real),
        Ok(GuestStep::Send(Message::Proof { .. }))
    ));

    let mut host = Host::new(inv.clone(), Some("123456".into()), admin.clone()).unwrap();
    let (mut guest, hello) =
        Guest::new(inv.clone(), Some("123456".into()), bob.clone(), [1; 32]).unwrap();
    let challenge = host.handle(&did(&bob), hello, NOW, [2; 32]);
    let GuestStep::Send(Message::Proof { mac, .. }) = guest.handle(&inv.host, challenge).unwrap()
    else {
        panic!()
    };
    // The relay swaps in its own signature over the same transcript: refused, no attempt used.
    let tampered = Message::Proof {
        signature: b64(&relay.sign(b"anything").to_bytes()),
        mac,
    };
    assert!(matches!(
        host.handle(&did(&bob), tampered, NOW, [0; 32]),
        Message::Refused {
            code: Refusal::BadProof,
            ..
        }
    ));
    assert_eq!(host.state(), HostState::Open { attempts_left: 3 });
}

#[test]
fn low_order_keys_and_bad_codes() {
    let admin = key(1);
    let inv = invitation(&admin, Method::Code);
    assert_eq!(
        Host::new(inv.clone(), Some("12345".into()), admin.clone()).err(),
        Some(InvitationError::BadCode)
    );
    assert_eq!(
        Host::new(inv.clone(), None, admin.clone()).err(),
        Some(InvitationError::CodeMismatch)
    );
    assert_eq!(
        Host::new(inv.clone(), Some("123456".into()), key(2)).err(),
        Some(InvitationError::WrongHost)
    );
    // A guest sending the all-zero X25519 point gets a challenge, but its proof can never
    // carry a MAC the host accepts (the host refuses the shared secret).
    let mut host = Host::new(inv.clone(), Some("123456".into()), admin.clone()).unwrap();
    let bob = key(2);
    let hello = Message::Hello {
        invitation: inv.id.clone(),
        guest: did(&bob),
        eph: b64(&[0; 32]),
    };
    let Message::Challenge { eph: host_eph, .. } = host.handle(&did(&bob), hello, NOW, [2; 32])
    else {
        panic!()
    };
    let signed = transcript("proof", &inv.id, &did(&bob), &b64(&[0; 32]), &host_eph);
    let proof = Message::Proof {
        signature: b64(&bob.sign(signed.as_bytes()).to_bytes()),
        mac: Some(b64(&code_mac(&[0; 32], "123456", &signed))),
    };
    assert!(matches!(
        host.handle(&did(&bob), proof, NOW, [0; 32]),
        Message::Refused {
            code: Refusal::BadProof,
            ..
        }
    ));
}

#[test]
fn messages_are_json_with_a_type() {
    let m = Message::Refused {
        code: Refusal::WrongCode,
        message: "wrong code".into(),
        attempts_left: Some(2),
    };
    let text = serde_json::to_string(&m).unwrap();
    assert_eq!(
        text,
        r#"{"type":"refused","code":"wrong-code","message":"wrong code","attempts_left":2}"#
    );
    assert_eq!(serde_json::from_str::<Message>(&text).unwrap(), m);
    assert!(serde_json::from_str::<Message>(r#"{"type":"hello"}"#).is_err());
    let inv = invitation(&key(1), Method::Code);
    assert_eq!(inv.swarm().len(), 64);
    assert_eq!(new_code([0xff; 4]), format!("{:06}", u32::MAX % 1_000_000));
    assert_eq!(new_code([0; 4]), "000000");
}

#[test]
fn silent_guests_time_out_and_make_room() {
    let admin = key(1);
    let inv = invitation(&admin, Method::Code);
    let mut host = Host::new(inv.clone(), Some("123456".into()), admin.clone()).unwrap();
    for i in 0..MAX_PENDING as u8 {
        let k = key(100 + i);
        let (_, hello) =
            Guest::new(inv.clone(), Some("000000".into()), k.clone(), [i; 32]).unwrap();
        assert!(matches!(
            host.handle(&did(&k), hello, NOW, [i; 32]),
            Message::Challenge { .. }
        ));
    }
    let bob = key(2);
    let (_, hello) = Guest::new(inv.clone(), Some("123456".into()), bob.clone(), [1; 32]).unwrap();
    assert!(matches!(
        host.handle(&did(&bob), hello.clone(), NOW, [3; 32]),
        Message::Refused {
            code: Refusal::Busy,
            ..
        }
    ));
    // A minute later the silent ones are gone and bob gets in.
    let later = NOW + PENDING_SECS + 1;
    assert!(
        attempt(&mut host, &inv, &bob, Some("123456"), later, 4).is_ok(),
        "admitted once the silent guests timed out"
    );
}

/// `admitted` names the space root when the host knows it; a guest keeps only a value with
/// the shape of a documentId; old hosts (no `root`) still admit.
#[test]
fn admitted_names_the_space_root() {
    let host_key = key(1);
    let inv = invitation(
        &host_key,
        Method::Key {
            guest: did(&key(2)),
        },
    );
    for (root, kept) in [
        (
            Some("3JzZ5sdWw3yV1Qb1VMYqrqMUXgk8"),
            Some("3JzZ5sdWw3yV1Qb1VMYqrqMUXgk8"),
        ),
        (Some("not/a document id 0OIl"), None),
        (Some(""), None),
        (None, None),
    ] {
        let mut host = Host::new(inv.clone(), None, host_key.clone()).unwrap();
        if let Some(r) = root {
            host = host.with_root(r);
        }
        let (mut guest, hello) = Guest::new(inv.clone(), None, key(2), [3; 32]).unwrap();
        let from = did(&key(2));
        let challenge = host.handle(&from, hello, NOW, [4; 32]);
        let GuestStep::Send(proof) = guest.handle(&inv.host, challenge).unwrap() else {
            panic!("a proof")
        };
        let admitted = host.handle(&from, proof, NOW, [0; 32]);
        let json = serde_json::to_value(&admitted).unwrap();
        assert_eq!(json.get("root").and_then(|r| r.as_str()), root, "{json}");
        assert!(matches!(
            guest.handle(&inv.host, admitted).unwrap(),
            GuestStep::Done(_)
        ));
        assert_eq!(guest.root(), kept);
    }
}
