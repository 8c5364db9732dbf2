//! Rate-limited reports: a failure that repeats is logged once per period with how many
//! times it happened, instead of once per occurrence (a dead upstream at 10,000 queries per
//! second must not become 10,000 log lines per second).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn millis_since_start() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Counts occurrences and says when to report them.
#[derive(Debug)]
pub struct Throttle {
    period_ms: u64,
    next_report_ms: AtomicU64,
    count: AtomicU64,
}

impl Throttle {
    /// Reports at most once per `period`.
    pub fn new(period: Duration) -> Throttle {
        Throttle {
            period_ms: u64::try_from(period.as_millis()).unwrap_or(u64::MAX),
            next_report_ms: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Counts one occurrence. `Some(n)` when it is time to report: `n` occurrences since the
    /// last report (the first occurrence is reported at once).
    pub fn hit(&self) -> Option<u64> {
        self.count.fetch_add(1, Ordering::Relaxed);
        let now = millis_since_start();
        let next = self.next_report_ms.load(Ordering::Relaxed);
        if now < next {
            return None;
        }
        self.next_report_ms
            .compare_exchange(
                next,
                now.saturating_add(self.period_ms),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .ok()?;
        Some(self.count.swap(0, Ordering::Relaxed))
    }

    /// The period, for the report's wording.
    pub fn period(&self) -> Duration {
        Duration::from_millis(self.period_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_first_hit_then_once_per_period_with_the_count() {
        let throttle = Throttle::new(Duration::from_millis(200));
        assert_eq!(throttle.hit(), Some(1));
        for _ in 0..49 {
            assert_eq!(throttle.hit(), None);
        }
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(throttle.hit(), Some(50), "49 suppressed + this one");
        assert_eq!(throttle.hit(), None);
    }
}
