//! The command line an operator meets first: `check-config`, a bad config stopping `serve`
//! with file, line and reason, the demo cluster of the README, and `dig` against it.

mod support;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;
use support::*;

fn clusterdns(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clusterdns"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run clusterdns")
}

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(path)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn check_config_describes_the_demo_config() {
    let config = repo("config/clusterdns.toml");
    let out = clusterdns(&["check-config", &config]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("{config}: OK")), "{stdout}");
    assert!(stdout.contains("cluster.local (ttl 5s)"), "{stdout}");
    assert!(stdout.contains("127.0.0.1:5353"), "{stdout}");
    assert!(stdout.contains("config/demo"), "{stdout}");
}

#[test]
fn a_reader_that_goes_away_ends_the_report_quietly() {
    // `clusterdns check-config FILE | head -1`: the reader exits first. `println!` would
    // panic on the broken pipe (exit 101); the report must just stop.
    use std::io::Read;
    let dir = tempfile::tempdir().expect("tempdir");
    let configmap = dir.path().join("kube-dns.yaml");
    std::fs::write(
        &configmap,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: kube-dns, namespace: kube-system}\n\
         data:\n  upstreamNameservers: '[\"10.0.0.2\"]'\n",
    )
    .expect("write");
    let configmap = configmap.to_string_lossy().into_owned();
    for args in [
        vec!["check-config", "config/clusterdns.toml"],
        vec!["import-kube-dns", configmap.as_str()],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_clusterdns"))
            .args(&args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        drop(child.stdout.take()); // the reader is gone before anything is written
        let status = child.wait().expect("wait");
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr)
            .expect("read stderr");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_ne!(status.code(), Some(101), "{args:?}: {stderr}");
    }
}

#[test]
fn bad_configs_name_the_file_line_and_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "address.toml",
            "zone = \"cluster.local\"\n\nlisten = [\"nope\"]\n",
            ":3:",
            "invalid address \"nope\"",
        ),
        (
            "unknown.toml",
            "zone = \"cluster.local\"\nbogus = 1\n",
            ":2:",
            "unknown field `bogus`",
        ),
        (
            "payload.toml",
            "[server]\nmax_udp_payload = 100\n",
            ":2:",
            "max_udp_payload",
        ),
        ("syntax.toml", "ttl = 5\nzone = \n", ":2:", ""),
        ("pods.toml", "pods = \"sometimes\"\n", ":1:", "sometimes"),
    ];
    for (file, text, line, reason) in cases {
        let path = dir.path().join(file);
        std::fs::write(&path, text).expect("write config");
        let path = path.to_string_lossy().into_owned();
        for command in ["check-config", "serve"] {
            let out = if command == "serve" {
                clusterdns(&["serve", "--config", &path, "--listen", "127.0.0.1:0"])
            } else {
                clusterdns(&["check-config", &path])
            };
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{command} {file}: {stderr}");
            assert!(
                stderr.contains(&format!("{path}{line}")),
                "{command} {file}: {stderr}"
            );
            assert!(stderr.contains(reason), "{command} {file}: {stderr}");
        }
    }
    let missing = dir
        .path()
        .join("missing.toml")
        .to_string_lossy()
        .into_owned();
    let out = clusterdns(&["check-config", &missing]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&missing));
}

