//! The one JSON document the dashboard page polls (`GET /dashboard/instances/{id}/data?since=`),
//! built from what the broker already knows: the `/wayback/v1` instance view (restore window,
//! base backups, archive health, followers, HA members, drills), the names the instance had,
//! its audit trail, the sampler's last hour ([`crate::runtime::ClusterRuntime::activity`]), the
//! current blocking tree ([`crate::runtime::ClusterRuntime::inspect`]) and the diagnose checks.
//!
//! The caller (the dashboard's handler) has checked the session for this instance; nothing
//! here checks permissions. The document's shape (top-level keys):
//!
//! - `instance`: the `/wayback/v1` instance document as it is;
//! - `status`: `{state, label, detail}`: `running`, `stopped` (idle), `ha`, `follower`,
//!   `provisioning`, `deleting`, `deleted` or `failed`, for the header;
//! - `space_name`, `restore_source` (what `clone-from` should name to mean this instance: its
//!   name while it is the newest holder of that name in its space, else its GUID);
//! - `events`: the timeline's markers, oldest first (`provision`, `clone`, `rename`, `update`,
//!   `deprovision`, `failover`), each `{at, kind, label}`;
//! - `activity`: `{sampling, note, series, stats}`; `series` holds the samples newer than
//!   `since` column by column (`t` in Unix seconds), so a poll every 5 s carries 5 rows;
//! - `locks` (the blocking tree, or null), `statements` (top statements, newest known);
//! - `diagnose`: `{checks, note}`, only when `since` is absent (the page asks for it once a
//!   minute: the checks read more than the samples do).
//!
//! A stopped (idle) instance is never woken: nothing here asks its cluster anything, and the
//! document says it is stopped. A cluster that does not answer in time leaves its parts empty
//! with a note; the rest still shows.
//!
//! Imports `api` (its view and audit trail), `store`, `runtime` and `domain`; no HTTP types.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use wayback_api::activity::{Activity, Check, DatabaseStats, Locks, Sample, Statement};
use wayback_api::v1;

use crate::api::{ApiError, ApiState};
use crate::domain::InstanceId;
use crate::runtime::{InspectKind, Inspection};
use crate::store::{InstanceRecord, SpaceName};

/// The longest the document waits for a cluster's sampler or inspection.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(4);

/// `?since=RFC3339`: only samples newer than this (the page sends its newest sample's time).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DataQuery {
    pub since: Option<DateTime<Utc>>,
}

/// The dashboard's document of instance `id` (see the module doc for its shape).
pub async fn document(api: &ApiState, id: &InstanceId, q: &DataQuery) -> Result<Value, ApiError> {
    let record = api
        .store
        .get_instance(id)
        .await
        .map_err(internal("read an instance"))?
        .ok_or_else(ApiError::instance_not_found)?;
    let view = crate::api::gather(api, record.clone(), None)
        .await?
        .ok_or_else(ApiError::instance_not_found)?;
    let trail = api
        .store
        .audit_events_of(id)
        .await
        .map_err(internal("read an instance's audit trail"))?;
    let trail = crate::api::audit::trail(id, &trail);
    let space_names = api
        .store
        .names_in_space(&record.space_guid)
        .await
        .map_err(internal("read a space's names"))?;

    let cluster = if asks_cluster(&record, &view) {
        Some(ask_cluster(api, &cluster_key(id, &view), q).await)
    } else {
        None
    };
    let diagnose = match q.since {
        None => Some(diagnosis(api, &record, &view).await),
        Some(_) => None,
    };
    Ok(assemble(Parts {
        now: Utc::now(),
        record: &record,
        view: &view,
        trail: &trail,
        space_names: &space_names,
        cluster,
        diagnose,
    }))
}

/// Whether the page may ask the cluster anything: live, running (a stopped instance is never
/// woken by a page view) and not being created or deleted.
fn asks_cluster(record: &InstanceRecord, view: &v1::Instance) -> bool {
    view.state == v1::State::Live && record.stopped_at.is_none()
}

