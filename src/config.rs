//! Server configuration: the TOML config file format, its defaults, its validation and the
//! command-line flags of `clusterdns serve` that override it.
//!
//! This module owns every knob an operator can turn and decides whether a value is acceptable.
//! Every rejected value is reported as `path:line:col: reason`, so a broken ConfigMap points at
//! the offending line. To get there, validation happens *inside* deserialization (custom
//! `deserialize_with` functions return `serde::de::Error::custom`), which lets `toml` attach the
//! span of the bad value; the span is then turned into a line and a column here.
//!
//! It must not touch the network or anything else: no sockets, no I/O besides reading the config
//! file itself (resolv.conf is read by [`crate::upstream`], manifests by [`crate::source`]).

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default cluster domain.
pub const DEFAULT_ZONE: &str = "cluster.local";
/// Largest accepted `ttl` (CoreDNS's kubernetes plugin accepts 0..=3600).
pub const MAX_TTL: u32 = 3600;
/// Smallest accepted `server.max_udp_payload` (the pre-EDNS DNS message size).
pub const MIN_UDP_PAYLOAD: u16 = 512;
/// Largest accepted `server.max_udp_payload`.
pub const MAX_UDP_PAYLOAD: u16 = 4096;

const DNS_PORT: u16 = 53;
/// Port of the admin endpoint (`clusterdns explain`/`dump` ask `http://127.0.0.1:8053`).
pub const ADMIN_PORT: u16 = 8053;

/// The whole configuration of one server. `Config::default()` is what runs without a file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The cluster domain served authoritatively: lowercase, without trailing dot.
    #[serde(deserialize_with = "de_zone")]
    pub zone: String,
    /// DNS listen addresses; each one binds both UDP and TCP. Never empty.
    #[serde(deserialize_with = "de_listen")]
    pub listen: Vec<SocketAddr>,
    /// TTL of the records of the cluster zone, in seconds (0..=3600).
    #[serde(deserialize_with = "de_ttl")]
    pub ttl: u32,
    /// Whether and how `<ip>.<ns>.pod.<zone>` names are answered.
    pub pods: PodMode,
    /// Manifest directory. When read from a file, a relative path has already been resolved
    /// against the directory of the config file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifests: Option<PathBuf>,
    /// Upstream resolvers for names outside the zone, tried in order. Empty means: use the
    /// nameservers of [`Config::resolv_conf`].
    #[serde(deserialize_with = "de_upstreams")]
    pub upstreams: Vec<SocketAddr>,
    /// resolv.conf to take upstreams from when `upstreams` is empty (taken as is: a relative
    /// path is relative to the working directory).
    pub resolv_conf: PathBuf,
    /// Prometheus `/metrics` listener; `None` when disabled (`"off"`).
    #[serde(
        deserialize_with = "de_http_listen",
        serialize_with = "ser_http_listen"
    )]
    pub metrics_listen: Option<SocketAddr>,
    /// Liveness (`/health`) listener; `None` when disabled (`"off"`).
    #[serde(
        deserialize_with = "de_http_listen",
        serialize_with = "ser_http_listen"
    )]
    pub health_listen: Option<SocketAddr>,
    /// Readiness (`/ready`) listener; `None` when disabled (`"off"`).
    #[serde(
        deserialize_with = "de_http_listen",
        serialize_with = "ser_http_listen"
    )]
    pub ready_listen: Option<SocketAddr>,
    /// The admin endpoint (`/explain`, `/dump`), for `clusterdns explain` and `dump`; `None`
    /// when disabled (`"off"`). Loopback by default: it tells anyone who reaches it every
    /// name of the cluster.
    #[serde(
        deserialize_with = "de_http_listen",
        serialize_with = "ser_http_listen"
    )]
    pub admin_listen: Option<SocketAddr>,
    /// The `[server]` table: socket and concurrency knobs.
    pub server: ServerConfig,
    /// The `[upstream]` table: forwarding timeouts and limits.
    pub upstream: UpstreamConfig,
    /// The `[cache]` table: the cache of upstream answers.
    pub cache: CacheConfig,
    /// The `[log]` table: log format and the query log.
    pub log: LogConfig,
    /// The `[acl]` table: who may ask, and who may have names forwarded.
    pub acl: AclConfig,
    /// On SIGTERM, how long DNS keeps answering while /health and /ready say 503, so
    /// kube-proxy takes the pod out of the Service before it stops (CoreDNS `lameduck`).
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub lameduck: Duration,
    /// The `[kubernetes]` table: the Kubernetes API source.
    pub kubernetes: KubernetesConfig,
}

/// The `[acl]` table: like CoreDNS's `acl` plugin, so a server exposed by mistake (a
/// LoadBalancer Service) is not an open resolver.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AclConfig {
    /// Clients that get answers at all; everyone else gets REFUSED. Default: everyone.
    pub allow: Vec<ipnet::IpNet>,
    /// Clients whose questions for names outside the cluster zone are forwarded; everyone
    /// else gets REFUSED for them (cluster answers still come). Default: the networks pods
    /// use: loopback, RFC 1918, RFC 6598 (carrier-grade NAT), link-local, and the IPv6
    /// loopback, unique-local and link-local ranges.
    pub recursion: Vec<ipnet::IpNet>,
    /// `[acl.rate_limit]`: answers per second per client network over UDP. Off by default.
    pub rate_limit: RateLimitConfig,
}

/// The `[acl.rate_limit]` table: response rate limiting for a server exposed beyond the
/// cluster (names and defaults as BIND's RRL). Off by default: cluster clients are trusted.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// UDP answers per second per client network, with one second of burst; 0 turns rate
    /// limiting off.
    pub responses_per_second: u32,
    /// Of the answers over the limit, every `slip`-th goes out truncated (TC) so a real
    /// client retries over TCP; the others are dropped. 0: drop all; 1: truncate all.
    #[serde(deserialize_with = "de_slip")]
    pub slip: u32,
    /// The IPv4 client network one bucket counts (prefix length).
    #[serde(deserialize_with = "de_ipv4_prefix")]
    pub ipv4_prefix: u8,
    /// The IPv6 client network one bucket counts (prefix length).
    #[serde(deserialize_with = "de_ipv6_prefix")]
    pub ipv6_prefix: u8,
}

impl Default for RateLimitConfig {
    fn default() -> RateLimitConfig {
        RateLimitConfig {
            responses_per_second: 0,
            slip: 2,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
        }
    }
}

fn de_bounded<'de, D: Deserializer<'de>>(d: D, what: &str, max: i64) -> Result<i64, D::Error> {
    let n = i64::deserialize(d)?;
    if !(0..=max).contains(&n) {
        return Err(de::Error::custom(format!(
            "invalid {what} {n}: must be between 0 and {max}"
        )));
    }
    Ok(n)
}

fn de_slip<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    // BIND's limit: beyond 10 a slip barely differs from dropping everything.
    de_bounded(d, "slip", 10).map(|n| n as u32)
}

fn de_ipv4_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    de_bounded(d, "ipv4_prefix", 32).map(|n| n as u8)
}

fn de_ipv6_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    de_bounded(d, "ipv6_prefix", 128).map(|n| n as u8)
}

impl Default for AclConfig {
    fn default() -> AclConfig {
        let nets = |list: &[&str]| list.iter().filter_map(|n| n.parse().ok()).collect();
        AclConfig {
            allow: nets(&["0.0.0.0/0", "::/0"]),
            recursion: nets(&[
                "127.0.0.0/8",
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "100.64.0.0/10",
                "169.254.0.0/16",
                "::1/128",
                "fc00::/7",
                "fe80::/10",
            ]),
            rate_limit: RateLimitConfig::default(),
        }
    }
}

/// The `[log]` table.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (one human-readable line per event) or `json` (one JSON object per line).
    pub format: LogFormat,
    /// One log line per query (client, name, type, rcode, duration, source), like CoreDNS's
    /// `log` plugin. Off by default: at cluster rates it is a firehose.
    pub queries: bool,
    /// Fraction of queries logged when `queries` is on (0.0..=1.0).
    #[serde(deserialize_with = "de_fraction")]
    pub query_sample: f64,
    /// One name whose queries are logged with their whole explanation (what `clusterdns
    /// explain` prints), whether or not `queries` is on; `None`: no tracing.
    #[serde(
        deserialize_with = "de_trace_name",
        skip_serializing_if = "Option::is_none"
    )]
    pub trace_name: Option<String>,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            format: LogFormat::Text,
            queries: false,
            query_sample: 1.0,
            trace_name: None,
        }
    }
}

