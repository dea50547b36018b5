//! The `processes` service: back-end processes of apps, supervised. Each instance of a
//! process runs in a process group of its own and, where KUBE can make one, a cgroup v2 of
//! its own (`cgroup`: the boundary that holds its whole tree, carries its limits and is
//! killed at once), with a parent-death signal (so `kill -9` of KUBE takes it down) and its
//! group recorded in `<data_dir>/run/processes/` (so whatever outlived KUBE is killed on the
//! next start, with the cgroups of the same data dir). Its stdout and stderr go line by line
//! to `<data_dir>/logs/<name>/`, rotated (`logs`); when it ends, `policy` says whether and
//! when it starts again. Processes start after every service and stop before them, in the
//! order of their `after` lists.
//!
//! Liveness and readiness probes (HTTP, TCP, exec) and `sd_notify` (`notify`) run beside
//! each instance: failing liveness stops it and its policy restarts it; readiness gates the
//! traffic its `route` sends (`routes`, read by the HTTPS listener's proxy). A process with
//! readiness is restarted without downtime: the new instance starts on a new port, takes the
//! traffic once ready, and the old one drains and stops.

pub mod cgroup;
pub mod logs;
pub mod notify;
pub mod policy;
pub mod routes;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use config::Problem;
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};

use self::cgroup::{Cgroups, Enforcement, Group};
use self::logs::{LineSplitter, LogLimits, LogWriter, Stream};
use self::notify::{Notice, NotifySocket};
use self::policy::{Exit, Next, Restarts};
use self::routes::{Backend, Routes};
use crate::metrics::Metrics;
use crate::service::{Context, Running, Service, StartError, Started};

/// What the operator asks of one process.
enum Control {
    /// Answered once it was started (or failed to start).
    Start(oneshot::Sender<()>),
    Stop(oneshot::Sender<()>),
    Restart(oneshot::Sender<()>),
    /// A changed definition (a reload): restarted with it, without downtime when it has
    /// readiness.
    Replace(Box<config::Process>, oneshot::Sender<()>),
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
    /// Whether it is ready (its readiness probe passes, it said `READY=1`); None without
    /// either.
    pub ready: Option<bool>,
    /// The port KUBE gave it in `PORT`, when it has a route.
    pub port: Option<u16>,
    /// Its cgroup, when KUBE could make one.
    pub cgroup: Option<String>,
    /// How each configured limit is enforced.
    pub limits: Enforcement,
    /// The last `STATUS=` it sent over `NOTIFY_SOCKET`.
    pub notice: Option<String>,
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
    routes: Arc<Routes>,
    cgroups: Option<Cgroups>,
    /// Numbers instances, for their cgroups and records.
    instances: AtomicU64,
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

