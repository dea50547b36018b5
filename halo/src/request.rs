//! Operator-signed admin requests (pure). A request carries
//!
//! ```text
//! Authorization: Kube-Ed25519 key=<did:key>, ts=<unix secs>, nonce=<hex>, body=<hex sha256>, sig=<base64url>
//! ```
//!
//! where `sig` is the Ed25519 signature of
//!
//! ```text
//! kube-admin-v1\n<server did:key>\n<METHOD>\n<path and query>\n<ts>\n<nonce>\n<body sha256>
//! ```
//!
//! The server accepts it when it is the KUBE named (a request for one KUBE is refused by
//! another), the key is an operator's, `ts` is within the window of its clock and not older
//! than the server's start, the signature verifies, the nonce was not seen (so a captured
//! request cannot be replayed), and the body it receives hashes to `body`.

use std::collections::{HashSet, VecDeque};

use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};

use crate::PublicKey;

pub const SCHEME: &str = "Kube-Ed25519";
const CONTEXT: &str = "kube-admin-v1";
/// Nonces remembered at most; past this, signed requests are refused until old ones age out.
pub const MAX_REMEMBERED: usize = 100_000;
/// The largest window a server may be configured with. Nonces are remembered for this
/// plus the window, so raising the window on a reload cannot revive a forgotten one.
pub const MAX_WINDOW_SECS: u64 = 3600;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("malformed {SCHEME} authorization: {0}")]
    Malformed(&'static str),
    #[error("{0} is not an operator of this KUBE")]
    NotOperator(String),
    #[error("the request's timestamp is {0} s {1} this server's clock (window {2} s)")]
    Stale(u64, &'static str, u64),
    #[error("the request was signed before this server started; sign it again")]
    BeforeStart,
    #[error("the request is signed for another KUBE ({0})")]
    OtherServer(String),
    #[error("the signature does not verify")]
    BadSignature,
    #[error("this request was seen before (replay)")]
    Replay,
    #[error("too many signed requests in the replay window; try again shortly")]
    Busy,
}

/// The parsed authorization header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    pub key: String,
    pub ts: u64,
    pub nonce: String,
    /// Lowercase hex SHA-256 of the body.
    pub body: String,
    pub sig: String,
}

/// What a request is about: the KUBE it is for, and the HTTP request line's parts.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// The server's identity (did:key).
    pub server: &'a str,
    pub method: &'a str,
    /// Path and query, exactly as sent on the request line.
    pub path: &'a str,
}

/// The bytes the operator signs.
pub fn signing_string(to: Target, ts: u64, nonce: &str, body_sha256: &str) -> String {
    format!(
        "{CONTEXT}\n{}\n{}\n{}\n{ts}\n{nonce}\n{body_sha256}",
        to.server, to.method, to.path
    )
}

pub fn body_hash(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// Signs a request; `nonce` should be fresh random bytes.
pub fn sign(key: &SigningKey, to: Target, body: &[u8], ts: u64, nonce: [u8; 16]) -> Signed {
    sign_hashed(key, to, &body_hash(body), ts, nonce)
}

/// As [`sign`], for a body known by its hash (a streamed upload).
pub fn sign_hashed(
    key: &SigningKey,
    to: Target,
    body_sha256: &str,
    ts: u64,
    nonce: [u8; 16],
) -> Signed {
    let nonce = hex::encode(nonce);
    let text = signing_string(to, ts, &nonce, body_sha256);
    Signed {
        key: crate::did(key),
        ts,
        nonce,
        body: body_sha256.to_owned(),
        sig: base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(key.sign(text.as_bytes()).to_bytes()),
    }
}

impl Signed {
    /// The `Authorization` header value.
    pub fn header(&self) -> String {
        format!(
            "{SCHEME} key={}, ts={}, nonce={}, body={}, sig={}",
            self.key, self.ts, self.nonce, self.body, self.sig
        )
    }

    /// Parses a header value; `None` when it is not this scheme at all.
    pub fn parse(value: &str) -> Option<Result<Signed, RequestError>> {
        let rest = value.strip_prefix(SCHEME)?.strip_prefix(' ')?;
        Some(Self::parse_params(rest))
    }

    fn parse_params(rest: &str) -> Result<Signed, RequestError> {
        let (mut key, mut ts, mut nonce, mut body, mut sig) = (None, None, None, None, None);
        for part in rest.split(',') {
            let (name, value) = part
                .trim()
                .split_once('=')
                .ok_or(RequestError::Malformed("a parameter without ="))?;
            let slot = match name {
                "key" => &mut key,
                "ts" => &mut ts,
                "nonce" => &mut nonce,
                "body" => &mut body,
                "sig" => &mut sig,
                _ => return Err(RequestError::Malformed("an unknown parameter")),
            };
            if slot.replace(value.to_owned()).is_some() {
                return Err(RequestError::Malformed("a repeated parameter"));
            }
        }
        let nonce = nonce.ok_or(RequestError::Malformed("no nonce"))?;
        if nonce.len() < 16 || nonce.len() > 64 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RequestError::Malformed("nonce must be 16 to 64 hex digits"));
        }
        let body = body.ok_or(RequestError::Malformed("no body hash"))?;
        if body.len() != 64 || !body.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(RequestError::Malformed(
                "body must be 64 lowercase hex digits",
            ));
        }
        Ok(Signed {
            key: key.ok_or(RequestError::Malformed("no key"))?,
            ts: ts
                .ok_or(RequestError::Malformed("no ts"))?
                .parse()
                .map_err(|_| RequestError::Malformed("ts is not a number"))?,
            nonce,
            body,
            sig: sig.ok_or(RequestError::Malformed("no sig"))?,
        })
    }
}

