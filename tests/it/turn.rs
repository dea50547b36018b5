//! STUN/TURN with coturn's own clients (`turnutils_uclient` relaying to `turnutils_peer`),
//! and a raw STUN client asking for a permission to each refused range.

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use stun::attributes::{ATTR_REALM, ATTR_XOR_PEER_ADDRESS};
use stun::error_code::ErrorCodeAttribute;
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_REQUEST, Getter, METHOD_ALLOCATE, METHOD_CREATE_PERMISSION, Message, MessageType, Setter,
};
use stun::textattrs::{Nonce, Realm, Username};
use tests::pebble::free_port;
use tests::{Kube, Opts, require_tools};

const SECRET: &str = "s3cret";

fn have_coturn() -> bool {
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

fn start(extra: &str) -> (Kube, SocketAddr) {
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

/// Runs turnutils_uclient against `turn`, relaying to a turnutils_peer; returns its output.
fn uclient(turn: SocketAddr, auth: &[&str]) -> String {
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

fn received(out: &str) -> u64 {
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
    let (kube, turn) = start("  allow_peers: [127.0.0.0/8]\n");
    let out = uclient(turn, &["-W", SECRET, "-u", "alice"]);
    assert!(
        out.contains("Total lost packets 0 (0.000000%)"),
        "{out}\n{}",
        kube.log()
    );
    assert_eq!(
        received(&out),
        80,
        "every message came back through the relay: {out}"
    );
    let m = kube.metrics_blocking();
    assert!(
        m.contains("kube_turn_relayed_packets_total{direction=\"out\"}"),
        "{m}"
    );
}

#[test]
fn loopback_is_refused_by_default() {
    if !have_coturn() {
        return;
    }
    let (kube, turn) = start("");
    let out = uclient(turn, &["-W", SECRET, "-u", "alice"]);
    assert!(out.contains("403"), "{out}");
    assert_eq!(received(&out), 0, "{out}");
    let m = kube.metrics_blocking();
    assert!(m.contains("kube_turn_refused_total"), "{m}");
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
    let (kube, turn) = start("  allow_peers: [127.0.0.0/8]\n");
    let unauthenticated = "kube_turn_refused_total{reason=\"bad-credentials\"}";
    let wrong = uclient(turn, &["-W", "not-the-secret", "-u", "alice"]);
    assert_eq!(received(&wrong), 0, "{wrong}");
    assert!(wrong.contains("Cannot complete Allocation"), "{wrong}");
    let after_wrong = counter(&kube.metrics_blocking(), unauthenticated);
    assert!(after_wrong > 0, "401 to a wrong password");
    let expired_user = "1000:alice";
    let password = signal::ice::password(SECRET.as_bytes(), expired_user);
    let expired = uclient(turn, &["-u", expired_user, "-w", &password]);
    assert_eq!(received(&expired), 0, "{expired}");
    assert!(expired.contains("Cannot complete Allocation"), "{expired}");
    let after_expired = counter(&kube.metrics_blocking(), unauthenticated);
    assert!(after_expired > after_wrong, "401 to an expired username");
}

// ---- a raw STUN client ----

fn roundtrip(s: &UdpSocket, to: SocketAddr, setters: Vec<Box<dyn Setter>>) -> Message {
    let mut m = Message::new();
    m.build(&setters).unwrap();
    s.send_to(&m.raw, to).unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = s.recv_from(&mut buf).expect("an answer");
    let mut r = Message::new();
    r.unmarshal_binary(&buf[..n]).unwrap();
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

/// A client with long-term REST credentials for `name`, on its own UDP socket.
struct Client {
    s: UdpSocket,
    turn: SocketAddr,
    user: String,
    password: String,
    realm: Realm,
    nonce: Nonce,
}

impl Client {
    fn new(turn: SocketAddr, name: &str) -> Client {
        Client::with_secret(turn, name, SECRET)
    }

    fn with_secret(turn: SocketAddr, name: &str, secret: &str) -> Client {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let user = format!("{}:{name}", now.as_secs() + 600);
        let password = signal::ice::password(secret.as_bytes(), &user);
        // Unauthenticated first: the server names its realm and a nonce (RFC 8489 §9.2).
        let first = roundtrip(
            &s,
            turn,
            vec![
                Box::new(stun::agent::TransactionId::new()),
                Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
                transport(),
            ],
        );
        assert_eq!(code(&first), Some(401));
        let realm: Realm = stun::textattrs::TextAttribute::get_from_as(&first, ATTR_REALM).unwrap();
        let nonce: Nonce =
            stun::textattrs::TextAttribute::get_from_as(&first, stun::attributes::ATTR_NONCE)
                .unwrap();
        Client {
            s,
            turn,
            user,
            password,
            realm,
            nonce,
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
        roundtrip(&self.s, self.turn, v)
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
        self.s.send_to(&m.raw, self.turn).unwrap();
    }

    fn allocate(&self) -> Message {
        self.ask(METHOD_ALLOCATE, vec![transport()])
    }

    fn refresh(&self) -> Message {
        self.ask(
            stun::message::METHOD_REFRESH,
            vec![Box::new(turn::proto::lifetime::Lifetime(
                Duration::from_secs(600),
            ))],
        )
    }
}

/// A reload rotates the secret and raises the per-user limit; the allocation made before
/// keeps refreshing under the secret it was made with, new users need the new one.
#[test]
fn secret_and_limits_reload_without_dropping_allocations() {
    let (kube, turn) = start("  max_allocations_per_user: 1\n");
    let alice = Client::new(turn, "alice");
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
    let alice2 = Client {
        s: UdpSocket::bind("127.0.0.1:0").unwrap(),
        ..Client::new(turn, "unused")
    };
    let alice2 = Client {
        user: alice.user.clone(),
        password: alice.password.clone(),
        ..alice2
    };
    alice2
        .s
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(code(&alice2.allocate()), None, "per-user limit raised to 2");
    // A new user with the old secret is refused; with the new one it is served.
    let old = Client::new(turn, "bob");
    let refused = old.allocate();
    assert!(
        code(&refused).is_some_and(|c| (400..500).contains(&c)),
        "old secret, new user: {refused}"
    );
    let new = Client::with_secret(turn, "bob", "rotated");
    assert_eq!(code(&new.allocate()), None);
}

#[test]
fn a_permission_to_each_refused_range_gets_403() {
    let (_kube, turn) = start("");
    let client = Client::new(turn, "tester");
    let alloc = client.allocate();
    assert_eq!(code(&alloc), None, "allocated: {alloc}");
    for peer in [
        "0.0.0.1",
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
        assert_eq!(code(&r), Some(403), "{peer}: {r}");
        client
            .integrity()
            .check(&mut r)
            .unwrap_or_else(|e| panic!("{peer}: the 403 is signed: {e}"));
        // ChannelBind names a peer too, and is refused the same way.
        let channel = turn::proto::channum::ChannelNumber(0x4000);
        let addr = turn::proto::peeraddr::PeerAddress { ip, port: 9 };
        let r = client.ask(
            stun::message::METHOD_CHANNEL_BIND,
            vec![Box::new(channel), Box::new(addr)],
        );
        assert_eq!(code(&r), Some(403), "channel bind {peer}: {r}");
    }
    // A public address is granted (the relay never sends to it in this test).
    let public = turn::proto::peeraddr::PeerAddress {
        ip: "8.8.8.8".parse().unwrap(),
        port: 9,
    };
    let r = client.ask(METHOD_CREATE_PERMISSION, vec![Box::new(public)]);
    assert_eq!(code(&r), None, "{r}");
}

#[test]
fn allocations_are_bounded_per_user_and_in_total() {
    let (kube, turn) = start("  max_allocations_per_user: 1\n  max_allocations: 2\n");
    let a1 = Client::new(turn, "alice");
    assert_eq!(code(&a1.allocate()), None);
    let a2 = Client::new(turn, "alice");
    assert_eq!(
        code(&a2.allocate()),
        Some(486),
        "a second allocation of the same user"
    );
    let b = Client::new(turn, "bob");
    assert_eq!(code(&b.allocate()), None);
    let c = Client::new(turn, "carol");
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

#[test]
fn bandwidth_is_bounded_per_allocation() {
    if !have_coturn() {
        return;
    }
    // 2 KB/s each way: 80 messages of 200 bytes within seconds cannot all pass.
    let (kube, turn) = start("  allow_peers: [127.0.0.0/8]\n  max_bytes_per_sec: 2000\n");
    let out = uclient(turn, &["-W", SECRET, "-u", "alice"]);
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
    let (kube, turn) = start("");
    let client = Client::new(turn, "mallory");
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
/// clients know to fetch new ones.
#[test]
fn wrong_or_expired_credentials_get_401_with_realm_and_nonce() {
    let (_kube, turn) = start("");
    let wrong = Client::with_secret(turn, "mallory", "not-the-secret");
    let mut expired = Client::new(turn, "mallory");
    expired.user = "1000:mallory".into();
    expired.password = signal::ice::password(SECRET.as_bytes(), &expired.user);
    for (what, client) in [("wrong password", &wrong), ("expired", &expired)] {
        let r = client.allocate();
        assert_eq!(code(&r), Some(401), "{what}: {r}");
        assert!(r.contains(ATTR_REALM), "{what}: {r}");
        assert!(r.contains(stun::attributes::ATTR_NONCE), "{what}: {r}");
    }
    // The same request with the right password is served.
    let right = Client::new(turn, "mallory");
    assert_eq!(code(&right.allocate()), None);
}

/// A user whose allocation outlived a secret rotation keeps the old secret: KUBE's own
/// refusals (403, 486) are signed with it, not with the new one.
#[test]
fn refusals_to_a_rotated_user_are_signed_with_their_secret() {
    let (kube, turn) = start("  max_allocations_per_user: 1\n");
    let alice = Client::new(turn, "alice");
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

    let mut again = Client::new(turn, "alice");
    again.user = alice.user.clone();
    again.password = alice.password.clone();
    let mut r = again.allocate();
    assert_eq!(code(&r), Some(486), "{r}");
    again
        .integrity()
        .check(&mut r)
        .unwrap_or_else(|e| panic!("the 486 is signed with alice's secret: {e}"));
}
