use serde_json::json;
use wayback_api::activity::{LockNode, SessionStates, Verdict};

use super::*;
use crate::domain::InstanceState;

const ID: &str = "5b0e3c8e-6c4f-4c0b-9d7e-0c1d2e3f4a5b";
const OTHER: &str = "9f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f";

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// An instance document as `/wayback/v1` writes it, with `extra` fields over it.
fn view(extra: Value) -> v1::Instance {
    let mut v = json!({
        "instance_id": ID,
        "name": "prod-v2",
        "names": [
            {"name": "production", "since": "2026-12-01T10:00:00Z", "source": "provision"},
            {"name": "prod-v2", "since": "2026-12-02T10:00:00Z", "source": "update"}
        ],
        "state": "live",
        "space_guid": "space-1",
        "organization_guid": "org-1",
        "service_id": "svc",
        "service_name": "postgresql",
        "plan_id": "small-id",
        "plan_name": "small",
        "created_at": "2026-12-01T10:00:00Z",
        "deleted_at": null,
        "restore_window": {"from": "2026-12-01T10:01:00Z", "to": null, "to_now": true},
        "last_base_backup": "2026-12-01T10:01:00Z",
        "base_backups": [{"backup_id": "b1", "time": "2026-12-01T10:01:00Z", "raw_bytes": 10, "stored_bytes": 5}],
        "archive": {"healthy": true, "last_archived_at": null, "lag_segments": 0, "last_failure_at": null, "detail": null},
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    serde_json::from_value(v).unwrap()
}

fn record(context: Value) -> InstanceRecord {
    InstanceRecord {
        id: InstanceId::parse(ID).unwrap(),
        service_id: "svc".into(),
        plan_id: "small-id".into(),
        organization_guid: "org-1".into(),
        space_guid: "space-1".into(),
        parameters: Value::Null,
        context,
        state: InstanceState::Ready,
        port: None,
        database_name: "db".into(),
        owner_role: "owner".into(),
        created_at: 0,
        updated_at: 0,
        deleted_at: None,
        agent: None,
        agent_host: None,
        leader_id: None,
        stopped_at: None,
        wake_error: None,
        wake_error_at: None,
    }
}

fn audit(kind: &str, when: &str, extra: Value) -> v1::AuditEvent {
    let mut v = json!({"at": when, "event": kind});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    serde_json::from_value(v).unwrap()
}

fn trail(events: Vec<v1::AuditEvent>) -> v1::AuditTrail {
    v1::AuditTrail {
        instance_id: ID.into(),
        events,
    }
}

fn holder(id: &str, name: &str, recorded_at: i64) -> SpaceName {
    SpaceName {
        instance_id: InstanceId::parse(id).unwrap(),
        name: name.into(),
        recorded_at,
        state: InstanceState::Ready,
        deleted_at: None,
        has_backup: true,
    }
}

fn sample(t: &str, active: u32, idle: u32, waiters: u32, xact: f64) -> Sample {
    Sample {
        at: at(t),
        sessions: SessionStates {
            active,
            idle,
            disabled: 1,
            ..SessionStates::default()
        },
        longest_transaction_secs: xact,
        lock_waiters: waiters,
        ..Sample::default()
    }
}

#[test]
fn the_state_in_the_header_says_running_stopped_follower_ha_or_deleted() {
    let state = |extra: Value| status(&view(extra))["state"].clone();
    assert_eq!(state(json!({})), "running");
    assert_eq!(
        state(json!({"stopped_at": "2026-12-03T00:00:00Z"})),
        "stopped"
    );
    assert_eq!(
        state(
            json!({"follower": {"leader": {"id": OTHER, "name": "production"}, "state": "streaming", "same_machine": true}})
        ),
        "follower"
    );
    assert_eq!(
        state(
            json!({"ha": {"members": [{"name": "m0", "port": 5000}, {"name": "m1", "port": 5001}]}})
        ),
        "ha"
    );
    assert_eq!(state(json!({"state": "deleted"})), "deleted");
    let stopped = status(&view(json!({"stopped_at": "2026-12-03T00:00:00Z"})));
    assert!(
        stopped["detail"]
            .as_str()
            .unwrap()
            .contains("this page does not"),
        "{stopped}"
    );
}

#[test]
fn clone_from_names_the_instance_while_it_holds_its_name_else_its_guid() {
    let v = view(json!({}));
    let mine = [holder(ID, "prod-v2", 2), holder(ID, "production", 1)];
    assert_eq!(restore_source(&v, &mine), "prod-v2");
    // An undo created a newer instance with the same name: the name means that one now.
    let taken = [holder(OTHER, "prod-v2", 3), holder(ID, "prod-v2", 2)];
    assert_eq!(restore_source(&v, &taken), ID);
    assert_eq!(restore_source(&view(json!({"name": null})), &mine), ID);
}

#[test]
fn events_are_the_timeline_markers_oldest_first_without_binds() {
    let v = view(json!({"ha": {"members": [], "last_failover": {
        "at": "2026-12-02T12:00:00Z", "reason": "leader lost", "from_timeline": 1,
        "to_timeline": 2, "lsn": "0/3000000", "new_leader": "m1"}}}));
    let t = trail(vec![
        audit("provision", "2026-12-01T10:00:00Z", json!({})),
        audit("bind", "2026-12-01T10:05:00Z", json!({"binding_id": "b"})),
        audit("rename", "2026-12-02T10:00:00Z", json!({"name": "prod-v2"})),
        audit("deprovision", "2026-12-03T10:00:00Z", json!({})),
    ]);
    let e = events(&v, &t);
    let kinds: Vec<&str> = e.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["provision", "rename", "failover", "deprovision"]);
    assert_eq!(e[0]["label"], "Created as production");
    assert_eq!(e[1]["label"], "Renamed to prod-v2");
    assert_eq!(e[1]["at"], "2026-12-02T10:00:00Z");
    assert!(e[2]["label"].as_str().unwrap().contains("m1"), "{}", e[2]);

    let cloned = trail(vec![audit(
        "clone",
        "2026-12-04T10:00:00Z",
        json!({"clone_from": {"instance_id": OTHER, "name": "production", "point_in_time": "2026-12-03T09:59:59Z"}}),
    )]);
    assert_eq!(
        events(&view(json!({})), &cloned)[0]["label"],
        "Restored from production at 2026-12-03T09:59:59Z"
    );
}

#[test]
fn samples_go_out_column_by_column() {
    let s = series(&[
        sample("2026-12-07T03:00:00Z", 2, 5, 0, 0.04),
        sample("2026-12-07T03:00:01Z", 3, 4, 1, 1.26),
    ]);
    assert_eq!(s["t"], json!([1796612400, 1796612401]));
    assert_eq!(s["active"], json!([2, 3]));
    assert_eq!(s["idle"], json!([5, 4]));
    assert_eq!(
        s["other"],
        json!([1, 1]),
        "disabled and fastpath are summed"
    );
    assert_eq!(s["lock_waiters"], json!([0, 1]));
    assert_eq!(s["longest_transaction_secs"], json!([0.0, 1.3]));
    let empty = series(&[]);
    assert_eq!(empty["t"], json!([]));
    assert_eq!(
        empty.as_object().unwrap().len(),
        s.as_object().unwrap().len()
    );
}

fn parts<'a>(
    record: &'a InstanceRecord,
    view: &'a v1::Instance,
    trail: &'a v1::AuditTrail,
    cluster: Option<ClusterParts>,
    diagnose: Option<Diagnose>,
) -> Parts<'a> {
    Parts {
        now: at("2026-12-07T03:00:05Z"),
        record,
        view,
        trail,
        space_names: &[],
        cluster,
        diagnose,
    }
}

