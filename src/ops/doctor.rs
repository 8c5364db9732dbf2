//! `clusterdns doctor`: reads the machine it runs on and says which kernel settings, limits,
//! ports and upstreams will hurt a DNS server, before they do at 3 a.m.
//!
//! This module owns the checks and their verdicts (OK, WARN, ERROR, N/A), the table and JSON
//! output and the exit code. It reads `/proc` and `/sys` below a root directory
//! ([`Machine`]), so tests point it at a fake tree; a file that is missing there (not Linux,
//! no conntrack module) gives "N/A", never an error. Only the bind and upstream checks touch
//! the network: they bind the configured listen addresses for an instant (UDP without
//! SO_REUSEADDR/SO_REUSEPORT, TCP without `listen()`, so a running server never loses a packet
//! to them) and send one `. IN NS` question to each upstream.
//!
//! `serve` runs the machine checks once at startup ([`startup_warnings`]) and logs what is not
//! OK; it skips the bind and upstream checks, which it does for real right after.

use crate::config::Config;
use crate::upstream::resolv_conf;
use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How long an upstream gets to answer the `. IN NS` probe.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(1);
/// Share of the conntrack table in use above which it is a warning.
const CONNTRACK_WARN_PERCENT: u64 = 75;
/// Linux's default `net.core.rmem_default` (212992 bytes on 64-bit machines).
const KERNEL_RMEM_DEFAULT: u64 = 212_992;
/// Kernel default `nf_conntrack_udp_timeout`, in seconds.
const CONNTRACK_UDP_TIMEOUT: u64 = 30;
/// Kernel default `nf_conntrack_udp_timeout_stream` (180 before Linux 5.19, 120 since).
const CONNTRACK_UDP_TIMEOUT_STREAM: u64 = 180;
/// File descriptors kept aside for everything but client and upstream sockets: listeners,
/// HTTP endpoints, epoll, inotify, manifest files, stdio.
const FD_HEADROOM: u64 = 64;

const CONNTRACK_RACE: &str = "glibc sends the A and AAAA questions from one socket at the \
    same instant; when both packets race to create the same conntrack entry on two CPUs the \
    loser is dropped (insert_failed in /proc/net/stat/nf_conntrack) and the client hears \
    nothing until its 5 s timeout: the famous 5 s DNS delays (kubernetes/kubernetes#56903). \
    Mitigate with `options single-request-reopen` in pods, NodeLocal DNSCache (NOTRACK), or a \
    kernel with the clash-resolution fixes (5.0+)";

const CONNTRACK_UDP_TIMEOUT_WHY: &str = "each UDP DNS exchange holds a conntrack entry this \
    long, so a longer timeout only fills the table (entries = queries per second x timeout). \
    The 5 s DNS timeouts are not this timeout but a race";

/// The verdict of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Status {
    /// Could not be checked here (file missing: not Linux, module not loaded). Not a problem.
    #[serde(rename = "N/A")]
    NotAvailable,
    /// Fine.
    #[serde(rename = "OK")]
    Ok,
    /// Will hurt under load or in some cases; the `why` says what to do.
    #[serde(rename = "WARN")]
    Warn,
    /// clusterdns will not work as configured.
    #[serde(rename = "ERROR")]
    Error,
}

impl Status {
    /// As printed in the table and the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::NotAvailable => "N/A",
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Error => "ERROR",
        }
    }
}

/// One row of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked: a sysctl name, a counter, `listen udp 0.0.0.0:53`, `upstream 1.1.1.1:53`.
    pub setting: String,
    /// What the machine has.
    pub value: String,
    /// What it should have.
    pub recommended: String,
    /// The verdict.
    pub status: Status,
    /// Why it matters and what to do.
    pub why: String,
}

impl Check {
    fn new(
        setting: impl Into<String>,
        value: impl Into<String>,
        recommended: impl Into<String>,
        status: Status,
        why: impl Into<String>,
    ) -> Check {
        Check {
            setting: setting.into(),
            value: value.into(),
            recommended: recommended.into(),
            status,
            why: why.into(),
        }
    }

    fn not_available(setting: impl Into<String>, why: impl Into<String>) -> Check {
        Check::new(setting, "-", "-", Status::NotAvailable, why)
    }
}

/// Which checks to run besides the machine's files.
#[derive(Clone, Copy, Debug)]
pub struct Scope {
    /// Try to bind every listen address (UDP and TCP).
    pub bind: bool,
    /// Send `. IN NS` to every upstream.
    pub upstreams: bool,
}

/// The machine's `/proc` and `/sys`, below a root directory (`/` for real).
#[derive(Clone, Debug)]
pub struct Machine {
    root: PathBuf,
}

impl Machine {
    /// The machine whose `/proc` and `/sys` are below `root`.
    pub fn new(root: impl Into<PathBuf>) -> Machine {
        Machine { root: root.into() }
    }

