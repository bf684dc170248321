//! Retry delays: exponential with jitter. The client waits this way between tries of a call, and
//! workers between attempts of a task.

use rand::Rng;
use std::ops::RangeInclusive;
use std::time::Duration;

/// Exponential backoff: the wait before retry `n` (from 0) is `base * factor^n`, capped at `max`,
/// then scaled by a random fraction from `jitter`, so callers that failed together retry apart.
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    /// Wait before the first retry (before jitter).
    pub base: Duration,
    /// Growth per retry; below 1 counts as 1.
    pub factor: f64,
    /// Longest wait (before jitter).
    pub max: Duration,
    /// The share of the capped wait that is waited, drawn uniformly from this range: `0.75..=1.0`
    /// keeps each wait longer than the one before for a factor of at least 1.34, `1.0..=1.0` turns
    /// jitter off. A range that is empty, negative or not finite counts as `1.0..=1.0`.
    pub jitter: RangeInclusive<f64>,
}

impl Backoff {
    /// The wait before retry number `retry` (0 for the first).
    pub fn delay(&self, retry: u32) -> Duration {
        // 64 doublings exceed any cap; the bound keeps the exponent an i32.
        let exponent = i32::try_from(retry.min(64)).unwrap_or(64);
        let raw = self.base.as_secs_f64() * self.factor.max(1.0).powi(exponent);
        let capped = raw.min(self.max.as_secs_f64());
        Duration::try_from_secs_f64(capped * self.fraction()).unwrap_or(self.max)
    }

    fn fraction(&self) -> f64 {
        let (low, high) = (*self.jitter.start(), *self.jitter.end());
        if low.is_finite() && high.is_finite() && 0.0 <= low && low <= high {
            rand::rng().random_range(low..=high)
        } else {
            1.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The workers' task retries: 75-100 % jitter, so each wait is longer than the one before.
    #[test]
    fn delays_grow_and_are_capped() {
        let b = Backoff {
            base: Duration::from_secs(1),
            factor: 2.0,
            max: Duration::from_secs(300),
            jitter: 0.75..=1.0,
        };
        for _ in 0..100 {
            let d1 = b.delay(0);
            let d2 = b.delay(1);
            let d3 = b.delay(2);
            assert!(d1 >= Duration::from_millis(750) && d1 <= Duration::from_secs(1));
            assert!(d2 > d1 && d3 > d2, "{d1:?} {d2:?} {d3:?}");
            assert!(b.delay(29) <= Duration::from_secs(300));
        }
    }

    /// The client's retries: doubling with 50-100 % jitter.
    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let b = Backoff {
            base: Duration::from_millis(100),
            factor: 2.0,
            max: Duration::from_millis(1000),
            jitter: 0.5..=1.0,
        };
        for _ in 0..50 {
            let first = b.delay(0);
            assert!((50..=100).contains(&first.as_millis()), "{first:?}");
            let third = b.delay(2);
            assert!((200..=400).contains(&third.as_millis()), "{third:?}");
            let late = b.delay(30);
            assert!((500..=1000).contains(&late.as_millis()), "{late:?}");
        }
    }

    #[test]
    fn odd_settings_neither_panic_nor_jitter() {
        let b = |jitter: RangeInclusive<f64>| Backoff {
            base: Duration::from_secs(1),
            factor: 2.0,
            max: Duration::from_secs(10),
            jitter,
        };
        for jitter in [1.0..=0.5, -1.0..=1.0, 0.5..=f64::INFINITY, f64::NAN..=1.0] {
            assert_eq!(b(jitter).delay(1), Duration::from_secs(2));
        }
        assert_eq!(b(0.5..=0.5).delay(0), Duration::from_millis(500));
        let huge = Backoff {
            base: Duration::MAX,
            factor: f64::INFINITY,
            max: Duration::MAX,
            jitter: 1.0..=1.0,
        };
        assert!(huge.delay(u32::MAX) > Duration::from_secs(u64::MAX / 2));
        let shrinking = Backoff {
            factor: 0.5,
            ..b(1.0..=1.0)
        };
        assert_eq!(shrinking.delay(5), Duration::from_secs(1));
    }
}
