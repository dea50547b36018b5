//! The TURN server (pure): RFC 8656 allocations, permissions and channels over RFC 8489
//! STUN, as a state machine that takes a packet and a clock reading and returns what to
//! send. It does no I/O: the driver (`super`) owns the sockets, hands packets in and
//! carries out the [`Action`]s. The wire format is `stun-types`/`turn-types`.
//!
//! KUBE's rules are decided here, where each request is parsed, once:
//! - REST credentials (coturn's scheme): the username carries its expiry, the password is
//!   the HMAC of the username under the shared secret. Wrong, expired or missing
//!   credentials get 401 with REALM and NONCE; a stale nonce 438. An allocation keeps the
//!   key it was made with, so rotating the secret drops nobody mid-call.
//! - Peers: every XOR-PEER-ADDRESS must be exactly one address (400 otherwise) that the
//!   [`PeerPolicy`] allows (403 otherwise). Permissions and channels are only ever made
//!   for allowed peers, and data is only relayed to a peer with a live permission, so the
//!   relay reaches nothing the policy refuses.
//! - Quotas: allocations per user (486) and in total (508); permissions and channels per
//!   allocation (508); bytes per second per allocation in each direction (excess is
//!   dropped, as a congested path would).
//! - Lifetimes: LIFETIME is capped at `max_lifetime`; permissions last 300 s and channels
//!   600 s (RFC 8656 §9, §12).
//!
//! Not offered: TCP allocations (RFC 6062; browsers relay UDP only), DONT-FRAGMENT is accepted and not acted on (loopback and the
//! kernel's path MTU do the work), MESSAGE-INTEGRITY-SHA256 (browsers and coturn's
//! clients sign with SHA-1).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use stun_types::attribute::{
    Attribute as _, AttributeStaticType, AttributeWrite, ErrorCode, MessageIntegrity,
    MessageIntegritySha256, Nonce, Realm, UnknownAttributes, Username, XorMappedAddress,
};
use stun_types::message::{
    BINDING, IntegrityAlgorithm, IntegrityKey, LongTermKeyCredentials, Message, MessageClass,
    MessageWrite, MessageWriteExt, MessageWriteVec,
};
use turn_types::attribute::{
    ChannelNumber, Data, DontFragment, EvenPort, Lifetime, RequestedAddressFamily,
    RequestedTransport, ReservationToken, XorPeerAddress, XorRelayedAddress,
};
use turn_types::message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, DATA, REFRESH, SEND};

use super::policy::PeerPolicy;

/// Channel numbers: RFC 8656 §12 narrowed them to 0x4000..=0x4FFF, but RFC 5766's
/// 0x4000..=0x7FFE is what coturn's clients still use, and it is no harder to serve.
const CHANNELS: std::ops::RangeInclusive<u16> = 0x4000..=0x7FFE;
/// How long a permission lasts (RFC 8656 §9).
const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// How long a channel binding lasts (RFC 8656 §12).
const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// The allocation lifetime when the client asks for none or less (RFC 8656 §3.2).
const DEFAULT_LIFETIME: u32 = 600;
/// How long a nonce stays fresh; then 438 Stale Nonce hands out a new one.
const NONCE_LIFETIME: u64 = 3600;
/// Peers one allocation may hold permissions for, and channels it may bind.
const MAX_PERMISSIONS: usize = 256;
const MAX_CHANNELS: usize = 256;
/// How long an allocation may wait for its relay socket before it is dropped.
const BIND_TIMEOUT: Duration = Duration::from_secs(10);

/// The settings a reload changes.
#[derive(Clone, Debug)]
pub struct Settings {
    pub realm: String,
    /// The shared secret new allocations authenticate against.
    pub secret: Arc<[u8]>,
    pub max_allocations: u32,
    pub max_per_user: u32,
    pub bytes_per_sec: u64,
    pub max_lifetime: Duration,
}

/// How a client reaches the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// Stream transports pad ChannelData to four bytes (RFC 8656 §12.5).
    fn is_stream(self) -> bool {
        self != Transport::Udp
    }
}

/// A client's 5-tuple as the server tells them apart: its address and, over a stream, the
/// connection (`conn` is 0 over UDP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Client {
    pub transport: Transport,
    pub addr: SocketAddr,
    pub conn: u64,
}

/// One allocation's identity, from the driver's side.
pub type AllocId = u64;

/// A clock reading: monotonic for lifetimes and rates, Unix seconds for REST usernames and
/// nonces.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub at: Instant,
    pub unix: u64,
}

/// What the server counts, so the driver can export it.
pub trait Meter: Send + Sync {
    /// A packet or request refused, and why.
    fn refused(&self, reason: &'static str);
    /// A datagram relayed; `out` is towards a peer.
    fn relayed(&self, out: bool, bytes: usize);
    /// A datagram dropped over an allocation's bandwidth bound.
    fn dropped(&self);
    /// Allocations live now.
    fn allocations(&self, live: usize);
}

/// What the driver does after a packet from a client, besides sending `reply` back.
#[derive(Debug)]
pub enum Action<H> {
    None,
    /// Send `packet[range]` from the allocation's relay socket to `peer`.
    Relay {
        io: H,
        peer: SocketAddr,
        range: Range<usize>,
    },
    /// Bind a relay socket for allocation `id`, then call [`Server::allocated`].
    Bind {
        id: AllocId,
        v6: bool,
        port: PortRequest,
    },
    /// The allocation ended: close its relay socket.
    Release(H),
}

/// Which relay port an Allocate asks for (RFC 8656 §7.2, EVEN-PORT and
/// RESERVATION-TOKEN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortRequest {
    Any,
    /// An even port; with `reserve`, the next one is held for a later Allocate, whose
    /// token goes into the answer.
    Even {
        reserve: bool,
    },
    /// The port held under this token.
    Reserved(u64),
}

/// The server's answer to a packet from a client.
#[derive(Debug)]
pub struct Step<H> {
    /// A response to send back to the client.
    pub reply: Option<Vec<u8>>,
    pub action: Action<H>,
}

impl<H> Step<H> {
    fn none() -> Step<H> {
        Step {
            reply: None,
            action: Action::None,
        }
    }
    fn reply(r: Option<Vec<u8>>) -> Step<H> {
        Step {
            reply: r,
            action: Action::None,
        }
    }
}

/// A byte bucket: `rate` bytes a second, a second's worth of burst.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u64, now: Instant) -> Bucket {
        Bucket {
            rate: rate as f64,
            tokens: rate as f64,
            last: now,
        }
    }

    fn take(&mut self, n: usize, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.rate);
        self.last = now;
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct Allocation<H> {
    client: Client,
    user: String,
    /// The long-term key of the user's credentials when the allocation was made.
    key: IntegrityKey,
    /// The Allocate request's transaction, to answer its retransmissions alike.
    txid: stun_types::message::TransactionId,
    /// The relay socket and its address; None until the driver has bound it.
    relay: Option<(H, SocketAddr)>,
    created: Instant,
    expires: Instant,
    lifetime: u32,
    permissions: HashMap<std::net::IpAddr, Instant>,
    channels: HashMap<u16, (SocketAddr, Instant)>,
    by_peer: HashMap<SocketAddr, u16>,
    out: Bucket,
    inb: Bucket,
}

/// The TURN server. `H` is the driver's handle to an allocation's relay socket.
pub struct Server<H> {
    settings: Settings,
    policy: PeerPolicy,
    nonce_key: [u8; 32],
    allocations: HashMap<AllocId, Allocation<H>>,
    by_client: HashMap<Client, AllocId>,
    /// Users with live allocations: how many, and the key of their latest one, which
    /// their credentials keep working with after the secret rotates.
    users: HashMap<String, (u32, IntegrityKey)>,
    next_id: AllocId,
    /// Whether relayed addresses are IPv6 (the family of `turn.relay_address`).
    relay_v6: bool,
    meter: Arc<dyn Meter>,
}

