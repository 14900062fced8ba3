//! The sessions of a local cluster, counted from `/proc` ([`crate::pg::sessions`]): no
//! connection, no lock (the per-instance lock may be held for minutes by a backup or a restart,
//! and the supervisor's idle clock must not wait for it). The broker's and agent's own
//! sessions are the superuser's ([`SUPERUSER`]) and are not clients.
//!
//! A cluster that is not running answers `NotRunning` (transient), not zero: its sessions are
//! unknown, and a stopped, restarting or parked cluster must not look idle to the caller's
//! clock. Must not import `osb`, `broker`, `store` or `jobs`.

use super::{rt, LocalRuntime};
use crate::domain::InstanceId;
use crate::pg::{sessions, PgError, SUPERUSER};
use crate::runtime::{RuntimeError, Sessions};

impl LocalRuntime {
    /// Client backends (the superuser's left out) and walsenders of the running cluster of
    /// `id`; `NoCluster` when it has none, `NotRunning` when no postmaster is live.
    pub async fn sessions(&self, id: &InstanceId) -> Result<Sessions, RuntimeError> {
        let dirs = self.existing(id)?;
        // A few small reads of `/proc` (memory, not disk): done in place, as the quiet marks
        // read `pg_wal/`.
        match sessions::sessions(&dirs.pgdata, &[SUPERUSER]).map_err(rt)? {
            Some(n) => Ok(Sessions {
                clients: n.clients,
                replication: n.replication,
            }),
            None => Err(rt(PgError::NotRunning {
                instance: id.to_string(),
            })),
        }
    }
}
