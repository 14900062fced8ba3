//! What a running cluster is doing (issue 19): the SQL of the sampler's 1 s sample and 15 s
//! facts, and the parsing of their answers into [`wayback_api::activity`]'s types. No
//! connection is made here: the runtime owns the sampler's session and hands it in.
//!
//! The rules, each kept in the code:
//!
//! 1. **The cheap path first** ([`census`]): PostgreSQL writes each client backend's activity
//!    into its process title (`idle`, `idle in transaction`, `SELECT`, … and ` waiting` while
//!    it waits for a lock). When no client (the superuser's sessions left out) does anything
//!    but `idle`, the sample is the titles' count and no SQL runs at all.
//! 2. **One statement per second otherwise** ([`SAMPLE`]): states, the oldest open transaction,
//!    the oldest `idle in transaction`, and every waiter with `pg_blocking_pids()`, its
//!    ungranted lock and the relations it holds — as JSON text, parsed here.
//! 3. **Never a parameter**: statement text comes only from `pg_stat_statements` (its
//!    normalised text, `$1` for every constant) by `query_id`; `pg_stat_activity.query` is
//!    never read. `pg_stat_statements` has a statement once it finished once, so a waiter
//!    whose statement never finished before shows no text (nor one whose session reports no
//!    `query_id`, as PostgreSQL 15 may for the extended protocol). Utility statements are not tracked (`pg_stat_statements.track_utility = off`
//!    in [`super::conf`]'s defaults): PostgreSQL 15 keeps their text verbatim, and an
//!    `ALTER ROLE … PASSWORD '…'` must not show.
//! 4. **Our own sessions are not clients**: sessions of the superuser are left out of every
//!    count, and the sampler's session stops `pg_stat_statements` tracking for itself.
//! 5. **Relations by name**: `regclass` resolves only in the session's database, and clients'
//!    tables are in theirs, so waiters carry relation oids and [`relation_names`] is asked in
//!    the waiter's database; [`pick_relation`] prefers the ungranted lock's relation, then a
//!    tuple lock's, then a table the waiter holds.
//!
//! Imports only `pg` siblings.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::{PgConnection, Row};
use wayback_api::activity::{DatabaseStats, LockWait, Sample, SessionStates, Statement};

use super::sql::{exec, sql_err};
use super::{PgError, SUPERUSER};

/// `application_name` of the sampler's session.
pub const SAMPLER_APP: &str = "wayback-sampler";

/// The extension and library that give statement text.
pub const STATEMENTS: &str = "pg_stat_statements";

/// How many statements the 15 s facts keep.
pub const TOP_STATEMENTS: i64 = 10;

/// What the process titles of a cluster say about its clients (rule 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    /// Clients by state, as far as titles tell (a busy one counts as active).
    pub sessions: SessionStates,
    /// A client is active, in a transaction, waiting, or its title says nothing
    /// (`update_process_title = off`): the SQL sample is needed.
    pub busy: bool,
}

/// Reads the titles of a cluster's server processes (rule 1).
pub fn census<'a>(titles: impl IntoIterator<Item = &'a str>, exclude: &[&str]) -> Census {
    let mut c = Census::default();
    for title in titles {
        let Some((user, activity)) = super::sessions::client_activity(title) else {
            continue;
        };
        if exclude.contains(&user) {
            continue;
        }
        match activity {
            "idle" => c.sessions.idle += 1,
            "idle in transaction" => {
                c.sessions.idle_in_transaction += 1;
                c.busy = true;
            }
            "idle in transaction (aborted)" => {
                c.sessions.idle_in_transaction_aborted += 1;
                c.busy = true;
            }
            _ => {
                c.sessions.active += 1;
                c.busy = true;
            }
        }
    }
    c
}

