//! The admin listener: token, health, readiness, metrics (checked by promtool), status, the
//! console's files and their policy.

use reqwest::StatusCode;
use tests::{Kube, require_tools};

#[tokio::test]
async fn api_needs_the_token() {
    let kube = Kube::start();
    let c = reqwest::Client::new();
    for path in ["/api/status", "/api/apps"] {
        let r = c.get(kube.admin_url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
        let r = c
            .get(kube.admin_url(path))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
        let r = c
            .get(kube.admin_url(path))
            .bearer_auth(kube.token())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    let r = c
        .put(kube.admin_url("/api/apps/x"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(!kube.data_dir.join("apps/x").exists());
    assert_eq!(
        c.get(kube.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        c.get(kube.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_console_is_served_under_a_strict_policy_and_gives_nothing_itself() {
    let kube = Kube::start();
    let c = reqwest::Client::new();
    let r = c.get(kube.admin_url("/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    for rule in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(rule), "{csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let html = r.text().await.unwrap();
    // Nothing inline for the policy to refuse: the script and style are files.
    assert!(html.contains("src=\"/console.js\""), "{html}");
    assert!(
        !html.contains("<style") && !html.contains("style=\""),
        "{html}"
    );
    assert!(
        !html.contains("<script>") && !html.contains("<script type=\"module\">"),
        "{html}"
    );
    for (path, kind) in [
        ("/console.js", "text/javascript"),
        ("/console.css", "text/css"),
    ] {
        let r = c.get(kube.admin_url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(kind),
            "{path}"
        );
    }
    let other = c.get(kube.admin_url("/console.map")).send().await.unwrap();
    assert!(
        [StatusCode::NOT_FOUND, StatusCode::UNAUTHORIZED].contains(&other.status()),
        "{}",
        other.status()
    );
    // The public identity carries the clock a signer needs, and nothing else is open.
    let id: serde_json::Value = c
        .get(kube.admin_url("/identity"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(id["identity"].as_str().unwrap().starts_with("did:key:"));
    assert!(id["time"].as_u64().unwrap() > 1_700_000_000);
}

#[tokio::test]
async fn status_shows_services_certificates_and_apps() {
    let kube = Kube::start();
    kube.publish(&[("index.html", b"x")], "shown");
    let out = kube.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("https={}", kube.https)), "{text}");
    assert!(text.contains(&format!("admin={}", kube.admin)), "{text}");
    assert!(
        text.contains("shown.localhost")
            && (text.contains("expires in 89 days") || text.contains("expires in 90 days")),
        "{text}"
    );
    assert!(text.contains(&kube.url("shown", "/")), "{text}");
    let json: serde_json::Value =
        serde_json::from_slice(&kube.cli(&["status", "--json"]).stdout).unwrap();
    assert_eq!(json["ready"], true);
    assert_eq!(json["apps"][0]["name"], "shown");
}

#[tokio::test]
async fn metrics_pass_promtool() {
    let kube = Kube::start();
    kube.publish(&[("index.html", b"x")], "m");
    let c = kube.client();
    c.get(kube.url("m", "/")).send().await.unwrap();
    c.get(kube.url("m", "/missing")).send().await.unwrap();
    let text = kube.metrics().await;
    for name in [
        "kube_build_info{version=",
        "kube_http_requests_total{app=\"m\",class=\"2xx\"} 1",
        "kube_http_requests_total{app=\"m\",class=\"4xx\"} 1",
        "kube_http_request_duration_seconds_bucket{app=\"m\"",
        "kube_apps_published 1",
        "kube_cert_not_after_seconds{name=\"m.localhost\"}",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(name), "metrics lack {name}:\n{text}");
    }
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        assert!(
            !require_tools(),
            "promtool is required (Debian package prometheus)"
        );
        eprintln!("promtool not installed: skipped the format check");
        return;
    };
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn malformed_http_gets_4xx_and_the_server_lives() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let kube = Kube::start();
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length: x\r\n\r\n",
        b"GET /\x00\xff HTTP/1.1\r\n\r\n",
        &[0xffu8; 3000][..],
    ] {
        for addr in [kube.http, kube.admin] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(garbage).await.unwrap();
            let mut buf = Vec::new();
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut buf))
                    .await;
            let text = String::from_utf8_lossy(&buf);
            assert!(
                text.is_empty() || text.starts_with("HTTP/1.1 4"),
                "{addr}: {text}"
            );
        }
        // Not TLS at all on the HTTPS port: the handshake fails, nothing else.
        let mut s = tokio::net::TcpStream::connect(kube.https).await.unwrap();
        s.write_all(garbage).await.unwrap();
        let mut buf = Vec::new();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    }
    let r = kube.client().get(kube.url("", "/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "still serving");
}

#[tokio::test]
async fn the_dns_api_lists_every_record_served_and_refuses_bad_json_in_json() {
    let kube = Kube::start();
    let d = kube.api(reqwest::Method::GET, "/api/dns").await;
    let listed = d["zone_records"].as_array().expect("zone_records");
    assert_eq!(listed[0]["type"], "SOA", "{d}");
    assert!(
        listed
            .iter()
            .any(|r| r["type"] == "NS" && r["name"] == "localhost."),
        "{d}"
    );
    assert_eq!(listed.len() as u64, d["records"].as_u64().unwrap(), "{d}");
    let r = reqwest::Client::new()
        .post(kube.admin_url("/api/dns/records"))
        .bearer_auth(kube.token())
        .header("content-type", "application/json")
        .body(r#"{"name": "x", "value": "1.2.3.4"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let v: serde_json::Value = r.json().await.expect("a JSON refusal");
    assert_eq!(v["error"], "bad_request");
    assert!(v["message"].as_str().unwrap().contains("type"), "{v}");
}
