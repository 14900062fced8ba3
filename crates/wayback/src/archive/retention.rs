//! Retention: which base backups and WAL an instance's archive keeps, as a pure plan, then an
//! executor that deletes what the plan says.
//!
//! For a live instance with a recovery window of `d` days, every point in time of the last `d`
//! days must stay restorable. A point in time needs a backup that ended before it and all WAL
//! from that backup's start on. So the plan keeps the newest complete backup whose stop time is
//! at or before `now − d` (the *anchor*) and the WAL it and every newer point need: on the
//! anchor's timeline every segment from its `start_wal` on, every segment of later timelines,
//! and every `.history` file (tiny, and recovery reads them to follow timeline switches).
//! `.backup` labels and `.partial` segments follow the segment rule by their segment name.
//! Older backups and WAL go. Without any complete backup nothing but stale incomplete backups
//! is deleted: WAL without a base is still the only copy of the history.
//!
//! Of the backups newer than the anchor, those of the last [`DENSE_HOURS`] are all kept; older
//! ones are thinned to the newest of each hour (by stop time), plus the first on each timeline
//! after the anchor's. Since all WAL from the anchor on stays, every point of the window stays
//! restorable from the anchor or a kept backup; the thinned ones only shortened replay. This
//! also clears what a backup every minute (an idle instance's loop, issue 12) left behind.
//!
//! A backup is complete when its manifest is present (`manifest.rs`). Deleting one removes
//! the manifest first and the parts after, so that an interrupted deletion leaves an
//! incomplete backup (ignored, and removed later), never a "complete" one with parts missing.
//! Parts without a manifest are removed once the backup is older than a day (by its id's start
//! time and its newest part's write time: a backup being written now is never touched). A
//! manifest that cannot be read stops all deletion for the instance: we do not delete around a
//! backup we do not understand.
//!
//! Deleted instances are not pruned: they keep their whole archive for `retention.deleted_days`,
//! then the reaper ([`reap_plan`]) removes everything but `instance.json` and `key.json`.
//!
//! Must not import `osb`, `broker`, `store` or `jobs`.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, NaiveDateTime, Utc};

use super::layout::{InstancePrefix, WalFileKind};
use super::manifest::BackupManifest;
use super::window::{classify, complete_backups, load_manifests, ArchivedObject, Manifests};
use super::ArchiveError;
use crate::storage::{ObjectMeta, ObjectStore};

/// How long parts without a manifest may wait for it before they count as abandoned.
pub const INCOMPLETE_GRACE_HOURS: i64 = 24;

/// Backups that ended within this many hours are all kept; older ones, at most one an hour.
pub const DENSE_HOURS: i64 = 24;

/// What one plan keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub recovery_window: Duration,
    pub incomplete_grace: Duration,
}

impl RetentionPolicy {
    /// The policy of a plan whose recovery window is `days` days.
    pub fn days(days: u64) -> Self {
        Self {
            recovery_window: Duration::days(i64::try_from(days).unwrap_or(i64::MAX / 86_400_000)),
            incomplete_grace: Duration::hours(INCOMPLETE_GRACE_HOURS),
        }
    }
}

/// What to delete and what stays, with the reasons a person reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPlan {
    /// Keys to delete, in order: the first [`RetentionPlan::manifests_first`] are manifests of
    /// backups being deleted, which go before anything else.
    pub delete: Vec<String>,
    pub manifests_first: usize,
    pub keep: Vec<String>,
    pub delete_bytes: u64,
    pub keep_bytes: u64,
    /// Complete backups kept, oldest first.
    pub kept_backups: Vec<String>,
    /// Complete backups deleted.
    pub deleted_backups: Vec<String>,
    /// Abandoned incomplete backups deleted.
    pub incomplete_backups: Vec<String>,
    /// The first WAL segment kept on the oldest kept backup's timeline.
    pub oldest_kept_wal: Option<String>,
    /// Why less than the rules allow was deleted (e.g. an unreadable manifest).
    pub notes: Vec<String>,
}

impl RetentionPlan {
    fn new_keep_all(listing: &[ObjectMeta], note: String) -> Self {
        let mut plan = RetentionPlan::default();
        for o in listing {
            plan.keep.push(o.key.clone());
            plan.keep_bytes += o.size;
        }
        plan.notes.push(note);
        plan
    }

    /// (manifests, everything else), in the order they must be deleted.
    pub fn phases(&self) -> (&[String], &[String]) {
        self.delete.split_at(self.manifests_first)
    }
}

