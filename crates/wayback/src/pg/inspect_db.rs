//! The per-database half of [`super::inspect`]: each database's own catalogs and statistics
//! (unused and invalid indexes, a bloat estimate, hit ratios, sequences), one read-only session
//! per database, one database at a time. A database that refuses or a query that times out is
//! left out (logged at debug), never an error: the checks judge what could be read.
//!
//! Bloat is estimated for tables and B-tree indexes alike as what a rewrite would give back:
//! the relation's size (main fork) beside the size its rows would take packed, from the
//! planner's statistics (`reltuples`, and each column's `pg_stats.avg_width`) and the page
//! layout (8 KiB pages, their headers, tuple headers and line pointers, alignment, and the
//! fill factor: the relation's own, else 100 for tables and 90 for B-tree leaves, plus ~1 % of
//! inner pages and the metapage for an index). So space `VACUUM` freed but did not give back
//! counts too (only `VACUUM FULL`, `pg_repack` or `REINDEX` would). A table never analysed has
//! no widths: its estimate falls back to its dead share (`pg_stat_user_tables`), size × dead /
//! (live + dead). An index without statistics for every key column (an expression, a column
//! never analysed), a partial one, or one of another access method is left out. B-tree
//! deduplication (PostgreSQL 13+) makes an index with repeated keys smaller than the estimate:
//! it then shows no bloat, so the estimate errs towards silence. Cheap enough to run on demand:
//! catalog reads and one size call per relation.
//!
//! Imports only `pg` siblings and `wayback_api`.

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::postgres::types::Oid;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, Row};
use wayback_api::activity::{BloatFact, DiagnoseFacts, IndexFact, SequenceFact};

use super::sql::{connect, exec};
use super::PgError;

/// Non-template databases whose own catalogs are read (the first by name).
pub const DATABASES_READ: usize = 20;
/// Rows kept per list (oldest sessions, indexes, tables, sequences).
pub const ROWS_KEPT: i64 = 20;

const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
const LOCK_TIMEOUT: Duration = Duration::from_secs(1);

/// A superuser session in `database` that cannot write and cannot wait long.
pub(super) async fn open_read_only(
    opts: &PgConnectOptions,
    database: &str,
) -> Result<PgConnection, PgError> {
    let mut conn = connect(opts, database).await?;
    // Our own statements stay out of `pg_stat_statements` (a placeholder setting when the
    // library is not loaded, which is harmless).
    let set = format!(
        "SET default_transaction_read_only = on; SET statement_timeout = {}; \
         SET lock_timeout = {}; SET pg_stat_statements.track = 'none'",
        STATEMENT_TIMEOUT.as_millis(),
        LOCK_TIMEOUT.as_millis()
    );
    exec(&mut conn, &set, "make an inspection session read-only").await?;
    Ok(conn)
}

const UNUSED_INDEXES: &str = "\
SELECT s.schemaname || '.' || s.indexrelname, s.schemaname || '.' || s.relname, \
       pg_relation_size(s.indexrelid), s.idx_scan \
  FROM pg_stat_user_indexes s JOIN pg_index i ON i.indexrelid = s.indexrelid \
 WHERE s.idx_scan = 0 AND NOT i.indisunique AND NOT i.indisprimary AND i.indisvalid \
 ORDER BY 3 DESC LIMIT $1";

const INVALID_INDEXES: &str = "\
SELECT n.nspname || '.' || c.relname, tn.nspname || '.' || t.relname, \
       pg_relation_size(c.oid), coalesce(s.idx_scan, 0) \
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
  JOIN pg_namespace n ON n.oid = c.relnamespace \
  JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace tn ON tn.oid = t.relnamespace \
  LEFT JOIN pg_stat_all_indexes s ON s.indexrelid = i.indexrelid \
 WHERE NOT i.indisvalid ORDER BY 1 LIMIT $1";

/// Tables (and materialized views): name, size, expected size; where the size exceeds it, most
/// wasted bytes first. A heap tuple takes its 23-byte header aligned to 24, its data aligned
/// to 8 and a 4-byte line pointer; a page has 8168 bytes after its header.
const TABLE_BLOAT: &str = "\
WITH r AS ( \
  SELECT tn.nspname || '.' || t.relname AS name, pg_relation_size(t.oid)::int8 AS actual, \
         t.reltuples::float8 AS tuples, st.n_live_tup::float8 AS live, \
         st.n_dead_tup::float8 AS dead, w.width, \
         (w.known = w.cols AND t.reltuples >= 0) AS estimable, \
         coalesce((SELECT option_value::int FROM pg_options_to_table(t.reloptions) \
                    WHERE option_name = 'fillfactor'), 100) AS ff \
    FROM pg_class t JOIN pg_namespace tn ON tn.oid = t.relnamespace \
    JOIN pg_stat_user_tables st ON st.relid = t.oid \
    CROSS JOIN LATERAL ( \
      SELECT coalesce(sum(s.avg_width), 0)::int8 AS width, count(s.avg_width) AS known, \
             count(*) AS cols \
        FROM pg_attribute a LEFT JOIN pg_stats s ON s.schemaname = tn.nspname \
             AND s.tablename = t.relname AND s.attname = a.attname AND NOT s.inherited \
       WHERE a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped) w \
   WHERE t.relkind IN ('r', 'm')), \
e AS ( \
  SELECT name, actual, CASE \
    WHEN estimable THEN greatest(ceil(tuples / greatest(floor((8168 * ff / 100) \
         / (28 + ((width + 7) / 8) * 8)), 1)), 1) * 8192 \
    WHEN live + dead > 0 THEN actual * live / (live + dead) \
    ELSE actual END AS expected \
    FROM r) \
SELECT name, actual, expected::int8 FROM e WHERE actual > expected \
 ORDER BY actual - expected DESC LIMIT $1";

