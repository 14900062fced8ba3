use std::path::PathBuf;

use serde_json::Value;

use super::*;
use crate::archive::manifest::{BackupManifest, SettingFloors, FORMAT};
use crate::domain::InstanceId;

/// A time as the wire writes it.
fn rfc3339(t: DateTime<Utc>) -> Value {
    serde_json::to_value(t).unwrap()
}

#[test]
fn window_ends_round_inward_to_whole_seconds() {
    let t = DateTime::parse_from_rfc3339("2026-11-14T03:00:11.250Z")
        .unwrap()
        .with_timezone(&Utc);
    assert_eq!(rfc3339(ceil_secs(t)), "2026-11-14T03:00:12Z");
    assert_eq!(rfc3339(whole_secs(t)), "2026-11-14T03:00:11Z");
    let whole = t.with_nanosecond(0).unwrap();
    assert_eq!(ceil_secs(whole), whole);
}

#[test]
fn archive_health_follows_failures_and_lag() {
    let observed = |stats: ArchiverStats| Observed {
        window: Some(RestoreWindow {
            earliest: None,
            latest: None,
            backups: vec![],
            unreadable_backups: vec![],
            newest_segment: None,
            latest_commit_segment: None,
            segments: 0,
            headers_read: 0,
        }),
        stats: Some(stats),
    };
    let ok = ArchiverStats {
        last_archived_at: Some(100.0),
        ready_segments: 2,
        ..ArchiverStats::default()
    };
    let v = archive_view(InstanceState::Ready, &observed(ok.clone()), None, false);
    assert!(v.healthy && v.detail.is_none());
    let failing = ArchiverStats {
        last_failed_at: Some(101.0),
        ..ok.clone()
    };
    assert!(!archive_view(InstanceState::Ready, &observed(failing), None, false).healthy);
    let lagging = ArchiverStats {
        ready_segments: 3,
        ..ok
    };
    let v = archive_view(InstanceState::Ready, &observed(lagging), None, false);
    assert_eq!((v.healthy, v.lag_segments), (false, 3));
    let deleted = archive_view(
        InstanceState::Deleted,
        &observed(ArchiverStats::default()),
        None,
        false,
    );
    assert!(deleted.healthy);
    // Stopped when idle: no statistics, and none needed (it archived every commit first).
    let quiet = Observed {
        stats: None,
        ..observed(ArchiverStats::default())
    };
    assert!(!archive_view(InstanceState::Ready, &quiet, None, false).healthy);
    let stopped = archive_view(InstanceState::Ready, &quiet, None, true);
    assert!(stopped.healthy, "{stopped:?}");
    assert!(stopped.detail.unwrap().contains("Stopped when idle"));
}

// ---- the wire, byte for byte: `tests/fixtures/api/instances.json` ----

const SPACE: &str = "5ace0000-0000-4000-8000-000000000002";
const SERVICE: &str = "5f6b3c1e-8a43-4f0e-9d7c-6a1b2c3d4e5f";
const SMALL: &str = "0d2e9a44-1c3b-4b55-8f6e-2a7d9c0b1e01";

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn ms(s: &str) -> i64 {
    at(s).timestamp_millis()
}

fn secs(s: &str) -> f64 {
    at(s).timestamp_micros() as f64 / 1e6
}

fn record(id: &str, state: InstanceState, plan_id: &str, created: &str) -> InstanceRecord {
    InstanceRecord {
        id: InstanceId::parse(id.to_string()).unwrap(),
        service_id: SERVICE.into(),
        plan_id: plan_id.into(),
        organization_guid: "c0ffee00-0000-4000-8000-000000000001".into(),
        space_guid: SPACE.into(),
        parameters: Value::Null,
        context: Value::Null,
        state,
        port: None,
        database_name: "db".into(),
        owner_role: "owner".into(),
        created_at: ms(created),
        updated_at: ms(created),
        deleted_at: None,
        agent: None,
        agent_host: None,
        leader_id: None,
        stopped_at: None,
        wake_error: None,
        wake_error_at: None,
    }
}

fn name(name: &str, source: &str, recorded: &str) -> NameRecord {
    NameRecord {
        name: name.into(),
        source: source.into(),
        recorded_at: ms(recorded),
    }
}

fn backup(stop: &str, raw_bytes: u64, stored_bytes: u64) -> BackupManifest {
    BackupManifest {
        format: FORMAT,
        backup_id: crate::archive::manifest::backup_id(at(stop)),
        instance_id: "i1".into(),
        system_identifier: 7,
        pg_version: 150008,
        timeline: 1,
        start_lsn: "0/2000028".into(),
        stop_lsn: "0/2000100".into(),
        start_wal: "000000010000000000000002".into(),
        stop_wal: "000000010000000000000002".into(),
        start_time: at(stop),
        stop_time: at(stop),
        floors: SettingFloors::default(),
        raw_bytes,
        stored_bytes,
        parts: vec![],
        reason: "scheduled".into(),
    }
}

