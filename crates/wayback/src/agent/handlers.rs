//! The agent's routes. Each cluster call is the local runtime's
//! [`ClusterRuntime`](crate::runtime::ClusterRuntime) call of the same name; errors are
//! [`WireError`]s made by the runtime's one mapping ([`crate::runtime::error::to_wire`]): 503
//! when retrying may help, 422 when it cannot, 409 with `port_in_use` when the cluster's port
//! is taken on this machine.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use secrecy::SecretString;
use wayback_api::agent::{self as wire, Capacity, WireError};

use super::AgentState;
use crate::archive::layout::InstancePrefix;
use crate::archive::restore::RestoreTarget;
use crate::archive::{ArchiveTarget, BackupOptions};
use crate::domain::InstanceId;
use crate::runtime::error::to_wire;
use crate::runtime::RoleAccess;
use crate::runtime::{
    ArchiveCommand, BackupAnswer, ClusterRuntime, ClusterSpec, FollowSpec, ReplicationGrant,
    RestoreSpec, RuntimeError,
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/health", web::get().to(health))
        .route("/v1/capacity", web::get().to(capacity))
        .route("/v1/clusters/{id}", web::get().to(status))
        .route("/v1/clusters/{id}", web::put().to(create))
        .route("/v1/clusters/{id}", web::delete().to(destroy))
        .route("/v1/clusters/{id}/settings", web::post().to(apply_settings))
        .route(
            "/v1/clusters/{id}/archive",
            web::put().to(configure_archive),
        )
        .route(
            "/v1/clusters/{id}/replication",
            web::get().to(replication_status),
        )
        .route(
            "/v1/clusters/{id}/replication/{slot}",
            web::put().to(prepare_replication),
        )
        .route(
            "/v1/clusters/{id}/replication/{slot}",
            web::delete().to(drop_replication),
        )
        .route("/v1/clusters/{id}/standby", web::get().to(standby_status))
        .route("/v1/clusters/{id}/follow", web::post().to(start_follow))
        .route("/v1/clusters/{id}/promote", web::post().to(promote))
        .route("/v1/clusters/{id}/start", web::post().to(start))
        .route("/v1/clusters/{id}/stop", web::post().to(stop))
        .route("/v1/clusters/{id}/park", web::post().to(park))
        .route("/v1/clusters/{id}/sessions", web::get().to(sessions))
        .route(
            "/v1/clusters/{id}/activity",
            web::get().to(super::activity::cluster_activity),
        )
        .route("/v1/activity", web::get().to(super::activity::summaries))
        .route("/v1/clusters/{id}/seal", web::post().to(seal))
        .route("/v1/clusters/{id}/reopen", web::post().to(reopen))
        .route("/v1/clusters/{id}/switch-wal", web::post().to(switch_wal))
        .route("/v1/clusters/{id}/wal", web::get().to(wal_position))
        .route("/v1/clusters/{id}/archiver", web::get().to(archiver))
        .route("/v1/clusters/{id}/databases/{db}", web::put().to(database))
        .route("/v1/clusters/{id}/roles/{role}", web::put().to(create_role))
        .route(
            "/v1/clusters/{id}/roles/{role}",
            web::delete().to(drop_role),
        )
        .route(
            "/v1/clusters/{id}/revoke-copied-logins",
            web::post().to(revoke_copied_logins),
        )
        .route("/v1/clusters/{id}/backup", web::post().to(backup))
        .route("/v1/clusters/{id}/restore", web::post().to(start_restore))
        .route("/v1/clusters/{id}/restore", web::get().to(restore_status))
        .route("/v1/clusters/{id}/trash", web::post().to(trash_cluster))
        .route("/v1/clusters/{id}/trash", web::delete().to(evict_trash))
        .route("/v1/trash", web::get().to(list_trash))
        .route("/v1/clusters/{id}/drill", web::post().to(drill))
        .route("/v1/clusters/{id}/drill", web::delete().to(cancel_drill))
        .configure(super::ha::configure)
        .configure(super::inspect::configure)
        .default_service(web::to(|| async {
            AgentError::new(StatusCode::NOT_FOUND, "no such agent API path", true).error_response()
        }));
}

/// An error answer.
#[derive(Debug)]
pub struct AgentError {
    status: StatusCode,
    body: WireError,
}

