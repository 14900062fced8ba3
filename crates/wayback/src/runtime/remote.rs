//! The remote runtime: clusters on agents (`wayback agent`), reached over their HTTP(S) API
//! with basic auth. Each instance lives on the agent recorded with it (in the broker's store,
//! found through the injected [`Resolver`]); new ones go where [`ClusterRuntime::place`] finds
//! the most room. The bodies are [`wayback_api::agent`]'s; each call is the agent's local
//! runtime's call of the same name.
//!
//! An agent that does not answer gives [`RuntimeError::Unreachable`], which the job worker
//! retries with backoff like any transient error, so an agent that comes back within the
//! retries finishes the step; one that stays away fails the operation with a description
//! naming it. The agent's own errors carry whether retrying helps. Must not import `osb`,
//! `broker`, `store` or `jobs`.

mod activity;
mod backup;
mod client;
mod ha;
mod idle;
mod inspect;

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use wayback_api::agent::{self as wire, Capacity, RestoreStatus};

use super::placement::{choose_avoiding, choose_preferring, Placement, PlacementLedger};
use super::{
    AgentSurvey, Applied, ArchiveCommand, ArchiverStats, ClusterRuntime, ClusterSpec,
    ClusterStatus, FollowSpec, ReplicationGrant, ReplicationStatus, RestoreSpec, RoleAccess,
    RuntimeError, StandbyStatus, WalPosition,
};
use crate::archive::layout::InstancePrefix;
use crate::archive::restore::RestoreTarget;
use crate::archive::{ArchiveTarget, BackupOptions, BackupReport};
use crate::config::{AgentEndpoint, AgentsSettings};
use crate::domain::InstanceId;
pub use client::AgentClient;

/// Finds the agent recorded for an instance the runtime has not seen yet (the store, wired in
/// at start-up: the runtime does not import it).
pub type Resolver =
    Box<dyn Fn(InstanceId) -> futures::future::BoxFuture<'static, Option<String>> + Send + Sync>;

pub struct RemoteRuntime {
    agents: Vec<AgentClient>,
    placements: RwLock<HashMap<InstanceId, String>>,
    placing: tokio::sync::Mutex<()>,
    resolver: std::sync::OnceLock<Resolver>,
    /// Agents already said (once) to predate activity sampling.
    told_no_activity: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl RemoteRuntime {
    pub fn new(settings: &AgentsSettings) -> anyhow::Result<Self> {
        use anyhow::Context;
        let password = settings
            .password
            .clone()
            .context("agents.password is not set")?;
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_secs(settings.connect_timeout_secs))
            .timeout(Duration::from_secs(settings.request_timeout_secs));
        if let Some(path) = &settings.ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("read agents.ca_cert {}", path.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("agents.ca_cert {} is not PEM", path.display()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().context("build the agents' HTTP client")?;
        let agents = settings
            .urls
            .iter()
            .map(|AgentEndpoint { name, url }| AgentClient {
                name: name.clone(),
                base: url.trim_end_matches('/').to_string(),
                http: http.clone(),
                username: settings.username.clone(),
                password: password.clone(),
            })
            .collect();
        Ok(Self {
            agents,
            placements: RwLock::new(HashMap::new()),
            placing: tokio::sync::Mutex::new(()),
            resolver: std::sync::OnceLock::new(),
            told_no_activity: std::sync::Mutex::default(),
        })
    }

    pub fn agent_names(&self) -> Vec<String> {
        self.agents.iter().map(|a| a.name.clone()).collect()
    }

    /// Records that `id` lives on `agent` (from the store, or a new placement).
    fn assign(&self, id: &InstanceId, agent: &str) {
        let mut map = self.placements.write().unwrap_or_else(|p| p.into_inner());
        if map.get(id).map(String::as_str) != Some(agent) {
            map.insert(id.clone(), agent.to_string());
        }
    }

    fn agent(&self, name: &str) -> Option<&AgentClient> {
        self.agents.iter().find(|a| a.name == name)
    }

    /// Sets where unknown instances' agents are looked up (once).
    pub fn set_resolver(&self, resolver: Resolver) {
        let _ = self.resolver.set(resolver);
    }

    async fn agent_of(&self, id: &InstanceId) -> Result<&AgentClient, RuntimeError> {
        let known = self
            .placements
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned();
        let name = match known {
            Some(name) => name,
            None => {
                let found = match self.resolver.get() {
                    Some(resolve) => resolve(id.clone()).await,
                    None => None,
                };
                let name = found.ok_or_else(|| RuntimeError::NotPlaced(id.to_string()))?;
                // An instance never moves; an HA member's key is placed again when a plan
                // change to HA follows one back to single, so its row is asked each time.
                if id.member().is_none() {
                    self.assign(id, &name);
                }
                name
            }
        };
        self.agent(&name).ok_or_else(|| RuntimeError::Agent {
            agent: name.clone(),
            message: format!(
                "instance {id} was placed on agent {name:?}, which agents.urls no longer lists; \
                 add it back (same name, its current URL)"
            ),
            permanent: true,
            user_message: None,
        })
    }

    /// The capacity of every agent (an error where it did not answer), asked at once.
    pub async fn capacities(&self) -> Vec<(String, Result<Capacity, RuntimeError>)> {
        futures::future::join_all(
            self.agents
                .iter()
                .map(|a| async move { (a.name.clone(), a.capacity().await) }),
        )
        .await
    }

    /// `method` on the path `/v1/clusters/{id}{rest}` of the instance's agent.
    async fn on_cluster<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        id: &InstanceId,
        method: Method,
        rest: &str,
        body: Option<&B>,
    ) -> Result<T, RuntimeError> {
        let path = format!("/v1/clusters/{id}{rest}");
        self.agent_of(id)
            .await?
            .call(method, &path, body, None)
            .await
    }
}

/// How long a drill on an agent may take (restore, checks and clean-up of a large instance).
const DRILL_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// No body.
const NONE: Option<&()> = None;

#[async_trait]
impl ClusterRuntime for RemoteRuntime {
    /// Checks every agent once at start-up; unreachable ones are logged, not fatal.
    async fn prepare(&self) -> Result<(), RuntimeError> {
        for (name, answer) in self.capacities().await {
            match answer {
                Ok(c) => {
                    tracing::info!(agent = %name, instances = c.instances, max_instances = c.max_instances, host = %c.advertise_host, "agent ready")
                }
                Err(e) => {
                    tracing::warn!(agent = %name, error = %e, "agent not reachable at start-up; instances there wait for it")
                }
            }
        }
        Ok(())
    }

