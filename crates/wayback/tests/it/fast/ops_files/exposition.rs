//! The broker's `/metrics` as its own code renders it, with every family present: one
//! observation of each kind fed to `wayback::metrics` (the way the supervisor, the worker and
//! the scrape handler feed it), then each family's type and label names read back from the
//! text; `queries` adds what a test app's own `GET /metrics` says (families rendered there
//! that this file does not feed: their type, and their labels when they have samples). The
//! dashboard and the alerts are checked against this, not against a list kept by hand.

use std::collections::{BTreeMap, BTreeSet};

use wayback::domain::{FollowerLag, FollowerState, InstanceId};
use wayback::metrics::{self, ActivityRow, DrillFigures, FollowerRow, HaMemberRow, HaRow, Metrics};
use wayback_api::activity::{ActivitySummary, DatabaseStats, LockWaitTotal, Sample};
use wayback_api::agent::{ArchiverStats, Capacity};

/// One metric family: its `# TYPE` and the label names its samples carry.
#[derive(Debug, Clone)]
pub struct Family {
    pub kind: String,
    pub labels: BTreeSet<String>,
    /// Whether any sample was seen (if not, its labels are unknown, not none).
    pub sampled: bool,
}

/// The text of a scrape where every family has at least one sample.
pub fn render_everything() -> String {
    let m = Metrics::default();
    let id = "6f1c2d3e-0000-4000-8000-000000000001";
    m.operation_finished("provision", "succeeded", 1.5);
    m.http_response("/v2/catalog", 200);
    m.cluster_restarted();
    m.names_unknown(1);
    m.archiver_observed(
        id,
        ArchiverStats {
            archived_count: 3,
            last_archived_at: Some(1.7e9),
            failed_count: 1,
            last_failed_at: Some(1.7e9),
            ready_segments: 1,
            oldest_ready_age_secs: 2.0,
            last_failed_wal: None,
        },
    );
    m.backup_finished(id, 1.7e9, 1024);
    m.restore_finished("succeeded", 12.0);
    m.agents_observed(vec![(
        "agent-a".into(),
        Some(Capacity {
            instances: 1,
            max_instances: 10,
            memory_total_bytes: 1 << 30,
            memory_available_bytes: 1 << 29,
            disk_total_bytes: 1 << 34,
            disk_available_bytes: 1 << 33,
            advertise_host: "10.0.0.2".into(),
            version: "test".into(),
            ha: true,
            standby_backup: true,
            idle_stop: true,
        }),
    )]);
    m.trash_observed("local", 1, 4096);
    m.drills_observed(vec![(
        id.into(),
        DrillFigures {
            last_success: Some(1.7e9),
            last_duration: Some(20.0),
            failures: 0,
        },
    )]);
    m.wake_observed(0.2);
    m.wake_failed();
    let mut text = m.render(
        &[("ready".into(), 1)],
        &[("provision".into(), "in progress".into(), 1)],
    );
    text.push_str(&metrics::render_stopped(1));
    let lag = FollowerLag {
        follower: InstanceId::parse(id).unwrap(),
        state: FollowerState::Streaming,
        lag_bytes: Some(0),
        lag_seconds: Some(0.0),
        xmin_age: Some(1),
    };
    text.push_str(&metrics::render_followers(&[FollowerRow {
        instance: id,
        leader: id,
        lag: &lag,
    }]));
    // What running instances are doing (issue 19): one sampled instance with a lock wait.
    let activity = ActivitySummary {
        instance_id: id.into(),
        latest: Some(Sample::default()),
        stats: Some(DatabaseStats {
            cache_hit_ratio: Some(0.99),
            ..DatabaseStats::default()
        }),
        lock_wait_seconds: vec![LockWaitTotal {
            lock_type: "transactionid".into(),
            mode: "ShareLock".into(),
            seconds: 1.0,
        }],
    };
    text.push_str(&metrics::render_activity(&[ActivityRow {
        summary: &activity,
        name: Some("orders"),
        space: "space-guid",
        plan: "small",
    }]));
    text.push_str(&metrics::render_ha(&[HaRow {
        instance: id,
        members: vec![HaMemberRow {
            member: "m1",
            role: "sync_standby",
            lag_bytes: Some(0),
        }],
        failovers: Some(1),
    }]));
    text
}

/// Families by name, from exposition text. A histogram's samples (`_bucket`, `_sum`,
/// `_count`) count under the histogram's name; `le` is left out of its labels.
pub fn families(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE NAME KIND");
            families.insert(
                name.to_string(),
                Family {
                    kind: kind.to_string(),
                    labels: BTreeSet::new(),
                    sampled: false,
                },
            );
        }
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name_end = line.find(['{', ' ']).expect("a sample line");
        let name = &line[..name_end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|s| name.strip_suffix(s))
            .find(|base| families.get(*base).is_some_and(|f| f.kind == "histogram"))
            .unwrap_or(name);
        let family = families
            .get_mut(family)
            .unwrap_or_else(|| panic!("sample {name} has no # TYPE line"));
        family.sampled = true;
        if let Some(labels) = line[name_end..].strip_prefix('{') {
            let labels = &labels[..labels.rfind('}').expect("closing brace")];
            for pair in labels.split("\",") {
                let label = pair.split_once('=').expect("label=\"value\"").0;
                if label != "le" {
                    family.labels.insert(label.to_string());
                }
            }
        }
    }
    families
}

/// `more`'s families added to `families` (labels joined).
pub fn merge(families: &mut BTreeMap<String, Family>, more: BTreeMap<String, Family>) {
    for (name, family) in more {
        match families.get_mut(&name) {
            Some(known) => {
                assert_eq!(known.kind, family.kind, "{name} has two types");
                known.labels.extend(family.labels);
                known.sampled |= family.sampled;
            }
            None => {
                families.insert(name, family);
            }
        }
    }
}

/// The metric a sample name of the query belongs to (`x_bucket` of histogram `x` is `x`).
pub fn family_of<'a>(
    families: &'a BTreeMap<String, Family>,
    metric: &str,
) -> Option<(&'a str, &'a Family)> {
    if let Some((name, family)) = families.get_key_value(metric) {
        return Some((name.as_str(), family));
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = metric.strip_suffix(suffix)?;
        let (name, family) = families.get_key_value(base)?;
        (family.kind == "histogram").then_some((name.as_str(), family))
    })
}
