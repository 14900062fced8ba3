//! Operations: what the platform polls through `last_operation`.

use sqlx::{Any, Transaction};

use super::{now_millis, OperationRecord, Store, StoreError};
use crate::domain::{BindingId, InstanceId, OperationState};

impl Store {
    pub(crate) async fn insert_operation_tx(
        tx: &mut Transaction<'_, Any>,
        op: &OperationRecord,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO operations (id, instance_id, binding_id, kind, state, description, \
             created_at, updated_at, finished_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&op.id)
        .bind(op.instance_id.as_str())
        .bind(op.binding_id.as_ref().map(|b| b.as_str().to_string()))
        .bind(op.kind.as_str())
        .bind(op.state.as_str())
        .bind(&op.description)
        .bind(op.created_at)
        .bind(op.updated_at)
        .bind(op.finished_at)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn get_operation(&self, id: &str) -> Result<Option<OperationRecord>, StoreError> {
        sqlx::query("SELECT * FROM operations WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| OperationRecord::from_row(&row))
            .transpose()
    }

    /// The newest operation on an instance itself (`binding: None`) or on one of its bindings.
    pub async fn latest_operation(
        &self,
        instance: &InstanceId,
        binding: Option<&BindingId>,
    ) -> Result<Option<OperationRecord>, StoreError> {
        let row = match binding {
            None => sqlx::query(
                "SELECT * FROM operations WHERE instance_id = $1 AND binding_id IS NULL \
                 ORDER BY created_at DESC, id DESC LIMIT 1",
            )
            .bind(instance.as_str()),
            Some(b) => sqlx::query(
                "SELECT * FROM operations WHERE instance_id = $1 AND binding_id = $2 \
                 ORDER BY created_at DESC, id DESC LIMIT 1",
            )
            .bind(instance.as_str())
            .bind(b.as_str()),
        }
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| OperationRecord::from_row(&row)).transpose()
    }

    /// Updates an operation's state and description; a terminal state also sets `finished_at`.
    /// A terminal operation is never changed again.
    pub async fn update_operation(
        &self,
        id: &str,
        state: OperationState,
        description: &str,
    ) -> Result<(), StoreError> {
        let now = now_millis();
        let finished = (state != OperationState::InProgress).then_some(now);
        sqlx::query(
            "UPDATE operations SET state = $1, description = $2, updated_at = $3, finished_at = $4 \
             WHERE id = $5 AND state = 'in progress'",
        )
        .bind(state.as_str())
        .bind(description)
        .bind(now)
        .bind(finished)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Counts of operations by kind and state, and the durations of finished ones, for metrics.
    pub async fn operation_counts(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT kind, state, COUNT(*) FROM operations GROUP BY kind, state")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows)
    }
}
