//! Stopping and logging: SIGTERM lameduck (health says 503 first, DNS keeps answering, nothing
//! in flight is lost, exit 0), the query log and JSON logs.

mod support;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use std::time::{Duration, Instant};
use support::*;

#[test]
fn sigterm_flips_health_first_keeps_answering_through_lameduck_then_exits_zero() {
    let manifests = fixtures().to_string_lossy().into_owned();
    let upstream = closed_port().to_string();
    let mut server = Server::start(&[
        "--manifests",
        &manifests,
        "--upstream",
        &upstream,
        "--lameduck",
        "1500ms",
    ]);
    assert_eq!(http_get(server.health, "/health"), (200, "OK".to_string()));
    let started = Instant::now();
    server.terminate();
    assert!(
        eventually(Duration::from_millis(500), || http_get(
            server.health,
            "/health"
        )
        .0 == 503),
        "/health did not turn 503"
    );
    assert_eq!(http_get(server.ready, "/ready").0, 503);
    // Until lameduck ends every query is answered, over UDP and TCP.
    let mut answered = 0;
    while started.elapsed() < Duration::from_millis(1100) {
        let q = query("kubernetes.default.svc.cluster.local.", RecordType::A);
        let answer = if answered % 2 == 0 {
            server.udp(&q)
        } else {
            server.tcp(&q)
        };
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        assert_eq!(rdata(&answer.answers, RecordType::A), ["192.0.2.1"]);
        answered += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(answered > 10, "{answered}");
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("exited after lameduck");
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );
    let log = server.log();
    assert!(log.contains("lameduck"), "{log}");
}

#[test]
fn an_upstream_answer_in_flight_at_shutdown_still_reaches_the_client() {
    let upstream = FakeUpstream::start(UpstreamMode::Slow(600));
    let manifests = fixtures().to_string_lossy().into_owned();
    let upstream_arg = upstream.addr.to_string();
    let mut server = Server::start(&[
        "--manifests",
        &manifests,
        "--upstream",
        &upstream_arg,
        "--lameduck",
        "0s",
    ]);
    let dns = server.dns;
    let client = udp_in_background(dns, "slow.example.org.");
    assert!(eventually(Duration::from_secs(2), || upstream.count() == 1));
    server.terminate();
    let answer = client.join().expect("client");
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answer.answers.len(), 1);
    let status = server.wait_exit(Duration::from_secs(5)).expect("exited");
    assert!(status.success());
}

#[test]
fn the_query_log_says_who_asked_what_and_where_the_answer_came_from() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("clusterdns.toml");
    std::fs::write(&config, "[log]\nqueries = true\n").expect("write");
    let config = config.to_string_lossy().into_owned();
    let server = Server::manifests(&fixtures(), Some(upstream.addr), &["--config", &config]);
    server.udp(&query(
        "kubernetes.default.svc.cluster.local.",
        RecordType::A,
    ));
    server.tcp(&query("www.example.org.", RecordType::AAAA));
    server.udp(&query("www.example.org.", RecordType::A));
    server.udp(&query("www.example.org.", RecordType::A));
    let logged = |needle: &[&str]| {
        eventually(Duration::from_secs(2), || {
            server
                .log()
                .lines()
                .any(|l| l.contains("clusterdns::query") && needle.iter().all(|n| l.contains(n)))
        })
    };
    assert!(
        logged(&[
            "name=kubernetes.default.svc.cluster.local.",
            "type=A",
            "rcode=\"NOERROR\"",
            "source=\"zone\"",
            "proto=\"udp\""
        ]),
        "{}",
        server.log()
    );
    assert!(
        logged(&[
            "name=www.example.org.",
            "type=AAAA",
            "source=\"upstream\"",
            "proto=\"tcp\""
        ]),
        "{}",
        server.log()
    );
    assert!(
        logged(&["name=www.example.org.", "type=A", "source=\"cache\""]),
        "{}",
        server.log()
    );
    assert!(logged(&["client=127.0.0.1:"]), "{}", server.log());
}

#[test]
fn no_query_log_by_default_and_json_logs_on_request() {
    let server = Server::manifests(&fixtures(), None, &["--log-format", "json"]);
    server.udp(&query(
        "kubernetes.default.svc.cluster.local.",
        RecordType::A,
    ));
    assert!(server.log_shows("manifests loaded", Duration::from_secs(2)));
    let log = server.log();
    assert!(!log.contains("clusterdns::query"), "{log}");
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            value.get("level").is_some() && value.get("fields").is_some(),
            "{line}"
        );
    }
}
