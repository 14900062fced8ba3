//! Queries of the name resolver (`maintenance::names`): which live instances have no name yet, and
//! recording a name observed elsewhere (the Cloud Controller) without letting an older
//! observation override a newer one.

use super::{conflict_on_unique, now_millis, InstanceRecord, Store, StoreError};
use crate::domain::InstanceId;

impl Store {
    /// Live (not deleted) instances that have no name recorded, oldest first.
    pub async fn instances_without_name(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        sqlx::query(
            "SELECT * FROM instances WHERE state <> 'deleted' AND NOT EXISTS \
             (SELECT 1 FROM instance_names n WHERE n.instance_id = instances.id) \
             ORDER BY created_at",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(InstanceRecord::from_row)
        .collect()
    }

    /// Records `name` (from `source`, as that source knew it at `as_of`, Unix ms) unless it is
    /// the current name already or the current name was recorded after `as_of`: a rename the
    /// broker heard of (PATCH) is newer than a Cloud Controller answer that predates it.
    /// Returns true when a new entry was written.
    pub async fn record_name_as_of(
        &self,
        id: &InstanceId,
        name: &str,
        source: &str,
        as_of: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Write first, so that SQLite takes the write lock before the read (see
        // `transition_instance`); also serialises concurrent recorders on PostgreSQL.
        let touched = sqlx::query("UPDATE instances SET updated_at = $1 WHERE id = $2")
            .bind(now_millis())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        if touched.rows_affected() != 1 {
            return Ok(false);
        }
        let last: Option<(i64, String, i64)> = sqlx::query_as(
            "SELECT seq, name, recorded_at FROM instance_names WHERE instance_id = $1 \
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        match &last {
            Some((_, current, _)) if current == name => return Ok(false),
            Some((_, _, recorded_at)) if *recorded_at > as_of => return Ok(false),
            _ => {}
        }
        let seq = last.map_or(1, |(seq, _, _)| seq + 1);
        sqlx::query(
            "INSERT INTO instance_names (instance_id, seq, name, source, recorded_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id.as_str())
        .bind(seq)
        .bind(name)
        .bind(source)
        .bind(now_millis())
        .execute(&mut *tx)
        .await
        .map_err(conflict_on_unique(id.as_str()))?;
        tx.commit().await?;
        Ok(true)
    }
}
