//! The remote runtime: clusters on agents (`wayback agent`), reached over their HTTP(S) API
//! with basic auth. Each instance lives on the agent recorded with it (`assign`); new ones go
//! where [`RemoteRuntime::place`] finds the most room.
//!
//! An agent that does not answer gives [`RuntimeError::Unreachable`], which the job worker
//! retries with backoff like any transient error, so an agent that comes back within the
//! retries finishes the step; one that stays away fails the operation with a description
//! naming it. The agent's own errors carry whether retrying helps. Must not import `osb`,
//! `broker`, `store` or `jobs`.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::placement::{choose, Placement};
use super::wire::{self, Capacity, WireError};
use super::{Applied, ArchiverStats, ClusterSpec, ClusterStatus, RuntimeError, WalPosition};
use crate::config::{AgentEndpoint, AgentsSettings};
use crate::domain::InstanceId;

/// One agent the broker talks to.
pub struct AgentClient {
    pub name: String,
    base: String,
    http: reqwest::Client,
    username: String,
    password: SecretString,
}

/// Finds the agent recorded for an instance the runtime has not seen yet (the store, wired in
/// at start-up: the runtime does not import it).
pub type Resolver =
    Box<dyn Fn(InstanceId) -> futures::future::BoxFuture<'static, Option<String>> + Send + Sync>;

