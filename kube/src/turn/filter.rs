//! The relay's front door (pure): every packet the TURN server would read is judged first.
//! A CreatePermission or ChannelBind (RFC 8656 §9, §11) naming a refused peer is answered
//! here with 403 Forbidden, signed like any answer to an authenticated request, and never
//! reaches the server, so no permission to such a peer can exist and nothing is relayed to
//! it. Everything else passes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use stun::attributes::{ATTR_USERNAME, ATTR_XOR_PEER_ADDRESS};
use stun::error_code::{CODE_ALLOC_QUOTA_REACHED, CODE_FORBIDDEN, ErrorCodeAttribute};
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, METHOD_ALLOCATE,
    METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, Message, MessageType, Setter,
};

use super::policy::PeerPolicy;

/// What to do with one incoming packet.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Pass,
    /// Answer with `response` and drop the request; `reason` is the refused range.
    Refuse {
        response: Vec<u8>,
        reason: &'static str,
    },
}

/// The STUN magic cookie (RFC 8489 §5).
const COOKIE: u32 = 0x2112_A442;

pub fn judge(packet: &[u8], policy: &PeerPolicy, realm: &str, secret: &[u8]) -> Verdict {
    // ChannelData and anything not STUN pass: the server drops what it cannot use.
    let Some(m) = decode(packet) else {
        return Verdict::Pass;
    };
    if m.typ.class != CLASS_REQUEST
        || (m.typ.method != METHOD_CREATE_PERMISSION && m.typ.method != METHOD_CHANNEL_BIND)
    {
        return Verdict::Pass;
    }
    let refused = m
        .attributes
        .0
        .iter()
        .filter(|a| a.typ == ATTR_XOR_PEER_ADDRESS)
        .filter_map(|a| xor_address(&a.value, &m.transaction_id.0))
        .find_map(|ip| policy.refused(ip));
    let Some(reason) = refused else {
        return Verdict::Pass;
    };
    // Without a username the server asks for credentials first (401); let it.
    let Ok(username) = m
        .get(ATTR_USERNAME)
        .map(|u| String::from_utf8_lossy(&u).into_owned())
    else {
        return Verdict::Pass;
    };
    // Should an answer not be signable, the request is still refused, silently.
    let response = error_response(&m, CODE_FORBIDDEN, b"Forbidden", username, realm, secret)
        .unwrap_or_default();
    Verdict::Refuse { response, reason }
}

fn decode(packet: &[u8]) -> Option<Message> {
    if packet.len() < 20 || packet[0] & 0xC0 != 0 {
        return None;
    }
    let mut m = Message::new();
    m.unmarshal_binary(packet).ok()?;
    Some(m)
}

/// An Allocate request with a username: its transaction id and the user.
pub fn allocate_request(packet: &[u8]) -> Option<([u8; 12], String)> {
    let m = decode(packet)?;
    if m.typ != MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST) {
        return None;
    }
    let user = m.get(ATTR_USERNAME).ok()?;
    Some((
        m.transaction_id.0,
        String::from_utf8_lossy(&user).into_owned(),
    ))
}

/// An answer to an Allocate: its transaction id, and whether it succeeded.
pub fn allocate_answer(packet: &[u8]) -> Option<([u8; 12], bool)> {
    let m = decode(packet)?;
    if m.typ.method != METHOD_ALLOCATE || m.typ.class == CLASS_REQUEST {
        return None;
    }
    Some((m.transaction_id.0, m.typ.class == CLASS_SUCCESS_RESPONSE))
}

/// 486 Allocation Quota Reached (RFC 8656 §7.2) for an Allocate request, signed.
pub fn quota_reached(packet: &[u8], realm: &str, secret: &[u8]) -> Option<Vec<u8>> {
    let m = decode(packet)?;
    let username = String::from_utf8_lossy(&m.get(ATTR_USERNAME).ok()?).into_owned();
    error_response(
        &m,
        CODE_ALLOC_QUOTA_REACHED,
        b"Allocation Quota Reached",
        username,
        realm,
        secret,
    )
}

