//! Every `kube.yml` type, its defaults, and loading with errors that name file:line:column
//! and the key path. This crate knows no service: services take their own section.

mod sections;
mod source;
mod template;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use sections::*;
pub use source::Origin;
use source::Tree;
pub use template::{template, template_for};

/// The whole `kube.yml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The domain KUBE serves: the apex and one host per app below it.
    pub domain: String,
    /// Where KUBE keeps its identity, certificates, apps and spaces.
    pub data_dir: PathBuf,
    pub http: Http,
    pub tls: Tls,
    pub acme: Acme,
    pub dns: Dns,
    pub signal: Signal,
    pub turn: Turn,
    pub echo: Echo,
    pub apps: Apps,
    pub processes: Vec<Process>,
    pub storage: Storage,
    pub admin: Admin,
    pub metrics: Metrics,
    pub log: Log,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            domain: "localhost".into(),
            data_dir: PathBuf::from("./kube-data"),
            http: Http::default(),
            tls: Tls::default(),
            acme: Acme::default(),
            dns: Dns::default(),
            signal: Signal::default(),
            turn: Turn::default(),
            echo: Echo::default(),
            apps: Apps::default(),
            processes: Vec::new(),
            storage: Storage::default(),
            admin: Admin::default(),
            metrics: Metrics::default(),
            log: Log::default(),
        }
    }
}

/// Sections that `KUBE_<SECTION>_<KEY>` variables may address (`processes` is a list).
pub const SECTIONS: &[&str] = &[
    "http", "tls", "acme", "dns", "signal", "turn", "echo", "apps", "storage", "admin", "metrics",
    "log",
];
const SCALARS: &[&str] = &["domain", "data_dir"];

impl Config {
    /// The TLS mode in force: explicit, or `local` for localhost and `acme` otherwise.
    pub fn tls_mode(&self) -> TlsMode {
        tls_mode(&self.tls, &self.domain)
    }

    /// Checks that need more than one key, or more than a type: pure, every problem found.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Err(why) = check_domain(&self.domain) {
            problems.push(Problem::new("domain", why));
        }
        if self.data_dir.as_os_str().is_empty() {
            problems.push(Problem::new("data_dir", "must not be empty"));
        }
        if self.apps.keep_versions == 0 {
            problems.push(Problem::new(
                "apps.keep_versions",
                "must be at least 1 (the current version)",
            ));
        }
        if self.apps.max_files == 0 {
            problems.push(Problem::new("apps.max_files", "must be at least 1"));
        }
        let listeners = [
            ("http.listen", self.http.listen),
            ("http.https_listen", self.http.https_listen),
            ("admin.listen", self.admin.listen),
        ];
        for (i, (a, x)) in listeners.iter().enumerate() {
            for (b, y) in &listeners[i + 1..] {
                if x == y && x.port() != 0 {
                    problems.push(Problem::new(*a, format!("{x} is also {b}")));
                }
            }
        }
        if self.tls.mode == Some(TlsMode::Files) {
            for (key, v) in [
                ("tls.cert_file", &self.tls.cert_file),
                ("tls.key_file", &self.tls.key_file),
            ] {
                if v.is_none() {
                    problems.push(Problem::new(key, "is required when tls.mode is files"));
                }
            }
        }
        if self.http.shutdown_grace_secs > 3600 {
            problems.push(Problem::new(
                "http.shutdown_grace_secs",
                "must be at most 3600",
            ));
        }
        if self.http.header_timeout_secs == 0 {
            problems.push(Problem::new(
                "http.header_timeout_secs",
                "must be at least 1",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, p) in self.processes.iter().enumerate() {
            if p.name.is_empty() {
                problems.push(Problem::new(format!("processes[{i}].name"), "is required"));
            } else if !names.insert(p.name.as_str()) {
                problems.push(Problem::new(
                    format!("processes[{i}].name"),
                    format!("{:?} is used twice", p.name),
                ));
            }
            if p.command.is_empty() {
                problems.push(Problem::new(
                    format!("processes[{i}].command"),
                    "is required",
                ));
            }
            problems.extend(check_process(i, p, &self.processes));
        }
        problems
    }
}

/// The signals `processes[].stop_signal` may name.
/// What `args`, `env` values and probe addresses of a routed process say for its port.
pub const PORT_PLACEHOLDER: &str = "${PORT}";

pub const STOP_SIGNALS: [&str; 6] = ["TERM", "INT", "QUIT", "HUP", "USR1", "USR2"];

