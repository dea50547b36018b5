//! The `dns` service: authoritative answers for `domain` on UDP and TCP. `zone`, `answer`,
//! `rrl` and `records` are pure; this file holds the handle other services change records
//! through (persisted in `<data_dir>/dns/records.json`) and the socket drivers.
//!
//! What a remote peer can hold: UDP keeps no per-peer state here (RRL's table and the answer
//! cache are bounded, see `rrl` and `cache`). TCP holds at most `tcp_max_connections` connections; each ends after
//! `tcp_max_queries` queries, or when a read or a write waits longer than
//! `tcp_idle_timeout_secs` (a peer that stops reading its answers is dropped, freeing its
//! slot), so one lives at most `tcp_max_queries` × 3 × `tcp_idle_timeout_secs`.

pub mod answer;
pub mod cache;
pub mod records;
pub mod rrl;
pub mod secondary;
pub mod transfer;
pub mod zone;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use config::Problem;
use hickory_proto::rr::Name;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::answer::{Dropped, Transport};
use self::records::RecordSpec;
use self::rrl::{Rrl, Verdict};
use self::zone::{Zone, ZoneInput};
use crate::datadir;
use crate::metrics::Metrics;
use crate::service::{Context, Service, StartError, Started, Tasks};

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot listen on {addr} (dns {what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Zone(#[from] zone::ZoneError),
    #[error("record {0}")]
    Record(#[from] records::RecordError),
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{0}")]
    Store(#[from] datadir::DataDirError),
    #[error("this KUBE is a secondary of {0} (dns.primary): change records at the primary")]
    Secondary(SocketAddr),
}

/// What `<data_dir>/dns/secondary.json` holds: the zone last transferred from the primary
/// (each record in wire form, base64), served at once after a restart.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Transferred {
    origin: String,
    records: Vec<String>,
}

/// A secondary's link to its primary: who it is, and how a NOTIFY wakes the check.
#[derive(Clone)]
struct Following {
    follow: secondary::Follow,
    kick: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Following {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Following")
            .field("primary", &self.follow.primary)
            .finish_non_exhaustive()
    }
}

/// What `<data_dir>/dns/records.json` holds: records added at run time and the last serial.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Stored {
    serial: u32,
    records: Vec<RecordSpec>,
}

#[derive(Debug)]
struct State {
    domain: String,
    section: config::Dns,
    apps: Vec<String>,
    stored: Stored,
}

/// The zone being served and the answers remembered for it.
#[derive(Debug)]
pub struct Served {
    pub zone: Arc<Zone>,
    pub cache: cache::Cache<prometheus::IntCounter>,
}

/// Changes the zone while KUBE runs; every change is on disk before it returns.
#[derive(Clone, Debug)]
pub struct DnsHandle {
    served: Arc<RwLock<Arc<Served>>>,
    state: Arc<Mutex<State>>,
    path: PathBuf,
    metrics: Arc<Metrics>,
    /// The serial of each zone published, for the NOTIFY task.
    serials: Arc<tokio::sync::watch::Sender<u32>>,
    /// With `dns.primary`: the primary this KUBE serves the zone of.
    following: Option<Following>,
    /// The last serial steps, for IXFR.
    journal: Arc<Mutex<transfer::Journal>>,
}

/// Who may transfer the zone and who is told of changes (`dns.tsig_keys`,
/// `dns.secondaries`), as the transfer code needs it.
#[derive(Clone, Default)]
struct Xfr {
    keys: transfer::Keys,
    allowed: Vec<transfer::Allowed>,
}

impl Xfr {
    /// From a section `check` accepted (a key that does not parse leaves transfers off).
    fn new(section: &config::Dns) -> Xfr {
        let Ok(keys) = transfer::Keys::new(&section.tsig_keys) else {
            return Xfr::default();
        };
        let allowed = section
            .secondaries
            .iter()
            .filter_map(|s| {
                Some(transfer::Allowed {
                    ip: s.address.ip(),
                    key: transfer::key_name(&s.key).ok()?,
                })
            })
            .collect();
        Xfr { keys, allowed }
    }
}

impl std::fmt::Debug for Xfr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Xfr")
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

/// The zone as `kube status` shows it.
#[derive(Debug, Serialize)]
pub struct DnsStatus {
    pub zone: String,
    pub serial: u32,
    pub records: usize,
    pub runtime_records: Vec<RecordSpec>,
    /// Every record served, in presentation form.
    pub zone_records: Vec<zone::Listed>,
}

impl DnsHandle {
    pub fn zone(&self) -> Arc<Zone> {
        self.served().zone.clone()
    }

    pub fn served(&self) -> Arc<Served> {
        self.served
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn status(&self) -> DnsStatus {
        let z = self.zone();
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        DnsStatus {
            zone: z.origin().to_string(),
            serial: z.serial(),
            records: z.record_count(),
            runtime_records: state.stored.records.clone(),
            zone_records: z.listing(),
        }
    }

    /// Adds a record (same name, type and value twice is one record).
    pub fn add(&self, spec: RecordSpec) -> Result<(), DnsError> {
        self.primary_only()?;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let origin = origin(&state.domain)?;
        let parsed = records::parse(&spec, &origin, state.section.ttl)?;
        let key = record_key(&parsed);
        let exists = state.stored.records.iter().any(|r| {
            records::parse(r, &origin, state.section.ttl)
                .map(|p| record_key(&p) == key)
                .unwrap_or(false)
        });
        if exists {
            return Ok(());
        }
        let mut next = state.stored.clone();
        next.records.push(spec);
        self.commit(&mut state, next)
    }

    /// Removes the records of `name` and `kind` (those with `value` only, when given).
    /// Returns how many were removed.
    pub fn remove(&self, name: &str, kind: &str, value: Option<&str>) -> Result<usize, DnsError> {
        self.primary_only()?;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let origin = origin(&state.domain)?;
        let owner = records::owner(name, &origin)?;
        let kind = kind.to_ascii_uppercase();
        let wanted = value.map(|v| RecordSpec {
            name: name.into(),
            kind: kind.clone(),
            value: v.into(),
            ttl: None,
        });
        let wanted = match &wanted {
            Some(w) => Some(record_key(&records::parse(w, &origin, state.section.ttl)?)),
            None => None,
        };
        let mut next = state.stored.clone();
        next.records.retain(|r| {
            let Ok(p) = records::parse(r, &origin, state.section.ttl) else {
                return true;
            };
            let same_rrset = p.name == owner && p.record_type().to_string() == kind;
            let matches = same_rrset && wanted.as_ref().is_none_or(|w| &record_key(&p) == w);
            !matches
        });
        let removed = state.stored.records.len() - next.records.len();
        if removed > 0 {
            self.commit(&mut state, next)?;
        }
        Ok(removed)
    }

    /// The published apps, for `app_hosts: per_app`.
    pub fn set_apps(&self, apps: Vec<String>) -> Result<(), DnsError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.apps == apps {
            return Ok(());
        }
        let old = std::mem::replace(&mut state.apps, apps);
        if self.following.is_some() {
            // The primary's zone names the apps.
            return Ok(());
        }
        let next = state.stored.clone();
        let result = self.commit(&mut state, next);
        if result.is_err() {
            state.apps = old;
        }
        result
    }

    /// A new `dns` section (SIGHUP). Listener and limit changes need a restart; records,
    /// addresses, name servers and TTLs apply now. On error the old zone stays.
    pub fn reload(&self, section: config::Dns) -> Result<(), DnsError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.section == section {
            return Ok(());
        }
        let old = std::mem::replace(&mut state.section, section);
        if self.following.is_some() {
            // A secondary serves what its primary transfers (a new `dns.primary` or key
            // takes a restart).
            return Ok(());
        }
        let next = state.stored.clone();
        let result = self.commit(&mut state, next);
        if result.is_err() {
            state.section = old;
        }
        result
    }

    /// Builds the zone for `next` with a higher serial, writes it to disk, then serves it.
    fn commit(&self, state: &mut State, mut next: Stored) -> Result<(), DnsError> {
        next.serial = next_serial(state.stored.serial);
        let zone = Zone::build(&ZoneInput {
            domain: &state.domain,
            section: &state.section,
            apps: &state.apps,
            runtime: &next.records,
            serial: next.serial,
        })?;
        let json = serde_json::to_vec_pretty(&next).map_err(|e| DnsError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        datadir::write_atomic(&self.path, &json)?;
        state.stored = next;
        self.publish(zone);
        Ok(())
    }

    /// Whether this KUBE follows a primary (`dns.primary`): it cannot publish records, so
    /// it cannot answer DNS-01 either.
    pub fn is_secondary(&self) -> bool {
        self.following.is_some()
    }

    /// Changes to records are the primary's, when this KUBE follows one.
    fn primary_only(&self) -> Result<(), DnsError> {
        match &self.following {
            Some(f) => Err(DnsError::Secondary(f.follow.primary)),
            None => Ok(()),
        }
    }

    /// Serves a zone transferred from the primary, on disk first.
    fn take_transfer(&self, zone: Zone) -> Result<(), DnsError> {
        use base64::Engine;
        use hickory_proto::serialize::binary::BinEncodable;
        let path = self.path.with_file_name("secondary.json");
        let records = zone
            .records()
            .filter(|r| r.record_type() != hickory_proto::rr::RecordType::SOA)
            .map(|r| r.to_bytes());
        let records: Result<Vec<String>, _> = std::iter::once(zone.soa().to_bytes())
            .chain(records)
            .map(|b| b.map(|b| base64::engine::general_purpose::STANDARD.encode(b)))
            .collect();
        let t = Transferred {
            origin: zone.origin().to_string(),
            records: records.map_err(|e| DnsError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?,
        };
        let json = serde_json::to_vec(&t).map_err(|e| DnsError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        datadir::write_atomic(&path, &json)?;
        self.publish(zone);
        Ok(())
    }

    /// Notes a successful check of the primary (the file's time), so a restart counts the
    /// SOA expire from it rather than from the start.
    fn checked(&self) {
        let path = self.path.with_file_name("secondary.json");
        if let Ok(f) = std::fs::File::options().write(true).open(&path) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    /// How long ago the primary was last checked successfully (as `checked` noted it).
    fn since_checked(&self) -> Option<Duration> {
        let path = self.path.with_file_name("secondary.json");
        let at = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
        at.elapsed().ok()
    }

    /// Stops serving the zone (a secondary's expired): SERVFAIL until a transfer.
    fn withdraw(&self, origin: &Name) {
        self.publish(Zone::pending(origin));
    }

    /// A NOTIFY for a secondary: the primary's is acknowledged and wakes the check.
    fn notified(&self, packet: &[u8], peer: std::net::IpAddr) -> Option<Vec<u8>> {
        let f = self.following.as_ref()?;
        let now = crate::service::unix_now();
        let follow = &f.follow;
        match secondary::notified(
            packet,
            peer,
            follow.primary.ip(),
            &follow.origin,
            &follow.signer,
            now,
        ) {
            secondary::Notified::NotOne => None,
            secondary::Notified::Accept(bytes) => {
                tracing::debug!(%peer, "dns: NOTIFY from the primary");
                f.kick.notify_one();
                Some(bytes)
            }
            secondary::Notified::Refuse(bytes, why) => {
                tracing::info!(%peer, why, "dns: NOTIFY refused");
                Some(bytes)
            }
        }
    }

    /// Waits until every secondary in `dns.secondaries` answers the serial being served
    /// now (or a newer one), asking each for its SOA every 100 ms, for at most `within`;
    /// returns those that did not. DNS-01 waits on this before the CA is told to look, so
    /// whichever authoritative server the CA asks has the record.
    pub async fn propagated(&self, within: Duration) -> Vec<SocketAddr> {
        let zone = self.zone();
        let serial = zone.serial();
        let origin = Name::from(zone.origin().clone());
        let mut waiting: Vec<SocketAddr> = {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state
                .section
                .secondaries
                .iter()
                .map(|s| s.address)
                .collect()
        };
        let deadline = Instant::now() + within;
        while !waiting.is_empty() {
            let mut still = Vec::new();
            for addr in waiting {
                let theirs = serial_at(addr, &origin).await;
                if !theirs.is_some_and(|t| t == serial || secondary::newer(t, serial)) {
                    still.push(addr);
                }
            }
            waiting = still;
            if waiting.is_empty() || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        waiting
    }

    /// Keys and secondaries as configured now.
    fn xfr(&self) -> Xfr {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.section.tsig_keys.is_empty() {
            Xfr::default()
        } else {
            Xfr::new(&state.section)
        }
    }

    /// A zone transfer, if `packet` asks for one (see [`transfer::transfer`]).
    fn transfer(&self, packet: &[u8], peer: std::net::IpAddr) -> transfer::Transfer {
        if !transfer::asks(packet) {
            return transfer::Transfer::NotOne;
        }
        let zone = self.zone();
        let xfr = self.xfr();
        let now = crate::service::unix_now();
        let journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        let t = transfer::transfer(&zone, &journal, packet, peer, &xfr.allowed, &xfr.keys, now);
        if let transfer::Transfer::Zone(m) = &t {
            tracing::info!(%peer, serial = zone.serial(), messages = m.len(), "dns zone transferred");
        }
        t
    }

    /// Serves `zone` (publishes are serialized: `commit` under the state lock, transfers
    /// and withdrawals by the one follow task). The journal notes the step first, without
    /// holding the served zone, so a transfer being encoded never stalls queries; secondaries
    /// hear of the serial once it is served.
    fn publish(&self, zone: Zone) {
        let serial = zone.serial();
        self.metrics.dns_zone_serial.set(i64::from(serial));
        self.metrics.dns_records.set(zone.record_count() as i64);
        let zone = Arc::new(zone);
        let old = self.zone();
        self.journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(&old, &zone);
        let served = Served {
            zone,
            cache: cache::Cache::default(),
        };
        *self.served.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(served);
        self.serials.send_replace(serial);
    }
}

fn origin(domain: &str) -> Result<Name, DnsError> {
    Name::from_ascii(format!("{}.", domain.trim_end_matches('.')))
        .map(|n| n.to_lowercase())
        .map_err(|e| {
            DnsError::Record(records::RecordError {
                field: "name",
                reason: e.to_string(),
            })
        })
}

fn record_key(r: &hickory_proto::rr::Record) -> (String, String, String) {
    (
        r.name.to_lowercase().to_string(),
        r.record_type().to_string(),
        r.data.to_string(),
    )
}

/// RFC 1982 serials: at least the clock (so a lost records.json still moves forward),
/// always more than the last one.
fn next_serial(last: u32) -> u32 {
    let now = crate::service::unix_now() as u32;
    if now > last {
        now
    } else {
        last.wrapping_add(1)
    }
}

/// Handles the `dns` service needs.
pub struct DnsDeps {
    pub metrics: Arc<Metrics>,
    pub apps: Vec<String>,
}

pub struct DnsService;

impl Service for DnsService {
    const NAME: &'static str = "dns";
    type Section = config::Dns;
    type Deps = DnsDeps;
    type Handle = DnsHandle;

    fn check(section: &config::Dns, cx: &Context) -> Vec<Problem> {
        let mut p = Vec::new();
        if !section.enabled {
            return p;
        }
        if section.max_udp_payload < 512 {
            p.push(Problem::new(
                "dns.max_udp_payload",
                "must be at least 512 (RFC 1035)",
            ));
        }
        if section.rrl.ipv4_prefix > 32 {
            p.push(Problem::new("dns.rrl.ipv4_prefix", "must be 0 to 32"));
        }
        if section.rrl.ipv6_prefix > 128 {
            p.push(Problem::new("dns.rrl.ipv6_prefix", "must be 0 to 128"));
        }
        if section.rrl.responses_per_second == 0 {
            p.push(Problem::new(
                "dns.rrl.responses_per_second",
                "must be at least 1 (or rrl.enabled: false)",
            ));
        }
        for (key, v) in [
            ("dns.tcp_max_connections", section.tcp_max_connections),
            ("dns.tcp_max_queries", section.tcp_max_queries),
        ] {
            if v == 0 {
                p.push(Problem::new(key, "must be at least 1"));
            }
        }
        if section.tcp_idle_timeout_secs == 0 {
            p.push(Problem::new(
                "dns.tcp_idle_timeout_secs",
                "must be at least 1",
            ));
        }
        if let Err(e) = Zone::build(&ZoneInput {
            domain: &cx.domain,
            section,
            apps: &[],
            runtime: &[],
            serial: 1,
        }) {
            p.push(Problem::new(e.path, e.reason));
        }
        if let Err((i, field, why)) = transfer::Keys::new(&section.tsig_keys) {
            p.push(Problem::new(format!("dns.tsig_keys[{i}].{field}"), why));
        }
        if let Some(primary) = &section.primary
            && !section.tsig_keys.iter().any(|k| k.name == primary.key)
        {
            p.push(Problem::new(
                "dns.primary.key",
                format!(
                    "{:?} is not the name of a key in dns.tsig_keys",
                    primary.key
                ),
            ));
        }
        for (i, s) in section.secondaries.iter().enumerate() {
            if !section.tsig_keys.iter().any(|k| k.name == s.key) {
                p.push(Problem::new(
                    format!("dns.secondaries[{i}].key"),
                    format!("{:?} is not the name of a key in dns.tsig_keys", s.key),
                ));
            }
        }
        p
    }

    async fn start(
        section: config::Dns,
        cx: &Context,
        deps: DnsDeps,
    ) -> Result<Started<DnsHandle>, StartError> {
        let path = cx.data_dir.join("dns").join("records.json");
        let stored: Stored = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| DnsError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stored::default(),
            Err(e) => {
                return Err(DnsError::Store(datadir::DataDirError::Io { path, source: e }).into());
            }
        };
        let (udp, tcp) = bind(section.listen).await?;
        let addr = udp.local_addr()?;
        let mut state = State {
            domain: cx.domain.clone(),
            section: section.clone(),
            apps: deps.apps,
            stored: stored.clone(),
        };
        let first = Zone::build(&ZoneInput {
            domain: &cx.domain,
            section: &section,
            apps: &[],
            runtime: &[],
            serial: 1,
        })?;
        let handle = DnsHandle {
            served: Arc::new(RwLock::new(Arc::new(Served {
                zone: Arc::new(first),
                cache: cache::Cache::default(),
            }))),
            state: Arc::new(Mutex::new(State {
                domain: String::new(),
                section: section.clone(),
                apps: Vec::new(),
                stored: Stored::default(),
            })),
            path,
            metrics: deps.metrics.clone(),
            serials: Arc::new(tokio::sync::watch::channel(0).0),
            following: following(&section, &cx.domain)?,
            journal: Arc::default(),
        };
        if let Some(f) = &handle.following {
            // A secondary serves its last transfer until the primary has a newer one.
            let zone = last_transfer(
                &handle.path.with_file_name("secondary.json"),
                &f.follow.origin,
            )
            .unwrap_or_else(|| Zone::pending(&f.follow.origin));
            handle.publish(zone);
        } else {
            // The first zone of this run: a new serial, so secondaries see restarts as
            // changes.
            handle.commit(&mut state, stored)?;
        }
        *handle.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
        // The zone built to check the section is no version anyone was served.
        handle
            .journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();

        let cancel = CancellationToken::new();
        let udp = Arc::new(udp);
        let rrl = section
            .rrl
            .enabled
            .then(|| Arc::new(Mutex::new(Rrl::new(&section.rrl))));
        let mut tasks = Tasks::new("dns", cancel.clone()).listening("dns", addr);
        // Two receivers on one socket keep both cores busy under load.
        for _ in 0..2 {
            tasks.spawn(serve_udp(
                udp.clone(),
                handle.clone(),
                rrl.clone(),
                section.max_udp_payload,
                cancel.clone(),
            ));
        }
        tasks.spawn(serve_tcp(
            tcp,
            handle.clone(),
            section.clone(),
            cancel.clone(),
        ));
        tasks.spawn(notify_secondaries(handle.clone(), cancel.clone()));
        if let Some(f) = handle.following.clone() {
            tasks.spawn(secondary::follow(
                handle.clone(),
                f.follow,
                f.kick,
                cancel.clone(),
            ));
        }
        tracing::info!(%addr, zone = %handle.zone().origin(), serial = handle.zone().serial(), "dns listening");
        Ok(Started {
            handle,
            running: Box::new(tasks),
        })
    }
}

/// The serial `addr` answers for `origin`'s SOA (one UDP query, half a second).
async fn serial_at(addr: SocketAddr, origin: &Name) -> Option<u32> {
    let id = rand::random::<u16>();
    let query = transfer::soa_query(origin, id)?;
    ask_udp(addr, &query, Duration::from_millis(500), |answer| {
        transfer::soa_serial(answer, id, origin)
    })
    .await
    .ok()
}

/// Sends `packet` to `to` over UDP and waits up to `wait` for an answer from `to` that
/// `accept` takes (others are ignored).
async fn ask_udp<T>(
    to: SocketAddr,
    packet: &[u8],
    wait: Duration,
    accept: impl Fn(&[u8]) -> Option<T>,
) -> std::io::Result<T> {
    let local: SocketAddr = if to.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.send_to(packet, to).await?;
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let (n, from) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
        if from == to
            && let Some(t) = accept(&buf[..n])
        {
            return Ok(t);
        }
    }
}

/// The primary this KUBE follows (`dns.primary`), with the key `check` accepted.
fn following(section: &config::Dns, domain: &str) -> Result<Option<Following>, DnsError> {
    let Some(p) = &section.primary else {
        return Ok(None);
    };
    let bad = |reason: String| DnsError::Corrupt {
        path: "dns.primary".into(),
        reason,
    };
    let keys = transfer::Keys::new(&section.tsig_keys).map_err(|(_, _, why)| bad(why))?;
    let signer = transfer::key_name(&p.key)
        .ok()
        .and_then(|n| keys.get(&n).cloned())
        .ok_or_else(|| bad(format!("no key {:?} in dns.tsig_keys", p.key)))?;
    Ok(Some(Following {
        follow: secondary::Follow {
            primary: p.address,
            signer,
            origin: origin(domain)?,
        },
        kick: Arc::new(tokio::sync::Notify::new()),
    }))
}

/// The zone in `secondary.json`, if it is there, whole, and of `origin`.
fn last_transfer(path: &std::path::Path, origin: &Name) -> Option<Zone> {
    use base64::Engine;
    use hickory_proto::serialize::binary::BinDecodable;
    let bytes = std::fs::read(path).ok()?;
    let t: Transferred = serde_json::from_slice(&bytes).ok()?;
    let records: Option<Vec<hickory_proto::rr::Record>> = t
        .records
        .iter()
        .map(|r| {
            let b = base64::engine::general_purpose::STANDARD.decode(r).ok()?;
            hickory_proto::rr::Record::from_bytes(&b).ok()
        })
        .collect();
    match Zone::transferred(origin, records?) {
        Ok(z) => Some(z),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "dns: the last transfer is not usable; waiting for the primary");
            None
        }
    }
}

/// Binds UDP and TCP on the same address; with port 0, on the same free port.
async fn bind(listen: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    crate::service::bind_udp_tcp(listen)
        .await
        .map_err(|(what, addr, source)| DnsError::Bind { what, addr, source })
}

/// The counter an answer counts under.
fn counter(metrics: &Metrics, a: &answer::Answer) -> prometheus::IntCounter {
    let qtype = a.qtype.map(qtype_label).unwrap_or("none");
    metrics
        .dns_queries
        .with_label_values(&[qtype, rcode_label(a.rcode())])
}

/// Answers one packet: a remembered answer when the query is plain and was seen before,
/// else the full path (remembering its answer when the query is plain). Returns the answer
/// and its truncated form (for RRL's slip), or None for a packet to drop.
fn respond(
    dns: &DnsHandle,
    packet: &[u8],
    transport: Transport,
    max_udp: u16,
) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
    let served = dns.served();
    let plain = cache::plain(packet, transport, max_udp);
    if let Some(p) = &plain
        && let Some(hit) = served.cache.get(&p.key)
    {
        hit.counter.inc();
        return Some((hit.answer(p, false), Some(hit.answer(p, true))));
    }
    let a = match answer::answer(&served.zone, packet, transport, max_udp) {
        Ok(a) => a,
        Err(Dropped::Malformed) | Err(Dropped::NotAQuery) => {
            let t = if transport == Transport::Udp {
                "udp"
            } else {
                "tcp"
            };
            dns.metrics.dns_malformed.with_label_values(&[t]).inc();
            return None;
        }
    };
    let c = counter(&dns.metrics, &a);
    c.inc();
    if let Some(key) = &a.tsig_key {
        // Signed queries (a secondary's SOA check) get signed answers, never cached.
        let xfr = dns.xfr();
        let now = crate::service::unix_now();
        let signed = transfer::sign_answer(packet, a.message, key, &xfr.keys, now)?;
        return Some((signed, None));
    }
    let full = a.encode()?;
    let truncated = a.encode_truncated();
    if let (Some(p), Some(t)) = (plain, &truncated) {
        served
            .cache
            .insert(p.key, cache::Entry::new(full.clone(), t.clone(), c));
    }
    Some((full, truncated))
}

/// Query types as metric labels: the common ones by name, the rest as `other` (bounded).
fn qtype_label(t: hickory_proto::rr::RecordType) -> &'static str {
    use hickory_proto::rr::RecordType as T;
    match t {
        T::A => "A",
        T::AAAA => "AAAA",
        T::CNAME => "CNAME",
        T::TXT => "TXT",
        T::MX => "MX",
        T::SRV => "SRV",
        T::CAA => "CAA",
        T::NS => "NS",
        T::SOA => "SOA",
        T::ANY => "ANY",
        T::HTTPS => "HTTPS",
        T::PTR => "PTR",
        _ => "other",
    }
}

