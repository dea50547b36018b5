//! The relay's front door (pure): every packet the TURN server would read is judged first,
//! so that KUBE's rules hold whatever the `turn` crate makes of it.
//!
//! - Credentials (RFC 8489 §9.2.4): a TURN request whose MESSAGE-INTEGRITY does not match
//!   its user's key, or whose REST username has expired, is answered here with 401
//!   Unauthenticated, REALM and NONCE; the `turn` crate would answer 400, which tells a
//!   client nothing about fetching new credentials. The key is computed as the crate
//!   computes it, from the request's own USERNAME and REALM, so what passes here passes
//!   there.
//! - Peers (RFC 8656 §9, §10, §11): each XOR-PEER-ADDRESS of a CreatePermission, ChannelBind
//!   or Send indication must be exactly one IPv4 (8 bytes) or IPv6 (20 bytes) address. The
//!   `stun` crate zero-fills short values, so 5 bytes would mean 0.0.0.0, which Linux
//!   delivers to the local host: such a request gets 400 Bad Request, one naming a peer
//!   `policy` refuses gets 403 Forbidden, and such a Send indication is dropped. No
//!   permission or channel to a refused peer can exist, and the relay socket re-checks
//!   every send all the same.
//!
//! Answers to authenticated requests are signed with the user's own secret (`secret_for`:
//! a user whose allocation outlived a rotation keeps the old one). Everything else passes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use stun::attributes::{
    ATTR_MESSAGE_INTEGRITY, ATTR_NONCE, ATTR_REALM, ATTR_USERNAME, ATTR_XOR_PEER_ADDRESS,
};
use stun::error_code::{
    CODE_ALLOC_QUOTA_REACHED, CODE_BAD_REQUEST, CODE_FORBIDDEN, CODE_UNAUTHORIZED, ErrorCode,
    ErrorCodeAttribute,
};
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_INDICATION, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, METHOD_ALLOCATE,
    METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_REFRESH, METHOD_SEND, Message,
    MessageType, Method, Setter,
};
use stun::textattrs::{Nonce, Realm, TextAttribute};

use super::policy::PeerPolicy;

/// What to do with one incoming packet.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Pass,
    /// Answer with `response` (nothing when empty) and drop the packet; `reason` is counted.
    Refuse {
        response: Vec<u8>,
        reason: &'static str,
    },
}

/// The STUN magic cookie (RFC 8489 §5).
const COOKIE: u32 = 0x2112_A442;

/// The requests the `turn` crate authenticates (RFC 8656 §5).
const AUTHENTICATED: [Method; 4] = [
    METHOD_ALLOCATE,
    METHOD_REFRESH,
    METHOD_CREATE_PERMISSION,
    METHOD_CHANNEL_BIND,
];

/// Judges one packet. `now` is Unix seconds (REST usernames carry their expiry);
/// `secret_for` gives the secret a user's credentials are checked against.
pub fn judge(
    packet: &[u8],
    policy: &PeerPolicy,
    realm: &str,
    now: u64,
    secret_for: impl Fn(&str) -> std::sync::Arc<[u8]>,
) -> Verdict {
    // The two top bits are 00 for STUN and 01 for ChannelData (RFC 8656 §12); anything else
    // is dropped here, because the `turn` crate's decoder ignores those bits and would read
    // such a packet as STUN that this filter never judged.
    if packet.first().is_some_and(|b| b & 0x80 != 0) {
        return Verdict::Refuse {
            response: Vec::new(),
            reason: "malformed",
        };
    }
    // ChannelData and what does not parse as STUN pass: the server drops what it cannot use.
    let Some(m) = decode(packet) else {
        return Verdict::Pass;
    };
    if m.typ == MessageType::new(METHOD_SEND, CLASS_INDICATION) {
        // Indications get no answer (RFC 8489 §6.3.2).
        return match peers(&m, policy) {
            Ok(()) => Verdict::Pass,
            Err(refusal) => Verdict::Refuse {
                response: Vec::new(),
                reason: refusal.reason(),
            },
        };
    }
    if m.typ.class != CLASS_REQUEST || !AUTHENTICATED.contains(&m.typ.method) {
        return Verdict::Pass;
    }
    let key = match authenticate(&m, now, &secret_for) {
        Auth::Absent => None,
        Auth::Failed { nonce } => {
            // Should the answer not be buildable (an overlong nonce), the server answers 400.
            return match unauthenticated(&m, realm, nonce) {
                Some(response) => Verdict::Refuse {
                    response,
                    reason: "bad-credentials",
                },
                None => Verdict::Pass,
            };
        }
        Auth::Valid(key) => Some(key),
    };
    if m.typ.method != METHOD_CREATE_PERMISSION && m.typ.method != METHOD_CHANNEL_BIND {
        return Verdict::Pass;
    }
    let Err(refusal) = peers(&m, policy) else {
        return Verdict::Pass;
    };
    let (code, text): (ErrorCode, &[u8]) = match refusal {
        Refusal::Malformed => (CODE_BAD_REQUEST, b"Bad Request"),
        Refusal::Peer(_) => (CODE_FORBIDDEN, b"Forbidden"),
    };
    let response = match key {
        Some(key) => error_response(&m, code, text, Some(key)),
        // A malformed request is one whoever sent it; a refused peer in an unauthenticated
        // request is left to the server, which asks for credentials first.
        None if refusal == Refusal::Malformed => error_response(&m, code, text, None),
        None => return Verdict::Pass,
    };
    // Should an answer not be buildable, the request is still refused, silently.
    Verdict::Refuse {
        response: response.unwrap_or_default(),
        reason: refusal.reason(),
    }
}

