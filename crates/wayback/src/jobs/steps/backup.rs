//! The `backup` job: one base backup of one ready instance, and when one is due.
//!
//! Backups are jobs like any operation, so that one interrupted by a broker restart is taken
//! again, but they have no OSB operation: the platform never polls them. They are enqueued at
//! the end of provision (in the transaction that makes the instance ready, as a job of its own so
//! that provisioning does not wait for it), by the supervisor when [`backup_due`] says so, and by
//! the operator (`wayback backup`). At most one per instance is pending (a unique index).
//!
//! Backups run in the worker's background lane: a broker takes at most
//! `jobs.background_concurrency` (default 2) at once — each holds a few 64 MiB parts in memory and
//! keeps a core busy compressing — and never in a slot a user's operation could use.

use std::time::Duration;

use crate::archive::layout::InstancePrefix;
use crate::archive::{BackupOptions, BackupReport};
use crate::catalog::ArchivePolicy;
use crate::context::AppContext;
use crate::domain::{InstanceId, InstanceState, SpaceGuid};
use crate::jobs::model::{Job, JobSpec, Step};
use crate::jobs::{Outcome, StepError, StepResult};
use crate::runtime::WalPosition;
use crate::store::{now_millis, BackupRecord, InstanceRecord, NewJob};

/// A backup job for `instance`; `reason` is `provision`, `schedule`, `wal-volume` or `manual`.
pub fn backup_job(instance: &InstanceId, reason: &str) -> NewJob {
    JobSpec::backup(reason).to_row(
        format!("backup-{}", uuid::Uuid::new_v4()),
        instance,
        None,
        None,
    )
}

/// Less real WAL than this never makes a backup due, whatever the database's size: a restore
/// fetches whole 16 MiB segments anyway, and the few hundred bytes of records a backup's own
/// checkpoint and a switch write must never add up to the next backup.
pub const WAL_VOLUME_FLOOR_BYTES: u64 = 16 << 20;

/// Why a backup is due now, if it is: none yet; the newest is older than the plan's
/// `base_backup_every_hours` (the schedule); or, no sooner than `base_backup_min_minutes` after
/// it, the WAL records written since it started passed the plan's share of the databases' size
/// (a restore would replay more than it copies) and [`WAL_VOLUME_FLOOR_BYTES`].
///
/// The WAL is counted in bytes of records (`pg_stat_wal.wal_bytes`), not as an LSN distance:
/// every segment switch (the archive interval's, and each backup's own) pads the segment to its
/// end, up to 16 MiB of LSN that nobody wrote, which is more than half a small database. Measured
/// by LSN, every backup made the next one due. When the count is unknown (an older agent, a
/// backup recorded before it was, or a counter that went back after a crash or a reset) no
/// backup is due for WAL volume; the schedule still applies.
pub fn backup_due(
    policy: &ArchivePolicy,
    newest: Option<&BackupRecord>,
    now_ms: i64,
    position: Option<WalPosition>,
) -> Option<&'static str> {
    let Some(newest) = newest else {
        return Some("schedule");
    };
    let age_ms = now_ms - newest.stop_time;
    let every_ms = (policy.base_backup_every_hours as i64).saturating_mul(3_600_000);
    if age_ms >= every_ms {
        return Some("schedule");
    }
    let min_ms = (policy.base_backup_min_minutes as i64).saturating_mul(60_000);
    if age_ms < min_ms {
        return None;
    }
    let position = position?;
    let written = wal_written_since(newest, &position)?;
    let limit = (policy.base_backup_wal_share * position.database_bytes as f64)
        .max(WAL_VOLUME_FLOOR_BYTES as f64);
    (written as f64 > limit).then_some("wal-volume")
}

/// Bytes of WAL records written since `newest` started, when both counts are known and the
/// counter did not go back (a crash or `pg_stat_reset_shared('wal')` restarts it at 0).
pub fn wal_written_since(newest: &BackupRecord, position: &WalPosition) -> Option<u64> {
    let then = u64::try_from(newest.wal_bytes_at_start?).ok()?;
    position.wal_bytes?.checked_sub(then)
}

