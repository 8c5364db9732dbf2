//! Prometheus metrics: one registry per server instance, counters updated lock-free.
//!
//! Every decision the server takes that an operator may need to see at 3 a.m. is counted here.
//! Owns the metric names; the code that counts only holds the handles.

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// All metrics of one server. Cheap to clone handles out of; share it behind an `Arc`.
pub struct Metrics {
    /// The registry served on `/metrics`.
    pub registry: Registry,
    /// DNS requests received (every packet, parseable or not), with CoreDNS's labels
    /// `server,zone,view,proto,family,type`. Counted through [`super::query_metrics`].
    pub requests: IntCounterVec,
    /// Time from a request's arrival to its response, by `server,zone,view,type`.
    pub request_duration: HistogramVec,
    /// Request sizes in bytes, by `server,zone,view,proto`.
    pub request_size: HistogramVec,
    /// Response sizes in bytes, by `server,zone,view,proto`.
    pub response_size: HistogramVec,
    /// Requests with the DNSSEC OK bit, by `server,view,zone`.
    pub do_requests: IntCounterVec,
    /// Questions refused by the `[acl]` lists, by reason (`not_allowed`: the client may not
    /// ask at all; `no_recursion`: it may not have names outside the zone forwarded).
    pub acl_refused: IntCounterVec,
    /// UDP answers over `[acl.rate_limit]`, by `action` (`drop`, `slip`).
    pub rate_limited: IntCounterVec,
    /// Panics caught on the query path (the packet was dropped, the worker went on).
    pub panics: IntCounter,
    /// Config reloads that failed (the old config kept running).
    pub reload_failed: IntCounter,
    /// Constant 1 with the build's version.
    pub build_info: IntGaugeVec,
    /// DNS responses sent, by `server,zone,view,rcode,plugin`: rcode as CoreDNS prints it (`NOERROR`, `NXDOMAIN`, ...;
    /// BADVERS is `BADSIG`, as in miekg/dns) and what answered, named after the CoreDNS
    /// plugin that would have (`kubernetes` for the zone, `forward` for the upstream, empty
    /// for the server's own error answers).
    pub responses: IntCounterVec,
    /// Packets that could not be answered normally, by reason: `short` (under 12 bytes,
    /// dropped), `response` (QR set, dropped), `undecodable` (FORMERR), `qdcount` (not
    /// exactly one question, FORMERR), `opcode` (not QUERY, NOTIMP).
    pub malformed_packets: IntCounterVec,
    /// UDP responses that did not fit the client's payload size and went out with TC set.
    pub truncated_responses: IntCounter,
    /// Datagrams the kernel dropped on this server's UDP sockets (receive buffer full), by
    /// `server` (listen address); read from the kernel at scrape time.
    pub udp_receive_drops: IntCounterVec,
    /// Bytes waiting in this server's UDP receive buffers at scrape time, by `server`.
    pub udp_receive_queue: IntGaugeVec,
    /// The UDP sockets those two are read for.
    pub udp_sockets: std::sync::Arc<super::socket_stats::UdpSocketStats>,
    /// Answers sent as prebuilt bytes, by `source`: `zone` (a repeated question, the zone
    /// unchanged since) or `cache` (a repeated cache hit, its TTLs counted down).
    pub prebuilt_answers: IntCounterVec,
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
    /// Endpoints in the EndpointSlices the zone holds, ready or not.
    pub zone_endpoints: IntGauge,
    /// Records in the cluster zone index (static records included).
    pub zone_records: IntGauge,
    /// The DNS-programming SLI: from an EndpointSlice change's trigger time to its records
    /// being served, by `service_kind` (CoreDNS's kubernetes plugin).
    pub dns_programming_duration: HistogramVec,
    /// How long this server's own `/health` took to answer its self-probe (CoreDNS `health`).
    pub health_duration: prometheus::Histogram,
    /// Self-probes of `/health` that failed or timed out.
    pub health_failures: IntCounter,
    /// 1 once every source has delivered its initial state.
    pub synced: IntGauge,
    /// Kubernetes API source, by kind: 1 while every watch of that kind has listed and had no
    /// error since, else 0.
    pub source_synced: IntGaugeVec,
    /// Kubernetes API source, by kind: Unix time of the last moment every watch of that kind
    /// was known to be in sync (0 before the first list). `time() - this` is the staleness.
    pub source_last_sync: GaugeVec,
    /// Seconds since the data of a kind was last known in sync, computed at each scrape from
    /// [`Metrics::source_last_sync`] (an alert can say "> 300" without `time()` arithmetic).
    pub source_sync_age: GaugeVec,
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
    /// Upstream answers served from the cache, by `server,type,zones,view` (type `success`
    /// or `denial`), as CoreDNS's cache plugin labels them.
    pub cache_hits: IntCounterVec,
    /// Upstream questions not found in the cache, by `server,zones,view`.
    pub cache_misses: IntCounterVec,
    /// Questions looked up in the cache, by `server,zones,view`.
    pub cache_requests: IntCounterVec,
    /// Cache entries refreshed in the background before they expired.
    pub cache_prefetch: IntCounterVec,
    /// Expired answers served because every upstream failed (RFC 8767).
    pub cache_served_stale: IntCounterVec,
    /// Upstream exchange durations, by `proxy_name` (`forward`), `to` and the answer's rcode.
    pub proxy_duration: HistogramVec,
    /// Entries evicted by capacity, by type.
    pub cache_evictions: IntCounterVec,
    /// Entries in the cache, by type; refreshed on every scrape.
    pub cache_entries: IntGaugeVec,
    /// Clients that waited on an identical question already in flight instead of sending it.
    pub coalesced_queries: IntCounter,
    /// Questions refused because `upstream.max_concurrent` queries were in flight.
    pub max_concurrent_rejects: IntCounter,
    /// 1 while an upstream is considered healthy, 0 while it is marked down, by address.
    pub upstream_healthy: IntGaugeVec,
    /// Failed health probes of a down upstream, by address.
    pub healthcheck_failures: IntCounterVec,
    /// Queries for which every upstream was marked down (all were tried anyway).
    pub healthcheck_broken: IntCounter,
    /// 1 for an upstream found to loop back to this server (no longer used), by address.
    pub upstream_loop: IntGaugeVec,
    scrape_hooks: std::sync::Mutex<Vec<ScrapeHook>>,
    server: std::sync::OnceLock<String>,
}