    /// Starts `name` again: stopped and started, or without downtime when it has readiness.
    /// Returns once the new instance started (with readiness: took over, or was given up).
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
    /// ones are restarted with their new definition (without downtime when they have
    /// readiness); unchanged ones are left alone. Returns whether anything changed.
    pub async fn reload(&self, defs: &[config::Process]) -> bool {
        let mut procs = self.inner.procs.lock().await;
        let mut changed = false;
        let names: Vec<String> = procs.keys().cloned().collect();
        for name in names.into_iter().rev() {
            if !defs.iter().any(|d| d.name == name)
                && let Some(p) = procs.remove(&name)
            {
                stop_proc(p).await;
                self.inner.routes.declare(&name, None);
                changed = true;
            }
        }
        for def in ordered(defs) {
            match procs.get_mut(&def.name) {
                Some(p) if p.def == *def => {}
                Some(p) => {
                    let (tx, rx) = oneshot::channel();
                    if p.control
                        .send(Control::Replace(Box::new(def.clone()), tx))
                        .await
                        .is_ok()
                    {
                        let _ = rx.await;
                    }
                    p.def = def.clone();
                    changed = true;
                }
                None => {
                    let p = spawn_proc(&self.inner, def.clone());
                    procs.insert(def.name.clone(), p);
                    changed = true;
                }
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

fn pid_file(data_dir: &Path, name: &str, n: u64) -> PathBuf {
    data_dir
        .join("run")
        .join("processes")
        .join(format!("{name}.{n}.json"))
}

/// What the `processes` service needs.
pub struct ProcessesDeps {
    pub metrics: Arc<Metrics>,
    /// The table the HTTPS listener routes by; the service keeps it current.
    pub routes: Arc<Routes>,
}

pub struct ProcessesService;

impl Service for ProcessesService {
    const NAME: &'static str = "processes";
    type Section = Vec<config::Process>;
    type Deps = ProcessesDeps;
    type Handle = ProcessesHandle;

    fn check(_s: &Vec<config::Process>, _cx: &Context) -> Vec<Problem> {
        // Every rule is in `config::Config::check` (names, dependencies, bounds).
        Vec::new()
    }

    async fn start(
        s: Vec<config::Process>,
        cx: &Context,
        deps: ProcessesDeps,
    ) -> Result<Started<ProcessesHandle>, StartError> {
        kill_leftovers(&cx.data_dir);
        // Even without processes: a reload may add some, and a killed KUBE may have left
        // cgroups of this data dir that hold escaped grandchildren.
        let data_dir = cx.data_dir.clone();
        let cgroups = tokio::task::spawn_blocking(move || {
            let c = Cgroups::detect(&data_dir);
            if let Some(c) = &c {
                c.kill_leftovers();
            }
            c
        })
        .await
        .ok()
        .flatten();
        match &cgroups {
            Some(c) if !s.is_empty() => {
                tracing::info!(controllers = ?c.controllers, "processes: each in a cgroup of its own")
            }
            None if !s.is_empty() => tracing::info!(
                "processes: no writable cgroup v2; process groups hold them, memory limits are watched by sampling"
            ),
            _ => {}
        }
        for def in &s {
            deps.routes.declare(&def.name, def.route.as_ref());
        }
        let inner = Arc::new(Inner {
            procs: tokio::sync::Mutex::new(BTreeMap::new()),
            data_dir: cx.data_dir.clone(),
            metrics: deps.metrics,
            routes: deps.routes,
            cgroups,
            instances: AtomicU64::new(0),
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
    let limits = Enforcement::of(
        &def.limits,
        inner.cgroups.as_ref().map_or(&[][..], |c| &c.controllers),
    );
    for (what, how) in [("cpu", limits.cpu), ("pids", limits.pids)] {
        if how == Some("not enforced") {
            tracing::warn!(process = %def.name, limit = what, "processes: this limit needs a cgroup v2 controller KUBE cannot use here; not enforced");
        }
    }
    let status = Arc::new(Mutex::new(Status {
        name: def.name.clone(),
        state: "starting",
        pid: None,
        since: crate::service::unix_now(),
        restarts: 0,
        last_exit: None,
        next_start_ms: None,
        ready: None,
        port: None,
        cgroup: None,
        limits,
        notice: None,
    }));
    inner.routes.declare(&def.name, def.route.as_ref());
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
        s.port = None;
        s.cgroup = None;
    }
    s.since = crate::service::unix_now();
    s.next_start_ms = None;
}

/// What happens beside a running instance.
enum Event {
    /// Its liveness probe failed `failures` times in a row.
    Dead,
    /// Its readiness probe changed.
    Ready(bool),
    Notice(Notice),
    /// Its memory (every process of its group) went over its limit: bytes.
    OverMemory(u64),
}

/// One run of a process, and what runs beside it.
struct Instance {
    n: u64,
    child: tokio::process::Child,
    pid: u32,
    group: Option<Group>,
    backend: Option<Arc<Backend>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    events: mpsc::Receiver<Event>,
    /// None without a readiness probe.
    probe_ready: Option<bool>,
    /// None without `notify`.
    notified_ready: Option<bool>,
}

impl Instance {
    fn ready(&self) -> bool {
        self.probe_ready.unwrap_or(true) && self.notified_ready.unwrap_or(true)
    }

    /// Applies an event that is not an end; returns it when it is one.
    fn apply(&mut self, e: Event, status: Option<&Mutex<Status>>) -> Option<Event> {
        match e {
            Event::Ready(r) => self.probe_ready = Some(r),
            Event::Notice(Notice::Ready) => self.notified_ready = Some(true),
            Event::Notice(Notice::Status(text)) => {
                if let Some(s) = status {
                    lock(s).notice = Some(text);
                }
            }
            Event::Notice(Notice::Stopping) => {}
            end => return Some(end),
        }
        if let Some(b) = &self.backend {
            b.set_ready(self.ready());
        }
        None
    }
}

/// Whether a restart of `def` can keep serving: it says when it is ready.
fn has_readiness(def: &config::Process) -> bool {
    def.readiness.is_some() || def.notify
}

/// How an instance's run ended.
enum Ended {
    Exited(std::io::Result<std::process::ExitStatus>),
    Dead,
    OverMemory(u64),
    Stop(Option<oneshot::Sender<()>>),
    Restart(oneshot::Sender<()>),
}

/// One process's life: start, wait, restart per its policy, obey the operator.
async fn supervise(
    inner: Arc<Inner>,
    mut def: config::Process,
    status: Arc<Mutex<Status>>,
    mut control: mpsc::Receiver<Control>,
) {
    let name = def.name.clone();
    let metrics = inner.metrics.clone();
    let up = metrics.process_up.with_label_values(&[&name]);
    let restarts_total = metrics.process_restarts.with_label_values(&[&name]);
    let last_exit = metrics.process_last_exit.with_label_values(&[&name]);
    let ready_gauge = metrics.process_ready.with_label_values(&[&name]);
    // Every series of the process exists from the start (at 0), so rates and dashboards
    // have data before the first failure or sample.
    metrics.process_probe_failures.with_label_values(&[&name]);
    metrics.process_memory_kills.with_label_values(&[&name]);
    metrics.process_cpu_seconds.with_label_values(&[&name]);
    metrics.process_resident_bytes.with_label_values(&[&name]);
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
    let note = |text: &str| note(log.as_ref(), text);
    let mut restarts = Restarts::new(def.restart, def.backoff);
    let mut wanted = true;
    // The next start is not a restart: the first, or an operator's start of a stopped one.
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
                        first = true;
                        break;
                    }
                    Some(Control::Restart(ack)) => {
                        started_ack = Some(ack);
                        first = true;
                        break;
                    }
                    Some(Control::Stop(ack)) => {
                        let _ = ack.send(());
                    }
                    Some(Control::Replace(next, ack)) => {
                        // Stopped: it starts with the new definition when asked to.
                        adopt(&inner, &status, &mut def, &mut restarts, *next);
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
        restarts.started(Instant::now());
        let exit = match start_instance(&inner, &def, log.clone()).await {
            Err(e) => {
                if let Some(ack) = started_ack.take() {
                    let _ = ack.send(());
                }
                note(&format!("cannot start: {e}"));
                tracing::warn!(process = %name, error = %e, "processes: cannot start");
                lock(&status).last_exit = Some(format!("not started: {e}"));
                Exit::SpawnFailed
            }
            Ok(mut inst) => {
                show_running(&inner, &status, &inst, &def, log.as_ref());
                up.set(1);
                if let Some(ack) = started_ack.take() {
                    let _ = ack.send(());
                }
                // Runs until it exits, the operator (or the service's stop) stops it, its
                // liveness probe fails, or it outgrows its memory.
                let ended = loop {
                    let has_ready = has_readiness(&def);
                    let r = inst.ready();
                    ready_gauge.set(i64::from(r));
                    if has_ready {
                        let mut s = lock(&status);
                        if s.ready != Some(r) {
                            s.ready = Some(r);
                            drop(s);
                            note(if r { "ready" } else { "not ready" });
                        }
                    }
                    tokio::select! {
                        r = inst.child.wait() => break Ended::Exited(r),
                        c = control.recv() => {
                            let ack = match c {
                                // Running already.
                                Some(Control::Start(ack)) => { let _ = ack.send(()); continue; }
                                Some(Control::Stop(ack)) => { wanted = false; break Ended::Stop(Some(ack)); }
                                None => { wanted = false; break Ended::Stop(None); }
                                Some(Control::Restart(ack)) => ack,
                                Some(Control::Replace(next, ack)) => {
                                    adopt(&inner, &status, &mut def, &mut restarts, *next);
                                    ack
                                }
                            };
                            // Without readiness it stops and starts again; with readiness the
                            // new instance takes over once ready.
                            if !has_readiness(&def) {
                                break Ended::Restart(ack);
                            }
                            inst = replace(&inner, &def, inst, &status, log.as_ref()).await;
                            restarts_total.inc();
                            lock(&status).restarts += 1;
                            let _ = ack.send(());
                        }
                        Some(e) = inst.events.recv() => match inst.apply(e, Some(&status)) {
                            Some(Event::Dead) => break Ended::Dead,
                            Some(Event::OverMemory(rss)) => break Ended::OverMemory(rss),
                            _ => {}
                        },
                    }
                };
                ready_gauge.set(0);
                inner.routes.set_backend(&name, None);
                match ended {
                    Ended::Stop(ack) => {
                        stop_instance(&inner, &def, inst).await;
                        note("stopped");
                        up.set(0);
                        if let Some(ack) = ack {
                            let _ = ack.send(());
                        }
                        if control.is_closed() {
                            return;
                        }
                        continue;
                    }
                    Ended::Restart(ack) => {
                        stop_instance(&inner, &def, inst).await;
                        note("stopped to start again");
                        up.set(0);
                        // Answered once the new instance started, so the answer shows it.
                        started_ack = Some(ack);
                        continue;
                    }
                    Ended::Dead => {
                        metrics
                            .process_probe_failures
                            .with_label_values(&[&name])
                            .inc();
                        note("liveness probe failed: stopping it");
                        tracing::warn!(process = %name, "processes: liveness probe failed");
                        stop_instance(&inner, &def, inst).await;
                        end_of_run(
                            &status,
                            &last_exit,
                            log.as_ref(),
                            &name,
                            "liveness probe failed".into(),
                            128 + libc::SIGKILL,
                        );
                        Exit::Signal(libc::SIGKILL)
                    }
                    Ended::OverMemory(rss) => {
                        metrics
                            .process_memory_kills
                            .with_label_values(&[&name])
                            .inc();
                        let limit = def.limits.memory_mib.unwrap_or(0);
                        kill_now(&inst);
                        stop_instance(&inner, &def, inst).await;
                        end_of_run(
                            &status,
                            &last_exit,
                            log.as_ref(),
                            &name,
                            format!(
                                "memory limit: {} MiB resident, over its {limit} MiB",
                                rss >> 20
                            ),
                            128 + libc::SIGKILL,
                        );
                        Exit::Signal(libc::SIGKILL)
                    }
                    Ended::Exited(r) => {
                        let oom = inst.group.as_ref().map_or(0, Group::oom_kills);
                        stop_instance(&inner, &def, inst).await;
                        let exit = match r {
                            Ok(s) => {
                                use std::os::unix::process::ExitStatusExt;
                                match (s.code(), s.signal()) {
                                    (Some(c), _) => Exit::Code(c),
                                    (None, Some(sig)) => Exit::Signal(sig),
                                    _ => Exit::Code(-1),
                                }
                            }
                            Err(_) => Exit::Code(-1),
                        };
                        let (mut text, code) = match exit {
                            Exit::Code(c) => (format!("code {c}"), c),
                            Exit::Signal(s) => (format!("signal {s}"), 128 + s),
                            Exit::SpawnFailed => ("not started".into(), -1),
                        };
                        if oom > 0 {
                            metrics
                                .process_memory_kills
                                .with_label_values(&[&name])
                                .inc();
                            text = format!(
                                "memory limit: killed by the kernel at its cgroup's memory.max ({text})"
                            );
                        }
                        end_of_run(&status, &last_exit, log.as_ref(), &name, text, code);
                        exit
                    }
                }
            }
        };
        up.set(0);
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
                        Some(Control::Restart(ack)) | Some(Control::Start(ack)) => started_ack = Some(ack),
                        Some(Control::Replace(next, ack)) => {
                            adopt(&inner, &status, &mut def, &mut restarts, *next);
                            let _ = ack.send(());
                        }
                    },
                }
            }
        }
    }
}

/// Takes a changed definition: its policy, route and limits apply from here on (its log's
/// rotation bounds from KUBE's next start).
fn adopt(
    inner: &Inner,
    status: &Mutex<Status>,
    def: &mut config::Process,
    restarts: &mut Restarts,
    next: config::Process,
) {
    *def = next;
    *restarts = Restarts::new(def.restart, def.backoff);
    inner.routes.declare(&def.name, def.route.as_ref());
    lock(status).limits = Enforcement::of(
        &def.limits,
        inner.cgroups.as_ref().map_or(&[][..], |c| &c.controllers),
    );
}

/// A line from KUBE itself in the process's log.
fn note(log: Option<&Arc<Mutex<LogWriter>>>, text: &str) {
    if let Some(log) = log {
        let mut w = lock(log);
        let _ = w.line(
            Stream::Stderr,
            unix_ms(),
            format!("[kube] {text}").as_bytes(),
        );
        let _ = w.flush();
    }
}

/// Shows `inst` as the running instance: status, route, log.
fn show_running(
    inner: &Inner,
    status: &Mutex<Status>,
    inst: &Instance,
    def: &config::Process,
    log: Option<&Arc<Mutex<LogWriter>>>,
) {
    set_state(status, "running", Some(inst.pid));
    {
        let mut s = lock(status);
        s.port = inst.backend.as_ref().map(|b| b.port);
        s.cgroup = inst.group.as_ref().map(|g| g.path.display().to_string());
        s.ready = has_readiness(def).then(|| inst.ready());
    }
    inner.routes.set_backend(&def.name, inst.backend.clone());
    let port = inst
        .backend
        .as_ref()
        .map(|b| format!(", port {}", b.port))
        .unwrap_or_default();
    note(log, &format!("started, pid {}{port}", inst.pid));
    tracing::info!(process = %def.name, pid = inst.pid, "processes: started");
}

fn end_of_run(
    status: &Mutex<Status>,
    last_exit: &prometheus::IntGauge,
    log: Option<&Arc<Mutex<LogWriter>>>,
    name: &str,
    text: String,
    code: i32,
) {
    last_exit.set(i64::from(code));
    note(log, &format!("exited: {text}"));
    tracing::warn!(process = %name, exit = %text, "processes: exited");
    lock(status).last_exit = Some(text);
}

/// A restart without downtime: starts a new instance beside `old`, waits (at most
/// `ready_timeout_secs`) for it to be ready, routes to it, lets `old` drain (at most
/// `stop_grace_secs`) and stops it. When the new one fails to start or to become ready, it
/// is stopped and `old` goes on. Returns the instance that runs.
async fn replace(
    inner: &Arc<Inner>,
    def: &config::Process,
    mut old: Instance,
    status: &Mutex<Status>,
    log: Option<&Arc<Mutex<LogWriter>>>,
) -> Instance {
    let mut new = match start_instance(inner, def, log.cloned()).await {
        Ok(i) => i,
        Err(e) => {
            note(
                log,
                &format!("restart: the new instance cannot start ({e}); the old one goes on"),
            );
            return old;
        }
    };
    note(
        log,
        &format!(
            "restart: new instance pid {} started beside pid {}; waiting until it is ready",
            new.pid, old.pid
        ),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(def.ready_timeout_secs);
    let mut old_gone = false;
    let failure = loop {
        if new.ready() {
            break None;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                break Some(format!("not ready after {} s", def.ready_timeout_secs));
            }
            r = new.child.wait() => break Some(format!("it exited ({})", r.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()))),
            Some(e) = new.events.recv() => match new.apply(e, None) {
                Some(Event::Dead) => break Some("its liveness probe failed".into()),
                Some(Event::OverMemory(_)) => break Some("over its memory limit".into()),
                _ => {}
            },
            _ = old.child.wait(), if !old_gone => old_gone = true,
            Some(e) = old.events.recv() => { old.apply(e, Some(status)); }
        }
    };
    if let Some(why) = failure {
        note(
            log,
            &format!(
                "restart: the new instance failed: {why}; it is stopped and the old one goes on"
            ),
        );
        tracing::warn!(process = %def.name, why, "processes: zero-downtime restart failed");
        stop_instance(inner, def, new).await;
        return old;
    }
    // The new instance takes the traffic; the old one drains.
    show_running(inner, status, &new, def, log);
    if let Some(b) = &old.backend {
        let drained = tokio::time::Instant::now() + Duration::from_secs(def.stop_grace_secs);
        while b.in_flight() > 0 && tokio::time::Instant::now() < drained {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    note(
        log,
        &format!(
            "restart: pid {} takes the traffic; stopping pid {}",
            new.pid, old.pid
        ),
    );
    stop_instance(inner, def, old).await;
    new
}

#[derive(Debug, thiserror::Error)]
enum InstanceError {
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("cannot pick a port: {0}")]
    Port(std::io::Error),
    #[error("cannot make the notify socket: {0}")]
    Notify(std::io::Error),
}

/// Starts one instance of `def`: its cgroup, its port, its notify socket, the process, and
/// its probes and watchdog.
async fn start_instance(
    inner: &Arc<Inner>,
    def: &config::Process,
    log: Option<Arc<Mutex<LogWriter>>>,
) -> Result<Instance, InstanceError> {
    let n = inner.instances.fetch_add(1, Ordering::Relaxed);
    let group = match &inner.cgroups {
        Some(c) => match c.create(&def.name, n, &def.limits) {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::warn!(process = %def.name, error = %e, "processes: cannot make a cgroup; the process group holds it");
                None
            }
        },
        None => None,
    };
    let port = match def.route {
        Some(_) => Some(free_port().map_err(InstanceError::Port)?),
        None => None,
    };
    let def = with_port(def, port);
    let notify = if def.notify {
        Some(NotifySocket::bind().map_err(InstanceError::Notify)?)
    } else {
        None
    };
    let child = match spawn(
        &def,
        &inner.data_dir,
        log,
        port,
        notify.as_ref().map(NotifySocket::env_value),
        group.as_ref(),
    ) {
        Ok(c) => c,
        Err(e) => {
            if let Some(g) = group {
                let _ = tokio::task::spawn_blocking(move || g.remove()).await;
            }
            return Err(e.into());
        }
    };
    let pid = child.id().unwrap_or(0);
    record(&inner.data_dir, &def.name, n, pid);
    let (tx, events) = mpsc::channel(16);
    let dir = inner
        .data_dir
        .join(def.dir.as_deref().unwrap_or(Path::new("")));
    let mut tasks = Vec::new();
    if let Some(p) = def.liveness.clone() {
        tasks.push(tokio::spawn(probe_loop(p, dir.clone(), true, tx.clone())));
    }
    if let Some(p) = def.readiness.clone() {
        tasks.push(tokio::spawn(probe_loop(p, dir, false, tx.clone())));
    }
    if let Some(sock) = notify {
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(notices) = sock.recv().await {
                for n in notices {
                    if tx.send(Event::Notice(n)).await.is_err() {
                        return;
                    }
                }
            }
        }));
    }
    let watched = !inner
        .cgroups
        .as_ref()
        .is_some_and(|c| c.controllers.contains(&"memory") && group.is_some());
    if let (Some(mib), true) = (def.limits.memory_mib, watched) {
        let cgroup = group.as_ref().map(|g| g.path.clone());
        tasks.push(tokio::spawn(watch_memory(pid, cgroup, mib << 20, tx)));
    }
    let backend = port.map(Backend::new);
    let inst = Instance {
        n,
        child,
        pid,
        group,
        backend,
        tasks,
        events,
        probe_ready: def.readiness.as_ref().map(|_| false),
        notified_ready: def.notify.then_some(false),
    };
    if let Some(b) = &inst.backend {
        b.set_ready(inst.ready());
    }
    Ok(inst)
}

