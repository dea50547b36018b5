//! The authoritative DNS server, asked by real `dig` and `kdig` over UDP and TCP, plus raw
//! sockets for rate limiting, limits and garbage.

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use tests::{Kube, Opts, require_tools};

const ZONE: &str = r#"domain: kube.test
tls:
  mode: local
dns:
  addresses: [192.0.2.10, "2001:db8::10"]
  caa: [letsencrypt.org]
  rrl:
    enabled: false
  records:
    - { name: www, type: CNAME, value: kube.test. }
    - { name: "@", type: MX, value: "10 mail.kube.test." }
    - { name: mail, type: A, value: 192.0.2.25 }
    - { name: "@", type: TXT, value: '"v=spf1 mx -all"' }
    - { name: _sip._tcp, type: SRV, value: "0 5 5060 sip.kube.test." }
"#;

fn big_txt() -> String {
    let mut s = String::new();
    for i in 0..30 {
        s.push_str(&format!(
            "    - {{ name: big, type: TXT, value: '\"{i:02}-{}\"' }}\n",
            "x".repeat(60)
        ));
    }
    s
}

/// Whether a tool is installed; missing is a failure under tests/run, a skip otherwise.
fn have(tool: &str) -> bool {
    let ok = Command::new(tool).arg("-v").output().is_ok();
    if !ok {
        assert!(
            !require_tools(),
            "{tool} is required (Debian bind9-dnsutils / knot-dnsutils)"
        );
        eprintln!("{tool} not installed: skipped");
    }
    ok
}

/// Runs dig (or kdig) against the KUBE and returns its whole output.
fn ask(tool: &str, kube: &Kube, args: &[&str]) -> String {
    let dns = kube.dns.expect("dns is enabled");
    let mut cmd = Command::new(tool);
    cmd.arg(format!("@{}", dns.ip()))
        .arg("-p")
        .arg(dns.port().to_string());
    if tool == "kdig" {
        cmd.args(["+timeout=2", "+retry=0"]);
    } else {
        cmd.args(["+time=2", "+tries=1"]);
    }
    cmd.args(args);
    let out = cmd.output().expect("run dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status(out: &str) -> &str {
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("")
}

fn flags(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(";; flags: "))
        .and_then(|l| l.split(';').next())
        .unwrap_or("")
        .to_owned()
}

fn short(kube: &Kube, args: &[&str]) -> Vec<String> {
    let mut a = vec!["+short"];
    a.extend_from_slice(args);
    let mut v: Vec<String> = ask("dig", kube, &a).lines().map(str::to_owned).collect();
    v.sort();
    v
}

fn start(extra: &str) -> Kube {
    Kube::start_with(Opts {
        config: Some(format!("{ZONE}{extra}")),
        ..Default::default()
    })
    .unwrap_or_else(|log| panic!("kube did not start:\n{log}"))
}

