//! STUN/TURN with coturn's own clients (`turnutils_uclient` relaying to `turnutils_peer`),
//! and a raw STUN client asking for a permission to each refused range, over every
//! transport KUBE serves TURN on: UDP and TCP on `turn.listen`, TLS on `turn.tls_listen`,
//! and TLS on the HTTPS port (ALPN `stun.turn`, or no ALPN and a STUN first byte).

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stun::attributes::{ATTR_REALM, ATTR_XOR_PEER_ADDRESS};
use stun::error_code::ErrorCodeAttribute;
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_REQUEST, Getter, METHOD_ALLOCATE, METHOD_CREATE_PERMISSION, Message, MessageType, Setter,
};
use stun::textattrs::{Nonce, Realm, Username};
use tests::pebble::free_port;
use tests::{Kube, Opts, require_tools};

pub(crate) const SECRET: &str = "s3cret";
/// How long any read from KUBE may take.
const WAIT: Duration = Duration::from_secs(5);

pub(crate) fn have_coturn() -> bool {
    let ok = Command::new("turnutils_uclient").arg("-h").output().is_ok();
    if !ok {
        assert!(
            !require_tools(),
            "turnutils_uclient is required (Debian package coturn)"
        );
        eprintln!("coturn's clients not installed: skipped");
    }
    ok
}

pub(crate) fn start(extra: &str) -> (Kube, SocketAddr) {
    let kube = Kube::start_with(Opts {
        config: Some(format!(
            "turn:\n  secret: {SECRET}\n  relay_port_min: 40000\n  relay_port_max: 49000\n{extra}"
        )),
        ..Default::default()
    })
    .unwrap_or_else(|log| panic!("kube did not start:\n{log}"));
    let turn = kube.ready_addr("turn").expect("turn= in the ready line");
    (kube, turn)
}

/// A KUBE serving TURN over TLS on a port of its own too (`turn.tls_listen`), besides UDP
/// and TCP on `turn.listen` and TLS on the HTTPS port.
fn start_all(extra: &str) -> Kube {
    // Not 127.0.0.1:0: `turn.listen` is that already, and the two must differ.
    let tls = format!("  tls_listen: 127.0.0.1:{}\n", free_port());
    start(&format!("{tls}{extra}")).0
}

/// How a client reaches KUBE's TURN server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Via {
    /// UDP on `turn.listen`.
    Udp,
    /// TCP on `turn.listen`'s port.
    Tcp,
    /// TLS on `turn.tls_listen` (which negotiates no ALPN).
    Tls,
    /// TLS on the HTTPS port, offering ALPN `stun.turn` (RFC 7443).
    Https,
    /// TLS on the HTTPS port, offering no ALPN: KUBE tells TURN from HTTP by the first byte.
    HttpsNoAlpn,
}

/// Every transport, for the raw client.
const EVERY: [Via; 5] = [Via::Udp, Via::Tcp, Via::Tls, Via::Https, Via::HttpsNoAlpn];
/// The stream transports.
const STREAMS: [Via; 4] = [Via::Tcp, Via::Tls, Via::Https, Via::HttpsNoAlpn];
/// What coturn's client speaks (it offers ALPN over TLS, so no `HttpsNoAlpn`).
const COTURN: [Via; 4] = [Via::Udp, Via::Tcp, Via::Tls, Via::Https];

/// Where `via` reaches `kube`'s TURN server.
fn addr(kube: &Kube, via: Via) -> SocketAddr {
    match via {
        Via::Udp | Via::Tcp => kube.ready_addr("turn").expect("turn= in the ready line"),
        Via::Tls => kube
            .ready_addr("turn-tls")
            .expect("turn-tls= in the ready line (turn.tls_listen is set)"),
        Via::Https | Via::HttpsNoAlpn => kube.https,
    }
}