fn rcode_label(r: hickory_proto::op::ResponseCode) -> &'static str {
    use hickory_proto::op::ResponseCode as R;
    match r {
        R::NoError => "NOERROR",
        R::NXDomain => "NXDOMAIN",
        R::Refused => "REFUSED",
        R::FormErr => "FORMERR",
        R::NotImp => "NOTIMP",
        R::ServFail => "SERVFAIL",
        R::BADVERS => "BADVERS",
        _ => "other",
    }
}

async fn serve_udp(
    socket: Arc<UdpSocket>,
    dns: DnsHandle,
    rrl: Option<Arc<Mutex<Rrl>>>,
    max_udp: u16,
    cancel: CancellationToken,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on Linux: not fatal.
                    tracing::debug!(error = %e, "udp receive failed");
                    continue;
                }
            },
        };
        if let Some(ack) = dns.notified(&buf[..n], peer.ip()) {
            if let Err(e) = socket.send_to(&ack, peer).await {
                tracing::debug!(%peer, error = %e, "udp send failed");
            }
            continue;
        }
        let Some((full, truncated)) = respond(&dns, &buf[..n], Transport::Udp, max_udp) else {
            continue;
        };
        let verdict = match &rrl {
            Some(r) => r
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .check(peer.ip(), Instant::now()),
            None => Verdict::Send,
        };
        let bytes = match verdict {
            Verdict::Send => Some(full),
            Verdict::Slip => {
                dns.metrics.dns_rrl.with_label_values(&["slipped"]).inc();
                truncated
            }
            Verdict::Drop => {
                dns.metrics.dns_rrl.with_label_values(&["dropped"]).inc();
                None
            }
        };
        if let Some(bytes) = bytes
            && let Err(e) = socket.send_to(&bytes, peer).await
        {
            tracing::debug!(%peer, error = %e, "udp send failed");
        }
    }
}