#[test]
fn dig_and_kdig_get_authoritative_answers() {
    if !have("dig") || !have("kdig") {
        return;
    }
    let kube = start(&big_txt());
    let out = ask("dig", &kube, &["+norec", "kube.test", "A"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
    let f = flags(&out);
    assert!(
        f.contains("aa") && !f.contains("ra"),
        "AA set, RA clear: {f}"
    );
    assert_eq!(short(&kube, &["kube.test", "A"]), vec!["192.0.2.10"]);
    assert_eq!(
        short(&kube, &["KuBe.TeSt", "AAAA"]),
        vec!["2001:db8::10"],
        "case-insensitive"
    );
    assert_eq!(
        short(&kube, &["notes.kube.test", "A"]),
        vec!["192.0.2.10"],
        "app hosts by wildcard"
    );
    assert_eq!(
        short(&kube, &["www.kube.test", "A"]),
        vec!["192.0.2.10", "kube.test."]
    );
    assert_eq!(
        short(&kube, &["kube.test", "MX"]),
        vec!["10 mail.kube.test."]
    );
    assert_eq!(
        short(&kube, &["kube.test", "TXT"]),
        vec!["\"v=spf1 mx -all\""]
    );
    assert_eq!(
        short(&kube, &["_sip._tcp.kube.test", "SRV"]),
        vec!["0 5 5060 sip.kube.test."]
    );
    assert_eq!(
        short(&kube, &["kube.test", "CAA"]),
        vec!["0 issue \"letsencrypt.org\""]
    );
    assert_eq!(short(&kube, &["kube.test", "NS"]), vec!["ns1.kube.test."]);
    assert_eq!(
        short(&kube, &["ns1.kube.test", "A"]),
        vec!["192.0.2.10"],
        "glue"
    );
    let soa = short(&kube, &["kube.test", "SOA"]);
    assert!(
        soa[0].starts_with("ns1.kube.test. hostmaster.kube.test. "),
        "{soa:?}"
    );

    // NXDOMAIN and NODATA, both with the SOA in the authority section.
    let nx = ask("dig", &kube, &["+norec", "x.www.kube.test", "A"]);
    assert_eq!(status(&nx), "NXDOMAIN", "{nx}");
    assert!(
        nx.contains("AUTHORITY: 1") && nx.contains("IN\tSOA"),
        "{nx}"
    );
    let nodata = ask("dig", &kube, &["+norec", "mail.kube.test", "AAAA"]);
    assert_eq!(status(&nodata), "NOERROR");
    assert!(
        nodata.contains("ANSWER: 0")
            && nodata.contains("AUTHORITY: 1")
            && nodata.contains("IN\tSOA"),
        "{nodata}"
    );
    let ent = ask("dig", &kube, &["+norec", "_tcp.kube.test", "A"]);
    assert_eq!(
        status(&ent),
        "NOERROR",
        "an empty non-terminal is NODATA: {ent}"
    );

    // Not our zone: refused, never recursed.
    let refused = ask("dig", &kube, &["example.org", "A"]);
    assert_eq!(status(&refused), "REFUSED", "{refused}");
    assert!(!flags(&refused).contains("ra") && !flags(&refused).contains("aa"));

    // ANY is answered minimally (RFC 8482): one RRset.
    let any = ask("dig", &kube, &["+norec", "kube.test", "ANY"]);
    let types: std::collections::BTreeSet<&str> = any
        .lines()
        .filter(|l| l.starts_with("kube.test."))
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    assert_eq!(types.len(), 1, "{any}");

    // EDNS: our payload size is advertised; UDP truncates, TCP carries everything.
    let edns = ask("dig", &kube, &["+norec", "+bufsize=4096", "kube.test", "A"]);
    assert!(edns.contains("udp: 1232"), "{edns}");
    let tc = ask(
        "dig",
        &kube,
        &[
            "+norec",
            "+notcp",
            "+ignore",
            "+bufsize=1232",
            "big.kube.test",
            "TXT",
        ],
    );
    assert!(flags(&tc).contains("tc"), "truncated over UDP: {tc}");
    let tcp = ask("dig", &kube, &["+norec", "+tcp", "big.kube.test", "TXT"]);
    assert!(
        tcp.contains("ANSWER: 30") && !flags(&tcp).contains("tc"),
        "{tcp}"
    );
    let fallback = ask("dig", &kube, &["+norec", "big.kube.test", "TXT"]);
    assert!(
        fallback.contains("ANSWER: 30"),
        "dig retries over TCP after TC: {fallback}"
    );
    let badvers = ask(
        "dig",
        &kube,
        &["+norec", "+edns=1", "+noednsneg", "kube.test", "A"],
    );
    assert_eq!(status(&badvers), "BADVERS", "{badvers}");

    // kdig, UDP and TCP.
    for transport in ["+notcp", "+tcp"] {
        let k = ask(
            "kdig",
            &kube,
            &[transport, "+norec", "notes.kube.test", "AAAA"],
        );
        assert!(
            k.contains("status: NOERROR") && k.contains("2001:db8::10"),
            "{k}"
        );
        assert!(k.contains("Flags: qr aa"), "{k}");
        let k = ask("kdig", &kube, &[transport, "nowhere.example.net", "A"]);
        assert!(k.contains("status: REFUSED"), "{k}");
    }

    // Metrics count by type and rcode.
    let m = kube.metrics_blocking();
    assert!(
        m.contains("kube_dns_queries_total{qtype=\"A\",rcode=\"NOERROR\"}"),
        "{m}"
    );
    assert!(
        m.contains("kube_dns_queries_total{qtype=\"A\",rcode=\"REFUSED\"}"),
        "{m}"
    );
    assert!(m.contains("kube_dns_zone_serial "), "{m}");
}

/// A blocking admin API call with the KUBE's token.
pub(crate) fn api(kube: &Kube, method: reqwest::Method, path: &str, body: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        reqwest::Client::new()
            .request(method, kube.admin_url(path))
            .bearer_auth(kube.token())
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    })
}

