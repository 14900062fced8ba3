//! Idle stop (issue 17): when each instance was stopped for being idle (`instances.stopped_at`,
//! migration 0014), why its last wake failed (`wake_error`, `wake_error_at`, migration 0015),
//! and the one-idle-stop-job rule.
//!
//! The runtime's parked mark is the truth about whether a cluster runs; `stopped_at` is what
//! the broker shows (OSB fetch, its API, the `wayback_instances_stopped` gauge) and is set by
//! the `idle_stop` job and the supervisor, cleared on a wake. A failed wake leaves the instance
//! stopped and records why; the next start that works forgets both at once.

use super::jobs::insert_job;
use super::{NewJob, Store, StoreError};
use crate::domain::InstanceId;

impl Store {
    /// Records that `id`'s cluster was stopped for being idle at `at` (Unix ms); an earlier
    /// time already recorded is kept.
    pub async fn set_stopped_at(&self, id: &InstanceId, at: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE instances SET stopped_at = COALESCE(stopped_at, $1) WHERE id = $2")
            .bind(at)
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets that `id` was stopped (it runs again), and why a wake of it failed if one did;
    /// true when either was recorded.
    pub async fn clear_stopped_at(&self, id: &InstanceId) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE instances SET stopped_at = NULL, wake_error = NULL, wake_error_at = NULL \
             WHERE id = $1 AND (stopped_at IS NOT NULL OR wake_error IS NOT NULL)",
        )
        .bind(id.as_str())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records that a client's connection could not wake `id` at `at` (Unix ms), and why
    /// (`reason`: what the clients were told, never a path); replaces an earlier failure.
    pub async fn set_wake_error(
        &self,
        id: &InstanceId,
        reason: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE instances SET wake_error = $1, wake_error_at = $2 WHERE id = $3")
            .bind(reason)
            .bind(at)
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Live instances recorded as stopped for being idle (the `wayback_instances_stopped`
    /// gauge).
    pub async fn stopped_count(&self) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM instances WHERE stopped_at IS NOT NULL AND state <> 'deleted'",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(n)
    }

    /// Enqueues an `idle_stop` job unless the instance has any job waiting or running (an
    /// idle stop never races an operation, and at most one is pending). Whether it was.
    pub async fn enqueue_idle_stop(&self, job: &NewJob) -> Result<bool, StoreError> {
        // One statement: the row is inserted only while no job of the instance is pending
        // (the partial unique index `jobs_one_idle_stop` stands behind it).
        const SQL: &str = "INSERT INTO jobs (id, kind, instance_id, binding_id, operation_id, \
             payload, step, state, attempts, run_after, lease_owner, lease_until, last_error, \
             created_at, updated_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, NULL, NULL, NULL, $8, $8 \
             WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE instance_id = $3 AND state = 'pending') \
             ON CONFLICT DO NOTHING";
        let done = insert_job(SQL, job).execute(&self.pool).await?;
        Ok(done.rows_affected() == 1)
    }
}
