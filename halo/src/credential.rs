//! Credentials (pure): signed statements `{id, issuer, subject, assertion, issued, expires?,
//! proof}`. The signed bytes are the RFC 8785 canonical JSON of everything but `id` and the
//! signature itself; `id` is the SHA-256 of those bytes, hex. A browser produces the same
//! bytes with any JCS implementation. See `CREDENTIALS.md`.

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{KeyError, PublicKey};

/// A role in a space. Ordered: an admin may grant any role, nobody else grants one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Reader,
    Replicator,
    Editor,
    Admin,
}

/// What a credential states.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum Assertion {
    /// The space key (issuer) creates the space; the subject is its first admin.
    SpaceGenesis { space: String },
    /// The subject is a member of `space` with `role`.
    SpaceMember { space: String, role: Role },
    /// `device` may sign for `identity` (issued by the identity).
    AuthorizedDevice { identity: String, device: String },
    /// The credential with this id no longer holds.
    Revocation { credential: String },
}

/// The signature and who made it (the issuer, or a device authorized for it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proof {
    pub signer: String,
    /// base64url (no padding) of the Ed25519 signature over the signed bytes.
    pub signature: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub id: String,
    pub issuer: String,
    pub subject: String,
    pub assertion: Assertion,
    /// Unix seconds.
    pub issued: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    pub proof: Proof,
}

impl Credential {
    /// Parses a credential from halo's JSON. Only the object form counts: serde's derives
    /// would also take arrays (`[id, issuer, …]`), which no other implementation (the JS
    /// client's `verifyCredential`) reads the same way, so two readers of one root would
    /// disagree about who is a member.
    pub fn from_json(s: &str) -> Result<Credential, serde_json::Error> {
        objects_only(&serde_json::from_str(s)?)?;
        serde_json::from_str(s)
    }

    /// [`Credential::from_json`] for a JSON value already parsed.
    pub fn from_json_value(v: &serde_json::Value) -> Result<Credential, serde_json::Error> {
        objects_only(v)?;
        Credential::deserialize(v)
    }
}

fn objects_only(v: &serde_json::Value) -> Result<(), serde_json::Error> {
    let object = |v: Option<&serde_json::Value>| v.is_some_and(serde_json::Value::is_object);
    if v.is_object() && object(v.get("proof")) && object(v.get("assertion")) {
        Ok(())
    } else {
        Err(serde::de::Error::custom(
            "a credential, its proof and its assertion are JSON objects",
        ))
    }
}

/// The part that is signed: the credential without `id` and without the signature.
#[derive(Serialize)]
struct Signed<'a> {
    issuer: &'a str,
    subject: &'a str,
    assertion: &'a Assertion,
    issued: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires: Option<u64>,
    signer: &'a str,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("{0}")]
    Key(#[from] KeyError),
    #[error("the id is not the hash of the signed bytes")]
    WrongId,
    #[error("the signature is not base64url")]
    Encoding,
    #[error("cannot encode the credential canonically: {0}")]
    Canonical(String),
    /// JCS writes numbers as IEEE doubles: above 2^53 − 1 two times share one encoding, so
    /// the signature would not pin the time (found by fuzzing, SECURITY.md).
    #[error("issued and expires must be at most 2^53 - 1")]
    TimeTooLarge,
}

/// The largest integer JCS (an IEEE double) writes exactly.
pub const MAX_TIME: u64 = (1 << 53) - 1;

/// The exact bytes a credential's proof signs.
pub fn signed_bytes(
    issuer: &str,
    subject: &str,
    assertion: &Assertion,
    issued: u64,
    expires: Option<u64>,
    signer: &str,
) -> Result<Vec<u8>, CredentialError> {
    if issued > MAX_TIME || expires.is_some_and(|e| e > MAX_TIME) {
        return Err(CredentialError::TimeTooLarge);
    }
    let signed = Signed {
        issuer,
        subject,
        assertion,
        issued,
        expires,
        signer,
    };
    serde_jcs::to_vec(&signed).map_err(|e| CredentialError::Canonical(e.to_string()))
}

impl Credential {
    pub fn signed_bytes(&self) -> Result<Vec<u8>, CredentialError> {
        signed_bytes(
            &self.issuer,
            &self.subject,
            &self.assertion,
            self.issued,
            self.expires,
            &self.proof.signer,
        )
    }

