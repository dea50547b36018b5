//! The `processes` service: back-end processes of apps, supervised. Each process runs in a
//! process group of its own (so a stop or a crash takes its children with it), with a
//! parent-death signal (so `kill -9` of KUBE takes it down) and its group recorded in
//! `<data_dir>/run/processes/` (so whatever outlived KUBE is killed on the next start). Its
//! stdout and stderr go line by line to `<data_dir>/logs/<name>/`, rotated (`logs`); when it
//! ends, `policy` says whether and when it starts again. Processes start after every service
//! and stop before them, in the order of their `after` lists.
//!
//! Liveness and readiness probes (HTTP, TCP, exec) run beside each process: failing
//! liveness stops it and its policy restarts it; readiness is shown and exported.
//!
//! Not yet: routing, zero-downtime restarts, cgroups and resource limits, `sd_notify`
//! (issue 17 lists them).

pub mod logs;
pub mod policy;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use config::Problem;
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};

use self::logs::{LineSplitter, LogLimits, LogWriter, Stream};
use self::policy::{Exit, Next, Restarts};
use crate::metrics::Metrics;
use crate::service::{Context, Running, Service, StartError, Started};

/// What the operator asks of one process.
enum Control {
    /// Answered once it was started (or failed to start).
    Start(oneshot::Sender<()>),
    Stop(oneshot::Sender<()>),
    Restart(oneshot::Sender<()>),
}

/// One process as `kube ps` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub name: String,
    /// `running`, `backoff` (waiting to start again), `stopped` (by the operator or its
    /// policy) or `starting`.
    pub state: &'static str,
    pub pid: Option<u32>,
    /// Unix seconds of the last change of state.
    pub since: u64,
    pub restarts: u64,
    /// How it last ended: `code N`, `signal N` or `not started: …`.
    pub last_exit: Option<String>,
    /// When it is in backoff: milliseconds until it starts again.
    pub next_start_ms: Option<u64>,
    /// Whether its readiness probe passes; None without one.
    pub ready: Option<bool>,
}

struct Proc {
    def: config::Process,
    control: mpsc::Sender<Control>,
    status: Arc<Mutex<Status>>,
    task: tokio::task::JoinHandle<()>,
}

/// The running processes, for the admin API and reloads.
#[derive(Clone)]
pub struct ProcessesHandle {
    inner: Arc<Inner>,
}

struct Inner {
    procs: tokio::sync::Mutex<BTreeMap<String, Proc>>,
    data_dir: PathBuf,
    metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("no process named {0:?}")]
    Unknown(String),
}

impl ProcessesHandle {
    /// Every process, in the order of the configuration.
    pub async fn list(&self) -> Vec<Status> {
        let procs = self.inner.procs.lock().await;
        procs.values().map(|p| lock(&p.status).clone()).collect()
    }

    pub async fn show(&self, name: &str) -> Result<Status, ProcessError> {
        let procs = self.inner.procs.lock().await;
        let p = procs
            .get(name)
            .ok_or_else(|| ProcessError::Unknown(name.into()))?;
        Ok(lock(&p.status).clone())
    }

    /// Stops `name` (its stop signal to the group, then KILL after its grace) and waits.
    pub async fn stop(&self, name: &str) -> Result<(), ProcessError> {
        let (tx, rx) = oneshot::channel();
        self.send(name, Control::Stop(tx)).await?;
        let _ = rx.await;
        Ok(())
    }

    /// Starts `name` when it is stopped or waiting in backoff; returns once it started.
    pub async fn start(&self, name: &str) -> Result<(), ProcessError> {
        let (tx, rx) = oneshot::channel();
        self.send(name, Control::Start(tx)).await?;
        let _ = rx.await;
        Ok(())
    }

    /// Stops `name` and starts it again at once; returns once it was stopped.
    pub async fn restart(&self, name: &str) -> Result<(), ProcessError> {
        let (tx, rx) = oneshot::channel();
        self.send(name, Control::Restart(tx)).await?;
        let _ = rx.await;
        Ok(())
    }

    async fn send(&self, name: &str, c: Control) -> Result<(), ProcessError> {
        let procs = self.inner.procs.lock().await;
        let p = procs
            .get(name)
            .ok_or_else(|| ProcessError::Unknown(name.into()))?;
        let _ = p.control.send(c).await;
        Ok(())
    }

