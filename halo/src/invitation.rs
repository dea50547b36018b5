//! Invitations (pure): an admin's device (the host) lets a guest into a space. The two meet in
//! a signaling swarm derived from the invitation id and run a three-message exchange:
//!
//! 1. guest → host `hello {invitation, guest, eph}`: the guest's key and a fresh X25519 key;
//! 2. host → guest `challenge {eph, signature}`: the host's fresh X25519 key, signed by the
//!    host's Ed25519 key over the transcript, so the guest knows it talks to the host the
//!    invitation names and not to the relay;
//! 3. guest → host `proof {signature, mac?}`: the guest signs the transcript with its key and,
//!    for a code invitation, sends `HMAC-SHA256(X25519 shared secret ‖ code, transcript)`.
//!
//! The code never travels, and the relay (which sees both X25519 public keys but neither
//! secret) cannot test guesses against the MAC offline: every guess costs one of the host's
//! attempts. The host answers `admitted {credential}` or `refused {code, message}`. A code
//! invitation allows [`CODE_ATTEMPTS`] wrong codes, then it is dead; every invitation expires
//! and is used once. The state machines here do no I/O: the caller moves their messages
//! through signaling and passes in the time and fresh randomness.

use std::collections::HashMap;

use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey as XPublic, StaticSecret};

use crate::PublicKey;
use crate::credential::{Assertion, Credential, Role};

/// Wrong codes an invitation survives: the third wrong one kills it.
pub const CODE_ATTEMPTS: u8 = 3;
/// Guests a host talks to at once; more are refused until one finishes or times out.
pub const MAX_PENDING: usize = 16;
/// Seconds a guest has to answer a challenge.
pub const PENDING_SECS: u64 = 60;
const CONTEXT: &str = "kube-invite-v1";

/// What the admin hands to the guest (a link or a QR code); the code, if any, goes by
/// another channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invitation {
    /// 32 lowercase hex digits (16 random bytes).
    pub id: String,
    pub space: String,
    pub role: Role,
    /// The key that answers for the invitation and signs the member credential.
    pub host: String,
    /// Unix seconds.
    pub expires: u64,
    pub method: Method,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Method {
    /// A 6-digit code the guest types in.
    Code,
    /// Only this key may redeem it.
    Key { guest: String },
}

impl Invitation {
    /// The signaling swarm host and guest meet in: hex SHA-256 of `kube-invite-v1\n<id>`.
    pub fn swarm(&self) -> String {
        hex::encode(Sha256::digest(format!("{CONTEXT}\n{}", self.id)))
    }
}

/// The messages, carried as signaling `payload`s.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Message {
    Hello {
        invitation: String,
        guest: String,
        /// base64url X25519 public key.
        eph: String,
    },
    Challenge {
        eph: String,
        /// base64url Ed25519 signature by the host over the challenge transcript.
        signature: String,
    },
    Proof {
        /// base64url Ed25519 signature by the guest over the proof transcript.
        signature: String,
        /// base64url HMAC-SHA256, for a code invitation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mac: Option<String>,
    },
    Admitted {
        credential: Box<Credential>,
        /// The space root's automerge-repo documentId, when the host names it, so the guest
        /// needs no other channel for it. Not signed: a guest only trusts the root it syncs
        /// once it validates under the space key (ECHO's and the client's access rules).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        root: Option<String>,
    },
    Refused {
        code: Refusal,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attempts_left: Option<u8>,
    },
}

/// Why the host refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refusal {
    /// Not the invitation this host holds.
    Unknown,
    Expired,
    /// Redeemed already.
    Used,
    /// Out of attempts.
    Dead,
    WrongCode,
    /// A key invitation, and this is not the key.
    WrongKey,
    /// A signature or key that does not verify, or a message out of order.
    BadProof,
    /// Too many guests at once.
    Busy,
}

