//! `kube start`: checks every section, takes the data dir lock, starts the services in
//! dependency order (undoing the started ones if one fails), prints the banner and the ready
//! line, and on SIGINT/SIGTERM stops them in reverse within the grace period.

use std::io::Write;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use config::{Config, Loaded, Problem};

use crate::admin::{AdminDeps, AdminHandle, AdminService};
use crate::apps::Apps;
use crate::datadir;
use crate::dns::{DnsDeps, DnsHandle, DnsService};
use crate::http::{HttpDeps, HttpService};
use crate::metrics::Metrics;
use crate::service::{
    Board, Context, ReloadReport, ReloadRequest, Running, Service, ServiceStatus,
};
use crate::signaling::{SignalDeps, SignalService};
use crate::tls::{Tls, TlsDeps, TlsHandle};
use crate::turn::TurnService;

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
    p.extend(crate::storage::Storage::check(&cfg.storage, &cx));
    p.extend(DnsService::check(&cfg.dns, &cx));
    p.extend(AdminService::check(&cfg.admin, &cx));
    p.extend(HttpService::check(&cfg.http, &cx));
    p.extend(SignalService::check(&cfg.signal, &cx));
    p.extend(TurnService::check(&cfg.turn, &cx));
    p.extend(crate::replica::EchoService::check(&cfg.echo, &cx));
    if let config::Admit::Admins(list) = &cfg.echo.admit {
        p.extend(crate::identity::check_dids("echo.admit", list));
    }
    p
}

/// Runs KUBE until a stop signal. `loaded` has passed [`check`] already (`cli::local::load`).
/// Changes the log filter while running (`log.level` on reload).
pub type LogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

pub async fn run(loaded: Loaded, log: LogLevel) -> anyhow::Result<()> {
    let cfg = loaded.config.clone();
    let started_at = Instant::now();
    // Every WebSocket, TURN relay and TCP DNS client is a file descriptor: take the hard
    // limit rather than the usual soft 1024.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(nofile = n, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the file descriptor limit"),
    }
    let cx = context(&cfg);
    datadir::create_private_dir(&cx.data_dir).context("creating the data dir")?;
    let _lock = datadir::lock(&cx.data_dir)?;
    datadir::check_format(&cx.data_dir)?;
    crate::backup::clean_leftovers(&cx.data_dir);

    let metrics = Arc::new(Metrics::new());
    let board = Board::new();
    let mut running: Vec<Box<dyn Running>> = Vec::new();
    let grace = Duration::from_secs(cfg.http.shutdown_grace_secs);

    // Installed before anything starts: a signal during start-up must not kill the
    // process with the default action.
    let mut signals = Signals::new()?;
    let identity =
        crate::identity::load_or_create(&cx.data_dir).context("KUBE's identity (identity.key)")?;
    let identity = halo::did(&identity);
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel::<ReloadRequest>(4);
    let started = start_all(
        &cfg,
        &cx,
        &identity,
        &metrics,
        &board,
        Controls {
            reload: reload_tx,
            log,
        },
        &mut running,
    );
    let handles = match started.await {
        Ok(handles) => handles,
        Err(e) => {
            stop_all(running, grace).await;
            return Err(e);
        }
    };

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
        identity: identity.clone(),
    };
    datadir::write_private(
        &datadir::run_info_path(&cx.data_dir),
        serde_json::to_string_pretty(&info)?.as_bytes(),
    )?;
    board.set_ready(true);
    print_banner(&cfg, &cx, &bound, started_at.elapsed());

    let mut live = cfg.clone();
    let mut reload_requests = reload_rx;
    loop {
        tokio::select! {
            signal = signals.next() => match signal {
                Signal::Stop => break,
                Signal::Reload => {
                    let _ = reload(loaded.file.as_deref(), &mut live, &handles).await;
                }
            },
            Some(reply) = reload_requests.recv() => {
                let _ = reply.send(reload(loaded.file.as_deref(), &mut live, &handles).await);
            }
        }
    }
    tracing::info!("stopping");
    board.set_ready(false);
    stop_all(running, grace).await;
    let _ = std::fs::remove_file(datadir::run_info_path(&cx.data_dir));
    tracing::info!("stopped");
    Ok(())
}

