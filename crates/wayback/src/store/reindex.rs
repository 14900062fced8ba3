//! Merging what the archive remembers about an instance (its `instance.json`, converted by the
//! caller into an [`IndexedInstance`]) into the state database, for `wayback reindex`.
//!
//! The rules, so that a rebuild can run on an empty database, a stale one or a current one, as
//! often as anyone likes:
//!
//! - an instance the database lacks is inserted **as deleted**, whatever the document says: a
//!   `ready` document describes a cluster this broker has no record of, and the supervisor must
//!   not start (or the broker serve) what it does not know. A deletion time is kept only when
//!   the document has one; without it the reaper keeps the archive until an operator decides.
//! - an instance the database has keeps every fact the database holds; only facts it lacks are
//!   added: names (by name and time), and for a deleted instance an unknown deletion time,
//!   final LSN or reaping time. A database that says live while the document says deleted is
//!   left alone and reported (the caller decides what to tell).
//! - nothing is ever deleted, and a second merge of the same document changes nothing.
//!
//! Each merge is one transaction; a dry run runs the same statements and rolls back, so its
//! counts are exactly what a real run would do.

use sqlx::{Any, Transaction};

use super::{conflict_on_unique, now_millis, InstanceRecord, NameRecord, Store, StoreError};
use crate::domain::{InstanceId, InstanceState};

/// Database name and owner role every instance is provisioned with (`broker::instances`);
/// unused for a deleted instance, but the columns are required.
const DATABASE_NAME: &str = "app";
const OWNER_ROLE: &str = "app_owner";

/// One instance as the archive describes it, in the store's units (Unix ms).
#[derive(Debug, Clone, PartialEq)]
pub struct IndexedInstance {
    pub id: InstanceId,
    pub service_id: String,
    pub plan_id: String,
    pub organization_guid: String,
    pub space_guid: String,
    /// The state word the document recorded (only `deleted` is kept as such).
    pub state: String,
    /// Oldest first.
    pub names: Vec<NameRecord>,
    pub created_at: i64,
    pub deleted_at: Option<i64>,
    pub final_lsn: Option<String>,
    pub final_at: Option<i64>,
    pub reaped_at: Option<i64>,
    /// The content hash of the document read, recorded as the archive's copy for an inserted
    /// instance (the maintenance pass rewrites it if the database now describes it otherwise).
    pub doc_hash: String,
}

/// What a merge did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeOutcome {
    /// The database lacked the instance; it was inserted.
    pub added: bool,
    /// Names added to the instance's history.
    pub names_added: usize,
    /// Columns filled in on an existing instance (`deleted_at`, `final_lsn`, `reaped_at`).
    pub fields_filled: Vec<&'static str>,
    /// The database says the instance is live while the document says deleted; left as is.
    pub live_but_documented_deleted: Option<InstanceState>,
}

impl MergeOutcome {
    pub fn changed(&self) -> bool {
        self.added || self.names_added > 0 || !self.fields_filled.is_empty()
    }
}

impl Store {
    /// Merges one instance into the database under the rules of this module; with `dry_run`
    /// nothing is committed.
    pub async fn merge_indexed_instance(
        &self,
        doc: &IndexedInstance,
        dry_run: bool,
    ) -> Result<MergeOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Write first, so that SQLite waits for the write lock instead of failing at once
        // (see `transition_instance`); matches nothing when the instance is unknown.
        sqlx::query("UPDATE instances SET updated_at = updated_at WHERE id = $1")
            .bind(doc.id.as_str())
            .execute(&mut *tx)
            .await?;
        let existing = sqlx::query("SELECT * FROM instances WHERE id = $1")
            .bind(doc.id.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .map(|row| InstanceRecord::from_row(&row))
            .transpose()?;
        let mut outcome = MergeOutcome::default();
        match existing {
            None => {
                insert_deleted(&mut tx, doc).await?;
                outcome.added = true;
            }
            Some(record) => {
                outcome.fields_filled = fill_missing(&mut tx, &record, doc).await?;
                if record.state != InstanceState::Deleted
                    && doc.state == InstanceState::Deleted.as_str()
                {
                    outcome.live_but_documented_deleted = Some(record.state);
                }
            }
        }
        outcome.names_added = merge_names_tx(&mut tx, &doc.id, &doc.names).await?;
        if dry_run {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
        }
        Ok(outcome)
    }
}