/// Runs turnutils_uclient against `kube` over `via`, relaying to a turnutils_peer; returns
/// its output.
pub(crate) fn uclient(kube: &Kube, via: Via, auth: &[&str]) -> String {
    let transport: &[&str] = match via {
        Via::Udp => &[],
        Via::Tcp => &["-t"],
        // `-S` with `-t` is TLS (alone it would be DTLS, which KUBE does not offer).
        Via::Tls | Via::Https => &["-t", "-S"],
        Via::HttpsNoAlpn => panic!("coturn's client always offers ALPN over TLS"),
    };
    let turn = addr(kube, via);
    let peer_port = free_port();
    let mut peer = Command::new("turnutils_peer")
        .args(["-L", "127.0.0.1", "-p", &peer_port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("turnutils_peer");
    std::thread::sleep(Duration::from_millis(200));
    let out = Command::new("timeout")
        .args(["20", "turnutils_uclient"])
        .args(transport)
        .args(auth)
        .args([
            "-p",
            &turn.port().to_string(),
            "-e",
            "127.0.0.1",
            "-r",
            &peer_port.to_string(),
        ])
        .args(["-n", "20", "-m", "2", "-l", "200", "-y", "127.0.0.1"])
        .output()
        .expect("turnutils_uclient");
    let _ = peer.kill();
    let _ = peer.wait();
    // turnutils_uclient exits 0 even when it fails: its output says what happened.
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub(crate) fn received(out: &str) -> u64 {
    out.lines()
        .filter_map(|l| l.split("tot_recv_msgs=").nth(1))
        .filter_map(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .filter_map(|n| n.parse().ok())
        .max()
        .unwrap_or(0)
}

#[test]
fn coturn_client_relays_when_loopback_is_allowed() {
    if !have_coturn() {
        return;
    }
    let kube = start_all("  allow_peers: [127.0.0.0/8]\n");
    let mut relayed = 0;
    for via in COTURN {
        let out = uclient(&kube, via, &["-W", SECRET, "-u", "alice"]);
        assert!(
            out.contains("Total lost packets 0 (0.000000%)"),
            "{via:?}: {out}\n{}",
            kube.log()
        );
        assert_eq!(
            received(&out),
            80,
            "{via:?}: every message came back through the relay: {out}"
        );
        let m = kube.metrics_blocking();
        let now = counter(&m, "kube_turn_relayed_packets_total{direction=\"out\"}");
        assert!(now > relayed, "{via:?}: relayed out: {m}");
        relayed = now;
    }
}

#[test]
fn loopback_is_refused_by_default() {
    if !have_coturn() {
        return;
    }
    let kube = start_all("");
    let mut refused = 0;
    for via in COTURN {
        let out = uclient(&kube, via, &["-W", SECRET, "-u", "alice"]);
        assert!(out.contains("error 403"), "{via:?}: {out}");
        assert_eq!(received(&out), 0, "{via:?}: {out}");
        let m = kube.metrics_blocking();
        let now: u64 = m
            .lines()
            .filter(|l| l.starts_with("kube_turn_refused_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert!(now > refused, "{via:?}: refusals counted: {m}");
        refused = now;
    }
}

/// The value of one series in a Prometheus exposition (0 when absent).
fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// coturn's client is answered 401 (RFC 8489 §9.2.4): it retries with the nonce it was
/// given, then gives up. It prints no code, so KUBE's count of such answers shows them.
#[test]
fn wrong_or_expired_credentials_are_refused() {
    if !have_coturn() {
        return;
    }
    let kube = start_all("  allow_peers: [127.0.0.0/8]\n");
    let unauthenticated = "kube_turn_refused_total{reason=\"bad-credentials\"}";
    let expired_user = "1000:alice";
    let password = signal::ice::password(SECRET.as_bytes(), expired_user);
    let mut before = 0;
    for via in COTURN {
        let wrong = uclient(&kube, via, &["-W", "not-the-secret", "-u", "alice"]);
        assert_eq!(received(&wrong), 0, "{via:?}: {wrong}");
        assert!(
            wrong.contains("Cannot complete Allocation"),
            "{via:?}: {wrong}"
        );
        let after_wrong = counter(&kube.metrics_blocking(), unauthenticated);
        assert!(after_wrong > before, "{via:?}: 401 to a wrong password");
        let expired = uclient(&kube, via, &["-u", expired_user, "-w", &password]);
        assert_eq!(received(&expired), 0, "{via:?}: {expired}");
        assert!(
            expired.contains("Cannot complete Allocation"),
            "{via:?}: {expired}"
        );
        let after_expired = counter(&kube.metrics_blocking(), unauthenticated);
        assert!(
            after_expired > after_wrong,
            "{via:?}: 401 to an expired username"
        );
        before = after_expired;
    }
}

// ---- a raw STUN client ----

/// A TLS client trusting only `kube`'s CA, offering `alpn`.
fn tls_config(kube: &Kube, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&kube.ca_pem()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tcp_connect(to: SocketAddr) -> TcpStream {
    let tcp = TcpStream::connect_timeout(&to, WAIT).unwrap_or_else(|e| panic!("{to}: {e}"));
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    tcp.set_write_timeout(Some(WAIT)).unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp
}

/// A TLS connection to `to` for `localhost`, offering `alpn`, its handshake done.
fn tls_connect(kube: &Kube, to: SocketAddr, alpn: &[&[u8]]) -> Tls {
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(tls_config(kube, alpn), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp_connect(to));
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .unwrap_or_else(|e| panic!("TLS handshake with {to}: {e}"));
    }
    tls
}

/// One connection (or UDP socket) to the TURN server: STUN messages out, one message or
/// ChannelData frame in at a time (RFC 8656 §12.5 framing over streams).
enum Conn {
    Udp(UdpSocket, SocketAddr),
    Tcp(TcpStream),
    Tls(Box<Tls>),
}

impl Conn {
    fn open(kube: &Kube, via: Via) -> Conn {
        let to = addr(kube, via);
        match via {
            Via::Udp => {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.set_read_timeout(Some(WAIT)).unwrap();
                Conn::Udp(s, to)
            }
            Via::Tcp => Conn::Tcp(tcp_connect(to)),
            Via::Tls | Via::Https | Via::HttpsNoAlpn => {
                let offer: &[&[u8]] = if via == Via::Https {
                    &[b"stun.turn"]
                } else {
                    &[]
                };
                let tls = tls_connect(kube, to, offer);
                let want: Option<&[u8]> = offer.first().copied();
                assert_eq!(tls.conn.alpn_protocol(), want, "{via:?}: ALPN");
                Conn::Tls(Box::new(tls))
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        match self {
            Conn::Udp(s, to) => {
                s.send_to(bytes, *to).unwrap();
            }
            Conn::Tcp(s) => s.write_all(bytes).unwrap(),
            Conn::Tls(s) => {
                s.write_all(bytes).unwrap();
                s.flush().unwrap();
            }
        }
    }

    /// One datagram, or one frame read off the stream: the 4 bytes that tell its kind and
    /// length, then the rest (a STUN header's other 16 bytes and its body, or ChannelData
    /// and its padding, which is cut off).
    fn recv(&mut self) -> Vec<u8> {
        fn frame(r: &mut impl Read) -> Vec<u8> {
            let mut buf = vec![0u8; 4];
            r.read_exact(&mut buf).expect("a framed answer in time");
            let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
            let (rest, keep) = match buf[0] >> 6 {
                0 => (16 + len, 20 + len),
                1 => (len.next_multiple_of(4), 4 + len),
                _ => panic!("neither STUN nor ChannelData: {buf:02x?}"),
            };
            buf.resize(4 + rest, 0);
            r.read_exact(&mut buf[4..]).expect("the rest of the frame");
            buf.truncate(keep);
            buf
        }
        match self {
            Conn::Udp(s, _) => {
                let mut buf = vec![0u8; 1500];
                let (n, _) = s.recv_from(&mut buf).expect("an answer");
                buf.truncate(n);
                buf
            }
            Conn::Tcp(s) => frame(s),
            Conn::Tls(s) => frame(s),
        }
    }

    fn roundtrip(&mut self, setters: Vec<Box<dyn Setter>>) -> Message {
        let mut m = Message::new();
        m.build(&setters).unwrap();
        self.exchange(&m)
    }

    /// Sends request `m`; its answer.
    fn exchange(&mut self, m: &Message) -> Message {
        self.send(&m.raw);
        answer_to(m, &self.recv())
    }
}

/// `bytes` parsed as the answer to request `m`.
fn answer_to(m: &Message, bytes: &[u8]) -> Message {
    let mut r = Message::new();
    r.unmarshal_binary(bytes)
        .unwrap_or_else(|e| panic!("the answer to {m} is not STUN ({e}): {bytes:02x?}"));
    assert_eq!(r.transaction_id, m.transaction_id, "the answer to {m}: {r}");
    r
}

fn code(m: &Message) -> Option<u16> {
    let mut e = ErrorCodeAttribute::default();
    e.get_from(m).ok().map(|_| e.code.0)
}

fn transport() -> Box<turn::proto::reqtrans::RequestedTransport> {
    Box::new(turn::proto::reqtrans::RequestedTransport {
        protocol: turn::proto::PROTO_UDP,
    })
}

fn lifetime() -> Box<turn::proto::lifetime::Lifetime> {
    Box::new(turn::proto::lifetime::Lifetime(Duration::from_secs(600)))
}

/// A ChannelData message (RFC 8656 §12.4) as sent over a stream: padded to four bytes.
fn channel_data(channel: u16, data: &[u8]) -> Vec<u8> {
    let mut v = channel.to_be_bytes().to_vec();
    v.extend(u16::try_from(data.len()).unwrap().to_be_bytes());
    v.extend(data);
    v.resize(v.len().next_multiple_of(4), 0);
    v
}

/// An attribute exactly as given, as a hostile client would write it.
struct Raw(stun::attributes::AttrType, Vec<u8>);

impl Setter for Raw {
    fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
        m.add(self.0, &self.1);
        Ok(())
    }
}

/// An XOR-PEER-ADDRESS value (RFC 8489 §14.2) for an IPv4 `ip` and `port`, cut to the first
/// `len` address bytes, or padded with zeros to `len`.
fn xor_peer_v4(ip: [u8; 4], port: u16, len: usize) -> Vec<u8> {
    let cookie = 0x2112_A442u32.to_be_bytes();
    let mut v = vec![0, 1];
    v.extend((port ^ 0x2112).to_be_bytes());
    v.extend(ip.iter().zip(cookie).map(|(a, b)| a ^ b));
    v.resize(4 + len, 0);
    v
}

/// A client with long-term REST credentials for `name`, on its own UDP socket or
/// connection (over a stream, an allocation belongs to its connection).
struct Client {
    conn: RefCell<Conn>,
    user: String,
    password: String,
    realm: Realm,
    nonce: Nonce,
}

impl Client {
    fn new(kube: &Kube, via: Via, name: &str) -> Client {
        Client::with_secret(kube, via, name, SECRET)
    }

    fn with_secret(kube: &Kube, via: Via, name: &str, secret: &str) -> Client {
        let mut conn = Conn::open(kube, via);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let user = format!("{}:{name}", now.as_secs() + 600);
        let password = signal::ice::password(secret.as_bytes(), &user);
        // Unauthenticated first: the server names its realm and a nonce (RFC 8489 §9.2).
        let first = conn.roundtrip(vec![
            Box::new(stun::agent::TransactionId::new()),
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
            transport(),
        ]);
        assert_eq!(code(&first), Some(401), "{via:?}: {first}");
        let realm: Realm = stun::textattrs::TextAttribute::get_from_as(&first, ATTR_REALM).unwrap();
        let nonce: Nonce =
            stun::textattrs::TextAttribute::get_from_as(&first, stun::attributes::ATTR_NONCE)
                .unwrap();
        Client {
            conn: RefCell::new(conn),
            user,
            password,
            realm,
            nonce,
        }
    }

    /// Another client of the same user (the same credentials) on a new socket or
    /// connection over `via`.
    fn again(&self, kube: &Kube, via: Via) -> Client {
        Client {
            user: self.user.clone(),
            password: self.password.clone(),
            ..Client::new(kube, via, "unused")
        }
    }

    fn integrity(&self) -> MessageIntegrity {
        MessageIntegrity::new_long_term_integrity(
            self.user.clone(),
            self.realm.to_string(),
            self.password.clone(),
        )
    }

    fn ask(&self, method: stun::message::Method, extra: Vec<Box<dyn Setter>>) -> Message {
        let m = self.request(method, extra);
        self.conn.borrow_mut().exchange(&m)
    }

    /// A signed request, not sent.
    fn request(&self, method: stun::message::Method, extra: Vec<Box<dyn Setter>>) -> Message {
        let mut v: Vec<Box<dyn Setter>> = vec![
            Box::new(stun::agent::TransactionId::new()),
            Box::new(MessageType::new(method, CLASS_REQUEST)),
        ];
        v.extend(extra);
        v.push(Box::new(Username::new(
            stun::attributes::ATTR_USERNAME,
            self.user.clone(),
        )));
        v.push(Box::new(self.realm.clone()));
        v.push(Box::new(self.nonce.clone()));
        v.push(Box::new(self.integrity()));
        let mut m = Message::new();
        m.build(&v).unwrap();
        m
    }

    /// A Send indication (RFC 8656 §10) carrying `peer` as the raw XOR-PEER-ADDRESS value;
    /// indications get no answer.
    fn indicate(&self, peer: Vec<u8>, data: &[u8]) {
        let mut m = Message::new();
        m.build(&[
            Box::new(stun::agent::TransactionId::new()),
            Box::new(MessageType::new(
                stun::message::METHOD_SEND,
                stun::message::CLASS_INDICATION,
            )),
            Box::new(Raw(ATTR_XOR_PEER_ADDRESS, peer)),
            Box::new(turn::proto::data::Data(data.to_vec())),
        ])
        .unwrap();
        self.conn.borrow_mut().send(&m.raw);
    }

    fn allocate(&self) -> Message {
        self.ask(METHOD_ALLOCATE, vec![transport()])
    }

    fn refresh(&self) -> Message {
        self.ask(stun::message::METHOD_REFRESH, vec![lifetime()])
    }
}

/// A reload rotates the secret and raises the per-user limit; the allocation made before
/// keeps refreshing under the secret it was made with, new users need the new one.
#[test]
fn secret_and_limits_reload_without_dropping_allocations() {
    let (kube, _) = start("  max_allocations_per_user: 1\n");
    let alice = Client::new(&kube, Via::Udp, "alice");
    assert_eq!(code(&alice.allocate()), None);
    let file = kube.data_dir.parent().unwrap().join("kube.yml");
    std::fs::write(
        &file,
        "turn:\n  secret: rotated\n  relay_port_min: 40000\n  relay_port_max: 49000\n  max_allocations_per_user: 2\n",
    )
    .unwrap();
    let out = kube.cli(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("turn"),
        "{out:?}"
    );

    let r = alice.refresh();
    assert_eq!(code(&r), None, "the allocation made before refreshes: {r}");
    // Alice's credentials still work for a second allocation, now within her limit.
    let alice2 = alice.again(&kube, Via::Udp);
    assert_eq!(code(&alice2.allocate()), None, "per-user limit raised to 2");
    // A new user with the old secret is refused; with the new one it is served.
    let old = Client::new(&kube, Via::Udp, "bob");
    let refused = old.allocate();
    assert!(
        code(&refused).is_some_and(|c| (400..500).contains(&c)),
        "old secret, new user: {refused}"
    );
    let new = Client::with_secret(&kube, Via::Udp, "bob", "rotated");
    assert_eq!(code(&new.allocate()), None);
}

/// Every refused range, in CreatePermission and ChannelBind, over every transport: a 403
/// signed with the user's key.
#[test]
fn a_permission_to_each_refused_range_gets_403() {
    let kube = start_all("");
    for via in EVERY {
        let client = Client::new(&kube, via, "tester");
        let alloc = client.allocate();
        assert_eq!(code(&alloc), None, "{via:?}: allocated: {alloc}");
        for peer in [
            "0.0.0.1",
            "10.0.0.1",
            "10.1.2.3",
            "100.64.0.1",
            "127.0.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "192.0.0.1",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.1",
            "203.0.113.1",
            "240.0.0.1",
            "::1",
            "::",
            "64:ff9b::a00:1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:192.168.0.1",
            "::10.0.0.1",
            "64:ff9b:1::a00:1",
            "2001::1",
            "2001:db8::1",
            "2002:7f00:1::",
            "fec0::1",
        ] {
            let ip: std::net::IpAddr = peer.parse().unwrap();
            let addr = turn::proto::peeraddr::PeerAddress { ip, port: 9 };
            let mut r = client.ask(METHOD_CREATE_PERMISSION, vec![Box::new(addr)]);
            assert_eq!(code(&r), Some(403), "{via:?} {peer}: {r}");
            client
                .integrity()
                .check(&mut r)
                .unwrap_or_else(|e| panic!("{via:?} {peer}: the 403 is signed: {e}"));
            // ChannelBind names a peer too, and is refused the same way.
            let channel = turn::proto::channum::ChannelNumber(0x4000);
            let addr = turn::proto::peeraddr::PeerAddress { ip, port: 9 };
            let mut r = client.ask(
                stun::message::METHOD_CHANNEL_BIND,
                vec![Box::new(channel), Box::new(addr)],
            );
            assert_eq!(code(&r), Some(403), "{via:?} channel bind {peer}: {r}");
            client
                .integrity()
                .check(&mut r)
                .unwrap_or_else(|e| panic!("{via:?} channel bind {peer}: signed: {e}"));
        }
        // A public address is granted (the relay never sends to it in this test).
        let public = turn::proto::peeraddr::PeerAddress {
            ip: "8.8.8.8".parse().unwrap(),
            port: 9,
        };
        let r = client.ask(METHOD_CREATE_PERMISSION, vec![Box::new(public)]);
        assert_eq!(code(&r), None, "{via:?}: {r}");
    }
}

#[test]
fn allocations_are_bounded_per_user_and_in_total() {
    let (kube, _) = start("  max_allocations_per_user: 1\n  max_allocations: 2\n");
    let a1 = Client::new(&kube, Via::Udp, "alice");
    assert_eq!(code(&a1.allocate()), None);
    let a2 = Client::new(&kube, Via::Udp, "alice");
    assert_eq!(
        code(&a2.allocate()),
        Some(486),
        "a second allocation of the same user"
    );
    let b = Client::new(&kube, Via::Udp, "bob");
    assert_eq!(code(&b.allocate()), None);
    let c = Client::new(&kube, Via::Udp, "carol");
    let r = c.allocate();
    assert!(code(&r).is_some_and(|c| c >= 400), "over the total: {r}");
    let m = kube.metrics_blocking();
    assert!(
        m.contains("kube_turn_refused_total{reason=\"user-quota\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("kube_turn_refused_total{reason=\"total-quota\"} 1"),
        "{m}"
    );
    assert!(m.contains("kube_turn_allocations 2"), "{m}");
}

/// The per-user quota over each transport: a user's second allocation, on a connection of
/// its own (an allocation belongs to its 5-tuple), gets a signed 486; and the quota counts
/// a user's allocations over every transport together.
#[test]
fn the_per_user_quota_holds_over_every_transport() {
    let kube = start_all("  max_allocations_per_user: 1\n");
    for via in EVERY {
        let first = Client::new(&kube, via, &format!("{via:?}"));
        let r = first.allocate();
        assert_eq!(code(&r), None, "{via:?}: {r}");
        let second = first.again(&kube, via);
        let mut r = second.allocate();
        assert_eq!(code(&r), Some(486), "{via:?}: a second allocation: {r}");
        second
            .integrity()
            .check(&mut r)
            .unwrap_or_else(|e| panic!("{via:?}: the 486 is signed: {e}"));
        // The first allocation is still served on its own connection.
        let r = first.refresh();
        assert_eq!(code(&r), None, "{via:?}: refreshed: {r}");
    }
    // A user allocated over UDP has used their quota over streams too, and the other way.
    let udp = Client::new(&kube, Via::Udp, "both");
    assert_eq!(code(&udp.allocate()), None);
    for via in STREAMS {
        let r = udp.again(&kube, via).allocate();
        assert_eq!(code(&r), Some(486), "UDP, then {via:?}: {r}");
    }
    let tls = Client::new(&kube, Via::Tls, "either");
    assert_eq!(code(&tls.allocate()), None);
    let r = tls.again(&kube, Via::Udp).allocate();
    assert_eq!(code(&r), Some(486), "TLS, then UDP: {r}");
    let m = kube.metrics_blocking();
    assert_eq!(
        counter(&m, "kube_turn_refused_total{reason=\"user-quota\"}"),
        10,
        "{m}"
    );
}

/// The live allocations, from the gauge.
fn allocations(kube: &Kube) -> u64 {
    counter(&kube.metrics_blocking(), "kube_turn_allocations ")
}

/// Waits (bounded) until `kube` has `want` live allocations.
fn await_allocations(kube: &Kube, want: u64, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = allocations(kube);
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {now} allocations, not {want}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Over TCP or TLS an allocation belongs to its connection (RFC 8656 §3.1): when the
/// connection closes, the allocation ends, and the user's quota of one is free again.
#[test]
fn a_stream_clients_allocation_ends_with_its_connection() {
    let kube = start_all("  max_allocations_per_user: 1\n");
    // One allocation over UDP stays throughout: closing streams must not end it.
    let udp = Client::new(&kube, Via::Udp, "steady");
    assert_eq!(code(&udp.allocate()), None);
    await_allocations(&kube, 1, "the UDP allocation");
    for via in STREAMS {
        let first = Client::new(&kube, via, &format!("closing-{via:?}"));
        assert_eq!(code(&first.allocate()), None, "{via:?}");
        await_allocations(&kube, 2, &format!("{via:?}: allocated"));
        let second = first.again(&kube, via);
        assert_eq!(
            code(&second.allocate()),
            Some(486),
            "{via:?}: over the quota while the first connection is open"
        );
        drop(first);
        await_allocations(&kube, 1, &format!("{via:?}: the connection closed"));
        // The quota is free again: the same user allocates on the second connection.
        let r = second.allocate();
        assert_eq!(code(&r), None, "{via:?}: after the first closed: {r}");
        drop(second);
        await_allocations(&kube, 1, &format!("{via:?}: the second closed"));
    }
    assert_eq!(code(&udp.refresh()), None, "the UDP allocation lives on");
}

/// Stream framing (RFC 8656 §12.5): ChannelData padded to four bytes both ways, and STUN
/// messages and ChannelData back to back in one write, over every stream transport.
#[test]
fn stream_framing_pads_channel_data_and_reads_frames_back_to_back() {
    let kube = start_all("  allow_peers: [127.0.0.0/8]\n");
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(WAIT)).unwrap();
    let at = peer.local_addr().unwrap();
    let channel = 0x4001;
    for via in STREAMS {
        let client = Client::new(&kube, via, "framing");
        let r = client.allocate();
        assert_eq!(code(&r), None, "{via:?}: {r}");
        let mut relayed = turn::proto::relayaddr::RelayedAddress::default();
        relayed.get_from(&r).unwrap();
        let relayed = SocketAddr::new(relayed.ip, relayed.port);
        let peer_addr = turn::proto::peeraddr::PeerAddress {
            ip: at.ip(),
            port: at.port(),
        };
        let r = client.ask(
            stun::message::METHOD_CHANNEL_BIND,
            vec![
                Box::new(turn::proto::channum::ChannelNumber(channel)),
                Box::new(peer_addr),
            ],
        );
        assert_eq!(code(&r), None, "{via:?}: channel bound: {r}");
        // ChannelData of 5 bytes (3 of padding), a Refresh, ChannelData of 6 (2 of
        // padding): one write.
        let refresh = client.request(stun::message::METHOD_REFRESH, vec![lifetime()]);
        let mut bytes = channel_data(channel, b"hello");
        bytes.extend_from_slice(&refresh.raw);
        bytes.extend(channel_data(channel, b"again!"));
        client.conn.borrow_mut().send(&bytes);
        let r = answer_to(&refresh, &client.conn.borrow_mut().recv());
        assert_eq!(code(&r), None, "{via:?}: refreshed: {r}");
        let mut buf = [0u8; 64];
        for want in [&b"hello"[..], b"again!"] {
            let (n, from) = peer
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("{via:?}: relayed {want:?}: {e}"));
            assert_eq!((&buf[..n], from), (want, relayed), "{via:?}");
        }
        // 7 bytes from the peer come as ChannelData padded to 12: a frame short of its
        // padding would leave this read waiting (and time out).
        peer.send_to(b"7 bytes", relayed).unwrap();
        let frame = client.conn.borrow_mut().recv();
        assert_eq!(frame, channel_data(channel, b"7 bytes")[..11], "{via:?}");
        // And the next answer starts where the padding ended.
        assert_eq!(code(&client.refresh()), None, "{via:?}");
    }
}

/// HTTPS on the port TURN over TLS shares: browsers (ALPN h2 or http/1.1) get pages, and so
/// does a TLS client that offers no ALPN and speaks HTTP first.
#[test]
fn https_is_still_served_on_the_port_turn_shares() {
    let (kube, _) = start("");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = kube.client().get(kube.url("", "/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.version(), reqwest::Version::HTTP_2, "ALPN h2");
        let http1 = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&kube.ca_pem()).unwrap())
            .resolve("localhost", kube.https)
            .http1_only()
            .timeout(WAIT)
            .build()
            .unwrap();
        let r = http1.get(kube.url("", "/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.version(), reqwest::Version::HTTP_11, "ALPN http/1.1");
    });
    // No ALPN, and the first byte is a letter: HTTP/1.1.
    let mut tls = tls_connect(&kube, kube.https, &[]);
    assert_eq!(tls.conn.alpn_protocol(), None);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    tls.flush().unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + WAIT;
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") && Instant::now() < deadline {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => panic!("reading the HTTP answer: {e} (so far {answer:?})"),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    // And TURN is still served there, to a client that offers no ALPN.
    let turn = Client::new(&kube, Via::HttpsNoAlpn, "after-http");
    assert_eq!(code(&turn.allocate()), None);
}

#[test]
fn bandwidth_is_bounded_per_allocation() {
    if !have_coturn() {
        return;
    }
    // 2 KB/s each way: 80 messages of 200 bytes within seconds cannot all pass.
    let (kube, _) = start("  allow_peers: [127.0.0.0/8]\n  max_bytes_per_sec: 2000\n");
    let out = uclient(&kube, Via::Udp, &["-W", SECRET, "-u", "alice"]);
    assert!(received(&out) < 80, "{out}");
    let m = kube.metrics_blocking();
    let dropped = m
        .lines()
        .find_map(|l| l.strip_prefix("kube_turn_dropped_packets_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(dropped > 0, "{m}");
}

/// A short XOR-PEER-ADDRESS the `stun` crate would zero-fill (0.0.0.0, or a.b.c.0 in a
/// private range), a long one, or a local peer: each is refused, and a Send indication to
/// 0.0.0.0 (which Linux delivers to the local host) reaches nothing.
#[test]
fn malformed_or_local_peers_are_refused_and_nothing_reaches_the_host() {
    // No allow_peers: loopback and 0.0.0.0 are refused.
    let (kube, _) = start("");
    let client = Client::new(&kube, Via::Udp, "mallory");
    assert_eq!(code(&client.allocate()), None);
    let host = UdpSocket::bind("0.0.0.0:0").unwrap();
    let port = host.local_addr().unwrap().port();
    let cases = [
        (
            "truncated to 0.0.0.0",
            xor_peer_v4([0, 0, 0, 0], port, 1),
            400,
        ),
        (
            "truncated to 127.0.0.0",
            xor_peer_v4([127, 0, 0, 0], port, 3),
            400,
        ),
        (
            "truncated to 10.1.2.0",
            xor_peer_v4([10, 1, 2, 0], port, 3),
            400,
        ),
        ("trailing garbage", xor_peer_v4([8, 8, 8, 8], port, 5), 400),
        ("0.0.0.0", xor_peer_v4([0, 0, 0, 0], port, 4), 403),
        ("truncated IPv6", [&[0, 2], &[0x21; 17][..]].concat(), 400),
    ];
    let mut answers = Vec::new();
    for (_, value, _) in &cases {
        let raw = Raw(ATTR_XOR_PEER_ADDRESS, value.clone());
        answers.push(client.ask(METHOD_CREATE_PERMISSION, vec![Box::new(raw)]));
    }
    let channel = turn::proto::channum::ChannelNumber(0x4000);
    let raw = Raw(ATTR_XOR_PEER_ADDRESS, xor_peer_v4([0, 0, 0, 0], port, 1));
    let bound = client.ask(
        stun::message::METHOD_CHANNEL_BIND,
        vec![Box::new(channel), Box::new(raw)],
    );
    // Whatever the answers said, nothing is relayed to the host, by either form.
    client.indicate(xor_peer_v4([0, 0, 0, 0], port, 4), b"reached the host");
    client.indicate(xor_peer_v4([0, 0, 0, 0], port, 1), b"reached the host");
    host.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 64];
    let got = host.recv_from(&mut buf);
    assert!(got.is_err(), "relayed to the local host: {got:?}");

    for ((what, _, want), mut r) in cases.iter().zip(answers) {
        assert_eq!(code(&r), Some(*want), "{what}: {r}");
        client
            .integrity()
            .check(&mut r)
            .unwrap_or_else(|e| panic!("{what}: the answer is signed: {e}"));
    }
    assert_eq!(code(&bound), Some(400), "channel bind, truncated: {bound}");
    let m = kube.metrics_blocking();
    assert!(
        m.contains("kube_turn_refused_total{reason=\"malformed-peer-address\"}"),
        "{m}"
    );
}

/// RFC 8489 §9.2.4: wrong or expired credentials get 401 with REALM and NONCE, so that
/// clients know to fetch new ones; over every transport.
#[test]
fn wrong_or_expired_credentials_get_401_with_realm_and_nonce() {
    let kube = start_all("");
    for via in EVERY {
        let wrong = Client::with_secret(&kube, via, "mallory", "not-the-secret");
        let mut expired = Client::new(&kube, via, "mallory");
        expired.user = "1000:mallory".into();
        expired.password = signal::ice::password(SECRET.as_bytes(), &expired.user);
        for (what, client) in [("wrong password", &wrong), ("expired", &expired)] {
            let r = client.allocate();
            assert_eq!(code(&r), Some(401), "{via:?} {what}: {r}");
            assert!(r.contains(ATTR_REALM), "{via:?} {what}: {r}");
            assert!(
                r.contains(stun::attributes::ATTR_NONCE),
                "{via:?} {what}: {r}"
            );
        }
        // The same request with the right password is served.
        let right = Client::new(&kube, via, "mallory");
        assert_eq!(code(&right.allocate()), None, "{via:?}");
    }
}

/// A user whose allocation outlived a secret rotation keeps the old secret: KUBE's own
/// refusals (403, 486) are signed with it, not with the new one.
#[test]
fn refusals_to_a_rotated_user_are_signed_with_their_secret() {
    let (kube, _) = start("  max_allocations_per_user: 1\n");
    let alice = Client::new(&kube, Via::Udp, "alice");
    assert_eq!(code(&alice.allocate()), None);
    let file = kube.data_dir.parent().unwrap().join("kube.yml");
    std::fs::write(
        &file,
        "turn:\n  secret: rotated\n  relay_port_min: 40000\n  relay_port_max: 49000\n  max_allocations_per_user: 1\n",
    )
    .unwrap();
    let out = kube.cli(&["reload"]);
    assert!(out.status.success(), "{out:?}");

    let loopback = turn::proto::peeraddr::PeerAddress {
        ip: "127.0.0.1".parse().unwrap(),
        port: 9,
    };
    let mut r = alice.ask(METHOD_CREATE_PERMISSION, vec![Box::new(loopback)]);
    assert_eq!(code(&r), Some(403), "{r}");
    alice
        .integrity()
        .check(&mut r)
        .unwrap_or_else(|e| panic!("the 403 is signed with alice's secret: {e}"));

    let again = alice.again(&kube, Via::Udp);
    let mut r = again.allocate();
    assert_eq!(code(&r), Some(486), "{r}");
    again
        .integrity()
        .check(&mut r)
        .unwrap_or_else(|e| panic!("the 486 is signed with alice's secret: {e}"));
}

/// TURN over TLS presents the HTTPS certificate and rotates with it: after a renewal, a
/// new connection to `turn.tls_listen` and one to the HTTPS port see the same new leaf.
#[test]
fn turn_over_tls_rotates_its_certificate_with_https() {
    let kube = start_all("");
    let leaf = |to: SocketAddr| {
        let tls = tls_connect(&kube, to, &[]);
        tls.conn.peer_certificates().unwrap()[0].to_vec()
    };
    let (turn_tls, https) = (addr(&kube, Via::Tls), kube.ready_addr("https").unwrap());
    let before = leaf(turn_tls);
    assert_eq!(before, leaf(https), "one certificate for HTTPS and TURN");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt.block_on(kube.api(reqwest::Method::POST, "/api/certs/renew"));
    assert!(r.is_object(), "{r}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while leaf(https) == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the renewal was not served"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        leaf(turn_tls),
        leaf(https),
        "TURN over TLS serves the renewed leaf"
    );
}

#[test]
fn cluster_urls_are_checked_with_file_line_and_key() {
    let err = crate::dns::config_errors(
        "turn:\n  cluster:\n    - \"turn:kube-b.example.org:3478\"\n    - \"https://kube-c.example.org\"\necho:\n  peers:\n    - { url: \"http://kube-b.example.org\", did: \"did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX\" }\n    - { url: \"https://kube-c.example.org\", did: \"did:key:nope\" }\n",
    );
    assert!(err.contains("kube.yml:4:"), "{err}");
    assert!(
        err.contains("turn.cluster[1]: \"https://kube-c.example.org\" is not"),
        "{err}"
    );
    assert!(err.contains("echo.peers[0].url: "), "{err}");
    assert!(err.contains("echo.peers[1].did: "), "{err}");
    assert!(err.contains("turn.secret: must be set"), "{err}");
    assert!(!err.contains("turn.cluster[0]"), "{err}");
}
