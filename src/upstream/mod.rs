//! The upstream path: every question the cluster zone does not own.
//!
//! ```text
//!  handler ─▶ Resolver ─▶ cache hit? ─▶ answer (TTLs counted down; prefetch when hot)
//!                │ miss
//!                └─▶ in flight already? ─▶ wait for it (coalescing)
//!                       │ no
//!                       └─▶ max_concurrent slot ─▶ Forwarder ─▶ upstreams (UDP, TCP on TC)
//!                                                      │ all failed: stale entry, else error
//! ```
//!
//! Owns: the upstream list, per-try timeouts and the overall deadline, message-id
//! randomisation and answer matching, the UDP-then-TCP fallback, the cache, coalescing and
//! the in-flight limit. Must not touch the zone or build client responses (the handler does
//! both): it returns the upstream's rcode and sections.

pub mod cache;
mod loop_check;
pub mod resolv_conf;

use crate::config::{CacheConfig, Policy, UpstreamConfig};
use crate::ops::metrics::Metrics;
use crate::ops::throttle::Throttle;
use cache::{Cache, CacheKey, CachedAnswer, Lookup};
use dashmap::DashMap;
use hickory_proto::op::Message;
use rand::seq::SliceRandom;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, timeout_at};
use tracing::{debug, error, info, warn};

/// Largest UDP answer we accept from an upstream (the EDNS maximum).
const MAX_UPSTREAM_UDP: usize = 65_535;

/// Why no upstream answer could be produced. The handler turns every variant into SERVFAIL.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No upstream resolver is configured (empty list, resolv.conf without nameservers).
    #[error("no upstream resolver configured")]
    NoUpstreams,
    /// The overall deadline passed before any upstream answered.
    #[error("no upstream answered within {0:?}")]
    Deadline(Duration),
    /// Every upstream failed fast (refused, unreachable, unparseable answers).
    #[error("every upstream failed; last error: {0}")]
    AllFailed(String),
    /// `attempts` rounds over the upstreams went unanswered.
    #[error("no upstream answered in {0} round(s)")]
    Attempts(u32),
    /// Every upstream of this name leads back to this server (a forwarding loop).
    #[error("every upstream is a forwarding loop back to this server")]
    Looped,
    /// `max_concurrent` upstream queries were already in flight.
    #[error("too many upstream queries in flight")]
    Overloaded,
}

/// What the upstream path answers: the upstream's rcode and sections, and where they came
/// from.
#[derive(Clone, Debug)]
pub struct UpstreamAnswer {
    /// Rcode and sections.
    pub answer: CachedAnswer,
    /// Fresh from an upstream, from the cache, or stale.
    pub served: Served,
    /// Set for a cache hit that may be served again from its bytes for a while.
    pub reuse: Option<cache::Reuse>,
}

/// Where an upstream-path answer came from (the query log's `source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// Asked an upstream for this query (or shared an identical one in flight).
    Upstream,
    /// A live cache entry.
    Cache,
    /// An expired cache entry, because every upstream failed (RFC 8767).
    Stale,
}

impl Served {
    /// The query log's name for it.
    pub fn label(self) -> &'static str {
        match self {
            Served::Upstream => "upstream",
            Served::Cache => "cache",
            Served::Stale => "stale",
        }
    }
}

fn served(answer: CachedAnswer, served: Served) -> UpstreamAnswer {
    UpstreamAnswer {
        answer,
        served,
        reuse: None,
    }
}

/// Where the upstream path sends a name ([`Resolver::route_of`]).
#[derive(Clone, Debug)]
pub struct Route {
    /// The stub domain whose resolvers answer it; `None`: the default upstreams.
    pub stub_domain: Option<hickory_proto::rr::Name>,
    /// Those resolvers, in configuration order, with their health.
    pub upstreams: Vec<UpstreamHealth>,
}