impl AgentError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>, permanent: bool) -> Self {
        Self {
            status,
            body: WireError {
                message: message.into(),
                permanent,
                port_in_use: None,
                user_message: None,
            },
        }
    }
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.body.message)
    }
}

impl ResponseError for AgentError {
    fn status_code(&self) -> StatusCode {
        self.status
    }
    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            resp.insert_header(("WWW-Authenticate", "Basic realm=\"wayback-agent\""));
        }
        resp.json(&self.body)
    }
}

impl From<RuntimeError> for AgentError {
    fn from(e: RuntimeError) -> Self {
        let body = to_wire(&e);
        tracing::warn!(error = %e, permanent = body.permanent, "agent call failed");
        let status =
            StatusCode::from_u16(body.http_status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        Self { status, body }
    }
}

pub(super) type Reply = Result<HttpResponse, AgentError>;

pub(super) fn ok<T: serde::Serialize>(value: &T) -> Reply {
    Ok(HttpResponse::Ok().json(value))
}

/// Basic auth (constant time), then the instance id of the path.
pub(super) fn authorized(state: &AgentState, req: &HttpRequest) -> Result<(), AgentError> {
    let header = req
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok());
    if state.auth.check(header) {
        Ok(())
    } else {
        Err(AgentError::new(
            StatusCode::UNAUTHORIZED,
            "authentication required: the broker's agents.username/password",
            false,
        ))
    }
}

pub(super) fn instance(state: &AgentState, req: &HttpRequest) -> Result<InstanceId, AgentError> {
    authorized(state, req)?;
    let raw = req.match_info().get("id").unwrap_or_default();
    // A cluster key: an instance's id, or an HA member's `<id>~<member>` (the broker's key for
    // it, so that both sides name a member's cluster alike).
    InstanceId::parse_cluster_key(raw).map_err(|e| {
        AgentError::new(
            StatusCode::BAD_REQUEST,
            format!("instance id {raw:?}: {e}"),
            true,
        )
    })
}

