//! Wayback's own read-only API, `/wayback/v1` (contract: `docs/wayback-api.md`): which
//! instances of a space, live and deleted, can be restored and to when, and who did what to
//! an instance ([`audit`]), and what its database is doing ([`diagnose`]: `cf db-diagnose`,
//! `db-locks`, `db-outliers`, the dashboard's activity). The `cf-wayback` CLI reads it before it asks the Cloud Controller
//! for a `clone-from` instance.
//!
//! Every handler authenticates first ([`auth`]: 401/503), then checks the space (403, or 404
//! for an instance, so that an instance id says nothing about a foreign space), and only then
//! reads the store, the archive (restore windows, [`crate::archive::window`]) and the running
//! clusters (archiver statistics). Nothing here changes anything, but for the operator's
//! switchover of an HA instance ([`ha`]: `POST /wayback/v1/instances/{id}/switchover`).
//!
//! The documents are `wayback_api::v1` types, shared with `cf-wayback`, which reads them;
//! [`view`] fills them in.
//!
//! Imports `store`, `archive`, `storage`, `runtime`, `catalog`, `cc`, `domain`, `osb::BasicAuth` and
//! `wayback_api::v1`; never `broker` or `jobs`.

pub(crate) mod audit;
pub mod auth;
pub mod diagnose;
pub mod error;
mod followers;
mod ha;
pub mod jwt;
pub mod view;

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use futures::StreamExt;
use serde::Deserialize;
use wayback_api::v1;

use crate::archive::layout::InstancePrefix;
use crate::catalog::Catalog;
use crate::domain::{InstanceId, InstanceState, SpaceGuid};
use crate::runtime::Runtime;
use crate::storage::ObjectStore;
use crate::store::{InstanceRecord, Store};
pub use auth::{Authenticator, Caller};
pub use error::ApiError;
use view::Observed;

/// Instances whose window and statistics are gathered at once for a space list.
const GATHER_CONCURRENCY: usize = 4;
/// The longest a cluster may take to report its archiver's statistics.
const STATS_TIMEOUT: Duration = Duration::from_secs(5);

/// What the API's handlers share.
pub struct ApiState {
    pub store: Store,
    pub catalog: Arc<Catalog>,
    pub archive: ObjectStore,
    pub runtime: Runtime,
    pub auth: Authenticator,
    /// `cf db-diagnose`'s operator threshold (`diagnose.long_transaction_secs`).
    pub diagnose: diagnose::Thresholds,
}

/// Registers `/wayback/v1`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/wayback/v1")
            .route("/spaces/{space_guid}/instances", web::get().to(list_space))
            .route("/instances/{instance_id}", web::get().to(get_instance))
            .route(
                "/instances/{instance_id}/audit",
                web::get().to(audit::get_audit),
            )
            .route(
                "/instances/{instance_id}/diagnose",
                web::get().to(diagnose::get_diagnose),
            )
            .route(
                "/instances/{instance_id}/locks",
                web::get().to(diagnose::get_locks),
            )
            .route(
                "/instances/{instance_id}/outliers",
                web::get().to(diagnose::get_outliers),
            )
            .route(
                "/instances/{instance_id}/activity",
                web::get().to(diagnose::get_activity),
            )
            // The operator's one call that changes something (issue 15): `api/ha.rs`.
            .route(
                "/instances/{instance_id}/switchover",
                web::post().to(ha::switchover),
            ),
    );
}

#[derive(Deserialize)]
struct ListQuery {
    name: Option<String>,
}

fn authorization(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// `GET /wayback/v1/spaces/{space_guid}/instances[?name=NAME]`
async fn list_space(
    state: web::Data<ApiState>,
    req: HttpRequest,
    space: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = state.auth.authenticate(authorization(&req)).await?;
    let space = space.into_inner();
    if !state.auth.may_see_space(&caller, &space).await? {
        return Err(ApiError::forbidden_space());
    }
    // After authentication: a malformed query must not answer before a 401.
    let name = web::Query::<ListQuery>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.into_inner().name);
    let mut records: Vec<InstanceRecord> = state
        .store
        .instances_in_states(InstanceState::ALL)
        .await
        .map_err(internal("list the instances of a space"))?
        .into_iter()
        .filter(|r| r.space_guid == space)
        .collect();
    records.sort_by_key(|r| std::cmp::Reverse(r.created_at));
    let views: Vec<Result<Option<v1::Instance>, ApiError>> = futures::stream::iter(records)
        .map(|r| {
            let state = state.clone();
            let name = name.clone();
            async move { gather(&state, r, name.as_deref()).await }
        })
        .buffered(GATHER_CONCURRENCY)
        .collect()
        .await;
    let mut instances = Vec::new();
    for view in views {
        if let Some(v) = view? {
            instances.push(v);
        }
    }
    let list = v1::SpaceInstances {
        space_guid: space,
        instances,
    };
    Ok(HttpResponse::Ok().json(view::list_body(&list)))
}

