//! ACME Renewal Information (RFC 9773) against a directory serving a recorded `renewalInfo`
//! answer (Debian's Pebble has no ARI): the window is fetched and honoured.

use std::time::{Duration, SystemTime};

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::routing::{get, post};

use super::*;

/// The example answer of RFC 9773 §4.2, as a directory sends it.
const RECORDED: &str = r#"{
  "suggestedWindow": {
    "start": "2025-01-02T04:00:00Z",
    "end": "2025-01-03T04:00:00Z"
  },
  "explanationURL": "https://acme.example.com/docs/ari"
}"#;

async fn fake_directory() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let b = base.clone();
    let nonce = || {
        let mut h = HeaderMap::new();
        h.insert("replay-nonce", HeaderValue::from_static("bm9uY2U"));
        h
    };
    let app = Router::new()
        .route(
            "/dir",
            get(move || {
                let b = b.clone();
                async move {
                    axum::Json(serde_json::json!({
                        "newNonce": format!("{b}/nonce"),
                        "newAccount": format!("{b}/account"),
                        "newOrder": format!("{b}/order"),
                        "renewalInfo": format!("{b}/ari"),
                    }))
                }
            }),
        )
        .route(
            "/nonce",
            get(move || async move { (StatusCode::OK, nonce()) })
                .head(move || async move { (StatusCode::OK, nonce()) }),
        )
        .route(
            "/account",
            post(move || async move {
                let mut h = nonce();
                h.insert(
                    "location",
                    HeaderValue::from_static("http://127.0.0.1/account/1"),
                );
                (
                    StatusCode::CREATED,
                    h,
                    axum::Json(serde_json::json!({"status": "valid"})),
                )
            }),
        )
        .route(
            "/ari/{id}",
            get(|| async {
                let mut h = HeaderMap::new();
                h.insert("retry-after", HeaderValue::from_static("21600"));
                h.insert("content-type", HeaderValue::from_static("application/json"));
                (StatusCode::OK, h, RECORDED)
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("{base}/dir")
}

#[tokio::test]
async fn the_suggested_window_is_fetched_and_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let directory = fake_directory().await;
    // A certificate with an authority key identifier, as every ACME certificate has.
    let ca = crate::tls::local_ca::LocalCaPaths::new(dir.path());
    let (chain, _, info) =
        crate::tls::local_ca::ensure(&ca, "kube.test", &[], SystemTime::now()).unwrap();
    let ctx = Ctx {
        section: config::Acme {
            directory: directory.clone(),
            ..config::Acme::default()
        },
        paths: Paths::new(dir.path()),
        challenges: Arc::new(Challenges::default()),
        dns: None,
        storage: None,
    };
    let window = renewal_window(&ctx, &directory, &chain)
        .await
        .expect("the directory offers ARI");
    let start = time::macros::datetime!(2025-01-02 04:00 UTC).unix_timestamp() as u64;
    let end = time::macros::datetime!(2025-01-03 04:00 UTC).unix_timestamp() as u64;
    assert_eq!(window, (start, end));
    let at = plan::renew_at(
        info.not_before,
        info.not_after,
        Some((from_unix(window.0), from_unix(window.1))),
        0.25,
    );
    assert_eq!(
        at,
        from_unix(start) + Duration::from_secs(6 * 3600),
        "a quarter into the window"
    );
    assert!(
        at < SystemTime::now(),
        "a window in the past means renew now"
    );
}
