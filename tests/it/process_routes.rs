//! Processes behind KUBE's HTTPS listener, and the boundaries KUBE keeps around them, with
//! real programs (Node, Python, sh) as back-ends: routing over HTTP/1.1, HTTP/2 and
//! WebSocket beside a static bundle, readiness gating, `sd_notify`, a zero-downtime restart
//! and reload under steady load, a memory limit that kills a leaker, and a grandchild that
//! leaves the process group yet dies with its process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::processes::{logs, process, read_pid, start, wait_for, wait_gone};
use tests::{Kube, Opts};

/// A back-end: HTTP on `$PORT` answering with its pid and what it was told, `…/health`,
/// and a WebSocket echo (small text frames) on any path; it listens after
/// `START_DELAY_MS` and closes gracefully on TERM.
const BACKEND: &str = r#"
const http = require('http'), crypto = require('crypto');
const server = http.createServer((req, res) => {
  if (req.url.endsWith('/health')) { res.end('ok'); return; }
  if (req.url.endsWith('/hangup')) { req.socket.destroy(); return; }
  if (req.url.endsWith('/switch')) {
    req.socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n');
    return;
  }
  if (req.url.endsWith('/big')) { res.end(Buffer.alloc(3 << 20, 'k')); return; }
  if (req.method === 'POST') {
    let n = 0;
    req.on('data', (d) => { n += d.length; });
    req.on('end', () => res.end(JSON.stringify({ received: n })));
    return;
  }
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify({
    pid: process.pid, url: req.url, host: req.headers.host,
    xff: req.headers['x-forwarded-for'], proto: req.headers['x-forwarded-proto'],
    version: process.env.VERSION || '',
  }));
});
server.on('upgrade', (req, sock) => {
  const accept = crypto.createHash('sha1')
    .update(req.headers['sec-websocket-key'] + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11')
    .digest('base64');
  sock.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n' +
    'Connection: Upgrade\r\nSec-WebSocket-Accept: ' + accept + '\r\n\r\n');
  let buf = Buffer.alloc(0);
  sock.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 6) {
      const op = buf[0] & 0x0f, len = buf[1] & 0x7f;
      if (len > 100 || buf.length < 6 + len) break;
      const mask = buf.subarray(2, 6), data = Buffer.from(buf.subarray(6, 6 + len));
      for (let i = 0; i < len; i++) data[i] ^= mask[i % 4];
      buf = buf.subarray(6 + len);
      if (op === 8) { sock.end(); return; }
      const out = Buffer.from('echo ' + data.toString());
      sock.write(Buffer.concat([Buffer.from([0x81, out.length]), out]));
    }
  });
  sock.on('error', () => {});
});
process.on('SIGTERM', () => {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 3000).unref();
});
setTimeout(() => server.listen(Number(process.env.PORT), '127.0.0.1'),
  Number(process.env.START_DELAY_MS || 0));
"#;

/// The back-end's script in a temporary dir (kept as long as the returned guard).
fn backend() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("backend.js");
    std::fs::write(&path, BACKEND).expect("write the back-end");
    let path = path.to_str().expect("UTF-8 path").to_owned();
    (dir, path)
}

/// An HTTPS client trusting the KUBE's CA, sending every name to its HTTPS port.
fn client(kube: &Kube, http1: bool) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&kube.ca_pem()).expect("CA PEM");
    let mut b = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(20));
    for host in [
        "notes.localhost",
        "chat.localhost",
        "api.localhost",
        "notified.localhost",
    ] {
        b = b.resolve(host, kube.https);
    }
    if http1 {
        b = b.http1_only();
    }
    b.build().expect("client")
}

async fn get(c: &reqwest::Client, url: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let r = c.get(url).send().await.expect("an answer");
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, headers, r.text().await.expect("a body"))
}

