//! `cf db-diagnose`, `cf db-locks`, `cf db-outliers` and the dashboard's activity behind them
//! (issue 19): `GET /wayback/v1/instances/{id}/diagnose | locks | outliers | activity`.
//! Authenticated and space-scoped exactly like the instance's own document (a foreign space
//! is a 404), read-only, and never waking an instance stopped when idle: its cluster's checks
//! are SKIPPED, its locks and outliers a 409 that says to connect first.
//!
//! The judging is pure ([`checks`] for what the cluster says, [`archive_checks`] for what the
//! broker knows: archive, backups, drills, followers); this file only gathers the facts.
//! Imports `runtime`, `store`, `catalog`, `domain` and `wayback_api`.

pub mod archive_checks;
pub mod checks;

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use wayback_api::activity::{Check, DiagnoseFacts, Diagnosis, Verdict};
use wayback_api::v1;

use super::{gather, visible_instance, ApiError, ApiState};
use crate::domain::InstanceId;
use crate::runtime::{InspectKind, Inspection, RuntimeError};
use crate::store::InstanceRecord;
pub use archive_checks::Schedule;
pub use checks::Thresholds;

/// The longest the broker waits for a cluster's (or its agent's) answer.
const INSPECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Why a stopped instance's cluster checks are not judged.
pub const STOPPED: &str = "Stopped when idle; connect to wake it (the diagnosis never does).";
const UNREAD: &str = "The cluster could not be read just now; try again, or the operator will \
                      find why in the broker's log.";

/// `GET /wayback/v1/instances/{instance_id}/diagnose`
pub(super) async fn get_diagnose(
    state: web::Data<ApiState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let record = visible_instance(&state, &req, id.into_inner()).await?;
    let view = gather(&state, record.clone(), None)
        .await?
        .ok_or_else(ApiError::instance_not_found)?;
    Ok(HttpResponse::Ok().json(diagnose_instance(&state, &record, &view).await))
}

/// The checks of an instance whose view is already gathered, for the API and the dashboard
/// (`dashboard/data.rs`): the cluster is read only when it runs (never woken), and what cannot
/// be read is SKIPPED.
pub(crate) async fn diagnose_instance(
    state: &ApiState,
    record: &InstanceRecord,
    view: &v1::Instance,
) -> Diagnosis {
    let facts = match refusal(record) {
        Some(why) => Err(why),
        None => match inspect(state, record, InspectKind::Diagnose).await {
            Ok(Inspection::Diagnose(f)) => Ok(*f),
            Ok(_) | Err(_) => Err(UNREAD.to_string()),
        },
    };
    let schedule = state
        .catalog
        .plan(&record.service_id, &record.plan_id)
        .map_or(Schedule::default(), |p| Schedule {
            base_backup_every_hours: p.archive.base_backup_every_hours,
            drill_every_days: p.archive.drill_every_days,
        });
    diagnosis(view, facts, state.diagnose, schedule, Utc::now())
}

/// `GET /wayback/v1/instances/{instance_id}/locks`
pub(super) async fn get_locks(
    state: web::Data<ApiState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    match read_now(&state, &req, id.into_inner(), InspectKind::Locks).await? {
        Inspection::Locks(l) => Ok(HttpResponse::Ok().json(l)),
        _ => Err(ApiError::internal()),
    }
}

/// `GET /wayback/v1/instances/{instance_id}/outliers`
pub(super) async fn get_outliers(
    state: web::Data<ApiState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    match read_now(&state, &req, id.into_inner(), InspectKind::Outliers).await? {
        Inspection::Outliers(o) => Ok(HttpResponse::Ok().json(o)),
        _ => Err(ApiError::internal()),
    }
}

#[derive(Deserialize)]
struct ActivityQuery {
    since: Option<String>,
}

