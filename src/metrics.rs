//! Prometheus text exposition for `GET /metrics`.
//!
//! Counts that must survive restarts and agree across brokers sharing a database (instances
//! by state, operations by kind and outcome) are read from the store at scrape time; durations
//! and restarts observed by this process are kept in memory. Nothing here may carry a secret.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};

/// Upper bounds (seconds) of the operation duration histogram.
const BUCKETS: &[f64] = &[0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Inner {
    durations: BTreeMap<(String, String), Histogram>,
    cluster_restarts: u64,
    http: BTreeMap<(String, u16), u64>,
}

/// In-process metrics; cheap to clone.
#[derive(Clone, Default)]
pub struct Metrics(Arc<Mutex<Inner>>);

impl Metrics {
    /// Records a finished operation and how long it took from request to end.
    pub fn operation_finished(&self, kind: &str, outcome: &str, seconds: f64) {
        let mut inner = self.0.lock().expect("metrics lock");
        let h = inner
            .durations
            .entry((kind.into(), outcome.into()))
            .or_default();
        if h.counts.is_empty() {
            h.counts = vec![0; BUCKETS.len()];
        }
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.counts[i] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }

    pub fn cluster_restarted(&self) {
        self.0.lock().expect("metrics lock").cluster_restarts += 1;
    }

    /// Counts an HTTP response by route pattern (never the raw path: ids would explode the
    /// label set) and status.
    pub fn http_response(&self, route: &str, status: u16) {
        *self
            .0
            .lock()
            .expect("metrics lock")
            .http
            .entry((route.into(), status))
            .or_default() += 1;
    }

    /// Renders everything; `instances` and `operations` come from the store.
    pub fn render(
        &self,
        instances: &[(String, i64)],
        operations: &[(String, String, i64)],
    ) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP wayback_instances Service instances by state (deleted ones are kept for undo)."
        );
        let _ = writeln!(out, "# TYPE wayback_instances gauge");
        for state in crate::domain::InstanceState::ALL {
            let n = instances
                .iter()
                .find(|(s, _)| s == state.as_str())
                .map_or(0, |(_, n)| *n);
            let _ = writeln!(out, "wayback_instances{{state=\"{state}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP wayback_operations Operations by kind and state, all brokers, since the state database was created.");
        let _ = writeln!(out, "# TYPE wayback_operations gauge");
        for (kind, state, n) in operations {
            let _ = writeln!(
                out,
                "wayback_operations{{kind=\"{kind}\",state=\"{}\"}} {n}",
                state.replace(' ', "_")
            );
        }
        let inner = self.0.lock().expect("metrics lock");
        let _ = writeln!(out, "# HELP wayback_operation_duration_seconds Time from request to end of operations finished by this broker.");
        let _ = writeln!(out, "# TYPE wayback_operation_duration_seconds histogram");
        for ((kind, outcome), h) in &inner.durations {
            let labels = format!("kind=\"{kind}\",outcome=\"{outcome}\"");
            for (bound, count) in BUCKETS.iter().zip(&h.counts) {
                let _ = writeln!(
                    out,
                    "wayback_operation_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "wayback_operation_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "wayback_operation_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "wayback_operation_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
        let _ = writeln!(out, "# HELP wayback_cluster_restarts_total Clusters found down and started again by the supervisor.");
        let _ = writeln!(out, "# TYPE wayback_cluster_restarts_total counter");
        let _ = writeln!(
            out,
            "wayback_cluster_restarts_total {}",
            inner.cluster_restarts
        );
        let _ = writeln!(
            out,
            "# HELP wayback_http_responses_total HTTP responses by route and status."
        );
        let _ = writeln!(out, "# TYPE wayback_http_responses_total counter");
        for ((route, status), n) in &inner.http {
            let _ = writeln!(
                out,
                "wayback_http_responses_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_histograms_cumulatively() {
        let m = Metrics::default();
        m.operation_finished("provision", "succeeded", 0.4);
        m.operation_finished("provision", "succeeded", 3.0);
        let text = m.render(
            &[("ready".into(), 2)],
            &[("provision".into(), "in progress".into(), 1)],
        );
        assert!(text.contains("wayback_instances{state=\"ready\"} 2"));
        assert!(text.contains("wayback_instances{state=\"deleted\"} 0"));
        assert!(text.contains("wayback_operations{kind=\"provision\",state=\"in_progress\"} 1"));
        assert!(text.contains("le=\"0.5\"} 1"));
        assert!(text.contains("le=\"5\"} 2"));
        assert!(text.contains(
            "wayback_operation_duration_seconds_count{kind=\"provision\",outcome=\"succeeded\"} 2"
        ));
    }
}