/// Why a packet's peers are refused.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Refusal {
    /// An XOR-PEER-ADDRESS that is not exactly one address.
    Malformed,
    /// A peer the policy refuses, with its range.
    Peer(&'static str),
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed-peer-address",
            Refusal::Peer(why) => why,
        }
    }
}

/// Every XOR-PEER-ADDRESS, not only the first one the server reads, is well-formed and
/// names a peer the policy allows.
fn peers(m: &Message, policy: &PeerPolicy) -> Result<(), Refusal> {
    let values = m
        .attributes
        .0
        .iter()
        .filter(|a| a.typ == ATTR_XOR_PEER_ADDRESS);
    let mut ips = Vec::new();
    for a in values {
        ips.push(xor_address(&a.value, &m.transaction_id.0).ok_or(Refusal::Malformed)?);
    }
    match ips.into_iter().find_map(|ip| policy.refused(ip)) {
        Some(why) => Err(Refusal::Peer(why)),
        None => Ok(()),
    }
}

enum Auth {
    /// No credentials to check; the server asks for them (401) or answers 400 for missing
    /// attributes.
    Absent,
    /// Wrong or expired credentials; `nonce` is the one the request carried.
    Failed { nonce: String },
    /// The user's key; the request's MESSAGE-INTEGRITY matches it.
    Valid(MessageIntegrity),
}

/// Checks a request's long-term credentials (RFC 8489 §9.2.4) as the `turn` crate will.
fn authenticate(m: &Message, now: u64, secret_for: &impl Fn(&str) -> std::sync::Arc<[u8]>) -> Auth {
    let Some((user, realm, nonce)) = credentials(m) else {
        return Auth::Absent;
    };
    if signal::ice::expiry(&user).is_none_or(|expiry| expiry <= now) {
        return Auth::Failed { nonce };
    }
    let key = key(&user, &realm, &secret_for(&user));
    // `check` rewrites the length field while it hashes, so it works on a copy.
    if key.check(&mut m.clone()).is_err() {
        return Auth::Failed { nonce };
    }
    Auth::Valid(key)
}

/// USERNAME, REALM and NONCE of a request with MESSAGE-INTEGRITY, read as the `turn` crate
/// reads them; None when one is missing or not UTF-8.
fn credentials(m: &Message) -> Option<(String, String, String)> {
    if !m.contains(ATTR_MESSAGE_INTEGRITY) {
        return None;
    }
    let text = |attr| TextAttribute::get_from_as(m, attr).ok().map(|t| t.text);
    Some((text(ATTR_USERNAME)?, text(ATTR_REALM)?, text(ATTR_NONCE)?))
}

/// The long-term key (RFC 8489 §9.2.2) of a REST user.
fn key(user: &str, realm: &str, secret: &[u8]) -> MessageIntegrity {
    let password = signal::ice::password(secret, user);
    MessageIntegrity::new_long_term_integrity(user.to_owned(), realm.to_owned(), password)
}

fn decode(packet: &[u8]) -> Option<Message> {
    if packet.len() < 20 || packet[0] & 0xC0 != 0 {
        return None;
    }
    let mut m = Message::new();
    m.unmarshal_binary(packet).ok()?;
    Some(m)
}

