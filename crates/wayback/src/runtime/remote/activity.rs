//! Issue 19 on agents: each agent samples its own clusters; the broker reads an instance's
//! ring from its agent (`GET /v1/clusters/{id}/activity?since=`) and, for `/metrics`, every
//! agent's counters at once (`GET /v1/activity`, one call per agent, all agents together).
//!
//! An agent that answers 404 predates sampling: it adds nothing to the metrics (said once per
//! agent at info, not at every scrape), and an instance's activity there is a permanent error
//! that says to upgrade it. Must not import `osb`, `broker`, `store` or `jobs`.

use std::time::Duration;

use reqwest::Method;
use wayback_api::activity::{Activity, ActivitySummary};

use super::{older_agent, RemoteRuntime};
use crate::domain::InstanceId;
use crate::runtime::RuntimeError;

/// How long a scrape waits for each agent's counters.
const SUMMARIES_TIMEOUT: Duration = Duration::from_secs(2);

impl RemoteRuntime {
    pub(super) async fn remote_activity(
        &self,
        id: &InstanceId,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Activity, RuntimeError> {
        let agent = self.agent_of(id).await?;
        let mut path = format!("/v1/clusters/{id}/activity");
        if let Some(since) = since {
            let since = since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            path.push_str(&format!("?since={since}"));
        }
        agent
            .call_if_known(Method::GET, &path, None::<&()>, None)
            .await?
            .ok_or_else(|| {
                older_agent(
                    &agent.name,
                    id,
                    "read the activity",
                    "GET /v1/clusters/{id}/activity",
                    "activity sampling",
                )
            })
    }

    pub(super) async fn remote_activity_summaries(&self) -> Vec<ActivitySummary> {
        let answers = futures::future::join_all(self.agents.iter().map(|a| async move {
            let answer: Result<Option<Vec<ActivitySummary>>, RuntimeError> = a
                .call_if_known(
                    Method::GET,
                    "/v1/activity",
                    None::<&()>,
                    Some(SUMMARIES_TIMEOUT),
                )
                .await;
            (a.name.as_str(), answer)
        }))
        .await;
        let mut out = Vec::new();
        for (agent, answer) in answers {
            match answer {
                Ok(Some(mut summaries)) => out.append(&mut summaries),
                Ok(None) => {
                    let mut told = self
                        .told_no_activity
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    if told.insert(agent.to_string()) {
                        tracing::info!(agent, "the agent predates activity sampling (GET /v1/activity answers 404): its instances have no activity metrics until it is upgraded");
                    }
                }
                Err(e) => {
                    tracing::info!(agent, error = %e, "no activity figures from the agent for this scrape")
                }
            }
        }
        out
    }
}