/// The server's side: who it is, who may sign, how far clocks may differ, the nonces seen.
pub struct Verifier {
    server: String,
    operators: Vec<PublicKey>,
    window: u64,
    /// Requests signed before this (the server's start) are refused: the nonces of an
    /// earlier run are not known.
    not_before: u64,
    seen: HashSet<String>,
    /// (time seen, nonce), oldest first, to forget nonces once their requests are stale.
    order: VecDeque<(u64, String)>,
}

impl Verifier {
    /// `window_secs` is capped at [`MAX_WINDOW_SECS`]; `started` is the server's start.
    pub fn new(
        server: String,
        operators: Vec<PublicKey>,
        window_secs: u64,
        started: u64,
    ) -> Verifier {
        Verifier {
            server,
            operators,
            window: window_secs.min(MAX_WINDOW_SECS),
            not_before: started,
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// New keys and window (a reload); the nonces seen stay remembered.
    pub fn set_operators(&mut self, operators: Vec<PublicKey>, window_secs: u64) {
        self.operators = operators;
        self.window = window_secs.min(MAX_WINDOW_SECS);
    }

    /// Checks everything but the body (whose hash the caller compares as the body arrives);
    /// returns the operator's key. A nonce is remembered only once the rest verified.
    pub fn verify(
        &mut self,
        signed: &Signed,
        method: &str,
        path: &str,
        now: u64,
    ) -> Result<PublicKey, RequestError> {
        let key = PublicKey::from_did(&signed.key)
            .map_err(|_| RequestError::Malformed("key is not an Ed25519 did:key"))?;
        if !self.operators.contains(&key) {
            return Err(RequestError::NotOperator(signed.key.clone()));
        }
        if signed.ts.abs_diff(now) > self.window {
            let side = if signed.ts < now {
                "behind"
            } else {
                "ahead of"
            };
            return Err(RequestError::Stale(
                signed.ts.abs_diff(now),
                side,
                self.window,
            ));
        }
        if signed.ts < self.not_before {
            return Err(RequestError::BeforeStart);
        }
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&signed.sig)
            .map_err(|_| RequestError::Malformed("sig is not base64url"))?;
        let to = Target {
            server: &self.server,
            method,
            path,
        };
        let text = signing_string(to, signed.ts, &signed.nonce, &signed.body);
        key.verify(text.as_bytes(), &sig)
            .map_err(|_| RequestError::BadSignature)?;
        // A request seen at t had ts ≥ t − window; once now − window > t + window ≥ … it is
        // stale. Remember for the largest window there can be, so a reload that widens the
        // window finds every nonce it could accept again.
        self.forget_before(now.saturating_sub(self.window + MAX_WINDOW_SECS));
        let nonce = format!("{}/{}", signed.key, signed.nonce);
        if self.seen.contains(&nonce) {
            return Err(RequestError::Replay);
        }
        if self.seen.len() >= MAX_REMEMBERED {
            return Err(RequestError::Busy);
        }
        self.seen.insert(nonce.clone());
        self.order.push_back((now, nonce));
        Ok(key)
    }

    fn forget_before(&mut self, cutoff: u64) {
        while let Some((t, _)) = self.order.front() {
            if *t >= cutoff {
                break;
            }
            if let Some((_, n)) = self.order.pop_front() {
                self.seen.remove(&n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX";

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn pk(k: &SigningKey) -> PublicKey {
        PublicKey::from_bytes(k.verifying_key().as_bytes()).unwrap()
    }

    fn to<'a>(method: &'a str, path: &'a str) -> Target<'a> {
        Target {
            server: SERVER,
            method,
            path,
        }
    }

    fn verifier(op: &SigningKey) -> Verifier {
        Verifier::new(SERVER.into(), vec![pk(op)], 60, 900)
    }

    #[test]
    fn signed_request_round_trip() {
        let op = key(1);
        let mut v = verifier(&op);
        let s = sign(&op, to("POST", "/api/x?y=1"), b"{}", 1000, [7; 16]);
        let parsed = Signed::parse(&s.header()).unwrap().unwrap();
        assert_eq!(parsed, s);
        assert_eq!(parsed.body, body_hash(b"{}"));
        assert_eq!(v.verify(&parsed, "POST", "/api/x?y=1", 1010), Ok(pk(&op)));
        // The same request again is a replay.
        assert_eq!(
            v.verify(&parsed, "POST", "/api/x?y=1", 1011),
            Err(RequestError::Replay)
        );
    }

    #[test]
    fn refusals() {
        let op = key(1);
        let stranger = key(2);
        let mut v = verifier(&op);
        let s = sign(&stranger, to("GET", "/api/status"), b"", 1000, [1; 16]);
        assert!(matches!(
            v.verify(&s, "GET", "/api/status", 1000),
            Err(RequestError::NotOperator(_))
        ));
        let s = sign(&op, to("GET", "/api/status"), b"", 1000, [2; 16]);
        assert_eq!(
            v.verify(&s, "GET", "/api/status", 1061),
            Err(RequestError::Stale(61, "behind", 60))
        );
        assert_eq!(
            v.verify(&s, "GET", "/api/status", 939),
            Err(RequestError::Stale(61, "ahead of", 60))
        );
        // Far-off timestamps do not overflow.
        let far = sign(&op, to("GET", "/api/status"), b"", u64::MAX, [3; 16]);
        assert!(matches!(
            v.verify(&far, "GET", "/api/status", 1000),
            Err(RequestError::Stale(..))
        ));
        // Signed before the server started.
        let early = sign(&op, to("GET", "/api/status"), b"", 899, [4; 16]);
        assert_eq!(
            v.verify(&early, "GET", "/api/status", 900),
            Err(RequestError::BeforeStart)
        );
        // Another method or path than signed.
        assert_eq!(
            v.verify(&s, "DELETE", "/api/status", 1000),
            Err(RequestError::BadSignature)
        );
        assert_eq!(
            v.verify(&s, "GET", "/api/apps", 1000),
            Err(RequestError::BadSignature)
        );
        // A body hash changed after signing.
        let mut t = s.clone();
        t.body = body_hash(b"other");
        assert_eq!(
            v.verify(&t, "GET", "/api/status", 1000),
            Err(RequestError::BadSignature)
        );
        // Signed for another KUBE.
        let other = Target {
            server: "did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH",
            method: "GET",
            path: "/api/status",
        };
        let elsewhere = sign(&op, other, b"", 1000, [5; 16]);
        assert_eq!(
            v.verify(&elsewhere, "GET", "/api/status", 1000),
            Err(RequestError::BadSignature)
        );
        // The failures did not burn the nonce: the genuine request still passes once.
        assert!(v.verify(&s, "GET", "/api/status", 1000).is_ok());
    }

    #[test]
    fn nonces_outlive_any_window() {
        let op = key(1);
        let mut v = verifier(&op);
        for i in 0..100u64 {
            let mut n = [0u8; 16];
            n[..8].copy_from_slice(&i.to_le_bytes());
            let s = sign(&op, to("GET", "/"), b"", 1000 + i, n);
            v.verify(&s, "GET", "/", 1000 + i).unwrap();
        }
        assert_eq!(v.seen.len(), 100);
        // Still remembered after two short windows: a reload may widen the window.
        let s = sign(&op, to("GET", "/"), b"", 1300, [9; 16]);
        v.verify(&s, "GET", "/", 1300).unwrap();
        assert_eq!(v.seen.len(), 101);
        let later = 1100 + 60 + MAX_WINDOW_SECS + 1;
        let s = sign(&op, to("GET", "/"), b"", later, [8; 16]);
        v.verify(&s, "GET", "/", later).unwrap();
        assert_eq!(
            v.seen.len(),
            2,
            "old nonces dropped once no window can accept them"
        );
    }

    #[test]
    fn malformed_headers() {
        assert!(Signed::parse("Bearer abc").is_none());
        for bad in [
            "Kube-Ed25519 key=a",
            "Kube-Ed25519 key=a, ts=x, nonce=00112233445566778899, body=00, sig=s",
            "Kube-Ed25519 key=a, key=b",
            "Kube-Ed25519 what",
            "Kube-Ed25519 key=a, ts=1, nonce=zz, body=00, sig=s",
        ] {
            assert!(
                matches!(Signed::parse(bad), Some(Err(RequestError::Malformed(_)))),
                "{bad}"
            );
        }
    }
}
