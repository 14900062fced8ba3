//! One instance's memory of the last hour (issue 19): at most [`SAMPLES`] 1 s samples and
//! [`STATS`] 15 s facts, oldest dropped first, and the cumulative seconds sessions spent
//! waiting per `(lock_type, mode)` for the metrics' counter. Pure: the sampler pushes, the
//! runtime reads. Must not import `osb`, `broker`, `store` or `jobs`.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, Utc};
use wayback_api::activity::{Activity, ActivitySummary, DatabaseStats, LockWaitTotal, Sample};

/// An hour at one sample a second.
pub const SAMPLES: usize = 3600;
/// An hour at one set of facts every 15 s.
pub const STATS: usize = 240;

/// The most one sample may add to a waiter's time: a sampler that was held up (a slow tick,
/// a suspended VM) does not invent waiting it did not see.
const MAX_STEP_SECS: f64 = 5.0;

#[derive(Debug, Default)]
pub struct Ring {
    samples: VecDeque<Sample>,
    stats: VecDeque<DatabaseStats>,
    lock_wait: BTreeMap<(String, String), f64>,
    /// The cluster runs and is being sampled.
    sampling: bool,
}

impl Ring {
    /// Adds a sample; each waiter adds the time since the previous sample (at most its own
    /// waiting time, and at most [`MAX_STEP_SECS`]) to its `(lock_type, mode)` counter.
    pub fn push_sample(&mut self, sample: Sample) {
        let step = self
            .samples
            .back()
            .map(|prev| (sample.at - prev.at).num_milliseconds() as f64 / 1000.0)
            .unwrap_or(1.0)
            .clamp(0.0, MAX_STEP_SECS);
        for wait in &sample.waits {
            let add = step.min(wait.waiting_secs.max(0.0));
            *self
                .lock_wait
                .entry((wait.lock_type.clone(), wait.mode.clone()))
                .or_default() += add;
        }
        if self.samples.len() == SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
        self.sampling = true;
    }

    pub fn push_stats(&mut self, stats: DatabaseStats) {
        if self.stats.len() == STATS {
            self.stats.pop_front();
        }
        self.stats.push_back(stats);
    }

    /// The cluster stopped, was parked or is gone from this machine: the ring is kept (what it
    /// holds is still true of the past), but no sample is current.
    pub fn pause(&mut self) {
        self.sampling = false;
    }

    #[cfg(test)]
    pub fn len(&self) -> (usize, usize) {
        (self.samples.len(), self.stats.len())
    }

    /// Samples and facts taken at or after `since` (all of them when None), oldest first.
    pub fn read(&self, since: Option<DateTime<Utc>>) -> Activity {
        let keep = |at: &DateTime<Utc>| since.map_or(true, |s| *at >= s);
        Activity {
            samples: self
                .samples
                .iter()
                .filter(|s| keep(&s.at))
                .cloned()
                .collect(),
            stats: self.stats.iter().filter(|s| keep(&s.at)).cloned().collect(),
            sampling: self.sampling,
        }
    }

    /// The newest sample (None unless sampling now), the newest facts, and the counters.
    pub fn summary(&self, instance_id: &str) -> ActivitySummary {
        ActivitySummary {
            instance_id: instance_id.to_string(),
            latest: self.samples.back().filter(|_| self.sampling).cloned(),
            stats: self.stats.back().cloned(),
            lock_wait_seconds: self
                .lock_wait
                .iter()
                .map(|((lock_type, mode), seconds)| LockWaitTotal {
                    lock_type: lock_type.clone(),
                    mode: mode.clone(),
                    seconds: *seconds,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use wayback_api::activity::LockWait;

    fn sample(at: DateTime<Utc>, waits: &[(&str, &str, f64)]) -> Sample {
        Sample {
            at,
            lock_waiters: waits.len() as u32,
            waits: waits
                .iter()
                .map(|(t, m, secs)| LockWait {
                    lock_type: t.to_string(),
                    mode: m.to_string(),
                    waiting_secs: *secs,
                    ..LockWait::default()
                })
                .collect(),
            ..Sample::default()
        }
    }

    #[test]
    fn the_ring_keeps_an_hour_and_drops_the_oldest() {
        let t0 = Utc::now();
        let mut ring = Ring::default();
        for i in 0..(SAMPLES as i64 + 10) {
            ring.push_sample(sample(t0 + Duration::seconds(i), &[]));
        }
        for i in 0..(STATS as i64 + 3) {
            ring.push_stats(DatabaseStats {
                at: t0 + Duration::seconds(15 * i),
                ..DatabaseStats::default()
            });
        }
        assert_eq!(ring.len(), (SAMPLES, STATS));
        let all = ring.read(None);
        assert_eq!(all.samples.first().unwrap().at, t0 + Duration::seconds(10));
        assert_eq!(all.stats.first().unwrap().at, t0 + Duration::seconds(45));
        let recent = ring.read(Some(t0 + Duration::seconds(SAMPLES as i64 + 5)));
        assert_eq!(recent.samples.len(), 5);
        assert!(recent.sampling);
    }

    #[test]
    fn waiting_adds_up_per_lock_type_and_mode() {
        let t0 = Utc::now();
        let mut ring = Ring::default();
        // The first sample: the wait began 0.4 s ago, so 0.4 s.
        ring.push_sample(sample(t0, &[("transactionid", "ShareLock", 0.4)]));
        // One second later: two waiters, one new (0.25 s so far).
        ring.push_sample(sample(
            t0 + Duration::seconds(1),
            &[
                ("transactionid", "ShareLock", 1.4),
                ("relation", "AccessExclusiveLock", 0.25),
            ],
        ));
        // A sampler held up for a minute adds at most five seconds.
        ring.push_sample(sample(
            t0 + Duration::seconds(61),
            &[("transactionid", "ShareLock", 61.4)],
        ));
        ring.push_sample(sample(t0 + Duration::seconds(62), &[]));
        let s = ring.summary("i-1");
        let totals: Vec<(String, String, f64)> = s
            .lock_wait_seconds
            .iter()
            .map(|t| {
                (
                    t.lock_type.clone(),
                    t.mode.clone(),
                    (t.seconds * 100.0).round() / 100.0,
                )
            })
            .collect();
        assert_eq!(
            totals,
            vec![
                ("relation".into(), "AccessExclusiveLock".into(), 0.25),
                ("transactionid".into(), "ShareLock".into(), 6.4),
            ]
        );
        assert_eq!(s.latest.unwrap().lock_waiters, 0);
    }

    #[test]
    fn a_paused_ring_has_no_current_sample_but_keeps_its_past() {
        let mut ring = Ring::default();
        ring.push_sample(sample(Utc::now(), &[("tuple", "ExclusiveLock", 1.0)]));
        ring.pause();
        let s = ring.summary("i-1");
        assert!(s.latest.is_none());
        assert_eq!(s.lock_wait_seconds.len(), 1);
        let a = ring.read(None);
        assert!(!a.sampling);
        assert_eq!(a.samples.len(), 1);
    }
}
