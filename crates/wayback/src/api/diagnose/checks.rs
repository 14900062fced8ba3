//! The diagnose checks of what the cluster said (`DiagnoseFacts`), pure: facts and thresholds
//! in, [`Check`]s out. Each threshold is a named constant (documented in
//! `docs/wayback-api.md`) but the long-transaction one, an operator's setting
//! (`diagnose.long_transaction_secs`). Imports `wayback_api` only.

use wayback_api::activity::{Check, DiagnoseFacts, LockNode, SessionFact, Verdict};

/// Share of `max_connections` in use that is YELLOW, and RED.
pub const CONNECTIONS_YELLOW: f64 = 0.7;
pub const CONNECTIONS_RED: f64 = 0.9;
/// A query running this long is YELLOW; [`RED_FACTOR`] times as long, RED.
pub const LONG_QUERY_SECS: f64 = 60.0;
/// How much longer than its YELLOW threshold a query or transaction is RED.
pub const RED_FACTOR: f64 = 10.0;
/// A session waiting for a lock this long is YELLOW (shorter waits are normal traffic), and
/// RED this long.
pub const BLOCKED_YELLOW_SECS: f64 = 1.0;
pub const BLOCKED_RED_SECS: f64 = 60.0;
/// An index never scanned is worth dropping only from this size.
pub const UNUSED_INDEX_MIN_BYTES: i64 = 1 << 20;
/// A table whose dead tuples make it this many times its live size, wasting at least the
/// bytes, is YELLOW (RED).
pub const BLOAT_YELLOW_RATIO: f64 = 1.5;
pub const BLOAT_YELLOW_BYTES: i64 = 10 << 20;
pub const BLOAT_RED_RATIO: f64 = 4.0;
pub const BLOAT_RED_BYTES: i64 = 100 << 20;
/// A hit ratio below this is YELLOW (RED), once at least [`HIT_MIN_BLOCKS`] blocks were read.
pub const HIT_YELLOW: f64 = 0.99;
pub const HIT_RED: f64 = 0.95;
pub const HIT_MIN_BLOCKS: i64 = 10_000;
/// Share of a sequence's range used that is YELLOW (RED).
pub const SEQUENCE_YELLOW: f64 = 0.75;
pub const SEQUENCE_RED: f64 = 0.9;
/// Transaction ids since the oldest database was frozen, as a share of the 2^31 PostgreSQL
/// can tell apart, that is YELLOW (RED). It stops accepting writes near 1.
pub const WRAPAROUND_YELLOW: f64 = 0.25;
pub const WRAPAROUND_RED: f64 = 0.5;
const XID_SPACE: f64 = 2_147_483_648.0;
/// Rows shown under a check.
const DETAILS_SHOWN: usize = 5;

/// The operator's threshold (`diagnose.long_transaction_secs`).
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub long_transaction_secs: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            long_transaction_secs: 60.0,
        }
    }
}

pub(super) fn check(name: &str, title: &str, verdict: Verdict, summary: String) -> Check {
    Check {
        name: name.into(),
        title: title.into(),
        verdict,
        summary,
        details: Vec::new(),
        advice: None,
    }
}

pub(super) fn advise(mut c: Check, advice: &str) -> Check {
    if c.verdict != Verdict::Green {
        c.advice = Some(advice.into());
    }
    c
}

/// The worst of RED, YELLOW, GREEN for `value` against rising thresholds.
fn grade(value: f64, yellow: f64, red: f64) -> Verdict {
    if value >= red {
        Verdict::Red
    } else if value >= yellow {
        Verdict::Yellow
    } else {
        Verdict::Green
    }
}

