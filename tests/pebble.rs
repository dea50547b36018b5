//! A real Pebble ACME server for the tests: its own test CA for its HTTPS listener, its
//! validation ports pointed at a KUBE, and KUBE's DNS as its resolver.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A TCP port free at the time of asking (and its UDP twin, for DNS), never one handed out
/// before in this process (the tests run in one process, side by side: two of them, or two
/// ports of one test, must not get the same port while neither has bound it yet).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..200 {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = tcp.local_addr().expect("addr").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no free port");
}

/// A CA and a certificate it signed for 127.0.0.1 and localhost, as PEM files in `dir`.
pub fn test_pki(dir: &std::path::Path, names: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "KUBE test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let leaf =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("leaf");
    let (ca_path, cert_path, key_path) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&ca_path, ca_cert.pem()).expect("write");
    std::fs::write(&cert_path, format!("{}{}", leaf.pem(), ca_cert.pem())).expect("write");
    std::fs::write(&key_path, key.serialize_pem()).expect("write");
    (ca_path, cert_path, key_path)
}

pub struct Pebble {
    child: Option<Child>,
    _dir: tempfile::TempDir,
    pub directory: String,
    pub management: SocketAddr,
    /// The CA of Pebble's own HTTPS listener (`acme.ca_root`).
    pub tls_ca: PathBuf,
    log: PathBuf,
}

impl Pebble {
    /// Starts Pebble validating HTTP-01 on `http_port`, TLS-ALPN-01 on `tls_port`, resolving
    /// through `dns`; certificates live `validity_secs`.
    pub fn start(http_port: u16, tls_port: u16, dns: SocketAddr, validity_secs: u64) -> Pebble {
        Pebble::start_validating(http_port, tls_port, dns, validity_secs, true)
    }

    /// As `start`; with `validate` false Pebble takes every challenge as answered
    /// (`PEBBLE_VA_ALWAYS_VALID`), for tests about who orders rather than how.
    pub fn start_validating(
        http_port: u16,
        tls_port: u16,
        dns: SocketAddr,
        validity_secs: u64,
        validate: bool,
    ) -> Pebble {
        // Its ports are free when picked, but a test running beside may take one before
        // Pebble binds it (Pebble then exits, and the port answers for someone else): such
        // a start is tried again on other ports.
        for _ in 0..5 {
            if let Some(p) = Pebble::try_start(http_port, tls_port, dns, validity_secs, validate) {
                return p;
            }
        }
        panic!("pebble did not start on five pairs of free ports");
    }

    fn try_start(
        http_port: u16,
        tls_port: u16,
        dns: SocketAddr,
        validity_secs: u64,
        validate: bool,
    ) -> Option<Pebble> {
        let dir = tempfile::tempdir().expect("dir");
        let (tls_ca, cert, key) = test_pki(dir.path(), &["127.0.0.1", "localhost"]);
        let (listen, management) = (free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": cert,
            "privateKey": key,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity_secs,
        }});
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).expect("write");
        let log = dir.path().join("pebble.log");
        let out = std::fs::File::create(&log).expect("log");
        let mut cmd = Command::new("pebble");
        if !validate {
            cmd.env("PEBBLE_VA_ALWAYS_VALID", "1");
        }
        let child = cmd
            .arg("-config")
            .arg(&config_path)
            .arg("-dnsserver")
            .arg(dns.to_string())
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(Stdio::from(out.try_clone().expect("log")))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("pebble (Debian package pebble) must be installed");
        let mut pebble = Pebble {
            child: Some(child),
            directory: format!("https://127.0.0.1:{listen}/dir"),
            management: SocketAddr::from(([127, 0, 0, 1], management)),
            tls_ca,
            _dir: dir,
            log,
        };
        // Up once it says it serves the directory and has not failed to bind since.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let text = pebble.log();
            if text.contains("address already in use") || pebble.exited() {
                pebble.stop();
                return None;
            }
            if text.contains("ACME directory available")
                && TcpStream::connect(("127.0.0.1", listen)).is_ok()
            {
                std::thread::sleep(Duration::from_millis(200));
                if !pebble.exited() && !pebble.log().contains("address already in use") {
                    return Some(pebble);
                }
            }
            assert!(Instant::now() < deadline, "pebble did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// The root that signs the certificates Pebble issues (`/roots/0`).
    pub async fn issuing_root(&self) -> Vec<u8> {
        let ca =
            reqwest::Certificate::from_pem(&std::fs::read(&self.tls_ca).expect("ca")).expect("pem");
        let c = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .build()
            .expect("client");
        let url = format!("https://{}/roots/0", self.management);
        c.get(url)
            .send()
            .await
            .expect("roots")
            .bytes()
            .await
            .expect("body")
            .to_vec()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("---- pebble log ----\n{}", self.log());
        }
    }
}
