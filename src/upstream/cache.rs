//! The cache of upstream answers (moka): positive and negative entries kept apart, TTLs that
//! count down while cached, and expired entries kept a while longer for serve-stale.
//!
//! Owns: what is cacheable and for how long (RFC 2308 negative caching, TTL floors and caps),
//! the cache key, and rewriting TTLs on the way out. Must not talk to upstreams (the
//! [`super::Resolver`] decides when to ask, refresh or fall back to stale) and never holds
//! cluster-zone answers: the zone already is a cache.

use crate::config::CacheConfig;
use crate::ops::metrics::Metrics;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, Record, RecordType};
use moka::notification::RemovalCause;
use prometheus::{IntCounter, IntGauge};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// TTL of an answer served stale (RFC 8767 section 4 recommends 30 s).
pub const STALE_TTL: u32 = 30;

/// What identifies one cached answer. The name is lowercased: DNS names are
/// case-insensitive, and one entry serves every spelling.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct CacheKey {
    name: Name,
    qtype: RecordType,
    qclass: DNSClass,
    /// DO and CD change what an upstream returns (RRSIGs, unvalidated data).
    dnssec_ok: bool,
    checking_disabled: bool,
}

impl CacheKey {
    /// The key a plain stub query (no DO, no CD, class IN) for `name`/`qtype` has: what a
    /// pod's resolver sends, so what `clusterdns explain` looks for.
    pub fn plain(name: &Name, qtype: RecordType) -> CacheKey {
        CacheKey {
            name: name.to_lowercase(),
            qtype,
            qclass: DNSClass::IN,
            dnssec_ok: false,
            checking_disabled: false,
        }
    }

    /// The key of a query with exactly one question; `None` otherwise.
    pub fn of(query: &Message) -> Option<CacheKey> {
        let [question] = query.queries.as_slice() else {
            return None;
        };
        Some(CacheKey {
            name: question.name().to_lowercase(),
            qtype: question.query_type(),
            qclass: question.query_class(),
            dnssec_ok: query.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
            checking_disabled: query.metadata.checking_disabled,
        })
    }
}

/// Which of the two caches an answer lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Success,
    Denial,
}

impl Kind {
    fn index(self) -> usize {
        self as usize
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Success => "success",
            Kind::Denial => "denial",
        }
    }
}

/// One cached answer, as the upstream sent it (TTLs already capped).
#[derive(Debug)]
struct Stored {
    rcode: ResponseCode,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
    stored_at: Instant,
    ttl: Duration,
    hits: AtomicU32,
    prefetching: AtomicBool,
}

/// The parts of an upstream answer the handler needs, with TTLs as they are now.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedAnswer {
    /// The upstream's rcode.
    pub rcode: ResponseCode,
    /// Answer section.
    pub answers: Vec<Record>,
    /// Authority section.
    pub authorities: Vec<Record>,
    /// Additional section (no OPT).
    pub additionals: Vec<Record>,
}

impl CachedAnswer {
    /// The cacheable parts of an upstream message.
    pub fn from_message(message: &Message) -> CachedAnswer {
        CachedAnswer {
            rcode: message.metadata.response_code,
            answers: message.answers.clone(),
            authorities: message.authorities.clone(),
            additionals: message
                .additionals
                .iter()
                .filter(|r| r.record_type() != RecordType::OPT)
                .cloned()
                .collect(),
        }
    }
}

/// The result of a cache lookup.
#[derive(Debug)]
pub enum Lookup {
    /// A live entry. `prefetch` is true (once per entry) when it is popular and close to
    /// expiry: the caller should refresh it in the background.
    Fresh {
        /// The answer, TTLs counted down.
        answer: CachedAnswer,
        /// Refresh it now.
        prefetch: bool,
        /// For how long, and on what terms, this answer may be served again from a copy
        /// (the server's prebuilt bytes) without asking the cache; `None` when prefetching.
        reuse: Option<Reuse>,
    },
    /// Expired, but within the serve-stale window: only for when every upstream fails.
    Stale(CachedAnswer),
    /// Nothing usable.
    Miss,
}

