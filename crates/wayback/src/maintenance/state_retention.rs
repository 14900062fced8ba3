//! The state database's retention: one pass of [`Store::prune_finished`] with the cut-off
//! `state.retention_days` before `now`, then of [`Store::prune_drills`]: a restore drill's row
//! goes once it ended before the cut-off and its instance has [`DRILLS_KEPT`] newer ones (an
//! auditor's history of each instance stays, however often it is drilled; the archive keeps
//! every report anyway). Archive maintenance runs it every `retention.interval_secs`, in the
//! background (never in a request or a job lane). `now` is a parameter so tests can run a
//! month in a moment.

use chrono::{DateTime, Utc};

use crate::store::{Pruned, Store, StoreError};

/// Restore drills kept per instance whatever their age.
pub const DRILLS_KEPT: i64 = 50;

/// Deletes what finished more than `retention_days` before `now`; 0 days keeps everything.
pub async fn prune_state(
    store: &Store,
    now: DateTime<Utc>,
    retention_days: u64,
) -> Result<Pruned, StoreError> {
    if retention_days == 0 {
        return Ok(Pruned::default());
    }
    let days = i64::try_from(retention_days).unwrap_or(i64::MAX / 2 / 86_400_000);
    let cutoff = now - chrono::Duration::days(days.min(100_000));
    let mut pruned = store.prune_finished(cutoff.timestamp_millis()).await?;
    pruned.drills = store
        .prune_drills(cutoff.timestamp_millis(), DRILLS_KEPT)
        .await?;
    Ok(pruned)
}