#[test]
fn bad_flags_stop_serve_with_a_reason() {
    let out = clusterdns(&[
        "serve",
        "--listen",
        "not-an-address",
        "--upstream",
        "127.0.0.1:1",
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not-an-address"));
    let out = clusterdns(&["serve", "--zone", "bad..zone", "--listen", "127.0.0.1:0"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad..zone"));
}

/// The README's first command serves this config; here every listener is moved to port 0.
fn demo_server() -> Server {
    let config = repo("config/clusterdns.toml");
    let upstream = closed_port().to_string();
    Server::start(&["--config", &config, "--upstream", &upstream])
}

#[test]
fn the_demo_cluster_answers_what_the_readme_promises() {
    let server = demo_server();
    assert_eq!(server.metric("clusterdns_manifest_errors_total", ""), 0.0);
    assert_eq!(http_get(server.ready, "/ready").0, 200);
    let rows = [
        (
            "kubernetes.default.svc.cluster.local.",
            RecordType::A,
            vec!["10.96.0.1"],
        ),
        (
            "kube-dns.kube-system.svc.cluster.local.",
            RecordType::A,
            vec!["10.96.0.10"],
        ),
        (
            "gateway.shop.svc.cluster.local.",
            RecordType::AAAA,
            vec!["fd00:10:96::a3f2"],
        ),
        (
            "web-0.web.default.svc.cluster.local.",
            RecordType::A,
            vec![],
        ),
        (
            "search.default.svc.cluster.local.",
            RecordType::CNAME,
            vec!["www.example.org."],
        ),
        (
            "10.0.96.10.in-addr.arpa.",
            RecordType::PTR,
            vec!["kube-dns.kube-system.svc.cluster.local."],
        ),
    ];
    for (name, rtype, expected) in rows {
        let answer = server.both(&query(name, rtype));
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NoError,
            "{name}"
        );
        assert!(answer.metadata.authoritative, "{name}");
        if expected.is_empty() {
            assert_eq!(
                rdata(&answer.answers, rtype).len(),
                1,
                "{name}: {:?}",
                answer.answers
            );
        } else {
            assert_eq!(rdata(&answer.answers, rtype), expected, "{name}");
        }
    }
    let answer = server.udp(&query(
        "_dns._udp.kube-dns.kube-system.svc.cluster.local.",
        RecordType::SRV,
    ));
    assert_eq!(
        rdata(&answer.answers, RecordType::SRV),
        ["0 100 53 kube-dns.kube-system.svc.cluster.local."]
    );
    assert_eq!(rdata(&answer.additionals, RecordType::A), ["10.96.0.10"]);
}

/// `dig`'s view of an answer: status line, flags, and the answer section.
struct Dig {
    status: String,
    flags: Vec<String>,
    answers: Vec<String>,
}

fn dig(server: &Server, args: &[&str]) -> Dig {
    let port = server.dns.port().to_string();
    let out = Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &port,
            "+tries=1",
            "+time=3",
            "+nocookie",
        ])
        .args(args)
        .output()
        .expect("run dig");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let header = text
        .lines()
        .find(|l| l.contains("->>HEADER<<-"))
        .unwrap_or_else(|| panic!("no header in dig output:\n{text}"));
    let status = header
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_default()
        .to_string();
    let flags = text
        .lines()
        .find(|l| l.starts_with(";; flags:"))
        .and_then(|l| l.trim_start_matches(";; flags:").split(';').next())
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let answers = text
        .split(";; ANSWER SECTION:\n")
        .nth(1)
        .map(|s| s.split("\n\n").next().unwrap_or_default())
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    Dig {
        status,
        flags,
        answers,
    }
}

#[test]
fn dig_sees_the_demo_cluster() {
    if Command::new("dig").arg("-v").output().is_err() {
        println!("skipped: dig is not installed (apt-get install bind9-dnsutils)");
        return;
    }
    let server = demo_server();
    for transport in ["+notcp", "+tcp"] {
        let out = dig(
            &server,
            &[transport, "kubernetes.default.svc.cluster.local"],
        );
        assert_eq!(out.status, "NOERROR", "{transport}");
        assert!(out.flags.contains(&"aa".to_string()), "{:?}", out.flags);
        assert!(out.flags.contains(&"ra".to_string()), "{:?}", out.flags);
        assert_eq!(
            out.answers,
            ["kubernetes.default.svc.cluster.local. 5 IN A 10.96.0.1"],
            "{transport}"
        );
    }
    let out = dig(&server, &["-x", "10.96.0.10"]);
    assert_eq!(
        out.answers,
        ["10.0.96.10.in-addr.arpa. 5 IN PTR kube-dns.kube-system.svc.cluster.local."]
    );
    let out = dig(&server, &["nothing.default.svc.cluster.local"]);
    assert_eq!(out.status, "NXDOMAIN");
    assert!(out.answers.is_empty());
    let out = dig(&server, &["default.svc.cluster.local"]);
    assert_eq!(out.status, "NOERROR");
    assert!(out.answers.is_empty());
    let out = dig(
        &server,
        &["SRV", "_https._tcp.kubernetes.default.svc.cluster.local"],
    );
    assert_eq!(
        out.answers,
        [
            "_https._tcp.kubernetes.default.svc.cluster.local. 5 IN SRV 0 100 443 kubernetes.default.svc.cluster.local."
        ]
    );
    let out = dig(&server, &["www.example.org"]);
    assert_eq!(
        out.status, "SERVFAIL",
        "the demo's upstream is a closed port"
    );
    assert!(eventually(Duration::from_secs(1), || server
        .metric("coredns_dns_requests_total", "proto=\"tcp\"")
        >= 1.0));
}