/// One upstream's health as the forwarder sees it.
#[derive(Clone, Debug)]
pub struct UpstreamHealth {
    /// Its address.
    pub addr: SocketAddr,
    /// False while marked down (after `max_fails` failures, until a probe succeeds).
    pub healthy: bool,
    /// It sent our loop probe back: never used.
    pub looped: bool,
    /// Failed tries in a row.
    pub consecutive_failures: u32,
}

/// The outcome shared by every client waiting on one in-flight question.
type Shared = Option<Result<Arc<CachedAnswer>, Arc<ForwardError>>>;

/// The upstream path as the handler sees it: cache, coalescing, in-flight limit, forwarder.
pub struct Resolver {
    forwarder: Forwarder,
    /// Stub domains, most specific first.
    stubs: Vec<(hickory_proto::rr::Name, Forwarder)>,
    /// Every upstream (default and stub), numbered for the loop probes.
    all_upstreams: Vec<Arc<UpstreamState>>,
    loop_check: loop_check::LoopCheck,
    probe_timeout: Duration,
    cache: Arc<Cache>,
    in_flight: DashMap<CacheKey, watch::Receiver<Shared>>,
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl Resolver {
    /// The upstream path: `upstreams` for every name, except names under one of
    /// `upstream.stub_domains`, which go to that domain's resolvers.
    pub fn new(
        upstreams: Vec<SocketAddr>,
        upstream: &UpstreamConfig,
        cache: &CacheConfig,
        metrics: Arc<Metrics>,
    ) -> Arc<Resolver> {
        let cache = Arc::new(Cache::new(cache, metrics.clone()));
        Resolver::with_cache(upstreams, upstream, cache, metrics)
    }

    /// The upstream path for a reloaded config: the same cache when its settings did not
    /// change (a reload must not make every client wait on the upstreams again).
    pub fn reconfigure(
        &self,
        upstreams: Vec<SocketAddr>,
        upstream: &UpstreamConfig,
        cache: &CacheConfig,
    ) -> Arc<Resolver> {
        let cache = if self.cache.config() == cache {
            self.cache.clone()
        } else {
            Arc::new(Cache::new(cache, self.metrics.clone()))
        };
        Resolver::with_cache(upstreams, upstream, cache, self.metrics.clone())
    }

    fn with_cache(
        upstreams: Vec<SocketAddr>,
        upstream: &UpstreamConfig,
        cache: Arc<Cache>,
        metrics: Arc<Metrics>,
    ) -> Arc<Resolver> {
        let mut stubs: Vec<(hickory_proto::rr::Name, Forwarder)> = upstream
            .stub_domains
            .iter()
            .filter_map(|(domain, servers)| {
                let name = hickory_proto::rr::Name::from_ascii(format!("{domain}.")).ok()?;
                Some((
                    name,
                    Forwarder::new(servers.clone(), upstream, metrics.clone()),
                ))
            })
            .collect();
        stubs.sort_by_key(|(name, _)| std::cmp::Reverse(name.num_labels()));
        let forwarder = Forwarder::new(upstreams, upstream, metrics.clone());
        let all_upstreams = std::iter::once(&forwarder)
            .chain(stubs.iter().map(|(_, f)| f))
            .flat_map(|f| f.upstreams.iter().cloned())
            .collect();
        Arc::new(Resolver {
            forwarder,
            stubs,
            all_upstreams,
            loop_check: loop_check::LoopCheck::new(),
            probe_timeout: upstream.timeout,
            cache,
            in_flight: DashMap::new(),
            slots: Arc::new(Semaphore::new(upstream.max_concurrent)),
            metrics,
        })
    }

    /// The upstream resolvers, in the order they are tried.
    pub fn upstreams(&self) -> &[SocketAddr] {
        self.forwarder.upstreams()
    }

    /// The forwarder for `query`'s name: the longest stub domain containing it, else the
    /// default upstreams.
    fn route(&self, query: &Message) -> &Forwarder {
        query
            .queries
            .first()
            .and_then(|q| {
                self.stubs
                    .iter()
                    .find(|(domain, _)| domain.zone_of(q.name()))
            })
            .map_or(&self.forwarder, |(_, forwarder)| forwarder)
    }

    /// Where a name outside the zone goes, and the health of those upstreams now; read-only
    /// (for `clusterdns explain`).
    pub fn route_of(&self, name: &hickory_proto::rr::Name) -> Route {
        let stub = self.stubs.iter().find(|(domain, _)| domain.zone_of(name));
        let forwarder = stub.map_or(&self.forwarder, |(_, f)| f);
        Route {
            stub_domain: stub.map(|(domain, _)| domain.clone()),
            upstreams: forwarder
                .upstreams
                .iter()
                .map(|u| UpstreamHealth {
                    addr: u.addr,
                    healthy: !u.down.load(Ordering::Relaxed),
                    looped: u.looped.load(Ordering::Relaxed),
                    consecutive_failures: u.fails.load(Ordering::Relaxed),
                })
                .collect(),
        }
    }

    /// What the cache holds for a plain query of `name`/`qtype`, read without touching it.
    pub fn peek_cache(
        &self,
        name: &hickory_proto::rr::Name,
        qtype: hickory_proto::rr::RecordType,
    ) -> Option<cache::Peek> {
        self.cache
            .peek(&CacheKey::plain(name, qtype), Instant::now().into_std())
    }

    /// Sends every upstream a question only this process can recognise (see
    /// [`loop_check`]); returns when each answered or timed out. An upstream whose probe
    /// comes back to us is taken out of use by [`Resolver::resolve`].
    pub async fn check_loops(self: &Arc<Self>) {
        let mut probes = tokio::task::JoinSet::new();
        for (index, upstream) in self.all_upstreams.iter().enumerate() {
            let mut probe = Message::query();
            probe.metadata.recursion_desired = true;
            probe.add_query(hickory_proto::op::Query::query(
                self.loop_check.probe_name(index),
                hickory_proto::rr::RecordType::HINFO,
            ));
            let upstream = upstream.clone();
            let metrics = self.metrics.clone();
            let deadline = Instant::now() + self.probe_timeout;
            probes.spawn(async move {
                let _ = try_upstream(&upstream, &probe, deadline, &metrics).await;
            });
        }
        while probes.join_next().await.is_some() {}
    }

    /// Upstream numbered `index` sent our probe back: stop using it, loudly.
    fn loop_detected(&self, index: usize) {
        let Some(upstream) = self.all_upstreams.get(index) else {
            return;
        };
        if upstream.looped.swap(true, Ordering::Relaxed) {
            return;
        }
        let to = upstream.addr.to_string();
        error!(
            upstream = %upstream.addr,
            "forwarding loop: upstream {} sent our own loop probe back to this server \
             (typically a resolv.conf naming a local stub resolver such as 127.0.0.53, or this \
             server itself; run clusterdns with dnsPolicy: Default or set `upstreams`). It is \
             no longer used; the cluster zone keeps serving",
            upstream.addr
        );
        self.metrics.upstream_loop.with_label_values(&[&to]).set(1);
        self.metrics
            .upstream_healthy
            .with_label_values(&[&to])
            .set(0);
    }

    /// Every upstream address (default list and stub domains).
    pub fn all_upstreams(&self) -> Vec<SocketAddr> {
        self.all_upstreams.iter().map(|u| u.addr).collect()
    }

    /// Upstreams taken out of use because they loop back to us.
    pub fn looped_upstreams(&self) -> Vec<SocketAddr> {
        self.all_upstreams
            .iter()
            .filter(|u| u.looped.load(Ordering::Relaxed))
            .map(|u| u.addr)
            .collect()
    }

    /// Refreshes the cache gauges (for the metrics scrape).
    pub fn update_metrics(&self) {
        self.cache.update_entry_gauges();
    }

    /// Answers `query` (one question) from the cache or the upstreams. Identical questions
    /// in flight at once go upstream once; when every upstream fails, an expired entry
    /// within the serve-stale window is answered instead of an error.
    pub async fn resolve(
        self: &Arc<Self>,
        query: &Message,
    ) -> Result<UpstreamAnswer, Arc<ForwardError>> {
        if let Some(index) = query
            .queries
            .first()
            .and_then(|q| self.loop_check.probed_index(q.name()))
        {
            // Our own probe came back: answer it here, forwarding it would go round forever.
            self.loop_detected(index);
            let answer = CachedAnswer {
                rcode: hickory_proto::op::ResponseCode::NXDomain,
                answers: Vec::new(),
                authorities: Vec::new(),
                additionals: Vec::new(),
            };
            return Ok(served(answer, Served::Upstream));
        }
        let Some(key) = CacheKey::of(query) else {
            return self
                .fetch(None, query)
                .await
                .map(|a| served((*a).clone(), Served::Upstream));
        };
        let stale = match self.cache.get(&key, Instant::now().into_std()) {
            Lookup::Fresh {
                answer,
                prefetch,
                reuse,
            } => {
                if prefetch {
                    self.cache.count_prefetch();
                    let this = self.clone();
                    let query = query.clone();
                    tokio::spawn(async move {
                        let _ = this.shared_fetch(key, &query).await;
                    });
                }
                return Ok(UpstreamAnswer {
                    reuse,
                    ..served(answer, Served::Cache)
                });
            }
            Lookup::Stale(answer) => Some(answer),
            Lookup::Miss => None,
        };
        match self.shared_fetch(key, query).await {
            Ok(answer) => Ok(served((*answer).clone(), Served::Upstream)),
            Err(error) => match stale {
                Some(answer) => {
                    self.cache.count_served_stale();
                    debug!(%error, "every upstream failed; serving a stale answer");
                    Ok(served(answer, Served::Stale))
                }
                None => Err(error),
            },
        }
    }

    /// The upstream answer for `key`, asked once however many clients wait for it.
    async fn shared_fetch(
        self: &Arc<Self>,
        key: CacheKey,
        query: &Message,
    ) -> Result<Arc<CachedAnswer>, Arc<ForwardError>> {
        let mut receiver = match self.in_flight.entry(key.clone()) {
            dashmap::Entry::Occupied(entry) => {
                self.metrics.coalesced_queries.inc();
                entry.get().clone()
            }
            dashmap::Entry::Vacant(entry) => {
                let (sender, receiver) = watch::channel(None);
                entry.insert(receiver.clone());
                // The fetch runs as its own task so that it completes (and fills the cache)
                // even if the client that started it goes away.
                let this = self.clone();
                let query = query.clone();
                tokio::spawn(async move {
                    let result = this.fetch(Some(&key), &query).await;
                    this.in_flight.remove(&key);
                    let _ = sender.send(Some(result));
                });
                receiver
            }
        };
        let outcome = receiver
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Arc::new(ForwardError::AllFailed("upstream task ended".into())))?;
        match &*outcome {
            Some(result) => result.clone(),
            None => Err(Arc::new(ForwardError::AllFailed("no outcome".into()))),
        }
    }