pub async fn backup_step(ctx: &AppContext, job: &Job, reason: &str) -> StepResult {
    let Some(instance) = ctx.store.get_instance(&job.instance_id).await? else {
        return Ok(Outcome::Cancelled("the instance is unknown".into()));
    };
    match instance.state {
        InstanceState::Ready => {}
        // A plan change may restart the cluster under the backup; come back when it is done.
        InstanceState::Provisioning | InstanceState::Updating => {
            return Ok(Outcome::Wait(Duration::from_secs(5)))
        }
        other => {
            return Ok(Outcome::Cancelled(format!(
                "no backup: the instance is {}",
                other.as_str()
            )))
        }
    }
    if instance.leader_id.is_some() {
        return Ok(Outcome::Cancelled(
            "no backup: a follower has no archive of its own (its leader's backups are its \
             history)"
                .into(),
        ));
    }
    if job.step != Step::TakeBackup {
        return Err(StepError::Permanent {
            user_message: "internal error".into(),
            source: anyhow::anyhow!("{} is not a step of this job", job.step),
        });
    }
    // Stopped when idle (issue 17): the supervisor schedules none then, but one queued just
    // before the stop, or the one a failed restore drill asks for, is taken: the cluster is
    // started for it, as a bind starts it, and stops again once idle.
    crate::jobs::idle::unpark(ctx, &instance, &instance.id).await?;
    take_and_record(ctx, &job.id, &instance, reason).await?;
    Ok(Outcome::Next)
}

/// Takes a base backup of `instance` and records it (for the backup job, a deprovision that
/// finds none, and an HA provision's first). An HA instance's backup is taken from a healthy
/// standby when there is one, else from the member that leads now
/// (`jobs::ha::backup_members`); a standby's backup that fails is taken from the leader at once.
pub async fn take_and_record(
    ctx: &AppContext,
    job_id: &str,
    instance: &InstanceRecord,
    reason: &str,
) -> Result<BackupReport, StepError> {
    let (key, standby) = crate::jobs::ha::backup_members(ctx, &instance.id)
        .await
        .map_err(StepError::transient)?;
    // The WAL counter before the backup starts (the leader's: a standby writes no WAL of its
    // own): the next backup is due for the WAL a restore from this one would replay, which
    // begins at its start. Best effort: without it only the schedule applies until the next
    // backup.
    let wal_bytes_at_start = match ctx.runtime.wal_position(&key).await {
        Ok(p) => p.wal_bytes.and_then(|w| i64::try_from(w).ok()),
        Err(e) => {
            tracing::debug!(instance = %instance.id, error = %e, "cannot read the WAL counter before a backup");
            None
        }
    };
    let space = SpaceGuid::parse(instance.space_guid.clone()).map_err(StepError::transient)?;
    let prefix = InstancePrefix::new(&space, &instance.id);
    let options = options(ctx, reason);
    let from_standby = match &standby {
        Some(standby) => match ctx
            .runtime
            .take_standby_backup(standby, &key, &prefix, &options)
            .await
        {
            Ok(report) => Some((report, standby)),
            Err(e) => {
                tracing::warn!(instance = %instance.id, standby = %standby, error = %e, "a base backup from the standby failed; taking it from the leader");
                None
            }
        },
        None => None,
    };
    let (report, from) = match from_standby {
        Some(taken) => taken,
        None => (
            ctx.runtime.take_backup(&key, &prefix, &options).await?,
            &key,
        ),
    };
    let m = &report.manifest;
    ctx.store
        .record_backup(&BackupRecord {
            instance_id: instance.id.clone(),
            backup_id: m.backup_id.clone(),
            reason: m.reason.clone(),
            start_lsn: m.start_lsn.clone(),
            stop_lsn: m.stop_lsn.clone(),
            stop_wal: m.stop_wal.clone(),
            stop_time: m.stop_time.timestamp_millis(),
            raw_bytes: m.raw_bytes as i64,
            stored_bytes: m.stored_bytes as i64,
            duration_ms: report.timings.total_ms as i64,
            stream_ms: report.timings.stream_ms as i64,
            archive_wait_ms: report.timings.archive_wait_ms as i64,
            job_id: job_id.to_string(),
            recorded_at: now_millis(),
            wal_bytes_at_start,
        })
        .await?;
    ctx.metrics.backup_finished(
        instance.id.as_str(),
        m.stop_time.timestamp_millis() as f64 / 1000.0,
        m.stored_bytes,
    );
    tracing::info!(
        instance = %instance.id,
        backup = %m.backup_id,
        reason = %m.reason,
        raw_bytes = m.raw_bytes,
        stored_bytes = m.stored_bytes,
        parts = m.parts.len(),
        stop_lsn = %m.stop_lsn,
        from = %from,
        total_ms = report.timings.total_ms,
        stream_ms = report.timings.stream_ms,
        archive_wait_ms = report.timings.archive_wait_ms,
        "base backup taken"
    );
    Ok(report)
}