/// The cluster's checks, in the order `cf db-diagnose` shows them.
pub fn cluster_checks(f: &DiagnoseFacts, t: Thresholds) -> Vec<Check> {
    vec![
        connections(f),
        sessions_check(
            "long_queries",
            "Long-running queries",
            &f.long_queries,
            LONG_QUERY_SECS,
            "running",
            "Find out why with EXPLAIN; cancel one with SELECT pg_cancel_backend(pid).",
        ),
        sessions_check(
            "long_transactions",
            "Long transactions",
            &f.long_transactions,
            t.long_transaction_secs,
            "open",
            "Commit sooner: a long transaction holds its locks and keeps VACUUM from removing \
             dead rows. End one with SELECT pg_terminate_backend(pid).",
        ),
        sessions_check(
            "idle_in_transaction",
            "Idle in transaction",
            &f.idle_in_transaction,
            t.long_transaction_secs,
            "idle in transaction",
            "An app opened a transaction and went away: commit or roll back (check its \
             connection pool), or end it with SELECT pg_terminate_backend(pid); \
             idle_in_transaction_session_timeout ends them for you.",
        ),
        blocking(f),
        unused_indexes(f),
        invalid_indexes(f),
        bloat(f),
        hit_rate(f),
        sequences(f),
        wraparound(f),
    ]
}

fn connections(f: &DiagnoseFacts) -> Check {
    let share = f.connections as f64 / f.max_connections.max(1) as f64;
    let c = check(
        "connections",
        "Connection count",
        grade(share, CONNECTIONS_YELLOW, CONNECTIONS_RED),
        format!(
            "{} of {} connections in use ({:.0} %): {} active, {} idle, {} idle in transaction.",
            f.connections,
            f.max_connections,
            share * 100.0,
            f.sessions.active,
            f.sessions.idle,
            f.sessions.idle_in_transaction + f.sessions.idle_in_transaction_aborted
        ),
    );
    advise(
        c,
        "Use a connection pool with fewer connections per app instance, close idle ones, or \
         move to a plan with more connections.",
    )
}

fn session_line(s: &SessionFact, verb: &str) -> String {
    format!(
        "pid {} ({}@{}) {verb} {:.0} s: {}",
        s.pid,
        s.user.as_deref().unwrap_or("?"),
        s.database.as_deref().unwrap_or("?"),
        s.seconds,
        s.query
            .as_deref()
            .unwrap_or("(statement text not available)")
    )
}

fn sessions_check(
    name: &str,
    title: &str,
    sessions: &[SessionFact],
    yellow: f64,
    verb: &str,
    advice: &str,
) -> Check {
    let over: Vec<&SessionFact> = sessions.iter().filter(|s| s.seconds >= yellow).collect();
    let longest = over.iter().map(|s| s.seconds).fold(0.0, f64::max);
    let verdict = match over.is_empty() {
        true => Verdict::Green,
        false => grade(longest, yellow, yellow * RED_FACTOR),
    };
    let summary = match over.len() {
        0 => format!("None {verb} {yellow:.0} s or longer."),
        n => format!("{n} {verb} {yellow:.0} s or longer; the longest {longest:.0} s."),
    };
    let mut c = check(name, title, verdict, summary);
    c.details = over
        .iter()
        .take(DETAILS_SHOWN)
        .map(|s| session_line(s, verb))
        .collect();
    advise(c, advice)
}

/// Every waiter in the tree, with its depth.
fn waiters(nodes: &[LockNode], out: &mut Vec<f64>) {
    for n in nodes {
        if let Some(w) = &n.waiting_for {
            out.push(w.waiting_secs);
        }
        waiters(&n.blocking, out);
    }
}

/// The blocking tree as indented lines (two spaces per level), for the check and `cf db-locks`.
pub fn tree_lines(nodes: &[LockNode], depth: usize, out: &mut Vec<String>) {
    for n in nodes {
        let pad = "  ".repeat(depth);
        let what = match &n.waiting_for {
            Some(w) => w.to_string(),
            None => format!(
                "blocks {} ({})",
                n.blocking.len(),
                n.state.as_deref().unwrap_or("?")
            ),
        };
        out.push(format!(
            "{pad}pid {} ({}@{}) {what}: {}",
            n.pid,
            n.user.as_deref().unwrap_or("?"),
            n.database.as_deref().unwrap_or("?"),
            n.query
                .as_deref()
                .unwrap_or("(statement text not available)")
        ));
        tree_lines(&n.blocking, depth + 1, out);
    }
}

