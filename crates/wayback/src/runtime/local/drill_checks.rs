//! What a restore drill checks in its restored, promoted scratch copy (see `drill`):
//!
//! 1. `pg_amcheck` (PostgreSQL 15's own, from the tools' bin directory) over every database
//!    that allows connections: every table's heap and every B-tree index
//!    (`bt_index_check`), with `--install-missing` (the extension goes into the scratch copy
//!    only). Not `--heapallindexed`: it rebuilds a Bloom filter of every index's keys and reads
//!    every heap tuple against it, which doubles the drill's cost on large tables; the heap
//!    and B-tree checks already read every page, checksums included.
//! 2. The largest tables' (up to [`LARGEST`] per database, by pages) `count(*)` against their
//!    `pg_class.reltuples` in the copy itself: a sanity band ([`in_band`]), not an equality,
//!    since `reltuples` is the last `ANALYZE`'s estimate. Counting reads every heap page too.
//! 3. For a live instance, the copy's catalog (databases and their tables) against the live
//!    one's, read before and after the drill: a difference counts only when the live catalog
//!    did not change while the drill ran (DDL meanwhile is not a failed restore).
//!
//! Each failure is a [`DrillFailure`] naming the check and the relation. Must not import `osb`,
//! `broker`, `store` or `jobs`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use sqlx::postgres::PgConnectOptions;
use sqlx::Row;
use wayback_api::drills::{DrillFailure, DrillReport};

use crate::pg::sql::{self, ADMIN_DATABASE};
use crate::pg::{PgError, Tools, SUPERUSER};

/// Tables counted per database.
pub(super) const LARGEST: i64 = 5;

/// How long `pg_amcheck` may take over the whole copy.
const AMCHECK_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// The restored copy, running, and how to reach it.
pub(super) struct Copy {
    pub tools: Tools,
    pub socket_dir: PathBuf,
    pub port: u16,
    pub password: SecretString,
    /// A libpq passfile (0600, the cluster user's) holding `password`.
    pub passfile: PathBuf,
}

/// Databases and their tables (`schema.table`), sorted.
pub(super) type Catalog = BTreeMap<String, Vec<String>>;

fn failure(check: &str, detail: impl Into<String>) -> DrillFailure {
    DrillFailure {
        check: check.into(),
        detail: detail.into(),
    }
}

/// Runs checks 1 and 2; the first failure.
pub(super) async fn run(copy: &Copy, report: &mut DrillReport) -> Result<(), DrillFailure> {
    let opts = sql::admin_options(&copy.socket_dir, copy.port, &copy.password);
    let databases = databases(&opts)
        .await
        .map_err(|e| failure("restore", format!("the restored copy cannot be read: {e}")))?;
    report.end_time = end_time(&opts).await;
    amcheck(copy).await?;
    report.databases_checked = databases.len() as u32;
    report.checks.push(format!(
        "pg_amcheck: heap and B-tree indexes of {} database(s) ({}), without --heapallindexed",
        databases.len(),
        databases.join(", ")
    ));
    let mut counted = 0;
    for db in &databases {
        counted += count_largest(&opts, db).await?;
    }
    report.tables_counted = counted;
    report.checks.push(format!(
        "row counts of the {counted} largest table(s) within the band of their reltuples"
    ));
    Ok(())
}

/// Check 3: `before` and `after` are the live catalog at the drill's start and end.
pub(super) async fn compare_catalogs(
    copy: &Copy,
    before: Option<Catalog>,
    after: Option<Catalog>,
    report: &mut DrillReport,
) -> Result<(), DrillFailure> {
    let (Some(before), Some(after)) = (before, after) else {
        report
            .checks
            .push("catalog: not compared (the live instance could not be read)".into());
        return Ok(());
    };
    if before != after {
        report
            .checks
            .push("catalog: not compared (the live catalog changed during the drill)".into());
        return Ok(());
    }
    let opts = sql::admin_options(&copy.socket_dir, copy.port, &copy.password);
    let drilled = catalog(&opts).await.map_err(|e| {
        failure(
            "catalog",
            format!("the restored catalog cannot be read: {e}"),
        )
    })?;
    if let Some(diff) = difference(&after, &drilled) {
        return Err(failure("catalog", diff));
    }
    let tables: usize = after.values().map(Vec::len).sum();
    report.checks.push(format!(
        "catalog: the same {} database(s) and {tables} table(s) as the live instance",
        after.len()
    ));
    Ok(())
}