/// The cluster that serves the instance: its own, or an HA instance's leading member (as the
/// view, read just now, says).
pub fn cluster_key(id: &InstanceId, view: &v1::Instance) -> InstanceId {
    view.ha
        .as_ref()
        .and_then(|ha| {
            ha.members
                .iter()
                .find(|m| m.role.as_deref() == Some("leader"))
        })
        .map_or_else(|| id.clone(), |leader| id.member_key(&leader.name))
}

/// What the cluster said, each part with why it is missing.
#[derive(Debug)]
pub struct ClusterParts {
    pub activity: Result<Activity, String>,
    pub locks: Option<Result<Locks, String>>,
    pub statements: Option<Result<Vec<Statement>, String>>,
}

async fn ask_cluster(api: &ApiState, id: &InstanceId, q: &DataQuery) -> ClusterParts {
    let activity = timed(api.runtime.activity(id, q.since)).await;
    let sampled = activity.as_ref().ok().filter(|a| a.sampling);
    // The blocking tree needs a session of its own; the samples say when nobody waits.
    let quiet = sampled
        .and_then(|a| a.samples.last())
        .is_some_and(|s| s.lock_waiters == 0);
    let locks = match quiet {
        true => None,
        false => Some(
            timed(api.runtime.inspect(id, InspectKind::Locks))
                .await
                .and_then(|i| match i {
                    Inspection::Locks(l) => Ok(l),
                    _ => Err("the cluster answered something else".into()),
                }),
        ),
    };
    // The 15 s facts carry the top statements; ask only when the sampler has none to give.
    let has_statements = sampled.is_some_and(|a| a.stats.iter().any(|s| s.statements_available));
    let statements = match (has_statements, q.since) {
        (false, None) => Some(
            timed(api.runtime.inspect(id, InspectKind::Outliers))
                .await
                .and_then(|i| match i {
                    Inspection::Outliers(o) if o.available => Ok(o.statements),
                    Inspection::Outliers(_) => Err(
                        "pg_stat_statements is not loaded yet (it loads on the cluster's next restart)"
                            .into(),
                    ),
                    _ => Err("the cluster answered something else".into()),
                }),
        ),
        _ => None,
    };
    ClusterParts {
        activity,
        locks,
        statements,
    }
}

async fn timed<T, E: std::fmt::Display>(
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(CLUSTER_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "the cluster did not answer within {} s",
            CLUSTER_TIMEOUT.as_secs()
        )),
    }
}

/// What the diagnose checks say, or why there are none.
#[derive(Debug, Default, PartialEq)]
pub struct Diagnose {
    pub checks: Vec<Check>,
    pub note: Option<String>,
}

/// The instance's diagnose checks, as `cf db-diagnose` shows them (`api::diagnose`; a
/// stopped instance's cluster checks are SKIPPED, never woken).
async fn diagnosis(api: &ApiState, record: &InstanceRecord, view: &v1::Instance) -> Diagnose {
    let d = crate::api::diagnose::diagnose_instance(api, record, view).await;
    Diagnose {
        checks: d.checks,
        note: None,
    }
}

/// Everything the document is made of, read.
pub struct Parts<'a> {
    pub now: DateTime<Utc>,
    pub record: &'a InstanceRecord,
    pub view: &'a v1::Instance,
    pub trail: &'a v1::AuditTrail,
    pub space_names: &'a [SpaceName],
    /// None: the cluster was not asked (stopped, deleted, …).
    pub cluster: Option<ClusterParts>,
    /// None: not asked for in this poll.
    pub diagnose: Option<Diagnose>,
}

/// The document, from what was read (pure).
pub fn assemble(p: Parts<'_>) -> Value {
    let status = status(p.view);
    let (activity, locks, statements) = cluster_json(p.cluster.as_ref(), p.view);
    let mut doc = json!({
        "instance_id": p.view.instance_id,
        "generated_at": p.now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "instance": p.view,
        "status": status,
        "space_name": p.record.context.get("space_name").and_then(Value::as_str),
        "restore_source": restore_source(p.view, p.space_names),
        "events": events(p.view, p.trail),
        "activity": activity,
        "locks": locks,
        "statements": statements,
    });
    if let Some(d) = p.diagnose {
        doc["diagnose"] = json!({ "checks": d.checks, "note": d.note });
    }
    doc
}

