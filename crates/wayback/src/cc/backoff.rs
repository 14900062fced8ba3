//! Jittered exponential backoff: pure, so the schedule is unit-tested without waiting.
//!
//! "Full jitter" (a uniform draw below the exponential ceiling) spreads the retries of many
//! callers that failed together, e.g. every broker asking a Cloud Controller that just
//! restarted, instead of having them return in lock-step.

use std::time::Duration;

/// Exponential backoff between `base` and `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The ceiling before the `attempt`-th retry (0-based): `base · 2^attempt`, at most `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The wait before the `attempt`-th retry: `ceiling` scaled by `unit` (in [0, 1]), never
    /// below half the ceiling, so that a retry does not fire at once.
    pub fn delay_with(&self, attempt: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(attempt);
        ceiling.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
    }

    /// [`Backoff::delay_with`] with a random draw.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_jitters_below_it() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(1), Duration::from_millis(200));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(4), Duration::from_secs(1), "capped");
        assert_eq!(b.ceiling(1000), Duration::from_secs(1), "no overflow");
        assert_eq!(b.delay_with(2, 0.0), Duration::from_millis(200));
        assert_eq!(b.delay_with(2, 1.0), Duration::from_millis(400));
        for attempt in 0..10 {
            let d = b.delay(attempt);
            assert!(
                d <= b.ceiling(attempt) && d >= b.ceiling(attempt) / 2,
                "{d:?}"
            );
        }
    }
}