/// The instance's prefix from a body, checked to be that instance's.
pub(super) fn own_prefix(
    prefix: &str,
    id: &InstanceId,
) -> Result<(crate::domain::SpaceGuid, InstancePrefix), AgentError> {
    let bad = || {
        AgentError::new(
            StatusCode::BAD_REQUEST,
            format!("prefix {prefix:?} is not spaces/<space>/instances/{id}"),
            true,
        )
    };
    let parsed = InstancePrefix::parse(prefix).ok_or_else(bad)?;
    let (space, owner) = InstancePrefix::from_key(prefix).ok_or_else(bad)?;
    if owner != id.instance() {
        return Err(bad());
    }
    Ok((space, parsed))
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(wire::Health {
        status: wire::HealthStatus::Ok,
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

async fn capacity(state: web::Data<AgentState>, req: HttpRequest) -> Reply {
    authorized(&state, &req)?;
    let s = &state.settings;
    let ports = u32::from(s.postgres.port_max - s.postgres.port_min) + 1;
    let (memory_total_bytes, memory_available_bytes) = memory();
    let (disk_total_bytes, disk_available_bytes) = disk(&s.data_dir);
    ok(&Capacity {
        instances: state.runtime.cluster_ids().len() as u32,
        max_instances: s.agent.max_instances.min(ports),
        memory_total_bytes,
        memory_available_bytes,
        disk_total_bytes,
        disk_available_bytes,
        advertise_host: s.advertise_host(),
        version: env!("CARGO_PKG_VERSION").into(),
        ha: true,
        standby_backup: true,
        idle_stop: true,
    })
}

/// (MemTotal, MemAvailable) in bytes from /proc/meminfo; zeros where it cannot be read.
fn memory() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// (total, available) bytes of the data directory's file system.
fn disk(dir: &std::path::Path) -> (u64, u64) {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(st) => {
            let unit = st.fragment_size();
            (st.blocks() * unit, st.blocks_available() * unit)
        }
        Err(_) => (0, 0),
    }
}

async fn status(state: web::Data<AgentState>, req: HttpRequest) -> Reply {
    let id = instance(&state, &req)?;
    let status = state.runtime.status(&id).await?;
    ok(&wire::StatusBody { status })
}

pub(super) fn spec(id: InstanceId, body: wire::ClusterBody) -> ClusterSpec {
    ClusterSpec {
        instance: id,
        port: body.port,
        settings: body.settings,
        require_tls: body.require_tls,
    }
}

async fn create(
    state: web::Data<AgentState>,
    req: HttpRequest,
    body: web::Json<wire::ClusterBody>,
) -> Reply {
    let id = instance(&state, &req)?;
    state
        .runtime
        .create_cluster(&spec(id, body.into_inner()))
        .await?;
    ok(&())
}

async fn destroy(state: web::Data<AgentState>, req: HttpRequest) -> Reply {
    let id = instance(&state, &req)?;
    state.runtime.destroy(&id).await?;
    ok(&())
}

/// Issue 16: a deprovision's end keeps the data directory in this machine's trash.
async fn trash_cluster(state: web::Data<AgentState>, req: HttpRequest) -> Reply {
    let id = instance(&state, &req)?;
    ok(&state.runtime.trash_cluster(&id).await?)
}

async fn evict_trash(state: web::Data<AgentState>, req: HttpRequest) -> Reply {
    let id = instance(&state, &req)?;
    state.runtime.evict_trash(&id).await?;
    ok(&())
}

async fn list_trash(state: web::Data<AgentState>, req: HttpRequest) -> Reply {
    authorized(&state, &req)?;
    ok(&state.runtime.list_trash().await?)
}

async fn apply_settings(
    state: web::Data<AgentState>,
    req: HttpRequest,
    body: web::Json<wire::ClusterBody>,
) -> Reply {
    let id = instance(&state, &req)?;
    let applied = state
        .runtime
        .apply_settings(&spec(id, body.into_inner()))
        .await?;
    ok(&applied.restarted)
}

async fn configure_archive(
    state: web::Data<AgentState>,
    req: HttpRequest,
    body: web::Json<wire::ArchiveBody>,
) -> Reply {
    let id = instance(&state, &req)?;
    let (space, _) = own_prefix(&body.prefix, &id)?;
    // The agent's own storage settings and credentials: none cross the wire.
    let target = ArchiveTarget::for_instance(&state.settings, &space, &id.instance());
    let command = ArchiveCommand {
        wayback_bin: state.wayback_bin.clone(),
        archive_timeout_secs: body.archive_timeout_secs,
    };
    state
        .runtime
        .configure_archive(&id, &target, &command)
        .await?;
    ok(&())
}

async fn start(state: web::Data<AgentState>, req: HttpRequest) -> Reply {
    let id = instance(&state, &req)?;
    state.runtime.start(&id).await?;
    ok(&())
}

async fn stop(state: web::Data<AgentState>, req: HttpRequest) -> Reply {
    let id = instance(&state, &req)?;
    state.runtime.stop(&id).await?;
    ok(&())
}

/// Issue 17: stops an idle cluster and holds its port with the wake listener (the trait's
/// call, which the local runtime implements).
async fn park(state: web::Data<AgentState>, req: HttpRequest) -> Reply {
    let id = instance(&state, &req)?;
    ClusterRuntime::park(state.runtime.as_ref(), &id).await?;
    ok(&())
}

/// Issue 17: the cluster's client and replication sessions, counted from `/proc`.
async fn sessions(state: web::Data<AgentState>, req: HttpRequest) -> Reply {
    let id = instance(&state, &req)?;
    ok(&state.runtime.sessions(&id).await?)
}

async fn seal(
    state: web::Data<AgentState>,
    req: HttpRequest,
    body: web::Json<wire::DatabaseBody>,
) -> Reply {
    let id = instance(&state, &req)?;
    let sealed = state.runtime.seal_wal(&id, &body.database).await?;
    ok(&sealed.map(|(lsn, segment)| wire::SwitchBody { lsn, segment }))
}

async fn reopen(
    state: web::Data<AgentState>,
    req: HttpRequest,
    body: web::Json<wire::DatabaseBody>,
) -> Reply {
    let id = instance(&state, &req)?;
    state.runtime.reopen_database(&id, &body.database).await?;
    ok(&())
}

async fn switch_wal(state: web::Data<AgentState>, req: HttpRequest) -> Reply {
    let id = instance(&state, &req)?;
    let (lsn, segment) = state.runtime.switch_wal_segment(&id).await?;
    ok(&wire::SwitchBody { lsn, segment })
}

async fn wal_position(state: web::Data<AgentState>, req: HttpRequest) -> Reply {
    let id = instance(&state, &req)?;
    let p = state.runtime.wal_position(&id).await?;
    // The third element only for a broker that asks: an older one reads exactly two.
    let asked = req.query_string().split('&').any(|q| q == "written=1");
    ok(&wire::WalBody(
        p.current_lsn,
        p.database_bytes,
        p.wal_bytes.filter(|_| asked),
    ))
}

async fn archiver(state: web::Data<AgentState>, req: HttpRequest) -> Reply {
    let id = instance(&state, &req)?;
    ok(&state.runtime.archiver_stats(&id).await?)
}

async fn database(
    state: web::Data<AgentState>,
    req: HttpRequest,
    body: web::Json<wire::OwnerBody>,
) -> Reply {
    let id = instance(&state, &req)?;
    let db = req.match_info().get("db").unwrap_or_default().to_string();
    state
        .runtime
        .ensure_database(&id, &db, &body.owner_role)
        .await?;
    ok(&())
}

async fn create_role(
    state: web::Data<AgentState>,
    req: HttpRequest,
    body: web::Json<wire::RoleBody>,
) -> Reply {
    let id = instance(&state, &req)?;
    let role = req.match_info().get("role").unwrap_or_default().to_string();
    let body = body.into_inner();
    let password = SecretString::from(body.password);
    let access = match (body.read_only, body.database) {
        (false, _) => RoleAccess::Owner,
        (true, Some(database)) => RoleAccess::ReadOnly { database },
        (true, None) => {
            return Err(AgentError::new(
                StatusCode::BAD_REQUEST,
                "a read-only role needs the database it may read",
                true,
            ))
        }
    };
    state
        .runtime
        .create_login_role(&id, &role, &password, &body.owner_role, &access)
        .await?;
    ok(&())
}

async fn drop_role(
    state: web::Data<AgentState>,
    req: HttpRequest,
    body: web::Json<wire::OwnerBody>,
) -> Reply {
    let id = instance(&state, &req)?;
    let role = req.match_info().get("role").unwrap_or_default().to_string();
    state
        .runtime
        .drop_login_role(&id, &role, &body.owner_role)
        .await?;
    ok(&())
}

async fn revoke_copied_logins(state: web::Data<AgentState>, req: HttpRequest) -> Reply {
    let id = instance(&state, &req)?;
    let roles = state.runtime.revoke_copied_logins(&id).await?;
    ok(&roles)
}

async fn backup(
    state: web::Data<AgentState>,
    req: HttpRequest,
    body: web::Json<wire::BackupBody>,
) -> Reply {
    let id = instance(&state, &req)?;
    let (_, prefix) = own_prefix(&body.prefix, &id)?;
    let options = BackupOptions::from_settings(&state.settings, &body.reason);
    let report = match &body.leader {
        Some(leader) => {
            let leader = InstanceId::parse_cluster_key(leader)
                .ok()
                .filter(|l| l.instance() == id.instance())
                .ok_or_else(|| {
                    AgentError::new(
                        StatusCode::BAD_REQUEST,
                        format!("leader {leader:?} is not a member of instance {id}"),
                        true,
                    )
                })?;
            state
                .runtime
                .take_standby_backup(&id, &leader, &prefix, &options)
                .await?
        }
        None => state.runtime.take_backup(&id, &prefix, &options).await?,
    };
    tracing::info!(instance = %id, backup = %report.manifest.backup_id, reason = %body.reason, "base backup taken");
    ok(&BackupAnswer {
        manifest: report.manifest,
        timings: report.timings,
    })
}

/// A restore drill of the instance's archive here (issue 18); answers its report.
async fn drill(
    state: web::Data<AgentState>,
    req: HttpRequest,
    body: web::Json<wayback_api::drills::DrillBody>,
) -> Reply {
    let id = instance(&state, &req)?;
    let (_, prefix) = own_prefix(&body.prefix, &id)?;
    let spec = crate::runtime::DrillSpec {
        source: prefix,
        live: body.live,
        started: body.started,
    };
    let report = state.runtime.drill(&id, &spec).await?;
    tracing::info!(instance = %id, result = report.result.as_str(), secs = report.duration_secs, "restore drill done");
    ok(&report)
}

/// Stops the running drill of the instance here, if any (issue 18 point 4); idempotent.
async fn cancel_drill(state: web::Data<AgentState>, req: HttpRequest) -> Reply {
    let id = instance(&state, &req)?;
    let cancelled = state.runtime.cancel_drill(&id).await?;
    tracing::info!(instance = %id, cancelled, "restore drill cancellation asked");
    ok(&wayback_api::drills::DrillCancelled { cancelled })
}

async fn start_restore(
    state: web::Data<AgentState>,
    req: HttpRequest,
    body: web::Json<wire::RestoreBody>,
) -> Reply {
    let id = instance(&state, &req)?;
    let body = body.into_inner();
    let (space, _) = own_prefix(&body.prefix, &id)?;
    let source = InstancePrefix::parse(&body.source_prefix).ok_or_else(|| {
        AgentError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "source prefix {:?} is not an instance's",
                body.source_prefix
            ),
            true,
        )
    })?;
    let spec = RestoreSpec {
        port: body.port,
        space,
        source,
        source_system_identifier: body.source_system_identifier,
        target: match body.point_in_time {
            Some(t) => RestoreTarget::PointInTime(t),
            None => RestoreTarget::Latest,
        },
        archive_timeout_secs: body.archive_timeout_secs,
        kept_copy: match body.kept_copy {
            Some(k) => Some(crate::runtime::TrashedSource {
                source: InstanceId::parse(k.source_id).map_err(|e| {
                    AgentError::new(StatusCode::BAD_REQUEST, format!("kept copy: {e}"), true)
                })?,
                checkpoint_lsn: k.checkpoint_lsn,
            }),
            None => None,
        },
        live_fork: body
            .live_fork_source_id
            .map(InstanceId::parse)
            .transpose()
            .map_err(|e| {
                AgentError::new(StatusCode::BAD_REQUEST, format!("live fork: {e}"), true)
            })?,
    };
    ok(&state.runtime.start_restore(&id, &spec).await?)
}

