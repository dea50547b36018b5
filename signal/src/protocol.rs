//! The messages on the signaling WebSocket: JSON text frames, each with `"v": 1` and a
//! `type`. See `PROTOCOL.md`.

use serde::{Deserialize, Serialize};

/// The protocol version this hub speaks.
pub const VERSION: u8 = 1;

/// What a client may send.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ClientMsg {
    /// Proof of a HALO key: the signature (base64url, no padding) over
    /// [`auth_message`] of the challenge nonce and the connection's origin.
    Auth {
        id: String,
        signature: String,
    },
    Join {
        swarm: String,
    },
    Leave {
        swarm: String,
    },
    /// An opaque payload (SDP offer/answer, ICE candidate, anything) for one peer of a
    /// swarm both have joined.
    Signal {
        to: String,
        swarm: String,
        payload: serde_json::Value,
    },
    IceServers,
}

/// An ICE server for `RTCPeerConnection`'s configuration.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// What the hub sends.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerMsg {
    Challenge {
        nonce: String,
    },
    Welcome {
        id: String,
    },
    Peers {
        swarm: String,
        peers: Vec<String>,
    },
    PeerJoined {
        swarm: String,
        peer: String,
    },
    PeerLeft {
        swarm: String,
        peer: String,
    },
    Signal {
        from: String,
        swarm: String,
        payload: serde_json::Value,
    },
    IceServers {
        servers: Vec<IceServer>,
        ttl: u64,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// Why a message was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    BadMessage,
    BadVersion,
    TooLarge,
    RateLimited,
    Unauthenticated,
    AuthFailed,
    AlreadyAuthenticated,
    BadSwarm,
    NotInSwarm,
    UnknownPeer,
    SwarmLimit,
    SwarmFull,
    NoIceServers,
}

/// The bytes a client signs to authenticate: a context string, the challenge nonce (hex)
/// and the origin the connection came from (the WebSocket's `Origin` header; empty for a
/// client that sends none), one per line. Binding the origin stops a page on one site from
/// replaying a signature made for another.
pub fn auth_message(nonce_hex: &str, origin: &str) -> Vec<u8> {
    format!("kube-signal-v1\n{nonce_hex}\n{origin}").into_bytes()
}

/// A frame as sent: the message with `"v": 1`.
pub fn encode(msg: &ServerMsg) -> String {
    let mut v = serde_json::to_value(msg).unwrap_or(serde_json::Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("v".into(), VERSION.into());
    }
    v.to_string()
}

/// Parses a frame: a JSON object with `"v": 1` and a known `type`.
pub fn decode(text: &str) -> Result<ClientMsg, (ErrorCode, String)> {
    let mut v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| (ErrorCode::BadMessage, format!("not JSON: {e}")))?;
    let Some(obj) = v.as_object_mut() else {
        return Err((ErrorCode::BadMessage, "a message is a JSON object".into()));
    };
    match obj.remove("v").and_then(|v| v.as_u64()) {
        Some(1) => {}
        Some(other) => {
            return Err((
                ErrorCode::BadVersion,
                format!("version {other} is not spoken here; use 1"),
            ));
        }
        None => return Err((ErrorCode::BadVersion, "\"v\": 1 is missing".into())),
    }
    serde_json::from_value(v).map_err(|e| (ErrorCode::BadMessage, e.to_string()))
}

/// A swarm topic: 32 bytes, written as 64 hex digits (case-insensitive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(pub [u8; 32]);

impl Topic {
    pub fn parse(s: &str) -> Option<Topic> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Topic(out))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}