    /// The last `lines` lines of `name`'s log, those since `since_unix_ms` when given.
    pub async fn logs(
        &self,
        name: &str,
        since_unix_ms: Option<u64>,
        lines: usize,
    ) -> Result<Vec<String>, ProcessError> {
        if !self.inner.procs.lock().await.contains_key(name) {
            return Err(ProcessError::Unknown(name.into()));
        }
        let dir = log_dir(&self.inner.data_dir, name);
        Ok(
            tokio::task::spawn_blocking(move || logs::read(&dir, since_unix_ms, lines))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
        )
    }

    /// Applies a changed `processes` list: removed processes stop, new ones start, changed
    /// ones are stopped and started with their new definition; unchanged ones are left
    /// alone. Returns whether anything changed.
    pub async fn reload(&self, defs: &[config::Process]) -> bool {
        let mut procs = self.inner.procs.lock().await;
        let mut changed = false;
        let names: Vec<String> = procs.keys().cloned().collect();
        for name in names.into_iter().rev() {
            let keep = defs
                .iter()
                .any(|d| d.name == name && procs[&name].def == *d);
            if !keep && let Some(p) = procs.remove(&name) {
                stop_proc(p).await;
                changed = true;
            }
        }
        for def in ordered(defs) {
            if !procs.contains_key(&def.name) {
                let p = spawn_proc(&self.inner, def.clone());
                procs.insert(def.name.clone(), p);
                changed = true;
            }
        }
        changed
    }

    /// Stops every process, those others come `after` first.
    async fn stop_all(&self) {
        let mut procs = self.inner.procs.lock().await;
        let defs: Vec<config::Process> = procs.values().map(|p| p.def.clone()).collect();
        for def in ordered(&defs).into_iter().rev() {
            if let Some(p) = procs.remove(&def.name) {
                stop_proc(p).await;
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `defs` with every process after those it names in `after` (config::check refuses
/// cycles; one that slips through keeps its place).
fn ordered(defs: &[config::Process]) -> Vec<&config::Process> {
    let mut out: Vec<&config::Process> = Vec::new();
    let mut left: Vec<&config::Process> = defs.iter().collect();
    while !left.is_empty() {
        let before = left.len();
        left.retain(|d| {
            let ready = d
                .after
                .iter()
                .all(|a| out.iter().any(|o| &o.name == a) || !defs.iter().any(|x| &x.name == a));
            if ready {
                out.push(d);
            }
            !ready
        });
        if left.len() == before {
            out.append(&mut left);
        }
    }
    out
}

async fn stop_proc(p: Proc) {
    let (tx, rx) = oneshot::channel();
    if p.control.send(Control::Stop(tx)).await.is_ok() {
        let _ = rx.await;
    }
    p.task.abort();
}

fn log_dir(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("logs").join(name)
}

fn pid_file(data_dir: &Path, name: &str) -> PathBuf {
    data_dir
        .join("run")
        .join("processes")
        .join(format!("{name}.json"))
}

pub struct ProcessesService;

impl Service for ProcessesService {
    const NAME: &'static str = "processes";
    type Section = Vec<config::Process>;
    type Deps = Arc<Metrics>;
    type Handle = ProcessesHandle;

    fn check(_s: &Vec<config::Process>, _cx: &Context) -> Vec<Problem> {
        // Every rule is in `config::Config::check` (names, dependencies, bounds).
        Vec::new()
    }

    async fn start(
        s: Vec<config::Process>,
        cx: &Context,
        metrics: Arc<Metrics>,
    ) -> Result<Started<ProcessesHandle>, StartError> {
        kill_leftovers(&cx.data_dir);
        let inner = Arc::new(Inner {
            procs: tokio::sync::Mutex::new(BTreeMap::new()),
            data_dir: cx.data_dir.clone(),
            metrics,
        });
        {
            let mut procs = inner.procs.lock().await;
            for def in ordered(&s) {
                procs.insert(def.name.clone(), spawn_proc(&inner, def.clone()));
            }
        }
        let handle = ProcessesHandle { inner };
        let sampler = tokio::spawn(sample(handle.clone()));
        if !s.is_empty() {
            tracing::info!(count = s.len(), "processes started");
        }
        Ok(Started {
            handle: handle.clone(),
            running: Box::new(RunningProcesses { handle, sampler }),
        })
    }
}

struct RunningProcesses {
    handle: ProcessesHandle,
    sampler: tokio::task::JoinHandle<()>,
}

impl Running for RunningProcesses {
    fn name(&self) -> &'static str {
        "processes"
    }
    fn bound(&self) -> Vec<(&'static str, std::net::SocketAddr)> {
        Vec::new()
    }
    fn stop(
        self: Box<Self>,
        _deadline: Instant,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            self.sampler.abort();
            self.handle.stop_all().await;
        })
    }
}

/// Kills the process groups a previous KUBE recorded and that still run (it was killed
/// before it could stop them): a group is killed only when its leader is still the process
/// that was recorded (same start time), never a recycled pid.
fn kill_leftovers(data_dir: &Path) {
    let dir = data_dir.join("run").join("processes");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let record: Option<Record> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(r) = record
            && start_time(r.pgid) == Some(r.start_time)
        {
            tracing::warn!(
                pgid = r.pgid,
                "processes: killing a group left by a previous KUBE"
            );
            kill_group(r.pgid, libc::SIGKILL);
        }
        let _ = std::fs::remove_file(&path);
    }
}

/// A running process group, on disk.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    pgid: u32,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks since boot).
    start_time: u64,
}

