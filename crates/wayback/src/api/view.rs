//! The `/wayback/v1` documents ([`wayback_api::v1`], contract: `docs/wayback-api.md`), built
//! by pure functions from what the store, the archive and the runtime said. The types live in
//! `wayback-api` because `cf-wayback` reads them; this module only fills them in. Times are cut
//! to whole seconds here, rounded inward for the restore window, so that each end is itself a
//! valid `point-in-time`.
//!
//! An instance stopped when idle (issue 17) is `live` with `stopped_at`: its archive holds
//! every commit, and its next connection starts it. A wake that failed shows as `wake_error`
//! until a start works.
//!
//! Imports `store`, `archive`, `runtime`, `catalog` and `domain`; no HTTP types.

use chrono::{DateTime, Timelike, Utc};
use wayback_api::v1;

use crate::archive::window::RestoreWindow;
use crate::catalog::Catalog;
use crate::domain::InstanceState;
use crate::runtime::ArchiverStats;
use crate::store::{InstanceRecord, NameRecord};

/// More segments waiting than this makes the archive unhealthy.
const LAG_LIMIT: i64 = 2;

/// What the archive and the cluster said of one instance.
pub struct Observed {
    /// The restore window, or None when the archive could not be read.
    pub window: Option<RestoreWindow>,
    /// A live instance's archiver statistics, or None when the cluster did not answer.
    pub stats: Option<ArchiverStats>,
}

/// The API's name of a state.
pub fn api_state(state: InstanceState) -> v1::State {
    match state {
        InstanceState::Ready | InstanceState::Updating => v1::State::Live,
        InstanceState::Provisioning => v1::State::Provisioning,
        InstanceState::Deprovisioning => v1::State::Deleting,
        InstanceState::Deleted => v1::State::Deleted,
        InstanceState::Failed => v1::State::Failed,
    }
}

pub fn is_live(state: InstanceState) -> bool {
    api_state(state) == v1::State::Live
}

/// A time cut down to the whole second, as the API writes every time (a window's end cut down
/// is still restorable).
fn whole_secs(t: DateTime<Utc>) -> DateTime<Utc> {
    t.with_nanosecond(0).unwrap_or(t)
}

fn millis(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms).map(whole_secs)
}

fn unix_secs(secs: f64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros((secs * 1e6) as i64).map(whole_secs)
}

/// A time rounded up to the whole second: the window's start must itself be restorable.
fn ceil_secs(t: DateTime<Utc>) -> DateTime<Utc> {
    if t.nanosecond() == 0 {
        t
    } else {
        t.with_nanosecond(0).unwrap_or(t) + chrono::Duration::seconds(1)
    }
}

/// The list document as the broker has always written it: through a `serde_json::Value`, which
/// sorts every object's keys (`tests/fixtures/api/instances.json` pins the bytes).
pub fn list_body(list: &v1::SpaceInstances) -> serde_json::Value {
    serde_json::to_value(list).expect("a v1 document serialises")
}

