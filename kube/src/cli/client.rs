//! The admin API client the CLI uses: it finds the running KUBE through `<data_dir>/run.json`
//! (or `admin.listen`) and signs each request with an operator key (`--key`, `KUBE_KEY`), or
//! else sends the bearer token from `<data_dir>/admin.token`.

use std::path::Path;

use anyhow::{Context, anyhow, bail};
use serde_json::Value;

use crate::datadir;

enum Auth {
    Token(String),
    /// An operator key, and the did:key of the KUBE the requests are for.
    Key {
        key: Box<halo::SigningKey>,
        server: String,
    },
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    auth: Auth,
}

impl Client {
    pub async fn connect(file: Option<&Path>, key: Option<&Path>) -> anyhow::Result<Client> {
        let cfg = super::local::load(file)?.config;
        let run = datadir::run_info_path(&cfg.data_dir);
        let info = std::fs::read_to_string(&run)
            .with_context(|| {
                format!(
                    "is kube running on data dir {}? ({} not readable)",
                    cfg.data_dir.display(),
                    run.display()
                )
            })
            .and_then(|text| {
                serde_json::from_str::<datadir::RunInfo>(&text)
                    .with_context(|| format!("reading {}", run.display()))
            });
        let (admin, auth) = match key {
            // An operator may not be able to read the data dir: admin.listen finds KUBE.
            Some(key) => {
                let key = Box::new(crate::identity::load(key).context("the operator key (--key)")?);
                let (admin, server) = match info {
                    Ok(i) if !i.identity.is_empty() => (i.admin, Some(i.identity)),
                    Ok(i) => (i.admin, None),
                    Err(_) => (cfg.admin.listen.to_string(), None),
                };
                (
                    admin,
                    Auth::Key {
                        key,
                        server: server.unwrap_or_default(),
                    },
                )
            }
            None => {
                let info = info?;
                let token_path = datadir::token_path(&cfg.data_dir);
                let token = std::fs::read_to_string(&token_path)
                    .with_context(|| {
                        format!(
                            "reading the admin token {} (or sign with --key)",
                            token_path.display()
                        )
                    })?
                    .trim()
                    .to_owned();
                (info.admin, Auth::Token(token))
            }
        };
        let http = reqwest::Client::builder()
            .build()
            .context("building the HTTP client")?;
        let base = format!("http://{admin}");
        let auth = match auth {
            // Without run.json, KUBE's public key comes from its admin listener.
            Auth::Key { key, server } if server.is_empty() => {
                let server = fetch_identity(&http, &base).await?;
                Auth::Key { key, server }
            }
            other => other,
        };
        Ok(Client { http, base, auth })
    }

    /// A request without a body.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.request_body(method, path, &halo::request::body_hash(b""))
    }

    /// A request with a JSON body.
    pub fn request_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> reqwest::RequestBuilder {
        let bytes = body.to_string().into_bytes();
        self.request_body(method, path, &halo::request::body_hash(&bytes))
            .header("content-type", "application/json")
            .body(bytes)
    }

    /// A request whose body (set by the caller) hashes to `body_sha256` (lowercase hex).
    pub fn request_body(
        &self,
        method: reqwest::Method,
        path: &str,
        body_sha256: &str,
    ) -> reqwest::RequestBuilder {
        let url = format!("{}{path}", self.base);
        let req = self.http.request(method.clone(), &url);
        match &self.auth {
            Auth::Token(token) => req.bearer_auth(token),
            Auth::Key { key, server } => {
                // Sign the path as it goes on the wire: the URL parser percent-encodes and
                // resolves dot segments the way reqwest will.
                let on_wire = match reqwest::Url::parse(&url) {
                    Ok(u) => match u.query() {
                        Some(q) => format!("{}?{q}", u.path()),
                        None => u.path().to_owned(),
                    },
                    Err(_) => path.to_owned(),
                };
                let ts = crate::service::unix_now();
                let to = halo::request::Target {
                    server,
                    method: method.as_str(),
                    path: &on_wire,
                };
                let signed = halo::request::sign_hashed(key, to, body_sha256, ts, rand::random());
                req.header("authorization", signed.header())
            }
        }
    }

    /// Sends a request and returns its JSON, or the server's error message.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let resp = req
            .send()
            .await
            .map_err(|e| anyhow!("no answer from kube at {}: {e}", self.base))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = body.get("message").and_then(Value::as_str).unwrap_or("");
            bail!("{status}: {msg}");
        }
        Ok(body)
    }
}

