//! The agent API: what `wayback agent` serves on `/v1/...` and the broker's remote runtime
//! sends. JSON; every error is a [`WireError`] whose `permanent` flag tells the broker whether
//! retrying the step can help.
//!
//! Versioned by path (`/v1/…`): add fields with defaults, never change one. A broker and its
//! agents are upgraded one after the other, so each side reads what the other version writes:
//! states and phases are enums here, but a value this side does not know is read as the one an
//! older broker fell back to (see [`RestoreState`] and [`RestorePhase`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

impl WireError {
    /// The HTTP status an agent answers with: 409 when the port is taken, 422 when retrying
    /// cannot help, 503 when it may.
    pub fn http_status(&self) -> u16 {
        if self.port_in_use.is_some() {
            409
        } else if self.permanent {
            422
        } else {
            503
        }
    }
}

/// `GET /v1/health` (no authentication).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub status: HealthStatus,
    pub version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Ok,
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
    /// The agent runs HA members (issue 15: `PUT /v1/clusters/{id}/ha` and the calls beside
    /// it); absent (an older agent): false.
    #[serde(default)]
    pub ha: bool,
    /// The agent takes a base backup from an HA standby (`BackupBody::leader`, issue 15 point
    /// 4); absent (an older agent, which would wait for a standby's backup history file that
    /// never comes): false, and the broker takes it from the leader.
    #[serde(default)]
    pub standby_backup: bool,
    /// The agent counts its clusters' sessions and stops idle ones (issue 17: `GET
    /// /v1/clusters/{id}/sessions`, `POST /v1/clusters/{id}/park`, and its clusters may be
    /// `Parked`). Absent (an older agent, which answers 404 to both routes): false, and the
    /// broker never asks it to park a cluster (its remote runtime turns that 404 into a
    /// permanent error saying to upgrade the agent).
    #[serde(default)]
    pub idle_stop: bool,
}

/// `PUT /v1/clusters/{id}` and `POST /v1/clusters/{id}/settings`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterBody {
    pub port: u16,
    pub settings: BTreeMap<String, String>,
    /// The plan requires TLS on every TCP connection; absent (an older broker): false.
    #[serde(default)]
    pub require_tls: bool,
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
    /// A role that only reads `database` (not a member of the owner role); false from a broker
    /// older than read-only bindings.
    #[serde(default)]
    pub read_only: bool,
    /// The app database a read-only role may connect to and read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

/// Whether an instance's cluster exists and runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterStatus {
    /// No data directory.
    Absent,
    /// Data directory present, no live postmaster.
    Stopped,
    /// A live postmaster that answers `pg_isready`.
    Running,
    /// Stopped because it was idle (issue 17): no postmaster, its port held by the runtime's
    /// wake listener, which starts it on a client's first packet. Not to be started by a
    /// supervisor (a stopped-when-idle cluster stays stopped until a client or the broker
    /// needs it). An older agent never says it.
    Parked,
}

/// `GET /v1/clusters/{id}/sessions`: who is connected to a running cluster right now, read
/// without a session (issue 17's idle clock).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sessions {
    /// Client backends, the broker's and agent's own admin sessions excluded.
    pub clients: u32,
    /// Walsenders (followers, HA standbys, `pg_basebackup`).
    pub replication: u32,
}

/// `GET /v1/clusters/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusBody {
    pub status: ClusterStatus,
}

/// A WAL switch: the LSN and the segment to wait for in the archive.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwitchBody {
    pub lsn: String,
    pub segment: String,
}

/// `GET /v1/clusters/{id}/wal`: `[current LSN, bytes of every database]`, and with
/// `?written=1` a third element, the bytes of WAL records written (`pg_stat_wal.wal_bytes`).
/// The third element is sent only when asked, because a broker older than it reads exactly
/// two; an agent older than it ignores the query and sends two, read here as `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalBody(
    pub u64,
    pub u64,
    #[serde(default, skip_serializing_if = "Option::is_none")] pub Option<u64>,
);

/// `GET /v1/clusters/{id}/archiver`: what a running cluster's archiver reports
/// (`pg_stat_archiver` and `archive_status/`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// The file whose archiving failed last (`pg_stat_archiver.last_failed_wal`); absent from
    /// older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed_wal: Option<String>,
}

