//! Where clusters live: [`LocalRuntime`], clusters on this machine run by the `pg` driver, or
//! [`RemoteRuntime`], clusters on agents (`wayback agent`, which runs a `LocalRuntime`) reached
//! over their HTTP API ([`wire`]).
//!
//! Every call is idempotent — a job step that crashed half-way is simply run again — and takes
//! only domain types. Must not import `osb`, `broker`, `store` or `jobs`.

mod local;
mod placement;
mod remote;
pub mod wire;

use std::collections::BTreeMap;
use std::sync::Arc;

use secrecy::SecretString;

use crate::domain::InstanceId;
pub use local::{BackupFailure, CloneRestore, CloneRestoreError, LocalRuntime, RestoreSlot};
pub use placement::{choose, Placement};
pub use remote::{status_text, ArchiverStatsBody, BackupAnswer, RemoteRuntime};

/// What a cluster should look like.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub instance: InstanceId,
    pub port: u16,
    /// Plan settings (name → value), already validated by the catalog.
    pub settings: BTreeMap<String, String>,
}

/// Whether an instance's cluster exists and runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterStatus {
    /// No data directory.
    Absent,
    /// Data directory present, no live postmaster.
    Stopped,
    /// A live postmaster that answers `pg_isready`.
    Running,
}

/// What a running cluster's archiver reports (`pg_stat_archiver` and `archive_status/`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArchiverStats {
    pub archived_count: i64,
    /// Unix seconds.
    pub last_archived_at: Option<f64>,
    pub failed_count: i64,
    pub last_failed_at: Option<f64>,
    /// Completed segments (and other files) waiting to be archived.
    pub ready_segments: i64,
    /// How long the oldest of them has waited; 0 when none waits.
    pub oldest_ready_age_secs: f64,
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
}

/// Result of applying new settings to a running cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// True when a setting needed a restart and the cluster was restarted.
    pub restarted: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The cluster's port is taken by another process; the caller picks another port.
    #[error("port {0} is already in use")]
    PortInUse(u16),
    #[error(transparent)]
    Pg(#[from] crate::pg::PgError),
    /// The agent answered with an error.
    #[error("agent {agent}: {message}")]
    Agent {
        agent: String,
        message: String,
        permanent: bool,
    },
    /// The agent did not answer (down, unreachable, or too slow).
    #[error("agent {agent} did not answer: {message}")]
    Unreachable { agent: String, message: String },
    /// Agents are configured, but no agent is recorded for the instance.
    #[error("instance {0} is not placed on any agent")]
    NotPlaced(String),
}

impl RuntimeError {
    /// Permanent errors fail the operation at once; others are retried with backoff.
    pub fn is_permanent(&self) -> bool {
        match self {
            RuntimeError::PortInUse(_) => false,
            RuntimeError::Pg(e) => e.is_permanent(),
            RuntimeError::Agent { permanent, .. } => *permanent,
            RuntimeError::Unreachable { .. } => false,
            RuntimeError::NotPlaced(_) => true,
        }
    }
}

/// The runtime the broker uses.
#[derive(Clone)]
pub enum Runtime {
    Local(Arc<LocalRuntime>),
    Remote(Arc<RemoteRuntime>),
}

macro_rules! dispatch {
    ($self:ident, $rt:ident => $call:expr) => {
        match $self {
            Runtime::Local($rt) => $call,
            Runtime::Remote($rt) => $call,
        }
    };
}