async fn cli(kube: &Kube, args: &[&str]) {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    let dir = kube.data_dir.clone();
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        tests::cli_in(&dir, &args)
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routed_process_is_served_over_https_beside_its_apps_bundle() {
    let (_dir, script) = backend();
    let kube = start(&format!(
        "processes:
  - name: api
    command: node
    args: ['{script}']
    route: {{app: notes, path: /api/}}
    readiness: {{http: 'http://127.0.0.1:${{PORT}}/api/health', interval_secs: 1}}
  - name: chat
    command: node
    args: ['{script}']
    route: {{}}
  - name: never
    command: sleep
    args: ['1000']
    route: {{app: notes, path: /never/}}
    readiness: {{exec: ['false'], interval_secs: 1}}
"
    ));
    kube.publish(&[("index.html", b"<h1>notes bundle</h1>")], "notes");
    wait_for(&kube, "api", "ready", |p| p["ready"] == true);
    let port = process(&kube, "api")["port"].as_u64().expect("a port");
    let (h2, h1) = (client(&kube, false), client(&kube, true));
    let base = |app: &str| format!("https://{app}.localhost:{}", kube.https.port());

    // The process, over HTTP/2 and HTTP/1.1, told who asked; its forwarding headers are
    // KUBE's, not the client's.
    for c in [&h2, &h1] {
        let r = c
            .get(format!("{}/api/hello?x=1", base("notes")))
            .header("x-forwarded-for", "6.6.6.6")
            .send()
            .await
            .expect("answer");
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.expect("JSON");
        assert_eq!(v["url"], "/api/hello?x=1");
        assert_eq!(v["xff"], "127.0.0.1");
        assert_eq!(v["proto"], "https");
        assert_eq!(
            v["host"],
            format!("notes.localhost:{}", kube.https.port()),
            "{v}"
        );
    }
    // Large bodies both ways, streamed through, on connections that are then reused.
    for c in [&h2, &h1] {
        for _ in 0..3 {
            let big = c
                .get(format!("{}/api/big", base("notes")))
                .send()
                .await
                .expect("answer");
            assert_eq!(big.status(), 200);
            assert_eq!(big.bytes().await.expect("body").len(), 3 << 20);
            let up: Value = c
                .post(format!("{}/api/upload", base("notes")))
                .body(vec![7u8; 5 << 20])
                .send()
                .await
                .expect("answer")
                .json()
                .await
                .expect("JSON");
            assert_eq!(up["received"], 5 << 20);
        }
    }
    // A process that hangs up without an answer, or switches protocols unasked, gets a 502
    // to its client, and the next request is served.
    for bad in ["/api/hangup", "/api/switch"] {
        for c in [&h2, &h1] {
            let (status, _, body) = get(c, &format!("{}{bad}", base("notes"))).await;
            assert_eq!(status, 502, "{bad}: {body}");
            let (status, _, _) = get(c, &format!("{}/api/after", base("notes"))).await;
            assert_eq!(status, 200, "after {bad}");
        }
    }
    // The bundle keeps every other path of the host.
    let (status, _, body) = get(&h2, &format!("{}/", base("notes"))).await;
    assert_eq!((status, body.as_str()), (200, "<h1>notes bundle</h1>"));
    let (status, _, body) = get(&h2, &format!("{}/apix", base("notes"))).await;
    assert!(status == 404 && !body.contains("pid"), "{status} {body}");
    // A process with its own host name, with a certificate naming it.
    let (status, _, body) = get(&h1, &format!("{}/anything", base("chat"))).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"url\":\"/anything\""), "{body}");
    // Not ready: no traffic, a 503 that says so.
    let (status, headers, body) = get(&h2, &format!("{}/never/x", base("notes"))).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["retry-after"], "1");
    assert!(body.contains("never is not ready"), "{body}");

    // A WebSocket through KUBE to the process.
    let mut ws = tests::ws_connect(
        kube.https,
        "notes.localhost",
        &kube.ca_pem(),
        "/api/ws",
        "https://notes.localhost",
    )
    .await;
    for i in 0..3 {
        ws.send(Message::Text(format!("hi {i}").into()))
            .await
            .expect("send");
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("an answer in time")
            .expect("a message")
            .expect("not an error");
        assert_eq!(m, Message::Text(format!("echo hi {i}").into()));
    }
    // The process listens on loopback only, at the port KUBE gave it.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", u16::try_from(port).unwrap())).is_ok(),
        "the process listens on its PORT"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_and_reload_under_steady_load_fail_no_request() {
    let (_dir, script) = backend();
    let config = |version: &str| {
        format!(
            "processes:
  - name: api
    command: node
    args: ['{script}']
    env: {{START_DELAY_MS: '1500', VERSION: '{version}'}}
    route: {{}}
    readiness: {{http: 'http://127.0.0.1:${{PORT}}/health', interval_secs: 1}}
    stop_grace_secs: 5
"
        )
    };
    let kube = start(&config("one"));
    let first = wait_for(&kube, "api", "ready", |p| p["ready"] == true)["pid"].clone();
    let c = client(&kube, false);
    let url = format!("https://api.localhost:{}/load", kube.https.port());
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let seen = Arc::new(std::sync::Mutex::new(Vec::<(u64, String)>::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (c, url, stop, ok, failed, seen) = (
            c.clone(),
            url.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
            seen.clone(),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        let v: Value = r.json().await.unwrap_or_default();
                        let who = (
                            v["pid"].as_u64().unwrap_or(0),
                            v["version"].as_str().unwrap_or("").to_owned(),
                        );
                        let mut s = seen.lock().unwrap();
                        if !s.contains(&who) {
                            s.push(who);
                        }
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        eprintln!("failed: {}", r.status());
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("failed: {e}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The operator restarts it: the new instance takes 1.5 s to listen.
    cli(&kube, &["process", "restart", "api"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A reload changes its definition.
    let file = kube.data_dir.parent().unwrap().join("kube.yml");
    std::fs::write(&file, config("two")).unwrap();
    cli(&kube, &["reload"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.expect("load task");
    }
    let seen = seen.lock().unwrap().clone();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{ok} answered, {failed} failed; seen {seen:?}");
    assert!(ok > 50, "{ok} answered");
    assert_eq!(seen.len(), 3, "three instances served: {seen:?}");
    assert_eq!(seen[0].1, "one");
    assert_eq!(seen[2].1, "two", "{seen:?}");
    wait_gone(first.as_u64().unwrap(), "the first instance");
    wait_gone(seen[1].0, "the second instance");
    let log = logs(&kube, "api");
    assert!(log.contains("takes the traffic"), "{log}");
}

#[test]
fn a_memory_limit_kills_the_leaker_and_says_so() {
    let kube = start(
        "processes:
  - name: leaker
    command: python3
    args: ['-c', \"import time\\na = []\\nwhile True:\\n  a.append(b'x' * (1 << 20))\\n  time.sleep(0.005)\"]
    limits: {memory_mib: 48}
    restart: never
",
    );
    let p = wait_for(&kube, "leaker", "killed for its memory", |p| {
        p["state"] == "stopped"
    });
    let why = p["last_exit"].as_str().unwrap_or("").to_owned();
    assert!(why.starts_with("memory limit"), "{p}");
    assert!(
        logs(&kube, "leaker").contains("[kube] exited: memory limit"),
        "{}",
        logs(&kube, "leaker")
    );
    let m = kube.metrics_blocking();
    assert!(
        m.contains("kube_process_memory_limit_kills_total{name=\"leaker\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_notify_ready_gates_traffic() {
    let kube = start(
        "processes:
  - name: notified
    command: python3
    dir: notified
    notify: true
    route: {}
    args:
      - '-c'
      - |
        import http.server, os, socket, threading, time
        addr = os.environ['NOTIFY_SOCKET']
        addr = '\\0' + addr[1:] if addr.startswith('@') else addr
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.sendto(b'STATUS=warming up', addr)
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header('content-length', '3')
                self.end_headers()
                self.wfile.write(b'hi\\n')
        srv = http.server.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), H)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        while not os.path.exists('go'):
            time.sleep(0.05)
        s.sendto(b'READY=1\\nSTATUS=serving', addr)
        while True:
            time.sleep(1)
",
    );
    wait_for(&kube, "notified", "its first STATUS", |p| {
        p["notice"] == "warming up"
    });
    assert_eq!(process(&kube, "notified")["ready"], false);
    let c = client(&kube, false);
    let url = format!("https://notified.localhost:{}/", kube.https.port());
    let (status, _, _) = get(&c, &url).await;
    assert_eq!(status, 503, "not ready: no traffic");
    std::fs::write(kube.data_dir.join("notified/go"), b"").unwrap();
    wait_for(&kube, "notified", "READY=1", |p| p["ready"] == true);
    assert_eq!(process(&kube, "notified")["notice"], "serving");
    let (status, _, body) = get(&c, &url).await;
    assert_eq!((status, body.as_str()), (200, "hi\n"));
}

#[test]
fn a_grandchild_that_leaves_the_process_group_still_goes_with_it() {
    let config = "processes:
  - name: escaper
    command: sh
    args: ['-c', 'setsid sleep 1000 & echo $! > escaped.pid; wait']
    dir: escaper
    stop_grace_secs: 1
";
    let mut kube = start(config);
    let p = wait_for(&kube, "escaper", "running", |p| p["pid"].is_u64());
    if p["cgroup"].is_null() {
        eprintln!(
            "skipped: no writable cgroup v2 here; process groups alone cannot hold a setsid grandchild"
        );
        return;
    }
    let dir = kube.data_dir.join("escaper");
    let escaped = read_pid(&dir.join("escaped.pid"));
    assert!(!crate::processes::gone(escaped));
    kube.cli(&["process", "stop", "escaper"]);
    wait_gone(escaped, "a grandchild in its own session, after a stop");

    // After kill -9 of KUBE, the next start kills it through the cgroup.
    let _ = std::fs::remove_file(dir.join("escaped.pid"));
    kube.cli(&["process", "start", "escaper"]);
    let escaped = read_pid(&dir.join("escaped.pid"));
    let data_dir = kube.data_dir.clone();
    kube.kill();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !crate::processes::gone(escaped),
        "no parent-death signal reaches it"
    );
    let started = Instant::now();
    let _again = Kube::start_with(Opts {
        config: Some(config.to_owned()),
        data_dir: Some(data_dir),
        ..Default::default()
    })
    .unwrap_or_else(|log| panic!("restart failed:\n{log}"));
    wait_gone(escaped, "the escaped grandchild, after KUBE's next start");
    assert!(started.elapsed() < Duration::from_secs(10));
}
