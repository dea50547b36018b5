//! Fuzz targets for what HALO reads from the network: credential JSON (`Credential` then
//! `verify_proof`), the operator's `Authorization` header (`request::Signed::parse`, then
//! `request::Verifier::verify`), and invitation messages (JSON `invitation::Message`
//! through the `Host` and `Guest` state machines). Ignored by `cargo test`;
//! `bench/fuzz/run` runs them in an optimized build with `PROPTEST_CASES` cases each.
//!
//! Inputs are arbitrary bytes and valid messages under byte-level mutations; the checks say
//! that whatever verifies is exactly what the key holder signed: a mutated credential,
//! header or invitation message is refused, or means the same as the original.

use std::sync::OnceLock;

use ed25519_dalek::{Signer, SigningKey};
use halo::PublicKey;
use halo::credential::{Assertion, Credential, Role};
use halo::invitation::{Guest, GuestStep, Host, Invitation, Message, Method};
use halo::request::{self, Signed, Target};
use proptest::prelude::*;

// ---------------------------------------------------------------- mutations

#[path = "../../bench/fuzz/mutate.rs"]
mod mutations;
use mutations::config;

/// Overwrites favour these bytes (the format's delimiters and edges).
const SPECIAL: &[u8] = &[b'"', b'\\', b',', b'0', b'9', b' ', 0xff];

fn text_from(templates: Vec<String>, max_random: usize) -> impl Strategy<Value = String> {
    mutations::text_from(templates, max_random, SPECIAL)
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn did(k: &SigningKey) -> String {
    halo::did(k)
}

const NOW: u64 = 1_700_000_000;

// ---------------------------------------------------------------- credentials

fn credentials() -> &'static Vec<Credential> {
    static C: OnceLock<Vec<Credential>> = OnceLock::new();
    C.get_or_init(|| {
        let space = did(&key(3));
        let issue = |k: &SigningKey, subject: &str, a: Assertion, expires: Option<u64>| {
            Credential::issue(&did(k), subject, a, NOW, expires, &did(k), |b| {
                k.sign(b).to_bytes()
            })
            .expect("a credential issues")
        };
        let genesis = issue(
            &key(3),
            &did(&key(1)),
            Assertion::SpaceGenesis {
                space: space.clone(),
            },
            None,
        );
        let member = issue(
            &key(1),
            &did(&key(2)),
            Assertion::SpaceMember {
                space: space.clone(),
                role: Role::Editor,
            },
            Some(NOW + 86_400),
        );
        let device = issue(
            &key(2),
            &did(&key(2)),
            Assertion::AuthorizedDevice {
                identity: did(&key(2)),
                device: did(&key(5)),
            },
            None,
        );
        let revocation = issue(
            &key(1),
            &did(&key(2)),
            Assertion::Revocation {
                credential: member.id.clone(),
            },
            // The largest time JCS writes exactly (larger ones are refused: jcs-numbers).
            Some(halo::credential::MAX_TIME),
        );
        // Issued by a device for its identity (signer ≠ issuer), with odd but valid text.
        let by_device = Credential::issue(
            &did(&key(2)),
            "did:key:z6Mk\u{e9}\u{1f600}\"\\\n",
            Assertion::SpaceMember {
                space,
                role: Role::Reader,
            },
            0,
            Some(1),
            &did(&key(5)),
            |b| key(5).sign(b).to_bytes(),
        )
        .expect("a credential issues");
        vec![genesis, member, device, revocation, by_device]
    })
}

fn credential_templates() -> Vec<String> {
    let mut out: Vec<String> = credentials()
        .iter()
        .map(|c| serde_json::to_string(c).expect("a credential serializes"))
        .collect();
    // The same credentials pretty-printed, and one with `"expires": null` (read as absent).
    out.extend(
        credentials()
            .iter()
            .map(|c| serde_json::to_string_pretty(c).expect("a credential serializes")),
    );
    let mut v = serde_json::to_value(&credentials()[0]).expect("a credential serializes");
    if let Some(o) = v.as_object_mut() {
        o.insert("expires".into(), serde_json::Value::Null);
    }
    out.push(v.to_string());
    out
}

// ---------------------------------------------------------------- signed admin requests

const SERVER: &str = "did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX";
const STARTED: u64 = NOW - 100;

fn target(method: &'static str, path: &'static str) -> Target<'static> {
    Target {
        server: SERVER,
        method,
        path,
    }
}

fn requests() -> &'static Vec<Signed> {
    static R: OnceLock<Vec<Signed>> = OnceLock::new();
    R.get_or_init(|| {
        vec![
            request::sign(&key(1), target("GET", "/api/status"), b"", NOW, [1; 16]),
            request::sign(
                &key(1),
                target("PUT", "/api/apps/notes"),
                b"tar",
                NOW - 30,
                [2; 16],
            ),
            // A stranger's key: parses, never verifies.
            request::sign(&key(7), target("GET", "/api/status"), b"", NOW, [3; 16]),
        ]
    })
}