/// `GET /wayback/v1/instances/{instance_id}`
async fn get_instance(
    state: web::Data<ApiState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let record = visible_instance(&state, &req, id.into_inner()).await?;
    match gather(&state, record, None).await? {
        Some(view) => Ok(HttpResponse::Ok().json(view)),
        None => Err(ApiError::instance_not_found()),
    }
}

/// The instance `id` names, if the caller may see its space. An unknown id, a malformed one and
/// an instance in a space the caller may not see are all the same 404 (the CC would say 403 for
/// the last, but the id must not confirm anything).
async fn visible_instance(
    state: &ApiState,
    req: &HttpRequest,
    id: String,
) -> Result<InstanceRecord, ApiError> {
    let caller = state.auth.authenticate(authorization(req)).await?;
    let Ok(id) = InstanceId::parse(id) else {
        return Err(ApiError::instance_not_found());
    };
    let record = state
        .store
        .get_instance(&id)
        .await
        .map_err(internal("read an instance"))?
        .ok_or_else(ApiError::instance_not_found)?;
    if !state
        .auth
        .may_see_space(&caller, &record.space_guid)
        .await?
    {
        return Err(ApiError::instance_not_found());
    }
    Ok(record)
}

/// The view of `record` (None if it never had the name `name`): its names from the store,
/// its window from the archive, a live cluster's archiver statistics.
pub(crate) async fn gather(
    state: &ApiState,
    record: InstanceRecord,
    name: Option<&str>,
) -> Result<Option<v1::Instance>, ApiError> {
    let names = state
        .store
        .instance_names(&record.id)
        .await
        .map_err(internal("read an instance's names"))?;
    if let Some(name) = name {
        if !names.iter().any(|n| n.name == name) {
            return Ok(None);
        }
    }
    let window = async {
        let space = SpaceGuid::parse(record.space_guid.clone()).ok()?;
        let prefix = InstancePrefix::new(&space, &record.id);
        match crate::archive::window::restore_window(&state.archive, &prefix).await {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(instance = %record.id, error = %e, "cannot compute a restore window");
                None
            }
        }
    };
    let stats = async {
        if !view::is_live(record.state) {
            return None;
        }
        // An HA instance's archiver is its leader's (the member Patroni shows leading now).
        let leader_stats = async {
            let members = state
                .store
                .ha_members(&record.id)
                .await
                .map_err(|e| e.to_string())?;
            let cluster = match members.is_empty() {
                true => record.id.clone(),
                false => {
                    let status = state
                        .runtime
                        .ha_status(&record.id)
                        .await
                        .map_err(|e| e.to_string())?;
                    let leader = status.leader().ok_or("no member leads now")?;
                    record.id.member_key(&leader.name)
                }
            };
            state
                .runtime
                .archiver_stats(&cluster)
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(STATS_TIMEOUT, leader_stats).await {
            Ok(Ok(stats)) => Some(stats),
            Ok(Err(e)) => {
                tracing::info!(instance = %record.id, error = %e, "no archiver statistics");
                None
            }
            Err(_) => {
                tracing::info!(instance = %record.id, "archiver statistics timed out");
                None
            }
        }
    };
    let (window, stats) = tokio::join!(window, stats);
    let observed = Observed { window, stats };
    let mut view = view::render(&record, &names, &observed, &state.catalog);
    if view::is_live(record.state) {
        followers::attach(state, &record, &mut view).await?;
        ha::attach(state, &record, &mut view).await?;
    }
    if record.state == InstanceState::Deleted {
        view.kept_copy = state
            .store
            .kept_copy(&record.id)
            .await
            .map_err(internal("read an instance's kept copy"))?
            .as_ref()
            .and_then(view::kept_copy_view);
    }
    // Restore drills (issue 18), newest first; a report that does not read is left out, and so
    // is a drill cancelled for a user's restore (it proves nothing; older clients would read
    // its result as `failed`).
    view.drills = state
        .store
        .drills_of(&record.id, DRILLS_SHOWN)
        .await
        .map_err(internal("read an instance's drills"))?
        .into_iter()
        .filter(|d| d.result != "cancelled")
        .filter_map(|d| serde_json::from_str(d.report.as_deref()?).ok())
        .collect();
    Ok(Some(view))
}

/// Restore drills shown per instance.
const DRILLS_SHOWN: i64 = 10;

/// Logs the cause (once, here) and answers a 500 that says nothing internal.
fn internal<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> ApiError {
    move |e| {
        tracing::error!(error = %e, "{what}");
        ApiError::internal()
    }
}