fn window(
    earliest: Option<&str>,
    latest: Option<&str>,
    backups: Vec<BackupManifest>,
) -> RestoreWindow {
    RestoreWindow {
        earliest: earliest.map(at),
        latest: latest.map(at),
        backups,
        unreadable_backups: vec![],
        newest_segment: None,
        latest_commit_segment: None,
        segments: 0,
        headers_read: 0,
    }
}

/// One instance of every shape the API answers: deleted with names and backups, live and
/// healthy, live and failing, live and lagging, live without statistics, provisioning with an
/// unreadable archive and a plan the catalog lost, failed.
fn every_shape() -> Vec<v1::Instance> {
    let catalog = Catalog::load(None).unwrap();
    let mut deleted = record(
        "3f2a9c1e-8b7a-4d6c-b5e4-1a2b3c4d5e6f",
        InstanceState::Deleted,
        SMALL,
        "2026-11-14T02:59:58.250Z",
    );
    deleted.deleted_at = Some(ms("2026-11-21T09:42:40.900Z"));
    let deleted_names = [
        name("prod", "provision", "2026-11-14T02:59:58.250Z"),
        name("production", "update", "2026-11-15T08:00:00Z"),
    ];
    let deleted_window = window(
        Some("2026-11-14T03:00:11.250Z"),
        Some("2026-11-21T09:42:30.750Z"),
        vec![
            backup("2026-11-14T03:00:11.250Z", 52_000_000, 9_100_000),
            backup("2026-11-21T03:00:09Z", 1_100_000_000, 340_000_000),
        ],
    );
    let live = |id: &str| record(id, InstanceState::Ready, SMALL, "2026-11-20T00:00:00Z");
    let live_window = window(
        Some("2026-11-20T00:00:30Z"),
        Some("2026-11-21T09:41:50Z"),
        vec![backup("2026-11-20T00:00:30Z", 61_000_000, 10_400_000)],
    );
    let healthy = ArchiverStats {
        archived_count: 40,
        last_archived_at: Some(secs("2026-11-21T09:41:50.500Z")),
        ready_segments: 1,
        oldest_ready_age_secs: 3.5,
        ..ArchiverStats::default()
    };
    let observed = |stats: Option<ArchiverStats>| Observed {
        window: Some(live_window.clone()),
        stats,
    };
    vec![
        render(
            &deleted,
            &deleted_names,
            &Observed {
                window: Some(deleted_window),
                stats: None,
            },
            &catalog,
        ),
        render(
            &live("a81c07d2-6e4f-4b1d-9c3a-2f5e8d7b6a90"),
            &[name("orders", "cloud_controller", "2026-11-20T00:00:00Z")],
            &observed(Some(healthy.clone())),
            &catalog,
        ),
        render(
            &live("a81c07d2-6e4f-4b1d-9c3a-000000000002"),
            &[],
            &observed(Some(ArchiverStats {
                failed_count: 3,
                last_failed_at: Some(secs("2026-11-21T09:42:01.125Z")),
                ready_segments: 4,
                ..healthy.clone()
            })),
            &catalog,
        ),
        render(
            &live("a81c07d2-6e4f-4b1d-9c3a-000000000003"),
            &[],
            &observed(Some(ArchiverStats {
                ready_segments: 5,
                oldest_ready_age_secs: 61.4,
                ..healthy
            })),
            &catalog,
        ),
        render(
            &live("a81c07d2-6e4f-4b1d-9c3a-000000000004"),
            &[],
            &observed(None),
            &catalog,
        ),
        render(
            &record(
                "7b0d4e11-2c9a-4f3b-8d5e-6a7b8c9d0e1f",
                InstanceState::Provisioning,
                "no-longer-in-the-catalog",
                "2026-11-21T09:40:02Z",
            ),
            &[],
            &Observed {
                window: None,
                stats: None,
            },
            &catalog,
        ),
        render(
            &record(
                "7b0d4e11-2c9a-4f3b-8d5e-000000000005",
                InstanceState::Failed,
                SMALL,
                "2026-11-21T09:40:03Z",
            ),
            &[name("broken", "provision", "2026-11-21T09:40:03Z")],
            &Observed {
                window: Some(window(None, None, vec![])),
                stats: None,
            },
            &catalog,
        ),
    ]
}

/// Compares `text` with `tests/fixtures/api/<file>` as text, not as JSON values: the bytes on
/// the wire, key order included, are what CLIs already installed read. `WAYBACK_BLESS=1`
/// rewrites the golden.
fn assert_golden_text(file: &str, text: String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/api")
        .join(file);
    if std::env::var_os("WAYBACK_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("golden {}: {e}; the document was:\n{text}", path.display()));
    assert_eq!(text, golden, "golden {} differs", path.display());
}

#[test]
fn the_list_matches_the_golden_file_byte_for_byte() {
    let document = list_body(&v1::SpaceInstances {
        space_guid: SPACE.into(),
        instances: every_shape(),
    });
    assert_golden_text(
        "instances.json",
        serde_json::to_string_pretty(&document).unwrap() + "\n",
    );
}

#[test]
fn one_instance_matches_the_golden_file_byte_for_byte() {
    let deleted = &every_shape()[0];
    assert_golden_text(
        "instance.json",
        serde_json::to_string_pretty(deleted).unwrap() + "\n",
    );
}
