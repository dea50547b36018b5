//! Publishing and serving apps: MIME, ETag/304, Range, precompressed, SPA, cache headers,
//! rollback, remove, the landing page, HTTP/2 and the HTTPS redirect.

use reqwest::StatusCode;
use tests::{Kube, Opts, bundle_dir};

#[tokio::test]
async fn serve_a_published_app() {
    let kube = Kube::start();
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut e, b"console.log('gzipped')").unwrap();
        e.finish().unwrap()
    };
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let dir = bundle_dir(&[
        ("index.html", b"<h1>home</h1>"),
        ("app.js", b"console.log('plain')"),
        ("app.js.gz", &gz),
        ("app.js.br", b"fake-brotli-bytes"),
        ("assets/main.3f9a1c2b.js", b"hashed"),
        ("data.bin", &big),
        ("app.wasm", b"\0asm"),
        (
            "kube.app.json",
            br#"{"spa": true, "headers": {"X-Frame-Options": "DENY"}}"#,
        ),
    ]);
    let out = kube.publish_dir(dir.path(), "demo");
    assert!(
        out.contains(&kube.url("demo", "/")),
        "publish prints the URL: {out}"
    );
    let c = kube.client();

    let r = c.get(kube.url("demo", "/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.version(), reqwest::Version::HTTP_2, "HTTP/2 by ALPN");
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(r.headers()["cache-control"], "no-cache");
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert!(
        r.headers().get("strict-transport-security").is_none(),
        "no HSTS on localhost"
    );
    let etag = r.headers()["etag"].clone();
    assert_eq!(r.text().await.unwrap(), "<h1>home</h1>");

    // HTTP/1.1 works too.
    let h1 = reqwest::Client::builder()
        .http1_only()
        .add_root_certificate(reqwest::Certificate::from_pem(&kube.ca_pem()).unwrap())
        .resolve("demo.localhost", kube.https)
        .build()
        .unwrap();
    let r = h1.get(kube.url("demo", "/")).send().await.unwrap();
    assert_eq!(
        (r.status(), r.version()),
        (StatusCode::OK, reqwest::Version::HTTP_11)
    );

    let r = c
        .get(kube.url("demo", "/"))
        .header("if-none-match", etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()["etag"], etag);

    let r = c
        .get(kube.url("demo", "/data.bin"))
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()["content-range"], "bytes 1000-1999/200000");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &big[1000..2000]);
    let r = c
        .get(kube.url("demo", "/data.bin"))
        .header("range", "bytes=300000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    // A small file, twice: read from disk, then from memory; ranges slice either.
    for _ in 0..2 {
        let r = c
            .get(kube.url("demo", "/app.js"))
            .header("range", "bytes=12-17")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.text().await.unwrap(), "'plain");
    }
    let r = c.get(kube.url("demo", "/data.bin")).send().await.unwrap();
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        &big[..],
        "a large file streams whole"
    );

    let r = c
        .get(kube.url("demo", "/app.js"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(r.headers()["vary"], "Accept-Encoding");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &gz[..]);
    let r = c
        .get(kube.url("demo", "/app.js"))
        .header("accept-encoding", "gzip, br")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "br");
    let r = c.get(kube.url("demo", "/app.js")).send().await.unwrap();
    assert!(r.headers().get("content-encoding").is_none());
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert_eq!(r.text().await.unwrap(), "console.log('plain')");

    let r = c.get(kube.url("demo", "/app.wasm")).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/wasm");
    let r = c
        .get(kube.url("demo", "/assets/main.3f9a1c2b.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );

    // SPA fallback for routes, but not for missing assets; no listing, no escape.
    let r = c
        .get(kube.url("demo", "/settings/profile"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status(), r.text().await.unwrap().as_str()),
        (StatusCode::OK, "<h1>home</h1>")
    );
    assert_eq!(
        c.get(kube.url("demo", "/missing.js"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        c.get(kube.url("demo", "/assets/"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    let r = c
        .get(kube.url("demo", "/assets/"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "a page navigation gets the SPA");
    assert_eq!(r.text().await.unwrap(), "<h1>home</h1>", "never a listing");
    for p in ["/..%2f..%2fetc%2fpasswd", "/..%2f..%2fetc/passwd.txt"] {
        assert_eq!(
            c.get(kube.url("demo", p)).send().await.unwrap().status(),
            StatusCode::NOT_FOUND,
            "{p}"
        );
    }
    assert_eq!(
        c.post(kube.url("demo", "/")).send().await.unwrap().status(),
        StatusCode::METHOD_NOT_ALLOWED
    );
    // No certificate names an app that does not exist; over HTTP/1.1 the Host header can.
    let r = h1
        .get(kube.url("demo", "/"))
        .header("host", "nope.localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // The apex names the app.
    let page = c
        .get(kube.url("", "/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(&kube.url("demo", "/")), "{page}");

    // Plain HTTP redirects to HTTPS, same host and path.
    let r = c
        .get(format!("http://demo.localhost:{}/a?b=1", kube.http.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(r.headers()["location"], kube.url("demo", "/a?b=1").as_str());
}

#[tokio::test]
async fn no_listing_without_spa_and_404_page() {
    let kube = Kube::start();
    let dir = bundle_dir(&[
        ("index.html", b"i"),
        ("docs/index.html", b"docs"),
        ("img/a.png", b"png"),
        ("404.html", b"custom 404"),
    ]);
    kube.publish_dir(dir.path(), "site");
    let c = kube.client();
    let r = c.get(kube.url("site", "/img/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.text().await.unwrap(), "custom 404");
    let r = c.get(kube.url("site", "/docs")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(r.headers()["location"], "/docs/");
    assert_eq!(
        c.get(kube.url("site", "/docs/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "docs"
    );
    assert_eq!(
        c.get(kube.url("site", "/img/a.png"))
            .send()
            .await
            .unwrap()
            .headers()["content-type"],
        "image/png"
    );
}

#[tokio::test]
async fn versions_rollback_and_remove() {
    let kube = Kube::start_with(Opts {
        env: vec![("KUBE_APPS_KEEP_VERSIONS".into(), "2".into())],
        ..Default::default()
    })
    .unwrap();
    let c = kube.client();
    let body = || c.get(kube.url("app", "/")).send();
    for v in ["one", "two", "three"] {
        let dir = bundle_dir(&[("index.html", v.as_bytes())]);
        kube.publish_dir(dir.path(), "app");
        assert_eq!(body().await.unwrap().text().await.unwrap(), v);
    }
    let list = String::from_utf8_lossy(&kube.cli(&["app", "list"]).stdout).into_owned();
    assert!(
        list.contains("current v3") && list.contains("versions 2,3*"),
        "two versions kept: {list}"
    );
    assert!(
        !kube.data_dir.join("apps/app/versions/1.json").exists(),
        "version 1 pruned"
    );

    let out = kube.cli(&["app", "rollback", "app"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(body().await.unwrap().text().await.unwrap(), "two");
    let out = kube.cli(&["app", "rollback", "app"]);
    assert!(!out.status.success(), "nothing before version 2 is kept");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no version before"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kube.cli(&["app", "rollback", "app", "3"]);
    assert!(out.status.success());
    assert_eq!(body().await.unwrap().text().await.unwrap(), "three");
    assert!(!kube.cli(&["app", "rollback", "app", "9"]).status.success());

    let out = kube.cli(&["app", "remove", "app"]);
    assert!(out.status.success());
    assert_eq!(body().await.unwrap().status(), StatusCode::NOT_FOUND);
    assert!(!kube.data_dir.join("apps/app").exists());
    assert!(
        !kube.cli(&["app", "remove", "app"]).status.success(),
        "removing twice is an error"
    );
}

#[tokio::test]
async fn public_domains_get_hsts() {
    let kube = Kube::start_with(Opts {
        config: Some("domain: kube.test\ntls:\n  mode: local\n".into()),
        ..Default::default()
    })
    .unwrap();
    let r = kube
        .client()
        .get(format!("https://kube.test:{}/", kube.https.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
}
