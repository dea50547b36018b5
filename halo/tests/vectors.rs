//! Shared membership vectors, `vectors/space.json`: spaces given as the credential JSON a root
//! document stores and a clock, with what `space::validate` finds. Browsers decide membership
//! on their own with the JS port (client/src/members.js), which checks itself against the same
//! file (client/test/vectors.test.mjs), so the two decide alike on every case.
//!
//! A case is `{name, space, now, skew, credentials, roles: {did: role}, devices: {device:
//! identity}, rejected: [[id, reason]]}`; `rejected` is sorted and its reasons are the
//! `Rejection` names in kebab case. A credential halo cannot parse (ECHO skips such a root
//! entry) is listed as `bad-proof`; no case gives it the id of one halo parses.
//!
//! Keys come from fixed seeds and Ed25519 signs deterministically, so the file is exactly what
//! `cases` renders (`vectors_are_current`). After a deliberate change to the rules or cases:
//! `cargo test -p halo --test vectors -- --ignored regenerate`.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use base64::Engine;
use ed25519_dalek::hazmat::{ExpandedSecretKey, raw_sign};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use halo::PublicKey;
use halo::credential::{Assertion, Credential, MAX_TIME, Role};
use halo::space::{self, Clock, Rejection, SKEW_SECS};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256, Sha512};

const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/space.json");
const NOW: u64 = 1_700_000_000;
const DAY: u64 = 86_400;
/// When a credential was issued, unless its case says otherwise.
const ISSUED: u64 = NOW - DAY;

// ---------------------------------------------------------------- the file

/// What `space::validate` finds for one case, as the file states it.
#[derive(Debug, PartialEq)]
struct Found {
    roles: BTreeMap<String, Role>,
    devices: BTreeMap<String, String>,
    rejected: Vec<(String, String)>,
}

fn reason(r: &Rejection) -> &'static str {
    match r {
        Rejection::BadProof(_) => "bad-proof",
        Rejection::WrongSigner => "wrong-signer",
        Rejection::Expired => "expired",
        Rejection::FromTheFuture => "from-the-future",
        Rejection::Revoked => "revoked",
        Rejection::RevokesARevocation => "revokes-a-revocation",
        Rejection::OtherSpace => "other-space",
        Rejection::NoChain => "no-chain",
        Rejection::Outranked => "outranked",
    }
}

/// Validates the credentials as ECHO reads a root: entries that do not parse are skipped.
fn judge(space: &str, now: u64, skew: u64, credentials: &[Value]) -> Found {
    let mut parsed = Vec::new();
    let mut unparsable = Vec::new();
    for v in credentials {
        match serde_json::from_value::<Credential>(v.clone()) {
            Ok(c) => parsed.push(c),
            Err(_) => unparsable.push(v["id"].as_str().expect("a vector has an id").to_owned()),
        }
    }
    for id in &unparsable {
        assert!(
            !parsed.iter().any(|c| c.id == *id),
            "an unparsable vector shares the id {id}"
        );
    }
    let m = space::validate(space, &parsed, Clock { now, skew });
    let mut rejected: Vec<(String, String)> = m
        .rejected
        .iter()
        .map(|(id, why)| (id.clone(), reason(why).to_owned()))
        .chain(
            unparsable
                .into_iter()
                .map(|id| (id, "bad-proof".to_owned())),
        )
        .collect();
    rejected.sort();
    Found {
        roles: m.roles,
        devices: m.devices,
        rejected,
    }
}

fn one_line(v: &impl Serialize) -> String {
    serde_json::to_string(v).expect("vectors serialize")
}

/// The file: one credential or rejection a line, so that a change reads as a diff.
fn render(cases: &[Case]) -> String {
    let mut names = HashSet::new();
    let mut out = String::from("[\n");
    for (i, case) in cases.iter().enumerate() {
        assert!(names.insert(&case.name), "two cases named {}", case.name);
        let found = judge(&case.space, NOW, SKEW_SECS, &case.credentials);
        if let Some(expect) = &case.expect {
            assert_eq!(found.roles, expect.roles, "{}: roles", case.name);
            assert_eq!(found.devices, expect.devices, "{}: devices", case.name);
        }
        let list = |items: Vec<String>| {
            if items.is_empty() {
                "[]".to_owned()
            } else {
                format!("[\n      {}\n    ]", items.join(",\n      "))
            }
        };
        let credentials = list(case.credentials.iter().map(one_line).collect());
        let rejected = list(found.rejected.iter().map(one_line).collect());
        let comma = if i + 1 < cases.len() { "," } else { "" };
        write!(
            out,
            "  {{\n    \"name\": {},\n    \"space\": {},\n    \"now\": {NOW},\n    \"skew\": {SKEW_SECS},\n    \"credentials\": {credentials},\n    \"roles\": {},\n    \"devices\": {},\n    \"rejected\": {rejected}\n  }}{comma}\n",
            one_line(&case.name),
            one_line(&case.space),
            one_line(&found.roles),
            one_line(&found.devices),
        )
        .expect("writing to a String cannot fail");
    }
    out.push_str("]\n");
    out
}