fn header_templates() -> Vec<String> {
    let mut out: Vec<String> = requests().iter().map(Signed::header).collect();
    let s = &requests()[0];
    out.push(format!(
        "Kube-Ed25519 sig={}, body={}, nonce={}, ts={}, key={}",
        s.sig, s.body, s.nonce, s.ts, s.key
    ));
    out.push(format!(
        "Kube-Ed25519 key={},ts=+{},nonce={},body={},sig={}==",
        s.key,
        s.ts,
        s.nonce.to_uppercase(),
        s.body,
        s.sig
    ));
    out.push("Bearer abc".into());
    out
}

// ---------------------------------------------------------------- invitations

const HOST: u8 = 1;
const GUEST: u8 = 4;
const OTHER: u8 = 7;
const CODE: &str = "123456";
const HOST_RANDOM: [u8; 32] = [5; 32];
const GUEST_RANDOM: [u8; 32] = [6; 32];

fn invitation(code: bool) -> Invitation {
    Invitation {
        id: "00112233445566778899aabbccddeeff".into(),
        space: did(&key(3)),
        role: Role::Editor,
        host: did(&key(HOST)),
        expires: NOW + 600,
        method: if code {
            Method::Code
        } else {
            Method::Key {
                guest: did(&key(GUEST)),
            }
        },
    }
}

fn code_for(code: bool) -> Option<String> {
    code.then(|| CODE.to_owned())
}

/// One honest exchange per invitation kind: hello, challenge, proof, admitted.
struct Exchange {
    hello: Message,
    challenge: Message,
    proof: Message,
    admitted: Message,
}

fn exchanges() -> &'static [Exchange; 2] {
    static E: OnceLock<[Exchange; 2]> = OnceLock::new();
    E.get_or_init(|| {
        [false, true].map(|code| {
            let mut host =
                Host::new(invitation(code), code_for(code), key(HOST)).expect("a valid invitation");
            let (mut guest, hello) =
                Guest::new(invitation(code), code_for(code), key(GUEST), GUEST_RANDOM)
                    .expect("a valid invitation");
            let challenge = host.handle(&did(&key(GUEST)), hello.clone(), NOW, HOST_RANDOM);
            let GuestStep::Send(proof) = guest
                .handle(&did(&key(HOST)), challenge.clone())
                .expect("an authentic challenge")
            else {
                panic!("a proof to send");
            };
            let admitted = host.handle(&did(&key(GUEST)), proof.clone(), NOW, [0; 32]);
            assert!(
                matches!(
                    guest.handle(&did(&key(HOST)), admitted.clone()),
                    Ok(GuestStep::Done(_))
                ),
                "the honest exchange ends with a credential"
            );
            Exchange {
                hello,
                challenge,
                proof,
                admitted,
            }
        })
    })
}