async fn insert_deleted(
    tx: &mut Transaction<'_, Any>,
    doc: &IndexedInstance,
) -> Result<(), StoreError> {
    let deleted_at = (doc.state == InstanceState::Deleted.as_str())
        .then_some(doc.deleted_at)
        .flatten();
    sqlx::query(
        "INSERT INTO instances (id, service_id, plan_id, organization_guid, space_guid, \
         parameters, context, state, port, database_name, owner_role, created_at, updated_at, \
         deleted_at, final_lsn, final_at, reaped_at, doc_hash) VALUES ($1, $2, $3, $4, $5, \
         '{}', '{}', $6, NULL, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
    .bind(doc.id.as_str())
    .bind(&doc.service_id)
    .bind(&doc.plan_id)
    .bind(&doc.organization_guid)
    .bind(&doc.space_guid)
    .bind(InstanceState::Deleted.as_str())
    .bind(DATABASE_NAME)
    .bind(OWNER_ROLE)
    .bind(doc.created_at)
    .bind(now_millis())
    .bind(deleted_at)
    .bind(doc.final_lsn.as_deref())
    .bind(doc.final_at)
    .bind(doc.reaped_at)
    .bind(&doc.doc_hash)
    .execute(&mut **tx)
    .await
    .map_err(conflict_on_unique(doc.id.as_str()))?;
    Ok(())
}

/// Fills the deleted instance's unknown end-of-life columns from the document.
async fn fill_missing(
    tx: &mut Transaction<'_, Any>,
    record: &InstanceRecord,
    doc: &IndexedInstance,
) -> Result<Vec<&'static str>, StoreError> {
    if record.state != InstanceState::Deleted {
        return Ok(vec![]);
    }
    let row: (Option<String>, Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT final_lsn, final_at, reaped_at FROM instances WHERE id = $1")
            .bind(record.id.as_str())
            .fetch_one(&mut **tx)
            .await?;
    let (final_lsn, final_at, reaped_at) = row;
    let mut filled = vec![];
    if record.deleted_at.is_none() && doc.deleted_at.is_some() {
        sqlx::query("UPDATE instances SET deleted_at = $1 WHERE id = $2 AND deleted_at IS NULL")
            .bind(doc.deleted_at)
            .bind(record.id.as_str())
            .execute(&mut **tx)
            .await?;
        filled.push("deleted_at");
    }
    if final_lsn.is_none() && final_at.is_none() && doc.final_lsn.is_some() {
        sqlx::query(
            "UPDATE instances SET final_lsn = $1, final_at = $2 WHERE id = $3 \
             AND final_lsn IS NULL",
        )
        .bind(doc.final_lsn.as_deref())
        .bind(doc.final_at)
        .bind(record.id.as_str())
        .execute(&mut **tx)
        .await?;
        filled.push("final_lsn");
    }
    if reaped_at.is_none() && doc.reaped_at.is_some() {
        sqlx::query("UPDATE instances SET reaped_at = $1 WHERE id = $2 AND reaped_at IS NULL")
            .bind(doc.reaped_at)
            .bind(record.id.as_str())
            .execute(&mut **tx)
            .await?;
        filled.push("reaped_at");
    }
    Ok(filled)
}

/// Adds the names the database lacks; returns how many.
async fn merge_names_tx(
    tx: &mut Transaction<'_, Any>,
    id: &InstanceId,
    names: &[NameRecord],
) -> Result<usize, StoreError> {
    let rows: Vec<(i64, String, String, i64)> = sqlx::query_as(
        "SELECT seq, name, source, recorded_at FROM instance_names WHERE instance_id = $1 \
         ORDER BY seq",
    )
    .bind(id.as_str())
    .fetch_all(&mut **tx)
    .await?;
    let known: Vec<NameRecord> = rows
        .iter()
        .map(|(_, name, source, recorded_at)| NameRecord {
            name: name.clone(),
            source: source.clone(),
            recorded_at: *recorded_at,
        })
        .collect();
    let Some(merged) = merge_names(&known, names) else {
        return Ok(0);
    };
    let added = merged.len() - known.len();
    if merged[..known.len()] == known[..] {
        // Only appended: the existing entries keep their sequence numbers.
        let next = rows.last().map_or(1, |(seq, ..)| seq + 1);
        for (i, n) in merged[known.len()..].iter().enumerate() {
            insert_name(tx, id, next + i as i64, n).await?;
        }
    } else {
        // An older name was missing: renumber the whole history in time order. Every entry
        // the database had is written back unchanged.
        sqlx::query("DELETE FROM instance_names WHERE instance_id = $1")
            .bind(id.as_str())
            .execute(&mut **tx)
            .await?;
        for (i, n) in merged.iter().enumerate() {
            insert_name(tx, id, i as i64 + 1, n).await?;
        }
    }
    Ok(added)
}

async fn insert_name(
    tx: &mut Transaction<'_, Any>,
    id: &InstanceId,
    seq: i64,
    n: &NameRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO instance_names (instance_id, seq, name, source, recorded_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id.as_str())
    .bind(seq)
    .bind(&n.name)
    .bind(&n.source)
    .bind(n.recorded_at)
    .execute(&mut **tx)
    .await
    .map_err(conflict_on_unique(id.as_str()))?;
    Ok(())
}

/// The name history with `documented` merged into `known` (both oldest first), or `None` when
/// `known` already holds everything. An entry is known when the database has the same name
/// recorded at the same millisecond, or when it would only repeat the name in force at its
/// time (the history records changes of name). Entries are placed by time; among equal
/// times, the database's entries come first.
pub fn merge_names(known: &[NameRecord], documented: &[NameRecord]) -> Option<Vec<NameRecord>> {
    let mut merged = known.to_vec();
    let mut added = false;
    for entry in documented {
        if merged
            .iter()
            .any(|k| k.name == entry.name && k.recorded_at == entry.recorded_at)
        {
            continue;
        }
        let at = merged.partition_point(|k| k.recorded_at <= entry.recorded_at);
        if at > 0 && merged[at - 1].name == entry.name {
            continue;
        }
        merged.insert(at, entry.clone());
        added = true;
    }
    added.then_some(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(name: &str, source: &str, at: i64) -> NameRecord {
        NameRecord {
            name: name.into(),
            source: source.into(),
            recorded_at: at,
        }
    }

    #[test]
    fn merges_names_by_time_and_only_what_is_missing() {
        let doc = [n("a", "provision", 10), n("b", "update", 20)];
        // Empty database: everything.
        assert_eq!(merge_names(&[], &doc), Some(doc.to_vec()));
        // Everything known: nothing.
        assert_eq!(merge_names(&doc, &doc), None);
        // A newer name known only to the database stays last.
        let db = [
            n("a", "provision", 10),
            n("b", "update", 20),
            n("c", "update", 30),
        ];
        assert_eq!(merge_names(&db, &doc), None);
        // A name known only to the document goes where its time says.
        let db = [n("a", "provision", 10), n("c", "update", 30)];
        assert_eq!(
            merge_names(&db, &doc),
            Some(vec![
                n("a", "provision", 10),
                n("b", "update", 20),
                n("c", "update", 30)
            ])
        );
        // Repeating the name already in force at that time adds nothing.
        assert_eq!(
            merge_names(
                &[n("a", "provision", 10)],
                &[n("a", "cloud_controller", 15)]
            ),
            None
        );
    }
}