/// How the running KUBE is steered: `kube reload` requests, and the log filter.
struct Controls {
    reload: tokio::sync::mpsc::Sender<ReloadRequest>,
    log: LogLevel,
}

/// What a reload reaches in the running services.
struct Handles {
    dns: Option<DnsHandle>,
    tls: TlsHandle,
    admin: AdminHandle,
    apps: crate::apps::AppsHandle,
    signal: Option<crate::signaling::SignalHandle>,
    turn: Option<crate::turn::TurnHandle>,
    echo: Option<crate::replica::EchoHandle>,
    processes: crate::processes::ProcessesHandle,
    routes: Arc<crate::processes::routes::Routes>,
    log: LogLevel,
}

async fn start_all(
    cfg: &Config,
    cx: &Context,
    identity: &str,
    metrics: &Arc<Metrics>,
    board: &Arc<Board>,
    controls: Controls,
    running: &mut Vec<Box<dyn Running>>,
) -> anyhow::Result<Handles> {
    let Controls { reload, log } = controls;
    let storage = crate::storage::Storage::start(
        cfg.storage.clone(),
        cx,
        crate::storage::StorageDeps {
            identity: identity.to_owned(),
        },
    )
    .await
    .map_err(|e| anyhow!("{}: {e}", crate::storage::Storage::NAME))?;
    running.push(storage.running);
    let storage = storage.handle;
    let apps = Apps::start(cfg.apps.clone(), cx, storage.clone())
        .await
        .map_err(|e| anyhow!("{}: {e}", Apps::NAME))?;
    running.push(apps.running);
    let cluster = apps.handle.cluster;
    let apps = apps.handle.store;
    let apps_handle = apps.clone();

    // Routes to processes, declared now so their host names get certificates and records.
    let routes = Arc::new(crate::processes::routes::Routes::default());
    for p in &cfg.processes {
        routes.declare(&p.name, p.route.as_ref());
    }
    let names = host_names(&apps, &routes);
    let dns = if cfg.dns.enabled {
        let deps = DnsDeps {
            metrics: metrics.clone(),
            apps: names.clone(),
        };
        let dns = DnsService::start(cfg.dns.clone(), cx, deps)
            .await
            .map_err(|e| anyhow!("{}: {e}", DnsService::NAME))?;
        running.push(dns.running);
        Some(dns.handle)
    } else {
        None
    };

    let deps = TlsDeps {
        apps: names,
        dns: dns.clone(),
        metrics: metrics.clone(),
        acme: cfg.acme.clone(),
        storage,
    };
    let tls = Tls::start(cfg.tls.clone(), cx, deps)
        .await
        .map_err(|e| anyhow!("{}: {e}", Tls::NAME))?;
    running.push(tls.running);
    let tls = tls.handle;

    let turn_deps = crate::turn::TurnDeps {
        metrics: metrics.clone(),
        tls: tls.clone(),
    };
    let turn = TurnService::start(cfg.turn.clone(), cx, turn_deps)
        .await
        .map_err(|e| anyhow!("{}: {e}", TurnService::NAME))?;
    running.push(turn.running);

    let signal_deps = SignalDeps {
        metrics: metrics.clone(),
        turn: turn.handle.clone(),
        domain: cx.domain.clone(),
    };
    let signal = SignalService::start(cfg.signal.clone(), cx, signal_deps)
        .await
        .map_err(|e| anyhow!("{}: {e}", SignalService::NAME))?;
    running.push(signal.running);
    let signal = signal.handle;
    let signal_handle = signal.clone();
    let turn_handle = turn.handle;

    let echo = crate::replica::EchoService::start(
        cfg.echo.clone(),
        cx,
        crate::replica::EchoDeps {
            metrics: metrics.clone(),
            identity: identity.to_owned(),
        },
    )
    .await
    .map_err(|e| anyhow!("{}: {e}", crate::replica::EchoService::NAME))?;
    running.push(echo.running);
    let echo = echo.handle;

    let https = Arc::new(OnceLock::new());
    let processes = Arc::new(OnceLock::new());
    let admin = AdminService::start(
        cfg.admin.clone(),
        cx,
        AdminDeps {
            metrics: metrics.clone(),
            metrics_enabled: cfg.metrics.enabled,
            board: board.clone(),
            apps: apps.clone(),
            cluster: cluster.clone(),
            tls: tls.clone(),
            dns: dns.clone(),
            https: https.clone(),
            identity: identity.to_owned(),
            admit: crate::identity::admission_policy(&cfg.echo.admit),
            echo: echo.clone(),
            processes: processes.clone(),
            routes: routes.clone(),
            reload,
        },
    )
    .await
    .map_err(|e| anyhow!("{}: {e}", AdminService::NAME))?;
    running.push(admin.running);
    let admin = admin.handle;

    let http = HttpService::start(
        cfg.http.clone(),
        cx,
        HttpDeps {
            tls: tls.clone(),
            signal,
            echo: echo.clone(),
            apps,
            metrics: metrics.clone(),
            turn: turn_handle.clone().filter(|t| t.on_https),
            routes: routes.clone(),
        },
    )
    .await
    .map_err(|e| anyhow!("{}: {e}", HttpService::NAME))?;
    running.push(http.running);
    // TURN over TLS on the HTTPS port: signaling's ICE servers name it once it is bound.
    if let (Some(turn), Some(signal)) = (&turn_handle, &signal_handle)
        && turn.on_https
    {
        turn.set_https_port(http.handle.public_port);
        signal.reload(&cfg.signal, Some(turn)).await;
    }
    let _ = https.set(http.handle);
    // ACME may answer challenges from here on.
    tls.listeners_ready();
    // Apps published, rolled back or removed at another KUBE: their hosts follow here.
    if let Some(cluster) = &cluster {
        let mut changed = cluster.subscribe();
        let (apps, routes, dns, tls) = (
            apps_handle.clone(),
            routes.clone(),
            dns.clone(),
            tls.clone(),
        );
        tokio::spawn(async move {
            while changed.changed().await.is_ok() {
                name_hosts(&apps, &routes, dns.as_ref(), &tls).await;
            }
        });
    }
    // Back-ends last: every service they may use is up; they stop first.
    let started = crate::processes::ProcessesService::start(
        cfg.processes.clone(),
        cx,
        crate::processes::ProcessesDeps {
            metrics: metrics.clone(),
            routes: routes.clone(),
        },
    )
    .await
    .map_err(|e| anyhow!("{}: {e}", crate::processes::ProcessesService::NAME))?;
    running.push(started.running);
    let processes_handle = started.handle;
    let _ = processes.set(processes_handle.clone());
    Ok(Handles {
        dns,
        tls,
        admin,
        apps: apps_handle,
        signal: signal_handle,
        turn: turn_handle,
        echo,
        processes: processes_handle,
        routes,
        log,
    })
}

