//! A live instance's followers in its `/wayback/v1` document: a follower's `follower` (leader,
//! state, lag, same machine), a leader's `followers`. Measured now through the runtime
//! (`ClusterRuntime::follower_lags`, each call bounded): a side that does not answer shows
//! state `unknown`, never an error. Imports `store`, `runtime` and `domain`.

use std::time::Duration;

use wayback_api::v1;

use super::{internal, ApiError, ApiState};
use crate::domain::{FollowerLag, FollowerState, InstanceId, InstanceState};
use crate::store::InstanceRecord;

/// How long the view waits for each cluster it asks.
const LAG_TIMEOUT: Duration = Duration::from_secs(2);

/// Fills in `view.follower` or `view.followers` for `record`.
pub(super) async fn attach(
    state: &ApiState,
    record: &InstanceRecord,
    view: &mut v1::Instance,
) -> Result<(), ApiError> {
    if let Some(leader_id) = &record.leader_id {
        let leader = state
            .store
            .get_instance(leader_id)
            .await
            .map_err(internal("read a follower's leader"))?;
        let lag = measure(state, leader_id, std::slice::from_ref(record))
            .await
            .pop()
            .unwrap_or_else(|| FollowerLag::unknown(record.id.clone()));
        view.follower = Some(v1::FollowerOf {
            leader: v1::InstanceRef {
                id: leader_id.to_string(),
                name: name_of(state, leader_id).await?,
            },
            state: api_state(lag.state),
            lag_bytes: lag.lag_bytes,
            lag_seconds: lag.lag_seconds,
            same_machine: leader.is_some_and(|l| l.agent == record.agent),
        });
        return Ok(());
    }
    let followers = state
        .store
        .followers_of(&record.id)
        .await
        .map_err(internal("read an instance's followers"))?;
    if followers.is_empty() {
        return Ok(());
    }
    let lags = measure(state, &record.id, &followers).await;
    for (follower, lag) in followers.iter().zip(lags) {
        view.followers.push(v1::FollowerSummary {
            id: follower.id.to_string(),
            name: name_of(state, &follower.id).await?,
            state: api_state(lag.state),
            lag_bytes: lag.lag_bytes,
            lag_seconds: lag.lag_seconds,
        });
    }
    Ok(())
}

/// Each follower's lag; one that is not ready is `unknown` without asking its cluster.
async fn measure(
    state: &ApiState,
    leader: &InstanceId,
    followers: &[InstanceRecord],
) -> Vec<FollowerLag> {
    let flagged: Vec<(InstanceId, bool)> = followers
        .iter()
        .map(|f| (f.id.clone(), f.state == InstanceState::Ready))
        .collect();
    state
        .runtime
        .follower_lags_if_ready(leader, &flagged, LAG_TIMEOUT)
        .await
}

fn api_state(state: FollowerState) -> v1::FollowerState {
    match state {
        FollowerState::Streaming => v1::FollowerState::Streaming,
        FollowerState::CatchingUp => v1::FollowerState::CatchingUp,
        FollowerState::Disconnected => v1::FollowerState::Disconnected,
        FollowerState::Unknown => v1::FollowerState::Unknown,
    }
}

async fn name_of(state: &ApiState, id: &InstanceId) -> Result<Option<String>, ApiError> {
    Ok(state
        .store
        .instance_names(id)
        .await
        .map_err(internal("read an instance's names"))?
        .pop()
        .map(|n| n.name))
}