/// `GET /wayback/v1/instances/{instance_id}/activity[?since=RFC3339]`
pub(super) async fn get_activity(
    state: web::Data<ApiState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let record = visible_instance(&state, &req, id.into_inner()).await?;
    // After authentication and the space check: a bad query must not answer before them.
    let since = web::Query::<ActivityQuery>::from_query(req.query_string())
        .map_err(|_| ApiError::bad_request("The query string does not read; use ?since=RFC3339."))?
        .into_inner()
        .since
        .map(|s| {
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    ApiError::bad_request(format!(
                        "since={s:?} is not an RFC 3339 time (e.g. 2026-12-07T03:00:00Z)."
                    ))
                })
        })
        .transpose()?;
    if !super::view::is_live(record.state) {
        return Ok(HttpResponse::Ok().json(wayback_api::activity::Activity::default()));
    }
    let cluster = cluster_of(&state, &record).await.map_err(unavailable)?;
    match tokio::time::timeout(INSPECT_TIMEOUT, state.runtime.activity(&cluster, since)).await {
        Ok(Ok(a)) => Ok(HttpResponse::Ok().json(a)),
        Ok(Err(e)) => Err(unavailable(e.to_string())),
        Err(_) => Err(unavailable("timed out".into())),
    }
}

/// The cluster's answer to `kind`, or the refusal a user can act on.
async fn read_now(
    state: &ApiState,
    req: &HttpRequest,
    id: String,
    kind: InspectKind,
) -> Result<Inspection, ApiError> {
    let record = visible_instance(state, req, id).await?;
    if let Some(why) = refusal(&record) {
        return Err(ApiError::conflict(why));
    }
    inspect(state, &record, kind).await.map_err(unavailable)
}

/// Why the cluster of `record` is not read at all, if it is not.
fn refusal(record: &InstanceRecord) -> Option<String> {
    if !super::view::is_live(record.state) {
        let state = serde_json::to_value(super::view::api_state(record.state))
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        return Some(format!("The instance is {state}: no cluster runs."));
    }
    record.stopped_at.map(|_| STOPPED.to_string())
}

/// Logs why (once, here) and answers 503 with the words a user can act on.
fn unavailable(why: String) -> ApiError {
    tracing::warn!(error = %why, "cannot inspect an instance's cluster");
    ApiError::unavailable(UNREAD)
}

async fn inspect(
    state: &ApiState,
    record: &InstanceRecord,
    kind: InspectKind,
) -> Result<Inspection, String> {
    let cluster = cluster_of(state, record).await?;
    match tokio::time::timeout(INSPECT_TIMEOUT, state.runtime.inspect(&cluster, kind)).await {
        Ok(answer) => answer.map_err(|e: RuntimeError| e.to_string()),
        Err(_) => Err(format!("no answer within {} s", INSPECT_TIMEOUT.as_secs())),
    }
}

/// The cluster that serves `record`: its own, or an HA instance's leading member.
async fn cluster_of(state: &ApiState, record: &InstanceRecord) -> Result<InstanceId, String> {
    let members = state
        .store
        .ha_members(&record.id)
        .await
        .map_err(|e| e.to_string())?;
    if members.is_empty() {
        return Ok(record.id.clone());
    }
    let status = state
        .runtime
        .ha_status(&record.id)
        .await
        .map_err(|e| e.to_string())?;
    let leader = status.leader().ok_or("no member leads now")?;
    Ok(record.id.member_key(&leader.name))
}

/// The diagnosis of an instance: the cluster's checks (SKIPPED, each saying why, when `facts`
/// is the reason it could not be read), then the broker's.
pub fn diagnosis(
    view: &v1::Instance,
    facts: Result<DiagnoseFacts, String>,
    thresholds: Thresholds,
    schedule: Schedule,
    now: DateTime<Utc>,
) -> Diagnosis {
    let mut all = match facts {
        Ok(f) => checks::cluster_checks(&f, thresholds),
        Err(why) => checks::cluster_checks(&DiagnoseFacts::default(), thresholds)
            .into_iter()
            .map(|c| skipped(c, &why))
            .collect(),
    };
    let live = view.state == v1::State::Live;
    let broker = archive_checks::broker_checks(view, schedule, now);
    all.extend(match live {
        true => broker,
        false => broker
            .into_iter()
            .map(|c| skipped(c, "The instance is not live."))
            .collect(),
    });
    Diagnosis {
        instance_id: view.instance_id.clone(),
        name: view.name.clone(),
        at: now,
        checks: all,
    }
}

fn skipped(c: Check, why: &str) -> Check {
    Check {
        verdict: Verdict::Skipped,
        summary: why.to_string(),
        details: Vec::new(),
        advice: None,
        ..c
    }
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            base_backup_every_hours: 24,
            drill_every_days: 7,
        }
    }
}

#[cfg(test)]
mod tests;