/// Prepares the sampler's fresh session: no statement or lock waits longer than a sample,
/// none of its own statements in `pg_stat_statements`. A cluster gets the extension with its
/// admin database ([`sql::ADMIN_EXTENSIONS`](super::sql::ADMIN_EXTENSIONS)), so on every cluster
/// made since, the `CREATE … IF NOT EXISTS` here writes nothing; only a cluster made before the
/// extension was part of the template gets it here, once, when the library is loaded (a commit
/// of the sampler's, which then ends that cluster's restore window until the user's next).
/// Returns whether statement text can be read: false on a cluster started before its
/// configuration loaded the library (until its next restart), or on a standby where the
/// extension was never created.
pub async fn prepare_session(conn: &mut PgConnection) -> Result<bool, PgError> {
    exec(
        conn,
        "SET statement_timeout = '2s'; SET lock_timeout = '1s'; \
         SET pg_stat_statements.track = 'none'",
        "prepare the sampler's session",
    )
    .await?;
    let loaded: bool = sqlx::query_scalar(
        "SELECT $1 = ANY (string_to_array(replace(current_setting('shared_preload_libraries'), \
         ' ', ''), ','))",
    )
    .bind(STATEMENTS)
    .fetch_one(&mut *conn)
    .await
    .map_err(sql_err("read shared_preload_libraries"))?;
    if !loaded {
        return Ok(false);
    }
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut *conn)
        .await
        .map_err(sql_err("ask whether the cluster is a standby"))?;
    if !in_recovery {
        exec(
            conn,
            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
            "create the pg_stat_statements extension in the admin database",
        )
        .await?;
    }
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = $1)")
        .bind(STATEMENTS)
        .fetch_one(&mut *conn)
        .await
        .map_err(sql_err("look for the pg_stat_statements extension"))
}

/// The 1 s sample (rule 2): one row of four columns. `$1` is the superuser, left out.
const SAMPLE: &str = "\
WITH a AS ( \
  SELECT pid, state, xact_start, state_change, query_id, datname, usename \
    FROM pg_stat_activity \
   WHERE backend_type = 'client backend' AND usename IS DISTINCT FROM $1 \
     AND pid <> pg_backend_pid()), \
w AS ( \
  SELECT a.pid, a.datname, a.usename, a.query_id, l.locktype, l.mode, l.relation, l.waitstart \
    FROM a JOIN pg_locks l ON l.pid = a.pid AND NOT l.granted) \
SELECT \
  (SELECT coalesce(json_object_agg(coalesce(state, ''), n), '{}') \
     FROM (SELECT state, count(*) AS n FROM a GROUP BY state) s)::text, \
  extract(epoch FROM now() - (SELECT min(xact_start) FROM a))::float8, \
  extract(epoch FROM now() - (SELECT min(state_change) FROM a \
                               WHERE state LIKE 'idle in transaction%'))::float8, \
  (SELECT coalesce(json_agg(json_build_object( \
      'pid', w.pid, 'blocked_by', pg_blocking_pids(w.pid), 'lock_type', w.locktype, \
      'mode', w.mode, 'relation', w.relation::int8, 'database', w.datname, 'user', w.usename, \
      'waiting_secs', coalesce(extract(epoch FROM now() - w.waitstart)::float8, 0), \
      'held', (SELECT array_agg(g.relation::int8 ORDER BY g.locktype = 'tuple' DESC, g.relation) \
                 FROM pg_locks g \
                WHERE g.pid = w.pid AND g.granted AND g.relation IS NOT NULL), \
      'query', QUERY_TEXT) ORDER BY w.pid), '[]') FROM w)::text";

/// How a waiter's statement text is found: from `pg_stat_statements` when it can be read.
fn sample_sql(statements: bool) -> String {
    let text = if statements {
        "(SELECT s.query FROM pg_stat_statements s WHERE s.queryid = w.query_id LIMIT 1)"
    } else {
        "NULL::text"
    };
    SAMPLE.replace("QUERY_TEXT", text)
}

/// One waiter as the sample's JSON has it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RawWait {
    pub pid: i32,
    pub blocked_by: Vec<i32>,
    pub lock_type: String,
    pub mode: String,
    /// The ungranted lock's relation oid.
    pub relation: Option<i64>,
    pub database: Option<String>,
    pub user: Option<String>,
    pub waiting_secs: f64,
    /// Relation oids of the waiter's granted locks, tuple locks first.
    pub held: Option<Vec<i64>>,
    pub query: Option<String>,
}

/// A sample whose waiters' relations are still oids.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawSample {
    pub sample: Sample,
    pub waits: Vec<RawWait>,
}

