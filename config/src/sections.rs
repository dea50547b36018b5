//! One type per `kube.yml` section. Every key has a default and a doc comment; unknown keys
//! are refused. `kube init` writes the same keys with the same words (see `template.rs`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

fn addr(s: &str) -> SocketAddr {
    s.parse()
        .expect("default listen addresses are valid literals")
}

/// `http`: the HTTPS listener that serves apps, and the plain HTTP listener that redirects.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Http {
    /// Plain HTTP: redirects to HTTPS (and answers ACME HTTP-01). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// HTTPS for the apex landing page and every app host (HTTP/1.1 and HTTP/2).
    pub https_listen: SocketAddr,
    /// The HTTPS port users reach (in redirects and printed URLs) when it differs from the
    /// bound one, e.g. behind `docker run -p 443:8443`. Unset: the bound port.
    pub public_https_port: Option<u16>,
    /// Strict-Transport-Security: `auto` sends it on public domains, never on localhost.
    pub hsts: Hsts,
    /// Seconds in-flight requests get to finish on shutdown.
    pub shutdown_grace_secs: u64,
    /// Seconds a client has to send its request headers.
    pub header_timeout_secs: u64,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            listen: addr("127.0.0.1:8080"),
            https_listen: addr("127.0.0.1:8443"),
            public_https_port: None,
            hsts: Hsts::Auto,
            shutdown_grace_secs: 10,
            header_timeout_secs: 10,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hsts {
    Auto,
    On,
    Off,
}

/// `tls`: where certificates come from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    /// `local` (KUBE's own CA), `acme` or `files`. Unset: `local` for localhost, else `acme`.
    pub mode: Option<TlsMode>,
    /// `files` mode: PEM certificate chain.
    pub cert_file: Option<PathBuf>,
    /// `files` mode: PEM private key.
    pub key_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    Local,
    Acme,
    Files,
}

/// `acme`: certificates from an RFC 8555 directory (used when `tls.mode` is `acme`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Acme {
    /// Directory URL.
    pub directory: String,
    /// Contact e-mail for the account.
    pub email: Option<String>,
    /// Extra CA root (PEM) to trust the directory with, e.g. Pebble's.
    pub ca_root: Option<PathBuf>,
    /// Challenge types in the order they are tried.
    pub challenges: Vec<Challenge>,
    /// A second directory tried when the first keeps failing.
    pub fallback_directory: Option<String>,
    /// External account binding key id, when the directory requires one.
    pub eab_kid: Option<String>,
    /// External account binding HMAC key (base64url).
    pub eab_hmac_key: Option<String>,
}

