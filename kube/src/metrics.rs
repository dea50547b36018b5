//! Every metric KUBE exports, in one registry passed to the services that record them (never
//! the global default registry). Names follow `kube_<service>_<what>_<unit>`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub apps_published: IntGauge,
    pub cert_not_after: IntGaugeVec,
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
                "Time to answer an HTTPS request (headers sent), by app.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["app"],
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
        for c in [
            Box::new(build) as Box<dyn prometheus::core::Collector>,
            Box::new(http_requests.clone()),
            Box::new(http_duration.clone()),
            Box::new(apps_published.clone()),
            Box::new(cert_not_after.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            http_requests,
            http_duration,
            apps_published,
            cert_not_after,
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
