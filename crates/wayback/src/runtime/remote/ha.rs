//! HA members on agents (issue 15): the remote runtime's `ha_start_member`, `ha_status`,
//! `ha_switchover` and `supports_ha`, each the agent's local call (`PUT`/`GET
//! /v1/clusters/{id}/ha`, `POST /v1/clusters/{id}/ha/switchover`).
//!
//! An HA instance's members share its id on different agents, so the instance's placement
//! names only one of them: `ha_start_member` goes to [`HaMemberSpec::machine`] (else to the
//! placed agent), and `ha_status` / `ha_switchover` ask the placed agent first and then every
//! other agent until one answers (any member's Patroni knows the whole scope; after a crash
//! the placed agent's member may be the one down). Must not import `osb`, `broker`, `store` or
//! `jobs`.

use std::time::Duration;

use reqwest::Method;
use secrecy::ExposeSecret;
use wayback_api::agent as wire;

use super::{AgentClient, RemoteRuntime};
use crate::domain::InstanceId;
use crate::runtime::ha::{Durability, HaMemberSpec, HaSeed, HaStatus};
use crate::runtime::RuntimeError;

/// A member's start may stop and start its server (the adopted primary) before Patroni runs.
const START_MEMBER_TIMEOUT: Duration = Duration::from_secs(600);
/// The agent waits for the new leader (up to a minute) after Patroni accepted a switchover.
const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(180);

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

    /// The instance's placed agent first (when it is known), then every other agent.
    async fn ha_agents(&self, id: &InstanceId) -> Vec<&AgentClient> {
        let placed = self.agent_of(id).await.ok().map(|a| a.name.clone());
        let mut agents: Vec<&AgentClient> = self.agents.iter().collect();
        agents.sort_by_key(|a| Some(&a.name) != placed.as_ref());
        agents
    }
}
