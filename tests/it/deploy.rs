//! deploy/: the static binary in an empty root, the systemd unit (systemd-analyze), the
//! Prometheus config (promtool), the Grafana dashboard's metrics against a running KUBE,
//! and the Dockerfile's ports. There is no container engine here: the Dockerfile's build
//! stage runs `deploy/build-static`, which `tests/run` runs directly (KUBE_STATIC_BIN), and
//! its final stage (nothing but the binary and /data) is what the empty-root test builds.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tests::{Kube, require_tools};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository")
        .to_owned()
}

fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            !require_tools(),
            "{tool} is required (tests/run installs it)"
        );
        eprintln!("skipped: {tool} not installed");
    }
    found
}

#[test]
fn static_binary_serves_from_an_empty_root() {
    let Some(bin) = std::env::var_os("KUBE_STATIC_BIN") else {
        assert!(
            !require_tools(),
            "KUBE_STATIC_BIN must name deploy/build-static's output (tests/run sets it)"
        );
        eprintln!("skipped: KUBE_STATIC_BIN not set");
        return;
    };
    let bin = repo().join(bin);
    let ldd = Command::new("ldd").arg(&bin).output().expect("ldd");
    let said =
        String::from_utf8_lossy(&ldd.stdout).to_string() + &String::from_utf8_lossy(&ldd.stderr);
    assert!(
        said.contains("not a dynamic executable") || said.contains("statically linked"),
        "ldd: {said}"
    );
    let unprivileged = !Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if unprivileged {
        assert!(!require_tools(), "chroot needs root");
        eprintln!("skipped: chroot needs root");
        return;
    }
    // The final image stage: the binary and an empty /data, nothing else (no /etc, no /tmp).
    let root = tempfile::tempdir().unwrap();
    std::fs::copy(&bin, root.path().join("kube")).unwrap();
    std::fs::create_dir(root.path().join("data")).unwrap();
    let mut child = Command::new("/usr/sbin/chroot")
        .arg(root.path())
        .args(["/kube", "start"])
        .env_clear()
        .envs([
            ("KUBE_DATA_DIR", "/data"),
            ("KUBE_HTTP_LISTEN", "127.0.0.1:0"),
            ("KUBE_HTTP_HTTPS_LISTEN", "127.0.0.1:0"),
            ("KUBE_DNS_LISTEN", "127.0.0.1:0"),
            ("KUBE_TURN_LISTEN", "127.0.0.1:0"),
            ("KUBE_ADMIN_LISTEN", "127.0.0.1:0"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chroot");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("kube ready") {
                let _ = tx.send(line);
            }
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(30));
    let result = (|| {
        let line = ready.map_err(|_| "no ready line within 30 s".to_string())?;
        let admin = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("admin="))
            .ok_or(format!("no admin address in {line}"))?
            .to_owned();
        http_get(&admin, "/readyz")?;
        // The image's HEALTHCHECK: `kube health` inside the same root.
        let health = Command::new("/usr/sbin/chroot")
            .arg(root.path())
            .args(["/kube", "health"])
            .env_clear()
            .env("KUBE_DATA_DIR", "/data")
            .output()
            .map_err(|e| e.to_string())?;
        if !health.status.success() {
            return Err(format!("kube health: {health:?}"));
        }
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result.unwrap();
    assert!(root.path().join("data/identity.key").exists());
    assert!(root.path().join("data/tls/ca.pem").exists());
}

/// A minimal HTTP/1.1 GET over a std TcpStream (the admin listener speaks plain HTTP).
fn http_get(addr: &str, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match std::net::TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => return Err(e.to_string()),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    if !out.starts_with("HTTP/1.1 200") {
        return Err(out);
    }
    Ok(out)
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    if !have("systemd-analyze") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(repo().join("deploy/kube.service")).unwrap();
    for key in [
        "DynamicUser=yes",
        "StateDirectory=kube",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
        "RestrictAddressFamilies=",
    ] {
        assert!(unit.contains(key), "kube.service lacks {key}");
    }
    // verify wants ExecStart's binary to exist: point it at the one under test.
    let unit = unit.replace("/usr/local/bin/kube", tests::kube_bin().to_str().unwrap());
    let path = dir.path().join("kube.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    // Outside a booted systemd it may only warn about the missing manager; nothing about
    // the unit itself may be said.
    let about_unit: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("kube.service"))
        .collect();
    assert!(
        out.status.success() && about_unit.is_empty(),
        "verify: {said}"
    );
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for kube.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    eprintln!("systemd-analyze security: exposure {score}");
    assert!(
        score <= 2.0,
        "exposure {score} (README reports the current one)\n{text}"
    );
}

#[test]
fn prometheus_config_checks() {
    if !have("promtool") {
        return;
    }
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(repo().join("deploy/prometheus.yml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// Every metric the dashboard queries is one a running KUBE exports (after an HTTPS request,
/// a DNS query and a signaling peer have passed), and every service has a panel.
#[tokio::test]
async fn grafana_dashboard_queries_exported_metrics() {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/kube.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut queried = BTreeSet::new();
    let mut titles = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        titles.push(p["title"].as_str().unwrap_or("").to_lowercase());
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("kube_") || word.starts_with("process_") {
                    queried.insert(word.to_owned());
                }
            }
        }
    }
    for service in ["http", "tls", "dns", "signaling", "turn", "echo", "process"] {
        assert!(
            titles.iter().any(|t| t.contains(service)),
            "no panel row for {service}: {titles:?}"
        );
    }
    // One supervised process, so the per-process series exist.
    let kube = Kube::start_with(tests::Opts {
        config: Some(
            "processes:\n  - {name: idle, command: sleep, args: ['100000'], restart: never}\n"
                .into(),
        ),
        ..Default::default()
    })
    .unwrap_or_else(|log| panic!("kube did not start:\n{log}"));
    let r = kube.client().get(kube.url("", "/")).send().await.unwrap();
    assert!(r.status().is_success());
    if have("dig") {
        let dns = kube.dns.expect("dns on by default");
        let out = Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &dns.port().to_string(),
                "localhost",
                "A",
                "+short",
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let (mut ws, _) = crate::signal::peer(&kube, 7).await;
    crate::signal::send(&mut ws, serde_json::json!({"type": "ice-servers"})).await;
    crate::signal::recv(&mut ws).await;
    // One refused message, for the errors panel.
    crate::signal::send(
        &mut ws,
        serde_json::json!({"type": "join", "swarm": "nope"}),
    )
    .await;
    crate::signal::recv(&mut ws).await;
    let metrics = kube.metrics().await;
    let exported: BTreeSet<String> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    for name in &queried {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            exported.contains(name) || exported.contains(base),
            "the dashboard queries {name}, which kube does not export"
        );
    }
    assert!(queried.len() >= 20, "{queried:?}");
}

/// The image exposes every port its environment makes KUBE listen on, and checks health
/// with KUBE's own command.
#[test]
fn dockerfile_exposes_every_listener() {
    let text = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    let expose: String = text
        .lines()
        .filter(|l| l.starts_with("EXPOSE"))
        .collect::<Vec<_>>()
        .join(" ");
    for line in text.lines() {
        let line = line
            .trim()
            .trim_start_matches("ENV ")
            .trim_end_matches('\\')
            .trim();
        if let Some((key, value)) = line.split_once('=')
            && key.starts_with("KUBE_")
            && key.ends_with("LISTEN")
        {
            let port = value.rsplit(':').next().unwrap();
            assert!(
                expose.contains(&format!("{port}/")),
                "{key}={value} not in {expose}"
            );
        }
    }
    assert!(text.contains("FROM scratch"));
    assert!(text.contains(r#"HEALTHCHECK"#) && text.contains(r#"["/kube", "health"]"#));
    assert!(text.contains("USER 10001"));
    assert!(text.contains("VOLUME /data"));
    assert!(text.contains("deploy/build-static"));
}

/// `log.format: json`: every line KUBE logs is one JSON object with a level and a message.
#[test]
fn json_logs_on_request() {
    let kube = Kube::start_with(tests::Opts {
        env: vec![("KUBE_LOG_FORMAT".into(), "json".into())],
        ..tests::Opts::default()
    })
    .unwrap_or_else(|log| panic!("kube did not start:\n{log}"));
    // The log is read in chunks: wait (bounded) for whole lines, and judge only those.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut log = kube.log();
    while !(log.ends_with('\n') && log.lines().count() > 1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        log = kube.log();
    }
    let whole = &log[..log.rfind('\n').map_or(0, |i| i + 1)];
    let lines: Vec<&str> = whole.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no whole log line: {log}");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
}

/// deploy/cluster: each KUBE's file passes `kube config check`, and the files agree with
/// each other and with compose.yml: the store's address, the DNS primary and secondaries at
/// the addresses compose gives them, one TSIG key everywhere (Knot's too), one TURN secret.
#[test]
fn the_cluster_example_checks_and_agrees_with_itself() {
    let dir = repo().join("deploy/cluster");
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let yaml = |name: &str| -> serde_json::Value {
        serde_saphyr::from_str(&read(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let compose = yaml("compose.yml");
    let services = &compose["services"];
    let ip = |svc: &str| {
        services[svc]["networks"]["cluster"]["ipv4_address"]
            .as_str()
            .unwrap_or_else(|| panic!("{svc} has no fixed address"))
            .to_owned()
    };
    let store = ip("store");
    let mut tsig = BTreeSet::new();
    let mut turn = BTreeSet::new();
    for n in ["a", "b", "c"] {
        let svc = &services[format!("kube-{n}")];
        let volumes = svc["volumes"].to_string();
        assert!(
            volumes.contains(&format!("./kube-{n}.yml:/etc/kube/kube.yml:ro")),
            "{volumes}"
        );
        assert!(svc["environment"]["AWS_ACCESS_KEY_ID"].is_string(), "{svc}");
        let out = Command::new(tests::kube_bin())
            .args(["config", "check", "-c"])
            .arg(dir.join(format!("kube-{n}.yml")))
            .env(
                "KUBE_DATA_DIR",
                std::env::temp_dir().join("kube-cluster-check"),
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kube-{n}.yml: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cfg = yaml(&format!("kube-{n}.yml"));
        assert_eq!(
            cfg["storage"]["endpoint"],
            format!("http://{store}:9000"),
            "kube-{n}"
        );
        tsig.insert(cfg["dns"]["tsig_keys"][0]["secret"].to_string());
        turn.insert(cfg["turn"]["secret"].to_string());
        if n == "a" {
            let secondaries = cfg["dns"]["secondaries"].to_string();
            for other in ["kube-b", "kube-c", "knot"] {
                let port = if other == "knot" { 53 } else { 5353 };
                assert!(
                    secondaries.contains(&format!("{}:{port}", ip(other))),
                    "{other} not in {secondaries}"
                );
            }
        } else {
            assert_eq!(
                cfg["dns"]["primary"]["address"],
                format!("{}:5353", ip("kube-a")),
                "kube-{n}"
            );
        }
    }
    assert_eq!(tsig.len(), 1, "one TSIG key: {tsig:?}");
    assert_eq!(turn.len(), 1, "one turn.secret: {turn:?}");
    let secret = tsig.into_iter().next().unwrap();
    assert!(
        read("knot.conf").contains(secret.trim_matches('"')),
        "Knot has the cluster's key"
    );
    assert!(read("knot.conf").contains(&format!("{}@5353", ip("kube-a"))));
}