/// A traced name: a domain name, kept lower case and fully qualified (`"orders.shop"` and
/// `"Orders.Shop."` trace the same questions).
fn check_trace_name(s: &str) -> Result<String, String> {
    let name = s.trim().trim_end_matches('.');
    if name.is_empty() {
        return Err(format!("invalid name {s:?}: empty"));
    }
    hickory_proto::rr::Name::from_ascii(format!("{name}."))
        .map(|n| n.to_lowercase().to_ascii())
        .map_err(|e| format!("invalid name {s:?}: {e}"))
}

fn de_trace_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    check_trace_name(&s).map(Some).map_err(de::Error::custom)
}

fn de_fraction<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let value = f64::deserialize(d)?;
    if !(0.0..=1.0).contains(&value) {
        return Err(de::Error::custom(format!(
            "invalid fraction {value}: must be between 0.0 and 1.0"
        )));
    }
    Ok(value)
}

/// The `[cache]` table: what is kept of upstream answers, and for how long.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Positive answers kept at most (entries); 0 disables the cache.
    pub capacity: u64,
    /// Negative answers (NXDOMAIN, NODATA, SERVFAIL) kept at most, apart from the positive
    /// ones so a flood of random names cannot evict the answers clients need.
    pub negative_capacity: u64,
    /// Cap on the TTL of positive answers, in seconds.
    pub max_ttl: u32,
    /// Floor on the TTL of cached answers, in seconds.
    pub min_ttl: u32,
    /// Cap on the TTL of negative answers, in seconds (RFC 2308 section 5).
    pub max_negative_ttl: u32,
    /// How long an upstream SERVFAIL is cached, in seconds (0: not at all; at most 5).
    #[serde(deserialize_with = "de_servfail_ttl")]
    pub servfail_ttl: u32,
    /// How long past its expiry an answer may still be served when every upstream fails
    /// (RFC 8767), in seconds; 0 disables serve-stale.
    pub serve_stale: u32,
    /// An entry asked at least this many times is refreshed in the background when less than
    /// 10% of its TTL is left; 0 disables prefetch.
    pub prefetch: u32,
}

/// The `[kubernetes]` table.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// Serve the cluster from the Kubernetes API (kube-rs watchers).
    pub enabled: bool,
    /// Kubeconfig file; `None`: `KUBECONFIG`, `~/.kube/config`, then the in-cluster service
    /// account. Relative paths in the file are resolved against the config file's directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    /// Serve only these namespaces (valid, distinct DNS labels); empty: all.
    #[serde(deserialize_with = "de_namespaces")]
    pub namespaces: Vec<String>,
    /// Label selector applied to Services and EndpointSlices; `None`: all.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_labels"
    )]
    pub labels: Option<String>,
    /// Last-good snapshot file (resolved like `kubeconfig`); `None`: no snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<PathBuf>,
    /// Least time between two snapshot writes. TOML: `"10s"`.
    #[serde(
        deserialize_with = "de_snapshot_interval",
        serialize_with = "ser_duration"
    )]
    pub snapshot_interval: Duration,
}

impl Default for KubernetesConfig {
    fn default() -> KubernetesConfig {
        KubernetesConfig {
            enabled: false,
            kubeconfig: None,
            namespaces: Vec::new(),
            labels: None,
            snapshot: None,
            snapshot_interval: Duration::from_secs(10),
        }
    }
}

/// The `[server]` table.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// UDP worker tasks per listen address; 0 means one per CPU core
    /// (see [`ServerConfig::effective_udp_workers`]).
    pub udp_workers: usize,
    /// Socket receive buffer asked of the kernel, in bytes (the kernel may cap it).
    pub recv_buffer_bytes: usize,
    /// Socket send buffer asked of the kernel, in bytes (the kernel may cap it).
    pub send_buffer_bytes: usize,
    /// Largest UDP response sent, whatever the client advertises (512..=4096).
    #[serde(deserialize_with = "de_max_udp_payload")]
    pub max_udp_payload: u16,
    /// A TCP connection idle for this long is closed. TOML: `"10s"`, `"500ms"`.
    #[serde(
        deserialize_with = "de_tcp_idle_timeout",
        serialize_with = "ser_duration"
    )]
    pub tcp_idle_timeout: Duration,
    /// Open TCP connections at most; further ones are closed at once. At least 1.
    #[serde(deserialize_with = "de_max_tcp_connections")]
    pub max_tcp_connections: usize,
    /// Queries answered on one TCP connection before it is closed; 0 means unlimited.
    pub max_tcp_queries_per_connection: usize,
}

/// The `[upstream]` table.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Per-try timeout: how long one upstream gets to answer before the next is tried.
    /// TOML: `"2s"`. When upstreams come from resolv.conf and this was not set explicitly
    /// (see [`UpstreamConfig::timeout_explicit`]), resolv.conf's `options timeout:N` wins.
    #[serde(
        deserialize_with = "de_upstream_timeout",
        serialize_with = "ser_duration"
    )]
    pub timeout: Duration,
    /// Overall deadline for one client query, all tries included. Always `>= timeout` when
    /// read from a file.
    #[serde(
        deserialize_with = "de_upstream_deadline",
        serialize_with = "ser_duration"
    )]
    pub deadline: Duration,
    /// True when `timeout` was set in the config file. Not a config key: filled in by
    /// [`Config::load`].
    #[serde(skip)]
    pub timeout_explicit: bool,
    /// Upstream queries in flight at most; a question beyond it gets REFUSED at once (and is
    /// counted), so a slow upstream cannot pile up unbounded memory. At least 1.
    #[serde(deserialize_with = "de_max_concurrent")]
    pub max_concurrent: usize,
    /// In which order the upstreams are tried (CoreDNS `policy`).
    pub policy: Policy,
    /// Rounds over the upstream list per question (every upstream tried once per round);
    /// 0: as many as fit in the deadline. When 0 and upstreams come from resolv.conf, its
    /// `options attempts:N` applies.
    pub attempts: u32,
    /// Ask upstreams over TCP only (CoreDNS `force_tcp`): for upstreams behind conntrack or
    /// NAT that loses UDP, and for node-local caches talking to the central servers.
    pub force_tcp: bool,
    /// Consecutive failures after which an upstream is marked down and probed in the
    /// background until it answers again; 0 disables health checking.
    pub max_fails: u32,
    /// How often a down upstream is probed (`. IN NS`). TOML: `"500ms"`.
    #[serde(deserialize_with = "de_health_check", serialize_with = "ser_duration")]
    pub health_check: Duration,
    /// Per-domain resolvers (kube-dns `stubDomains`): names under a key go to its resolvers
    /// instead of the default upstreams; the longest matching domain wins.
    /// TOML: `stub_domains = { "acme.local" = ["10.0.0.53"] }`.
    #[serde(deserialize_with = "de_stub_domains")]
    pub stub_domains: std::collections::BTreeMap<String, Vec<SocketAddr>>,
}

/// Order in which upstreams are tried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// A random order for every query: spreads load, CoreDNS's default.
    #[default]
    Random,
    /// The next upstream first for every query.
    RoundRobin,
    /// Always in the configured order: the first is preferred while it is healthy.
    Sequential,
}

/// How pod names (`1-2-3-4.<ns>.pod.<zone>`) are answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PodMode {
    /// Pod names do not exist (NXDOMAIN).
    Disabled,
    /// Any well-formed pod name answers with the IP it spells (kube-dns behaviour).
    Insecure,
    /// Only IPs of pods that exist in the namespace answer.
    Verified,
}

impl PodMode {
    /// The config-file spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PodMode::Disabled => "disabled",
            PodMode::Insecure => "insecure",
            PodMode::Verified => "verified",
        }
    }
}