impl Runtime {
    /// Start-up checks and preparation (binaries, OS user, directories, template).
    pub async fn prepare(&self) -> Result<(), RuntimeError> {
        dispatch!(self, rt => rt.prepare().await)
    }
    /// Creates the data directory (or leaves an existing one) and writes the configuration.
    pub async fn create_cluster(&self, spec: &ClusterSpec) -> Result<(), RuntimeError> {
        dispatch!(self, rt => rt.create_cluster(spec).await)
    }
    /// Points the cluster's archiver at `target` (effective from the next start).
    pub async fn configure_archive(
        &self,
        id: &InstanceId,
        target: &crate::archive::ArchiveTarget,
        command: &ArchiveCommand,
    ) -> Result<(), RuntimeError> {
        dispatch!(self, rt => rt.configure_archive(id, target, command).await)
    }
    /// Closes `database`, ends sessions and switches WAL; (LSN, last segment) or None if the
    /// cluster does not archive.
    pub async fn seal_wal(
        &self,
        id: &InstanceId,
        database: &str,
    ) -> Result<Option<(String, String)>, RuntimeError> {
        dispatch!(self, rt => rt.seal_wal(id, database).await)
    }
    /// Completes the current WAL segment (a no-op when nothing was written since the last one).
    pub async fn switch_wal(&self, id: &InstanceId) -> Result<String, RuntimeError> {
        dispatch!(self, rt => rt.switch_wal(id).await)
    }
    /// The current WAL position and the databases' total size.
    pub async fn wal_position(&self, id: &InstanceId) -> Result<WalPosition, RuntimeError> {
        dispatch!(self, rt => rt.wal_position(id).await)
    }
    /// Opens `database` to connections again.
    pub async fn reopen_database(
        &self,
        id: &InstanceId,
        database: &str,
    ) -> Result<(), RuntimeError> {
        dispatch!(self, rt => rt.reopen_database(id, database).await)
    }
    /// Starts the cluster and waits until it accepts connections.
    pub async fn start(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        dispatch!(self, rt => rt.start(id).await)
    }
    /// Stops the cluster (fast shutdown); a stopped or absent cluster is fine.
    pub async fn stop(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        dispatch!(self, rt => rt.stop(id).await)
    }
    pub async fn status(&self, id: &InstanceId) -> Result<ClusterStatus, RuntimeError> {
        dispatch!(self, rt => rt.status(id).await)
    }
    /// The archiver's statistics of a running cluster.
    pub async fn archiver_stats(&self, id: &InstanceId) -> Result<ArchiverStats, RuntimeError> {
        dispatch!(self, rt => rt.archiver_stats(id).await)
    }
    /// Stops the cluster and removes every file of it.
    pub async fn destroy(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        dispatch!(self, rt => rt.destroy(id).await)
    }
    /// Rewrites the configuration for `spec`, reloads, and restarts if a setting needs it.
    pub async fn apply_settings(&self, spec: &ClusterSpec) -> Result<Applied, RuntimeError> {
        dispatch!(self, rt => rt.apply_settings(spec).await)
    }
    /// Creates the NOLOGIN owner role and the application database it owns.
    pub async fn ensure_database(
        &self,
        id: &InstanceId,
        database: &str,
        owner_role: &str,
    ) -> Result<(), RuntimeError> {
        dispatch!(self, rt => rt.ensure_database(id, database, owner_role).await)
    }
    /// Creates (or resets the password of) a login role that is a member of `owner_role`.
    pub async fn create_login_role(
        &self,
        id: &InstanceId,
        role: &str,
        password: &SecretString,
        owner_role: &str,
    ) -> Result<(), RuntimeError> {
        dispatch!(self, rt => rt.create_login_role(id, role, password, owner_role).await)
    }
    /// Switches WAL; (LSN, the segment to wait for in the archive).
    pub async fn switch_wal_segment(
        &self,
        id: &InstanceId,
    ) -> Result<(String, String), RuntimeError> {
        dispatch!(self, rt => rt.switch_wal_segment(id).await)
    }
    /// Takes login and password from every role but the superuser (a clone's copied roles).
    pub async fn revoke_copied_logins(&self, id: &InstanceId) -> Result<Vec<String>, RuntimeError> {
        dispatch!(self, rt => rt.revoke_copied_logins(id).await)
    }
    /// Ends the role's sessions, gives what it owns to `owner_role`, and drops it.
    pub async fn drop_login_role(
        &self,
        id: &InstanceId,
        role: &str,
        owner_role: &str,
    ) -> Result<(), RuntimeError> {
        dispatch!(self, rt => rt.drop_login_role(id, role, owner_role).await)
    }
}