/// B-tree indexes: name, table, size, expected size; where the size exceeds it, most wasted
/// bytes first. A leaf tuple takes its 8-byte header, its keys aligned to 8 and a 4-byte line
/// pointer; a leaf has 8152 bytes after its header and the B-tree's special space.
const INDEX_BLOAT: &str = "\
WITH r AS ( \
  SELECT n.nspname || '.' || c.relname AS name, tn.nspname || '.' || t.relname AS tab, \
         pg_relation_size(c.oid)::int8 AS actual, t.reltuples::float8 AS tuples, w.width, \
         coalesce((SELECT option_value::int FROM pg_options_to_table(c.reloptions) \
                    WHERE option_name = 'fillfactor'), 90) AS ff \
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
    JOIN pg_namespace n ON n.oid = c.relnamespace \
    JOIN pg_am am ON am.oid = c.relam AND am.amname = 'btree' \
    JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace tn ON tn.oid = t.relnamespace \
    JOIN pg_stat_user_tables st ON st.relid = t.oid \
    CROSS JOIN LATERAL ( \
      SELECT coalesce(sum(s.avg_width), 0)::int8 AS width, count(s.avg_width) AS known \
        FROM pg_attribute a JOIN pg_stats s ON s.schemaname = tn.nspname \
             AND s.tablename = t.relname AND s.attname = a.attname AND NOT s.inherited \
       WHERE a.attrelid = t.oid AND a.attnum = ANY (i.indkey::int2[])) w \
   WHERE i.indpred IS NULL AND i.indisvalid AND t.reltuples >= 0 \
     AND 0 <> ALL (i.indkey::int2[]) AND w.known = i.indnatts), \
e AS ( \
  SELECT name, tab, actual, (ceil(tuples / greatest(floor((8152 * ff / 100) \
         / (12 + ((width + 7) / 8) * 8)), 1)) * 1.01 + 1) * 8192 AS expected \
    FROM r) \
SELECT name, tab, actual, expected::int8 FROM e WHERE actual > expected \
 ORDER BY actual - expected DESC LIMIT $1";

const HITS: &str = "\
SELECT (SELECT coalesce(sum(heap_blks_hit), 0)::int8 FROM pg_statio_user_tables), \
       (SELECT coalesce(sum(heap_blks_read), 0)::int8 FROM pg_statio_user_tables), \
       (SELECT coalesce(sum(idx_blks_hit), 0)::int8 FROM pg_statio_user_indexes), \
       (SELECT coalesce(sum(idx_blks_read), 0)::int8 FROM pg_statio_user_indexes)";

/// Share of each sequence's range used, in the direction it counts.
const SEQUENCES: &str = "\
SELECT schemaname || '.' || sequencename, \
       (CASE WHEN increment_by > 0 \
             THEN coalesce(last_value, start_value)::numeric - min_value \
             ELSE max_value::numeric - coalesce(last_value, start_value) END \
        / nullif(max_value::numeric - min_value, 0))::float8 AS used \
  FROM pg_sequences WHERE NOT cycle ORDER BY used DESC NULLS LAST LIMIT $1";

/// Block counters summed over the databases read.
#[derive(Default)]
struct Hits {
    heap_hit: i64,
    heap_read: i64,
    idx_hit: i64,
    idx_read: i64,
}

/// Adds each of `databases`' facts to `facts`.
pub(super) async fn fill(opts: &PgConnectOptions, databases: &[String], facts: &mut DiagnoseFacts) {
    let mut hits = Hits::default();
    for db in databases {
        let mut conn = match open_read_only(opts, db).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(database = %db, error = %e, "database left out of the inspection");
                continue;
            }
        };
        read_database(&mut conn, db, facts, &mut hits).await;
        let _ = conn.close().await;
    }
    let ratio = |hit: i64, read: i64| (hit + read > 0).then(|| hit as f64 / (hit + read) as f64);
    facts.cache_hit_ratio = ratio(hits.heap_hit, hits.heap_read);
    facts.cache_blocks = hits.heap_hit + hits.heap_read;
    facts.index_hit_ratio = ratio(hits.idx_hit, hits.idx_read);
    facts.index_blocks = hits.idx_hit + hits.idx_read;
    facts
        .unused_indexes
        .sort_by_key(|i| std::cmp::Reverse(i.size_bytes));
    facts.unused_indexes.truncate(ROWS_KEPT as usize);
    facts
        .bloat
        .sort_by_key(|b| std::cmp::Reverse(b.waste_bytes));
    facts.bloat.truncate(ROWS_KEPT as usize);
    facts.sequences.sort_by(|a, b| b.used.total_cmp(&a.used));
    facts.sequences.truncate(ROWS_KEPT as usize);
}