impl fmt::Display for PodMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            zone: DEFAULT_ZONE.to_string(),
            listen: vec![SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), DNS_PORT)],
            ttl: 5,
            pods: PodMode::Disabled,
            manifests: None,
            upstreams: Vec::new(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            metrics_listen: Some(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 9153)),
            health_listen: Some(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 8080)),
            ready_listen: Some(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 8181)),
            admin_listen: Some(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), ADMIN_PORT)),
            server: ServerConfig::default(),
            upstream: UpstreamConfig::default(),
            kubernetes: KubernetesConfig::default(),
            cache: CacheConfig::default(),
            log: LogConfig::default(),
            acl: AclConfig::default(),
            lameduck: Duration::from_secs(5),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            udp_workers: 0,
            recv_buffer_bytes: 8 << 20,
            send_buffer_bytes: 8 << 20,
            max_udp_payload: 1232,
            tcp_idle_timeout: Duration::from_secs(10),
            max_tcp_connections: 1000,
            max_tcp_queries_per_connection: 0,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> CacheConfig {
        CacheConfig {
            capacity: 9984,
            negative_capacity: 9984,
            max_ttl: 3600,
            min_ttl: 5,
            max_negative_ttl: 1800,
            servfail_ttl: 5,
            serve_stale: 3600,
            prefetch: 2,
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> UpstreamConfig {
        UpstreamConfig {
            timeout: Duration::from_secs(2),
            deadline: Duration::from_secs(4),
            timeout_explicit: false,
            max_concurrent: 1000,
            policy: Policy::Random,
            attempts: 0,
            force_tcp: false,
            max_fails: 2,
            health_check: Duration::from_millis(500),
            stub_domains: std::collections::BTreeMap::new(),
        }
    }
}

impl ServerConfig {
    /// `udp_workers`, with 0 replaced by the number of CPU cores available to the process.
    pub fn effective_udp_workers(&self) -> usize {
        if self.udp_workers > 0 {
            self.udp_workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

/// Why a configuration was rejected. `Display` is the message to show the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("{}: cannot read config file: {source}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A value in the config file is invalid (`path:line:col: reason`).
    #[error("{}:{line}:{column}: {reason}", path.display())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// 1-based line of the offending value or key.
        line: usize,
        /// 1-based column (in characters) of the offending value or key.
        column: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The config file is invalid but no position is known (should not happen with TOML).
    #[error("{}: {reason}", path.display())]
    InvalidFile {
        /// The config file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A command-line flag has an invalid value.
    #[error("{flag}: {reason}")]
    Flag {
        /// The flag, e.g. `--ttl`.
        flag: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
}

impl ConfigError {
    fn at(path: &Path, text: &str, span: Option<Range<usize>>, reason: String) -> ConfigError {
        match span {
            Some(span) => {
                let (line, column) = line_col(text, span.start);
                ConfigError::Invalid {
                    path: path.to_path_buf(),
                    line,
                    column,
                    reason,
                }
            }
            None => ConfigError::InvalidFile {
                path: path.to_path_buf(),
                reason,
            },
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Only the spans the cross-field checks need; parsed leniently after the strict parse passed.
#[derive(Default, Deserialize)]
#[serde(default)]
struct SpanDoc {
    upstream: SpanUpstream,
    kubernetes: SpanKubernetes,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct SpanKubernetes {
    enabled: Option<toml::Spanned<toml::Value>>,
    snapshot: Option<toml::Spanned<toml::Value>>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct SpanUpstream {
    timeout: Option<toml::Spanned<toml::Value>>,
    deadline: Option<toml::Spanned<toml::Value>>,
}

impl Config {
    /// Reads, parses and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml_str(&text, path)
    }

    /// Parses and validates config text; `path` is used in error messages and to resolve a
    /// relative `manifests` directory. Does no I/O.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::at(path, text, e.span(), e.message().to_string()))?;
        // Cannot fail in practice: the strict parse above accepted the same document.
        let spans: SpanDoc = toml::from_str(text).unwrap_or_default();
        config.upstream.timeout_explicit = spans.upstream.timeout.is_some();
        if config.upstream.deadline < config.upstream.timeout {
            let span = spans
                .upstream
                .deadline
                .or(spans.upstream.timeout)
                .map(|s| s.span())
                .or_else(|| text.find("[upstream]").map(|i| i..i));
            return Err(ConfigError::at(
                path,
                text,
                span,
                format!(
                    "upstream.deadline ({}) must not be shorter than upstream.timeout ({})",
                    format_duration(config.upstream.deadline),
                    format_duration(config.upstream.timeout)
                ),
            ));
        }
        if config.kubernetes.enabled && config.manifests.is_some() {
            let span = spans.kubernetes.enabled.map(|s| s.span());
            return Err(ConfigError::at(
                path,
                text,
                span,
                SOURCES_CONFLICT.to_string(),
            ));
        }
        if config.kubernetes.snapshot.is_some() && !config.kubernetes.enabled {
            let span = spans.kubernetes.snapshot.map(|s| s.span());
            return Err(ConfigError::at(
                path,
                text,
                span,
                SNAPSHOT_NEEDS_API.to_string(),
            ));
        }
        if let Some(base) = path.parent() {
            for p in [
                &mut config.manifests,
                &mut config.kubernetes.kubeconfig,
                &mut config.kubernetes.snapshot,
            ] {
                if let Some(rel) = p.as_ref().filter(|p| p.is_relative()) {
                    *p = Some(base.join(rel));
                }
            }
        }
        Ok(config)
    }

    /// A human summary of what would run, one setting per line (`clusterdns check-config`).
    pub fn describe(&self) -> String {
        use std::fmt::Write as _;
        fn addrs(list: &[SocketAddr]) -> String {
            list.iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
        fn http(addr: Option<SocketAddr>) -> String {
            addr.map_or_else(|| "off".to_string(), |a| a.to_string())
        }
        let mut out = String::new();
        let s = &self.server;
        let _ = writeln!(out, "zone:              {} (ttl {}s)", self.zone, self.ttl);
        let _ = writeln!(out, "listen (udp+tcp):  {}", addrs(&self.listen));
        let _ = writeln!(out, "pod records:       {}", self.pods);
        let _ = writeln!(
            out,
            "manifests:         {}",
            self.manifests
                .as_ref()
                .map_or_else(|| "none".to_string(), |d| d.display().to_string())
        );
        let k = &self.kubernetes;
        if k.enabled {
            let _ = writeln!(
                out,
                "kubernetes api:    on, {}; namespaces {}; labels {}",
                k.kubeconfig.as_ref().map_or_else(
                    || "KUBECONFIG, ~/.kube/config or in-cluster service account".to_string(),
                    |p| format!("kubeconfig {}", p.display())
                ),
                if k.namespaces.is_empty() {
                    "all".to_string()
                } else {
                    k.namespaces.join(", ")
                },
                k.labels.as_deref().unwrap_or("any"),
            );
            let _ = writeln!(
                out,
                "snapshot:          {}",
                k.snapshot.as_ref().map_or_else(
                    || "none".to_string(),
                    |p| format!(
                        "{}, written at most every {}",
                        p.display(),
                        format_duration(k.snapshot_interval)
                    )
                )
            );
            let _ = writeln!(
                out,
                "watched kinds:     Service, EndpointSlice, Namespace{}",
                if self.pods == PodMode::Verified {
                    ", Pod"
                } else {
                    ""
                }
            );
        } else {
            let _ = writeln!(out, "kubernetes api:    off");
        }
        if self.upstreams.is_empty() {
            let _ = writeln!(
                out,
                "upstreams:         from {}",
                self.resolv_conf.display()
            );
        } else {
            let _ = writeln!(out, "upstreams:         {}", addrs(&self.upstreams));
        }
        let _ = writeln!(
            out,
            "upstream timing:   {} per try{}, {} overall deadline",
            format_duration(self.upstream.timeout),
            if self.upstreams.is_empty() && !self.upstream.timeout_explicit {
                " (unless resolv.conf sets options timeout)"
            } else {
                ""
            },
            format_duration(self.upstream.deadline)
        );
        let u = &self.upstream;
        let _ = writeln!(
            out,
            "upstream policy:   {:?}{}, down after {} failures (probe every {}), at most {} queries in flight",
            u.policy,
            if u.force_tcp { ", TCP only" } else { "" },
            u.max_fails,
            format_duration(u.health_check),
            u.max_concurrent
        );
        for (domain, servers) in &u.stub_domains {
            let _ = writeln!(out, "stub domain:       {domain} -> {}", addrs(servers));
        }
        let c = &self.cache;
        if c.capacity == 0 {
            let _ = writeln!(out, "cache:             off");
        } else {
            let _ = writeln!(
                out,
                "cache:             {} positive / {} negative entries, ttl {}..{}s (negative <= {}s, servfail {}s), serve stale {}s, prefetch {}",
                c.capacity,
                c.negative_capacity,
                c.min_ttl,
                c.max_ttl,
                c.max_negative_ttl,
                c.servfail_ttl,
                c.serve_stale,
                if c.prefetch == 0 {
                    "off".to_string()
                } else {
                    format!("after {} hits", c.prefetch)
                }
            );
        }
        let _ = writeln!(
            out,
            "logs:              {:?}, query log {}",
            self.log.format,
            if self.log.queries {
                format!("on ({}% of queries)", self.log.query_sample * 100.0)
            } else {
                "off".to_string()
            }
        );
        let _ = writeln!(out, "lameduck:          {}", format_duration(self.lameduck));
        let nets = |list: &[ipnet::IpNet]| {
            list.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(out, "clients allowed:   {}", nets(&self.acl.allow));
        let _ = writeln!(out, "forwarding for:    {}", nets(&self.acl.recursion));
        let limit = &self.acl.rate_limit;
        let _ = if limit.responses_per_second == 0 {
            writeln!(out, "rate limit:        off")
        } else {
            writeln!(
                out,
                "rate limit:        {}/s per /{} (IPv4) or /{} (IPv6) over UDP, slip {}",
                limit.responses_per_second, limit.ipv4_prefix, limit.ipv6_prefix, limit.slip
            )
        };
        let _ = writeln!(out, "metrics listen:    {}", http(self.metrics_listen));
        let _ = writeln!(out, "health listen:     {}", http(self.health_listen));
        let _ = writeln!(out, "ready listen:      {}", http(self.ready_listen));
        let _ = writeln!(out, "admin listen:      {}", http(self.admin_listen));
        let _ = writeln!(
            out,
            "udp workers:       {}",
            if s.udp_workers == 0 {
                format!("one per CPU core ({})", s.effective_udp_workers())
            } else {
                s.udp_workers.to_string()
            }
        );
        let _ = writeln!(
            out,
            "socket buffers:    recv {} bytes, send {} bytes",
            s.recv_buffer_bytes, s.send_buffer_bytes
        );
        let _ = writeln!(out, "max udp payload:   {} bytes", s.max_udp_payload);
        let _ = writeln!(
            out,
            "tcp:               idle timeout {}, at most {} connections, {} queries per connection",
            format_duration(s.tcp_idle_timeout),
            s.max_tcp_connections,
            if s.max_tcp_queries_per_connection == 0 {
                "unlimited".to_string()
            } else {
                s.max_tcp_queries_per_connection.to_string()
            }
        );
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Command line.

/// Flags of `clusterdns serve`. Every given flag overrides the config file; repeatable flags
/// replace the file's whole list.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML config file (defaults apply without one).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// DNS listen address, UDP and TCP (repeatable; port 53 if omitted).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Vec<String>,
    /// Directory of Kubernetes manifests (YAML/JSON) to serve.
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// Cluster domain [default: cluster.local].
    #[arg(long, value_name = "NAME")]
    pub zone: Option<String>,
    /// Upstream resolver (repeatable, tried in order; port 53 if omitted)
    /// [default: the nameservers of --resolv-conf].
    #[arg(long = "upstream", value_name = "ADDR[:PORT]")]
    pub upstreams: Vec<String>,
    /// TTL of cluster records, 0..=3600 seconds [default: 5].
    #[arg(long, value_name = "N")]
    pub ttl: Option<u32>,
    /// Pod records [default: disabled].
    #[arg(long, value_name = "MODE")]
    pub pods: Option<PodMode>,
    /// Prometheus listener, or "off" [default: 0.0.0.0:9153].
    #[arg(long, value_name = "ADDR|off")]
    pub metrics_listen: Option<String>,
    /// Liveness listener, or "off" [default: 0.0.0.0:8080].
    #[arg(long, value_name = "ADDR|off")]
    pub health_listen: Option<String>,
    /// Readiness listener, or "off" [default: 0.0.0.0:8181].
    #[arg(long, value_name = "ADDR|off")]
    pub ready_listen: Option<String>,
    /// Admin listener (`clusterdns explain`, `dump`), or "off" [default: 127.0.0.1:8053].
    #[arg(long, value_name = "ADDR|off")]
    pub admin_listen: Option<String>,
    /// Log the explanation of every query for this one name (see `clusterdns explain`).
    #[arg(long, value_name = "NAME")]
    pub trace_name: Option<String>,
    /// resolv.conf to take upstreams from when none are given [default: /etc/resolv.conf].
    #[arg(long, value_name = "FILE")]
    pub resolv_conf: Option<PathBuf>,
    /// Serve the cluster from the Kubernetes API (in-cluster service account, or KUBECONFIG).
    #[arg(long)]
    pub kubernetes: bool,
    /// Kubeconfig for the Kubernetes API source (implies --kubernetes).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Serve only these namespaces (comma-separated) [default: all].
    #[arg(long, value_name = "NS,...", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Label selector for Services and EndpointSlices [default: all].
    #[arg(long, value_name = "SELECTOR")]
    pub labels: Option<String>,
    /// Last-good snapshot of the Kubernetes objects: written after changes, served at startup
    /// when the API cannot be reached [default: none].
    #[arg(long, value_name = "FILE")]
    pub snapshot: Option<PathBuf>,
    /// Least time between two snapshot writes [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub snapshot_interval: Option<String>,
    /// Log format [default: text].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Seconds DNS keeps answering after SIGTERM while /health and /ready say 503
    /// [default: 5s], e.g. "5s", "0s".
    #[arg(long, value_name = "DURATION")]
    pub lameduck: Option<String>,
}

impl ServeArgs {
    /// Loads `--config` if given (else starts from the defaults), applies every given flag on
    /// top and validates the flags with the same rules as the file.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        let flag = |flag: &'static str| move |reason: String| ConfigError::Flag { flag, reason };
        if !self.listen.is_empty() {
            let list = self
                .listen
                .iter()
                .map(|s| parse_listen_addr(s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(flag("--listen"))?;
            check_listen(&list).map_err(flag("--listen"))?;
            config.listen = list;
        }
        if let Some(dir) = &self.manifests {
            config.manifests = Some(dir.clone());
        }
        if let Some(zone) = &self.zone {
            config.zone = parse_zone(zone).map_err(flag("--zone"))?;
        }
        if !self.upstreams.is_empty() {
            let list = self
                .upstreams
                .iter()
                .map(|s| parse_upstream(s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(flag("--upstream"))?;
            check_upstreams(&list).map_err(flag("--upstream"))?;
            config.upstreams = list;
        }
        if let Some(ttl) = self.ttl {
            config.ttl = check_ttl(i64::from(ttl)).map_err(flag("--ttl"))?;
        }
        if let Some(pods) = self.pods {
            config.pods = pods;
        }
        if let Some(s) = &self.metrics_listen {
            config.metrics_listen = parse_http_listen(s).map_err(flag("--metrics-listen"))?;
        }
        if let Some(s) = &self.health_listen {
            config.health_listen = parse_http_listen(s).map_err(flag("--health-listen"))?;
        }
        if let Some(s) = &self.ready_listen {
            config.ready_listen = parse_http_listen(s).map_err(flag("--ready-listen"))?;
        }
        if let Some(s) = &self.admin_listen {
            config.admin_listen = parse_http_listen(s).map_err(flag("--admin-listen"))?;
        }
        if let Some(s) = &self.trace_name {
            config.log.trace_name = Some(check_trace_name(s).map_err(flag("--trace-name"))?);
        }
        if let Some(path) = &self.resolv_conf {
            config.resolv_conf = path.clone();
        }
        if self.kubernetes {
            config.kubernetes.enabled = true;
        }
        if let Some(path) = &self.kubeconfig {
            config.kubernetes.enabled = true;
            config.kubernetes.kubeconfig = Some(path.clone());
        }
        if !self.namespaces.is_empty() {
            config.kubernetes.namespaces =
                check_namespaces(self.namespaces.clone()).map_err(flag("--namespaces"))?;
        }
        if let Some(labels) = &self.labels {
            config.kubernetes.labels = Some(check_labels(labels).map_err(flag("--labels"))?);
        }
        if let Some(path) = &self.snapshot {
            config.kubernetes.snapshot = Some(path.clone());
        }
        if let Some(d) = &self.snapshot_interval {
            config.kubernetes.snapshot_interval = parse_duration(d)
                .and_then(|d| check_positive("--snapshot-interval", d))
                .map_err(flag("--snapshot-interval"))?;
        }
        if config.kubernetes.snapshot.is_some() && !config.kubernetes.enabled {
            return Err(ConfigError::Flag {
                flag: if self.snapshot.is_some() {
                    "--snapshot"
                } else {
                    "--kubernetes"
                },
                reason: SNAPSHOT_NEEDS_API.to_string(),
            });
        }
        if config.kubernetes.enabled && config.manifests.is_some() {
            let which = if self.kubernetes || self.kubeconfig.is_some() {
                "--kubernetes"
            } else {
                "--manifests"
            };
            return Err(ConfigError::Flag {
                flag: which,
                reason: SOURCES_CONFLICT.to_string(),
            });
        }
        if let Some(format) = self.log_format {
            config.log.format = format;
        }
        if let Some(lameduck) = &self.lameduck {
            config.lameduck = parse_duration(lameduck).map_err(flag("--lameduck"))?;
        }
        Ok(config)
    }
}

// ---------------------------------------------------------------------------------------------
// Validation rules, shared by the file and the flags. Each returns the reason on error.

/// Validates a cluster domain (a DNS-1123 subdomain, as Kubernetes requires of
/// `clusterDomain`) and returns it lowercased, without trailing dot.
fn parse_zone(s: &str) -> Result<String, String> {
    let bad = |why: &str| Err(format!("invalid zone {s:?}: {why}"));
    let name = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    if name.is_empty() {
        return bad("must not be empty or the root");
    }
    if name.len() > 253 {
        return bad("longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return bad("empty label");
        }
        if label.len() > 63 {
            return bad("a label is longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad("only letters, digits, '-' and '.' are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label must not start or end with '-'");
        }
    }
    Ok(name)
}

/// Why `manifests` and the Kubernetes source cannot both be on.
const SOURCES_CONFLICT: &str = "the Kubernetes API source and a manifest directory cannot be used together: \
     choose one (kubernetes.enabled / --kubeconfig, or manifests / --manifests)";

/// Why a snapshot without the Kubernetes source is refused.
const SNAPSHOT_NEEDS_API: &str = "a snapshot is a copy of the Kubernetes API's objects: it needs the Kubernetes source \
     (kubernetes.enabled / --kubernetes / --kubeconfig)";

/// Namespaces to serve: each a DNS label, none twice.
fn check_namespaces(list: Vec<String>) -> Result<Vec<String>, String> {
    let mut seen = HashSet::new();
    for ns in &list {
        let valid = !ns.is_empty()
            && ns.len() <= 63
            && ns
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !ns.starts_with('-')
            && !ns.ends_with('-');
        if !valid {
            return Err(format!(
                "invalid namespace {ns:?}: must be a lowercase DNS label (a-z, 0-9, '-')"
            ));
        }
        if !seen.insert(ns.as_str()) {
            return Err(format!("namespace {ns:?} is given twice"));
        }
    }
    Ok(list)
}

/// A label selector as the API server takes it (`app=web,tier!=db,env in (a,b),!legacy`).
/// Checked for shape only (the API server has the last word): no empty requirement, balanced
/// parentheses, only the characters labels and operators use.
fn check_labels(s: &str) -> Result<String, String> {
    let t = s.trim();
    let bad = |why: &str| Err(format!("invalid label selector {s:?}: {why}"));
    if t.is_empty() {
        return bad("empty (leave it unset to serve every object)");
    }
    if let Some(c) = t
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_./=!,() ".contains(*c)))
    {
        return bad(&format!("unexpected character {c:?}"));
    }
    let mut depth = 0i32;
    let mut term = String::new();
    let mut terms = Vec::new();
    for c in t.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(std::mem::take(&mut term));
                continue;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return bad("unbalanced parentheses");
        }
        term.push(c);
    }
    terms.push(term);
    if depth != 0 {
        return bad("unbalanced parentheses");
    }
    if terms.iter().any(|t| t.trim().is_empty()) {
        return bad("empty requirement between commas");
    }
    Ok(t.to_string())
}

fn check_ttl(ttl: i64) -> Result<u32, String> {
    match u32::try_from(ttl) {
        Ok(t) if t <= MAX_TTL => Ok(t),
        _ => Err(format!(
            "invalid ttl {ttl}: must be between 0 and {MAX_TTL}"
        )),
    }
}

/// `ip`, `ip:port`, `[v6]`, `[v6]:port` or a bare IPv6 address; `default_port` when no port.
fn parse_addr(s: &str, default_port: Option<u16>) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let ip = s
        .parse::<IpAddr>()
        .ok()
        .or_else(|| {
            s.strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|r| r.parse::<std::net::Ipv6Addr>().ok())
                .map(IpAddr::V6)
        })
        .ok_or_else(|| {
            format!(
                "invalid address {s:?}: expected an IP address{} (hostnames are not allowed)",
                if default_port.is_some() {
                    " with an optional :port"
                } else {
                    ":port"
                }
            )
        })?;
    match default_port {
        Some(port) => Ok(SocketAddr::new(ip, port)),
        None => Err(format!(
            "invalid address {s:?}: a port is required (IP:PORT)"
        )),
    }
}

fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    parse_addr(s, Some(DNS_PORT))
}

fn check_listen(list: &[SocketAddr]) -> Result<(), String> {
    if list.is_empty() {
        return Err("listen must have at least one address".to_string());
    }
    check_unique("listen", list)
}

fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    let addr = parse_addr(s, Some(DNS_PORT))?;
    if addr.ip().is_unspecified() {
        return Err(format!(
            "invalid upstream {s:?}: the unspecified address cannot be queried"
        ));
    }
    if addr.port() == 0 {
        return Err(format!("invalid upstream {s:?}: port 0"));
    }
    Ok(addr)
}

fn check_upstreams(list: &[SocketAddr]) -> Result<(), String> {
    check_unique("upstreams", list)
}

fn check_unique(what: &str, list: &[SocketAddr]) -> Result<(), String> {
    let mut seen = HashSet::new();
    match list.iter().find(|a| !seen.insert(**a)) {
        Some(dup) => Err(format!("{what}: {dup} is given twice")),
        None => Ok(()),
    }
}

/// An HTTP listener: `IP:PORT`, or `"off"` / `""` to disable it.
fn parse_http_listen(s: &str) -> Result<Option<SocketAddr>, String> {
    let t = s.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    parse_addr(t, None)
        .map(Some)
        .map_err(|e| format!("{e}, or \"off\""))
}

/// Parses a duration such as `"2s"`, `"500ms"`, `"1m30s"`, `"1.5s"` (units: ns, us, ms, s, m,
/// min, h; components may be separated by spaces).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        Err(format!(
            "invalid duration {s:?}: expected a number with a unit, like \"2s\" or \"500ms\""
        ))
    };
    let mut rest = s.trim();
    if rest.is_empty() {
        return bad();
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let Ok(value) = num.parse::<f64>() else {
            return bad();
        };
        let nanos_per_unit: f64 = match unit {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" | "sec" => 1e9,
            "m" | "min" => 60e9,
            "h" => 3600e9,
            _ => return bad(),
        };
        let nanos = value * nanos_per_unit;
        if !nanos.is_finite() || nanos > 1e18 {
            return bad();
        }
        total = total.saturating_add(Duration::from_nanos(nanos.round() as u64));
        rest = after.trim_start();
    }
    Ok(total)
}

/// Formats a duration the way [`parse_duration`] reads it: `"2s"`, `"500ms"`, `"1m30s"`.
pub(crate) fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_string();
    }
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    let parts = [
        (secs / 3600, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
        (u64::from(nanos / 1_000_000), "ms"),
        (u64::from(nanos / 1_000 % 1_000), "us"),
        (u64::from(nanos % 1_000), "ns"),
    ];
    parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect()
}

fn check_positive(what: &str, d: Duration) -> Result<Duration, String> {
    if d.is_zero() {
        Err(format!("{what} must be greater than zero"))
    } else {
        Ok(d)
    }
}

// ---------------------------------------------------------------------------------------------
// serde glue: every rule above runs inside deserialization so toml reports the value's span.

fn de_zone<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    parse_zone(&s).map_err(de::Error::custom)
}

fn de_listen<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    let list = Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| parse_listen_addr(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(de::Error::custom)?;
    check_listen(&list).map_err(de::Error::custom)?;
    Ok(list)
}

fn de_ttl<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    check_ttl(i64::deserialize(d)?).map_err(de::Error::custom)
}

fn de_upstreams<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    let list = Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| parse_upstream(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(de::Error::custom)?;
    check_upstreams(&list).map_err(de::Error::custom)?;
    Ok(list)
}

fn de_namespaces<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    check_namespaces(Vec::<String>::deserialize(d)?).map_err(de::Error::custom)
}

fn de_labels<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    check_labels(&String::deserialize(d)?)
        .map(Some)
        .map_err(de::Error::custom)
}