/// The start time a backup id encodes (`YYYYMMDDTHHMMSSmmmZ`).
pub fn backup_id_time(id: &str) -> Option<DateTime<Utc>> {
    let text = id.strip_suffix('Z')?;
    let (secs, millis) = text.split_at_checked(15)?;
    let t = NaiveDateTime::parse_from_str(secs, "%Y%m%dT%H%M%S").ok()?;
    let ms: i64 = millis.parse().ok()?;
    Some(t.and_utc() + Duration::milliseconds(ms))
}

/// Plans retention for one live instance's archive. Pure: `listing` is every object under the
/// instance prefix, `manifests` what [`load_manifests`] read from it.
pub fn plan_retention(
    prefix: &InstancePrefix,
    listing: &[ObjectMeta],
    manifests: &Manifests,
    now: DateTime<Utc>,
    policy: &RetentionPolicy,
) -> RetentionPlan {
    if let Some((id, why)) = manifests
        .iter()
        .find_map(|(id, m)| m.as_ref().err().map(|e| (id, e)))
    {
        return RetentionPlan::new_keep_all(
            listing,
            format!("nothing deleted: the manifest of backup {id} cannot be read ({why})"),
        );
    }
    let complete = complete_backups(manifests);
    let cutoff = now - policy.recovery_window;
    let anchor = complete
        .iter()
        .rposition(|b| b.stop_time <= cutoff)
        .unwrap_or(0);
    let kept: BTreeSet<&str> = thinned(&complete, anchor, now)
        .into_iter()
        .map(|b| b.backup_id.as_str())
        .collect();
    // The first segment the oldest kept backup needs: (timeline, log, seg).
    let boundary = complete.get(anchor).and_then(|b| {
        super::layout::WalFileName::parse(&b.start_wal)
            .ok()
            .and_then(|n| n.segment_parts())
    });

    // Incomplete backups: their age, by id and by their newest part.
    let mut newest_part: BTreeMap<String, Option<DateTime<Utc>>> = BTreeMap::new();
    for o in listing {
        if let ArchivedObject::BackupPart(id) | ArchivedObject::BackupManifest(id) =
            classify(prefix, &o.key)
        {
            if !manifests.contains_key(&id) {
                let e = newest_part.entry(id).or_insert(None);
                *e = (*e).max(o.last_modified);
            }
        }
    }
    let abandoned = |id: &str| -> bool {
        let started = backup_id_time(id);
        let written = newest_part.get(id).copied().flatten();
        match started.max(written) {
            Some(t) => t <= now - policy.incomplete_grace,
            // Neither a readable id time nor a write time: too little to judge, keep it.
            None => false,
        }
    };

    let mut plan = RetentionPlan {
        kept_backups: complete
            .iter()
            .filter(|b| kept.contains(b.backup_id.as_str()))
            .map(|b| b.backup_id.clone())
            .collect(),
        deleted_backups: complete
            .iter()
            .filter(|b| !kept.contains(b.backup_id.as_str()))
            .map(|b| b.backup_id.clone())
            .collect(),
        oldest_kept_wal: complete.get(anchor).map(|b| b.start_wal.clone()),
        ..RetentionPlan::default()
    };
    if complete.is_empty() {
        plan.notes
            .push("no complete base backup yet: every WAL file is kept".into());
    }
    let mut manifests_to_delete = Vec::new();
    let mut rest_to_delete = Vec::new();
    let mut incomplete = BTreeSet::new();
    for o in listing {
        let delete = match classify(prefix, &o.key) {
            ArchivedObject::InstanceDoc | ArchivedObject::KeyDoc | ArchivedObject::Other => false,
            ArchivedObject::Wal(name) => match (name.kind(), name.segment_parts(), boundary) {
                (WalFileKind::History, _, _) => false,
                (_, Some((tl, log, seg)), Some((tl0, log0, seg0))) => {
                    tl < tl0 || (tl == tl0 && (log, seg) < (log0, seg0))
                }
                _ => false,
            },
            ArchivedObject::BackupManifest(id) | ArchivedObject::BackupPart(id) => {
                if kept.contains(id.as_str()) {
                    false
                } else if manifests.contains_key(&id) {
                    true
                } else if abandoned(id.as_str()) {
                    incomplete.insert(id);
                    true
                } else {
                    false
                }
            }
        };
        if delete {
            plan.delete_bytes += o.size;
            if matches!(classify(prefix, &o.key), ArchivedObject::BackupManifest(_)) {
                manifests_to_delete.push(o.key.clone());
            } else {
                rest_to_delete.push(o.key.clone());
            }
        } else {
            plan.keep_bytes += o.size;
            plan.keep.push(o.key.clone());
        }
    }
    plan.manifests_first = manifests_to_delete.len();
    plan.delete = manifests_to_delete;
    plan.delete.extend(rest_to_delete);
    plan.incomplete_backups = incomplete.into_iter().collect();
    plan
}