impl Default for Acme {
    fn default() -> Self {
        Acme {
            directory: "https://acme-v02.api.letsencrypt.org/directory".into(),
            email: None,
            ca_root: None,
            challenges: vec![Challenge::Dns01, Challenge::TlsAlpn01, Challenge::Http01],
            fallback_directory: None,
            eab_kid: None,
            eab_hmac_key: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Challenge {
    #[serde(rename = "dns-01")]
    Dns01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    #[serde(rename = "http-01")]
    Http01,
}

/// `dns`: the authoritative DNS server for `domain` (never recursive).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Dns {
    /// Serve DNS at all.
    pub enabled: bool,
    /// UDP and TCP address (port 53 on a VPS).
    pub listen: SocketAddr,
    /// Addresses of this KUBE: A/AAAA for the apex, the app hosts and in-zone name servers.
    /// Empty: 127.0.0.1 and ::1 for localhost, none otherwise.
    pub addresses: Vec<std::net::IpAddr>,
    /// Name servers of the zone. Empty: `ns1.<domain>`.
    pub nameservers: Vec<String>,
    /// The zone's contact, as an e-mail address. Empty: `hostmaster@<domain>`.
    pub contact: String,
    /// How app hosts resolve: `wildcard` (one `*.domain` record) or `per_app` (one record per
    /// published app).
    pub app_hosts: AppHosts,
    /// Certificate authorities allowed to issue for the domain (CAA `issue`), e.g.
    /// `letsencrypt.org`. Empty: no CAA record.
    pub caa: Vec<String>,
    /// TTL of the records KUBE makes, in seconds.
    pub ttl: u32,
    /// Extra records.
    pub records: Vec<DnsRecord>,
    /// Largest UDP response in bytes (EDNS); longer answers are truncated (TC) so the client
    /// retries over TCP.
    pub max_udp_payload: u16,
    /// Response rate limiting per client prefix (UDP).
    pub rrl: Rrl,
    /// Most TCP connections at once.
    pub tcp_max_connections: u32,
    /// Seconds a TCP connection may stay idle.
    pub tcp_idle_timeout_secs: u64,
    /// Most queries on one TCP connection.
    pub tcp_max_queries: u32,
    /// TSIG keys (RFC 8945) that zone transfers and NOTIFY are signed with.
    pub tsig_keys: Vec<TsigKey>,
    /// Secondary servers of the zone: each may transfer it (AXFR, IXFR over TCP) from its
    /// address with its key, and gets a NOTIFY there whenever the serial changes.
    pub secondaries: Vec<Secondary>,
    /// Another primary of the zone that this KUBE follows as a secondary: it serves what
    /// that primary transfers (AXFR over TCP, signed with `key`), checks its serial every
    /// SOA refresh and at once on its NOTIFY, and takes no records of its own.
    pub primary: Option<Primary>,
}

/// `dns.primary`: the primary this KUBE is a secondary of.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Primary {
    /// Where it answers transfers (TCP), and the address its NOTIFY comes from.
    pub address: SocketAddr,
    /// The name of the key in `dns.tsig_keys` requests to it are signed with.
    pub key: String,
}

/// `dns.tsig_keys[]`: a shared secret for transfers and NOTIFY.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TsigKey {
    /// The key's name, as the secondary knows it (a DNS name).
    pub name: String,
    /// `hmac-sha256` (the default), `hmac-sha384` or `hmac-sha512`.
    #[serde(default = "default_tsig_algorithm")]
    pub algorithm: String,
    /// The secret, base64 (at least 16 bytes; `openssl rand -base64 32`): keep kube.yml
    /// readable by KUBE's user only.
    pub secret: String,
}

fn default_tsig_algorithm() -> String {
    "hmac-sha256".into()
}

/// `dns.secondaries[]`: a secondary server of the zone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secondary {
    /// Where it answers NOTIFY (UDP), and the address its transfers come from.
    pub address: SocketAddr,
    /// The name of its key in `dns.tsig_keys`.
    pub key: String,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            enabled: true,
            listen: addr("127.0.0.1:5353"),
            addresses: Vec::new(),
            nameservers: Vec::new(),
            contact: String::new(),
            app_hosts: AppHosts::Wildcard,
            caa: Vec::new(),
            ttl: 300,
            records: Vec::new(),
            max_udp_payload: 1232,
            rrl: Rrl::default(),
            tcp_max_connections: 256,
            tcp_idle_timeout_secs: 10,
            tcp_max_queries: 100,
            tsig_keys: Vec::new(),
            secondaries: Vec::new(),
            primary: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppHosts {
    Wildcard,
    PerApp,
}

/// One extra record of `dns.records`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsRecord {
    /// Owner name, relative to the domain (`www`, `@` for the apex) or absolute with a
    /// trailing dot inside the domain.
    pub name: String,
    /// A, AAAA, CNAME, TXT, MX, SRV or CAA.
    #[serde(rename = "type")]
    pub kind: String,
    /// The data, in zone-file form: `192.0.2.1`, `"text"`, `10 mail.example.com.`,
    /// `0 5 5060 sip.example.com.`, `0 issue "letsencrypt.org"`.
    pub value: String,
    /// TTL in seconds. Unset: `dns.ttl`.
    pub ttl: Option<u32>,
}

/// `dns.rrl`: response rate limiting (amplification defence).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rrl {
    /// Limit responses per client prefix.
    pub enabled: bool,
    /// Responses per second allowed to one prefix (with a burst of the same size).
    pub responses_per_second: u32,
    /// Every Nth limited response is sent truncated (TC) instead of dropped, so real
    /// clients retry over TCP; 0 drops all.
    pub slip: u32,
    /// Prefix length grouping IPv4 clients.
    pub ipv4_prefix: u8,
    /// Prefix length grouping IPv6 clients.
    pub ipv6_prefix: u8,
}

