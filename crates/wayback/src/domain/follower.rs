//! How a follower is doing, as users are shown it (`GET /v2/service_instances/:id`,
//! `/wayback/v1`, the metrics, `cf followers`): a [`FollowerState`] and its lag. The runtime
//! measures it (`runtime::lag`); this is only the vocabulary, and the name of the physical slot a
//! follower streams through, which the leader reports per slot.

use super::InstanceId;

/// Where a follower's WAL comes from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowerState {
    /// Its WAL receiver streams from the leader.
    Streaming,
    /// Not streaming, and behind: it replays what the leader archived (`restore_command`) and
    /// streams again once the leader lets it.
    CatchingUp,
    /// Not streaming, with nothing to replay: no stream from the leader now.
    Disconnected,
    /// The follower or its leader did not answer in time.
    Unknown,
}

impl FollowerState {
    pub fn as_str(self) -> &'static str {
        match self {
            FollowerState::Streaming => "streaming",
            FollowerState::CatchingUp => "catching_up",
            FollowerState::Disconnected => "disconnected",
            FollowerState::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for FollowerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One follower's state and lag, as one look found them.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowerLag {
    pub follower: InstanceId,
    pub state: FollowerState,
    /// The leader's current WAL position minus what the follower replayed; None when unknown.
    pub lag_bytes: Option<u64>,
    /// 0 when caught up; else the walsender's `replay_lag` while it streams, or the time since
    /// the follower last replayed a commit; None when unknown.
    pub lag_seconds: Option<f64>,
    /// How many transactions the follower's `hot_standby_feedback` holds vacuum back by on the
    /// leader (`age(xmin)` of its slot); None when unknown or nothing is held.
    pub xmin_age: Option<i64>,
}

impl FollowerLag {
    /// Nothing known: the follower or its leader did not answer.
    pub fn unknown(follower: InstanceId) -> Self {
        Self {
            follower,
            state: FollowerState::Unknown,
            lag_bytes: None,
            lag_seconds: None,
            xmin_age: None,
        }
    }
}

/// The physical replication slot a follower streams through on its leader:
/// `wb_follower_` and the follower's id without its dashes, lower-case (a slot name is
/// `[a-z0-9_]`, at most 63 bytes).
pub fn follower_slot(follower: &InstanceId) -> String {
    let tail: String = follower
        .as_str()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .take(63 - "wb_follower_".len())
        .collect();
    format!("wb_follower_{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_followers_slot_is_a_valid_slot_name() {
        let id = InstanceId::parse("3F2A0000-0000-4000-8000-00000000000B").unwrap();
        assert_eq!(
            follower_slot(&id),
            "wb_follower_3f2a000000004000800000000000000b"
        );
        assert_eq!(FollowerState::CatchingUp.to_string(), "catching_up");
    }
}