/// A request refused before it reaches its method: the answer, and the reason counted
/// (none for the challenge every client gets first).
struct Refusal(Option<Vec<u8>>, Option<&'static str>);

impl<H: Clone> Server<H> {
    pub fn new(
        settings: Settings,
        policy: PeerPolicy,
        relay_v6: bool,
        meter: Arc<dyn Meter>,
    ) -> Server<H> {
        Server {
            settings,
            policy,
            nonce_key: rand::random(),
            allocations: HashMap::new(),
            by_client: HashMap::new(),
            users: HashMap::new(),
            next_id: 1,
            relay_v6,
            meter,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Applies reloaded settings. Live allocations keep the key they were made with.
    pub fn set_settings(&mut self, settings: Settings) {
        self.settings = settings;
    }

    /// A packet from `client`.
    pub fn on_client(&mut self, client: Client, packet: &[u8], now: Now) -> Step<H> {
        match packet.first().map(|b| b >> 6) {
            Some(0) => self.stun(client, packet, now),
            Some(1) => self.channel_data(client, packet, now),
            _ => {
                self.meter.refused("malformed");
                Step::none()
            }
        }
    }

    /// ChannelData from a client (RFC 8656 §12.6): to the channel's peer.
    fn channel_data(&mut self, client: Client, packet: &[u8], now: Now) -> Step<H> {
        let Some([a, b, c, d]) = packet.get(..4).and_then(|h| <[u8; 4]>::try_from(h).ok()) else {
            self.meter.refused("malformed");
            return Step::none();
        };
        let (number, len) = (
            u16::from_be_bytes([a, b]),
            usize::from(u16::from_be_bytes([c, d])),
        );
        if !CHANNELS.contains(&number) || 4 + len > packet.len() {
            self.meter.refused("malformed");
            return Step::none();
        }
        let channel = self
            .by_client
            .get(&client)
            .and_then(|id| self.allocations.get(id))
            .and_then(|a| a.channels.get(&number));
        match channel {
            Some(&(peer, until)) if until > now.at => self.relay_out(client, peer, 4..4 + len, now),
            _ => Step::none(),
        }
    }

    /// Client data (`packet[range]`) for `peer`, when a live permission allows it and the
    /// allocation's bandwidth bound has room.
    fn relay_out(
        &mut self,
        client: Client,
        peer: SocketAddr,
        range: Range<usize>,
        now: Now,
    ) -> Step<H> {
        let Some(a) = self
            .by_client
            .get(&client)
            .and_then(|id| self.allocations.get_mut(id))
        else {
            return Step::none();
        };
        let Some((io, _)) = a.relay.as_ref().filter(|_| permitted(a, peer, now)) else {
            return Step::none();
        };
        let io = io.clone();
        if !a.out.take(range.len(), now.at) {
            self.meter.dropped();
            return Step::none();
        }
        self.meter.relayed(true, range.len());
        Step {
            reply: None,
            action: Action::Relay { io, peer, range },
        }
    }

    fn stun(&mut self, client: Client, packet: &[u8], now: Now) -> Step<H> {
        let Ok(m) = Message::from_bytes(packet) else {
            self.meter.refused("malformed");
            return Step::none();
        };
        match m.class() {
            MessageClass::Request => {}
            MessageClass::Indication if m.has_method(SEND) => {
                return self.send_indication(client, &m, packet, now);
            }
            // Responses and other indications get nothing (RFC 8489 §6.3).
            _ => return Step::none(),
        }
        if m.has_method(BINDING) {
            return Step::reply(success(
                &m,
                &[&XorMappedAddress::new(client.addr, m.transaction_id())],
                None,
            ));
        }
        let known = [ALLOCATE, REFRESH, CREATE_PERMISSION, CHANNEL_BIND];
        if !known.iter().any(|&k| m.has_method(k)) {
            self.meter.refused("malformed");
            return Step::reply(error(&m, ErrorCode::BAD_REQUEST, None, &[]));
        }
        let key = match self.authenticate(client, &m, now) {
            Ok(key) => key,
            Err(Refusal(reply, reason)) => {
                if let Some(reason) = reason {
                    self.meter.refused(reason);
                }
                return Step::reply(reply);
            }
        };
        let unknown: Vec<_> = m
            .iter_attributes()
            .map(|(_, a)| a.get_type())
            .filter(|t| t.comprehension_required() && !SUPPORTED.contains(t))
            .collect();
        if !unknown.is_empty() {
            tracing::debug!(?unknown, "turn: unknown comprehension-required attributes");
            self.meter.refused("unknown-attribute");
            return Step::reply(error(
                &m,
                ErrorCode::UNKNOWN_ATTRIBUTE,
                Some(&key),
                &[&UnknownAttributes::new(&unknown)],
            ));
        }
        if m.has_method(ALLOCATE) {
            self.allocate(client, &m, key, now)
        } else if m.has_method(REFRESH) {
            self.refresh(client, &m, &key, now)
        } else if m.has_method(CREATE_PERMISSION) {
            Step::reply(self.create_permission(client, &m, &key, now))
        } else {
            Step::reply(self.channel_bind(client, &m, &key, now))
        }
    }

    /// Long-term credentials (RFC 8489 §9.2.4) in the REST scheme; the key to sign the
    /// answer with. A request on an existing allocation is checked against the key the
    /// allocation was made with, and must come from the same user (441 otherwise).
    fn authenticate(&self, client: Client, m: &Message, now: Now) -> Result<IntegrityKey, Refusal> {
        let unauthenticated =
            |reason| Refusal(self.challenge(m, ErrorCode::UNAUTHORIZED, now), reason);
        if !m.has_attribute(MessageIntegrity::TYPE) {
            // The first request of every client.
            return Err(unauthenticated(None));
        }
        let (Ok(user), Ok(realm), Ok(nonce)) = (
            m.attribute::<Username>(),
            m.attribute::<Realm>(),
            m.attribute::<Nonce>(),
        ) else {
            return Err(Refusal(
                error(m, ErrorCode::BAD_REQUEST, None, &[]),
                Some("malformed"),
            ));
        };
        if !self.nonce_fresh(nonce.nonce(), now) {
            return Err(Refusal(
                self.challenge(m, ErrorCode::STALE_NONCE, now),
                Some("stale-nonce"),
            ));
        }
        let user = user.username();
        if realm.realm() != self.settings.realm
            || signal::ice::expiry(user).is_none_or(|expiry| expiry <= now.unix)
            || m.has_attribute(MessageIntegritySha256::TYPE)
        {
            return Err(unauthenticated(Some("bad-credentials")));
        }
        let alloc = self
            .by_client
            .get(&client)
            .and_then(|id| self.allocations.get(id));
        let valid = |key: &IntegrityKey| m.validate_integrity_with_key(key).is_ok();
        match alloc {
            Some(a) if a.user != user => Err(Refusal(
                error(m, ErrorCode::WRONG_CREDENTIALS, None, &[]),
                Some("bad-credentials"),
            )),
            Some(a) if valid(&a.key) => Ok(a.key.clone()),
            Some(_) => Err(unauthenticated(Some("bad-credentials"))),
            None => {
                let password = signal::ice::password(&self.settings.secret, user);
                let key = LongTermKeyCredentials::new(
                    user.to_owned(),
                    password,
                    self.settings.realm.clone(),
                )
                .make_key(IntegrityAlgorithm::Sha1);
                if valid(&key) {
                    return Ok(key);
                }
                // A user whose allocations outlived a rotation keeps their credentials.
                match self.users.get(user) {
                    Some((_, kept)) if valid(kept) => Ok(kept.clone()),
                    _ => Err(unauthenticated(Some("bad-credentials"))),
                }
            }
        }
    }

    /// 401 or 438 with REALM and a fresh NONCE, unsigned: there is no key to sign with.
    fn challenge(&self, m: &Message, code: u16, now: Now) -> Option<Vec<u8>> {
        let nonce = self.nonce(now);
        let nonce = Nonce::new(&nonce).ok()?;
        let realm = Realm::new(&self.settings.realm).ok()?;
        error(m, code, None, &[&realm, &nonce])
    }

    /// Fixes the nonce key, so that tests can make valid nonces ahead of a server.
    #[cfg(test)]
    pub(crate) fn set_nonce_key(&mut self, key: [u8; 32]) {
        self.nonce_key = key;
    }

    /// A nonce: its expiry and a MAC of it under a key of this process, so none is kept.
    pub(crate) fn nonce(&self, now: Now) -> String {
        let expiry = now.unix + NONCE_LIFETIME;
        let mac = self.nonce_mac(expiry).finalize().into_bytes();
        format!("{expiry:x}-{}", hex::encode(&mac[..12]))
    }

    fn nonce_mac(&self, expiry: u64) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.nonce_key).expect("HMAC takes keys of any length");
        mac.update(&expiry.to_be_bytes());
        mac
    }

    fn nonce_fresh(&self, nonce: &str, now: Now) -> bool {
        let Some((expiry, mac)) = nonce.split_once('-') else {
            return false;
        };
        let (Ok(expiry), Ok(mac)) = (u64::from_str_radix(expiry, 16), hex::decode(mac)) else {
            return false;
        };
        expiry > now.unix
            && mac.len() == 12
            && self.nonce_mac(expiry).verify_truncated_left(&mac).is_ok()
    }

    /// Allocate (RFC 8656 §7.2).
    fn allocate(&mut self, client: Client, m: &Message, key: IntegrityKey, now: Now) -> Step<H> {
        if let Some(a) = self
            .by_client
            .get(&client)
            .and_then(|id| self.allocations.get(id))
        {
            // A retransmission gets the same answer; another Allocate 437.
            if a.txid != m.transaction_id() {
                return Step::reply(error(m, ErrorCode::ALLOCATION_MISMATCH, Some(&key), &[]));
            }
            return Step::reply(a.relay.as_ref().and_then(|(_, relayed)| {
                allocated_answer(m, client, *relayed, a.lifetime, None, &key)
            }));
        }
        match m.attribute::<RequestedTransport>() {
            Ok(t) if t.protocol() == RequestedTransport::UDP => {}
            Ok(_) => {
                return Step::reply(error(
                    m,
                    ErrorCode::UNSUPPORTED_TRANSPORT_PROTOCOL,
                    Some(&key),
                    &[],
                ));
            }
            Err(_) => {
                self.meter.refused("malformed");
                return Step::reply(error(m, ErrorCode::BAD_REQUEST, Some(&key), &[]));
            }
        }
        let v6 = self.relay_v6;
        if let Ok(family) = m.attribute::<RequestedAddressFamily>()
            && (family.family() == stun_types::AddressFamily::IPV6) != v6
        {
            return Step::reply(error(
                m,
                ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED,
                Some(&key),
                &[],
            ));
        }
        let port = match (m.attribute::<EvenPort>(), m.attribute::<ReservationToken>()) {
            (Ok(_), Ok(_)) => {
                self.meter.refused("malformed");
                return Step::reply(error(m, ErrorCode::BAD_REQUEST, Some(&key), &[]));
            }
            (Ok(even), _) => PortRequest::Even {
                reserve: even.requested(),
            },
            (_, Ok(token)) => PortRequest::Reserved(token.token()),
            _ => PortRequest::Any,
        };
        let user = m
            .attribute::<Username>()
            .map(|u| u.username().to_owned())
            .unwrap_or_default();
        if self.users.get(&user).map_or(0, |(n, _)| *n) >= self.settings.max_per_user {
            self.meter.refused("user-quota");
            return Step::reply(error(
                m,
                ErrorCode::ALLOCATION_QUOTA_REACHED,
                Some(&key),
                &[],
            ));
        }
        if self.allocations.len() >= self.settings.max_allocations as usize {
            self.meter.refused("total-quota");
            return Step::reply(error(m, ErrorCode::INSUFFICIENT_CAPACITY, Some(&key), &[]));
        }
        let lifetime = self.lifetime(m).max(1);
        let id = self.next_id;
        self.next_id += 1;
        let entry = self.users.entry(user.clone()).or_insert((0, key.clone()));
        entry.0 += 1;
        entry.1 = key.clone();
        let rate = self.settings.bytes_per_sec;
        self.allocations.insert(
            id,
            Allocation {
                client,
                user,
                key,
                txid: m.transaction_id(),
                relay: None,
                created: now.at,
                expires: now.at + Duration::from_secs(u64::from(lifetime)),
                lifetime,
                permissions: HashMap::new(),
                channels: HashMap::new(),
                by_peer: HashMap::new(),
                out: Bucket::new(rate, now.at),
                inb: Bucket::new(rate, now.at),
            },
        );
        self.by_client.insert(client, id);
        self.meter.allocations(self.allocations.len());
        Step {
            reply: None,
            action: Action::Bind { id, v6, port },
        }
    }

    /// The lifetime a request asks for, within the server's bounds (RFC 8656 §7.2).
    fn lifetime(&self, m: &Message) -> u32 {
        let cap = u32::try_from(self.settings.max_lifetime.as_secs()).unwrap_or(u32::MAX);
        let asked = m
            .attribute::<Lifetime>()
            .map_or(DEFAULT_LIFETIME, |l| l.seconds().max(DEFAULT_LIFETIME));
        asked.min(cap)
    }

    /// The driver bound (or failed to bind) the relay socket of allocation `id`: the answer
    /// to the Allocate request `request` to send the client, or None when the allocation is
    /// gone meanwhile (the driver then closes `io`).
    /// `token` names the port held back for a later Allocate, when this one asked for it.
    pub fn allocated(
        &mut self,
        id: AllocId,
        request: &[u8],
        bound: Option<(H, SocketAddr)>,
        token: Option<u64>,
        now: Now,
    ) -> Option<Vec<u8>> {
        let m = Message::from_bytes(request).ok()?;
        let alloc = self.allocations.get_mut(&id)?;
        let Some((io, relayed)) = bound else {
            let key = alloc.key.clone();
            self.remove(id);
            return error(&m, ErrorCode::INSUFFICIENT_CAPACITY, Some(&key), &[]);
        };
        alloc.relay = Some((io, relayed));
        alloc.expires = now.at + Duration::from_secs(u64::from(alloc.lifetime));
        allocated_answer(&m, alloc.client, relayed, alloc.lifetime, token, &alloc.key)
    }

    /// Refresh (RFC 8656 §8): a new lifetime, or 0 to end the allocation.
    fn refresh(&mut self, client: Client, m: &Message, key: &IntegrityKey, now: Now) -> Step<H> {
        let Some(&id) = self.by_client.get(&client) else {
            return Step::reply(error(m, ErrorCode::ALLOCATION_MISMATCH, Some(key), &[]));
        };
        let asked_zero = m.attribute::<Lifetime>().is_ok_and(|l| l.seconds() == 0);
        if asked_zero {
            let io = self.remove(id);
            return Step {
                reply: success(m, &[&Lifetime::new(0)], Some(key)),
                action: io.map_or(Action::None, Action::Release),
            };
        }
        let lifetime = self.lifetime(m);
        if let Some(a) = self.allocations.get_mut(&id) {
            a.lifetime = lifetime;
            a.expires = now.at + Duration::from_secs(u64::from(lifetime));
        }
        Step::reply(success(m, &[&Lifetime::new(lifetime)], Some(key)))
    }

    /// Every XOR-PEER-ADDRESS of `m`, each exactly one address the policy allows.
    fn peers(&self, m: &Message) -> Result<Vec<SocketAddr>, (u16, &'static str)> {
        let mut peers = Vec::new();
        for (_, raw) in m.iter_attributes() {
            if raw.get_type() != XorPeerAddress::TYPE {
                continue;
            }
            let Ok(p) = XorPeerAddress::try_from(&raw) else {
                return Err((ErrorCode::BAD_REQUEST, "malformed-peer-address"));
            };
            peers.push(p.addr(m.transaction_id()));
        }
        if peers.is_empty() {
            return Err((ErrorCode::BAD_REQUEST, "malformed-peer-address"));
        }
        // The policy first: a refused peer is refused whatever its family.
        for p in &peers {
            if let Some(why) = self.policy.refused(p.ip()) {
                return Err((ErrorCode::FORBIDDEN, why));
            }
        }
        if peers.iter().any(|p| p.is_ipv6() != self.relay_v6) {
            return Err((ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH, "peer-family"));
        }
        Ok(peers)
    }

    /// CreatePermission (RFC 8656 §10).
    fn create_permission(
        &mut self,
        client: Client,
        m: &Message,
        key: &IntegrityKey,
        now: Now,
    ) -> Option<Vec<u8>> {
        let peers = match self.peers(m) {
            Ok(p) => p,
            Err((code, why)) => {
                self.meter.refused(why);
                return error(m, code, Some(key), &[]);
            }
        };
        let Some(a) = self
            .by_client
            .get(&client)
            .and_then(|id| self.allocations.get_mut(id))
        else {
            return error(m, ErrorCode::ALLOCATION_MISMATCH, Some(key), &[]);
        };
        let new = peers
            .iter()
            .filter(|p| !a.permissions.contains_key(&p.ip()))
            .count();
        if a.permissions.len() + new > MAX_PERMISSIONS {
            self.meter.refused("permission-quota");
            return error(m, ErrorCode::INSUFFICIENT_CAPACITY, Some(key), &[]);
        }
        for p in peers {
            a.permissions.insert(p.ip(), now.at + PERMISSION_LIFETIME);
        }
        success(m, &[], Some(key))
    }

    /// ChannelBind (RFC 8656 §11).
    fn channel_bind(
        &mut self,
        client: Client,
        m: &Message,
        key: &IntegrityKey,
        now: Now,
    ) -> Option<Vec<u8>> {
        let peer = match self.peers(m) {
            Ok(p) if p.len() == 1 => p[0],
            Ok(p) => {
                tracing::debug!(?p, "turn: channel bind with several peers");
                self.meter.refused("malformed-peer-address");
                return error(m, ErrorCode::BAD_REQUEST, Some(key), &[]);
            }
            Err((code, why)) => {
                self.meter.refused(why);
                return error(m, code, Some(key), &[]);
            }
        };
        let number = match m.attribute::<ChannelNumber>() {
            Ok(n) if CHANNELS.contains(&n.channel()) => n.channel(),
            _ => {
                self.meter.refused("malformed");
                return error(m, ErrorCode::BAD_REQUEST, Some(key), &[]);
            }
        };
        let Some(a) = self
            .by_client
            .get(&client)
            .and_then(|id| self.allocations.get_mut(id))
        else {
            return error(m, ErrorCode::ALLOCATION_MISMATCH, Some(key), &[]);
        };
        // A channel stays with its peer, and a peer with its channel.
        let bound_peer = a.channels.get(&number).map(|(p, _)| *p);
        let bound_number = a.by_peer.get(&peer).copied();
        if bound_peer.is_some_and(|p| p != peer) || bound_number.is_some_and(|n| n != number) {
            tracing::debug!(number, %peer, ?bound_peer, ?bound_number, "turn: channel rebound");
            return error(m, ErrorCode::BAD_REQUEST, Some(key), &[]);
        }
        let new_permission = !a.permissions.contains_key(&peer.ip());
        if (bound_peer.is_none() && a.channels.len() >= MAX_CHANNELS)
            || (new_permission && a.permissions.len() >= MAX_PERMISSIONS)
        {
            self.meter.refused("channel-quota");
            return error(m, ErrorCode::INSUFFICIENT_CAPACITY, Some(key), &[]);
        }
        a.channels.insert(number, (peer, now.at + CHANNEL_LIFETIME));
        a.by_peer.insert(peer, number);
        a.permissions
            .insert(peer.ip(), now.at + PERMISSION_LIFETIME);
        success(m, &[], Some(key))
    }

    /// A Send indication (RFC 8656 §11.4): its DATA to its peer, if permitted. Refusals
    /// are silent: indications get no answer.
    fn send_indication(&mut self, client: Client, m: &Message, packet: &[u8], now: Now) -> Step<H> {
        let peer = match self.peers(m) {
            Ok(p) if p.len() == 1 => p[0],
            Ok(_) => {
                self.meter.refused("malformed-peer-address");
                return Step::none();
            }
            Err((_, why)) => {
                self.meter.refused(why);
                return Step::none();
            }
        };
        let Some((offset, raw)) = m.raw_attribute_and_offset(Data::TYPE) else {
            self.meter.refused("malformed");
            return Step::none();
        };
        let start = offset + 4;
        let range = start..start + usize::from(raw.header.length());
        if range.end > packet.len() {
            self.meter.refused("malformed");
            return Step::none();
        }
        self.relay_out(client, peer, range, now)
    }

    /// A datagram from `peer` at allocation `id`'s relay socket: what to send its client
    /// (ChannelData on a bound channel, a Data indication otherwise), and where.
    pub fn on_peer(
        &mut self,
        id: AllocId,
        peer: SocketAddr,
        data: &[u8],
        now: Now,
    ) -> Option<(Client, Vec<u8>)> {
        let a = self.allocations.get_mut(&id)?;
        if !permitted(a, peer, now) {
            return None;
        }
        if !a.inb.take(data.len(), now.at) {
            self.meter.dropped();
            return None;
        }
        let channel = a
            .by_peer
            .get(&peer)
            .filter(|n| a.channels.get(n).is_some_and(|(_, until)| *until > now.at));
        let packet = match channel {
            Some(&number) => {
                let len = u16::try_from(data.len()).ok()?;
                let padded = if a.client.transport.is_stream() {
                    data.len().next_multiple_of(4)
                } else {
                    data.len()
                };
                let mut p = Vec::with_capacity(4 + padded);
                p.extend_from_slice(&number.to_be_bytes());
                p.extend_from_slice(&len.to_be_bytes());
                p.extend_from_slice(data);
                p.resize(4 + padded, 0);
                p
            }
            None => {
                let mut w = Message::builder_indication(
                    DATA,
                    MessageWriteVec::with_capacity(48 + data.len()),
                );
                let txid = w.transaction_id();
                w.add_attribute(&XorPeerAddress::new(peer, txid)).ok()?;
                w.add_attribute(&Data::new(data)).ok()?;
                w.finish()
            }
        };
        self.meter.relayed(false, data.len());
        Some((a.client, packet))
    }

    /// Whether `client` holds an allocation.
    pub fn has_allocation(&self, client: Client) -> bool {
        self.by_client.contains_key(&client)
    }

    /// The client's stream closed: its allocation ends with it (RFC 8656 §3.1).
    pub fn client_closed(&mut self, client: Client) -> Option<H> {
        let id = *self.by_client.get(&client)?;
        self.remove(id)
    }

    /// Ends what has expired: allocations (their relay sockets are returned to close),
    /// allocations still waiting for a socket, permissions and channels.
    pub fn expire(&mut self, now: Now) -> Vec<H> {
        let dead: Vec<AllocId> = self
            .allocations
            .iter()
            .filter(|(_, a)| {
                a.expires <= now.at || (a.relay.is_none() && a.created + BIND_TIMEOUT <= now.at)
            })
            .map(|(id, _)| *id)
            .collect();
        let mut closed = Vec::new();
        for id in dead {
            closed.extend(self.remove(id));
        }
        for a in self.allocations.values_mut() {
            a.permissions.retain(|_, until| *until > now.at);
            a.channels.retain(|_, (_, until)| *until > now.at);
            let channels = &a.channels;
            a.by_peer.retain(|_, n| channels.contains_key(n));
        }
        closed
    }

    /// Removes an allocation; its relay socket, if it had one.
    fn remove(&mut self, id: AllocId) -> Option<H> {
        let a = self.allocations.remove(&id)?;
        self.by_client.remove(&a.client);
        if let Some((n, _)) = self.users.get_mut(&a.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.users.remove(&a.user);
            }
        }
        self.meter.allocations(self.allocations.len());
        a.relay.map(|(io, _)| io)
    }
}