impl Refusal {
    fn message(self) -> &'static str {
        match self {
            Refusal::Unknown => "this host holds no such invitation",
            Refusal::Expired => "the invitation has expired",
            Refusal::Used => "the invitation has been used",
            Refusal::Dead => "the invitation is dead: too many wrong codes",
            Refusal::WrongCode => "wrong code",
            Refusal::WrongKey => "the invitation is for another key",
            Refusal::BadProof => "the proof does not verify",
            Refusal::Busy => "the host is busy with other guests; try again",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvitationError {
    #[error("the code must be 6 digits")]
    BadCode,
    #[error("a code invitation needs a code, and only a code invitation has one")]
    CodeMismatch,
    #[error("the host key is not the invitation's host")]
    WrongHost,
    #[error("the host's signature does not verify: not the invitation's host")]
    HostNotAuthentic,
    #[error("an X25519 key that is not 32 base64url bytes, or gives no shared secret")]
    BadKey,
    #[error("refused: {message}")]
    Refused {
        code: Refusal,
        message: String,
        attempts_left: Option<u8>,
    },
    #[error("the credential received is not the one invited to: {0}")]
    BadCredential(String),
    #[error("unexpected message {0} in this state")]
    Unexpected(&'static str),
    #[error("a message from {0}, not from the invitation's host: ignored")]
    NotFromHost(String),
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
}

fn x25519_public(s: &str) -> Result<XPublic, InvitationError> {
    let raw: [u8; 32] = unb64(s)
        .and_then(|v| v.try_into().ok())
        .ok_or(InvitationError::BadKey)?;
    Ok(XPublic::from(raw))
}

/// The bytes both sides sign or MAC: `kube-invite-v1\n<step>\n<id>\n<guest>\n<guest eph>\n<host eph>`.
pub fn transcript(step: &str, id: &str, guest: &str, guest_eph: &str, host_eph: &str) -> String {
    format!("{CONTEXT}\n{step}\n{id}\n{guest}\n{guest_eph}\n{host_eph}")
}

fn code_hmac(shared: &[u8; 32], code: &str, proof_transcript: &str) -> Hmac<Sha256> {
    let mut key = Vec::with_capacity(32 + code.len());
    key.extend_from_slice(shared);
    key.extend_from_slice(code.as_bytes());
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(proof_transcript.as_bytes());
    mac
}

/// `HMAC-SHA256(key = shared secret ‖ code, message = proof transcript)`.
pub fn code_mac(shared: &[u8; 32], code: &str, proof_transcript: &str) -> [u8; 32] {
    code_hmac(shared, code, proof_transcript)
        .finalize()
        .into_bytes()
        .into()
}

fn shared_secret(secret: &StaticSecret, theirs: &XPublic) -> Result<[u8; 32], InvitationError> {
    let shared = secret.diffie_hellman(theirs);
    // A low-order point gives an all-zero secret anyone can compute.
    if !shared.was_contributory() {
        return Err(InvitationError::BadKey);
    }
    Ok(shared.to_bytes())
}

fn did(key: &SigningKey) -> String {
    crate::did(key)
}

fn check_code(code: &str) -> Result<(), InvitationError> {
    if code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(InvitationError::BadCode)
    }
}

/// A fresh 6-digit code from 4 random bytes (the modulo bias makes no code more than
/// 1 + 2⁻¹² times as likely as another).
pub fn new_code(random: [u8; 4]) -> String {
    format!("{:06}", u32::from_le_bytes(random) % 1_000_000)
}

/// Where a host's invitation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostState {
    Open { attempts_left: u8 },
    Used,
    Dead,
}

struct Pending {
    since: u64,
    guest: String,
    guest_eph: String,
    host_eph: String,
    secret: StaticSecret,
}

/// The host's side: holds the invitation, its code, and the key that signs for the space.
pub struct Host {
    invitation: Invitation,
    code: Option<String>,
    key: SigningKey,
    issuer: String,
    state: HostState,
    pending: HashMap<String, Pending>,
    root: Option<String>,
}

impl Host {
    /// `key` must be the invitation's host key; it issues the credential in its own name.
    pub fn new(
        invitation: Invitation,
        code: Option<String>,
        key: SigningKey,
    ) -> Result<Host, InvitationError> {
        match (&invitation.method, &code) {
            (Method::Code, Some(c)) => check_code(c)?,
            (Method::Key { .. }, None) => {}
            _ => return Err(InvitationError::CodeMismatch),
        }
        if did(&key) != invitation.host {
            return Err(InvitationError::WrongHost);
        }
        let issuer = invitation.host.clone();
        Ok(Host {
            invitation,
            code,
            key,
            issuer,
            state: HostState::Open {
                attempts_left: CODE_ATTEMPTS,
            },
            pending: HashMap::new(),
            root: None,
        })
    }

    /// Names the space root's documentId in `admitted`, so the guest learns it there.
    pub fn with_root(mut self, root: impl Into<String>) -> Host {
        self.root = Some(root.into());
        self
    }

    /// The host key is a device: credentials are issued in the name of `identity` (which
    /// must have authorized the device in the space).
    pub fn issuing_for(mut self, identity: String) -> Host {
        self.issuer = identity;
        self
    }

    pub fn state(&self) -> HostState {
        self.state
    }

    pub fn invitation(&self) -> &Invitation {
        &self.invitation
    }

    fn refuse(&self, code: Refusal) -> Message {
        Message::Refused {
            code,
            message: code.message().to_owned(),
            attempts_left: match (code, self.state) {
                (Refusal::WrongCode, HostState::Open { attempts_left }) => Some(attempts_left),
                (Refusal::WrongCode, _) => Some(0),
                _ => None,
            },
        }
    }

