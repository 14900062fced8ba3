//! What a running cluster is doing, read on demand (issue 19): the blocking tree ([`locks`]),
//! `pg_stat_statements`' top statements ([`outliers`]) and the facts `cf db-diagnose` judges
//! ([`diagnose_facts`]). Filled into `wayback_api::activity` types; judging them is the
//! broker's (`api::diagnose`), not ours.
//!
//! The rules, each kept in the code:
//!
//! 1. **Read-only, bounded.** One superuser session (unix socket) per call, read-only
//!    (`default_transaction_read_only`), with a `statement_timeout` and a `lock_timeout`: a
//!    user's `ACCESS EXCLUSIVE` lock makes a size read fail fast, never wait.
//! 2. **No parameters.** Statement text comes only from `pg_stat_statements` by `query_id`
//!    (normalised: `$1` for every constant), never from `pg_stat_activity.query`. Without the
//!    extension (not preloaded, or not created in the database we read) there is no text and
//!    `Outliers::available` is false.
//! 3. **Clients only.** Client backends, without the broker's own superuser sessions.
//! 4. **Per-database facts** (indexes, bloat, sequences, hit ratios) need a session in each
//!    database: at most [`DATABASES_READ`] non-template databases, one at a time; a database
//!    that refuses (dropped meanwhile, lock timeout) is left out, not an error.
//!
//! Imports only `pg` siblings and `wayback_api`.

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, Row};
use std::collections::BTreeMap;
use wayback_api::activity::{
    DiagnoseFacts, LockNode, LockWait, Locks, Outliers, SessionFact, SessionStates, Statement,
};

use super::inspect_db::{self as per_db, open_read_only};
pub use super::inspect_db::{DATABASES_READ, ROWS_KEPT};
use super::sql::sql_err;
use super::{PgError, SUPERUSER};

/// Top statements shown by `cf db-outliers`.
pub const OUTLIERS_KEPT: i64 = 10;
/// Where a cluster-wide session goes: the admin database every cluster has, where the
/// sampler creates `pg_stat_statements` (a template copy has no `postgres` database).
const CLUSTER_DATABASE: &str = super::sql::ADMIN_DATABASE;

/// The current blocking tree.
pub async fn locks(opts: &PgConnectOptions) -> Result<Locks, PgError> {
    let mut conn = open_cluster(opts).await?;
    let texts = StatementTexts::read(&mut conn).await;
    let tree = blocking_tree(opts, &mut conn, &texts).await;
    let _ = conn.close().await;
    tree
}

/// `pg_stat_statements`' top statements by total execution time.
pub async fn outliers(opts: &PgConnectOptions) -> Result<Outliers, PgError> {
    let mut conn = open_cluster(opts).await?;
    let statements = top_statements(&mut conn, OUTLIERS_KEPT).await;
    let _ = conn.close().await;
    Ok(Outliers {
        at: chrono::Utc::now(),
        available: statements.is_some(),
        statements: statements.unwrap_or_default(),
    })
}

/// Everything the diagnose checks judge, unjudged: the oldest sessions of each kind whatever
/// their age, every index, sequence and table the lists keep (the checks apply thresholds).
pub async fn diagnose_facts(opts: &PgConnectOptions) -> Result<DiagnoseFacts, PgError> {
    let mut conn = open_cluster(opts).await?;
    let texts = StatementTexts::read(&mut conn).await;
    let mut facts = DiagnoseFacts {
        at: chrono::Utc::now(),
        ..DiagnoseFacts::default()
    };
    let row = sqlx::query(
        "SELECT current_setting('max_connections')::int4, \
                current_setting('autovacuum_freeze_max_age')::int8, \
                (SELECT max(age(datfrozenxid))::int8 FROM pg_database)",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(sql_err("read the cluster's settings"))?;
    facts.max_connections = row.get::<i32, _>(0).max(0) as u32;
    facts.autovacuum_freeze_max_age = row.get(1);
    facts.wraparound_age = row.get::<Option<i64>, _>(2).unwrap_or(0);
    facts.sessions = session_states(&mut conn).await?;
    facts.connections = facts.sessions.total();
    facts.long_queries = oldest(&mut conn, &texts, "state = 'active'", "query_start").await?;
    facts.long_transactions = oldest(&mut conn, &texts, "true", "xact_start").await?;
    facts.idle_in_transaction = oldest(
        &mut conn,
        &texts,
        "state LIKE 'idle in transaction%'",
        "state_change",
    )
    .await?;
    facts.locks = blocking_tree(opts, &mut conn, &texts).await?;
    let databases: Vec<String> = sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate \
          ORDER BY datname LIMIT $1",
    )
    .bind(DATABASES_READ as i64)
    .fetch_all(&mut conn)
    .await
    .map_err(sql_err("list the databases"))?;
    let _ = conn.close().await;
    per_db::fill(opts, &databases, &mut facts).await;
    Ok(facts)
}