/// A free loopback port for a new instance (it binds it itself a moment later).
fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(l.local_addr()?.port())
}

/// `def` with `${PORT}` replaced in its arguments, environment values and probes.
fn with_port(def: &config::Process, port: Option<u16>) -> config::Process {
    let mut d = def.clone();
    let Some(port) = port else { return d };
    let port = port.to_string();
    let sub = |s: &mut String| *s = s.replace(config::PORT_PLACEHOLDER, &port);
    d.args.iter_mut().for_each(sub);
    d.env.values_mut().for_each(sub);
    for probe in [&mut d.liveness, &mut d.readiness].into_iter().flatten() {
        probe.http.iter_mut().for_each(sub);
        probe.tcp.iter_mut().for_each(sub);
    }
    d
}

/// SIGKILL to everything of the instance at once (its memory is over its limit).
fn kill_now(inst: &Instance) {
    match &inst.group {
        Some(g) => g.kill(),
        None => kill_group(inst.pid, libc::SIGKILL),
    }
}

/// Stops an instance (or cleans up after one that ended): its stop signal to the leader
/// (through its pidfd) and its group, its grace, then KILL to its cgroup and group; then its
/// cgroup and record go.
async fn stop_instance(inner: &Inner, def: &config::Process, mut inst: Instance) {
    for t in &inst.tasks {
        t.abort();
    }
    if matches!(inst.child.try_wait(), Ok(None)) {
        signal_leader(inst.pid, signal_number(&def.stop_signal));
        kill_group(inst.pid, signal_number(&def.stop_signal));
        let grace = Duration::from_secs(def.stop_grace_secs);
        if tokio::time::timeout(grace, inst.child.wait())
            .await
            .is_err()
        {
            kill_now(&inst);
            kill_group(inst.pid, libc::SIGKILL);
            let _ = inst.child.wait().await;
        }
    }
    // Children that ignored the stop signal, or outlived their parent, go too: those that
    // left the process group are still in the cgroup.
    kill_group(inst.pid, libc::SIGKILL);
    if let Some(g) = inst.group.take() {
        let _ = tokio::task::spawn_blocking(move || g.remove()).await;
    }
    let _ = std::fs::remove_file(pid_file(&inner.data_dir, &def.name, inst.n));
}

