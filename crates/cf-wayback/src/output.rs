//! What `cf backups` prints: the table and the `--json` document, as pure functions of the
//! broker's answer, so that both are golden-tested (`tests/fixtures/cf-wayback/`).
//!
//! The table reads a few fields of each broker `INSTANCE` ([`wayback_api::v1::Instance`],
//! docs/wayback-api.md) and shows "-" for anything absent, so an instance without a name or a
//! window yet still gets its row. The JSON document passes the broker's instance objects
//! through untouched ([`Listed::raw`]): scripts get every field the broker has, and the CLI
//! never has to know them.
//!
//! Imports `broker_client::Listed` and `wayback_api::v1`.

use chrono::{DateTime, FixedOffset, Local, Utc};
use serde_json::{json, Value};
use wayback_api::v1;

use crate::broker_client::Listed;

/// The time zone the table shows times in.
#[derive(Debug, Clone, Copy)]
pub enum Zone {
    Utc,
    /// `--local-time`: the machine's zone, with its offset printed.
    Local,
    /// A fixed offset, for tests.
    Fixed(FixedOffset),
}

/// `2026-11-21 09:42 UTC`, or with `--local-time` `2026-11-21 10:42 +01:00`.
pub fn format_time(t: DateTime<Utc>, zone: Zone) -> String {
    match zone {
        Zone::Utc => t.format("%Y-%m-%d %H:%M UTC").to_string(),
        Zone::Local => t
            .with_timezone(&Local)
            .format("%Y-%m-%d %H:%M %:z")
            .to_string(),
        Zone::Fixed(offset) => t
            .with_timezone(&offset)
            .format("%Y-%m-%d %H:%M %:z")
            .to_string(),
    }
}

/// A time from the broker, formatted; "-" when absent.
fn time_cell(t: Option<DateTime<Utc>>, zone: Zone) -> String {
    t.map(|t| format_time(t, zone))
        .unwrap_or_else(|| "-".into())
}

fn text_cell(s: Option<&str>) -> String {
    match s {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => "-".into(),
    }
}

const HEADER: [&str; 7] = [
    "name",
    "instance",
    "state",
    "restorable from",
    "restorable to",
    "last base backup",
    "verified",
];

/// One table row of a broker `INSTANCE`.
pub fn row(instance: &v1::Instance, zone: Zone) -> [String; 7] {
    let window = &instance.restore_window;
    let to = if window.to_now {
        "now".to_string()
    } else {
        time_cell(window.to, zone)
    };
    let id = text_cell(Some(&instance.instance_id));
    [
        text_cell(instance.name.as_deref()),
        id.chars().take(8).collect(),
        text_cell(Some(instance.state.as_str())),
        time_cell(window.from, zone),
        to,
        time_cell(instance.last_base_backup, zone),
        verified_cell(instance, zone),
    ]
}

/// The "verified" cell (issue 18): when the newest restore drill ended if it passed,
/// `FAILED (check)` with its first failing check, or `never`.
pub fn verified_cell(instance: &v1::Instance, zone: Zone) -> String {
    match instance.drills.first() {
        None => "never".into(),
        Some(d) if d.passed() => {
            let ended =
                d.started + chrono::Duration::milliseconds((d.duration_secs * 1000.0) as i64);
            format_time(ended, zone)
        }
        Some(d) => match &d.failure {
            Some(f) => format!("FAILED ({})", f.check),
            None => "FAILED".into(),
        },
    }
}

/// The table: a header, one line per instance in the broker's order (newest first), columns
/// as wide as their widest cell and three spaces apart, no trailing blanks; the last column
/// says when the archive was last proven by a restore drill ([`verified_cell`]). Under a deleted
/// instance's row, indented, how an undo to its latest point would go ([`undo_line`]).
pub fn render_table(instances: &[Listed], zone: Zone) -> String {
    let mut rows: Vec<[String; 7]> = vec![HEADER.map(String::from)];
    rows.extend(instances.iter().map(|i| row(&i.instance, zone)));
    let table = align(&rows);
    let mut lines = table.lines();
    let mut out = String::new();
    for line in lines.by_ref().take(1) {
        out.push_str(line);
        out.push('\n');
    }
    for (line, listed) in lines.zip(instances) {
        out.push_str(line);
        out.push('\n');
        if let Some(undo) = undo_line(&listed.instance, zone) {
            out.push_str(&undo);
            out.push('\n');
        }
    }
    out
}

/// For a deleted instance: `  undo: kept copy until …, instant` while the broker keeps its
/// data directory (an undo to its latest point takes it by rename), else `  undo: from the
/// archive`. None for any other state.
pub fn undo_line(instance: &v1::Instance, zone: Zone) -> Option<String> {
    if instance.state != v1::State::Deleted {
        return None;
    }
    Some(match &instance.kept_copy {
        Some(k) => format!(
            "  undo: kept copy until {}, instant",
            format_time(k.expires_at, zone)
        ),
        None => "  undo: from the archive".into(),
    })
}

