//! The domain types of HA members (issue 15): what the runtime is given to run one member of an
//! instance under Patroni ([`HaMemberSpec`]) and what it reports of the members
//! ([`HaStatus`], read from Patroni's REST `GET /cluster` by [`parse_cluster`], a pure
//! function). The engine itself is the local runtime's (`local/ha.rs`); the broker's HA jobs
//! are the next step and call only these. Passwords are [`SecretString`]s: they reach Patroni's
//! configuration file (0600, the cluster user's) and the servers as SCRAM verifiers only.
//! Must not import `osb`, `broker`, `store` or `jobs`.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::{ArchiveCommand, ClusterSpec};
use crate::archive::ArchiveTarget;

/// How long a member's leader key lives in the coordinator without being renewed (Patroni's
/// `ttl`, `pg::patroni::TTL_SECS`): a crashed leader is replaced about this long after it died.
pub const LEADER_TTL: std::time::Duration =
    std::time::Duration::from_secs(crate::pg::patroni::TTL_SECS as u64);

/// How a member's data directory comes to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaSeed {
    /// Patroni adopts the data directory Wayback made (`create_cluster`): the scope's first
    /// member, which becomes its leader.
    Adopt,
    /// Patroni seeds it itself with `pg_basebackup` from the scope's leader.
    FromLeader,
    /// Patroni adopts a single-member instance's running cluster (kept under the instance's own
    /// id) as the scope's first member (a plan change to an HA plan): prepared like `Adopt`
    /// while it still serves, then stopped, moved under the member's key and started by Patroni
    /// — its data, port and archive prefix kept, one restart.
    AdoptSingle,
}

/// `sync`: a commit returns only once the standby has it, and only that standby may be promoted
/// (Patroni's `synchronous_mode`); `async`: failover may lose what the standby had not received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Async,
    Sync,
}

/// One member of an HA instance, run by Patroni on this machine.
#[derive(Debug, Clone)]
pub struct HaMemberSpec {
    /// The member's own cluster: instance id (= the Patroni scope), port, plan settings.
    pub cluster: ClusterSpec,
    /// Unique in the scope; letters, digits, `-` and `_`.
    pub member: String,
    pub seed: HaSeed,
    /// etcd client endpoints, `host:port`.
    pub dcs: Vec<String>,
    /// The port of this member's Patroni REST API.
    pub rest_port: u16,
    /// The address the other members (and clients) reach this machine at.
    pub advertise_host: String,
    pub durability: Durability,
    /// The role standbys stream with (made on the adopted primary), and its password.
    pub replication_role: String,
    pub replication_password: SecretString,
    /// The superuser's password, the same on every member (a standby's catalog is the leader's):
    /// the adopted primary's is set to it.
    pub superuser_password: SecretString,
    /// The other members' IP addresses: `pg_hba.conf` lets the replication role in from them.
    pub peer_addresses: Vec<String>,
    /// Where the member archives when it is the leader (its `system_identifier` is the
    /// instance's; an adopted primary's is read from its data directory).
    pub archive: Option<(ArchiveTarget, ArchiveCommand)>,
    /// The agent that runs this member (the remote runtime's: both members share the instance's
    /// id, so the instance's own placement names only one of them). None: where the instance is
    /// placed; the local runtime ignores it.
    pub machine: Option<String>,
}

/// A member's role as Patroni names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "role", content = "name")]
pub enum HaRole {
    Leader,
    /// The standby `synchronous_mode` waits for (the only one that may be promoted).
    SyncStandby,
    Replica,
    /// A role this version does not know (Patroni's own word).
    Other(String),
}

/// One member, as Patroni's `GET /cluster` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaMember {
    pub name: String,
    pub role: HaRole,
    /// Patroni's state: `running`, `streaming`, `starting`, `stopped`, `creating replica`, …
    pub state: String,
    pub timeline: Option<u32>,
    /// How far behind the leader, in bytes (None on the leader, or when Patroni says `unknown`).
    pub lag_bytes: Option<u64>,
    pub host: String,
    pub port: u16,
}

/// Every member of one instance's scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct HaStatus {
    pub members: Vec<HaMember>,
    /// The scope's timeline switches, oldest first, from Patroni's `GET /history`
    /// ([`super::ha_ops`]); empty when Patroni could not be asked for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<super::ha_ops::TimelineSwitch>,
}

impl HaStatus {
    pub fn leader(&self) -> Option<&HaMember> {
        self.members.iter().find(|m| m.role == HaRole::Leader)
    }

    pub fn member(&self, name: &str) -> Option<&HaMember> {
        self.members.iter().find(|m| m.name == name)
    }
}

/// Reads Patroni's `GET /cluster` answer. Unknown fields are ignored; a member without a name
/// is left out.
pub fn parse_cluster(body: &serde_json::Value) -> HaStatus {
    let members = body["members"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|m| {
            let name = m["name"].as_str()?.to_string();
            let role = match m["role"].as_str().unwrap_or_default() {
                "leader" => HaRole::Leader,
                "sync_standby" => HaRole::SyncStandby,
                "replica" => HaRole::Replica,
                other => HaRole::Other(other.to_string()),
            };
            Some(HaMember {
                name,
                role,
                state: m["state"].as_str().unwrap_or("unknown").to_string(),
                timeline: m["timeline"].as_u64().and_then(|t| u32::try_from(t).ok()),
                lag_bytes: m["lag"].as_u64(),
                host: m["host"].as_str().unwrap_or_default().to_string(),
                port: m["port"]
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or(0),
            })
        })
        .collect();
    HaStatus {
        members,
        history: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_patronis_cluster_answer() {
        let body = json!({
            "scope": "inst",
            "members": [
                {"name": "m1", "role": "leader", "state": "running", "api_url": "http://127.0.0.1:8008/patroni",
                 "host": "127.0.0.1", "port": 5432, "timeline": 2},
                {"name": "m2", "role": "sync_standby", "state": "streaming", "host": "127.0.0.1",
                 "port": 5433, "timeline": 2, "lag": 0},
                {"name": "m3", "role": "replica", "state": "running", "host": "10.0.0.3",
                 "port": 5434, "lag": "unknown"},
                {"name": "m4", "role": "standby_leader", "state": "running", "host": "h", "port": 1},
                {"role": "replica"}
            ]
        });
        let status = parse_cluster(&body);
        assert_eq!(status.members.len(), 4);
        assert_eq!(status.leader().unwrap().name, "m1");
        assert_eq!(status.leader().unwrap().timeline, Some(2));
        let m2 = status.member("m2").unwrap();
        assert_eq!(
            (m2.role.clone(), m2.lag_bytes, m2.port),
            (HaRole::SyncStandby, Some(0), 5433)
        );
        let m3 = status.member("m3").unwrap();
        assert_eq!((m3.lag_bytes, m3.timeline), (None, None));
        assert_eq!(
            status.member("m4").unwrap().role,
            HaRole::Other("standby_leader".into())
        );
        assert_eq!(parse_cluster(&json!({})), HaStatus::default());
    }
}