/// A fresh answer that may be served again from a copy of its bytes until [`Reuse::until`],
/// with its TTLs counted down by [`Reuse::countdown`]: exactly what [`Cache::get`] would
/// answer in that time, as long as the entry is neither refreshed nor prefetched (a fresh
/// entry is only replaced by a prefetch, and `until` stops before the prefetch point). Each
/// answer served from the copy is counted with [`Reuse::count_hit`], as a hit here is: the
/// metrics and the prefetch decision see every hit.
#[derive(Clone, Debug)]
pub struct Reuse {
    entry: Arc<Stored>,
    /// Whole seconds the TTLs had counted down when this answer was taken.
    taken_at_elapsed: u32,
    until: Instant,
    hits: IntCounter,
    requests: IntCounter,
}

impl Reuse {
    /// The end of the time in which the copy answers as the cache would.
    pub fn until(&self) -> Instant {
        self.until
    }

    /// Seconds to take off the copy's TTLs at `now` (how much further they have counted down
    /// since the answer was taken, in the whole seconds [`Cache::get`] counts).
    pub fn countdown(&self, now: Instant) -> u32 {
        let age = now.saturating_duration_since(self.entry.stored_at);
        let elapsed = u32::try_from(age.as_secs()).unwrap_or(u32::MAX);
        elapsed.saturating_sub(self.taken_at_elapsed)
    }

    /// Counts an answer served from the copy: a cache request and hit, and a hit towards
    /// the entry's prefetch.
    pub fn count_hit(&self) {
        self.requests.inc();
        self.hits.inc();
        self.entry.hits.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the cache holds for one key, as [`Cache::peek`] sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Peek {
    /// True for the positive cache (an answer with records), false for the negative one
    /// (NXDOMAIN, NODATA, a cached SERVFAIL).
    pub positive: bool,
    /// The entry's answer, TTLs counted down as a client would get them now (0 when stale).
    pub answer: CachedAnswer,
    /// How long ago it was stored.
    pub age: Duration,
    /// How long it lives in all (its TTL as capped when stored).
    pub ttl: Duration,
    /// Expired, kept only for serve-stale (RFC 8767): answered only if every upstream fails.
    pub stale: bool,
}

impl Peek {
    /// The TTL left in whole seconds as a client gets it (zero when stale): the TTL minus
    /// the whole seconds elapsed, as [`Cache::get`] counts down.
    pub fn remaining(&self) -> Duration {
        Duration::from_secs(self.ttl.as_secs().saturating_sub(self.age.as_secs()))
    }
}

type Store = moka::sync::Cache<CacheKey, Arc<Stored>>;

/// The positive and negative caches.
pub struct Cache {
    success: Store,
    denial: Store,
    config: CacheConfig,
    counters: Counters,
}

/// The cache's metric handles, resolved once (CoreDNS labels: server, type, zones, view).
struct Counters {
    hits: [IntCounter; 2],
    entries: [IntGauge; 2],
    misses: IntCounter,
    requests: IntCounter,
    prefetch: IntCounter,
    served_stale: IntCounter,
}

impl Counters {
    fn new(metrics: &Metrics) -> Counters {
        let server = metrics.server_label().to_string();
        let typed = |kind: Kind| [server.as_str(), kind.label(), ZONES, VIEW];
        let plain = [server.as_str(), ZONES, VIEW];
        Counters {
            hits: [Kind::Success, Kind::Denial]
                .map(|k| metrics.cache_hits.with_label_values(&typed(k))),
            entries: [Kind::Success, Kind::Denial]
                .map(|k| metrics.cache_entries.with_label_values(&typed(k))),
            misses: metrics.cache_misses.with_label_values(&plain),
            requests: metrics.cache_requests.with_label_values(&plain),
            prefetch: metrics.cache_prefetch.with_label_values(&plain),
            served_stale: metrics.cache_served_stale.with_label_values(&plain),
        }
    }
}

/// CoreDNS's `zones` and `view` labels for a cache in a `.:53` server block.
const ZONES: &str = ".";
const VIEW: &str = "";

/// Keeps each entry until its TTL plus the serve-stale window has passed.
struct ExpireAfterTtl {
    stale_window: Duration,
}

impl moka::Expiry<CacheKey, Arc<Stored>> for ExpireAfterTtl {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<Stored>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.ttl + self.stale_window)
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        value: &Arc<Stored>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl + self.stale_window)
    }
}

