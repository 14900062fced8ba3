//! The agent's routes. Each cluster call is the local runtime's call of the same name; errors
//! are [`WireError`]s: 503 when retrying may help, 422 when it cannot, 409 with `port_in_use`
//! when the cluster's port is taken on this machine.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use secrecy::SecretString;

use super::{AgentState, RestoreDone, RestoreTask};
use crate::archive::layout::InstancePrefix;
use crate::archive::restore::{RestorePhase, RestoreProgress, RestoreTarget};
use crate::archive::{ArchiveError, ArchiveTarget, BackupOptions};
use crate::domain::InstanceId;
use crate::runtime::wire::{self, Capacity, RestoreStatus, WireError};
use crate::runtime::{
    status_text, ArchiveCommand, ArchiverStatsBody, BackupAnswer, BackupFailure, CloneRestore,
    CloneRestoreError, ClusterSpec, RuntimeError,
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
        .route("/v1/clusters/{id}/start", web::post().to(start))
        .route("/v1/clusters/{id}/stop", web::post().to(stop))
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
    fn new(status: StatusCode, message: impl Into<String>, permanent: bool) -> Self {
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
        let out = wire_error(&e);
        tracing::warn!(error = %e, permanent = out.permanent, "agent call failed");
        let status = if out.port_in_use.is_some() {
            StatusCode::CONFLICT
        } else if out.permanent {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        Self { status, body: out }
    }
}

fn wire_error(e: &RuntimeError) -> WireError {
    WireError {
        message: e.to_string(),
        permanent: e.is_permanent(),
        port_in_use: match e {
            RuntimeError::PortInUse(p) => Some(*p),
            _ => None,
        },
        user_message: None,
    }
}

type Reply = Result<HttpResponse, AgentError>;

fn ok<T: serde::Serialize>(value: &T) -> Reply {
    Ok(HttpResponse::Ok().json(value))
}

/// Basic auth (constant time), then the instance id of the path.
fn authorized(state: &AgentState, req: &HttpRequest) -> Result<(), AgentError> {
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

fn instance(state: &AgentState, req: &HttpRequest) -> Result<InstanceId, AgentError> {
    authorized(state, req)?;
    let raw = req.match_info().get("id").unwrap_or_default();
    InstanceId::parse(raw).map_err(|e| {
        AgentError::new(
            StatusCode::BAD_REQUEST,
            format!("instance id {raw:?}: {e}"),
            true,
        )
    })
}

/// The instance's prefix from a body, checked to be that instance's.
fn own_prefix(
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
    if &owner != id {
        return Err(bad());
    }
    Ok((space, parsed))
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(wire::Health {
        status: "ok".into(),
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
    let s = state.runtime.status(&id).await?;
    ok(&wire::StatusBody {
        status: status_text(s).into(),
    })
}

fn spec(id: InstanceId, body: wire::ClusterBody) -> ClusterSpec {
    ClusterSpec {
        instance: id,
        port: body.port,
        settings: body.settings,
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
    state
        .restores
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    ok(&())
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
    let target = ArchiveTarget::for_instance(&state.settings, &space, &id);
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
    ok(&(p.current_lsn, p.database_bytes))
}

async fn archiver(state: web::Data<AgentState>, req: HttpRequest) -> Reply {
    let id = instance(&state, &req)?;
    let stats = state.runtime.archiver_stats(&id).await?;
    ok(&ArchiverStatsBody::from(stats))
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
    state
        .runtime
        .create_login_role(&id, &role, &password, &body.owner_role)
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
    match state
        .runtime
        .take_backup(&id, &state.archive, &prefix, &options)
        .await
    {
        Ok(report) => {
            tracing::info!(instance = %id, backup = %report.manifest.backup_id, reason = %body.reason, "base backup taken");
            ok(&BackupAnswer {
                manifest: report.manifest,
                timings: report.timings,
            })
        }
        Err(BackupFailure::Runtime(e)) => Err(e.into()),
        Err(BackupFailure::Archive(e)) => {
            let permanent = matches!(
                e,
                ArchiveError::Backup {
                    permanent: true,
                    ..
                }
            );
            tracing::warn!(instance = %id, error = %e, permanent, "base backup failed");
            Err(AgentError::new(
                if permanent {
                    StatusCode::UNPROCESSABLE_ENTITY
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                e.to_string(),
                permanent,
            ))
        }
    }
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
    let task = {
        let mut map = state.restores.lock().unwrap_or_else(|p| p.into_inner());
        let reusable = map.get(&id).filter(|t| {
            // A finished failure is tried again; a run or a success is joined.
            !matches!(
                *t.outcome.lock().unwrap_or_else(|p| p.into_inner()),
                Some(Err(_))
            )
        });
        match reusable {
            Some(task) => task.clone(),
            None => {
                let task = Arc::new(RestoreTask {
                    progress: Arc::new(RestoreProgress::default()),
                    outcome: std::sync::Mutex::new(None),
                });
                map.insert(id.clone(), task.clone());
                let c = CloneRestore {
                    store: state.archive.clone(),
                    storage: crate::archive::target::capture_environment(&state.settings.archive),
                    source,
                    system_identifier: body.source_system_identifier,
                    target: match body.point_in_time {
                        Some(t) => RestoreTarget::PointInTime(t),
                        None => RestoreTarget::Latest,
                    },
                    port: body.port,
                    own: ArchiveTarget::for_instance(&state.settings, &space, &id),
                    wayback_bin: state.wayback_bin.clone(),
                    archive_timeout_secs: body.archive_timeout_secs,
                    fetch_ahead: state.settings.wal.fetch_ahead,
                    progress: task.progress.clone(),
                };
                let runtime = state.runtime.clone();
                let running = task.clone();
                let id = id.clone();
                tokio::spawn(async move {
                    let outcome = match runtime.restore_clone(&id, c).await {
                        Ok(report) => {
                            tracing::info!(instance = %id, backup = ?report.as_ref().map(|r| &r.backup_id), "restore finished");
                            Ok(RestoreDone {
                                backup_id: report.as_ref().map(|r| r.backup_id.clone()),
                                timeline: report.as_ref().map(|r| r.timeline),
                                total_secs: report.as_ref().map(|r| r.total_secs),
                            })
                        }
                        Err(CloneRestoreError::Runtime(e)) => Err(wire_error(&e)),
                        Err(CloneRestoreError::Restore(e)) => {
                            tracing::warn!(instance = %id, error = %e, "restore failed");
                            Err(WireError {
                                message: e.to_string(),
                                permanent: !e.is_transient(),
                                port_in_use: None,
                                user_message: Some(e.user_message()),
                            })
                        }
                    };
                    *running.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
                });
                task
            }
        }
    };
    ok(&restore_view(&state, &id, Some(&task)))
}

async fn restore_status(state: web::Data<AgentState>, req: HttpRequest) -> Reply {
    let id = instance(&state, &req)?;
    let task = state
        .restores
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&id)
        .cloned();
    ok(&restore_view(&state, &id, task.as_deref()))
}

fn restore_view(state: &AgentState, id: &InstanceId, task: Option<&RestoreTask>) -> RestoreStatus {
    let Some(task) = task else {
        return RestoreStatus {
            state: "none".into(),
            ..Default::default()
        };
    };
    let (bytes_done, bytes_total) = task.progress.bytes();
    let mut out = RestoreStatus {
        state: "running".into(),
        phase: match task.progress.phase() {
            RestorePhase::Planning => "planning",
            RestorePhase::Unpacking => "unpacking",
            RestorePhase::Replaying => "replaying",
            RestorePhase::Done => "done",
        }
        .into(),
        bytes_done,
        bytes_total,
        backup_stop: task.progress.backup_stop_time().map(|t| t.timestamp()),
        recovering: state.runtime.recovering(id),
        ..Default::default()
    };
    match &*task.outcome.lock().unwrap_or_else(|p| p.into_inner()) {
        None => {}
        Some(Ok(done)) => {
            out.state = "succeeded".into();
            out.backup_id = done.backup_id.clone();
            out.timeline = done.timeline;
            out.total_secs = done.total_secs;
        }
        Some(Err(e)) => {
            out.state = "failed".into();
            out.error = Some(e.clone());
        }
    }
    out
}
