//! HALO's costs: one credential's proof check, and validating spaces of 1,000 and 10,000
//! members (one genesis, ten admins, the rest members issued by them, a hundred revoked).
//! Run with `cargo bench -p halo`; results in BENCHMARKS.md.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::{Signer, SigningKey};
use halo::credential::{Assertion, Credential, Role};
use halo::space::{Clock, validate};

fn key(i: u32) -> SigningKey {
    let mut seed = [0u8; 32];
    seed[..4].copy_from_slice(&i.to_le_bytes());
    seed[31] = 0x5a;
    SigningKey::from_bytes(&seed)
}

fn issue(by: &SigningKey, subject: &str, assertion: Assertion) -> Credential {
    let did = halo::did(by);
    Credential::issue(&did, subject, assertion, 100, None, &did, |b| {
        by.sign(b).to_bytes()
    })
    .expect("canonical encoding")
}

/// A space of `members` members: genesis, 10 admins, members spread over them, 1% revoked.
fn space(members: u32) -> (String, Vec<Credential>) {
    let space = key(u32::MAX);
    let space_did = halo::did(&space);
    let root = key(u32::MAX - 1);
    let mut creds = vec![issue(
        &space,
        &halo::did(&root),
        Assertion::SpaceGenesis {
            space: space_did.clone(),
        },
    )];
    let admins: Vec<SigningKey> = (0..10).map(|i| key(1_000_000 + i)).collect();
    for a in &admins {
        creds.push(issue(
            &root,
            &halo::did(a),
            Assertion::SpaceMember {
                space: space_did.clone(),
                role: Role::Admin,
            },
        ));
    }
    for i in 0..members {
        let admin = &admins[(i % 10) as usize];
        let c = issue(
            admin,
            &halo::did(&key(i)),
            Assertion::SpaceMember {
                space: space_did.clone(),
                role: if i % 3 == 0 {
                    Role::Reader
                } else {
                    Role::Editor
                },
            },
        );
        if i % 100 == 0 {
            let revoke = issue(
                admin,
                &halo::did(&key(i)),
                Assertion::Revocation {
                    credential: c.id.clone(),
                },
            );
            creds.push(revoke);
        }
        creds.push(c);
    }
    (space_did, creds)
}

fn bench(c: &mut Criterion) {
    let (_, creds) = space(1);
    let one = creds.last().expect("a member").clone();
    let mut g = c.benchmark_group("credential");
    g.throughput(Throughput::Elements(1));
    g.bench_function("verify", |b| b.iter(|| one.verify_proof().expect("valid")));
    // The floor: the Ed25519 check alone on the same bytes, no encoding, hashing or parsing.
    let bytes = one.signed_bytes().expect("canonical encoding");
    let signer = halo::PublicKey::from_did(&one.proof.signer).expect("did:key");
    let sig = key(1_000_000).sign(&bytes).to_bytes();
    g.bench_function("ed25519_only", |b| {
        b.iter(|| signer.verify(&bytes, &sig).expect("valid"))
    });
    g.finish();

    let clock = Clock {
        now: 1_000,
        skew: 60,
    };
    let mut g = c.benchmark_group("space");
    g.sample_size(10);
    for members in [1_000u32, 10_000] {
        let (space_did, creds) = space(members);
        let check = validate(&space_did, &creds, clock);
        assert_eq!(
            check.roles.len() as u32,
            1 + 10 + members - members.div_ceil(100)
        );
        g.throughput(Throughput::Elements(creds.len() as u64));
        g.bench_with_input(BenchmarkId::new("validate", members), &creds, |b, creds| {
            b.iter(|| validate(&space_did, creds, clock))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