/// Whether `peer` has a live permission on `a`.
fn permitted<H>(a: &Allocation<H>, peer: SocketAddr, now: Now) -> bool {
    a.permissions
        .get(&peer.ip())
        .is_some_and(|until| *until > now.at)
}

/// The comprehension-required attributes KUBE understands (RFC 8489, RFC 8656).
const SUPPORTED: [stun_types::attribute::AttributeType; 14] = [
    ReservationToken::TYPE,
    EvenPort::TYPE,
    RequestedAddressFamily::TYPE,
    Username::TYPE,
    MessageIntegrity::TYPE,
    Realm::TYPE,
    Nonce::TYPE,
    ErrorCode::TYPE,
    XorPeerAddress::TYPE,
    Data::TYPE,
    Lifetime::TYPE,
    RequestedTransport::TYPE,
    DontFragment::TYPE,
    ChannelNumber::TYPE,
];

/// The success answer to an Allocate.
fn allocated_answer(
    m: &Message,
    client: Client,
    relayed: SocketAddr,
    lifetime: u32,
    token: Option<u64>,
    key: &IntegrityKey,
) -> Option<Vec<u8>> {
    let txid = m.transaction_id();
    let relayed = XorRelayedAddress::new(relayed, txid);
    let lifetime = Lifetime::new(lifetime);
    let mapped = XorMappedAddress::new(client.addr, txid);
    let token = token.map(ReservationToken::new);
    let mut attrs: Vec<&dyn AttributeWrite> = vec![&relayed, &lifetime, &mapped];
    if let Some(t) = &token {
        attrs.push(t);
    }
    success(m, &attrs, Some(key))
}

