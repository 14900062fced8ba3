//! An HA instance's members in an `INSTANCE` (issue 15; added after v1's first release, so
//! every field reads with a default): each member's machine, role, state and lag as Patroni
//! shows them when the document is asked for, and the changes of leader. A member Patroni did
//! not describe has no role.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The members of an HA instance and its failovers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ha {
    #[serde(default)]
    pub members: Vec<HaMember>,
    /// Changes of leader since the first leader (failovers and switchovers); absent when
    /// Patroni could not be asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failovers: Option<u64>,
    /// The newest change of leader; absent when none happened or Patroni could not be asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover: Option<Failover>,
}

/// One member of an HA instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaMember {
    #[serde(default)]
    pub name: String,
    /// The agent whose machine runs it; null: the broker's own machine.
    #[serde(default)]
    pub machine: Option<String>,
    #[serde(default)]
    pub port: u16,
    /// Patroni's word: `leader`, `sync_standby`, `replica`, …
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub lag_bytes: Option<u64>,
    #[serde(default)]
    pub timeline: Option<u32>,
}

/// A change of leader: the timeline that ended and the one the new leader began.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failover {
    #[serde(default)]
    pub at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub from_timeline: u32,
    #[serde(default)]
    pub to_timeline: u32,
    /// Where the old timeline ended.
    #[serde(default)]
    pub lsn: String,
    #[serde(default)]
    pub new_leader: Option<String>,
}

/// The body of `POST /wayback/v1/instances/{instance_id}/switchover` (optional): the member to
/// hand the lead to; without it, the healthy standby Patroni would pick.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchoverRequest {
    #[serde(default)]
    pub to: Option<String>,
}

/// The answer to a switchover: the member that led and the one that leads now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switchover {
    pub instance_id: String,
    pub from: String,
    pub to: String,
}
