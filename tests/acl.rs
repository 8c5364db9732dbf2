//! Not an amplifier, not an open resolver: minimal ANY answers (RFC 8482) and the `[acl]`
//! lists (who may ask, who may have names forwarded).

mod support;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use support::*;

fn with_config(upstream: &FakeUpstream, text: &str) -> (Server, tempfile::TempDir) {
    server_with_config(text, Some(upstream.addr))
}

#[test]
fn any_questions_get_one_hinfo_record_not_every_record() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let server = Server::fixtures(Some(upstream.addr));
    for transport in ["udp", "tcp"] {
        let q = query("dual.default.svc.cluster.local.", RecordType::ANY);
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
        assert!(answer.metadata.authoritative);
        assert_eq!(answer.answers.len(), 1, "{:?}", answer.answers);
        assert_eq!(answer.answers[0].record_type(), RecordType::HINFO);
        match &answer.answers[0].data {
            hickory_proto::rr::RData::HINFO(hinfo) => {
                assert_eq!(&*hinfo.cpu, b"RFC8482");
                assert!(hinfo.os.is_empty());
            }
            other => panic!("expected HINFO, got {other:?}"),
        }
        assert_eq!(answer.answers[0].ttl, 5);
    }
    // A cluster name that does not exist stays NXDOMAIN.
    let answer = server.udp(&query(
        "nothing.default.svc.cluster.local.",
        RecordType::ANY,
    ));
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(rdata(&answer.authorities, RecordType::SOA).len(), 1);
    // Outside the zone: answered here, never forwarded (no amplification through upstreams).
    let answer = server.udp(&query("www.example.org.", RecordType::ANY));
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(!answer.metadata.authoritative);
    assert_eq!(rdata(&answer.answers, RecordType::HINFO).len(), 1);
    assert_eq!(upstream.count(), 0);
}

#[test]
fn clients_outside_the_recursion_networks_get_cluster_answers_but_no_forwarding() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let (server, _dir) = with_config(&upstream, "[acl]\nrecursion = [\"10.0.0.0/8\"]\n");
    let answer = server.udp(&query(
        "kubernetes.default.svc.cluster.local.",
        RecordType::A,
    ));
    assert_eq!(rdata(&answer.answers, RecordType::A), ["192.0.2.1"]);
    for name in ["www.example.org.", "8.8.8.8.in-addr.arpa."] {
        let answer = server.udp(&query(name, RecordType::A));
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::Refused,
            "{name}"
        );
        assert!(answer.answers.is_empty());
    }
    // An ExternalName's CNAME is the zone's to give; following it out would be forwarding.
    let answer = server.udp(&query("ext.default.svc.cluster.local.", RecordType::A));
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        rdata(&answer.answers, RecordType::CNAME),
        ["www.example.org."]
    );
    assert_eq!(answer.answers.len(), 1);
    assert_eq!(upstream.count(), 0, "nothing was forwarded");
    assert_eq!(
        server.metric("clusterdns_acl_refused_total", "reason=\"no_recursion\""),
        2.0
    );
}

/// One UDP exchange from a given loopback source address.
fn udp_from(
    source: &str,
    server: &Server,
    q: &hickory_proto::op::Message,
) -> hickory_proto::op::Message {
    let socket = std::net::UdpSocket::bind((source, 0)).expect("bind the source address");
    socket.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    socket
        .send_to(&q.to_vec().expect("encode"), server.dns)
        .expect("send");
    let mut buf = vec![0u8; 4096];
    let len = socket.recv(&mut buf).expect("an answer");
    parse_answer(q, &buf[..len])
}

#[test]
fn ra_tells_each_client_whether_it_may_have_names_forwarded() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    // 127.0.0.2 may recurse; 127.0.0.1 (every other test client) may not.
    let (server, _dir) = with_config(&upstream, "[acl]\nrecursion = [\"127.0.0.2/32\"]\n");
    let cluster = query("kubernetes.default.svc.cluster.local.", RecordType::A);
    // Three times each, alternating: the second and later answers are prebuilt bytes, built
    // for whichever client asked first.
    for _ in 0..3 {
        for (source, may_forward) in [("127.0.0.2", true), ("127.0.0.1", false)] {
            let answer = udp_from(source, &server, &cluster);
            assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
            assert!(answer.metadata.authoritative);
            assert_eq!(rdata(&answer.answers, RecordType::A), ["192.0.2.1"]);
            assert_eq!(
                answer.metadata.recursion_available, may_forward,
                "{source}: RA says whether it may recurse"
            );
        }
    }
    let outside = query("www.example.org.", RecordType::A);
    for _ in 0..2 {
        let answer = udp_from("127.0.0.2", &server, &outside);
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        assert!(answer.metadata.recursion_available);
        assert!(!answer.metadata.authoritative);
        let answer = udp_from("127.0.0.1", &server, &outside);
        assert_eq!(answer.metadata.response_code, ResponseCode::Refused);
        assert!(!answer.metadata.recursion_available, "REFUSED without RA");
        assert!(answer.answers.is_empty());
    }
    assert_eq!(upstream.count(), 1, "the second answer came from the cache");
    // Over TCP too (the test client, 127.0.0.1, may not recurse).
    let answer = server.tcp(&outside);
    assert_eq!(answer.metadata.response_code, ResponseCode::Refused);
    assert!(!answer.metadata.recursion_available);
}

