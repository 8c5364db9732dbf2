//! Not an amplifier, not an open resolver: minimal ANY answers (RFC 8482) and the `[acl]`
//! lists (who may ask, who may have names forwarded).

mod support;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use support::*;

fn with_config(upstream: &FakeUpstream, text: &str) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("clusterdns.toml");
    std::fs::write(&path, text).expect("write config");
    let path = path.to_string_lossy().into_owned();
    (
        Server::manifests(&fixtures(), Some(upstream.addr), &["--config", &path]),
        dir,
    )
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
