//! KUBE's identity (`identity.key`, `kube identity`) and operator-signed admin requests:
//! accepted when signed by an operator, refused unsigned, by another key, stale, replayed or
//! with a body other than the one signed. The CLI signs with `--key` / `KUBE_KEY`.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use halo::SigningKey;
use halo::request::{Signed, Target, body_hash, sign};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tests::{Kube, Opts, kube_bin};

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn nonce() -> [u8; 16] {
    rand::random()
}

fn with_operator(op: &SigningKey) -> Kube {
    Kube::start_with(Opts {
        env: vec![("KUBE_ADMIN_OPERATORS".into(), halo::did(op))],
        ..Opts::default()
    })
    .unwrap_or_else(|log| panic!("kube did not start:\n{log}"))
}

/// KUBE's did:key, from the unauthenticated `/identity`.
async fn server_did(kube: &Kube) -> String {
    let v: Value = reqwest::get(kube.admin_url("/identity"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["identity"].as_str().unwrap().to_owned()
}

fn to<'a>(server: &'a str, method: &'a str, path: &'a str) -> Target<'a> {
    Target {
        server,
        method,
        path,
    }
}

async fn send(
    kube: &Kube,
    method: &str,
    path: &str,
    auth: Option<&Signed>,
    body: &str,
) -> (StatusCode, Value) {
    let c = reqwest::Client::new();
    let mut req = c
        .request(method.parse().unwrap(), kube.admin_url(path))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(s) = auth {
        req = req.header("authorization", s.header());
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn identity_key_is_made_once_private_and_shown() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let kube = Kube::start_with(Opts {
        data_dir: Some(dir.clone()),
        ..Opts::default()
    })
    .unwrap();
    let path = kube.data_dir.join("identity.key");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let pem = std::fs::read_to_string(&path).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
    let key = halo::keyfile::from_pem(&pem).unwrap();

    let out = kube.cli(&["identity"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().next(),
        Some(halo::did(&key).as_str()),
        "{text}"
    );
    assert!(text.contains("operators: none"), "{text}");

    let v = kube.api(reqwest::Method::GET, "/api/identity").await;
    assert_eq!(v["identity"], halo::did(&key));
    assert_eq!(v["operators"], json!([]));

    // The same key after a restart.
    drop(kube);
    let again = Kube::start_with(Opts {
        data_dir: Some(dir),
        ..Opts::default()
    })
    .unwrap();
    let out = again.cli(&["identity"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&halo::did(&key)));
}

#[tokio::test]
async fn operator_signed_requests() {
    let op = SigningKey::from_bytes(&[41; 32]);
    let stranger = SigningKey::from_bytes(&[42; 32]);
    let kube = with_operator(&op);
    let t = now();
    let me = server_did(&kube).await;
    let me = me.as_str();

    // Accepted.
    let s = sign(&op, to(me, "GET", "/api/status"), b"", t, nonce());
    let (status, v) = send(&kube, "GET", "/api/status", Some(&s), "").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["domain"], "localhost");

    // Replayed: the same header again.
    let (status, v) = send(&kube, "GET", "/api/status", Some(&s), "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(v["message"].as_str().unwrap().contains("replay"), "{v}");

    // Unsigned.
    let (status, _) = send(&kube, "GET", "/api/status", None, "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Signed by a key that is not an operator's.
    let s = sign(&stranger, to(me, "GET", "/api/status"), b"", t, nonce());
    let (status, v) = send(&kube, "GET", "/api/status", Some(&s), "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        v["message"].as_str().unwrap().contains("not an operator"),
        "{v}"
    );

    // Stale: ten minutes old (the window is 60 s).
    let s = sign(&op, to(me, "GET", "/api/status"), b"", t - 600, nonce());
    let (status, v) = send(&kube, "GET", "/api/status", Some(&s), "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(v["message"].as_str().unwrap().contains("clock"), "{v}");

    // Signed for another path.
    let s = sign(&op, to(me, "GET", "/api/apps"), b"", t, nonce());
    let (status, _) = send(&kube, "GET", "/api/status", Some(&s), "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Signed for another KUBE (one with another identity).
    let other = "did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH";
    let s = sign(&op, to(other, "GET", "/api/status"), b"", t, nonce());
    let (status, _) = send(&kube, "GET", "/api/status", Some(&s), "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A streamed upload other than the one signed: refused, no app.
    let signed_bundle = tests::raw_targz(&[]);
    let s = sign(
        &op,
        to(me, "PUT", "/api/apps/tampered"),
        &signed_bundle,
        t,
        nonce(),
    );
    let r = reqwest::Client::new()
        .put(kube.admin_url("/api/apps/tampered"))
        .header("authorization", s.header())
        .body(b"not the signed bundle".to_vec())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    assert!(!kube.data_dir.join("apps/tampered").exists());

    // Body tampered: signed for one record, sent with another. Refused, nothing added.
    let signed_body = r#"{"name": "a", "type": "TXT", "value": "\"signed\"", "ttl": 10}"#;
    let sent_body = r#"{"name": "a", "type": "TXT", "value": "\"evil\"", "ttl": 10}"#;
    let s = sign(
        &op,
        to(me, "POST", "/api/dns/records"),
        signed_body.as_bytes(),
        t,
        nonce(),
    );
    let (status, v) = send(&kube, "POST", "/api/dns/records", Some(&s), sent_body).await;
    assert!(status.is_client_error(), "{status} {v}");
    let s = sign(&op, to(me, "GET", "/api/dns"), b"", t, nonce());
    let (_, dns) = send(&kube, "GET", "/api/dns", Some(&s), "").await;
    assert!(!dns.to_string().contains("evil"), "{dns}");

    // The same body as signed goes through.
    let s = sign(
        &op,
        to(me, "POST", "/api/dns/records"),
        signed_body.as_bytes(),
        t,
        nonce(),
    );
    assert_eq!(s.body, body_hash(signed_body.as_bytes()));
    let (status, v) = send(&kube, "POST", "/api/dns/records", Some(&s), signed_body).await;
    assert_eq!(status, StatusCode::OK, "{v}");

    // The bearer token still works for local scripts.
    let r = reqwest::Client::new()
        .get(kube.admin_url("/api/status"))
        .bearer_auth(kube.token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// The CLI signs with `--key` or `KUBE_KEY`, streamed uploads included, without the token.
#[tokio::test]
async fn cli_signs_with_an_operator_key() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("op.key");
    let out = Command::new(kube_bin())
        .args(["identity", "new"])
        .arg(&key_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let did = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(did.starts_with("did:key:z6Mk"), "{did}");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // Never overwritten.
    let again = Command::new(kube_bin())
        .args(["identity", "new"])
        .arg(&key_file)
        .output()
        .unwrap();
    assert!(!again.status.success());

    let op = halo::keyfile::from_pem(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
    assert_eq!(halo::did(&op), did);
    let kube = with_operator(&op);
    // The token is gone: only the signature can authorize these.
    std::fs::remove_file(kube.data_dir.join("admin.token")).unwrap();
    let run = |args: &[&str], via_env: bool| {
        let mut cmd = Command::new(kube_bin());
        cmd.args(args).env("KUBE_DATA_DIR", &kube.data_dir);
        if via_env {
            cmd.env("KUBE_KEY", &key_file);
        } else {
            cmd.arg("--key").arg(&key_file);
        }
        cmd.output().unwrap()
    };
    let out = run(&["status"], false);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("identity did:key:"));
    let bundle = tests::bundle_dir(&[("index.html", b"<h1>signed</h1>")]);
    let out = run(
        &[
            "app",
            "publish",
            bundle.path().to_str().unwrap(),
            "--name",
            "signed",
        ],
        true,
    );
    assert!(out.status.success(), "{out:?}");
    let out = run(&["app", "rollback", "signed"], true);
    assert!(!out.status.success(), "no earlier version: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("409"),
        "{out:?}"
    );
    let out = run(&["app", "list"], true);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("signed"),
        "{out:?}"
    );

    // The path is signed as it goes on the wire: a name that needs percent-encoding reaches
    // the handler (and its own error) instead of failing the signature.
    let out = run(&["app", "remove", "a b"], false);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("401"), "{err}");

    // An operator without the data dir: KUBE found at admin.listen, its key at /identity.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(kube_bin())
        .args(["status", "--key"])
        .arg(&key_file)
        .env("KUBE_DATA_DIR", elsewhere.path())
        .env("KUBE_ADMIN_LISTEN", kube.admin.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // A key that is not an operator's is refused by name.
    let other = dir.path().join("other.key");
    Command::new(kube_bin())
        .args(["identity", "new"])
        .arg(&other)
        .output()
        .unwrap();
    let out = Command::new(kube_bin())
        .args(["status", "--key"])
        .arg(&other)
        .env("KUBE_DATA_DIR", &kube.data_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not an operator"),
        "{out:?}"
    );
}

#[tokio::test]
async fn bad_operator_keys_are_config_errors() {
    let out = Command::new(kube_bin())
        .args(["config", "check"])
        .env("KUBE_ADMIN_OPERATORS", "did:key:zNotAKey")
        .env("KUBE_ECHO_ADMIT", "did:web:example.com")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin.operators[0]"), "{err}");
    assert!(err.contains("KUBE_ADMIN_OPERATORS"), "{err}");
    assert!(err.contains("echo.admit[0]"), "{err}");
}

/// The admission decision ECHO uses, asked through the admin API.
#[tokio::test]
async fn admission_decision() {
    let kube = Kube::start();
    let c = reqwest::Client::new();
    let id = kube.api(reqwest::Method::GET, "/api/identity").await;
    let kube_did = id["identity"].as_str().unwrap().to_owned();
    let space = SigningKey::from_bytes(&[51; 32]);
    let alice = SigningKey::from_bytes(&[52; 32]);
    let issue = |by: &SigningKey, subject: &str, a| {
        halo::credential::Credential::issue(
            &halo::did(by),
            subject,
            a,
            now() - 10,
            None,
            &halo::did(by),
            |b| ed25519_dalek::Signer::sign(by, b).to_bytes(),
        )
        .unwrap()
    };
    let genesis = issue(
        &space,
        &halo::did(&alice),
        halo::credential::Assertion::SpaceGenesis {
            space: halo::did(&space),
        },
    );
    let replicator = issue(
        &alice,
        &kube_did,
        halo::credential::Assertion::SpaceMember {
            space: halo::did(&space),
            role: halo::credential::Role::Replicator,
        },
    );
    let ask = |creds: Vec<halo::credential::Credential>| {
        let body = json!({"space": halo::did(&space), "credentials": creds});
        let c = c.clone();
        let url = kube.admin_url("/api/echo/admission");
        let token = kube.token();
        async move {
            c.post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let yes = ask(vec![genesis.clone(), replicator]).await;
    assert_eq!(yes["replicate"], true, "{yes}");
    assert_eq!(yes["granted_by"], halo::did(&alice));
    let no = ask(vec![genesis]).await;
    assert_eq!(no["replicate"], false, "{no}");
    assert!(
        no["reason"].as_str().unwrap().contains("replicator"),
        "{no}"
    );
}
