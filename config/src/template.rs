//! The commented `kube.yml` that `kube init` writes. A test keeps it in step with the types:
//! it must parse, name every key, and equal the defaults apart from what `init` chooses.

use crate::is_local_domain;

/// A commented `kube.yml` for `domain`. A public domain listens on every interface on the
/// standard ports; `localhost` keeps the loopback defaults.
pub fn template(domain: &str) -> String {
    template_for(domain, None)
}

/// [`template`], with `operator` (a did:key) as the one operator and the one space admin
/// ECHO serves: on a public server, ECHO is closed to everyone else's spaces.
pub fn template_for(domain: &str, operator: Option<&str>) -> String {
    let public = !is_local_domain(domain);
    let (operators, admit) = match operator {
        Some(did) => (format!("[\"{did}\"]"), format!("[\"{did}\"]")),
        None => ("[]".to_owned(), "any".to_owned()),
    };
    let pick = |local: &'static str, public_value: &'static str| {
        if public { public_value } else { local }
    };
    format!(
        r#"# kube.yml: the one configuration file of a KUBE.
# Every key has a default; unknown keys are errors. `kube config check -c kube.yml` validates it.
# Any key can be overridden by an environment variable KUBE_<SECTION>_<KEY>,
# for example KUBE_HTTP_LISTEN=127.0.0.1:0 or KUBE_APPS_KEEP_VERSIONS=3.

# The domain KUBE serves: the apex and one host per app below it (<app>.{domain}).
domain: {domain}
# Where KUBE keeps its identity, certificates, apps and spaces (created 0700).
data_dir: ./kube-data

http:
  # Plain HTTP: redirects to HTTPS (and answers ACME HTTP-01). Port 0 picks a free port.
  listen: {http}
  # HTTPS for the apex landing page and every app host (HTTP/1.1 and HTTP/2).
  https_listen: {https}
  # The HTTPS port users reach when it differs from the bound one (docker -p 443:8443).
  public_https_port: null
  # Strict-Transport-Security: auto (public domains only), on, off.
  hsts: auto
  # Seconds in-flight requests get to finish on shutdown.
  shutdown_grace_secs: 10
  # Seconds a client has to send its request headers.
  header_timeout_secs: 10

tls:
  # local (KUBE's own CA), acme, or files. null: local for localhost, acme otherwise.
  mode: null
  # files mode: PEM certificate chain and private key.
  cert_file: null
  key_file: null

acme:
  # An RFC 8555 directory URL.
  directory: https://acme-v02.api.letsencrypt.org/directory
  # Contact e-mail for the ACME account.
  email: null
  # Extra CA root (PEM) to trust the directory with, e.g. Pebble's test root.
  ca_root: null
  # Challenge types in the order they are tried.
  challenges: [dns-01, tls-alpn-01, http-01]
  # A second directory tried when the first keeps failing.
  fallback_directory: null
  # External account binding, when the directory requires one.
  eab_kid: null
  eab_hmac_key: null

dns:
  # Serve authoritative DNS for the domain (never recursive).
  enabled: true
  # UDP and TCP address of the DNS server.
  listen: {dns}
  # Addresses of this KUBE: A/AAAA for the apex, app hosts and in-zone name servers.
  # Empty: 127.0.0.1 and ::1 for localhost, none otherwise.
  addresses: []
  # Name servers of the zone. Empty: ns1.<domain>.
  nameservers: []
  # Contact e-mail of the zone. Empty: hostmaster@<domain>.
  contact: ""
  # How app hosts resolve: wildcard (*.domain) or per_app (one record per published app).
  app_hosts: wildcard
  # CAs allowed to issue for the domain (CAA issue), e.g. [letsencrypt.org]. Empty: no CAA.
  caa: []
  # TTL of the records KUBE makes, in seconds.
  ttl: 300
  # Extra records: name (relative, @ for the apex), type (A AAAA CNAME TXT MX SRV CAA),
  # value in zone-file form, optional ttl. For example:
  #   - {{ name: www, type: CNAME, value: "{domain}." }}
  #   - {{ name: "@", type: MX, value: "10 mail.{domain}." }}
  records: []
  # Largest UDP answer in bytes; longer ones are truncated so clients retry over TCP.
  max_udp_payload: 1232
  # Response rate limiting per client prefix (UDP), against amplification.
  rrl:
    enabled: true
    responses_per_second: 20
    # Every Nth limited answer is sent truncated instead of dropped; 0 drops all.
    slip: 2
    ipv4_prefix: 24
    ipv6_prefix: 56
  # TCP: most connections at once, idle seconds, most queries per connection.
  tcp_max_connections: 256
  tcp_idle_timeout_secs: 10
  tcp_max_queries: 100
  # Zone transfers: TSIG keys (name, algorithm: hmac-sha256, secret: base64) and the
  # secondaries that may transfer the zone over TCP and get a NOTIFY on every change
  # (address: "192.0.2.53:53", key: the key's name).
  tsig_keys: []
  secondaries: []
  # Follow another primary as its secondary instead of serving records of this file
  # (address: "192.0.2.1:53", key: the name of its key); null: KUBE is the primary.
  primary: null

signal:
  # WebRTC signaling over WebSocket at wss://<domain>/.well-known/kube/signal.
  enabled: true
  # Largest message in bytes; messages per second per connection.
  max_message_bytes: 65536
  messages_per_second: 50
  # Swarms per peer, peers per swarm, WebSocket connections at once.
  max_swarms_per_peer: 32
  max_peers_per_swarm: 256
  max_connections: 10000
  # Seconds to authenticate; ping interval and how long a ping may go unanswered.
  auth_timeout_secs: 10
  ping_interval_secs: 15
  ping_timeout_secs: 10
  # Refused messages before a connection is closed.
  strikes: 10

turn:
  # STUN/TURN over UDP and TCP on listen, over TLS on tls_listen and on the HTTPS port
  # (REST credentials handed out by signaling).
  enabled: true
  listen: {turn}
  # TURN over TLS on a port of its own (e.g. 0.0.0.0:5349); null: none.
  tls_listen: null
  # TURN over TLS on the HTTPS port too, for TLS clients that speak STUN first.
  on_https: true
  # Realm of the credentials; empty: the domain.
  realm: ""
  # Shared secret; empty: generated into <data_dir>/turn.secret and kept.
  secret: ""
  # Seconds handed-out credentials stay valid.
  credential_ttl_secs: 86400
  # Address announced for relays; null: the listen address.
  relay_address: null
  # Relay ports.
  relay_port_min: 49152
  relay_port_max: 65535
  # Peer CIDRs the relay may reach although refused by default (loopback, private, …).
  allow_peers: []
  # Allocations in total and per user; bytes per second per allocation.
  max_allocations: 1000
  max_allocations_per_user: 10
  max_bytes_per_sec: 1000000
  # Longest allocation lifetime (seconds) one Allocate or Refresh grants.
  max_lifetime_secs: 3600
  # TURN connections over TCP and TLS at once.
  max_connections: 1000
  # The other KUBEs' STUN/TURN servers, handed out with this KUBE's own (every KUBE of a
  # cluster shares turn.secret), e.g. "turn:kube-b.example.org:3478?transport=udp".
  cluster: []

echo:
  # Serve ECHO (the replica of admitted spaces) at wss://<domain>/.well-known/kube/echo.
  enabled: true
  # Which space admins this KUBE serves: any, or a list of identity keys (did:key). A space
  # is replicated only when it admits KUBE's key (`kube identity`) as replicator, through a
  # credential one of these admins issued. On a public server keep it a list: with `any`,
  # anyone who makes a key can store spaces here (up to max_space_bytes each).
  admit: {admit}
  # Seconds a connection's signed token may be off KUBE's clock.
  auth_window_secs: 60
  # Largest message (bytes), messages per second per connection (burst: ten seconds' worth).
  max_message_bytes: 16777216
  messages_per_second: 1000
  # Documents per space; new documents a connection may have waiting for the space's root
  # to list them, and for how long.
  max_docs_per_space: 100000
  # Bytes one space may keep on disk (its admins' changes to the space root still pass).
  max_space_bytes: 1073741824
  max_pending_docs: 10000
  pending_secs: 30
  # WebSocket connections at once; refused messages before a connection is closed.
  max_connections: 10000
  strikes: 10
  # Memory (bytes, estimated) for documents held in memory; the least recently used past
  # it are read from disk again when next asked for. Start reads no document.
  cache_bytes: 67108864
  # The other KUBEs of a cluster (url: "https://kube-b.example.org", did: its
  # `kube identity`, ca_file: a PEM file when it runs on its local CA): each is linked
  # with this KUBE's key and replicates every space that admits both keys as replicators.
  peers: []

apps:
  # Versions kept per app for rollback (the current one included).
  keep_versions: 5
  # Largest bundle accepted, in bytes: both the upload and its unpacked files.
  max_bundle_bytes: 268435456
  # Most files in one bundle.
  max_files: 20000

# An S3-compatible object store shared by the KUBEs of one cluster: every bundle published
# at any of them is served by all, and one ACME certificate is ordered for all (a lease in
# the store lets one KUBE order at a time). Credentials: AWS_ACCESS_KEY_ID and
# AWS_SECRET_ACCESS_KEY in the environment. Without an endpoint all stays in the data dir.
storage:
  endpoint: null              # e.g. https://s3.example.org or http://127.0.0.1:9000
  bucket: ""
  region: us-east-1
  path_style: true            # https://endpoint/bucket/key (self-hosted stores)
  prefix: ""                  # before every key: clusters may share a bucket
  poll_secs: 5                # how often changes made at the other KUBEs are looked for
  ca_file: null               # PEM of the store's CA, beside the web PKI roots

# Back-end processes of apps, supervised: started after the services, restarted with
# backoff, logged to <data_dir>/logs/<name>/, stopped first. For example:
#   - name: agent
#     command: node
#     args: [agent.js]
#     env: {{NODE_ENV: production}}
#     env_files: [agent.env]      # KEY=VALUE lines, read at every start, never logged
#     dir: agent                  # inside the data dir
#     user: kube-agent            # when KUBE runs as root
#     restart: always             # always | on-failure | never
#     backoff: {{initial_ms: 500, max_ms: 30000, jitter_percent: 20, reset_after_secs: 60}}
#     stop_signal: TERM           # to the process group; KILL after stop_grace_secs
#     stop_grace_secs: 10
#     after: []                   # processes started before this one
#     logs: {{max_file_bytes: 10485760, files: 5}}
#     route: {{app: notes, path: /api/}}  # https://notes.<domain>/api/…; without app: agent.<domain>
#                                 # KUBE picks the port: PORT in the environment, ${{PORT}} below
#     liveness: {{http: "http://127.0.0.1:${{PORT}}/healthz", interval_secs: 10, timeout_secs: 2, failures: 3}}
#     readiness: {{tcp: "127.0.0.1:${{PORT}}", interval_secs: 5}}   # or exec: [program, args…]
#     notify: false               # ready once it sends READY=1 to NOTIFY_SOCKET (sd_notify)
#     ready_timeout_secs: 60      # a restart with readiness keeps the old one until the new is ready
#     limits: {{memory_mib: 256, cpu_percent: 100, pids: 256}}   # a cgroup v2 of its own
processes: []

admin:
  # The admin API, /metrics, /healthz and /readyz. Keep it on loopback or a private network.
  listen: 127.0.0.1:9180
  # Operator keys (did:key) whose signed requests the admin API accepts, besides the bearer
  # token in <data_dir>/admin.token. `kube identity new FILE` makes one.
  operators: {operators}
  # Seconds a signed request's timestamp may differ from this server's clock.
  signature_window_secs: 60

metrics:
  # Serve Prometheus metrics at /metrics on the admin listener.
  enabled: true

log:
  # A tracing filter: info, debug, kube=debug,info.
  level: info
  # text, or json (one object a line).
  format: text
"#,
        http = pick("127.0.0.1:8080", "0.0.0.0:80"),
        https = pick("127.0.0.1:8443", "0.0.0.0:443"),
        dns = pick("127.0.0.1:5353", "0.0.0.0:53"),
        turn = pick("127.0.0.1:3478", "0.0.0.0:3478"),
    )
}
