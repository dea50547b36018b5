//! The signaling hub (pure): connections, their authentication, swarms and who may send
//! what to whom. Inputs carry `now`; outputs say what to send and which connections to
//! close. The driver owns sockets, the clock and randomness.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use base64::Engine;
use halo::PublicKey;

use crate::protocol::{self, ClientMsg, ErrorCode, IceServer, ServerMsg, Topic};

pub type ConnId = u64;

/// Bounds on what one client, and all of them, may do.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub messages_per_second: u32,
    pub max_swarms_per_peer: usize,
    pub max_peers_per_swarm: usize,
    pub max_connections: usize,
    pub auth_timeout: Duration,
    /// Refused messages a connection may send before it is closed.
    pub strikes: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 * 1024,
            messages_per_second: 50,
            max_swarms_per_peer: 32,
            max_peers_per_swarm: 256,
            max_connections: 10_000,
            auth_timeout: Duration::from_secs(10),
            strikes: 10,
        }
    }
}

/// How ICE servers are described to clients.
#[derive(Clone, Debug, Default)]
pub struct Ice {
    pub stun: Vec<String>,
    pub turn: Vec<String>,
    pub secret: Vec<u8>,
    pub ttl_secs: u64,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Out {
    Send(ConnId, ServerMsg),
    /// Close the connection (after sending what came before for it).
    Close(ConnId, &'static str),
}

#[derive(Debug)]
enum State {
    AwaitingAuth {
        nonce: String,
        origin: String,
        deadline: Instant,
    },
    Authenticated {
        peer: PublicKey,
    },
}

#[derive(Debug)]
struct Conn {
    state: State,
    swarms: BTreeSet<Topic>,
    tokens: f64,
    last: Instant,
    strikes: u32,
}

/// Counts for metrics and status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub connections: usize,
    pub peers: usize,
    pub swarms: usize,
}

#[derive(Debug)]
pub struct Hub {
    limits: Limits,
    ice: Option<Ice>,
    conns: HashMap<ConnId, Conn>,
    peers: HashMap<PublicKey, ConnId>,
    swarms: HashMap<Topic, BTreeSet<PublicKey>>,
}

impl Hub {
    pub fn new(limits: Limits, ice: Option<Ice>) -> Hub {
        Hub {
            limits,
            ice,
            conns: HashMap::new(),
            peers: HashMap::new(),
            swarms: HashMap::new(),
        }
    }

    /// New limits (a reload): they apply to the next message, connection or join; peers
    /// already over a lowered limit stay until they leave.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// New ICE servers or TURN secret (a reload), for the next `ice-servers`.
    pub fn set_ice(&mut self, ice: Option<Ice>) {
        self.ice = ice;
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn stats(&self) -> Stats {
        Stats {
            connections: self.conns.len(),
            peers: self.peers.len(),
            swarms: self.swarms.len(),
        }
    }

    /// A new connection from `origin`; `nonce` is 32 random bytes from the driver.
    pub fn connect(
        &mut self,
        conn: ConnId,
        nonce: [u8; 32],
        origin: &str,
        now: Instant,
    ) -> Vec<Out> {
        if self.conns.len() >= self.limits.max_connections {
            return vec![Out::Close(conn, "too many connections")];
        }
        let nonce = hex::encode(nonce);
        self.conns.insert(
            conn,
            Conn {
                state: State::AwaitingAuth {
                    nonce: nonce.clone(),
                    origin: origin.to_owned(),
                    deadline: now + self.limits.auth_timeout,
                },
                swarms: BTreeSet::new(),
                tokens: f64::from(self.limits.messages_per_second),
                last: now,
                strikes: 0,
            },
        );
        vec![Out::Send(conn, ServerMsg::Challenge { nonce })]
    }

    /// Closes connections that did not authenticate in time.
    pub fn tick(&mut self, now: Instant) -> Vec<Out> {
        let late: Vec<ConnId> = self
            .conns
            .iter()
            .filter(
                |(_, c)| matches!(c.state, State::AwaitingAuth { deadline, .. } if deadline <= now),
            )
            .map(|(id, _)| *id)
            .collect();
        let mut out = Vec::new();
        for id in late {
            out.push(Out::Send(
                id,
                error(ErrorCode::Unauthenticated, "no auth in time"),
            ));
            out.extend(self.disconnect(id));
            out.push(Out::Close(id, "auth timeout"));
        }
        out
    }

    /// The earliest auth deadline, for the driver's timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.conns
            .values()
            .filter_map(|c| match c.state {
                State::AwaitingAuth { deadline, .. } => Some(deadline),
                State::Authenticated { .. } => None,
            })
            .min()
    }

    /// The connection is gone: its swarms hear `peer-left`.
    pub fn disconnect(&mut self, conn: ConnId) -> Vec<Out> {
        let Some(c) = self.conns.remove(&conn) else {
            return Vec::new();
        };
        let State::Authenticated { peer } = c.state else {
            return Vec::new();
        };
        if self.peers.get(&peer) == Some(&conn) {
            self.peers.remove(&peer);
        }
        let mut out = Vec::new();
        for topic in c.swarms {
            out.extend(self.leave_swarm(topic, peer));
        }
        out
    }