/// The options the settings give.
pub fn options(ctx: &AppContext, reason: &str) -> BackupOptions {
    BackupOptions::from_settings(&ctx.settings, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;
    const MIB: u64 = 1 << 20;

    fn newest(stop_time: i64, wal_bytes_at_start: Option<i64>) -> BackupRecord {
        BackupRecord {
            instance_id: InstanceId::parse("i1").unwrap(),
            backup_id: "20261121T180102003Z".into(),
            reason: "provision".into(),
            start_lsn: "0/2000028".into(),
            stop_lsn: "0/2000100".into(),
            stop_wal: "000000010000000000000002".into(),
            stop_time,
            raw_bytes: 1,
            stored_bytes: 1,
            duration_ms: 1,
            stream_ms: 1,
            archive_wait_ms: 0,
            job_id: "j".into(),
            recorded_at: stop_time,
            wal_bytes_at_start,
        }
    }

    /// `lsn` far ahead of the backup's stop (switch padding), `written` bytes of records.
    fn pos(lsn: u64, db: u64, written: Option<u64>) -> Option<WalPosition> {
        Some(WalPosition {
            current_lsn: lsn,
            database_bytes: db,
            wal_bytes: written,
        })
    }

    #[test]
    fn due_when_none_or_old() {
        let policy = ArchivePolicy::default(); // 24 h, share 0.5, at least 30 min apart
        assert_eq!(backup_due(&policy, None, 0, None), Some("schedule"));
        let b = newest(0, Some(1000));
        assert_eq!(backup_due(&policy, Some(&b), 23 * HOUR, None), None);
        assert_eq!(
            backup_due(&policy, Some(&b), 24 * HOUR, None),
            Some("schedule")
        );
    }

    #[test]
    fn due_when_the_records_written_pass_the_share() {
        let policy = ArchivePolicy::default();
        let b = newest(0, Some(1000));
        // 100 MiB of records since the backup, 300 MiB database: under half.
        let under = pos(0x1000_0000, 300 * MIB, Some(1000 + 100 * MIB));
        assert_eq!(backup_due(&policy, Some(&b), HOUR, under), None);
        let over = pos(0x1000_0000, 300 * MIB, Some(1000 + 200 * MIB));
        assert_eq!(
            backup_due(&policy, Some(&b), HOUR, over),
            Some("wal-volume")
        );
    }

    /// The loop issue 12 found: a 30 MiB instance whose LSN moved a whole segment past the
    /// backup (its own switch, the archive interval's switches) with nothing written.
    #[test]
    fn switch_padding_and_backup_records_never_make_one_due() {
        let policy = ArchivePolicy::default();
        let b = newest(0, Some(5_000_000));
        for minutes in [1, 2, 31, 60, 600, 1439] {
            let now = minutes * 60_000;
            // LSN 64 MiB on, 400 bytes of checkpoint and switch records.
            let idle = pos(0x400_0000, 30 * MIB, Some(5_000_400));
            assert_eq!(backup_due(&policy, Some(&b), now, idle), None, "{minutes}");
        }
        // 10 MiB of real WAL is more than half a 16 MiB database, but less than a segment.
        let small = pos(0, 16 * MIB, Some(5_000_000 + 10 * MIB));
        assert_eq!(backup_due(&policy, Some(&b), HOUR, small), None);
        let more = pos(0, 16 * MIB, Some(5_000_000 + 17 * MIB));
        assert_eq!(
            backup_due(&policy, Some(&b), HOUR, more),
            Some("wal-volume")
        );
    }

    #[test]
    fn never_sooner_than_the_plans_minimum() {
        let policy = ArchivePolicy {
            base_backup_min_minutes: 30,
            ..ArchivePolicy::default()
        };
        let b = newest(0, Some(0));
        let busy = pos(0, 30 * MIB, Some(1 << 30));
        assert_eq!(backup_due(&policy, Some(&b), 29 * 60_000, busy), None);
        assert_eq!(
            backup_due(&policy, Some(&b), 30 * 60_000, busy),
            Some("wal-volume")
        );
    }

    #[test]
    fn an_unknown_or_reset_counter_leaves_only_the_schedule() {
        let policy = ArchivePolicy::default();
        let busy = |written| pos(1 << 40, 30 * MIB, written);
        // Recorded before the counter was, an older agent, a counter that went back.
        let old = newest(0, None);
        assert_eq!(
            backup_due(&policy, Some(&old), HOUR, busy(Some(1 << 30))),
            None
        );
        let b = newest(0, Some(1 << 30));
        assert_eq!(backup_due(&policy, Some(&b), HOUR, busy(None)), None);
        assert_eq!(backup_due(&policy, Some(&b), HOUR, busy(Some(5))), None);
        assert_eq!(
            backup_due(&policy, Some(&b), 24 * HOUR, busy(Some(5))),
            Some("schedule")
        );
    }
}
