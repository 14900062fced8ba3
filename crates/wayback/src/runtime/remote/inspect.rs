//! Inspections on agents (issue 19): the remote runtime's `inspect` is the agent's local one,
//! `POST /v1/clusters/{id}/inspect` with `{"kind": "locks" | "outliers" | "diagnose"}`,
//! answered with an [`Inspection`] (tagged by `kind`).
//!
//! An agent older than the route answers 404: a permanent error that says to upgrade it, never
//! retried (as for idle stop, `idle.rs`). Must not import `osb`, `broker`, `store` or `jobs`.

use std::time::Duration;

use reqwest::Method;
use serde::Serialize;

use super::{older_agent, RemoteRuntime};
use crate::domain::InstanceId;
use crate::runtime::{InspectKind, Inspection, RuntimeError};

/// An inspection reads each database in turn, each query bounded by the agent's own
/// statement timeout; more than this and the agent is not answering.
const INSPECT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Serialize)]
struct InspectBody {
    kind: InspectKind,
}

impl RemoteRuntime {
    pub(super) async fn remote_inspect(
        &self,
        id: &InstanceId,
        kind: InspectKind,
    ) -> Result<Inspection, RuntimeError> {
        let agent = self.agent_of(id).await?;
        let path = format!("/v1/clusters/{id}/inspect");
        let body = InspectBody { kind };
        agent
            .call_if_known(Method::POST, &path, Some(&body), Some(INSPECT_TIMEOUT))
            .await?
            .ok_or_else(|| {
                older_agent(
                    &agent.name,
                    id,
                    "inspect the cluster",
                    "POST /v1/clusters/{id}/inspect",
                    "diagnose",
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::ClusterRuntime;
    use wiremock::matchers::{body_json, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    const ID: &str = "0a1b2c3d-0000-4000-8000-000000000019";

    fn runtime(server: &MockServer) -> RemoteRuntime {
        super::super::one_agent_runtime(server, "a")
    }

    #[tokio::test]
    async fn an_older_agents_404_says_to_upgrade_and_is_permanent() {
        let id = InstanceId::parse(ID).unwrap();
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(format!("/v1/clusters/{id}/inspect")))
            .respond_with(ResponseTemplate::new(404).set_body_json(serde_json::json!({
                "message": "no such agent API path", "permanent": true
            })))
            .expect(1)
            .mount(&server)
            .await;
        let e = runtime(&server)
            .inspect(&id, InspectKind::Locks)
            .await
            .unwrap_err();
        assert!(e.is_permanent(), "{e}");
        assert!(e.to_string().contains("upgrade"), "{e}");
    }

    #[tokio::test]
    async fn a_newer_agent_is_asked_for_the_kind_and_its_answer_read() {
        let id = InstanceId::parse(ID).unwrap();
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(format!("/v1/clusters/{id}/inspect")))
            .and(body_json(serde_json::json!({"kind": "outliers"})))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "kind": "outliers", "at": "2026-12-07T03:00:00Z", "available": false,
                "statements": []
            })))
            .expect(1)
            .mount(&server)
            .await;
        let answer = runtime(&server)
            .inspect(&id, InspectKind::Outliers)
            .await
            .unwrap();
        let Inspection::Outliers(o) = answer else {
            panic!("{answer:?}")
        };
        assert!(!o.available);
    }
}
