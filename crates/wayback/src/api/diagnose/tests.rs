//! Every check's thresholds, each side of each boundary, without PostgreSQL.

use chrono::{Duration, TimeZone, Utc};
use wayback_api::activity::{
    BloatFact, Check, DiagnoseFacts, IndexFact, LockNode, LockWait, Locks, SequenceFact,
    SessionFact, Verdict,
};
use wayback_api::drills::{DrillFailure, DrillReport, DrillResult};
use wayback_api::v1;

use super::archive_checks::*;
use super::checks::*;
use super::*;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 7, 3, 0, 0).unwrap()
}

fn judged(f: &DiagnoseFacts, name: &str) -> Check {
    cluster_checks(f, Thresholds::default())
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}"))
}

fn verdict(f: &DiagnoseFacts, name: &str) -> Verdict {
    judged(f, name).verdict
}

fn healthy() -> DiagnoseFacts {
    DiagnoseFacts {
        connections: 3,
        max_connections: 100,
        autovacuum_freeze_max_age: 200_000_000,
        ..DiagnoseFacts::default()
    }
}

#[test]
fn a_healthy_cluster_is_green_everywhere_without_advice() {
    let checks = cluster_checks(&healthy(), Thresholds::default());
    assert_eq!(checks.len(), 11);
    for c in checks {
        assert_eq!(c.verdict, Verdict::Green, "{c:?}");
        assert!(c.advice.is_none(), "{c:?}");
    }
}

#[test]
fn connections_turn_yellow_at_70_and_red_at_90_percent() {
    for (n, want) in [
        (69, Verdict::Green),
        (70, Verdict::Yellow),
        (89, Verdict::Yellow),
        (90, Verdict::Red),
    ] {
        let f = DiagnoseFacts {
            connections: n,
            ..healthy()
        };
        assert_eq!(verdict(&f, "connections"), want, "{n} of 100");
    }
    let f = DiagnoseFacts {
        connections: 95,
        ..healthy()
    };
    assert!(judged(&f, "connections").advice.is_some());
}

fn session(secs: f64) -> SessionFact {
    SessionFact {
        pid: 42,
        user: Some("app".into()),
        database: Some("db".into()),
        seconds: secs,
        query: Some("UPDATE t SET v = $1".into()),
    }
}

#[test]
fn long_queries_are_judged_against_one_minute_and_ten() {
    for (secs, want) in [
        (59.0, Verdict::Green),
        (60.0, Verdict::Yellow),
        (599.0, Verdict::Yellow),
        (600.0, Verdict::Red),
    ] {
        let f = DiagnoseFacts {
            long_queries: vec![session(secs)],
            ..healthy()
        };
        assert_eq!(verdict(&f, "long_queries"), want, "{secs} s");
    }
    let f = DiagnoseFacts {
        long_queries: vec![session(61.0)],
        ..healthy()
    };
    let c = judged(&f, "long_queries");
    assert_eq!(
        c.details,
        ["pid 42 (app@db) running 61 s: UPDATE t SET v = $1"]
    );
}

#[test]
fn long_and_idle_transactions_follow_the_operators_threshold() {
    let t = Thresholds {
        long_transaction_secs: 2.0,
    };
    for (secs, want) in [
        (1.9, Verdict::Green),
        (2.0, Verdict::Yellow),
        (20.0, Verdict::Red),
    ] {
        let f = DiagnoseFacts {
            long_transactions: vec![session(secs)],
            idle_in_transaction: vec![session(secs)],
            ..healthy()
        };
        let checks = cluster_checks(&f, t);
        for name in ["long_transactions", "idle_in_transaction"] {
            let c = checks.iter().find(|c| c.name == name).unwrap();
            assert_eq!(c.verdict, want, "{name} at {secs} s");
        }
    }
    // The default is a minute.
    let f = DiagnoseFacts {
        long_transactions: vec![session(59.0)],
        ..healthy()
    };
    assert_eq!(verdict(&f, "long_transactions"), Verdict::Green);
}

fn waiter(pid: i32, secs: f64) -> LockNode {
    LockNode {
        pid,
        waiting_for: Some(LockWait {
            pid,
            lock_type: "transactionid".into(),
            mode: "ShareLock".into(),
            relation: Some("public.t".into()),
            waiting_secs: secs,
            ..LockWait::default()
        }),
        ..LockNode::default()
    }
}

fn blocked(secs: f64) -> DiagnoseFacts {
    let root = LockNode {
        pid: 1,
        state: Some("idle in transaction".into()),
        blocking: vec![waiter(2, secs)],
        ..LockNode::default()
    };
    DiagnoseFacts {
        locks: Locks {
            roots: vec![root],
            ..Locks::default()
        },
        ..healthy()
    }
}

#[test]
fn a_wait_is_yellow_from_a_second_and_red_from_a_minute_with_the_tree() {
    for (secs, want) in [
        (0.5, Verdict::Green),
        (1.0, Verdict::Yellow),
        (60.0, Verdict::Red),
    ] {
        assert_eq!(verdict(&blocked(secs), "blocking"), want, "{secs} s");
    }
    let c = judged(&blocked(3.0), "blocking");
    assert_eq!(
        c.details,
        [
            "pid 1 (?@?) blocks 1 (idle in transaction): (statement text not available)",
            "  pid 2 (?@?) waits 3 s for ShareLock (transactionid) on public.t: (statement text not available)",
        ]
    );
}