/// The header's state: `{state, label, detail}`.
pub fn status(view: &v1::Instance) -> Value {
    let (state, label, detail) = match &view.state {
        v1::State::Live if view.stopped_at.is_some() => (
            "stopped",
            "Stopped when idle".to_string(),
            Some(
                "Every commit was archived before it stopped. Its next connection starts it; \
                 this page does not."
                    .to_string(),
            ),
        ),
        v1::State::Live if view.follower.is_some() => {
            let leader = view.follower.as_ref().map(|f| {
                let name = f.leader.name.as_deref().unwrap_or(&f.leader.id);
                format!("Read-only follower of {name}.")
            });
            ("follower", "Follower".to_string(), leader)
        }
        v1::State::Live if view.ha.is_some() => {
            let n = view.ha.as_ref().map_or(0, |h| h.members.len());
            ("ha", format!("Running · HA ({n} members)"), None)
        }
        v1::State::Live => ("running", "Running".to_string(), None),
        v1::State::Provisioning => ("provisioning", "Being created".to_string(), None),
        v1::State::Deleting => ("deleting", "Being deleted".to_string(), None),
        v1::State::Deleted => (
            "deleted",
            "Deleted".to_string(),
            Some("It can still be restored from its archive within its window.".to_string()),
        ),
        v1::State::Failed => ("failed", "Failed".to_string(), None),
        v1::State::Other(s) => ("other", s.clone(), None),
    };
    json!({ "state": state, "label": label, "detail": detail })
}

/// What `clone-from` must name to mean this instance: its name while it is the newest holder of
/// that name in its space (the one that took a name last wins), else its GUID.
pub fn restore_source(view: &v1::Instance, space_names: &[SpaceName]) -> String {
    let Some(name) = &view.name else {
        return view.instance_id.clone();
    };
    // `names_in_space` lists the newest name first.
    match space_names.iter().find(|n| &n.name == name) {
        Some(n) if n.instance_id.as_str() == view.instance_id => name.clone(),
        _ => view.instance_id.clone(),
    }
}

/// The timeline's markers from the audit trail and the HA view, oldest first. Binds and unbinds
/// are left out: they change nothing that can be restored.
pub fn events(view: &v1::Instance, trail: &v1::AuditTrail) -> Vec<Value> {
    let mut out: Vec<(DateTime<Utc>, Value)> = Vec::new();
    for e in &trail.events {
        let label = match &e.event {
            v1::AuditEventKind::Provision => match view.names.first() {
                Some(n) => format!("Created as {}", n.name),
                None => "Created".to_string(),
            },
            v1::AuditEventKind::Clone => match &e.clone_from {
                Some(c) => format!("Restored from {} at {}", c.name, c.point_in_time),
                None => "Restored from another instance".to_string(),
            },
            v1::AuditEventKind::Rename => match &e.name {
                Some(n) => format!("Renamed to {n}"),
                None => "Renamed".to_string(),
            },
            v1::AuditEventKind::Update => "Plan changed".to_string(),
            v1::AuditEventKind::Deprovision => "Deleted".to_string(),
            v1::AuditEventKind::Bind | v1::AuditEventKind::Unbind => continue,
            v1::AuditEventKind::Other(k) => k.clone(),
        };
        out.push((
            e.at,
            json!({ "at": e.at, "kind": e.event.as_str(), "label": label }),
        ));
    }
    if let Some(f) = view.ha.as_ref().and_then(|h| h.last_failover.as_ref()) {
        if let Some(at) = f.at {
            let to = f.new_leader.as_deref().unwrap_or("another member");
            out.push((
                at,
                json!({
                    "at": at,
                    "kind": "failover",
                    "label": format!("Failover to {to} ({}), timeline {} → {}", f.reason, f.from_timeline, f.to_timeline),
                }),
            ));
        }
    }
    out.sort_by_key(|(at, _)| *at);
    out.into_iter().map(|(_, v)| v).collect()
}