/// `POST /v1/clusters/{id}/backup`: a base backup into the instance's own prefix, with the
/// agent's backup settings. The answer is the backup's manifest and timings, in the archive's
/// own format (`wayback::archive`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupBody {
    pub prefix: String,
    pub reason: String,
    /// The cluster is an HA standby streaming from this member key's cluster, which completes
    /// its WAL segment once the stream is done (issue 15 point 4); absent: a primary's backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
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
    /// Try this source's copy kept at delete time first (issue 16); absent: the archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_copy: Option<KeptCopyRef>,
    /// A live source to fork with `pg_basebackup` when it runs on this machine (issue 16);
    /// absent, or not here: the archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_fork_source_id: Option<String>,
}

/// Which kept copy a restore may take, and the checkpoint its `pg_control` must name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptCopyRef {
    pub source_id: String,
    pub checkpoint_lsn: String,
}

/// Whether a restore runs, and how it ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", from = "String")]
pub enum RestoreState {
    /// No restore is known (the agent restarted, or none was asked for): start it again.
    #[default]
    None,
    Running,
    Succeeded,
    Failed,
}

impl From<String> for RestoreState {
    /// A state this side does not know reads as `none`: the broker starts the restore again,
    /// which joins one that runs.
    fn from(s: String) -> Self {
        match s.as_str() {
            "running" => RestoreState::Running,
            "succeeded" => RestoreState::Succeeded,
            "failed" => RestoreState::Failed,
            _ => RestoreState::None,
        }
    }
}

/// Where a restore is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", from = "String")]
pub enum RestorePhase {
    /// Reading manifests and WAL headers to choose a base backup.
    #[default]
    Planning,
    /// Downloading and unpacking the base backup.
    Unpacking,
    /// PostgreSQL replays WAL from the archive up to the target, then promotes.
    Replaying,
    Done,
}

impl From<String> for RestorePhase {
    /// A phase this side does not know (or the empty one an older agent sends with `none`)
    /// reads as `planning`.
    fn from(s: String) -> Self {
        match s.as_str() {
            "unpacking" => RestorePhase::Unpacking,
            "replaying" => RestorePhase::Replaying,
            "done" => RestorePhase::Done,
            _ => RestorePhase::Planning,
        }
    }
}

/// Where a clone's restore is (`GET` or `POST /v1/clusters/{id}/restore`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RestoreStatus {
    pub state: RestoreState,
    pub phase: RestorePhase,
    /// Raw bytes of the base backup unpacked so far, and in all.
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
    /// The restore took the source's copy kept at delete time (issue 16) instead of a base
    /// backup from the archive.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_kept_copy: bool,
    /// Why a kept copy that was asked for was not used (the restore went on from the archive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_copy_refused: Option<String>,
    /// WAL bytes in the archive from the chosen backup's start on (what replay may have read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_bytes: Option<u64>,
    /// The restore copied the running source with `pg_basebackup` (issue 16): its bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_fork_bytes: Option<u64>,
    /// Why a live fork that was asked for was not made (the restore went on from the archive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_fork_refused: Option<String>,
}

/// A deleted instance's data directory kept on a machine after its deprovision (issue 16):
/// shut down cleanly at `checkpoint_lsn`, the same content as the archive up to that point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptCopy {
    pub instance_id: String,
    /// The shutdown checkpoint's LSN as pg_control says it (`0/3000028`).
    pub checkpoint_lsn: String,
    /// The cluster's system identifier, as decimal text.
    pub system_identifier: String,
    /// When it was moved aside, Unix milliseconds.
    pub kept_at: i64,
    /// Bytes on disk.
    pub size_bytes: u64,
}

/// The kept copies on one machine and the room left on its data file system.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptCopies {
    pub copies: Vec<KeptCopy>,
    pub free_bytes: u64,
    pub total_bytes: u64,
}

/// `PUT /v1/clusters/{id}/replication/{slot}`: on the leader, grant a follower its role (this
/// password; only its SCRAM verifier reaches the server), the slot and its `pg_hba` line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicationBody {
    pub role: String,
    pub password: String,
    pub follower_address: String,
}

/// `DELETE /v1/clusters/{id}/replication/{slot}`: withdraw the follower's role, slot and line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DropReplicationBody {
    pub role: String,
}