fn read_file() -> String {
    std::fs::read_to_string(FILE).unwrap_or_else(|e| panic!("{FILE}: {e} (run `regenerate`)"))
}

#[test]
#[ignore = "writes tests/vectors/space.json"]
fn regenerate() {
    std::fs::create_dir_all(std::path::Path::new(FILE).parent().expect("a parent"))
        .expect("the vectors folder");
    std::fs::write(FILE, render(&cases())).expect("the vectors file");
}

#[test]
fn vectors_are_current() {
    assert!(
        read_file() == render(&cases()),
        "{FILE} is not what the cases render: run `cargo test -p halo --test vectors -- --ignored regenerate` and review the diff"
    );
}

/// The file as the JS test reads it: halo finds exactly its roles, devices and rejections, in
/// any order of the credentials.
#[test]
fn vectors_hold() {
    let cases: Vec<Value> = serde_json::from_str(&read_file()).expect("the vectors are JSON");
    assert!(cases.len() >= 40, "{} cases", cases.len());
    for case in &cases {
        let name = case["name"].as_str().expect("a name");
        let space = case["space"].as_str().expect("a space");
        let now = case["now"].as_u64().expect("a now");
        let skew = case["skew"].as_u64().expect("a skew");
        let credentials = case["credentials"].as_array().expect("credentials");
        let expected = Found {
            roles: serde_json::from_value(case["roles"].clone()).expect("roles"),
            devices: serde_json::from_value(case["devices"].clone()).expect("devices"),
            rejected: serde_json::from_value(case["rejected"].clone()).expect("rejected"),
        };
        let mut reversed = credentials.clone();
        reversed.reverse();
        let mut rotated = credentials.clone();
        rotated.rotate_left(credentials.len() / 2);
        for order in [credentials, &reversed, &rotated] {
            assert_eq!(judge(space, now, skew, order), expected, "{name}");
        }
    }
}

// ---------------------------------------------------------------- making credentials

struct Key(SigningKey);