    /// One text frame from `conn`; `unix_now` dates ICE credentials.
    pub fn receive(&mut self, conn: ConnId, text: &str, now: Instant, unix_now: u64) -> Vec<Out> {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Vec::new();
        };
        // Token bucket: `messages_per_second`, with a burst of one second's worth.
        let rate = f64::from(self.limits.messages_per_second.max(1));
        c.tokens =
            (c.tokens + now.saturating_duration_since(c.last).as_secs_f64() * rate).min(rate);
        c.last = now;
        if c.tokens < 1.0 {
            return self.refuse(
                conn,
                ErrorCode::RateLimited,
                "too many messages per second".into(),
            );
        }
        c.tokens -= 1.0;
        if text.len() > self.limits.max_message_bytes {
            let msg = format!(
                "messages are at most {} bytes",
                self.limits.max_message_bytes
            );
            return self.refuse(conn, ErrorCode::TooLarge, msg);
        }
        let msg = match protocol::decode(text) {
            Ok(m) => m,
            Err((code, why)) => return self.refuse(conn, code, why),
        };
        match (msg, self.peer_of(conn)) {
            (ClientMsg::Auth { id, signature }, None) => self.auth(conn, &id, &signature),
            (ClientMsg::Auth { .. }, Some(_)) => self.refuse(
                conn,
                ErrorCode::AlreadyAuthenticated,
                "already authenticated".into(),
            ),
            (_, None) => self.refuse(
                conn,
                ErrorCode::Unauthenticated,
                "authenticate first".into(),
            ),
            (ClientMsg::Join { swarm }, Some(peer)) => self.join(conn, peer, &swarm),
            (ClientMsg::Leave { swarm }, Some(peer)) => match Topic::parse(&swarm) {
                Some(t) if self.conns.get(&conn).is_some_and(|c| c.swarms.contains(&t)) => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.swarms.remove(&t);
                    }
                    self.leave_swarm(t, peer)
                }
                Some(_) => self.refuse(conn, ErrorCode::NotInSwarm, "not in that swarm".into()),
                None => self.refuse(conn, ErrorCode::BadSwarm, "a swarm is 64 hex digits".into()),
            },
            (ClientMsg::Signal { to, swarm, payload }, Some(peer)) => {
                self.signal(conn, peer, &to, &swarm, payload)
            }
            (ClientMsg::IceServers, Some(peer)) => self.ice_servers(conn, peer, unix_now),
        }
    }

    fn peer_of(&self, conn: ConnId) -> Option<PublicKey> {
        match self.conns.get(&conn)?.state {
            State::Authenticated { peer } => Some(peer),
            State::AwaitingAuth { .. } => None,
        }
    }

    /// An error reply; past `strikes` of them the connection is closed.
    fn refuse(&mut self, conn: ConnId, code: ErrorCode, message: String) -> Vec<Out> {
        let mut out = vec![Out::Send(conn, error(code, &message))];
        if let Some(c) = self.conns.get_mut(&conn) {
            c.strikes += 1;
            if c.strikes >= self.limits.strikes {
                out.extend(self.disconnect(conn));
                out.push(Out::Close(conn, "too many refused messages"));
            }
        }
        out
    }

    fn auth(&mut self, conn: ConnId, id: &str, signature: &str) -> Vec<Out> {
        let Some(State::AwaitingAuth { nonce, origin, .. }) =
            self.conns.get(&conn).map(|c| &c.state)
        else {
            return Vec::new();
        };
        let message = protocol::auth_message(nonce, origin);
        let verified = PublicKey::from_did(id)
            .map_err(|e| e.to_string())
            .and_then(|pk| {
                let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(signature.trim_end_matches('='))
                    .map_err(|e| format!("signature is not base64url: {e}"))?;
                pk.verify(&message, &sig).map_err(|e| e.to_string())?;
                Ok(pk)
            });
        let peer = match verified {
            Ok(pk) => pk,
            Err(why) => {
                // A failed proof ends the connection: there is nothing else it may do.
                let mut out = vec![Out::Send(conn, error(ErrorCode::AuthFailed, &why))];
                out.extend(self.disconnect(conn));
                out.push(Out::Close(conn, "authentication failed"));
                return out;
            }
        };
        let mut out = Vec::new();
        // The same key connected again: the old session goes, cleanly, before this one.
        if let Some(old) = self.peers.get(&peer).copied()
            && old != conn
        {
            out.extend(self.disconnect(old));
            out.push(Out::Close(old, "replaced by a new session"));
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.state = State::Authenticated { peer };
        }
        self.peers.insert(peer, conn);
        out.push(Out::Send(conn, ServerMsg::Welcome { id: peer.to_did() }));
        out
    }

    fn join(&mut self, conn: ConnId, peer: PublicKey, swarm: &str) -> Vec<Out> {
        let Some(topic) = Topic::parse(swarm) else {
            return self.refuse(conn, ErrorCode::BadSwarm, "a swarm is 64 hex digits".into());
        };
        let joined = self.conns.get(&conn).map(|c| c.swarms.len()).unwrap_or(0);
        let already = self
            .conns
            .get(&conn)
            .is_some_and(|c| c.swarms.contains(&topic));
        if !already && joined >= self.limits.max_swarms_per_peer {
            let msg = format!(
                "at most {} swarms per peer",
                self.limits.max_swarms_per_peer
            );
            return self.refuse(conn, ErrorCode::SwarmLimit, msg);
        }
        let members = self.swarms.get(&topic).map(|m| m.len()).unwrap_or(0);
        if !already && members >= self.limits.max_peers_per_swarm {
            let msg = format!(
                "at most {} peers per swarm",
                self.limits.max_peers_per_swarm
            );
            return self.refuse(conn, ErrorCode::SwarmFull, msg);
        }
        let hex = topic.to_hex();
        let mut out = Vec::new();
        let others: Vec<PublicKey> = self
            .swarms
            .get(&topic)
            .map(|m| m.iter().filter(|p| **p != peer).copied().collect())
            .unwrap_or_default();
        if !already {
            for other in &others {
                if let Some(c) = self.peers.get(other) {
                    out.push(Out::Send(
                        *c,
                        ServerMsg::PeerJoined {
                            swarm: hex.clone(),
                            peer: peer.to_did(),
                        },
                    ));
                }
            }
            self.swarms.entry(topic).or_default().insert(peer);
            if let Some(c) = self.conns.get_mut(&conn) {
                c.swarms.insert(topic);
            }
        }
        out.push(Out::Send(
            conn,
            ServerMsg::Peers {
                swarm: hex,
                peers: others.iter().map(PublicKey::to_did).collect(),
            },
        ));
        out
    }

    fn leave_swarm(&mut self, topic: Topic, peer: PublicKey) -> Vec<Out> {
        let mut out = Vec::new();
        let Some(members) = self.swarms.get_mut(&topic) else {
            return out;
        };
        members.remove(&peer);
        let hex = topic.to_hex();
        for other in members.iter() {
            if let Some(c) = self.peers.get(other) {
                out.push(Out::Send(
                    *c,
                    ServerMsg::PeerLeft {
                        swarm: hex.clone(),
                        peer: peer.to_did(),
                    },
                ));
            }
        }
        if members.is_empty() {
            self.swarms.remove(&topic);
        }
        out
    }

    fn signal(
        &mut self,
        conn: ConnId,
        peer: PublicKey,
        to: &str,
        swarm: &str,
        payload: serde_json::Value,
    ) -> Vec<Out> {
        let Some(topic) = Topic::parse(swarm) else {
            return self.refuse(conn, ErrorCode::BadSwarm, "a swarm is 64 hex digits".into());
        };
        if !self
            .conns
            .get(&conn)
            .is_some_and(|c| c.swarms.contains(&topic))
        {
            return self.refuse(conn, ErrorCode::NotInSwarm, "join the swarm first".into());
        }
        // Only to a member of the same swarm: nobody can reach a peer outside it.
        let target = PublicKey::from_did(to)
            .ok()
            .filter(|t| self.swarms.get(&topic).is_some_and(|m| m.contains(t)))
            .and_then(|t| self.peers.get(&t).copied());
        match target {
            Some(c) => vec![Out::Send(
                c,
                ServerMsg::Signal {
                    from: peer.to_did(),
                    swarm: topic.to_hex(),
                    payload,
                },
            )],
            None => self.refuse(
                conn,
                ErrorCode::UnknownPeer,
                format!("{to} is not in that swarm"),
            ),
        }
    }

    fn ice_servers(&mut self, conn: ConnId, peer: PublicKey, unix_now: u64) -> Vec<Out> {
        let Some(ice) = &self.ice else {
            return self.refuse(
                conn,
                ErrorCode::NoIceServers,
                "this KUBE offers no ICE servers".into(),
            );
        };
        let mut servers = Vec::new();
        if !ice.stun.is_empty() {
            servers.push(IceServer {
                urls: ice.stun.clone(),
                username: None,
                credential: None,
            });
        }
        if !ice.turn.is_empty() {
            let (username, password) =
                crate::ice::credentials(&ice.secret, &peer.to_did(), unix_now + ice.ttl_secs);
            servers.push(IceServer {
                urls: ice.turn.clone(),
                username: Some(username),
                credential: Some(password),
            });
        }
        vec![Out::Send(
            conn,
            ServerMsg::IceServers {
                servers,
                ttl: ice.ttl_secs,
            },
        )]
    }
}

fn error(code: ErrorCode, message: &str) -> ServerMsg {
    ServerMsg::Error {
        code,
        message: message.to_owned(),
    }
}

#[cfg(test)]
mod tests;