/// Parses the sample's four columns (pure).
pub fn parse_sample(
    at: DateTime<Utc>,
    states: &str,
    longest_transaction: Option<f64>,
    longest_idle_in_transaction: Option<f64>,
    waits: &str,
) -> Result<RawSample, String> {
    let states: HashMap<String, u32> =
        serde_json::from_str(states).map_err(|e| format!("states {states:?}: {e}"))?;
    let mut sessions = SessionStates::default();
    for (state, n) in states {
        match state.as_str() {
            "active" => sessions.active += n,
            "idle" => sessions.idle += n,
            "idle in transaction" => sessions.idle_in_transaction += n,
            "idle in transaction (aborted)" => sessions.idle_in_transaction_aborted += n,
            "fastpath function call" => sessions.fastpath_function_call += n,
            "disabled" => sessions.disabled += n,
            // A backend still starting has no state yet: it is doing something.
            _ => sessions.active += n,
        }
    }
    let waits: Vec<RawWait> =
        serde_json::from_str(waits).map_err(|e| format!("lock waits: {e}"))?;
    let sample = Sample {
        at,
        sessions,
        longest_transaction_secs: longest_transaction.unwrap_or(0.0).max(0.0),
        longest_idle_in_transaction_secs: longest_idle_in_transaction.unwrap_or(0.0).max(0.0),
        lock_waiters: waits.len() as u32,
        waits: Vec::new(),
    };
    Ok(RawSample { sample, waits })
}

/// Takes the 1 s sample over the sampler's session (rule 2).
pub async fn read_sample(
    conn: &mut PgConnection,
    statements: bool,
    at: DateTime<Utc>,
) -> Result<RawSample, PgError> {
    let row = sqlx::query(&sample_sql(statements))
        .bind(SUPERUSER)
        .fetch_one(&mut *conn)
        .await
        .map_err(sql_err("sample the cluster's sessions and lock waits"))?;
    let get = |e| sql_err("read the sample")(e);
    let states: String = row.try_get(0).map_err(get)?;
    let longest: Option<f64> = row.try_get(1).map_err(get)?;
    let idle_tx: Option<f64> = row.try_get(2).map_err(get)?;
    let waits: String = row.try_get(3).map_err(get)?;
    parse_sample(at, &states, longest, idle_tx, &waits)
        .map_err(|e| PgError::Setup(format!("the cluster's sample is not understood: {e}")))
}

/// A relation's `schema.name` and `relkind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationName {
    pub name: String,
    pub kind: char,
}

/// The names of `oids` in the database the session is connected to (rule 5).
pub async fn relation_names(
    conn: &mut PgConnection,
    oids: &[i64],
) -> Result<HashMap<i64, RelationName>, PgError> {
    let rows = sqlx::query(
        "SELECT c.oid::int8, format('%s.%s', n.nspname, c.relname), c.relkind::text \
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
          WHERE c.oid::int8 = ANY ($1)",
    )
    .bind(oids)
    .fetch_all(&mut *conn)
    .await
    .map_err(sql_err("name the relations lock waiters hold"))?;
    let mut names = HashMap::new();
    for row in rows {
        let get = |e| sql_err("read a relation's name")(e);
        let oid: i64 = row.try_get(0).map_err(get)?;
        let name: String = row.try_get(1).map_err(get)?;
        let kind: String = row.try_get(2).map_err(get)?;
        let kind = kind.chars().next().unwrap_or('?');
        names.insert(oid, RelationName { name, kind });
    }
    Ok(names)
}

/// Every relation oid a waiter names (its lock's, then those it holds).
pub fn relation_oids(wait: &RawWait) -> Vec<i64> {
    wait.relation
        .into_iter()
        .chain(wait.held.iter().flatten().copied())
        .collect()
}

/// The relation a waiter waits on (rule 5): its ungranted lock's, else the first table (a
/// tuple lock's first) it holds, else the first relation it holds that has a name.
pub fn pick_relation(wait: &RawWait, names: &HashMap<i64, RelationName>) -> Option<String> {
    if let Some(oid) = wait.relation {
        return Some(names.get(&oid).map_or(oid.to_string(), |n| n.name.clone()));
    }
    let held: Vec<&RelationName> = wait
        .held
        .iter()
        .flatten()
        .filter_map(|oid| names.get(oid))
        .collect();
    held.iter()
        .find(|n| matches!(n.kind, 'r' | 'p' | 'm' | 't'))
        .or(held.first())
        .map(|n| n.name.clone())
}

/// The finished waiter.
pub fn lock_wait(wait: RawWait, relation: Option<String>) -> LockWait {
    LockWait {
        pid: wait.pid,
        blocked_by: wait.blocked_by,
        lock_type: wait.lock_type,
        mode: wait.mode,
        relation,
        database: wait.database,
        user: wait.user,
        waiting_secs: wait.waiting_secs.max(0.0),
        query: wait.query,
    }
}

