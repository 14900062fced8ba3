//! Restore drills (issue 18) as the broker ran them: one row per drill job (migration 0011),
//! `running` until the drill ends, then `passed` or `failed` with its whole report as JSON.
//! A drill cancelled to give way to a user's restore keeps its row as `cancelled` under a job id
//! of its own (`<job>:cancelled:<ms>`), so that the job's next attempt starts a fresh row; a
//! cancelled drill proves nothing and fails nothing: the schedule, the metrics and the API's
//! "verified" look past it.
//!
//! The rows are the schedule's memory (which instance was drilled last, and whether it
//! passed), the per-machine limit's count, and the source of the API's, the CLI's and the
//! metrics' drill fields. The archive holds a copy of each report next to `instance.json`,
//! for auditors and `wayback reindex`. A partial unique index lets at most one `drill` job per
//! instance be pending.

use std::collections::HashMap;

use sqlx::Row;

use super::jobs::{insert_job, insert_job_sql};
use super::{InstanceRecord, NewJob, Store, StoreError};
use crate::domain::{InstanceId, InstanceState};

/// One drill as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrillRecord {
    pub job_id: String,
    pub instance_id: InstanceId,
    /// The machine it ran on: the agent's name, or "" for the broker's own.
    pub agent: String,
    /// Unix milliseconds.
    pub started_at: i64,
    pub finished_at: Option<i64>,
    /// `running`, `passed`, `failed` or `cancelled`.
    pub result: String,
    /// The drill's report (`wayback_api::drills::DrillReport`) as JSON text, once finished.
    pub report: Option<String>,
}

impl DrillRecord {
    fn from_row(row: &sqlx::any::AnyRow) -> Result<Self, StoreError> {
        let id: String = row.try_get("instance_id")?;
        Ok(Self {
            job_id: row.try_get("job_id")?,
            instance_id: InstanceId::parse(id.clone()).map_err(|e| StoreError::Corrupt {
                id,
                message: format!("drills.instance_id: {e}"),
            })?,
            agent: row.try_get("agent")?,
            started_at: row.try_get("started_at")?,
            finished_at: row.try_get("finished_at")?,
            result: row.try_get("result")?,
            report: row.try_get("report")?,
        })
    }

    pub fn passed(&self) -> bool {
        self.result == "passed"
    }
}

/// An instance whose archive drills may prove: live, or deleted and not yet reaped.
#[derive(Debug, Clone)]
pub struct DrillCandidate {
    pub instance: InstanceRecord,
    /// Its newest finished drill.
    pub last: Option<DrillRecord>,
}

impl Store {
    /// Enqueues a drill job unless one is already pending for the instance; whether it was.
    pub async fn enqueue_drill(&self, job: &NewJob) -> Result<bool, StoreError> {
        let done = insert_job(concat!(insert_job_sql!(), " ON CONFLICT DO NOTHING"), job)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The pending (waiting or running) drill job of an instance, if any.
    pub async fn pending_drill_job(
        &self,
        id: &InstanceId,
    ) -> Result<Option<super::JobRecord>, StoreError> {
        sqlx::query(
            "SELECT * FROM jobs WHERE instance_id = $1 AND kind = 'drill' AND state = 'pending'",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?
        .map(|r| super::JobRecord::from_row(&r))
        .transpose()
    }

    /// Records that a drill job starts (again, after a restart: the row is reset).
    pub async fn begin_drill(
        &self,
        job_id: &str,
        instance: &InstanceId,
        agent: &str,
        started_at: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM drills WHERE job_id = $1")
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO drills (job_id, instance_id, agent, started_at, finished_at, result, \
             report) VALUES ($1, $2, $3, $4, NULL, 'running', NULL)",
        )
        .bind(job_id)
        .bind(instance.as_str())
        .bind(agent)
        .bind(started_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records how a drill ended.
    pub async fn finish_drill(
        &self,
        job_id: &str,
        passed: bool,
        finished_at: i64,
        report_json: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE drills SET result = $1, finished_at = $2, report = $3 WHERE job_id = $4",
        )
        .bind(if passed { "passed" } else { "failed" })
        .bind(finished_at)
        .bind(report_json)
        .bind(job_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records that a running drill was cancelled (issue 18 point 4): its row is kept as
    /// `cancelled`, moved aside to its own key so the job's next attempt begins a new one.
    pub async fn cancel_drill(
        &self,
        job_id: &str,
        finished_at: i64,
        report_json: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE drills SET job_id = $1, result = 'cancelled', finished_at = $2, report = $3 \
             WHERE job_id = $4 AND result = 'running'",
        )
        .bind(format!("{job_id}:cancelled:{finished_at}"))
        .bind(finished_at)
        .bind(report_json)
        .bind(job_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes drill rows that ended before `cutoff` (Unix ms) beyond each instance's newest
    /// `keep`, and rows left `running` before `cutoff` by a job no longer pending (a drill
    /// whose job failed or was cancelled outright); how many it deleted. One statement.
    pub async fn prune_drills(&self, cutoff: i64, keep: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "DELETE FROM drills WHERE started_at < $1 \
             AND ((finished_at IS NOT NULL AND finished_at < $1 \
                   AND (SELECT count(*) FROM drills n \
                        WHERE n.instance_id = drills.instance_id \
                        AND (n.started_at > drills.started_at \
                             OR (n.started_at = drills.started_at \
                                 AND n.job_id > drills.job_id))) >= $2) \
                  OR (finished_at IS NULL AND NOT EXISTS \
                      (SELECT 1 FROM jobs j WHERE j.id = drills.job_id \
                       AND j.state = 'pending')))",
        )
        .bind(cutoff)
        .bind(keep)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Records a finished drill read back from the archive (`wayback reindex`) unless one of
    /// the instance's drills started at the same moment is recorded; whether it was added.
    pub async fn record_archived_drill(
        &self,
        instance: &InstanceId,
        started_at: i64,
        finished_at: i64,
        passed: bool,
        report_json: &str,
    ) -> Result<bool, StoreError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM drills WHERE instance_id = $1 AND started_at = $2",
        )
        .bind(instance.as_str())
        .bind(started_at)
        .fetch_one(&self.pool)
        .await?;
        if n > 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO drills (job_id, instance_id, agent, started_at, finished_at, result, \
             report) VALUES ($1, $2, '', $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(format!("archive-{instance}-{started_at}"))
        .bind(instance.as_str())
        .bind(started_at)
        .bind(finished_at)
        .bind(if passed { "passed" } else { "failed" })
        .bind(report_json)
        .execute(&self.pool)
        .await?;
        Ok(true)
    }

    /// Drills running on `agent` ("" for the broker's own machine) other than `job_id`'s: rows
    /// still `running` whose job is still pending (a job that ended without finishing its row
    /// holds no room).
    pub async fn running_drills_on(&self, agent: &str, job_id: &str) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM drills d JOIN jobs j ON j.id = d.job_id \
             WHERE d.result = 'running' AND j.state = 'pending' AND d.agent = $1 \
             AND d.job_id <> $2",
        )
        .bind(agent)
        .bind(job_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(n)
    }

    /// An instance's drills, newest first, at most `limit`.
    pub async fn drills_of(
        &self,
        id: &InstanceId,
        limit: i64,
    ) -> Result<Vec<DrillRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM drills WHERE instance_id = $1 ORDER BY started_at DESC, job_id LIMIT $2",
        )
        .bind(id.as_str())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(DrillRecord::from_row).collect()
    }

    /// Every instance's newest finished drill (a cancelled one is not).
    pub async fn last_drills(&self) -> Result<HashMap<InstanceId, DrillRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM drills WHERE finished_at IS NOT NULL AND result <> 'cancelled' \
             ORDER BY started_at, job_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = HashMap::new();
        for row in &rows {
            let r = DrillRecord::from_row(row)?;
            out.insert(r.instance_id.clone(), r);
        }
        Ok(out)
    }

