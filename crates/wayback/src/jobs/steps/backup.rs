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

use crate::archive::layout::{parse_lsn, InstancePrefix};
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

/// Why a backup is due now, if it is: none yet, the newest is older than the plan's interval,
/// or the WAL written since its end passed the plan's share of the database size (a restore
/// would replay more than it copies).
pub fn backup_due(
    policy: &ArchivePolicy,
    newest: Option<&BackupRecord>,
    now_ms: i64,
    position: Option<WalPosition>,
) -> Option<&'static str> {
    let Some(newest) = newest else {
        return Some("schedule");
    };
    let every_ms = (policy.base_backup_every_hours as i64).saturating_mul(3_600_000);
    if now_ms - newest.stop_time >= every_ms {
        return Some("schedule");
    }
    let position = position?;
    let since = position
        .current_lsn
        .saturating_sub(parse_lsn(&newest.stop_lsn).unwrap_or(0));
    let limit = policy.base_backup_wal_share * position.database_bytes as f64;
    (since as f64 > limit).then_some("wal-volume")
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
    if job.step != Step::TakeBackup {
        return Err(StepError::Permanent {
            user_message: "internal error".into(),
            source: anyhow::anyhow!("{} is not a step of this job", job.step),
        });
    }
    take_and_record(ctx, &job.id, &instance, reason).await?;
    Ok(Outcome::Next)
}

/// Takes a base backup of `instance` and records it (for the backup job, and for a deprovision
/// that finds none).
pub async fn take_and_record(
    ctx: &AppContext,
    job_id: &str,
    instance: &InstanceRecord,
    reason: &str,
) -> Result<(), StepError> {
    let report = take(ctx, instance, reason).await?;
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
        total_ms = report.timings.total_ms,
        stream_ms = report.timings.stream_ms,
        archive_wait_ms = report.timings.archive_wait_ms,
        "base backup taken"
    );
    Ok(())
}

/// The options the settings give.
pub fn options(ctx: &AppContext, reason: &str) -> BackupOptions {
    BackupOptions::from_settings(&ctx.settings, reason)
}

async fn take(
    ctx: &AppContext,
    instance: &InstanceRecord,
    reason: &str,
) -> Result<BackupReport, StepError> {
    let space = SpaceGuid::parse(instance.space_guid.clone()).map_err(StepError::transient)?;
    let prefix = InstancePrefix::new(&space, &instance.id);
    let options = options(ctx, reason);
    Ok(ctx
        .runtime
        .take_backup(&instance.id, &prefix, &options)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn newest(stop_time: i64, stop_lsn: &str) -> BackupRecord {
        BackupRecord {
            instance_id: InstanceId::parse("i1").unwrap(),
            backup_id: "20261121T180102003Z".into(),
            reason: "provision".into(),
            start_lsn: "0/2000028".into(),
            stop_lsn: stop_lsn.into(),
            stop_wal: "000000010000000000000002".into(),
            stop_time,
            raw_bytes: 1,
            stored_bytes: 1,
            duration_ms: 1,
            stream_ms: 1,
            archive_wait_ms: 0,
            job_id: "j".into(),
            recorded_at: stop_time,
        }
    }

    #[test]
    fn due_when_none_old_or_much_wal() {
        let policy = ArchivePolicy::default(); // 24 h, share 0.5
        let hour = 3_600_000;
        let pos = |lsn: u64, db: u64| {
            Some(WalPosition {
                current_lsn: lsn,
                database_bytes: db,
            })
        };
        assert_eq!(backup_due(&policy, None, 0, None), Some("schedule"));
        let b = newest(0, "0/10000000");
        assert_eq!(backup_due(&policy, Some(&b), 23 * hour, None), None);
        assert_eq!(
            backup_due(&policy, Some(&b), 24 * hour, None),
            Some("schedule")
        );
        // 100 MiB of WAL since the backup, 300 MiB database: under half.
        assert_eq!(
            backup_due(
                &policy,
                Some(&b),
                hour,
                pos(0x1000_0000 + (100 << 20), 300 << 20)
            ),
            None
        );
        assert_eq!(
            backup_due(
                &policy,
                Some(&b),
                hour,
                pos(0x1000_0000 + (200 << 20), 300 << 20)
            ),
            Some("wal-volume")
        );
    }
}
