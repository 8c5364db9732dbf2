//! /metrics after real queries: CoreDNS's names, labels and buckets, so dashboards and alerts
//! written for CoreDNS keep working.

mod support;

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
fn cache_and_forward_metrics_have_coredns_labels() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let server = Server::fixtures(Some(upstream.addr));
    server.udp(&query("www.example.org.", RecordType::A));
    server.udp(&query("www.example.org.", RecordType::A));
    let text = server.metrics_text();
    let value = |name: &str, labels: &str| metric_value(&text, name, labels);
    // The cache is shared by the listeners: `server` is the first configured one.
    let cache = "server=\"dns://127.0.0.1:0\",zones=\".\",view=\"\"";
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