impl Cache {
    /// An empty cache with the capacities and TTL rules of `config`.
    pub fn new(config: &CacheConfig, metrics: Arc<Metrics>) -> Cache {
        let store = |capacity: u64, kind: Kind| -> Store {
            let evictions = metrics.cache_evictions.with_label_values(&[
                metrics.server_label(),
                kind.label(),
                ZONES,
                VIEW,
            ]);
            moka::sync::Cache::builder()
                .max_capacity(capacity)
                .expire_after(ExpireAfterTtl {
                    stale_window: Duration::from_secs(config.serve_stale.into()),
                })
                .eviction_listener(move |_key, _value, cause| {
                    if cause == RemovalCause::Size {
                        evictions.inc();
                    }
                })
                .build()
        };
        Cache {
            success: store(config.capacity, Kind::Success),
            denial: store(config.negative_capacity, Kind::Denial),
            config: config.clone(),
            counters: Counters::new(&metrics),
        }
    }

    /// The settings it was made with.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Counts a background refresh of an entry near expiry.
    pub fn count_prefetch(&self) {
        self.counters.prefetch.inc();
    }

    /// Counts an expired answer served because every upstream failed.
    pub fn count_served_stale(&self) {
        self.counters.served_stale.inc();
    }

    /// False when the cache is configured off.
    pub fn enabled(&self) -> bool {
        self.config.capacity > 0
    }

    /// Looks `key` up at time `now`.
    pub fn get(&self, key: &CacheKey, now: Instant) -> Lookup {
        if !self.enabled() {
            return Lookup::Miss;
        }
        self.counters.requests.inc();
        let found = [(&self.success, Kind::Success), (&self.denial, Kind::Denial)]
            .into_iter()
            .find_map(|(store, kind)| store.get(key).map(|entry| (entry, kind)));
        let Some((entry, kind)) = found else {
            self.counters.misses.inc();
            return Lookup::Miss;
        };
        let age = now.saturating_duration_since(entry.stored_at);
        if age >= entry.ttl {
            self.counters.misses.inc();
            return Lookup::Stale(entry.answer_with(|_| STALE_TTL));
        }
        self.counters.hits[kind.index()].inc();
        let hits = entry.hits.fetch_add(1, Ordering::Relaxed) + 1;
        let left = entry.ttl - age;
        let prefetch = self.config.prefetch > 0
            && hits >= self.config.prefetch
            && left * 10 <= entry.ttl
            && !entry.prefetching.swap(true, Ordering::Relaxed);
        let elapsed = u32::try_from(age.as_secs()).unwrap_or(u32::MAX);
        // With prefetch on, a copy stops where a popular entry would start its refresh, so
        // that the refresh is decided here, on a real lookup.
        let reusable_for = if self.config.prefetch > 0 {
            entry.ttl - entry.ttl / 10
        } else {
            entry.ttl
        };
        let reuse = (!prefetch).then(|| Reuse {
            entry: entry.clone(),
            taken_at_elapsed: elapsed,
            until: entry.stored_at + reusable_for,
            hits: self.counters.hits[kind.index()].clone(),
            requests: self.counters.requests.clone(),
        });
        Lookup::Fresh {
            answer: entry.answer_with(|ttl| ttl.saturating_sub(elapsed)),
            prefetch,
            reuse,
        }
    }

    /// Reads the entry for `key` without changing anything this cache counts or decides: no
    /// metric, no hit count, no prefetch, no insert (`clusterdns explain`).
    pub fn peek(&self, key: &CacheKey, now: Instant) -> Option<Peek> {
        let (entry, kind) = [(&self.success, Kind::Success), (&self.denial, Kind::Denial)]
            .into_iter()
            .find_map(|(store, kind)| store.get(key).map(|entry| (entry, kind)))?;
        let age = now.saturating_duration_since(entry.stored_at);
        let stale = age >= entry.ttl;
        let elapsed = u32::try_from(age.as_secs()).unwrap_or(u32::MAX);
        Some(Peek {
            positive: kind == Kind::Success,
            answer: entry.answer_with(|ttl| ttl.saturating_sub(elapsed)),
            age,
            ttl: entry.ttl,
            stale,
        })
    }