fn success(
    m: &Message,
    attrs: &[&dyn AttributeWrite],
    key: Option<&IntegrityKey>,
) -> Option<Vec<u8>> {
    let w = Message::builder_success(m, MessageWriteVec::with_capacity(128));
    finish(w, attrs, key)
}

/// An error answer to `m`, signed with `key` when the request was authenticated.
fn error(
    m: &Message,
    code: u16,
    key: Option<&IntegrityKey>,
    attrs: &[&dyn AttributeWrite],
) -> Option<Vec<u8>> {
    let mut w = Message::builder_error(m, MessageWriteVec::with_capacity(128));
    w.add_attribute(&ErrorCode::builder(code).build().ok()?)
        .ok()?;
    finish(w, attrs, key)
}

fn finish(
    mut w: MessageWriteVec,
    attrs: &[&dyn AttributeWrite],
    key: Option<&IntegrityKey>,
) -> Option<Vec<u8>> {
    for a in attrs {
        w.add_attribute(*a).ok()?;
    }
    if let Some(key) = key {
        w.add_message_integrity_with_key(key, IntegrityAlgorithm::Sha1)
            .ok()?;
    }
    w.add_fingerprint().ok()?;
    Some(w.finish())
}

/// How long the next frame on a stream is (RFC 8656 §12.5: STUN by its header, ChannelData
/// by its length padded to four bytes); None until four bytes are there, Err for bytes
/// that are neither.
pub fn frame_len(buf: &[u8]) -> Option<Result<usize, ()>> {
    let h = buf.get(..4)?;
    let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    Some(match h[0] >> 6 {
        0 => Ok(20 + len),
        1 => Ok(4 + len.next_multiple_of(4)),
        _ => Err(()),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{LazyLock, Mutex};

    use stun_types::attribute::{AttributeType, RawAttribute};
    use stun_types::message::TransactionId;

    use super::*;

    const SECRET: &[u8] = b"s3cret";
    const REALM: &str = "kube.test";
    /// The Unix time of "now" in these tests; REST usernames expire an hour later.
    const T0: u64 = 1_700_000_000;
    static BASE: LazyLock<Instant> = LazyLock::new(Instant::now);

    #[derive(Default)]
    struct Counts {
        refused: Mutex<Vec<&'static str>>,
        dropped: Mutex<u32>,
    }

    impl Counts {
        fn refused(&self) -> Vec<&'static str> {
            self.refused.lock().unwrap().clone()
        }
    }

    impl Meter for Counts {
        fn refused(&self, reason: &'static str) {
            self.refused.lock().unwrap().push(reason);
        }
        fn relayed(&self, _out: bool, _bytes: usize) {}
        fn dropped(&self) {
            *self.dropped.lock().unwrap() += 1;
        }
        fn allocations(&self, _live: usize) {}
    }

    fn settings() -> Settings {
        Settings {
            realm: REALM.into(),
            secret: SECRET.into(),
            max_allocations: 100,
            max_per_user: 10,
            bytes_per_sec: 1 << 20,
            max_lifetime: Duration::from_secs(3600),
        }
    }

    fn server_with(s: Settings, allow: &[&str]) -> (Server<u32>, Arc<Counts>) {
        let counts = Arc::new(Counts::default());
        let allow: Vec<ipnet::IpNet> = allow.iter().map(|a| a.parse().unwrap()).collect();
        let policy = PeerPolicy::new(&allow, &["203.0.113.7".parse().unwrap()]);
        (Server::new(s, policy, false, counts.clone()), counts)
    }

    fn server() -> (Server<u32>, Arc<Counts>) {
        server_with(settings(), &[])
    }

    fn at(secs: u64) -> Now {
        Now {
            at: *BASE + Duration::from_secs(secs),
            unix: T0 + secs,
        }
    }

    fn udp(port: u16) -> Client {
        Client {
            transport: Transport::Udp,
            addr: SocketAddr::from(([198, 51, 100, 1], port)),
            conn: 0,
        }
    }

    fn user(name: &str) -> String {
        format!("{}:{name}", T0 + 3600)
    }

    fn key(user: &str, secret: &[u8]) -> IntegrityKey {
        let password = signal::ice::password(secret, user);
        LongTermKeyCredentials::new(user.into(), password, REALM.into())
            .make_key(IntegrityAlgorithm::Sha1)
    }

    /// A request; `attrs` add its own attributes.
    fn request(
        method: stun_types::message::Method,
        attrs: impl FnOnce(&mut MessageWriteVec),
    ) -> Vec<u8> {
        let mut w = Message::builder_request(method, MessageWriteVec::new());
        attrs(&mut w);
        w.finish()
    }

    /// A request with long-term credentials of `user` under `secret` and `nonce`.
    fn signed(
        method: stun_types::message::Method,
        user: &str,
        secret: &[u8],
        nonce: &str,
        attrs: impl FnOnce(&mut MessageWriteVec),
    ) -> Vec<u8> {
        let mut w = Message::builder_request(method, MessageWriteVec::new());
        attrs(&mut w);
        w.add_attribute(&Username::new(user).unwrap()).unwrap();
        w.add_attribute(&Realm::new(REALM).unwrap()).unwrap();
        w.add_attribute(&Nonce::new(nonce).unwrap()).unwrap();
        w.add_message_integrity_with_key(&key(user, secret), IntegrityAlgorithm::Sha1)
            .unwrap();
        w.finish()
    }

    fn udp_transport(w: &mut MessageWriteVec) {
        w.add_attribute(&RequestedTransport::new(RequestedTransport::UDP))
            .unwrap();
    }

    fn peer(w: &mut MessageWriteVec, addr: &str) {
        let txid = w.transaction_id();
        w.add_attribute(&XorPeerAddress::new(addr.parse().unwrap(), txid))
            .unwrap();
    }

    /// The class and error code of a reply.
    fn code(reply: &[u8]) -> Option<u16> {
        let m = Message::from_bytes(reply).unwrap();
        match m.class() {
            MessageClass::Error => Some(m.attribute::<ErrorCode>().unwrap().code()),
            _ => None,
        }
    }

    fn reply(step: Step<u32>) -> Vec<u8> {
        step.reply.expect("an answer")
    }

    /// The nonce of a first, unauthenticated Allocate's 401.
    fn nonce(s: &mut Server<u32>, client: Client, now: Now) -> String {
        let r = reply(s.on_client(client, &request(ALLOCATE, udp_transport), now));
        assert_eq!(code(&r), Some(401));
        let m = Message::from_bytes(&r).unwrap();
        assert_eq!(m.attribute::<Realm>().unwrap().realm(), REALM);
        assert!(
            !m.has_attribute(MessageIntegrity::TYPE),
            "a challenge has no key"
        );
        m.attribute::<Nonce>().unwrap().nonce().to_owned()
    }

    /// Allocates for `name` at `client`; the relay handle is the client's port.
    fn allocate(s: &mut Server<u32>, client: Client, name: &str, now: Now) -> Vec<u8> {
        let nonce = nonce(s, client, now);
        let req = signed(ALLOCATE, &user(name), SECRET, &nonce, udp_transport);
        let step = s.on_client(client, &req, now);
        let Action::Bind { id, .. } = step.action else {
            return reply(step);
        };
        assert!(step.reply.is_none());
        let relayed = SocketAddr::from(([203, 0, 113, 7], client.addr.port()));
        s.allocated(
            id,
            &req,
            Some((u32::from(client.addr.port()), relayed)),
            None,
            now,
        )
        .expect("an answer")
    }

    /// An authenticated request of `name` at `client`, with a fresh nonce.
    fn ask(
        s: &mut Server<u32>,
        client: Client,
        name: &str,
        method: stun_types::message::Method,
        now: Now,
        attrs: impl FnOnce(&mut MessageWriteVec),
    ) -> Step<u32> {
        let nonce = s.nonce(now);
        s.on_client(
            client,
            &signed(method, &user(name), SECRET, &nonce, attrs),
            now,
        )
    }

    fn assert_signed(reply: &[u8], name: &str) {
        let m = Message::from_bytes(reply).unwrap();
        m.validate_integrity_with_key(&key(&user(name), SECRET))
            .expect("signed with the user's key");
    }

    #[test]
    fn allocate_answers_with_the_relayed_address_and_retransmissions_alike() {
        let (mut s, counts) = server();
        let c = udp(5000);
        let r = allocate(&mut s, c, "alice", at(0));
        assert_eq!(code(&r), None, "success");
        assert_signed(&r, "alice");
        let m = Message::from_bytes(&r).unwrap();
        let relayed = m.attribute::<XorRelayedAddress>().unwrap();
        assert_eq!(
            relayed.addr(m.transaction_id()),
            "203.0.113.7:5000".parse().unwrap()
        );
        assert_eq!(m.attribute::<Lifetime>().unwrap().seconds(), 600);
        assert_eq!(
            m.attribute::<XorMappedAddress>()
                .unwrap()
                .addr(m.transaction_id()),
            c.addr
        );
        assert!(
            counts.refused().is_empty(),
            "the first challenge is not a refusal"
        );

        // The same Allocate again (a lost answer) gets the same answer; another one 437.
        let nonce = s.nonce(at(1));
        let again = signed(ALLOCATE, &user("alice"), SECRET, &nonce, udp_transport);
        let r = reply(s.on_client(c, &again, at(1)));
        assert_eq!(code(&r), Some(437));
        assert_signed(&r, "alice");
    }

    #[test]
    fn wrong_expired_or_foreign_credentials_get_401_with_a_challenge() {
        let (mut s, counts) = server();
        let c = udp(5000);
        let n = nonce(&mut s, c, at(0));
        let expired = format!("{}:bob", T0 - 1);
        for req in [
            signed(ALLOCATE, &user("bob"), b"wrong", &n, udp_transport),
            signed(ALLOCATE, &expired, SECRET, &n, udp_transport),
            signed(ALLOCATE, "bob", SECRET, &n, udp_transport),
        ] {
            let r = reply(s.on_client(c, &req, at(0)));
            assert_eq!(code(&r), Some(401));
            let m = Message::from_bytes(&r).unwrap();
            assert_eq!(m.attribute::<Realm>().unwrap().realm(), REALM);
            assert!(m.has_attribute(Nonce::TYPE));
            assert!(!m.has_attribute(MessageIntegrity::TYPE));
        }
        assert_eq!(counts.refused(), ["bad-credentials"; 3]);
    }

    #[test]
    fn stale_or_forged_nonces_get_438_with_a_new_one() {
        let (mut s, counts) = server();
        let c = udp(5000);
        let old = nonce(&mut s, c, at(0));
        let later = at(NONCE_LIFETIME + 1);
        let r = reply(s.on_client(
            c,
            &signed(ALLOCATE, &user("bob"), SECRET, &old, udp_transport),
            later,
        ));
        assert_eq!(code(&r), Some(438));
        let fresh = Message::from_bytes(&r)
            .unwrap()
            .attribute::<Nonce>()
            .unwrap()
            .nonce()
            .to_owned();
        assert_ne!(fresh, old);
        let (expiry, _) = old.split_once('-').unwrap();
        for forged in [
            format!("{expiry}-{}", "00".repeat(12)),
            "ffffffffff-00".into(),
            "x".into(),
        ] {
            let r = reply(s.on_client(
                c,
                &signed(ALLOCATE, &user("bob"), SECRET, &forged, udp_transport),
                at(0),
            ));
            assert_eq!(code(&r), Some(438), "{forged}");
        }
        assert_eq!(counts.refused(), ["stale-nonce"; 4]);
    }

    #[test]
    fn refused_or_malformed_peers_get_signed_403_or_400() {
        let (mut s, counts) = server();
        let c = udp(5000);
        allocate(&mut s, c, "alice", at(0));
        for (addr, reason) in [
            ("127.0.0.1:9", "loopback"),
            ("10.0.0.1:9", "private"),
            ("169.254.169.254:80", "link-local"),
            ("203.0.113.7:9", "own-address"),
            ("[::ffff:127.0.0.1]:9", "loopback"),
            ("[::1]:9", "loopback"),
        ] {
            for method in [CREATE_PERMISSION, CHANNEL_BIND] {
                let r = reply(ask(&mut s, c, "alice", method, at(1), |w| {
                    w.add_attribute(&ChannelNumber::new(0x4000)).unwrap();
                    peer(w, addr);
                }));
                assert_eq!(code(&r), Some(403), "{addr}");
                assert_signed(&r, "alice");
                assert_eq!(counts.refused().pop(), Some(reason));
            }
        }
        // An XOR-PEER-ADDRESS that is not exactly one address: 5 bytes of IPv4 would read
        // as 0.0.0.0 to a lenient parser.
        for value in [
            vec![0, 1, 0x21, 0x12, 1],
            vec![0, 1, 0x21, 0x12, 1, 2, 3, 4, 5],
            vec![0, 2, 0x21, 0x12, 1, 2, 3, 4],
            vec![0, 3, 0x21, 0x12, 1, 2, 3, 4],
            vec![],
        ] {
            let r = reply(ask(&mut s, c, "alice", CREATE_PERMISSION, at(1), |w| {
                w.add_attribute(&RawAttribute::new(XorPeerAddress::TYPE, &value))
                    .unwrap();
            }));
            assert_eq!(code(&r), Some(400), "{value:?}");
            assert_signed(&r, "alice");
        }
        // One bad peer among good ones refuses the whole request.
        let r = reply(ask(&mut s, c, "alice", CREATE_PERMISSION, at(1), |w| {
            peer(w, "8.8.8.8:9");
            peer(w, "10.1.1.1:9");
        }));
        assert_eq!(code(&r), Some(403));
        let r = reply(ask(&mut s, c, "alice", CREATE_PERMISSION, at(1), |w| {
            peer(w, "[2001:4860::1]:9")
        }));
        assert_eq!(code(&r), Some(443), "an IPv6 peer of an IPv4 relay");
        let r = reply(ask(&mut s, c, "alice", CREATE_PERMISSION, at(1), |w| {
            peer(w, "8.8.8.8:9")
        }));
        assert_eq!(code(&r), None);
    }

    fn data_indication(to: &str, data: &[u8]) -> Vec<u8> {
        let mut w = Message::builder_indication(SEND, MessageWriteVec::new());
        let txid = w.transaction_id();
        w.add_attribute(&XorPeerAddress::new(to.parse().unwrap(), txid))
            .unwrap();
        w.add_attribute(&Data::new(data)).unwrap();
        w.finish()
    }

    fn relayed(step: &Step<u32>, packet: &[u8]) -> Option<(SocketAddr, Vec<u8>)> {
        match &step.action {
            Action::Relay { peer, range, .. } => Some((*peer, packet[range.clone()].to_vec())),
            _ => None,
        }
    }

    #[test]
    fn data_flows_only_where_a_permission_is() {
        let (mut s, counts) = server();
        let c = udp(5000);
        allocate(&mut s, c, "alice", at(0));
        let send = data_indication("8.8.8.8:53", b"hello");
        let step = s.on_client(c, &send, at(1));
        assert!(relayed(&step, &send).is_none(), "no permission yet");
        assert!(
            s.on_peer(1, "8.8.8.8:53".parse().unwrap(), b"hi", at(1))
                .is_none()
        );

        ask(&mut s, c, "alice", CREATE_PERMISSION, at(1), |w| {
            peer(w, "8.8.8.8:9")
        });
        let step = s.on_client(c, &send, at(2));
        assert_eq!(
            relayed(&step, &send),
            Some(("8.8.8.8:53".parse().unwrap(), b"hello".to_vec()))
        );
        // A permission is for an IP address, any port; back to the client as DATA.
        let (to, packet) = s
            .on_peer(1, "8.8.8.8:1234".parse().unwrap(), b"hi", at(2))
            .unwrap();
        assert_eq!(to, c);
        let m = Message::from_bytes(&packet).unwrap();
        assert!(m.has_method(DATA));
        assert_eq!(m.attribute::<Data>().unwrap().data(), b"hi");
        assert!(
            s.on_peer(1, "8.8.4.4:53".parse().unwrap(), b"hi", at(2))
                .is_none()
        );

        // A Send indication to a refused peer is dropped and counted, never relayed.
        let step = s.on_client(c, &data_indication("10.0.0.1:53", b"x"), at(2));
        assert!(matches!(step.action, Action::None) && step.reply.is_none());
        assert_eq!(counts.refused().pop(), Some("private"));

        // Permissions last five minutes unless refreshed.
        assert!(relayed(&s.on_client(c, &send, at(302)), &send).is_none());
    }

    #[test]
    fn channels_carry_data_both_ways_and_stay_with_their_peer() {
        let (mut s, _) = server();
        let c = Client {
            transport: Transport::Tcp,
            conn: 7,
            ..udp(5000)
        };
        allocate(&mut s, c, "alice", at(0));
        let bind = |s: &mut Server<u32>, number: u16, to: &str| {
            code(&reply(ask(s, c, "alice", CHANNEL_BIND, at(1), |w| {
                w.add_attribute(&ChannelNumber::new(number)).unwrap();
                peer(w, to);
            })))
        };
        assert_eq!(
            bind(&mut s, 0x3FFF, "8.8.8.8:53"),
            Some(400),
            "below the range"
        );
        assert_eq!(bind(&mut s, 0x4001, "8.8.8.8:53"), None);
        assert_eq!(bind(&mut s, 0x4001, "8.8.8.8:53"), None, "a refresh");
        assert_eq!(
            bind(&mut s, 0x4001, "8.8.4.4:53"),
            Some(400),
            "another peer"
        );
        assert_eq!(
            bind(&mut s, 0x4002, "8.8.8.8:53"),
            Some(400),
            "another number"
        );

        let data = [0x40, 0x01, 0, 3, b'a', b'b', b'c', 0];
        let step = s.on_client(c, &data, at(2));
        assert_eq!(
            relayed(&step, &data),
            Some(("8.8.8.8:53".parse().unwrap(), b"abc".to_vec()))
        );
        for bad in [
            &[0x40, 0x02, 0, 1, 0][..],
            &[0x40, 0x01, 0, 9, 1, 2][..],
            &[0x40][..],
        ] {
            assert!(
                relayed(&s.on_client(c, bad, at(2)), bad).is_none(),
                "{bad:?}"
            );
        }
        // Back over a stream: ChannelData padded to four bytes.
        let (_, packet) = s
            .on_peer(1, "8.8.8.8:53".parse().unwrap(), b"xyz", at(2))
            .unwrap();
        assert_eq!(packet, [0x40, 0x01, 0, 3, b'x', b'y', b'z', 0]);
        // Another port of the same host has the permission but not the channel.
        let (_, packet) = s
            .on_peer(1, "8.8.8.8:54".parse().unwrap(), b"xyz", at(2))
            .unwrap();
        assert!(Message::from_bytes(&packet).unwrap().has_method(DATA));
    }

    #[test]
    fn allocations_are_bounded_per_user_and_in_total() {
        let (mut s, counts) = server_with(
            Settings {
                max_per_user: 1,
                max_allocations: 2,
                ..settings()
            },
            &[],
        );
        assert_eq!(code(&allocate(&mut s, udp(1), "alice", at(0))), None);
        let r = allocate(&mut s, udp(2), "alice", at(0));
        assert_eq!(code(&r), Some(486));
        assert_signed(&r, "alice");
        assert_eq!(code(&allocate(&mut s, udp(3), "bob", at(0))), None);
        assert_eq!(code(&allocate(&mut s, udp(4), "carol", at(0))), Some(508));
        assert_eq!(counts.refused(), ["user-quota", "total-quota"]);
        // Ending an allocation frees its place.
        let step = ask(&mut s, udp(1), "alice", REFRESH, at(1), |w| {
            w.add_attribute(&Lifetime::new(0)).unwrap();
        });
        assert!(matches!(step.action, Action::Release(1)));
        assert_eq!(code(&allocate(&mut s, udp(2), "alice", at(1))), None);
        // So does the end of a stream client's connection.
        let t = Client {
            transport: Transport::Tls,
            conn: 1,
            ..udp(9)
        };
        assert_eq!(s.client_closed(t), None);
        assert_eq!(s.client_closed(udp(2)), Some(2));
    }

    #[test]
    fn lifetimes_are_capped_and_allocations_expire() {
        let (mut s, _) = server_with(
            Settings {
                max_lifetime: Duration::from_secs(900),
                ..settings()
            },
            &[],
        );
        let c = udp(5000);
        allocate(&mut s, c, "alice", at(0));
        let r = reply(ask(&mut s, c, "alice", REFRESH, at(1), |w| {
            w.add_attribute(&Lifetime::new(86_400)).unwrap();
        }));
        let m = Message::from_bytes(&r).unwrap();
        assert_eq!(m.attribute::<Lifetime>().unwrap().seconds(), 900);
        assert!(s.expire(at(900)).is_empty());
        assert_eq!(s.expire(at(901)), [5000]);
        let r = reply(ask(&mut s, c, "alice", REFRESH, at(902), |_| {}));
        assert_eq!(code(&r), Some(437), "gone");
    }

    #[test]
    fn a_rotated_secret_drops_no_live_user() {
        let (mut s, _) = server();
        let c = udp(5000);
        allocate(&mut s, c, "alice", at(0));
        s.set_settings(Settings {
            secret: b"new".as_slice().into(),
            ..settings()
        });
        // Alice's credentials (under the old secret) keep working, on her allocation and
        // for another one; a new user's do not.
        assert_eq!(
            code(&reply(ask(&mut s, c, "alice", REFRESH, at(1), |_| {}))),
            None
        );
        assert_eq!(code(&allocate(&mut s, udp(5001), "alice", at(1))), None);
        assert_eq!(code(&allocate(&mut s, udp(5002), "bob", at(1))), Some(401));
    }

    #[test]
    fn bandwidth_is_bounded_per_allocation() {
        let (mut s, counts) = server_with(
            Settings {
                bytes_per_sec: 1000,
                ..settings()
            },
            &[],
        );
        let c = udp(5000);
        allocate(&mut s, c, "alice", at(0));
        ask(&mut s, c, "alice", CREATE_PERMISSION, at(0), |w| {
            peer(w, "8.8.8.8:9")
        });
        let send = data_indication("8.8.8.8:53", &[7; 800]);
        assert!(relayed(&s.on_client(c, &send, at(0)), &send).is_some());
        assert!(relayed(&s.on_client(c, &send, at(0)), &send).is_none());
        assert_eq!(*counts.dropped.lock().unwrap(), 1);
        assert!(
            relayed(&s.on_client(c, &send, at(1)), &send).is_some(),
            "refilled"
        );
    }

    #[test]
    fn unknown_required_attributes_get_420_and_binding_is_answered() {
        let (mut s, _) = server();
        let c = udp(5000);
        let step = ask(&mut s, c, "alice", ALLOCATE, at(0), |w| {
            udp_transport(w);
            w.add_attribute(&RawAttribute::new(
                AttributeType::new(0x0030),
                &[1, 2, 3, 4],
            ))
            .unwrap();
        });
        let r = reply(step);
        assert_eq!(code(&r), Some(420));
        let m = Message::from_bytes(&r).unwrap();
        assert!(
            m.attribute::<UnknownAttributes>()
                .unwrap()
                .has_attribute(AttributeType::new(0x0030))
        );
        let r = reply(s.on_client(c, &request(BINDING, |_| {}), at(0)));
        let m = Message::from_bytes(&r).unwrap();
        assert_eq!(
            m.attribute::<XorMappedAddress>()
                .unwrap()
                .addr(m.transaction_id()),
            c.addr
        );
        let r = reply(ask(&mut s, c, "alice", ALLOCATE, at(0), |w| {
            w.add_attribute(&RequestedTransport::new(RequestedTransport::TCP))
                .unwrap();
        }));
        assert_eq!(code(&r), Some(442));
    }

    #[test]
    fn requests_on_another_users_allocation_get_441() {
        let (mut s, _) = server();
        let c = udp(5000);
        allocate(&mut s, c, "alice", at(0));
        let r = reply(ask(&mut s, c, "mallory", CREATE_PERMISSION, at(1), |w| {
            peer(w, "8.8.8.8:9")
        }));
        assert_eq!(code(&r), Some(441));
    }

    /// Finding `turn-top-bits` (SECURITY.md): a signed CreatePermission to 127.0.0.1 with
    /// a top bit of its type set is neither STUN nor ChannelData, and installs nothing.
    #[test]
    fn packets_with_the_top_bits_set_are_dropped() {
        let (mut s, counts) = server();
        let c = udp(5000);
        allocate(&mut s, c, "alice", at(0));
        for top in [0x80, 0x40, 0xC0] {
            let mut req = signed(
                CREATE_PERMISSION,
                &user("alice"),
                SECRET,
                &s.nonce(at(1)),
                |w| peer(w, "127.0.0.1:9"),
            );
            req[0] |= top;
            let step = s.on_client(c, &req, at(1));
            assert!(
                step.reply.is_none() && matches!(step.action, Action::None),
                "{top:#x}"
            );
        }
        // 0x40.. reads as ChannelData on a channel that is not bound: dropped uncounted.
        assert_eq!(counts.refused(), ["malformed"; 2]);
        let send = data_indication("127.0.0.1:9", b"x");
        assert!(relayed(&s.on_client(c, &send, at(1)), &send).is_none());
    }

    #[test]
    fn stream_frames_are_delimited_by_their_headers() {
        assert_eq!(frame_len(&[0, 1]), None);
        assert_eq!(frame_len(&[0, 1, 0, 8]), Some(Ok(28)));
        assert_eq!(
            frame_len(&[0x40, 0, 0, 5]),
            Some(Ok(12)),
            "ChannelData padded"
        );
        assert_eq!(frame_len(&[0x40, 0, 0, 8]), Some(Ok(12)));
        assert_eq!(frame_len(&[0x80, 0, 0, 0]), Some(Err(())));
        assert_eq!(frame_len(&[0xC0, 0, 0, 0]), Some(Err(())));
    }

    proptest::proptest! {
        /// Whatever a client sends (random bytes, or a valid request with bytes changed)
        /// is answered or dropped, never a panic, and never relayed without a permission.
        #[test]
        fn hostile_packets_never_panic(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            flips in proptest::collection::vec((0usize..200, proptest::num::u8::ANY), 0..4),
        ) {
            let (mut s, _) = server();
            let c = udp(5000);
            allocate(&mut s, c, "alice", at(0));
            let _ = s.on_client(c, &bytes, at(1));
            let mut req = signed(CREATE_PERMISSION, &user("alice"), SECRET, &s.nonce(at(1)), |w| {
                peer(w, "127.0.0.1:9")
            });
            for (i, b) in flips {
                let n = req.len();
                req[i % n] ^= b;
            }
            let _ = s.on_client(c, &req, at(1));
            let _ = frame_len(&bytes);
            let send = data_indication("127.0.0.1:9", b"x");
            let step = s.on_client(c, &send, at(2));
            proptest::prop_assert!(relayed(&step, &send).is_none());
        }
    }

    #[test]
    fn transaction_ids_are_random() {
        assert_ne!(TransactionId::generate(), TransactionId::generate());
    }
}