/// `(activity, locks, statements)` of the document.
fn cluster_json(cluster: Option<&ClusterParts>, view: &v1::Instance) -> (Value, Value, Value) {
    let Some(c) = cluster else {
        let note = match (&view.state, view.stopped_at) {
            (v1::State::Live, Some(_)) => {
                "Stopped when idle: nothing is sampled until its next connection starts it."
            }
            (v1::State::Live, None) => "The cluster is not being sampled.",
            _ => "Only a live instance is sampled.",
        };
        let activity =
            json!({ "sampling": false, "note": note, "series": series(&[]), "stats": null });
        return (activity, Value::Null, Value::Null);
    };
    let activity = match &c.activity {
        Ok(a) => json!({
            "sampling": a.sampling,
            "note": (!a.sampling).then_some("The cluster is not being sampled just now."),
            "series": series(&a.samples),
            "stats": a.stats.last().map(stats_json),
        }),
        Err(e) => json!({
            "sampling": false,
            "note": format!("No samples: {e}."),
            "series": series(&[]),
            "stats": null,
        }),
    };
    let locks = match &c.locks {
        None => json!({ "roots": [], "note": null }),
        Some(Ok(l)) => json!({ "at": l.at, "roots": l.roots, "note": null }),
        Some(Err(e)) => {
            json!({ "roots": [], "note": format!("The blocking tree could not be read: {e}.") })
        }
    };
    let sampled = c
        .activity
        .as_ref()
        .ok()
        .and_then(|a| a.stats.iter().rev().find(|s| s.statements_available));
    let statements = match (sampled, &c.statements) {
        (Some(s), _) => json!({ "at": s.at, "statements": s.top_statements, "note": null }),
        (None, Some(Ok(list))) => json!({ "statements": list, "note": null }),
        (None, Some(Err(e))) => json!({ "statements": [], "note": e }),
        // A poll with `since`: the page keeps what it has.
        (None, None) => Value::Null,
    };
    (activity, locks, statements)
}

/// The samples column by column (`t` in Unix seconds); the rarer states are summed as `other`.
pub fn series(samples: &[Sample]) -> Value {
    let col = |f: &dyn Fn(&Sample) -> Value| samples.iter().map(f).collect::<Vec<_>>();
    json!({
        "t": col(&|s| s.at.timestamp().into()),
        "active": col(&|s| s.sessions.active.into()),
        "idle": col(&|s| s.sessions.idle.into()),
        "idle_in_transaction": col(&|s| s.sessions.idle_in_transaction.into()),
        "idle_in_transaction_aborted": col(&|s| s.sessions.idle_in_transaction_aborted.into()),
        "other": col(&|s| (s.sessions.fastpath_function_call + s.sessions.disabled).into()),
        "lock_waiters": col(&|s| s.lock_waiters.into()),
        "longest_transaction_secs": col(&|s| tenths(s.longest_transaction_secs)),
        "longest_idle_in_transaction_secs": col(&|s| tenths(s.longest_idle_in_transaction_secs)),
    })
}

fn tenths(x: f64) -> Value {
    json!((x * 10.0).round() / 10.0)
}

/// The newest 15 s facts the page shows (without the statements, sent apart).
fn stats_json(s: &DatabaseStats) -> Value {
    json!({
        "at": s.at,
        "cache_hit_ratio": s.cache_hit_ratio,
        "database_size_bytes": s.database_size_bytes,
        "wraparound_age": s.wraparound_age,
        "max_connections": s.max_connections,
        "xact_commit": s.xact_commit,
        "xact_rollback": s.xact_rollback,
        "deadlocks": s.deadlocks,
    })
}

/// Logs the cause (once, here) and answers a 500 that says nothing internal.
fn internal<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> ApiError {
    move |e| {
        tracing::error!(error = %e, "dashboard: {what}");
        ApiError::internal()
    }
}

#[cfg(test)]
mod tests;