    /// Makes a credential; `sign` signs bytes with the key whose did is `signer`.
    pub fn issue(
        issuer: &str,
        subject: &str,
        assertion: Assertion,
        issued: u64,
        expires: Option<u64>,
        signer: &str,
        sign: impl FnOnce(&[u8]) -> [u8; 64],
    ) -> Result<Credential, CredentialError> {
        let bytes = signed_bytes(issuer, subject, &assertion, issued, expires, signer)?;
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sign(&bytes));
        Ok(Credential {
            id: hex::encode(Sha256::digest(&bytes)),
            issuer: issuer.to_owned(),
            subject: subject.to_owned(),
            assertion,
            issued,
            expires,
            proof: Proof {
                signer: signer.to_owned(),
                signature,
            },
        })
    }

    /// Checks the id and that `proof.signer` signed exactly these bytes. Whether the signer
    /// may sign for the issuer is the space's question (see `space`).
    pub fn verify_proof(&self) -> Result<PublicKey, CredentialError> {
        let bytes = self.signed_bytes()?;
        if hex::encode(Sha256::digest(&bytes)) != self.id {
            return Err(CredentialError::WrongId);
        }
        let signer = PublicKey::from_did(&self.proof.signer)?;
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&self.proof.signature)
            .map_err(|_| CredentialError::Encoding)?;
        signer.verify(&bytes, &sig)?;
        Ok(signer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    /// Found by fuzzing (SECURITY.md, jcs-numbers): `expires` of 2^64 − 1 rewritten as
    /// 2^64 − 201 kept its id and signature. Times past 2^53 − 1 are refused.
    #[test]
    fn times_past_two_to_the_53_are_refused() {
        let k = SigningKey::from_bytes(&[1; 32]);
        let did = PublicKey::from_bytes(k.verifying_key().as_bytes())
            .unwrap()
            .to_did();
        let issue = |expires| {
            Credential::issue(
                &did,
                &did,
                Assertion::Revocation {
                    credential: "x".into(),
                },
                1_700_000_000,
                Some(expires),
                &did,
                |b| k.sign(b).to_bytes(),
            )
        };
        assert!(issue(MAX_TIME).is_ok());
        assert_eq!(issue(u64::MAX), Err(CredentialError::TimeTooLarge));
        let mut c = issue(MAX_TIME).unwrap();
        c.expires = Some(u64::MAX);
        assert_eq!(c.verify_proof(), Err(CredentialError::TimeTooLarge));
    }

    /// Found by the JS/Rust vectors: serde's derives take a credential written as arrays,
    /// which verifies, while the JS client refuses it. Only the object form is a credential.
    #[test]
    fn only_the_object_form_parses() {
        let k = SigningKey::from_bytes(&[1; 32]);
        let did = PublicKey::from_bytes(k.verifying_key().as_bytes())
            .unwrap()
            .to_did();
        let c = Credential::issue(
            &did,
            &did,
            Assertion::Revocation {
                credential: "x".into(),
            },
            1_700_000_000,
            None,
            &did,
            |b| k.sign(b).to_bytes(),
        )
        .unwrap();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(Credential::from_json(&json).unwrap(), c);
        let arrays = serde_json::json!([
            c.id,
            c.issuer,
            c.subject,
            ["Revocation", "x"],
            c.issued,
            null,
            [c.proof.signer, c.proof.signature]
        ]);
        // What the derive alone accepts, and what KUBE no longer does.
        let derived: Credential = serde_json::from_value(arrays.clone()).unwrap();
        assert_eq!(derived, c);
        assert!(Credential::from_json(&arrays.to_string()).is_err());
        assert!(Credential::from_json_value(&arrays).is_err());
        let mut half = serde_json::to_value(&c).unwrap();
        half["assertion"] = serde_json::json!(["Revocation", "x"]);
        assert!(Credential::from_json_value(&half).is_err());
        let mut half = serde_json::to_value(&c).unwrap();
        half["proof"] = serde_json::json!([c.proof.signer, c.proof.signature]);
        assert!(Credential::from_json(&half.to_string()).is_err());
    }

    /// The vector in CREDENTIALS.md: key seeds 0x01… (issuer, signer) and 0x02… (subject).
    #[test]
    fn byte_level_vector() {
        let issuer = SigningKey::from_bytes(&[1; 32]);
        let subject = SigningKey::from_bytes(&[2; 32]);
        let did = |k: &SigningKey| {
            PublicKey::from_bytes(k.verifying_key().as_bytes())
                .unwrap()
                .to_did()
        };
        let space = did(&SigningKey::from_bytes(&[3; 32]));
        let c = Credential::issue(
            &did(&issuer),
            &did(&subject),
            Assertion::SpaceMember {
                space,
                role: Role::Editor,
            },
            1_700_000_000,
            None,
            &did(&issuer),
            |b| issuer.sign(b).to_bytes(),
        )
        .unwrap();
        let bytes = String::from_utf8(c.signed_bytes().unwrap()).unwrap();
        assert_eq!(bytes, VECTOR_BYTES);
        assert_eq!(c.id, VECTOR_ID);
        assert_eq!(c.proof.signature, VECTOR_SIGNATURE);
        c.verify_proof().unwrap();
    }

    const VECTOR_BYTES: &str = r#"{"assertion":{"role":"editor","space":"did:key:z6MkvRXNYcE7MMduynWTgeKbDaT1iijDSC8pZqXZc8rHPrf2","type":"SpaceMember"},"issued":1700000000,"issuer":"did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX","signer":"did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX","subject":"did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH"}"#;
    const VECTOR_ID: &str = "0852e3171365b01d77111936c5bccb9209853f984ba9264869ae83b6e0e59818";
    const VECTOR_SIGNATURE: &str =
        "dJARS7RDQUeFO5Xzt1kC_6kVtbxKRW2qLWjY6Bxrw78vbck78T8lMi_ybmkCIDGqCfuYpknys32ctNfj-r_yCw";
}