async fn read_database(
    conn: &mut PgConnection,
    db: &str,
    facts: &mut DiagnoseFacts,
    hits: &mut Hits,
) {
    let skip = |what: &str, e: sqlx::Error| {
        tracing::debug!(database = %db, error = %e, "{what} left out of the inspection");
    };
    let index = |r: &sqlx::postgres::PgRow| IndexFact {
        database: db.to_string(),
        index: r.get(0),
        table: r.get(1),
        size_bytes: r.get(2),
        scans: r.get(3),
    };
    match sqlx::query(UNUSED_INDEXES)
        .bind(ROWS_KEPT)
        .fetch_all(&mut *conn)
        .await
    {
        Ok(rows) => facts.unused_indexes.extend(rows.iter().map(index)),
        Err(e) => skip("unused indexes", e),
    }
    match sqlx::query(INVALID_INDEXES)
        .bind(ROWS_KEPT)
        .fetch_all(&mut *conn)
        .await
    {
        Ok(rows) => facts.invalid_indexes.extend(rows.iter().map(index)),
        Err(e) => skip("invalid indexes", e),
    }
    let bloat = |kind: &str, name: String, actual: i64, expected: i64| BloatFact {
        database: db.to_string(),
        kind: kind.into(),
        name,
        waste_bytes: actual - expected,
        ratio: actual as f64 / expected.max(8192) as f64,
    };
    match sqlx::query(TABLE_BLOAT)
        .bind(ROWS_KEPT)
        .fetch_all(&mut *conn)
        .await
    {
        Ok(rows) => facts.bloat.extend(
            rows.iter()
                .map(|r| bloat("table", r.get(0), r.get(1), r.get(2))),
        ),
        Err(e) => skip("table bloat", e),
    }
    match sqlx::query(INDEX_BLOAT)
        .bind(ROWS_KEPT)
        .fetch_all(&mut *conn)
        .await
    {
        Ok(rows) => facts.bloat.extend(rows.iter().map(|r| {
            let (index, table): (String, String) = (r.get(0), r.get(1));
            bloat("index", format!("{index} on {table}"), r.get(2), r.get(3))
        })),
        Err(e) => skip("index bloat", e),
    }
    match sqlx::query(HITS).fetch_one(&mut *conn).await {
        Ok(r) => {
            hits.heap_hit += r.get::<i64, _>(0);
            hits.heap_read += r.get::<i64, _>(1);
            hits.idx_hit += r.get::<i64, _>(2);
            hits.idx_read += r.get::<i64, _>(3);
        }
        Err(e) => skip("hit ratios", e),
    }
    match sqlx::query(SEQUENCES)
        .bind(ROWS_KEPT)
        .fetch_all(&mut *conn)
        .await
    {
        Ok(rows) => facts.sequences.extend(rows.iter().map(|r| SequenceFact {
            database: db.to_string(),
            sequence: r.get(0),
            used: r.get::<Option<f64>, _>(1).unwrap_or(0.0),
        })),
        Err(e) => skip("sequences", e),
    }
}

/// `schema.table` of each relation oid wanted, by database (only tables, views and the like:
/// an index a waiter holds says less than its table).
pub(super) async fn table_names(
    opts: &PgConnectOptions,
    wanted: &BTreeMap<String, Vec<u32>>,
) -> BTreeMap<String, BTreeMap<u32, String>> {
    let mut names = BTreeMap::new();
    for (db, oids) in wanted.iter().take(DATABASES_READ) {
        let Ok(mut conn) = open_read_only(opts, db).await else {
            continue;
        };
        let oids: Vec<Oid> = oids.iter().map(|o| Oid(*o)).collect();
        let rows = sqlx::query(
            "SELECT c.oid, n.nspname || '.' || c.relname FROM pg_class c \
               JOIN pg_namespace n ON n.oid = c.relnamespace \
              WHERE c.oid = ANY($1) AND c.relkind IN ('r', 'p', 'm', 'v', 'f')",
        )
        .bind(&oids)
        .fetch_all(&mut conn)
        .await
        .unwrap_or_default();
        names.insert(
            db.clone(),
            rows.iter()
                .map(|r| (r.get::<Oid, _>(0).0, r.get::<String, _>(1)))
                .collect(),
        );
        let _ = conn.close().await;
    }
    names
}
