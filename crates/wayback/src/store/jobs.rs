//! Jobs: durable work claimed with a lease.
//!
//! A worker claims a runnable job by writing its own id and a lease deadline; it renews the
//! lease while a step runs. A broker that dies stops renewing, and once the lease has passed any
//! worker — the restarted broker or another one sharing the database — claims the job again and
//! re-runs its current step (steps are idempotent). A lease still running is never taken, not even
//! by its own owner: a job runs in one place at a time.

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, Transaction};

use super::{now_millis, JobRecord, NewJob, Store, StoreError};
use crate::domain::InstanceId;

/// States a job can be in. `pending` jobs are runnable once `run_after` and any lease have passed.
pub const JOB_PENDING: &str = "pending";
pub const JOB_DONE: &str = "done";
pub const JOB_FAILED: &str = "failed";

/// The statement that inserts a new, runnable job, as a literal (so that it can be extended
/// with `concat!`).
macro_rules! insert_job_sql {
    () => {
        "INSERT INTO jobs (id, kind, instance_id, binding_id, operation_id, payload, step, \
         state, attempts, run_after, lease_owner, lease_until, last_error, created_at, \
         updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, NULL, NULL, NULL, $8, $8)"
    };
}
pub(super) use insert_job_sql;

/// `sql` (an [`insert_job_sql!`] statement) with `job` bound, runnable from now.
pub(super) fn insert_job<'q>(sql: &'q str, job: &'q NewJob) -> Query<'q, Any, AnyArguments<'q>> {
    sqlx::query(sql)
        .bind(&job.id)
        .bind(&job.kind)
        .bind(job.instance_id.as_str())
        .bind(job.binding_id.as_ref().map(|b| b.as_str().to_string()))
        .bind(job.operation_id.clone())
        .bind(job.payload.to_string())
        .bind(&job.first_step)
        .bind(now_millis())
}

impl Store {
    pub(crate) async fn insert_job_tx(
        tx: &mut Transaction<'_, Any>,
        job: &NewJob,
    ) -> Result<(), StoreError> {
        insert_job(insert_job_sql!(), job)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Claims the oldest runnable job (or the job `only`, if given) for `owner` until
    /// `lease_until`. None when there is nothing to do.
    pub async fn claim_job(
        &self,
        owner: &str,
        lease_until: i64,
        only: Option<&str>,
    ) -> Result<Option<JobRecord>, StoreError> {
        let now = now_millis();
        let candidate: Option<(String,)> = match only {
            Some(id) => sqlx::query_as(
                "SELECT id FROM jobs WHERE id = $1 AND state = 'pending' \
                 AND (lease_until IS NULL OR lease_until < $2)",
            )
            .bind(id)
            .bind(now),
            None => sqlx::query_as(
                "SELECT id FROM jobs WHERE state = 'pending' AND run_after <= $1 \
                 AND (lease_until IS NULL OR lease_until < $1) ORDER BY created_at LIMIT 1",
            )
            .bind(now),
        }
        .fetch_optional(&self.pool)
        .await?;
        match candidate {
            Some((id,)) => self.take_lease(owner, lease_until, &id, now).await,
            None => Ok(None),
        }
    }

    /// Claims the oldest runnable job of one of `kinds` (a worker's lane) for `owner` until
    /// `lease_until`. None when there is nothing to do.
    pub async fn claim_job_of(
        &self,
        owner: &str,
        lease_until: i64,
        kinds: &[&str],
    ) -> Result<Option<JobRecord>, StoreError> {
        if kinds.is_empty() {
            return Ok(None);
        }
        let now = now_millis();
        let list = (0..kinds.len())
            .map(|i| format!("${}", i + 2))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT id FROM jobs WHERE state = 'pending' AND run_after <= $1 \
             AND (lease_until IS NULL OR lease_until < $1) AND kind IN ({list}) \
             ORDER BY created_at LIMIT 1"
        );
        let mut query = sqlx::query_as::<_, (String,)>(&sql).bind(now);
        for kind in kinds {
            query = query.bind(*kind);
        }
        match query.fetch_optional(&self.pool).await? {
            Some((id,)) => self.take_lease(owner, lease_until, &id, now).await,
            None => Ok(None),
        }
    }

    /// Compare-and-set: only one claimer wins a job whose lease is free (a held lease, the
    /// claimer's own included, is never taken).
    async fn take_lease(
        &self,
        owner: &str,
        lease_until: i64,
        id: &str,
        now: i64,
    ) -> Result<Option<JobRecord>, StoreError> {
        let row = sqlx::query(
            "UPDATE jobs SET lease_owner = $1, lease_until = $2, updated_at = $3 \
             WHERE id = $4 AND state = 'pending' AND (lease_until IS NULL OR lease_until < $3) \
             RETURNING *",
        )
        .bind(owner)
        .bind(lease_until)
        .bind(now)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| JobRecord::from_row(&r)).transpose()
    }

    /// Extends a lease; false when the job is no longer ours.
    pub async fn renew_lease(
        &self,
        id: &str,
        owner: &str,
        lease_until: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE jobs SET lease_until = $1 WHERE id = $2 AND lease_owner = $3 AND state = 'pending'",
        )
        .bind(lease_until)
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records the next step (attempts reset) while keeping the lease.
    pub async fn advance_job(&self, id: &str, owner: &str, step: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE jobs SET step = $1, attempts = 0, last_error = NULL, updated_at = $2 \
             WHERE id = $3 AND lease_owner = $4 AND state = 'pending'",
        )
        .bind(step)
        .bind(now_millis())
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Releases the job to be retried at `run_after`, counting the failed attempt.
    pub async fn retry_job(
        &self,
        id: &str,
        owner: &str,
        attempts: u32,
        run_after: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET attempts = $1, run_after = $2, last_error = $3, lease_owner = NULL, \
             lease_until = NULL, updated_at = $4 WHERE id = $5 AND lease_owner = $6",
        )
        .bind(i64::from(attempts))
        .bind(run_after)
        .bind(error)
        .bind(now_millis())
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Ends a job (`done` or `failed`) and releases it.
    pub async fn finish_job(
        &self,
        id: &str,
        state: &str,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET state = $1, last_error = COALESCE($2, last_error), lease_owner = NULL, \
             lease_until = NULL, updated_at = $3 WHERE id = $4",
        )
        .bind(state)
        .bind(error)
        .bind(now_millis())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn get_job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        sqlx::query("SELECT * FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| JobRecord::from_row(&r))
            .transpose()
    }

    /// Unfinished jobs of an instance other than `except`.
    pub async fn other_pending_jobs(
        &self,
        instance: &InstanceId,
        except: &str,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM jobs WHERE instance_id = $1 AND id <> $2 AND state = 'pending'",
        )
        .bind(instance.as_str())
        .bind(except)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(JobRecord::from_row).collect()
    }
}