fn blocking(f: &DiagnoseFacts) -> Check {
    let mut waits = Vec::new();
    waiters(&f.locks.roots, &mut waits);
    let longest = waits.iter().copied().fold(0.0, f64::max);
    let verdict = match waits.is_empty() {
        true => Verdict::Green,
        false => grade(longest, BLOCKED_YELLOW_SECS, BLOCKED_RED_SECS),
    };
    let summary = match waits.len() {
        0 => "No session waits for a lock.".to_string(),
        n => format!(
            "{n} session(s) wait for a lock held by {} blocker(s); the longest for {longest:.0} s.",
            f.locks.roots.len()
        ),
    };
    let mut c = check("blocking", "Blocking queries", verdict, summary);
    tree_lines(&f.locks.roots, 0, &mut c.details);
    advise(
        c,
        "The sessions at the top of the tree block the others: finish their transactions, or \
         end one with SELECT pg_terminate_backend(pid). `cf db-locks NAME` shows the tree.",
    )
}

fn unused_indexes(f: &DiagnoseFacts) -> Check {
    let big: Vec<_> = f
        .unused_indexes
        .iter()
        .filter(|i| i.size_bytes >= UNUSED_INDEX_MIN_BYTES)
        .collect();
    let bytes: i64 = big.iter().map(|i| i.size_bytes).sum();
    let verdict = match big.is_empty() {
        true => Verdict::Green,
        false => Verdict::Yellow,
    };
    let summary = match big.len() {
        0 => "No index of 1 MiB or more is unused.".to_string(),
        n => format!(
            "{n} index(es) never scanned since statistics were reset, {} in all.",
            size(bytes)
        ),
    };
    let mut c = check("unused_indexes", "Unused indexes", verdict, summary);
    c.details = big
        .iter()
        .take(DETAILS_SHOWN)
        .map(|i| {
            format!(
                "{}: {} on {} ({})",
                i.database,
                i.index,
                i.table,
                size(i.size_bytes)
            )
        })
        .collect();
    advise(
        c,
        "Each index slows every write to its table: drop one no query needs (DROP INDEX \
         CONCURRENTLY), after checking it is not used on a follower or by a monthly job.",
    )
}

fn invalid_indexes(f: &DiagnoseFacts) -> Check {
    let verdict = match f.invalid_indexes.is_empty() {
        true => Verdict::Green,
        false => Verdict::Red,
    };
    let summary = match f.invalid_indexes.len() {
        0 => "No invalid index.".to_string(),
        n => format!("{n} invalid index(es): written to, never used."),
    };
    let mut c = check("invalid_indexes", "Invalid indexes", verdict, summary);
    c.details = f
        .invalid_indexes
        .iter()
        .take(DETAILS_SHOWN)
        .map(|i| format!("{}: {} on {}", i.database, i.index, i.table))
        .collect();
    advise(
        c,
        "A CREATE INDEX CONCURRENTLY failed: drop the index and create it again (or REINDEX \
         INDEX CONCURRENTLY).",
    )
}

fn bloat(f: &DiagnoseFacts) -> Check {
    let judge = |b: &&wayback_api::activity::BloatFact| {
        if b.ratio >= BLOAT_RED_RATIO && b.waste_bytes >= BLOAT_RED_BYTES {
            Verdict::Red
        } else if b.ratio >= BLOAT_YELLOW_RATIO && b.waste_bytes >= BLOAT_YELLOW_BYTES {
            Verdict::Yellow
        } else {
            Verdict::Green
        }
    };
    let bad: Vec<_> = f
        .bloat
        .iter()
        .filter(|b| judge(b) != Verdict::Green)
        .collect();
    let verdict = match bad.iter().any(|b| judge(b) == Verdict::Red) {
        true => Verdict::Red,
        false if bad.is_empty() => Verdict::Green,
        false => Verdict::Yellow,
    };
    let waste: i64 = f.bloat.iter().map(|b| b.waste_bytes).sum();
    let summary = match bad.len() {
        0 => format!(
            "No table or index is bloated; a rewrite would give back about {} in all.",
            size(waste)
        ),
        n => format!(
            "{n} table(s) or index(es) bloated, about {} wasted.",
            size(waste)
        ),
    };
    let mut c = check("bloat", "Bloat", verdict, summary);
    c.details = bad
        .iter()
        .take(DETAILS_SHOWN)
        .map(|b| {
            format!(
                "{}: {} {} {:.1}× its packed size, about {} wasted",
                b.database,
                b.kind,
                b.name,
                b.ratio,
                size(b.waste_bytes)
            )
        })
        .collect();
    advise(
        c,
        "Run VACUUM (ANALYZE) on the tables named (it makes freed space reusable; VACUUM FULL \
         or pg_repack gives it back) and REINDEX INDEX CONCURRENTLY the indexes named; if bloat \
         returns, look for long transactions, which keep VACUUM from removing dead rows.",
    )
}

