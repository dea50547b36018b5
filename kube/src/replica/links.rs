//! ECHO's links to the other KUBEs of a cluster (`echo.peers`). Each link dials the other
//! KUBE's `/.well-known/kube/echo` as any peer does: a token signed with this KUBE's HALO
//! key for the other's did (read from its `/.well-known/kube/identity`, with its clock),
//! then `join`. The other KUBE applies its access rules to this KUBE's did as to anyone's
//! (a replicator of the spaces whose credentials say so); this side hands the connection
//! to ECHO's driver as a link (`Echo::connect_kube`), which offers the other KUBE every
//! document of the spaces both replicate. A link that fails or closes is dialled again
//! after 1, 2, 4… up to 30 s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

use super::{EchoHandle, Event, Kind, Outbox, WsMessage};

/// Why a link could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0} is not an https:// URL with a host")]
    Url(String),
    #[error("echo.peers ca_file {path}: {reason}")]
    Ca { path: String, reason: String },
    #[error("its identity: {0}")]
    Identity(String),
    #[error("it answers as {got}, not the {expected} echo.peers names")]
    WrongKube { expected: String, got: String },
    #[error("echo.peers did {0:?}: {1}")]
    Did(String, String),
    #[error("connect: {0}")]
    Connect(String),
    #[error("it did not answer join with peer: {0}")]
    Join(String),
}

/// Where the other KUBE is and how its certificate is checked.
#[derive(Clone)]
pub struct Target {
    /// `https://host[:port]` (no path).
    base: String,
    /// The did it must answer with.
    did: String,
    host: String,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
}

impl Target {
    pub fn new(peer: &config::EchoPeer) -> Result<Target, LinkError> {
        let bad = || LinkError::Url(peer.url.clone());
        let url = reqwest::Url::parse(&peer.url).map_err(|_| bad())?;
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(bad)?;
        if url.scheme() != "https" {
            return Err(bad());
        }
        let port = url.port_or_known_default().ok_or_else(bad)?;
        halo::PublicKey::from_did(&peer.did)
            .map_err(|e| LinkError::Did(peer.did.clone(), e.to_string()))?;
        Ok(Target {
            base: format!("https://{host}:{port}"),
            did: peer.did.clone(),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            tls: Arc::new(client_tls(peer.ca_file.as_deref())?),
        })
    }
}

/// The compiled-in web PKI roots, and `ca_file` when given (a KUBE on its local CA).
fn client_tls(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, LinkError> {
    crate::tls::client_config(ca_file).map_err(|reason| LinkError::Ca {
        path: ca_file.map(|p| p.display().to_string()).unwrap_or_default(),
        reason,
    })
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A link as `kube status` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LinkStatus {
    pub url: String,
    pub did: String,
    pub up: bool,
    /// Unix seconds of the last change (up or down).
    pub since: u64,
    /// Why the last attempt failed, while it is down.
    pub error: Option<String>,
}

/// The links' states, shared by their tasks and the admin API.
#[derive(Clone, Default)]
pub struct Links(Arc<std::sync::Mutex<Vec<LinkStatus>>>);

impl Links {
    pub fn all(&self) -> Vec<LinkStatus> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, i: usize, up: bool, error: Option<String>, metrics: &crate::metrics::Metrics) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = all.get_mut(i) {
            if l.up != up {
                l.since = crate::service::unix_now();
            }
            l.up = up;
            l.error = error;
        }
        metrics
            .echo_links_up
            .set(all.iter().filter(|l| l.up).count() as i64);
    }

    /// Adds `target` (down) and returns its index.
    fn add(&self, target: &Target) -> usize {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.push(LinkStatus {
            url: target.base.clone(),
            did: target.did.clone(),
            up: false,
            since: crate::service::unix_now(),
            error: None,
        });
        all.len() - 1
    }
}

/// Keeps a link to `target` up until `cancel`.
pub async fn keep(
    echo: EchoHandle,
    key: halo::SigningKey,
    target: Target,
    metrics: Arc<crate::metrics::Metrics>,
    cancel: CancellationToken,
) {
    let i = echo.links.add(&target);
    let mut backoff = 1u64;
    loop {
        let dialled = tokio::select! {
            _ = cancel.cancelled() => return,
            r = tokio::time::timeout(Duration::from_secs(20), dial(&echo, &key, &target)) => {
                r.unwrap_or_else(|_| Err(LinkError::Connect("timed out".into())))
            }
        };
        match dialled {
            Ok((socket, peer)) => {
                tracing::info!(peer = %target.base, did = %peer.did, "ECHO linked to another KUBE");
                echo.links.set(i, true, None, &metrics);
                let began = Instant::now();
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    () = echo.link(socket, peer) => {}
                }
                tracing::info!(peer = %target.base, "ECHO link closed");
                echo.links.set(i, false, Some("closed".into()), &metrics);
                if began.elapsed() > Duration::from_secs(60) {
                    backoff = 1;
                }
            }
            Err(e) => {
                tracing::warn!(peer = %target.base, error = %e, "ECHO cannot link to another KUBE");
                echo.links.set(i, false, Some(e.to_string()), &metrics);
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(backoff)) => {}
        }
        backoff = (backoff * 2).min(30);
    }
}