/// What `processes[i]` must satisfy beyond its types.
fn check_process(i: usize, p: &Process, all: &[Process]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut problem = |key: &str, message: String| {
        problems.push(Problem::new(format!("processes[{i}].{key}"), message));
    };
    let label = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    if !p.name.is_empty() && !label(&p.name) {
        problem(
            "name",
            format!(
                "{:?} must be lowercase letters, digits and inner '-' (at most 63)",
                p.name
            ),
        );
    }
    let inside = |path: &std::path::Path| {
        path.is_relative()
            && path.components().all(|c| {
                matches!(
                    c,
                    std::path::Component::Normal(_) | std::path::Component::CurDir
                )
            })
    };
    if let Some(dir) = &p.dir
        && !inside(dir)
    {
        problem(
            "dir",
            format!(
                "{} must be a relative path inside the data dir (no '..')",
                dir.display()
            ),
        );
    }
    for key in p.env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            problem("env", format!("{key:?} is not a variable name"));
        }
    }
    if p.user.as_deref() == Some("") {
        problem("user", "must name a user, or be left out".into());
    }
    let b = &p.backoff;
    if b.initial_ms == 0 || b.max_ms < b.initial_ms {
        problem(
            "backoff.initial_ms",
            "must be at least 1 and not above backoff.max_ms".into(),
        );
    }
    if b.jitter_percent > 100 {
        problem("backoff.jitter_percent", "must be at most 100".into());
    }
    if !STOP_SIGNALS.contains(&p.stop_signal.as_str()) {
        problem(
            "stop_signal",
            format!(
                "{:?} is not one of {}",
                p.stop_signal,
                STOP_SIGNALS.join(", ")
            ),
        );
    }
    if p.logs.max_file_bytes < 4096 {
        problem("logs.max_file_bytes", "must be at least 4096".into());
    }
    if !(1..=100).contains(&p.logs.files) {
        problem("logs.files", "must be between 1 and 100".into());
    }
    for (j, dep) in p.after.iter().enumerate() {
        if dep == &p.name || !all.iter().any(|q| &q.name == dep) {
            problem(
                &format!("after[{j}]"),
                format!("{dep:?} is not another process of this list"),
            );
        }
    }
    for (key, probe) in [("liveness", &p.liveness), ("readiness", &p.readiness)] {
        let Some(probe) = probe else { continue };
        let kinds = usize::from(probe.http.is_some())
            + usize::from(probe.tcp.is_some())
            + usize::from(!probe.exec.is_empty());
        if kinds != 1 {
            problem(key, "needs exactly one of http, tcp and exec".into());
        }
        if let Some(url) = &probe.http
            && !(url.starts_with("http://") && url.len() > "http://".len())
        {
            problem(
                &format!("{key}.http"),
                format!("{url:?} is not an http:// URL"),
            );
        }
        if let Some(addr) = &probe.tcp
            && addr
                .rsplit_once(':')
                .is_none_or(|(_, port)| port != PORT_PLACEHOLDER && port.parse::<u16>().is_err())
        {
            problem(&format!("{key}.tcp"), format!("{addr:?} is not host:port"));
        }
        if probe.interval_secs == 0 || probe.timeout_secs == 0 || probe.failures == 0 {
            problem(
                key,
                "interval_secs, timeout_secs and failures must be at least 1".into(),
            );
        }
    }
    let uses_port = p.args.iter().any(|a| a.contains(PORT_PLACEHOLDER))
        || p.env.values().any(|v| v.contains(PORT_PLACEHOLDER))
        || [&p.liveness, &p.readiness]
            .into_iter()
            .flatten()
            .any(|probe| {
                [&probe.http, &probe.tcp]
                    .into_iter()
                    .flatten()
                    .any(|a| a.contains(PORT_PLACEHOLDER))
            });
    if uses_port && p.route.is_none() {
        problem(
            "route",
            format!("{PORT_PLACEHOLDER} is used, but only a process with a route has a port"),
        );
    }
    if let Some(route) = &p.route {
        if let Some(app) = &route.app
            && !label(app)
        {
            problem(
                "route.app",
                format!("{app:?} must be an app name (a DNS label)"),
            );
        }
        if !route.path.starts_with('/') || route.path.contains("..") || route.path.contains('?') {
            problem(
                "route.path",
                format!("{:?} must be a path starting with '/'", route.path),
            );
        } else if route.app.is_none() && route.path != "/" {
            problem(
                "route.path",
                "only a route under an app has a path; its own host name gets every path".into(),
            );
        }
        for q in &all[..i] {
            let Some(other) = &q.route else { continue };
            let host = |r: &ProcessRoute, name: &str| r.app.clone().unwrap_or_else(|| name.into());
            let (a, b) = (host(route, &p.name), host(other, &q.name));
            let clash = a == b
                && (route.app.is_none()
                    || other.app.is_none()
                    || route.path.trim_end_matches('/') == other.path.trim_end_matches('/'));
            if clash {
                problem(
                    "route",
                    format!(
                        "{a}.<domain>{} is already routed to {:?}",
                        route.path, q.name
                    ),
                );
            }
        }
    }
    if p.limits.memory_mib == Some(0) || p.limits.cpu_percent == Some(0) || p.limits.pids == Some(0)
    {
        problem(
            "limits",
            "a limit must be at least 1; leave it out for none".into(),
        );
    }
    if p.ready_timeout_secs == 0 {
        problem("ready_timeout_secs", "must be at least 1".into());
    }
    // A cycle through `after` never starts: follow it from this process.
    let mut seen = vec![p.name.as_str()];
    let mut next: Vec<&str> = p.after.iter().map(String::as_str).collect();
    while let Some(n) = next.pop() {
        if n == p.name {
            problem("after", "depends on itself through other processes".into());
            break;
        }
        if seen.contains(&n) {
            continue;
        }
        seen.push(n);
        if let Some(q) = all.iter().find(|q| q.name == n) {
            next.extend(q.after.iter().map(String::as_str));
        }
    }
    problems
}