impl Default for Rrl {
    fn default() -> Self {
        Rrl {
            enabled: true,
            responses_per_second: 20,
            slip: 2,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
        }
    }
}

/// `signal`: WebRTC signaling over WebSocket at `/.well-known/kube/signal`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Signal {
    /// Serve signaling at all.
    pub enabled: bool,
    /// Largest message in bytes; a larger one is refused (far larger ones close the socket).
    pub max_message_bytes: usize,
    /// Messages per second one connection may send (with a burst of the same size).
    pub messages_per_second: u32,
    /// Swarms one peer may be in.
    pub max_swarms_per_peer: usize,
    /// Peers one swarm may hold.
    pub max_peers_per_swarm: usize,
    /// WebSocket connections at once.
    pub max_connections: usize,
    /// Seconds a new connection has to authenticate.
    pub auth_timeout_secs: u64,
    /// Seconds between pings; a peer that does not answer within `ping_timeout_secs` more
    /// is disconnected and its swarms hear `peer-left`.
    pub ping_interval_secs: u64,
    pub ping_timeout_secs: u64,
    /// Refused messages a connection may send before it is closed.
    pub strikes: u32,
}

impl Default for Signal {
    fn default() -> Self {
        Signal {
            enabled: true,
            max_message_bytes: 64 * 1024,
            messages_per_second: 50,
            max_swarms_per_peer: 32,
            max_peers_per_swarm: 256,
            max_connections: 10_000,
            auth_timeout_secs: 10,
            ping_interval_secs: 15,
            ping_timeout_secs: 10,
            strikes: 10,
        }
    }
}

/// `turn`: STUN/TURN for NAT traversal (UDP).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Turn {
    /// Serve STUN/TURN at all.
    pub enabled: bool,
    /// Address of TURN over UDP and TCP (the same port for both).
    pub listen: SocketAddr,
    /// Address of TURN over TLS on a port of its own (usually 5349). Unset: none; TURN over
    /// TLS is always reachable on the HTTPS port (`http.https_listen`).
    pub tls_listen: Option<SocketAddr>,
    /// Offer TURN over TLS on the HTTPS port, to TLS clients that offer no ALPN (or
    /// `stun.turn`) and speak STUN first.
    pub on_https: bool,
    /// The realm of long-term credentials. Empty: the domain.
    pub realm: String,
    /// Shared secret of the REST credential scheme. Empty: one is generated into
    /// `<data_dir>/turn.secret` (0600) and kept.
    pub secret: String,
    /// Seconds the credentials handed out by signaling stay valid.
    pub credential_ttl_secs: u64,
    /// The address put in relayed-address answers. Unset: the listen address (which must
    /// then not be 0.0.0.0).
    pub relay_address: Option<std::net::IpAddr>,
    /// Relay ports are taken from this range (inclusive).
    pub relay_port_min: u16,
    pub relay_port_max: u16,
    /// Peer ranges (CIDR) the relay may reach although they are refused by default
    /// (loopback, private, link-local, …). Tests open 127.0.0.0/8 here.
    pub allow_peers: Vec<String>,
    /// Allocations at once, in total and per user.
    pub max_allocations: u32,
    pub max_allocations_per_user: u32,
    /// Bytes per second one allocation may relay in each direction.
    pub max_bytes_per_sec: u64,
    /// The longest lifetime an allocation gets from one Allocate or Refresh (seconds).
    pub max_lifetime_secs: u64,
    /// TURN connections over TCP and TLS at once (each holds at most one allocation).
    pub max_connections: u32,
    /// The STUN/TURN servers of the other KUBEs of a cluster (`turn:host:port`,
    /// `turns:host:port?transport=tcp`, `stun:host:port`), handed out by `ice-servers`
    /// beside this KUBE's own; they must share `turn.secret` with this KUBE.
    pub cluster: Vec<String>,
}