pub struct RemoteRuntime {
    agents: Vec<AgentClient>,
    placements: RwLock<HashMap<InstanceId, String>>,
    placing: tokio::sync::Mutex<()>,
    resolver: std::sync::OnceLock<Resolver>,
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
        })
    }

    pub fn agent_names(&self) -> Vec<String> {
        self.agents.iter().map(|a| a.name.clone()).collect()
    }

    /// Records that `id` lives on `agent` (from the store, or a new placement).
    pub fn assign(&self, id: &InstanceId, agent: &str) {
        let mut map = self.placements.write().unwrap_or_else(|p| p.into_inner());
        if map.get(id).map(String::as_str) != Some(agent) {
            map.insert(id.clone(), agent.to_string());
        }
    }

    /// Held while a placement is chosen and recorded, so that concurrent provisions count each
    /// other.
    pub async fn placing(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.placing.lock().await
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
                self.assign(id, &name);
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
        })
    }

    /// Asks every agent for its capacity (at once) and [`choose`]s one. `placed`: instances
    /// per agent in the store.
    pub async fn place(&self, placed: &HashMap<String, usize>) -> Result<Placement, RuntimeError> {
        let answers = self.capacities().await;
        choose(&answers, placed)
    }

    /// The capacity of every agent (None where it did not answer), for the operator.
    pub async fn capacities(&self) -> Vec<(String, Result<Capacity, RuntimeError>)> {
        futures::future::join_all(
            self.agents
                .iter()
                .map(|a| async move { (a.name.clone(), a.capacity().await) }),
        )
        .await
    }

    // The runtime's calls, each on the instance's agent.

    pub async fn create_cluster(&self, spec: &ClusterSpec) -> Result<(), RuntimeError> {
        let body = wire::ClusterBody {
            port: spec.port,
            settings: spec.settings.clone(),
        };
        self.agent_of(&spec.instance)
            .await?
            .call(Method::PUT, &cluster(&spec.instance, ""), Some(&body), None)
            .await
    }

    pub async fn configure_archive(
        &self,
        id: &InstanceId,
        target: &crate::archive::ArchiveTarget,
        command: &super::ArchiveCommand,
    ) -> Result<(), RuntimeError> {
        let body = wire::ArchiveBody {
            prefix: target.prefix.clone(),
            archive_timeout_secs: command.archive_timeout_secs,
        };
        self.agent_of(id)
            .await?
            .call(Method::PUT, &cluster(id, "/archive"), Some(&body), None)
            .await
    }

    pub async fn seal_wal(
        &self,
        id: &InstanceId,
        database: &str,
    ) -> Result<Option<(String, String)>, RuntimeError> {
        let body = wire::DatabaseBody {
            database: database.into(),
        };
        let out: Option<wire::SwitchBody> = self
            .agent_of(id)
            .await?
            .call(Method::POST, &cluster(id, "/seal"), Some(&body), None)
            .await?;
        Ok(out.map(|s| (s.lsn, s.segment)))
    }

    pub async fn switch_wal(&self, id: &InstanceId) -> Result<String, RuntimeError> {
        Ok(self.switch_wal_segment(id).await?.0)
    }

    pub async fn switch_wal_segment(
        &self,
        id: &InstanceId,
    ) -> Result<(String, String), RuntimeError> {
        let out: wire::SwitchBody = self
            .agent_of(id)
            .await?
            .call(Method::POST, &cluster(id, "/switch-wal"), None::<&()>, None)
            .await?;
        Ok((out.lsn, out.segment))
    }

    pub async fn wal_position(&self, id: &InstanceId) -> Result<WalPosition, RuntimeError> {
        let out: (u64, u64) = self
            .agent_of(id)
            .await?
            .call(Method::GET, &cluster(id, "/wal"), None::<&()>, None)
            .await?;
        Ok(WalPosition {
            current_lsn: out.0,
            database_bytes: out.1,
        })
    }

    pub async fn reopen_database(
        &self,
        id: &InstanceId,
        database: &str,
    ) -> Result<(), RuntimeError> {
        let body = wire::DatabaseBody {
            database: database.into(),
        };
        self.agent_of(id)
            .await?
            .call(Method::POST, &cluster(id, "/reopen"), Some(&body), None)
            .await
    }

    pub async fn start(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        self.agent_of(id)
            .await?
            .call(Method::POST, &cluster(id, "/start"), None::<&()>, None)
            .await
    }

    pub async fn stop(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        self.agent_of(id)
            .await?
            .call(Method::POST, &cluster(id, "/stop"), None::<&()>, None)
            .await
    }

    pub async fn status(&self, id: &InstanceId) -> Result<ClusterStatus, RuntimeError> {
        let out: wire::StatusBody = self
            .agent_of(id)
            .await?
            .call(Method::GET, &cluster(id, ""), None::<&()>, None)
            .await?;
        parse_status(&out.status)
    }

    pub async fn archiver_stats(&self, id: &InstanceId) -> Result<ArchiverStats, RuntimeError> {
        let out: ArchiverStatsBody = self
            .agent_of(id)
            .await?
            .call(Method::GET, &cluster(id, "/archiver"), None::<&()>, None)
            .await?;
        Ok(out.into())
    }

    pub async fn destroy(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        self.agent_of(id)
            .await?
            .call(Method::DELETE, &cluster(id, ""), None::<&()>, None)
            .await
    }

    pub async fn apply_settings(&self, spec: &ClusterSpec) -> Result<Applied, RuntimeError> {
        let body = wire::ClusterBody {
            port: spec.port,
            settings: spec.settings.clone(),
        };
        let restarted: bool = self
            .agent_of(&spec.instance)
            .await?
            .call(
                Method::POST,
                &cluster(&spec.instance, "/settings"),
                Some(&body),
                None,
            )
            .await?;
        Ok(Applied { restarted })
    }

    pub async fn ensure_database(
        &self,
        id: &InstanceId,
        database: &str,
        owner_role: &str,
    ) -> Result<(), RuntimeError> {
        let body = wire::OwnerBody {
            owner_role: owner_role.into(),
        };
        self.agent_of(id)
            .await?
            .call(
                Method::PUT,
                &cluster(id, &format!("/databases/{database}")),
                Some(&body),
                None,
            )
            .await
    }

    pub async fn create_login_role(
        &self,
        id: &InstanceId,
        role: &str,
        password: &SecretString,
        owner_role: &str,
    ) -> Result<(), RuntimeError> {
        let body = wire::RoleBody {
            owner_role: owner_role.into(),
            password: password.expose_secret().to_string(),
        };
        self.agent_of(id)
            .await?
            .call(
                Method::PUT,
                &cluster(id, &format!("/roles/{role}")),
                Some(&body),
                None,
            )
            .await
    }

    pub async fn revoke_copied_logins(&self, id: &InstanceId) -> Result<Vec<String>, RuntimeError> {
        self.agent_of(id)
            .await?
            .call(
                Method::POST,
                &cluster(id, "/revoke-copied-logins"),
                None::<&()>,
                None,
            )
            .await
    }

    pub async fn drop_login_role(
        &self,
        id: &InstanceId,
        role: &str,
        owner_role: &str,
    ) -> Result<(), RuntimeError> {
        let body = wire::OwnerBody {
            owner_role: owner_role.into(),
        };
        self.agent_of(id)
            .await?
            .call(
                Method::DELETE,
                &cluster(id, &format!("/roles/{role}")),
                Some(&body),
                None,
            )
            .await
    }

    /// A base backup taken by the agent into `prefix`; waits up to `timeout`.
    pub async fn take_backup(
        &self,
        id: &InstanceId,
        prefix: &str,
        reason: &str,
        timeout: Duration,
    ) -> Result<BackupAnswer, RuntimeError> {
        let body = wire::BackupBody {
            prefix: prefix.into(),
            reason: reason.into(),
        };
        self.agent_of(id)
            .await?
            .call(
                Method::POST,
                &cluster(id, "/backup"),
                Some(&body),
                Some(timeout),
            )
            .await
    }

    /// Starts (or joins) a clone's restore on the instance's agent.
    pub async fn start_restore(
        &self,
        id: &InstanceId,
        body: &wire::RestoreBody,
    ) -> Result<wire::RestoreStatus, RuntimeError> {
        self.agent_of(id)
            .await?
            .call(Method::POST, &cluster(id, "/restore"), Some(body), None)
            .await
    }

    pub async fn restore_status(
        &self,
        id: &InstanceId,
    ) -> Result<wire::RestoreStatus, RuntimeError> {
        self.agent_of(id)
            .await?
            .call(Method::GET, &cluster(id, "/restore"), None::<&()>, None)
            .await
    }

    /// Checks every agent once at start-up; unreachable ones are logged, not fatal.
    pub async fn prepare(&self) -> Result<(), RuntimeError> {
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
}