fn index(bytes: i64) -> IndexFact {
    IndexFact {
        database: "db".into(),
        index: "public.i".into(),
        table: "public.t".into(),
        size_bytes: bytes,
        scans: 0,
    }
}

#[test]
fn unused_indexes_count_from_one_mebibyte_and_invalid_ones_are_red() {
    let f = DiagnoseFacts {
        unused_indexes: vec![index((1 << 20) - 1)],
        ..healthy()
    };
    assert_eq!(verdict(&f, "unused_indexes"), Verdict::Green);
    let f = DiagnoseFacts {
        unused_indexes: vec![index(1 << 20)],
        ..healthy()
    };
    assert_eq!(verdict(&f, "unused_indexes"), Verdict::Yellow);
    let f = DiagnoseFacts {
        invalid_indexes: vec![index(0)],
        ..healthy()
    };
    assert_eq!(verdict(&f, "invalid_indexes"), Verdict::Red);
}

#[test]
fn bloat_needs_both_the_ratio_and_the_bytes() {
    let b = |ratio, waste| DiagnoseFacts {
        bloat: vec![BloatFact {
            database: "db".into(),
            kind: "table".into(),
            name: "public.t".into(),
            waste_bytes: waste,
            ratio,
        }],
        ..healthy()
    };
    assert_eq!(verdict(&b(10.0, (10 << 20) - 1), "bloat"), Verdict::Green);
    assert_eq!(verdict(&b(1.4, 1 << 30), "bloat"), Verdict::Green);
    assert_eq!(verdict(&b(1.5, 10 << 20), "bloat"), Verdict::Yellow);
    assert_eq!(verdict(&b(3.9, 1 << 30), "bloat"), Verdict::Yellow);
    assert_eq!(verdict(&b(4.0, 100 << 20), "bloat"), Verdict::Red);
}

#[test]
fn hit_rates_are_judged_only_with_enough_reads() {
    let h = |ratio, blocks| DiagnoseFacts {
        cache_hit_ratio: Some(ratio),
        cache_blocks: blocks,
        index_hit_ratio: Some(0.999),
        index_blocks: 1_000_000,
        ..healthy()
    };
    assert_eq!(verdict(&h(0.5, 9_999), "hit_rate"), Verdict::Green);
    assert_eq!(verdict(&h(0.99, 10_000), "hit_rate"), Verdict::Green);
    assert_eq!(verdict(&h(0.989, 10_000), "hit_rate"), Verdict::Yellow);
    assert_eq!(verdict(&h(0.951, 10_000), "hit_rate"), Verdict::Yellow);
    assert_eq!(verdict(&h(0.949, 10_000), "hit_rate"), Verdict::Red);
    let f = DiagnoseFacts {
        index_hit_ratio: Some(0.9),
        index_blocks: 20_000,
        ..healthy()
    };
    assert_eq!(
        verdict(&f, "hit_rate"),
        Verdict::Red,
        "the index ratio counts too"
    );
}

#[test]
fn sequences_and_wraparound_have_two_steps() {
    let s = |used| DiagnoseFacts {
        sequences: vec![SequenceFact {
            database: "db".into(),
            sequence: "public.s".into(),
            used,
        }],
        ..healthy()
    };
    assert_eq!(verdict(&s(0.74), "sequences"), Verdict::Green);
    assert_eq!(verdict(&s(0.75), "sequences"), Verdict::Yellow);
    assert_eq!(verdict(&s(0.9), "sequences"), Verdict::Red);
    let w = |age| DiagnoseFacts {
        wraparound_age: age,
        ..healthy()
    };
    assert_eq!(verdict(&w(536_870_911), "wraparound"), Verdict::Green);
    assert_eq!(verdict(&w(536_870_912), "wraparound"), Verdict::Yellow);
    assert_eq!(verdict(&w(1_073_741_824), "wraparound"), Verdict::Red);
}

fn view() -> v1::Instance {
    serde_json::from_value(serde_json::json!({
        "instance_id": "5b0e3c8e-6c4f-4c0b-9d7e-0c1d2e3f4a5b",
        "name": "db", "names": [], "state": "live", "space_guid": "s", "organization_guid": "o",
        "service_id": "x", "service_name": null, "plan_id": "p", "plan_name": null,
        "created_at": "2026-12-01T00:00:00Z", "deleted_at": null,
        "restore_window": {"from": null, "to": null, "to_now": true},
        "last_base_backup": "2026-12-07T00:00:00Z", "base_backups": [],
        "archive": {"healthy": true, "last_archived_at": "2026-12-07T02:59:00Z",
                    "lag_segments": 0, "last_failure_at": null, "detail": null}
    }))
    .unwrap()
}