/// The first difference between the live catalog and the drill's, as a sentence.
pub(super) fn difference(live: &Catalog, drilled: &Catalog) -> Option<String> {
    for (db, tables) in live {
        let Some(theirs) = drilled.get(db) else {
            return Some(format!(
                "database {db:?} is live but missing from the restore"
            ));
        };
        if let Some(t) = tables.iter().find(|t| !theirs.contains(t)) {
            return Some(format!(
                "table {db}.{t} is live but missing from the restore"
            ));
        }
        if let Some(t) = theirs.iter().find(|t| !tables.contains(t)) {
            return Some(format!("table {db}.{t} is in the restore but not live"));
        }
    }
    drilled
        .keys()
        .find(|db| !live.contains_key(*db))
        .map(|db| format!("database {db:?} is in the restore but not live"))
}

/// The commit time of the last transaction recovery replayed (PostgreSQL keeps it after
/// promotion); None when none was replayed.
async fn end_time(opts: &PgConnectOptions) -> Option<chrono::DateTime<chrono::Utc>> {
    let mut conn = sql::connect(opts, ADMIN_DATABASE).await.ok()?;
    let secs: Option<f64> =
        sqlx::query_scalar("SELECT extract(epoch FROM pg_last_xact_replay_timestamp())::float8")
            .fetch_one(&mut conn)
            .await
            .ok()?;
    let ms = (secs? * 1000.0) as i64;
    chrono::DateTime::from_timestamp_millis(ms)
}

/// Databases that allow connections (template0 does not), sorted.
async fn databases(opts: &PgConnectOptions) -> Result<Vec<String>, PgError> {
    let mut conn = sql::connect(opts, ADMIN_DATABASE).await?;
    let rows = sqlx::query("SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname")
        .fetch_all(&mut conn)
        .await
        .map_err(sql::sql_err("list the databases"))?;
    Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
}

/// Every database's ordinary tables outside the system schemas (template1 left out: nobody's
/// data lives there).
pub(super) async fn catalog(opts: &PgConnectOptions) -> Result<Catalog, PgError> {
    let mut out = Catalog::new();
    for db in databases(opts).await? {
        if db == ADMIN_DATABASE {
            continue;
        }
        let mut conn = sql::connect(opts, &db).await?;
        let rows = sqlx::query(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' ORDER BY 1",
        )
        .fetch_all(&mut conn)
        .await
        .map_err(sql::sql_err(format!("list the tables of {db}")))?;
        out.insert(db, rows.iter().map(|r| r.get::<String, _>(0)).collect());
    }
    Ok(out)
}

/// Runs `pg_amcheck --all` over the copy; a corrupt relation fails naming it.
async fn amcheck(copy: &Copy) -> Result<(), DrillFailure> {
    let conninfo = format!(
        "host={} port={} user={SUPERUSER} dbname={ADMIN_DATABASE} passfile={} sslmode=disable",
        copy.socket_dir.display(),
        copy.port,
        copy.passfile.display()
    );
    let out = copy
        .tools
        .cmd("pg_amcheck", "check the drill's heap and B-tree indexes")
        .args([
            "--all",
            "--install-missing",
            "--no-password",
            "--maintenance-db",
        ])
        .arg(conninfo)
        .timeout(AMCHECK_TIMEOUT)
        .output()
        .await
        .map_err(|e| failure("amcheck", format!("pg_amcheck could not run: {e}")))?;
    if out.success {
        return Ok(());
    }
    Err(failure("amcheck", amcheck_detail(&out.stdout, &out.stderr)))
}

