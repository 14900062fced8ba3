//! Test-only: broker documents for the unit tests, complete so that they read as
//! [`wayback_api::v1::Instance`], with the fields a test cares about written over them.

use serde_json::{json, Value};

use crate::broker_client::Listed;

/// A whole `INSTANCE` object: a live instance with nothing restorable yet, `fields` (an
/// object) written over its top-level fields.
pub fn instance(fields: Value) -> Value {
    let mut doc = json!({
        "instance_id": "00000000-0000-4000-8000-000000000000",
        "name": null,
        "names": [],
        "state": "live",
        "space_guid": "5ace0000-0000-4000-8000-000000000002",
        "organization_guid": "c0ffee00-0000-4000-8000-000000000001",
        "service_id": "5f6b3c1e-8a43-4f0e-9d7c-6a1b2c3d4e5f",
        "service_name": "postgresql",
        "plan_id": "0d2e9a44-1c3b-4b55-8f6e-2a7d9c0b1e01",
        "plan_name": "small",
        "created_at": null,
        "deleted_at": null,
        "restore_window": {"from": null, "to": null, "to_now": true},
        "last_base_backup": null,
        "base_backups": [],
        "archive": {"healthy": true, "last_archived_at": null, "lag_segments": 0,
                    "last_failure_at": null, "detail": null}
    });
    let Value::Object(fields) = fields else {
        panic!("instance fields must be an object: {fields}");
    };
    for (key, value) in fields {
        doc[key] = value;
    }
    doc
}

/// [`instance`], read as the CLI reads the broker's answer.
pub fn listed(fields: Value) -> Listed {
    Listed::from_raw(instance(fields)).expect("a whole INSTANCE reads")
}