#[test]
fn runtime_records_appear_vanish_and_survive_a_restart() {
    if !have("dig") {
        return;
    }
    let mut kube = start("");
    let serial = |k: &Kube| -> u64 {
        short(k, &["kube.test", "SOA"])[0]
            .split_whitespace()
            .nth(2)
            .unwrap()
            .parse()
            .unwrap()
    };
    let s0 = serial(&kube);
    let records =
        |method: reqwest::Method, body: &str| api(&kube, method, "/api/dns/records", body);
    for v in ["one", "two"] {
        let r = records(
            reqwest::Method::POST,
            &format!(
                r#"{{"name": "_acme-challenge", "type": "TXT", "value": "\"{v}\"", "ttl": 10}}"#
            ),
        );
        assert!(r.contains("added"), "{r}");
    }
    assert_eq!(
        short(&kube, &["_acme-challenge.kube.test", "TXT"]),
        vec!["\"one\"", "\"two\""]
    );
    let s1 = serial(&kube);
    assert!(s1 > s0, "serial bumped on change: {s0} -> {s1}");
    let bad = records(
        reqwest::Method::POST,
        r#"{"name": "x", "type": "A", "value": "not-an-address"}"#,
    );
    assert!(bad.contains("bad_record") && bad.contains("value"), "{bad}");
    let r = records(
        reqwest::Method::DELETE,
        r#"{"name": "_acme-challenge", "type": "TXT", "value": "\"one\""}"#,
    );
    assert!(r.contains("\"removed\":1"), "{r}");
    assert_eq!(
        short(&kube, &["_acme-challenge.kube.test", "TXT"]),
        vec!["\"two\""]
    );
    let d = kube.data_dir.clone();
    kube.kill();
    let again = Kube::start_with(Opts {
        config: Some(ZONE.into()),
        data_dir: Some(d),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        short(&again, &["_acme-challenge.kube.test", "TXT"]),
        vec!["\"two\""],
        "kept across kill -9"
    );
    let s2 = serial(&again);
    assert!(
        s2 > s1,
        "a restart never goes back in serial: {s1} then {s2}"
    );
    let status = again.cli(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("zone kube.test."), "{text}");
}

#[test]
fn sighup_reloads_records_from_kube_yml() {
    if !have("dig") {
        return;
    }
    let kube = start("");
    assert!(short(&kube, &["new.kube.test", "TXT"]).is_empty());
    let file = kube.data_dir.parent().unwrap().join("kube.yml");
    std::fs::write(
        &file,
        format!("{ZONE}    - {{ name: new, type: TXT, value: '\"reloaded\"' }}\n"),
    )
    .unwrap();
    kube.send_signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while short(&kube, &["new.kube.test", "TXT"]) != vec!["\"reloaded\""] {
        assert!(
            Instant::now() < deadline,
            "record not reloaded:\n{}",
            kube.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A bad file is refused and the running zone stays.
    std::fs::write(
        &file,
        format!("{ZONE}    - {{ name: new, type: A, value: nope }}\n"),
    )
    .unwrap();
    kube.send_signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !kube.log().contains("reload refused") {
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            kube.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        kube.log().contains("dns.records[5].value"),
        "{}",
        kube.log()
    );
    assert_eq!(
        short(&kube, &["new.kube.test", "TXT"]),
        vec!["\"reloaded\""]
    );
}

#[test]
fn record_errors_name_line_column_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kube.yml");
    std::fs::write(&file, "dns:\n  records:\n    - name: www\n      type: A\n      value: nope\n    - { name: x, type: NS, value: ns1 }\n").unwrap();
    let out = Command::new(tests::kube_bin())
        .args(["config", "check", "-c", file.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).replace(file.to_str().unwrap(), "kube.yml");
    assert!(!out.status.success());
    assert!(
        err.contains("kube.yml:5:14: dns.records[0].value: "),
        "{err}"
    );
}

/// `kube config check` on `text` as kube.yml: it must fail; its errors, the file named
/// `kube.yml`.
pub(crate) fn config_errors(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kube.yml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(tests::kube_bin())
        .args(["config", "check", "-c", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).replace(file.to_str().unwrap(), "kube.yml")
}

#[test]
fn transfer_key_errors_name_line_and_key() {
    let err = config_errors(
        "dns:\n  tsig_keys:\n    - { name: xfr, secret: \"c2hvcnQ=\" }\n  secondaries:\n    - { address: \"127.0.0.1:53\", key: other }\n  primary: { address: \"127.0.0.1:54\", key: missing }\n",
    );
    for key in [
        "kube.yml:3:",
        "dns.tsig_keys[0].secret: 5 bytes",
        "dns.secondaries[0].key: \"other\" is not",
        "dns.primary.key: \"missing\" is not",
    ] {
        assert!(err.contains(key), "{key} in:\n{err}");
    }
}

// ---- raw sockets ----

/// A query for `name` A with id `id`, no recursion desired.
fn query(id: u16, name: &str) -> Vec<u8> {
    query_type(id, name, 1)
}

/// A query for `name` of type `qtype` with id `id`, no recursion desired.
fn query_type(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.push(0);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&[0, 1]);
    p
}

/// A query framed for TCP (RFC 7766 §8: a two-byte length first).
fn framed(q: &[u8]) -> Vec<u8> {
    let mut f = (q.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(q);
    f
}

/// (id, truncated, rcode, answers) of a response.
fn header(r: &[u8]) -> (u16, bool, u8, u16) {
    (
        u16::from_be_bytes([r[0], r[1]]),
        r[2] & 0x02 != 0,
        r[3] & 0x0f,
        u16::from_be_bytes([r[6], r[7]]),
    )
}

/// Sends `n` queries from `from` and collects the answers that arrive within a short wait.
fn burst(from: &str, to: SocketAddr, n: u16) -> Vec<(u16, bool, u8, u16)> {
    let s = UdpSocket::bind(from).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    for i in 0..n {
        s.send_to(&query(i, "kube.test"), to).unwrap();
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 1500];
    while let Ok((len, _)) = s.recv_from(&mut buf) {
        out.push(header(&buf[..len]));
    }
    out
}

#[test]
fn rate_limiting_limits_one_prefix_not_another() {
    // ZONE turns RRL off; this KUBE keeps it on, with a low rate.
    let kube = Kube::start_with(Opts {
        config: Some("domain: kube.test\ntls:\n  mode: local\ndns:\n  rrl:\n    responses_per_second: 5\n    slip: 2\n".into()),
        ..Default::default()
    })
    .unwrap();
    let dns = kube.dns.unwrap();
    let answers = burst("127.0.0.1:0", dns, 40);
    let full = answers.iter().filter(|a| !a.1).count();
    let slipped = answers.iter().filter(|a| a.1).count();
    assert!(
        (5..=7).contains(&full),
        "about one second's worth answered in full: {full}"
    );
    assert!(
        (15..=18).contains(&slipped),
        "every second limited answer slips as TC: {slipped}"
    );
    assert!(answers.len() < 40, "the rest are dropped");
    // Another /24 is not limited by the first one's burst.
    let other = burst("127.0.1.1:0", dns, 5);
    assert_eq!(other.iter().filter(|a| !a.1).count(), 5, "{other:?}");
    let m = kube.metrics_blocking();
    assert!(
        m.contains("kube_dns_rrl_limited_total{action=\"dropped\"}"),
        "{m}"
    );
    assert!(
        m.contains("kube_dns_rrl_limited_total{action=\"slipped\"}"),
        "{m}"
    );
}

#[test]
fn garbage_is_dropped_and_the_server_keeps_answering() {
    use std::io::{Read, Write};
    let kube = Kube::start_with(Opts {
        config: Some("domain: kube.test\ntls:\n  mode: local\ndns:\n  rrl:\n    enabled: false\n  tcp_max_queries: 3\n  tcp_idle_timeout_secs: 1\n  tcp_max_connections: 2\n".into()),
        ..Default::default()
    })
    .unwrap();
    let dns = kube.dns.unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let valid = query(7, "kube.test");
    let mut x: u32 = 0x1234_5678;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    for i in 0..1000 {
        let mut p = if i % 2 == 0 {
            valid.clone()
        } else {
            (0..(next() % 200)).map(|_| next() as u8).collect()
        };
        if !p.is_empty() {
            let at = next() as usize % p.len();
            p[at] ^= 1 << (next() % 8);
            if i % 5 == 0 {
                p.truncate(next() as usize % p.len());
            }
        }
        udp.send_to(&p, dns).unwrap();
    }
    for i in 0..50 {
        let mut t = std::net::TcpStream::connect(dns).unwrap();
        let p: Vec<u8> = (0..(next() % 100)).map(|_| next() as u8).collect();
        let _ = t.write_all(&(p.len() as u16 + (i % 3)).to_be_bytes());
        let _ = t.write_all(&p);
    }
    // Still answering, over both transports.
    udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 1500];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        udp.send_to(&query(999, "kube.test"), dns).unwrap();
        if let Ok((n, _)) = udp.recv_from(&mut buf)
            && header(&buf[..n]).0 == 999
        {
            break;
        }
        assert!(Instant::now() < deadline, "no answer after garbage");
    }
    let m = kube.metrics_blocking();
    assert!(
        m.contains("kube_dns_malformed_total{transport=\"udp\"}"),
        "{m}"
    );

    // TCP: three queries per connection, then it is closed. (The garbage connections hold
    // both slots until their idle second is over: until then a connection is closed at once.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut answered = 0;
    while answered == 0 && Instant::now() < deadline {
        answered = three_tcp_queries(dns);
        if answered == 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert_eq!(answered, 3, "tcp_max_queries");
    // Idle connections are closed after tcp_idle_timeout_secs.
    let mut idle = std::net::TcpStream::connect(dns).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    assert_eq!(idle.read(&mut buf).unwrap_or(0), 0);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "closed when idle"
    );
    // Over the connection limit, a connection is closed at once. First both slots are
    // held by open connections (one closed at once met a slot an earlier connection still
    // held while it ended: try again), then a third comes.
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.len() < 2 {
        assert!(Instant::now() < deadline, "could not hold both slots");
        let mut s = std::net::TcpStream::connect(dns).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(150)))
            .unwrap();
        match s.read(&mut buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                held.push(s);
            }
            _ => {
                held.clear();
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    let mut c = std::net::TcpStream::connect(dns).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let started = Instant::now();
    assert_eq!(c.read(&mut buf).unwrap_or(0), 0);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "refused before the idle timeout"
    );
}

/// One query over a fresh TCP connection; the answer's id, or None when the connection was
/// closed (over the limit) or did not answer in time.
fn tcp_answer_id(dns: SocketAddr, id: u16) -> Option<u16> {
    use std::io::{Read, Write};
    let mut t = std::net::TcpStream::connect(dns).ok()?;
    t.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    t.write_all(&framed(&query(id, "kube.test"))).ok()?;
    let mut len = [0u8; 2];
    t.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    t.read_exact(&mut body).ok()?;
    (body.len() >= 12).then(|| header(&body).0)
}

#[test]
fn clients_that_never_read_their_answers_lose_their_slots() {
    // Two slots; clients may pipeline far more queries than the socket buffers hold.
    let kube = start(&format!(
        "{}  tcp_max_connections: 2\n  tcp_max_queries: 1000000\n  tcp_idle_timeout_secs: 1\n",
        big_txt()
    ));
    let dns = kube.dns.expect("dns is enabled");
    assert_eq!(tcp_answer_id(dns, 1), Some(1), "served before the attack");
    // Each query asks for the 30 TXT records of big (about 2 KiB over TCP).
    let pipeline: Vec<u8> = (0..1000u16)
        .flat_map(|id| framed(&query_type(id, "big.kube.test", 16)))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut stalled_after = Vec::new();
    let hogs: Vec<tokio::net::TcpStream> = rt.block_on(async {
        use tokio::io::AsyncWriteExt;
        let mut hogs = Vec::new();
        for _ in 0..2 {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.set_recv_buffer_size(4096).unwrap();
            let mut s = s.connect(dns).await.unwrap();
            // Write until the server stops reading (it is stuck sending answers nobody reads)
            // or drops the connection.
            let mut sent = 0usize;
            while let Ok(Ok(())) =
                tokio::time::timeout(Duration::from_millis(500), s.write_all(&pipeline)).await
            {
                sent += pipeline.len();
                assert!(sent < 64 << 20, "the server kept reading: {sent} bytes");
            }
            stalled_after.push(sent);
            hogs.push(s);
        }
        hogs
    });
    eprintln!("the hogs' writes stalled after {stalled_after:?} bytes");
    // A fresh client is served once the stuck connections are dropped.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(10);
    let mut tries = 0;
    while tcp_answer_id(dns, 4242) != Some(4242) {
        tries += 1;
        assert!(
            Instant::now() < deadline,
            "no TCP answer after {tries} tries in {:?}: the slots stay held",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "a fresh TCP client was served {:?} after the hogs stalled ({tries} refused tries)",
        started.elapsed()
    );
    drop(hogs);
}

/// Sends up to four queries on one TCP connection; returns how many were answered.
fn three_tcp_queries(dns: std::net::SocketAddr) -> usize {
    use std::io::{Read, Write};
    let Ok(mut t) = std::net::TcpStream::connect(dns) else {
        return 0;
    };
    t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answered = 0;
    for id in 0..4u16 {
        let q = query(id, "kube.test");
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        if t.write_all(&framed).is_err() {
            break;
        }
        let mut len = [0u8; 2];
        if t.read_exact(&mut len).is_err() {
            break;
        }
        let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
        t.read_exact(&mut body).unwrap();
        assert_eq!(header(&body).0, id);
        answered += 1;
    }
    answered
}

pub(crate) const TSIG_SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTMyYg==";

/// A free loopback port for UDP and TCP (see `tests::pebble::free_port`).
pub(crate) fn free_port() -> u16 {
    tests::pebble::free_port()
}

/// Knot DNS as a secondary of KUBE: it takes the zone by AXFR with TSIG, and after a record
/// is added through the admin API it serves the new serial within a second of KUBE's
/// NOTIFY, taken by IXFR from KUBE's journal; a transfer without the key, or with a wrong
/// one, is refused.
#[test]
fn knot_follows_kube_by_transfer_and_notify() {
    if !have("kdig") || !have_knotd() {
        return;
    }
    let knot_port = free_port();
    let kube = start(&format!(
        "  tsig_keys:\n    - {{ name: xfr, algorithm: hmac-sha256, secret: \"{TSIG_SECRET}\" }}\n  secondaries:\n    - {{ address: \"127.0.0.1:{knot_port}\", key: xfr }}\n"
    ));
    let dns = kube.dns.unwrap();
    let knot = Knot::start(knot_port, dns.port(), true);
    let dir = &knot.dir;
    let knot_log = || std::fs::read_to_string(dir.path().join("knot.log")).unwrap_or_default();
    let at_knot = |args: &[&str]| {
        let out = Command::new("kdig")
            .args([
                "@127.0.0.1",
                "-p",
                &knot_port.to_string(),
                "+timeout=1",
                "+retry=0",
                "+short",
            ])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let kube_serial = || -> String {
        short(&kube, &["kube.test", "SOA"])[0]
            .split_whitespace()
            .nth(2)
            .unwrap()
            .to_owned()
    };
    let serial_at_knot = || {
        at_knot(&["kube.test", "SOA"])
            .split_whitespace()
            .nth(2)
            .unwrap_or("")
            .to_owned()
    };
    // The first transfer (Knot asks for the zone when it starts).
    let deadline = Instant::now() + Duration::from_secs(15);
    while serial_at_knot() != kube_serial() {
        assert!(
            Instant::now() < deadline,
            "knot never got the zone:\n{}",
            knot_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(at_knot(&["mail.kube.test", "A"]), "192.0.2.25");

    // A change: NOTIFY, and Knot serves it within a second.
    let before = kube_serial();
    let added = Instant::now();
    let r = api(
        &kube,
        reqwest::Method::POST,
        "/api/dns/records",
        r#"{"name": "new", "type": "A", "value": "192.0.2.77"}"#,
    );
    assert!(r.contains("added"), "{r}");
    let after = kube_serial();
    assert_ne!(before, after);
    while at_knot(&["new.kube.test", "A"]) != "192.0.2.77" {
        assert!(
            added.elapsed() < Duration::from_secs(1),
            "knot did not follow within a second:\n{}",
            knot_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "knot served the change {:?} after it was added",
        added.elapsed()
    );
    assert_eq!(serial_at_knot(), after);
    let log = knot_log();
    assert!(log.contains("notify"), "{log}");
    // The change came as an IXFR from KUBE's journal, applied as such.
    assert!(log.contains("IXFR, incoming"), "{log}");
    assert!(!log.contains("fallback to AXFR"), "{log}");
    assert!(!log.contains("AXFR-style"), "{log}");

    // Transfers without the key, or with a wrong one, are refused.
    let xfr = |extra: &[&str]| {
        let out = Command::new("kdig")
            .args([
                "@127.0.0.1",
                "-p",
                &dns.port().to_string(),
                "+timeout=2",
                "+retry=0",
            ])
            .args(extra)
            .args(["kube.test", "AXFR"])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let unsigned = xfr(&[]);
    assert!(unsigned.contains("REFUSED"), "{unsigned}");
    assert!(!unsigned.contains("192.0.2.25"), "{unsigned}");
    let wrong = xfr(&["-y", "hmac-sha256:xfr:d3Jvbmctd3Jvbmctd3Jvbmctd3Jvbmc="]);
    assert!(!wrong.contains("192.0.2.25"), "{wrong}");
    assert!(
        wrong.contains("NOTAUTH") || wrong.contains("BADSIG"),
        "{wrong}"
    );
    let right = xfr(&["-y", &format!("hmac-sha256:xfr:{TSIG_SECRET}")]);
    assert!(right.contains("192.0.2.77"), "{right}");
    assert!(!right.contains("WARNING"), "{right}");
}

/// Knot DNS as a secondary of `kube.test` from KUBE's DNS at `primary` (TSIG key `xfr`),
/// listening on `port`; `notify`: whether it takes KUBE's NOTIFY, else it only polls (its
/// refresh held to 2 s). Killed when dropped.
pub(crate) struct Knot {
    child: std::process::Child,
    pub(crate) dir: tempfile::TempDir,
}

impl Knot {
    pub(crate) fn start(port: u16, primary: u16, notify: bool) -> Knot {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let acl = if notify {
            "acl:\n  - id: from_kube\n    address: 127.0.0.1\n    key: xfr\n    action: notify\n"
        } else {
            ""
        };
        let zone_acl = if notify { "    acl: from_kube\n" } else { "" };
        let conf = format!(
            "server:\n    rundir: \"{d}\"\n    listen: 127.0.0.1@{port}\n\
             database:\n    storage: \"{d}/db\"\n\
             key:\n  - id: xfr\n    algorithm: hmac-sha256\n    secret: {TSIG_SECRET}\n\
             remote:\n  - id: kube\n    address: 127.0.0.1@{primary}\n    key: xfr\n\
             {acl}\
             zone:\n  - domain: kube.test\n    storage: \"{d}/zones\"\n    master: kube\n{zone_acl}\
             \x20   refresh-min-interval: 2\n    refresh-max-interval: 2\n    retry-min-interval: 2\n    retry-max-interval: 2\n\
             log:\n  - target: stderr\n    any: info\n"
        );
        std::fs::create_dir_all(dir.path().join("db")).unwrap();
        std::fs::write(dir.path().join("knot.conf"), conf).unwrap();
        let log = std::fs::File::create(dir.path().join("knot.log")).unwrap();
        let child = Command::new("knotd")
            .arg("-c")
            .arg(dir.path().join("knot.conf"))
            .stderr(log)
            .spawn()
            .unwrap();
        Knot { child, dir }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("knot.log")).unwrap_or_default()
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn have_knotd() -> bool {
    let ok = Command::new("knotd").arg("-V").output().is_ok();
    if !ok {
        assert!(!require_tools(), "knotd is required (Debian knot)");
        eprintln!("knotd not installed: skipped");
    }
    ok
}

/// A KUBE secondary of a KUBE primary (`dns.primary`): it takes the zone by a signed AXFR
/// when it starts, follows a change within a second of the primary's NOTIFY, keeps its last
/// transfer across a restart while the primary is down, refuses records of its own, and
/// answers SERVFAIL before its first transfer.
#[test]
fn a_kube_secondary_follows_a_kube_primary() {
    if !have("dig") {
        return;
    }
    let (pa, pb) = (free_port(), free_port());
    let keys = format!(
        "  tsig_keys:\n    - {{ name: xfr, algorithm: hmac-sha256, secret: \"{TSIG_SECRET}\" }}\n"
    );
    let primary = Kube::start_with(Opts {
        config: Some(format!(
            "{ZONE}{keys}  secondaries:\n    - {{ address: \"127.0.0.1:{pb}\", key: xfr }}\n"
        )),
        env: vec![("KUBE_DNS_LISTEN".into(), format!("127.0.0.1:{pa}"))],
        ..Default::default()
    })
    .unwrap_or_else(|log| panic!("primary did not start:\n{log}"));
    let tmp = tempfile::tempdir().unwrap();
    let secondary_opts = |primary_port: u16| Opts {
        config: Some(format!(
            "domain: kube.test\ntls:\n  mode: local\ndns:\n  rrl:\n    enabled: false\n{keys}  primary: {{ address: \"127.0.0.1:{primary_port}\", key: xfr }}\n"
        )),
        env: vec![("KUBE_DNS_LISTEN".into(), format!("127.0.0.1:{pb}"))],
        data_dir: Some(tmp.path().join("data")),
    };
    let mut secondary = Kube::start_with(secondary_opts(pa))
        .unwrap_or_else(|log| panic!("secondary did not start:\n{log}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while short(&secondary, &["mail.kube.test", "A"]) != ["192.0.2.25"] {
        assert!(
            Instant::now() < deadline,
            "no transfer:\n{}",
            secondary.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        short(&secondary, &["kube.test", "SOA"]),
        short(&primary, &["kube.test", "SOA"])
    );
    assert_eq!(
        short(&secondary, &["kube.test", "MX"]),
        ["10 mail.kube.test."]
    );

    // A change at the primary: NOTIFY, and the secondary serves it within a second.
    let added = Instant::now();
    let r = api(
        &primary,
        reqwest::Method::POST,
        "/api/dns/records",
        r#"{"name": "new", "type": "A", "value": "192.0.2.77"}"#,
    );
    assert!(r.contains("added"), "{r}");
    while short(&secondary, &["new.kube.test", "A"]) != ["192.0.2.77"] {
        assert!(
            added.elapsed() < Duration::from_secs(1),
            "the secondary did not follow within a second:\n{}",
            secondary.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "the KUBE secondary served the change {:?} after it was added",
        added.elapsed()
    );

    // Records are the primary's; a transfer from the secondary is refused (it lists no
    // secondaries of its own).
    let r = api(
        &secondary,
        reqwest::Method::POST,
        "/api/dns/records",
        r#"{"name": "mine", "type": "A", "value": "192.0.2.99"}"#,
    );
    assert!(r.contains("secondary"), "{r}");
    let out = ask("dig", &secondary, &["kube.test", "AXFR"]);
    assert!(!out.contains("192.0.2.25"), "{out}");

    // The primary goes away; the restarted secondary serves its last transfer.
    drop(primary);
    assert!(secondary.terminate().success());
    let secondary = Kube::start_with(secondary_opts(pa))
        .unwrap_or_else(|log| panic!("secondary did not restart:\n{log}"));
    assert_eq!(short(&secondary, &["new.kube.test", "A"]), ["192.0.2.77"]);
    drop(secondary);

    // A secondary that never reached its primary has nothing to vouch for.
    let lonely = Kube::start_with(Opts {
        data_dir: None,
        ..secondary_opts(free_port())
    })
    .unwrap_or_else(|log| panic!("secondary did not start:\n{log}"));
    let out = ask("dig", &lonely, &["kube.test", "SOA"]);
    assert_eq!(status(&out), "SERVFAIL", "{out}");
}