    /// Handles a message from the signaling peer `from` (as authenticated by signaling) at
    /// `now`; `random` seeds a fresh X25519 key. Returns the reply to send to `from`.
    pub fn handle(&mut self, from: &str, msg: Message, now: u64, random: [u8; 32]) -> Message {
        match self.state {
            HostState::Used => return self.refuse(Refusal::Used),
            HostState::Dead => return self.refuse(Refusal::Dead),
            HostState::Open { .. } => {}
        }
        if now > self.invitation.expires {
            self.pending.clear();
            return self.refuse(Refusal::Expired);
        }
        match msg {
            Message::Hello {
                invitation,
                guest,
                eph,
            } => self.hello(from, invitation, guest, eph, now, random),
            Message::Proof { signature, mac } => self.proof(from, signature, mac, now),
            _ => self.refuse(Refusal::BadProof),
        }
    }

    fn hello(
        &mut self,
        from: &str,
        invitation: String,
        guest: String,
        eph: String,
        now: u64,
        random: [u8; 32],
    ) -> Message {
        if invitation != self.invitation.id {
            return self.refuse(Refusal::Unknown);
        }
        // The guest speaks for the key signaling authenticated, and that key must parse.
        if guest != from || PublicKey::from_did(&guest).is_err() || x25519_public(&eph).is_err() {
            return self.refuse(Refusal::BadProof);
        }
        if let Method::Key { guest: invited } = &self.invitation.method
            && *invited != guest
        {
            return self.refuse(Refusal::WrongKey);
        }
        // Guests that never answered make room for new ones.
        self.pending
            .retain(|_, p| now.saturating_sub(p.since) <= PENDING_SECS);
        if self.pending.len() >= MAX_PENDING && !self.pending.contains_key(from) {
            return self.refuse(Refusal::Busy);
        }
        let secret = StaticSecret::from(random);
        let host_eph = b64(XPublic::from(&secret).as_bytes());
        let signed = transcript("challenge", &invitation, &guest, &eph, &host_eph);
        let signature = b64(&self.key.sign(signed.as_bytes()).to_bytes());
        self.pending.insert(
            from.to_owned(),
            Pending {
                since: now,
                guest,
                guest_eph: eph,
                host_eph: host_eph.clone(),
                secret,
            },
        );
        Message::Challenge {
            eph: host_eph,
            signature,
        }
    }

    fn proof(&mut self, from: &str, signature: String, mac: Option<String>, now: u64) -> Message {
        // A challenge answers once: a replayed proof finds nothing pending.
        let Some(p) = self
            .pending
            .remove(from)
            .filter(|p| now.saturating_sub(p.since) <= PENDING_SECS)
        else {
            return self.refuse(Refusal::BadProof);
        };
        let id = &self.invitation.id;
        let signed = transcript("proof", id, &p.guest, &p.guest_eph, &p.host_eph);
        let key_ok = PublicKey::from_did(&p.guest).is_ok_and(|k| {
            unb64(&signature).is_some_and(|s| k.verify(signed.as_bytes(), &s).is_ok())
        });
        if !key_ok {
            return self.refuse(Refusal::BadProof);
        }
        if let Some(code) = &self.code {
            let Ok(guest_eph) = x25519_public(&p.guest_eph) else {
                return self.refuse(Refusal::BadProof);
            };
            let Ok(shared) = shared_secret(&p.secret, &guest_eph) else {
                return self.refuse(Refusal::BadProof);
            };
            let given = mac.as_deref().and_then(unb64).unwrap_or_default();
            // verify_slice compares in constant time.
            if code_hmac(&shared, code, &signed)
                .verify_slice(&given)
                .is_err()
            {
                let HostState::Open { attempts_left } = self.state else {
                    return self.refuse(Refusal::Dead);
                };
                let left = attempts_left.saturating_sub(1);
                if left == 0 {
                    self.state = HostState::Dead;
                    self.pending.clear();
                } else {
                    self.state = HostState::Open {
                        attempts_left: left,
                    };
                }
                return self.refuse(Refusal::WrongCode);
            }
        }
        let credential = Credential::issue(
            &self.issuer,
            &p.guest,
            Assertion::SpaceMember {
                space: self.invitation.space.clone(),
                role: self.invitation.role,
            },
            now,
            None,
            &self.invitation.host,
            |b| self.key.sign(b).to_bytes(),
        );
        match credential {
            Ok(c) => {
                self.state = HostState::Used;
                self.pending.clear();
                Message::Admitted {
                    credential: Box::new(c),
                    root: self.root.clone(),
                }
            }
            Err(_) => self.refuse(Refusal::BadProof),
        }
    }
}

/// What the guest does next.
#[derive(Debug, PartialEq)]
pub enum GuestStep {
    Send(Message),
    Done(Box<Credential>),
}

/// Whether `id` has the shape of an automerge-repo documentId (base58, as `bs58check` of 16
/// bytes is: 20 to 40 characters).
pub fn is_document_id(id: &str) -> bool {
    (20..=40).contains(&id.len()) && bs58::decode(id).into_vec().is_ok()
}

/// The guest's side of one attempt (a new attempt, after a wrong code, is a new `Guest`).
pub struct Guest {
    invitation: Invitation,
    code: Option<String>,
    key: SigningKey,
    secret: StaticSecret,
    eph: String,
    done: bool,
    challenged: bool,
    root: Option<String>,
}

impl Guest {
    /// The space root's documentId the host named when it admitted this guest, if it did
    /// and it has the shape of one.
    pub fn root(&self) -> Option<&str> {
        self.root.as_deref()
    }

