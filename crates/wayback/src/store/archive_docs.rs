//! What the broker remembers about each instance's archive: whether its `instance.json` is
//! current (the hash of the copy last written) and when the reaper emptied it.

use super::{InstanceRecord, Store, StoreError};
use crate::domain::InstanceId;

impl Store {
    /// The hash of the `instance.json` last written for `id`; None when never written or
    /// marked stale.
    pub async fn instance_doc_hash(&self, id: &InstanceId) -> Result<Option<String>, StoreError> {
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT doc_hash FROM instances WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.and_then(|(h,)| h))
    }

    /// Records the hash of the `instance.json` just written, or `None` to mark it stale so that
    /// the maintenance pass writes it again.
    pub async fn set_instance_doc_hash(
        &self,
        id: &InstanceId,
        hash: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE instances SET doc_hash = $1 WHERE id = $2")
            .bind(hash)
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Instances whose `instance.json` is missing or stale, except those still provisioning
    /// (their document is written when they become ready).
    pub async fn instances_with_stale_doc(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM instances WHERE doc_hash IS NULL AND state <> 'provisioning' \
             ORDER BY created_at",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(InstanceRecord::from_row).collect()
    }

    /// Records that the reaper emptied the instance's archive at `at` (Unix ms).
    pub async fn set_instance_reaped(&self, id: &InstanceId, at: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE instances SET reaped_at = $1 WHERE id = $2")
            .bind(at)
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// When the reaper emptied the instance's archive, if it did.
    pub async fn instance_reaped_at(&self, id: &InstanceId) -> Result<Option<i64>, StoreError> {
        let row: Option<(Option<i64>,)> =
            sqlx::query_as("SELECT reaped_at FROM instances WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.and_then(|(t,)| t))
    }
}