/// One `INSTANCE`.
pub fn render(
    record: &InstanceRecord,
    names: &[NameRecord],
    observed: &Observed,
    catalog: &Catalog,
) -> v1::Instance {
    let live = is_live(record.state);
    let window = observed.window.as_ref();
    let latest = window.and_then(|w| w.latest);
    let backups: Vec<v1::BaseBackup> = window
        .map(|w| {
            w.backups
                .iter()
                .map(|b| v1::BaseBackup {
                    backup_id: b.backup_id.clone(),
                    time: whole_secs(b.stop_time),
                    raw_bytes: b.raw_bytes,
                    stored_bytes: b.stored_bytes,
                })
                .collect()
        })
        .unwrap_or_default();
    v1::Instance {
        instance_id: record.id.to_string(),
        name: names.last().map(|n| n.name.clone()),
        names: names
            .iter()
            .map(|n| v1::InstanceName {
                name: n.name.clone(),
                since: millis(n.recorded_at),
                source: n.source.clone(),
            })
            .collect(),
        state: api_state(record.state),
        space_guid: record.space_guid.clone(),
        organization_guid: record.organization_guid.clone(),
        service_id: record.service_id.clone(),
        service_name: catalog.service(&record.service_id).map(|s| s.name.clone()),
        plan_id: record.plan_id.clone(),
        plan_name: catalog
            .plan(&record.service_id, &record.plan_id)
            .map(|p| p.name.clone()),
        created_at: millis(record.created_at),
        deleted_at: record.deleted_at.and_then(millis),
        restore_window: v1::RestoreWindow {
            from: window.and_then(|w| w.earliest).map(ceil_secs),
            // Whole seconds, rounded down: the end must itself be restorable.
            to: if live { None } else { latest.map(whole_secs) },
            to_now: live,
        },
        last_base_backup: backups.last().map(|b| b.time),
        base_backups: backups,
        archive: archive_view(record.state, observed, latest, record.stopped_at.is_some()),
        follower: None,
        followers: Vec::new(),
        kept_copy: None,
        drills: Vec::new(),
        ha: None,
        stopped_at: record.stopped_at.and_then(millis),
        wake_error: record
            .wake_error
            .clone()
            .zip(record.wake_error_at.and_then(millis))
            .map(|(reason, at)| v1::WakeError { reason, at }),
    }
}

/// The kept copy of a deleted instance as the API shows it.
pub fn kept_copy_view(r: &crate::store::KeptCopyRecord) -> Option<v1::KeptCopy> {
    Some(v1::KeptCopy {
        size_bytes: r.size_bytes.max(0) as u64,
        kept_at: millis(r.kept_at)?,
        expires_at: millis(r.expires_at)?,
        machine: r.agent.clone(),
    })
}

/// `stopped`: the cluster was stopped when idle (it answers no statistics, and needs none: it
/// archived every commit before it stopped).
fn archive_view(
    state: InstanceState,
    observed: &Observed,
    latest: Option<DateTime<Utc>>,
    stopped: bool,
) -> v1::Archive {
    let ended = |healthy: bool, detail: Option<&str>| v1::Archive {
        healthy,
        last_archived_at: latest.map(whole_secs),
        lag_segments: 0,
        last_failure_at: None,
        detail: detail.map(String::from),
    };
    if observed.window.is_none() {
        return v1::Archive {
            healthy: false,
            last_archived_at: None,
            lag_segments: 0,
            last_failure_at: None,
            detail: Some(
                "The archive could not be read just now; the operator will find why in the \
                 broker's log."
                    .into(),
            ),
        };
    }
    if !is_live(state) {
        return match state {
            InstanceState::Failed => ended(
                false,
                Some("The instance failed; see `cf service NAME` for the last operation."),
            ),
            _ => ended(true, None),
        };
    }
    let Some(stats) = &observed.stats else {
        if stopped {
            return ended(
                true,
                Some("Stopped when idle: every commit was archived before it stopped; its next connection starts it."),
            );
        }
        return v1::Archive {
            healthy: false,
            detail: Some(
                "The cluster did not report its archiver's statistics; the broker restarts \
                 clusters that stop."
                    .into(),
            ),
            ..ended(false, None)
        };
    };
    let failing = match (stats.last_failed_at, stats.last_archived_at) {
        (Some(failed), Some(archived)) => failed > archived,
        (Some(_), None) => true,
        _ => false,
    };
    let lagging = stats.ready_segments > LAG_LIMIT;
    let detail = match (failing, lagging) {
        (false, false) => None,
        (true, _) => Some(format!(
            "WAL pushes to the archive are failing; {} segment(s) wait. The broker retries; \
             the operator sees why in the cluster's log.",
            stats.ready_segments
        )),
        (false, true) => Some(format!(
            "{} WAL segments wait to be archived (the oldest for {:.0} s).",
            stats.ready_segments, stats.oldest_ready_age_secs
        )),
    };
    v1::Archive {
        healthy: !failing && !lagging,
        last_archived_at: stats.last_archived_at.and_then(unix_secs),
        lag_segments: stats.ready_segments,
        last_failure_at: stats.last_failed_at.and_then(unix_secs),
        detail,
    }
}

#[cfg(test)]
mod tests;