fn message_templates() -> Vec<String> {
    let mut out = Vec::new();
    for e in exchanges() {
        for m in [&e.hello, &e.challenge, &e.proof, &e.admitted] {
            out.push(serde_json::to_string(m).expect("a message serializes"));
        }
    }
    out.push(r#"{"type":"refused","code":"wrong-code","message":"m","attempts_left":2}"#.into());
    out.push(r#"{"type":"proof","signature":"","mac":null}"#.into());
    out
}

fn messages() -> impl Strategy<Value = Vec<(bool, String)>> {
    proptest::collection::vec(
        (
            proptest::bool::weighted(0.9),
            text_from(message_templates(), 300),
        ),
        1..4,
    )
}

proptest! {
    #![proptest_config(config())]

    /// Credential JSON: parsing and `verify_proof` never panic, a parsed credential
    /// round-trips through JSON, and one that verifies is exactly an issued one.
    #[test]
    #[ignore = "fuzz: bench/fuzz/run"]
    fn fuzz_credential_json(json in text_from(credential_templates(), 400)) {
        if let Ok(c) = serde_json::from_str::<Credential>(&json) {
            let again: Credential = serde_json::from_str(
                &serde_json::to_string(&c).expect("a credential serializes"),
            )
            .expect("our JSON parses");
            prop_assert_eq!(&again, &c);
            // (Finding jcs-numbers, fixed: times past 2^53 - 1 shared one JCS encoding.)
            prop_assert!(
                c.verify_proof().is_err() || credentials().contains(&c),
                "a credential nobody issued verifies: {c:?}"
            );
        }
    }

    /// The `Authorization: Kube-Ed25519 …` header: parsing never panics, a parsed header
    /// prints back to itself, and one that verifies is an operator's request as signed.
    #[test]
    #[ignore = "fuzz: bench/fuzz/run"]
    fn fuzz_admin_authorization(header in text_from(header_templates(), 300), put in any::<bool>()) {
        let Some(Ok(s)) = Signed::parse(&header) else {
            return Ok(());
        };
        prop_assert_eq!(Signed::parse(&s.header()), Some(Ok(s.clone())));
        let operator = PublicKey::from_bytes(key(1).verifying_key().as_bytes())
            .expect("a valid key");
        let mut v = request::Verifier::new(SERVER.into(), vec![operator], 60, STARTED);
        let (method, path) = if put { ("PUT", "/api/apps/notes") } else { ("GET", "/api/status") };
        if v.verify(&s, method, path, NOW).is_ok() {
            let same = |o: &Signed| o.key == s.key && o.ts == s.ts && o.nonce == s.nonce && o.body == s.body;
            prop_assert!(
                requests()[..2].iter().any(same),
                "a request nobody signed verifies: {s:?}"
            );
            prop_assert_eq!(
                v.verify(&s, method, path, NOW),
                Err(request::RequestError::Replay)
            );
        }
    }

    /// Invitation messages through a fresh `Host`: parsing and `handle` never panic, and a
    /// credential is issued only to the guest who sent the honest hello and proof.
    #[test]
    #[ignore = "fuzz: bench/fuzz/run"]
    fn fuzz_invitation_host(code in any::<bool>(), msgs in messages()) {
        let mut host = Host::new(invitation(code), code_for(code), key(HOST))
            .expect("a valid invitation");
        let honest = &exchanges()[usize::from(code)];
        let mut said = Vec::new();
        for (from_guest, json) in &msgs {
            let Ok(msg) = serde_json::from_str::<Message>(json) else {
                continue;
            };
            let again: Message = serde_json::from_str(
                &serde_json::to_string(&msg).expect("a message serializes"),
            )
            .expect("our JSON parses");
            prop_assert_eq!(&again, &msg);
            let from = did(&key(if *from_guest { GUEST } else { OTHER }));
            said.push((from.clone(), msg.clone()));
            if let Message::Admitted { credential, .. } =
                host.handle(&from, msg, NOW + 1, HOST_RANDOM)
            {
                prop_assert_eq!(&credential.subject, &did(&key(GUEST)));
                prop_assert!(credential.verify_proof().is_ok());
                // The last message was the honest proof (a key invitation has no code, so
                // whatever `mac` it carries is not read), after the honest hello.
                let guest = did(&key(GUEST));
                let proved = match (said.last(), &honest.proof) {
                    (
                        Some((f, Message::Proof { signature, mac })),
                        Message::Proof { signature: s, mac: m },
                    ) => *f == guest && signature == s && (!code || mac == m),
                    _ => false,
                };
                prop_assert!(
                    proved && said.contains(&(guest, honest.hello.clone())),
                    "admitted after {said:?}"
                );
            }
        }
    }

    /// Messages from the host (or anyone in the swarm) through a fresh `Guest`: no panic;
    /// a proof is sent only for the authentic challenge, and the credential accepted is
    /// exactly the one the host issued.
    #[test]
    #[ignore = "fuzz: bench/fuzz/run"]
    fn fuzz_invitation_guest(code in any::<bool>(), msgs in messages()) {
        let (mut guest, _hello) =
            Guest::new(invitation(code), code_for(code), key(GUEST), GUEST_RANDOM)
                .expect("a valid invitation");
        let honest = &exchanges()[usize::from(code)];
        for (from_host, json) in &msgs {
            let Ok(msg) = serde_json::from_str::<Message>(json) else {
                continue;
            };
            let from = did(&key(if *from_host { HOST } else { OTHER }));
            match guest.handle(&from, msg.clone()) {
                Ok(GuestStep::Send(_)) => {
                    prop_assert_eq!(&msg, &honest.challenge, "a proof for another challenge");
                }
                Ok(GuestStep::Done(c)) => {
                    let Message::Admitted { credential, .. } = &honest.admitted else {
                        panic!("the honest exchange admits");
                    };
                    prop_assert_eq!(&c, credential, "another credential accepted");
                }
                Err(_) => {}
            }
        }
    }
}

/// The templates are what they claim.
#[test]
#[ignore = "fuzz: bench/fuzz/run"]
fn fuzz_templates_are_valid() {
    for c in credentials() {
        c.verify_proof().expect("issued credentials verify");
    }
    for t in credential_templates() {
        let c: Credential = serde_json::from_str(&t).expect("templates parse");
        assert!(credentials().contains(&c));
    }
    for (i, h) in header_templates().iter().take(2).enumerate() {
        assert_eq!(Signed::parse(h), Some(Ok(requests()[i].clone())));
    }
    assert_eq!(exchanges().len(), 2);
    for t in message_templates() {
        serde_json::from_str::<Message>(&t).expect("templates parse");
    }
}