/// Names every app and routed host in DNS and the certificate; the apps serve either way, so
/// a failure is logged.
pub async fn name_hosts(
    apps: &crate::apps::AppsHandle,
    routes: &crate::processes::routes::Routes,
    dns: Option<&DnsHandle>,
    tls: &TlsHandle,
) {
    let names = host_names(apps, routes);
    if let Some(dns) = dns {
        let (dns, names) = (dns.clone(), names.clone());
        match tokio::task::spawn_blocking(move || dns.set_apps(names)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot update the app hosts in DNS"),
            Err(e) => tracing::error!(error = %e, "dns update task failed"),
        }
    }
    if let Err(e) = tls.set_app_hosts(names).await {
        tracing::error!(error = %e, "cannot reissue the local certificate for the app hosts");
    }
}

/// The host names below the domain that need a certificate and records: published apps and
/// the hosts of process routes.
pub fn host_names(
    apps: &crate::apps::AppsHandle,
    routes: &crate::processes::routes::Routes,
) -> Vec<String> {
    let mut names: Vec<String> = apps.list().into_iter().map(|a| a.name).collect();
    names.extend(routes.hosts());
    names.sort();
    names.dedup();
    names
}

async fn stop_all(running: Vec<Box<dyn Running>>, grace: Duration) {
    let now = Instant::now();
    let deadline = now.checked_add(grace).unwrap_or(now);
    for r in running.into_iter().rev() {
        let name = r.name();
        r.stop(deadline).await;
        tracing::debug!(service = name, "stopped");
    }
}