#[test]
fn clients_outside_allow_get_refused_for_everything() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let (server, _dir) = with_config(&upstream, "[acl]\nallow = [\"10.0.0.0/8\", \"fd00::/8\"]\n");
    for name in ["kubernetes.default.svc.cluster.local.", "www.example.org."] {
        let answer = server.both(&query(name, RecordType::A));
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::Refused,
            "{name}"
        );
        assert!(answer.answers.is_empty());
        assert!(!answer.metadata.authoritative);
    }
    assert_eq!(
        server.metric("clusterdns_acl_refused_total", "reason=\"not_allowed\""),
        4.0
    );
    assert_eq!(upstream.count(), 0);
}

#[test]
fn a_bad_network_in_the_acl_is_a_config_error_with_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("clusterdns.toml");
    std::fs::write(
        &path,
        "[acl]\nrecursion = [\"10.0.0.0/8\", \"not-a-net\"]\n",
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clusterdns"))
        .args(["check-config", &path.to_string_lossy()])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:2:", path.display())),
        "{stderr}"
    );
}

/// Sends `count` questions for `name` at once from `socket` and collects every answer that
/// comes back before 500 ms of silence: (answers with records, truncated answers).
fn burst(
    socket: &std::net::UdpSocket,
    server: &Server,
    name: &str,
    count: u16,
) -> (usize, Vec<(Vec<u8>, hickory_proto::op::Message)>) {
    let mut sizes = std::collections::HashMap::new();
    for id in 0..count {
        let mut q = query(name, RecordType::A);
        q.metadata.id = id;
        let bytes = q.to_vec().expect("encode");
        sizes.insert(id, bytes.len());
        socket.send_to(&bytes, server.dns).expect("send");
    }
    socket
        .set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .expect("timeout");
    let (mut full, mut slipped) = (0, Vec::new());
    let mut buf = [0u8; 4096];
    while let Ok((len, _)) = socket.recv_from(&mut buf) {
        let answer = hickory_proto::op::Message::from_vec(&buf[..len]).expect("parses");
        assert!(
            sizes.contains_key(&answer.metadata.id),
            "echoes one of our ids"
        );
        if answer.metadata.truncation {
            slipped.push((buf[..len].to_vec(), answer));
        } else {
            assert_eq!(answer.answers.len(), 1);
            full += 1;
        }
    }
    (full, slipped)
}

#[test]
fn rate_limit_drops_and_slips_udp_per_client_network_and_leaves_tcp_alone() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let (server, _dir) = with_config(
        &upstream,
        "[acl.rate_limit]\nresponses_per_second = 5\nslip = 2\nipv4_prefix = 32\n",
    );
    let name = "kubernetes.default.svc.cluster.local.";
    let flooder = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let (full, slipped) = burst(&flooder, &server, name, 40);
    // One second of burst (5), plus what refills while the 40 arrive (well under a second).
    assert!((5..=7).contains(&full), "{full} full answers");
    let limited = 40 - full;
    assert!(
        slipped.len() + 2 >= limited / 2 && slipped.len() <= limited / 2 + 1,
        "every second limited answer slips: {} of {limited}",
        slipped.len()
    );
    for (bytes, answer) in &slipped {
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        assert!(answer.answers.is_empty() && answer.authorities.is_empty());
        assert!(answer.additionals.is_empty());
        assert_eq!(answer.queries.len(), 1);
        assert_eq!(answer.queries[0].name().to_ascii(), name);
        // No larger than the question: useless for amplification.
        assert!(bytes.len() <= query(name, RecordType::A).to_vec().expect("encode").len());
    }
    assert_eq!(
        server.metric("clusterdns_rate_limited_total", "action=\"slip\""),
        slipped.len() as f64
    );
    assert_eq!(
        server.metric("clusterdns_rate_limited_total", "action=\"drop\""),
        (limited - slipped.len()) as f64
    );

    // Another client network is not affected, nor is TCP from the limited client.
    let other = std::net::UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    let (other_full, other_slipped) = burst(&other, &server, name, 3);
    assert_eq!((other_full, other_slipped.len()), (3, 0));
    let answer = server.tcp(&query(name, RecordType::A));
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answer.answers.len(), 1);
    assert!(!answer.metadata.truncation);

    // A second later the limited client's bucket is full again.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (full, slipped) = burst(&flooder, &server, name, 5);
    assert_eq!((full, slipped.len()), (5, 0));
}

#[test]
fn rate_limit_is_off_by_default() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let server = Server::fixtures(Some(upstream.addr));
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let (full, slipped) = burst(
        &socket,
        &server,
        "kubernetes.default.svc.cluster.local.",
        200,
    );
    assert_eq!((full, slipped.len()), (200, 0));
    assert_eq!(server.metric("clusterdns_rate_limited_total", ""), 0.0);
}
