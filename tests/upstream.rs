//! The upstream path end to end: cache, negative cache, coalescing, serve-stale, the in-flight
//! limit, failover, stub domains and loop detection, against upstreams the tests run.

mod support;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::*;

fn upstream_a() -> String {
    let [a, b, c, d] = UPSTREAM_A;
    format!("{a}.{b}.{c}.{d}")
}

/// A config file in `dir` with `text`, its path as a string.
fn config_file(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("clusterdns.toml");
    std::fs::write(&path, text).expect("write config");
    path.to_string_lossy().into_owned()
}

const FAST: &str =
    "[upstream]\ntimeout = \"300ms\"\ndeadline = \"600ms\"\npolicy = \"sequential\"\n";

fn server(upstreams: &[SocketAddr], config_text: &str) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(&dir, config_text);
    let manifests = fixtures().to_string_lossy().into_owned();
    let mut args = vec![
        "--config".to_string(),
        config,
        "--manifests".into(),
        manifests,
    ];
    for upstream in upstreams {
        args.push("--upstream".into());
        args.push(upstream.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (Server::start(&args), dir)
}

#[test]
fn answers_are_cached_and_their_ttl_counts_down() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let (server, _dir) = server(&[upstream.addr], FAST);

    let first = server.udp(&query("www.example.org.", RecordType::A));
    assert_eq!(first.answers[0].ttl, 300);
    assert_eq!(upstream.count(), 1);
    std::thread::sleep(Duration::from_millis(1100));
    // Another spelling, over TCP: same entry.
    let second = server.tcp(&query("WWW.example.ORG.", RecordType::A));
    assert_eq!(second.metadata.response_code, ResponseCode::NoError);
    assert!(!second.metadata.authoritative);
    assert!(second.metadata.recursion_available);
    assert_eq!(rdata(&second.answers, RecordType::A), [upstream_a()]);
    assert!(
        second.answers[0].ttl < 300 && second.answers[0].ttl >= 295,
        "{}",
        second.answers[0].ttl
    );
    assert!(
        second.answers[0]
            .name
            .eq_case(&"www.example.org.".parse().expect("name"))
    );
    assert_eq!(upstream.count(), 1, "the second answer came from the cache");
    assert_eq!(
        server.metric("coredns_cache_hits_total", "type=\"success\""),
        1.0
    );
    assert_eq!(server.metric("coredns_cache_misses_total", ""), 1.0);
    assert_eq!(
        server.metric("coredns_cache_entries", "type=\"success\""),
        1.0
    );

    // A different type is a different question.
    server.udp(&query("www.example.org.", RecordType::AAAA));
    assert_eq!(upstream.count(), 2);
}

/// A cache hit asked again is answered from its bytes (`clusterdns_prebuilt_answers_total
/// {source="cache"}`): the same answer the cache gives, TTLs counted down, every hit counted.
#[test]
fn a_repeated_cache_hit_is_answered_from_its_bytes_with_ttls_counted_down() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let (server, _dir) = server(&[upstream.addr], &format!("{FAST}[cache]\nprefetch = 0\n"));
    let prebuilt = || server.metric("clusterdns_prebuilt_answers_total", "source=\"cache\"");
    let check = |answer: &Message, ttl: std::ops::RangeInclusive<u32>, what: &str| {
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NoError,
            "{what}"
        );
        assert!(!answer.metadata.authoritative, "{what}: AA");
        assert!(answer.metadata.recursion_available, "{what}: RA");
        assert!(!answer.metadata.truncation, "{what}: TC");
        assert_eq!(
            rdata(&answer.answers, RecordType::A),
            [upstream_a()],
            "{what}"
        );
        assert!(
            ttl.contains(&answer.answers[0].ttl),
            "{what}: TTL {}",
            answer.answers[0].ttl
        );
        assert!(answer.authorities.is_empty(), "{what}");
    };
    for (round, transport) in ["udp", "tcp"].into_iter().enumerate() {
        let ask = |q: &Message| match transport {
            "udp" => server.udp(q),
            _ => server.tcp(q),
        };
        let before = prebuilt();
        // The second answer is a cache hit built the full way; the third comes from its bytes.
        for _ in 0..3 {
            check(
                &ask(&query("www.example.org.", RecordType::A)),
                295..=300,
                transport,
            );
        }
        assert_eq!(
            prebuilt() - before,
            1.0 + f64::from(round > 0),
            "{transport}"
        );
        let mut no_rd = query("www.example.org.", RecordType::A);
        no_rd.metadata.recursion_desired = false;
        let answer = ask(&no_rd);
        assert!(!answer.metadata.recursion_desired, "{transport}: RD echoed");
        check(&answer, 295..=300, transport);
    }
    // Each transport has its own bytes: every hit but the first of each came from them.
    let from_bytes = prebuilt();
    assert_eq!(from_bytes, 5.0, "UDP: 1 + no RD, TCP: 2 + no RD");
    std::thread::sleep(Duration::from_millis(2100));
    let later = server.udp(&query("www.example.org.", RecordType::A));
    check(&later, 290..=298, "2 s later");
    assert_eq!(prebuilt(), from_bytes + 1.0, "still from the bytes");
    assert_eq!(upstream.count(), 1, "one upstream question in all");
    assert_eq!(
        server.metric("coredns_cache_hits_total", "type=\"success\""),
        8.0,
        "every answer after the first is a cache hit, whoever built it"
    );
}

