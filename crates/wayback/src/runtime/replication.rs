//! The domain types of followers' replication that the runtime is given: what a leader grants
//! a follower ([`ReplicationGrant`]) and how a follower is made ([`FollowSpec`]). What the
//! runtime reports back is on the wire (`wayback_api::agent::{ReplicationStatus,
//! StandbyStatus}`). Passwords are [`SecretString`]s: only their SCRAM verifiers reach a
//! server, and the follower's copy is a passfile outside its data directory.
//! Must not import `osb`, `broker`, `store` or `jobs`.

use secrecy::SecretString;

use crate::archive::layout::InstancePrefix;

/// What a leader allows one follower: a `REPLICATION LOGIN` role with this password, a
/// physical slot, and a `pg_hba.conf` line for replication from `follower_address` only.
#[derive(Debug, Clone)]
pub struct ReplicationGrant {
    /// Lower-case letters, digits and `_` (it is written into `pg_hba.conf` unquoted).
    pub role: String,
    pub password: SecretString,
    pub slot: String,
    /// The follower's IP address, as the leader sees its connections.
    pub follower_address: String,
}

/// A follower's standby restore: seeded from the leader's newest base backup, fed by the
/// leader's archive, streaming from the leader through its slot.
#[derive(Debug, Clone)]
pub struct FollowSpec {
    /// The follower's own port.
    pub port: u16,
    /// The leader's archive, only read (`restore_command`).
    pub leader: InstancePrefix,
    pub leader_system_identifier: u64,
    /// Where the leader listens, as the follower connects to it.
    pub leader_host: String,
    pub leader_port: u16,
    /// The replication role and password the leader granted ([`ReplicationGrant`]).
    pub role: String,
    pub password: SecretString,
    pub slot: String,
}
