//! The operators' files of the BOSH release (issue 19 point 4): the Grafana dashboard
//! (`bosh-release/grafana/wayback-dashboard.json`) and the example Prometheus alert rules
//! (`bosh-release/prometheus/wayback-alerts.yml`). Both must parse and have the shape Grafana
//! and Prometheus need; every metric their queries read must be one the broker renders
//! (`exposition`), with the labels they filter and print by, and a counter is only read
//! through `rate`/`increase`; the `wayback` package must install both. `promtool`, when it is
//! installed, checks the rules and every dashboard query with Prometheus' own parser (it is
//! not part of `scripts/setup`: the Debian package is 96 MB for one check).

mod exposition;
mod promql;
mod yaml;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use exposition::Family;

const DASHBOARD: &str = "bosh-release/grafana/wayback-dashboard.json";
const ALERTS: &str = "bosh-release/prometheus/wayback-alerts.yml";
const DATASOURCE: &str = "${DS_PROMETHEUS}";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON")
}

fn alerts() -> Value {
    yaml::parse(&read(ALERTS)).unwrap_or_else(|e| panic!("{ALERTS}: {e}"))
}

/// Every panel that is not a row.
fn panels(dashboard: &Value) -> Vec<&Value> {
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|p| p["type"] != "row")
        .collect()
}

/// Every alert rule of every group.
fn rules(alerts: &Value) -> Vec<&Value> {
    alerts["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .collect()
}

/// A dashboard query as Prometheus would get it (Grafana's variables replaced).
fn as_sent(expr: &str) -> String {
    let mut expr = expr
        .replace("$__rate_interval", "5m")
        .replace("$__range", "1h");
    for var in ["$space", "$plan", "$name", "$instance"] {
        expr = expr.replace(var, ".*");
    }
    expr
}

#[test]
fn the_dashboard_is_a_grafana_dashboard_with_its_variables() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let input = &d["__inputs"][0];
    assert_eq!(
        (&input["name"], &input["pluginId"]),
        (&"DS_PROMETHEUS".into(), &"prometheus".into())
    );
    let vars: BTreeMap<&str, &Value> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    assert_eq!(vars["DS_PROMETHEUS"]["type"], "datasource");
    assert_eq!(vars["DS_PROMETHEUS"]["query"], "prometheus");
    for name in ["space", "plan", "name", "instance"] {
        let var = vars
            .get(name)
            .unwrap_or_else(|| panic!("no variable {name}"));
        assert_eq!(var["type"], "query", "{name}");
        assert_eq!(var["datasource"]["uid"], DATASOURCE, "{name}");
        assert!(
            var["definition"]
                .as_str()
                .unwrap()
                .starts_with("label_values("),
            "{name}"
        );
        assert_eq!(var["includeAll"], true, "{name}");
    }

    let rows: Vec<&str> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "row")
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    let wanted = [
        "Archive health",
        "Activity",
        "Database",
        "Followers and HA",
        "Idle stop and wake",
        "Broker",
        "Agents",
    ];
    assert_eq!(rows, wanted);

    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        let title = p["title"].as_str().unwrap();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "{title}: id used twice"
        );
        let g = &p["gridPos"];
        let (x, y, w, h) = [&g["x"], &g["y"], &g["w"], &g["h"]]
            .map(|v| v.as_u64().unwrap())
            .into();
        assert!(
            x + w <= 24 && w > 0 && h > 0,
            "{title}: outside the 24-column grid"
        );
        for cell in (x..x + w).flat_map(|cx| (y..y + h).map(move |cy| (cx, cy))) {
            assert!(
                cells.insert(cell),
                "{title} overlaps another panel at {cell:?}"
            );
        }
    }
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap();
        assert_eq!(p["datasource"]["uid"], DATASOURCE, "{title}");
        assert!(
            p["description"].as_str().is_some_and(|s| s.len() > 20),
            "{title}: say what it shows"
        );
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], DATASOURCE, "{title}");
            assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()), "{title}");
        }
    }
}

