//! Every query of the dashboard and the alerts against the metrics the broker renders (the
//! families `exposition` feeds, and a fast test app's own `GET /metrics` with one instance):
//! the metric exists, the labels it filters, groups and prints by are that metric's, a
//! counter is read through `rate`/`increase` and a gauge never is, and the dashboard's
//! per-instance panels follow its variables. Then `promtool`, when installed.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};

use super::exposition::{self, family_of, Family};
use super::{alerts, as_sent, dashboard, families, panels, promql, rules, words_after, ALERTS};
use crate::common::spawn_fast_app;

/// One query and the labels its legend or annotations print.
struct Query {
    origin: String,
    expr: String,
    printed: Vec<String>,
}

fn queries() -> Vec<Query> {
    let mut out = Vec::new();
    let d = dashboard();
    for p in panels(&d) {
        for t in p["targets"].as_array().unwrap() {
            let format = t["legendFormat"].as_str().unwrap_or("");
            out.push(Query {
                origin: format!("panel {:?}", p["title"].as_str().unwrap()),
                expr: t["expr"].as_str().unwrap().to_string(),
                printed: words_after(&format.replace("{{ ", "{{"), "{{"),
            });
        }
    }
    let a = alerts();
    for r in rules(&a) {
        let text = format!(
            "{}{}",
            r["annotations"]["summary"], r["annotations"]["description"]
        );
        out.push(Query {
            origin: format!("alert {}", r["alert"].as_str().unwrap()),
            expr: r["expr"].as_str().unwrap().to_string(),
            printed: words_after(&text, "$labels."),
        });
    }
    out
}

/// Labels Prometheus adds to every series of the scrape job (`instance` only where the
/// broker's own `instance` label is absent: the scrape keeps the broker's, honor_labels).
const TARGET_LABELS: &[&str] = &["job"];

/// What a selector's metric turned out to be.
enum Found<'a> {
    /// A family the broker renders.
    Rendered(&'a Family),
    /// `up`, which Prometheus adds for every target.
    Up,
    /// Neither (a problem was recorded).
    Missing,
}