async fn fetch_identity(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let v: Value = http
        .get(format!("{base}/identity"))
        .send()
        .await
        .map_err(|e| anyhow!("no answer from kube at {base}: {e}"))?
        .json()
        .await
        .context("reading KUBE's identity")?;
    v["identity"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("{base}/identity names no identity"))
}

pub async fn status(c: &Client, json: bool) -> anyhow::Result<()> {
    let s = c
        .send(c.request(reqwest::Method::GET, "/api/status"))
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    let str_of = |v: &Value| v.as_str().unwrap_or("").to_owned();
    println!(
        "KUBE {} for {}  ({}, up {}s)\nidentity {}",
        str_of(&s["version"]),
        str_of(&s["domain"]),
        if s["ready"].as_bool() == Some(true) {
            "ready"
        } else {
            "not ready"
        },
        s["uptime_secs"],
        str_of(&s["identity"])
    );
    println!("\nservices:");
    for svc in s["services"].as_array().into_iter().flatten() {
        let listen: Vec<String> = svc["listen"]
            .as_array()
            .into_iter()
            .flatten()
            .map(str_of)
            .collect();
        println!(
            "  {:<8} {:<8} {}",
            str_of(&svc["name"]),
            str_of(&svc["state"]),
            listen.join(" ")
        );
    }
    println!("\ncertificates ({} mode):", str_of(&s["tls"]["mode"]));
    print_certs(&s);
    if let Some(dns) = s.get("dns").filter(|d| !d.is_null()) {
        println!(
            "\ndns: zone {} serial {}, {} records ({} added at run time)",
            str_of(&dns["zone"]),
            dns["serial"],
            dns["records"],
            dns["runtime_records"]
                .as_array()
                .map(|a| a.len())
                .unwrap_or(0)
        );
    }
    println!(
        "\nsignaling: {} peers in {} swarms ({} connections)",
        s["signal"]["peers"], s["signal"]["swarms"], s["signal"]["connections"]
    );
    println!(
        "turn: {} allocations, {} bytes relayed",
        s["turn"]["allocations"], s["turn"]["relayed_bytes"]
    );
    if s["echo"].is_object() {
        println!(
            "echo: {} spaces, {} documents, {} peers, {:.1} MiB stored",
            s["echo"]["spaces"],
            s["echo"]["documents"],
            s["echo"]["peers"],
            s["echo"]["storage_bytes"].as_u64().unwrap_or(0) as f64 / 1048576.0
        );
        for l in s["echo"]["links"].as_array().into_iter().flatten() {
            let state = if l["up"].as_bool() == Some(true) {
                "up".to_owned()
            } else {
                format!("DOWN ({})", str_of(&l["error"]))
            };
            println!(
                "  link {} {}: {state}",
                str_of(&l["url"]),
                str_of(&l["did"])
            );
        }
        for q in s["echo"]["quarantined"].as_array().into_iter().flatten() {
            println!(
                "  QUARANTINED {} of {}: {}",
                str_of(&q["document"]),
                str_of(&q["space"]),
                str_of(&q["why"])
            );
        }
    } else {
        println!("echo: off");
    }
    let procs = s["processes"].as_array().cloned().unwrap_or_default();
    if !procs.is_empty() {
        println!("processes:");
        for p in procs {
            println!(
                "  {:<20} {:<8} restarts {:<4} last exit {}",
                str_of(&p["name"]),
                str_of(&p["state"]),
                p["restarts"].as_u64().unwrap_or(0),
                p["last_exit"].as_str().unwrap_or("-")
            );
        }
    }
    let bytes = s["disk"]["bytes"].as_u64().unwrap_or(0);
    println!(
        "disk: {:.1} MiB in {}",
        bytes as f64 / (1024.0 * 1024.0),
        str_of(&s["disk"]["data_dir"])
    );
    println!("\napps:");
    let apps = s["apps"].as_array().cloned().unwrap_or_default();
    if apps.is_empty() {
        println!("  none");
    }
    for a in apps {
        println!(
            "  {:<20} v{:<4} {}",
            str_of(&a["name"]),
            a["current"],
            str_of(&a["url"])
        );
    }
    Ok(())
}

fn print_certs(s: &Value) {
    let str_of = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let now = crate::service::unix_now();
    for cert in s["certificates"].as_array().into_iter().flatten() {
        let names: Vec<String> = cert["names"]
            .as_array()
            .into_iter()
            .flatten()
            .map(str_of)
            .collect();
        let not_after = cert["not_after"].as_u64().unwrap_or(0);
        let left = not_after.saturating_sub(now);
        let expiry = if left >= 86_400 {
            format!("{} days", left / 86_400)
        } else {
            format!("{left} s")
        };
        println!(
            "  {}  expires in {expiry}  issuer {}",
            names.join(", "),
            str_of(&cert["issuer"])
        );
    }
    let acme = &s["acme"];
    if acme.is_object() {
        println!(
            "  acme: {} at {}",
            str_of(&acme["state"]),
            str_of(&acme["directory"])
        );
        if let Some(e) = acme["last_error"].as_str() {
            println!("  last error ({} in a row): {e}", acme["failures"]);
        }
        if let Some(next) = acme["next_attempt"].as_u64() {
            println!("  next attempt in {} s", next.saturating_sub(now));
        }
    }
}

