//! What running instances are doing (issue 19), rendered at scrape time from the sampler's
//! counters (`ClusterRuntime::activity_summaries`, one call per agent) joined by the caller
//! with the store's records. Labelled `{instance, name, space, plan}`: `name` is the name the
//! broker recorded last, so a rename relabels the series; values are escaped as the text
//! format asks (a name is the user's). The 1 s gauges are absent for an instance that is not
//! being sampled now (stopped, parked); the 15 s facts and the counters stay as last seen.
//! Names follow postgres_exporter's where one exists (`pg_stat_database_*_total`).

use std::fmt::Write;

use wayback_api::activity::{ActivitySummary, DatabaseStats, Sample};

/// One instance, as the scrape joined it.
pub struct ActivityRow<'a> {
    pub summary: &'a ActivitySummary,
    pub name: Option<&'a str>,
    pub space: &'a str,
    pub plan: &'a str,
}

/// A label value in the text format: `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(row: &ActivityRow<'_>) -> String {
    format!(
        "instance=\"{}\",name=\"{}\",space=\"{}\",plan=\"{}\"",
        escape(&row.summary.instance_id),
        escape(row.name.unwrap_or("")),
        escape(row.space),
        escape(row.plan)
    )
}

type SampleGauge = fn(&Sample) -> f64;
type StatsValue = fn(&DatabaseStats) -> Option<f64>;

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The activity metrics (HELP and TYPE even without instances).
pub fn render_activity(rows: &[ActivityRow<'_>]) -> String {
    let mut out = String::new();
    let all: Vec<(String, &ActivityRow<'_>)> = rows.iter().map(|r| (labels(r), r)).collect();

    header(
        &mut out,
        "wayback_sessions",
        "gauge",
        "Client sessions by state (pg_stat_activity.state, spaces as underscores; the broker's own sessions left out), sampled every second.",
    );
    for (l, row) in &all {
        if let Some(s) = &row.summary.latest {
            for (state, n) in s.sessions.labelled() {
                let _ = writeln!(out, "wayback_sessions{{{l},state=\"{state}\"}} {n}");
            }
        }
    }
    let gauges: [(&str, &str, SampleGauge); 3] = [
        (
            "wayback_lock_waiters",
            "Sessions waiting for a lock now.",
            |s| s.lock_waiters as f64,
        ),
        (
            "wayback_longest_transaction_seconds",
            "Age of the oldest open transaction (0 when none).",
            |s| s.longest_transaction_secs,
        ),
        (
            "wayback_idle_in_transaction_seconds",
            "Longest time a session has been idle in transaction (0 when none).",
            |s| s.longest_idle_in_transaction_secs,
        ),
    ];
    for (name, help, value) in gauges {
        header(&mut out, name, "gauge", help);
        for (l, row) in &all {
            if let Some(s) = &row.summary.latest {
                let _ = writeln!(out, "{name}{{{l}}} {}", value(s));
            }
        }
    }
    header(
        &mut out,
        "wayback_lock_wait_seconds_total",
        "counter",
        "Seconds sessions spent waiting for locks, by lock type and mode, since the sampler started.",
    );
    for (l, row) in &all {
        for t in &row.summary.lock_wait_seconds {
            let _ = writeln!(
                out,
                "wayback_lock_wait_seconds_total{{{l},lock_type=\"{}\",mode=\"{}\"}} {}",
                escape(&t.lock_type),
                escape(&t.mode),
                t.seconds
            );
        }
    }
    let stats: [(&str, &str, &str, StatsValue); 9] = [
        (
            "wayback_pg_stat_database_xact_commit_total",
            "counter",
            "Transactions committed, all databases (pg_stat_database), read every 15 s.",
            |s| Some(s.xact_commit as f64),
        ),
        (
            "wayback_pg_stat_database_xact_rollback_total",
            "counter",
            "Transactions rolled back, all databases.",
            |s| Some(s.xact_rollback as f64),
        ),
        (
            "wayback_pg_stat_database_blks_read_total",
            "counter",
            "Blocks read from disk (not found in shared buffers), all databases.",
            |s| Some(s.blks_read as f64),
        ),
        (
            "wayback_pg_stat_database_blks_hit_total",
            "counter",
            "Blocks found in shared buffers, all databases.",
            |s| Some(s.blks_hit as f64),
        ),
        (
            "wayback_pg_stat_database_deadlocks_total",
            "counter",
            "Deadlocks detected, all databases.",
            |s| Some(s.deadlocks as f64),
        ),
        (
            "wayback_cache_hit_ratio",
            "gauge",
            "blks_hit / (blks_hit + blks_read) since the statistics were reset (absent before the first read).",
            |s| s.cache_hit_ratio,
        ),
        (
            "wayback_database_size_bytes",
            "gauge",
            "Size of the instance's databases (pg_database_size, templates left out).",
            |s| Some(s.database_size_bytes as f64),
        ),
        (
            "wayback_wraparound_age",
            "gauge",
            "Oldest age(datfrozenxid) of any database: transactions until wraparound protection nears (PostgreSQL stops at about 2^31).",
            |s| Some(s.wraparound_age as f64),
        ),
        (
            "wayback_max_connections",
            "gauge",
            "The cluster's max_connections.",
            |s| Some(s.max_connections as f64),
        ),
    ];
    for (name, kind, help, value) in stats {
        header(&mut out, name, kind, help);
        for (l, row) in &all {
            if let Some(v) = row.summary.stats.as_ref().and_then(value) {
                let _ = writeln!(out, "{name}{{{l}}} {v}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use wayback_api::activity::{LockWaitTotal, SessionStates};

    #[test]
    fn an_instance_is_labelled_with_its_name_space_and_plan() {
        let summary = ActivitySummary {
            instance_id: "i-1".into(),
            latest: Some(Sample {
                sessions: SessionStates {
                    active: 2,
                    idle: 1,
                    ..SessionStates::default()
                },
                lock_waiters: 1,
                longest_transaction_secs: 12.5,
                ..Sample::default()
            }),
            stats: Some(DatabaseStats {
                xact_commit: 40,
                blks_hit: 3,
                blks_read: 1,
                cache_hit_ratio: Some(0.75),
                max_connections: 100,
                ..DatabaseStats::default()
            }),
            lock_wait_seconds: vec![LockWaitTotal {
                lock_type: "transactionid".into(),
                mode: "ShareLock".into(),
                seconds: 3.5,
            }],
        };
        let rows = [ActivityRow {
            summary: &summary,
            name: Some("orders \"eu\""),
            space: "space-guid",
            plan: "small",
        }];
        let text = render_activity(&rows);
        let l = r#"instance="i-1",name="orders \"eu\"",space="space-guid",plan="small""#;
        for line in [
            format!("wayback_sessions{{{l},state=\"active\"}} 2"),
            format!("wayback_sessions{{{l},state=\"idle_in_transaction\"}} 0"),
            format!("wayback_lock_waiters{{{l}}} 1"),
            format!("wayback_longest_transaction_seconds{{{l}}} 12.5"),
            format!(
                "wayback_lock_wait_seconds_total{{{l},lock_type=\"transactionid\",mode=\"ShareLock\"}} 3.5"
            ),
            format!("wayback_pg_stat_database_xact_commit_total{{{l}}} 40"),
            format!("wayback_cache_hit_ratio{{{l}}} 0.75"),
            format!("wayback_max_connections{{{l}}} 100"),
            "# TYPE wayback_lock_wait_seconds_total counter".to_string(),
            "# TYPE wayback_lock_waiters gauge".to_string(),
        ] {
            assert!(text.lines().any(|x| x == line), "missing {line}\n{text}");
        }
    }

    #[test]
    fn an_instance_not_sampled_now_has_no_gauges_but_keeps_its_counters() {
        let summary = ActivitySummary {
            instance_id: "i-2".into(),
            lock_wait_seconds: vec![LockWaitTotal {
                lock_type: "relation".into(),
                mode: "AccessExclusiveLock".into(),
                seconds: 1.0,
            }],
            ..ActivitySummary::default()
        };
        let text = render_activity(&[ActivityRow {
            summary: &summary,
            name: None,
            space: "s",
            plan: "p",
        }]);
        assert!(!text.contains("wayback_sessions{"), "{text}");
        assert!(!text.contains("wayback_lock_waiters{"), "{text}");
        assert!(text.contains("wayback_lock_wait_seconds_total{instance=\"i-2\",name=\"\""));
        // Every metric has its HELP and TYPE even so.
        assert_eq!(text.matches("# TYPE ").count(), 14);
    }
}
