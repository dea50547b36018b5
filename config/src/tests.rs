//! Loading, env overrides, locations and the init template.

use super::*;

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn problems(text: &str, env: Vec<(String, String)>) -> Vec<Problem> {
    match load_str("kube.yml", text, env) {
        Ok(_) => panic!("expected problems"),
        Err(LoadError::Invalid(p)) => p,
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[test]
fn empty_file_is_the_defaults() {
    let l = load_str("kube.yml", "", no_env()).expect("defaults load");
    assert_eq!(l.config, Config::default());
    assert_eq!(l.config.tls_mode(), TlsMode::Local);
}

#[test]
fn every_error_with_line_column_and_key() {
    let text = "domain: example.com\nhttp:\n  listen: nope\n  bogus: 1\napps:\n  keep_versions: many\nwhat: 1\n";
    let p = problems(text, no_env());
    let shown: Vec<String> = p.iter().map(|p| p.to_string()).collect();
    assert_eq!(p.len(), 4, "{shown:#?}");
    assert!(
        shown[0].starts_with("kube.yml:3:11: http.listen: "),
        "{}",
        shown[0]
    );
    assert!(
        shown[1].starts_with("kube.yml:4:3: http.bogus: unknown field"),
        "{}",
        shown[1]
    );
    assert!(
        shown[2].starts_with("kube.yml:6:18: apps.keep_versions: "),
        "{}",
        shown[2]
    );
    assert!(
        shown[3].starts_with("kube.yml:7:1: what: unknown section"),
        "{}",
        shown[3]
    );
}

#[test]
fn semantic_problems_are_located() {
    let text = "apps:\n  keep_versions: 0\nhttp:\n  listen: 127.0.0.1:9180\n";
    let shown: Vec<String> = problems(text, no_env())
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert!(
        shown.contains(
            &"kube.yml:2:18: apps.keep_versions: must be at least 1 (the current version)"
                .to_string()
        ),
        "{shown:#?}"
    );
    assert!(
        shown.contains(
            &"kube.yml:4:11: http.listen: 127.0.0.1:9180 is also admin.listen".to_string()
        ),
        "{shown:#?}"
    );
}

#[test]
fn syntax_error_is_located() {
    let p = problems("http:\n  listen: [1,\n", no_env());
    assert_eq!(p.len(), 1);
    assert!(matches!(p[0].origin, Some(Origin::File { .. })), "{p:?}");
}

#[test]
fn env_overrides_file() {
    let env = vec![
        ("KUBE_HTTP_LISTEN".to_string(), "127.0.0.1:0".to_string()),
        (
            "KUBE_HTTP_HTTPS_LISTEN".to_string(),
            "127.0.0.1:0".to_string(),
        ),
        ("KUBE_APPS_KEEP_VERSIONS".to_string(), "3".to_string()),
        ("KUBE_DATA_DIR".to_string(), "/tmp/x".to_string()),
        ("KUBE_KEY".to_string(), "not a config variable".to_string()),
    ];
    let l = load_str("kube.yml", "http:\n  listen: 127.0.0.1:80\n", env).expect("loads");
    assert_eq!(l.config.http.listen.port(), 0);
    assert_eq!(l.config.http.https_listen.port(), 0);
    assert_eq!(l.config.apps.keep_versions, 3);
    assert_eq!(l.config.data_dir, PathBuf::from("/tmp/x"));
}

#[test]
fn bad_env_names_the_variable() {
    let env = vec![
        ("KUBE_APPS_KEEP_VERSIONS".to_string(), "lots".to_string()),
        ("KUBE_HTTP_NOPE".to_string(), "1".to_string()),
    ];
    let shown: Vec<String> = problems("", env).iter().map(|p| p.to_string()).collect();
    assert!(
        shown
            .iter()
            .any(|s| s
                .starts_with("environment variable KUBE_APPS_KEEP_VERSIONS: apps.keep_versions")),
        "{shown:#?}"
    );
    assert!(shown.iter().any(|s| s.starts_with("environment variable KUBE_HTTP_NOPE: http.nope: unknown field")), "{shown:#?}");
}

#[test]
fn process_list_errors_are_indexed() {
    let text = "processes:\n  - name: a\n    command: x\n  - name: b\n    comand: y\n";
    let shown: Vec<String> = problems(text, no_env())
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert!(
        shown[0].starts_with("kube.yml:5:5: processes[1].comand: unknown field"),
        "{shown:#?}"
    );
}

#[test]
fn process_routes_ports_and_limits_are_checked() {
    let text = "processes:
  - name: api
    command: x
    args: [\"--port=${PORT}\"]
  - name: web
    command: x
    route: {app: notes, path: /api/}
    readiness: {tcp: \"127.0.0.1:${PORT}\"}
  - name: web2
    command: x
    route: {app: notes, path: /api}
    limits: {memory_mib: 0}
  - name: notes
    command: x
    route: {path: /x/}
";
    let shown: Vec<String> = problems(text, no_env())
        .iter()
        .map(|p| p.to_string())
        .collect();
    let has = |s: &str| shown.iter().any(|p| p.contains(s));
    assert!(has("processes[0].route: ${PORT} is used"), "{shown:#?}");
    assert!(
        !shown.iter().any(|p| p.contains("processes[1]")),
        "{shown:#?}"
    );
    assert!(
        has("processes[2].route: notes.<domain>/api is already routed to \"web\""),
        "{shown:#?}"
    );
    assert!(
        has("processes[2].limits: a limit must be at least 1"),
        "{shown:#?}"
    );
    assert!(
        has("processes[3].route.path: only a route under an app"),
        "{shown:#?}"
    );
    assert!(
        has("processes[3].route: notes.<domain>/x/ is already routed to \"web\""),
        "{shown:#?}"
    );
}

#[test]
fn template_parses_and_names_every_key() {
    for domain in ["localhost", "example.com"] {
        let text = template(domain);
        let l = load_str("kube.yml", &text, no_env()).expect("template loads");
        let mut expected = Config {
            domain: domain.to_owned(),
            ..Config::default()
        };
        if domain != "localhost" {
            expected.http.listen = "0.0.0.0:80".parse().unwrap();
            expected.http.https_listen = "0.0.0.0:443".parse().unwrap();
            expected.dns.listen = "0.0.0.0:53".parse().unwrap();
            expected.turn.listen = "0.0.0.0:3478".parse().unwrap();
        }
        assert_eq!(l.config, expected);
        // With an operator, ECHO is closed to other admins' spaces.
        let did = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK";
        let closed = load_str("kube.yml", &template_for(domain, Some(did)), no_env())
            .expect("template loads");
        assert_eq!(
            closed.config.echo.admit,
            Admit::Admins(vec![did.to_owned()])
        );
        assert_eq!(closed.config.admin.operators, vec![did.to_owned()]);
        // Every key of every section appears in the template.
        let json = serde_json::to_value(Config::default()).unwrap();
        for (section, value) in json.as_object().unwrap() {
            assert!(
                text.contains(&format!("\n{section}:")),
                "template lacks {section}"
            );
            if let Some(keys) = value.as_object() {
                for key in keys.keys() {
                    assert!(
                        text.contains(&format!("\n  {key}:")),
                        "template lacks {section}.{key}"
                    );
                }
            }
        }
    }
}