/// What the agent answers for a backup: the manifest and timings.
#[derive(Debug, Clone, serde::Deserialize, Serialize)]
pub struct BackupAnswer {
    pub manifest: crate::archive::manifest::BackupManifest,
    pub timings: crate::archive::BackupTimings,
}

/// [`ArchiverStats`] on the wire.
#[derive(Debug, Clone, Default, serde::Deserialize, Serialize)]
pub struct ArchiverStatsBody {
    pub archived_count: i64,
    pub last_archived_at: Option<f64>,
    pub failed_count: i64,
    pub last_failed_at: Option<f64>,
    pub ready_segments: i64,
    pub oldest_ready_age_secs: f64,
}

impl From<ArchiverStatsBody> for ArchiverStats {
    fn from(b: ArchiverStatsBody) -> Self {
        ArchiverStats {
            archived_count: b.archived_count,
            last_archived_at: b.last_archived_at,
            failed_count: b.failed_count,
            last_failed_at: b.last_failed_at,
            ready_segments: b.ready_segments,
            oldest_ready_age_secs: b.oldest_ready_age_secs,
        }
    }
}

impl From<ArchiverStats> for ArchiverStatsBody {
    fn from(s: ArchiverStats) -> Self {
        ArchiverStatsBody {
            archived_count: s.archived_count,
            last_archived_at: s.last_archived_at,
            failed_count: s.failed_count,
            last_failed_at: s.last_failed_at,
            ready_segments: s.ready_segments,
            oldest_ready_age_secs: s.oldest_ready_age_secs,
        }
    }
}

pub fn status_text(s: ClusterStatus) -> &'static str {
    match s {
        ClusterStatus::Absent => "absent",
        ClusterStatus::Stopped => "stopped",
        ClusterStatus::Running => "running",
    }
}

fn parse_status(s: &str) -> Result<ClusterStatus, RuntimeError> {
    match s {
        "absent" => Ok(ClusterStatus::Absent),
        "stopped" => Ok(ClusterStatus::Stopped),
        "running" => Ok(ClusterStatus::Running),
        other => Err(RuntimeError::Agent {
            agent: "?".into(),
            message: format!("unknown cluster status {other:?}"),
            permanent: false,
        }),
    }
}

fn cluster(id: &InstanceId, rest: &str) -> String {
    format!("/v1/clusters/{id}{rest}")
}

impl AgentClient {
    pub async fn capacity(&self) -> Result<Capacity, RuntimeError> {
        self.call(Method::GET, "/v1/capacity", None::<&()>, None)
            .await
    }

    async fn call<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Option<Duration>,
    ) -> Result<T, RuntimeError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .basic_auth(&self.username, Some(self.password.expose_secret()));
        if let Some(body) = body {
            req = req.json(body);
        }
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let resp = req.send().await.map_err(|e| RuntimeError::Unreachable {
            agent: self.name.clone(),
            message: format!("{method} {path}: {}", error_chain(&e)),
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| RuntimeError::Unreachable {
            agent: self.name.clone(),
            message: format!("{method} {path}: reading the answer: {}", error_chain(&e)),
        })?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| RuntimeError::Agent {
                agent: self.name.clone(),
                message: format!("{method} {path}: unexpected answer: {e}"),
                permanent: false,
            });
        }
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(RuntimeError::Agent {
                agent: self.name.clone(),
                message: "the agent refused the broker's credentials; agents.username/password must match the agent's agent.username/password".into(),
                permanent: false,
            });
        }
        match serde_json::from_slice::<WireError>(&bytes) {
            Ok(WireError {
                port_in_use: Some(port),
                ..
            }) => Err(RuntimeError::PortInUse(port)),
            Ok(e) => Err(RuntimeError::Agent {
                agent: self.name.clone(),
                message: e.message,
                permanent: e.permanent,
            }),
            Err(_) => Err(RuntimeError::Agent {
                agent: self.name.clone(),
                message: format!(
                    "{method} {path}: HTTP {status}: {}",
                    String::from_utf8_lossy(&bytes)
                        .chars()
                        .take(300)
                        .collect::<String>()
                ),
                permanent: false,
            }),
        }
    }
}

/// reqwest's errors say "error sending request" and hide the cause in `source()`.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
