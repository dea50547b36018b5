//! Configuration from the user's side: `kube config check`, `kube init`, `kube start` with a
//! bad file, and environment overrides.

use tests::{Kube, Opts, cli_in, kube_bin};

fn check(text: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kube.yml");
    std::fs::write(&file, text).unwrap();
    let mut cmd = std::process::Command::new(kube_bin());
    cmd.args(["config", "check", "-c", file.to_str().unwrap()]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).replace(file.to_str().unwrap(), "kube.yml"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn check_prints_every_error_with_line_column_and_key() {
    let text = "domain: localhost\nhttp:\n  listen: not-an-address\n  colour: blue\napps:\n  keep_versions: -1\nlogging: {}\n";
    let (ok, err, _) = check(text, &[]);
    assert!(!ok);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 4, "{err}");
    assert!(
        lines[0].starts_with("kube.yml:3:11: http.listen: "),
        "{err}"
    );
    assert!(
        lines[1].starts_with("kube.yml:4:3: http.colour: unknown field `colour`"),
        "{err}"
    );
    assert!(
        lines[2].starts_with("kube.yml:6:18: apps.keep_versions: "),
        "{err}"
    );
    assert!(
        lines[3].starts_with("kube.yml:7:1: logging: unknown section"),
        "{err}"
    );
}

#[test]
fn service_checks_are_located_too() {
    let (ok, err, _) = check("tls:\n  mode: files\n  cert_file: /nonexistent.pem\n", &[]);
    assert!(!ok);
    assert!(
        err.contains("kube.yml:3:14: tls.cert_file: /nonexistent.pem is not a readable file"),
        "{err}"
    );
    assert!(
        err.contains("tls.key_file: is required when tls.mode is files"),
        "{err}"
    );
    // Processes are checked beyond their types, and located the same way.
    let (ok, err, _) = check(
        "processes:\n  - name: agent\n    command: /bin/true\n    stop_signal: NOPE\n",
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains("kube.yml:4:18: processes[0].stop_signal: \"NOPE\" is not one of"),
        "{err}"
    );
    let (ok, _, _) = check("processes:\n  - name: agent\n    command: /bin/true\n", &[]);
    assert!(ok, "a plain process is fine now");
}

#[test]
fn env_overrides_are_checked_and_named() {
    let (ok, err, _) = check(
        "",
        &[
            ("KUBE_APPS_KEEP_VERSIONS", "many"),
            ("KUBE_HTTP_COLOUR", "blue"),
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("environment variable KUBE_APPS_KEEP_VERSIONS: apps.keep_versions: "),
        "{err}"
    );
    assert!(
        err.contains("environment variable KUBE_HTTP_COLOUR: http.colour: unknown field"),
        "{err}"
    );
    let (ok, _, out) = check(
        "apps:\n  keep_versions: 0\n",
        &[("KUBE_APPS_KEEP_VERSIONS", "3")],
    );
    assert!(ok, "the variable overrides the file: {out}");
}

#[test]
fn init_writes_a_file_that_checks() {
    for domain in ["localhost", "example.com"] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kube.yml");
        let out = cli_in(
            dir.path(),
            &["init", "--domain", domain, "-o", file.to_str().unwrap()],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.contains(&format!("domain: {domain}")) && text.contains("# "),
            "commented"
        );
        let (ok, err, _) = check(&text, &[]);
        assert!(ok, "{err}");
        // A public server's ECHO is closed: only the operator key made beside it admits
        // spaces (issue 14); localhost keeps `any` (it listens on loopback only).
        let key = dir.path().join("operator.key");
        if domain == "localhost" {
            assert!(text.contains("\n  admit: any\n") && !key.exists());
        } else {
            let did = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(key.exists(), "{did}");
            assert!(!text.contains("\n  admit: any\n"), "closed");
            assert!(text.contains("\n  admit: [\"did:key:z"), "{text}");
        }
        let again = cli_in(
            dir.path(),
            &["init", "--domain", domain, "-o", file.to_str().unwrap()],
        );
        assert!(
            !again.status.success(),
            "init does not overwrite without --force"
        );
    }
}

#[test]
fn start_refuses_a_bad_config_with_its_location() {
    let err = Kube::start_with(Opts {
        config: Some("domain: localhost\napps:\n  keep_versions: [1, 2]\n".into()),
        ..Default::default()
    })
    .err()
    .expect("a bad config must not start");
    assert!(err.contains("kube.yml:3:18: apps.keep_versions"), "{err}");
}