/// The TLS mode in force for `domain`: explicit, or `local` for localhost and `acme` otherwise.
pub fn tls_mode(tls: &Tls, domain: &str) -> TlsMode {
    tls.mode.unwrap_or(if is_local_domain(domain) {
        TlsMode::Local
    } else {
        TlsMode::Acme
    })
}

/// `localhost`, a name under it, or an IP literal: served with the local CA.
pub fn is_local_domain(domain: &str) -> bool {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    d == "localhost" || d.ends_with(".localhost") || d.parse::<std::net::IpAddr>().is_ok()
}

fn check_domain(domain: &str) -> Result<(), String> {
    let d = domain.trim_end_matches('.');
    if d.is_empty() || d.len() > 253 {
        return Err("must be a DNS name of 1 to 253 characters".into());
    }
    for label in d.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{label:?} is not a DNS label (letters, digits, inner hyphens, at most 63)"
            ));
        }
    }
    Ok(())
}

/// One thing wrong with the configuration: the key path, why, and where it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
    pub origin: Option<Origin>,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            path: path.into(),
            message: message.into(),
            origin: None,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match &self.origin {
            Some(o) => write!(f, "{o}: {}: {}", self.path, self.message),
            None if self.path.is_empty() => write!(f, "{}", self.message),
            None => write!(f, "{} (default): {}", self.path, self.message),
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render(.0))]
    Invalid(Vec<Problem>),
}

fn render(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    lines.join("\n")
}

/// A loaded configuration and where each of its keys came from.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub file: Option<PathBuf>,
    tree: Tree,
}

impl Loaded {
    /// Fills in where a problem's key was written (the value, or the key when it is unknown).
    pub fn locate(&self, mut p: Problem) -> Problem {
        if p.origin.is_none() {
            p.origin = self.tree.origin(&p.path);
        }
        p
    }
}

/// Reads `file` (or nothing: the embedded defaults), applies `KUBE_*` variables from `env`,
/// and checks everything. Every problem is returned, not just the first.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, LoadError> {
    load_with(file, env, |_| Vec::new())
}

/// As [`load`], adding the problems `check` finds in a well-typed configuration (the
/// services' own checks) to those of [`Config::validate`], all located.
pub fn load_with(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    check: impl FnOnce(&Config) -> Vec<Problem>,
) -> Result<Loaded, LoadError> {
    let text = match file {
        Some(path) => std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?,
        None => String::new(),
    };
    let label = file.map(|f| f.display().to_string()).unwrap_or_default();
    load_str_with(&label, &text, env, check).map(|mut l| {
        l.file = file.map(Path::to_owned);
        l
    })
}

