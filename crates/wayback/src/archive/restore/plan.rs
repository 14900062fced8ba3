//! What a restore will use: the source's complete base backups, its restore window (from
//! `archive::window`: manifests plus WAL frame headers, no payload), and the backup for a target.
//!
//! The window ends at the last archived *commit*, not at the last segment: an idle instance's
//! switched empty segments must not stretch it. A time target is reached when recovery sees a
//! commit *after* it (PostgreSQL stops before that commit; PostgreSQL 15 fails a recovery that
//! ends without reaching its target), so a target equal to the last commit is restored as
//! "latest" — which replays exactly the same transactions.

use chrono::{DateTime, Utc};

use super::{RestoreError, RestoreTarget};
use crate::archive::layout::{InstancePrefix, WalFileName};
use crate::archive::manifest::{BackupManifest, SettingFloors};
use crate::archive::window::{self, RestoreWindow};
use crate::storage::ObjectStore;

/// What [`plan`] decided.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub backup: BackupManifest,
    /// The largest of every backup's floors: settings may have grown since the chosen backup.
    pub floors: SettingFloors,
    /// What recovery is asked for (a time equal to the last commit becomes latest).
    pub target: RestoreTarget,
    /// WAL segments in the archive (what replay may have to fetch, at most).
    pub wal_segments: usize,
    /// The newest segment of the newest timeline: where "latest" must get to.
    pub newest_segment: Option<WalFileName>,
}

/// The window of `prefix`, refusing what a restore must not use: a manifest it cannot read
/// (an unknown format) and a backup of a cluster other than `sysid` (rule 8).
pub(super) async fn checked_window(
    store: &ObjectStore,
    prefix: &InstancePrefix,
    sysid: Option<u64>,
) -> Result<RestoreWindow, RestoreError> {
    let w = window::restore_window(store, prefix).await?;
    if let Some((id, why)) = w.unreadable_backups.first() {
        return Err(RestoreError::Refused(format!(
            "backup {id} under {}: {why}",
            prefix.as_str()
        )));
    }
    if let Some(sysid) = sysid {
        if let Some(m) = w.backups.iter().find(|m| m.system_identifier != sysid) {
            return Err(RestoreError::Refused(format!(
                "backup {} under {} belongs to database system {}, not {sysid}",
                m.backup_id,
                prefix.as_str(),
                m.system_identifier
            )));
        }
    }
    Ok(w)
}

/// The system identifier of the newest complete backup of `prefix` (for callers that know
/// only the prefix, such as the operator's `wayback restore`).
pub async fn source_system_identifier(
    store: &ObjectStore,
    prefix: &InstancePrefix,
) -> Result<Option<u64>, RestoreError> {
    let w = checked_window(store, prefix, None).await?;
    Ok(w.backups.last().map(|m| m.system_identifier))
}

/// Picks the backup for `target` (pure: see the module docs for the rules).
pub(super) fn choose(
    prefix: &InstancePrefix,
    backups: &[BackupManifest],
    target: RestoreTarget,
    latest_commit: Option<DateTime<Utc>>,
) -> Result<(BackupManifest, RestoreTarget), RestoreError> {
    let Some(newest) = backups.last() else {
        return Err(RestoreError::NoBackup {
            prefix: prefix.as_str().to_string(),
        });
    };
    let RestoreTarget::PointInTime(t) = target else {
        return Ok((newest.clone(), target));
    };
    let earliest = backups[0].stop_time;
    let outside = RestoreError::OutsideWindow {
        prefix: prefix.as_str().to_string(),
        target: t,
        earliest,
        latest: latest_commit,
    };
    match latest_commit {
        Some(latest) if t >= earliest && t <= latest => {}
        _ => return Err(outside),
    }
    let chosen = backups
        .iter()
        .rev()
        .find(|m| m.stop_time <= t)
        .expect("t >= the oldest stop_time");
    let effective = if Some(t) == latest_commit {
        RestoreTarget::Latest
    } else {
        target
    };
    Ok((chosen.clone(), effective))
}

fn max_floors(backups: &[BackupManifest]) -> SettingFloors {
    let mut f = SettingFloors::default();
    for m in backups {
        let g = &m.floors;
        f.max_connections = f.max_connections.max(g.max_connections);
        f.max_worker_processes = f.max_worker_processes.max(g.max_worker_processes);
        f.max_locks_per_transaction = f.max_locks_per_transaction.max(g.max_locks_per_transaction);
        f.max_prepared_transactions = f.max_prepared_transactions.max(g.max_prepared_transactions);
        f.max_wal_senders = f.max_wal_senders.max(g.max_wal_senders);
    }
    f
}

/// Everything [`super::restore`] needs to know before it creates anything.
pub(super) async fn plan(
    store: &ObjectStore,
    prefix: &InstancePrefix,
    sysid: u64,
    target: RestoreTarget,
) -> Result<Plan, RestoreError> {
    let w = checked_window(store, prefix, Some(sysid)).await?;
    let (backup, target) = choose(prefix, &w.backups, target, w.latest)?;
    Ok(Plan {
        floors: max_floors(&w.backups),
        backup,
        target,
        wal_segments: w.segments,
        newest_segment: w
            .newest_segment
            .as_deref()
            .and_then(|n| WalFileName::parse(n).ok()),
    })
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