/// A read-only session in the cluster-wide database.
async fn open_cluster(opts: &PgConnectOptions) -> Result<PgConnection, PgError> {
    open_read_only(opts, CLUSTER_DATABASE).await
}

/// The client backends' filter: no walsender, no background worker, no broker session, not us.
const CLIENTS: &str = "backend_type = 'client backend' AND pid <> pg_backend_pid() \
                       AND usename IS DISTINCT FROM $1";

async fn session_states(conn: &mut PgConnection) -> Result<SessionStates, PgError> {
    let rows = sqlx::query(&format!(
        "SELECT coalesce(state, 'disabled'), count(*)::int4 FROM pg_stat_activity \
          WHERE {CLIENTS} GROUP BY 1"
    ))
    .bind(SUPERUSER)
    .fetch_all(&mut *conn)
    .await
    .map_err(sql_err("count the sessions by state"))?;
    let mut s = SessionStates::default();
    for row in rows {
        let n = row.get::<i32, _>(1).max(0) as u32;
        match row.get::<String, _>(0).as_str() {
            "active" => s.active += n,
            "idle" => s.idle += n,
            "idle in transaction" => s.idle_in_transaction += n,
            "idle in transaction (aborted)" => s.idle_in_transaction_aborted += n,
            "fastpath function call" => s.fastpath_function_call += n,
            _ => s.disabled += n,
        }
    }
    Ok(s)
}

/// The [`ROWS_KEPT`] client sessions matching `filter` with the oldest `since` column.
async fn oldest(
    conn: &mut PgConnection,
    texts: &StatementTexts,
    filter: &str,
    since: &str,
) -> Result<Vec<SessionFact>, PgError> {
    let rows = sqlx::query(&format!(
        "SELECT pid, usename::text, datname::text, \
                extract(epoch FROM clock_timestamp() - {since})::float8 AS secs, query_id \
           FROM pg_stat_activity WHERE {CLIENTS} AND {since} IS NOT NULL AND {filter} \
          ORDER BY secs DESC LIMIT {ROWS_KEPT}"
    ))
    .bind(SUPERUSER)
    .fetch_all(&mut *conn)
    .await
    .map_err(sql_err("read the oldest sessions"))?;
    Ok(rows
        .iter()
        .map(|r| SessionFact {
            pid: r.get(0),
            user: r.get(1),
            database: r.get(2),
            seconds: r.get::<Option<f64>, _>(3).unwrap_or(0.0).max(0.0),
            query: texts.text(r.get(4)),
        })
        .collect())
}

/// `pg_stat_statements`' normalised texts by `queryid`; empty when it cannot be read.
struct StatementTexts(Option<BTreeMap<i64, String>>);

impl StatementTexts {
    async fn read(conn: &mut PgConnection) -> Self {
        let rows =
            sqlx::query("SELECT DISTINCT ON (queryid) queryid, query FROM pg_stat_statements")
                .fetch_all(&mut *conn)
                .await;
        Self(rows.ok().map(|rows| {
            rows.iter()
                .filter_map(|r| Some((r.get::<Option<i64>, _>(0)?, r.get::<Option<String>, _>(1)?)))
                .collect()
        }))
    }

    fn text(&self, query_id: Option<i64>) -> Option<String> {
        self.0.as_ref()?.get(&query_id?).cloned()
    }
}