/// Rows as a table: columns as wide as their widest cell, three spaces apart, no trailing
/// blanks.
pub fn align<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i > 0 {
                line.push_str("   ");
            }
            line.push_str(cell);
            if i + 1 < r.len() {
                let pad = widths[i] - cell.chars().count();
                line.extend(std::iter::repeat(' ').take(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// What `backups` prints when the broker knows nothing matching.
pub fn empty_message(space_name: &str, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("No instance named {n} in space {space_name}, live or deleted.\n"),
        None => format!("No Wayback instances in space {space_name}, live or deleted.\n"),
    }
}

/// The `--json` document: stable keys, the broker's instance objects as they came.
pub fn json_document(
    space_guid: &str,
    space_name: &str,
    broker: &str,
    instances: &[Listed],
) -> Value {
    let instances: Vec<&Value> = instances.iter().map(|i| &i.raw).collect();
    json!({
        "space": { "guid": space_guid, "name": space_name },
        "broker": broker,
        "instances": instances,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker_client::read_list;
    use crate::test_support::listed;
    use std::path::{Path, PathBuf};

    fn fixture_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cf-wayback")
    }

    fn broker_instances() -> Vec<Listed> {
        let text = std::fs::read_to_string(fixture_dir().join("broker-instances.json")).unwrap();
        read_list(&text).unwrap()
    }

    #[test]
    fn the_table_matches_the_golden_file() {
        let want = std::fs::read_to_string(fixture_dir().join("backups-table.txt")).unwrap();
        assert_eq!(render_table(&broker_instances(), Zone::Utc), want);
    }

    #[test]
    fn the_issue_example_renders_exactly() {
        // The two rows of the issue, in the broker's shape.
        let instances = vec![
            listed(
                json!({"instance_id": "3f2a9c1e-5b7d-4c1a-9e2f-000000000001", "name": "production",
                   "state": "deleted",
                   "restore_window": {"from": "2026-11-14T03:00:11Z", "to": "2026-11-21T09:42:30Z", "to_now": false},
                   "last_base_backup": "2026-11-21T03:00:09Z"}),
            ),
            listed(
                json!({"instance_id": "a81c07d2-5b7d-4c1a-9e2f-000000000002", "name": "orders",
                   "state": "live",
                   "restore_window": {"from": "2026-11-14T03:00:00Z", "to": null, "to_now": true},
                   "last_base_backup": "2026-11-21T03:00:59Z"}),
            ),
        ];
        assert_eq!(
            render_table(&instances, Zone::Utc),
            "name         instance   state     restorable from        restorable to          last base backup       verified\n\
             production   3f2a9c1e   deleted   2026-11-14 03:00 UTC   2026-11-21 09:42 UTC   2026-11-21 03:00 UTC   never\n\
             \x20 undo: from the archive\n\
             orders       a81c07d2   live      2026-11-14 03:00 UTC   now                    2026-11-21 03:00 UTC   never\n"
        );
    }

    #[test]
    fn a_deleted_instance_says_how_it_would_be_undone() {
        let deleted = |kept: Value| {
            listed(
                json!({"instance_id": "3f2a9c1e-5b7d-4c1a-9e2f-000000000001",
                "name": "production", "state": "deleted",
                "restore_window": {"from": null, "to": null, "to_now": false},
                "last_base_backup": null, "kept_copy": kept}),
            )
        };
        let kept = json!({"size_bytes": 52_428_800, "kept_at": "2026-11-21T09:42:30Z",
            "expires_at": "2026-11-22T09:42:30Z", "machine": "db-2"});
        let table = render_table(&[deleted(kept)], Zone::Utc);
        assert_eq!(
            table.lines().nth(2),
            Some("  undo: kept copy until 2026-11-22 09:42 UTC, instant"),
            "{table}"
        );
        let table = render_table(&[deleted(Value::Null)], Zone::Utc);
        assert_eq!(table.lines().nth(2), Some("  undo: from the archive"));
        assert_eq!(table.lines().count(), 3);
    }

    #[test]
    fn missing_fields_show_a_dash() {
        let instances = vec![listed(
            json!({"instance_id": "c0ffee00", "name": null, "state": "provisioning",
                   "restore_window": {"from": null, "to": null, "to_now": false},
                   "last_base_backup": null}),
        )];
        let table = render_table(&instances, Zone::Utc);
        let line = table.lines().nth(1).unwrap();
        assert_eq!(
            line.split_whitespace().collect::<Vec<_>>(),
            ["-", "c0ffee00", "provisioning", "-", "-", "-", "never"]
        );
    }

    #[test]
    fn local_time_prints_the_offset() {
        let t = DateTime::parse_from_rfc3339("2026-11-21T09:42:30Z")
            .unwrap()
            .with_timezone(&Utc);
        let cet = FixedOffset::east_opt(3600).unwrap();
        assert_eq!(format_time(t, Zone::Fixed(cet)), "2026-11-21 10:42 +01:00");
        assert_eq!(format_time(t, Zone::Utc), "2026-11-21 09:42 UTC");
    }

    #[test]
    fn the_json_document_matches_the_golden_file() {
        let want: Value = serde_json::from_str(
            &std::fs::read_to_string(fixture_dir().join("backups.json")).unwrap(),
        )
        .unwrap();
        let got = json_document(
            "5ace0000-0000-4000-8000-000000000002",
            "staging",
            "https://wayback.example.com",
            &broker_instances(),
        );
        assert_eq!(got, want);
    }
}