async fn restore_status(state: web::Data<AgentState>, req: HttpRequest) -> Reply {
    let id = instance(&state, &req)?;
    ok(&state.runtime.restore_status(&id).await?)
}

/// The `{slot}` of a replication path.
fn slot_of(req: &HttpRequest) -> String {
    req.match_info().get("slot").unwrap_or_default().to_string()
}

async fn prepare_replication(
    state: web::Data<AgentState>,
    req: HttpRequest,
    body: web::Json<wire::ReplicationBody>,
) -> Reply {
    let id = instance(&state, &req)?;
    let body = body.into_inner();
    let grant = ReplicationGrant {
        role: body.role,
        password: SecretString::from(body.password),
        slot: slot_of(&req),
        follower_address: body.follower_address,
    };
    state.runtime.prepare_replication(&id, &grant).await?;
    ok(&())
}

async fn drop_replication(
    state: web::Data<AgentState>,
    req: HttpRequest,
    body: web::Json<wire::DropReplicationBody>,
) -> Reply {
    let id = instance(&state, &req)?;
    state
        .runtime
        .drop_replication(&id, &body.role, &slot_of(&req))
        .await?;
    ok(&())
}

async fn replication_status(state: web::Data<AgentState>, req: HttpRequest) -> Reply {
    let id = instance(&state, &req)?;
    ok(&state.runtime.replication_status(&id).await?)
}

async fn standby_status(state: web::Data<AgentState>, req: HttpRequest) -> Reply {
    let id = instance(&state, &req)?;
    ok(&state.runtime.standby_status(&id).await?)
}

async fn start_follow(
    state: web::Data<AgentState>,
    req: HttpRequest,
    body: web::Json<wire::FollowBody>,
) -> Reply {
    let id = instance(&state, &req)?;
    let body = body.into_inner();
    let leader = InstancePrefix::parse(&body.leader_prefix).ok_or_else(|| {
        AgentError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "leader prefix {:?} is not an instance's",
                body.leader_prefix
            ),
            true,
        )
    })?;
    let spec = FollowSpec {
        port: body.port,
        leader,
        leader_system_identifier: body.leader_system_identifier,
        leader_host: body.leader_host,
        leader_port: body.leader_port,
        role: body.role,
        password: SecretString::from(body.password),
        slot: body.slot,
    };
    ok(&state.runtime.start_follow(&id, &spec).await?)
}

async fn promote(state: web::Data<AgentState>, req: HttpRequest) -> Reply {
    let id = instance(&state, &req)?;
    let timeline = state.runtime.promote(&id).await?;
    ok(&wire::PromoteAnswer { timeline })
}
