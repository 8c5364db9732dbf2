//! Prometheus metrics: one registry per server instance, counters updated lock-free.
//!
//! Every decision the server takes that an operator may need to see at 3 a.m. is counted here.
//! Owns the metric names; the code that counts only holds the handles.

use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// All metrics of one server. Cheap to clone handles out of; share it behind an `Arc`.
pub struct Metrics {
    /// The registry served on `/metrics`.
    pub registry: Registry,
    /// DNS requests received, by transport (`udp`/`tcp`).
    pub requests: IntCounterVec,
    /// DNS responses sent, by rcode name (`NOERROR`, `NXDOMAIN`, ...) and source of the answer
    /// (`zone`, `upstream`, `server`).
    pub responses: IntCounterVec,
    /// Packets that could not be answered normally, by reason (`short`, `undecodable`,
    /// `qdcount`, `not_query`, `opcode`).
    pub malformed_packets: IntCounterVec,
    /// UDP responses that did not fit the client's payload size and went out with TC set.
    pub truncated_responses: IntCounter,
    /// Objects a source could not use, by kind and reason.
    pub objects_rejected: IntCounterVec,
    /// Manifest files that failed to parse (each failed load counts once).
    pub manifest_errors: IntCounter,
    /// Queries forwarded upstream, by outcome (`ok`, `timeout`, `error`).
    pub upstream_queries: IntCounterVec,
    /// TCP connections refused because `max_tcp_connections` was reached.
    pub tcp_connections_rejected: IntCounter,
    /// Records in the zone, by kind of name (`forward`, `reverse`).
    pub zone_names: IntGaugeVec,
    /// Services currently in the zone.
    pub zone_services: IntGauge,
    /// 1 once every source has delivered its initial state.
    pub synced: IntGauge,
    /// Kubernetes API source, by kind: 1 while every watch of that kind has listed and had no
    /// error since, else 0.
    pub source_synced: IntGaugeVec,
    /// Kubernetes API source, by kind: Unix time of the last moment every watch of that kind
    /// was known to be in sync (0 before the first list). `time() - this` is the staleness.
    pub source_last_sync: GaugeVec,
    /// Kubernetes API source, by kind: watch or list failures (each retry counts).
    pub source_errors: IntCounterVec,
    /// 1 while the zone serves the last-good snapshot because the API was unreachable at
    /// startup (until every watch has listed).
    pub snapshot_in_use: IntGauge,
    /// Objects served from the snapshot while it is in use (0 otherwise).
    pub snapshot_objects: IntGauge,
    /// Snapshot failures, by operation (`read`: a corrupt or unreadable file was ignored;
    /// `write`).
    pub snapshot_errors: IntCounterVec,
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("static metric definition is valid");
            registry
                .register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("static metric definition is valid");
            registry
                .register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("static metric definition is valid");
            registry
                .register(Box::new(g.clone()))
                .expect("metric names are unique");
            g
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)
                .expect("static metric definition is valid");
            registry
                .register(Box::new(g.clone()))
                .expect("metric names are unique");
            g
        };
        Metrics {
            requests: counter_vec(
                "coredns_dns_requests_total",
                "DNS requests received.",
                &["proto"],
            ),
            responses: counter_vec(
                "coredns_dns_responses_total",
                "DNS responses sent, by rcode and by what answered.",
                &["rcode", "plugin"],
            ),
            malformed_packets: counter_vec(
                "clusterdns_malformed_packets_total",
                "Packets that were not a well-formed standard query, by reason.",
                &["reason"],
            ),
            truncated_responses: counter(
                "clusterdns_truncated_responses_total",
                "UDP responses sent with TC set because they did not fit.",
            ),
            objects_rejected: counter_vec(
                "clusterdns_objects_rejected_total",
                "Objects from a source that were skipped, by kind and reason.",
                &["kind", "reason"],
            ),
            manifest_errors: counter(
                "clusterdns_manifest_errors_total",
                "Manifest files that failed to load.",
            ),
            upstream_queries: counter_vec(
                "clusterdns_upstream_queries_total",
                "Queries forwarded to upstream resolvers, by outcome.",
                &["outcome"],
            ),
            tcp_connections_rejected: counter(
                "clusterdns_tcp_connections_rejected_total",
                "TCP connections closed at once because max_tcp_connections was reached.",
            ),
            zone_names: gauge_vec(
                "clusterdns_zone_names",
                "Names in the cluster zone index, by kind.",
                &["kind"],
            ),
            zone_services: gauge("clusterdns_zone_services", "Services in the cluster zone."),
            synced: gauge(
                "clusterdns_synced",
                "1 once every source has delivered its initial state.",
            ),
            source_synced: gauge_vec(
                "clusterdns_source_synced",
                "Kubernetes API watches of this kind all listed and healthy (1) or not (0).",
                &["kind"],
            ),
            source_last_sync: {
                let g = GaugeVec::new(
                    Opts::new(
                        "clusterdns_source_last_sync_timestamp_seconds",
                        "Unix time when the Kubernetes API data of this kind was last known in sync.",
                    ),
                    &["kind"],
                )
                .expect("static metric definition is valid");
                registry
                    .register(Box::new(g.clone()))
                    .expect("metric names are unique");
                g
            },
            source_errors: counter_vec(
                "clusterdns_source_errors_total",
                "Kubernetes API list or watch failures, by kind (every retry counts).",
                &["kind"],
            ),
            snapshot_in_use: gauge(
                "clusterdns_snapshot_in_use",
                "1 while the cluster zone is served from the last-good snapshot.",
            ),
            snapshot_objects: gauge(
                "clusterdns_snapshot_objects",
                "Objects served from the last-good snapshot while it is in use.",
            ),
            snapshot_errors: counter_vec(
                "clusterdns_snapshot_errors_total",
                "Snapshot files ignored (read) or not written (write).",
                &["op"],
            ),
            registry,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = encoder.encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The rcode as CoreDNS labels it (miekg/dns `RcodeToString`), so dashboards keep working.
pub fn rcode_label(rcode: hickory_proto::op::ResponseCode) -> &'static str {
    use hickory_proto::op::ResponseCode as R;
    match rcode {
        R::NoError => "NOERROR",
        R::FormErr => "FORMERR",
        R::ServFail => "SERVFAIL",
        R::NXDomain => "NXDOMAIN",
        R::NotImp => "NOTIMP",
        R::Refused => "REFUSED",
        R::YXDomain => "YXDOMAIN",
        R::YXRRSet => "YXRRSET",
        R::NXRRSet => "NXRRSET",
        R::NotAuth => "NOTAUTH",
        R::NotZone => "NOTZONE",
        R::BADVERS | R::BADSIG => "BADSIG",
        R::BADKEY => "BADKEY",
        R::BADTIME => "BADTIME",
        R::BADMODE => "BADMODE",
        R::BADNAME => "BADNAME",
        R::BADALG => "BADALG",
        R::BADTRUNC => "BADTRUNC",
        R::BADCOOKIE => "BADCOOKIE",
        R::Unknown(_) => "UNKNOWN",
    }
}
