//! Invitations redeemed through the running KUBE's signaling, host and guest on two real
//! WebSocket clients running HALO's state machines: a code accepted, three wrong codes kill
//! the invitation, an expired one, a known-key one, and a replayed redemption refused.

use halo::SigningKey;
use halo::credential::{Assertion, Credential, Role};
use halo::invitation::{
    Guest, GuestStep, Host, HostState, Invitation, InvitationError, Message, Method, Refusal,
};
use serde_json::{Value, json};
use tests::{Kube, Ws};

use crate::signal::{peer, recv, send};

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn invitation(host: &SigningKey, method: Method, expires: u64) -> Invitation {
    Invitation {
        id: hex::encode(rand::random::<[u8; 16]>()),
        space: halo::did(&key(60)),
        role: Role::Editor,
        host: halo::did(host),
        expires,
        method,
    }
}

/// Both sides in the invitation's swarm.
struct Meeting {
    host_ws: Ws,
    host_did: String,
    guest_ws: Ws,
    guest_did: String,
    swarm: String,
}

async fn meet(kube: &Kube, host_seed: u8, guest_seed: u8, inv: &Invitation) -> Meeting {
    let (mut host_ws, host_did) = peer(kube, host_seed).await;
    let (mut guest_ws, guest_did) = peer(kube, guest_seed).await;
    let swarm = inv.swarm();
    send(&mut host_ws, json!({"type": "join", "swarm": swarm})).await;
    assert_eq!(recv(&mut host_ws).await["type"], "peers");
    send(&mut guest_ws, json!({"type": "join", "swarm": swarm})).await;
    let peers = recv(&mut guest_ws).await;
    assert_eq!(peers["peers"], json!([host_did]), "{peers}");
    assert_eq!(recv(&mut host_ws).await["type"], "peer-joined");
    Meeting {
        host_ws,
        host_did,
        guest_ws,
        guest_did,
        swarm,
    }
}

/// Sends `msg` through signaling and returns it as the other side receives it.
async fn relay(
    from: &mut Ws,
    to: &mut Ws,
    to_did: &str,
    swarm: &str,
    msg: &Message,
) -> (String, Message) {
    send(
        from,
        json!({"type": "signal", "to": to_did, "swarm": swarm, "payload": msg}),
    )
    .await;
    let got: Value = recv(to).await;
    assert_eq!(got["type"], "signal", "{got}");
    let payload = serde_json::from_value(got["payload"].clone()).expect("an invitation message");
    (got["from"].as_str().unwrap().to_owned(), payload)
}

/// One attempt through signaling; also returns the guest's proof message as sent.
async fn attempt(
    m: &mut Meeting,
    host: &mut Host,
    inv: &Invitation,
    guest_key: &SigningKey,
    code: Option<&str>,
) -> (Result<Box<Credential>, InvitationError>, Option<Message>) {
    let (mut guest, hello) = Guest::new(
        inv.clone(),
        code.map(str::to_owned),
        guest_key.clone(),
        rand::random(),
    )
    .unwrap();
    let mut to_host = hello;
    let mut proof = None;
    loop {
        let (from, at_host) = relay(
            &mut m.guest_ws,
            &mut m.host_ws,
            &m.host_did,
            &m.swarm,
            &to_host,
        )
        .await;
        assert_eq!(
            from, m.guest_did,
            "signaling names the authenticated sender"
        );
        let reply = host.handle(&from, at_host, now(), rand::random());
        let (from_host, at_guest) = relay(
            &mut m.host_ws,
            &mut m.guest_ws,
            &m.guest_did,
            &m.swarm,
            &reply,
        )
        .await;
        match guest.handle(&from_host, at_guest) {
            Ok(GuestStep::Send(next)) => {
                proof = Some(next.clone());
                to_host = next;
            }
            Ok(GuestStep::Done(c)) => return (Ok(c), proof),
            Err(e) => return (Err(e), proof),
        }
    }
}

