//! Every metric KUBE exports, in one registry passed to the services that record them (never
//! the global default registry). Names follow `kube_<service>_<what>_<unit>`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub process_up: IntGaugeVec,
    pub process_restarts: IntCounterVec,
    pub process_last_exit: IntGaugeVec,
    pub process_cpu_seconds: prometheus::GaugeVec,
    pub process_resident_bytes: IntGaugeVec,
    pub process_ready: IntGaugeVec,
    pub process_probe_failures: IntCounterVec,
    pub process_memory_kills: IntCounterVec,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub http_panics: IntCounter,
    pub apps_published: IntGauge,
    pub cert_not_after: IntGaugeVec,
    pub acme_orders: IntCounterVec,
    pub acme_adopted: IntCounter,
    pub turn_allocations: IntGauge,
    pub turn_refused: IntCounterVec,
    pub turn_packets: IntCounterVec,
    pub turn_dropped: IntCounter,
    pub turn_relayed_bytes: IntCounter,
    pub signal_messages: IntCounterVec,
    pub signal_errors: IntCounterVec,
    pub signal_connections: IntGauge,
    pub signal_peers: IntGauge,
    pub signal_swarms: IntGauge,
    pub dns_queries: IntCounterVec,
    pub dns_rrl: IntCounterVec,
    pub dns_malformed: IntCounterVec,
    pub dns_tcp_refused: IntCounter,
    pub dns_zone_serial: IntGauge,
    pub dns_records: IntGauge,
    pub echo_spaces: IntGauge,
    pub echo_documents: IntGauge,
    pub echo_peers: IntGauge,
    pub echo_links_up: IntGauge,
    pub echo_messages: IntCounterVec,
    pub echo_bytes: IntCounterVec,
    pub echo_refused: IntCounterVec,
    pub echo_storage_bytes: IntGauge,
    pub echo_quarantined: IntGauge,
    pub echo_cache_bytes: IntGauge,
    pub echo_cache_documents: IntGauge,
    pub echo_loads: IntCounter,
    pub echo_evictions: IntCounter,
    pub echo_sync_lag: prometheus::Histogram,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let build = IntGaugeVec::new(
            Opts::new("kube_build_info", "The running kube's version; always 1."),
            &["version"],
        )
        .expect("valid metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let http_requests = IntCounterVec::new(
            Opts::new(
                "kube_http_requests_total",
                "HTTPS requests answered, by app and status class.",
            ),
            &["app", "class"],
        )
        .expect("valid metric");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "kube_http_request_duration_seconds",
                "Time to answer an HTTPS request (headers ready), by app and status class.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["app", "class"],
        )
        .expect("valid metric");
        let http_panics = IntCounter::new(
            "kube_http_panics_total",
            "HTTPS requests whose handler panicked (answered 500).",
        )
        .expect("valid metric");
        let apps_published = IntGauge::new("kube_apps_published", "Apps with a current version.")
            .expect("valid metric");
        let cert_not_after = IntGaugeVec::new(
            Opts::new(
                "kube_cert_not_after_seconds",
                "Expiry of each served certificate, Unix seconds, by name.",
            ),
            &["name"],
        )
        .expect("valid metric");
        let acme_orders = IntCounterVec::new(
            Opts::new(
                "kube_acme_orders_total",
                "ACME certificate orders, by result.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let acme_adopted = IntCounter::new(
            "kube_acme_certificates_adopted_total",
            "Certificates taken from the object store (ordered by another KUBE of the cluster).",
        )
        .expect("valid metric");
        let turn_allocations =
            IntGauge::new("kube_turn_allocations", "Live TURN allocations.").expect("valid metric");
        let turn_refused = IntCounterVec::new(
            Opts::new(
                "kube_turn_refused_total",
                "TURN packets refused, by reason: a peer range, a quota, malformed (neither STUN \
                 nor ChannelData), malformed-peer-address, bad-credentials, or relay-socket (a \
                 send the relay socket itself refused).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let turn_packets = IntCounterVec::new(
            Opts::new(
                "kube_turn_relayed_packets_total",
                "Packets relayed, by direction (out: to peers).",
            ),
            &["direction"],
        )
        .expect("valid metric");
        let turn_dropped = IntCounter::new(
            "kube_turn_dropped_packets_total",
            "Relayed packets dropped over an allocation's bandwidth.",
        )
        .expect("valid metric");
        let turn_relayed_bytes = IntCounter::new(
            "kube_turn_relayed_bytes_total",
            "Bytes relayed between clients and peers, both directions.",
        )
        .expect("valid metric");
        let signal_messages = IntCounterVec::new(
            Opts::new(
                "kube_signal_messages_total",
                "Signaling messages, by direction and type.",
            ),
            &["direction", "type"],
        )
        .expect("valid metric");
        let signal_errors = IntCounterVec::new(
            Opts::new(
                "kube_signal_errors_total",
                "Signaling error replies, by code.",
            ),
            &["code"],
        )
        .expect("valid metric");
        let signal_connections = IntGauge::new(
            "kube_signal_connections",
            "Open signaling WebSocket connections.",
        )
        .expect("valid metric");
        let signal_peers = IntGauge::new("kube_signal_peers", "Authenticated signaling peers.")
            .expect("valid metric");
        let signal_swarms = IntGauge::new("kube_signal_swarms", "Swarms with at least one peer.")
            .expect("valid metric");
        let dns_queries = IntCounterVec::new(
            Opts::new(
                "kube_dns_queries_total",
                "DNS queries answered, by query type and response code.",
            ),
            &["qtype", "rcode"],
        )
        .expect("valid metric");
        let dns_rrl = IntCounterVec::new(
            Opts::new(
                "kube_dns_rrl_limited_total",
                "DNS responses held back by rate limiting: dropped, or slipped (sent truncated).",
            ),
            &["action"],
        )
        .expect("valid metric");
        let dns_malformed = IntCounterVec::new(
            Opts::new(
                "kube_dns_malformed_total",
                "DNS packets dropped as malformed, by transport.",
            ),
            &["transport"],
        )
        .expect("valid metric");
        let dns_tcp_refused = IntCounter::new(
            "kube_dns_tcp_refused_total",
            "DNS TCP connections closed at once because of the connection limit.",
        )
        .expect("valid metric");
        let dns_zone_serial =
            IntGauge::new("kube_dns_zone_serial", "SOA serial of the zone served.")
                .expect("valid metric");
        let dns_records =
            IntGauge::new("kube_dns_records", "Records in the zone served.").expect("valid metric");
        let echo_spaces =
            IntGauge::new("kube_echo_spaces", "Spaces ECHO replicates.").expect("valid metric");
        let echo_documents = IntGauge::new(
            "kube_echo_documents",
            "Documents ECHO holds (roots and objects), in memory or not.",
        )
        .expect("valid metric");
        let echo_peers = IntGauge::new("kube_echo_peers", "Authenticated ECHO connections.")
            .expect("valid metric");
        let echo_links_up = IntGauge::new(
            "kube_echo_links_up",
            "Links to the other KUBEs of echo.peers that are up.",
        )
        .expect("valid metric");
        let echo_messages = IntCounterVec::new(
            Opts::new(
                "kube_echo_messages_total",
                "ECHO sync protocol messages, by direction.",
            ),
            &["direction"],
        )
        .expect("valid metric");
        let echo_bytes = IntCounterVec::new(
            Opts::new(
                "kube_echo_bytes_total",
                "Bytes of ECHO sync protocol messages, by direction.",
            ),
            &["direction"],
        )
        .expect("valid metric");
        let echo_refused = IntCounterVec::new(
            Opts::new(
                "kube_echo_refused_total",
                "ECHO messages and changes refused, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let echo_storage_bytes = IntGauge::new(
            "kube_echo_storage_bytes",
            "Bytes of the files of the documents ECHO holds (under <data_dir>/echo).",
        )
        .expect("valid metric");
        let echo_quarantined = IntGauge::new(
            "kube_echo_quarantined_documents",
            "ECHO documents whose files do not load: served and written by nobody until restored.",
        )
        .expect("valid metric");
        let echo_cache_bytes = IntGauge::new(
            "kube_echo_cache_bytes",
            "Estimated memory of the ECHO documents held in memory (kept under echo.cache_bytes).",
        )
        .expect("valid metric");
        let echo_cache_documents = IntGauge::new(
            "kube_echo_cache_documents",
            "ECHO documents held in memory.",
        )
        .expect("valid metric");
        let echo_loads = IntCounter::new(
            "kube_echo_document_loads_total",
            "ECHO documents read from disk (on demand).",
        )
        .expect("valid metric");
        let echo_evictions = IntCounter::new(
            "kube_echo_document_evictions_total",
            "ECHO documents let go from memory under echo.cache_bytes.",
        )
        .expect("valid metric");
        let echo_sync_lag = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "kube_echo_sync_lag_seconds",
                "From receiving a change to sending the replies that acknowledge it (fsync included).",
            )
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
        )
        .expect("valid metric");
        let by_name = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["name"]).expect("valid metric")
        };
        let process_up = by_name(
            "kube_process_up",
            "1 while a supervised process runs, by process name.",
        );
        let process_last_exit = by_name(
            "kube_process_last_exit_code",
            "How a supervised process last ended: its exit code, or 128 + the signal that killed it.",
        );
        let process_ready = by_name(
            "kube_process_ready",
            "1 while a supervised process runs and passes its readiness probe (or has none).",
        );
        let process_probe_failures = IntCounterVec::new(
            Opts::new(
                "kube_process_liveness_failures_total",
                "Times a supervised process was restarted for failing its liveness probe.",
            ),
            &["name"],
        )
        .expect("valid metric");
        let process_memory_kills = IntCounterVec::new(
            Opts::new(
                "kube_process_memory_limit_kills_total",
                "Times a supervised process was killed for going over its memory limit.",
            ),
            &["name"],
        )
        .expect("valid metric");
        let process_resident_bytes = by_name(
            "kube_process_resident_memory_bytes",
            "Resident memory of a supervised process: every process of its cgroup or process group.",
        );
        let process_restarts = IntCounterVec::new(
            Opts::new(
                "kube_process_restarts_total",
                "Times KUBE started a supervised process again after it ended.",
            ),
            &["name"],
        )
        .expect("valid metric");
        let process_cpu_seconds = prometheus::GaugeVec::new(
            Opts::new(
                "kube_process_cpu_seconds",
                "CPU time of a supervised process's current run (its cgroup, or its main process without one), user and system.",
            ),
            &["name"],
        )
        .expect("valid metric");
        for c in [
            Box::new(build) as Box<dyn prometheus::core::Collector>,
            Box::new(process_up.clone()),
            Box::new(process_restarts.clone()),
            Box::new(process_last_exit.clone()),
            Box::new(process_cpu_seconds.clone()),
            Box::new(process_resident_bytes.clone()),
            Box::new(process_ready.clone()),
            Box::new(process_probe_failures.clone()),
            Box::new(process_memory_kills.clone()),
            Box::new(http_requests.clone()),
            Box::new(http_duration.clone()),
            Box::new(http_panics.clone()),
            Box::new(apps_published.clone()),
            Box::new(cert_not_after.clone()),
            Box::new(acme_orders.clone()),
            Box::new(acme_adopted.clone()),
            Box::new(turn_allocations.clone()),
            Box::new(turn_refused.clone()),
            Box::new(turn_packets.clone()),
            Box::new(turn_dropped.clone()),
            Box::new(turn_relayed_bytes.clone()),
            Box::new(signal_messages.clone()),
            Box::new(signal_errors.clone()),
            Box::new(signal_connections.clone()),
            Box::new(signal_peers.clone()),
            Box::new(signal_swarms.clone()),
            Box::new(dns_queries.clone()),
            Box::new(dns_rrl.clone()),
            Box::new(dns_malformed.clone()),
            Box::new(dns_tcp_refused.clone()),
            Box::new(dns_zone_serial.clone()),
            Box::new(dns_records.clone()),
            Box::new(echo_spaces.clone()),
            Box::new(echo_documents.clone()),
            Box::new(echo_peers.clone()),
            Box::new(echo_links_up.clone()),
            Box::new(echo_messages.clone()),
            Box::new(echo_bytes.clone()),
            Box::new(echo_refused.clone()),
            Box::new(echo_storage_bytes.clone()),
            Box::new(echo_quarantined.clone()),
            Box::new(echo_cache_bytes.clone()),
            Box::new(echo_cache_documents.clone()),
            Box::new(echo_loads.clone()),
            Box::new(echo_evictions.clone()),
            Box::new(echo_sync_lag.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        // Series whose label values are a known, small set start at zero, so dashboards and
        // alerts see them (and their rates) before the first event.
        for result in ["success", "failure"] {
            acme_orders.with_label_values(&[result]);
        }
        for direction in ["in", "out"] {
            turn_packets.with_label_values(&[direction]);
        }
        for reason in [
            "user-quota",
            "total-quota",
            "bad-credentials",
            "malformed",
            "malformed-peer-address",
            "stale-nonce",
        ] {
            turn_refused.with_label_values(&[reason]);
        }
        for action in ["slipped", "dropped"] {
            dns_rrl.with_label_values(&[action]);
        }
        for transport in ["udp", "tcp"] {
            dns_malformed.with_label_values(&[transport]);
        }
        for direction in ["in", "out"] {
            echo_messages.with_label_values(&[direction]);
            echo_bytes.with_label_values(&[direction]);
        }
        for reason in echo::repo::REFUSALS {
            echo_refused.with_label_values(&[reason]);
        }
        Metrics {
            registry,
            process_up,
            process_restarts,
            process_last_exit,
            process_cpu_seconds,
            process_resident_bytes,
            process_ready,
            process_probe_failures,
            process_memory_kills,
            http_requests,
            http_duration,
            http_panics,
            apps_published,
            cert_not_after,
            acme_orders,
            acme_adopted,
            turn_allocations,
            turn_refused,
            turn_packets,
            turn_dropped,
            turn_relayed_bytes,
            signal_messages,
            signal_errors,
            signal_connections,
            signal_peers,
            signal_swarms,
            dns_queries,
            dns_rrl,
            dns_malformed,
            dns_tcp_refused,
            dns_zone_serial,
            dns_records,
            echo_spaces,
            echo_documents,
            echo_peers,
            echo_links_up,
            echo_messages,
            echo_bytes,
            echo_refused,
            echo_storage_bytes,
            echo_quarantined,
            echo_cache_bytes,
            echo_cache_documents,
            echo_loads,
            echo_evictions,
            echo_sync_lag,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