impl Key {
    fn new(seed: u8) -> Key {
        Key(SigningKey::from_bytes(&[seed; 32]))
    }
    fn did(&self) -> String {
        halo::did(&self.0)
    }
    /// A credential in `issuer`'s name, signed by this key.
    fn signs(
        &self,
        issuer: &Key,
        subject: &str,
        assertion: Assertion,
        issued: u64,
        expires: Option<u64>,
    ) -> Credential {
        Credential::issue(
            &issuer.did(),
            subject,
            assertion,
            issued,
            expires,
            &self.did(),
            |b| self.0.sign(b).to_bytes(),
        )
        .expect("times at most MAX_TIME")
    }
    fn says(&self, subject: &Key, assertion: Assertion) -> Credential {
        self.signs(self, &subject.did(), assertion, ISSUED, None)
    }
    fn grants(&self, subject: &Key, space: &Key, role: Role) -> Credential {
        self.says(subject, member(space, role))
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
    fn revokes(&self, c: &Credential) -> Credential {
        self.revokes_for(self, c)
    }
    /// A revocation of `c` in `issuer`'s name, signed by this key (a device of the issuer's).
    fn revokes_for(&self, issuer: &Key, c: &Credential) -> Credential {
        self.signs(issuer, &c.subject, revocation(&c.id), ISSUED, None)
    }
}

fn member(space: &Key, role: Role) -> Assertion {
    Assertion::SpaceMember {
        space: space.did(),
        role,
    }
}

fn revocation(id: &str) -> Assertion {
    Assertion::Revocation {
        credential: id.to_owned(),
    }
}

fn genesis(space: &Key, admin: &Key) -> Credential {
    space.says(admin, Assertion::SpaceGenesis { space: space.did() })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A credential as a root stores it.
fn stored(c: &Credential) -> Value {
    serde_json::to_value(c).expect("a credential serializes")
}

/// `c` with its JSON changed after signing.
fn edited(c: &Credential, edit: impl FnOnce(&mut Value)) -> Value {
    let mut v = stored(c);
    edit(&mut v);
    v
}

/// A copy of `c` under its id whose signature is another key's.
fn forged(c: &Credential) -> Value {
    let bytes = c.signed_bytes().expect("c was issued");
    edited(c, |v| {
        v["proof"]["signature"] = json!(b64(&Key::new(0x63).0.sign(&bytes).to_bytes()));
    })
}

/// A grant with times past MAX_TIME, signed over the bytes JCS writes for them (doubles, as
/// JavaScript reads them), which `Credential::issue` refuses to make.
fn past_max_time(
    by: &Key,
    subject: &Key,
    a: Assertion,
    issued: u64,
    expires: Option<u64>,
) -> Value {
    let mut signed = json!({
        "issuer": by.did(), "subject": subject.did(), "assertion": a, "issued": issued,
    });
    if let Some(e) = expires {
        signed["expires"] = json!(e);
    }
    signed["signer"] = json!(by.did());
    let bytes = serde_jcs::to_vec(&signed).expect("JSON encodes");
    let mut c = json!({
        "id": hex::encode(Sha256::digest(&bytes)),
        "issuer": by.did(), "subject": subject.did(), "assertion": a, "issued": issued,
    });
    if let Some(e) = expires {
        c["expires"] = json!(e);
    }
    c["proof"] = json!({"signer": by.did(), "signature": b64(&by.0.sign(&bytes).to_bytes())});
    c
}

/// A key whose point has a component of order 8, and a signing function for it: its signatures
/// pass the cofactored Ed25519 equation but not the exact one `verify_strict` checks.
fn mixed_order_key(seed: u8) -> (String, impl Fn(&[u8]) -> [u8; 64]) {
    let order_8 = hex::decode("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")
        .expect("hex");
    let order_8 =
        VerifyingKey::from_bytes(&order_8.try_into().expect("32 bytes")).expect("a curve point");
    assert!(order_8.is_weak());
    let base = SigningKey::from_bytes(&[seed; 32]).verifying_key();
    let mixed = (base.to_edwards() + order_8.to_edwards()).compress();
    let mixed = VerifyingKey::from_bytes(mixed.as_bytes()).expect("a curve point");
    assert!(!mixed.is_weak());
    let did = PublicKey::from_bytes(mixed.as_bytes())
        .expect("a curve point")
        .to_did();
    let secret = ExpandedSecretKey::from(&[seed; 32]);
    (did, move |b: &[u8]| {
        raw_sign::<Sha512>(&secret, b, &mixed).to_bytes()
    })
}

// ---------------------------------------------------------------- the cases

struct Case {
    name: String,
    space: String,
    credentials: Vec<Value>,
    /// What halo must find; `None` for random cases, which record whatever it finds.
    expect: Option<Expect>,
}

struct Expect {
    roles: BTreeMap<String, Role>,
    devices: BTreeMap<String, String>,
}

/// A case and what it must find (checked by `render`).
fn case(
    name: &'static str,
    space: &Key,
    credentials: Vec<Value>,
    roles: &[(&Key, Role)],
    devices: &[(&Key, &Key)],
) -> Case {
    Case {
        name: name.to_owned(),
        space: space.did(),
        credentials,
        expect: Some(Expect {
            roles: roles.iter().map(|(k, r)| (k.did(), *r)).collect(),
            devices: devices.iter().map(|(d, i)| (d.did(), i.did())).collect(),
        }),
    }
}

fn all(cs: &[&Credential]) -> Vec<Value> {
    cs.iter().map(|c| stored(c)).collect()
}

fn cases() -> Vec<Case> {
    use Role::{Admin, Editor, Reader, Replicator};
    let space = Key::new(1);
    let (alice, bob, carol, dave, erin) = (
        Key::new(2),
        Key::new(3),
        Key::new(4),
        Key::new(5),
        Key::new(6),
    );
    let (frank, mallory, stranger) = (Key::new(7), Key::new(9), Key::new(10));
    let (laptop, phone, tablet) = (Key::new(0x21), Key::new(0x22), Key::new(0x23));
    let other_space = Key::new(0x30);
    let g = genesis(&space, &alice);
    let bob_admin = alice.grants(&bob, &space, Admin);
    let carol_admin = alice.grants(&carol, &space, Admin);
    let erin_admin = bob.grants(&erin, &space, Admin);

    // Who is a member, and as what.
    let mut out = vec![
        case("genesis only", &space, all(&[&g]), &[(&alice, Admin)], &[]),
        case(
            "a genesis naming two admins",
            &space,
            all(&[&g, &genesis(&space, &bob)]),
            &[(&alice, Admin), (&bob, Admin)],
            &[],
        ),
        case(
            "members of each role",
            &space,
            all(&[
                &g,
                &bob_admin,
                &alice.grants(&carol, &space, Editor),
                &alice.grants(&dave, &space, Replicator),
                &alice.grants(&erin, &space, Reader),
            ]),
            &[
                (&alice, Admin),
                (&bob, Admin),
                (&carol, Editor),
                (&dave, Replicator),
                (&erin, Reader),
            ],
            &[],
        ),
        case(
            "the best grant counts",
            &space,
            all(&[
                &g,
                &bob_admin,
                &alice.grants(&carol, &space, Editor),
                &alice.grants(&carol, &space, Reader),
                &alice.grants(&dave, &space, Reader),
                &bob.grants(&dave, &space, Editor),
                &bob.grants(&alice, &space, Reader),
            ]),
            &[
                (&alice, Admin),
                (&bob, Admin),
                (&carol, Editor),
                (&dave, Editor),
            ],
            &[],
        ),
        case(
            "a chain of admins",
            &space,
            all(&[
                &g,
                &bob_admin,
                &bob.grants(&carol, &space, Admin),
                &carol.grants(&dave, &space, Admin),
                &dave.grants(&erin, &space, Reader),
            ]),
            &[
                (&alice, Admin),
                (&bob, Admin),
                (&carol, Admin),
                (&dave, Admin),
                (&erin, Reader),
            ],
            &[],
        ),
        case(
            "roles never rise along a chain",
            &space,
            all(&[
                &g,
                &alice.grants(&bob, &space, Editor),
                &bob.grants(&carol, &space, Admin),
                &bob.grants(&bob, &space, Admin),
                &bob.grants(&dave, &space, Reader),
            ]),
            &[(&alice, Admin), (&bob, Editor)],
            &[],
        ),
        case(
            "no genesis, a genesis by another key",
            &space,
            all(&[
                &alice.grants(&bob, &space, Editor),
                &mallory.says(&mallory, Assertion::SpaceGenesis { space: space.did() }),
                &mallory.says(&alice, Assertion::SpaceGenesis { space: space.did() }),
            ]),
            &[],
            &[],
        ),
    ];
    let cycle = [
        alice.grants(&bob, &space, Admin),
        bob.grants(&alice, &space, Admin),
    ];
    out.push(case(
        "a cycle of admins without a genesis",
        &space,
        all(&[&cycle[0], &cycle[1]]),
        &[],
        &[],
    ));
    out.push(case(
        "a cycle of admins with a genesis",
        &space,
        all(&[&cycle[0], &cycle[1], &g]),
        &[(&alice, Admin), (&bob, Admin)],
        &[],
    ));
    out.push(case(
        "another space's genesis and grant",
        &space,
        all(&[
            &genesis(&other_space, &alice),
            &alice.grants(&bob, &other_space, Editor),
        ]),
        &[],
        &[],
    ));
    out.push(case(
        "a grant for another space",
        &space,
        all(&[
            &g,
            &alice.grants(&bob, &other_space, Admin),
            &alice.grants(&carol, &space, Editor),
        ]),
        &[(&alice, Admin), (&carol, Editor)],
        &[],
    ));

    // Revocations.
    let carol_by_bob = bob.grants(&carol, &space, Editor);
    out.push(case(
        "revoked by the space key",
        &space,
        all(&[&g, &bob_admin, &carol_by_bob, &space.revokes(&bob_admin)]),
        &[(&alice, Admin)],
        &[],
    ));
    let dave_reader = alice.grants(&dave, &space, Reader);
    out.push(case(
        "revoked by its issuer",
        &space,
        all(&[
            &g,
            &bob_admin,
            &dave_reader,
            &alice.grants(&carol, &space, Editor),
            &alice.revokes(&dave_reader),
        ]),
        &[(&alice, Admin), (&bob, Admin), (&carol, Editor)],
        &[],
    ));
    out.push(case(
        "an admin revokes another admin's grant to a member",
        &space,
        all(&[&g, &bob_admin, &carol_by_bob, &alice.revokes(&carol_by_bob)]),
        &[(&alice, Admin), (&bob, Admin)],
        &[],
    ));
    out.push(case(
        "a farther admin revokes a closer admin's grant to a member",
        &space,
        all(&[
            &g,
            &bob_admin,
            &erin_admin,
            &dave_reader,
            &erin.revokes(&dave_reader),
        ]),
        &[(&alice, Admin), (&bob, Admin), (&erin, Admin)],
        &[],
    ));
    out.push(case(
        "the closer admin wins",
        &space,
        all(&[
            &g,
            &bob_admin,
            &erin_admin,
            &alice.revokes(&erin_admin),
            &erin.revokes(&bob_admin),
            &erin.revokes(&g),
        ]),
        &[(&alice, Admin), (&bob, Admin)],
        &[],
    ));
    out.push(case(
        "a farther admin cannot remove a closer one",
        &space,
        all(&[
            &g,
            &bob_admin,
            &erin_admin,
            &erin.revokes(&bob_admin),
            &erin.revokes(&g),
        ]),
        &[(&alice, Admin), (&bob, Admin), (&erin, Admin)],
        &[],
    ));
    out.push(case(
        "admins at the same depth cannot remove each other",
        &space,
        all(&[
            &g,
            &bob_admin,
            &carol_admin,
            &bob.revokes(&carol_admin),
            &carol.revokes(&bob_admin),
        ]),
        &[(&alice, Admin), (&bob, Admin), (&carol, Admin)],
        &[],
    ));
    let g_bob = genesis(&space, &bob);
    out.push(case(
        "two genesis admins cannot remove each other",
        &space,
        all(&[&g, &g_bob, &alice.revokes(&g_bob), &bob.revokes(&g)]),
        &[(&alice, Admin), (&bob, Admin)],
        &[],
    ));
    let carol_editor = alice.grants(&carol, &space, Editor);
    out.push(case(
        "a demoted admin's revocations never count",
        &space,
        all(&[
            &g,
            &bob_admin,
            &carol_editor,
            &alice.revokes(&bob_admin),
            &bob.revokes(&carol_editor),
            &bob.signs(
                &bob,
                &carol.did(),
                revocation(&carol_editor.id),
                ISSUED - DAY,
                None,
            ),
        ]),
        &[(&alice, Admin), (&carol, Editor)],
        &[],
    ));
    out.push(case(
        "admins cannot revoke the genesis",
        &space,
        all(&[&g, &bob_admin, &alice.revokes(&g), &bob.revokes(&g)]),
        &[(&alice, Admin), (&bob, Admin)],
        &[],
    ));
    out.push(case(
        "the space key revokes the genesis",
        &space,
        all(&[&g, &bob_admin, &space.revokes(&g)]),
        &[],
        &[],
    ));
    let cut_bob = alice.revokes(&bob_admin);
    out.push(case(
        "revocations are final",
        &space,
        all(&[
            &g,
            &bob_admin,
            &cut_bob,
            &alice.revokes(&cut_bob),
            &space.revokes(&cut_bob),
        ]),
        &[(&alice, Admin)],
        &[],
    ));
    let carol_claims_laptop = carol.authorizes(&laptop);
    out.push(case(
        "a member revokes only its own credentials",
        &space,
        all(&[
            &g,
            &alice.grants(&bob, &space, Editor),
            &carol_editor,
            &dave_reader,
            &bob.revokes(&dave_reader),
            &carol_claims_laptop,
            &carol.revokes(&carol_claims_laptop),
            &stranger.revokes(&carol_editor),
            &bob.signs(&bob, &bob.did(), revocation("no such id"), ISSUED, None),
        ]),
        &[
            (&alice, Admin),
            (&bob, Editor),
            (&carol, Editor),
            (&dave, Reader),
        ],
        &[],
    ));

    // Time.
    let editor_at = |to: &Key, issued: u64, expires: Option<u64>| {
        alice.signs(&alice, &to.did(), member(&space, Editor), issued, expires)
    };
    out.push(case(
        "expiry, at and beyond the skew",
        &space,
        vec![
            stored(&g),
            stored(&editor_at(&bob, ISSUED, Some(NOW - DAY / 2))),
            stored(&editor_at(&carol, ISSUED, Some(NOW - SKEW_SECS))),
            stored(&editor_at(&dave, ISSUED, Some(NOW - SKEW_SECS - 1))),
            stored(&editor_at(&erin, ISSUED, Some(NOW + DAY))),
            stored(&editor_at(&frank, ISSUED, Some(NOW - 10))),
        ],
        &[
            (&alice, Admin),
            (&carol, Editor),
            (&erin, Editor),
            (&frank, Editor),
        ],
        &[],
    ));
    out.push(case(
        "issued in the future, within and beyond the skew",
        &space,
        vec![
            stored(&g),
            stored(&editor_at(&bob, NOW + SKEW_SECS, None)),
            stored(&editor_at(&carol, NOW + SKEW_SECS + 1, None)),
            stored(&editor_at(&dave, NOW + 10, None)),
            stored(&editor_at(&erin, NOW + DAY, Some(NOW + 2 * DAY))),
        ],
        &[(&alice, Admin), (&bob, Editor), (&dave, Editor)],
        &[],
    ));
    out.push(case(
        "an expired admin grant cuts the chain",
        &space,
        all(&[
            &g,
            &alice.signs(
                &alice,
                &bob.did(),
                member(&space, Admin),
                ISSUED,
                Some(NOW - DAY / 2),
            ),
            &carol_by_bob,
        ]),
        &[(&alice, Admin)],
        &[],
    ));
    out.push(case(
        "a genesis from the future",
        &space,
        all(&[
            &space.signs(
                &space,
                &alice.did(),
                Assertion::SpaceGenesis { space: space.did() },
                NOW + DAY,
                None,
            ),
            &bob_admin,
        ]),
        &[],
        &[],
    ));
    let too_large = |to: &Key, issued: u64, expires: Option<u64>| {
        past_max_time(&alice, to, member(&space, Editor), issued, expires)
    };
    out.push(case(
        "times up to 2^53 - 1",
        &space,
        vec![
            stored(&g),
            stored(&editor_at(&bob, ISSUED, Some(MAX_TIME))),
            too_large(&carol, ISSUED, Some(MAX_TIME + 1)),
            too_large(&dave, ISSUED, Some(u64::MAX)),
            too_large(&erin, MAX_TIME + 1, None),
            too_large(&frank, ISSUED, Some((1 << 60) + 1)),
        ],
        &[(&alice, Admin), (&bob, Editor)],
        &[],
    ));

    // Proofs.
    let (mixed, mixed_sign) = mixed_order_key(0x24);
    let by_mixed = Credential::issue(
        &alice.did(),
        &dave.did(),
        member(&space, Editor),
        ISSUED,
        None,
        &mixed,
        mixed_sign,
    )
    .expect("a credential issues");
    // Alice's own authorization of the mixed-order key holds; what that key signs does not.
    let mixed_device = alice.signs(
        &alice,
        &mixed,
        Assertion::AuthorizedDevice {
            identity: alice.did(),
            device: mixed.clone(),
        },
        ISSUED,
        None,
    );
    let web_signer = Credential::issue(
        &alice.did(),
        &frank.did(),
        member(&space, Editor),
        ISSUED,
        None,
        "did:web:example.com",
        |b| alice.0.sign(b).to_bytes(),
    )
    .expect("a credential issues");
    let bob_editor = alice.grants(&bob, &space, Editor);
    let mut bad_proofs = case(
        "bad proofs",
        &space,
        vec![
            stored(&g),
            forged(&bob_editor),
            edited(&alice.grants(&carol, &space, Reader), |v| {
                v["assertion"]["role"] = json!("admin");
            }),
            edited(&alice.grants(&erin, &space, Reader), |v| {
                let s = v["proof"]["signature"]
                    .as_str()
                    .expect("a signature")
                    .to_owned();
                v["proof"]["signature"] = json!(format!("{s}="));
            }),
            stored(&web_signer),
            stored(&mixed_device),
            stored(&by_mixed),
        ],
        &[(&alice, Admin)],
        &[],
    );
    if let Some(expect) = &mut bad_proofs.expect {
        expect.devices.insert(mixed, alice.did());
    }
    out.push(bad_proofs);
    out.push(case(
        "a signature with changed padding bits",
        &space,
        vec![
            stored(&g),
            edited(&bob_editor, |v| {
                let s = v["proof"]["signature"].as_str().expect("a signature");
                let (head, last) = s.split_at(s.len() - 1);
                const ALPHABET: &str =
                    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
                let i = ALPHABET.find(last).expect("base64url");
                // 64 bytes end in 4 bits of data and 2 of padding, which must be zero.
                let odd = &ALPHABET[i ^ 1..(i ^ 1) + 1];
                v["proof"]["signature"] = json!(format!("{head}{odd}"));
            }),
        ],
        &[(&alice, Admin)],
        &[],
    ));
    out.push(case(
        "a forged copy under a good id changes nothing",
        &space,
        vec![
            stored(&g),
            stored(&bob_admin),
            forged(&bob_admin),
            forged(&g),
            forged(&cut_bob),
            stored(&carol_by_bob),
        ],
        &[(&alice, Admin), (&bob, Admin), (&carol, Editor)],
        &[],
    ));
    out.push(case(
        "fields halo does not know",
        &space,
        vec![
            stored(&g),
            edited(&alice.grants(&bob, &space, Editor), |v| {
                v["note"] = json!("hi");
            }),
            edited(&alice.grants(&carol, &space, Editor), |v| {
                v["proof"]["alg"] = json!("EdDSA");
            }),
            edited(&alice.grants(&dave, &space, Editor), |v| {
                v["assertion"]["note"] = json!("hi");
            }),
            edited(&alice.grants(&erin, &space, Editor), |v| {
                v["issued"] = json!(ISSUED.to_string());
            }),
            edited(&alice.grants(&frank, &space, Editor), |v| {
                v["assertion"]["role"] = json!("owner");
            }),
        ],
        &[(&alice, Admin)],
        &[],
    ));
    out.push(case(
        "expires null is no expiry",
        &space,
        vec![
            stored(&g),
            edited(&alice.grants(&bob, &space, Editor), |v| {
                v["expires"] = Value::Null;
            }),
        ],
        &[(&alice, Admin), (&bob, Editor)],
        &[],
    ));

    // Devices.
    let laptop_ok = alice.authorizes(&laptop);
    let phone_ok = alice.authorizes(&phone);
    let bob_by_laptop = laptop.signs(&alice, &bob.did(), member(&space, Editor), ISSUED, None);
    out.push(case(
        "a device signs for its identity only",
        &space,
        all(&[
            &g,
            &carol_admin,
            &laptop_ok,
            &bob_by_laptop,
            &laptop.signs(&carol, &dave.did(), member(&space, Admin), ISSUED, None),
        ]),
        &[(&alice, Admin), (&bob, Editor), (&carol, Admin)],
        &[(&laptop, &alice)],
    ));
    out.push(case(
        "a device cannot authorize a device",
        &space,
        all(&[
            &g,
            &laptop_ok,
            &laptop.signs(
                &alice,
                &phone.did(),
                Assertion::AuthorizedDevice {
                    identity: alice.did(),
                    device: phone.did(),
                },
                ISSUED,
                None,
            ),
            &phone.signs(&alice, &dave.did(), member(&space, Reader), ISSUED, None),
        ]),
        &[(&alice, Admin)],
        &[(&laptop, &alice)],
    ));
    out.push(case(
        "authorizations not in the identity's own name bind nothing",
        &space,
        all(&[
            &g,
            &alice.says(
                &laptop,
                Assertion::AuthorizedDevice {
                    identity: bob.did(),
                    device: laptop.did(),
                },
            ),
            &alice.says(
                &phone,
                Assertion::AuthorizedDevice {
                    identity: alice.did(),
                    device: tablet.did(),
                },
            ),
            &laptop.signs(&bob, &dave.did(), member(&space, Reader), ISSUED, None),
            &tablet.signs(&alice, &erin.did(), member(&space, Reader), ISSUED, None),
        ]),
        &[(&alice, Admin)],
        &[],
    ));
    let carol_reader = alice.grants(&carol, &space, Reader);
    let revoked_device = vec![
        g.clone(),
        laptop_ok.clone(),
        phone_ok.clone(),
        carol_reader.clone(),
        bob_by_laptop.clone(),
        laptop.revokes_for(&alice, &carol_reader),
        laptop.revokes_for(&alice, &phone_ok),
        phone.signs(&alice, &dave.did(), member(&space, Reader), ISSUED, None),
        alice.revokes(&laptop_ok),
    ];
    out.push(case(
        "a revoked device signs nothing",
        &space,
        revoked_device.iter().map(stored).collect(),
        &[(&alice, Admin), (&carol, Reader), (&dave, Reader)],
        &[(&phone, &alice)],
    ));
    out.push(case(
        "a device revokes in its identity's name",
        &space,
        all(&[
            &g,
            &phone_ok,
            &dave_reader,
            &phone.revokes_for(&alice, &dave_reader),
            &phone.revokes_for(&alice, &phone_ok),
        ]),
        &[(&alice, Admin)],
        &[(&phone, &alice)],
    ));
    let mallory_claim = mallory.authorizes(&laptop);
    let claimed = |extra: &[&Credential]| {
        let mut v = all(&[
            &g,
            &alice.grants(&mallory, &space, Editor),
            &laptop_ok,
            &bob_by_laptop,
        ]);
        v.extend(extra.iter().map(|c| stored(c)));
        v
    };
    out.push(case(
        "a device key claimed by two members acts for neither",
        &space,
        claimed(&[&mallory_claim]),
        &[(&alice, Admin), (&bob, Editor), (&mallory, Editor)],
        &[],
    ));
    out.push(case(
        "a claim by a key that is no member contests nothing",
        &space,
        claimed(&[&stranger.authorizes(&laptop)]),
        &[(&alice, Admin), (&bob, Editor), (&mallory, Editor)],
        &[(&laptop, &alice)],
    ));
    out.push(case(
        "a withdrawn claim",
        &space,
        claimed(&[&mallory_claim, &mallory.revokes(&mallory_claim)]),
        &[(&alice, Admin), (&bob, Editor), (&mallory, Editor)],
        &[(&laptop, &alice)],
    ));
    out.push(case(
        "an admin revokes a member's claim",
        &space,
        claimed(&[&mallory_claim, &alice.revokes(&mallory_claim)]),
        &[(&alice, Admin), (&bob, Editor), (&mallory, Editor)],
        &[(&laptop, &alice)],
    ));
    let bob_editor_grant = alice.grants(&bob, &space, Editor);
    out.push(case(
        "a member who leaves keeps no device",
        &space,
        all(&[
            &g,
            &bob_editor_grant,
            &bob.authorizes(&tablet),
            &alice.revokes(&bob_editor_grant),
        ]),
        &[(&alice, Admin)],
        &[],
    ));
    let bob_laptop = bob.authorizes(&laptop);
    let carol_by_bobs_laptop =
        laptop.signs(&bob, &carol.did(), member(&space, Editor), ISSUED, None);
    out.push(case(
        "an admin at the same depth cannot cut another's device",
        &space,
        all(&[
            &g,
            &bob_admin,
            &carol_admin,
            &bob_laptop,
            &carol.revokes(&bob_laptop),
            &laptop.signs(&bob, &dave.did(), member(&space, Editor), ISSUED, None),
        ]),
        &[
            (&alice, Admin),
            (&bob, Admin),
            (&carol, Admin),
            (&dave, Editor),
        ],
        &[(&laptop, &bob)],
    ));
    out.push(case(
        "a closer admin cuts a farther admin's device",
        &space,
        all(&[
            &g,
            &bob_admin,
            &bob_laptop,
            &carol_by_bobs_laptop,
            &alice.revokes(&bob_laptop),
        ]),
        &[(&alice, Admin), (&bob, Admin)],
        &[],
    ));
    let space_cuts_bob = space.revokes(&bob_admin);
    let alice_by_laptop = laptop.signs(&alice, &carol.did(), member(&space, Editor), ISSUED, None);
    out.push(case(
        "the space key always wins",
        &space,
        all(&[
            &g,
            &laptop_ok,
            &bob_admin,
            &alice_by_laptop,
            &space.revokes(&laptop_ok),
            &space_cuts_bob,
            &bob.revokes(&g),
            &alice.revokes(&space_cuts_bob),
        ]),
        &[(&alice, Admin)],
        &[],
    ));
    let space_device = space.authorizes(&tablet);
    out.push(case(
        "a device of the space key",
        &space,
        all(&[
            &space_device,
            &tablet.signs(
                &space,
                &alice.did(),
                Assertion::SpaceGenesis { space: space.did() },
                ISSUED,
                None,
            ),
            &alice.revokes(&space_device),
            &bob_admin,
        ]),
        &[(&alice, Admin), (&bob, Admin)],
        &[],
    ));

    // The same set in other orders.
    let mixed_set = vec![
        g.clone(),
        bob_admin.clone(),
        erin_admin.clone(),
        alice.revokes(&erin_admin),
        erin.revokes(&bob_admin),
        carol_editor.clone(),
        bob.revokes(&carol_editor),
        laptop_ok.clone(),
        phone_ok.clone(),
        bob_by_laptop.clone(),
        laptop.revokes_for(&alice, &phone_ok),
        alice.revokes(&laptop_ok),
        phone.signs(&alice, &dave.did(), member(&space, Reader), ISSUED, None),
        mallory.authorizes(&phone),
        alice.grants(&mallory, &space, Reader),
    ];
    let expect_roles = [
        (&alice, Admin),
        (&bob, Admin),
        (&dave, Reader),
        (&mallory, Reader),
    ];
    let mut reversed = mixed_set.clone();
    reversed.reverse();
    let mut by_id = mixed_set.clone();
    by_id.sort_by(|a, b| a.id.cmp(&b.id));
    for (name, order) in [
        ("order independence: as issued", &mixed_set),
        ("order independence: reversed", &reversed),
        ("order independence: by id", &by_id),
    ] {
        out.push(case(
            name,
            &space,
            order.iter().map(stored).collect(),
            &expect_roles,
            &[],
        ));
    }
    out.extend(random_cases(&space));
    out
}

/// A small deterministic generator (xorshift64*), so that the random cases are the same on
/// every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// Spaces of random credentials among a few keys, so that claims, chains, devices, times and
/// revocations collide in ways no case above foresees (as `space::tests::random_space`):
/// issued mostly by identities already granted something, so that chains grow deep.
fn random_cases(space: &Key) -> Vec<Case> {
    let ids: Vec<Key> = (2..=6).map(Key::new).collect();
    let devices: Vec<Key> = (0x21..=0x23).map(Key::new).collect();
    let roles = [Role::Reader, Role::Replicator, Role::Editor, Role::Admin];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    (1..=24)
        .map(|n| {
            let mut creds = vec![genesis(space, &ids[0])];
            let mut values = vec![stored(&creds[0])];
            let mut granted = vec![0];
            for _ in 0..8 + rng.below(12) {
                let issuer = match rng.below(12) {
                    0 => space,
                    1..=3 => &ids[rng.below(ids.len())],
                    _ => &ids[granted[rng.below(granted.len())]],
                };
                let signer = match rng.below(3) {
                    0 => &devices[rng.below(devices.len())],
                    _ => issuer,
                };
                let (issued, expires) = match rng.below(12) {
                    0 => (NOW + SKEW_SECS + 1, None),
                    1 => (ISSUED, Some(NOW - SKEW_SECS - 1)),
                    2 => (ISSUED, Some(NOW + DAY)),
                    _ => (ISSUED, None),
                };
                let c = match rng.below(10) {
                    0..=3 => {
                        let subject = rng.below(ids.len());
                        granted.push(subject);
                        let role = roles[rng.below(roles.len())];
                        let a = member(space, role);
                        signer.signs(issuer, &ids[subject].did(), a, issued, expires)
                    }
                    4 | 5 => {
                        let device = devices[rng.below(devices.len())].did();
                        let a = Assertion::AuthorizedDevice {
                            identity: issuer.did(),
                            device: device.clone(),
                        };
                        signer.signs(issuer, &device, a, issued, expires)
                    }
                    6..=8 => {
                        let earlier = &creds[rng.below(creds.len())];
                        let a = revocation(&earlier.id);
                        signer.signs(issuer, &earlier.subject.clone(), a, issued, expires)
                    }
                    _ => {
                        values.push(forged(&creds[rng.below(creds.len())]));
                        continue;
                    }
                };
                values.push(stored(&c));
                creds.push(c);
            }
            Case {
                name: format!("random space {n}"),
                space: space.did(),
                credentials: values,
                expect: None,
            }
        })
        .collect()
}