    /// One upstream exchange within the in-flight limit; a usable answer is cached.
    async fn fetch(
        &self,
        key: Option<&CacheKey>,
        query: &Message,
    ) -> Result<Arc<CachedAnswer>, Arc<ForwardError>> {
        let Ok(_slot) = self.slots.clone().try_acquire_owned() else {
            self.metrics.max_concurrent_rejects.inc();
            return Err(Arc::new(ForwardError::Overloaded));
        };
        let message = self.route(query).forward(query).await.map_err(Arc::new)?;
        let mut answer = CachedAnswer::from_message(&message);
        if let Some(key) = key
            && !message.metadata.truncation
            && let Some(stored) = self
                .cache
                .insert(key.clone(), &answer, Instant::now().into_std())
        {
            answer = stored;
        }
        Ok(Arc::new(answer))
    }
}

/// What one try against one upstream produced.
#[derive(Debug)]
enum TryError {
    /// The per-try timeout passed.
    Timeout,
    /// The upstream failed at once (ICMP refused, reset, malformed answer...).
    Failed(String),
}

/// One upstream resolver and what we know of its health.
#[derive(Debug)]
struct UpstreamState {
    addr: SocketAddr,
    /// Consecutive failed tries.
    fails: AtomicU32,
    /// Marked down after `max_fails` failures; a probe task brings it back.
    down: AtomicBool,
    /// Leads back to this server: never used again.
    looped: AtomicBool,
    /// Failed tries, reported at most every 10 s.
    failures: Throttle,
    /// Open TCP connections to reuse (RFC 7766 6.2.1: connection setup is most of a TCP
    /// query's cost), with when each was last used.
    tcp_idle: std::sync::Mutex<Vec<(TcpStream, std::time::Instant)>>,
    /// Ask over TCP only (`upstream.force_tcp`).
    force_tcp: bool,
    /// `coredns_proxy_request_duration_seconds{proxy_name,to,rcode}` handles for this
    /// upstream, resolved at its first answer of each rcode (not per answer).
    durations: [std::sync::OnceLock<prometheus::Histogram>; PROXY_RCODES.len()],
}