/// The 15 s counters, size, wraparound age and `max_connections` (one row).
const STATS: &str = "\
SELECT coalesce(sum(xact_commit), 0)::int8, coalesce(sum(xact_rollback), 0)::int8, \
       coalesce(sum(blks_read), 0)::int8, coalesce(sum(blks_hit), 0)::int8, \
       coalesce(sum(tup_returned), 0)::int8, coalesce(sum(tup_fetched), 0)::int8, \
       coalesce(sum(tup_inserted), 0)::int8, coalesce(sum(tup_updated), 0)::int8, \
       coalesce(sum(tup_deleted), 0)::int8, coalesce(sum(conflicts), 0)::int8, \
       coalesce(sum(temp_files), 0)::int8, coalesce(sum(temp_bytes), 0)::int8, \
       coalesce(sum(deadlocks), 0)::int8, \
       (SELECT coalesce(sum(pg_database_size(oid)), 0)::int8 FROM pg_database \
         WHERE datallowconn AND NOT datistemplate), \
       (SELECT coalesce(max(age(datfrozenxid)), 0)::int8 FROM pg_database), \
       current_setting('max_connections')::int8 \
  FROM pg_stat_database";

/// The top statements by total time, the superuser's left out; `share` of all the others.
const TOP: &str = "\
SELECT s.queryid, s.query, d.datname::text, r.rolname::text, s.calls, s.total_exec_time, \
       s.mean_exec_time, s.rows, \
       coalesce(s.total_exec_time / nullif(sum(s.total_exec_time) OVER (), 0), 0)::float8 \
  FROM pg_stat_statements s \
  LEFT JOIN pg_database d ON d.oid = s.dbid \
  LEFT JOIN pg_roles r ON r.oid = s.userid \
 WHERE r.rolname IS DISTINCT FROM $1 \
 ORDER BY s.total_exec_time DESC \
 LIMIT $2";

/// `blks_hit / (blks_hit + blks_read)`; None before the first block was read.
pub fn hit_ratio(hit: i64, read: i64) -> Option<f64> {
    let total = hit.saturating_add(read);
    (total > 0).then(|| hit as f64 / total as f64)
}

/// Reads the 15 s facts over the sampler's session.
pub async fn read_stats(
    conn: &mut PgConnection,
    statements: bool,
    at: DateTime<Utc>,
) -> Result<DatabaseStats, PgError> {
    let row = sqlx::query(STATS)
        .fetch_one(&mut *conn)
        .await
        .map_err(sql_err("read the cluster's database statistics"))?;
    let n = |i: usize| -> Result<i64, PgError> {
        row.try_get::<i64, _>(i)
            .map_err(sql_err("read the database statistics"))
    };
    let mut stats = DatabaseStats {
        at,
        xact_commit: n(0)?,
        xact_rollback: n(1)?,
        blks_read: n(2)?,
        blks_hit: n(3)?,
        tup_returned: n(4)?,
        tup_fetched: n(5)?,
        tup_inserted: n(6)?,
        tup_updated: n(7)?,
        tup_deleted: n(8)?,
        conflicts: n(9)?,
        temp_files: n(10)?,
        temp_bytes: n(11)?,
        deadlocks: n(12)?,
        cache_hit_ratio: None,
        database_size_bytes: n(13)?,
        wraparound_age: n(14)?,
        max_connections: n(15)?,
        top_statements: Vec::new(),
        statements_available: statements,
    };
    stats.cache_hit_ratio = hit_ratio(stats.blks_hit, stats.blks_read);
    if statements {
        stats.top_statements = top_statements(conn).await?;
    }
    Ok(stats)
}

