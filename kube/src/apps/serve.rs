//! How a request to an app is answered (pure): which file of the current version, which
//! encoding, which status and headers. The driver only reads the chosen blob.

use std::ops::Range;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};

use super::manifest::{FileEntry, Manifest};

/// Characters escaped in a path segment of a redirect.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// What the driver should send.
#[derive(Debug, PartialEq)]
pub enum Plan {
    /// A file (or a byte range of it); `body` is false for HEAD.
    File {
        status: StatusCode,
        headers: HeaderMap,
        file: FileEntry,
        range: Option<Range<u64>>,
        body: bool,
    },
    /// A status with a short text body (304, 404, 405, 416, redirects).
    Status {
        status: StatusCode,
        headers: HeaderMap,
        body: &'static str,
    },
}

impl Plan {
    fn status(status: StatusCode, body: &'static str) -> Plan {
        Plan::Status {
            status,
            headers: HeaderMap::new(),
            body,
        }
    }
}

/// Plans the answer to `method path` with `headers` from `manifest`.
pub fn plan(manifest: &Manifest, method: &Method, raw_path: &str, headers: &HeaderMap) -> Plan {
    if method != Method::GET && method != Method::HEAD {
        let mut h = HeaderMap::new();
        h.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Plan::Status {
            status: StatusCode::METHOD_NOT_ALLOWED,
            headers: h,
            body: "method not allowed\n",
        };
    }
    let Some(rel) = decode_path(raw_path) else {
        return Plan::status(StatusCode::NOT_FOUND, "not found\n");
    };
    let mut status = StatusCode::OK;
    let key = if rel.is_empty() || raw_path.ends_with('/') {
        join_index(&rel)
    } else {
        rel.clone()
    };
    let key = if manifest.files.contains_key(&key) {
        key
    } else if !raw_path.ends_with('/') && manifest.files.contains_key(&join_index(&rel)) {
        // A directory asked for without its slash: send the browser to the slash form so
        // relative links in its index resolve (no listing either way). Built from the
        // cleaned path, so `//evil` can never become a protocol-relative redirect.
        let mut h = HeaderMap::new();
        let encoded: Vec<String> = rel
            .split('/')
            .map(|seg| percent_encoding::utf8_percent_encode(seg, SEGMENT).to_string())
            .collect();
        if let Ok(v) = HeaderValue::from_str(&format!("/{}/", encoded.join("/"))) {
            h.insert(header::LOCATION, v);
        }
        return Plan::Status {
            status: StatusCode::PERMANENT_REDIRECT,
            headers: h,
            body: "moved\n",
        };
    } else if manifest.settings.spa && wants_page(&key, headers) {
        "index.html".to_owned()
    } else if manifest.files.contains_key("404.html") {
        status = StatusCode::NOT_FOUND;
        "404.html".to_owned()
    } else {
        return Plan::status(StatusCode::NOT_FOUND, "not found\n");
    };
    let body = method == Method::GET;
    // A manifest read from disk may lack what publish checked (index.html for SPA).
    let Some(entry) = manifest.files.get(&key) else {
        return Plan::status(StatusCode::NOT_FOUND, "not found\n");
    };

    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, content_type(&key));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control(&key)),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    for (name, value) in &manifest.settings.headers {
        if let (Ok(n), Ok(v)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            h.insert(n, v);
        }
    }

    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    // Precompressed siblings, unless a range is asked for (ranges are over identity bytes).
    let mut file = entry.clone();
    let siblings: Vec<(&str, &FileEntry)> = [("br", "br"), ("gzip", "gz")]
        .into_iter()
        .filter_map(|(coding, ext)| {
            manifest
                .files
                .get(&format!("{key}.{ext}"))
                .map(|f| (coding, f))
        })
        .collect();
    if !siblings.is_empty() {
        h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        if range_header.is_none() {
            let accepted = accepted_codings(headers);
            if let Some((coding, f)) = siblings.iter().find(|(c, _)| accepted.contains(c)) {
                h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
                file = (*f).clone();
            }
        }
    }
    let etag = format!("\"{}\"", file.hash.get(..32).unwrap_or(&file.hash));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }

    if status == StatusCode::OK
        && let Some(inm) = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
        && etag_matches(inm, &etag)
    {
        h.remove(header::CONTENT_TYPE);
        return Plan::Status {
            status: StatusCode::NOT_MODIFIED,
            headers: h,
            body: "",
        };
    }

    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let mut range = None;
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim() == etag);
    // An empty file has no byte to range over; several ranges may be answered with the
    // whole file (RFC 9110 §14.2), which also spares us validating thousands of them.
    if let Some(r) = range_header
        && status == StatusCode::OK
        && if_range_ok
        && file.size > 0
        && !r.contains(',')
    {
        // A malformed Range is ignored (RFC 9110 §14.2); an unsatisfiable one is a 416.
        if let Ok(parsed) = http_range_header::parse_range_header(r) {
            match parsed.validate(file.size) {
                Ok(ranges) if ranges.len() == 1 => {
                    let (start, end) = (*ranges[0].start(), *ranges[0].end());
                    if let Ok(v) =
                        HeaderValue::from_str(&format!("bytes {start}-{end}/{}", file.size))
                    {
                        h.insert(header::CONTENT_RANGE, v);
                    }
                    status = StatusCode::PARTIAL_CONTENT;
                    range = Some(start..end + 1);
                }
                Ok(_) => {}
                Err(_) => {
                    let mut h416 = HeaderMap::new();
                    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", file.size)) {
                        h416.insert(header::CONTENT_RANGE, v);
                    }
                    return Plan::Status {
                        status: StatusCode::RANGE_NOT_SATISFIABLE,
                        headers: h416,
                        body: "range not satisfiable\n",
                    };
                }
            }
        }
    }
    Plan::File {
        status,
        headers: h,
        file,
        range,
        body,
    }
}