/// An Allocate request with credentials, which `judge` has checked: its transaction id and
/// the user.
pub fn allocate_request(packet: &[u8]) -> Option<([u8; 12], String)> {
    let m = decode(packet)?;
    if m.typ != MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST) {
        return None;
    }
    let (user, _, _) = credentials(&m)?;
    Some((m.transaction_id.0, user))
}

/// An answer to an Allocate: its transaction id, and whether it succeeded.
pub fn allocate_answer(packet: &[u8]) -> Option<([u8; 12], bool)> {
    let m = decode(packet)?;
    if m.typ.method != METHOD_ALLOCATE || m.typ.class == CLASS_REQUEST {
        return None;
    }
    Some((m.transaction_id.0, m.typ.class == CLASS_SUCCESS_RESPONSE))
}

/// 486 Allocation Quota Reached (RFC 8656 §7.2) for an Allocate request, signed with the
/// key of `secret`, the one its user's credentials are checked against.
pub fn quota_reached(packet: &[u8], secret: &[u8]) -> Option<Vec<u8>> {
    let m = decode(packet)?;
    let (user, realm, _) = credentials(&m)?;
    error_response(
        &m,
        CODE_ALLOC_QUOTA_REACHED,
        b"Allocation Quota Reached",
        Some(key(&user, &realm, secret)),
    )
}

/// 401 with our REALM and the request's NONCE (RFC 8489 §9.2.4), unsigned: there is no key
/// to sign with. The nonce is the server's own (or, gone stale, replaced with 438 on the
/// next try), so a client with new credentials retries at once.
fn unauthenticated(m: &Message, realm: &str, nonce: String) -> Option<Vec<u8>> {
    let mut response = Message::new();
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(m.transaction_id),
        Box::new(MessageType::new(m.typ.method, CLASS_ERROR_RESPONSE)),
        Box::new(ErrorCodeAttribute {
            code: CODE_UNAUTHORIZED,
            reason: b"Unauthenticated".to_vec(),
        }),
        Box::new(Realm::new(ATTR_REALM, realm.to_owned())),
        Box::new(Nonce::new(ATTR_NONCE, nonce)),
        Box::new(FINGERPRINT),
    ];
    response.build(&setters).ok()?;
    Some(response.raw)
}

/// An error answer to `m`, signed with `key` when the request was authenticated.
fn error_response(
    m: &Message,
    code: ErrorCode,
    reason: &[u8],
    key: Option<MessageIntegrity>,
) -> Option<Vec<u8>> {
    let mut response = Message::new();
    let mut setters: Vec<Box<dyn Setter>> = vec![
        Box::new(m.transaction_id),
        Box::new(MessageType::new(m.typ.method, CLASS_ERROR_RESPONSE)),
        Box::new(ErrorCodeAttribute {
            code,
            reason: reason.to_vec(),
        }),
    ];
    if let Some(key) = key {
        setters.push(Box::new(key));
    }
    setters.push(Box::new(FINGERPRINT));
    response.build(&setters).ok()?;
    Some(response.raw)
}