impl Default for Turn {
    fn default() -> Self {
        Turn {
            enabled: true,
            listen: addr("127.0.0.1:3478"),
            tls_listen: None,
            on_https: true,
            realm: String::new(),
            secret: String::new(),
            credential_ttl_secs: 86_400,
            relay_address: None,
            relay_port_min: 49_152,
            relay_port_max: 65_535,
            allow_peers: Vec::new(),
            max_allocations: 1_000,
            max_allocations_per_user: 10,
            max_bytes_per_sec: 1_000_000,
            max_lifetime_secs: 3_600,
            max_connections: 1_000,
            cluster: Vec::new(),
        }
    }
}

/// `echo`: the headless replica of admitted spaces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Echo {
    /// Serve ECHO at `/.well-known/kube/echo` at all.
    pub enabled: bool,
    /// Which space admins this KUBE serves: `any`, or a list of identity keys (did:key). A
    /// space is replicated only when it admits KUBE's key as `replicator`, through a
    /// credential one of these admins issued.
    pub admit: Admit,
    /// Seconds a connection's signed token may be off KUBE's clock.
    pub auth_window_secs: u64,
    /// Largest message in bytes (a sync message carries changes: keep it generous).
    pub max_message_bytes: usize,
    /// Messages per second one connection may send (with a burst of ten seconds' worth).
    pub messages_per_second: u32,
    /// Documents one space may hold.
    pub max_docs_per_space: usize,
    /// Bytes one space may keep on disk; past it, its members' changes are refused (its
    /// admins' changes to the space root still pass).
    pub max_space_bytes: u64,
    /// New documents one connection may have waiting for its space's root to list them,
    /// and for how many seconds.
    pub max_pending_docs: usize,
    pub pending_secs: u64,
    /// WebSocket connections at once.
    pub max_connections: usize,
    /// Refused messages a connection may send before it is closed.
    pub strikes: u32,
    /// Memory, in bytes (estimated), the documents ECHO holds in memory may take; the
    /// least recently used past it are dropped and read from disk again when needed.
    pub cache_bytes: usize,
    /// The other KUBEs of a cluster: this KUBE links to each with its own key and offers it
    /// every document of the spaces both replicate (each must admit both KUBEs' keys as
    /// replicators).
    pub peers: Vec<EchoPeer>,
}

/// `echo.peers[]`: another KUBE this one replicates spaces with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EchoPeer {
    /// Its HTTPS base URL, `https://host[:port]`.
    pub url: String,
    /// Its identity (`kube identity` there): a link is made only to a KUBE that proves it
    /// holds this key, and tokens are signed for it alone.
    pub did: String,
    /// A PEM file of the CA its certificate is checked against, beside the web PKI roots
    /// (a KUBE on its local CA: `kube trust` there).
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for Echo {
    fn default() -> Self {
        Echo {
            enabled: true,
            admit: Admit::Any,
            auth_window_secs: 60,
            max_message_bytes: 16 << 20,
            messages_per_second: 1000,
            max_docs_per_space: 100_000,
            max_space_bytes: 1 << 30,
            max_pending_docs: 10_000,
            pending_secs: 30,
            max_connections: 10_000,
            strikes: 10,
            cache_bytes: 64 << 20,
            peers: Vec::new(),
        }
    }
}

/// `echo.admit`: `any`, or a list of did:keys (in an environment variable, comma-separated).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Admit {
    #[default]
    Any,
    Admins(Vec<String>),
}

impl Serialize for Admit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Admit::Any => s.serialize_str("any"),
            Admit::Admins(list) => list.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Admit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match StringOrList::deserialize(d)? {
            StringOrList::One(s) if s.trim() == "any" => Ok(Admit::Any),
            StringOrList::One(s) => Ok(Admit::Admins(split_list(&s))),
            StringOrList::Many(list) => Ok(Admit::Admins(list)),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged, expecting = "a string or a list of strings")]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A list of strings that an environment variable may give comma-separated.
fn list_or_csv<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match StringOrList::deserialize(d)? {
        StringOrList::One(s) => split_list(&s),
        StringOrList::Many(list) => list,
    })
}

/// `apps`: published app bundles.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Apps {
    /// Versions kept per app for rollback (the current one included).
    pub keep_versions: u32,
    /// Largest bundle accepted, in bytes: both the upload and its unpacked files.
    pub max_bundle_bytes: u64,
    /// Most files in one bundle.
    pub max_files: u32,
}