    /// Where the absolute path `abs` (`/proc/...`) is on this machine.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    fn read(&self, abs: &str) -> Result<String, String> {
        let path = self.path(abs);
        std::fs::read_to_string(&path).map_err(|error| {
            if error.kind() == io::ErrorKind::NotFound {
                format!("{} not found", path.display())
            } else {
                format!("cannot read {}: {error}", path.display())
            }
        })
    }

    /// A sysctl (`net.core.rmem_max`) as its whitespace-separated numbers.
    fn sysctl(&self, name: &str) -> Result<Vec<u64>, String> {
        let abs = format!("/proc/sys/{}", name.replace('.', "/"));
        let text = self.read(&abs)?;
        let numbers = text
            .split_whitespace()
            .map(|w| w.parse::<u64>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| format!("{abs}: not a number: {:?}", text.trim()))?;
        if numbers.is_empty() {
            return Err(format!("{abs} is empty"));
        }
        Ok(numbers)
    }

    fn sysctl_one(&self, name: &str) -> Result<u64, String> {
        self.sysctl(name).map(|n| n[0])
    }
}

/// Runs every check for `config` on `machine`.
pub fn run(config: &Config, machine: &Machine, scope: Scope) -> Vec<Check> {
    let mut checks = vec![
        buffer_max(
            machine,
            "net.core.rmem_max",
            "server.recv_buffer_bytes",
            config.server.recv_buffer_bytes,
            "SO_RCVBUF is capped at this: a smaller receive buffer than configured drops \
             bursts of queries (RcvbufErrors) while the workers are busy",
        ),
        buffer_max(
            machine,
            "net.core.wmem_max",
            "server.send_buffer_bytes",
            config.server.send_buffer_bytes,
            "SO_SNDBUF is capped at this: answers to a burst queue here before the NIC takes them",
        ),
        rmem_default(machine),
        udp_mem(machine, config),
        conntrack_usage(machine),
        conntrack_timeout(
            machine,
            "net.netfilter.nf_conntrack_udp_timeout",
            CONNTRACK_UDP_TIMEOUT,
            &format!("{CONNTRACK_UDP_TIMEOUT_WHY}: {CONNTRACK_RACE}"),
        ),
        conntrack_timeout(
            machine,
            "net.netfilter.nf_conntrack_udp_timeout_stream",
            CONNTRACK_UDP_TIMEOUT_STREAM,
            "a UDP flow seen in both directions more than once (a client or clusterdns \
             reusing a socket) holds its conntrack entry this long; see \
             nf_conntrack_udp_timeout",
        ),
        conntrack_insert_failed(machine),
    ];
    checks.extend(udp_counters(machine));
    checks.push(open_files(machine, config));
    if scope.bind {
        for addr in &config.listen {
            checks.push(bind_check(machine, *addr, Proto::Udp));
            checks.push(bind_check(machine, *addr, Proto::Tcp));
        }
    }
    if scope.upstreams {
        checks.extend(upstream_checks(config));
    }
    checks
}

/// The machine checks of `/` for `config`, as log lines for what is not OK. `serve` logs each
/// one as a warning at startup.
pub fn startup_warnings(config: &Config) -> Vec<String> {
    let scope = Scope {
        bind: false,
        upstreams: false,
    };
    run(config, &Machine::new("/"), scope)
        .into_iter()
        .filter(|c| c.status >= Status::Warn)
        .map(|c| {
            format!(
                "doctor: {} = {} ({}, recommended {}): {}",
                c.setting,
                c.value,
                c.status.as_str(),
                c.recommended,
                c.why
            )
        })
        .collect()
}

/// 0 when every check is OK or N/A, 1 with warnings, 2 with errors.
pub fn exit_code(checks: &[Check]) -> u8 {
    match checks.iter().map(|c| c.status).max() {
        Some(Status::Error) => 2,
        Some(Status::Warn) => 1,
        _ => 0,
    }
}