fn de_http_listen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    parse_http_listen(&String::deserialize(d)?).map_err(de::Error::custom)
}

fn ser_http_listen<S: Serializer>(addr: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
    match addr {
        Some(addr) => s.collect_str(addr),
        None => s.serialize_str("off"),
    }
}

fn de_max_udp_payload<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let n = i64::deserialize(d)?;
    match u16::try_from(n) {
        Ok(v) if (MIN_UDP_PAYLOAD..=MAX_UDP_PAYLOAD).contains(&v) => Ok(v),
        _ => Err(de::Error::custom(format!(
            "invalid max_udp_payload {n}: must be between {MIN_UDP_PAYLOAD} and {MAX_UDP_PAYLOAD}"
        ))),
    }
}

fn de_health_check<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    check_positive("upstream.health_check", de_duration(d)?).map_err(de::Error::custom)
}

fn de_stub_domains<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, Vec<SocketAddr>>, D::Error> {
    let raw = std::collections::BTreeMap::<String, Vec<String>>::deserialize(d)?;
    let mut out = std::collections::BTreeMap::new();
    for (domain, servers) in raw {
        let domain =
            parse_zone(&domain).map_err(|e| de::Error::custom(format!("stub_domains: {e}")))?;
        if servers.is_empty() {
            return Err(de::Error::custom(format!(
                "stub_domains: {domain:?} has no resolver"
            )));
        }
        let servers = servers
            .iter()
            .map(|s| parse_upstream(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| de::Error::custom(format!("stub_domains.{domain}: {e}")))?;
        check_upstreams(&servers).map_err(de::Error::custom)?;
        out.insert(domain, servers);
    }
    Ok(out)
}

fn de_max_concurrent<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = usize::deserialize(d)?;
    if n == 0 {
        return Err(de::Error::custom(
            "invalid max_concurrent 0: must be at least 1",
        ));
    }
    Ok(n)
}

