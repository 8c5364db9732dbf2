//! Response rate limiting per client network over UDP (`[acl.rate_limit]`, off by default).
//!
//! Cluster clients are trusted, so nothing is limited unless configured. The case it exists
//! for is a server exposed by mistake (a LoadBalancer Service): UDP source addresses can be
//! forged, so an open server can be made to send its answers to a victim. Each client network
//! (a /24 or /56 by default, as in BIND's RRL) gets a token bucket of `responses_per_second`
//! with one second of burst. Over the limit, an answer is dropped, except every `slip`-th one,
//! which goes out truncated (TC, no records): no larger than the question, so useless for
//! amplification, while a real client behind that network retries over TCP, which is never
//! limited (a TCP client cannot forge its address).
//!
//! Owns: the buckets (a bounded cache: a flood from forged networks evicts old buckets, it
//! cannot grow memory). Must not: look at the question or the answer.

use crate::config::RateLimitConfig;
use crate::ops::metrics::Metrics;
use prometheus::IntCounter;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Client networks tracked at most: a bucket is ~100 bytes, so a few MB at worst.
const MAX_NETWORKS: u64 = 65_536;
/// A network not heard from for this long starts again with a full bucket.
const IDLE: Duration = Duration::from_secs(60);

/// What to do with one answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send it.
    Send,
    /// Send it truncated (TC, empty sections) so the client retries over TCP.
    Slip,
    /// Send nothing.
    Drop,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    /// Answers limited since the bucket last had a token: picks every `slip`-th to slip.
    limited: u32,
}

/// The per-network buckets of one configuration.
pub struct RateLimiter {
    config: RateLimitConfig,
    rate: f64,
    buckets: moka::sync::Cache<IpAddr, Arc<Mutex<Bucket>>>,
    dropped: IntCounter,
    slipped: IntCounter,
}

impl RateLimiter {
    /// A limiter for `config`, or `None` when rate limiting is off.
    pub fn new(config: &RateLimitConfig, metrics: &Metrics) -> Option<RateLimiter> {
        if config.responses_per_second == 0 {
            return None;
        }
        Some(RateLimiter {
            config: config.clone(),
            rate: f64::from(config.responses_per_second),
            buckets: moka::sync::Cache::builder()
                .max_capacity(MAX_NETWORKS)
                .time_to_idle(IDLE)
                .build(),
            dropped: metrics.rate_limited.with_label_values(&["drop"]),
            slipped: metrics.rate_limited.with_label_values(&["slip"]),
        })
    }

    /// The settings this limiter was made from.
    pub fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    /// The network `client` is counted in.
    fn network(&self, client: IpAddr) -> IpAddr {
        let prefix = match client {
            IpAddr::V4(_) => self.config.ipv4_prefix,
            IpAddr::V6(_) => self.config.ipv6_prefix,
        };
        ipnet::IpNet::new(client, prefix)
            .map(|net| net.network())
            .unwrap_or(client)
    }

    /// Takes one answer's token from `client`'s network at `now`.
    pub fn check(&self, client: IpAddr, now: Instant) -> Verdict {
        let bucket = self.buckets.get_with(self.network(client), || {
            Arc::new(Mutex::new(Bucket {
                tokens: self.rate,
                refilled: now,
                limited: 0,
            }))
        });
        let mut bucket = bucket.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.rate);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            bucket.limited = 0;
            return Verdict::Send;
        }
        bucket.limited = bucket.limited.wrapping_add(1);
        let slip = self.config.slip;
        if slip != 0 && bucket.limited.is_multiple_of(slip) {
            self.slipped.inc();
            Verdict::Slip
        } else {
            self.dropped.inc();
            Verdict::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: u32, slip: u32) -> (RateLimiter, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let config = RateLimitConfig {
            responses_per_second: rate,
            slip,
            ..RateLimitConfig::default()
        };
        (
            RateLimiter::new(&config, &metrics).expect("on"),
            metrics.clone(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn off_by_default() {
        let metrics = Metrics::new();
        assert!(RateLimiter::new(&RateLimitConfig::default(), &metrics).is_none());
    }

    #[test]
    fn a_burst_of_one_second_then_every_slip_th_answer_truncated_the_rest_dropped() {
        let (limiter, metrics) = limiter(5, 2);
        let now = Instant::now();
        let verdicts: Vec<Verdict> = (0..11)
            .map(|_| limiter.check(ip("192.0.2.7"), now))
            .collect();
        use Verdict::*;
        assert_eq!(
            verdicts,
            [
                Send, Send, Send, Send, Send, Drop, Slip, Drop, Slip, Drop, Slip
            ]
        );
        assert_eq!(metrics.rate_limited.with_label_values(&["drop"]).get(), 3);
        assert_eq!(metrics.rate_limited.with_label_values(&["slip"]).get(), 3);
        // 200 ms later one token is back (5 per second), and only one.
        let later = now + Duration::from_millis(200);
        assert_eq!(limiter.check(ip("192.0.2.7"), later), Send);
        assert_ne!(limiter.check(ip("192.0.2.7"), later), Send);
        // A full second refills the burst, never beyond it.
        let much_later = now + Duration::from_secs(10);
        let sent = (0..20)
            .filter(|_| limiter.check(ip("192.0.2.7"), much_later) == Send)
            .count();
        assert_eq!(sent, 5);
    }

    #[test]
    fn networks_are_counted_apart_by_prefix() {
        let (limiter, _) = limiter(1, 0);
        let now = Instant::now();
        assert_eq!(limiter.check(ip("192.0.2.1"), now), Verdict::Send);
        // Same /24: the same bucket, empty now; slip 0 never truncates.
        assert_eq!(limiter.check(ip("192.0.2.200"), now), Verdict::Drop);
        // Another /24 has its own.
        assert_eq!(limiter.check(ip("192.0.3.1"), now), Verdict::Send);
        // IPv6: one /56 per site.
        assert_eq!(limiter.check(ip("2001:db8:0:1::1"), now), Verdict::Send);
        assert_eq!(limiter.check(ip("2001:db8:0:ff::2"), now), Verdict::Drop);
        assert_eq!(limiter.check(ip("2001:db8:0:100::1"), now), Verdict::Send);
    }
}
