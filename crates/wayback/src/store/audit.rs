//! The audit trail: one row per operation a request started, with who asked (the platform's
//! originating identity) and what the event needs besides (a clone's source, a plan).
//!
//! Its own table with its own time (`audit_events.at`): pruning of finished jobs and
//! operations leaves it alone, and [`Store::prune_audit_events`] removes rows only by their
//! own age, never an instance's origin. Nothing here holds a secret or a request's raw
//! parameters.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{Store, StoreError};
use crate::domain::{BindingId, InstanceId, Originator};

/// What a request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    Provision,
    /// A provision with `clone-from` (undo); the detail names the source.
    Clone,
    /// A plan change.
    Update,
    /// A new `context.instance_name` (`cf rename-service`).
    Rename,
    Deprovision,
    Bind,
    Unbind,
}

impl AuditKind {
    pub const ALL: [AuditKind; 7] = [
        AuditKind::Provision,
        AuditKind::Clone,
        AuditKind::Update,
        AuditKind::Rename,
        AuditKind::Deprovision,
        AuditKind::Bind,
        AuditKind::Unbind,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Provision => "provision",
            AuditKind::Clone => "clone",
            AuditKind::Update => "update",
            AuditKind::Rename => "rename",
            AuditKind::Deprovision => "deprovision",
            AuditKind::Bind => "bind",
            AuditKind::Unbind => "unbind",
        }
    }
}

impl fmt::Display for AuditKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AuditKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown audit event {s:?}"))
    }
}

/// One audit row.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub id: String,
    /// Unix milliseconds.
    pub at: i64,
    pub kind: AuditKind,
    pub instance_id: InstanceId,
    pub binding_id: Option<BindingId>,
    pub operation_id: Option<String>,
    /// Who asked; `None` when the request carried no originating identity.
    pub originator: Option<Originator>,
    /// A JSON object: a clone's `source` (`instance_id`, `name`, `point_in_time`), a `plan_id`.
    pub detail: Value,
}

impl AuditEvent {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let id: String = row.try_get("id")?;
        let corrupt = |message: String| StoreError::Corrupt {
            id: id.clone(),
            message,
        };
        let platform: Option<String> = row.try_get("platform")?;
        let originator = platform.map(|platform| -> Result<Originator, StoreError> {
            Ok(Originator {
                platform,
                user_id: row.try_get("user_id")?,
                identity: row
                    .try_get::<Option<String>, _>("identity")?
                    .unwrap_or_default(),
            })
        });
        let binding: Option<String> = row.try_get("binding_id")?;
        Ok(Self {
            at: row.try_get("at")?,
            kind: row
                .try_get::<String, _>("event")?
                .parse()
                .map_err(corrupt)?,
            instance_id: InstanceId::parse(row.try_get::<String, _>("instance_id")?)
                .map_err(|e| corrupt(e.to_string()))?,
            binding_id: binding
                .map(BindingId::parse)
                .transpose()
                .map_err(|e| corrupt(e.to_string()))?,
            operation_id: row.try_get("operation_id")?,
            originator: originator.transpose()?,
            detail: serde_json::from_str(&row.try_get::<String, _>("detail")?)
                .map_err(|e| corrupt(e.to_string()))?,
            id,
        })
    }
}

impl Store {
    pub async fn insert_audit_event(&self, e: &AuditEvent) -> Result<(), StoreError> {
        let who = e.originator.as_ref();
        sqlx::query(
            "INSERT INTO audit_events (id, at, event, instance_id, binding_id, operation_id, \
             platform, user_id, identity, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&e.id)
        .bind(e.at)
        .bind(e.kind.as_str())
        .bind(e.instance_id.as_str())
        .bind(e.binding_id.as_ref().map(|b| b.as_str().to_string()))
        .bind(e.operation_id.clone())
        .bind(who.map(|o| o.platform.clone()))
        .bind(who.and_then(|o| o.user_id.clone()))
        .bind(who.map(|o| o.identity.clone()))
        .bind(e.detail.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// An instance's audit trail (its bindings' events included), oldest first.
    pub async fn audit_events_of(
        &self,
        instance: &InstanceId,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = sqlx::query("SELECT * FROM audit_events WHERE instance_id = $1 ORDER BY at, id")
            .bind(instance.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(AuditEvent::from_row).collect()
    }

    /// Removes audit rows older than `before` (Unix milliseconds); returns how many. For the
    /// operator's audit retention, separate from the retention of jobs and operations. An
    /// instance's origin (its `provision` or `clone` row) stays: `instance.json` is built from
    /// it for as long as the instance is known.
    pub async fn prune_audit_events(&self, before: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM audit_events WHERE at < $1 AND event NOT IN ('provision', 'clone')",
        )
        .bind(before)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::AuditKind;

    #[test]
    fn kinds_read_back() {
        for k in AuditKind::ALL {
            assert_eq!(k.as_str().parse::<AuditKind>(), Ok(k));
        }
        assert!("drop".parse::<AuditKind>().is_err());
    }
}
