//! Rebuilding the broker's index of instances and their names from object storage alone
//! (`wayback reindex`): losing the state database must not lose the ability to undo.
//!
//! Every instance prefix carries an `instance.json` (`archive::instance_doc`) with the
//! instance's ids, space, org, plan, every name with its time and source, its life and where
//! its history ends. [`reindex`] reads all of them and merges each into the state database
//! under the rules of `store::reindex`: unknown instances are inserted as deleted (no cluster
//! is ever started for them), missing names and end-of-life facts are added, nothing the
//! database holds is deleted or overwritten, and a second run changes nothing.
//!
//! Restore drill reports (issue 18) under each prefix's `drills/` are recorded back into the
//! `drills` table when the database has none started at the same moment.
//!
//! Restore windows are not stored: they are computed on demand from the backup manifests and
//! WAL headers under each prefix (`archive::window`), so once the instances and their names
//! are known again, `clone-from` can find and restore them. The report can include each
//! instance's window, which proves exactly that (one listing per instance).

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::archive::instance_doc::{self, InstanceDoc};
use crate::archive::layout::InstancePrefix;
use crate::archive::window;
use crate::domain::{InstanceId, SpaceGuid};
use crate::storage::ObjectStore;
use crate::store::{IndexedInstance, NameRecord, Store};

