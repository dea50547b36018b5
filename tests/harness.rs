//! Test harness: runs the real `kube` binary on port 0 with a temporary data dir, waits for
//! its ready line with a deadline, gives real clients for it, and kills it on drop (printing
//! its log when the test failed).

pub mod pebble;
pub mod s3;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// The `kube` binary under test: `KUBE_BIN`, or the one built beside this test binary.
pub fn kube_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KUBE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/it-<hash> -> target/<profile>/kube
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("kube");
    assert!(
        bin.exists(),
        "{} not built: run `cargo build -p kube` first (tests/run does)",
        bin.display()
    );
    bin
}

/// Whether a missing external tool fails the test (`tests/run` sets this) or skips it.
pub fn require_tools() -> bool {
    std::env::var_os("KUBE_REQUIRE_TOOLS").is_some()
}

pub struct Kube {
    child: Option<Child>,
    pub data_dir: PathBuf,
    /// Keeps the temporary directory alive.
    _tmp: Option<tempfile::TempDir>,
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    /// The DNS server (UDP and TCP on one port), when `dns.enabled`.
    pub dns: Option<SocketAddr>,
    log: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
}

/// How to start a KUBE.
#[derive(Default)]
pub struct Opts {
    /// kube.yml text; written into the temp dir and passed with -c.
    pub config: Option<String>,
    pub env: Vec<(String, String)>,
    /// Reuse a data dir (restarts); default: a fresh temp dir.
    pub data_dir: Option<PathBuf>,
}

impl Kube {
    pub fn start() -> Kube {
        Kube::start_with(Opts::default()).unwrap_or_else(|log| panic!("kube did not start:\n{log}"))
    }

    /// Starts kube; on failure returns its output.
    pub fn start_with(opts: Opts) -> Result<Kube, String> {
        let (tmp, data_dir) = match opts.data_dir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::tempdir().expect("temp dir");
                let d = t.path().join("data");
                (Some(t), d)
            }
        };
        let mut cmd = Command::new(kube_bin());
        cmd.arg("start")
            .env("KUBE_DATA_DIR", &data_dir)
            .env("KUBE_HTTP_LISTEN", "127.0.0.1:0")
            .env("KUBE_HTTP_HTTPS_LISTEN", "127.0.0.1:0")
            .env("KUBE_ADMIN_LISTEN", "127.0.0.1:0")
            .env("KUBE_DNS_LISTEN", "127.0.0.1:0")
            .env("KUBE_TURN_LISTEN", "127.0.0.1:0")
            .env("KUBE_LOG", "info,kube=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(text) = &opts.config {
            let parent = data_dir.parent().unwrap_or(Path::new("/tmp")).to_owned();
            std::fs::create_dir_all(&parent).expect("config dir");
            let file = parent.join("kube.yml");
            std::fs::write(&file, text).expect("write config");
            cmd.arg("-c").arg(file);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn kube");
        let log = Arc::new(Mutex::new(String::new()));
        let stdout_text = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().expect("stdout piped");
        let out = stdout_text.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                out.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        let stderr = child.stderr.take().expect("stderr piped");
        let l = log.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                l.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let ready = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) if line.starts_with("kube ready ") => break Some(line),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(_)) = child.try_wait() {
                        break None;
                    }
                    if Instant::now() >= deadline {
                        break None;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break None,
            }
        };
        let Some(line) = ready else {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
            return Err(format!(
                "{}{}",
                stdout_text.lock().unwrap(),
                log.lock().unwrap()
            ));
        };
        let addr = |label: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{label}=")))
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no {label}= in ready line {line:?}"))
        };
        Ok(Kube {
            https: addr("https"),
            http: addr("http"),
            admin: addr("admin"),
            dns: line
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix("dns="))
                .and_then(|a| a.parse().ok()),
            child: Some(child),
            data_dir,
            _tmp: tmp,
            log,
            stdout: stdout_text,
        })
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// An address from the ready line (`turn`, `dns`, …).
    pub fn ready_addr(&self, label: &str) -> Option<SocketAddr> {
        let out = self.stdout();
        let line = out.lines().find(|l| l.starts_with("kube ready "))?;
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{label}=")))
            .and_then(|a| a.parse().ok())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL, as a crash would; the data dir stays for a restart.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal_and_wait("-TERM")
    }

    /// Sends `signal` (`-HUP`, …) and returns at once.
    pub fn send_signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .arg(signal)
            .arg(self.pid().to_string())
            .status();
    }

    /// The Prometheus exposition from `/metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.admin_url("/metrics"))
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics body")
    }

    /// As [`Kube::metrics`], for tests that are not async.
    pub fn metrics_blocking(&self) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(self.metrics())
    }

    /// Sends `signal` (`-INT`, `-TERM`) and waits (bounded) for the exit status.
    pub fn signal_and_wait(&mut self, signal: &str) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("kube did not stop within 20 s of {signal}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Publishes a bundle directory with the CLI, asserting success; returns its output.
    pub fn publish_dir(&self, dir: &Path, name: &str) -> String {
        let path = dir.to_str().expect("utf-8 temp path");
        let out = self.cli(&["app", "publish", path, "--name", name]);
        assert!(
            out.status.success(),
            "publish failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes `files` into a fresh directory and publishes it as `name`.
    pub fn publish(&self, files: &[(&str, &[u8])], name: &str) -> String {
        let dir = bundle_dir(files);
        self.publish_dir(dir.path(), name)
    }

    /// Runs a `kube` CLI command against this KUBE's data dir.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli_in(&self.data_dir, args)
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.data_dir.join("tls/ca.pem")).expect("local CA exists")
    }

    /// An HTTPS client trusting only this KUBE's CA, resolving every name to loopback.
    pub fn client(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(&self.ca_pem()).expect("CA PEM");
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .dns_resolver(Arc::new(Loopback))
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .expect("client")
    }

    /// `https://<app>.localhost:<port><path>` (or the apex when app is empty).
    pub fn url(&self, app: &str, path: &str) -> String {
        let host = if app.is_empty() {
            "localhost".to_string()
        } else {
            format!("{app}.localhost")
        };
        format!("https://{host}:{}{path}", self.https.port())
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// An admin API request with the bearer token; its JSON answer.
    pub async fn api(&self, method: reqwest::Method, path: &str) -> serde_json::Value {
        reqwest::Client::new()
            .request(method, self.admin_url(path))
            .bearer_auth(self.token())
            .send()
            .await
            .expect("admin API answers")
            .json()
            .await
            .expect("a JSON answer")
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .expect("token")
            .trim()
            .to_owned()
    }
}

/// Runs `kube` with `KUBE_DATA_DIR` set (no server needed).
pub fn cli_in(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(kube_bin())
        .args(args)
        .env("KUBE_DATA_DIR", data_dir)
        .stdin(Stdio::null())
        .output()
        .expect("run kube")
}

impl Drop for Kube {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- kube stdout ----\n{}\n---- kube log ----\n{}",
                self.stdout(),
                self.log()
            );
        }
    }
}