/// The first corrupt relation `pg_amcheck` names and what it says of it.
pub(super) fn amcheck_detail(stdout: &str, stderr: &str) -> String {
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    match lines.iter().position(|l| {
        l.starts_with("btree index") || l.starts_with("heap table") || l.contains("relation")
    }) {
        Some(i) => {
            let what = lines[i].trim_end_matches(':');
            let why = lines.get(i + 1).map_or("", |l| l.trim());
            format!("{what}: {why}")
        }
        None => {
            let text = if stderr.trim().is_empty() {
                stdout
            } else {
                stderr
            };
            format!(
                "pg_amcheck failed: {}",
                crate::pg::process::tail_lines(text, 5)
            )
        }
    }
}

/// Counts the largest tables of `db` and holds each count to its reltuples; how many it counted.
async fn count_largest(opts: &PgConnectOptions, db: &str) -> Result<u32, DrillFailure> {
    let read = |e: PgError| failure("row_counts", format!("database {db}: {e}"));
    let mut conn = sql::connect(opts, db).await.map_err(read)?;
    let rows = sqlx::query(
        "SELECT format('%I.%I', n.nspname, c.relname), c.reltuples::float8 FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
         AND n.nspname NOT LIKE 'pg_toast%' ORDER BY c.relpages DESC, 1 LIMIT $1",
    )
    .bind(LARGEST)
    .fetch_all(&mut conn)
    .await
    .map_err(|e| read(sql::sql_err("list the largest tables")(e)))?;
    let mut counted = 0;
    for row in rows {
        let (table, estimate): (String, f64) = (row.get(0), row.get(1));
        let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&mut conn)
            .await
            .map_err(|e| {
                failure(
                    "row_counts",
                    format!("count(*) of {db}.{table} failed: {e}"),
                )
            })?;
        counted += 1;
        if !in_band(count, estimate) {
            return Err(failure(
                "row_counts",
                format!(
                    "{db}.{table} has {count} rows but pg_class.reltuples says about {estimate:.0}"
                ),
            ));
        }
    }
    Ok(counted)
}

/// A count is plausible when the estimate is unknown (-1, never analysed) or small, or when it
/// lies within a tenth and ten times of it: a restore that lost or doubled most of a table
/// fails, a table that merely changed since its last `ANALYZE` does not.
pub(super) fn in_band(count: i64, reltuples: f64) -> bool {
    if reltuples < 1000.0 {
        return true;
    }
    let c = count as f64;
    c >= reltuples / 10.0 && c <= reltuples * 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_band_tolerates_drift_but_not_loss() {
        assert!(in_band(0, -1.0));
        assert!(in_band(0, 999.0));
        assert!(in_band(12_000, 10_000.0));
        assert!(!in_band(10, 10_000.0));
        assert!(!in_band(200_000, 10_000.0));
    }

    #[test]
    fn amcheck_names_the_relation() {
        let out = "btree index \"app.public.t_pkey\":\n    ERROR:  checksum mismatch\n";
        assert_eq!(
            amcheck_detail(out, ""),
            "btree index \"app.public.t_pkey\": ERROR:  checksum mismatch"
        );
        assert!(amcheck_detail("", "boom").contains("boom"));
    }

    #[test]
    fn catalogs_differ_by_their_first_missing_table() {
        let live: Catalog = [("app".to_string(), vec!["public.a".to_string()])].into();
        let same = live.clone();
        assert_eq!(difference(&live, &same), None);
        let empty: Catalog = [("app".to_string(), vec![])].into();
        assert!(difference(&live, &empty).unwrap().contains("public.a"));
        assert!(difference(&live, &Catalog::new()).unwrap().contains("app"));
    }
}