#[test]
fn nxdomain_is_cached_with_its_soa_for_the_negative_ttl() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let (server, _dir) = server(&[upstream.addr], FAST);
    // Miss, hit, and a hit from the hit's bytes: the same answer each time.
    for round in 0..3 {
        let answer = server.udp(&query("missing.nx.example.org.", RecordType::A));
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NXDomain,
            "round {round}"
        );
        assert!(answer.answers.is_empty());
        assert_eq!(answer.authorities.len(), 1);
        assert_eq!(answer.authorities[0].record_type(), RecordType::SOA);
        assert!(
            answer.authorities[0].ttl <= UPSTREAM_SOA_MINIMUM,
            "{}",
            answer.authorities[0].ttl
        );
    }
    assert_eq!(upstream.count(), 1);
    assert_eq!(
        server.metric("coredns_cache_hits_total", "type=\"denial\""),
        2.0
    );
    assert_eq!(
        server.metric("clusterdns_prebuilt_answers_total", "source=\"cache\""),
        1.0
    );
}

#[test]
fn identical_questions_in_flight_go_upstream_once() {
    let upstream = FakeUpstream::start(UpstreamMode::Slow(400));
    let (server, _dir) = server(
        &[upstream.addr],
        "[upstream]\ntimeout = \"2s\"\ndeadline = \"3s\"\n",
    );
    let dns = server.dns;
    let clients: Vec<_> = (0..100)
        .map(|_| udp_in_background(dns, "popular.example.org."))
        .collect();
    for client in clients {
        let answer = client.join().expect("client thread");
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        assert_eq!(rdata(&answer.answers, RecordType::A), [upstream_a()]);
    }
    assert_eq!(upstream.count(), 1, "100 clients, one upstream query");
    let shared = server.metric("clusterdns_coalesced_queries_total", "");
    let cached = server.metric("coredns_cache_hits_total", "type=\"success\"");
    assert_eq!(
        shared + cached,
        99.0,
        "every other client shared the one query"
    );
    assert!(shared >= 1.0);
}

#[test]
fn a_stale_answer_is_served_when_every_upstream_died() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let (server, _dir) = server(
        &[upstream.addr],
        &format!("{FAST}[cache]\nmax_ttl = 1\nmin_ttl = 0\n"),
    );
    let fresh = server.udp(&query("www.example.org.", RecordType::A));
    assert_eq!(fresh.answers[0].ttl, 1, "capped by max_ttl");
    upstream.go_silent();
    std::thread::sleep(Duration::from_millis(1200));
    let started = Instant::now();
    let stale = server.udp(&query("www.example.org.", RecordType::A));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(stale.metadata.response_code, ResponseCode::NoError);
    assert_eq!(rdata(&stale.answers, RecordType::A), [upstream_a()]);
    assert_eq!(stale.answers[0].ttl, 30, "RFC 8767 stale TTL");
    assert!(upstream.count() >= 2, "the upstream was asked first");
    assert_eq!(server.metric("coredns_cache_served_stale_total", ""), 1.0);
    // A name never cached has nothing stale: SERVFAIL.
    let answer = server.udp(&query("other.example.org.", RecordType::A));
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
}

#[test]
fn beyond_max_concurrent_questions_are_refused_at_once() {
    let upstream = FakeUpstream::start(UpstreamMode::Slow(800));
    let (server, _dir) = server(
        &[upstream.addr],
        "[upstream]\ntimeout = \"2s\"\ndeadline = \"3s\"\nmax_concurrent = 1\n",
    );
    let dns = server.dns;
    let slow = udp_in_background(dns, "first.example.org.");
    assert!(eventually(Duration::from_secs(2), || upstream.count() == 1));
    let started = Instant::now();
    let refused = server.udp(&query("second.example.org.", RecordType::A));
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused at once"
    );
    assert_eq!(
        server.metric("coredns_forward_max_concurrent_rejects_total", ""),
        1.0
    );
    let first = slow.join().expect("thread");
    assert_eq!(first.metadata.response_code, ResponseCode::NoError);
    // The slot is free again.
    let answer = server.udp(&query("third.example.org.", RecordType::A));
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
}

