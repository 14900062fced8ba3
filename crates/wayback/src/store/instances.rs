//! Instances and their name history.

use sqlx::{Any, Transaction};

use super::{
    conflict_on_unique, now_millis, InstanceRecord, NameRecord, NewJob, OperationRecord, Store,
    StoreError,
};
use crate::domain::{InstanceId, InstanceState};

/// One name an instance of a space had (see [`Store::names_in_space`]).
#[derive(Debug, Clone)]
pub struct SpaceName {
    pub instance_id: InstanceId,
    pub name: String,
    /// When the instance took the name (Unix ms).
    pub recorded_at: i64,
    pub state: InstanceState,
    pub deleted_at: Option<i64>,
    /// A base backup of the instance was recorded (it can be restored whatever its state).
    pub has_backup: bool,
}

impl Store {
    /// Writes a new instance, its first name (if known), its provision operation and the job
    /// that will do the work, in one transaction. `Conflict` if the id exists (even deleted).
    pub async fn insert_instance(
        &self,
        instance: &InstanceRecord,
        name: Option<&str>,
        operation: &OperationRecord,
        job: &NewJob,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO instances (id, service_id, plan_id, organization_guid, space_guid, \
             parameters, context, state, port, database_name, owner_role, created_at, updated_at, \
             deleted_at, leader_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        )
        .bind(instance.id.as_str())
        .bind(&instance.service_id)
        .bind(&instance.plan_id)
        .bind(&instance.organization_guid)
        .bind(&instance.space_guid)
        .bind(instance.parameters.to_string())
        .bind(instance.context.to_string())
        .bind(instance.state.as_str())
        .bind(instance.port.map(i64::from))
        .bind(&instance.database_name)
        .bind(&instance.owner_role)
        .bind(instance.created_at)
        .bind(instance.updated_at)
        .bind(instance.deleted_at)
        .bind(instance.leader_id.as_ref().map(|l| l.as_str()))
        .execute(&mut *tx)
        .await
        .map_err(conflict_on_unique(instance.id.as_str()))?;
        if let Some(name) = name {
            record_name_tx(
                &mut tx,
                &instance.id,
                name,
                "provision",
                instance.created_at,
            )
            .await?;
        }
        Self::insert_operation_tx(&mut tx, operation).await?;
        Self::insert_job_tx(&mut tx, job).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn get_instance(
        &self,
        id: &InstanceId,
    ) -> Result<Option<InstanceRecord>, StoreError> {
        sqlx::query("SELECT * FROM instances WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?
            .map(|row| InstanceRecord::from_row(&row))
            .transpose()
    }

    /// The followers of `leader` that are not deleted, oldest first.
    pub async fn followers_of(
        &self,
        leader: &InstanceId,
    ) -> Result<Vec<InstanceRecord>, StoreError> {
        sqlx::query(
            "SELECT * FROM instances WHERE leader_id = $1 AND state <> $2 ORDER BY created_at",
        )
        .bind(leader.as_str())
        .bind(InstanceState::Deleted.as_str())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(InstanceRecord::from_row)
        .collect()
    }

    /// Instances in any of `states`, oldest first.
    pub async fn instances_in_states(
        &self,
        states: &[InstanceState],
    ) -> Result<Vec<InstanceRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM instances ORDER BY created_at")
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::new();
        for row in rows {
            let record = InstanceRecord::from_row(&row)?;
            if states.contains(&record.state) {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Counts of instances by state, for metrics.
    pub async fn instance_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM instances GROUP BY state")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows)
    }

    /// What `/metrics` labels each instance not deleted with (issue 19): its newest name (as
    /// the broker recorded it, so a rename relabels), space and plan. One query for all.
    pub async fn metric_labels(&self) -> Result<Vec<super::MetricLabels>, StoreError> {
        let rows: Vec<(String, Option<String>, String, String, String)> = sqlx::query_as(
            "SELECT i.id, \
             (SELECT n.name FROM instance_names n WHERE n.instance_id = i.id \
               ORDER BY n.seq DESC LIMIT 1), \
             i.space_guid, i.service_id, i.plan_id \
             FROM instances i WHERE i.deleted_at IS NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, name, space_guid, service_id, plan_id)| super::MetricLabels {
                    id,
                    name,
                    space_guid,
                    service_id,
                    plan_id,
                },
            )
            .collect())
    }

    /// Moves an instance from one of `from` to `to` and starts an operation with its job, in
    /// one transaction. Returns false (and changes nothing) when the instance was not in `from`:
    /// another request got there first.
    pub async fn transition_instance(
        &self,
        id: &InstanceId,
        from: &[InstanceState],
        to: InstanceState,
        operation: &OperationRecord,
        job: &NewJob,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        // A compare-and-set, and the transaction's first statement: on SQLite a transaction
        // that reads first cannot wait for the write lock (SQLITE_BUSY at once), one that
        // writes first waits out busy_timeout. States are our own constants, safe to inline.
        let states = from
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        let done = sqlx::query(&format!(
            "UPDATE instances SET state = $1, updated_at = $2 WHERE id = $3 AND state IN ({states})"
        ))
        .bind(to.as_str())
        .bind(now_millis())
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        Self::insert_operation_tx(&mut tx, operation).await?;
        Self::insert_job_tx(&mut tx, job).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn set_instance_state(
        &self,
        id: &InstanceId,
        state: InstanceState,
    ) -> Result<(), StoreError> {
        let deleted_at = (state == InstanceState::Deleted).then(now_millis);
        sqlx::query(
            "UPDATE instances SET state = $1, updated_at = $2, \
             deleted_at = COALESCE($3, deleted_at), \
             port = CASE WHEN $1 = 'deleted' THEN NULL ELSE port END WHERE id = $4",
        )
        .bind(state.as_str())
        .bind(now_millis())
        .bind(deleted_at)
        .bind(id.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Moves an instance from `from` to `to`; false (nothing changed) if it was not in `from`.
    pub async fn set_instance_state_from(
        &self,
        id: &InstanceId,
        from: InstanceState,
        to: InstanceState,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE instances SET state = $1, updated_at = $2 WHERE id = $3 AND state = $4",
        )
        .bind(to.as_str())
        .bind(now_millis())
        .bind(id.as_str())
        .bind(from.as_str())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records where a deleted instance's history ends.
    pub async fn set_instance_final(
        &self,
        id: &InstanceId,
        lsn: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE instances SET final_lsn = $1, final_at = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(lsn)
        .bind(at)
        .bind(now_millis())
        .bind(id.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Where a deleted instance's history ends: (final LSN, time).
    pub async fn instance_final(
        &self,
        id: &InstanceId,
    ) -> Result<Option<(String, i64)>, StoreError> {
        let row: Option<(Option<String>, Option<i64>)> =
            sqlx::query_as("SELECT final_lsn, final_at FROM instances WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.and_then(|(l, t)| Some((l?, t?))))
    }

    pub async fn set_instance_plan(
        &self,
        id: &InstanceId,
        plan_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE instances SET plan_id = $1, updated_at = $2 WHERE id = $3")
            .bind(plan_id)
            .bind(now_millis())
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Stores the instance's port; `Conflict` if another instance holds it.
    pub async fn set_instance_port(
        &self,
        id: &InstanceId,
        port: Option<u16>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE instances SET port = $1, updated_at = $2 WHERE id = $3")
            .bind(port.map(i64::from))
            .bind(now_millis())
            .bind(id.as_str())
            .execute(&self.pool)
            .await
            .map_err(conflict_on_unique(id.as_str()))?;
        Ok(())
    }

    /// Records the agent an instance was placed on, and the host its bindings name.
    pub async fn set_instance_agent(
        &self,
        id: &InstanceId,
        agent: &str,
        host: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE instances SET agent = $1, agent_host = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(agent)
        .bind(host)
        .bind(now_millis())
        .bind(id.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Instances per agent that hold (or are getting) a cluster there: every state but deleted.
    pub async fn instances_per_agent(
        &self,
    ) -> Result<std::collections::HashMap<String, usize>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT agent, COUNT(*) FROM instances WHERE state <> 'deleted' AND agent <> '' GROUP BY agent",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(a, n)| (a, usize::try_from(n).unwrap_or(0)))
            .collect())
    }

    /// (instance, agent) of every instance placed on an agent, deleted ones included (their
    /// archive may still be read, and a deprovision in flight still reaches the agent).
    pub async fn instance_agents(&self) -> Result<Vec<(InstanceId, String)>, StoreError> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT id, agent FROM instances WHERE agent <> ''")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(id, agent)| {
                InstanceId::parse(id.clone())
                    .map(|i| (i, agent))
                    .map_err(|e| StoreError::Corrupt {
                        id: id.clone(),
                        message: e.to_string(),
                    })
            })
            .collect()
    }

    /// Ports held on one machine (`agent`; "" = the broker's own) by live or in-flight instances,
    /// HA members' PostgreSQL and Patroni REST ports included (`ha`).
    pub async fn used_ports(&self, agent: &str) -> Result<Vec<u16>, StoreError> {
        let rows: Vec<(i64,)> = sqlx::query_as(
            "SELECT port FROM instances WHERE port IS NOT NULL AND agent = $1 \
             UNION SELECT port FROM ha_members WHERE agent = $1 \
             UNION SELECT rest_port FROM ha_members WHERE agent = $1",
        )
        .bind(agent)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(p,)| u16::try_from(p).ok())
            .collect())
    }

    /// Records `name` as the instance's current name unless it already is.
    /// Returns true when a new entry was written.
    pub async fn record_name(
        &self,
        id: &InstanceId,
        name: &str,
        source: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Write first (see transition_instance): touch the instance, then read its names.
        sqlx::query("UPDATE instances SET updated_at = $1 WHERE id = $2")
            .bind(now_millis())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        let written = record_name_tx(&mut tx, id, name, source, now_millis()).await?;
        tx.commit().await?;
        Ok(written)
    }

    /// Every name the instance had, oldest first.
    pub async fn instance_names(&self, id: &InstanceId) -> Result<Vec<NameRecord>, StoreError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT name, source, recorded_at FROM instance_names WHERE instance_id = $1 ORDER BY seq",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(name, source, recorded_at)| NameRecord {
                name,
                source,
                recorded_at,
            })
            .collect())
    }

    /// Every name of every instance in `space` (live or deleted), newest name first: what
    /// `clone-from` resolves against. Nothing of another space is ever read.
    pub async fn names_in_space(&self, space: &str) -> Result<Vec<SpaceName>, StoreError> {
        let rows: Vec<(String, String, i64, String, Option<i64>, i64)> = sqlx::query_as(
            "SELECT n.instance_id, n.name, n.recorded_at, i.state, i.deleted_at, \
             (SELECT COUNT(*) FROM backups b WHERE b.instance_id = n.instance_id) \
             FROM instance_names n JOIN instances i ON i.id = n.instance_id \
             WHERE i.space_guid = $1 ORDER BY n.recorded_at DESC, n.seq DESC",
        )
        .bind(space)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id, name, recorded_at, state, deleted_at, backups)| {
                let corrupt = |message: String| StoreError::Corrupt {
                    id: id.clone(),
                    message,
                };
                Ok(SpaceName {
                    instance_id: InstanceId::parse(id.clone())
                        .map_err(|e| corrupt(e.to_string()))?,
                    name,
                    recorded_at,
                    state: state.parse::<InstanceState>().map_err(corrupt)?,
                    deleted_at,
                    has_backup: backups > 0,
                })
            })
            .collect()
    }
}

async fn record_name_tx(
    tx: &mut Transaction<'_, Any>,
    id: &InstanceId,
    name: &str,
    source: &str,
    at: i64,
) -> Result<bool, StoreError> {
    let last: Option<(i64, String)> = sqlx::query_as(
        "SELECT seq, name FROM instance_names WHERE instance_id = $1 ORDER BY seq DESC LIMIT 1",
    )
    .bind(id.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    if matches!(&last, Some((_, current)) if current == name) {
        return Ok(false);
    }
    let seq = last.map_or(1, |(seq, _)| seq + 1);
    sqlx::query(
        "INSERT INTO instance_names (instance_id, seq, name, source, recorded_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id.as_str())
    .bind(seq)
    .bind(name)
    .bind(source)
    .bind(at)
    .execute(&mut **tx)
    .await
    .map_err(conflict_on_unique(id.as_str()))?;
    Ok(true)
}