/// The report as an aligned table, one check per line, and a summary line.
pub fn render_table(checks: &[Check]) -> String {
    let header = ["SETTING", "VALUE", "RECOMMENDED", "STATUS", "WHY"];
    let rows: Vec<[&str; 5]> = checks
        .iter()
        .map(|c| {
            [
                c.setting.as_str(),
                c.value.as_str(),
                c.recommended.as_str(),
                c.status.as_str(),
                c.why.as_str(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i == row.len() - 1 {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
    let _ = writeln!(
        out,
        "\n{} OK, {} WARN, {} ERROR, {} N/A",
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Error),
        count(Status::NotAvailable)
    );
    out
}

/// Flags of `clusterdns doctor`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct DoctorArgs {
    /// TOML config file whose settings are checked (defaults apply without one).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print a JSON array of checks instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Read /proc and /sys below this directory instead of / (for tests and offline trees).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
}

/// `clusterdns doctor`: prints the report; the exit code is [`exit_code`] (2 as well for a
/// bad config file).
pub fn main(args: &DoctorArgs) -> ExitCode {
    let config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(config) => config,
            Err(error) => {
                eprintln!("{error}");
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    let scope = Scope {
        bind: true,
        upstreams: true,
    };
    let checks = run(&config, &Machine::new(&args.root), scope);
    if args.json {
        match serde_json::to_string_pretty(&checks) {
            Ok(json) => super::print_report(&format!("{json}\n")),
            Err(error) => {
                eprintln!("cannot encode the report: {error}");
                return ExitCode::from(2);
            }
        }
    } else {
        super::print_report(&render_table(&checks));
    }
    ExitCode::from(exit_code(&checks))
}

// ---------------------------------------------------------------------------------------------
// Kernel settings.

fn buffer_max(machine: &Machine, name: &str, key: &str, wanted: usize, why: &str) -> Check {
    let value = match machine.sysctl_one(name) {
        Ok(v) => v,
        Err(e) => return Check::not_available(name, e),
    };
    let wanted = wanted as u64;
    let recommended = format!(">= {wanted} ({key})");
    if value >= wanted {
        Check::new(name, value.to_string(), recommended, Status::Ok, why)
    } else {
        Check::new(
            name,
            value.to_string(),
            recommended,
            Status::Warn,
            format!(
                "{why}. The server asks for {wanted} bytes and gets {value}: \
                 `sysctl -w {name}={wanted}` (and in /etc/sysctl.d/), or lower {key}"
            ),
        )
    }
}

fn rmem_default(machine: &Machine) -> Check {
    let name = "net.core.rmem_default";
    let value = match machine.sysctl_one(name) {
        Ok(v) => v,
        Err(e) => return Check::not_available(name, e),
    };
    let why = "the receive buffer of sockets that do not ask for one: clusterdns's sockets to \
               its upstreams and every other resolver on the host (clusterdns sets its listening \
               sockets' buffers itself)";
    let recommended = format!(">= {KERNEL_RMEM_DEFAULT} (kernel default)");
    if value >= KERNEL_RMEM_DEFAULT {
        Check::new(name, value.to_string(), recommended, Status::Ok, why)
    } else {
        Check::new(
            name,
            value.to_string(),
            recommended,
            Status::Warn,
            format!(
                "{why}; it was lowered below the kernel default: answers from upstreams can be dropped under load"
            ),
        )
    }
}

/// The kernel's page size: `KernelPageSize` of the first mapping in /proc/self/smaps, else
/// 4 KiB.
fn page_size(machine: &Machine) -> u64 {
    machine
        .read("/proc/self/smaps")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("KernelPageSize:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .filter(|kib| *kib > 0)
        .map_or(4096, |kib| kib * 1024)
}

fn udp_mem(machine: &Machine, config: &Config) -> Check {
    let name = "net.ipv4.udp_mem";
    let values = match machine.sysctl(name) {
        Ok(v) if v.len() == 3 => v,
        Ok(v) => {
            return Check::not_available(
                name,
                format!("expected 3 numbers (min pressure max), found {}", v.len()),
            );
        }
        Err(e) => return Check::not_available(name, e),
    };
    let page = page_size(machine);
    let sockets = (config.server.effective_udp_workers() * config.listen.len()) as u64;
    // Linux doubles SO_RCVBUF for its bookkeeping and charges that against udp_mem.
    let full_buffers = (config.server.recv_buffer_bytes as u64)
        .saturating_mul(2)
        .saturating_mul(sockets);
    let needed = full_buffers.div_ceil(page);
    let value = format!("{} {} {} pages", values[0], values[1], values[2]);
    let recommended = format!("max >= {needed} pages");
    let why = format!(
        "pages (of {page} bytes) all UDP sockets together may hold; beyond the max, datagrams \
         are dropped whatever the socket buffers. The {sockets} listening UDP sockets \
         (udp_workers x listen addresses) hold up to {full_buffers} bytes when their buffers fill"
    );
    if values[2] >= needed {
        Check::new(name, value, recommended, Status::Ok, why)
    } else {
        Check::new(
            name,
            value,
            recommended,
            Status::Warn,
            format!(
                "{why}: raise the third number (`sysctl -w {name}=\"{} {} {needed}\"`) or lower \
                 server.recv_buffer_bytes / server.udp_workers",
                values[0],
                values[1].max(needed / 2)
            ),
        )
    }
}

fn conntrack_usage(machine: &Machine) -> Check {
    let name = "net.netfilter.nf_conntrack_max";
    let max = match machine.sysctl_one(name) {
        Ok(v) => v,
        Err(e) => {
            return Check::not_available(
                name,
                format!("{e}: no connection tracking (nf_conntrack not loaded), no table to fill"),
            );
        }
    };
    let count = match machine.sysctl_one("net.netfilter.nf_conntrack_count") {
        Ok(v) => v,
        Err(e) => return Check::not_available(name, e),
    };
    let percent = count.saturating_mul(100).checked_div(max).unwrap_or(100);
    let value = format!("{count} used of {max} ({percent}%)");
    let recommended = format!("use < {CONNTRACK_WARN_PERCENT}%");
    let why = "every UDP DNS exchange through a node (kube-proxy, NAT) is a conntrack entry; \
               when the table is full new ones are dropped (\"nf_conntrack: table full, \
               dropping packet\" in dmesg) and DNS times out";
    let status = if count >= max {
        Status::Error
    } else if percent >= CONNTRACK_WARN_PERCENT {
        Status::Warn
    } else {
        Status::Ok
    };
    let why = if status == Status::Ok {
        why.to_string()
    } else {
        format!(
            "{why}: raise it (`sysctl -w {name}={}`), or shorten nf_conntrack_udp_timeout, or \
             take DNS out of conntrack (NodeLocal DNSCache NOTRACK)",
            max.saturating_mul(2).max(count.saturating_mul(2))
        )
    };
    Check::new(name, value, recommended, status, why)
}

fn conntrack_timeout(machine: &Machine, name: &str, default: u64, why: &str) -> Check {
    let value = match machine.sysctl_one(name) {
        Ok(v) => v,
        Err(e) => {
            return Check::not_available(name, format!("{e}: connection tracking not loaded"));
        }
    };
    let recommended = format!("<= {default} s (kernel default)");
    let status = if value > default {
        Status::Warn
    } else {
        Status::Ok
    };
    Check::new(name, format!("{value} s"), recommended, status, why)
}

/// Sums named columns of /proc/net/stat/nf_conntrack (one hex line per CPU under a header).
fn conntrack_stat(text: &str, columns: &[&str]) -> Result<Vec<u64>, String> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or("empty file")?
        .split_whitespace()
        .collect();
    let indexes = columns
        .iter()
        .map(|c| {
            header
                .iter()
                .position(|h| h == c)
                .ok_or(format!("no {c} column"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut sums = vec![0u64; columns.len()];
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        for (sum, index) in sums.iter_mut().zip(&indexes) {
            let field = fields.get(*index).ok_or("short line")?;
            let n = u64::from_str_radix(field, 16).map_err(|_| format!("bad number {field:?}"))?;
            *sum = sum.saturating_add(n);
        }
    }
    Ok(sums)
}

fn conntrack_insert_failed(machine: &Machine) -> Check {
    let name = "conntrack insert_failed";
    let text = match machine.read("/proc/net/stat/nf_conntrack") {
        Ok(t) => t,
        Err(e) => {
            return Check::not_available(name, format!("{e}: connection tracking not loaded"));
        }
    };
    let sums = match conntrack_stat(&text, &["insert_failed", "drop"]) {
        Ok(s) => s,
        Err(e) => {
            return Check::not_available(name, format!("/proc/net/stat/nf_conntrack: {e}"));
        }
    };
    let (failed, dropped) = (sums[0], sums[1]);
    let value = format!("{failed} (drop {dropped})");
    let why = "packets dropped because two of them raced to create the same conntrack entry \
               (counted since boot)";
    if failed == 0 && dropped == 0 {
        Check::new(name, value, "0", Status::Ok, why)
    } else {
        Check::new(
            name,
            value,
            "0",
            Status::Warn,
            format!("{why}: the race behind 5 s DNS timeouts happens here. {CONNTRACK_RACE}"),
        )
    }
}

/// The `Udp:` counters of /proc/net/snmp (a header line, then a values line).
fn snmp_udp(text: &str) -> Result<BTreeMap<String, u64>, String> {
    let mut udp = text.lines().filter_map(|l| l.strip_prefix("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return Err("no Udp: lines".to_string());
    };
    let names: Vec<&str> = names.split_whitespace().collect();
    let values = values
        .split_whitespace()
        .map(|v| v.parse::<u64>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "Udp: values are not numbers".to_string())?;
    if names.len() != values.len() {
        return Err("Udp: header and values differ in length".to_string());
    }
    Ok(names.into_iter().map(str::to_string).zip(values).collect())
}

fn udp_counters(machine: &Machine) -> Vec<Check> {
    let counters = [
        (
            "RcvbufErrors",
            "UDP datagrams dropped because a socket's receive buffer was full (since boot, every \
             socket of this network namespace)",
            "queries arrive faster than they are read: raise server.recv_buffer_bytes and \
             net.core.rmem_max, add server.udp_workers or replicas; watch whether it still grows",
        ),
        (
            "InErrors",
            "UDP datagrams that could not be delivered (full buffers, bad checksums, no memory) \
             since boot",
            "if RcvbufErrors accounts for it, see there; otherwise check udp_mem and \
             InCsumErrors (a bad NIC or checksum offload)",
        ),
    ];
    let parsed = machine
        .read("/proc/net/snmp")
        .and_then(|text| snmp_udp(&text).map_err(|e| format!("/proc/net/snmp: {e}")));
    counters
        .iter()
        .map(|(counter, why, advice)| {
            let setting = format!("udp {counter}");
            let value = match &parsed {
                Ok(map) => match map.get(*counter) {
                    Some(v) => *v,
                    None => {
                        return Check::not_available(
                            setting,
                            format!("/proc/net/snmp has no Udp {counter}"),
                        );
                    }
                },
                Err(e) => return Check::not_available(setting, e.clone()),
            };
            if value == 0 {
                Check::new(setting, "0", "0", Status::Ok, *why)
            } else {
                Check::new(
                    setting,
                    value.to_string(),
                    "0",
                    Status::Warn,
                    format!("{why}: {advice}"),
                )
            }
        })
        .collect()
}

/// The soft limit of "Max open files" in a /proc/<pid>/limits text; `None` for unlimited.
fn open_files_soft_limit(text: &str) -> Result<Option<u64>, String> {
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .ok_or("no \"Max open files\" line")?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()
        .ok_or("no soft limit")?;
    if soft == "unlimited" {
        return Ok(None);
    }
    soft.parse::<u64>()
        .map(Some)
        .map_err(|_| format!("soft limit {soft:?} is not a number"))
}

fn open_files(machine: &Machine, config: &Config) -> Check {
    let name = "open files (soft limit)";
    let limit = match machine.read("/proc/self/limits").and_then(|text| {
        open_files_soft_limit(&text).map_err(|e| format!("/proc/self/limits: {e}"))
    }) {
        Ok(limit) => limit,
        Err(e) => return Check::not_available(name, e),
    };
    let s = &config.server;
    let sockets = (s.effective_udp_workers() * config.listen.len() + config.listen.len()) as u64;
    let needed = (s.max_tcp_connections as u64)
        .saturating_add(config.upstream.max_concurrent as u64)
        .saturating_add(sockets)
        .saturating_add(FD_HEADROOM);
    let recommended = format!(">= {needed}");
    let why = format!(
        "every TCP client (server.max_tcp_connections = {}) and every upstream query in flight \
         (upstream.max_concurrent = {}) is a file descriptor, plus {sockets} listening sockets \
         and {FD_HEADROOM} spare",
        s.max_tcp_connections, config.upstream.max_concurrent
    );
    match limit {
        None => Check::new(name, "unlimited", recommended, Status::Ok, why),
        Some(limit) if limit >= needed => {
            Check::new(name, limit.to_string(), recommended, Status::Ok, why)
        }
        Some(limit) => Check::new(
            name,
            limit.to_string(),
            recommended,
            Status::Warn,
            format!(
                "{why}. Under load, accepting clients and opening upstream sockets fails with \
                 EMFILE: raise the limit where the server starts (`ulimit -n {needed}`, \
                 systemd LimitNOFILE={needed}, the container runtime's nofile) or lower \
                 server.max_tcp_connections. This is the limit of the doctor's process; the \
                 server gets the same when started the same way"
            ),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Listen addresses.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Udp,
    Tcp,
}

/// Binds `addr` for an instant. UDP without SO_REUSEADDR/SO_REUSEPORT and TCP without
/// `listen()`: the probe never takes a packet or a connection from a server already there.
fn try_bind(addr: SocketAddr, proto: Proto) -> io::Result<()> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = match proto {
        Proto::Udp => Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?,
        Proto::Tcp => Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?,
    };
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if proto == Proto::Tcp {
        // As the server: a TIME_WAIT left by a previous run does not block the port.
        socket.set_reuse_address(true)?;
    }
    socket.bind(&SockAddr::from(addr))
}

/// The check row for the outcome of binding `addr`.
fn bind_verdict(
    machine: &Machine,
    addr: SocketAddr,
    proto: Proto,
    result: io::Result<()>,
) -> Check {
    let proto_name = match proto {
        Proto::Udp => "udp",
        Proto::Tcp => "tcp",
    };
    let setting = format!("listen {proto_name} {addr}");
    let error = match result {
        Ok(()) => {
            return Check::new(
                setting,
                "can bind",
                "can bind",
                Status::Ok,
                "a listen address of the config (UDP and TCP on each)",
            );
        }
        Err(e) => e,
    };
    let why = match error.kind() {
        io::ErrorKind::PermissionDenied => {
            let start = machine
                .sysctl_one("net.ipv4.ip_unprivileged_port_start")
                .map_or_else(|_| "1024".to_string(), |v| v.to_string());
            format!(
                "permission denied: ports below {start} (net.ipv4.ip_unprivileged_port_start) \
                 need root or the NET_BIND_SERVICE capability: `setcap \
                 cap_net_bind_service=+ep clusterdns`, systemd AmbientCapabilities=\
                 CAP_NET_BIND_SERVICE, or securityContext.capabilities.add: [NET_BIND_SERVICE]"
            )
        }
        io::ErrorKind::AddrInUse => "already in use: another DNS server holds it \
             (systemd-resolved on 127.0.0.53:53, dnsmasq, a node-local cache, or clusterdns \
             itself already running here); stop it or listen on a specific address"
            .to_string(),
        io::ErrorKind::AddrNotAvailable => {
            "the address is not on any interface of this machine".to_string()
        }
        _ => format!("cannot bind: {error}"),
    };
    Check::new(
        setting,
        format!("cannot bind: {error}"),
        "can bind",
        Status::Error,
        why,
    )
}

fn bind_check(machine: &Machine, addr: SocketAddr, proto: Proto) -> Check {
    bind_verdict(machine, addr, proto, try_bind(addr, proto))
}

// ---------------------------------------------------------------------------------------------
// Upstreams.

/// Where an upstream comes from: its group. Within a group, one answering is enough.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Origin {
    Configured,
    ResolvConf,
    Stub(String),
}

fn upstream_checks(config: &Config) -> Vec<Check> {
    let mut targets: Vec<(SocketAddr, Origin)> = Vec::new();
    let mut checks = Vec::new();
    if config.upstreams.is_empty() {
        let path = config.resolv_conf.display();
        match resolv_conf::read(&config.resolv_conf) {
            Ok(resolv) if resolv.nameservers.is_empty() => checks.push(Check::new(
                "upstreams",
                format!("none in {path}"),
                "at least one",
                Status::Error,
                "no nameserver line: names outside the cluster get SERVFAIL; set `upstreams` \
                 or fix resolv_conf",
            )),
            Ok(resolv) => targets.extend(
                resolv
                    .nameservers
                    .into_iter()
                    .map(|a| (a, Origin::ResolvConf)),
            ),
            Err(error) => checks.push(Check::new(
                "upstreams",
                format!("cannot read {path}: {error}"),
                "at least one",
                Status::Error,
                "without upstreams names outside the cluster get SERVFAIL; set `upstreams` or \
                 resolv_conf",
            )),
        }
    } else {
        targets.extend(config.upstreams.iter().map(|a| (*a, Origin::Configured)));
    }
    for (domain, servers) in &config.upstream.stub_domains {
        targets.extend(servers.iter().map(|a| (*a, Origin::Stub(domain.clone()))));
    }
    let results: Vec<Result<ResponseCode, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = targets
            .iter()
            .map(|(addr, _)| scope.spawn(move || probe_upstream(*addr, UPSTREAM_TIMEOUT)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("the probe panicked".to_string()))
            })
            .collect()
    });
    checks.extend(upstream_verdicts(&targets, &results));
    checks
}

fn upstream_verdicts(
    targets: &[(SocketAddr, Origin)],
    results: &[Result<ResponseCode, String>],
) -> Vec<Check> {
    let group_answered = |origin: &Origin| {
        targets
            .iter()
            .zip(results)
            .any(|((_, o), r)| o == origin && r.is_ok())
    };
    targets
        .iter()
        .zip(results)
        .map(|((addr, origin), result)| {
            let (setting, whose) = match origin {
                Origin::Configured => (
                    format!("upstream {addr}"),
                    "a configured upstream".to_string(),
                ),
                Origin::ResolvConf => (
                    format!("upstream {addr}"),
                    "a nameserver of resolv.conf".to_string(),
                ),
                Origin::Stub(domain) => (
                    format!("upstream {addr} ({domain})"),
                    format!("a resolver of stub domain {domain}"),
                ),
            };
            let recommended = format!("answers . NS within {}s", UPSTREAM_TIMEOUT.as_secs());
            let others = if group_answered(origin) {
                Status::Warn
            } else {
                Status::Error
            };
            match result {
                Ok(ResponseCode::NoError) => {
                    if *origin == Origin::ResolvConf && addr.ip().is_loopback() {
                        Check::new(
                            setting,
                            "answers",
                            recommended,
                            Status::Warn,
                            format!(
                                "{whose} on loopback: inside a pod it is not there, and on a \
                                 node it is a local stub (systemd-resolved's 127.0.0.53) that \
                                 may forward back to the cluster DNS: a forwarding loop. Point \
                                 resolv_conf at /run/systemd/resolve/resolv.conf or set \
                                 `upstreams`"
                            ),
                        )
                    } else {
                        Check::new(setting, "answers", recommended, Status::Ok, whose)
                    }
                }
                Ok(rcode) => Check::new(
                    setting,
                    format!("answers {}", format!("{rcode:?}").to_uppercase()),
                    recommended,
                    Status::Warn,
                    format!(
                        "{whose} answers but does not resolve the root NS question: it may \
                         refuse to recurse for this host, or filter names; clusterdns needs a \
                         recursive resolver that answers for every name"
                    ),
                ),
                Err(error) => Check::new(
                    setting,
                    error.clone(),
                    recommended,
                    others,
                    format!(
                        "{whose} does not answer: clusterdns tries the next one after \
                         upstream.timeout{}",
                        if others == Status::Error {
                            ", and with none answering forwarded names get SERVFAIL"
                        } else {
                            ""
                        }
                    ),
                ),
            }
        })
        .collect()
}

/// Sends `. IN NS` (RD set) over UDP to `addr`; the rcode of the matching answer.
fn probe_upstream(addr: SocketAddr, timeout: Duration) -> Result<ResponseCode, String> {
    let mut query = Message::query();
    query.metadata.id = rand::random();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(Name::root(), RecordType::NS));
    let wire = query.to_vec().map_err(|e| format!("cannot encode: {e}"))?;
    let local: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).map_err(|e| format!("cannot bind: {e}"))?;
    // Connected: other sources are filtered and an ICMP refusal is an error at once.
    socket
        .connect(addr)
        .map_err(|e| format!("cannot reach: {e}"))?;
    socket
        .send(&wire)
        .map_err(|e| format!("cannot send: {e}"))?;
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no answer within {}s", timeout.as_secs_f32()));
        }
        socket
            .set_read_timeout(Some(left))
            .map_err(|e| format!("socket: {e}"))?;
        let len = match socket.recv(&mut buf) {
            Ok(len) => len,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("no answer within {}s", timeout.as_secs_f32()));
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                return Err("refused (nothing listens there)".to_string());
            }
            Err(e) => return Err(format!("receive failed: {e}")),
        };
        let Ok(answer) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        if answer.metadata.id == query.metadata.id
            && answer.metadata.message_type == MessageType::Response
            && answer.queries.len() == 1
            && answer.queries[0].query_type() == RecordType::NS
        {
            return Ok(answer.metadata.response_code);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake machine: files under a temp dir.
    fn machine(files: &[(&str, &str)]) -> (tempfile::TempDir, Machine) {
        let dir = tempfile::tempdir().expect("tempdir");
        for (path, text) in files {
            let full = dir.path().join(path.trim_start_matches('/'));
            std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
            std::fs::write(full, text).expect("write");
        }
        let machine = Machine::new(dir.path());
        (dir, machine)
    }

    #[test]
    fn sysctl_paths_live_below_the_root() {
        let (_dir, m) = machine(&[("/proc/sys/net/core/rmem_max", "4194304\n")]);
        assert_eq!(m.sysctl_one("net.core.rmem_max"), Ok(4194304));
        assert!(m.sysctl_one("net.core.wmem_max").is_err());
    }

    #[test]
    fn buffer_max_compares_with_the_config() {
        let (_dir, m) = machine(&[
            ("/proc/sys/net/core/rmem_max", "212992\n"),
            ("/proc/sys/net/core/wmem_max", "16777216\n"),
            ("/proc/sys/net/core/rmem_default", "garbage\n"),
        ]);
        let c = buffer_max(&m, "net.core.rmem_max", "k", 8 << 20, "why");
        assert_eq!(c.status, Status::Warn);
        assert!(
            c.why.contains("sysctl -w net.core.rmem_max=8388608"),
            "{}",
            c.why
        );
        let c = buffer_max(&m, "net.core.wmem_max", "k", 8 << 20, "why");
        assert_eq!(c.status, Status::Ok);
        assert_eq!(rmem_default(&m).status, Status::NotAvailable);
    }

    #[test]
    fn udp_mem_counts_every_worker_buffer() {
        let mut config = Config::default();
        config.server.udp_workers = 4;
        config.server.recv_buffer_bytes = 1 << 20;
        // 4 sockets x 2 MiB (doubled) = 8 MiB = 2048 pages of 4 KiB.
        let (_dir, m) = machine(&[("/proc/sys/net/ipv4/udp_mem", "100 200 2048\n")]);
        assert_eq!(udp_mem(&m, &config).status, Status::Ok);
        let (_dir, m) = machine(&[("/proc/sys/net/ipv4/udp_mem", "100 200 2047\n")]);
        let c = udp_mem(&m, &config);
        assert_eq!(c.status, Status::Warn);
        assert_eq!(c.recommended, "max >= 2048 pages");
        let (_dir, m) = machine(&[("/proc/sys/net/ipv4/udp_mem", "100 200\n")]);
        assert_eq!(udp_mem(&m, &config).status, Status::NotAvailable);
        let (_dir, m) = machine(&[
            ("/proc/sys/net/ipv4/udp_mem", "100 200 2048\n"),
            (
                "/proc/self/smaps",
                "00400000-0040b000 r-xp\nKernelPageSize:       64 kB\n",
            ),
        ]);
        assert_eq!(udp_mem(&m, &config).recommended, "max >= 128 pages");
    }

    #[test]
    fn conntrack_usage_warns_at_three_quarters() {
        for (count, status) in [
            ("10", Status::Ok),
            ("74", Status::Ok),
            ("75", Status::Warn),
            ("100", Status::Error),
        ] {
            let (_dir, m) = machine(&[
                ("/proc/sys/net/netfilter/nf_conntrack_max", "100\n"),
                ("/proc/sys/net/netfilter/nf_conntrack_count", count),
            ]);
            assert_eq!(conntrack_usage(&m).status, status, "count {count}");
        }
        let (_dir, m) = machine(&[]);
        assert_eq!(conntrack_usage(&m).status, Status::NotAvailable);
    }

    #[test]
    fn conntrack_stat_sums_the_cpus() {
        let text = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop\n\
                    00000010  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 0000000a 00000001 00000000\n\
                    00000010  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000006 00000000 00000000\n";
        assert_eq!(
            conntrack_stat(text, &["insert_failed", "drop"]),
            Ok(vec![16, 1])
        );
        assert!(conntrack_stat(text, &["nope"]).is_err());
        assert!(conntrack_stat("", &["drop"]).is_err());
        assert!(conntrack_stat("drop\nzz\n", &["drop"]).is_err());
    }

    #[test]
    fn snmp_udp_reads_the_header_and_values() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\n\
                    Udp: 39270 1220 4840 49226 4840\n\
                    UdpLite: InDatagrams NoPorts InErrors\nUdpLite: 0 0 0\n";
        let udp = snmp_udp(text).expect("parses");
        assert_eq!(udp["RcvbufErrors"], 4840);
        assert_eq!(udp["InDatagrams"], 39270);
        assert!(snmp_udp("Ip: a\nIp: 1\n").is_err());
        assert!(snmp_udp("Udp: A B\nUdp: 1\n").is_err());
        assert!(snmp_udp("Udp: A\nUdp: x\n").is_err());
    }

    #[test]
    fn open_files_reads_the_soft_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max cpu time              unlimited            unlimited            seconds\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(open_files_soft_limit(limits), Ok(Some(1024)));
        assert_eq!(
            open_files_soft_limit("Max open files            unlimited  unlimited  files\n"),
            Ok(None)
        );
        assert!(open_files_soft_limit("Max cpu time 1 1\n").is_err());
        assert!(open_files_soft_limit("Max open files  lots  1 files\n").is_err());

        let config = Config::default();
        let (_dir, m) = machine(&[("/proc/self/limits", limits)]);
        let c = open_files(&m, &config);
        assert_eq!(c.status, Status::Warn);
        assert!(c.why.contains("ulimit -n"), "{}", c.why);
    }

    #[test]
    fn bind_errors_say_what_to_do() {
        let (_dir, m) = machine(&[("/proc/sys/net/ipv4/ip_unprivileged_port_start", "1024\n")]);
        let addr: SocketAddr = "0.0.0.0:53".parse().expect("addr");
        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        let c = bind_verdict(&m, addr, Proto::Udp, Err(denied));
        assert_eq!(c.status, Status::Error);
        assert_eq!(c.setting, "listen udp 0.0.0.0:53");
        assert!(c.why.contains("NET_BIND_SERVICE"), "{}", c.why);
        assert!(c.why.contains("below 1024"), "{}", c.why);
        let in_use = io::Error::from(io::ErrorKind::AddrInUse);
        let c = bind_verdict(&m, addr, Proto::Tcp, Err(in_use));
        assert!(c.why.contains("already in use"), "{}", c.why);
        assert_eq!(
            bind_verdict(&m, addr, Proto::Tcp, Ok(())).status,
            Status::Ok
        );
    }

    #[test]
    fn bind_check_finds_a_taken_port() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let (_dir, m) = machine(&[]);
        assert_eq!(bind_check(&m, addr, Proto::Tcp).status, Status::Error);
        let free: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        assert_eq!(bind_check(&m, free, Proto::Udp).status, Status::Ok);
        assert_eq!(bind_check(&m, free, Proto::Tcp).status, Status::Ok);
    }

    #[test]
    fn one_answering_upstream_makes_the_others_warnings() {
        let a: SocketAddr = "192.0.2.1:53".parse().expect("addr");
        let b: SocketAddr = "192.0.2.2:53".parse().expect("addr");
        let lo: SocketAddr = "127.0.0.53:53".parse().expect("addr");
        let stub = Origin::Stub("acme.local".into());
        let targets = [
            (a, Origin::Configured),
            (b, Origin::Configured),
            (a, stub.clone()),
        ];
        let results = [
            Ok(ResponseCode::NoError),
            Err("no answer".to_string()),
            Ok(ResponseCode::Refused),
        ];
        let checks = upstream_verdicts(&targets, &results);
        let statuses: Vec<Status> = checks.iter().map(|c| c.status).collect();
        assert_eq!(statuses, [Status::Ok, Status::Warn, Status::Warn]);
        assert_eq!(checks[2].setting, "upstream 192.0.2.1:53 (acme.local)");
        assert_eq!(checks[2].value, "answers REFUSED");

        // No resolver of a group answers at all: nothing can be forwarded there.
        let checks = upstream_verdicts(
            &[(a, stub.clone()), (b, stub.clone())],
            &[Err("no answer".to_string()), Err("refused".to_string())],
        );
        assert!(
            checks.iter().all(|c| c.status == Status::Error),
            "{checks:?}"
        );
        assert!(checks[0].why.contains("SERVFAIL"), "{}", checks[0].why);

        let checks = upstream_verdicts(&[(lo, Origin::ResolvConf)], &[Ok(ResponseCode::NoError)]);
        assert_eq!(checks[0].status, Status::Warn);
        assert!(
            checks[0].why.contains("forwarding loop"),
            "{}",
            checks[0].why
        );
    }

    #[test]
    fn probe_gets_the_rcode_or_an_error() {
        let server = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = server.local_addr().expect("addr");
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let (len, peer) = server.recv_from(&mut buf).expect("recv");
            let query = Message::from_vec(&buf[..len]).expect("query");
            assert_eq!(query.queries[0].query_type(), RecordType::NS);
            assert!(query.queries[0].name().is_root());
            // A stray datagram with the wrong id first: ignored.
            let mut wrong =
                Message::response(query.metadata.id.wrapping_add(1), query.metadata.op_code);
            wrong.queries = query.queries.clone();
            let _ = server.send_to(&wrong.to_vec().expect("encode"), peer);
            let mut answer = Message::response(query.metadata.id, query.metadata.op_code);
            answer.queries = query.queries.clone();
            answer.metadata.response_code = ResponseCode::ServFail;
            let _ = server.send_to(&answer.to_vec().expect("encode"), peer);
        });
        assert_eq!(
            probe_upstream(addr, Duration::from_secs(2)),
            Ok(ResponseCode::ServFail)
        );

        let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let started = Instant::now();
        let result = probe_upstream(
            silent.local_addr().expect("addr"),
            Duration::from_millis(200),
        );
        assert!(result.is_err(), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn exit_code_is_the_worst_status() {
        let check = |status| Check::new("s", "v", "r", status, "w");
        assert_eq!(exit_code(&[]), 0);
        assert_eq!(
            exit_code(&[check(Status::Ok), check(Status::NotAvailable)]),
            0
        );
        assert_eq!(exit_code(&[check(Status::Warn), check(Status::Ok)]), 1);
        assert_eq!(exit_code(&[check(Status::Warn), check(Status::Error)]), 2);
    }

    #[test]
    fn table_aligns_columns_and_counts() {
        let checks = [
            Check::new("net.core.rmem_max", "1", ">= 2", Status::Warn, "because"),
            Check::new("x", "-", "-", Status::NotAvailable, "missing"),
        ];
        let table = render_table(&checks);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("SETTING"), "{table}");
        let status_col = lines[0].find("STATUS").expect("STATUS column");
        assert_eq!(&lines[1][status_col..status_col + 4], "WARN", "{table}");
        assert_eq!(&lines[2][status_col..status_col + 3], "N/A", "{table}");
        assert!(table.contains("0 OK, 1 WARN, 0 ERROR, 1 N/A"), "{table}");
    }
}
