//! Followers as users see them: a follower's leader and lag, a leader's followers, in
//! `GET /v2/service_instances/:id`; and every follower's lag for the metrics. Measured at each
//! request through the runtime (`ClusterRuntime::follower_lags`), each call bounded, so a
//! follower or leader that does not answer shows state `unknown` and never fails the request.
//! Imports `store` and `domain`; never `runtime` (the measuring is the runtime's).

use std::time::Duration;

use serde::Serialize;

use super::{Broker, BrokerError};
use crate::domain::{FollowerLag, InstanceId, InstanceState};
use crate::store::InstanceRecord;

/// How long the OSB fetch waits for each cluster it asks.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a metrics scrape waits for each cluster it asks.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);

/// An instance's place among followers, as `GET /v2/service_instances/:id` shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Replication {
    /// The instance follows a leader.
    Follower(FollowerOf),
    /// The instance leads these followers.
    Followers(Vec<FollowerItem>),
}

/// A follower's leader and how far behind it the follower is.
#[derive(Debug, Serialize)]
pub struct FollowerOf {
    pub leader: Named,
    pub state: String,
    pub lag_bytes: Option<u64>,
    pub lag_seconds: Option<f64>,
    /// The follower's cluster runs on its leader's machine (no other agent had room).
    pub same_machine: bool,
}

/// One follower of a leader.
#[derive(Debug, Serialize)]
pub struct FollowerItem {
    pub id: String,
    pub name: Option<String>,
    pub state: String,
    pub lag_bytes: Option<u64>,
    pub lag_seconds: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Named {
    pub id: String,
    pub name: Option<String>,
}

/// One follower's figures for `GET /metrics` (labelled by ids only).
#[derive(Debug)]
pub struct FollowerMetric {
    pub leader: InstanceId,
    pub lag: FollowerLag,
}

impl Broker {
    /// `record`'s leader and lag when it follows one, its followers when it leads any.
    pub(super) async fn replication(
        &self,
        record: &InstanceRecord,
    ) -> Result<Option<Replication>, BrokerError> {
        if let Some(leader_id) = &record.leader_id {
            let leader = self.ctx.store.get_instance(leader_id).await?;
            let lag = self
                .ctx
                .runtime
                .follower_lags(leader_id, std::slice::from_ref(&record.id), FETCH_TIMEOUT)
                .await
                .pop()
                .unwrap_or_else(|| FollowerLag::unknown(record.id.clone()));
            return Ok(Some(Replication::Follower(FollowerOf {
                leader: Named {
                    id: leader_id.to_string(),
                    name: self.current_name(leader_id).await?,
                },
                state: lag.state.to_string(),
                lag_bytes: lag.lag_bytes,
                lag_seconds: lag.lag_seconds,
                same_machine: leader.is_some_and(|l| l.agent == record.agent),
            })));
        }
        let followers = self.ctx.store.followers_of(&record.id).await?;
        if followers.is_empty() {
            return Ok(None);
        }
        let lags = self.lags(&record.id, &followers, FETCH_TIMEOUT).await;
        let mut items = Vec::with_capacity(followers.len());
        for (follower, lag) in followers.iter().zip(lags) {
            items.push(FollowerItem {
                id: follower.id.to_string(),
                name: self.current_name(&follower.id).await?,
                state: lag.state.to_string(),
                lag_bytes: lag.lag_bytes,
                lag_seconds: lag.lag_seconds,
            });
        }
        Ok(Some(Replication::Followers(items)))
    }

    /// Every ready follower's lag, leader by leader, for a metrics scrape.
    pub async fn follower_metrics(&self) -> Result<Vec<FollowerMetric>, BrokerError> {
        let ready = self
            .ctx
            .store
            .instances_in_states(&[InstanceState::Ready])
            .await?;
        let mut by_leader: std::collections::BTreeMap<InstanceId, Vec<InstanceRecord>> =
            Default::default();
        for follower in ready {
            if let Some(leader) = follower.leader_id.clone() {
                by_leader.entry(leader).or_default().push(follower);
            }
        }
        let mut out = Vec::new();
        for (leader, followers) in by_leader {
            for lag in self.lags(&leader, &followers, SCRAPE_TIMEOUT).await {
                out.push(FollowerMetric {
                    leader: leader.clone(),
                    lag,
                });
            }
        }
        Ok(out)
    }

    /// The lag of each of `followers` (not ready ones: unknown, without asking).
    async fn lags(
        &self,
        leader: &InstanceId,
        followers: &[InstanceRecord],
        timeout: Duration,
    ) -> Vec<FollowerLag> {
        let flagged: Vec<(InstanceId, bool)> = followers
            .iter()
            .map(|f| (f.id.clone(), f.state == InstanceState::Ready))
            .collect();
        self.ctx
            .runtime
            .follower_lags_if_ready(leader, &flagged, timeout)
            .await
    }

    async fn current_name(&self, id: &InstanceId) -> Result<Option<String>, BrokerError> {
        Ok(self
            .ctx
            .store
            .instance_names(id)
            .await?
            .pop()
            .map(|n| n.name))
    }
}