/// The rcodes whose duration handles are kept per upstream; any other rcode (rare) is
/// looked up per answer.
const PROXY_RCODES: [hickory_proto::op::ResponseCode; 5] = [
    hickory_proto::op::ResponseCode::NoError,
    hickory_proto::op::ResponseCode::NXDomain,
    hickory_proto::op::ResponseCode::ServFail,
    hickory_proto::op::ResponseCode::Refused,
    hickory_proto::op::ResponseCode::FormErr,
];

/// The `proxy_name` label of CoreDNS's proxy metrics: what CoreDNS's `forward` plugin says.
const PROXY_NAME: &str = "forward";

/// Idle TCP connections kept per upstream.
const MAX_IDLE_TCP: usize = 8;
/// An idle TCP connection older than this is not reused: upstreams close idle connections
/// after a few seconds (RFC 7766 suggests ~10 s), and a write into a closed one wastes a try.
const TCP_IDLE_REUSE: Duration = Duration::from_secs(5);

impl UpstreamState {
    /// Counts one answer's round trip in the proxy duration histogram.
    fn observe_duration(
        &self,
        metrics: &Metrics,
        rcode: hickory_proto::op::ResponseCode,
        took: Duration,
    ) {
        let resolve = || {
            metrics.proxy_duration.with_label_values(&[
                PROXY_NAME,
                &self.addr.to_string(),
                crate::ops::metrics::rcode_label(rcode),
            ])
        };
        match PROXY_RCODES.iter().position(|r| *r == rcode) {
            Some(i) => self.durations[i]
                .get_or_init(resolve)
                .observe(took.as_secs_f64()),
            None => resolve().observe(took.as_secs_f64()),
        }
    }

