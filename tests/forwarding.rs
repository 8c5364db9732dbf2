//! Names outside the cluster zone: forwarded to the upstreams the test starts itself, with
//! clear SERVFAIL (never silence) when they fail; ExternalName chains followed upstream.

mod support;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use std::time::{Duration, Instant};
use support::*;

/// Upstream timing short enough to test the failure paths quickly.
fn fast_timeouts(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("clusterdns.toml");
    std::fs::write(
        &path,
        "[upstream]\ntimeout = \"200ms\"\ndeadline = \"600ms\"\n",
    )
    .expect("write config");
    path.to_string_lossy().into_owned()
}

fn server_with_upstream(upstream: &FakeUpstream, config: &tempfile::TempDir) -> Server {
    let config = fast_timeouts(config);
    Server::manifests(&fixtures(), Some(upstream.addr), &["--config", &config])
}

fn upstream_a() -> String {
    let [a, b, c, d] = UPSTREAM_A;
    format!("{a}.{b}.{c}.{d}")
}

fn assert_servfail(answer: &Message) {
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    assert!(!answer.metadata.authoritative);
    assert!(answer.metadata.recursion_available);
    assert!(answer.answers.is_empty());
}

#[test]
fn names_outside_the_zone_are_forwarded_with_the_upstream_answer() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let config = tempfile::tempdir().expect("tempdir");
    let server = server_with_upstream(&upstream, &config);

    // A different name per transport, so both go upstream (the second is not a cache hit).
    for transport in ["udp", "tcp"] {
        let q = query(&format!("{transport}.www.Example.org."), RecordType::A);
        let answer = if transport == "udp" {
            server.udp(&q)
        } else {
            server.tcp(&q)
        };
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NoError,
            "{transport}"
        );
        assert!(
            !answer.metadata.authoritative,
            "upstream answers are not authoritative"
        );
        assert!(answer.metadata.recursion_available);
        assert_eq!(rdata(&answer.answers, RecordType::A), [upstream_a()]);
        assert_eq!(answer.answers[0].ttl, 300, "upstream TTL passed through");
        assert!(answer.authorities.is_empty());
    }
    assert_eq!(upstream.count(), 2);
    assert_eq!(
        server.metric("clusterdns_upstream_queries_total", "outcome=\"ok\""),
        2.0
    );
    assert_eq!(
        server.metric(
            "coredns_dns_responses_total",
            "plugin=\"forward\",rcode=\"NOERROR\""
        ),
        2.0
    );

    // A name that merely ends like the zone is not in it.
    let answer = server.udp(&query("notcluster.local.", RecordType::A));
    assert_eq!(rdata(&answer.answers, RecordType::A), [upstream_a()]);
    assert_eq!(
        upstream.last_question.lock().expect("lock").as_deref(),
        Some("notcluster.local. A")
    );
}

#[test]
fn upstream_nxdomain_and_edns_pass_through() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let config = tempfile::tempdir().expect("tempdir");
    let server = server_with_upstream(&upstream, &config);

    let answer = server.udp(&query("gone.nx.example.org.", RecordType::A));
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    assert!(!answer.metadata.authoritative);
    assert!(answer.answers.is_empty());

    let answer = server.udp(&query_edns("www.example.org.", RecordType::A, 4096));
    let edns = answer.edns.as_ref().expect("OPT answered to an EDNS query");
    assert_eq!(edns.max_payload(), 1232);
    assert_eq!(rdata(&answer.answers, RecordType::A), [upstream_a()]);
    // The upstream's own OPT is not copied into the additional section.
    assert!(answer.additionals.is_empty());
}

#[test]
fn reverse_queries_the_cluster_does_not_own_go_upstream() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let config = tempfile::tempdir().expect("tempdir");
    let server = server_with_upstream(&upstream, &config);

    // A ClusterIP of the fixtures: answered from the zone, the upstream is not asked.
    let answer = server.udp(&query("1.2.0.192.in-addr.arpa.", RecordType::PTR));
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.metadata.authoritative);
    assert_eq!(
        rdata(&answer.answers, RecordType::PTR),
        ["kubernetes.default.svc.cluster.local."]
    );
    assert_eq!(upstream.count(), 0);

    // An address the cluster does not know.
    let answer = server.udp(&query("8.8.8.8.in-addr.arpa.", RecordType::PTR));
    assert!(!answer.metadata.authoritative);
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(upstream.count(), 1);
    assert_eq!(
        upstream.last_question.lock().expect("lock").as_deref(),
        Some("8.8.8.8.in-addr.arpa. PTR")
    );
}