const SCHEDULE: Schedule = Schedule {
    base_backup_every_hours: 24,
    drill_every_days: 7,
};

fn broker(v: &v1::Instance, name: &str) -> Check {
    broker_checks(v, SCHEDULE, now())
        .into_iter()
        .find(|c| c.name == name)
        .unwrap()
}

#[test]
fn the_archive_is_yellow_when_lagging_and_red_when_pushes_fail() {
    assert_eq!(broker(&view(), "archive").verdict, Verdict::Green);
    let mut v = view();
    v.archive.healthy = false;
    v.archive.lag_segments = 5;
    assert_eq!(broker(&v, "archive").verdict, Verdict::Yellow);
    v.archive.last_failure_at = Some(now());
    assert_eq!(broker(&v, "archive").verdict, Verdict::Red);
}

#[test]
fn a_base_backup_is_late_at_one_and_a_half_intervals_and_red_at_three() {
    let mut v = view();
    for (hours, want) in [
        (35, Verdict::Green),
        (36, Verdict::Yellow),
        (71, Verdict::Yellow),
        (72, Verdict::Red),
    ] {
        v.last_base_backup = Some(now() - Duration::hours(hours));
        assert_eq!(broker(&v, "base_backup").verdict, want, "{hours} h");
    }
    v.last_base_backup = None;
    assert_eq!(broker(&v, "base_backup").verdict, Verdict::Red);
}

fn drill(result: DrillResult, days: i64) -> DrillReport {
    DrillReport {
        instance: "db".into(),
        started: now() - Duration::days(days),
        result,
        backup_id: None,
        wal_bytes: None,
        end_lsn: None,
        end_time: None,
        timeline: None,
        duration_secs: 12.0,
        databases_checked: 1,
        tables_counted: 1,
        checks: Vec::new(),
        failure: None,
    }
}

#[test]
fn a_drill_is_green_when_passed_recently_red_when_failed() {
    let mut v = view();
    // Created 6 days ago: none due yet.
    assert_eq!(broker(&v, "drill").verdict, Verdict::Green);
    v.created_at = Some(now() - Duration::days(8));
    assert_eq!(broker(&v, "drill").verdict, Verdict::Yellow);
    v.drills = vec![drill(DrillResult::Passed, 13)];
    assert_eq!(broker(&v, "drill").verdict, Verdict::Green);
    v.drills = vec![drill(DrillResult::Passed, 14)];
    assert_eq!(broker(&v, "drill").verdict, Verdict::Yellow);
    let mut failed = drill(DrillResult::Failed, 1);
    failed.failure = Some(DrillFailure {
        check: "amcheck".into(),
        detail: "public.t".into(),
    });
    v.drills = vec![failed];
    let c = broker(&v, "drill");
    assert_eq!(
        (c.verdict, c.details),
        (Verdict::Red, vec!["amcheck: public.t".to_string()])
    );
    let off = Schedule {
        drill_every_days: 0,
        ..SCHEDULE
    };
    let c = broker_checks(&v, off, now())
        .into_iter()
        .find(|c| c.name == "drill")
        .unwrap();
    assert_eq!(c.verdict, Verdict::Skipped);
}

#[test]
fn follower_lag_is_yellow_from_30_s_and_red_from_5_min_or_disconnected() {
    let mut v = view();
    assert_eq!(broker(&v, "follower_lag").verdict, Verdict::Green);
    let f = |state, secs| v1::FollowerSummary {
        id: "f".into(),
        name: Some("replica".into()),
        state,
        lag_bytes: None,
        lag_seconds: secs,
    };
    for (state, secs, want) in [
        (v1::FollowerState::Streaming, Some(29.0), Verdict::Green),
        (v1::FollowerState::Streaming, Some(30.0), Verdict::Yellow),
        (v1::FollowerState::CatchingUp, Some(300.0), Verdict::Red),
        (v1::FollowerState::Disconnected, None, Verdict::Red),
        (v1::FollowerState::Unknown, None, Verdict::Yellow),
    ] {
        v.followers = vec![f(state.clone(), secs)];
        assert_eq!(
            broker(&v, "follower_lag").verdict,
            want,
            "{state:?} {secs:?}"
        );
    }
}

#[test]
fn a_stopped_instance_skips_the_cluster_checks_and_judges_the_rest() {
    let d = diagnosis(
        &view(),
        Err(STOPPED.into()),
        Thresholds::default(),
        SCHEDULE,
        now(),
    );
    assert_eq!(d.checks.len(), 15);
    for c in &d.checks[..11] {
        assert_eq!(
            (c.verdict.clone(), c.summary.as_str()),
            (Verdict::Skipped, STOPPED),
            "{}",
            c.name
        );
    }
    for c in &d.checks[11..] {
        assert_ne!(c.verdict, Verdict::Skipped, "{}", c.name);
    }
    let mut deleted = view();
    deleted.state = v1::State::Deleted;
    let d = diagnosis(
        &deleted,
        Err("gone".into()),
        Thresholds::default(),
        SCHEDULE,
        now(),
    );
    assert!(d.checks.iter().all(|c| c.verdict == Verdict::Skipped));
}
