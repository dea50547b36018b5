//! Fuzz targets for the parsers of network bytes that live in the `kube` binary: a DNS
//! query through the answer path and the answer cache, the TURN front door, app bundle
//! uploads, and app names. Ignored by `cargo test`; `bench/fuzz/run` runs them in an
//! optimized build with `PROPTEST_CASES` cases each (SECURITY.md records the results).
//!
//! Each target mixes arbitrary bytes with valid messages under byte-level mutations (flips,
//! overwrites, insertions, deletions, truncations, repeats), which reach far deeper than
//! random bytes, and asserts more than "no panic" where a cheap invariant exists.

use std::net::IpAddr;

use proptest::prelude::*;

/// Whether a known finding (SECURITY.md) is masked: `FUZZ_MASK=id,id` looks past it for
/// others. Unmasked, a known finding fails its target until it is fixed.
fn masked(id: &str) -> bool {
    std::env::var("FUZZ_MASK").is_ok_and(|v| v.split(',').any(|m| m == id))
}

#[path = "../../bench/fuzz/mutate.rs"]
mod mutations;
use mutations::config;
use mutations::{Mutation, mutate};

/// Overwrites favour these bytes (the format's delimiters and edges).
const SPECIAL: &[u8] = &[0, 0xff, 0x7f, 0x80, 0x01, 0x40];

fn bytes_from(templates: Vec<Vec<u8>>, max_random: usize) -> impl Strategy<Value = Vec<u8>> {
    mutations::bytes_from(templates, max_random, SPECIAL)
}

fn mutation() -> impl Strategy<Value = Mutation> {
    mutations::mutation(SPECIAL)
}

// ---------------------------------------------------------------- DNS

mod dns {
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{DNSClass, Name, RecordType};

    use crate::dns::answer::{Transport, answer};
    use crate::dns::cache::{Entry, plain};
    use crate::dns::zone::{Zone, ZoneInput};

    pub const MAX_UDP: u16 = 1232;

    pub fn zone(per_app: bool) -> Zone {
        let mut section = config::Dns {
            addresses: vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
            caa: vec!["letsencrypt.org".into()],
            ..config::Dns::default()
        };
        if per_app {
            section.app_hosts = config::AppHosts::PerApp;
        }
        let record = |name: &str, kind: &str, value: &str| config::DnsRecord {
            name: name.into(),
            kind: kind.into(),
            value: value.into(),
            ttl: None,
        };
        section.records.push(record("www", "CNAME", "example.com."));
        section
            .records
            .push(record("@", "MX", "10 mail.example.com."));
        section.records.push(record("mail", "A", "192.0.2.25"));
        section
            .records
            .push(record("_sip._udp", "SRV", "0 5 5060 sip.example.com."));
        section
            .records
            .push(record("deep.a.b", "TXT", "\"empty non-terminals above\""));
        for i in 0..40 {
            section.records.push(record(
                "big",
                "TXT",
                &format!("\"{i:02}-{}\"", "x".repeat(60)),
            ));
        }
        Zone::build(&ZoneInput {
            domain: "example.com",
            section: &section,
            apps: &["notes".to_owned(), "chat".to_owned()],
            runtime: &[],
            serial: 7,
        })
        .expect("the fuzz zone is valid")
    }

