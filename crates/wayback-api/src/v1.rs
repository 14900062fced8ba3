//! The broker's read API, `/wayback/v1` (contract: `docs/wayback-api.md`): the documents that
//! `wayback serve` answers and `cf-wayback` reads. The broker builds them from its store, its
//! archive and its clusters (`wayback::api::view`); the CLI deserialises them.
//!
//! Compatibility, kept by both sides so that a CLI and a broker of different releases work
//! together:
//!
//! 1. Within v1 fields are only added, never renamed or removed.
//! 2. A reader ignores fields it does not know (serde's default; never `deny_unknown_fields`),
//!    so an older CLI reads a newer broker.
//! 3. A field added after v1's first release carries `#[serde(default)]`, so a newer CLI reads
//!    an older broker. (Every field below is from the first release.)
//! 4. [`State`] and [`ErrorCode`] are open: a value this reader does not know is kept, string
//!    and all, as `Other`, so a broker that learns a new state does not break older CLIs.
//!    (Writers never put a known name in `Other`.)
//!
//! The bytes on the wire are pinned by golden files (`crates/wayback/tests/fixtures/api`): an
//! instance's fields are declared in the order the broker has always written them, and the
//! broker writes the list through a `serde_json::Value`, which sorts every object's keys, as
//! its first release did. Times are RFC 3339 in UTC, whole seconds. Imports nothing but serde
//! and chrono.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

mod audit;
mod followers;
pub use audit::{AuditEvent, AuditEventKind, AuditTrail, CloneOrigin};
pub use followers::{FollowerOf, FollowerState, FollowerSummary, InstanceRef};
mod ha;
pub use ha::{Failover, Ha, HaMember, Switchover, SwitchoverRequest};

/// `GET /wayback/v1/spaces/{space_guid}/instances`: a space's instances, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpaceInstances {
    pub space_guid: String,
    pub instances: Vec<Instance>,
}

/// One `INSTANCE`: what Wayback knows of a service instance, live or deleted, and to when it
/// can be restored. Also the whole answer of `GET /wayback/v1/instances/{instance_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub instance_id: String,
    /// The current (or last) name; `None` while unknown.
    pub name: Option<String>,
    /// Every name the instance had, oldest first.
    pub names: Vec<InstanceName>,
    pub state: State,
    pub space_guid: String,
    pub organization_guid: String,
    pub service_id: String,
    /// From the broker's catalog; `None` if the catalog no longer has the service.
    pub service_name: Option<String>,
    pub plan_id: String,
    /// From the broker's catalog; `None` if the catalog no longer has the plan.
    pub plan_name: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub restore_window: RestoreWindow,
    /// The stop time of the newest base backup.
    pub last_base_backup: Option<DateTime<Utc>>,
    /// Oldest first.
    pub base_backups: Vec<BaseBackup>,
    pub archive: Archive,
    /// A follower's leader and lag (issue 14); absent for an instance that follows none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follower: Option<FollowerOf>,
    /// A leader's followers, oldest first; absent when it has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub followers: Vec<FollowerSummary>,
    /// A deleted instance's data directory kept on its machine for a fast undo (issue 16);
    /// absent when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_copy: Option<KeptCopy>,
    /// Restore drills of its archive (issue 18), newest first (at most ten); absent when none
    /// ran. The first says whether the archive is verified: `result` `passed`, and when.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drills: Vec<crate::drills::DrillReport>,
    /// An HA instance's members and failovers (issue 15); absent for a single-member instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<Ha>,
    /// When its cluster was stopped because it was idle (issue 17); absent while it runs. A
    /// stopped instance is still `live`: its next connection starts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<DateTime<Utc>>,
    /// Why the last client's connection could not wake it (issue 17); absent when none failed
    /// since it last started. The instance stays stopped; the next connection tries again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_error: Option<WakeError>,
}

/// A wake of a stopped instance that failed: the reason its clients were told, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakeError {
    /// One short sentence (e.g. "its port is taken by another program").
    pub reason: String,
    pub at: DateTime<Utc>,
}

/// The copy of a deleted instance kept at delete time: an undo to its latest point takes it
/// instead of restoring from the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptCopy {
    /// Bytes it holds on the data disk.
    pub size_bytes: u64,
    pub kept_at: DateTime<Utc>,
    /// When it is removed at the latest (earlier if the disk needs the room).
    pub expires_at: DateTime<Utc>,
    /// The agent whose machine holds it; null: the broker's own machine.
    #[serde(default)]
    pub machine: Option<String>,
}

/// An instance's state as the API names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Ready or updating: it archives on, so it can be restored up to now.
    Live,
    Provisioning,
    Deleting,
    Deleted,
    Failed,
    /// A state a newer broker knows and this reader does not; written back as it came.
    #[serde(untagged)]
    Other(String),
}

impl State {
    /// The wire name: `live`, `provisioning`, `deleting`, `deleted`, `failed` or another's.
    pub fn as_str(&self) -> &str {
        match self {
            State::Live => "live",
            State::Provisioning => "provisioning",
            State::Deleting => "deleting",
            State::Deleted => "deleted",
            State::Failed => "failed",
            State::Other(s) => s,
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name the instance had, and since when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceName {
    pub name: String,
    pub since: Option<DateTime<Utc>>,
    /// Who recorded it: `provision`, `update` (a rename), `cloud_controller`, or what a
    /// reindex recorded. Open-ended, hence a string.
    pub source: String,
}

/// From when to when the instance can be restored; both ends are themselves valid
/// `point-in-time`s (rounded inward to whole seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreWindow {
    /// The earliest restorable time; `None`: nothing restorable yet.
    pub from: Option<DateTime<Utc>>,
    /// The last archived commit; `None` with `to_now` for a live instance.
    pub to: Option<DateTime<Utc>>,
    /// True only for a live instance: it archives on, so "now" is restorable.
    pub to_now: bool,
}

/// One base backup in the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseBackup {
    pub backup_id: String,
    /// The backup's stop time.
    pub time: DateTime<Utc>,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
}

/// Whether the instance's WAL reaches the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Archive {
    pub healthy: bool,
    pub last_archived_at: Option<DateTime<Utc>>,
    /// WAL segments waiting to be archived.
    pub lag_segments: i64,
    pub last_failure_at: Option<DateTime<Utc>>,
    /// `None` when healthy, else a sentence for a person.
    pub detail: Option<String>,
}

/// Every refusal: `{"error", "description"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    // `description` first: the order the broker has always written (a sorted map).
    /// What went wrong and what to do, for a person; never names another space or instance.
    pub description: String,
    pub error: ErrorCode,
}

/// The `error` of a refusal; its HTTP status is in `docs/wayback-api.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// 401: no, malformed, expired or foreign credentials.
    Unauthorized,
    /// 403: a valid user who may not see the space.
    Forbidden,
    /// 404: no such instance in a space the caller may see.
    NotFound,
    /// 503: the UAA or the Cloud Controller cannot be reached to check the caller.
    Unavailable,
    /// 500: the broker failed; its log has the cause.
    InternalError,
    /// A code a newer broker knows and this reader does not; written back as it came.
    #[serde(untagged)]
    Other(String),
}

impl ErrorCode {
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::Unauthorized => "Unauthorized",
            ErrorCode::Forbidden => "Forbidden",
            ErrorCode::NotFound => "NotFound",
            ErrorCode::Unavailable => "Unavailable",
            ErrorCode::InternalError => "InternalError",
            ErrorCode::Other(s) => s,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests;