#[test]
fn every_alert_rule_has_for_severity_summary_and_description() {
    let a = alerts();
    assert_eq!(
        a.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["groups"]
    );
    let duration = |d: &str| {
        d.strip_suffix(['s', 'm', 'h', 'd'])
            .is_some_and(|n| !n.starts_with('0') && n.parse::<u32>().is_ok())
    };
    let mut names = BTreeSet::new();
    let rules = rules(&a);
    for rule in &rules {
        let name = rule["alert"].as_str().expect("every rule is an alert");
        assert!(names.insert(name), "{name} twice");
        let keys: BTreeSet<&str> = rule
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            ["alert", "annotations", "expr", "for", "labels"].into(),
            "{name}"
        );
        assert!(
            duration(rule["for"].as_str().unwrap_or("")),
            "{name}: `for` is a duration"
        );
        assert!(
            ["info", "warning", "critical"]
                .contains(&rule["labels"]["severity"].as_str().unwrap_or("")),
            "{name}: severity is info, warning or critical"
        );
        let summary = rule["annotations"]["summary"].as_str().unwrap_or("");
        let description = rule["annotations"]["description"].as_str().unwrap_or("");
        assert!(
            summary.contains("{{ $labels."),
            "{name}: the summary names what it is about"
        );
        assert!(
            description.len() > 80,
            "{name}: the description says what to do"
        );
    }
    // The issue's list: archive lag, backup age, drill failures, lock waits, follower lag;
    // the brief's: long transactions, wraparound, scrape failures.
    let read: BTreeSet<String> = rules
        .iter()
        .flat_map(|r| {
            promql::reads(r["expr"].as_str().unwrap())
                .unwrap()
                .selectors
        })
        .map(|s| s.metric)
        .collect();
    for metric in [
        "wayback_archive_lag_seconds",
        "wayback_base_backup_age_seconds",
        "wayback_restore_drill_failures_total",
        "wayback_lock_wait_seconds_total",
        "wayback_lock_waiters",
        "wayback_follower_lag_seconds",
        "wayback_longest_transaction_seconds",
        "wayback_wraparound_age",
        "up",
    ] {
        assert!(read.contains(metric), "no alert reads {metric}");
    }
}

mod queries;

#[test]
fn the_bosh_release_installs_both_files() {
    let prepare = read("bosh-release/scripts/prepare-src");
    assert!(prepare.contains(r#"cp -R "$release/grafana" "$release/prometheus" "$dest/ops/""#));
    let spec = read("bosh-release/packages/wayback/spec");
    assert!(spec.lines().any(|l| l == "- wayback/ops/**/*"), "{spec}");
    let packaging = read("bosh-release/packages/wayback/packaging");
    for (file, dir) in [
        ("grafana/wayback-dashboard.json", "grafana"),
        ("prometheus/wayback-alerts.yml", "prometheus"),
    ] {
        let line = format!("install -m 0644 ops/{file} \"${{BOSH_INSTALL_TARGET}}/share/{dir}/\"");
        assert!(packaging.contains(&line), "the packaging must run: {line}");
    }
    let readme = read("README.md");
    for path in [
        "/var/vcap/packages/wayback/share/grafana/wayback-dashboard.json",
        "/var/vcap/packages/wayback/share/prometheus/wayback-alerts.yml",
        DASHBOARD,
        ALERTS,
    ] {
        assert!(readme.contains(path), "the README names {path}");
    }
}

/// The words that follow `marker` in `text` (`$labels.` → the label names an annotation
/// prints).
fn words_after(text: &str, marker: &str) -> Vec<String> {
    text.split(marker)
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

/// Families the broker renders (see `exposition`).
fn families() -> BTreeMap<String, Family> {
    exposition::families(&exposition::render_everything())
}
