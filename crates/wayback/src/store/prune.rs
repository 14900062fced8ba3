//! Keeping the state database bounded: what is finished goes after `state.retention_days`.
//!
//! Every provision, bind, unbind, update, deprovision and backup adds an operation and a job;
//! nothing else ever deletes them. [`Store::prune_finished`] deletes, as of a `now` the caller
//! passes (tests pass a clock of their own), what no reader needs any more:
//!
//! 1. jobs that ended (`done` or `failed`) before the cut-off — nothing reads a finished job but
//!    a synchronous request waiting on it, within seconds;
//! 2. bindings deleted before the cut-off (their login role is long dropped; the row held only
//!    the answer to a repeated `PUT`/`GET` of a binding the platform forgot);
//! 3. operations finished before the cut-off, *except* the newest one of each instance and of
//!    each binding that still has a row: that one answers `last_operation`, and for a deleted
//!    instance it is the deprovision's tombstone (`{"state":"succeeded"}`, not 410) — until the
//!    instance's archive was reaped (`retention.deleted_days` after the delete) before the
//!    cut-off too: by then no platform polls it, and the row would only grow with every instance
//!    ever made.
//!
//! Never pruned here: instances and their names (the undo's index: a deleted instance is found
//! by its old name; one row each per instance ever made), live bindings, pending jobs, unfinished operations, and the audit trail
//! (`audit_events`, which is the record of who asked for what and has a retention of its own to
//! decide, if any). Backup rows follow the archive instead: [`Store::forget_backups`] is called
//! by archive retention with the backups it deleted from the archive.

use super::{Store, StoreError};
use crate::domain::InstanceId;

/// Rows one pass deleted, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub jobs: u64,
    pub operations: u64,
    pub bindings: u64,
    /// Restore drills' rows ([`Store::prune_drills`]).
    pub drills: u64,
}

impl Pruned {
    pub fn total(&self) -> u64 {
        self.jobs + self.operations + self.bindings + self.drills
    }
}

/// How many rows each table holds (for the tests and for operators' curiosity).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowCounts {
    pub instances: i64,
    pub bindings: i64,
    pub operations: i64,
    pub jobs: i64,
    pub backups: i64,
}

impl Store {
    /// Deletes what finished before `cutoff` (Unix milliseconds) and no reader needs (module
    /// doc). Each table is one statement: a crash between them leaves nothing inconsistent.
    pub async fn prune_finished(&self, cutoff: i64) -> Result<Pruned, StoreError> {
        let jobs =
            sqlx::query("DELETE FROM jobs WHERE state IN ('done', 'failed') AND updated_at < $1")
                .bind(cutoff)
                .execute(&self.pool)
                .await?
                .rows_affected();
        let bindings = sqlx::query(
            "DELETE FROM bindings WHERE state = 'deleted' AND deleted_at IS NOT NULL \
             AND deleted_at < $1 \
             AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.binding_id = bindings.id \
                             AND j.state = 'pending')",
        )
        .bind(cutoff)
        .execute(&self.pool)
        .await?
        .rows_affected();
        // An instance's own operations: all but its newest.
        let instance_ops = sqlx::query(
            "DELETE FROM operations WHERE binding_id IS NULL AND finished_at IS NOT NULL \
             AND finished_at < $1 \
             AND (EXISTS (SELECT 1 FROM operations n \
                          WHERE n.instance_id = operations.instance_id \
                          AND n.binding_id IS NULL \
                          AND (n.created_at > operations.created_at \
                               OR (n.created_at = operations.created_at \
                                   AND n.id > operations.id))) \
                  OR EXISTS (SELECT 1 FROM instances i WHERE i.id = operations.instance_id \
                             AND i.reaped_at IS NOT NULL AND i.reaped_at < $1))",
        )
        .bind(cutoff)
        .execute(&self.pool)
        .await?
        .rows_affected();
        // A binding's operations: all but its newest, and all once the binding row is gone.
        let binding_ops = sqlx::query(
            "DELETE FROM operations WHERE binding_id IS NOT NULL AND finished_at IS NOT NULL \
             AND finished_at < $1 \
             AND (NOT EXISTS (SELECT 1 FROM bindings b WHERE b.id = operations.binding_id) \
                  OR EXISTS (SELECT 1 FROM operations n \
                             WHERE n.instance_id = operations.instance_id \
                             AND n.binding_id = operations.binding_id \
                             AND (n.created_at > operations.created_at \
                                  OR (n.created_at = operations.created_at \
                                      AND n.id > operations.id))))",
        )
        .bind(cutoff)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(Pruned {
            jobs,
            operations: instance_ops + binding_ops,
            bindings,
            drills: 0,
        })
    }

    /// Forgets the backup rows of `backup_ids` (the backups archive retention deleted from the
    /// archive of `instance`); `None` forgets all of them (the archive was reaped).
    pub async fn forget_backups(
        &self,
        instance: &InstanceId,
        backup_ids: Option<&[String]>,
    ) -> Result<u64, StoreError> {
        let Some(ids) = backup_ids else {
            return Ok(sqlx::query("DELETE FROM backups WHERE instance_id = $1")
                .bind(instance.as_str())
                .execute(&self.pool)
                .await?
                .rows_affected());
        };
        let mut deleted = 0;
        for id in ids {
            deleted += sqlx::query("DELETE FROM backups WHERE instance_id = $1 AND backup_id = $2")
                .bind(instance.as_str())
                .bind(id)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        Ok(deleted)
    }

    /// Row counts of the tables that grow with use.
    pub async fn row_counts(&self) -> Result<RowCounts, StoreError> {
        let count = |table: &'static str| {
            let pool = self.pool.clone();
            async move {
                let (n,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM {table}"))
                    .fetch_one(&pool)
                    .await?;
                Ok::<i64, StoreError>(n)
            }
        };
        Ok(RowCounts {
            instances: count("instances").await?,
            bindings: count("bindings").await?,
            operations: count("operations").await?,
            jobs: count("jobs").await?,
            backups: count("backups").await?,
        })
    }
}
