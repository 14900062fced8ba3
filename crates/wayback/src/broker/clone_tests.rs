use serde_json::json;

use super::*;

fn params(v: Value) -> Result<Option<CloneParams>, BrokerError> {
    parse_params(v.as_object().unwrap())
}

fn name(id: &str, name: &str, at: i64, state: InstanceState) -> SpaceName {
    SpaceName {
        instance_id: InstanceId::parse(id).unwrap(),
        name: name.into(),
        recorded_at: at,
        state,
        deleted_at: (state == InstanceState::Deleted).then_some(at + 1),
        has_backup: false,
    }
}

#[test]
fn times_need_rfc3339_with_an_offset() {
    let ok = params(json!({"clone-from": "p", "point-in-time": "2026-11-21T10:30:00+01:00"}))
        .unwrap()
        .unwrap();
    assert_eq!(
        ok.point_in_time.unwrap().to_rfc3339(),
        "2026-11-21T09:30:00+00:00"
    );
    for (bad, why) in [
        (json!("2026-11-21T09:30:00"), "no offset"),
        (json!("2026-11-21 09:30"), "not RFC 3339"),
        (json!("yesterday"), "words"),
        (json!(1763717400), "a number"),
    ] {
        let e = params(json!({"clone-from": "p", "point-in-time": bad})).unwrap_err();
        assert!(
            matches!(&e, BrokerError::BadRequest(m) if m.contains("RFC 3339")),
            "{why}: {e:?}"
        );
    }
    assert!(params(json!({"point-in-time": "2026-11-21T09:30:00Z"})).is_err());
    assert!(params(json!({"clone-from": 3})).is_err());
    assert!(params(json!({"clone-from": " "})).is_err());
    assert_eq!(params(json!({})).unwrap(), None);
}

#[test]
fn the_newest_holder_of_a_name_wins_and_requester_is_skipped() {
    let me = InstanceId::parse("me").unwrap();
    let names = vec![
        name("me", "production", 40, InstanceState::Provisioning),
        name("new", "production", 30, InstanceState::Deleted),
        name("failed", "production", 25, InstanceState::Failed),
        name("old", "production", 10, InstanceState::Deleted),
        name("other", "staging", 5, InstanceState::Ready),
    ];
    assert_eq!(
        pick(&names, "production", &me)
            .unwrap()
            .instance_id
            .as_str(),
        "new"
    );
    assert_eq!(
        pick(&names, "old", &me).unwrap().instance_id.as_str(),
        "old"
    );
    assert!(pick(&names, "failed", &me).is_none());
    // A failed instance that was backed up (its delete could not reach its VM) can be restored.
    let mut names = names;
    names[2].has_backup = true;
    assert_eq!(
        pick(&names, "failed", &me).unwrap().instance_id.as_str(),
        "failed"
    );
    assert!(pick(&names, "nope", &me).is_none());
    let e = unknown(&names, "nope", &me).to_string();
    assert!(
        e.contains("production (deleted") && e.contains("staging"),
        "{e}"
    );
}

#[test]
fn floors_compare_with_plan_or_postgres_defaults() {
    let plan = Plan {
        id: "p".into(),
        name: "small".into(),
        settings: [("max_connections".to_string(), "50".to_string())].into(),
        maintenance_version: None,
        archive: Default::default(),
        require_tls: false,
        undo_keep_hours: 24,
        ha: None,
        idle_stop_after_secs: None,
    };
    let floors = SettingFloors {
        max_connections: 200,
        max_worker_processes: 8,
        max_locks_per_transaction: 64,
        max_prepared_transactions: 0,
        max_wal_senders: 10,
    };
    assert_eq!(below_floors(&plan, &floors), [("max_connections", 50, 200)]);
}
