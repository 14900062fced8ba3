//! HA members on agents (issue 15): the remote runtime's `ha_start_member`, `ha_status`,
//! `ha_switchover`, `ha_release_member` and `supports_ha`, each the agent's local call (`PUT`/`GET
//! /v1/clusters/{id}/ha`, `POST /v1/clusters/{id}/ha/switchover`, `POST /v1/clusters/{member
//! key}/ha/release`).
//!
//! An HA instance's members share its id on different agents, so the instance's placement
//! names only one of them: `ha_start_member` goes to [`HaMemberSpec::machine`] (else to the
//! placed agent), and `ha_status` / `ha_switchover` ask the placed agent first and then every
//! other agent until one answers (any member's Patroni knows the whole scope; after a crash
//! the placed agent's member may be the one down). `ha_release_member` goes to the agent
//! holding the member (its key's `ha_members` row, through the resolver); an agent older than
//! the call answers 404, a permanent error that says to upgrade it. Must not import `osb`, `broker`, `store` or
//! `jobs`.

use std::time::Duration;

use reqwest::Method;
use secrecy::ExposeSecret;
use wayback_api::agent as wire;

use super::{AgentClient, RemoteRuntime};
use crate::domain::InstanceId;
use crate::runtime::ha::{Durability, HaMemberSpec, HaSeed, HaStatus};
use crate::runtime::{ClusterSpec, RuntimeError};

/// A member's start may stop and start its server (the adopted primary) before Patroni runs.
const START_MEMBER_TIMEOUT: Duration = Duration::from_secs(600);
/// The agent waits for the new leader (up to a minute) after Patroni accepted a switchover.
const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(180);
/// A release waits for Patroni's clean shutdown (up to a minute) and then stops the server.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(300);

impl RemoteRuntime {
    pub(super) async fn remote_supports_ha(&self) -> bool {
        let answers = self.capacities().await;
        let mut any = false;
        for (_, answer) in answers {
            if let Ok(cap) = answer {
                if !cap.ha {
                    return false;
                }
                any = true;
            }
        }
        any
    }

    pub(super) async fn remote_ha_start_member(
        &self,
        spec: &HaMemberSpec,
    ) -> Result<(), RuntimeError> {
        let id = &spec.cluster.instance;
        let agent = match &spec.machine {
            Some(name) => self.agent(name).ok_or_else(|| RuntimeError::Unreachable {
                agent: name.clone(),
                message: "no such agent in agents.urls".into(),
            })?,
            None => self.agent_of(id).await?,
        };
        let body = wire::HaMemberBody {
            cluster: wire::ClusterBody {
                port: spec.cluster.port,
                settings: spec.cluster.settings.clone(),
                require_tls: spec.cluster.require_tls,
            },
            member: spec.member.clone(),
            seed: match spec.seed {
                HaSeed::Adopt => "adopt",
                HaSeed::FromLeader => "from_leader",
                HaSeed::AdoptSingle => "adopt_single",
            }
            .into(),
            dcs: spec.dcs.clone(),
            rest_port: spec.rest_port,
            advertise_host: spec.advertise_host.clone(),
            durability: match spec.durability {
                Durability::Async => "async",
                Durability::Sync => "sync",
            }
            .into(),
            replication_role: spec.replication_role.clone(),
            replication_password: spec.replication_password.expose_secret().to_string(),
            superuser_password: spec.superuser_password.expose_secret().to_string(),
            peer_addresses: spec.peer_addresses.clone(),
            archive: spec
                .archive
                .as_ref()
                .map(|(target, command)| wire::ArchiveBody {
                    prefix: target.prefix.clone(),
                    archive_timeout_secs: command.archive_timeout_secs,
                }),
            system_identifier: spec
                .archive
                .as_ref()
                .map_or(0, |(target, _)| target.system_identifier),
        };
        agent
            .call(
                Method::PUT,
                &format!("/v1/clusters/{id}/ha"),
                Some(&body),
                Some(START_MEMBER_TIMEOUT),
            )
            .await
    }

