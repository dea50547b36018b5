//! Answers to ACME challenges while an order is open: HTTP-01 key authorizations by token
//! (served on the HTTP listener) and TLS-ALPN-01 certificates by name (served by the HTTPS
//! resolver to a client offering `acme-tls/1`, RFC 8737).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::sign::CertifiedKey;

use super::TlsError;

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

#[derive(Debug, Default)]
pub struct Challenges {
    http01: RwLock<HashMap<String, String>>,
    alpn: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl Challenges {
    pub fn http01(&self, token: &str) -> Option<String> {
        self.http01
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    }

    pub fn set_http01(&self, token: &str, key_authorization: &str) {
        self.http01
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.to_owned(), key_authorization.to_owned());
    }

    pub fn remove_http01(&self, token: &str) {
        self.http01
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }

    /// The TLS-ALPN-01 certificate for `name`, if a challenge for it is open.
    pub fn alpn(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.alpn
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&name.to_ascii_lowercase())
            .cloned()
    }

    /// Makes the self-signed certificate RFC 8737 §3 asks for: `name` as its only SAN and
    /// the critical acmeIdentifier extension holding SHA-256 of the key authorization.
    pub fn set_alpn(&self, name: &str, key_authorization_digest: &[u8]) -> Result<(), TlsError> {
        let key = KeyPair::generate().map_err(TlsError::generate)?;
        let mut params =
            CertificateParams::new(vec![name.to_owned()]).map_err(TlsError::generate)?;
        params.custom_extensions = vec![CustomExtension::new_acme_identifier(
            key_authorization_digest,
        )];
        let cert = params.self_signed(&key).map_err(TlsError::generate)?;
        let ck = super::certified_key_unchecked(&cert.pem(), &key.serialize_pem())?;
        self.alpn
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_ascii_lowercase(), ck);
        Ok(())
    }

    pub fn remove_alpn(&self, name: &str) {
        self.alpn
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name.to_ascii_lowercase());
    }
}
