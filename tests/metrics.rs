//! /metrics after real queries: CoreDNS's names, labels and buckets, so dashboards and alerts
//! written for CoreDNS keep working.

mod support;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use support::*;

#[test]
fn per_query_metrics_have_coredns_labels() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let server = Server::fixtures(Some(upstream.addr));
    let server_label = format!("server=\"dns://{}\"", server.dns);

    server.udp(&query(
        "kubernetes.default.svc.cluster.local.",
        RecordType::A,
    ));
    server.udp(&query("nothing.default.svc.cluster.local.", RecordType::A));
    server.tcp(&query(
        "_https._tcp.kubernetes.default.svc.cluster.local.",
        RecordType::SRV,
    ));
    server.udp(&query("www.example.org.", RecordType::A));
    let mut with_do = query_edns(
        "kubernetes.default.svc.cluster.local.",
        RecordType::AAAA,
        1232,
    );
    if let Some(edns) = with_do.edns.as_mut() {
        edns.set_dnssec_ok(true);
    }
    server.udp(&with_do);
    server.udp(&query(
        "kubernetes.default.svc.cluster.local.",
        RecordType::NULL,
    ));

    let text = server.metrics_text();
    let value = |name: &str, labels: &str| metric_value(&text, name, labels);
    let requests = |proto: &str, qtype: &str| {
        value(
            "coredns_dns_requests_total",
            &format!(
                "{server_label},zone=\".\",view=\"\",proto=\"{proto}\",family=\"1\",type=\"{qtype}\""
            ),
        )
    };
    assert_eq!(requests("udp", "A"), 3.0, "{text}");
    assert_eq!(requests("tcp", "SRV"), 1.0);
    assert_eq!(requests("udp", "AAAA"), 1.0);
    assert_eq!(
        requests("udp", "other"),
        1.0,
        "types CoreDNS does not name are `other`"
    );
    let responses = |rcode: &str, plugin: &str| {
        value(
            "coredns_dns_responses_total",
            &format!("{server_label},zone=\".\",view=\"\",rcode=\"{rcode}\",plugin=\"{plugin}\""),
        )
    };
    assert_eq!(responses("NOERROR", "kubernetes"), 4.0);
    assert_eq!(responses("NXDOMAIN", "kubernetes"), 1.0);
    assert_eq!(responses("NOERROR", "forward"), 1.0);
    assert_eq!(
        value(
            "coredns_dns_do_requests_total",
            &format!("{server_label},zone=\".\",view=\"\"")
        ),
        1.0
    );

    // Histograms: CoreDNS's buckets, one observation per response.
    assert_eq!(
        value("coredns_dns_request_duration_seconds_count", &server_label),
        6.0
    );
    assert!(
        text.lines().any(
            |l| l.starts_with("coredns_dns_request_duration_seconds_bucket{")
                && l.contains("le=\"0.00025\"")
        ),
        "first bucket 0.25 ms"
    );
    assert!(text.contains("le=\"8.192\""), "last bucket 8.192 s");
    assert_eq!(
        value("coredns_dns_request_size_bytes_count", "proto=\"udp\""),
        5.0
    );
    assert_eq!(
        value("coredns_dns_response_size_bytes_count", "proto=\"tcp\""),
        1.0
    );
    assert!(text.contains("le=\"511\""), "CoreDNS size buckets");
    assert!(value("coredns_dns_response_size_bytes_sum", "proto=\"udp\"") > 5.0 * 12.0);

    assert_eq!(
        value(
            "coredns_build_info",
            &format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))
        ),
        1.0
    );
    assert!(text.contains("coredns_panics_total 0"));
    assert!(text.contains("coredns_reload_failed_total 0"));
}