fn de_servfail_ttl<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    if n > 5 {
        return Err(de::Error::custom(format!(
            "invalid servfail_ttl {n}: at most 5 seconds (a cached failure outlives its cause)"
        )));
    }
    Ok(n)
}

fn de_max_tcp_connections<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = usize::deserialize(d)?;
    if n == 0 {
        return Err(de::Error::custom(
            "invalid max_tcp_connections 0: must be at least 1",
        ));
    }
    Ok(n)
}

/// Deserializes a duration string; rejects numbers without a unit.
fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct DurationVisitor;
    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration string such as \"2s\" or \"500ms\"")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(E::custom)
        }
    }
    d.deserialize_str(DurationVisitor)
}

fn de_tcp_idle_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    check_positive("server.tcp_idle_timeout", de_duration(d)?).map_err(de::Error::custom)
}

fn de_upstream_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    check_positive("upstream.timeout", de_duration(d)?).map_err(de::Error::custom)
}

fn de_snapshot_interval<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    check_positive("kubernetes.snapshot_interval", de_duration(d)?).map_err(de::Error::custom)
}

fn de_upstream_deadline<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    check_positive("upstream.deadline", de_duration(d)?).map_err(de::Error::custom)
}

fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Path::new("/etc/clusterdns/config.toml"))
    }

    /// Asserts that `text` is rejected at `line` and that the reason contains `needle`.
    fn assert_error_at(text: &str, line: usize, needle: &str) {
        let err = parse(text).expect_err("config should be rejected");
        let shown = err.to_string();
        match &err {
            ConfigError::Invalid {
                line: l, reason, ..
            } => {
                assert_eq!(*l, line, "wrong line in {shown:?}");
                assert!(reason.contains(needle), "{shown:?} lacks {needle:?}");
            }
            other => panic!("expected a positioned error, got {other:?}"),
        }
        assert!(
            shown.starts_with(&format!("/etc/clusterdns/config.toml:{line}:")),
            "{shown:?}"
        );
    }

    #[test]
    fn defaults() {
        let c = Config::default();
        assert_eq!(c.zone, "cluster.local");
        assert_eq!(c.listen, vec!["0.0.0.0:53".parse::<SocketAddr>().unwrap()]);
        assert_eq!(c.ttl, 5);
        assert_eq!(c.pods, PodMode::Disabled);
        assert_eq!(c.manifests, None);
        assert!(c.upstreams.is_empty());
        assert_eq!(c.resolv_conf, PathBuf::from("/etc/resolv.conf"));
        assert_eq!(c.metrics_listen, Some("0.0.0.0:9153".parse().unwrap()));
        assert_eq!(c.health_listen, Some("0.0.0.0:8080".parse().unwrap()));
        assert_eq!(c.ready_listen, Some("0.0.0.0:8181".parse().unwrap()));
        assert_eq!(c.server.udp_workers, 0);
        assert!(c.server.effective_udp_workers() >= 1);
        assert_eq!(c.server.recv_buffer_bytes, 8_388_608);
        assert_eq!(c.server.send_buffer_bytes, 8_388_608);
        assert_eq!(c.server.max_udp_payload, 1232);
        assert_eq!(c.server.tcp_idle_timeout, Duration::from_secs(10));
        assert_eq!(c.server.max_tcp_connections, 1000);
        assert_eq!(c.server.max_tcp_queries_per_connection, 0);
        assert_eq!(c.upstream.timeout, Duration::from_secs(2));
        assert_eq!(c.upstream.deadline, Duration::from_secs(4));
        assert!(!c.upstream.timeout_explicit);

        // An empty file is the defaults.
        let e = parse("").unwrap();
        assert_eq!(e.zone, c.zone);
        assert_eq!(e.listen, c.listen);
        assert_eq!(e.metrics_listen, c.metrics_listen);
        assert_eq!(e.upstream.deadline, c.upstream.deadline);
        assert!(!e.upstream.timeout_explicit);
    }

    const FULL: &str = r#"
