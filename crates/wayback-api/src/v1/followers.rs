//! Followers in an `INSTANCE` (added after v1's first release, so every field reads with a
//! default): a follower's leader and lag, a leader's followers. Measured when the document
//! is asked for; a follower or leader that did not answer shows state `unknown`.

use serde::{Deserialize, Serialize};

/// Where a follower's WAL comes from now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FollowerState {
    /// Streaming from its leader.
    Streaming,
    /// Behind, replaying what its leader archived; streams again once it can.
    CatchingUp,
    /// No stream from the leader now, and nothing to replay.
    Disconnected,
    /// The follower or its leader did not answer in time.
    #[default]
    Unknown,
    /// A state a newer broker knows and this reader does not; written back as it came.
    #[serde(untagged)]
    Other(String),
}

impl FollowerState {
    pub fn as_str(&self) -> &str {
        match self {
            FollowerState::Streaming => "streaming",
            FollowerState::CatchingUp => "catching_up",
            FollowerState::Disconnected => "disconnected",
            FollowerState::Unknown => "unknown",
            FollowerState::Other(s) => s,
        }
    }
}

impl std::fmt::Display for FollowerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Another instance, by id and current name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRef {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// A follower's leader and how far behind it the follower is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FollowerOf {
    pub leader: InstanceRef,
    #[serde(default)]
    pub state: FollowerState,
    /// WAL not replayed yet; None when unknown.
    #[serde(default)]
    pub lag_bytes: Option<u64>,
    /// Seconds behind (0 when caught up); None when unknown.
    #[serde(default)]
    pub lag_seconds: Option<f64>,
    /// The follower runs on its leader's machine (no other agent had room).
    #[serde(default)]
    pub same_machine: bool,
}

/// One follower of a leader.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FollowerSummary {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub state: FollowerState,
    #[serde(default)]
    pub lag_bytes: Option<u64>,
    #[serde(default)]
    pub lag_seconds: Option<f64>,
}