/// Resolves every name to 127.0.0.1 (the port comes from the URL).
struct Loopback;

impl reqwest::dns::Resolve for Loopback {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async {
            let addrs: reqwest::dns::Addrs =
                Box::new(std::iter::once(SocketAddr::from(([127, 0, 0, 1], 0))));
            Ok(addrs)
        })
    }
}

/// Writes files into a fresh directory: `[("index.html", b"...")]`.
pub fn bundle_dir(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("bundle dir");
    for (path, bytes) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, bytes).expect("write");
    }
    dir
}

/// A raw tar entry: any name bytes (even `..` or absolute), any type, any link target.
pub struct RawEntry<'a> {
    pub name: &'a [u8],
    pub kind: tar::EntryType,
    pub data: &'a [u8],
    pub link: Option<&'a [u8]>,
}

/// Builds a .tar.gz byte for byte, bypassing the tar crate's path checks, so the tests can
/// send what a hostile client would.
pub fn raw_targz(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_gnu();
        {
            let gnu = h.as_gnu_mut().expect("gnu header");
            gnu.name[..e.name.len()].copy_from_slice(e.name);
            if let Some(l) = e.link {
                gnu.linkname[..l.len()].copy_from_slice(l);
            }
        }
        h.set_entry_type(e.kind);
        h.set_size(e.data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(e.data);
        let pad = (512 - e.data.len() % 512) % 512;
        out.extend(std::iter::repeat_n(0u8, pad));
    }
    out.extend(std::iter::repeat_n(0u8, 1024));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &out).expect("gzip");
    gz.finish().expect("gzip")
}

/// A WebSocket over TLS to `addr`, for `host` (SNI and Host), trusting only the roots in
/// `root_pem`, with an `Origin` header.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

pub async fn ws_connect(
    addr: SocketAddr,
    host: &str,
    root_pem: &[u8],
    path: &str,
    origin: &str,
) -> Ws {
    ws_try_connect(addr, host, root_pem, path, origin)
        .await
        .expect("WebSocket")
}

/// [`ws_connect`], with the upgrade's failure (for instance the HTTP answer) returned.
pub async fn ws_try_connect(
    addr: SocketAddr,
    host: &str,
    root_pem: &[u8],
    path: &str,
    origin: &str,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root_pem) {
        roots.add(c.expect("PEM")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from(host.to_owned()).expect("name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("TLS");
    let mut req = format!("wss://{host}:{}{path}", addr.port())
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("origin", origin.parse().expect("origin"));
    let (ws, _) = tokio_tungstenite::client_async(req, tls).await?;
    Ok(ws)
}
