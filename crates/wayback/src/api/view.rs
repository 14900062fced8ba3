//! The wire shape of an `INSTANCE` (docs/wayback-api.md), built by pure functions from what
//! the store, the archive and the runtime said. Field names are the contract with the
//! `cf-wayback` CLI: add, never rename.

use chrono::{DateTime, SecondsFormat, Timelike, Utc};
use serde::Serialize;

use crate::archive::window::RestoreWindow;
use crate::catalog::Catalog;
use crate::domain::InstanceState;
use crate::runtime::ArchiverStats;
use crate::store::{InstanceRecord, NameRecord};

/// More segments waiting than this makes the archive unhealthy.
const LAG_LIMIT: i64 = 2;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct InstanceView {
    pub instance_id: String,
    pub name: Option<String>,
    pub names: Vec<NameView>,
    pub state: &'static str,
    pub space_guid: String,
    pub organization_guid: String,
    pub service_id: String,
    pub service_name: Option<String>,
    pub plan_id: String,
    pub plan_name: Option<String>,
    pub created_at: Option<String>,
    pub deleted_at: Option<String>,
    pub restore_window: WindowView,
    pub last_base_backup: Option<String>,
    pub base_backups: Vec<BackupView>,
    pub archive: ArchiveView,
    /// Unix ms, for ordering only.
    #[serde(skip)]
    pub created_ms: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NameView {
    pub name: String,
    pub since: Option<String>,
    pub source: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WindowView {
    pub from: Option<String>,
    pub to: Option<String>,
    pub to_now: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BackupView {
    pub backup_id: String,
    pub time: String,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ArchiveView {
    pub healthy: bool,
    pub last_archived_at: Option<String>,
    pub lag_segments: i64,
    pub last_failure_at: Option<String>,
    pub detail: Option<String>,
}

/// What the archive and the cluster said of one instance.
pub struct Observed {
    /// The restore window, or None when the archive could not be read.
    pub window: Option<RestoreWindow>,
    /// A live instance's archiver statistics, or None when the cluster did not answer.
    pub stats: Option<ArchiverStats>,
}

/// The API's name of a state.
pub fn state_name(state: InstanceState) -> &'static str {
    match state {
        InstanceState::Ready | InstanceState::Updating => "live",
        InstanceState::Provisioning => "provisioning",
        InstanceState::Deprovisioning => "deleting",
        InstanceState::Deleted => "deleted",
        InstanceState::Failed => "failed",
    }
}

pub fn is_live(state: InstanceState) -> bool {
    state_name(state) == "live"
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn millis(ms: i64) -> Option<String> {
    DateTime::from_timestamp_millis(ms).map(rfc3339)
}

fn unix_secs(secs: f64) -> Option<String> {
    DateTime::from_timestamp_micros((secs * 1e6) as i64).map(rfc3339)
}

/// A time rounded up to the whole second: the window's start must itself be restorable.
fn ceil_secs(t: DateTime<Utc>) -> DateTime<Utc> {
    if t.nanosecond() == 0 {
        t
    } else {
        t.with_nanosecond(0).unwrap_or(t) + chrono::Duration::seconds(1)
    }
}

pub fn render(
    record: &InstanceRecord,
    names: &[NameRecord],
    observed: &Observed,
    catalog: &Catalog,
) -> InstanceView {
    let live = is_live(record.state);
    let window = observed.window.as_ref();
    let latest = window.and_then(|w| w.latest);
    let backups: Vec<BackupView> = window
        .map(|w| {
            w.backups
                .iter()
                .map(|b| BackupView {
                    backup_id: b.backup_id.clone(),
                    time: rfc3339(b.stop_time),
                    raw_bytes: b.raw_bytes,
                    stored_bytes: b.stored_bytes,
                })
                .collect()
        })
        .unwrap_or_default();
    InstanceView {
        instance_id: record.id.to_string(),
        name: names.last().map(|n| n.name.clone()),
        names: names
            .iter()
            .map(|n| NameView {
                name: n.name.clone(),
                since: millis(n.recorded_at),
                source: n.source.clone(),
            })
            .collect(),
        state: state_name(record.state),
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
        restore_window: WindowView {
            from: window
                .and_then(|w| w.earliest)
                .map(|t| rfc3339(ceil_secs(t))),
            // Whole seconds, rounded down: the end must itself be restorable.
            to: if live { None } else { latest.map(rfc3339) },
            to_now: live,
        },
        last_base_backup: backups.last().map(|b| b.time.clone()),
        base_backups: backups,
        archive: archive_view(record.state, observed, latest),
        created_ms: record.created_at,
    }
}

fn archive_view(
    state: InstanceState,
    observed: &Observed,
    latest: Option<DateTime<Utc>>,
) -> ArchiveView {
    let ended = |healthy: bool, detail: Option<&str>| ArchiveView {
        healthy,
        last_archived_at: latest.map(rfc3339),
        lag_segments: 0,
        last_failure_at: None,
        detail: detail.map(String::from),
    };
    if observed.window.is_none() {
        return ArchiveView {
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
        return ArchiveView {
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
    ArchiveView {
        healthy: !failing && !lagging,
        last_archived_at: stats.last_archived_at.and_then(unix_secs),
        lag_segments: stats.ready_segments,
        last_failure_at: stats.last_failed_at.and_then(unix_secs),
        detail,
    }
}

#[cfg(test)]
mod tests;
