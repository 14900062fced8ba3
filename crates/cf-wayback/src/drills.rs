//! Restore drills in `backups` (issue 18): `backups NAME --drills`, an instance's recent
//! drills (the table's "verified" column is `output::verified_cell`). Pure functions of the
//! broker's `INSTANCE` ([`wayback_api::v1::Instance::drills`], newest first). The `--json` document carries the
//! drills as the broker sent them (`output::json_document`).
//!
//! Imports `broker_client::Listed`, `output` and `wayback_api`.

use crate::broker_client::Listed;
use crate::output::{self, Zone};

/// `backups NAME --drills`: each instance's recent drills, newest first, and why one failed.
pub fn render_drills(instances: &[Listed], zone: Zone) -> String {
    let mut out = String::new();
    for listed in instances {
        let i = &listed.instance;
        let name = i.name.as_deref().unwrap_or("-");
        out += &format!("restore drills of {name} ({}):\n", i.instance_id);
        if i.drills.is_empty() {
            out += "  none yet\n";
            continue;
        }
        let mut rows: Vec<[String; 5]> = vec![[
            "started".into(),
            "result".into(),
            "base backup".into(),
            "duration".into(),
            "detail".into(),
        ]];
        for d in &i.drills {
            rows.push([
                output::format_time(d.started, zone),
                d.result.as_str().to_string(),
                d.backup_id.clone().unwrap_or_else(|| "-".into()),
                format!("{:.1} s", d.duration_secs),
                d.failure
                    .as_ref()
                    .map_or_else(|| "-".into(), |f| format!("{}: {}", f.check, f.detail)),
            ]);
        }
        for line in output::align(&rows).lines() {
            out += &format!("  {line}\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::listed;
    use serde_json::json;

    fn instance(drills: serde_json::Value) -> Listed {
        listed(
            json!({"instance_id": "a81c07d2-0000", "name": "orders", "state": "live",
            "restore_window": {"from": null, "to": null, "to_now": true},
            "last_base_backup": null, "drills": drills}),
        )
    }

    #[test]
    fn verified_says_when_failed_or_never() {
        let passed = json!([{"instance": "a81c07d2-0000", "started": "2026-12-06T10:00:00Z",
            "result": "passed", "duration_secs": 90.0}]);
        let failed = json!([{"instance": "a81c07d2-0000", "started": "2026-12-06T10:00:00Z",
            "result": "failed", "duration_secs": 5.0,
            "failure": {"check": "amcheck", "detail": "btree index \"x\": zero page"}}]);
        let zone = Zone::Utc;
        assert_eq!(
            output::verified_cell(&instance(passed).instance, zone),
            "2026-12-06 10:01 UTC"
        );
        assert_eq!(
            output::verified_cell(&instance(failed.clone()).instance, zone),
            "FAILED (amcheck)"
        );
        assert_eq!(
            output::verified_cell(&instance(json!([])).instance, zone),
            "never"
        );
        let table = output::render_table(&[instance(json!([]))], zone);
        assert!(table.lines().next().unwrap().ends_with("verified"));
        let drills = render_drills(&[instance(failed)], zone);
        assert!(drills.contains("amcheck: btree index"), "{drills}");
    }
}
