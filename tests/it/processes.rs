//! Supervised processes: real programs (`sh`, `sleep`) as back-ends, through the real
//! `kube`: restart with backoff, no process left behind by a stop or `kill -9` of KUBE
//! (grandchildren included), a chatty process's log within its bound, a reload that
//! restarts only what changed, bad definitions refused with file:line:column.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{Kube, Opts};

pub(crate) fn start(config: &str) -> Kube {
    Kube::start_with(Opts {
        config: Some(config.to_owned()),
        ..Default::default()
    })
    .unwrap_or_else(|log| panic!("kube did not start:\n{log}"))
}

pub(crate) fn process(kube: &Kube, name: &str) -> Value {
    let out = kube.cli(&["process", "show", name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// Polls `name` until `ok` holds (at most 15 s).
pub(crate) fn wait_for(kube: &Kube, name: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let p = process(kube, name);
        if ok(&p) {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: {what}: {p}\n{}",
            kube.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn logs(kube: &Kube, name: &str) -> String {
    let out = kube.cli(&["logs", name, "-n", "1000"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `pid` is gone (or a zombie nobody reaped yet: it runs nothing).
pub(crate) fn gone(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

pub(crate) fn wait_gone(pid: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gone(pid) {
        assert!(
            Instant::now() < deadline,
            "{what} (pid {pid}) is still running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn read_pid(path: &Path) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "{} never written",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_crashing_process_restarts_with_backoff_and_is_logged() {
    let kube = start(
        "processes:
  - name: crasher
    command: sh
    args: ['-c', 'echo hello from $$; sleep 0.2; exit 3']
    restart: on-failure
    backoff: {initial_ms: 300, max_ms: 5000, jitter_percent: 0, reset_after_secs: 60}
",
    );
    let started = Instant::now();
    let p = wait_for(&kube, "crasher", "two restarts", |p| {
        p["restarts"].as_u64() >= Some(2)
    });
    // 0.2 s runs, pauses of 300 then 600 ms: at least 1.3 s for two restarts (loosely).
    assert!(
        started.elapsed() >= Duration::from_millis(1_200),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(p["last_exit"], "code 3");
    let log = logs(&kube, "crasher");
    assert!(log.contains(" out hello from "), "{log}");
    assert!(log.contains("[kube] exited: code 3"), "{log}");
    let first = log
        .find("starting again in 300 ms")
        .expect("the first pause");
    let second = log
        .find("starting again in 600 ms")
        .expect("the pause doubles");
    assert!(first < second, "{log}");
    let m = kube.metrics_blocking();
    assert!(
        m.contains("kube_process_last_exit_code{name=\"crasher\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("kube_process_restarts_total{name=\"crasher\"}"),
        "{m}"
    );
    // A process that exits with 0 under on-failure stays stopped.
    let out = kube.cli(&["ps"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("crasher"));
}

#[test]
fn stop_and_kill_9_of_kube_leave_no_process_behind() {
    let config = "processes:
  - name: forker
    command: sh
    args: ['-c', 'sleep 1000 & echo $! > grandchild.pid; echo $$ > main.pid; wait']
    dir: forker
    stop_grace_secs: 2
";
    let mut kube = start(config);
    let dir = kube.data_dir.join("forker");
    let (main, grandchild) = (
        read_pid(&dir.join("main.pid")),
        read_pid(&dir.join("grandchild.pid")),
    );
    let out = kube.cli(&["process", "stop", "forker"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_gone(main, "the process after a stop");
    wait_gone(grandchild, "its grandchild after a stop");
    assert_eq!(process(&kube, "forker")["state"], "stopped");

    // Started again, then KUBE is killed with SIGKILL: the process dies with it
    // (parent-death signal); the grandchild is killed when KUBE starts again.
    for f in ["main.pid", "grandchild.pid"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let out = kube.cli(&["process", "start", "forker"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (main, grandchild) = (
        read_pid(&dir.join("main.pid")),
        read_pid(&dir.join("grandchild.pid")),
    );
    let data_dir = kube.data_dir.clone();
    kube.kill();
    wait_gone(main, "the process after kill -9 of KUBE");
    let mut again = Kube::start_with(Opts {
        config: Some(config.to_owned()),
        data_dir: Some(data_dir),
        ..Default::default()
    })
    .unwrap_or_else(|log| panic!("restart failed:\n{log}"));
    wait_gone(
        grandchild,
        "the grandchild left by the killed KUBE, after KUBE's next start",
    );
    // And a plain stop of KUBE stops what it started.
    let main = wait_for(&again, "forker", "running", |p| p["pid"].is_u64())["pid"]
        .as_u64()
        .expect("running");
    let grandchild = read_pid(&again.data_dir.join("forker/grandchild.pid"));
    assert!(again.terminate().success());
    wait_gone(main, "the process after KUBE stopped");
    wait_gone(grandchild, "the grandchild after KUBE stopped");
}

#[test]
fn a_chatty_process_log_stays_within_its_bound() {
    let kube = start(
        "processes:
  - name: chatty
    command: sh
    args: ['-c', 'while :; do echo aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa; done']
    logs: {max_file_bytes: 8192, files: 3}
",
    );
    let dir = kube.data_dir.join("logs").join("chatty");
    let size = || -> u64 {
        std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut most = 0;
    while Instant::now() < deadline {
        most = most.max(size());
        std::thread::sleep(Duration::from_millis(20));
    }
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert!(files <= 3, "{files} files");
    // Three files of 8 KiB, each at most one line over.
    assert!(most > 8192 && most <= 3 * (8192 + 200), "{most} bytes");
    assert!(logs(&kube, "chatty").contains(" out aaaa"));
}

#[test]
fn a_reload_restarts_only_the_changed_process() {
    let config = |b_arg: &str| {
        format!(
            "processes:
  - name: a
    command: sleep
    args: ['1000']
  - name: b
    command: sleep
    args: ['{b_arg}']
    after: [a]
"
        )
    };
    let kube = start(&config("1000"));
    let pid =
        |name: &str| wait_for(&kube, name, "running", |p| p["state"] == "running")["pid"].clone();
    let (a, b) = (pid("a"), pid("b"));
    let file = kube.data_dir.parent().unwrap().join("kube.yml");
    std::fs::write(&file, config("2000")).unwrap();
    let out = kube.cli(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(pid("a"), a, "a is untouched");
    let b2 = pid("b");
    assert_ne!(b2, b, "b runs its new definition");
    wait_gone(b.as_u64().unwrap(), "b's old process");
    // A restart answers once the new instance runs: at once, it shows.
    let out = kube.cli(&["process", "restart", "a"]);
    assert!(out.status.success());
    let now = process(&kube, "a");
    assert_eq!(now["state"], "running", "{now}");
    assert_ne!(now["pid"], a, "{now}");
    assert_eq!(now["restarts"], 1, "{now}");
}

#[test]
fn bad_definitions_are_refused_with_file_line_column() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("kube.yml");
    std::fs::write(
        &file,
        "processes:
  - name: Web_1
    command: sh
    stop_signal: KILLME
    dir: ../outside
    after: [nobody]
    backoff: {initial_ms: 0}
    liveness: {tcp: nowhere}
",
    )
    .unwrap();
    let out = tests::cli_in(
        tmp.path(),
        &["config", "check", "-c", file.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let err =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    for (line, key) in [
        (2, "processes[0].name"),
        (4, "processes[0].stop_signal"),
        (5, "processes[0].dir"),
        (6, "processes[0].after[0]"),
        (7, "processes[0].backoff.initial_ms"),
        (8, "processes[0].liveness.tcp"),
    ] {
        assert!(
            err.lines()
                .any(|l| l.contains(&format!("kube.yml:{line}:")) && l.contains(key)),
            "{key} at line {line}:\n{err}"
        );
    }
}

#[test]
fn a_failing_liveness_probe_restarts_and_readiness_follows_its_probe() {
    let port = tests::pebble::free_port();
    let kube = start(&format!(
        "processes:
  - name: stuck
    command: sleep
    args: ['1000']
    backoff: {{initial_ms: 100, jitter_percent: 0}}
    liveness: {{tcp: '127.0.0.1:1', interval_secs: 1, timeout_secs: 1, failures: 2}}
  - name: flag
    command: sleep
    args: ['1000']
    dir: flag
    readiness: {{exec: [test, -f, ready], interval_secs: 1, failures: 1}}
  - name: web
    command: node
    args: ['-e', \"require('http').createServer((q, r) => {{ r.statusCode = q.url === '/ok' ? 200 : 500; r.end() }}).listen(process.env.PORT, '127.0.0.1')\"]
    env: {{PORT: '{port}'}}
    backoff: {{initial_ms: 100, jitter_percent: 0}}
    readiness: {{http: 'http://127.0.0.1:{port}/ok', interval_secs: 1, failures: 1}}
    liveness: {{http: 'http://127.0.0.1:{port}/bad', interval_secs: 1, failures: 3}}
"
    ));
    // Liveness: two failed connections in a row, then a restart.
    let p = wait_for(&kube, "stuck", "restarted by its probe", |p| {
        p["restarts"].as_u64() >= Some(1)
    });
    assert_eq!(p["last_exit"], "liveness probe failed", "{p}");
    assert!(logs(&kube, "stuck").contains("[kube] liveness probe failed"));
    // Readiness: not ready until the probe passes, then ready, then not again.
    assert_eq!(process(&kube, "flag")["ready"], false);
    let flag = kube.data_dir.join("flag/ready");
    std::fs::write(&flag, "").unwrap();
    wait_for(&kube, "flag", "ready", |p| p["ready"] == true);
    assert!(
        kube.metrics_blocking()
            .contains("kube_process_ready{name=\"flag\"} 1")
    );
    std::fs::remove_file(&flag).unwrap();
    wait_for(&kube, "flag", "not ready again", |p| p["ready"] == false);
    assert_eq!(
        process(&kube, "flag")["restarts"],
        0,
        "readiness never restarts"
    );
    // HTTP probes against a real server: /ok (200) makes it ready, /bad (500) three times
    // in a row restarts it.
    let p = wait_for(&kube, "web", "restarted by its HTTP liveness probe", |p| {
        p["restarts"].as_u64() >= Some(1)
    });
    assert_eq!(p["last_exit"], "liveness probe failed", "{p}");
    let log = logs(&kube, "web");
    assert!(log.contains("[kube] ready"), "{log}");
    assert!(
        kube.metrics_blocking()
            .contains("kube_process_liveness_failures_total{name=\"web\"}")
    );
}
