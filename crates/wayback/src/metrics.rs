//! Prometheus text exposition for `GET /metrics`.
//!
//! Counts that must survive restarts and agree across brokers sharing a database (instances
//! by state, operations by kind and outcome) are read from the store at scrape time; durations
//! and restarts observed by this process are kept in memory. Followers' lag is measured at scrape time
//! by the caller and rendered by [`render_followers`], HA members' roles, lag and failovers by
//! [`render_ha`], what running instances are doing (sessions, lock waits, database
//! statistics; issue 19) by [`render_activity`]. Nothing here may carry a secret. Instances
//! are labelled by id, except the activity metrics, which also carry the instance's name,
//! space and plan (`{instance, name, space, plan}`, as dashboards group by them): `GET
//! /metrics` may be open (`metrics.auth`), so an operator who does not want tenants' instance
//! names readable sets `metrics.auth` to `broker` or `own`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};

mod activity;
pub use activity::{render_activity, ActivityRow};
mod followers;
pub use followers::{render_followers, FollowerRow};
mod ha;
pub use ha::{render_ha, HaMemberRow, HaRow};

/// Upper bounds (seconds) of the operation duration histogram.
const BUCKETS: &[f64] = &[0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0];

/// Upper bounds (seconds) of `wayback_wake_seconds`: a wake is a PostgreSQL start (~0.1 s).
const WAKE_BUCKETS: &[f64] = &[0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0];

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
    /// Per instance, refreshed by the supervisor; dropped when the instance leaves `ready`.
    archivers: BTreeMap<String, crate::runtime::ArchiverStats>,
    /// Per instance: (finished at, Unix seconds; stored bytes) of the newest base backup.
    backups: BTreeMap<String, (f64, u64)>,
    /// Restores by outcome.
    restores: BTreeMap<String, Histogram>,
    /// Live instances whose name is not known yet, as the name resolver last counted them.
    names_unknown: u64,
    /// Per agent, as the supervisor last asked: its capacity, or None when it did not answer.
    agents: BTreeMap<String, Option<crate::runtime::Capacity>>,
    /// Per machine (`local` or an agent's name): the copies of deleted instances kept for undo
    /// and their bytes, as the supervisor last counted them.
    trash: BTreeMap<String, (u64, u64)>,
    /// Per instance: restore drills (issue 18), from the store every maintenance pass and
    /// from each drill as it ends.
    drills: BTreeMap<String, DrillFigures>,
    /// Wakes of clusters stopped when idle (issue 17) this process saw, and those that failed.
    wakes: Histogram,
    wake_failures: u64,
}

