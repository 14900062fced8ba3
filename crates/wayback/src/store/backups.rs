//! Base backups as the broker saw them finish, and the one-backup-job-per-instance rule.
//!
//! The archive's `manifest.json` files are the truth about backups; these rows are the
//! schedule's memory (when was the newest, where did it end) and the metrics' source. A
//! partial unique index (migration 0003) lets at most one `backup` job per instance be
//! pending, so the schedule, a provision and an operator can all ask without doubling work.

use sqlx::Row;

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::Any;

use super::jobs::{insert_job, insert_job_sql};
use super::{now_millis, JobRecord, NewJob, Store, StoreError};
use crate::domain::{InstanceId, InstanceState};

/// One finished base backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRecord {
    pub instance_id: InstanceId,
    pub backup_id: String,
    pub reason: String,
    pub start_lsn: String,
    pub stop_lsn: String,
    pub stop_wal: String,
    /// Unix milliseconds.
    pub stop_time: i64,
    pub raw_bytes: i64,
    pub stored_bytes: i64,
    pub duration_ms: i64,
    pub stream_ms: i64,
    pub archive_wait_ms: i64,
    pub job_id: String,
    pub recorded_at: i64,
    /// The cluster's `pg_stat_wal.wal_bytes` just before the backup started; None when it was
    /// not known (an older agent, or recorded before the counter was).
    pub wal_bytes_at_start: Option<i64>,
}

/// Every ready instance's newest backup and pending backup job ([`Store::backup_overview`]).
#[derive(Debug, Default)]
pub struct BackupOverview {
    pub newest: std::collections::HashMap<InstanceId, BackupRecord>,
    /// Ids of the instances with a backup job waiting or running.
    pub pending: std::collections::HashSet<String>,
}

/// Inserts `job` unless the partial unique index says one like it is pending already.
fn insert_if_idle(job: &NewJob) -> Query<'_, Any, AnyArguments<'_>> {
    insert_job(concat!(insert_job_sql!(), " ON CONFLICT DO NOTHING"), job)
}

impl Store {
    /// Moves a provisioning instance to ready and enqueues its first backup, in one
    /// transaction. False (nothing changed) when it was no longer provisioning.
    pub async fn set_ready_with_backup(
        &self,
        id: &InstanceId,
        backup_job: &NewJob,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE instances SET state = $1, updated_at = $2 WHERE id = $3 AND state = $4",
        )
        .bind(InstanceState::Ready.as_str())
        .bind(now_millis())
        .bind(id.as_str())
        .bind(InstanceState::Provisioning.as_str())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        insert_if_idle(backup_job).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Enqueues a backup job unless one is already pending for the instance. Returns whether
    /// this one was enqueued.
    pub async fn enqueue_backup(&self, job: &NewJob) -> Result<bool, StoreError> {
        let done = insert_if_idle(job).execute(&self.pool).await?;
        Ok(done.rows_affected() == 1)
    }

    /// The pending (waiting or running) backup job of an instance, if any.
    pub async fn pending_backup_job(
        &self,
        id: &InstanceId,
    ) -> Result<Option<JobRecord>, StoreError> {
        sqlx::query(
            "SELECT * FROM jobs WHERE instance_id = $1 AND kind = 'backup' AND state = 'pending'",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?
        .map(|r| JobRecord::from_row(&r))
        .transpose()
    }

    /// Records a finished backup (a re-run of the same step records it once).
    pub async fn record_backup(&self, b: &BackupRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO backups (instance_id, backup_id, reason, start_lsn, stop_lsn, stop_wal, \
             stop_time, raw_bytes, stored_bytes, duration_ms, stream_ms, archive_wait_ms, job_id, \
             recorded_at, wal_bytes_at_start) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
             ON CONFLICT DO NOTHING",
        )
        .bind(b.instance_id.as_str())
        .bind(&b.backup_id)
        .bind(&b.reason)
        .bind(&b.start_lsn)
        .bind(&b.stop_lsn)
        .bind(&b.stop_wal)
        .bind(b.stop_time)
        .bind(b.raw_bytes)
        .bind(b.stored_bytes)
        .bind(b.duration_ms)
        .bind(b.stream_ms)
        .bind(b.archive_wait_ms)
        .bind(&b.job_id)
        .bind(b.recorded_at)
        .bind(b.wal_bytes_at_start)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The newest recorded backup of an instance.
    pub async fn latest_backup(&self, id: &InstanceId) -> Result<Option<BackupRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT * FROM backups WHERE instance_id = $1 ORDER BY backup_id DESC LIMIT 1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(backup_from_row).transpose()
    }

    /// The backup schedule's view of every ready instance, in two queries however many there
    /// are (issue 17 point 0: the supervisor's look is not a query per instance): each one's
    /// newest backup, and which have a backup job pending.
    pub async fn backup_overview(&self) -> Result<BackupOverview, StoreError> {
        let rows = sqlx::query(
            "SELECT b.* FROM backups b \
             JOIN (SELECT instance_id, max(backup_id) AS newest FROM backups \
                   WHERE instance_id IN (SELECT id FROM instances WHERE state = $1) \
                   GROUP BY instance_id) n \
               ON b.instance_id = n.instance_id AND b.backup_id = n.newest",
        )
        .bind(InstanceState::Ready.as_str())
        .fetch_all(&self.pool)
        .await?;
        let mut overview = BackupOverview::default();
        for row in &rows {
            let b = backup_from_row(row)?;
            overview.newest.insert(b.instance_id.clone(), b);
        }
        let pending =
            sqlx::query("SELECT instance_id FROM jobs WHERE kind = 'backup' AND state = 'pending'")
                .fetch_all(&self.pool)
                .await?;
        for row in &pending {
            let id: String = row.try_get("instance_id")?;
            overview.pending.insert(id);
        }
        Ok(overview)
    }

    /// The backup job `job_id` took, if it finished.
    pub async fn backup_of_job(&self, job_id: &str) -> Result<Option<BackupRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM backups WHERE job_id = $1")
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(backup_from_row).transpose()
    }
}

fn backup_from_row(r: &sqlx::any::AnyRow) -> Result<BackupRecord, StoreError> {
    let instance: String = r.try_get("instance_id")?;
    Ok(BackupRecord {
        instance_id: InstanceId::parse(instance.clone()).map_err(|e| StoreError::Corrupt {
            id: instance,
            message: e.to_string(),
        })?,
        backup_id: r.try_get("backup_id")?,
        reason: r.try_get("reason")?,
        start_lsn: r.try_get("start_lsn")?,
        stop_lsn: r.try_get("stop_lsn")?,
        stop_wal: r.try_get("stop_wal")?,
        stop_time: r.try_get("stop_time")?,
        raw_bytes: r.try_get("raw_bytes")?,
        stored_bytes: r.try_get("stored_bytes")?,
        duration_ms: r.try_get("duration_ms")?,
        stream_ms: r.try_get("stream_ms")?,
        archive_wait_ms: r.try_get("archive_wait_ms")?,
        job_id: r.try_get("job_id")?,
        recorded_at: r.try_get("recorded_at")?,
        wal_bytes_at_start: r.try_get("wal_bytes_at_start")?,
    })
}