#[derive(serde::Deserialize)]
struct Identity {
    did: String,
    #[serde(default)]
    time: u64,
}

/// Reads the other KUBE's identity, connects with a token for it, and joins.
async fn dial(
    echo: &EchoHandle,
    key: &halo::SigningKey,
    target: &Target,
) -> Result<(Socket, echo::auth::Peer), LinkError> {
    let http = reqwest::Client::builder()
        .use_preconfigured_tls((*target.tls).clone())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| LinkError::Identity(e.to_string()))?;
    let id: Identity = http
        .get(format!("{}/.well-known/kube/identity", target.base))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| LinkError::Identity(e.to_string()))?
        .json()
        .await
        .map_err(|e| LinkError::Identity(e.to_string()))?;
    // Tokens are signed for the KUBE the operator named, never for whatever a server claims
    // to be (a token for another KUBE could be replayed there). The other KUBE proves the
    // key when it checks the token: one made for another did is refused.
    if id.did != target.did {
        return Err(LinkError::WrongKube {
            expected: target.did.clone(),
            got: id.did,
        });
    }
    let time = if id.time > 0 {
        id.time
    } else {
        crate::service::unix_now()
    };
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let token = echo::auth::token(key, &id.did, &echo.peer_id, time, &nonce);

    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| LinkError::Connect(e.to_string()))?;
    let name = rustls_pki_types::ServerName::try_from(target.host.clone())
        .map_err(|e| LinkError::Connect(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(target.tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| LinkError::Connect(e.to_string()))?;
    let url = format!(
        "wss://{}:{}/.well-known/kube/echo?auth={token}",
        target.host, target.port
    );
    let request = url
        .into_client_request()
        .map_err(|e| LinkError::Connect(e.to_string()))?;
    let cap = echo.max_frame.saturating_mul(2).max(1 << 16);
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(cap))
        .max_frame_size(Some(cap));
    let (mut socket, _) = tokio_tungstenite::client_async_with_config(request, tls, Some(config))
        .await
        .map_err(|e| LinkError::Connect(e.to_string()))?;
    socket
        .send(Message::Binary(echo::wire::join(&echo.peer_id).into()))
        .await
        .map_err(|e| LinkError::Join(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let next = tokio::time::timeout_at(deadline, socket.next())
            .await
            .map_err(|_| LinkError::Join("no answer".into()))?;
        match next {
            Some(Ok(Message::Binary(b))) => {
                let peer = echo::wire::peer_answer(&b, &echo.peer_id)
                    .ok_or_else(|| LinkError::Join("not a peer message".into()))?;
                return Ok((socket, echo::auth::Peer { did: id.did, peer }));
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(other)) => return Err(LinkError::Join(format!("{other:?}"))),
            Some(Err(e)) => return Err(LinkError::Join(e.to_string())),
            None => return Err(LinkError::Join("closed".into())),
        }
    }
}

impl WsMessage for Message {
    fn kind(self) -> Kind {
        match self {
            Message::Binary(b) => Kind::Data(b.to_vec()),
            Message::Text(t) => Kind::Data(t.as_bytes().to_vec()),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Kind::Alive,
            Message::Close(_) => Kind::End,
        }
    }
    fn binary(bytes: Vec<u8>) -> Self {
        Message::Binary(bytes.into())
    }
    fn ping() -> Self {
        Message::Ping(Vec::new().into())
    }
    fn close() -> Self {
        Message::Close(None)
    }
}

impl EchoHandle {
    /// Runs a link as a connection of ECHO's until either side closes it.
    async fn link(&self, socket: Socket, peer: echo::auth::Peer) {
        let conn = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (outbox, rx) = Outbox::new(self.max_frame.saturating_mul(2));
        let queued = outbox.queued.clone();
        if self
            .events
            .send(Event::Link { conn, peer, outbox })
            .await
            .is_err()
        {
            return;
        }
        self.pump(conn, rx, queued, socket).await;
        let _ = self.events.send(Event::Closed { conn }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Result<(String, u16, String), LinkError> {
        Target::new(&config::EchoPeer {
            url: url.into(),
            did: "did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX".into(),
            ca_file: None,
        })
        .map(|t| (t.host, t.port, t.base))
    }

    #[test]
    fn peer_urls_name_a_host_and_port() {
        assert_eq!(
            target("https://b.example.org").unwrap(),
            (
                "b.example.org".into(),
                443,
                "https://b.example.org:443".into()
            )
        );
        assert_eq!(
            target("https://localhost:8443/").unwrap(),
            ("localhost".into(), 8443, "https://localhost:8443".into())
        );
        assert!(target("http://b.example.org").is_err());
        assert!(target("https://").is_err());
        assert!(target("https://b:notaport").is_err());
    }
}
