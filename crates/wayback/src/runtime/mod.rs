//! Where clusters live: [`LocalRuntime`], clusters on this machine run by the `pg` driver, or
//! [`RemoteRuntime`], clusters on agents (`wayback agent`, which runs a `LocalRuntime`) reached
//! over their HTTP API ([`wayback_api::agent`]). Both implement [`ClusterRuntime`], the only
//! seam between "this machine" and "an agent" (see [`interface`]); the rest of the broker holds
//! a [`Runtime`] and never asks which it is. Errors are one [`RuntimeError`] that says whether
//! retrying can help, mapped to and from the wire in one place ([`error`]).
//!
//! Every call is idempotent — a job step that crashed half-way is simply run again — and takes
//! only domain types. Must not import `osb`, `broker`, `store` or `jobs`.

pub mod error;
pub mod ha;
pub mod ha_ops;
pub mod interface;
pub mod lag;
mod local;
mod placement;
mod remote;
pub mod replication;

use std::collections::BTreeMap;

use crate::domain::InstanceId;

/// For implementations of [`ClusterRuntime`] outside this crate (a test's fake runtime).
pub use async_trait::async_trait;
pub use error::RuntimeError;
pub use ha::{Durability, HaMember, HaMemberSpec, HaRole, HaSeed, HaStatus};
pub use ha_ops::{
    parse_history, switch_over, SwitchoverError, SwitchoverPlan, SwitchoverRefusal, TimelineSwitch,
};
pub use interface::DrillSpec;
pub use interface::{
    AgentSurvey, ClusterRuntime, MachineTrash, Reach, RestoreSpec, RoleAccess, Runtime,
    TrashedSource,
};
pub use local::{ArchiveAccess, ClusterTls, LocalRuntime, WakeLimits};
pub use placement::{choose, choose_avoiding, Placement, PlacementLedger, NO_ROOM};
pub use placement::{choose_ha_member, ha_agents_with_room, NO_HA_ROOM};
pub use remote::{BackupAnswer, RemoteRuntime};
pub use replication::{FollowSpec, ReplicationGrant};
pub use wayback_api::agent::{
    ArchiverStats, Capacity, ClusterStatus, ReplicationStatus, RestorePhase, RestoreState,
    RestoreStatus, Sessions, StandbyStatus,
};
pub use wayback_api::drills::{DrillFailure, DrillReport, DrillResult};

/// What [`ClusterRuntime::inspect`] reads (issue 19).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InspectKind {
    /// The current blocking tree.
    Locks,
    /// `pg_stat_statements`' top statements by total time.
    Outliers,
    /// Everything the diagnose checks judge (includes the blocking tree).
    Diagnose,
}

/// The answer of [`ClusterRuntime::inspect`], one variant per [`InspectKind`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Inspection {
    Locks(wayback_api::activity::Locks),
    Outliers(wayback_api::activity::Outliers),
    Diagnose(Box<wayback_api::activity::DiagnoseFacts>),
}

/// What a cluster should look like.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub instance: InstanceId,
    pub port: u16,
    /// Plan settings (name → value), already validated by the catalog.
    pub settings: BTreeMap<String, String>,
    /// The plan requires TLS on every TCP connection (`hostssl` only), whatever `tls.require`.
    pub require_tls: bool,
}

/// How PostgreSQL runs the archiver.
#[derive(Debug, Clone)]
pub struct ArchiveCommand {
    /// The `wayback` binary (its `wal-push` / `wal-fetch` subcommands).
    pub wayback_bin: std::path::PathBuf,
    /// PostgreSQL's `archive_timeout`, in seconds.
    pub archive_timeout_secs: u64,
}

/// Where a cluster's WAL is, for the backup schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalPosition {
    /// `pg_current_wal_lsn()`.
    pub current_lsn: u64,
    /// The sum of `pg_database_size` over every database.
    pub database_bytes: u64,
    /// Bytes of WAL records the cluster has written since its statistics were last reset
    /// (`pg_stat_wal.wal_bytes`): what users and maintenance wrote, without the padding a
    /// segment switch leaves. A counter: it goes back to 0 after a crash or a reset. None from
    /// an agent older than this field.
    pub wal_bytes: Option<u64>,
}

/// A stopped-when-idle cluster woken by a client's connection (issue 17), or a wake that
/// failed; sent by a runtime that holds ports itself ([`ClusterRuntime::subscribe_wakes`]).
#[derive(Debug, Clone, PartialEq)]
pub struct WakeEvent {
    /// The cluster's key (an instance id).
    pub instance: InstanceId,
    /// From the first packet of the client that woke it to the server accepting connections.
    pub seconds: f64,
    /// None when it started; else why it could not (the clients were told the same).
    pub error: Option<String>,
}

/// Result of applying new settings to a running cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// True when a setting needed a restart and the cluster was restarted.
    pub restarted: bool,
}