impl Default for Apps {
    fn default() -> Self {
        Apps {
            keep_versions: 5,
            max_bundle_bytes: 256 * 1024 * 1024,
            max_files: 20_000,
        }
    }
}

/// One entry of `processes`: a back-end process an app declares.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Process {
    /// Unique name (a DNS label), used in logs, metrics and `kube status`.
    pub name: String,
    /// Program to run (a path, or a name looked up in PATH).
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its environment, besides PATH, HOME, LANG and TZ taken from KUBE's; nothing else of
    /// KUBE's environment is passed on.
    pub env: BTreeMap<String, String>,
    /// Files of `KEY=VALUE` lines read at every start (so a restart sees their current
    /// values), relative to the data dir unless absolute; their values are never logged.
    pub env_files: Vec<PathBuf>,
    /// Working directory, relative to the data dir and inside it; default the data dir.
    pub dir: Option<PathBuf>,
    /// When KUBE runs as root: the user to run as (`name`, or `uid` or `uid:gid`).
    pub user: Option<String>,
    /// When to start it again after it exits.
    pub restart: RestartPolicy,
    /// The pause before a restart.
    pub backoff: Backoff,
    /// The signal that asks it to stop (TERM, INT, QUIT, HUP, USR1, USR2), sent to its whole
    /// process group; KILL follows after `stop_grace_secs`.
    pub stop_signal: String,
    pub stop_grace_secs: u64,
    /// Processes started before this one and stopped after it.
    pub after: Vec<String>,
    /// Its log: stdout and stderr, line by line, in `<data_dir>/logs/<name>/`.
    pub logs: ProcessLogs,
    /// Failing this probe `failures` times in a row restarts the process.
    pub liveness: Option<Probe>,
    /// While this probe fails, the process is not ready (`kube ps`, `kube_process_ready`)
    /// and gets no traffic through its `route`.
    pub readiness: Option<Probe>,
    /// It says `READY=1` on the datagram socket named in `NOTIFY_SOCKET` once it is ready
    /// (systemd's `sd_notify`); until then it is not ready, as with a failing readiness probe.
    pub notify: bool,
    /// Exposes it over HTTPS through KUBE: KUBE picks a loopback port, passes it in `PORT`
    /// and proxies to `http://127.0.0.1:$PORT`. `${PORT}` in `args`, `env` values and probe
    /// addresses is replaced by that port.
    pub route: Option<ProcessRoute>,
    /// Resource limits (a cgroup v2 of its own where KUBE can make one).
    pub limits: Limits,
    /// In a zero-downtime restart (a process with `readiness` or `notify`): how long the new
    /// instance may take to become ready before it is given up and the old one kept.
    pub ready_timeout_secs: u64,
}

/// `processes[].route`: where KUBE's HTTPS listener sends requests to the process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessRoute {
    /// Under this app's host name (`https://<app>.<domain><path>`), beside its static bundle;
    /// without it the process has its own host name, `https://<name>.<domain>/`.
    pub app: Option<String>,
    /// With `app`: the path prefix sent to the process (`/api/`), whole, not stripped.
    pub path: String,
}

impl Default for ProcessRoute {
    fn default() -> Self {
        ProcessRoute {
            app: None,
            path: "/".into(),
        }
    }
}

/// `processes[].limits`: enforced by the process's cgroup where the cgroup v2 controller is
/// available; without it a memory limit is enforced by KUBE sampling the resident memory of
/// the process's group every second, and CPU and pids limits are reported as not enforced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Memory, in MiB (cgroup `memory.max`): above it the process is killed and restarted
    /// by its policy, and `kube ps` says why.
    pub memory_mib: Option<u64>,
    /// CPU time, in percent of one CPU (cgroup `cpu.max`; 150 is one and a half CPUs).
    pub cpu_percent: Option<u32>,
    /// Processes and threads (cgroup `pids.max`).
    pub pids: Option<u32>,
}

