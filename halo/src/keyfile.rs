//! Key files (pure: text in, text out): an Ed25519 private key as PKCS#8 PEM
//! (`-----BEGIN PRIVATE KEY-----`), the form `openssl genpkey -algorithm ed25519` writes.

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, EncodePrivateKey, KeypairBytes, spki::der::pem::LineEnding,
};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    #[error("not an Ed25519 private key in PKCS#8 PEM (-----BEGIN PRIVATE KEY-----): {0}")]
    Parse(String),
    #[error("cannot encode the key: {0}")]
    Encode(String),
}

/// The key as PKCS#8 v1 PEM (RFC 8410 §7, as OpenSSL writes it: no public key inside).
pub fn to_pem(key: &SigningKey) -> Result<String, KeyFileError> {
    let pair = KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    pair.to_pkcs8_pem(LineEnding::LF)
        .map(|pem| pem.to_string())
        .map_err(|e| KeyFileError::Encode(e.to_string()))
}

pub fn from_pem(text: &str) -> Result<SigningKey, KeyFileError> {
    SigningKey::from_pkcs8_pem(text.trim()).map_err(|e| KeyFileError::Parse(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8410 §10.3: the example private key and its public key.
    #[test]
    fn rfc8410_example() {
        let pem = "-----BEGIN PRIVATE KEY-----\n\
                   MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
                   -----END PRIVATE KEY-----\n";
        let key = from_pem(pem).unwrap();
        assert_eq!(
            hex::encode(key.to_bytes()),
            "d4ee72dbf913584ad5b6d8f1f769f8ad3afe7c28cbf1d4fbe097a88f44755842"
        );
        assert_eq!(
            hex::encode(key.verifying_key().as_bytes()),
            "19bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1"
        );
        assert_eq!(to_pem(&key).unwrap(), pem);
    }

    #[test]
    fn refuses_other_things() {
        assert!(from_pem("").is_err());
        assert!(
            from_pem("-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n").is_err()
        );
    }
}
