//! HALO identities (pure, no I/O): Ed25519 public keys written as `did:key` (multibase
//! base58btc of the multicodec `ed25519-pub` key, per the did:key method spec) and the one
//! signature check every service uses; credentials, spaces, invitations, admission and
//! operator-signed requests on top.

pub mod admission;
pub mod credential;
pub mod invitation;
pub mod keyfile;
pub mod request;
pub mod space;

use ed25519_dalek::{Signature, VerifyingKey};

pub use ed25519_dalek::SigningKey;

/// The did:key of a private key's public half.
pub fn did(key: &SigningKey) -> String {
    PublicKey(key.verifying_key()).to_did()
}

/// The multicodec prefix of an Ed25519 public key (varint of 0xed).
const ED25519_PUB: [u8; 2] = [0xed, 0x01];
const PREFIX: &str = "did:key:z";

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not a did:key (expected did:key:z…)")]
    NotDidKey,
    #[error("did:key is not valid base58btc")]
    Base58,
    #[error("did:key names a key of another type (multicodec {0:#04x}); only Ed25519 is supported")]
    KeyType(u8),
    #[error("did:key holds {0} key bytes; Ed25519 keys have 32")]
    Length(usize),
    #[error("not a valid Ed25519 public key")]
    Point,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("a signature has 64 bytes, not {0}")]
    SignatureLength(usize),
}

/// A HALO identity: an Ed25519 public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<PublicKey, KeyError> {
        VerifyingKey::from_bytes(bytes)
            .map(PublicKey)
            .map_err(|_| KeyError::Point)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// Parses `did:key:z6Mk…`.
    pub fn from_did(did: &str) -> Result<PublicKey, KeyError> {
        let encoded = did.strip_prefix(PREFIX).ok_or(KeyError::NotDidKey)?;
        let raw = bs58::decode(encoded)
            .with_alphabet(bs58::Alphabet::BITCOIN)
            .into_vec()
            .map_err(|_| KeyError::Base58)?;
        match raw.as_slice() {
            [0xed, 0x01, key @ ..] => {
                let key: &[u8; 32] = key.try_into().map_err(|_| KeyError::Length(key.len()))?;
                PublicKey::from_bytes(key)
            }
            [first, ..] => Err(KeyError::KeyType(*first)),
            [] => Err(KeyError::Length(0)),
        }
    }

    /// `did:key:z…` for this key.
    pub fn to_did(&self) -> String {
        let mut raw = Vec::with_capacity(34);
        raw.extend_from_slice(&ED25519_PUB);
        raw.extend_from_slice(self.0.as_bytes());
        format!(
            "{PREFIX}{}",
            bs58::encode(raw)
                .with_alphabet(bs58::Alphabet::BITCOIN)
                .into_string()
        )
    }

    /// Checks `signature` over `message` (strict Ed25519 verification, RFC 8032).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), KeyError> {
        let sig: &[u8; 64] = signature
            .try_into()
            .map_err(|_| KeyError::SignatureLength(signature.len()))?;
        self.0
            .verify_strict(message, &Signature::from_bytes(sig))
            .map_err(|_| KeyError::BadSignature)
    }
}

/// Ordered by key bytes, so sets of peers list in a stable order.
impl Ord for PublicKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl PartialOrd for PublicKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.to_did())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    /// Published did:key documents pair each DID with its key in base58 (`publicKeyBase58`).
    #[test]
    fn published_did_key_vectors() {
        for (did, key58) in [
            (
                "did:key:z6MkmjY8GnV5i9YTDtPETC2uUAW6ejw3nk5mXF5yci5ab7th",
                "8HH5gYEeNc3z7PYXmd54d4x6qAfCNrqQqEB3nS7Zfu7K",
            ),
            (
                "did:key:z6Mkgg342Ycpuk263R9d8Aq6MUaxPn1DDeHyGo38EefXmgDL",
                "3Dn1SJNPaCXcvvJvSbsFWP2xaCjMom3can8CQNhWrTRx",
            ),
        ] {
            let raw: [u8; 32] = bs58::decode(key58).into_vec().unwrap().try_into().unwrap();
            let pk = PublicKey::from_bytes(&raw).unwrap();
            assert_eq!(pk.to_did(), did);
            assert_eq!(PublicKey::from_did(did).unwrap().as_bytes(), &raw);
        }
    }

    #[test]
    fn did_key_round_trip_and_errors() {
        let sk = SigningKey::from_bytes(&[7u8; 32]);
        let pk = PublicKey::from_bytes(sk.verifying_key().as_bytes()).unwrap();
        let did = pk.to_did();
        assert!(
            did.starts_with("did:key:z6Mk"),
            "Ed25519 did:keys start z6Mk: {did}"
        );
        assert_eq!(PublicKey::from_did(&did).unwrap(), pk);
        assert_eq!(
            PublicKey::from_did("did:web:example.com"),
            Err(KeyError::NotDidKey)
        );
        assert_eq!(PublicKey::from_did("did:key:z0OIl"), Err(KeyError::Base58));
        // A secp256k1 did:key (multicodec 0xe7).
        assert!(matches!(
            PublicKey::from_did("did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme"),
            Err(KeyError::KeyType(0xe7))
        ));
        let sig = sk.sign(b"hello");
        assert!(pk.verify(b"hello", &sig.to_bytes()).is_ok());
        assert_eq!(
            pk.verify(b"hellO", &sig.to_bytes()),
            Err(KeyError::BadSignature)
        );
        assert_eq!(
            pk.verify(b"hello", &[0u8; 3]),
            Err(KeyError::SignatureLength(3))
        );
    }
}