/// A process's start time, in clock ticks since boot (`/proc/<pid>/stat` field 22).
fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid).and_then(|f| f.get(19).and_then(|v| v.parse().ok()))
}

/// The fields of `/proc/<pid>/stat` after the command name (field 3 onwards).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split(' ').map(str::to_owned).collect())
}

fn kill_group(pgid: u32, signal: i32) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    if pgid > 1 {
        // SAFETY: killpg only sends a signal; a gone group gives ESRCH, which is fine.
        unsafe {
            libc::killpg(pgid, signal);
        }
    }
}

fn signal_number(name: &str) -> i32 {
    match name {
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "HUP" => libc::SIGHUP,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        _ => libc::SIGTERM,
    }
}

fn spawn_proc(inner: &Arc<Inner>, def: config::Process) -> Proc {
    let (control, rx) = mpsc::channel(8);
    let status = Arc::new(Mutex::new(Status {
        name: def.name.clone(),
        state: "starting",
        pid: None,
        since: crate::service::unix_now(),
        restarts: 0,
        last_exit: None,
        next_start_ms: None,
        ready: None,
    }));
    let task = tokio::spawn(supervise(inner.clone(), def.clone(), status.clone(), rx));
    Proc {
        def,
        control,
        status,
        task,
    }
}

fn set_state(status: &Mutex<Status>, state: &'static str, pid: Option<u32>) {
    let mut s = lock(status);
    s.state = state;
    s.pid = pid;
    if pid.is_none() {
        s.ready = s.ready.map(|_| false);
    }
    s.since = crate::service::unix_now();
    s.next_start_ms = None;
}