    pub(super) async fn remote_ha_status(&self, id: &InstanceId) -> Result<HaStatus, RuntimeError> {
        let path = format!("/v1/clusters/{id}/ha");
        let mut first_error = None;
        for agent in self.ha_agents(id).await {
            match agent
                .call::<HaStatus, ()>(Method::GET, &path, None, None)
                .await
            {
                Ok(status) if !status.members.is_empty() => return Ok(status),
                Ok(_) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(HaStatus::default()),
        }
    }

    pub(super) async fn remote_ha_switchover(
        &self,
        id: &InstanceId,
        candidate: Option<&str>,
    ) -> Result<String, RuntimeError> {
        let path = format!("/v1/clusters/{id}/ha/switchover");
        let body = wire::HaSwitchoverBody {
            candidate: candidate.map(str::to_string),
        };
        let mut first_error = None;
        for agent in self.ha_agents(id).await {
            match agent
                .call::<wire::HaSwitchoverAnswer, _>(
                    Method::POST,
                    &path,
                    Some(&body),
                    Some(SWITCHOVER_TIMEOUT),
                )
                .await
            {
                Ok(answer) => return Ok(answer.leader),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| RuntimeError::NotPlaced(id.to_string())))
    }

    pub(super) async fn remote_ha_release_member(
        &self,
        member: &InstanceId,
        single: &ClusterSpec,
    ) -> Result<(), RuntimeError> {
        let agent = self.agent_of(member).await?;
        let body = wire::HaReleaseBody {
            cluster: wire::ClusterBody {
                port: single.port,
                settings: single.settings.clone(),
                require_tls: single.require_tls,
            },
        };
        let path = format!("/v1/clusters/{member}/ha/release");
        match agent
            .call_if_known::<(), _>(Method::POST, &path, Some(&body), Some(RELEASE_TIMEOUT))
            .await?
        {
            Some(()) => Ok(()),
            None => Err(older_agent(&agent.name, member)),
        }
    }

    /// The instance's placed agent first (when it is known), then every other agent.
    async fn ha_agents(&self, id: &InstanceId) -> Vec<&AgentClient> {
        let placed = self.agent_of(id).await.ok().map(|a| a.name.clone());
        let mut agents: Vec<&AgentClient> = self.agents.iter().collect();
        agents.sort_by_key(|a| Some(&a.name) != placed.as_ref());
        agents
    }
}

/// An agent without the release route (a version before it): nothing was changed there, and
/// retrying does not help until the agent is upgraded.
fn older_agent(agent: &str, member: &InstanceId) -> RuntimeError {
    RuntimeError::Agent {
        agent: agent.to_string(),
        message: format!(
            "cannot release HA member {member}: the agent does not serve POST \
             /v1/clusters/{{id}}/ha/release (an older wayback agent); upgrade it to the broker's \
             version, then ask the plan change again"
        ),
        permanent: true,
        user_message: Some(
            "the database VM holding the first member runs an older agent that cannot make it a \
             single cluster again; the instance stays highly available with that member \
             leading. Ask your operator to upgrade the agents, then change the plan again."
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::ClusterRuntime;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    /// A runtime with one agent, `old`, at `server`, holding every key.
    fn runtime(server: &MockServer) -> RemoteRuntime {
        super::super::one_agent_runtime(server, "old")
    }

    fn single(id: &InstanceId) -> ClusterSpec {
        ClusterSpec {
            instance: id.clone(),
            port: 5433,
            settings: Default::default(),
            require_tls: false,
        }
    }

    /// An agent older than the release answers 404 (with the agent's own "no such agent API
    /// path" body, or actix's empty one): a permanent error naming the upgrade, never retried.
    #[tokio::test]
    async fn an_older_agents_404_is_a_permanent_error_that_says_to_upgrade() {
        let id = InstanceId::parse("0a1b2c3d-0000-4000-8000-000000000001").unwrap();
        let member = id.member_key("m1");
        for answer in [
            ResponseTemplate::new(404).set_body_json(serde_json::json!({
                "message": "no such agent API path", "permanent": true
            })),
            ResponseTemplate::new(404),
        ] {
            let server = MockServer::start().await;
            Mock::given(method("POST"))
                .and(path(format!("/v1/clusters/{member}/ha/release")))
                .respond_with(answer)
                .expect(1)
                .mount(&server)
                .await;
            let rt = runtime(&server);
            let e = rt
                .ha_release_member(&member, &single(&id))
                .await
                .unwrap_err();
            assert!(e.is_permanent(), "{e}");
            assert!(e.to_string().contains("upgrade"), "{e}");
            assert!(
                e.user_message().is_some_and(|m| m.contains("upgrade")),
                "{e:?}"
            );
        }
    }

    /// A newer agent's answer: the member key in the path, the single cluster in the body.
    #[tokio::test]
    async fn the_release_names_the_member_and_the_single_cluster() {
        let id = InstanceId::parse("0a1b2c3d-0000-4000-8000-000000000002").unwrap();
        let member = id.member_key("m1");
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(format!("/v1/clusters/{member}/ha/release")))
            .and(wiremock::matchers::body_partial_json(serde_json::json!({
                "cluster": { "port": 5433 }
            })))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!(null)))
            .expect(1)
            .mount(&server)
            .await;
        runtime(&server)
            .ha_release_member(&member, &single(&id))
            .await
            .unwrap();
    }
}