/// Checks one selector of `origin`, recording problems.
fn check_selector<'a>(
    families: &'a BTreeMap<String, Family>,
    selector: &promql::Selector,
    origin: &str,
    problems: &mut BTreeSet<String>,
) -> Found<'a> {
    let metric = &selector.metric;
    if metric == "up" {
        return Found::Up;
    }
    let through_rate = matches!(
        selector.within.as_deref(),
        Some("rate" | "irate" | "increase")
    );
    let Some((name, family)) = family_of(families, metric) else {
        problems.insert(format!("{origin}: the broker renders no metric {metric}"));
        return Found::Missing;
    };
    if family.sampled && !selector.of_several {
        for label in &selector.labels {
            if !family.labels.contains(label) && !TARGET_LABELS.contains(&label.as_str()) {
                problems.insert(format!("{origin}: {name} has no label {label}"));
            }
        }
    }
    let cumulative = family.kind == "counter" || (family.kind == "histogram" && metric != name);
    if cumulative && !through_rate {
        problems.insert(format!(
            "{origin}: {metric} is a counter, read it with rate() or increase()"
        ));
    }
    if !cumulative && through_rate {
        problems.insert(format!(
            "{origin}: {metric} is a {}, rate() of it means nothing",
            family.kind
        ));
    }
    if family.kind == "counter" && !name.ends_with("_total") {
        problems.insert(format!("{origin}: counter {name} does not end in _total"));
    }
    Found::Rendered(family)
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_alerts_read_is_rendered_with_those_labels() {
    let mut families = families();
    let app = spawn_fast_app().await;
    app.provision_ready("orders").await;
    exposition::merge(&mut families, exposition::families(&app.metrics().await));
    let mut problems = BTreeSet::new();
    let mut by_name_only = BTreeSet::new();
    for q in queries() {
        let reads = match promql::reads(&q.expr) {
            Ok(r) => r,
            Err(e) => {
                problems.insert(format!("{}: {e} in {}", q.origin, q.expr));
                continue;
            }
        };
        let mut known: BTreeSet<String> = ["job", "instance", "le"].map(String::from).into();
        let mut labels_known = true;
        for s in &reads.selectors {
            match check_selector(&families, s, &q.origin, &mut problems) {
                Found::Rendered(family) => {
                    if !family.sampled {
                        labels_known = false;
                        by_name_only.insert(s.metric.clone());
                    }
                    known.extend(family.labels.iter().cloned());
                    // The dashboard's per-instance panels follow its variables.
                    if q.origin.starts_with("panel") && family.labels.contains("instance") {
                        let wanted: &[&str] = if family.labels.contains("space") {
                            &["space", "plan", "name", "instance"]
                        } else {
                            &["instance"]
                        };
                        for w in wanted {
                            if !s.labels.iter().any(|l| l == w) {
                                problems.insert(format!("{}: {} ignores ${w}", q.origin, s.metric));
                            }
                        }
                    }
                }
                Found::Missing => labels_known = false,
                Found::Up => {}
            }
        }
        for label in reads.grouping.iter().chain(&q.printed) {
            if labels_known && !known.contains(label) {
                problems.insert(format!(
                    "{}: no metric it reads has the label {label}",
                    q.origin
                ));
            }
        }
    }
    // The variables: `label_values(SELECTOR, LABEL)`.
    for var in dashboard()["templating"]["list"].as_array().unwrap() {
        let Some(def) = var["definition"].as_str() else {
            continue;
        };
        let origin = format!("variable {}", var["name"]);
        let inner = def
            .strip_prefix("label_values(")
            .and_then(|d| d.strip_suffix(')'));
        let Some((selector, label)) = inner.and_then(|i| i.rsplit_once(',')) else {
            problems.insert(format!(
                "{origin}: expected label_values(SELECTOR, LABEL): {def}"
            ));
            continue;
        };
        let selectors = promql::reads(selector).expect("a selector").selectors;
        let mut labels: BTreeSet<String> = BTreeSet::new();
        let mut labels_known = true;
        for s in &selectors {
            match check_selector(&families, s, &origin, &mut problems) {
                Found::Rendered(family) if family.sampled => {
                    labels.extend(family.labels.iter().cloned())
                }
                _ => labels_known = false,
            }
        }
        let used = selectors.iter().flat_map(|s| &s.labels);
        for l in used.chain(std::iter::once(&label.trim().to_string())) {
            if labels_known && !labels.contains(l) {
                problems.insert(format!("{origin}: none of its metrics has the label {l}"));
            }
        }
    }
    if !by_name_only.is_empty() {
        eprintln!("checked by name and type only (rendered without samples): {by_name_only:?}");
    }
    let problems: Vec<String> = problems.into_iter().collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `promtool check rules` on the alerts, and on every dashboard query written as a recording
/// rule. Only where promtool is installed (Debian's `prometheus` package, not in
/// `scripts/setup`); says so when it is not.
#[test]
fn promtool_accepts_the_alerts_and_every_dashboard_query() {
    let promtool = Command::new("promtool")
        .arg("--version")
        .stdin(Stdio::null())
        .output();
    if !promtool.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: promtool is not installed (apt-get install prometheus provides it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let recorded = dir.path().join("dashboard-queries.yml");
    let mut text = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries()
        .iter()
        .filter(|q| q.origin.starts_with("panel"))
        .enumerate()
    {
        let expr = serde_json::to_string(&as_sent(&q.expr)).unwrap();
        text.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {expr}\n"
        ));
    }
    std::fs::write(&recorded, text).unwrap();
    for file in [super::repo().join(ALERTS), recorded] {
        let out = Command::new("promtool")
            .arg("check")
            .arg("rules")
            .arg(&file)
            .stdin(Stdio::null())
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool check rules {}:\n{}{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
