//! The reverse proxy to supervised processes (`processes[].route`): a request, HTTP/1.1 or
//! HTTP/2 from the client, goes to `http://127.0.0.1:<port>` over HTTP/1.1 with a pool of
//! kept-alive connections; an HTTP/1.1 upgrade (WebSocket) becomes a tunnel. Hop-by-hop
//! headers stay on their hop; what the client said about forwarding is replaced by what
//! KUBE saw. The back-end is held until the response (or tunnel) is done, so a
//! zero-downtime restart knows when the old instance has drained.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::apps;
use crate::processes::routes::Backend;

/// The client's address, put on each request by the HTTPS accept loop.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// How long a process may take to start its answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Headers of one hop (RFC 9110 §7.6.1), and forwarding headers KUBE sets itself.
const HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];
const FORWARDING: [&str; 5] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
];

#[derive(Clone)]
pub struct Proxy {
    client: Client<HttpConnector, Body>,
}

impl Default for Proxy {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build(connector);
        Proxy { client }
    }
}

impl Proxy {
    /// Sends `req` to `backend`, and its answer back.
    pub async fn forward(
        &self,
        process: &str,
        backend: Arc<Backend>,
        mut req: Request,
    ) -> Response {
        if req.method() == http::Method::CONNECT {
            return apps::text(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not proxied\n");
        }
        let client = req.extensions().get::<ClientAddr>().map(|c| c.0);
        let upgrade = upgrade_of(&req);
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let Ok(uri) = format!("http://127.0.0.1:{}{path}", backend.port).parse::<http::Uri>()
        else {
            return apps::text(StatusCode::BAD_REQUEST, "bad request path\n");
        };
        strip_hop(&mut parts.headers);
        for name in FORWARDING {
            parts.headers.remove(name);
        }
        // The host as the client named it, port included (HTTP/2 names it in `:authority`).
        let authority = parts.uri.authority().map(|a| a.as_str().to_owned());
        let h = &mut parts.headers;
        if !h.contains_key(header::HOST)
            && let Some(v) = authority.and_then(|a| HeaderValue::from_str(&a).ok())
        {
            h.insert(header::HOST, v);
        }
        if let Some(v) = h.get(header::HOST).cloned() {
            h.insert("x-forwarded-host", v);
        }
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        if let Some(ip) = client.and_then(|c| HeaderValue::from_str(&c.ip().to_string()).ok()) {
            h.insert("x-forwarded-for", ip);
        }
        if let Some(proto) = &upgrade {
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(header::UPGRADE, proto.clone());
        }
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        let out = Request::from_parts(parts, body);
        let answer = match tokio::time::timeout(ANSWER_TIMEOUT, self.client.request(out)).await {
            Err(_) => {
                tracing::debug!(process, "proxy: no answer in time");
                return apps::text(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("the process {process} did not answer in time\n"),
                );
            }
            Ok(Err(e)) => {
                tracing::debug!(process, error = %e, "proxy: the process did not answer");
                return apps::text(
                    StatusCode::BAD_GATEWAY,
                    format!("the process {process} did not answer\n"),
                );
            }
            Ok(Ok(r)) => r,
        };
        let (mut parts, body) = answer.into_parts();
        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                return apps::text(
                    StatusCode::BAD_GATEWAY,
                    format!("the process {process} switched protocols unasked\n"),
                );
            };
            let headers = parts.headers.clone();
            let mut answer = http::Response::from_parts(parts, body);
            let process_upgrade = hyper::upgrade::on(&mut answer);
            let name = process.to_owned();
            tokio::spawn(async move {
                // The tunnel holds the back-end: a drain waits for it too.
                let _held = backend;
                match tokio::try_join!(client_upgrade, process_upgrade) {
                    Ok((a, b)) => {
                        let (mut a, mut b) = (TokioIo::new(a), TokioIo::new(b));
                        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                    }
                    Err(e) => {
                        tracing::debug!(process = %name, error = %e, "proxy: upgrade failed");
                    }
                }
            });
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            *r.headers_mut() = headers;
            return r;
        }
        strip_hop(&mut parts.headers);
        // The back-end is held until the body has been read to its end or dropped.
        let held = backend;
        let stream = Body::new(body).into_data_stream().map(move |chunk| {
            let _ = &held;
            chunk
        });
        Response::from_parts(parts, Body::from_stream(stream))
    }
}

/// The protocol an HTTP/1.1 request asks to upgrade to (`Connection: upgrade` and
/// `Upgrade: …`).
fn upgrade_of(req: &Request) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| req.headers().get(header::UPGRADE).cloned())
        .flatten()
}

/// Removes the hop-by-hop headers and those `Connection` names.
fn strip_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_headers_and_those_connection_names_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn only_http11_asks_for_an_upgrade() {
        let mut req = Request::new(Body::empty());
        req.headers_mut().insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        req.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(upgrade_of(&req).unwrap(), "websocket");
        *req.version_mut() = Version::HTTP_2;
        assert!(upgrade_of(&req).is_none());
    }
}
