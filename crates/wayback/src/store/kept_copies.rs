//! Which machine holds a kept copy of which deleted instance (issue 16), and how each clone was
//! restored.
//!
//! A row is written after the runtime moved the data directory aside, and dropped when a clone
//! takes the copy or it is evicted. The runtime's trash is the truth about what is on disk; the
//! broker reconciles the two (`jobs::kept`), so a row without a copy or a copy without a row
//! does not last.

use sqlx::Row;

use super::{Store, StoreError};
use crate::domain::InstanceId;

/// One kept copy as the broker recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptCopyRecord {
    pub instance_id: InstanceId,
    /// The agent holding it; None: the broker's own machine.
    pub agent: Option<String>,
    /// The shutdown checkpoint's LSN read at delete time (`0/3000028`).
    pub checkpoint_lsn: String,
    pub system_identifier: u64,
    pub size_bytes: i64,
    /// Unix milliseconds.
    pub kept_at: i64,
    pub expires_at: i64,
}

impl KeptCopyRecord {
    fn from_row(row: &sqlx::any::AnyRow) -> Result<Self, StoreError> {
        let id: String = row.try_get("instance_id")?;
        let sysid: String = row.try_get("system_identifier")?;
        let corrupt = |message: String| StoreError::Corrupt {
            id: id.clone(),
            message,
        };
        Ok(Self {
            instance_id: InstanceId::parse(id.clone())
                .map_err(|e| corrupt(format!("kept_copies.instance_id: {e}")))?,
            agent: row.try_get("agent")?,
            checkpoint_lsn: row.try_get("checkpoint_lsn")?,
            system_identifier: sysid
                .parse()
                .map_err(|e| corrupt(format!("kept_copies.system_identifier: {e}")))?,
            size_bytes: row.try_get("size_bytes")?,
            kept_at: row.try_get("kept_at")?,
            expires_at: row.try_get("expires_at")?,
        })
    }
}

impl Store {
    /// Records (or replaces) the kept copy of an instance.
    pub async fn record_kept_copy(&self, r: &KeptCopyRecord) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM kept_copies WHERE instance_id = $1")
            .bind(r.instance_id.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO kept_copies (instance_id, agent, checkpoint_lsn, system_identifier, \
             size_bytes, kept_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(r.instance_id.as_str())
        .bind(r.agent.as_deref())
        .bind(&r.checkpoint_lsn)
        .bind(r.system_identifier.to_string())
        .bind(r.size_bytes)
        .bind(r.kept_at)
        .bind(r.expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The kept copy of `id`, if one is recorded.
    pub async fn kept_copy(&self, id: &InstanceId) -> Result<Option<KeptCopyRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM kept_copies WHERE instance_id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(KeptCopyRecord::from_row).transpose()
    }

    /// Every recorded kept copy, oldest first.
    pub async fn kept_copies(&self) -> Result<Vec<KeptCopyRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM kept_copies ORDER BY kept_at, instance_id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(KeptCopyRecord::from_row).collect()
    }

    /// Forgets the kept copy of `id` (taken by a clone, or evicted).
    pub async fn drop_kept_copy(&self, id: &InstanceId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM kept_copies WHERE instance_id = $1")
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records how a clone was restored, for its success description.
    pub async fn set_restore_note(&self, id: &InstanceId, note: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE instances SET restore_note = $1 WHERE id = $2")
            .bind(note)
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// How a clone was restored, if recorded.
    pub async fn restore_note(&self, id: &InstanceId) -> Result<Option<String>, StoreError> {
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT restore_note FROM instances WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.and_then(|(n,)| n))
    }
}