#[test]
fn external_name_outside_the_zone_is_chased_upstream() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let config = tempfile::tempdir().expect("tempdir");
    let server = server_with_upstream(&upstream, &config);

    let answer = server.both(&query("ext.default.svc.cluster.local.", RecordType::A));
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(
        answer.metadata.authoritative,
        "the CNAME is the zone's own data"
    );
    assert_eq!(answer.answers.len(), 2, "{:?}", answer.answers);
    assert_eq!(answer.answers[0].record_type(), RecordType::CNAME);
    assert_eq!(
        answer.answers[0].name.to_string(),
        "ext.default.svc.cluster.local."
    );
    assert_eq!(answer.answers[0].data.to_string(), "www.example.org.");
    assert_eq!(answer.answers[0].ttl, 5);
    assert_eq!(answer.answers[1].name.to_string(), "www.example.org.");
    assert_eq!(rdata(&answer.answers, RecordType::A), [upstream_a()]);
    assert_eq!(
        upstream.last_question.lock().expect("lock").as_deref(),
        Some("www.example.org. A")
    );

    // Asking for the CNAME itself needs no upstream.
    let before = upstream.count();
    let answer = server.udp(&query("ext.default.svc.cluster.local.", RecordType::CNAME));
    assert_eq!(
        rdata(&answer.answers, RecordType::CNAME),
        ["www.example.org."]
    );
    assert_eq!(answer.answers.len(), 1);
    assert_eq!(upstream.count(), before);
}

#[test]
fn silent_upstream_gives_servfail_within_the_deadline_not_silence() {
    let upstream = FakeUpstream::start(UpstreamMode::Silent);
    let config = tempfile::tempdir().expect("tempdir");
    let server = server_with_upstream(&upstream, &config);

    for transport in ["udp", "tcp"] {
        let started = Instant::now();
        let q = query("www.example.org.", RecordType::A);
        let answer = if transport == "udp" {
            server.udp(&q)
        } else {
            server.tcp(&q)
        };
        let elapsed = started.elapsed();
        assert_servfail(&answer);
        assert!(
            elapsed >= Duration::from_millis(500),
            "{transport}: {elapsed:?}"
        );
        assert!(elapsed < Duration::from_secs(3), "{transport}: {elapsed:?}");
    }
    assert!(upstream.count() >= 2, "the upstream was asked");
    assert!(server.metric("clusterdns_upstream_queries_total", "outcome=\"timeout\"") >= 2.0);

    // The ExternalName chain keeps its CNAME and says SERVFAIL.
    let answer = server.udp(&query("ext.default.svc.cluster.local.", RecordType::A));
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(
        rdata(&answer.answers, RecordType::CNAME),
        ["www.example.org."]
    );
    assert_eq!(answer.answers.len(), 1);

    // The cluster zone does not depend on the upstream.
    let answer = server.udp(&query(
        "kubernetes.default.svc.cluster.local.",
        RecordType::A,
    ));
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(rdata(&answer.answers, RecordType::A), ["192.0.2.1"]);
}

#[test]
fn refused_upstream_gives_servfail_at_once() {
    let config = tempfile::tempdir().expect("tempdir");
    let path = config.path().join("clusterdns.toml");
    std::fs::write(&path, "[upstream]\ntimeout = \"2s\"\ndeadline = \"4s\"\n").expect("write");
    let path = path.to_string_lossy().into_owned();
    // No upstream given: the harness points it at a closed loopback port.
    let server = Server::manifests(&fixtures(), None, &["--config", &path]);
    let started = Instant::now();
    let answer = server.udp(&query("www.example.org.", RecordType::A));
    assert_servfail(&answer);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(server.metric("clusterdns_upstream_queries_total", "outcome=\"error\"") >= 1.0);
    assert_eq!(
        server.metric(
            "coredns_dns_responses_total",
            "plugin=\"\",rcode=\"SERVFAIL\""
        ),
        1.0
    );
}

#[test]
fn resolv_conf_without_nameservers_gives_servfail_not_a_hang() {
    let dir = tempfile::tempdir().expect("tempdir");
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "# nothing here\nsearch example.org\n").expect("write");
    let resolv = resolv.to_string_lossy().into_owned();
    let manifests = fixtures().to_string_lossy().into_owned();
    let server = Server::start(&["--manifests", &manifests, "--resolv-conf", &resolv]);
    let started = Instant::now();
    let answer = server.udp(&query("www.example.org.", RecordType::A));
    assert_servfail(&answer);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        server.log_shows("no nameserver in resolv.conf", Duration::from_secs(2)),
        "{}",
        server.log()
    );

    let missing = dir
        .path()
        .join("missing.conf")
        .to_string_lossy()
        .into_owned();
    let server = Server::start(&["--manifests", &manifests, "--resolv-conf", &missing]);
    assert_servfail(&server.udp(&query("www.example.org.", RecordType::A)));
    assert!(
        server.log_shows("cannot read resolv.conf", Duration::from_secs(2)),
        "{}",
        server.log()
    );
}
