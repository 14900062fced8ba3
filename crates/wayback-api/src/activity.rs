//! What a running database is doing (issue 19), shared by the agent wire (`/v1/...`), the
//! broker's read API (`/wayback/v1/instances/{id}/activity|locks|outliers|diagnose`), the
//! dashboard's JSON and `cf-wayback` (`cf db-diagnose`, `cf db-locks`, `cf db-outliers`).
//!
//! Two kinds of facts:
//!
//! - **samples**, taken where the cluster runs (the broker's machine or its agent) by one
//!   sampler: every second a [`Sample`] (sessions by state, the longest transaction, lock
//!   waits), every 15 s a [`DatabaseStats`] (counters, hit ratio, size, wraparound age, top
//!   statements); kept in a bounded ring per instance (the last hour at 1 s) and read back as
//!   an [`Activity`]; the counters the metrics need come as one [`ActivitySummary`] per
//!   instance;
//! - **inspections**, read on demand with one read-only session: the current blocking tree
//!   ([`Locks`]), the top statements ([`Outliers`]) and the facts the diagnose checks judge
//!   ([`DiagnoseFacts`]).
//!
//! No query text here ever carries a parameter: statements are `pg_stat_statements`' normalised
//! text (`$1` for every constant), joined to a session through its `query_id`; a session whose
//! statement is not (yet) in `pg_stat_statements` shows no text.
//!
//! Every field reads with a default: a newer writer may add fields, an older reader skips them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Client sessions by `pg_stat_activity.state` (the broker's and agent's own admin sessions
/// left out).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionStates {
    pub active: u32,
    pub idle: u32,
    pub idle_in_transaction: u32,
    pub idle_in_transaction_aborted: u32,
    pub fastpath_function_call: u32,
    pub disabled: u32,
}

impl SessionStates {
    pub fn total(&self) -> u32 {
        self.active
            + self.idle
            + self.idle_in_transaction
            + self.idle_in_transaction_aborted
            + self.fastpath_function_call
            + self.disabled
    }

    /// `(state label, count)` in the order the metrics and charts use; the labels are
    /// `pg_stat_activity.state`'s words with spaces as underscores.
    pub fn labelled(&self) -> [(&'static str, u32); 6] {
        [
            ("active", self.active),
            ("idle", self.idle),
            ("idle_in_transaction", self.idle_in_transaction),
            (
                "idle_in_transaction_aborted",
                self.idle_in_transaction_aborted,
            ),
            ("fastpath_function_call", self.fastpath_function_call),
            ("disabled", self.disabled),
        ]
    }
}

/// One session waiting for a lock, and who holds it up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LockWait {
    /// The waiting backend.
    pub pid: i32,
    /// `pg_blocking_pids(pid)`: the sessions it waits for.
    pub blocked_by: Vec<i32>,
    /// `pg_locks.locktype` of the lock it waits for (`relation`, `transactionid`, `tuple`, …).
    pub lock_type: String,
    /// `pg_locks.mode` (`ShareLock`, `RowExclusiveLock`, `AccessExclusiveLock`, …).
    pub mode: String,
    /// The relation (`schema.table`) when the lock names one, else the relation of the
    /// waiter's own relation lock when PostgreSQL knows it.
    pub relation: Option<String>,
    pub database: Option<String>,
    pub user: Option<String>,
    /// How long it has waited (from `pg_locks.waitstart`).
    pub waiting_secs: f64,
    /// Normalised statement text (from `pg_stat_statements` by `query_id`), never parameters.
    pub query: Option<String>,
}

/// `waits 3 s for ShareLock (transactionid) on public.accounts`: the one way a wait is written,
/// by `cf db-locks` and by the broker's diagnose check alike.
impl std::fmt::Display for LockWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "waits {:.0} s for {} ({})",
            self.waiting_secs, self.mode, self.lock_type
        )?;
        match &self.relation {
            Some(r) => write!(f, " on {r}"),
            None => Ok(()),
        }
    }
}

/// One second of an instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Sample {
    pub at: DateTime<Utc>,
    pub sessions: SessionStates,
    /// The oldest open transaction's age, seconds (0 when none).
    pub longest_transaction_secs: f64,
    /// The oldest `idle in transaction` session's time in that state, seconds (0 when none).
    pub longest_idle_in_transaction_secs: f64,
    /// Sessions waiting on a lock.
    pub lock_waiters: u32,
    /// Each waiter (empty when none wait).
    pub waits: Vec<LockWait>,
}

/// One statement in `pg_stat_statements` (normalised text only).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Statement {
    pub query_id: i64,
    pub query: String,
    pub database: Option<String>,
    pub user: Option<String>,
    pub calls: i64,
    pub total_exec_ms: f64,
    pub mean_exec_ms: f64,
    pub rows: i64,
    /// Share of all statements' total time, 0–1.
    pub share: f64,
}