enum Signal {
    Stop,
    Reload,
}

/// SIGINT/SIGTERM stop; SIGHUP reloads.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}

/// SIGHUP or `kube reload`: reads the configuration again. A bad one is refused with its
/// problems and the running one stays. What can change in place does (and becomes part of
/// `live`): DNS records, `files` certificates, admin operators, app limits, the log level,
/// TURN secret and limits, signaling limits. Open connections, requests and allocations are
/// untouched. Other changes are named as waiting for a restart.
async fn reload(
    file: Option<&std::path::Path>,
    live: &mut Config,
    handles: &Handles,
) -> Result<ReloadReport, String> {
    let mut report = ReloadReport::default();
    let next = match config::load_with(file, std::env::vars(), check) {
        Ok(l) => l.config,
        Err(e) => {
            tracing::error!("reload refused, the running configuration stays:\n{e}");
            return Err(e.to_string());
        }
    };
    // Operators first: removing a key must never wait on anything else.
    if next.admin.operators != live.admin.operators
        || next.admin.signature_window_secs != live.admin.signature_window_secs
    {
        handles.admin.reload(&next.admin);
        tracing::info!(
            operators = next.admin.operators.len(),
            "admin operators reloaded"
        );
        live.admin.operators = next.admin.operators.clone();
        live.admin.signature_window_secs = next.admin.signature_window_secs;
        report.applied.push("admin.operators");
    }
    // Each section is applied on its own: one that fails keeps its running state, is
    // reported in `failed`, and does not stop the others.
    if let Some(dns) = &handles.dns
        && next.dns != live.dns
    {
        match dns.reload(next.dns.clone()) {
            Ok(()) => {
                tracing::info!(serial = dns.zone().serial(), "dns records reloaded");
                live.dns = next.dns.clone();
                report.applied.push("dns");
            }
            Err(e) => {
                tracing::error!(error = %e, "dns reload refused; the old zone stays");
                report.failed.push(format!("dns: {e}"));
            }
        }
    }
    if next.apps != live.apps {
        handles
            .apps
            .set_limits(crate::apps::limits(&next.apps), next.apps.keep_versions);
        live.apps = next.apps.clone();
        report.applied.push("apps");
    }
    if next.log.level != live.log.level {
        match (handles.log)(&next.log.level) {
            Ok(()) => {
                tracing::info!(level = %next.log.level, "log level changed");
                live.log.level = next.log.level.clone();
                report.applied.push("log.level");
            }
            Err(e) => {
                tracing::warn!(error = %e, "log.level not changed");
                report.failed.push(format!("log.level: {e}"));
            }
        }
    }
    let mut turn_changed = false;
    if let Some(turn) = &handles.turn
        && next.turn != live.turn
        && same_turn_sockets(&next.turn, &live.turn)
    {
        match turn.reload(&next.turn) {
            Ok(changed) => {
                turn_changed = changed;
                live.turn = next.turn.clone();
                report.applied.push("turn");
            }
            Err(e) => {
                tracing::error!(error = %e, "turn reload refused; the running settings stay");
                report.failed.push(format!("turn: {e}"));
            }
        }
    }
    if let Some(signal) = &handles.signal {
        let mut kept = next.signal.clone();
        // What open connections and the WebSocket frame cap keep until a restart.
        kept.enabled = live.signal.enabled;
        kept.ping_interval_secs = live.signal.ping_interval_secs;
        kept.ping_timeout_secs = live.signal.ping_timeout_secs;
        kept.max_message_bytes = live.signal.max_message_bytes;
        if turn_changed || kept != live.signal {
            signal.reload(&kept, handles.turn.as_ref()).await;
            if kept != live.signal {
                report.applied.push("signal");
            }
            live.signal = kept;
        }
    }
    if let Some(echo) = &handles.echo {
        let mut kept = next.echo.clone();
        // What waits for a restart: serving at all, the connection cap and the frame cap
        // of open connections.
        kept.enabled = live.echo.enabled;
        kept.max_connections = live.echo.max_connections;
        kept.max_message_bytes = live.echo.max_message_bytes;
        if kept != live.echo {
            echo.reload(&kept).await;
            live.echo = kept;
            report.applied.push("echo");
        }
    }
    // `files` mode: certificate files replaced in place are picked up now.
    match handles.tls.reload_files() {
        Ok(true) => {
            tracing::info!("certificate files reloaded");
            report.applied.push("tls.files");
        }
        Ok(false) => {}
        Err(e) => {
            tracing::error!(error = %e, "certificate files refused; the old certificate stays");
            report.failed.push(format!("tls: {e}"));
        }
    }
    if next.processes != live.processes {
        if handles.processes.reload(&next.processes).await {
            report.applied.push("processes");
        }
        live.processes = next.processes.clone();
        // Routed hosts may have come or gone: certificates and records follow.
        let names = host_names(&handles.apps, &handles.routes);
        if let Some(dns) = handles.dns.clone() {
            let names = names.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || dns.set_apps(names)).await {
                tracing::error!(error = %e, "cannot update the routed hosts in DNS");
            }
        }
        if let Err(e) = handles.tls.set_app_hosts(names).await {
            tracing::error!(error = %e, "cannot reissue the local certificate for the routed hosts");
        }
    }
    let mut restart = Vec::new();
    let sections = [
        ("domain", next.domain != live.domain),
        ("data_dir", next.data_dir != live.data_dir),
        ("http", next.http != live.http),
        ("tls", next.tls != live.tls),
        ("acme", next.acme != live.acme),
        ("apps", next.apps != live.apps),
        ("storage", next.storage != live.storage),
        ("admin", next.admin != live.admin),
        ("signal", next.signal != live.signal),
        ("turn", next.turn != live.turn),
        ("echo", next.echo != live.echo),
        ("metrics", next.metrics != live.metrics),
        ("log", next.log != live.log),
    ];
    for (name, changed) in sections {
        if changed {
            restart.push(name);
        }
    }
    if !restart.is_empty() {
        tracing::warn!(sections = ?restart, "changed sections apply at the next restart");
    }
    report.restart = restart;
    Ok(report)
}

/// Whether two `turn` sections bind and relay the same way (only then does a reload apply
/// in place; the rest of the section is secret, lifetime and limits).
fn same_turn_sockets(a: &config::Turn, b: &config::Turn) -> bool {
    a.enabled == b.enabled
        && a.listen == b.listen
        && a.realm == b.realm
        && a.relay_address == b.relay_address
        && a.relay_port_min == b.relay_port_min
        && a.relay_port_max == b.relay_port_max
        && a.allow_peers == b.allow_peers
        && a.tls_listen == b.tls_listen
        && a.on_https == b.on_https
        && a.max_connections == b.max_connections
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
