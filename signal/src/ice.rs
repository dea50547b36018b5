//! TURN REST credentials (the "shared secret" scheme coturn and most WebRTC services use):
//! `username = <unix expiry>:<peer>`, `password = base64(HMAC-SHA1(secret, username))`.
//! The one home of this scheme: signaling hands them out, the TURN server checks them.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// The password for `username` under `secret`.
pub fn password(secret: &[u8], username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Credentials for `peer`, valid until `expiry` (Unix seconds).
pub fn credentials(secret: &[u8], peer: &str, expiry: u64) -> (String, String) {
    let username = format!("{expiry}:{peer}");
    let password = password(secret, &username);
    (username, password)
}

/// The expiry a username carries, if it is in the scheme's form.
pub fn expiry(username: &str) -> Option<u64> {
    username.split(':').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coturn_compatible() {
        // `turnutils_uclient -W secret -u <expiry>:<user>` computes the same HMAC-SHA1.
        let (u, p) = credentials(b"secret", "alice", 1_700_000_000);
        assert_eq!(u, "1700000000:alice");
        assert_eq!(p, password(b"secret", "1700000000:alice"));
        assert_eq!(p.len(), 28, "base64 of 20 bytes");
        assert_ne!(p, password(b"other", &u));
        assert_eq!(expiry(&u), Some(1_700_000_000));
        assert_eq!(expiry("nope"), None);
    }
}