/// Sends `signal` to the leader through a pidfd, so a recycled pid is never signalled.
fn signal_leader(pid: u32, signal: i32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let Ok(fd) = i32::try_from(fd) else { return };
    if fd < 0 {
        return;
    }
    // SAFETY: fd is the descriptor just opened; a null siginfo is allowed; we close it once.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd,
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
        libc::close(fd);
    }
}

/// Every second: the resident memory of the instance's processes (its cgroup, or its process
/// group), reported once over `limit` bytes. Used where the cgroup memory controller is not.
async fn watch_memory(pid: u32, cgroup: Option<PathBuf>, limit: u64, tx: mpsc::Sender<Event>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let cg = cgroup.clone();
        let rss = tokio::task::spawn_blocking(move || group_rss(pid, cg.as_deref()))
            .await
            .unwrap_or(0);
        if rss > limit {
            let _ = tx.send(Event::OverMemory(rss)).await;
            return;
        }
    }
}

/// The pids of an instance: its cgroup's, or its process group's.
fn group_pids(pid: u32, cgroup: Option<&Path>) -> Vec<u32> {
    if let Some(cg) = cgroup {
        return std::fs::read_to_string(cg.join("cgroup.procs"))
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default();
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![pid];
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            // Field 5, the process group, is index 2 after the command name.
            stat_fields(*p).and_then(|f| f.get(2).and_then(|g| g.parse::<u32>().ok())) == Some(pid)
        })
        .collect()
}