/// As [`load`], from text; `label` names the file in messages.
pub fn load_str(
    label: &str,
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, LoadError> {
    load_str_with(label, text, env, |_| Vec::new())
}

fn load_str_with(
    label: &str,
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
    check: impl FnOnce(&Config) -> Vec<Problem>,
) -> Result<Loaded, LoadError> {
    let mut tree = Tree::parse(label, text).map_err(|e| {
        LoadError::Invalid(vec![Problem {
            path: String::new(),
            message: e.message,
            origin: e.origin,
        }])
    })?;
    let mut env: Vec<(String, String)> = env.into_iter().collect();
    env.sort();
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix("KUBE_") else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        if SCALARS.contains(&rest.as_str()) {
            tree.set_from_env(None, &rest, &raw, &var);
        } else if let Some(section) = SECTIONS
            .iter()
            .find(|s| rest.len() > s.len() + 1 && rest.starts_with(&format!("{s}_")))
        {
            tree.set_from_env(Some(section), &rest[section.len() + 1..], &raw, &var);
        }
    }

    let mut problems = Vec::new();
    if let Value::Object(root) = &tree.value {
        for (key, value) in root {
            match key.as_str() {
                "domain" | "data_dir" => check_key::<Config>(key, key, value, &tree, &mut problems),
                "processes" => check_whole::<Vec<Process>>(key, value, &tree, &mut problems),
                "http" => check_section::<Http>(key, value, &tree, &mut problems),
                "tls" => check_section::<Tls>(key, value, &tree, &mut problems),
                "acme" => check_section::<Acme>(key, value, &tree, &mut problems),
                "dns" => check_section::<Dns>(key, value, &tree, &mut problems),
                "signal" => check_section::<Signal>(key, value, &tree, &mut problems),
                "turn" => check_section::<Turn>(key, value, &tree, &mut problems),
                "echo" => check_section::<Echo>(key, value, &tree, &mut problems),
                "apps" => check_section::<Apps>(key, value, &tree, &mut problems),
                "storage" => check_section::<Storage>(key, value, &tree, &mut problems),
                "admin" => check_section::<Admin>(key, value, &tree, &mut problems),
                "metrics" => check_section::<Metrics>(key, value, &tree, &mut problems),
                "log" => check_section::<Log>(key, value, &tree, &mut problems),
                _ => problems.push(Problem {
                    path: key.clone(),
                    message: format!(
                        "unknown section; expected one of domain, data_dir, processes, {}",
                        SECTIONS.join(", ")
                    ),
                    origin: tree.key_origin(key),
                }),
            }
        }
    }
    if !problems.is_empty() {
        return Err(LoadError::Invalid(problems));
    }
    let config: Config = match serde_path_to_error::deserialize(&tree.value) {
        Ok(c) => c,
        Err(e) => {
            let path = e.path().to_string();
            return Err(LoadError::Invalid(vec![Problem {
                origin: tree.origin(&path),
                message: e.into_inner().to_string(),
                path,
            }]));
        }
    };
    let loaded = Loaded {
        config,
        file: None,
        tree,
    };
    let mut problems = loaded.config.validate();
    problems.extend(check(&loaded.config));
    let problems: Vec<Problem> = problems.into_iter().map(|p| loaded.locate(p)).collect();
    if !problems.is_empty() {
        return Err(LoadError::Invalid(problems));
    }
    Ok(loaded)
}

/// Checks a section key by key, so that one bad key does not hide the next.
fn check_section<T: DeserializeOwned>(
    name: &str,
    value: &Value,
    tree: &Tree,
    problems: &mut Vec<Problem>,
) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                check_key::<T>(name, key, v, tree, problems);
            }
        }
        Value::Null => {}
        other => check_whole::<T>(name, other, tree, problems),
    }
}

/// Deserializes `T` from a mapping holding `key` alone; reports a problem at its path.
fn check_key<T: DeserializeOwned>(
    section: &str,
    key: &str,
    value: &Value,
    tree: &Tree,
    problems: &mut Vec<Problem>,
) {
    let mut one = serde_json::Map::new();
    one.insert(key.to_owned(), value.clone());
    let prefix = if section == key { "" } else { section };
    if let Err(e) = serde_path_to_error::deserialize::<_, T>(Value::Object(one)) {
        problems.push(problem_at(prefix, e, tree));
    }
}

fn check_whole<T: DeserializeOwned>(
    name: &str,
    value: &Value,
    tree: &Tree,
    problems: &mut Vec<Problem>,
) {
    if let Err(e) = serde_path_to_error::deserialize::<_, T>(value) {
        problems.push(problem_at(name, e, tree));
    }
}

fn problem_at(
    prefix: &str,
    e: serde_path_to_error::Error<serde_json::Error>,
    tree: &Tree,
) -> Problem {
    let inner = e.path().to_string();
    let path = match inner.as_str() {
        "." => prefix.to_owned(),
        i if i.starts_with('[') => format!("{prefix}{i}"),
        i => source::join(prefix, i),
    };
    let message = e.into_inner().to_string();
    let origin = if message.starts_with("unknown field") {
        tree.key_origin(&path)
    } else {
        tree.origin(&path)
    };
    Problem {
        path,
        message,
        origin,
    }
}

#[cfg(test)]
mod tests;