    /// Asks every agent for its capacity (at once), [`choose_avoiding`]s one and records it, under the
    /// placement lock so that concurrent provisions count each other.
    async fn place(
        &self,
        id: &InstanceId,
        ledger: &dyn PlacementLedger,
    ) -> Result<Option<Placement>, RuntimeError> {
        let _placing = self.placing.lock().await;
        let placed = ledger.placed().await.map_err(RuntimeError::Records)?;
        let answers = self.capacities().await;
        let placement = match ledger.preferred() {
            Some(preferred) => choose_preferring(&answers, &placed, Some(preferred))?,
            None => choose_avoiding(&answers, &placed, ledger.avoid())?,
        };
        ledger
            .record(id, &placement)
            .await
            .map_err(RuntimeError::Records)?;
        self.assign(id, &placement.agent);
        tracing::info!(instance = %id, agent = %placement.agent, host = %placement.host, "instance placed");
        Ok(Some(placement))
    }

    async fn survey(&self) -> AgentSurvey {
        AgentSurvey::answered(self.capacities().await)
    }

    async fn create_cluster(&self, spec: &ClusterSpec) -> Result<(), RuntimeError> {
        let body = wire::ClusterBody {
            port: spec.port,
            settings: spec.settings.clone(),
            require_tls: spec.require_tls,
        };
        self.on_cluster(&spec.instance, Method::PUT, "", Some(&body))
            .await
    }

    /// The agent builds the target for the same prefix from its own archive settings
    /// (credentials never cross the wire) and runs its own `wayback` binary.
    async fn configure_archive(
        &self,
        id: &InstanceId,
        target: &ArchiveTarget,
        command: &ArchiveCommand,
    ) -> Result<(), RuntimeError> {
        let body = wire::ArchiveBody {
            prefix: target.prefix.clone(),
            archive_timeout_secs: command.archive_timeout_secs,
        };
        self.on_cluster(id, Method::PUT, "/archive", Some(&body))
            .await
    }

    async fn start(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        self.on_cluster(id, Method::POST, "/start", NONE).await
    }

    async fn stop(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        self.on_cluster(id, Method::POST, "/stop", NONE).await
    }

    async fn park(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        self.remote_park(id).await
    }

    async fn sessions(&self, id: &InstanceId) -> Result<super::Sessions, RuntimeError> {
        self.remote_sessions(id).await
    }