/// What one run did (or, dry, would do).
#[derive(Debug, Clone, Serialize)]
pub struct ReindexReport {
    pub dry_run: bool,
    /// Where the documents were read.
    pub archive: String,
    pub instances: Vec<InstanceReindex>,
    /// Documents that could not be used: key and why. Never silently dropped.
    pub unreadable: Vec<UnreadableDoc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnreadableDoc {
    pub key: String,
    pub error: String,
}

/// One instance's line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceReindex {
    pub instance_id: String,
    pub space_guid: String,
    /// The state in `instance.json`.
    pub documented_state: String,
    /// The name it has (or had last).
    pub name: Option<String>,
    /// `added`, `updated`, `unchanged`, `failed`.
    pub action: &'static str,
    pub names_added: usize,
    pub fields_filled: Vec<&'static str>,
    pub note: Option<String>,
    pub error: Option<String>,
    /// Only when asked for.
    pub window: Option<WindowSummary>,
    /// Restore drill reports read back from `<prefix>/drills/` into the state database.
    #[serde(skip_serializing_if = "is_zero")]
    pub drills_added: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// An instance's restore window, as `clone-from` would see it.
#[derive(Debug, Clone, Serialize)]
pub struct WindowSummary {
    pub earliest: Option<DateTime<Utc>>,
    pub latest: Option<DateTime<Utc>>,
    pub backups: usize,
    pub segments: usize,
    pub error: Option<String>,
}

impl ReindexReport {
    fn count(&self, action: &str) -> usize {
        self.instances.iter().filter(|i| i.action == action).count()
    }
    pub fn found(&self) -> usize {
        self.instances.len()
    }
    pub fn added(&self) -> usize {
        self.count("added")
    }
    pub fn updated(&self) -> usize {
        self.count("updated")
    }
    pub fn failed(&self) -> usize {
        self.count("failed")
    }
    pub fn names_added(&self) -> usize {
        self.instances.iter().map(|i| i.names_added).sum()
    }
    /// Whether the run left anything unresolved (unreadable documents, failed merges).
    pub fn has_problems(&self) -> bool {
        self.failed() > 0 || !self.unreadable.is_empty()
    }
}

/// Reads every `instance.json` in `archive` and merges it into `store`; with `windows`, also
/// computes each instance's restore window. Fails only when the archive cannot be listed or
/// read (a transient failure must not look like an archive without instances); one instance's
/// failed merge is in the report and does not stop the others.
pub async fn reindex(
    store: &Store,
    archive: &ObjectStore,
    dry_run: bool,
    windows: bool,
) -> anyhow::Result<ReindexReport> {
    // Sealed documents open with the data keys the store's keyring unwraps; one that does not
    // is reported (naming the instance and key id) and the others are indexed.
    let index = instance_doc::rebuild_index(archive, store.keyring().ok()).await?;
    let mut report = ReindexReport {
        dry_run,
        archive: archive.location(""),
        instances: Vec::with_capacity(index.docs.len()),
        unreadable: index
            .unreadable
            .into_iter()
            .map(|(key, error)| UnreadableDoc { key, error })
            .collect(),
    };
    for doc in &index.docs {
        let mut line = InstanceReindex {
            instance_id: doc.instance_id.clone(),
            space_guid: doc.space_guid.clone(),
            documented_state: doc.state.clone(),
            name: doc.current_name().map(str::to_string),
            action: "unchanged",
            names_added: 0,
            fields_filled: vec![],
            note: None,
            error: None,
            window: None,
            drills_added: 0,
        };
        match indexed(doc) {
            Err(e) => {
                line.action = "failed";
                line.error = Some(e);
            }
            Ok(indexed) => match store.merge_indexed_instance(&indexed, dry_run).await {
                Err(e) => {
                    line.action = "failed";
                    line.error = Some(format!("{e:#}"));
                }
                Ok(outcome) => {
                    line.names_added = outcome.names_added;
                    line.fields_filled = outcome.fields_filled.clone();
                    line.action = if outcome.added {
                        "added"
                    } else if outcome.changed() {
                        "updated"
                    } else {
                        "unchanged"
                    };
                    if outcome.added && doc.state != "deleted" {
                        line.note = Some(format!(
                            "was {} in instance.json; recorded as deleted: this broker has no \
                             record of its cluster (clone-from can still restore it)",
                            doc.state
                        ));
                    }
                    if let Some(state) = outcome.live_but_documented_deleted {
                        line.note = Some(format!(
                            "instance.json says deleted, the state database says {state}; \
                             left as the database says"
                        ));
                    }
                }
            },
        }
        if windows {
            line.window = Some(window_of(archive, doc).await);
        }
        if line.action != "failed" && !dry_run {
            match reindex_drills(store, archive, doc).await {
                Ok(n) => line.drills_added = n,
                Err(e) => report.unreadable.push(UnreadableDoc {
                    key: format!(
                        "spaces/{}/instances/{}/drills/",
                        doc.space_guid, doc.instance_id
                    ),
                    error: format!("{e:#}"),
                }),
            }
        }
        report.instances.push(line);
    }
    for line in report.instances.iter().filter(|l| l.action == "failed") {
        tracing::warn!(instance = %line.instance_id, error = line.error.as_deref().unwrap_or(""), "cannot reindex this instance");
    }
    Ok(report)
}

/// Restore drill reports (issue 18) the archive holds for the instance and the state database
/// does not: recorded again, so the API, `cf backups` and the schedule see them.
async fn reindex_drills(
    store: &Store,
    archive: &ObjectStore,
    doc: &InstanceDoc,
) -> anyhow::Result<usize> {
    let (Ok(space), Ok(id)) = (
        SpaceGuid::parse(doc.space_guid.clone()),
        InstanceId::parse(doc.instance_id.clone()),
    ) else {
        return Ok(0);
    };
    let prefix = InstancePrefix::new(&space, &id);
    let objects = archive
        .list(&format!("{}/drills/", prefix.as_str()))
        .await?;
    if objects.is_empty() {
        return Ok(0);
    }
    let key = crate::archive::keydoc::data_key(archive, store.keyring().ok(), prefix.as_str())
        .await?
        .map(crate::archive::keydoc::ArchiveKey);
    let mut added = 0;
    for object in objects.iter().filter(|o| o.key.ends_with(".json")) {
        let Some(bytes) = archive.get(&object.key).await? else {
            continue;
        };
        let report = crate::jobs::drill_from_stored(&bytes, &object.key, key.as_ref())
            .map_err(|e| anyhow::anyhow!("{}: {e}", object.key))?;
        let started = report.started.timestamp_millis();
        let finished = started + (report.duration_secs * 1000.0) as i64;
        let json = serde_json::to_string(&report)?;
        if store
            .record_archived_drill(&id, started, finished, report.passed(), &json)
            .await?
        {
            added += 1;
        }
    }
    Ok(added)
}

fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// The document in the store's terms; `Err` says why it cannot be used.
pub fn indexed(doc: &InstanceDoc) -> Result<IndexedInstance, String> {
    let id = InstanceId::parse(doc.instance_id.clone())
        .map_err(|e| format!("instance id {:?}: {e}", doc.instance_id))?;
    Ok(IndexedInstance {
        id,
        service_id: doc.service_id.clone(),
        plan_id: doc.plan_id.clone(),
        organization_guid: doc.organization_guid.clone(),
        space_guid: doc.space_guid.clone(),
        state: doc.state.clone(),
        names: doc
            .names
            .iter()
            .map(|n| NameRecord {
                name: n.name.clone(),
                source: n.source.clone(),
                recorded_at: millis(n.recorded_at),
            })
            .collect(),
        created_at: millis(doc.created_at),
        deleted_at: doc.deleted_at.map(millis),
        final_lsn: doc.final_lsn.clone(),
        final_at: doc.final_at.map(millis),
        reaped_at: doc.reaped_at.map(millis),
        doc_hash: doc.content_hash(),
    })
}

async fn window_of(archive: &ObjectStore, doc: &InstanceDoc) -> WindowSummary {
    let prefix = match (
        SpaceGuid::parse(doc.space_guid.clone()),
        InstanceId::parse(doc.instance_id.clone()),
    ) {
        (Ok(space), Ok(id)) => InstancePrefix::new(&space, &id),
        _ => {
            return WindowSummary {
                earliest: None,
                latest: None,
                backups: 0,
                segments: 0,
                error: Some("the document's ids do not name a prefix".into()),
            }
        }
    };
    match window::restore_window(archive, &prefix).await {
        Ok(w) => WindowSummary {
            earliest: w.earliest,
            latest: w.latest,
            backups: w.backups.len(),
            segments: w.segments,
            error: None,
        },
        Err(e) => WindowSummary {
            earliest: None,
            latest: None,
            backups: 0,
            segments: 0,
            error: Some(e.to_string()),
        },
    }
}