    fn take_idle_tcp(&self) -> Option<TcpStream> {
        let mut idle = self.tcp_idle.lock().ok()?;
        while let Some((stream, last_used)) = idle.pop() {
            if last_used.elapsed() < TCP_IDLE_REUSE {
                return Some(stream);
            }
        }
        None
    }

    fn keep_idle_tcp(&self, stream: TcpStream) {
        if let Ok(mut idle) = self.tcp_idle.lock()
            && idle.len() < MAX_IDLE_TCP
        {
            idle.push((stream, std::time::Instant::now()));
        }
    }
}

/// Forwards questions to one list of upstream resolvers (the default list, or the resolvers
/// of one stub domain), in the configured order, skipping upstreams marked down.
pub struct Forwarder {
    upstreams: Vec<Arc<UpstreamState>>,
    addrs: Vec<SocketAddr>,
    policy: Policy,
    attempts: u32,
    next: AtomicUsize,
    max_fails: u32,
    health_check: Duration,
    try_timeout: Duration,
    deadline: Duration,
    metrics: Arc<Metrics>,
}

impl Forwarder {
    /// A forwarder over `upstreams` with the policy, health and timeouts of `config`.
    pub fn new(upstreams: Vec<SocketAddr>, config: &UpstreamConfig, metrics: Arc<Metrics>) -> Self {
        for addr in &upstreams {
            metrics
                .upstream_healthy
                .with_label_values(&[&addr.to_string()])
                .set(1);
        }
        Forwarder {
            upstreams: upstreams
                .iter()
                .map(|&addr| {
                    Arc::new(UpstreamState {
                        addr,
                        fails: AtomicU32::new(0),
                        down: AtomicBool::new(false),
                        looped: AtomicBool::new(false),
                        failures: Throttle::new(Duration::from_secs(10)),
                        tcp_idle: std::sync::Mutex::new(Vec::new()),
                        force_tcp: config.force_tcp,
                        durations: Default::default(),
                    })
                })
                .collect(),
            addrs: upstreams,
            policy: config.policy,
            attempts: config.attempts,
            next: AtomicUsize::new(0),
            max_fails: config.max_fails,
            health_check: config.health_check,
            try_timeout: config.timeout,
            deadline: config.deadline.max(config.timeout),
            metrics,
        }
    }

