use chrono::{DateTime, Utc};

use super::*;
use crate::archive::manifest::{SettingFloors, FORMAT};
use crate::domain::{InstanceId, SpaceGuid};

fn prefix() -> InstancePrefix {
    InstancePrefix::new(
        &SpaceGuid::parse("s1").unwrap(),
        &InstanceId::parse("i1").unwrap(),
    )
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn backup(stop: &str, max_connections: u32) -> BackupManifest {
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
        floors: SettingFloors {
            max_connections,
            ..SettingFloors::default()
        },
        raw_bytes: 0,
        stored_bytes: 0,
        parts: vec![],
        reason: "manual".into(),
    }
}

#[test]
fn picks_the_newest_backup_that_ends_before_the_target() {
    let b = [
        backup("2026-01-01T00:00:00Z", 100),
        backup("2026-01-02T00:00:00Z", 200),
    ];
    let latest = Some(at("2026-01-03T00:00:00Z"));
    let pick = |t: &str| {
        choose(&prefix(), &b, RestoreTarget::PointInTime(at(t)), latest)
            .map(|(m, target)| (m.stop_time, target))
    };
    assert_eq!(pick("2026-01-01T12:00:00Z").unwrap().0, b[0].stop_time);
    assert_eq!(pick("2026-01-02T00:00:00Z").unwrap().0, b[1].stop_time);
    // The last commit itself is reachable only as "latest" (same transactions).
    assert_eq!(
        pick("2026-01-03T00:00:00Z").unwrap().1,
        RestoreTarget::Latest
    );
    let (m, _) = choose(&prefix(), &b, RestoreTarget::Latest, None).unwrap();
    assert_eq!(m.stop_time, b[1].stop_time);
    assert_eq!(max_floors(&b).max_connections, 200);
}

#[test]
fn a_target_outside_the_window_names_the_window() {
    let b = [backup("2026-01-01T00:00:00Z", 100)];
    let latest = Some(at("2026-01-03T00:00:00Z"));
    for t in ["2025-12-31T23:59:59Z", "2026-01-03T00:00:01Z"] {
        let e = choose(&prefix(), &b, RestoreTarget::PointInTime(at(t)), latest).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, RestoreError::OutsideWindow { .. }), "{msg}");
        assert!(
            msg.contains("2026-01-01T00:00:00+00:00") && msg.contains("2026-01-03T00:00:00+00:00"),
            "{msg}"
        );
    }
    let e = choose(
        &prefix(),
        &b,
        RestoreTarget::PointInTime(at("2026-01-02T00:00:00Z")),
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("no archived commit"), "{e}");
    let e = choose(&prefix(), &[], RestoreTarget::Latest, latest).unwrap_err();
    assert!(matches!(e, RestoreError::NoBackup { .. }), "{e}");
}
