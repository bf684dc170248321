//! Retry delays: exponential with jitter.

use rand::Rng;
use std::time::Duration;

/// Exponential backoff `base * factor^(attempt-1)`, capped, with 75-100 % jitter: retries of many
/// tasks spread out, and each delay is still longer than the one before (for factor >= 1.34).
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// First delay.
    pub base: Duration,
    /// Growth per attempt.
    pub factor: f64,
    /// Longest delay.
    pub max: Duration,
}

impl Backoff {
    /// Delay before the retry that follows attempt `attempt` (1-based).
    pub fn delay(&self, attempt: i32) -> Duration {
        let exponent = attempt.saturating_sub(1).clamp(0, 64);
        let raw = self.base.as_secs_f64() * self.factor.max(1.0).powi(exponent);
        let capped = raw.min(self.max.as_secs_f64());
        let jitter = rand::rng().random_range(0.75..=1.0);
        Duration::from_secs_f64(capped * jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_are_capped() {
        let b = Backoff {
            base: Duration::from_secs(1),
            factor: 2.0,
            max: Duration::from_secs(300),
        };
        for _ in 0..100 {
            let d1 = b.delay(1);
            let d2 = b.delay(2);
            let d3 = b.delay(3);
            assert!(d1 >= Duration::from_millis(750) && d1 <= Duration::from_secs(1));
            assert!(d2 > d1 && d3 > d2, "{d1:?} {d2:?} {d3:?}");
            assert!(b.delay(30) <= Duration::from_secs(300));
        }
    }
}