fn hit_rate(f: &DiagnoseFacts) -> Check {
    let judged = |ratio: Option<f64>, blocks: i64| match ratio {
        Some(r) if blocks >= HIT_MIN_BLOCKS => {
            let v = if r < HIT_RED {
                Verdict::Red
            } else if r < HIT_YELLOW {
                Verdict::Yellow
            } else {
                Verdict::Green
            };
            (v, format!("{:.2} %", r * 100.0))
        }
        _ => (Verdict::Green, "too few reads to judge".to_string()),
    };
    let (table_v, table) = judged(f.cache_hit_ratio, f.cache_blocks);
    let (index_v, index) = judged(f.index_hit_ratio, f.index_blocks);
    let verdict = worst([table_v, index_v]);
    let c = check(
        "hit_rate",
        "Cache and index hit rate",
        verdict,
        format!("Table reads from memory: {table}; index reads: {index}."),
    );
    advise(
        c,
        "The working set does not fit in shared buffers: move to a plan with more memory, or \
         look for queries that scan whole tables (`cf db-outliers NAME`).",
    )
}

fn sequences(f: &DiagnoseFacts) -> Check {
    let top = f.sequences.iter().map(|s| s.used).fold(0.0, f64::max);
    let over: Vec<_> = f
        .sequences
        .iter()
        .filter(|s| s.used >= SEQUENCE_YELLOW)
        .collect();
    let summary = match over.len() {
        0 => format!(
            "No sequence has used {:.0} % of its range.",
            SEQUENCE_YELLOW * 100.0
        ),
        n => format!(
            "{n} sequence(s) near the end of their range; the fullest at {:.1} %.",
            top * 100.0
        ),
    };
    let mut c = check(
        "sequences",
        "Sequences near exhaustion",
        grade(top, SEQUENCE_YELLOW, SEQUENCE_RED),
        summary,
    );
    c.details = over
        .iter()
        .take(DETAILS_SHOWN)
        .map(|s| {
            format!(
                "{}: {} {:.1} % used",
                s.database,
                s.sequence,
                s.used * 100.0
            )
        })
        .collect();
    advise(
        c,
        "Change the sequence and its column to bigint (ALTER SEQUENCE … AS bigint; ALTER TABLE \
         … ALTER COLUMN … TYPE bigint) before inserts start to fail.",
    )
}

fn wraparound(f: &DiagnoseFacts) -> Check {
    let share = f.wraparound_age.max(0) as f64 / XID_SPACE;
    let c = check(
        "wraparound",
        "Transaction ID wraparound",
        grade(share, WRAPAROUND_YELLOW, WRAPAROUND_RED),
        format!(
            "The oldest unfrozen transaction id is {} transactions old ({:.1} % of the limit; \
             autovacuum freezes from {}).",
            f.wraparound_age,
            share * 100.0,
            f.autovacuum_freeze_max_age
        ),
    );
    advise(
        c,
        "Autovacuum is not keeping up: end long transactions, then run VACUUM (FREEZE) on the \
         oldest tables of each database.",
    )
}

pub(super) fn worst(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
    let rank = |v: &Verdict| match v {
        Verdict::Red => 3,
        Verdict::Yellow => 2,
        Verdict::Green => 1,
        _ => 0,
    };
    verdicts
        .into_iter()
        .max_by_key(rank)
        .unwrap_or(Verdict::Green)
}

/// Bytes as people read them (binary units).
pub fn size(bytes: i64) -> String {
    let b = bytes.max(0) as f64;
    match b {
        b if b >= (1u64 << 30) as f64 => format!("{:.1} GiB", b / (1u64 << 30) as f64),
        b if b >= (1u64 << 20) as f64 => format!("{:.1} MiB", b / (1u64 << 20) as f64),
        b if b >= 1024.0 => format!("{:.1} KiB", b / 1024.0),
        b => format!("{b:.0} B"),
    }
}