#[test]
fn a_dead_first_upstream_fails_over_and_is_marked_down() {
    let good = FakeUpstream::start(UpstreamMode::Answer);
    let dead = closed_port();
    let (server, _dir) = server(&[dead, good.addr], FAST);
    for i in 0..4 {
        let answer = server.udp(&query(&format!("n{i}.example.org."), RecordType::A));
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        assert_eq!(rdata(&answer.answers, RecordType::A), [upstream_a()]);
    }
    assert_eq!(good.count(), 4);
    assert_eq!(
        server.metric("clusterdns_upstream_healthy", &format!("to=\"{dead}\"")),
        0.0
    );
    assert_eq!(
        server.metric(
            "clusterdns_upstream_healthy",
            &format!("to=\"{}\"", good.addr)
        ),
        1.0
    );
    // Marked down after 2 failures: later queries did not try it first.
    assert_eq!(
        server.metric("clusterdns_upstream_queries_total", "outcome=\"error\""),
        2.0
    );
}

#[test]
fn stub_domains_route_by_longest_suffix() {
    let default = FakeUpstream::start(UpstreamMode::Answer);
    let acme = FakeUpstream::start(UpstreamMode::Answer);
    let corp = FakeUpstream::start(UpstreamMode::Answer);
    let text = format!(
        "{FAST}stub_domains = {{ \"acme.local\" = [\"{}\"], \"corp.acme.local\" = [\"{}\"] }}\n",
        acme.addr, corp.addr
    );
    let (server, _dir) = server(&[default.addr], &text);
    let ask = |name: &str| {
        let answer = server.udp(&query(name, RecordType::A));
        assert_eq!(
            rdata(&answer.answers, RecordType::A),
            [upstream_a()],
            "{name}"
        );
    };
    ask("db.acme.local.");
    ask("ACME.local.");
    ask("git.corp.acme.local.");
    ask("www.example.org.");
    ask("notacme.local.");
    assert_eq!(acme.count(), 2);
    assert_eq!(corp.count(), 1);
    assert_eq!(default.count(), 2);
    assert_eq!(
        acme.last_question.lock().expect("lock").as_deref(),
        Some("ACME.local. A")
    );
}

#[test]
fn an_upstream_that_loops_back_is_dropped_and_the_zone_keeps_serving() {
    // The server will listen on `port`; the relay sends everything back to it, as a
    // resolv.conf naming the node's own stub resolver would.
    let port = unused_port();
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let relay = FakeUpstream::start(UpstreamMode::Relay(listen));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(&dir, FAST);
    let manifests = fixtures().to_string_lossy().into_owned();
    let (listen_arg, relay_arg) = (listen.to_string(), relay.addr.to_string());
    let server = Server::start(&[
        "--config",
        &config,
        "--manifests",
        &manifests,
        "--listen",
        &listen_arg,
        "--upstream",
        &relay_arg,
    ]);
    let looped = format!("to=\"{}\"", relay.addr);
    assert!(
        eventually(Duration::from_secs(3), || server
            .metric("clusterdns_upstream_loop_detected", &looped)
            == 1.0),
        "loop not detected; log:\n{}",
        server.log()
    );
    assert!(
        server.log_shows("forwarding loop", Duration::from_secs(3)),
        "{}",
        server.log()
    );
    let (status, body) = http_get(server.ready, "/ready");
    assert_eq!(status, 200, "the cluster zone is still served");
    assert!(
        body.contains(&format!("upstream {} loops back", relay.addr)),
        "{body}"
    );

    let started = Instant::now();
    let answer = server.udp(&query("www.example.org.", RecordType::A));
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "no forwarding to the loop"
    );
    let answer = server.udp(&query(
        "kubernetes.default.svc.cluster.local.",
        RecordType::A,
    ));
    assert_eq!(rdata(&answer.answers, RecordType::A), ["192.0.2.1"]);
}

#[test]
fn a_normal_upstream_is_not_mistaken_for_a_loop() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let (server, _dir) = server(&[upstream.addr], FAST);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        server.metric(
            "clusterdns_upstream_loop_detected",
            &format!("to=\"{}\"", upstream.addr)
        ),
        0.0
    );
    let (status, body) = http_get(server.ready, "/ready");
    assert_eq!((status, body.as_str()), (200, "OK"));
}