    /// The upstream resolvers, in configuration order.
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The order of this query's tries: the policy's order, healthy upstreams first. When
    /// every upstream is down they are all tried anyway: failing everything would be worse.
    fn order(&self) -> Vec<Arc<UpstreamState>> {
        let mut order: Vec<Arc<UpstreamState>> = self
            .upstreams
            .iter()
            .filter(|u| !u.looped.load(Ordering::Relaxed))
            .cloned()
            .collect();
        match self.policy {
            Policy::Random => order.shuffle(&mut rand::rng()),
            Policy::RoundRobin => {
                let first = self.next.fetch_add(1, Ordering::Relaxed) % order.len().max(1);
                order.rotate_left(first);
            }
            Policy::Sequential => {}
        }
        order.sort_by_key(|u| u.down.load(Ordering::Relaxed));
        if order
            .first()
            .is_some_and(|u| u.down.load(Ordering::Relaxed))
        {
            self.metrics.healthcheck_broken.inc();
        }
        order
    }

    /// Sends `query` upstream and returns the first matching answer. Upstreams are tried in
    /// [`Forwarder::order`], wrapping around, each for at most the per-try timeout, until
    /// the overall deadline; a round in which every upstream failed fast ends it early.
    pub async fn forward(&self, query: &Message) -> Result<Message, ForwardError> {
        if self.upstreams.is_empty() {
            return Err(ForwardError::NoUpstreams);
        }
        let deadline = Instant::now() + self.deadline;
        let mut last_error = String::new();
        let order = self.order();
        if order.is_empty() {
            return Err(ForwardError::Looped);
        }
        let mut rounds = 0;
        loop {
            rounds += 1;
            let mut all_failed_fast = true;
            for upstream in &order {
                let now = Instant::now();
                if now >= deadline {
                    return Err(ForwardError::Deadline(self.deadline));
                }
                let try_deadline = deadline.min(now + self.try_timeout);
                let addr = upstream.addr;
                let started = Instant::now();
                match try_upstream(upstream, query, try_deadline, &self.metrics).await {
                    Ok(answer) => {
                        count(&self.metrics, "ok");
                        upstream.observe_duration(
                            &self.metrics,
                            answer.metadata.response_code,
                            started.elapsed(),
                        );
                        self.succeeded(upstream);
                        return Ok(answer);
                    }
                    Err(TryError::Timeout) => {
                        count(&self.metrics, "timeout");
                        all_failed_fast = false;
                        debug!(upstream = %addr, "upstream timed out");
                        self.failed(upstream);
                    }
                    Err(TryError::Failed(reason)) => {
                        count(&self.metrics, "error");
                        debug!(upstream = %addr, %reason, "upstream failed");
                        last_error = format!("{addr}: {reason}");
                        self.failed(upstream);
                    }
                }
            }
            if all_failed_fast {
                return Err(ForwardError::AllFailed(last_error));
            }
            if self.attempts != 0 && rounds >= self.attempts {
                return Err(ForwardError::Attempts(self.attempts));
            }
        }
    }