fn join_index(dir: &str) -> String {
    if dir.is_empty() {
        "index.html".into()
    } else {
        format!("{dir}/index.html")
    }
}

/// The request path as a clean relative key, or None when it tries to leave the bundle or
/// is not UTF-8.
fn decode_path(raw: &str) -> Option<String> {
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()?;
    if decoded.contains('\0') || decoded.contains('\\') {
        return None;
    }
    let mut parts = Vec::new();
    for part in decoded.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// Whether an unknown path should get the SPA's `index.html`: a page navigation (accepts
/// HTML) or a route-like path without a file extension.
fn wants_page(key: &str, headers: &HeaderMap) -> bool {
    let accepts_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    let last = key.rsplit('/').next().unwrap_or(key);
    accepts_html || !last.contains('.')
}

fn content_type(key: &str) -> HeaderValue {
    let mime = mime_guess::from_path(key).first_or_octet_stream();
    let textual = mime.type_() == mime_guess::mime::TEXT
        || matches!(
            mime.subtype().as_str(),
            "javascript" | "json" | "xml" | "svg+xml"
        );
    let s = if textual && mime.get_param("charset").is_none() {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    };
    HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static("application/octet-stream"))
}

/// HTML must be revalidated; names carrying a content hash (`app.3f9a1c2b.js`,
/// `index-BxY1a2Zq.css`) never change and are cached for a year.
fn cache_control(key: &str) -> &'static str {
    let name = key.rsplit('/').next().unwrap_or(key);
    if name.ends_with(".html") || name.ends_with(".htm") {
        return "no-cache";
    }
    if is_hashed_name(name) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    }
}

pub fn is_hashed_name(name: &str) -> bool {
    let stem = match name.rsplit_once('.') {
        Some((stem, _ext)) => stem,
        None => return false,
    };
    stem.split(['.', '-', '_']).skip(1).any(|t| {
        (8..=64).contains(&t.len())
            && t.bytes().all(|b| b.is_ascii_alphanumeric())
            && (t.bytes().any(|b| b.is_ascii_digit())
                || (t.bytes().any(|b| b.is_ascii_uppercase())
                    && t.bytes().any(|b| b.is_ascii_lowercase())))
    })
}

fn accepted_codings(headers: &HeaderMap) -> Vec<&'static str> {
    let mut out = Vec::new();
    for v in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(s) = v.to_str() else { continue };
        for item in s.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let refused = parts.any(|p| {
                let p = p.trim();
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            if refused {
                continue;
            }
            match coding.as_str() {
                "br" => out.push("br"),
                "gzip" => out.push("gzip"),
                _ => {}
            }
        }
    }
    out
}

fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match
        .split(',')
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == etag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apps::manifest::AppSettings;

    fn manifest(spa: bool) -> Manifest {
        let mut files = std::collections::BTreeMap::new();
        let list = [
            ("index.html", "aa", 100),
            ("app.js", "bb", 1000),
            ("app.js.br", "cc", 300),
            ("app.js.gz", "dd", 400),
            ("assets/main.3f9a1c2b.js", "ee", 10),
            ("docs/index.html", "ff", 5),
            ("empty.css", "00", 0),
        ];
        for (p, h, s) in list {
            files.insert(
                p.to_string(),
                FileEntry {
                    hash: h.repeat(32),
                    size: s,
                },
            );
        }
        Manifest {
            version: 1,
            published: 0,
            files,
            settings: AppSettings {
                spa,
                headers: [("X-Test".to_string(), "1".to_string())].into(),
            },
        }
    }

    fn hdrs(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn file(p: Plan) -> (StatusCode, HeaderMap, FileEntry, Option<Range<u64>>) {
        match p {
            Plan::File {
                status,
                headers,
                file,
                range,
                ..
            } => (status, headers, file, range),
            other => panic!("expected a file, got {other:?}"),
        }
    }

    fn status(p: &Plan) -> StatusCode {
        match p {
            Plan::File { status, .. } | Plan::Status { status, .. } => *status,
        }
    }

    #[test]
    fn index_types_and_cache() {
        let m = manifest(false);
        let (s, h, f, _) = file(plan(&m, &Method::GET, "/", &HeaderMap::new()));
        assert_eq!(
            (s, f.hash.as_str()),
            (StatusCode::OK, "aa".repeat(32).as_str())
        );
        assert_eq!(h["content-type"], "text/html; charset=utf-8");
        assert_eq!(h["cache-control"], "no-cache");
        assert_eq!(h["x-test"], "1");
        let (_, h, _, _) = file(plan(
            &m,
            &Method::GET,
            "/assets/main.3f9a1c2b.js",
            &HeaderMap::new(),
        ));
        assert_eq!(h["cache-control"], "public, max-age=31536000, immutable");
        assert!(h["content-type"].to_str().unwrap().contains("javascript"));
        assert_eq!(
            status(&plan(&m, &Method::GET, "/docs", &HeaderMap::new())),
            StatusCode::PERMANENT_REDIRECT
        );
        assert_eq!(
            status(&plan(&m, &Method::GET, "/docs/", &HeaderMap::new())),
            StatusCode::OK
        );
        assert_eq!(
            status(&plan(&m, &Method::POST, "/", &HeaderMap::new())),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[test]
    fn no_escape_no_listing() {
        let m = manifest(false);
        for p in [
            "/../index.html",
            "/%2e%2e/index.html",
            "/assets/",
            "/nope",
            "/%ff",
            "/a%00b",
        ] {
            assert_eq!(
                status(&plan(&m, &Method::GET, p, &HeaderMap::new())),
                StatusCode::NOT_FOUND,
                "{p}"
            );
        }
    }

    #[test]
    fn spa_fallback() {
        let m = manifest(true);
        let (s, _, f, _) = file(plan(&m, &Method::GET, "/some/route", &HeaderMap::new()));
        assert_eq!((s, f.size), (StatusCode::OK, 100));
        assert_eq!(
            status(&plan(&m, &Method::GET, "/missing.js", &HeaderMap::new())),
            StatusCode::NOT_FOUND
        );
        let html = hdrs(&[("accept", "text/html")]);
        assert_eq!(
            status(&plan(&m, &Method::GET, "/x.y", &html)),
            StatusCode::OK
        );
    }

    #[test]
    fn precompressed_and_etag() {
        let m = manifest(false);
        let (_, h, f, _) = file(plan(
            &m,
            &Method::GET,
            "/app.js",
            &hdrs(&[("accept-encoding", "gzip, br")]),
        ));
        assert_eq!(
            (h["content-encoding"].to_str().unwrap(), f.size),
            ("br", 300)
        );
        assert_eq!(h["vary"], "Accept-Encoding");
        let (_, h, f, _) = file(plan(
            &m,
            &Method::GET,
            "/app.js",
            &hdrs(&[("accept-encoding", "br;q=0, gzip")]),
        ));
        assert_eq!(
            (h["content-encoding"].to_str().unwrap(), f.size),
            ("gzip", 400)
        );
        let (_, h, f, _) = file(plan(&m, &Method::GET, "/app.js", &HeaderMap::new()));
        assert!(h.get("content-encoding").is_none());
        assert_eq!(f.size, 1000);
        let etag = h["etag"].to_str().unwrap().to_string();
        let mut inm = HeaderMap::new();
        inm.insert(
            "if-none-match",
            HeaderValue::from_str(&format!("W/\"x\", {etag}")).unwrap(),
        );
        assert_eq!(
            status(&plan(&m, &Method::GET, "/app.js", &inm)),
            StatusCode::NOT_MODIFIED
        );
    }

    #[test]
    fn ranges() {
        let m = manifest(false);
        let (s, h, f, r) = file(plan(
            &m,
            &Method::GET,
            "/app.js",
            &hdrs(&[("range", "bytes=10-19"), ("accept-encoding", "br")]),
        ));
        assert_eq!(
            (s, f.size, r),
            (StatusCode::PARTIAL_CONTENT, 1000, Some(10..20))
        );
        assert_eq!(h["content-range"], "bytes 10-19/1000");
        assert_eq!(
            status(&plan(
                &m,
                &Method::GET,
                "/app.js",
                &hdrs(&[("range", "bytes=5000-")])
            )),
            StatusCode::RANGE_NOT_SATISFIABLE
        );
        assert_eq!(
            status(&plan(
                &m,
                &Method::GET,
                "/app.js",
                &hdrs(&[("range", "lines=1-2")])
            )),
            StatusCode::OK
        );
        let (s, _, _, r) = file(plan(
            &m,
            &Method::GET,
            "/app.js",
            &hdrs(&[("range", "bytes=0-1"), ("if-range", "\"old\"")]),
        ));
        assert_eq!((s, r), (StatusCode::OK, None));
    }

    #[test]
    fn hashed_names() {
        for n in [
            "main.3f9a1c2b.js",
            "index-BxY1a2Zq.css",
            "chunk-DiwrgTda.js",
            "app.0123456789abcdef.wasm",
        ] {
            assert!(is_hashed_name(n), "{n}");
        }
        for n in [
            "bootstrap.min.js",
            "index.html",
            "favicon.ico",
            "application.js",
            "README",
        ] {
            assert!(!is_hashed_name(n), "{n}");
        }
    }
}
