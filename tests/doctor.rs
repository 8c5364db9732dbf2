//! `clusterdns doctor` and `clusterdns import-kube-dns`, run as the real binary.
//!
//! Doctor runs against fake `/proc` trees in temporary directories (`--root`) for the OK,
//! WARN, ERROR and missing-file cases, so no test depends on the host's sysctl values; its
//! bind checks use port 0 or a port the test holds, its upstreams are fake resolvers the test
//! runs on loopback. Once it runs against the real machine, only to see that it does.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::*;

fn clusterdns(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clusterdns"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run clusterdns")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fake machine whose every file says all is well for [`config`]'s settings.
fn healthy_files() -> Vec<(&'static str, String)> {
    vec![
        ("proc/sys/net/core/rmem_max", "16777216\n".into()),
        ("proc/sys/net/core/wmem_max", "16777216\n".into()),
        ("proc/sys/net/core/rmem_default", "212992\n".into()),
        ("proc/sys/net/ipv4/udp_mem", "188460 251281 376920\n".into()),
        ("proc/sys/net/netfilter/nf_conntrack_max", "262144\n".into()),
        ("proc/sys/net/netfilter/nf_conntrack_count", "1200\n".into()),
        ("proc/sys/net/netfilter/nf_conntrack_udp_timeout", "30\n".into()),
        (
            "proc/sys/net/netfilter/nf_conntrack_udp_timeout_stream",
            "120\n".into(),
        ),
        (
            "proc/net/stat/nf_conntrack",
            "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop\n\
             00000004  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000\n\
             00000004  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000\n"
                .into(),
        ),
        (
            "proc/net/snmp",
            "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
             Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n\
             Udp: 39270 1220 0 49226 0 0 0 0 0\n"
                .into(),
        ),
        (
            "proc/self/limits",
            "Limit                     Soft Limit           Hard Limit           Units\n\
             Max open files            1048576              1048576              files\n"
                .into(),
        ),
    ]
}

fn write_tree(root: &Path, files: &[(&str, String)]) {
    for (path, contents) in files {
        let full = root.join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(full, contents).expect("write fake /proc file");
    }
}

/// A config listening on a free loopback port, forwarding to `upstream`, asking 8 MiB buffers
/// of 2 UDP workers.
fn write_config(dir: &Path, listen: &str, upstream: &str) -> PathBuf {
    let path = dir.join("clusterdns.toml");
    std::fs::write(
        &path,
        format!(
            "listen = [\"{listen}\"]\nupstreams = [\"{upstream}\"]\n\n[server]\nudp_workers = 2\n\
             recv_buffer_bytes = 8388608\nsend_buffer_bytes = 8388608\n"
        ),
    )
    .expect("write config");
    path
}

struct Doctor {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Doctor {
    fn run(config: &Path, root: &Path, json: bool) -> Doctor {
        let config = config.to_string_lossy().into_owned();
        let root = root.to_string_lossy().into_owned();
        let mut args = vec!["doctor", "--config", &config, "--root", &root];
        if json {
            args.push("--json");
        }
        let out = clusterdns(&args);
        Doctor {
            code: out.status.code(),
            stdout: text(&out.stdout),
            stderr: text(&out.stderr),
        }
    }

    /// The table row of `setting`, split into its first four columns and the why.
    fn row(&self, setting: &str) -> String {
        self.stdout
            .lines()
            .find(|l| l.split("  ").next() == Some(setting))
            .unwrap_or_else(|| panic!("no row {setting:?} in:\n{}", self.stdout))
            .to_string()
    }

    fn status(&self, setting: &str) -> &'static str {
        let row = self.row(setting);
        let cells: Vec<&str> = row
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        ["OK", "WARN", "ERROR", "N/A"]
            .into_iter()
            .find(|s| cells.get(3) == Some(s))
            .unwrap_or_else(|| panic!("no status in row {row:?}"))
    }
}

impl std::fmt::Display for Doctor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?}\n{}\n{}", self.code, self.stdout, self.stderr)
    }
}