type ScrapeHook = Box<dyn Fn() + Send + Sync>;

/// CoreDNS's request and response size buckets (plugin/metrics/vars).
const SIZE_BUCKETS: [f64; 14] = [
    0.0, 100.0, 200.0, 300.0, 400.0, 511.0, 1023.0, 2047.0, 4095.0, 8291.0, 16e3, 32e3, 48e3, 64e3,
];

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
        let histogram_vec = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("static metric definition is valid");
            registry
                .register(Box::new(h.clone()))
                .expect("metric names are unique");
            h
        };
        let metrics = Metrics {
            requests: counter_vec(
                "coredns_dns_requests_total",
                "Counter of DNS requests made per zone, protocol and family.",
                &["server", "zone", "view", "proto", "family", "type"],
            ),
            request_duration: histogram_vec(
                "coredns_dns_request_duration_seconds",
                "Histogram of the time (in seconds) each request took per zone.",
                &["server", "zone", "view", "type"],
                // CoreDNS: 0.25 ms doubling to 8 s.
                prometheus::exponential_buckets(0.00025, 2.0, 16).unwrap_or_default(),
            ),
            request_size: histogram_vec(
                "coredns_dns_request_size_bytes",
                "Size of the EDNS0 UDP buffer in bytes (64K for TCP) per zone and protocol.",
                &["server", "zone", "view", "proto"],
                SIZE_BUCKETS.to_vec(),
            ),
            response_size: histogram_vec(
                "coredns_dns_response_size_bytes",
                "Size of the returned response in bytes.",
                &["server", "zone", "view", "proto"],
                SIZE_BUCKETS.to_vec(),
            ),
            do_requests: counter_vec(
                "coredns_dns_do_requests_total",
                "Counter of DNS requests with DO bit set per zone.",
                &["server", "view", "zone"],
            ),
            acl_refused: counter_vec(
                "clusterdns_acl_refused_total",
                "Questions refused by the access lists, by reason.",
                &["reason"],
            ),
            rate_limited: counter_vec(
                "clusterdns_rate_limited_total",
                "UDP answers over the per-network rate limit, by action (drop, or slip: sent truncated).",
                &["action"],
            ),
            panics: counter(
                "coredns_panics_total",
                "A metrics that counts the number of panics.",
            ),
            reload_failed: counter(
                "coredns_reload_failed_total",
                "Counter of the number of failed reload attempts.",
            ),
            build_info: gauge_vec(
                "coredns_build_info",
                "A metric with a constant '1' value labeled by version, revision, and goversion from which CoreDNS was built.",
                &["version", "revision", "goversion"],
            ),
            responses: counter_vec(
                "coredns_dns_responses_total",
                "DNS responses sent, by rcode and by what answered.",
                &["server", "zone", "view", "rcode", "plugin"],
            ),
            malformed_packets: counter_vec(
                "clusterdns_malformed_packets_total",
                "Packets that were not a well-formed standard query, by reason.",
                &["reason"],
            ),
            udp_receive_drops: counter_vec(
                "clusterdns_udp_receive_drops_total",
                "Queries the kernel dropped on this server's UDP sockets because their receive \
                 buffer was full: raise server.recv_buffer_bytes (and net.core.rmem_max), add \
                 server.udp_workers or replicas.",
                &["server"],
            ),
            udp_receive_queue: gauge_vec(
                "clusterdns_udp_receive_queue_bytes",
                "Bytes waiting in this server's UDP receive buffers (kernel accounting) at \
                 scrape time; near the buffer size, drops follow.",
                &["server"],
            ),
            udp_sockets: std::sync::Arc::default(),
            truncated_responses: counter(
                "clusterdns_truncated_responses_total",
                "UDP responses sent with TC set because they did not fit.",
            ),
            prebuilt_answers: counter_vec(
                "clusterdns_prebuilt_answers_total",
                "Answers sent as prebuilt bytes, by source: zone (the zone unchanged since they were built) or cache (a cache hit repeated, TTLs counted down).",
                &["source"],
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
            zone_endpoints: gauge(
                "clusterdns_zone_endpoints",
                "Endpoints in the EndpointSlices the cluster zone holds (ready or not).",
            ),
            zone_records: gauge(
                "clusterdns_zone_records",
                "Records in the cluster zone index.",
            ),
            dns_programming_duration: histogram_vec(
                "coredns_kubernetes_dns_programming_duration_seconds",
                "Histogram of the time (in seconds) it took to program a dns instance.",
                &["service_kind"],
                // CoreDNS: from 1 millisecond to ~17 minutes.
                prometheus::exponential_buckets(0.001, 2.0, 20).unwrap_or_default(),
            ),
            health_duration: {
                let h = prometheus::Histogram::with_opts(
                    HistogramOpts::new(
                        "coredns_health_request_duration_seconds",
                        "Histogram of the time (in seconds) each request took.",
                    )
                    // CoreDNS's SlimTimeBuckets: 0.25 ms, x10, five buckets.
                    .buckets(prometheus::exponential_buckets(0.00025, 10.0, 5).unwrap_or_default()),
                )
                .expect("static metric definition is valid");
                registry
                    .register(Box::new(h.clone()))
                    .expect("metric names are unique");
                h
            },
            health_failures: counter(
                "coredns_health_request_failures_total",
                "The number of times the health check failed.",
            ),
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
            source_sync_age: {
                let g = GaugeVec::new(
                    Opts::new(
                        "clusterdns_source_seconds_since_sync",
                        "Seconds since the Kubernetes API data of this kind was last known in sync (-1: never).",
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
            cache_hits: counter_vec(
                "coredns_cache_hits_total",
                "The count of cache hits.",
                &["server", "type", "zones", "view"],
            ),
            cache_misses: counter_vec(
                "coredns_cache_misses_total",
                "The count of cache misses.",
                &["server", "zones", "view"],
            ),
            cache_requests: counter_vec(
                "coredns_cache_requests_total",
                "The count of cache requests.",
                &["server", "zones", "view"],
            ),
            cache_prefetch: counter_vec(
                "coredns_cache_prefetch_total",
                "The number of times the cache has prefetched a cached item.",
                &["server", "zones", "view"],
            ),
            cache_served_stale: counter_vec(
                "coredns_cache_served_stale_total",
                "The number of requests served from stale cache entries.",
                &["server", "zones", "view"],
            ),
            cache_evictions: counter_vec(
                "coredns_cache_evictions_total",
                "The count of cache evictions.",
                &["server", "type", "zones", "view"],
            ),
            cache_entries: gauge_vec(
                "coredns_cache_entries",
                "The number of elements in the cache.",
                &["server", "type", "zones", "view"],
            ),
            proxy_duration: histogram_vec(
                "coredns_proxy_request_duration_seconds",
                "Histogram of the time each request took.",
                &["proxy_name", "to", "rcode"],
                prometheus::exponential_buckets(0.00025, 2.0, 16).unwrap_or_default(),
            ),
            coalesced_queries: counter(
                "clusterdns_coalesced_queries_total",
                "Clients that shared an identical upstream question already in flight.",
            ),
            max_concurrent_rejects: counter(
                "coredns_forward_max_concurrent_rejects_total",
                "Questions refused because too many upstream queries were in flight.",
            ),
            upstream_healthy: gauge_vec(
                "clusterdns_upstream_healthy",
                "1 while an upstream is considered healthy, 0 while it is marked down.",
                &["to"],
            ),
            healthcheck_failures: counter_vec(
                "coredns_proxy_healthcheck_failures_total",
                "Failed health probes of upstreams marked down.",
                &["proxy_name", "to"],
            ),
            healthcheck_broken: counter(
                "coredns_forward_healthcheck_broken_total",
                "Queries for which every upstream was marked down.",
            ),
            upstream_loop: gauge_vec(
                "clusterdns_upstream_loop_detected",
                "1 for an upstream that sent our loop probe back to us; it is no longer used.",
                &["to"],
            ),
            registry,
            scrape_hooks: std::sync::Mutex::new(Vec::new()),
            server: std::sync::OnceLock::new(),
        };
        metrics
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), "", ""])
            .set(1);
        metrics
    }

    /// Runs `refresh` before every scrape: for gauges that are cheap to read at scrape time
    /// but not worth updating on the query path (cache sizes).
    pub fn on_scrape(&self, refresh: impl Fn() + Send + Sync + 'static) {
        if let Ok(mut hooks) = self.scrape_hooks.lock() {
            hooks.push(Box::new(refresh));
        }
    }

    /// The `server` label of metrics that are not per listener (the cache is shared by every
    /// listener): `dns://` and the first listen address as bound, like CoreDNS's server block
    /// (the same label that listener's request metrics carry).
    pub fn server_label(&self) -> &str {
        self.server.get().map_or("dns://:53", String::as_str)
    }

    /// Sets [`Metrics::server_label`] once, at startup, before the cache is made.
    pub fn set_server_label(&self, listen: std::net::SocketAddr) {
        let _ = self.server.set(format!("dns://{listen}"));
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        if let Ok(hooks) = self.scrape_hooks.lock() {
            for refresh in hooks.iter() {
                refresh();
            }
        }
        self.refresh_sync_age();
        self.udp_sockets
            .refresh(&self.udp_receive_drops, &self.udp_receive_queue);
        use prometheus::Encoder;
        let mut buf = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = encoder.encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Metrics {
    fn refresh_sync_age(&self) {
        use prometheus::core::Collector;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        for family in self.source_last_sync.collect() {
            for metric in family.get_metric() {
                let Some(kind) = metric.get_label().iter().find(|l| l.name() == "kind") else {
                    continue;
                };
                let last = metric.get_gauge().get_value();
                let age = if last > 0.0 {
                    (now - last).max(0.0)
                } else {
                    -1.0
                };
                self.source_sync_age
                    .with_label_values(&[kind.value()])
                    .set(age);
            }
        }
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