/// A health check of a process: exactly one of `http`, `tcp` and `exec`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Probe {
    /// `http://host:port/path` on this machine: a 2xx or 3xx answer passes.
    pub http: Option<String>,
    /// `host:port` on this machine: a TCP connection passes.
    pub tcp: Option<String>,
    /// A program and its arguments, run in the process's dir: exit 0 passes.
    pub exec: Vec<String>,
    pub interval_secs: u64,
    pub timeout_secs: u64,
    /// Failures in a row that count (for liveness: that restart it).
    pub failures: u32,
    /// Seconds after a start before the first probe.
    pub initial_delay_secs: u64,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            http: None,
            tcp: None,
            exec: Vec::new(),
            interval_secs: 10,
            timeout_secs: 2,
            failures: 3,
            initial_delay_secs: 0,
        }
    }
}

impl Default for Process {
    fn default() -> Self {
        Process {
            name: String::new(),
            command: String::new(),
            args: Vec::new(),
            env: BTreeMap::new(),
            env_files: Vec::new(),
            dir: None,
            user: None,
            restart: RestartPolicy::default(),
            backoff: Backoff::default(),
            stop_signal: "TERM".into(),
            stop_grace_secs: 10,
            after: Vec::new(),
            logs: ProcessLogs::default(),
            liveness: None,
            readiness: None,
            notify: false,
            route: None,
            limits: Limits::default(),
            ready_timeout_secs: 60,
        }
    }
}

/// `processes[].restart`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Whenever it exits, however it exits.
    #[default]
    Always,
    /// When it exits with a code other than 0, or by a signal.
    OnFailure,
    /// Never.
    Never,
}

/// `processes[].backoff`: the pause before the n-th restart in a row is
/// `min(initial_ms * 2^(n-1), max_ms)`, spread by ±`jitter_percent`; a run of
/// `reset_after_secs` or longer starts the count again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    pub initial_ms: u64,
    pub max_ms: u64,
    pub jitter_percent: u32,
    pub reset_after_secs: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_ms: 500,
            max_ms: 30_000,
            jitter_percent: 20,
            reset_after_secs: 60,
        }
    }
}

/// `processes[].logs`: rotation bounds, so a chatty process cannot fill the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessLogs {
    /// Bytes per file before it is rotated.
    pub max_file_bytes: u64,
    /// Files kept, the current one included.
    pub files: u32,
}

impl Default for ProcessLogs {
    fn default() -> Self {
        ProcessLogs {
            max_file_bytes: 10 << 20,
            files: 5,
        }
    }
}

/// `admin`: the admin API, `/metrics`, `/healthz` and `/readyz`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Admin {
    /// Address of the admin listener. Keep it on loopback or a private network.
    pub listen: SocketAddr,
    /// Operator keys (did:key) whose signed requests the admin API accepts, besides the
    /// bearer token in `<data_dir>/admin.token`.
    #[serde(deserialize_with = "list_or_csv")]
    pub operators: Vec<String>,
    /// Seconds a signed request's timestamp may differ from this server's clock; a request's
    /// nonce is remembered for twice that, so a replay is refused.
    pub signature_window_secs: u64,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            listen: addr("127.0.0.1:9180"),
            operators: Vec::new(),
            signature_window_secs: 60,
        }
    }
}

/// `storage`: an S3-compatible object store the KUBEs of one cluster share for app bundles
/// and the ACME certificate. Without `endpoint` everything stays in the data dir.
/// Credentials come from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Storage {
    /// `https://s3.example.com`, or `http://127.0.0.1:9000` for a store on the same host.
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    /// `https://endpoint/bucket/key` (self-hosted stores) rather than
    /// `https://bucket.endpoint/key`.
    pub path_style: bool,
    /// Prepended to every key, so several clusters may share one bucket.
    pub prefix: String,
    /// How often each KUBE looks for bundles and certificates changed by the others.
    pub poll_secs: u64,
    /// A PEM file of the CA the store's certificate is checked against, beside the web
    /// PKI roots.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            endpoint: None,
            bucket: String::new(),
            region: "us-east-1".into(),
            path_style: true,
            prefix: String::new(),
            poll_secs: 5,
            ca_file: None,
        }
    }
}

/// `metrics`: Prometheus exposition on the admin listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Metrics {
    /// Serve `/metrics`.
    pub enabled: bool,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics { enabled: true }
    }
}

/// `log`: what is logged, and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    /// A tracing filter: `info`, `debug`, `kube=debug,info`.
    pub level: String,
    /// `text` or `json` (one object a line).
    pub format: LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}