    async fn inspect(
        &self,
        id: &InstanceId,
        kind: super::InspectKind,
    ) -> Result<super::Inspection, RuntimeError> {
        self.remote_inspect(id, kind).await
    }

    async fn activity(
        &self,
        id: &InstanceId,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<wayback_api::activity::Activity, RuntimeError> {
        self.remote_activity(id, since).await
    }

    async fn activity_summaries(&self) -> Vec<wayback_api::activity::ActivitySummary> {
        self.remote_activity_summaries().await
    }

    async fn status(&self, id: &InstanceId) -> Result<ClusterStatus, RuntimeError> {
        let out: wire::StatusBody = self.on_cluster(id, Method::GET, "", NONE).await?;
        Ok(out.status)
    }

    async fn destroy(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        self.on_cluster(id, Method::DELETE, "", NONE).await
    }

    async fn apply_settings(&self, spec: &ClusterSpec) -> Result<Applied, RuntimeError> {
        let body = wire::ClusterBody {
            port: spec.port,
            settings: spec.settings.clone(),
            require_tls: spec.require_tls,
        };
        let restarted: bool = self
            .on_cluster(&spec.instance, Method::POST, "/settings", Some(&body))
            .await?;
        Ok(Applied { restarted })
    }

    async fn ensure_database(
        &self,
        id: &InstanceId,
        database: &str,
        owner_role: &str,
    ) -> Result<(), RuntimeError> {
        let body = wire::OwnerBody {
            owner_role: owner_role.into(),
        };
        let rest = format!("/databases/{database}");
        self.on_cluster(id, Method::PUT, &rest, Some(&body)).await
    }

    async fn create_login_role(
        &self,
        id: &InstanceId,
        role: &str,
        password: &SecretString,
        owner_role: &str,
        access: &RoleAccess,
    ) -> Result<(), RuntimeError> {
        let database = match access {
            RoleAccess::Owner => None,
            RoleAccess::ReadOnly { database } => Some(database.clone()),
        };
        let body = wire::RoleBody {
            owner_role: owner_role.into(),
            password: password.expose_secret().to_string(),
            read_only: database.is_some(),
            database,
        };
        let rest = format!("/roles/{role}");
        self.on_cluster(id, Method::PUT, &rest, Some(&body)).await
    }

    async fn drop_login_role(
        &self,
        id: &InstanceId,
        role: &str,
        owner_role: &str,
    ) -> Result<(), RuntimeError> {
        let body = wire::OwnerBody {
            owner_role: owner_role.into(),
        };
        let rest = format!("/roles/{role}");
        self.on_cluster(id, Method::DELETE, &rest, Some(&body))
            .await
    }

    async fn revoke_copied_logins(&self, id: &InstanceId) -> Result<Vec<String>, RuntimeError> {
        self.on_cluster(id, Method::POST, "/revoke-copied-logins", NONE)
            .await
    }

    async fn seal_wal(
        &self,
        id: &InstanceId,
        database: &str,
    ) -> Result<Option<(String, String)>, RuntimeError> {
        let body = wire::DatabaseBody {
            database: database.into(),
        };
        let out: Option<wire::SwitchBody> = self
            .on_cluster(id, Method::POST, "/seal", Some(&body))
            .await?;
        Ok(out.map(|s| (s.lsn, s.segment)))
    }

    async fn reopen_database(&self, id: &InstanceId, database: &str) -> Result<(), RuntimeError> {
        let body = wire::DatabaseBody {
            database: database.into(),
        };
        self.on_cluster(id, Method::POST, "/reopen", Some(&body))
            .await
    }

    async fn switch_wal(&self, id: &InstanceId) -> Result<String, RuntimeError> {
        Ok(self.switch_wal_segment(id).await?.0)
    }

    async fn switch_wal_segment(&self, id: &InstanceId) -> Result<(String, String), RuntimeError> {
        let out: wire::SwitchBody = self
            .on_cluster(id, Method::POST, "/switch-wal", NONE)
            .await?;
        Ok((out.lsn, out.segment))
    }

    async fn wal_position(&self, id: &InstanceId) -> Result<WalPosition, RuntimeError> {
        let wire::WalBody(current_lsn, database_bytes, wal_bytes) = self
            .on_cluster(id, Method::GET, "/wal?written=1", NONE)
            .await?;
        Ok(WalPosition {
            current_lsn,
            database_bytes,
            wal_bytes,
        })
    }

    async fn archiver_stats(&self, id: &InstanceId) -> Result<ArchiverStats, RuntimeError> {
        self.on_cluster(id, Method::GET, "/archiver", NONE).await
    }

    /// The agent streams, uploads and waits for the end segment itself, with its own backup
    /// settings; the broker's say how long that may take.
    async fn take_backup(
        &self,
        id: &InstanceId,
        prefix: &InstancePrefix,
        options: &BackupOptions,
    ) -> Result<BackupReport, RuntimeError> {
        self.remote_backup(id, None, prefix, options).await
    }

    async fn take_standby_backup(
        &self,
        standby: &InstanceId,
        leader: &InstanceId,
        prefix: &InstancePrefix,
        options: &BackupOptions,
    ) -> Result<BackupReport, RuntimeError> {
        self.remote_standby_backup(standby, leader, prefix, options)
            .await
    }

    /// The agent holding the instance restores, checks and deletes the scratch copy itself;
    /// the call waits for its report (bounded by [`DRILL_TIMEOUT`]).
    async fn drill(
        &self,
        id: &InstanceId,
        spec: &super::DrillSpec,
    ) -> Result<super::DrillReport, RuntimeError> {
        let body = wayback_api::drills::DrillBody {
            prefix: spec.source.as_str().to_string(),
            live: spec.live,
            started: spec.started,
        };
        let path = format!("/v1/clusters/{id}/drill");
        self.agent_of(id)
            .await?
            .call(Method::POST, &path, Some(&body), Some(DRILL_TIMEOUT))
            .await
    }

    /// `DELETE /v1/clusters/{id}/drill`: the agent stops its drill of `id`; the `POST` that
    /// runs it then answers a `cancelled` report.
    async fn cancel_drill(&self, id: &InstanceId) -> Result<bool, RuntimeError> {
        let path = format!("/v1/clusters/{id}/drill");
        let answer: wayback_api::drills::DrillCancelled = self
            .agent_of(id)
            .await?
            .call(Method::DELETE, &path, NONE, None)
            .await?;
        Ok(answer.cancelled)
    }

    async fn start_restore(
        &self,
        id: &InstanceId,
        spec: &RestoreSpec,
    ) -> Result<RestoreStatus, RuntimeError> {
        let body = wire::RestoreBody {
            port: spec.port,
            prefix: InstancePrefix::new(&spec.space, id).as_str().to_string(),
            source_prefix: spec.source.as_str().to_string(),
            source_system_identifier: spec.source_system_identifier,
            point_in_time: match spec.target {
                RestoreTarget::Latest => None,
                RestoreTarget::PointInTime(t) => Some(t),
            },
            archive_timeout_secs: spec.archive_timeout_secs,
            kept_copy: spec.kept_copy.as_ref().map(|k| wire::KeptCopyRef {
                source_id: k.source.to_string(),
                checkpoint_lsn: k.checkpoint_lsn.clone(),
            }),
            live_fork_source_id: spec.live_fork.as_ref().map(|s| s.to_string()),
        };
        self.on_cluster(id, Method::POST, "/restore", Some(&body))
            .await
    }

    /// The instance's agent keeps its data directory (issue 16).
    async fn trash_cluster(&self, id: &InstanceId) -> Result<Option<wire::KeptCopy>, RuntimeError> {
        self.on_cluster(id, Method::POST, "/trash", NONE).await
    }

    /// Asks every agent at once; one that does not answer is left out (its copies and their
    /// records stay as they are until it does).
    async fn list_trash(&self) -> Result<Vec<super::MachineTrash>, RuntimeError> {
        let answers = futures::future::join_all(self.agents.iter().map(|a| async move {
            let answer: Result<wire::KeptCopies, RuntimeError> =
                a.call(Method::GET, "/v1/trash", NONE, None).await;
            (a.name.clone(), answer)
        }))
        .await;
        Ok(answers
            .into_iter()
            .filter_map(|(agent, answer)| match answer {
                Ok(trash) => Some(super::MachineTrash {
                    agent: Some(agent),
                    trash,
                }),
                Err(e) => {
                    tracing::info!(agent, error = %e, "no answer about the agent's kept copies");
                    None
                }
            })
            .collect())
    }

    async fn evict_trash(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        self.on_cluster(id, Method::DELETE, "/trash", NONE).await
    }

    async fn restore_status(&self, id: &InstanceId) -> Result<RestoreStatus, RuntimeError> {
        self.on_cluster(id, Method::GET, "/restore", NONE).await
    }

    async fn prepare_replication(
        &self,
        leader: &InstanceId,
        grant: &ReplicationGrant,
    ) -> Result<(), RuntimeError> {
        let body = wire::ReplicationBody {
            role: grant.role.clone(),
            password: grant.password.expose_secret().to_string(),
            follower_address: grant.follower_address.clone(),
        };
        let rest = format!("/replication/{}", grant.slot);
        self.on_cluster(leader, Method::PUT, &rest, Some(&body))
            .await
    }

    async fn drop_replication(
        &self,
        leader: &InstanceId,
        role: &str,
        slot: &str,
    ) -> Result<(), RuntimeError> {
        let body = wire::DropReplicationBody { role: role.into() };
        let rest = format!("/replication/{slot}");
        self.on_cluster(leader, Method::DELETE, &rest, Some(&body))
            .await
    }

    async fn replication_status(
        &self,
        leader: &InstanceId,
    ) -> Result<Vec<ReplicationStatus>, RuntimeError> {
        self.on_cluster(leader, Method::GET, "/replication", NONE)
            .await
    }

    async fn standby_status(&self, follower: &InstanceId) -> Result<StandbyStatus, RuntimeError> {
        self.on_cluster(follower, Method::GET, "/standby", NONE)
            .await
    }

    async fn start_follow(
        &self,
        follower: &InstanceId,
        spec: &FollowSpec,
    ) -> Result<RestoreStatus, RuntimeError> {
        let body = wire::FollowBody {
            port: spec.port,
            leader_prefix: spec.leader.as_str().to_string(),
            leader_system_identifier: spec.leader_system_identifier,
            leader_host: spec.leader_host.clone(),
            leader_port: spec.leader_port,
            role: spec.role.clone(),
            password: spec.password.expose_secret().to_string(),
            slot: spec.slot.clone(),
            superuser_password: String::new(),
        };
        self.on_cluster(follower, Method::POST, "/follow", Some(&body))
            .await
    }

    async fn promote(&self, follower: &InstanceId) -> Result<u32, RuntimeError> {
        let answer: wire::PromoteAnswer = self
            .on_cluster(follower, Method::POST, "/promote", NONE)
            .await?;
        Ok(answer.timeline)
    }

    async fn supports_ha(&self) -> bool {
        self.remote_supports_ha().await
    }

    async fn ha_start_member(&self, spec: &super::HaMemberSpec) -> Result<(), RuntimeError> {
        self.remote_ha_start_member(spec).await
    }

    async fn ha_status(&self, id: &InstanceId) -> Result<super::HaStatus, RuntimeError> {
        self.remote_ha_status(id).await
    }

    async fn ha_switchover(
        &self,
        id: &InstanceId,
        candidate: Option<&str>,
    ) -> Result<String, RuntimeError> {
        self.remote_ha_switchover(id, candidate).await
    }

    async fn ha_release_member(
        &self,
        member: &InstanceId,
        single: &ClusterSpec,
    ) -> Result<(), RuntimeError> {
        self.remote_ha_release_member(member, single).await
    }
}

/// What the agent answers for a backup: the manifest and timings, in the archive's own format
/// (so this body lives beside the archive, not in `wayback_api`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct BackupAnswer {
    pub manifest: crate::archive::manifest::BackupManifest,
    pub timings: crate::archive::BackupTimings,
}

/// An agent that answers 404 to `route` (`GET /v1/clusters/{id}/sessions`) is a version from
/// before the route came (`feature`): nothing was asked of its cluster, and retrying does not
/// help until the agent is upgraded, so the error is permanent and says so.
fn older_agent(
    agent: &str,
    id: &InstanceId,
    what: &str,
    route: &str,
    feature: &str,
) -> RuntimeError {
    RuntimeError::Agent {
        agent: agent.to_string(),
        message: format!(
            "cannot {what} for instance {id}: the agent does not serve {route} (an older \
             wayback agent, without {feature}); upgrade it to the broker's version"
        ),
        permanent: true,
        user_message: None,
    }
}

/// A runtime with one agent, `name`, at `server`, which every instance resolves to (for the
/// wire tests of each route).
#[cfg(test)]
fn one_agent_runtime(server: &wiremock::MockServer, name: &str) -> RemoteRuntime {
    let settings = AgentsSettings {
        urls: vec![AgentEndpoint {
            name: name.into(),
            url: server.uri(),
        }],
        password: Some("pw".to_string().into()),
        ..AgentsSettings::default()
    };
    let rt = RemoteRuntime::new(&settings).unwrap();
    let name = name.to_string();
    rt.set_resolver(Box::new(move |_| {
        let name = name.clone();
        Box::pin(async move { Some(name) })
    }));
    rt
}
