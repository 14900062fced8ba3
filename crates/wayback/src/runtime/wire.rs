//! The agent API's bodies (`wayback agent` serves them, [`super::remote`] sends them). JSON;
//! every error is a [`WireError`] whose `permanent` flag tells the broker whether retrying the
//! step can help. Versioned by path (`/v1/…`): add fields with defaults, never change one.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// An error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireError {
    pub message: String,
    /// True when retrying cannot help (the operation fails at once).
    pub permanent: bool,
    /// Set when the cluster's port is taken on the agent's machine (the broker picks another).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_in_use: Option<u16>,
    /// What the platform's user may read about it (no paths, no logs), when it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_message: Option<String>,
}

/// `GET /v1/health` (no authentication).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
}

/// `GET /v1/capacity`: what the agent holds and has left.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Capacity {
    /// Cluster directories on the agent (running or not).
    pub instances: u32,
    pub max_instances: u32,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    /// The file system of the agent's data directory.
    pub disk_total_bytes: u64,
    pub disk_available_bytes: u64,
    /// The host binding credentials name for clusters on this agent.
    pub advertise_host: String,
    pub version: String,
}

/// `PUT /v1/clusters/{id}` and `POST /v1/clusters/{id}/settings`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterBody {
    pub port: u16,
    pub settings: BTreeMap<String, String>,
}

/// `PUT /v1/clusters/{id}/archive`: the agent builds the target from its own archive settings
/// (credentials never cross the wire) for this prefix.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArchiveBody {
    pub prefix: String,
    pub archive_timeout_secs: u64,
}

/// `POST /v1/clusters/{id}/seal` and `/reopen`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatabaseBody {
    pub database: String,
}

/// `PUT /v1/clusters/{id}/databases/{db}`, `DELETE /v1/clusters/{id}/roles/{role}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OwnerBody {
    pub owner_role: String,
}

/// `PUT /v1/clusters/{id}/roles/{role}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoleBody {
    pub owner_role: String,
    pub password: String,
}

/// `GET /v1/clusters/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusBody {
    /// `absent`, `stopped` or `running`.
    pub status: String,
}

/// A WAL switch: the LSN and the segment to wait for in the archive.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwitchBody {
    pub lsn: String,
    pub segment: String,
}

/// `POST /v1/clusters/{id}/backup`: a base backup into the instance's own prefix, with the
/// agent's backup settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupBody {
    pub prefix: String,
    pub reason: String,
}

/// `POST /v1/clusters/{id}/restore` starts (or joins) a clone's restore on the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreBody {
    pub port: u16,
    /// The new instance's own prefix.
    pub prefix: String,
    pub source_prefix: String,
    pub source_system_identifier: u64,
    /// None: everything archived.
    pub point_in_time: Option<DateTime<Utc>>,
    pub archive_timeout_secs: u64,
}

/// Where a restore on the agent is (`GET` or `POST /v1/clusters/{id}/restore`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RestoreStatus {
    /// `running`, `succeeded` or `failed`; `none` when the agent knows of no restore.
    pub state: String,
    /// `planning`, `unpacking`, `replaying`, `done`.
    pub phase: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// The chosen base backup's stop time (Unix seconds).
    pub backup_stop: Option<i64>,
    /// `recovery.signal` still present.
    pub recovering: bool,
    /// When failed.
    pub error: Option<WireError>,
    pub backup_id: Option<String>,
    pub timeline: Option<u32>,
    pub total_secs: Option<f64>,
}
