//! Idle stop on agents (issue 17): the remote runtime's `sessions` and `park`, each the agent's
//! local call (`GET /v1/clusters/{id}/sessions`, `POST /v1/clusters/{id}/park`).
//!
//! Both routes came with `Capacity::idle_stop`, so an agent that answers 404 to either is older
//! than idle stop: a permanent error that says to upgrade it, never retried. That is also how
//! the broker knows an agent cannot park: its idle clock runs on `sessions`, which such an
//! agent refuses the same way, so no park is ever asked of it; and a park that is asked all the
//! same changes nothing there (a 404 did nothing). Must not import `osb`, `broker`, `store` or
//! `jobs`.

use std::time::Duration;

use reqwest::Method;

use super::{older_agent, RemoteRuntime};
use crate::domain::InstanceId;
use crate::runtime::{RuntimeError, Sessions};

/// A park switches WAL, waits until that segment is archived
/// (`wal.final_archive_timeout_secs`), then stops the server cleanly.
const PARK_TIMEOUT: Duration = Duration::from_secs(600);

impl RemoteRuntime {
    pub(super) async fn remote_sessions(&self, id: &InstanceId) -> Result<Sessions, RuntimeError> {
        let agent = self.agent_of(id).await?;
        let path = format!("/v1/clusters/{id}/sessions");
        agent
            .call_if_known(Method::GET, &path, None::<&()>, None)
            .await?
            .ok_or_else(|| {
                older_agent(
                    &agent.name,
                    id,
                    "count its sessions",
                    "GET /v1/clusters/{id}/sessions",
                    IDLE,
                )
            })
    }

    pub(super) async fn remote_park(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        let agent = self.agent_of(id).await?;
        let path = format!("/v1/clusters/{id}/park");
        agent
            .call_if_known::<(), _>(Method::POST, &path, None::<&()>, Some(PARK_TIMEOUT))
            .await?
            .ok_or_else(|| {
                older_agent(
                    &agent.name,
                    id,
                    "stop it when idle",
                    "POST /v1/clusters/{id}/park",
                    IDLE,
                )
            })
    }
}

/// What an agent without the routes lacks.
const IDLE: &str = "idle stop";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::ClusterRuntime;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    const ID: &str = "0a1b2c3d-0000-4000-8000-000000000017";

    fn runtime(server: &MockServer) -> RemoteRuntime {
        super::super::one_agent_runtime(server, "a")
    }

    /// An agent older than idle stop answers 404 (with the agent's own body, or none) to both
    /// routes: a permanent error naming the upgrade.
    #[tokio::test]
    async fn an_older_agents_404_is_a_permanent_error_that_says_to_upgrade() {
        let id = InstanceId::parse(ID).unwrap();
        for answer in [
            ResponseTemplate::new(404).set_body_json(serde_json::json!({
                "message": "no such agent API path", "permanent": true
            })),
            ResponseTemplate::new(404),
        ] {
            let server = MockServer::start().await;
            Mock::given(method("GET"))
                .and(path(format!("/v1/clusters/{id}/sessions")))
                .respond_with(answer.clone())
                .expect(1)
                .mount(&server)
                .await;
            Mock::given(method("POST"))
                .and(path(format!("/v1/clusters/{id}/park")))
                .respond_with(answer)
                .expect(1)
                .mount(&server)
                .await;
            let rt = runtime(&server);
            let e = rt.sessions(&id).await.unwrap_err();
            assert!(e.is_permanent(), "{e}");
            assert!(e.to_string().contains("upgrade"), "{e}");
            let e = rt.park(&id).await.unwrap_err();
            assert!(e.is_permanent(), "{e}");
            assert!(e.to_string().contains("upgrade"), "{e}");
        }
    }

    /// A newer agent's answers: the counts as they are; a cluster not running there is the
    /// agent's transient error, not an upgrade.
    #[tokio::test]
    async fn a_newer_agent_answers_counts_and_its_own_errors() {
        let id = InstanceId::parse(ID).unwrap();
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path(format!("/v1/clusters/{id}/sessions")))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(serde_json::json!({"clients": 3, "replication": 1})),
            )
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(format!("/v1/clusters/{id}/sessions")))
            .respond_with(ResponseTemplate::new(503).set_body_json(serde_json::json!({
                "message": format!("the cluster of instance {id} is not running"),
                "permanent": false
            })))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path(format!("/v1/clusters/{id}/park")))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!(null)))
            .expect(1)
            .mount(&server)
            .await;
        let rt = runtime(&server);
        assert_eq!(
            rt.sessions(&id).await.unwrap(),
            Sessions {
                clients: 3,
                replication: 1
            }
        );
        let e = rt.sessions(&id).await.unwrap_err();
        assert!(
            !e.is_permanent() && !e.to_string().contains("upgrade"),
            "{e}"
        );
        rt.park(&id).await.unwrap();
    }
}
