//! The HALO proof a peer gives before its first ECHO message (PROTOCOL.md §1): a token in the
//! upgrade URL, signed by the peer's key, naming this KUBE, the automerge-repo peer id, a
//! time and a nonce. Pure: the caller passes the clock.

use std::collections::{HashMap, VecDeque};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

/// The largest token KUBE reads (base64url); real ones are about 400 bytes.
pub const MAX_TOKEN: usize = 2048;
/// Nonces remembered at most. A nonce is forgotten only once its token is stale; when this
/// many fresh ones are held, new tokens are refused ([`AuthError::Busy`]) rather than an
/// unexpired nonce forgotten (which would let its token be replayed).
pub const MAX_NONCES: usize = 100_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Token {
    did: String,
    peer: String,
    aud: String,
    ts: u64,
    nonce: String,
    sig: String,
}

/// An authenticated peer: its key and the automerge-repo peer id it must join with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub did: String,
    pub peer: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no auth token (connect with ?auth=…; see PROTOCOL.md)")]
    Missing,
    #[error("the auth token is malformed: {0}")]
    Malformed(String),
    #[error("the auth token was made for another KUBE")]
    WrongAudience,
    #[error("the auth token's time is outside the allowed window")]
    Stale,
    #[error("the auth token was already used")]
    Replayed,
    #[error("the auth token's signature does not verify")]
    BadSignature,
    #[error("too many connections were opened in the last minutes; try again shortly")]
    Busy,
}

/// The bytes a token's signature covers.
pub fn signing_string(aud: &str, peer: &str, did: &str, ts: u64, nonce: &str) -> String {
    format!("kube-echo-v1\n{aud}\n{peer}\n{did}\n{ts}\n{nonce}")
}

/// Makes a token (for tests and Rust clients).
pub fn token(key: &halo::SigningKey, aud: &str, peer: &str, ts: u64, nonce: &str) -> String {
    use ed25519_dalek::Signer;
    let did = halo::did(key);
    let sig = key.sign(signing_string(aud, peer, &did, ts, nonce).as_bytes());
    let json = serde_json::json!({
        "did": did, "peer": peer, "aud": aud, "ts": ts, "nonce": nonce,
        "sig": URL_SAFE_NO_PAD.encode(sig.to_bytes()),
    });
    URL_SAFE_NO_PAD.encode(json.to_string())
}

/// Checks tokens for one KUBE and remembers the nonces it accepted.
pub struct Verifier {
    kube: String,
    window: u64,
    seen: HashMap<String, u64>,
    order: VecDeque<(u64, String)>,
    capacity: usize,
}

impl Verifier {
    pub fn new(kube: String, window_secs: u64) -> Verifier {
        Verifier::with_capacity(kube, window_secs, MAX_NONCES)
    }