    fn succeeded(&self, upstream: &UpstreamState) {
        upstream.fails.store(0, Ordering::Relaxed);
        if upstream.down.swap(false, Ordering::Relaxed) {
            mark_up(upstream, &self.metrics);
        }
    }

    /// Counts a failed try; at `max_fails` in a row the upstream is marked down and a probe
    /// task asks it `. IN NS` every `health_check` until it answers.
    fn failed(&self, upstream: &Arc<UpstreamState>) {
        if let Some(count) = upstream.failures.hit() {
            warn!(
                upstream = %upstream.addr,
                "upstream {} failed {count} time(s) in the last {}s (timeouts or errors); \
                 check it is reachable from this pod and answers, or remove it from the upstreams",
                upstream.addr,
                upstream.failures.period().as_secs()
            );
        }
        if self.max_fails == 0 {
            return;
        }
        let fails = upstream.fails.fetch_add(1, Ordering::Relaxed) + 1;
        if fails < self.max_fails || upstream.down.swap(true, Ordering::Relaxed) {
            return;
        }
        warn!(upstream = %upstream.addr, fails, "upstream marked down; probing it in the background");
        let addr = upstream.addr.to_string();
        self.metrics
            .upstream_healthy
            .with_label_values(&[&addr])
            .set(0);
        let upstream = upstream.clone();
        let metrics = self.metrics.clone();
        let interval = self.health_check;
        let timeout = self.try_timeout.min(Duration::from_secs(1));
        tokio::spawn(async move {
            let probe = health_probe();
            while upstream.down.load(Ordering::Relaxed) {
                tokio::time::sleep(interval).await;
                let deadline = Instant::now() + timeout;
                // Any well-formed answer, whatever its rcode, shows the upstream is there.
                if try_upstream(&upstream, &probe, deadline, &metrics)
                    .await
                    .is_ok()
                {
                    upstream.fails.store(0, Ordering::Relaxed);
                    if upstream.down.swap(false, Ordering::Relaxed) {
                        mark_up(&upstream, &metrics);
                    }
                    break;
                }
                metrics
                    .healthcheck_failures
                    .with_label_values(&[PROXY_NAME, &addr])
                    .inc();
            }
        });
    }
}

fn mark_up(upstream: &UpstreamState, metrics: &Metrics) {
    info!(upstream = %upstream.addr, "upstream answers again; marked up");
    metrics
        .upstream_healthy
        .with_label_values(&[&upstream.addr.to_string()])
        .set(1);
}

/// The health probe CoreDNS sends: `. IN NS`, no recursion needed.
fn health_probe() -> Message {
    let mut probe = Message::query();
    probe.add_query(hickory_proto::op::Query::query(
        hickory_proto::rr::Name::root(),
        hickory_proto::rr::RecordType::NS,
    ));
    probe
}

fn count(metrics: &Metrics, outcome: &str) {
    metrics.upstream_queries.with_label_values(&[outcome]).inc();
}

/// One try against one upstream: UDP, then TCP when the UDP answer is truncated (TCP only
/// with `force_tcp`).
async fn try_upstream(
    upstream: &UpstreamState,
    query: &Message,
    deadline: Instant,
    metrics: &Metrics,
) -> Result<Message, TryError> {
    let mut outgoing = query.clone();
    outgoing.metadata.id = rand::random();
    let wire = outgoing
        .to_vec()
        .map_err(|e| TryError::Failed(format!("cannot encode query: {e}")))?;
    let addr = upstream.addr;
    let attempt = async {
        if upstream.force_tcp {
            return exchange_tcp(upstream, &outgoing, &wire).await;
        }
        let answer = exchange_udp(addr, &outgoing, &wire, metrics).await?;
        if answer.metadata.truncation {
            debug!(upstream = %addr, "upstream answer truncated; retrying over TCP");
            return exchange_tcp(upstream, &outgoing, &wire).await;
        }
        Ok(answer)
    };
    match timeout_at(deadline, attempt).await {
        Ok(result) => result,
        Err(_) => Err(TryError::Timeout),
    }
}