/// `POST /v1/clusters/{id}/follow` starts (or joins) a follower's standby restore; polled with
/// `GET /v1/clusters/{id}/restore`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FollowBody {
    pub port: u16,
    /// The leader's prefix, only read.
    pub leader_prefix: String,
    pub leader_system_identifier: u64,
    pub leader_host: String,
    pub leader_port: u16,
    pub role: String,
    pub password: String,
    pub slot: String,
    /// Unused and sent empty: a follower's runtime reaches its superuser by peer, so no
    /// agent needs the leader's superuser password (kept for the wire's sake).
    #[serde(default)]
    pub superuser_password: String,
}

/// `POST /v1/clusters/{id}/promote`: the follower's new timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromoteAnswer {
    pub timeline: u32,
}

/// One follower's replication as its leader sees it (`pg_replication_slots` joined with
/// `pg_stat_replication`). LSNs are byte positions; None where the follower is not connected.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicationStatus {
    pub slot: String,
    /// The walsender's role, while one is connected through the slot.
    pub role: Option<String>,
    /// A walsender uses the slot now.
    pub active: bool,
    /// The walsender's state (`startup`, `catchup`, `streaming`, …).
    pub state: Option<String>,
    pub sent_lsn: Option<u64>,
    pub write_lsn: Option<u64>,
    pub flush_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
    /// The leader's current WAL position minus what the follower replayed (or, disconnected,
    /// what the slot still holds for it).
    pub lag_bytes: Option<u64>,
    /// `replay_lag`, seconds.
    pub replay_lag_secs: Option<f64>,
    /// Transactions the follower's feedback holds back vacuum on the leader by
    /// (`age(xmin)` of the slot or walsender).
    pub xmin_age: Option<i64>,
    /// `wal_status` of the slot: `reserved`, `extended`, `unreserved` or `lost` (invalidated by
    /// `max_slot_wal_keep_size`).
    pub wal_status: Option<String>,
}