fn error_response(
    m: &Message,
    code: stun::error_code::ErrorCode,
    reason: &[u8],
    username: String,
    realm: &str,
    secret: &[u8],
) -> Option<Vec<u8>> {
    let password = signal::ice::password(secret, &username);
    let mut response = Message::new();
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(m.transaction_id),
        Box::new(MessageType::new(m.typ.method, CLASS_ERROR_RESPONSE)),
        Box::new(ErrorCodeAttribute {
            code,
            reason: reason.to_vec(),
        }),
        Box::new(MessageIntegrity::new_long_term_integrity(
            username,
            realm.to_owned(),
            password,
        )),
        Box::new(FINGERPRINT),
    ];
    response.build(&setters).ok()?;
    Some(response.raw)
}

/// Decodes an XOR-PEER-ADDRESS value (RFC 8489 §14.2).
fn xor_address(v: &[u8], txid: &[u8; 12]) -> Option<IpAddr> {
    let cookie = COOKIE.to_be_bytes();
    match (v.get(1)?, v.len()) {
        (0x01, 8) => {
            let b: [u8; 4] = std::array::from_fn(|i| v[4 + i] ^ cookie[i]);
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        (0x02, 20) => {
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
    use stun::agent::TransactionId;
    use stun::message::Getter;
    use stun::textattrs::Username;
    use turn::proto::peeraddr::PeerAddress;

    fn request(method: stun::message::Method, peer: SocketAddr, user: Option<&str>) -> Vec<u8> {
        let mut m = Message::new();
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(method, CLASS_REQUEST)),
            Box::new(PeerAddress {
                ip: peer.ip(),
                port: peer.port(),
            }),
        ];
        if let Some(u) = user {
            setters.push(Box::new(Username::new(ATTR_USERNAME, u.to_owned())));
        }
        m.build(&setters).unwrap();
        m.raw
    }

    #[test]
    fn refused_peers_get_a_signed_403() {
        let policy = PeerPolicy::new(&[], &[]);
        for method in [METHOD_CREATE_PERMISSION, METHOD_CHANNEL_BIND] {
            for peer in ["127.0.0.1:9", "[::ffff:10.0.0.1]:9", "[fe80::1]:9"] {
                let p = request(method, peer.parse().unwrap(), Some("1:alice"));
                let Verdict::Refuse { response, .. } = judge(&p, &policy, "kube.test", b"s") else {
                    panic!("{peer} passed");
                };
                let mut r = Message::new();
                r.unmarshal_binary(&response).unwrap();
                assert_eq!(r.typ, MessageType::new(method, CLASS_ERROR_RESPONSE));
                let mut code = ErrorCodeAttribute::default();
                code.get_from(&r).unwrap();
                assert!(code.code == CODE_FORBIDDEN, "403");
                let mi = MessageIntegrity::new_long_term_integrity(
                    "1:alice".into(),
                    "kube.test".into(),
                    signal::ice::password(b"s", "1:alice"),
                );
                mi.check(&mut r).expect("signed with the user's key");
            }
        }
        let public = request(
            METHOD_CREATE_PERMISSION,
            "8.8.8.8:9".parse().unwrap(),
            Some("1:alice"),
        );
        assert_eq!(judge(&public, &policy, "kube.test", b"s"), Verdict::Pass);
        let anonymous = request(
            METHOD_CREATE_PERMISSION,
            "127.0.0.1:9".parse().unwrap(),
            None,
        );
        assert_eq!(
            judge(&anonymous, &policy, "kube.test", b"s"),
            Verdict::Pass,
            "the server asks for credentials"
        );
    }

    #[test]
    fn garbage_passes_to_the_server_untouched() {
        let policy = PeerPolicy::new(&[], &[]);
        for p in [
            &b""[..],
            &[0u8; 19],
            &[0x40, 0, 0, 4, 1, 2, 3, 4],
            &[0xffu8; 64],
        ] {
            assert_eq!(judge(p, &policy, "r", b"s"), Verdict::Pass);
        }
    }
}