async fn serve_tcp(
    listener: TcpListener,
    dns: DnsHandle,
    section: config::Dns,
    cancel: CancellationToken,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(
        section.tcp_max_connections as usize,
    ));
    let idle = Duration::from_secs(section.tcp_idle_timeout_secs);
    let mut conns = JoinSet::new();
    loop {
        let Some((stream, peer)) = crate::service::accept(&listener, &cancel, "dns").await else {
            break;
        };
        while conns.try_join_next().is_some() {}
        // Each answer is one write; without this, an answer that follows another on the
        // same connection (a secondary's SOA check, then its IXFR) waits for the peer's
        // delayed ACK.
        let _ = stream.set_nodelay(true);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Over the connection limit: close at once rather than queue.
            dns.metrics.dns_tcp_refused.inc();
            drop(stream);
            continue;
        };
        let dns = dns.clone();
        let max_queries = section.tcp_max_queries;
        let max_udp = section.max_udp_payload;
        let stop = cancel.clone();
        conns.spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = stop.cancelled() => {}
                r = tcp_connection(stream, peer.ip(), &dns, idle, max_queries, max_udp) => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "dns tcp connection ended");
                    }
                }
            }
        });
    }
    conns.abort_all();
}

/// RFC 7766: length-prefixed messages, several per connection, closed when idle (§6.2.3):
/// no query within `idle`, a query not complete within `idle`, or an answer the peer has not
/// taken within `idle` (it sends queries but never reads).
async fn tcp_connection(
    mut s: TcpStream,
    peer: std::net::IpAddr,
    dns: &DnsHandle,
    idle: Duration,
    max_queries: u32,
    max_udp: u16,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    for _ in 0..max_queries {
        let len = match tokio::time::timeout(idle, s.read_u16()).await {
            Ok(Ok(len)) => len as usize,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        };
        buf.resize(len, 0);
        match tokio::time::timeout(idle, s.read_exact(&mut buf)).await {
            Ok(r) => {
                r?;
            }
            Err(_) => return Ok(()),
        }
        let messages = match dns.transfer(&buf, peer) {
            transfer::Transfer::NotOne if dns.following.is_some() => {
                match dns.notified(&buf, peer) {
                    Some(ack) => vec![ack],
                    None => {
                        let Some((bytes, _)) = respond(dns, &buf, Transport::Tcp, max_udp) else {
                            return Ok(());
                        };
                        vec![bytes]
                    }
                }
            }
            transfer::Transfer::NotOne => {
                let Some((bytes, _)) = respond(dns, &buf, Transport::Tcp, max_udp) else {
                    return Ok(());
                };
                vec![bytes]
            }
            transfer::Transfer::Zone(messages) => messages,
            transfer::Transfer::Refused(bytes, why) => {
                tracing::info!(%peer, why, "dns zone transfer refused");
                vec![bytes]
            }
        };
        let mut out = Vec::new();
        for bytes in messages {
            out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
            out.extend_from_slice(&bytes);
        }
        match tokio::time::timeout(idle, s.write_all(&out)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "peer does not read its answers",
                ));
            }
        }
    }
    Ok(())
}