    /// Stores an upstream answer if it is cacheable, for as long as its TTLs allow, and
    /// returns it as stored (TTLs capped), so the first client sees the TTLs later clients
    /// will see counted down. `None` when not cached.
    pub fn insert(
        &self,
        key: CacheKey,
        answer: &CachedAnswer,
        now: Instant,
    ) -> Option<CachedAnswer> {
        if !self.enabled() {
            return None;
        }
        let (kind, ttl) = self.lifetime(answer)?;
        if ttl == 0 {
            return None;
        }
        let cap = |records: &[Record]| -> Vec<Record> {
            records
                .iter()
                .map(|r| {
                    // No record outlives its entry, and none is below the floor the
                    // entry itself was raised to.
                    let mut r = r.clone();
                    r.ttl = r.ttl.clamp(ttl.min(self.config.min_ttl), ttl);
                    r
                })
                .collect()
        };
        let stored = Arc::new(Stored {
            rcode: answer.rcode,
            answers: cap(&answer.answers),
            authorities: cap(&answer.authorities),
            additionals: cap(&answer.additionals),
            stored_at: now,
            ttl: Duration::from_secs(ttl.into()),
            hits: AtomicU32::new(0),
            prefetching: AtomicBool::new(false),
        });
        let as_stored = stored.answer_with(|ttl| ttl);
        // One key lives in one store: a name that turned from NXDOMAIN into an answer (or
        // back) must not leave the old entry behind for serve-stale to find.
        match kind {
            Kind::Success => {
                self.denial.invalidate(&key);
                self.success.insert(key, stored);
            }
            Kind::Denial => {
                self.success.invalidate(&key);
                self.denial.insert(key, stored);
            }
        }
        Some(as_stored)
    }

    /// Which cache an answer goes to and its TTL in seconds; `None` if not cacheable.
    fn lifetime(&self, answer: &CachedAnswer) -> Option<(Kind, u32)> {
        let c = &self.config;
        let negative_ttl = || {
            // RFC 2308 section 5: the SOA's TTL, capped by its MINIMUM field. A negative
            // answer without SOA says nothing about how long it holds: not cached.
            answer.authorities.iter().find_map(|r| match &r.data {
                hickory_proto::rr::RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })
        };
        match answer.rcode {
            ResponseCode::NoError if !answer.answers.is_empty() => {
                let ttl = answer.answers.iter().map(|r| r.ttl).min()?;
                Some((
                    Kind::Success,
                    ttl.clamp(c.min_ttl.min(c.max_ttl), c.max_ttl),
                ))
            }
            ResponseCode::NoError | ResponseCode::NXDomain => {
                let ttl = negative_ttl()?;
                let max = c.max_negative_ttl;
                Some((Kind::Denial, ttl.clamp(c.min_ttl.min(max), max)))
            }
            ResponseCode::ServFail if c.servfail_ttl > 0 => Some((Kind::Denial, c.servfail_ttl)),
            _ => None,
        }
    }

    /// Refreshes the `coredns_cache_entries` gauges (called before each scrape or at
    /// intervals; counting is not free, so not on the query path).
    pub fn update_entry_gauges(&self) {
        for (store, kind) in [(&self.success, Kind::Success), (&self.denial, Kind::Denial)] {
            store.run_pending_tasks();
            let count = i64::try_from(store.entry_count()).unwrap_or(i64::MAX);
            self.counters.entries[kind.index()].set(count);
        }
    }
}

impl Stored {
    fn answer_with(&self, ttl: impl Fn(u32) -> u32) -> CachedAnswer {
        let adjust = |records: &[Record]| -> Vec<Record> {
            records
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    r.ttl = ttl(r.ttl);
                    r
                })
                .collect()
        };
        CachedAnswer {
            rcode: self.rcode,
            answers: adjust(&self.answers),
            authorities: adjust(&self.authorities),
            additionals: adjust(&self.additionals),
        }
    }
}

#[cfg(test)]
mod tests;
