//! Measuring followers: one look at a leader and its followers, turned into each follower's
//! [`FollowerLag`] (state, lag in bytes and seconds, the xmin age its feedback holds on the
//! leader). Used by `GET /v2/service_instances/:id`, `/wayback/v1` and the metrics, each time
//! they are asked: nothing is stored.
//!
//! Every call is bounded by the caller's timeout, and a side that does not answer (an agent
//! down, a cluster stopped) makes the follower's state [`FollowerState::Unknown`], never an
//! error: a view must not fail because a replica is away. Only reads: nothing here starts a
//! cluster. Must not import `osb`, `broker`, `store` or `jobs`.

use std::time::Duration;

use super::{ClusterRuntime, ReplicationStatus, StandbyStatus};
use crate::domain::{follower_slot, FollowerLag, FollowerState, InstanceId};

/// What one look at `leader` and each of `followers` finds, in the order of `followers`; each
/// call waits at most `timeout`, and the followers are asked at once.
pub async fn observe<R: ClusterRuntime + ?Sized>(
    rt: &R,
    leader: &InstanceId,
    followers: &[InstanceId],
    timeout: Duration,
) -> Vec<FollowerLag> {
    let position = bounded("WAL position", leader, timeout, rt.wal_position(leader));
    let slots = bounded(
        "replication status",
        leader,
        timeout,
        rt.replication_status(leader),
    );
    let standbys = futures::future::join_all(
        followers
            .iter()
            .map(|f| bounded("standby status", f, timeout, rt.standby_status(f))),
    );
    let (position, slots, standbys) = tokio::join!(position, slots, standbys);
    let now = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
    followers
        .iter()
        .zip(standbys)
        .map(|(follower, standby)| {
            let slot_name = follower_slot(follower);
            let slot = slots.iter().flatten().find(|s| s.slot == slot_name);
            assess(
                follower,
                standby.as_ref(),
                position.as_ref().map(|p| p.current_lsn),
                slot,
                now,
            )
        })
        .collect()
}

/// What `call` answered within `timeout`; None (logged) when it failed or did not answer.
async fn bounded<T>(
    what: &'static str,
    id: &InstanceId,
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, super::RuntimeError>>,
) -> Option<T> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            tracing::debug!(instance = %id, error = %e, "no {what}");
            None
        }
        Err(_) => {
            tracing::debug!(instance = %id, "{what} timed out");
            None
        }
    }
}

/// One follower's lag from what was found: its own status (None: no answer), its leader's
/// current LSN (None: no answer) and its slot on the leader (None: not found), at `now` (Unix
/// seconds).
pub fn assess(
    follower: &InstanceId,
    standby: Option<&StandbyStatus>,
    leader_lsn: Option<u64>,
    slot: Option<&ReplicationStatus>,
    now: f64,
) -> FollowerLag {
    let Some(standby) = standby.filter(|s| s.in_recovery) else {
        return FollowerLag {
            xmin_age: slot.and_then(|s| s.xmin_age),
            ..FollowerLag::unknown(follower.clone())
        };
    };
    let lag_bytes = match (leader_lsn, standby.replay_lsn) {
        (Some(leader), Some(replayed)) => Some(leader.saturating_sub(replayed)),
        _ => None,
    };
    let state = if standby.streaming {
        FollowerState::Streaming
    } else if lag_bytes == Some(0) {
        FollowerState::Disconnected
    } else {
        FollowerState::CatchingUp
    };
    let lag_seconds = match lag_bytes {
        Some(0) => Some(0.0),
        _ => match (state, slot.and_then(|s| s.replay_lag_secs)) {
            (FollowerState::Streaming, Some(secs)) => Some(secs),
            _ => standby.last_replay.map(|t| (now - t).max(0.0)),
        },
    };
    FollowerLag {
        follower: follower.clone(),
        state,
        lag_bytes,
        lag_seconds,
        xmin_age: slot.and_then(|s| s.xmin_age),
    }
}

/// How long [`observe`] waits for each side when a caller has no reason to choose.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> InstanceId {
        InstanceId::parse("f0000000-0000-4000-8000-000000000001").unwrap()
    }

    fn standby(streaming: bool, replay: u64, last_replay: f64) -> StandbyStatus {
        StandbyStatus {
            in_recovery: true,
            receive_lsn: Some(replay),
            replay_lsn: Some(replay),
            last_replay: Some(last_replay),
            streaming,
            receiver_status: streaming.then(|| "streaming".into()),
        }
    }

    #[test]
    fn a_caught_up_streaming_follower_has_no_lag() {
        let slot = ReplicationStatus {
            slot: follower_slot(&id()),
            xmin_age: Some(7),
            replay_lag_secs: Some(0.4),
            ..ReplicationStatus::default()
        };
        let lag = assess(
            &id(),
            Some(&standby(true, 100, 1.0)),
            Some(100),
            Some(&slot),
            50.0,
        );
        assert_eq!(lag.state, FollowerState::Streaming);
        assert_eq!((lag.lag_bytes, lag.lag_seconds), (Some(0), Some(0.0)));
        assert_eq!(lag.xmin_age, Some(7));
    }

    #[test]
    fn behind_it_streams_with_replay_lag_or_catches_up_from_the_archive() {
        let slot = ReplicationStatus {
            replay_lag_secs: Some(1.5),
            ..ReplicationStatus::default()
        };
        let streaming = assess(
            &id(),
            Some(&standby(true, 60, 40.0)),
            Some(100),
            Some(&slot),
            50.0,
        );
        assert_eq!(
            (streaming.state, streaming.lag_bytes, streaming.lag_seconds),
            (FollowerState::Streaming, Some(40), Some(1.5))
        );
        let archive = assess(
            &id(),
            Some(&standby(false, 60, 40.0)),
            Some(100),
            None,
            50.0,
        );
        assert_eq!(
            (archive.state, archive.lag_bytes, archive.lag_seconds),
            (FollowerState::CatchingUp, Some(40), Some(10.0))
        );
        let idle = assess(
            &id(),
            Some(&standby(false, 100, 40.0)),
            Some(100),
            None,
            50.0,
        );
        assert_eq!(idle.state, FollowerState::Disconnected);
    }

    #[test]
    fn a_side_that_does_not_answer_makes_it_unknown() {
        assert_eq!(
            assess(&id(), None, Some(1), None, 0.0).state,
            FollowerState::Unknown
        );
        let no_leader = assess(&id(), Some(&standby(true, 5, 1.0)), None, None, 0.0);
        assert_eq!(
            (no_leader.state, no_leader.lag_bytes),
            (FollowerState::Streaming, None)
        );
        let promoted = StandbyStatus::default();
        assert_eq!(
            assess(&id(), Some(&promoted), Some(1), None, 0.0).state,
            FollowerState::Unknown
        );
    }
}
