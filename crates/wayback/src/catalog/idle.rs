//! A plan's idle stop (issue 17): `metadata.wayback.idle`, e.g. `{"stop_after_secs": 300}`.
//! Absent (or `null`): the plan's instances never stop when idle. Present: an instance with no
//! client and no replication session for that long is stopped cleanly (its last WAL archived
//! first) and started again by the first connection to its port.
//!
//! The floor is 1 s, not a minute: the test tiers stop instances after a few seconds. An
//! operator should not go below a minute or so — every stop and wake costs a WAL segment and a
//! start — and the built-in `dev` plan uses 300 s. An HA plan cannot stop when idle (its
//! standby needs a running leader): the two together are refused at load. Must not import
//! anything but `domain`.

use serde_json::Value;

/// The longest idle time a plan may set: 30 days.
pub const MAX_STOP_AFTER_SECS: u64 = 30 * 24 * 3600;

/// Reads `metadata.wayback.idle.stop_after_secs`: `None` when the plan has no idle stop.
pub(super) fn plan_idle_stop(metadata: Option<&Value>) -> Result<Option<u64>, String> {
    let p = "metadata.wayback.idle";
    let Some(idle) = metadata
        .and_then(|m| m.get("wayback"))
        .and_then(|w| w.get("idle"))
        .filter(|v| !v.is_null())
    else {
        return Ok(None);
    };
    let Some(fields) = idle.as_object() else {
        return Err(format!(
            "{p} must be an object like {{\"stop_after_secs\": 300}}, not {idle}"
        ));
    };
    if let Some(k) = fields.keys().find(|k| k.as_str() != "stop_after_secs") {
        return Err(format!(
            "{p}: unknown field {k:?} (expected stop_after_secs)"
        ));
    }
    let Some(v) = fields.get("stop_after_secs") else {
        return Err(format!(
            "{p}.stop_after_secs is missing (remove {p} to never stop the plan's instances)"
        ));
    };
    v.as_u64()
        .filter(|s| (1..=MAX_STOP_AFTER_SECS).contains(s))
        .map(Some)
        .ok_or_else(|| {
            format!(
                "{p}.stop_after_secs must be a whole number of seconds, 1 to \
                 {MAX_STOP_AFTER_SECS} (300 is a good start), not {v}"
            )
        })
}

/// An HA plan never stops when idle: its standby streams from a leader that must run.
pub(super) fn check_not_ha(idle: Option<u64>, ha: bool) -> Result<(), String> {
    if idle.is_some() && ha {
        return Err(
            "metadata.wayback.idle cannot be set on an HA plan (metadata.wayback.ha): \
                    the standby needs its leader running; remove one of the two"
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(idle: Value) -> Result<Option<u64>, String> {
        plan_idle_stop(Some(&json!({"wayback": {"idle": idle}})))
    }

    #[test]
    fn reads_stop_after_secs_and_refuses_the_rest_with_the_reason() {
        assert_eq!(plan_idle_stop(None), Ok(None));
        assert_eq!(plan_idle_stop(Some(&json!({"wayback": {}}))), Ok(None));
        assert_eq!(read(Value::Null), Ok(None));
        assert_eq!(read(json!({"stop_after_secs": 300})), Ok(Some(300)));
        assert_eq!(read(json!({"stop_after_secs": 1})), Ok(Some(1)));
        for (bad, expect) in [
            (json!({"stop_after_secs": 0}), "1 to 2592000"),
            (json!({"stop_after_secs": -5}), "whole number"),
            (json!({"stop_after_secs": 1.5}), "whole number"),
            (json!({"stop_after_secs": "300"}), "whole number"),
            (json!({"stop_after_secs": 2_592_001}), "1 to 2592000"),
            (json!({}), "stop_after_secs is missing"),
            (json!({"stop_after": 300}), "unknown field"),
            (json!(300), "must be an object"),
        ] {
            let e = read(bad.clone()).expect_err(&bad.to_string());
            assert!(
                e.contains("metadata.wayback.idle") && e.contains(expect),
                "{e}"
            );
        }
    }

    #[test]
    fn an_ha_plan_cannot_stop_when_idle() {
        assert!(check_not_ha(Some(300), false).is_ok());
        assert!(check_not_ha(None, true).is_ok());
        assert!(check_not_ha(Some(300), true)
            .unwrap_err()
            .contains("cannot be set on an HA plan"));
    }
}
