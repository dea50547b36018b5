//! `kube start`: checks every section, takes the data dir lock, starts the services in
//! dependency order (undoing the started ones if one fails), prints the banner and the ready
//! line, and on SIGINT/SIGTERM stops them in reverse within the grace period.

use std::io::Write;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use config::{Config, Loaded, Problem};

use crate::admin::{AdminDeps, AdminService};
use crate::apps::Apps;
use crate::datadir;
use crate::http::{HttpDeps, HttpService};
use crate::metrics::Metrics;
use crate::service::{Board, Context, Running, Service, ServiceStatus};
use crate::tls::Tls;

pub fn context(cfg: &Config) -> Context {
    Context {
        domain: cfg.domain.trim_end_matches('.').to_ascii_lowercase(),
        data_dir: cfg.data_dir.clone(),
    }
}

/// Every service's own checks, beyond what the config crate checks by type.
pub fn check(cfg: &Config) -> Vec<Problem> {
    let cx = context(cfg);
    let mut p = Vec::new();
    p.extend(Tls::check(&cfg.tls, &cx));
    p.extend(Apps::check(&cfg.apps, &cx));
    p.extend(AdminService::check(&cfg.admin, &cx));
    p.extend(HttpService::check(&cfg.http, &cx));
    if !cfg.processes.is_empty() {
        p.push(Problem::new(
            "processes",
            "process supervision is planned but not in this version; leave the list empty",
        ));
    }
    p
}

/// Runs KUBE until a stop signal. `loaded` has passed [`check`] already (`cli::local::load`).
pub async fn run(loaded: Loaded) -> anyhow::Result<()> {
    let cfg = loaded.config;
    let started_at = Instant::now();
    let cx = context(&cfg);
    datadir::create_private_dir(&cx.data_dir).context("creating the data dir")?;
    let _lock = datadir::lock(&cx.data_dir)?;

    let metrics = Arc::new(Metrics::new());
    let board = Board::new();
    let mut running: Vec<Box<dyn Running>> = Vec::new();
    let grace = Duration::from_secs(cfg.http.shutdown_grace_secs);

    let result = start_all(&cfg, &cx, &metrics, &board, &mut running).await;
    if let Err(e) = result {
        stop_all(running, grace).await;
        return Err(e);
    }

    let mut bound = Vec::new();
    for r in &running {
        let addrs = r.bound();
        board.record(ServiceStatus {
            name: r.name(),
            state: "running",
            listen: addrs.iter().map(|(l, a)| format!("{l}={a}")).collect(),
        });
        bound.extend(addrs);
    }
    let find = |label: &str| bound.iter().find(|(l, _)| *l == label).map(|(_, a)| *a);
    let (https, http, admin) = (find("https"), find("http"), find("admin"));
    let info = datadir::RunInfo {
        pid: std::process::id(),
        admin: admin.map(|a| a.to_string()).unwrap_or_default(),
        https: https.map(|a| a.to_string()),
        http: http.map(|a| a.to_string()),
        domain: cx.domain.clone(),
        public_https_port: cfg.http.public_https_port,
    };
    datadir::write_private(
        &datadir::run_info_path(&cx.data_dir),
        serde_json::to_string_pretty(&info)?.as_bytes(),
    )?;
    board.set_ready(true);
    print_banner(&cfg, &cx, &bound, started_at.elapsed());

    wait_for_stop().await;
    tracing::info!("stopping");
    board.set_ready(false);
    stop_all(running, grace).await;
    let _ = std::fs::remove_file(datadir::run_info_path(&cx.data_dir));
    tracing::info!("stopped");
    Ok(())
}

async fn start_all(
    cfg: &Config,
    cx: &Context,
    metrics: &Arc<Metrics>,
    board: &Arc<Board>,
    running: &mut Vec<Box<dyn Running>>,
) -> anyhow::Result<()> {
    let apps = Apps::start(cfg.apps.clone(), cx, ())
        .await
        .map_err(|e| anyhow!("{}: {e}", Apps::NAME))?;
    running.push(apps.running);
    let apps = apps.handle;

    let names = apps.list().into_iter().map(|a| a.name).collect();
    let tls = Tls::start(cfg.tls.clone(), cx, names)
        .await
        .map_err(|e| anyhow!("{}: {e}", Tls::NAME))?;
    running.push(tls.running);
    let tls = tls.handle;

    let https = Arc::new(OnceLock::new());
    let admin = AdminService::start(
        cfg.admin.clone(),
        cx,
        AdminDeps {
            metrics: metrics.clone(),
            metrics_enabled: cfg.metrics.enabled,
            board: board.clone(),
            apps: apps.clone(),
            tls: tls.clone(),
            https: https.clone(),
        },
    )
    .await
    .map_err(|e| anyhow!("{}: {e}", AdminService::NAME))?;
    running.push(admin.running);

    let http = HttpService::start(
        cfg.http.clone(),
        cx,
        HttpDeps {
            tls,
            apps,
            metrics: metrics.clone(),
        },
    )
    .await
    .map_err(|e| anyhow!("{}: {e}", HttpService::NAME))?;
    running.push(http.running);
    let _ = https.set(http.handle);
    Ok(())
}

async fn stop_all(running: Vec<Box<dyn Running>>, grace: Duration) {
    let deadline = Instant::now() + grace;
    for r in running.into_iter().rev() {
        let name = r.name();
        r.stop(deadline).await;
        tracing::debug!(service = name, "stopped");
    }
}

async fn wait_for_stop() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        std::future::pending::<()>().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            // Without a handler SIGHUP would end the process; live reload is not built yet.
            _ = hup.recv() => tracing::warn!("SIGHUP: live reload is not available in this version; restart to apply changes"),
        }
    }
}

fn print_banner(
    cfg: &Config,
    cx: &Context,
    bound: &[(&'static str, std::net::SocketAddr)],
    took: Duration,
) {
    let get = |label: &str| bound.iter().find(|(l, _)| *l == label).map(|(_, a)| *a);
    let mut out = String::new();
    out.push_str(&format!(
        "\nKUBE {} is up for {} (ready in {} ms)\n",
        env!("CARGO_PKG_VERSION"),
        cx.domain,
        took.as_millis()
    ));
    if let Some(a) = get("https") {
        let port = cfg.http.public_https_port.unwrap_or(a.port());
        let suffix = if port == 443 {
            String::new()
        } else {
            format!(":{port}")
        };
        out.push_str(&format!(
            "  apps      https://{}{suffix}/  (each app at https://<app>.{}{suffix}/)\n",
            cx.domain, cx.domain
        ));
    }
    if let Some(a) = get("http") {
        out.push_str(&format!("  http      http://{a}/  (redirects to https)\n"));
    }
    if let Some(a) = get("admin") {
        out.push_str(&format!(
            "  admin     http://{a}/api/status  (token in {})\n",
            datadir::token_path(&cx.data_dir).display()
        ));
        out.push_str(&format!(
            "  metrics   http://{a}/metrics   health http://{a}/healthz   ready http://{a}/readyz\n"
        ));
    }
    out.push_str(&format!("  data      {}\n", cx.data_dir.display()));
    if cfg.tls_mode() == config::TlsMode::Local {
        out.push_str("  trust     the local CA: `kube trust > kube-ca.pem`, then import it into your browser or OS\n");
    }
    out.push_str("  publish   kube app publish ./dist --name myapp\n\n");
    let ready: Vec<String> = bound.iter().map(|(l, a)| format!("{l}={a}")).collect();
    out.push_str(&format!("kube ready {}\n", ready.join(" ")));
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}