/// `pg_stat_statements`' top statements by total time (normalised text only).
pub async fn top_statements(conn: &mut PgConnection) -> Result<Vec<Statement>, PgError> {
    let rows = sqlx::query(TOP)
        .bind(SUPERUSER)
        .bind(TOP_STATEMENTS)
        .fetch_all(&mut *conn)
        .await
        .map_err(sql_err("read pg_stat_statements"))?;
    rows.iter()
        .map(|row| {
            let get = |e| sql_err("read a statement of pg_stat_statements")(e);
            Ok(Statement {
                query_id: row.try_get(0).map_err(get)?,
                query: row.try_get(1).map_err(get)?,
                database: row.try_get(2).map_err(get)?,
                user: row.try_get(3).map_err(get)?,
                calls: row.try_get(4).map_err(get)?,
                total_exec_ms: row.try_get(5).map_err(get)?,
                mean_exec_ms: row.try_get(6).map_err(get)?,
                rows: row.try_get(7).map_err(get)?,
                share: row.try_get(8).map_err(get)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &[&str] = &[SUPERUSER];

    #[test]
    fn idle_clients_need_no_sql_and_anything_else_does() {
        let idle = [
            "postgres: i-1: checkpointer ",
            "postgres: i-1: app_user app [local] idle",
            "postgres: i-1: app_user app 127.0.0.1(5) idle",
            "postgres: i-1: wayback_admin template1 [local] SELECT",
            "postgres: i-1: walsender wb 10.0.0.2(5000) streaming 0/3",
        ];
        let c = census(idle, ADMIN);
        assert!(!c.busy);
        assert_eq!(c.sessions.idle, 2);
        assert_eq!(c.sessions.total(), 2);
        for busy in [
            "postgres: i-1: u app [local] idle in transaction",
            "postgres: i-1: u app [local] idle in transaction (aborted)",
            "postgres: i-1: u app [local] UPDATE waiting",
            "postgres: i-1: u app [local] SELECT",
            // update_process_title = off: unknown, so asked.
            "postgres: i-1: u app 10.0.0.7(4242)",
        ] {
            let c = census(idle.into_iter().chain([busy]), ADMIN);
            assert!(c.busy, "{busy}");
            assert_eq!(c.sessions.total(), 3, "{busy}");
        }
    }

    #[test]
    fn the_sample_is_parsed_with_its_waiters() {
        let at = Utc::now();
        let raw = parse_sample(
            at,
            r#"{"active": 2, "idle in transaction": 1, "": 1, "idle": 3}"#,
            Some(12.5),
            None,
            r#"[{"pid": 42, "blocked_by": [41], "lock_type": "transactionid",
                 "mode": "ShareLock", "relation": null, "database": "app", "user": "u",
                 "waiting_secs": 3.25, "held": [16390, 16384], "query": "UPDATE t SET v = $1"}]"#,
        )
        .unwrap();
        assert_eq!(raw.sample.sessions.active, 3);
        assert_eq!(raw.sample.sessions.idle, 3);
        assert_eq!(raw.sample.sessions.idle_in_transaction, 1);
        assert_eq!(raw.sample.longest_transaction_secs, 12.5);
        assert_eq!(raw.sample.longest_idle_in_transaction_secs, 0.0);
        assert_eq!(raw.sample.lock_waiters, 1);
        assert_eq!(raw.waits[0].blocked_by, vec![41]);
        assert_eq!(raw.waits[0].held, Some(vec![16390, 16384]));
        assert_eq!(relation_oids(&raw.waits[0]), vec![16390, 16384]);
        let none = parse_sample(at, "{}", None, None, "[]").unwrap();
        assert_eq!(none.sample.sessions.total(), 0);
        assert!(none.waits.is_empty());
        assert!(parse_sample(at, "nonsense", None, None, "[]").is_err());
    }

    #[test]
    fn the_relation_is_the_locks_then_a_held_table() {
        let names: HashMap<i64, RelationName> = [
            (1, ("public.t_pkey", 'i')),
            (2, ("public.t", 'r')),
            (3, ("public.other", 'r')),
        ]
        .into_iter()
        .map(|(oid, (name, kind))| {
            let name = name.to_string();
            (oid, RelationName { name, kind })
        })
        .collect();
        let wait = |relation, held: &[i64]| RawWait {
            relation,
            held: Some(held.to_vec()),
            ..RawWait::default()
        };
        assert_eq!(
            pick_relation(&wait(Some(3), &[2]), &names).as_deref(),
            Some("public.other")
        );
        assert_eq!(
            pick_relation(&wait(None, &[1, 2]), &names).as_deref(),
            Some("public.t")
        );
        assert_eq!(
            pick_relation(&wait(None, &[1]), &names).as_deref(),
            Some("public.t_pkey")
        );
        assert_eq!(pick_relation(&wait(None, &[]), &names), None);
        // An oid that could not be named is shown as the oid.
        assert_eq!(
            pick_relation(&wait(Some(99), &[]), &names).as_deref(),
            Some("99")
        );
    }

    #[test]
    fn the_hit_ratio_waits_for_a_read() {
        assert_eq!(hit_ratio(0, 0), None);
        assert_eq!(hit_ratio(3, 1), Some(0.75));
    }

    #[test]
    fn statement_text_comes_only_from_pg_stat_statements() {
        for statements in [true, false] {
            let sql = sample_sql(statements);
            assert!(!sql.contains("a.query "), "{sql}");
            assert!(!sql.contains("QUERY_TEXT"));
            assert!(!sql.contains(".query,"));
        }
        assert!(sample_sql(true).contains("pg_stat_statements"));
        assert!(!sample_sql(false).contains("pg_stat_statements"));
    }
}