#[test]
fn a_stopped_instance_is_shown_stopped_with_nothing_asked_of_its_cluster() {
    let r = record(json!({"space_name": "dev"}));
    let v = view(json!({"stopped_at": "2026-12-03T00:00:00Z"}));
    let t = trail(vec![]);
    assert!(!asks_cluster(
        &InstanceRecord {
            stopped_at: Some(1),
            ..r.clone()
        },
        &v
    ));
    let doc = assemble(parts(&r, &v, &t, None, None));
    assert_eq!(doc["status"]["state"], "stopped");
    assert_eq!(doc["space_name"], "dev");
    assert_eq!(doc["activity"]["sampling"], false);
    assert!(doc["activity"]["note"]
        .as_str()
        .unwrap()
        .contains("Stopped"));
    assert_eq!(doc["activity"]["series"]["t"], json!([]));
    assert!(doc["locks"].is_null() && doc["statements"].is_null());
    assert!(
        doc.get("diagnose").is_none(),
        "only asked for without since"
    );
    assert_eq!(doc["instance"]["instance_id"], ID);
    assert_eq!(doc["generated_at"], "2026-12-07T03:00:05Z");
}

#[test]
fn a_running_instance_shows_its_samples_statements_locks_and_checks() {
    let r = record(Value::Null);
    let v = view(json!({}));
    let t = trail(vec![]);
    let stats = DatabaseStats {
        at: at("2026-12-07T03:00:00Z"),
        cache_hit_ratio: Some(0.99),
        database_size_bytes: 8 << 20,
        statements_available: true,
        top_statements: vec![Statement {
            query: "SELECT * FROM t WHERE id = $1".into(),
            calls: 3,
            ..Statement::default()
        }],
        ..DatabaseStats::default()
    };
    let cluster = ClusterParts {
        activity: Ok(Activity {
            samples: vec![sample("2026-12-07T03:00:00Z", 1, 0, 1, 3.0)],
            stats: vec![stats],
            sampling: true,
        }),
        locks: Some(Ok(Locks {
            at: at("2026-12-07T03:00:00Z"),
            roots: vec![LockNode {
                pid: 7,
                blocking: vec![LockNode {
                    pid: 8,
                    ..LockNode::default()
                }],
                ..LockNode::default()
            }],
        })),
        statements: None,
    };
    let checks = Diagnose {
        checks: vec![Check {
            name: "connections".into(),
            verdict: Verdict::Green,
            ..Check::default()
        }],
        note: None,
    };
    let doc = assemble(parts(&r, &v, &t, Some(cluster), Some(checks)));
    assert_eq!(doc["status"]["state"], "running");
    assert!(doc["space_name"].is_null());
    assert_eq!(doc["activity"]["sampling"], true);
    assert_eq!(doc["activity"]["series"]["lock_waiters"], json!([1]));
    assert_eq!(doc["activity"]["stats"]["cache_hit_ratio"], 0.99);
    assert!(doc["activity"]["stats"].get("top_statements").is_none());
    assert_eq!(
        doc["statements"]["statements"][0]["query"],
        "SELECT * FROM t WHERE id = $1"
    );
    assert_eq!(doc["locks"]["roots"][0]["pid"], 7);
    assert_eq!(doc["locks"]["roots"][0]["blocking"][0]["pid"], 8);
    assert_eq!(doc["diagnose"]["checks"][0]["verdict"], "GREEN");
}

