//! Bindings: one login role each.

use super::secrets::binding_password_context;
use super::{
    conflict_on_unique, now_millis, BindingRecord, NewJob, OperationRecord, Store, StoreError,
};
use crate::domain::{BindingId, BindingState, InstanceId};

impl Store {
    /// Writes a new binding with its operation and job in one transaction; `Conflict` if the
    /// binding id exists.
    pub async fn insert_binding(
        &self,
        binding: &BindingRecord,
        operation: &OperationRecord,
        job: &NewJob,
    ) -> Result<(), StoreError> {
        let keyring = self.keyring()?;
        let sealed = keyring.seal_secret(
            &binding.password,
            &binding_password_context(binding.id.as_str()),
        );
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO bindings (id, instance_id, request, role_name, password, password_key, \
             state, created_at, updated_at, deleted_at, read_only) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(binding.id.as_str())
        .bind(binding.instance_id.as_str())
        .bind(binding.request.to_string())
        .bind(&binding.role_name)
        .bind(&sealed)
        .bind(keyring.current_id())
        .bind(binding.state.as_str())
        .bind(binding.created_at)
        .bind(binding.updated_at)
        .bind(binding.deleted_at)
        .bind(i64::from(binding.read_only))
        .execute(&mut *tx)
        .await
        .map_err(conflict_on_unique(binding.id.as_str()))?;
        Self::insert_operation_tx(&mut tx, operation).await?;
        Self::insert_job_tx(&mut tx, job).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn get_binding(&self, id: &BindingId) -> Result<Option<BindingRecord>, StoreError> {
        let keyring = self.keyring()?;
        sqlx::query("SELECT * FROM bindings WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?
            .map(|row| BindingRecord::from_row(&row, keyring))
            .transpose()
    }

    pub async fn bindings_of(
        &self,
        instance: &InstanceId,
    ) -> Result<Vec<BindingRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM bindings WHERE instance_id = $1 ORDER BY created_at")
            .bind(instance.as_str())
            .fetch_all(&self.pool)
            .await?;
        let keyring = self.keyring()?;
        rows.iter()
            .map(|row| BindingRecord::from_row(row, keyring))
            .collect()
    }

    /// Moves a binding from `from` to `to` and starts an operation with its job, atomically.
    /// Returns false (changing nothing) when the binding was not in `from`.
    pub async fn transition_binding(
        &self,
        id: &BindingId,
        from: BindingState,
        to: BindingState,
        operation: &OperationRecord,
        job: &NewJob,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE bindings SET state = $1, updated_at = $2 WHERE id = $3 AND state = $4",
        )
        .bind(to.as_str())
        .bind(now_millis())
        .bind(id.as_str())
        .bind(from.as_str())
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

    pub async fn set_binding_state(
        &self,
        id: &BindingId,
        state: BindingState,
    ) -> Result<(), StoreError> {
        let deleted_at = (state == BindingState::Deleted).then(now_millis);
        sqlx::query(
            "UPDATE bindings SET state = $1, updated_at = $2, deleted_at = COALESCE($3, deleted_at) \
             WHERE id = $4",
        )
        .bind(state.as_str())
        .bind(now_millis())
        .bind(deleted_at)
        .bind(id.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks every binding of a deleted instance as deleted.
    pub async fn delete_bindings_of(&self, instance: &InstanceId) -> Result<(), StoreError> {
        let now = now_millis();
        sqlx::query(
            "UPDATE bindings SET state = 'deleted', updated_at = $1, deleted_at = $1 \
             WHERE instance_id = $2 AND state <> 'deleted'",
        )
        .bind(now)
        .bind(instance.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