    /// Per instance: the newest passed drill's end (Unix ms), the newest drill's duration (ms)
    /// and how many drills failed; for the metrics.
    pub async fn drill_stats(&self) -> Result<Vec<(InstanceId, DrillStats)>, StoreError> {
        let mut stats: HashMap<InstanceId, DrillStats> = HashMap::new();
        let rows = sqlx::query(
            "SELECT * FROM drills WHERE finished_at IS NOT NULL AND result <> 'cancelled' \
             ORDER BY started_at, job_id",
        )
        .fetch_all(&self.pool)
        .await?;
        for row in &rows {
            let r = DrillRecord::from_row(row)?;
            let s = stats.entry(r.instance_id.clone()).or_default();
            let end = r.finished_at.unwrap_or(r.started_at);
            s.last_duration_ms = Some(end - r.started_at);
            if r.passed() {
                s.last_success_ms = Some(end);
            } else {
                s.failures += 1;
            }
        }
        let mut out: Vec<_> = stats.into_iter().collect();
        out.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        Ok(out)
    }

    /// Instances drills may prove (ready ones that are not followers, and deleted ones whose
    /// archive is not reaped), each with its newest finished drill, in creation order.
    pub async fn drill_candidates(&self) -> Result<Vec<DrillCandidate>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM instances WHERE leader_id IS NULL \
             AND (state = $1 OR (state = $2 AND reaped_at IS NULL)) ORDER BY created_at",
        )
        .bind(InstanceState::Ready.as_str())
        .bind(InstanceState::Deleted.as_str())
        .fetch_all(&self.pool)
        .await?;
        let mut last = self.last_drills().await?;
        rows.iter()
            .map(|row| {
                let instance = InstanceRecord::from_row(row)?;
                let last = last.remove(&instance.id);
                Ok(DrillCandidate { instance, last })
            })
            .collect()
    }

    /// Users' restores (clone-from and follower provisions) pending on `agent` ("" for the
    /// broker's own machine, and for those not placed yet): drills give way to them.
    pub async fn user_restores_pending_on(&self, agent: &str) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM jobs j JOIN instances i ON i.id = j.instance_id \
             WHERE j.kind = 'provision' AND j.state = 'pending' \
             AND (j.payload LIKE '%\"clone\"%' OR j.payload LIKE '%\"follow\"%') \
             AND COALESCE(i.agent, '') = $1",
        )
        .bind(agent)
        .fetch_one(&self.pool)
        .await?;
        Ok(n)
    }

    /// The machines ("" for the broker's own) of the pending drill jobs, one entry per job.
    pub async fn pending_drill_machines(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(Option<String>,)> = sqlx::query_as(
            "SELECT i.agent FROM jobs j JOIN instances i ON i.id = j.instance_id \
             WHERE j.kind = 'drill' AND j.state = 'pending'",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(a,)| a.unwrap_or_default()).collect())
    }
}

/// One instance's drills in numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrillStats {
    pub last_success_ms: Option<i64>,
    pub last_duration_ms: Option<i64>,
    pub failures: i64,
}
