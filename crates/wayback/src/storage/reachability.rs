//! Whether object storage answered lately: one shared record of the current outage, if any.
//!
//! The broker's archive watcher (`startup`) sets it from `check()` calls, and the job worker sets
//! it when a step fails on a transient storage error; `/health` and the descriptions of retried
//! operations read it, so the operator and the platform's user see the same "unreachable since".
//! An answer ends the outage. Imports nothing of the crate but its own `storage` siblings.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use super::StorageError;

/// An outage in progress: since when, where, and the last error (no credentials: storage
/// errors never carry them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outage {
    pub since: DateTime<Utc>,
    /// The archive's location, e.g. `s3://bucket/prefix/`.
    pub location: String,
    pub last_error: String,
}

/// The shared record; cheap to clone, clones share it.
#[derive(Debug, Clone, Default)]
pub struct Reachability {
    current: Arc<Mutex<Option<Outage>>>,
}

impl Reachability {
    /// Records a transient failure; an outage already recorded keeps its start. Returns the
    /// outage as it stands.
    pub fn failed(&self, location: &str, error: &StorageError, now: DateTime<Utc>) -> Outage {
        self.failed_with(location, &error.to_string(), now)
    }

    /// As [`Reachability::failed`], with the error as text (e.g. from an agent).
    pub fn failed_with(&self, location: &str, error: &str, now: DateTime<Utc>) -> Outage {
        let mut current = self.current.lock().expect("reachability lock");
        let outage = current.get_or_insert_with(|| Outage {
            since: now,
            location: location.to_string(),
            last_error: String::new(),
        });
        outage.last_error = error.to_string();
        outage.clone()
    }

    /// Records an answer: the outage (if any) is over; returns it.
    pub fn answered(&self) -> Option<Outage> {
        self.current.lock().expect("reachability lock").take()
    }

    /// The outage in progress, if any.
    pub fn outage(&self) -> Option<Outage> {
        self.current.lock().expect("reachability lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Op;

    #[test]
    fn an_outage_keeps_its_start_until_an_answer() {
        let r = Reachability::default();
        assert_eq!(r.outage(), None);
        let t0 = DateTime::from_timestamp(1_000, 0).unwrap();
        let t1 = DateTime::from_timestamp(2_000, 0).unwrap();
        let e = StorageError::transient(Op::Check, "s3://b/p/", "connection refused");
        r.failed("s3://b/p/", &e, t0);
        let later = r.clone().failed_with("s3://b/p/", "timeout", t1);
        assert_eq!(later.since, t0);
        assert_eq!(later.last_error, "timeout");
        assert_eq!(r.answered().map(|o| o.since), Some(t0));
        assert_eq!(r.outage(), None);
    }
}
