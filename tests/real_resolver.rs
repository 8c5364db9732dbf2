//! One end-to-end run against a real resolver from Debian: dnsmasq, started by the test on a
//! loopback port and authoritative for a test domain, as clusterdns's upstream. Skipped (and
//! says so) when dnsmasq is not installed; `.ci/run` installs it.

mod support;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::*;

struct Dnsmasq(Child);

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dnsmasq_binary() -> Option<&'static str> {
    ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

/// A TXT record too big for a 512-byte UDP answer: the upstream must be asked again over TCP.
fn big_txt() -> String {
    "x".repeat(200)
}

#[test]
fn dnsmasq_as_upstream_answers_caches_and_falls_back_to_tcp() {
    let Some(binary) = dnsmasq_binary() else {
        println!("skipped: dnsmasq is not installed (apt-get install dnsmasq-base)");
        return;
    };
    let port = unused_port();
    let txt = big_txt();
    let child = Command::new(binary)
        .args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--user=root",
            "--pid-file=",
            "--cache-size=0",
            &format!("--port={port}"),
            "--address=/e2e.test/192.0.2.99",
            &format!("--txt-record=big.e2e.test,{txt},{txt},{txt},{txt}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(child) = child else {
        println!("skipped: dnsmasq could not be started");
        return;
    };
    let _dnsmasq = Dnsmasq(child);
    let upstream = format!("127.0.0.1:{port}");
    let server = Server::start(&[
        "--manifests",
        &fixtures().to_string_lossy(),
        "--upstream",
        &upstream,
    ]);

    // dnsmasq needs a moment to bind; the first answers may be SERVFAIL until it does.
    assert!(
        eventually(Duration::from_secs(5), || {
            let answer = server.udp(&query("www.e2e.test.", RecordType::A));
            answer.metadata.response_code == ResponseCode::NoError
        }),
        "dnsmasq never answered through clusterdns"
    );
    let answer = server.udp(&query("www.e2e.test.", RecordType::A));
    assert_eq!(rdata(&answer.answers, RecordType::A), ["192.0.2.99"]);
    assert!(!answer.metadata.authoritative);
    assert!(
        server.metric("coredns_cache_hits_total", "type=\"success\"") >= 1.0,
        "second answer from the cache"
    );

    // A real truncated UDP answer: clusterdns retries over TCP and the client gets it all
    // over TCP (over UDP without EDNS it is truncated again, for the client to retry).
    let answer = server.tcp(&query("big.e2e.test.", RecordType::TXT));
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    let text: String = rdata(&answer.answers, RecordType::TXT).concat();
    assert!(text.matches(&txt).count() >= 4, "{text}");
    let udp = server.udp(&query("big.e2e.test.", RecordType::TXT));
    assert!(udp.metadata.truncation, "more than 512 bytes without EDNS");

    // The cluster zone is still ours.
    let answer = server.udp(&query(
        "kubernetes.default.svc.cluster.local.",
        RecordType::A,
    ));
    assert_eq!(rdata(&answer.answers, RecordType::A), ["192.0.2.1"]);
}