/// One instance's restore drills in numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DrillFigures {
    /// Unix seconds of the newest passed drill's end.
    pub last_success: Option<f64>,
    /// Seconds the newest drill took.
    pub last_duration: Option<f64>,
    pub failures: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        self.observe_in(BUCKETS, seconds)
    }

    fn observe_in(&mut self, bounds: &[f64], seconds: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; bounds.len()];
        }
        for (i, bound) in bounds.iter().enumerate() {
            if seconds <= *bound {
                self.counts[i] += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        self.render_in(BUCKETS, out, name, labels)
    }

    /// Renders with `bounds` (those it was observed with); `labels` may be empty.
    fn render_in(&self, bounds: &[f64], out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let counts = self.counts.iter().copied().chain(std::iter::repeat(0));
        for (bound, count) in bounds.iter().zip(counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = |l: &str| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{{{l}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum);
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count);
    }
}

/// In-process metrics; cheap to clone.
#[derive(Clone, Default)]
pub struct Metrics(Arc<Mutex<Inner>>);

impl Metrics {
    /// Records a finished operation and how long it took from request to end.
    pub fn operation_finished(&self, kind: &str, outcome: &str, seconds: f64) {
        let mut inner = self.0.lock().expect("metrics lock");
        inner
            .durations
            .entry((kind.into(), outcome.into()))
            .or_default()
            .observe(seconds);
    }

    /// The archiver's latest statistics of a ready instance.
    pub fn archiver_observed(&self, instance: &str, stats: crate::runtime::ArchiverStats) {
        let mut inner = self.0.lock().expect("metrics lock");
        inner.archivers.insert(instance.into(), stats);
    }

    /// Keeps per-instance archive figures only for `live` instances.
    pub fn retain_instances(&self, live: &std::collections::HashSet<String>) {
        let mut inner = self.0.lock().expect("metrics lock");
        inner.archivers.retain(|k, _| live.contains(k));
        inner.backups.retain(|k, _| live.contains(k));
    }

    /// A base backup of `instance` finished at `finished_at` (Unix seconds).
    pub fn backup_finished(&self, instance: &str, finished_at: f64, stored_bytes: u64) {
        let mut inner = self.0.lock().expect("metrics lock");
        inner
            .backups
            .insert(instance.into(), (finished_at, stored_bytes));
    }

    /// A restore (a clone, or the operator's `wayback restore`) ended.
    pub fn restore_finished(&self, outcome: &str, seconds: f64) {
        let mut inner = self.0.lock().expect("metrics lock");
        inner
            .restores
            .entry(outcome.into())
            .or_default()
            .observe(seconds);
    }

    /// How many live instances have no known name (set by the name resolver every pass).
    pub fn names_unknown(&self, count: u64) {
        self.0.lock().expect("metrics lock").names_unknown = count;
    }

    /// What each agent answered to the supervisor's capacity request (None: no answer).
    pub fn agents_observed(&self, agents: Vec<(String, Option<crate::runtime::Capacity>)>) {
        self.0.lock().expect("metrics lock").agents = agents.into_iter().collect();
    }

    /// The kept copies of deleted instances on one machine (issue 16), set every supervisor
    /// pass.
    pub fn trash_observed(&self, machine: &str, copies: u64, bytes: u64) {
        self.0
            .lock()
            .expect("metrics lock")
            .trash
            .insert(machine.into(), (copies, bytes));
    }

    /// Every instance's drill figures as the store counts them (replaces what was known).
    pub fn drills_observed(&self, figures: Vec<(String, DrillFigures)>) {
        self.0.lock().expect("metrics lock").drills = figures.into_iter().collect();
    }

    /// A drill of `instance` ended now.
    pub fn drill_finished(&self, instance: &str, passed: bool, seconds: f64) {
        let mut inner = self.0.lock().expect("metrics lock");
        let f = inner.drills.entry(instance.into()).or_default();
        f.last_duration = Some(seconds);
        if passed {
            f.last_success = Some(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
        } else {
            f.failures += 1;
        }
    }

    /// A cluster stopped when idle was woken by a connection in `seconds` (issue 17).
    pub fn wake_observed(&self, seconds: f64) {
        let mut inner = self.0.lock().expect("metrics lock");
        inner.wakes.observe_in(WAKE_BUCKETS, seconds);
    }

    /// A connection could not wake a cluster stopped when idle.
    pub fn wake_failed(&self) {
        self.0.lock().expect("metrics lock").wake_failures += 1;
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
        let _ = writeln!(out, "# HELP wayback_operations Operations by kind and state, all brokers, that the state database holds (finished ones are pruned after state.retention_days).");
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
            h.render(&mut out, "wayback_operation_duration_seconds", &labels);
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
        let _ = writeln!(out, "# HELP wayback_instances_name_unknown Live instances whose name neither the platform's requests nor the Cloud Controller has told yet (they cannot be cloned by name).");
        let _ = writeln!(out, "# TYPE wayback_instances_name_unknown gauge");
        let _ = writeln!(
            out,
            "wayback_instances_name_unknown {}",
            inner.names_unknown
        );
        render_wakes(&mut out, &inner);
        render_archive(&mut out, &inner);
        render_agents(&mut out, &inner);
        render_trash(&mut out, &inner);
        render_drills(&mut out, &inner);
        out
    }
}

/// Wakes of clusters stopped when idle (issue 17) that this broker saw.
fn render_wakes(out: &mut String, inner: &Inner) {
    let _ = writeln!(out, "# HELP wayback_wake_seconds Time from a client's first packet to a cluster stopped when idle accepting connections, for the wakes this broker saw (an agent's wakes are not timed here).");
    let _ = writeln!(out, "# TYPE wayback_wake_seconds histogram");
    inner
        .wakes
        .render_in(WAKE_BUCKETS, out, "wayback_wake_seconds", "");
    let _ = writeln!(out, "# HELP wayback_wake_failures_total Connections that could not start a cluster stopped when idle (the client was told why).");
    let _ = writeln!(out, "# TYPE wayback_wake_failures_total counter");
    let _ = writeln!(out, "wayback_wake_failures_total {}", inner.wake_failures);
}

/// `wayback_instances_stopped`: live instances stopped when idle, as the state database
/// records them (read at scrape time like the instance counts).
pub fn render_stopped(stopped: i64) -> String {
    format!(
        "# HELP wayback_instances_stopped Live instances stopped because they were idle (a connection starts them).\n\
         # TYPE wayback_instances_stopped gauge\n\
         wayback_instances_stopped {stopped}\n"
    )
}

/// Restore drills per instance (issue 18), once any ran.
fn render_drills(out: &mut String, inner: &Inner) {
    if inner.drills.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP wayback_restore_drill_last_success_timestamp_seconds When the newest restore drill that passed ended (absent: none passed yet).");
    let _ = writeln!(
        out,
        "# TYPE wayback_restore_drill_last_success_timestamp_seconds gauge"
    );
    for (id, f) in &inner.drills {
        if let Some(t) = f.last_success {
            let _ = writeln!(
                out,
                "wayback_restore_drill_last_success_timestamp_seconds{{instance=\"{id}\"}} {t}"
            );
        }
    }
    let _ = writeln!(out, "# HELP wayback_restore_drill_duration_seconds How long the newest restore drill took, restore and checks: a measured recovery time.");
    let _ = writeln!(out, "# TYPE wayback_restore_drill_duration_seconds gauge");
    for (id, f) in &inner.drills {
        if let Some(d) = f.last_duration {
            let _ = writeln!(
                out,
                "wayback_restore_drill_duration_seconds{{instance=\"{id}\"}} {d}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP wayback_restore_drill_failures_total Restore drills that failed."
    );
    let _ = writeln!(out, "# TYPE wayback_restore_drill_failures_total counter");
    for (id, f) in &inner.drills {
        let _ = writeln!(
            out,
            "wayback_restore_drill_failures_total{{instance=\"{id}\"}} {}",
            f.failures
        );
    }
}

/// The copies of deleted instances kept for undo, per machine (once the supervisor counted).
fn render_trash(out: &mut String, inner: &Inner) {
    if inner.trash.is_empty() {
        return;
    }
    type Field = fn(&(u64, u64)) -> u64;
    let gauges: [(&str, &str, Field); 2] = [
        (
            "wayback_trash_instances",
            "Deleted instances whose data directory is kept on the machine for a fast undo.",
            |t| t.0,
        ),
        (
            "wayback_trash_bytes",
            "Bytes the kept data directories of deleted instances take on the machine's data disk.",
            |t| t.1,
        ),
    ];
    for (name, help, get) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (machine, t) in &inner.trash {
            let _ = writeln!(out, "{name}{{machine=\"{machine}\"}} {}", get(t));
        }
    }
}

/// Per-agent reachability and room (only with agents).
fn render_agents(out: &mut String, inner: &Inner) {
    if inner.agents.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP wayback_agent_up Whether the agent answered the supervisor's last capacity request.");
    let _ = writeln!(out, "# TYPE wayback_agent_up gauge");
    for (agent, cap) in &inner.agents {
        let _ = writeln!(
            out,
            "wayback_agent_up{{agent=\"{agent}\"}} {}",
            u8::from(cap.is_some())
        );
    }
    type Field = fn(&crate::runtime::Capacity) -> u64;
    let gauges: [(&str, &str, Field); 5] = [
        (
            "wayback_agent_instances",
            "Clusters the agent holds.",
            |c| u64::from(c.instances),
        ),
        (
            "wayback_agent_max_instances",
            "Most clusters the agent takes.",
            |c| u64::from(c.max_instances),
        ),
        (
            "wayback_agent_memory_available_bytes",
            "The agent VM's available memory.",
            |c| c.memory_available_bytes,
        ),
        (
            "wayback_agent_disk_available_bytes",
            "Free bytes of the agent's data directory's file system.",
            |c| c.disk_available_bytes,
        ),
        (
            "wayback_agent_disk_total_bytes",
            "Size of the agent's data directory's file system.",
            |c| c.disk_total_bytes,
        ),
    ];
    for (name, help, get) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (agent, cap) in &inner.agents {
            if let Some(c) = cap {
                let _ = writeln!(out, "{name}{{agent=\"{agent}\"}} {}", get(c));
            }
        }
    }
}

/// Per-instance archive figures and restore durations.
fn render_archive(out: &mut String, inner: &Inner) {
    type Gauge = fn(&crate::runtime::ArchiverStats) -> Option<f64>;
    let gauges: [(&str, &str, &str, Gauge); 5] = [
        ("wayback_archive_lag_segments", "gauge", "WAL files completed but not yet archived.", |a| Some(a.ready_segments as f64)),
        ("wayback_archive_lag_seconds", "gauge", "How long the oldest WAL file not yet archived has waited (0: none waits).", |a| Some(a.oldest_ready_age_secs)),
        ("wayback_archive_last_archived_timestamp_seconds", "gauge", "When the instance last archived a WAL file (Unix time).", |a| a.last_archived_at),
        ("wayback_archive_push_failures_total", "counter", "Failed wal-push attempts since the cluster's statistics were reset (PostgreSQL retries them).", |a| Some(a.failed_count as f64)),
        ("wayback_archive_last_failure_timestamp_seconds", "gauge", "When wal-push last failed (Unix time).", |a| a.last_failed_at),
    ];
    for (name, kind, help, get) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (instance, a) in &inner.archivers {
            if let Some(v) = get(a) {
                let _ = writeln!(out, "{name}{{instance=\"{instance}\"}} {v}");
            }
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let _ = writeln!(out, "# HELP wayback_base_backup_age_seconds Age of the instance's newest base backup taken by this broker.");
    let _ = writeln!(out, "# TYPE wayback_base_backup_age_seconds gauge");
    for (instance, (at, _)) in &inner.backups {
        let _ = writeln!(
            out,
            "wayback_base_backup_age_seconds{{instance=\"{instance}\"}} {}",
            (now - at).max(0.0)
        );
    }
    let _ = writeln!(
        out,
        "# HELP wayback_base_backup_size_bytes Bytes stored for the instance's newest base backup."
    );
    let _ = writeln!(out, "# TYPE wayback_base_backup_size_bytes gauge");
    for (instance, (_, bytes)) in &inner.backups {
        let _ = writeln!(
            out,
            "wayback_base_backup_size_bytes{{instance=\"{instance}\"}} {bytes}"
        );
    }
    let _ = writeln!(out, "# HELP wayback_restore_duration_seconds Restores from the archive (clones and operator restores), from start to promoted.");
    let _ = writeln!(out, "# TYPE wayback_restore_duration_seconds histogram");
    for (outcome, h) in &inner.restores {
        h.render(
            out,
            "wayback_restore_duration_seconds",
            &format!("outcome=\"{outcome}\""),
        );
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
        assert!(text.contains("wayback_instances_name_unknown 0\n"));
        m.names_unknown(3);
        assert!(m
            .render(&[], &[])
            .contains("wayback_instances_name_unknown 3\n"));
    }
}