#[test]
fn a_cluster_that_does_not_answer_leaves_notes_and_the_rest_shows() {
    let r = record(Value::Null);
    let v = view(json!({}));
    let t = trail(vec![audit("provision", "2026-12-01T10:00:00Z", json!({}))]);
    let cluster = ClusterParts {
        activity: Err("the cluster did not answer within 4 s".into()),
        locks: Some(Err("no connection".into())),
        statements: Some(Err("pg_stat_statements is not loaded yet".into())),
    };
    let doc = assemble(parts(&r, &v, &t, Some(cluster), None));
    assert_eq!(doc["activity"]["sampling"], false);
    assert!(doc["activity"]["note"].as_str().unwrap().contains("4 s"));
    assert!(doc["locks"]["note"]
        .as_str()
        .unwrap()
        .contains("no connection"));
    assert_eq!(doc["statements"]["statements"], json!([]));
    assert!(doc["statements"]["note"].is_string());
    assert_eq!(doc["events"][0]["kind"], "provision");
    assert_eq!(doc["instance"]["base_backups"][0]["backup_id"], "b1");
}

#[test]
fn an_ha_instance_is_asked_through_its_leading_member() {
    let id = InstanceId::parse(ID).unwrap();
    assert_eq!(cluster_key(&id, &view(json!({}))), id);
    let ha = view(json!({"ha": {"members": [
        {"name": "m0", "port": 5000, "role": "replica"},
        {"name": "m1", "port": 5001, "role": "leader"}
    ]}}));
    assert_eq!(cluster_key(&id, &ha), id.member_key("m1"));
}
