//! The operator console: a single-page app built from `console/` (esbuild) into
//! `console/dist/`, embedded in the binary and served on the admin listener at `/`. It only
//! talks to the admin API of the same origin, with the admin token or an operator key's
//! signature on each request (nothing secret in cookies or URLs), under a strict
//! Content-Security-Policy: no inline script or style, nothing from elsewhere, no framing.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, StatusCode, header};

const INDEX: &[u8] = include_bytes!("../../../console/dist/index.html");
const SCRIPT: &[u8] = include_bytes!("../../../console/dist/console.js");
const STYLE: &[u8] = include_bytes!("../../../console/dist/console.css");

/// The console's policy: its own script, style and API, nothing else.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; form-action 'none'; base-uri 'none'; \
frame-ancestors 'none'";

/// The console's files by path; `None` for any other path.
pub fn asset(path: &str) -> Option<Response> {
    let (body, kind) = match path {
        "/" | "/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/console.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/console.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(r)
}
