//! Holding a job's lease while it runs: renewed at once and then every third of
//! `jobs.lease_secs`, for the whole time a worker works on the job (every step, and the writes
//! between them), and the work dropped — cancelled at its next await — the moment the lease is
//! lost.
//!
//! Why: a lease that runs out while its owner still works lets another worker (or the same one)
//! claim the job again, and then one step runs twice at once. A step is idempotent against a
//! crash, not against a twin running beside it. So renewal never waits for the step to start
//! taking long, and a renewal that finds the lease gone (`renew_lease` answers false) — or that
//! cannot reach the store until the lease would lapse — stops the work instead of letting it go on
//! unowned. Stopping at an await is what a crash does, which every step already survives.
//!
//! So a job's end is its last store write: once `finish_job` or `retry_job` has given the lease
//! up, a renewal answers false and whatever the work still awaits is dropped. The worker writes
//! the operation's end before the job's.
//!
//! Imports `store` only; never `broker` or `steps`.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::store::{now_millis, Store};

/// Why work on a job stopped before it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseLost {
    /// Another worker holds the job now (or it ended elsewhere).
    Taken,
    /// The store did not answer before the lease would lapse.
    Unrenewable,
}

/// How often a lease of `lease` is renewed: a third of it, so that two renewals may fail before
/// it lapses.
pub fn renew_every(lease: Duration) -> Duration {
    (lease / 3).max(Duration::from_millis(100))
}

/// Runs `work` while renewing `owner`'s lease on job `id` (claimed just now for `lease`);
/// `Err` when the lease was lost and `work` was dropped.
pub async fn holding<T>(
    store: &Store,
    id: &str,
    owner: &str,
    lease: Duration,
    work: impl Future<Output = T>,
) -> Result<T, LeaseLost> {
    let beat = keep(store, id, owner, lease);
    tokio::select! {
        // Work first: a job that released or finished itself has no lease left to renew, and
        // its end must not read as a lost lease.
        biased;
        out = work => Ok(out),
        lost = beat => Err(lost),
    }
}

/// Renews until the lease is lost; returns why.
async fn keep(store: &Store, id: &str, owner: &str, lease: Duration) -> LeaseLost {
    let every = renew_every(lease);
    let lease_ms = lease.as_millis() as i64;
    // The claim's own lease, counted from a moment no earlier than the claim.
    let mut held_until = Instant::now() + lease;
    loop {
        let asked = Instant::now();
        match store.renew_lease(id, owner, now_millis() + lease_ms).await {
            Ok(true) => held_until = asked + lease,
            Ok(false) => return LeaseLost::Taken,
            Err(e) => {
                if Instant::now() + every >= held_until {
                    tracing::warn!(job = %id, error = %e, "cannot renew the job's lease before it lapses; stopping the job here");
                    return LeaseLost::Unrenewable;
                }
                tracing::warn!(job = %id, error = %e, "cannot renew the job's lease; trying again");
            }
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_leaves_room_for_two_misses() {
        assert_eq!(renew_every(Duration::from_secs(15)), Duration::from_secs(5));
        assert_eq!(
            renew_every(Duration::from_millis(30)),
            Duration::from_millis(100)
        );
    }
}
