//! What the archiver of a running cluster reports, for the broker's metrics: how far archiving
//! is behind (segments waiting in `archive_status/*.ready` and the age of the oldest), when it
//! last succeeded, and how often `wal-push` failed. One short superuser session per call,
//! unless nothing changed in `pg_wal/` since the last one and no segment waits: then the last
//! answer stands ([`super::quiet`]).
//! Must not import `osb`, `broker`, `store` or `jobs`.

use sqlx::{ConnectOptions, Connection, Row};

use super::quiet::Answer;
use super::{rt, LocalRuntime};
use crate::domain::InstanceId;
use crate::pg::PgError;
use crate::runtime::{ArchiverStats, RuntimeError};

const QUERY: &str = "\
SELECT a.archived_count, \
       extract(epoch FROM a.last_archived_time)::float8, \
       a.failed_count, \
       extract(epoch FROM a.last_failed_time)::float8, \
       r.n, \
       extract(epoch FROM now() - r.oldest)::float8, \
       a.last_failed_wal \
  FROM pg_stat_archiver a, \
       (SELECT count(*) AS n, min(modification) AS oldest \
          FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') r";

impl LocalRuntime {
    pub async fn archiver_stats(&self, id: &InstanceId) -> Result<ArchiverStats, RuntimeError> {
        let before = self.quiet_mark(id);
        if let Some(stats) = before.and_then(|m| self.quiet.archiver(id, &m)) {
            return Ok(stats);
        }
        let stats = self.read_archiver_stats(id).await;
        match &stats {
            Ok(s) => self.quiet.keep_archiver(id, before, s),
            Err(_) => self.quiet.drop_answer(id, Answer::Archiver),
        }
        stats
    }

    async fn read_archiver_stats(&self, id: &InstanceId) -> Result<ArchiverStats, RuntimeError> {
        let opts = self.admin_options(id).await?;
        let sql_err = |source| {
            rt(PgError::Sql {
                context: format!("read the archiver's statistics of instance {id}"),
                source,
            })
        };
        let mut conn = opts.connect().await.map_err(sql_err)?;
        let row = sqlx::query(QUERY)
            .fetch_one(&mut conn)
            .await
            .map_err(sql_err)?;
        let stats = ArchiverStats {
            archived_count: row.try_get::<i64, _>(0).map_err(sql_err)?,
            last_archived_at: row.try_get::<Option<f64>, _>(1).map_err(sql_err)?,
            failed_count: row.try_get::<i64, _>(2).map_err(sql_err)?,
            last_failed_at: row.try_get::<Option<f64>, _>(3).map_err(sql_err)?,
            ready_segments: row.try_get::<i64, _>(4).map_err(sql_err)?,
            oldest_ready_age_secs: row
                .try_get::<Option<f64>, _>(5)
                .map_err(sql_err)?
                .unwrap_or(0.0)
                .max(0.0),
            last_failed_wal: row.try_get::<Option<String>, _>(6).map_err(sql_err)?,
        };
        let _ = conn.close().await;
        Ok(stats)
    }
}