async fn exchange_udp(
    upstream: SocketAddr,
    outgoing: &Message,
    wire: &[u8],
    metrics: &Metrics,
) -> Result<Message, TryError> {
    let local: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await.map_err(io_failure)?;
    // Connecting filters datagrams from other sources and surfaces ICMP port-unreachable
    // as an error, so a dead upstream fails fast instead of timing out.
    socket.connect(upstream).await.map_err(io_failure)?;
    socket.send(wire).await.map_err(io_failure)?;
    let mut buf = vec![0u8; MAX_UPSTREAM_UDP];
    loop {
        let len = socket.recv(&mut buf).await.map_err(io_failure)?;
        match matching_answer(outgoing, &buf[..len]) {
            Some(answer) => return Ok(answer),
            None => {
                // Wrong id or question: a late answer to an earlier query or a spoof
                // attempt. Keep waiting for the real one until the try times out.
                count(metrics, "mismatch");
                debug!(%upstream, "discarded an upstream answer that does not match the query");
            }
        }
    }
}

/// The answer over TCP (RFC 7766: two-byte length prefix), on a kept connection when there
/// is one (a fresh one if the kept one turns out closed), kept afterwards for the next query.
async fn exchange_tcp(
    upstream: &UpstreamState,
    outgoing: &Message,
    wire: &[u8],
) -> Result<Message, TryError> {
    let length = u16::try_from(wire.len())
        .map_err(|_| TryError::Failed("query longer than 65535 bytes".into()))?;
    let mut framed = Vec::with_capacity(wire.len() + 2);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(wire);
    if let Some(stream) = upstream.take_idle_tcp()
        && let Ok((answer, stream)) = tcp_round_trip(stream, outgoing, &framed).await
    {
        upstream.keep_idle_tcp(stream);
        return Ok(answer);
    }
    let stream = TcpStream::connect(upstream.addr)
        .await
        .map_err(io_failure)?;
    let _ = stream.set_nodelay(true);
    let (answer, stream) = tcp_round_trip(stream, outgoing, &framed).await?;
    upstream.keep_idle_tcp(stream);
    Ok(answer)
}

async fn tcp_round_trip(
    mut stream: TcpStream,
    outgoing: &Message,
    framed: &[u8],
) -> Result<(Message, TcpStream), TryError> {
    stream.write_all(framed).await.map_err(io_failure)?;
    loop {
        let length = stream.read_u16().await.map_err(io_failure)?;
        let mut buf = vec![0u8; usize::from(length)];
        stream.read_exact(&mut buf).await.map_err(io_failure)?;
        if let Some(answer) = matching_answer(outgoing, &buf) {
            return Ok((answer, stream));
        }
    }
}

/// `bytes` parsed, if it is a response to `outgoing` (same id, same question).
pub(crate) fn matching_answer(outgoing: &Message, bytes: &[u8]) -> Option<Message> {
    let answer = Message::from_vec(bytes).ok()?;
    let matches = answer.metadata.id == outgoing.metadata.id
        && answer.metadata.message_type == hickory_proto::op::MessageType::Response
        && answer.queries.len() == outgoing.queries.len()
        && answer.queries.iter().zip(&outgoing.queries).all(|(a, q)| {
            a.name() == q.name()
                && a.query_type() == q.query_type()
                && a.query_class() == q.query_class()
        });
    matches.then_some(answer)
}

fn io_failure(error: io::Error) -> TryError {
    TryError::Failed(error.to_string())
}

#[cfg(test)]
mod tests;