#[test]
fn answers_repeated_from_prebuilt_bytes_are_counted_like_any_other() {
    // A question asked again is answered from the bytes built the first time (zone names
    // and cache hits alike), and a UDP worker counts those per batch: the series must end up
    // exactly as if every answer had been built.
    const ROUNDS: usize = 6;
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let server = Server::fixtures(Some(upstream.addr));
    let server_label = format!("server=\"dns://{}\"", server.dns);
    let mut with_do = query_edns(
        "kubernetes.default.svc.cluster.local.",
        RecordType::AAAA,
        1232,
    );
    if let Some(edns) = with_do.edns.as_mut() {
        edns.set_dnssec_ok(true);
    }
    for _ in 0..ROUNDS {
        let zone = server.udp(&query(
            "kubernetes.default.svc.cluster.local.",
            RecordType::A,
        ));
        assert_eq!(zone.metadata.response_code, ResponseCode::NoError);
        assert_eq!(zone.answers.len(), 1);
        let forwarded = server.udp(&query("www.example.org.", RecordType::A));
        assert_eq!(forwarded.metadata.response_code, ResponseCode::NoError);
        assert_eq!(forwarded.answers.len(), 1);
        server.udp(&with_do);
    }
    let text = server.metrics_text();
    let value = |name: &str, labels: &str| metric_value(&text, name, labels);
    let rounds = ROUNDS as f64;
    assert!(
        value("clusterdns_prebuilt_answers_total", "source=\"zone\"") >= 2.0 * (rounds - 1.0),
        "the repeated zone questions were answered from bytes: {text}"
    );
    assert!(
        value("clusterdns_prebuilt_answers_total", "source=\"cache\"") >= rounds - 2.0,
        "the repeated upstream question was answered from bytes: {text}"
    );
    let requests = |qtype: &str| {
        value(
            "coredns_dns_requests_total",
            &format!("{server_label},proto=\"udp\",type=\"{qtype}\""),
        )
    };
    assert_eq!(requests("A"), 2.0 * rounds);
    assert_eq!(requests("AAAA"), rounds);
    let responses = |plugin: &str| {
        value(
            "coredns_dns_responses_total",
            &format!("{server_label},rcode=\"NOERROR\",plugin=\"{plugin}\""),
        )
    };
    assert_eq!(responses("kubernetes"), 2.0 * rounds);
    assert_eq!(responses("forward"), rounds);
    assert_eq!(
        value("coredns_dns_do_requests_total", &server_label),
        rounds
    );
    let count = |name: &str| value(name, &format!("{server_label},proto=\"udp\""));
    assert_eq!(
        value(
            "coredns_dns_request_duration_seconds_count",
            &format!("{server_label},type=\"A\"")
        ),
        2.0 * rounds
    );
    assert_eq!(count("coredns_dns_request_size_bytes_count"), 3.0 * rounds);
    assert_eq!(count("coredns_dns_response_size_bytes_count"), 3.0 * rounds);
    assert!(count("coredns_dns_response_size_bytes_sum") > 3.0 * rounds * 12.0);
}

#[test]
fn cache_and_forward_metrics_have_coredns_labels() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let server = Server::fixtures(Some(upstream.addr));
    server.udp(&query("www.example.org.", RecordType::A));
    server.udp(&query("www.example.org.", RecordType::A));
    let text = server.metrics_text();
    let value = |name: &str, labels: &str| metric_value(&text, name, labels);
    // The cache is shared by the listeners: `server` is the first one as bound, the label its
    // request metrics carry too.
    let cache = &format!("server=\"dns://{}\",zones=\".\",view=\"\"", server.dns);
    assert_eq!(
        value(
            "coredns_cache_hits_total",
            &format!("{cache},type=\"success\"")
        ),
        1.0,
        "{text}"
    );
    assert_eq!(value("coredns_cache_misses_total", cache), 1.0);
    assert_eq!(value("coredns_cache_requests_total", cache), 2.0);
    assert_eq!(
        value(
            "coredns_cache_entries",
            &format!("{cache},type=\"success\"")
        ),
        1.0
    );
    let proxy = format!(
        "proxy_name=\"forward\",to=\"{}\",rcode=\"NOERROR\"",
        upstream.addr
    );
    assert_eq!(
        value("coredns_proxy_request_duration_seconds_count", &proxy),
        1.0,
        "{text}"
    );
}

/// RFC 3339 UTC for a moment `ago` in the past (the EndpointSlice controller's format).
fn rfc3339_ago(ago: std::time::Duration) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .saturating_sub(ago)
        .as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

const HEADLESS: &str = "apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432}]
";