const FILE_CHECKS: [&str; 11] = [
    "net.core.rmem_max",
    "net.core.wmem_max",
    "net.core.rmem_default",
    "net.ipv4.udp_mem",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_udp_timeout",
    "net.netfilter.nf_conntrack_udp_timeout_stream",
    "conntrack insert_failed",
    "udp RcvbufErrors",
    "udp InErrors",
    "open files (soft limit)",
];

#[test]
fn a_healthy_machine_is_all_ok_with_exit_code_0() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let dir = tempfile::tempdir().expect("tempdir");
    write_tree(dir.path(), &healthy_files());
    let config = write_config(dir.path(), "127.0.0.1:0", &upstream.addr.to_string());
    let doctor = Doctor::run(&config, dir.path(), false);
    assert_eq!(doctor.code, Some(0), "{doctor}");
    for setting in FILE_CHECKS {
        assert_eq!(doctor.status(setting), "OK", "{setting}: {doctor}");
    }
    assert_eq!(doctor.status("listen udp 127.0.0.1:0"), "OK", "{doctor}");
    assert_eq!(doctor.status("listen tcp 127.0.0.1:0"), "OK", "{doctor}");
    assert_eq!(
        doctor.status(&format!("upstream {}", upstream.addr)),
        "OK",
        "{doctor}"
    );
    assert!(upstream.count() >= 1, "the upstream was asked");
    assert!(
        doctor.row("net.core.rmem_max").contains(">= 8388608"),
        "{doctor}"
    );
    assert!(doctor.stdout.starts_with("SETTING"), "{doctor}");
    assert!(
        doctor.stdout.contains("14 OK, 0 WARN, 0 ERROR, 0 N/A"),
        "{doctor}"
    );
}

#[test]
fn small_buffers_drops_and_a_full_conntrack_table_warn_with_exit_code_1() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = healthy_files();
    let mut set = |path: &'static str, contents: &str| {
        files.retain(|(p, _)| *p != path);
        files.push((path, contents.to_string()));
    };
    set("proc/sys/net/core/rmem_max", "212992\n");
    set("proc/sys/net/netfilter/nf_conntrack_count", "209716\n"); // 80%
    set("proc/sys/net/netfilter/nf_conntrack_udp_timeout", "300\n");
    set(
        "proc/net/snmp",
        "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
         Udp: 39270 1220 4840 49226 4840 0\n",
    );
    set(
        "proc/net/stat/nf_conntrack",
        "entries insert_failed drop\n00000001 00000003 00000000\n00000001 00000002 00000000\n",
    );
    set(
        "proc/self/limits",
        "Max open files            1024                 4096                 files\n",
    );
    write_tree(dir.path(), &files);
    let config = write_config(dir.path(), "127.0.0.1:0", &upstream.addr.to_string());
    let doctor = Doctor::run(&config, dir.path(), false);
    assert_eq!(doctor.code, Some(1), "{doctor}");
    for setting in [
        "net.core.rmem_max",
        "net.netfilter.nf_conntrack_max",
        "net.netfilter.nf_conntrack_udp_timeout",
        "conntrack insert_failed",
        "udp RcvbufErrors",
        "udp InErrors",
        "open files (soft limit)",
    ] {
        assert_eq!(doctor.status(setting), "WARN", "{setting}: {doctor}");
    }
    for setting in ["net.core.wmem_max", "net.ipv4.udp_mem"] {
        assert_eq!(doctor.status(setting), "OK", "{setting}: {doctor}");
    }
    let rmem = doctor.row("net.core.rmem_max");
    assert!(
        rmem.contains("sysctl -w net.core.rmem_max=8388608"),
        "{rmem}"
    );
    assert!(
        doctor
            .row("net.netfilter.nf_conntrack_max")
            .contains("209716 used of 262144 (80%)"),
        "{doctor}"
    );
    assert!(
        doctor.row("conntrack insert_failed").contains("5 s"),
        "{doctor}"
    );
    assert!(
        doctor
            .row("net.netfilter.nf_conntrack_udp_timeout")
            .contains("5 s DNS"),
        "{doctor}"
    );
}