/// A follower's own view of its replay.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StandbyStatus {
    /// `pg_is_in_recovery()`: false once promoted.
    pub in_recovery: bool,
    /// WAL received by streaming (`pg_last_wal_receive_lsn()`); None before any.
    pub receive_lsn: Option<u64>,
    /// WAL replayed, from the stream or the archive (`pg_last_wal_replay_lsn()`).
    pub replay_lsn: Option<u64>,
    /// Commit time of the last transaction replayed (Unix seconds, fractional).
    pub last_replay: Option<f64>,
    /// The WAL receiver is connected and streaming.
    pub streaming: bool,
    /// `pg_stat_wal_receiver.status`; None while no receiver runs (replaying from the archive).
    pub receiver_status: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The bodies as agents and brokers of the previous version write them.
    #[test]
    fn restore_status_reads_what_every_version_writes() {
        let none: RestoreStatus = serde_json::from_value(json!({
            "state": "none", "phase": "", "bytes_done": 0, "bytes_total": 0,
            "backup_stop": null, "recovering": false, "error": null,
            "backup_id": null, "timeline": null, "total_secs": null
        }))
        .unwrap();
        assert_eq!(none, RestoreStatus::default());
        let failed: RestoreStatus = serde_json::from_value(json!({
            "state": "failed", "phase": "replaying", "bytes_done": 5, "bytes_total": 9,
            "backup_stop": 1_700_000_000, "recovering": true,
            "error": {"message": "no", "permanent": true, "user_message": "nothing to restore"},
            "backup_id": null, "timeline": null, "total_secs": null
        }))
        .unwrap();
        assert_eq!(
            (failed.state, failed.phase, failed.bytes_done),
            (RestoreState::Failed, RestorePhase::Replaying, 5)
        );
        assert_eq!(failed.error.as_ref().map(WireError::http_status), Some(422));
        let again = serde_json::to_value(&failed).unwrap();
        assert_eq!(
            (&again["state"], &again["phase"]),
            (&json!("failed"), &json!("replaying"))
        );
        assert_eq!(again["error"].get("port_in_use"), None);
    }

    /// An older broker's role body is a role of the owner; a read-only one names its database.
    #[test]
    fn role_bodies_of_every_version_read() {
        let old: RoleBody =
            serde_json::from_value(json!({"owner_role": "o", "password": "p"})).unwrap();
        assert!(!old.read_only && old.database.is_none());
        let read_only = RoleBody {
            owner_role: "o".into(),
            password: "p".into(),
            read_only: true,
            database: Some("app".into()),
        };
        assert_eq!(
            serde_json::to_value(&read_only).unwrap(),
            json!({"owner_role": "o", "password": "p", "read_only": true, "database": "app"})
        );
    }

    /// A standby's backup names its leader; a primary's body is an older broker's, and an older
    /// agent's capacity says it takes no standby backups.
    #[test]
    fn backup_bodies_and_capacities_of_every_version_read() {
        let old: BackupBody =
            serde_json::from_value(json!({"prefix": "p", "reason": "schedule"})).unwrap();
        assert!(old.leader.is_none());
        assert_eq!(
            serde_json::to_value(&old).unwrap(),
            json!({"prefix": "p", "reason": "schedule"})
        );
        let standby = BackupBody {
            leader: Some("i1~m1".into()),
            ..old
        };
        assert_eq!(
            serde_json::to_value(&standby).unwrap(),
            json!({"prefix": "p", "reason": "schedule", "leader": "i1~m1"})
        );
        let older_agent: Capacity = serde_json::from_value(json!({
            "instances": 1, "max_instances": 2, "memory_total_bytes": 3,
            "memory_available_bytes": 4, "disk_total_bytes": 5, "disk_available_bytes": 6,
            "advertise_host": "10.0.0.1", "version": "1", "ha": true
        }))
        .unwrap();
        assert!(older_agent.ha && !older_agent.standby_backup && !older_agent.idle_stop);
    }

    #[test]
    fn states_and_statuses_are_lowercase_words() {
        assert_eq!(
            serde_json::to_value(StatusBody {
                status: ClusterStatus::Stopped
            })
            .unwrap(),
            json!({"status": "stopped"})
        );
        assert_eq!(
            serde_json::to_value(Health {
                status: HealthStatus::Ok,
                version: "1".into()
            })
            .unwrap(),
            json!({"status": "ok", "version": "1"})
        );
        assert_eq!(
            serde_json::to_value(WalBody(7, 8, None)).unwrap(),
            json!([7, 8])
        );
        assert_eq!(
            serde_json::to_value(WalBody(7, 8, Some(9))).unwrap(),
            json!([7, 8, 9])
        );
        // An older agent's answer.
        assert_eq!(
            serde_json::from_value::<WalBody>(json!([7, 8])).unwrap(),
            WalBody(7, 8, None)
        );
        let busy = WireError {
            message: "port".into(),
            permanent: false,
            port_in_use: Some(5433),
            user_message: None,
        };
        assert_eq!(busy.http_status(), 409);
    }
}

/// `PUT /v1/clusters/{id}/ha`: make (or start again) this machine's member of an HA instance
/// under Patroni. The passwords travel as the follower calls' do (in the body, over the agent's
/// TLS); the archive target is built from the agent's own settings for `archive.prefix`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HaMemberBody {
    pub cluster: ClusterBody,
    pub member: String,
    /// `adopt`, `from_leader`, or `adopt_single` (a running single cluster under the instance's
    /// id, moved under the member key of the path).
    pub seed: String,
    pub dcs: Vec<String>,
    pub rest_port: u16,
    pub advertise_host: String,
    /// `async` or `sync`.
    pub durability: String,
    pub replication_role: String,
    pub replication_password: String,
    pub superuser_password: String,
    pub peer_addresses: Vec<String>,
    pub archive: Option<ArchiveBody>,
    /// The instance's system identifier, for a seeded member's archive target (an adopted
    /// member's is read from its data directory).
    #[serde(default)]
    pub system_identifier: u64,
}

/// `POST /v1/clusters/{id}/ha/switchover`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HaSwitchoverBody {
    pub candidate: Option<String>,
}

/// The answer of `POST /v1/clusters/{id}/ha/switchover`: the member that leads now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaSwitchoverAnswer {
    pub leader: String,
}

/// `POST /v1/clusters/{member key}/ha/release` (a plan change from an HA plan back to a
/// single-member one): the member of the path, the scope's last, leaves Patroni and becomes the
/// instance's single cluster `cluster` (port, plan settings) under the instance's own id,
/// stopped. An agent older than this call answers 404.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HaReleaseBody {
    pub cluster: ClusterBody,
}