/// Top `limit` statements by total time; None when `pg_stat_statements` cannot be read here.
async fn top_statements(conn: &mut PgConnection, limit: i64) -> Option<Vec<Statement>> {
    let rows = sqlx::query(
        "WITH s AS (SELECT queryid, query, dbid, userid, calls, total_exec_time, rows \
                      FROM pg_stat_statements), \
              t AS (SELECT sum(total_exec_time) AS all_ms FROM s) \
         SELECT s.queryid, s.query, d.datname::text, r.rolname::text, s.calls, \
                s.total_exec_time, s.rows, \
                CASE WHEN t.all_ms > 0 THEN s.total_exec_time / t.all_ms ELSE 0 END \
           FROM s CROSS JOIN t \
           LEFT JOIN pg_database d ON d.oid = s.dbid LEFT JOIN pg_roles r ON r.oid = s.userid \
          WHERE r.rolname IS DISTINCT FROM $1 \
          ORDER BY s.total_exec_time DESC LIMIT $2",
    )
    .bind(SUPERUSER)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| tracing::debug!(error = %e, "pg_stat_statements cannot be read"))
    .ok()?;
    Some(
        rows.iter()
            .map(|r| {
                let calls: i64 = r.get(4);
                let total: f64 = r.get(5);
                Statement {
                    query_id: r.get::<Option<i64>, _>(0).unwrap_or(0),
                    query: r.get::<Option<String>, _>(1).unwrap_or_default(),
                    database: r.get(2),
                    user: r.get(3),
                    calls,
                    total_exec_ms: total,
                    mean_exec_ms: if calls > 0 { total / calls as f64 } else { 0.0 },
                    rows: r.get(6),
                    share: r.get(7),
                }
            })
            .collect(),
    )
}

/// One client backend of the tree, before it is linked.
struct Backend {
    node: LockNode,
    blocked_by: Vec<i32>,
}