/// One process's life: start, wait, restart per its policy, obey the operator.
async fn supervise(
    inner: Arc<Inner>,
    def: config::Process,
    status: Arc<Mutex<Status>>,
    mut control: mpsc::Receiver<Control>,
) {
    let name = def.name.clone();
    let metrics = inner.metrics.clone();
    let up = metrics.process_up.with_label_values(&[&name]);
    let restarts_total = metrics.process_restarts.with_label_values(&[&name]);
    let last_exit = metrics.process_last_exit.with_label_values(&[&name]);
    let limits = LogLimits {
        max_file_bytes: def.logs.max_file_bytes,
        files: def.logs.files,
    };
    let log = match LogWriter::open(&log_dir(&inner.data_dir, &name), limits) {
        Ok(w) => Some(Arc::new(Mutex::new(w))),
        Err(e) => {
            tracing::error!(process = %name, error = %e, "processes: cannot open the log; output is dropped");
            None
        }
    };
    let note = |text: &str| {
        if let Some(log) = &log {
            let mut w = lock(log);
            let _ = w.line(
                Stream::Stderr,
                unix_ms(),
                format!("[kube] {text}").as_bytes(),
            );
            let _ = w.flush();
        }
    };
    let mut restarts = Restarts::new(def.restart, def.backoff);
    let mut wanted = true;
    let mut first = true;
    // Who waits for the next start (an operator's `start`).
    let mut started_ack: Option<oneshot::Sender<()>> = None;
    loop {
        if !wanted {
            set_state(&status, "stopped", None);
            up.set(0);
            loop {
                match control.recv().await {
                    None => return,
                    Some(Control::Start(ack)) => {
                        started_ack = Some(ack);
                        break;
                    }
                    Some(Control::Restart(ack)) => {
                        let _ = ack.send(());
                        break;
                    }
                    Some(Control::Stop(ack)) => {
                        let _ = ack.send(());
                    }
                }
            }
            wanted = true;
        }
        if !first {
            restarts_total.inc();
            lock(&status).restarts += 1;
        }
        first = false;
        let now = Instant::now();
        restarts.started(now);
        let exit = match spawn(&def, &inner.data_dir, log.clone()) {
            Err(e) => {
                if let Some(ack) = started_ack.take() {
                    let _ = ack.send(());
                }
                note(&format!("cannot start: {e}"));
                tracing::warn!(process = %name, error = %e, "processes: cannot start");
                lock(&status).last_exit = Some(format!("not started: {e}"));
                Exit::SpawnFailed
            }
            Ok(mut child) => {
                let pid = child.id().unwrap_or(0);
                record(&inner.data_dir, &name, pid);
                set_state(&status, "running", Some(pid));
                up.set(1);
                if let Some(ack) = started_ack.take() {
                    let _ = ack.send(());
                }
                note(&format!("started, pid {pid}"));
                tracing::info!(process = %name, pid, "processes: started");
                let dir = inner
                    .data_dir
                    .join(def.dir.as_deref().unwrap_or(Path::new("")));
                let (probed_tx, mut probed) = mpsc::channel(4);
                let probes = [
                    def.liveness.clone().map(|p| (p, true)),
                    def.readiness.clone().map(|p| (p, false)),
                ]
                .into_iter()
                .flatten()
                .map(|(probe, live)| {
                    tokio::spawn(probe_loop(probe, dir.clone(), live, probed_tx.clone()))
                })
                .collect::<Vec<_>>();
                drop(probed_tx);
                let ready = metrics.process_ready.with_label_values(&[&name]);
                ready.set(i64::from(def.readiness.is_none()));
                lock(&status).ready = def.readiness.as_ref().map(|_| false);
                // Runs until it exits, the operator (or the service's stop) stops it, or its
                // liveness probe fails.
                let mut dead = false;
                let (exit, ack) = loop {
                    tokio::select! {
                        r = child.wait() => break (Some(r), None),
                        c = control.recv() => match c {
                            // Running already.
                            Some(Control::Start(ack)) => { let _ = ack.send(()); }
                            Some(Control::Stop(ack)) => { wanted = false; break (None, Some(ack)); }
                            Some(Control::Restart(ack)) => break (None, Some(ack)),
                            None => { wanted = false; break (None, None); }
                        },
                        Some(p) = probed.recv() => match p {
                            Probed::Live(false) => {
                                dead = true;
                                break (None, None);
                            }
                            Probed::Live(true) => {}
                            Probed::Ready(r) => {
                                ready.set(i64::from(r));
                                lock(&status).ready = Some(r);
                                note(if r { "ready" } else { "not ready" });
                            }
                        },
                    }
                };
                for p in probes {
                    p.abort();
                }
                ready.set(0);
                if dead {
                    metrics
                        .process_probe_failures
                        .with_label_values(&[&name])
                        .inc();
                    note("liveness probe failed: stopping it");
                    tracing::warn!(process = %name, "processes: liveness probe failed");
                    stop_child(&mut child, pid, &def).await;
                }
                if exit.is_none() && !dead {
                    stop_child(&mut child, pid, &def).await;
                    note("stopped");
                    up.set(0);
                    let _ = std::fs::remove_file(pid_file(&inner.data_dir, &name));
                    if let Some(ack) = ack {
                        let _ = ack.send(());
                    }
                    if control.is_closed() {
                        return;
                    }
                    continue;
                }
                // Whatever it left in its group goes with it.
                kill_group(pid, libc::SIGKILL);
                let _ = std::fs::remove_file(pid_file(&inner.data_dir, &name));
                up.set(0);
                let exit = match exit {
                    // Stopped for failing its liveness probe: a failure to its policy.
                    None => Exit::Signal(libc::SIGKILL),
                    Some(Ok(s)) => {
                        use std::os::unix::process::ExitStatusExt;
                        match (s.code(), s.signal()) {
                            (Some(c), _) => Exit::Code(c),
                            (None, Some(sig)) => Exit::Signal(sig),
                            _ => Exit::Code(-1),
                        }
                    }
                    _ => Exit::Code(-1),
                };
                let (text, code) = match exit {
                    _ if dead => ("liveness probe failed".to_owned(), 128 + libc::SIGKILL),
                    Exit::Code(c) => (format!("code {c}"), c),
                    Exit::Signal(s) => (format!("signal {s}"), 128 + s),
                    Exit::SpawnFailed => ("not started".into(), -1),
                };
                last_exit.set(i64::from(code));
                note(&format!("exited: {text}"));
                tracing::warn!(process = %name, exit = %text, "processes: exited");
                lock(&status).last_exit = Some(text);
                exit
            }
        };
        match restarts.exited(exit, Instant::now(), rand::random::<f64>()) {
            Next::Stay => wanted = false,
            Next::RestartIn(pause) => {
                set_state(&status, "backoff", None);
                lock(&status).next_start_ms =
                    Some(u64::try_from(pause.as_millis()).unwrap_or(u64::MAX));
                note(&format!("starting again in {} ms", pause.as_millis()));
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    c = control.recv() => match c {
                        None => return,
                        Some(Control::Stop(ack)) => { wanted = false; let _ = ack.send(()); }
                        Some(Control::Restart(ack)) => { let _ = ack.send(()); }
                        Some(Control::Start(ack)) => started_ack = Some(ack),
                    },
                }
            }
        }
    }
}