/// Sends a NOTIFY (RFC 1996) to every secondary whenever the serial changes, each retried
/// until it is answered (1, 2, 4, 8 and 16 s apart); a newer serial replaces a notify still
/// being retried.
async fn notify_secondaries(dns: DnsHandle, cancel: CancellationToken) {
    let mut serials = dns.serials.subscribe();
    serials.mark_changed();
    let mut sending = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = serials.changed() => if changed.is_err() { break },
        }
        sending.abort_all();
        let (section, zone) = {
            let state = dns.state.lock().unwrap_or_else(|p| p.into_inner());
            (state.section.clone(), dns.zone())
        };
        let Ok(keys) = transfer::Keys::new(&section.tsig_keys) else {
            continue;
        };
        for s in section.secondaries {
            let Some(signer) = transfer::key_name(&s.key)
                .ok()
                .and_then(|n| keys.get(&n).cloned())
            else {
                continue;
            };
            let zone = zone.clone();
            sending.spawn(async move {
                let to = s.address;
                for (attempt, wait) in [1u64, 2, 4, 8, 16].into_iter().enumerate() {
                    match notify_once(&zone, to, &signer, Duration::from_secs(wait)).await {
                        Ok(()) => {
                            tracing::info!(%to, serial = zone.serial(), "dns notify answered");
                            return;
                        }
                        Err(e) => tracing::debug!(%to, attempt, error = %e, "dns notify not answered"),
                    }
                }
                tracing::warn!(%to, serial = zone.serial(), "dns notify never answered; the secondary will see the change at its next refresh");
            });
        }
    }
    sending.abort_all();
}

async fn notify_once(
    zone: &Zone,
    to: SocketAddr,
    signer: &hickory_proto::rr::TSigner,
    wait: Duration,
) -> std::io::Result<()> {
    let id: u16 = rand::random();
    let Some(packet) = transfer::notify(zone, id, signer, crate::service::unix_now()) else {
        return Err(std::io::Error::other("cannot encode a notify"));
    };
    ask_udp(to, &packet, wait, |answer| {
        transfer::notify_acknowledged(answer, id).then_some(())
    })
    .await
}
