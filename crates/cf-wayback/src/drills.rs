//! Restore drills in `backups` (issue 18): the table's "verified" column — when the newest
//! drill passed, `FAILED` with its first failing check, or `never` — and `backups NAME
//! --drills`, an instance's recent drills. Pure functions of the broker's `INSTANCE`
//! ([`wayback_api::v1::Instance::drills`], newest first). The `--json` document carries the
//! drills as the broker sent them (`output::json_document`).
//!
//! Imports `broker_client::Listed`, `output` and `wayback_api`.

use chrono::Duration;
use wayback_api::drills::DrillReport;
use wayback_api::v1;

use crate::broker_client::Listed;
use crate::output::{self, Zone};

/// When a drill ended.
fn ended(d: &DrillReport) -> chrono::DateTime<chrono::Utc> {
    d.started + Duration::milliseconds((d.duration_secs * 1000.0) as i64)
}

/// The "verified" cell of an instance.
pub fn verified_cell(instance: &v1::Instance, zone: Zone) -> String {
    match instance.drills.first() {
        None => "never".into(),
        Some(d) if d.passed() => output::format_time(ended(d), zone),
        Some(d) => match &d.failure {
            Some(f) => format!("FAILED ({})", f.check),
            None => "FAILED".into(),
        },
    }
}

/// The `backups` table with its "verified" column last.
pub fn render_table(instances: &[Listed], zone: Zone) -> String {
    let header = output::row_header();
    let mut rows: Vec<[String; 7]> = vec![extend(header.map(String::from), "verified".into())];
    rows.extend(instances.iter().map(|i| {
        extend(
            output::row(&i.instance, zone),
            verified_cell(&i.instance, zone),
        )
    }));
    output::align(&rows)
}

fn extend(row: [String; 6], last: String) -> [String; 7] {
    let [a, b, c, d, e, f] = row;
    [a, b, c, d, e, f, last]
}

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
            verified_cell(&instance(passed).instance, zone),
            "2026-12-06 10:01 UTC"
        );
        assert_eq!(
            verified_cell(&instance(failed.clone()).instance, zone),
            "FAILED (amcheck)"
        );
        assert_eq!(verified_cell(&instance(json!([])).instance, zone), "never");
        let table = render_table(&[instance(json!([]))], zone);
        assert!(table.lines().next().unwrap().ends_with("verified"));
        let drills = render_drills(&[instance(failed)], zone);
        assert!(drills.contains("amcheck: btree index"), "{drills}");
    }
}