    /// Starts an attempt; returns the guest and its `hello`. `random` seeds its X25519 key.
    pub fn new(
        invitation: Invitation,
        code: Option<String>,
        key: SigningKey,
        random: [u8; 32],
    ) -> Result<(Guest, Message), InvitationError> {
        match (&invitation.method, &code) {
            (Method::Code, Some(c)) => check_code(c)?,
            (Method::Key { .. }, None) => {}
            _ => return Err(InvitationError::CodeMismatch),
        }
        let secret = StaticSecret::from(random);
        let eph = b64(XPublic::from(&secret).as_bytes());
        let hello = Message::Hello {
            invitation: invitation.id.clone(),
            guest: did(&key),
            eph: eph.clone(),
        };
        Ok((
            Guest {
                invitation,
                code,
                key,
                secret,
                eph,
                done: false,
                challenged: false,
                root: None,
            },
            hello,
        ))
    }

    /// Handles a message from the signaling peer `from`. Messages from anyone but the
    /// invitation's host are refused without changing the state, so another peer in the
    /// swarm cannot break the attempt.
    pub fn handle(&mut self, from: &str, msg: Message) -> Result<GuestStep, InvitationError> {
        if from != self.invitation.host {
            return Err(InvitationError::NotFromHost(from.to_owned()));
        }
        if self.done {
            return Err(InvitationError::Unexpected("after the end"));
        }
        match msg {
            Message::Challenge { eph, signature } if !self.challenged => {
                let me = did(&self.key);
                let id = &self.invitation.id;
                let challenge = transcript("challenge", id, &me, &self.eph, &eph);
                let host = PublicKey::from_did(&self.invitation.host)
                    .map_err(|_| InvitationError::HostNotAuthentic)?;
                let sig = unb64(&signature).ok_or(InvitationError::HostNotAuthentic)?;
                host.verify(challenge.as_bytes(), &sig)
                    .map_err(|_| InvitationError::HostNotAuthentic)?;
                self.challenged = true;
                let proof = transcript("proof", id, &me, &self.eph, &eph);
                let mac = match &self.code {
                    Some(code) => {
                        let shared = shared_secret(&self.secret, &x25519_public(&eph)?)?;
                        Some(b64(&code_mac(&shared, code, &proof)))
                    }
                    None => None,
                };
                Ok(GuestStep::Send(Message::Proof {
                    signature: b64(&self.key.sign(proof.as_bytes()).to_bytes()),
                    mac,
                }))
            }
            Message::Admitted { credential, root } if self.challenged => {
                self.done = true;
                self.check_credential(&credential)?;
                self.root = root.filter(|r| is_document_id(r));
                Ok(GuestStep::Done(credential))
            }
            Message::Refused {
                code,
                message,
                attempts_left,
            } => {
                self.done = true;
                Err(InvitationError::Refused {
                    code,
                    message,
                    attempts_left,
                })
            }
            Message::Challenge { .. } => Err(InvitationError::Unexpected("challenge")),
            Message::Admitted { .. } => Err(InvitationError::Unexpected("admitted")),
            Message::Hello { .. } => Err(InvitationError::Unexpected("hello")),
            Message::Proof { .. } => Err(InvitationError::Unexpected("proof")),
        }
    }

    fn check_credential(&self, c: &Credential) -> Result<(), InvitationError> {
        let bad = |why: &str| Err(InvitationError::BadCredential(why.to_owned()));
        if c.verify_proof().is_err() {
            return bad("its proof does not verify");
        }
        if c.proof.signer != self.invitation.host {
            return bad("not signed by the host");
        }
        if c.subject != did(&self.key) {
            return bad("about another key");
        }
        let expected = Assertion::SpaceMember {
            space: self.invitation.space.clone(),
            role: self.invitation.role,
        };
        if c.assertion != expected {
            return bad("another space or role");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