    /// A verifier that holds at most `capacity` nonces.
    pub fn with_capacity(kube: String, window_secs: u64, capacity: usize) -> Verifier {
        Verifier {
            kube,
            window: window_secs,
            seen: HashMap::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    pub fn set_window(&mut self, window_secs: u64) {
        self.window = window_secs;
    }

    /// Verifies `token` (the `auth` query value) at `now` (Unix seconds).
    pub fn verify(&mut self, token: Option<&str>, now: u64) -> Result<Peer, AuthError> {
        let token = token.ok_or(AuthError::Missing)?;
        if token.len() > MAX_TOKEN {
            return Err(AuthError::Malformed("too long".into()));
        }
        let json = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|e| AuthError::Malformed(format!("not base64url: {e}")))?;
        let t: Token = serde_json::from_slice(&json)
            .map_err(|e| AuthError::Malformed(format!("not the token JSON: {e}")))?;
        if t.peer.is_empty() || t.peer.len() > 128 || t.peer.contains('\n') {
            return Err(AuthError::Malformed("bad peer id".into()));
        }
        if !(16..=64).contains(&t.nonce.len()) || !t.nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AuthError::Malformed(
                "the nonce must be 16–64 hex digits".into(),
            ));
        }
        if t.aud != self.kube {
            return Err(AuthError::WrongAudience);
        }
        if t.ts.abs_diff(now) > self.window {
            return Err(AuthError::Stale);
        }
        let key = halo::PublicKey::from_did(&t.did)
            .map_err(|e| AuthError::Malformed(format!("did: {e}")))?;
        let sig = URL_SAFE_NO_PAD
            .decode(&t.sig)
            .map_err(|_| AuthError::BadSignature)?;
        key.verify(
            signing_string(&t.aud, &t.peer, &t.did, t.ts, &t.nonce).as_bytes(),
            &sig,
        )
        .map_err(|_| AuthError::BadSignature)?;
        self.forget(now);
        let nonce = format!("{}/{}", t.did, t.nonce);
        if self.seen.contains_key(&nonce) {
            return Err(AuthError::Replayed);
        }
        if self.seen.len() >= self.capacity {
            return Err(AuthError::Busy);
        }
        self.seen.insert(nonce.clone(), now);
        self.order.push_back((now, nonce));
        Ok(Peer {
            did: t.did,
            peer: t.peer,
        })
    }

    /// Forgets nonces whose tokens are stale anyway (two windows: a token may be dated up
    /// to one window ahead of the clock).
    fn forget(&mut self, now: u64) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_sub(*at) <= 2 * self.window {
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

    fn key(seed: u8) -> halo::SigningKey {
        halo::SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn accepts_a_fresh_token_once() {
        let kube = halo::did(&key(9));
        let mut v = Verifier::new(kube.clone(), 60);
        let tok = token(
            &key(1),
            &kube,
            "peer-a",
            1000,
            "00112233445566778899aabbccddeeff",
        );
        let p = v.verify(Some(&tok), 1010).unwrap();
        assert_eq!(p.did, halo::did(&key(1)));
        assert_eq!(p.peer, "peer-a");
        assert_eq!(v.verify(Some(&tok), 1011), Err(AuthError::Replayed));
    }

    /// Issue 14 (7): a full nonce table refuses new tokens; it never forgets a nonce whose
    /// token could still be accepted.
    #[test]
    fn a_full_nonce_table_refuses_instead_of_forgetting() {
        let kube = halo::did(&key(9));
        let mut v = Verifier::with_capacity(kube.clone(), 60, 3);
        let toks: Vec<String> = (0..4)
            .map(|i| token(&key(1), &kube, "p", 1000, &format!("{i:032x}")))
            .collect();
        for t in &toks[..3] {
            v.verify(Some(t), 1000).unwrap();
        }
        assert_eq!(v.verify(Some(&toks[3]), 1001), Err(AuthError::Busy));
        assert_eq!(v.verify(Some(&toks[0]), 1001), Err(AuthError::Replayed));
        // Once the first ones are stale, their nonces go and new tokens are taken again.
        let later = token(&key(1), &kube, "p", 1200, &format!("{:032x}", 9));
        assert!(v.verify(Some(&later), 1200).is_ok());
        assert_eq!(v.verify(Some(&toks[0]), 1200), Err(AuthError::Stale));
    }

    #[test]
    fn refuses_bad_tokens() {
        let kube = halo::did(&key(9));
        let mut v = Verifier::new(kube.clone(), 60);
        let nonce = "00112233445566778899aabbccddeeff";
        assert_eq!(v.verify(None, 0), Err(AuthError::Missing));
        let other = token(&key(1), &halo::did(&key(8)), "p", 1000, nonce);
        assert_eq!(v.verify(Some(&other), 1000), Err(AuthError::WrongAudience));
        let old = token(&key(1), &kube, "p", 1000, nonce);
        assert_eq!(v.verify(Some(&old), 1061), Err(AuthError::Stale));
        assert!(matches!(
            v.verify(Some("!!"), 1000),
            Err(AuthError::Malformed(_))
        ));
        // A token whose fields were changed after signing.
        let json = String::from_utf8(URL_SAFE_NO_PAD.decode(&old).unwrap()).unwrap();
        let forged = URL_SAFE_NO_PAD.encode(json.replace("\"p\"", "\"q\""));
        assert_eq!(v.verify(Some(&forged), 1000), Err(AuthError::BadSignature));
    }
}