/// The 15-second facts of an instance (all its databases together unless said).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DatabaseStats {
    pub at: DateTime<Utc>,
    pub xact_commit: i64,
    pub xact_rollback: i64,
    pub blks_read: i64,
    pub blks_hit: i64,
    pub tup_returned: i64,
    pub tup_fetched: i64,
    pub tup_inserted: i64,
    pub tup_updated: i64,
    pub tup_deleted: i64,
    pub conflicts: i64,
    pub temp_files: i64,
    pub temp_bytes: i64,
    pub deadlocks: i64,
    /// `blks_hit / (blks_hit + blks_read)`, None before the first read.
    pub cache_hit_ratio: Option<f64>,
    /// Sum of `pg_database_size` over the non-template databases.
    pub database_size_bytes: i64,
    /// The oldest `age(datfrozenxid)` of any database.
    pub wraparound_age: i64,
    /// `max_connections`.
    pub max_connections: i64,
    /// Top statements by total time (at most 10); empty when `pg_stat_statements` is not
    /// loaded.
    pub top_statements: Vec<Statement>,
    /// False when `pg_stat_statements` is not loaded (a cluster started before the plan
    /// carried it: it loads on its next restart).
    pub statements_available: bool,
}

/// An instance's ring read back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Activity {
    /// Oldest first; the last hour at most.
    pub samples: Vec<Sample>,
    /// Oldest first; the last hour at most.
    pub stats: Vec<DatabaseStats>,
    /// False when the instance is not being sampled (stopped, parked, not running here).
    pub sampling: bool,
}

/// Counters and gauges of one instance for `/metrics`, cumulative since the sampler started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ActivitySummary {
    pub instance_id: String,
    /// The newest sample.
    pub latest: Option<Sample>,
    /// The newest 15 s facts.
    pub stats: Option<DatabaseStats>,
    /// Seconds sessions spent waiting, by `(lock_type, mode)`, cumulative.
    pub lock_wait_seconds: Vec<LockWaitTotal>,
}

/// Cumulative lock waiting of one `(lock_type, mode)`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LockWaitTotal {
    pub lock_type: String,
    pub mode: String,
    pub seconds: f64,
}

/// One session in the blocking tree.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LockNode {
    pub pid: i32,
    pub user: Option<String>,
    pub database: Option<String>,
    pub state: Option<String>,
    /// Age of its transaction, seconds.
    pub transaction_secs: Option<f64>,
    /// What it waits for, when it waits.
    pub waiting_for: Option<LockWait>,
    /// Normalised statement text, never parameters.
    pub query: Option<String>,
    /// The sessions waiting for this one.
    pub blocking: Vec<LockNode>,
}

/// The current blocking tree: roots are sessions that block others and wait for nobody.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Locks {
    pub at: DateTime<Utc>,
    pub roots: Vec<LockNode>,
}

/// Top statements by total time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Outliers {
    pub at: DateTime<Utc>,
    pub available: bool,
    pub statements: Vec<Statement>,
}

/// What the diagnose checks judge, read from the cluster on demand. The broker adds what it
/// knows itself (archive lag, last backup, last drill, follower lag).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DiagnoseFacts {
    pub at: DateTime<Utc>,
    pub connections: u32,
    pub max_connections: u32,
    pub sessions: SessionStates,
    /// The longest-running active queries, oldest first (at most 20, whatever their age: the
    /// checks apply the thresholds): `(pid, seconds, normalised text)`.
    pub long_queries: Vec<SessionFact>,
    /// The oldest open transactions, oldest first (at most 20).
    pub long_transactions: Vec<SessionFact>,
    /// The sessions idle in transaction the longest, oldest first (at most 20).
    pub idle_in_transaction: Vec<SessionFact>,
    pub locks: Locks,
    pub unused_indexes: Vec<IndexFact>,
    pub invalid_indexes: Vec<IndexFact>,
    pub bloat: Vec<BloatFact>,
    /// Heap blocks of user tables found in shared buffers, over all reads (None before any).
    pub cache_hit_ratio: Option<f64>,
    /// Index blocks of user indexes found in shared buffers, over all reads.
    pub index_hit_ratio: Option<f64>,
    /// Heap blocks read (hit or not) behind `cache_hit_ratio`: too few say nothing.
    pub cache_blocks: i64,
    /// Index blocks read (hit or not) behind `index_hit_ratio`.
    pub index_blocks: i64,
    pub sequences: Vec<SequenceFact>,
    pub wraparound_age: i64,
    pub autovacuum_freeze_max_age: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionFact {
    pub pid: i32,
    pub user: Option<String>,
    pub database: Option<String>,
    pub seconds: f64,
    pub query: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IndexFact {
    pub database: String,
    /// `schema.index`.
    pub index: String,
    /// `schema.table`.
    pub table: String,
    pub size_bytes: i64,
    pub scans: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BloatFact {
    pub database: String,
    /// `table` or `index`.
    pub kind: String,
    pub name: String,
    /// Estimated wasted bytes.
    pub waste_bytes: i64,
    /// Estimated bloat factor (1.0 = none).
    pub ratio: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SequenceFact {
    pub database: String,
    pub sequence: String,
    /// Share of the range used, 0–1.
    pub used: f64,
}

/// One diagnose check's verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    #[default]
    Green,
    Yellow,
    Red,
    /// Not judged (the fact could not be read; `details` says why).
    Skipped,
    #[serde(untagged)]
    Other(String),
}

/// One check of `cf db-diagnose`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Check {
    /// Stable key (`connections`, `long_queries`, …).
    pub name: String,
    /// Human title.
    pub title: String,
    pub verdict: Verdict,
    /// One line with the numbers.
    pub summary: String,
    /// The rows behind it (one line each), at most a few.
    pub details: Vec<String>,
    /// What to do, when not green.
    pub advice: Option<String>,
}

/// `GET /wayback/v1/instances/{id}/diagnose`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Diagnosis {
    pub instance_id: String,
    pub name: Option<String>,
    pub at: DateTime<Utc>,
    pub checks: Vec<Check>,
}