/// What a probe found: liveness (`Live(false)` once it failed `failures` times in a row),
/// or readiness (each change).
enum Probed {
    Live(bool),
    Ready(bool),
}

/// Runs `probe` every `interval_secs` after `initial_delay_secs`; reports liveness once it
/// fails `failures` times in a row, readiness at each change (not ready until it passes).
async fn probe_loop(probe: config::Probe, dir: PathBuf, live: bool, tx: mpsc::Sender<Probed>) {
    tokio::time::sleep(Duration::from_secs(probe.initial_delay_secs)).await;
    let mut failed = 0u32;
    let mut ready: Option<bool> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(probe.interval_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let timeout = Duration::from_secs(probe.timeout_secs);
        let ok = tokio::time::timeout(timeout, check(&probe, &dir))
            .await
            .unwrap_or(false);
        failed = if ok { 0 } else { failed.saturating_add(1) };
        let event = if live {
            (failed >= probe.failures).then_some(Probed::Live(false))
        } else {
            let now = ok || (failed < probe.failures && ready == Some(true));
            (ready != Some(now)).then(|| {
                ready = Some(now);
                Probed::Ready(now)
            })
        };
        if let Some(e) = event
            && tx.send(e).await.is_err()
        {
            return;
        }
    }
}

/// One run of a probe.
async fn check(probe: &config::Probe, dir: &Path) -> bool {
    if let Some(url) = &probe.http {
        let client = reqwest::Client::builder().no_proxy().build();
        return match client {
            Ok(c) => c
                .get(url)
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() < 400),
            Err(_) => false,
        };
    }
    if let Some(addr) = &probe.tcp {
        return tokio::net::TcpStream::connect(addr.as_str()).await.is_ok();
    }
    let Some((program, args)) = probe.exec.split_first() else {
        return false;
    };
    tokio::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// Asks the group to stop, waits its grace, then kills it.
async fn stop_child(child: &mut tokio::process::Child, pid: u32, def: &config::Process) {
    kill_group(pid, signal_number(&def.stop_signal));
    let grace = Duration::from_secs(def.stop_grace_secs);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        kill_group(pid, libc::SIGKILL);
        let _ = child.wait().await;
    }
    // Children that ignored the stop signal, and outlived their parent, go too.
    kill_group(pid, libc::SIGKILL);
}

fn record(data_dir: &Path, name: &str, pid: u32) {
    let path = pid_file(data_dir, name);
    let Some(start_time) = start_time(pid) else {
        return;
    };
    let body = serde_json::to_vec(&Record {
        pgid: pid,
        start_time,
    })
    .unwrap_or_default();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(&path, body) {
        tracing::warn!(path = %path.display(), error = %e, "processes: cannot record a process group");
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[derive(Debug, thiserror::Error)]
enum SpawnError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("env file {path}: {source}")]
    EnvFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("user {0:?}: {1}")]
    User(String, &'static str),
}