/// The complete backups retention keeps, oldest first: the anchor (`complete[anchor]`, the
/// window's start), every one that ended within [`DENSE_HOURS`] of `now`, and of the older
/// ones the newest of each hour and the first of each timeline after the anchor's.
fn thinned(complete: &[BackupManifest], anchor: usize, now: DateTime<Utc>) -> Vec<&BackupManifest> {
    let dense_from = now - Duration::hours(DENSE_HOURS);
    let hour = |b: &BackupManifest| b.stop_time.timestamp().div_euclid(3600);
    let mut timelines = BTreeSet::new();
    let mut kept = Vec::new();
    for (i, b) in complete.iter().enumerate().skip(anchor) {
        let first_on_timeline = timelines.insert(b.timeline);
        let newest_of_hour = !complete.get(i + 1).is_some_and(|n| hour(n) == hour(b));
        if i == anchor || first_on_timeline || b.stop_time > dense_from || newest_of_hour {
            kept.push(b);
        }
    }
    kept
}

/// The reaper's plan for a deleted instance whose grace period is over: everything but
/// `instance.json` and `key.json` (which the sealed `instance.json` needs), manifests first.
pub fn reap_plan(prefix: &InstancePrefix, listing: &[ObjectMeta]) -> RetentionPlan {
    let mut plan = RetentionPlan::default();
    let mut rest = Vec::new();
    for o in listing {
        match classify(prefix, &o.key) {
            ArchivedObject::InstanceDoc | ArchivedObject::KeyDoc => {
                plan.keep.push(o.key.clone());
                plan.keep_bytes += o.size;
                continue;
            }
            ArchivedObject::BackupManifest(id) => {
                plan.delete.push(o.key.clone());
                plan.deleted_backups.push(id);
            }
            _ => rest.push(o.key.clone()),
        }
        plan.delete_bytes += o.size;
    }
    plan.manifests_first = plan.delete.len();
    plan.delete.extend(rest);
    plan
}

/// Deletes what `plan` says: manifests first, then the rest.
pub async fn execute(store: &ObjectStore, plan: &RetentionPlan) -> Result<(), ArchiveError> {
    let (manifests, rest) = plan.phases();
    if !manifests.is_empty() {
        store.delete_many(manifests).await?;
    }
    if !rest.is_empty() {
        store.delete_many(rest).await?;
    }
    Ok(())
}

/// Everything under the instance prefix (with the trailing `/`, so that an instance id that
/// is a prefix of another's never reaches into it).
pub async fn list_instance(
    store: &ObjectStore,
    prefix: &InstancePrefix,
) -> Result<Vec<ObjectMeta>, ArchiveError> {
    Ok(store.list(&format!("{}/", prefix.as_str())).await?)
}

/// Plans and (unless `dry_run`) applies retention to one live instance's archive.
pub async fn prune_instance(
    store: &ObjectStore,
    prefix: &InstancePrefix,
    now: DateTime<Utc>,
    policy: &RetentionPolicy,
    dry_run: bool,
) -> Result<RetentionPlan, ArchiveError> {
    let listing = list_instance(store, prefix).await?;
    let manifests = load_manifests(store, prefix, &listing).await?;
    let plan = plan_retention(prefix, &listing, &manifests, now, policy);
    if !dry_run {
        execute(store, &plan).await?;
    }
    Ok(plan)
}

/// Plans and (unless `dry_run`) empties a deleted instance's archive but for `instance.json`.
/// The caller records the reaping and rewrites `instance.json` with `reaped_at`.
pub async fn reap_instance(
    store: &ObjectStore,
    prefix: &InstancePrefix,
    dry_run: bool,
) -> Result<RetentionPlan, ArchiveError> {
    let listing = list_instance(store, prefix).await?;
    let plan = reap_plan(prefix, &listing);
    if !dry_run {
        execute(store, &plan).await?;
    }
    Ok(plan)
}

#[cfg(test)]
#[path = "retention_tests.rs"]
mod tests;
