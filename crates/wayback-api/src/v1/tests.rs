use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::*;

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The broker's golden instance reads into the types and writes back to the same bytes.
#[test]
fn the_brokers_golden_instance_round_trips_byte_for_byte() {
    let text = read(crates_dir().join("wayback/tests/fixtures/api/instance.json"));
    let instance: Instance = serde_json::from_str(&text).unwrap();
    assert_eq!(instance.state, State::Deleted);
    assert_eq!(
        serde_json::to_string_pretty(&instance).unwrap() + "\n",
        text
    );
}

/// Every shape the broker writes reads into the types and back to the same JSON.
#[test]
fn the_brokers_golden_list_and_the_clis_fixture_round_trip() {
    for path in [
        crates_dir().join("wayback/tests/fixtures/api/instances.json"),
        crates_dir().join("cf-wayback/tests/fixtures/cf-wayback/broker-instances.json"),
    ] {
        let text = read(path.clone());
        let list: SpaceInstances = serde_json::from_str(&text).unwrap();
        assert!(!list.instances.is_empty(), "{}", path.display());
        let want: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            serde_json::to_value(&list).unwrap(),
            want,
            "{}",
            path.display()
        );
    }
}

fn minimal_instance() -> Value {
    json!({
        "instance_id": "i1", "name": null, "names": [], "state": "live",
        "space_guid": "s", "organization_guid": "o", "service_id": "svc",
        "service_name": null, "plan_id": "p", "plan_name": null,
        "created_at": null, "deleted_at": null,
        "restore_window": {"from": null, "to": null, "to_now": true},
        "last_base_backup": null, "base_backups": [],
        "archive": {"healthy": true, "last_archived_at": null, "lag_segments": 0,
                    "last_failure_at": null, "detail": null}
    })
}

/// A newer broker: fields this reader does not know are ignored, a state it does not know is
/// kept and written back as it came.
#[test]
fn a_newer_brokers_document_still_reads() {
    let mut newer = minimal_instance();
    newer["state"] = json!("stopped");
    newer["replicas"] = json!([{"host": "10.0.0.7"}]);
    newer["restore_window"]["gaps"] = json!([]);
    let instance: Instance = serde_json::from_value(newer).unwrap();
    assert_eq!(instance.state, State::Other("stopped".into()));
    assert_eq!(instance.state.to_string(), "stopped");
    assert_eq!(
        serde_json::to_value(&instance.state).unwrap(),
        json!("stopped")
    );
    assert!(instance.restore_window.to_now);
}

#[test]
fn states_and_error_codes_have_their_wire_names() {
    for (state, name) in [
        (State::Live, "live"),
        (State::Provisioning, "provisioning"),
        (State::Deleting, "deleting"),
        (State::Deleted, "deleted"),
        (State::Failed, "failed"),
    ] {
        assert_eq!(serde_json::to_value(&state).unwrap(), json!(name));
        assert_eq!(serde_json::from_value::<State>(json!(name)).unwrap(), state);
        assert_eq!(state.as_str(), name);
    }
    for (code, name) in [
        (ErrorCode::Unauthorized, "Unauthorized"),
        (ErrorCode::Forbidden, "Forbidden"),
        (ErrorCode::NotFound, "NotFound"),
        (ErrorCode::Unavailable, "Unavailable"),
        (ErrorCode::InternalError, "InternalError"),
    ] {
        assert_eq!(serde_json::to_value(&code).unwrap(), json!(name));
        assert_eq!(
            serde_json::from_value::<ErrorCode>(json!(name)).unwrap(),
            code
        );
        assert_eq!(code.as_str(), name);
    }
    let body: ErrorBody =
        serde_json::from_value(json!({"error": "TooManyRequests", "description": "later"}))
            .unwrap();
    assert_eq!(body.error, ErrorCode::Other("TooManyRequests".into()));
}

/// The broker's golden audit trail reads into the types and writes back to the same bytes;
/// an event a newer broker records is kept as it came.
#[test]
fn the_brokers_golden_audit_trail_round_trips() {
    let text = read(crates_dir().join("wayback/tests/fixtures/api/audit.json"));
    let trail: AuditTrail = serde_json::from_str(&text).unwrap();
    assert!(trail.events.iter().any(|e| e.clone_from.is_some()));
    assert_eq!(serde_json::to_string_pretty(&trail).unwrap() + "\n", text);
    let newer: AuditEvent =
        serde_json::from_value(json!({"at": "2026-12-01T10:00:00Z", "event": "drill"})).unwrap();
    assert_eq!(newer.event, AuditEventKind::Other("drill".into()));
    assert_eq!(AuditEventKind::from_name("bind"), AuditEventKind::Bind);
    assert_eq!(AuditEventKind::from_name("drill").as_str(), "drill");
}