fn db_slice(addresses: &[&str], triggered: &str) -> String {
    let endpoints: String = addresses
        .iter()
        .map(|a| format!("- addresses: [\"{a}\"]\n  conditions: {{ready: true}}\n"))
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-1
  namespace: default
  labels: {{kubernetes.io/service-name: db}}
  annotations: {{endpoints.kubernetes.io/last-change-trigger-time: \"{triggered}\"}}
addressType: IPv4
ports: [{{name: pg, port: 5432, protocol: TCP}}]
endpoints:
{endpoints}"
    )
}

#[test]
fn zone_sizes_and_dns_programming_latency() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("db.yaml"), HEADLESS).expect("write");
    // Present at startup, annotated: its change happened before this server ran, so it is
    // not a programming latency (CoreDNS does not count the initial list either).
    std::fs::write(
        dir.path().join("db-slice.yaml"),
        db_slice(
            &["10.1.0.1"],
            &rfc3339_ago(std::time::Duration::from_secs(3600)),
        ),
    )
    .expect("write");
    let server = Server::manifests(dir.path(), None, &[]);
    let kind = "service_kind=\"headless_with_selector\"";
    let programmed = "coredns_kubernetes_dns_programming_duration_seconds_count";
    assert_eq!(server.metric(programmed, kind), 0.0);
    assert_eq!(server.metric("clusterdns_zone_endpoints", ""), 1.0);
    // Static: apex NS, dns-version TXT. db: A at the service and at the dashed endpoint
    // name, SRV at the service and at _pg._tcp, PTR of the endpoint.
    assert_eq!(server.metric("clusterdns_zone_records", ""), 7.0);
    assert_eq!(server.metric("clusterdns_zone_services", ""), 1.0);

    // The controller triggered this change 4 s ago; it reaches us now.
    std::fs::write(
        dir.path().join("db-slice.yaml"),
        db_slice(
            &["10.1.0.1", "10.1.0.2"],
            &rfc3339_ago(std::time::Duration::from_secs(4)),
        ),
    )
    .expect("write");
    assert!(eventually(std::time::Duration::from_secs(10), || {
        server
            .udp(&query("db.default.svc.cluster.local.", RecordType::A))
            .answers
            .len()
            == 2
    }));
    assert_eq!(server.metric(programmed, kind), 1.0);
    let latency = server.metric(
        "coredns_kubernetes_dns_programming_duration_seconds_sum",
        kind,
    );
    // The annotation has one-second precision: 4 s ago is 4 to 5 s, plus the file watch.
    assert!((3.0..30.0).contains(&latency), "latency {latency}");
    assert_eq!(server.metric("clusterdns_zone_endpoints", ""), 2.0);
    assert_eq!(server.metric("clusterdns_zone_records", ""), 12.0);

    // The same slice written again unchanged (a touch, a relist) is no new change.
    let same = std::fs::read_to_string(dir.path().join("db-slice.yaml")).expect("read");
    std::fs::write(dir.path().join("db-slice.yaml"), same).expect("write");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(server.metric(programmed, kind), 1.0);

    // Removing the service and its slice empties the zone back to its static records.
    std::fs::remove_file(dir.path().join("db-slice.yaml")).expect("rm");
    std::fs::remove_file(dir.path().join("db.yaml")).expect("rm");
    assert!(eventually(std::time::Duration::from_secs(10), || {
        server.metric("clusterdns_zone_records", "") == 2.0
    }));
    assert_eq!(server.metric("clusterdns_zone_endpoints", ""), 0.0);
    assert_eq!(server.metric("clusterdns_zone_services", ""), 0.0);
}

#[test]
fn health_endpoint_probes_itself_like_coredns() {
    let server = Server::fixtures(None);
    let count = "coredns_health_request_duration_seconds_count";
    assert!(
        eventually(std::time::Duration::from_secs(5), || server
            .metric(count, "")
            >= 2.0),
        "{}",
        server.metrics_text()
    );
    assert_eq!(
        server.metric("coredns_health_request_failures_total", ""),
        0.0
    );
    let text = server.metrics_text();
    assert!(
        text.contains("coredns_health_request_duration_seconds_bucket{le=\"0.00025\"}")
            && text.contains("coredns_health_request_duration_seconds_bucket{le=\"2.5\"}"),
        "CoreDNS's slim buckets: {text}"
    );
}