# clusterdns example
zone = "Cluster.Example."
listen = ["0.0.0.0:53", "[::]:5353", "10.0.0.10"]
ttl = 30
pods = "verified"
manifests = "manifests"
upstreams = ["8.8.8.8", "1.1.1.1:5353", "2001:db8::1", "[2001:db8::2]:53"]
resolv_conf = "/run/resolv.conf"
metrics_listen = "127.0.0.1:9153"
health_listen = "off"
ready_listen = ""

[server]
udp_workers = 4
recv_buffer_bytes = 1048576
send_buffer_bytes = 2097152
max_udp_payload = 4096
tcp_idle_timeout = "500ms"
max_tcp_connections = 10
max_tcp_queries_per_connection = 100

[upstream]
timeout = "1s"
deadline = "3s"
"#;

    #[test]
    fn full_example_parses() {
        let c = parse(FULL).unwrap();
        assert_eq!(c.zone, "cluster.example");
        assert_eq!(
            c.listen,
            vec![
                "0.0.0.0:53".parse::<SocketAddr>().unwrap(),
                "[::]:5353".parse().unwrap(),
                "10.0.0.10:53".parse().unwrap(),
            ]
        );
        assert_eq!(c.ttl, 30);
        assert_eq!(c.pods, PodMode::Verified);
        assert_eq!(
            c.manifests,
            Some(PathBuf::from("/etc/clusterdns/manifests"))
        );
        assert_eq!(
            c.upstreams,
            vec![
                "8.8.8.8:53".parse::<SocketAddr>().unwrap(),
                "1.1.1.1:5353".parse().unwrap(),
                "[2001:db8::1]:53".parse().unwrap(),
                "[2001:db8::2]:53".parse().unwrap(),
            ]
        );
        assert_eq!(c.resolv_conf, PathBuf::from("/run/resolv.conf"));
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9153".parse().unwrap()));
        assert_eq!(c.health_listen, None);
        assert_eq!(c.ready_listen, None);
        assert_eq!(c.server.udp_workers, 4);
        assert_eq!(c.server.effective_udp_workers(), 4);
        assert_eq!(c.server.recv_buffer_bytes, 1 << 20);
        assert_eq!(c.server.send_buffer_bytes, 2 << 20);
        assert_eq!(c.server.max_udp_payload, 4096);
        assert_eq!(c.server.tcp_idle_timeout, Duration::from_millis(500));
        assert_eq!(c.server.max_tcp_connections, 10);
        assert_eq!(c.server.max_tcp_queries_per_connection, 100);
        assert_eq!(c.upstream.timeout, Duration::from_secs(1));
        assert_eq!(c.upstream.deadline, Duration::from_secs(3));
        assert!(c.upstream.timeout_explicit);

        let d = c.describe();
        for needle in [
            "cluster.example",
            "[::]:5353",
            "verified",
            "/etc/clusterdns/manifests",
            "1.1.1.1:5353",
            "health listen:     off",
            "500ms",
            "1s per try, 3s overall deadline",
        ] {
            assert!(d.contains(needle), "{needle:?} missing from:\n{d}");
        }
        assert!(
            Config::default()
                .describe()
                .contains("from /etc/resolv.conf")
        );
    }

    #[test]
    fn serializes_back_to_an_equivalent_file() {
        let c = parse(FULL).unwrap();
        let text = toml::to_string(&c).unwrap();
        let again = parse(&text).unwrap();
        assert_eq!(again.zone, c.zone);
        assert_eq!(again.listen, c.listen);
        assert_eq!(again.upstreams, c.upstreams);
        assert_eq!(again.health_listen, None);
        assert_eq!(again.metrics_listen, c.metrics_listen);
        assert_eq!(again.server.tcp_idle_timeout, c.server.tcp_idle_timeout);
        assert_eq!(again.upstream.deadline, c.upstream.deadline);
        assert!(toml::to_string(&Config::default()).is_ok());
    }

    #[test]
    fn absolute_and_missing_manifests_are_kept() {
        let c = parse("manifests = \"/srv/m\"").unwrap();
        assert_eq!(c.manifests, Some(PathBuf::from("/srv/m")));
        let c = Config::from_toml_str("manifests = \"m\"", Path::new("config.toml")).unwrap();
        assert_eq!(c.manifests, Some(PathBuf::from("m")));
    }

    #[test]
    fn unknown_keys_are_reported_with_their_line() {
        assert_error_at("zone = \"a.b\"\nlisen = [\"0.0.0.0:53\"]\n", 2, "lisen");
        assert_error_at("ttl = 5\n\n[server]\nudp_worker = 2\n", 4, "udp_worker");
        assert_error_at("[upstream]\ntimeout = \"1s\"\nretries = 3\n", 3, "retries");
        assert_error_at("[dns]\nx = 1\n", 1, "dns");
    }

    #[test]
    fn bad_addresses_are_reported_with_their_line() {
        assert_error_at(
            "zone = \"a.b\"\nlisten = [\"0.0.0.0:53\", \"localhost:53\"]\n",
            2,
            "localhost",
        );
        assert_error_at("\n\nupstreams = [\"8.8.8.8:99999\"]\n", 3, "8.8.8.8:99999");
        assert_error_at("upstreams = [\"0.0.0.0\"]\n", 1, "unspecified");
        assert_error_at("upstreams = [\"1.1.1.1\", \"1.1.1.1:53\"]\n", 1, "twice");
        assert_error_at("ttl = 1\nmetrics_listen = \"0.0.0.0\"\n", 2, "port");
        assert_error_at("ttl = 1\nready_listen = \"nope\"\n", 2, "off");
        assert_error_at("listen = []\n", 1, "at least one");
    }

    #[test]
    fn out_of_range_numbers_are_reported_with_their_line() {
        let text = "zone = \"cluster.local\"\nttl = 99999\n";
        assert_error_at(text, 2, "99999");
        let err = parse(text).unwrap_err().to_string();
        assert_eq!(
            err,
            "/etc/clusterdns/config.toml:2:7: invalid ttl 99999: must be between 0 and 3600"
        );
        assert_error_at("ttl = -1\n", 1, "ttl");
        assert_error_at("[server]\n\nmax_udp_payload = 100\n", 3, "max_udp_payload");
        assert_error_at("[server]\nmax_udp_payload = 9000\n", 2, "max_udp_payload");
        assert_error_at("[server]\nmax_tcp_connections = 0\n", 2, "at least 1");
        assert_error_at("ttl = \"5\"\n", 1, "");
        assert_error_at(
            "[acl.rate_limit]\nresponses_per_second = 10\nipv4_prefix = 33\n",
            3,
            "invalid ipv4_prefix 33: must be between 0 and 32",
        );
        assert_error_at("[acl.rate_limit]\nipv6_prefix = 129\n", 2, "ipv6_prefix");
        assert_error_at("[acl.rate_limit]\nslip = 11\n", 2, "slip");
        assert_error_at("[acl.rate_limit]\nresponses_per_second = -1\n", 2, "");
        assert_error_at("[acl.rate_limit]\nburst = 3\n", 2, "burst");
    }

    #[test]
    fn bad_zones_are_reported_with_their_line() {
        assert_error_at("ttl = 5\nzone = \"clu_ster.local\"\n", 2, "zone");
        assert_error_at("zone = \".\"\n", 1, "root");
        assert_error_at("zone = \"a..b\"\n", 1, "empty label");
        assert_error_at("zone = \"-a.b\"\n", 1, "'-'");
        assert_error_at(&format!("zone = \"{}.local\"\n", "a".repeat(64)), 1, "63");
    }

    #[test]
    fn bad_pod_modes_and_durations_are_reported_with_their_line() {
        assert_error_at("ttl = 5\npods = \"yes\"\n", 2, "yes");
        assert_error_at(
            "[server]\ntcp_idle_timeout = \"10 parsecs\"\n",
            2,
            "duration",
        );
        assert_error_at("[server]\ntcp_idle_timeout = 10\n", 2, "duration");
        assert_error_at("[upstream]\ntimeout = \"0s\"\n", 2, "greater than zero");
    }

    #[test]
    fn syntax_errors_are_reported_with_their_line() {
        assert_error_at("ttl = 5\nzone = \"unterminated\n", 2, "");
        let err = parse("ttl = 5\nzone = \n").unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { line: 2, .. }), "{err}");
    }

    #[test]
    fn deadline_shorter_than_timeout_is_reported_at_the_deadline() {
        assert_error_at(
            "[upstream]\ntimeout = \"3s\"\ndeadline = \"1s\"\n",
            3,
            "upstream.deadline (1s) must not be shorter than upstream.timeout (3s)",
        );
        // Only the timeout given: the error points at it.
        assert_error_at("ttl = 5\n[upstream]\ntimeout = \"10s\"\n", 3, "deadline");
        // Equal is fine.
        let c = parse("[upstream]\ntimeout = \"2s\"\ndeadline = \"2s\"\n").unwrap();
        assert_eq!(c.upstream.deadline, c.upstream.timeout);
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(line_col("ab\ncdé f", 9), (2, 6));
        assert_eq!(line_col("x", 0), (1, 1));
        assert_eq!(line_col("x", 100), (1, 2));
    }

    #[test]
    fn durations_round_trip() {
        for (text, d) in [
            ("2s", Duration::from_secs(2)),
            ("500ms", Duration::from_millis(500)),
            ("1m30s", Duration::from_secs(90)),
            ("1m 30s", Duration::from_secs(90)),
            ("1.5s", Duration::from_millis(1500)),
            ("2h", Duration::from_secs(7200)),
            ("250us", Duration::from_micros(250)),
        ] {
            assert_eq!(parse_duration(text), Ok(d), "{text}");
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s500ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        for bad in ["", "5", "s", "5 s x", "1.2.3s", "-1s", "5d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn kubernetes_table_parses_and_is_described() {
        let c = parse(
            "[kubernetes]\nenabled = true\nkubeconfig = \"kube/config\"\n\
             namespaces = [\"default\", \"shop\"]\nlabels = \"app=web, tier notin (db,cache)\"\n",
        )
        .unwrap();
        assert!(c.kubernetes.enabled);
        assert_eq!(
            c.kubernetes.kubeconfig,
            Some(PathBuf::from("/etc/clusterdns/kube/config"))
        );
        assert_eq!(c.kubernetes.namespaces, ["default", "shop"]);
        assert_eq!(
            c.kubernetes.labels.as_deref(),
            Some("app=web, tier notin (db,cache)")
        );
        let d = c.describe();
        assert!(d.contains("kubernetes api:    on, kubeconfig /etc/clusterdns/kube/config; namespaces default, shop; labels app=web"), "{d}");
        assert!(
            d.contains("watched kinds:     Service, EndpointSlice, Namespace\n"),
            "{d}"
        );
        let c = parse("pods = \"verified\"\n[kubernetes]\nenabled = true\n").unwrap();
        let d = c.describe();
        assert!(
            d.contains("in-cluster service account; namespaces all; labels any"),
            "{d}"
        );
        assert!(d.contains("Namespace, Pod"), "{d}");
        assert!(
            Config::default()
                .describe()
                .contains("kubernetes api:    off")
        );
        assert!(!Config::default().kubernetes.enabled);

        let again = parse(&toml::to_string(&c).unwrap()).unwrap();
        assert!(again.kubernetes.enabled);
    }

    #[test]
    fn bad_kubernetes_settings_are_reported_with_their_line() {
        assert_error_at(
            "[kubernetes]\nenabled = true\nnamespaces = [\"Shop\"]\n",
            3,
            "invalid namespace \"Shop\"",
        );
        assert_error_at(
            "[kubernetes]\nnamespaces = [\"a\", \"a\"]\n",
            2,
            "given twice",
        );
        assert_error_at("[kubernetes]\nlabels = \"\"\n", 2, "empty");
        assert_error_at(
            "[kubernetes]\nlabels = \"a=b,,c\"\n",
            2,
            "empty requirement",
        );
        assert_error_at("[kubernetes]\nlabels = \"a in (b\"\n", 2, "parentheses");
        assert_error_at("[kubernetes]\nlabels = \"a=b;c\"\n", 2, "';'");
        assert_error_at("[kubernetes]\nwatch = true\n", 2, "watch");
        assert_error_at(
            "manifests = \"m\"\n[kubernetes]\nenabled = true\n",
            3,
            "cannot be used together",
        );
    }

    #[test]
    fn snapshot_settings() {
        let c = parse(
            "[kubernetes]\nenabled = true\nsnapshot = \"state/snap\"\nsnapshot_interval = \"30s\"\n",
        )
        .unwrap();
        assert_eq!(
            c.kubernetes.snapshot,
            Some(PathBuf::from("/etc/clusterdns/state/snap"))
        );
        assert_eq!(c.kubernetes.snapshot_interval, Duration::from_secs(30));
        assert!(
            c.describe().contains(
                "snapshot:          /etc/clusterdns/state/snap, written at most every 30s"
            ),
            "{}",
            c.describe()
        );
        assert_eq!(
            Config::default().kubernetes.snapshot_interval,
            Duration::from_secs(10)
        );
        assert_error_at(
            "[kubernetes]\nsnapshot = \"s\"\n",
            2,
            "needs the Kubernetes source",
        );
        assert_error_at(
            "[kubernetes]\nenabled = true\nsnapshot_interval = \"0s\"\n",
            3,
            "greater than zero",
        );

        let c = cli(&[
            "--kubernetes",
            "--snapshot",
            "/s",
            "--snapshot-interval",
            "1s",
        ])
        .resolve()
        .unwrap();
        assert_eq!(c.kubernetes.snapshot, Some(PathBuf::from("/s")));
        assert_eq!(c.kubernetes.snapshot_interval, Duration::from_secs(1));
        for (args, flag) in [
            (&["--snapshot", "/s"][..], "--snapshot"),
            (
                &["--kubernetes", "--snapshot-interval", "soon"][..],
                "--snapshot-interval",
            ),
            (
                &["--kubernetes", "--snapshot-interval", "0s"][..],
                "--snapshot-interval",
            ),
        ] {
            let err = cli(args).resolve().unwrap_err();
            assert!(err.to_string().starts_with(&format!("{flag}: ")), "{err}");
        }
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn cli(args: &[&str]) -> ServeArgs {
        Cli::try_parse_from(std::iter::once("clusterdns").chain(args.iter().copied()))
            .unwrap()
            .serve
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, FULL).unwrap();
        let path_s = path.to_str().unwrap();

        // No flags: the file as is.
        let c = cli(&["--config", path_s]).resolve().unwrap();
        assert_eq!(c.ttl, 30);
        assert_eq!(c.manifests, Some(dir.path().join("manifests")));

        let c = cli(&[
            "--config",
            path_s,
            "--listen",
            "127.0.0.1:5353",
            "--listen",
            "::1",
            "--manifests",
            "other",
            "--zone",
            "Example.ORG.",
            "--upstream",
            "9.9.9.9",
            "--ttl",
            "60",
            "--pods",
            "insecure",
            "--metrics-listen",
            "off",
            "--health-listen",
            "127.0.0.1:18080",
            "--ready-listen",
            "[::1]:18181",
            "--resolv-conf",
            "/tmp/resolv.conf",
        ])
        .resolve()
        .unwrap();
        assert_eq!(
            c.listen,
            vec![
                "127.0.0.1:5353".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(c.manifests, Some(PathBuf::from("other")));
        assert_eq!(c.zone, "example.org");
        assert_eq!(c.upstreams, vec!["9.9.9.9:53".parse().unwrap()]);
        assert_eq!(c.ttl, 60);
        assert_eq!(c.pods, PodMode::Insecure);
        assert_eq!(c.metrics_listen, None);
        assert_eq!(c.health_listen, Some("127.0.0.1:18080".parse().unwrap()));
        assert_eq!(c.ready_listen, Some("[::1]:18181".parse().unwrap()));
        assert_eq!(c.resolv_conf, PathBuf::from("/tmp/resolv.conf"));
        // Untouched by flags: still the file's.
        assert_eq!(c.server.udp_workers, 4);
        assert_eq!(c.upstream.timeout, Duration::from_secs(1));
    }

    #[test]
    fn kubernetes_flags() {
        let c = cli(&[
            "--kubeconfig",
            "/k/config",
            "--namespaces",
            "a,b",
            "--labels",
            "x=y",
        ])
        .resolve()
        .unwrap();
        assert!(c.kubernetes.enabled, "--kubeconfig turns the source on");
        assert_eq!(c.kubernetes.kubeconfig, Some(PathBuf::from("/k/config")));
        assert_eq!(c.kubernetes.namespaces, ["a", "b"]);
        assert_eq!(c.kubernetes.labels.as_deref(), Some("x=y"));
        let c = cli(&["--kubernetes"]).resolve().unwrap();
        assert!(c.kubernetes.enabled);
        assert_eq!(c.kubernetes.kubeconfig, None);
        assert!(!cli(&[]).resolve().unwrap().kubernetes.enabled);

        for (args, flag) in [
            (&["--namespaces", "a,B"][..], "--namespaces"),
            (&["--labels", "a=(b"][..], "--labels"),
            (&["--kubernetes", "--manifests", "m"][..], "--kubernetes"),
        ] {
            let err = cli(args).resolve().unwrap_err();
            assert!(err.to_string().starts_with(&format!("{flag}: ")), "{err}");
        }
        // The file's manifests plus a kubeconfig flag: a conflict named after the flag.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "manifests = \"m\"\n").unwrap();
        let err = cli(&["--config", path.to_str().unwrap(), "--kubeconfig", "k"])
            .resolve()
            .unwrap_err();
        assert!(err.to_string().starts_with("--kubernetes: "), "{err}");
        // The file's kubernetes source plus a manifests flag.
        std::fs::write(&path, "[kubernetes]\nenabled = true\n").unwrap();
        let err = cli(&["--config", path.to_str().unwrap(), "--manifests", "m"])
            .resolve()
            .unwrap_err();
        assert!(err.to_string().starts_with("--manifests: "), "{err}");
    }

    #[test]
    fn flags_without_a_file_start_from_defaults() {
        let c = cli(&["--ttl", "0"]).resolve().unwrap();
        assert_eq!(c.ttl, 0);
        assert_eq!(c.zone, "cluster.local");
        assert_eq!(c.listen, Config::default().listen);
    }

    #[test]
    fn bad_flags_name_the_flag() {
        for (args, flag) in [
            (&["--ttl", "99999"][..], "--ttl"),
            (&["--zone", "a b"][..], "--zone"),
            (&["--listen", "nowhere"][..], "--listen"),
            (
                &["--upstream", "1.1.1.1", "--upstream", "x"][..],
                "--upstream",
            ),
            (&["--metrics-listen", "1.2.3.4"][..], "--metrics-listen"),
            (&["--health-listen", "on"][..], "--health-listen"),
            (&["--ready-listen", "::1"][..], "--ready-listen"),
        ] {
            let err = cli(args).resolve().unwrap_err();
            assert!(
                matches!(&err, ConfigError::Flag { flag: f, .. } if *f == flag),
                "{args:?}: {err:?}"
            );
            assert!(err.to_string().starts_with(&format!("{flag}: ")), "{err}");
        }
        assert!(Cli::try_parse_from(["clusterdns", "--pods", "maybe"]).is_err());
    }

    #[test]
    fn file_errors_come_through_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "ttl = 4000\n").unwrap();
        let err = cli(&["--config", path.to_str().unwrap(), "--ttl", "1"])
            .resolve()
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("{}:1:7: ", path.display())),
            "{err}"
        );
        let missing = dir.path().join("missing.toml");
        let err = Config::load(&missing).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
        assert!(err.to_string().starts_with(&missing.display().to_string()));
    }
}