fn refused(r: &Result<Box<Credential>, InvitationError>) -> (Refusal, Option<u8>) {
    match r {
        Err(InvitationError::Refused {
            code,
            attempts_left,
            message,
        }) => {
            assert!(!message.is_empty());
            (*code, *attempts_left)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn code_invitation_redeemed_over_signaling() {
    let kube = Kube::start();
    let admin = key(61);
    let bob = key(62);
    let inv = invitation(&admin, Method::Code, now() + 600);
    let mut host = Host::new(inv.clone(), Some("482913".into()), admin.clone()).unwrap();
    let mut m = meet(&kube, 61, 62, &inv).await;

    let (result, proof) = attempt(&mut m, &mut host, &inv, &bob, Some("482913")).await;
    let credential = result.expect("admitted");
    assert_eq!(credential.subject, halo::did(&bob));
    assert_eq!(host.state(), HostState::Used);

    // The credential makes bob an editor of the space the admin created.
    let space = key(60);
    let genesis = Credential::issue(
        &halo::did(&space),
        &halo::did(&admin),
        Assertion::SpaceGenesis {
            space: halo::did(&space),
        },
        now() - 10,
        None,
        &halo::did(&space),
        |b| ed25519_dalek::Signer::sign(&space, b).to_bytes(),
    )
    .unwrap();
    let membership = halo::space::validate(
        &halo::did(&space),
        &[genesis, *credential],
        halo::space::Clock {
            now: now(),
            skew: 60,
        },
    );
    assert_eq!(membership.role_of(&halo::did(&bob)), Some(Role::Editor));

    // Replayed redemption: the recorded proof again, then a whole new attempt.
    let proof = proof.expect("a proof was sent");
    let (from, at_host) = relay(
        &mut m.guest_ws,
        &mut m.host_ws,
        &m.host_did,
        &m.swarm,
        &proof,
    )
    .await;
    assert!(matches!(
        host.handle(&from, at_host, now(), rand::random()),
        Message::Refused {
            code: Refusal::Used,
            ..
        }
    ));
    let (again, _) = attempt(&mut m, &mut host, &inv, &bob, Some("482913")).await;
    assert_eq!(refused(&again).0, Refusal::Used);
}

#[tokio::test]
async fn three_wrong_codes_then_dead() {
    let kube = Kube::start();
    let admin = key(63);
    let mallory = key(64);
    let inv = invitation(&admin, Method::Code, now() + 600);
    let mut host = Host::new(inv.clone(), Some("111111".into()), admin.clone()).unwrap();
    let mut m = meet(&kube, 63, 64, &inv).await;
    for left in [2u8, 1, 0] {
        let (r, _) = attempt(&mut m, &mut host, &inv, &mallory, Some("999999")).await;
        assert_eq!(refused(&r), (Refusal::WrongCode, Some(left)));
        let Err(e) = r else { unreachable!() };
        assert!(e.to_string().contains("wrong code"), "{e}");
    }
    assert_eq!(host.state(), HostState::Dead);
    let (r, _) = attempt(&mut m, &mut host, &inv, &mallory, Some("111111")).await;
    assert_eq!(refused(&r).0, Refusal::Dead);
}

#[tokio::test]
async fn expired_invitation_is_refused() {
    let kube = Kube::start();
    let admin = key(65);
    let inv = invitation(&admin, Method::Code, now() - 1);
    let mut host = Host::new(inv.clone(), Some("222222".into()), admin.clone()).unwrap();
    let mut m = meet(&kube, 65, 66, &inv).await;
    let (r, _) = attempt(&mut m, &mut host, &inv, &key(66), Some("222222")).await;
    assert_eq!(refused(&r).0, Refusal::Expired);
}

#[tokio::test]
async fn known_key_invitation() {
    let kube = Kube::start();
    let admin = key(67);
    let carol = key(68);
    let inv = invitation(
        &admin,
        Method::Key {
            guest: halo::did(&carol),
        },
        now() + 600,
    );
    let mut host = Host::new(inv.clone(), None, admin.clone()).unwrap();
    // Another key is refused.
    let mut m = meet(&kube, 67, 69, &inv).await;
    let (r, _) = attempt(&mut m, &mut host, &inv, &key(69), None).await;
    assert_eq!(refused(&r).0, Refusal::WrongKey);
    // Carol gets in.
    let (mut carol_ws, carol_did) = peer(&kube, 68).await;
    send(&mut carol_ws, json!({"type": "join", "swarm": m.swarm})).await;
    assert_eq!(recv(&mut carol_ws).await["type"], "peers");
    assert_eq!(recv(&mut m.host_ws).await["type"], "peer-joined");
    m.guest_ws = carol_ws;
    m.guest_did = carol_did;
    // The refused guest's socket closed with the swap; both hear it leave.
    assert_eq!(recv(&mut m.host_ws).await["type"], "peer-left");
    assert_eq!(recv(&mut m.guest_ws).await["type"], "peer-left");
    let (r, _) = attempt(&mut m, &mut host, &inv, &carol, None).await;
    let c = r.expect("admitted");
    assert_eq!(c.subject, halo::did(&carol));
    assert_eq!(host.state(), HostState::Used);
}