/// Every backend that waits for another or is waited for, linked into trees whose roots wait
/// for nobody (in a deadlock cycle, which PostgreSQL breaks within `deadlock_timeout`, each
/// member waits: the cycle has no root and is shown from its lowest pid).
async fn blocking_tree(
    opts: &PgConnectOptions,
    conn: &mut PgConnection,
    texts: &StatementTexts,
) -> Result<Locks, PgError> {
    let rows = sqlx::query(
        "SELECT a.pid, pg_blocking_pids(a.pid), a.usename::text, a.datname::text, a.state, \
                extract(epoch FROM clock_timestamp() - a.xact_start)::float8, a.query_id, \
                w.locktype, w.mode, \
                extract(epoch FROM clock_timestamp() - w.waitstart)::float8, \
                w.database, w.relation, \
                (SELECT array_agg(l.relation) FROM pg_locks l \
                  WHERE l.pid = a.pid AND l.granted AND l.locktype = 'relation' \
                    AND l.database = a.datid) \
           FROM pg_stat_activity a \
           LEFT JOIN LATERAL (SELECT * FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted \
                               LIMIT 1) w ON true \
          WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(sql_err("read the blocking tree"))?;
    let mut backends = BTreeMap::new();
    let mut wanted: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut relation_of: BTreeMap<i32, (Option<String>, Vec<u32>)> = BTreeMap::new();
    for r in &rows {
        let pid: i32 = r.get(0);
        let database: Option<String> = r.get(3);
        let waiting_for = r.get::<Option<String>, _>(7).map(|lock_type| LockWait {
            pid,
            blocked_by: r.get(1),
            lock_type,
            mode: r.get::<Option<String>, _>(8).unwrap_or_default(),
            relation: None,
            database: database.clone(),
            user: r.get(2),
            waiting_secs: r.get::<Option<f64>, _>(9).unwrap_or(0.0).max(0.0),
            query: texts.text(r.get(6)),
        });
        if waiting_for.is_some() {
            // The relation the lock names, else the tables the waiter already holds.
            let named: Option<i64> = r
                .get::<Option<sqlx::postgres::types::Oid>, _>(11)
                .map(|o| i64::from(o.0));
            let held: Vec<u32> = r
                .get::<Option<Vec<sqlx::postgres::types::Oid>>, _>(12)
                .unwrap_or_default()
                .into_iter()
                .map(|o| o.0)
                .collect();
            let oids = match named {
                Some(o) => vec![o as u32],
                None => held,
            };
            if let Some(db) = &database {
                wanted.entry(db.clone()).or_default().extend(&oids);
            }
            relation_of.insert(pid, (database.clone(), oids));
        }
        backends.insert(
            pid,
            Backend {
                blocked_by: r.get(1),
                node: LockNode {
                    pid,
                    user: r.get(2),
                    database,
                    state: r.get(4),
                    transaction_secs: r.get::<Option<f64>, _>(5).map(|s| s.max(0.0)),
                    waiting_for,
                    query: texts.text(r.get(6)),
                    blocking: Vec::new(),
                },
            },
        );
    }
    let names = per_db::table_names(opts, &wanted).await;
    for (pid, (db, oids)) in relation_of {
        let name = db.and_then(|db| {
            let known = names.get(&db)?;
            oids.iter().find_map(|o| known.get(o).cloned())
        });
        if let Some(w) = backends
            .get_mut(&pid)
            .and_then(|b| b.node.waiting_for.as_mut())
        {
            w.relation = name;
        }
    }
    Ok(Locks {
        at: chrono::Utc::now(),
        roots: link(backends),
    })
}

/// The trees of `backends`: each waiter under every session it waits for that is itself in
/// the tree... once, under the first (lowest pid) blocker, so that the tree stays a tree.
fn link(mut backends: BTreeMap<i32, Backend>) -> Vec<LockNode> {
    let blockers: std::collections::BTreeSet<i32> = backends
        .values()
        .flat_map(|b| b.blocked_by.iter().copied())
        .collect();
    // Only sessions in a blocking relation belong to the tree.
    backends.retain(|pid, b| !b.blocked_by.is_empty() || blockers.contains(pid));
    let parent: BTreeMap<i32, i32> = backends
        .iter()
        .filter_map(|(pid, b)| {
            let p = b
                .blocked_by
                .iter()
                .copied()
                .filter(|p| backends.contains_key(p))
                .min()?;
            Some((*pid, p))
        })
        .collect();
    let mut roots: Vec<i32> = backends
        .keys()
        .copied()
        .filter(|pid| !parent.contains_key(pid))
        .collect();
    // A cycle has no root: show it from its lowest pid not yet placed.
    let placed = |roots: &[i32]| -> std::collections::BTreeSet<i32> {
        let mut seen = std::collections::BTreeSet::new();
        let mut stack = roots.to_vec();
        while let Some(p) = stack.pop() {
            if seen.insert(p) {
                stack.extend(parent.iter().filter(|(_, q)| **q == p).map(|(c, _)| *c));
            }
        }
        seen
    };
    loop {
        let seen = placed(&roots);
        match backends.keys().find(|p| !seen.contains(p)) {
            Some(p) => roots.push(*p),
            None => break,
        }
    }
    let mut nodes: BTreeMap<i32, LockNode> =
        backends.into_iter().map(|(p, b)| (p, b.node)).collect();
    fn build(
        pid: i32,
        nodes: &mut BTreeMap<i32, LockNode>,
        parent: &BTreeMap<i32, i32>,
        roots: &[i32],
    ) -> Option<LockNode> {
        let mut node = nodes.remove(&pid)?;
        let children: Vec<i32> = parent
            .iter()
            .filter(|(c, p)| **p == pid && !roots.contains(c))
            .map(|(c, _)| *c)
            .collect();
        node.blocking = children
            .into_iter()
            .filter_map(|c| build(c, nodes, parent, roots))
            .collect();
        Some(node)
    }
    let order = roots.clone();
    order
        .into_iter()
        .filter_map(|r| build(r, &mut nodes, &parent, &roots))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(pid: i32, blocked_by: &[i32]) -> (i32, Backend) {
        (
            pid,
            Backend {
                blocked_by: blocked_by.to_vec(),
                node: LockNode {
                    pid,
                    ..LockNode::default()
                },
            },
        )
    }

    fn shape(nodes: &[LockNode]) -> String {
        nodes
            .iter()
            .map(|n| format!("{}[{}]", n.pid, shape(&n.blocking)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn the_tree_has_blockers_that_wait_for_nobody_as_roots() {
        let b = BTreeMap::from([
            backend(1, &[]),
            backend(2, &[1]),
            backend(3, &[2]),
            backend(4, &[1, 2]),
            backend(5, &[]),
        ]);
        assert_eq!(shape(&link(b)), "1[2[3[]] 4[]]");
    }

    #[test]
    fn a_cycle_is_shown_once_from_its_lowest_pid() {
        let b = BTreeMap::from([backend(7, &[8]), backend(8, &[7]), backend(9, &[8])]);
        assert_eq!(shape(&link(b)), "7[8[9[]]]");
    }
}
