//! Byte-level mutations of valid messages, shared by every fuzz target (`bench/fuzz/run`):
//! each crate's fuzz file includes this one file with `#[path]`.
#![allow(dead_code)] // each including file uses its own part of it

use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

/// Cases from `PROPTEST_CASES` (proptest's default config reads it); a failure is shrunk
/// and printed, not written to a regressions file beside the source.
pub fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Arbitrary bytes (one case in five) or a template under up to eight mutations whose
/// overwrites favour `special`.
pub fn bytes_from(
    templates: Vec<Vec<u8>>,
    max_random: usize,
    special: &'static [u8],
) -> impl Strategy<Value = Vec<u8>> {
    let templates = Arc::new(templates);
    let n = templates.len();
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..max_random),
        4 => (0..n, proptest::collection::vec(mutation(special), 0..8))
            .prop_map(move |(i, ms)| mutate(templates[i].clone(), &ms)),
    ]
}

/// [`bytes_from`] as the text a server would see: a WebSocket text frame or header is
/// UTF-8, so invalid sequences are replaced.
pub fn text_from(
    templates: Vec<String>,
    max_random: usize,
    special: &'static [u8],
) -> impl Strategy<Value = String> {
    let templates = templates.into_iter().map(String::into_bytes).collect();
    bytes_from(templates, max_random, special)
        .prop_map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// One byte-level mutation; positions wrap around the message's length.
#[derive(Clone, Debug)]
pub enum Mutation {
    Flip(u16, u8),
    Set(u16, u8),
    Insert(u16, u8),
    Remove(u16),
    Truncate(u16),
    Repeat(u16, u8),
}

/// Mutations whose overwrites favour `special` bytes (a format's delimiters and edges).
pub fn mutation(special: &'static [u8]) -> impl Strategy<Value = Mutation> {
    let special = prop_oneof![
        1 => proptest::sample::select(special),
        1 => any::<u8>(),
    ];
    prop_oneof![
        3 => (any::<u16>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        3 => (any::<u16>(), special).prop_map(|(at, b)| Mutation::Set(at, b)),
        1 => (any::<u16>(), any::<u8>()).prop_map(|(at, b)| Mutation::Insert(at, b)),
        1 => any::<u16>().prop_map(Mutation::Remove),
        1 => any::<u16>().prop_map(Mutation::Truncate),
        1 => (any::<u16>(), 1u8..32).prop_map(|(at, n)| Mutation::Repeat(at, n)),
    ]
}

pub fn mutate(mut b: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        let len = b.len();
        let at = |i: u16, extra: usize| usize::from(i) % (len + extra).max(1);
        match *m {
            Mutation::Flip(i, bit) if len > 0 => b[at(i, 0)] ^= 1 << bit,
            Mutation::Set(i, v) if len > 0 => b[at(i, 0)] = v,
            Mutation::Insert(i, v) => b.insert(at(i, 1), v),
            Mutation::Remove(i) if len > 0 => {
                b.remove(at(i, 0));
            }
            Mutation::Truncate(i) => b.truncate(at(i, 1)),
            Mutation::Repeat(i, n) if len > 0 => {
                let from = at(i, 0);
                let to = (from + usize::from(n)).min(len);
                let chunk = b[from..to].to_vec();
                b.splice(to..to, chunk);
            }
            _ => {}
        }
    }
    b
}