/// Decodes an XOR-PEER-ADDRESS value (RFC 8489 §14.2): exactly one IPv4 or IPv6 address,
/// or None.
fn xor_address(v: &[u8], txid: &[u8; 12]) -> Option<IpAddr> {
    let cookie = COOKIE.to_be_bytes();
    match (v.get(..2)?, v.len()) {
        ([0x00, 0x01], 8) => {
            let b: [u8; 4] = std::array::from_fn(|i| v[4 + i] ^ cookie[i]);
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        ([0x00, 0x02], 20) => {
            let key: Vec<u8> = cookie.iter().chain(txid.iter()).copied().collect();
            let b: [u8; 16] = std::array::from_fn(|i| v[4 + i] ^ key[i]);
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use stun::agent::TransactionId;
    use stun::message::Getter;
    use stun::textattrs::Username;
    use turn::proto::peeraddr::PeerAddress;

    /// The clock of these tests, in Unix seconds.
    const NOW: u64 = 1_700_000_000;

    const REALM: &str = "kube.test";
    /// REST credentials valid until 2096.
    const USER: &str = "4000000000:alice";

    /// An attribute exactly as given, as a hostile client would write it.
    struct Raw(stun::attributes::AttrType, Vec<u8>);

    impl Setter for Raw {
        fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
            m.add(self.0, &self.1);
            Ok(())
        }
    }

    fn key(secret: &[u8], user: &str) -> MessageIntegrity {
        MessageIntegrity::new_long_term_integrity(
            user.into(),
            REALM.into(),
            signal::ice::password(secret, user),
        )
    }

    /// A request as a client holding `USER`'s credentials under `secret` sends it.
    fn signed(
        method: stun::message::Method,
        attrs: Vec<Box<dyn Setter>>,
        secret: &[u8],
    ) -> Vec<u8> {
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(method, CLASS_REQUEST)),
        ];
        setters.extend(attrs);
        setters.push(Box::new(Username::new(ATTR_USERNAME, USER.to_owned())));
        setters.push(Box::new(stun::textattrs::Realm::new(
            stun::attributes::ATTR_REALM,
            REALM.to_owned(),
        )));
        setters.push(Box::new(stun::textattrs::Nonce::new(
            stun::attributes::ATTR_NONCE,
            "a-nonce".to_owned(),
        )));
        setters.push(Box::new(key(secret, USER)));
        let mut m = Message::new();
        m.build(&setters).unwrap();
        m.raw
    }

    fn peer(addr: &str) -> Box<dyn Setter> {
        let a: SocketAddr = addr.parse().unwrap();
        Box::new(PeerAddress {
            ip: a.ip(),
            port: a.port(),
        })
    }

    /// The front door with the default policy, every user on secret `s`.
    fn door(packet: &[u8]) -> Verdict {
        judge(packet, &PeerPolicy::new(&[], &[]), REALM, NOW, |_| {
            Arc::from(&b"s"[..])
        })
    }

    /// The answer a refusal sends, decoded, and its error code.
    fn answer(v: Verdict) -> (Message, u16) {
        let Verdict::Refuse { response, .. } = v else {
            panic!("passed");
        };
        let mut r = Message::new();
        r.unmarshal_binary(&response).unwrap();
        let mut code = ErrorCodeAttribute::default();
        code.get_from(&r).unwrap();
        (r, code.code.0)
    }

    /// XOR-PEER-ADDRESS values that are not exactly one IPv4 or IPv6 address: short ones
    /// the `stun` crate would zero-fill (0.0.0.0, a.b.c.0), long ones, unknown families.
    fn malformed_peers() -> Vec<Vec<u8>> {
        let port = (9u16 ^ 0x2112).to_be_bytes();
        let x = |ip: [u8; 4]| -> Vec<u8> {
            ip.iter()
                .zip(COOKIE.to_be_bytes())
                .map(|(a, b)| a ^ b)
                .collect()
        };
        let mut v = Vec::new();
        for len in 1..=3 {
            // 0.0.0.0, and 10.0.0.0 inside a private range.
            for ip in [[0, 0, 0, 0], [10, 0, 0, 0]] {
                v.push([&[0, 1], &port[..], &x(ip)[..len]].concat());
            }
        }
        v.push([&[0, 1], &port[..], &x([8, 8, 8, 8])[..], &[0]].concat());
        v.push([&[0, 1], &port[..], &x([8, 8, 8, 8])[..], &[0; 4]].concat());
        v.push([&[0, 2], &port[..], &[0x21; 15]].concat());
        v.push([&[0, 2], &port[..], &[0x21; 17]].concat());
        v.push([&[0, 2], &port[..], &x([8, 8, 8, 8])[..]].concat());
        v.push([&[0, 1], &port[..], &[0x21; 16]].concat());
        v.push([&[1, 1], &port[..], &x([8, 8, 8, 8])[..]].concat());
        v.push([&[0, 3], &port[..], &x([8, 8, 8, 8])[..]].concat());
        v.push(vec![0, 1, port[0], port[1]]);
        v.push(vec![0, 1]);
        v.push(vec![]);
        v
    }

    #[test]
    fn malformed_peer_addresses_get_a_signed_400() {
        for method in [METHOD_CREATE_PERMISSION, METHOD_CHANNEL_BIND] {
            for value in malformed_peers() {
                let mut attrs: Vec<Box<dyn Setter>> =
                    vec![Box::new(Raw(ATTR_XOR_PEER_ADDRESS, value.clone()))];
                if method == METHOD_CHANNEL_BIND {
                    attrs.push(Box::new(turn::proto::channum::ChannelNumber(0x4000)));
                }
                let (mut r, code) = answer(door(&signed(method, attrs, b"s")));
                assert_eq!(code, 400, "{value:?}");
                assert_eq!(r.typ, MessageType::new(method, CLASS_ERROR_RESPONSE));
                key(b"s", USER).check(&mut r).expect("signed");
            }
            // A well-formed address after a malformed one does not save the request.
            let value = malformed_peers().remove(0);
            let p = signed(
                method,
                vec![
                    peer("8.8.8.8:9"),
                    Box::new(Raw(ATTR_XOR_PEER_ADDRESS, value)),
                ],
                b"s",
            );
            assert_eq!(answer(door(&p)).1, 400);
        }
    }

    fn send(peer_value: Box<dyn Setter>) -> Vec<u8> {
        let mut m = Message::new();
        m.build(&[
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(
                stun::message::METHOD_SEND,
                stun::message::CLASS_INDICATION,
            )),
            peer_value,
            Box::new(turn::proto::data::Data(b"hello".to_vec())),
        ])
        .unwrap();
        m.raw
    }

    #[test]
    fn send_indications_to_malformed_or_refused_peers_are_dropped() {
        for value in malformed_peers() {
            let v = door(&send(Box::new(Raw(ATTR_XOR_PEER_ADDRESS, value.clone()))));
            assert!(
                matches!(&v, Verdict::Refuse { response, .. } if response.is_empty()),
                "{value:?}: {v:?}"
            );
        }
        for addr in ["0.0.0.0:9", "127.0.0.1:9", "[::ffff:10.0.0.1]:9"] {
            let v = door(&send(peer(addr)));
            assert!(
                matches!(&v, Verdict::Refuse { response, .. } if response.is_empty()),
                "{addr}: {v:?}"
            );
        }
        assert_eq!(door(&send(peer("8.8.8.8:9"))), Verdict::Pass);
    }

    #[test]
    fn wrong_credentials_get_401_with_realm_and_nonce() {
        for method in [
            METHOD_ALLOCATE,
            stun::message::METHOD_REFRESH,
            METHOD_CREATE_PERMISSION,
            METHOD_CHANNEL_BIND,
        ] {
            let p = signed(method, vec![peer("8.8.8.8:9")], b"not-the-secret");
            let (r, code) = answer(door(&p));
            assert_eq!(code, 401, "{method}");
            assert_eq!(r.typ, MessageType::new(method, CLASS_ERROR_RESPONSE));
            let realm = r.get(stun::attributes::ATTR_REALM).expect("REALM");
            assert_eq!(realm, REALM.as_bytes());
            assert!(r.get(stun::attributes::ATTR_NONCE).is_ok(), "NONCE");
            // The right credentials pass on to the server.
            let p = signed(method, vec![peer("8.8.8.8:9")], b"s");
            assert_eq!(door(&p), Verdict::Pass, "{method}");
        }
    }

    #[test]
    fn refused_peers_get_a_signed_403() {
        for method in [METHOD_CREATE_PERMISSION, METHOD_CHANNEL_BIND] {
            for addr in [
                "127.0.0.1:9",
                "0.0.0.0:9",
                "[::ffff:10.0.0.1]:9",
                "[fe80::1]:9",
            ] {
                let (mut r, code) = answer(door(&signed(method, vec![peer(addr)], b"s")));
                assert_eq!(code, 403, "{addr}");
                assert_eq!(r.typ, MessageType::new(method, CLASS_ERROR_RESPONSE));
                key(b"s", USER)
                    .check(&mut r)
                    .expect("signed with the user's key");
            }
            // One refused peer among allowed ones refuses the request.
            let p = signed(method, vec![peer("8.8.8.8:9"), peer("10.0.0.1:9")], b"s");
            assert_eq!(answer(door(&p)).1, 403);
        }
        let public = signed(METHOD_CREATE_PERMISSION, vec![peer("8.8.8.8:9")], b"s");
        assert_eq!(door(&public), Verdict::Pass);
        let mut m = Message::new();
        m.build(&[
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_CREATE_PERMISSION, CLASS_REQUEST)),
            peer("127.0.0.1:9"),
            Box::new(Username::new(ATTR_USERNAME, USER.to_owned())),
        ])
        .unwrap();
        assert_eq!(
            door(&m.raw),
            Verdict::Pass,
            "the server asks for credentials"
        );
    }

    #[test]
    fn answers_to_a_user_are_signed_with_their_own_secret() {
        // The user's allocation outlived a rotation: their key is still the old secret's.
        let secret_for = |user: &str| -> Arc<[u8]> {
            if user == USER {
                Arc::from(&b"old"[..])
            } else {
                Arc::from(&b"new"[..])
            }
        };
        let policy = PeerPolicy::new(&[], &[]);
        let p = signed(METHOD_CREATE_PERMISSION, vec![peer("127.0.0.1:9")], b"old");
        let (mut r, code) = answer(judge(&p, &policy, REALM, NOW, secret_for));
        assert_eq!(code, 403);
        key(b"old", USER)
            .check(&mut r)
            .expect("signed with the old secret");
        let p = signed(METHOD_CREATE_PERMISSION, vec![peer("127.0.0.1:9")], b"new");
        assert_eq!(answer(judge(&p, &policy, REALM, NOW, secret_for)).1, 401);

        let p = signed(METHOD_ALLOCATE, vec![], b"old");
        let mut r = Message::new();
        r.unmarshal_binary(&quota_reached(&p, b"old").unwrap())
            .unwrap();
        let mut code = ErrorCodeAttribute::default();
        code.get_from(&r).unwrap();
        assert_eq!(code.code.0, 486);
        key(b"old", USER)
            .check(&mut r)
            .expect("signed with the given secret");
    }

    #[test]
    fn expired_or_foreign_usernames_get_401() {
        let policy = PeerPolicy::new(&[], &[]);
        let secret = |_: &str| -> Arc<[u8]> { Arc::from(&b"s"[..]) };
        let p = signed(METHOD_ALLOCATE, vec![], b"s");
        // USER expires at 4000000000.
        assert_eq!(
            answer(judge(&p, &policy, REALM, 4_000_000_000, secret)).1,
            401
        );
        assert_eq!(
            judge(&p, &policy, REALM, 3_999_999_999, secret),
            Verdict::Pass
        );
    }

    #[test]
    fn requests_without_full_credentials_are_left_to_the_server() {
        // No MESSAGE-INTEGRITY: the server answers 401 with a nonce. MESSAGE-INTEGRITY
        // without USERNAME, REALM or NONCE: the server answers 400.
        let mut m = Message::new();
        m.build(&[
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
        ])
        .unwrap();
        assert_eq!(door(&m.raw), Verdict::Pass);
        let mut m = Message::new();
        m.build(&[
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
            Box::new(Username::new(ATTR_USERNAME, USER.to_owned())),
            Box::new(key(b"wrong", USER)),
        ])
        .unwrap();
        assert_eq!(door(&m.raw), Verdict::Pass);
        assert_eq!(
            allocate_request(&m.raw),
            None,
            "not counted: not authenticated"
        );
    }

    #[test]
    fn garbage_passes_to_the_server_untouched() {
        for p in [&b""[..], &[0u8; 19], &[0x40, 0, 0, 4, 1, 2, 3, 4]] {
            assert_eq!(door(p), Verdict::Pass);
        }
    }

    /// Found by fuzzing (SECURITY.md, turn-top-bits): a signed request with a top type bit
    /// set was passed as "not STUN", yet the `turn` crate decodes it as STUN and installed a
    /// permission to a refused peer. Neither STUN nor ChannelData: dropped.
    #[test]
    fn packets_with_the_top_bits_set_are_dropped() {
        let mut p = signed(METHOD_CREATE_PERMISSION, vec![peer("127.0.0.1:9")], b"s");
        for top in [0x80, 0xC0] {
            p[0] |= top;
            assert_eq!(
                door(&p),
                Verdict::Refuse {
                    response: Vec::new(),
                    reason: "malformed"
                }
            );
        }
        assert!(matches!(door(&[0xffu8; 64]), Verdict::Refuse { .. }));
    }

    /// Truncations and bit flips of real requests: judged without a panic.
    #[test]
    fn mangled_requests_never_panic() {
        let seeds = [
            signed(METHOD_CREATE_PERMISSION, vec![peer("8.8.8.8:9")], b"s"),
            signed(METHOD_CHANNEL_BIND, vec![peer("[2001:4860::1]:9")], b"s"),
            send(peer("8.8.8.8:9")),
        ];
        for seed in seeds {
            for cut in 0..seed.len() {
                let _ = door(&seed[..cut]);
            }
            for i in 20..seed.len() {
                for bit in 0..8 {
                    let mut p = seed.clone();
                    p[i] ^= 1 << bit;
                    let _ = door(&p);
                }
            }
        }
    }
}
