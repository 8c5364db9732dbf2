//! Config reload while serving: by SIGHUP and by editing the file. A bad config is rejected
//! and the old one keeps serving; listeners, upstreams and the query log change live; the
//! cache survives a reload that does not change it.

mod support;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;
use support::*;

/// A loopback address for the server's config. Not port 0: the tests edit the listen list
/// and need to know the address beforehand. [`unused_port`] draws below the kernel's
/// ephemeral range, so a parallel test's port-0 bind cannot take the number in between.
fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], unused_port()))
}

fn write_config(path: &Path, listen: &[SocketAddr], upstream: SocketAddr, extra: &str) {
    let listen: Vec<String> = listen.iter().map(|a| format!("\"{a}\"")).collect();
    let text = format!(
        "listen = [{}]\nupstreams = [\"{upstream}\"]\nmanifests = \"{}\"\n{extra}",
        listen.join(", "),
        fixtures().display()
    );
    // Write then rename, as editors and ConfigMap volumes do: never a half-written file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

fn answered_by(dns: SocketAddr, name: &str) -> bool {
    let q = query(name, RecordType::A);
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    socket
        .send_to(&q.to_vec().expect("encode"), dns)
        .expect("send");
    let mut buf = vec![0u8; 4096];
    socket.recv(&mut buf).is_ok()
}

#[test]
fn editing_the_file_moves_upstreams_and_listeners_live() {
    let first = FakeUpstream::start(UpstreamMode::Answer);
    let second = FakeUpstream::start(UpstreamMode::Answer);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("clusterdns.toml");
    let a = free_addr();
    write_config(&config, &[a], first.addr, "");
    let config_arg = config.to_string_lossy().into_owned();
    let server = Server::start_listen_from_config(&["--config", &config_arg]);
    assert_eq!(server.dns, a);
    server.udp(&query("one.example.org.", RecordType::A));
    assert_eq!(first.count(), 1);

    // New upstream, and a second listen address.
    let b = free_addr();
    write_config(&config, &[a, b], second.addr, "");
    assert!(
        server.log_shows("config reloaded", Duration::from_secs(3)),
        "{}",
        server.log()
    );
    let answer = server.udp(&query("two.example.org.", RecordType::A));
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        (first.count(), second.count()),
        (1, 1),
        "the new upstream answered"
    );
    assert!(
        answered_by(b, "kubernetes.default.svc.cluster.local."),
        "new listener answers"
    );

    // Drop the first address: it stops answering, the second keeps going.
    write_config(&config, &[b], second.addr, "");
    assert!(
        eventually(Duration::from_secs(3), || !answered_by(
            a,
            "kubernetes.default.svc.cluster.local."
        )),
        "removed listener still answers"
    );
    assert!(answered_by(b, "kubernetes.default.svc.cluster.local."));
    assert_eq!(server.metric("coredns_reload_failed_total", ""), 0.0);
}

#[test]
fn a_bad_config_is_rejected_with_its_line_and_the_old_one_keeps_serving() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("clusterdns.toml");
    let a = free_addr();
    write_config(&config, &[a], upstream.addr, "");
    let config_arg = config.to_string_lossy().into_owned();
    let server = Server::start_listen_from_config(&["--config", &config_arg]);

    std::fs::write(&config, "listen = [\"127.0.0.1:1\"]\nttl = \"soon\"\n").expect("write");
    server.hangup();
    assert!(
        eventually(Duration::from_secs(3), || server
            .metric("coredns_reload_failed_total", "")
            >= 1.0),
        "{}",
        server.log()
    );
    let log = server.log();
    assert!(log.contains("config reload rejected"), "{log}");
    assert!(
        log.contains(&format!("{}:2:", config.display())),
        "the reason names file and line: {log}"
    );
    // Still serving, on the old address, with the old upstream.
    let answer = server.udp(&query(
        "kubernetes.default.svc.cluster.local.",
        RecordType::A,
    ));
    assert_eq!(rdata(&answer.answers, RecordType::A), ["192.0.2.1"]);
    let answer = server.udp(&query("www.example.org.", RecordType::A));
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(upstream.count(), 1);
}

#[test]
fn the_cache_survives_a_reload_that_does_not_change_it_and_the_query_log_follows() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("clusterdns.toml");
    let a = free_addr();
    write_config(&config, &[a], upstream.addr, "");
    let config_arg = config.to_string_lossy().into_owned();
    let server = Server::start_listen_from_config(&["--config", &config_arg]);
    server.udp(&query("cached.example.org.", RecordType::A));
    assert_eq!(upstream.count(), 1);

    write_config(
        &config,
        &[a],
        upstream.addr,
        "[upstream]\ntimeout = \"1s\"\n[log]\nqueries = true\n",
    );
    server.hangup();
    assert!(eventually(Duration::from_secs(3), || server
        .log()
        .matches("config reloaded")
        .count()
        >= 1));
    server.udp(&query("cached.example.org.", RecordType::A));
    assert_eq!(
        upstream.count(),
        1,
        "answered from the cache kept across the reload"
    );
    assert!(
        server.log_shows("source=\"cache\"", Duration::from_secs(2)),
        "query log turned on by the reload: {}",
        server.log()
    );

    // A reload that changes the cache settings starts a new cache.
    write_config(&config, &[a], upstream.addr, "[cache]\ncapacity = 100\n");
    assert!(eventually(Duration::from_secs(3), || server
        .log()
        .matches("config reloaded")
        .count()
        >= 2));
    server.udp(&query("cached.example.org.", RecordType::A));
    assert_eq!(upstream.count(), 2);
}

#[test]
fn settings_that_need_a_restart_are_named_not_silently_ignored() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("clusterdns.toml");
    let a = free_addr();
    write_config(&config, &[a], upstream.addr, "");
    let config_arg = config.to_string_lossy().into_owned();
    let server = Server::start_listen_from_config(&["--config", &config_arg]);
    write_config(&config, &[a], upstream.addr, "ttl = 60\n");
    assert!(
        server.log_shows("only change on a restart", Duration::from_secs(3)),
        "{}",
        server.log()
    );
    assert!(server.log().contains("ttl"));
    let answer = server.udp(&query(
        "kubernetes.default.svc.cluster.local.",
        RecordType::A,
    ));
    assert_eq!(
        answer.answers[0].ttl, 5,
        "the running TTL stays until a restart"
    );
}