#[test]
fn missing_files_are_not_available_not_errors() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("empty-root");
    std::fs::create_dir(&root).expect("mkdir");
    // A file that exists but holds garbage is not available either.
    write_tree(
        &root,
        &[("proc/sys/net/core/rmem_default", "not a number\n".into())],
    );
    let config = write_config(dir.path(), "127.0.0.1:0", &upstream.addr.to_string());
    let doctor = Doctor::run(&config, &root, false);
    assert_eq!(doctor.code, Some(0), "{doctor}");
    for setting in FILE_CHECKS {
        assert_eq!(doctor.status(setting), "N/A", "{setting}: {doctor}");
    }
    assert!(
        doctor.stdout.contains("3 OK, 0 WARN, 0 ERROR, 11 N/A"),
        "{doctor}"
    );
    assert!(
        doctor.row("net.core.rmem_max").contains("not found"),
        "{doctor}"
    );
}

#[test]
fn a_taken_port_and_a_dead_upstream_are_errors_with_exit_code_2() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr");
    let dead = closed_port();
    let dir = tempfile::tempdir().expect("tempdir");
    write_tree(dir.path(), &healthy_files());
    let config = write_config(dir.path(), &port.to_string(), &dead.to_string());
    let doctor = Doctor::run(&config, dir.path(), false);
    assert_eq!(doctor.code, Some(2), "{doctor}");
    let row = doctor.row(&format!("listen tcp {port}"));
    assert!(
        row.contains("ERROR") && row.contains("already in use"),
        "{row}"
    );
    assert_eq!(
        doctor.status(&format!("upstream {dead}")),
        "ERROR",
        "{doctor}"
    );
    drop(taken);
}

#[test]
fn json_is_an_array_of_checks() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = healthy_files();
    files.retain(|(p, _)| !p.contains("netfilter") && !p.contains("stat/nf_conntrack"));
    files.push(("proc/sys/net/core/wmem_max", "4096\n".into()));
    write_tree(dir.path(), &files);
    let config = write_config(dir.path(), "127.0.0.1:0", &upstream.addr.to_string());
    let doctor = Doctor::run(&config, dir.path(), true);
    assert_eq!(doctor.code, Some(1), "{doctor}");
    let checks: Value = serde_json::from_str(&doctor.stdout).expect("stdout is JSON");
    let checks = checks.as_array().expect("an array");
    assert_eq!(checks.len(), 14, "{doctor}");
    for check in checks {
        for key in ["setting", "value", "recommended", "status", "why"] {
            assert!(check[key].is_string(), "{key} in {check}");
        }
    }
    let status = |setting: &str| {
        checks
            .iter()
            .find(|c| c["setting"] == setting)
            .unwrap_or_else(|| panic!("no {setting}"))["status"]
            .as_str()
            .expect("string")
            .to_string()
    };
    assert_eq!(status("net.core.wmem_max"), "WARN");
    assert_eq!(status("net.core.rmem_max"), "OK");
    assert_eq!(status("net.netfilter.nf_conntrack_max"), "N/A");
    assert_eq!(status(&format!("upstream {}", upstream.addr)), "OK");
}