    fn query(name: &str, t: RecordType, edns: Option<u16>, id: u16) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = id;
        m.metadata.recursion_desired = id.is_multiple_of(2);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        if let Some(p) = edns {
            let mut e = Edns::new();
            e.set_max_payload(p);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    pub fn templates() -> Vec<Vec<u8>> {
        let names = [
            "example.com.",
            "www.example.com.",
            "big.example.com.",
            "NoTeS.Example.COM.",
            "x.y.example.com.",
            "a.b.example.com.",
            "_sip._udp.example.com.",
            "ns1.example.com.",
            "nope.example.org.",
            ".",
        ];
        let types = [
            RecordType::A,
            RecordType::AAAA,
            RecordType::TXT,
            RecordType::MX,
            RecordType::SRV,
            RecordType::CAA,
            RecordType::NS,
            RecordType::SOA,
            RecordType::ANY,
            RecordType::CNAME,
            RecordType::AXFR,
            RecordType::HTTPS,
        ];
        let edns = [None, Some(512), Some(1232), Some(4096), Some(65535)];
        let mut out = Vec::new();
        let mut id = 0u16;
        for (i, name) in names.iter().enumerate() {
            for (j, t) in types.iter().enumerate() {
                if (i + j) % 3 == 0 {
                    id = id.wrapping_add(0x1357);
                    out.push(query(name, *t, edns[(i + j) % edns.len()], id));
                }
            }
        }
        // An EDNS COOKIE option (RFC 7873) in the OPT record: 8 bytes of client cookie.
        let mut cookie = query("example.com.", RecordType::A, Some(1232), 9);
        let n = cookie.len();
        cookie[n - 2..].copy_from_slice(&12u16.to_be_bytes());
        cookie.extend_from_slice(&[0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
        out.push(cookie);
        // EDNS version 1, DO set.
        let mut m = Message::query();
        m.add_query(Query::query(
            Name::from_ascii("example.com.").unwrap(),
            RecordType::A,
        ));
        let mut e = Edns::new();
        e.set_max_payload(1232).set_version(1).set_dnssec_ok(true);
        m.set_edns(e);
        out.push(m.to_vec().unwrap());
        // Two questions; NOTIFY; a response; class CH.
        let mut m = Message::query();
        for n in ["example.com.", "www.example.com."] {
            m.add_query(Query::query(Name::from_ascii(n).unwrap(), RecordType::A));
        }
        out.push(m.to_vec().unwrap());
        let mut m = Message::query();
        m.metadata.op_code = OpCode::Notify;
        m.add_query(Query::query(
            Name::from_ascii("example.com.").unwrap(),
            RecordType::SOA,
        ));
        out.push(m.to_vec().unwrap());
        let mut m = Message::query();
        m.metadata.message_type = MessageType::Response;
        m.add_query(Query::query(
            Name::from_ascii("example.com.").unwrap(),
            RecordType::A,
        ));
        out.push(m.to_vec().unwrap());
        let mut q = Query::query(Name::from_ascii("version.bind.").unwrap(), RecordType::TXT);
        q.set_query_class(DNSClass::CH);
        let mut m = Message::query();
        m.add_query(q);
        out.push(m.to_vec().unwrap());
        // A compressed question name (a pointer back into the header: not plain).
        let mut p = query("example.com.", RecordType::A, None, 3);
        p.truncate(12);
        p.extend_from_slice(&[3, b'w', b'w', b'w', 0xc0, 12, 0, 1, 0, 1]);
        out.push(p);
        out
    }

    /// Where the question name ends (after its root label), as `cache::plain` reads it.
    fn name_end(packet: &[u8]) -> Option<usize> {
        let mut at = 12;
        loop {
            let len = usize::from(*packet.get(at)?);
            at += 1;
            if len == 0 {
                return Some(at);
            }
            at += len;
        }
    }

    /// Another query with the same cache key: other id, RD, CD, name case, DO bit, EDNS
    /// options and payload within the same limit, as `variant`'s bits say.
    fn twin(packet: &[u8], variant: u8) -> Vec<u8> {
        let mut t = packet.to_vec();
        let end = name_end(&t).expect("a plain query has a name");
        if variant & 1 != 0 {
            t[0] ^= 0x5a;
            t[1] ^= 0xa5;
        }
        if variant & 2 != 0 {
            t[2] ^= 0x01;
        }
        if variant & 4 != 0 {
            t[3] ^= 0x10;
        }
        if variant & 8 != 0 {
            // Length bytes are at most 63, below every ASCII letter.
            for b in &mut t[12..end] {
                if b.is_ascii_alphabetic() {
                    *b ^= 0x20;
                }
            }
        }
        let opt = end + 4;
        if t.len() >= opt + 11 {
            if variant & 16 != 0 {
                t[opt + 7] ^= 0x80;
            }
            if variant & 32 != 0 {
                t.truncate(opt + 11);
                t[opt + 9] = 0;
                t[opt + 10] = 0;
            }
            if variant & 64 != 0 {
                let payload = u16::from_be_bytes([t[opt + 3], t[opt + 4]]);
                let other: u16 = if payload <= 512 {
                    0
                } else if payload >= MAX_UDP {
                    u16::MAX
                } else {
                    payload
                };
                t[opt + 3..opt + 5].copy_from_slice(&other.to_be_bytes());
            }
        }
        t
    }

    /// Checks one packet; `Err` says which invariant broke.
    pub fn check(zone: &Zone, packet: &[u8], tcp: bool, variant: u8) -> Result<(), String> {
        let transport = if tcp { Transport::Tcp } else { Transport::Udp };
        let full = answer(zone, packet, transport, MAX_UDP);
        let encoded = match &full {
            Ok(a) => {
                let bytes = a.encode();
                if let Some(b) = &bytes {
                    let m = Message::from_vec(b)
                        .map_err(|e| format!("our answer does not parse: {e}"))?;
                    if m.metadata.id != u16::from_be_bytes([packet[0], packet[1]]) {
                        return Err("the answer's id is not the query's".into());
                    }
                    if m.metadata.message_type != MessageType::Response
                        || m.metadata.recursion_available
                    {
                        return Err("an answer must be a response with RA clear".into());
                    }
                    if !tcp && b.len() > usize::from(MAX_UDP) {
                        return Err(format!("{} bytes over UDP, limit {MAX_UDP}", b.len()));
                    }
                }
                if let Some(t) = a.encode_truncated() {
                    Message::from_vec(&t)
                        .map_err(|e| format!("the truncated answer does not parse: {e}"))?;
                }
                bytes
            }
            Err(_) => None,
        };
        // The cache: an answer computed for a twin query (same key) and refitted to this
        // one must equal the answer computed for this one.
        let Some(p) = plain(packet, transport, MAX_UDP) else {
            return Ok(());
        };
        let t = twin(packet, variant);
        let tp = plain(&t, transport, MAX_UDP).ok_or("the twin of a plain query is not plain")?;
        if tp.key != p.key {
            return Err("the twin has another cache key".into());
        }
        let twin_answer = answer(zone, &t, transport, MAX_UDP);
        match (&full, &twin_answer) {
            (Ok(_), Ok(ta)) => {
                let (Some(mine), Some(tf), Some(tt)) =
                    (encoded, ta.encode(), ta.encode_truncated())
                else {
                    return Ok(());
                };
                let cached = Entry::new(tf, tt, ()).answer(&p, false);
                let cached = Message::from_vec(&cached)
                    .map_err(|e| format!("a cached answer does not parse: {e}"))?;
                let computed = Message::from_vec(&mine).map_err(|e| e.to_string())?;
                if cached != computed {
                    return Err(format!(
                        "cached answer differs from computed one (twin {t:02x?}):\n{cached:?}\n{computed:?}"
                    ));
                }
            }
            (Err(_), Ok(_)) | (Ok(_), Err(_)) if super::masked("dns-cache-malformed") => {}
            (Err(e), Ok(_)) => {
                return Err(format!(
                    "plain query dropped by the full path ({e}) but its twin {t:02x?} is answered: \
                     once the twin's answer is cached, this packet gets it"
                ));
            }
            (Ok(_), Err(e)) => {
                return Err(format!(
                    "plain query answered but its twin {t:02x?} is dropped ({e}): \
                     once this answer is cached, the twin gets it"
                ));
            }
            (Err(_), Err(_)) => {}
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- TURN server

mod turn {
    use std::net::{IpAddr, SocketAddr};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use stun::attributes::*;
    use stun::integrity::MessageIntegrity;
    use stun::message::{
        CLASS_ERROR_RESPONSE, CLASS_INDICATION, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE,
        METHOD_ALLOCATE, METHOD_BINDING, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION,
        METHOD_REFRESH, METHOD_SEND, Message, MessageClass, MessageType, Method, Setter,
    };

    use crate::turn::policy::PeerPolicy;
    use crate::turn::server::{Action, Client, Meter, Now, Server, Settings, Transport};

    pub const REALM: &str = "kube.test";
    pub const SECRET: &[u8] = b"s";
    pub const NOW: u64 = 1_800_000_000;
    const COOKIE: u32 = 0x2112_A442;
    /// The nonce key of the fuzzed servers, so that generated requests carry a fresh nonce.
    const NONCE_KEY: [u8; 32] = [9; 32];

    pub const METHODS: [Method; 6] = [
        METHOD_CREATE_PERMISSION,
        METHOD_CHANNEL_BIND,
        METHOD_ALLOCATE,
        METHOD_REFRESH,
        METHOD_SEND,
        METHOD_BINDING,
    ];
    pub const CLASSES: [MessageClass; 4] = [
        CLASS_REQUEST,
        CLASS_INDICATION,
        CLASS_SUCCESS_RESPONSE,
        CLASS_ERROR_RESPONSE,
    ];
    /// Peers: refused ones in their many forms, KUBE's own address, public ones.
    pub const PEERS: [&str; 18] = [
        "127.0.0.1",
        "10.1.2.3",
        "10.0.0.0",
        "192.168.1.1",
        "169.254.169.254",
        "0.0.0.0",
        "100.64.0.1",
        "224.0.0.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "64:ff9b::a00:1",
        "93.184.216.34",
        "8.8.8.8",
        "1.1.1.1",
        "2001:4860:4860::8888",
    ];
    pub const USERS: [&[u8]; 5] = [
        b"4000000000:alice",
        b"1000:bob",
        b"nouser",
        b"",
        b"\xff\xfe:x",
    ];

    struct NoMeter;
    impl Meter for NoMeter {
        fn refused(&self, _: &'static str) {}
        fn relayed(&self, _: bool, _: usize) {}
        fn dropped(&self) {}
        fn allocations(&self, _: usize) {}
    }

    fn now() -> Now {
        thread_local! {
            static BASE: Instant = Instant::now();
        }
        Now {
            at: BASE.with(|b| *b) + Duration::from_secs(1),
            unix: NOW,
        }
    }

    /// A server like KUBE's, with the fuzz targets' nonce key.
    fn bare_server() -> Server<u32> {
        let settings = Settings {
            realm: REALM.into(),
            secret: SECRET.into(),
            max_allocations: 10,
            max_per_user: 10,
            bytes_per_sec: 1 << 20,
            max_lifetime: Duration::from_secs(3600),
        };
        let mut s = Server::new(settings, policy(), false, Arc::new(NoMeter));
        s.set_nonce_key(NONCE_KEY);
        s
    }

    /// A server like KUBE's, with `alice` holding an allocation at `client()`.
    pub fn server() -> Server<u32> {
        let mut s = bare_server();
        let spec = Spec {
            method: 2,
            class: 0,
            top: 0,
            txid: [1; 12],
            attrs: vec![
                Attr::Transport(17),
                Attr::Username(0),
                Attr::Realm(true),
                Attr::Nonce,
            ],
            sign: 1,
            fingerprint: false,
        };
        let allocate = build(&spec);
        let step = s.on_client(client(), &allocate, now());
        let Action::Bind { id, .. } = step.action else {
            panic!("the fuzz server's Allocate was refused: {step:?}");
        };
        let relayed = SocketAddr::from(([93, 184, 216, 34], 50_000));
        s.allocated(id, &allocate, Some((7, relayed)), None, now())
            .expect("allocated");
        s
    }

    pub fn client() -> Client {
        Client {
            transport: Transport::Udp,
            addr: SocketAddr::from(([198, 51, 100, 1], 5000)),
            conn: 0,
        }
    }

    fn nonce() -> String {
        thread_local! {
            static NONCE: String = bare_server().nonce(now());
        }
        NONCE.with(Clone::clone)
    }

    pub fn policy() -> PeerPolicy {
        PeerPolicy::new(&[], &["93.184.216.34".parse().unwrap()])
    }

    /// An attribute of a generated message.
    #[derive(Clone, Debug)]
    pub enum Attr {
        /// XOR-PEER-ADDRESS: family word, peer (index into PEERS), port, and the value
        /// resized to `len` bytes when given (short ones are what the stun crate zero-fills).
        Peer {
            family: u16,
            peer: usize,
            port: u16,
            len: Option<u8>,
        },
        Username(usize),
        Realm(bool),
        Nonce,
        Channel(u16),
        Lifetime(u32),
        Transport(u8),
        Data(Vec<u8>),
        Other(u16, Vec<u8>),
    }

    /// A whole generated message: type (with the two top bits a STUN header must leave
    /// clear), transaction id, attributes, how it is signed, and a FINGERPRINT.
    #[derive(Clone, Debug)]
    pub struct Spec {
        pub method: usize,
        pub class: usize,
        pub top: u8,
        pub txid: [u8; 12],
        pub attrs: Vec<Attr>,
        /// 0: unsigned, 1: the user's REST key, 2: a key under another secret.
        pub sign: u8,
        pub fingerprint: bool,
    }

    fn peer_value(family: u16, ip: IpAddr, port: u16, txid: &[u8; 12]) -> Vec<u8> {
        let mut v = family.to_be_bytes().to_vec();
        v.extend_from_slice(&(port ^ (COOKIE >> 16) as u16).to_be_bytes());
        let key: Vec<u8> = COOKIE.to_be_bytes().iter().chain(txid).copied().collect();
        match ip {
            IpAddr::V4(a) => v.extend(a.octets().iter().zip(&key).map(|(a, k)| a ^ k)),
            IpAddr::V6(a) => v.extend(a.octets().iter().zip(&key).map(|(a, k)| a ^ k)),
        }
        v
    }

    fn text(attrs: &[Attr], user: bool) -> Option<String> {
        attrs.iter().find_map(|a| match a {
            Attr::Username(u) if user => Some(String::from_utf8_lossy(USERS[*u]).into_owned()),
            Attr::Realm(ok) if !user => Some(if *ok { REALM } else { "elsewhere" }.to_owned()),
            _ => None,
        })
    }

    pub fn build(s: &Spec) -> Vec<u8> {
        let mut m = Message::new();
        let typ = MessageType::new(METHODS[s.method], CLASSES[s.class]);
        let setters: Vec<Box<dyn Setter>> =
            vec![Box::new(stun::agent::TransactionId(s.txid)), Box::new(typ)];
        m.build(&setters).expect("a header always builds");
        for a in &s.attrs {
            match a {
                Attr::Peer {
                    family,
                    peer,
                    port,
                    len,
                } => {
                    let ip: IpAddr = PEERS[*peer].parse().expect("valid peer list");
                    let mut v = peer_value(*family, ip, *port, &s.txid);
                    if let Some(n) = len {
                        v.resize(usize::from(*n), 0x21);
                    }
                    m.add(ATTR_XOR_PEER_ADDRESS, &v);
                }
                Attr::Username(u) => m.add(ATTR_USERNAME, USERS[*u]),
                Attr::Realm(ok) => {
                    m.add(ATTR_REALM, if *ok { REALM } else { "elsewhere" }.as_bytes())
                }
                Attr::Nonce => m.add(ATTR_NONCE, nonce().as_bytes()),
                Attr::Channel(c) => m.add(
                    ATTR_CHANNEL_NUMBER,
                    &[&c.to_be_bytes()[..], &[0, 0]].concat(),
                ),
                Attr::Lifetime(l) => m.add(ATTR_LIFETIME, &l.to_be_bytes()),
                Attr::Transport(p) => m.add(ATTR_REQUESTED_TRANSPORT, &[*p, 0, 0, 0]),
                Attr::Data(d) => m.add(ATTR_DATA, d),
                Attr::Other(t, v) => m.add(AttrType(*t), v),
            }
        }
        // Bits 14 and 15 of the type word, which a STUN header must leave clear.
        m.raw[0] |= s.top << 6;
        if s.sign != 0 {
            let user = text(&s.attrs, true).unwrap_or_default();
            let realm = text(&s.attrs, false).unwrap_or_else(|| REALM.to_owned());
            let secret: &[u8] = if s.sign == 1 { SECRET } else { b"another" };
            let password = signal::ice::password(secret, &user);
            let _ = MessageIntegrity::new_long_term_integrity(user, realm, password).add_to(&mut m);
        }
        if s.fingerprint {
            let _ = stun::fingerprint::FINGERPRINT.add_to(&mut m);
        }
        m.raw
    }

    /// The error code of the fuzz server's answer to `packet` (0 for a success).
    pub fn answer_code(packet: &[u8]) -> u16 {
        let mut s = server();
        let r = s
            .on_client(client(), packet, now())
            .reply
            .expect("an answer");
        let m = stun_types::message::Message::from_bytes(&r).expect("an answer decodes");
        m.attribute::<stun_types::attribute::ErrorCode>()
            .map_or(0, |e| e.code())
    }

    /// A Send indication to `peer` and ChannelData on every channel a fuzzed ChannelBind
    /// could have bound; and a datagram from `peer` to the relay.
    fn probes(s: &mut Server<u32>, peer: IpAddr) -> Option<String> {
        let spec = Spec {
            method: 4,
            class: 1,
            top: 0,
            txid: [3; 12],
            attrs: vec![
                Attr::Peer {
                    family: if peer.is_ipv4() { 1 } else { 2 },
                    peer: PEERS.iter().position(|p| p.parse() == Ok(peer))?,
                    port: 9,
                    len: None,
                },
                Attr::Data(b"x".to_vec()),
            ],
            sign: 0,
            fingerprint: false,
        };
        let send = build(&spec);
        let mut packets = vec![send];
        for channel in [0x4000u16, 0x3fff, 0x4fff, 0x7ffe] {
            packets.push([&channel.to_be_bytes()[..], &[0, 1, b'x', 0]].concat());
        }
        for p in packets {
            if let Action::Relay { peer, .. } = s.on_client(client(), &p, now()).action
                && policy().refused(peer.ip()).is_some()
            {
                return Some(format!("relayed to the refused peer {peer}"));
            }
        }
        s.on_peer(1, SocketAddr::new(peer, 9), b"x", now())
            .map(|_| format!("relayed from the refused peer {peer}"))
    }

    /// One packet through the server holding an allocation: no panic, an answer is a
    /// response to the same transaction, and afterwards nothing is relayed to or from a
    /// refused peer (no permission or channel to one can exist).
    pub fn check(packet: &[u8], policy: &PeerPolicy) -> Result<(), String> {
        let mut s = server();
        let step = s.on_client(client(), packet, now());
        if let Some(r) = &step.reply {
            let m = stun_types::message::Message::from_bytes(r)
                .map_err(|e| format!("an answer does not decode: {e}"))?;
            if !m.class().is_response() || r[8..20] != packet[8..20] {
                return Err("an answer must be a response to the same transaction".into());
            }
        }
        if let Action::Relay { peer, .. } = &step.action
            && policy.refused(peer.ip()).is_some()
        {
            return Err(format!("relayed to the refused peer {peer}"));
        }
        for p in PEERS {
            let ip: IpAddr = p.parse().expect("valid peer list");
            if policy.refused(ip).is_some()
                && let Some(e) = probes(&mut s, ip)
            {
                return Err(e);
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- app bundles

mod bundle {
    use std::collections::BTreeSet;
    use std::io::Write;
    use std::path::{Path, PathBuf};

    use sha2::{Digest, Sha256};

    use crate::apps::AppStore;
    use crate::apps::bundle::Limits;

    pub const NAMES: [&[u8]; 24] = [
        b"index.html",
        b"./index.html",
        b"kube.app.json",
        b"a/b/c.js",
        b"a//b/./c.js",
        b"dir/",
        b".",
        b"",
        b"..",
        b"../x",
        b"a/../../etc/passwd",
        b"/etc/passwd",
        b"//x",
        b"a\\..\\b",
        b"x\x01y",
        b"\xff\xfe",
        b"caf\xc3\xa9.txt",
        b"a/./../b",
        b"...",
        b"a/..",
        b"blobs/../../outside",
        b".staging/x",
        b"current",
        b"versions/1.json",
    ];
    pub const KINDS: [u8; 14] = [
        b'0', b'\0', b'7', b'5', b'2', b'1', b'3', b'4', b'6', b'g', b'x', b'L', b'K', b'S',
    ];
    pub const APP_JSON: [&str; 6] = [
        r#"{"spa": true}"#,
        r#"{"headers": {"X-Frame-Options": "DENY"}}"#,
        r#"{"headers": {"Content-Type": "text/evil"}}"#,
        r#"{"headers": {"bad name": "x"}}"#,
        r#"{"headers": {"X-A": "line\nbreak"}}"#,
        r#"{"spa": 1, "unknown": true}"#,
    ];

    /// How an entry's name is written: in the header, as a GNU long name entry before it,
    /// as a pax `path` record before it, or split into the ustar prefix.
    #[derive(Clone, Debug)]
    pub struct Entry {
        pub name: usize,
        /// Appended to the name, to make it long (past the 100 bytes of the header).
        pub pad: u8,
        pub form: u8,
        pub kind: usize,
        pub data: Vec<u8>,
        /// The size field; `None` is the data's length.
        pub size: Option<u16>,
        pub link: usize,
    }

    fn octal(field: &mut [u8], v: u64) {
        let s = format!("{v:0w$o}\0", w = field.len() - 1);
        let b = s.as_bytes();
        let n = b.len().min(field.len());
        field[..n].copy_from_slice(&b[b.len() - n..]);
    }

    pub fn fix_checksum(h: &mut [u8]) {
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
    }

    fn header(name: &[u8], kind: u8, size: u64, link: &[u8], ustar_prefix: bool) -> [u8; 512] {
        let mut h = [0u8; 512];
        if ustar_prefix && name.len() > 100 {
            let split = name.len() - 100;
            let (prefix, rest) = name.split_at(split.min(155));
            h[..rest.len().min(100)].copy_from_slice(&rest[..rest.len().min(100)]);
            h[345..345 + prefix.len()].copy_from_slice(prefix);
        } else {
            let n = name.len().min(100);
            h[..n].copy_from_slice(&name[..n]);
        }
        octal(&mut h[100..108], 0o644);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], 0);
        h[156] = kind;
        let l = link.len().min(100);
        h[157..157 + l].copy_from_slice(&link[..l]);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        fix_checksum(&mut h);
        h
    }

    fn push(out: &mut Vec<u8>, h: [u8; 512], data: &[u8]) {
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    pub fn tar(entries: &[Entry], end: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for e in entries {
            let mut name = NAMES[e.name % NAMES.len()].to_vec();
            name.extend(std::iter::repeat_n(b'n', usize::from(e.pad)));
            let kind = KINDS[e.kind % KINDS.len()];
            let data: Vec<u8> = if NAMES[e.name % NAMES.len()] == b"kube.app.json" {
                APP_JSON[e.data.len() % APP_JSON.len()].as_bytes().to_vec()
            } else {
                e.data.clone()
            };
            let link = NAMES[e.link % NAMES.len()];
            match e.form % 4 {
                1 => {
                    let mut long = name.clone();
                    long.push(0);
                    push(
                        &mut out,
                        header(b"././@LongLink", b'L', long.len() as u64, b"", false),
                        &long,
                    );
                }
                2 => {
                    let body = |n: &[u8]| {
                        let mut rec = b" path=".to_vec();
                        rec.extend_from_slice(n);
                        rec.push(b'\n');
                        let mut len = rec.len() + 1;
                        while format!("{len}").len() + rec.len() != len {
                            len = format!("{len}").len() + rec.len();
                        }
                        let mut r = format!("{len}").into_bytes();
                        r.extend_from_slice(&rec);
                        r
                    };
                    let pax = body(&name);
                    push(
                        &mut out,
                        header(b"PaxHeader", b'x', pax.len() as u64, b"", false),
                        &pax,
                    );
                }
                _ => {}
            }
            let size = e.size.map_or(data.len() as u64, u64::from);
            push(
                &mut out,
                header(&name, kind, size, link, e.form % 4 == 3),
                &data,
            );
        }
        if end {
            out.extend_from_slice(&[0u8; 1024]);
        }
        out
    }

    pub fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(bytes).expect("writing to memory");
        gz.finish().expect("writing to memory")
    }

    /// The sandbox: `apps/` is the store's root; `outside/` must stay empty and nothing
    /// else may appear beside them.
    pub struct Sandbox {
        pub _dir: tempfile::TempDir,
        pub top: PathBuf,
        pub store: AppStore,
    }

    pub fn sandbox() -> Sandbox {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("a temp dir");
        let top = dir.path().to_owned();
        std::fs::create_dir(top.join("outside")).expect("the outside dir");
        let limits = Limits {
            max_bytes: 1 << 20,
            max_files: 8,
        };
        let store = AppStore::open(&top.join("apps"), limits, 2).expect("an empty store");
        Sandbox {
            _dir: dir,
            top,
            store,
        }
    }

    fn walk(dir: &Path, out: &mut Vec<(PathBuf, std::fs::Metadata)>) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let meta = std::fs::symlink_metadata(e.path())?;
            if meta.is_dir() {
                walk(&e.path(), out)?;
            }
            out.push((e.path(), meta));
        }
        Ok(())
    }

    fn clean(path: &str) -> bool {
        !path.is_empty()
            && !path.starts_with('/')
            && !path.chars().any(|c| c.is_control() || c == '\\')
            && path.split('/').all(|p| !matches!(p, "" | "." | ".."))
    }

    /// Publishes `upload` and checks what the store did.
    pub fn check(sb: &Sandbox, upload: &[u8]) -> Result<(), String> {
        let before = sb.store.list();
        let staging = sb.store.staging_dir().map_err(|e| e.to_string())?;
        let file = staging.join("upload.tar.gz");
        std::fs::write(&file, upload).map_err(|e| e.to_string())?;
        let result = sb.store.publish("fuzz", &file, 1_700_000_000);
        if staging.exists() {
            return Err("the staging dir survived the publish".into());
        }
        let top: BTreeSet<_> = std::fs::read_dir(&sb.top)
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        let expected: BTreeSet<_> = ["apps", "outside"].iter().map(Into::into).collect();
        if top != expected {
            return Err(format!("something was written beside the store: {top:?}"));
        }
        if std::fs::read_dir(sb.top.join("outside"))
            .map_err(|e| e.to_string())?
            .next()
            .is_some()
        {
            return Err("something was written outside the store".into());
        }
        let mut all = Vec::new();
        walk(&sb.top.join("apps"), &mut all).map_err(|e| e.to_string())?;
        for (p, meta) in &all {
            if !(meta.is_file() || meta.is_dir()) {
                return Err(format!("{} is neither a file nor a directory", p.display()));
            }
        }
        match result {
            Ok(manifest) => {
                for (path, f) in &manifest.files {
                    if !clean(path) {
                        return Err(format!("the manifest serves an unclean path {path:?}"));
                    }
                    let blob = sb.store.blob_path("fuzz", &f.hash);
                    let bytes = std::fs::read(&blob)
                        .map_err(|e| format!("{path:?}: its blob is missing: {e}"))?;
                    if bytes.len() as u64 != f.size || hex::encode(Sha256::digest(&bytes)) != f.hash
                    {
                        return Err(format!("{path:?}: the blob is not the file"));
                    }
                }
            }
            Err(_) => {
                let after = sb.store.list();
                let versions = |l: &[crate::apps::store::AppSummary]| {
                    l.iter()
                        .map(|a| (a.name.clone(), a.current, a.versions.len()))
                        .collect::<Vec<_>>()
                };
                if versions(&before) != versions(&after) {
                    return Err("a refused upload changed the store".into());
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- strategies

fn stun_spec() -> impl Strategy<Value = turn::Spec> {
    use turn::Attr;
    let attr = prop_oneof![
        4 => (
            prop_oneof![4 => Just(1u16), 4 => Just(2u16), 1 => any::<u16>()],
            0..turn::PEERS.len(),
            any::<u16>(),
            prop_oneof![3 => Just(None), 1 => (0u8..24).prop_map(Some)],
        )
            .prop_map(|(family, peer, port, len)| Attr::Peer {
                family,
                peer,
                port,
                len
            }),
        2 => (0..turn::USERS.len()).prop_map(Attr::Username),
        1 => any::<bool>().prop_map(Attr::Realm),
        1 => Just(Attr::Nonce),
        1 => prop_oneof![Just(0x4000u16), Just(0x3fff), any::<u16>()].prop_map(Attr::Channel),
        1 => any::<u32>().prop_map(Attr::Lifetime),
        1 => prop_oneof![Just(17u8), any::<u8>()].prop_map(Attr::Transport),
        1 => proptest::collection::vec(any::<u8>(), 0..16).prop_map(Attr::Data),
        1 => (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..12))
            .prop_map(|(t, v)| Attr::Other(t, v)),
    ];
    (
        0..turn::METHODS.len(),
        prop_oneof![4 => Just(0usize), 1 => 0..turn::CLASSES.len()],
        prop_oneof![6 => Just(0u8), 1 => 1u8..4],
        any::<[u8; 12]>(),
        proptest::collection::vec(attr, 0..6),
        prop_oneof![1 => Just(0u8), 4 => Just(1u8), 1 => Just(2u8)],
        any::<bool>(),
    )
        .prop_map(|(method, class, top, txid, mut attrs, sign, fingerprint)| {
            // Signed requests carry what a real client sends with its key.
            if sign != 0 {
                attrs.push(turn::Attr::Username(0));
                attrs.push(turn::Attr::Realm(true));
                attrs.push(turn::Attr::Nonce);
            }
            turn::Spec {
                method,
                class,
                top,
                txid,
                attrs,
                sign,
                fingerprint,
            }
        })
}

fn stun_packet() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..128),
        4 => stun_spec().prop_map(|s| turn::build(&s)),
        3 => (stun_spec(), proptest::collection::vec(mutation(), 1..6))
            .prop_map(|(s, ms)| mutate(turn::build(&s), &ms)),
    ]
}

fn tar_entry() -> impl Strategy<Value = bundle::Entry> {
    (
        0..bundle::NAMES.len(),
        prop_oneof![4 => Just(0u8), 1 => 1u8..200],
        0u8..4,
        prop_oneof![4 => Just(0usize), 2 => Just(3usize), 1 => 0..bundle::KINDS.len()],
        proptest::collection::vec(any::<u8>(), 0..64),
        prop_oneof![6 => Just(None), 1 => any::<u16>().prop_map(Some)],
        0..bundle::NAMES.len(),
    )
        .prop_map(|(name, pad, form, kind, data, size, link)| bundle::Entry {
            name,
            pad,
            form,
            kind,
            data,
            size,
            link,
        })
}

/// A `.tar.gz`: generated entries, then mutations of the tar (each mutated header gets
/// its checksum fixed, so the tar reader looks past it) or of the gzip stream.
fn upload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..256),
        6 => (
            proptest::collection::vec(tar_entry(), 0..6),
            any::<bool>(),
            proptest::collection::vec(mutation(), 0..4),
            any::<bool>(),
            proptest::collection::vec(mutation(), 0..3),
        )
            .prop_map(|(entries, end, tar_ms, fix, gz_ms)| {
                let mut t = bundle::tar(&entries, end);
                if !tar_ms.is_empty() {
                    t = mutate(t, &tar_ms);
                    if fix {
                        for h in t.chunks_exact_mut(512) {
                            if h.iter().any(|b| *b != 0) && &h[257..262] == b"ustar" {
                                bundle::fix_checksum(h);
                            }
                        }
                    }
                }
                mutate(bundle::gzip(&t), &gz_ms)
            }),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// A DNS query (UDP or TCP payload) through `dns::answer::answer` and the answer
    /// cache: no panic, answers parse, fit the UDP limit, keep id and RA clear; a cached
    /// answer equals the computed one for every query sharing its key.
    #[test]
    #[ignore = "fuzz: bench/fuzz/run"]
    fn fuzz_dns_answer(
        packet in bytes_from(dns::templates(), 512),
        tcp in any::<bool>(),
        per_app in any::<bool>(),
        variant in any::<u8>(),
    ) {
        thread_local! {
            static ZONES: [crate::dns::zone::Zone; 2] = [dns::zone(false), dns::zone(true)];
        }
        let r = ZONES.with(|z| dns::check(&z[usize::from(per_app)], &packet, tcp, variant));
        prop_assert!(r.is_ok(), "{} for packet {:02x?}", r.unwrap_err(), packet);
    }

    /// The TURN server (`turn::server`): no panic, answers are responses to the same
    /// transaction, and no packet makes a permission or channel to a refused peer.
    #[test]
    #[ignore = "fuzz: bench/fuzz/run"]
    fn fuzz_turn_server(packet in stun_packet()) {
        thread_local! {
            static POLICY: crate::turn::policy::PeerPolicy = turn::policy();
        }
        let r = POLICY.with(|p| turn::check(&packet, p));
        prop_assert!(r.is_ok(), "{} for packet {:02x?}", r.unwrap_err(), packet);
    }

    /// An uploaded `.tar.gz` through `AppStore::publish`: no panic, nothing written outside
    /// the store or left in staging, no links, only clean paths served, each blob its file.
    #[test]
    #[ignore = "fuzz: bench/fuzz/run"]
    fn fuzz_bundle_publish(upload in upload()) {
        thread_local! {
            static SANDBOX: bundle::Sandbox = bundle::sandbox();
        }
        let r = SANDBOX.with(|sb| bundle::check(sb, &upload));
        prop_assert!(r.is_ok(), "{} for upload {:02x?}", r.unwrap_err(), upload);
    }

    /// App names (from the admin API's URL): whatever `apps::check_name` accepts is one
    /// normal path component and a DNS label.
    #[test]
    #[ignore = "fuzz: bench/fuzz/run"]
    fn fuzz_app_name(name in prop_oneof![
        "\\PC{0,70}",
        "[a-z0-9.-]{0,70}",
        bytes_from(vec![b"notes".to_vec(), b"a-b".to_vec(), b"x".repeat(63)], 70)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]) {
        if crate::apps::check_name(&name).is_ok() {
            let parts: Vec<_> = std::path::Path::new(&name).components().collect();
            prop_assert!(
                matches!(parts[..], [std::path::Component::Normal(_)]),
                "{name:?} is not one path component"
            );
            prop_assert!(
                hickory_proto::rr::Name::from_ascii(format!("{name}.example.com.")).is_ok(),
                "{name:?} is not a DNS label"
            );
            prop_assert!(!name.starts_with('.'), "{name:?} is hidden");
        }
    }
}

/// Keeps the helpers honest: the templates and the TURN server model are what they claim.
#[test]
#[ignore = "fuzz: bench/fuzz/run"]
fn fuzz_templates_are_valid() {
    let zone = dns::zone(false);
    for t in dns::templates() {
        dns::check(&zone, &t, false, 0xff).unwrap();
    }
    let refused: IpAddr = "127.0.0.1".parse().unwrap();
    assert!(turn::policy().refused(refused).is_some());
    // A signed CreatePermission to 127.0.0.1 reaches the policy (a signed 403), and one to
    // a public peer is granted: the generated credentials and nonce are valid.
    for (peer, code) in [(0, 403), (15, 0)] {
        let spec = turn::Spec {
            method: 0,
            class: 0,
            top: 0,
            txid: [7; 12],
            attrs: vec![
                turn::Attr::Peer {
                    family: 1,
                    peer,
                    port: 9,
                    len: None,
                },
                turn::Attr::Username(0),
                turn::Attr::Realm(true),
                turn::Attr::Nonce,
            ],
            sign: 1,
            fingerprint: true,
        };
        let p = turn::build(&spec);
        assert_eq!(turn::answer_code(&p), code, "peer {}", turn::PEERS[peer]);
        turn::check(&p, &turn::policy()).unwrap();
    }
    let sb = bundle::sandbox();
    let entries = [bundle::Entry {
        name: 0,
        pad: 0,
        form: 0,
        kind: 0,
        data: b"<h1>hi</h1>".to_vec(),
        size: None,
        link: 0,
    }];
    let upload = bundle::gzip(&bundle::tar(&entries, true));
    bundle::check(&sb, &upload).unwrap();
    assert_eq!(sb.store.list()[0].current, 1, "a valid bundle publishes");
    let _ = mutate(
        vec![1, 2, 3],
        &[Mutation::Repeat(1, 5), Mutation::Flip(0, 7)],
    );
}
