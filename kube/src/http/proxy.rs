//! The reverse proxy to supervised processes (`processes[].route`): a request, HTTP/1.1 or
//! HTTP/2 from the client, goes to `http://127.0.0.1:<port>` over HTTP/1.1 on a kept-alive
//! connection from the instance's pool (`Pools`: hyper's client connections, taken for one
//! exchange and given back when the answer's body has been read to its end); an HTTP/1.1
//! upgrade (WebSocket) gets a connection of its own and becomes a tunnel. Hop-by-hop headers
//! stay on their hop; what the client said about forwarding is replaced by what KUBE saw.
//! The back-end is held until the response (or tunnel) is done, so a zero-downtime restart
//! knows when the old instance has drained.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version, header};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::apps;
use crate::processes::routes::Backend;

/// The client's address, put on each request by the HTTPS accept loop.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// How long a process may take to start its answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// An idle connection older than this is closed rather than used: back-ends close theirs
/// (Node after 5 s), and a request sent on a connection as it closes would fail.
const IDLE_MAX: Duration = Duration::from_secs(2);
/// Idle connections kept per instance.
const IDLE_PER_PORT: usize = 256;

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

/// Idle connections to each instance, by port (a port is one instance's while it runs),
/// with the time each was given back.
type Idle = HashMap<u16, Vec<(SendRequest<Body>, Instant)>>;

#[derive(Default)]
struct Pools {
    idle: Mutex<Idle>,
}

impl Pools {
    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A kept-alive connection to `port` that is ready for a request, if one is idle.
    async fn take(&self, port: u16) -> Option<SendRequest<Body>> {
        loop {
            let (mut sender, since) = {
                let mut idle = self.lock();
                let list = idle.get_mut(&port)?;
                let next = list.pop();
                if list.is_empty() {
                    idle.remove(&port);
                }
                next?
            };
            if sender.is_closed() || since.elapsed() > IDLE_MAX {
                continue;
            }
            if sender.is_ready() {
                return Some(sender);
            }
            // Given back once its answer was read: ready, or about to be.
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(1), sender.ready()).await {
                return Some(sender);
            }
        }
    }

    fn give_back(&self, port: u16, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        let list = idle.entry(port).or_default();
        if list.len() < IDLE_PER_PORT {
            list.push((sender, Instant::now()));
        }
    }
}

/// A new HTTP/1.1 connection to `127.0.0.1:port`, its driver on a task of its own.
async fn connect(port: u16) -> Result<SendRequest<Body>, String> {
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .map_err(|_| "connect timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "proxy: a connection to a process ended");
        }
    });
    Ok(sender)
}

/// An answer's body on its way to the client: when it has been read to its end, its
/// connection goes back to the pool; until it is dropped, it holds the back-end.
struct Returning {
    inner: Incoming,
    back: Option<(Arc<Pools>, u16, SendRequest<Body>)>,
    _held: Arc<Backend>,
}

impl Returning {
    fn give_back(&mut self) {
        if let Some((pools, port, sender)) = self.back.take() {
            pools.give_back(port, sender);
        }
    }
}

impl http_body::Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = r {
            self.give_back();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        // Read to its end (perhaps without a last poll): the connection is reusable. Cut
        // short: it goes with this body.
        if http_body::Body::is_end_stream(&self.inner) {
            self.give_back();
        }
    }
}

#[derive(Clone, Default)]
pub struct Proxy {
    pools: Arc<Pools>,
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
        // Origin form on the wire to the process (RFC 9112 §3.2.1).
        let Ok(uri) = path.parse::<http::Uri>() else {
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
        match h.get(header::HOST).cloned() {
            Some(v) => {
                h.insert("x-forwarded-host", v);
            }
            None => {
                if let Ok(v) = HeaderValue::from_str(&format!("127.0.0.1:{}", backend.port)) {
                    h.insert(header::HOST, v);
                }
            }
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
        let port = backend.port;
        let exchange = async {
            let pooled = if upgrade.is_none() {
                self.pools.take(port).await
            } else {
                None
            };
            let mut sender = match pooled {
                Some(s) => s,
                None => connect(port).await?,
            };
            match sender.try_send_request(out).await {
                Ok(r) => Ok((r, sender)),
                // A kept-alive connection that closed before the request went out: hyper
                // gives the request back, and it goes on a new connection.
                Err(mut e) => match e.take_message() {
                    Some(out) => {
                        let mut sender = connect(port).await?;
                        let r = sender.send_request(out).await.map_err(|e| e.to_string())?;
                        Ok((r, sender))
                    }
                    None => Err(e.into_error().to_string()),
                },
            }
        };
        let (answer, sender) = match tokio::time::timeout(ANSWER_TIMEOUT, exchange).await {
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
        let body = Returning {
            inner: body,
            back: Some((self.pools.clone(), port, sender)),
            _held: backend,
        };
        Response::from_parts(parts, Body::new(body))
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