#[test]
fn a_bad_config_stops_doctor_with_exit_code_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "ttl = 99999\n").expect("write");
    let out = clusterdns(&["doctor", "--config", &path.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("bad.toml:1:7"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn doctor_runs_on_the_real_machine() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "127.0.0.1:0", &upstream.addr.to_string());
    let config = config.to_string_lossy().into_owned();
    let out = clusterdns(&["doctor", "--config", &config]);
    let stdout = text(&out.stdout);
    // Whatever this host's settings are: a table and an exit code that says so.
    assert!(
        matches!(out.status.code(), Some(0..=2)),
        "{stdout}{}",
        text(&out.stderr)
    );
    assert!(stdout.starts_with("SETTING"), "{stdout}");
    assert!(stdout.contains(" OK, "), "{stdout}");
    assert!(stdout.contains("net.core.rmem_max"), "{stdout}");
    assert!(
        stdout.contains(&format!("upstream {}", upstream.addr)),
        "{stdout}"
    );
}

#[test]
fn serve_logs_what_doctor_finds_at_startup() {
    if !Path::new("/proc/sys/net/core/rmem_max").exists() {
        eprintln!("skipped: no /proc/sys/net/core/rmem_max on this machine");
        return;
    }
    // A receive buffer no kernel allows: the rmem_max check must warn.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("huge.toml");
    std::fs::write(&config, "[server]\nrecv_buffer_bytes = 1099511627776\n").expect("write");
    let config = config.to_string_lossy().into_owned();
    let server = Server::manifests(&fixtures(), None, &["--config", &config]);
    let log = server.log();
    assert!(log.contains("doctor: net.core.rmem_max"), "{log}");
}

// ---------------------------------------------------------------------------------------------
// import-kube-dns

const KUBE_DNS: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: kube-dns
  namespace: kube-system
data:
  stubDomains: |
    {"acme.local": ["1.2.3.4"], "corp.example": ["10.0.0.53:5353", "10.0.0.54"]}
  upstreamNameservers: |
    ["8.8.8.8", "8.8.4.4"]
"#;

#[test]
fn import_prints_a_config_that_check_config_accepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, contents) in [
        ("kube-dns.yaml", KUBE_DNS.to_string()),
        (
            "kube-dns.json",
            r#"{"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "kube-dns", "namespace": "kube-system"},
                "data": {"stubDomains": "{\"acme.local\": [\"1.2.3.4\"], \"corp.example\": [\"10.0.0.53:5353\", \"10.0.0.54\"]}",
                         "upstreamNameservers": "[\"8.8.8.8\", \"8.8.4.4\"]"}}"#
                .to_string(),
        ),
    ] {
        let input = dir.path().join(name);
        std::fs::write(&input, contents).expect("write");
        let out = clusterdns(&["import-kube-dns", &input.to_string_lossy()]);
        let toml = text(&out.stdout);
        assert!(out.status.success(), "{name}: {toml}{}", text(&out.stderr));
        assert!(toml.contains("upstreams = [\"8.8.8.8\", \"8.8.4.4\"]"), "{toml}");
        assert!(toml.contains("\"acme.local\" = [\"1.2.3.4\"]"), "{toml}");

        let output = dir.path().join(format!("{name}.toml"));
        std::fs::write(&output, &toml).expect("write");
        let check = clusterdns(&["check-config", &output.to_string_lossy()]);
        let described = text(&check.stdout);
        assert!(check.status.success(), "{described}{}", text(&check.stderr));
        assert!(described.contains("upstreams:         8.8.8.8:53, 8.8.4.4:53"), "{described}");
        assert!(
            described.contains("stub domain:       corp.example -> 10.0.0.53:5353, 10.0.0.54:53"),
            "{described}"
        );
        assert!(
            described.contains("stub domain:       acme.local -> 1.2.3.4:53"),
            "{described}"
        );
    }
}

#[test]
fn import_rejects_bad_configmaps_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, contents, expected) in [
        (
            "bad-json.yaml",
            "kind: ConfigMap\ndata:\n  stubDomains: '{\"acme.local\": [\"1.2.3.4\"]'\n",
            "data.stubDomains: invalid JSON",
        ),
        (
            "bad-upstreams.yaml",
            "kind: ConfigMap\ndata:\n  upstreamNameservers: '[\"8.8.8.8\",]'\n",
            "data.upstreamNameservers: invalid JSON",
        ),
        (
            "bad-address.yaml",
            "kind: ConfigMap\ndata:\n  upstreamNameservers: '[\"dns.google\"]'\n",
            "data.upstreamNameservers: invalid address \"dns.google\"",
        ),
        (
            "no-data.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kube-dns\n",
            "data: missing",
        ),
        ("not-yaml.yaml", "data: [\n", "not a YAML or JSON ConfigMap"),
    ] {
        let input = dir.path().join(name);
        std::fs::write(&input, contents).expect("write");
        let out = clusterdns(&["import-kube-dns", &input.to_string_lossy()]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(out.stdout.is_empty(), "{name}: nothing on stdout");
        assert!(
            stderr.starts_with(&format!("{}: ", input.display())),
            "{name}: {stderr}"
        );
        assert!(stderr.contains(expected), "{name}: {stderr}");
    }
    let out = clusterdns(&["import-kube-dns", "/nonexistent/kube-dns.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read"));
}