pub async fn cert(c: &Client, command: super::CertCommand) -> anyhow::Result<()> {
    match command {
        super::CertCommand::List => {
            let s = c
                .send(c.request(reqwest::Method::GET, "/api/certs"))
                .await?;
            println!("{} mode:", s["mode"].as_str().unwrap_or(""));
            print_certs(&s);
        }
        super::CertCommand::Renew => {
            c.send(c.request(reqwest::Method::POST, "/api/certs/renew"))
                .await?;
            println!("renewal started; `kube cert list` shows its progress");
        }
    }
    Ok(())
}

pub async fn reload(c: &Client) -> anyhow::Result<()> {
    let r = c
        .send(c.request(reqwest::Method::POST, "/api/reload"))
        .await
        .context("reload refused, nothing applied; the running configuration stays")?;
    let list = |v: &Value| -> String {
        let names: Vec<&str> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if names.is_empty() {
            "nothing".into()
        } else {
            names.join(", ")
        }
    };
    println!("reloaded: applied {}", list(&r["applied"]));
    if r["restart"].as_array().is_some_and(|a| !a.is_empty()) {
        println!(
            "changed, applies at the next restart: {}",
            list(&r["restart"])
        );
    }
    let failed: Vec<&str> = r["failed"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !failed.is_empty() {
        bail!(
            "refused, these keep running as they were:\n  {}",
            failed.join("\n  ")
        );
    }
    Ok(())
}

/// `kube health`: 0 when the admin listener answers `/healthz` (or `/readyz`).
pub async fn health(file: Option<&Path>, ready: bool) -> i32 {
    let path = if ready { "/readyz" } else { "/healthz" };
    let addr = match super::local::load(file) {
        Ok(l) => {
            let run = datadir::run_info_path(&l.config.data_dir);
            std::fs::read_to_string(run)
                .ok()
                .and_then(|t| serde_json::from_str::<datadir::RunInfo>(&t).ok())
                .and_then(|i| i.admin.parse().ok())
                .unwrap_or(l.config.admin.listen)
        }
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    // A wildcard listen address is reached on loopback.
    let addr = match addr {
        std::net::SocketAddr::V4(a) if a.ip().is_unspecified() => {
            std::net::SocketAddr::from(([127, 0, 0, 1], a.port()))
        }
        std::net::SocketAddr::V6(a) if a.ip().is_unspecified() => {
            std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
        }
        other => other,
    };
    let client = match reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    match client.get(format!("http://{addr}{path}")).send().await {
        Ok(r) if r.status().is_success() => {
            println!("ok: {addr}{path}");
            0
        }
        Ok(r) => {
            eprintln!("unhealthy: {addr}{path} answered {}", r.status());
            1
        }
        Err(e) => {
            eprintln!("unhealthy: no answer from {addr}{path}: {e}");
            1
        }
    }
}

/// `kube backup FILE`: streams the snapshot to FILE (0600), renamed into place when whole.
pub async fn backup(c: &Client, file: &Path) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    use std::os::unix::fs::OpenOptionsExt;
    use tokio::io::AsyncWriteExt;
    let resp = c
        .request(reqwest::Method::GET, "/api/backup")
        .send()
        .await
        .map_err(|e| anyhow!("no answer from kube at {}: {e}", c.base))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        bail!("{status}: {}", body["message"].as_str().unwrap_or(""));
    }
    let tmp = file.with_file_name(format!(
        ".{}.partial",
        file.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("backup")
    ));
    let std_file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let mut out = tokio::fs::File::from_std(std_file);
    let mut stream = resp.bytes_stream();
    let mut total = 0u64;
    let copied = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.context("the backup stream broke off")?;
            total += chunk.len() as u64;
            out.write_all(&chunk).await?;
        }
        out.sync_all().await?;
        anyhow::Ok(())
    }
    .await;
    drop(out);
    let renamed = copied.and_then(|()| {
        std::fs::rename(&tmp, file).with_context(|| format!("writing {}", file.display()))
    });
    if let Err(e) = renamed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    println!("wrote {} ({total} bytes)", file.display());
    Ok(())
}