/// Resident bytes of every process of an instance.
fn group_rss(pid: u32, cgroup: Option<&Path>) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    group_pids(pid, cgroup)
        .into_iter()
        .filter_map(|p| stat_fields(p)?.get(21)?.parse::<u64>().ok())
        .map(|pages| pages.saturating_mul(page))
        .sum()
}

/// Runs `probe` every `interval_secs` after `initial_delay_secs`; reports liveness once it
/// fails `failures` times in a row, readiness at each change (not ready until it passes).
async fn probe_loop(probe: config::Probe, dir: PathBuf, live: bool, tx: mpsc::Sender<Event>) {
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
            (failed >= probe.failures).then_some(Event::Dead)
        } else {
            let now = ok || (failed < probe.failures && ready == Some(true));
            (ready != Some(now)).then(|| {
                ready = Some(now);
                Event::Ready(now)
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

fn record(data_dir: &Path, name: &str, n: u64, pid: u32) {
    let path = pid_file(data_dir, name, n);
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

/// Starts the process: a clean environment (with `PORT` and `NOTIFY_SOCKET` when it has
/// them), its own process group and cgroup, a parent-death signal, the configured user,
/// stdout and stderr into its log.
fn spawn(
    def: &config::Process,
    data_dir: &Path,
    log: Option<Arc<Mutex<LogWriter>>>,
    port: Option<u16>,
    notify_socket: Option<String>,
    group: Option<&Group>,
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
    if let Some(port) = port {
        cmd.env("PORT", port.to_string());
    }
    if let Some(sock) = notify_socket {
        cmd.env("NOTIFY_SOCKET", sock);
    }
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
    let procs_fd = group.map(Group::procs_fd);
    // SAFETY: between fork and exec only async-signal-safe calls: write(2) of "0" (this
    // process) to its cgroup's `cgroup.procs`, opened before the fork, and prctl.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = procs_fd
                && libc::write(fd, b"0".as_ptr().cast(), 1) != 1
            {
                return Err(std::io::Error::last_os_error());
            }
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

/// CPU time and resident memory of every running process, every few seconds: its cgroup's
/// when it has one, else its main process's CPU and its group's memory.
async fn sample(handle: ProcessesHandle) {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        for s in handle.list().await {
            let Some(pid) = s.pid else { continue };
            let cgroup = s.cgroup.map(PathBuf::from);
            let (cpu, rss) = tokio::task::spawn_blocking(move || {
                let cpu = match &cgroup {
                    Some(cg) => std::fs::read_to_string(cg.join("cpu.stat"))
                        .ok()
                        .and_then(|t| {
                            t.lines()
                                .find_map(|l| l.strip_prefix("usage_usec "))
                                .and_then(|v| v.trim().parse::<u64>().ok())
                        })
                        .map(|us| us as f64 / 1e6),
                    None => None,
                };
                let cpu = cpu.or_else(|| {
                    let f = stat_fields(pid)?;
                    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                    // Fields 14 and 15 (utime, stime), counted from field 3.
                    Some((num(11) + num(12)) as f64 / ticks)
                });
                (cpu, group_rss(pid, cgroup.as_deref()))
            })
            .await
            .unwrap_or((None, 0));
            let m = &handle.inner.metrics;
            if let Some(cpu) = cpu {
                m.process_cpu_seconds.with_label_values(&[&s.name]).set(cpu);
            }
            m.process_resident_bytes
                .with_label_values(&[&s.name])
                .set(i64::try_from(rss).unwrap_or(i64::MAX));
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