/// Starts the process: a clean environment, its own process group, a parent-death signal,
/// the configured user, stdout and stderr into its log.
fn spawn(
    def: &config::Process,
    data_dir: &Path,
    log: Option<Arc<Mutex<LogWriter>>>,
) -> Result<tokio::process::Child, SpawnError> {
    let mut cmd = tokio::process::Command::new(&def.command);
    cmd.args(&def.args).env_clear();
    for key in ["PATH", "HOME", "LANG", "TZ"] {
        if let Ok(v) = std::env::var(key) {
            cmd.env(key, v);
        }
    }
    for file in &def.env_files {
        let path = data_dir.join(file);
        let text = std::fs::read_to_string(&path).map_err(|source| SpawnError::EnvFile {
            path: path.clone(),
            source,
        })?;
        for line in text.lines().map(str::trim) {
            if let Some((k, v)) = line.split_once('=')
                && !line.starts_with('#')
                && !k.trim().is_empty()
            {
                cmd.env(k.trim(), v.trim());
            }
        }
    }
    cmd.envs(&def.env);
    let dir = data_dir.join(def.dir.as_deref().unwrap_or(Path::new("")));
    std::fs::create_dir_all(&dir)?;
    cmd.current_dir(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(user) = &def.user {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(SpawnError::User(
                user.clone(),
                "KUBE must run as root to switch users",
            ));
        }
        let (uid, gid) =
            resolve_user(user).ok_or(SpawnError::User(user.clone(), "no such user"))?;
        cmd.uid(uid).gid(gid);
    }
    // SAFETY: between fork and exec only async-signal-safe calls: prctl.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(pump(out, Stream::Stdout, log.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(pump(err, Stream::Stderr, log));
    }
    Ok(child)
}

/// `uid`, `uid:gid`, or a name from /etc/passwd.
fn resolve_user(user: &str) -> Option<(u32, u32)> {
    if let Some((u, g)) = user.split_once(':') {
        return Some((u.parse().ok()?, g.parse().ok()?));
    }
    if let Ok(uid) = user.parse::<u32>() {
        return Some((uid, uid));
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&user))
            .then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
    })
}

/// Copies one stream of the process into its log, line by line.
async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    stream: Stream,
    log: Option<Arc<Mutex<LogWriter>>>,
) {
    let mut split = LineSplitter::new(logs::MAX_LINE);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let lines = split.push(&buf[..n]);
        if let Some(log) = &log
            && !lines.is_empty()
        {
            let mut w = lock(log);
            let now = unix_ms();
            for l in lines {
                let _ = w.line(stream, now, &l);
            }
            let _ = w.flush();
        }
    }
    if let (Some(rest), Some(log)) = (split.finish(), &log) {
        let mut w = lock(log);
        let _ = w.line(stream, unix_ms(), &rest);
        let _ = w.flush();
    }
}

/// CPU time and resident memory of every running process, every few seconds.
async fn sample(handle: ProcessesHandle) {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1);
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        for s in handle.list().await {
            let m = &handle.inner.metrics;
            let Some(f) = s.pid.and_then(stat_fields) else {
                continue;
            };
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
            // Fields 14 and 15 (utime, stime), 24 (rss in pages), counted from field 3.
            let cpu = (num(11) + num(12)) as f64 / ticks;
            m.process_cpu_seconds.with_label_values(&[&s.name]).set(cpu);
            m.process_resident_bytes
                .with_label_values(&[&s.name])
                .set(num(21).saturating_mul(page));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(name: &str, after: &[&str]) -> config::Process {
        config::Process {
            name: name.into(),
            command: "true".into(),
            after: after.iter().map(|s| (*s).into()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn dependencies_start_first() {
        let defs = [
            def("web", &["db", "cache"]),
            def("cache", &["db"]),
            def("db", &[]),
        ];
        let order: Vec<&str> = ordered(&defs).iter().map(|d| d.name.as_str()).collect();
        assert_eq!(order, ["db", "cache", "web"]);
    }

    #[test]
    fn users_resolve_by_number_and_name() {
        assert_eq!(resolve_user("1000"), Some((1000, 1000)));
        assert_eq!(resolve_user("1000:100"), Some((1000, 100)));
        assert_eq!(resolve_user("root"), Some((0, 0)));
        assert_eq!(resolve_user("no-such-user-here"), None);
        assert_eq!(resolve_user("x:1"), None);
    }

    #[test]
    fn stat_fields_survive_odd_command_names() {
        let me = std::process::id();
        let f = stat_fields(me).unwrap();
        assert!(start_time(me).unwrap() > 0);
        assert!(
            ["R", "S", "D"].contains(&f[0].as_str()),
            "field 3 is our state: {f:?}"
        );
    }
}
