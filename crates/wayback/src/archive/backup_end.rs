//! A base backup's end (docs/architecture.md §7 rule 7): where the backup stops, and when —
//! read once `pg_basebackup` is done — and the wait for the segment holding it.
//!
//! From a primary, the end is in the backup history file PostgreSQL archives
//! ([`primary_end`]). From a standby (issue 15 point 4: an HA instance's backups spare the
//! leader's I/O) PostgreSQL 15 writes no history file and cannot `pg_switch_wal()`, and
//! `pg_basebackup` tells the end only with WAL it streams itself. [`standby_end`] reads it from
//! the standby's control data instead: on a standby `pg_backup_stop` answers the minimum
//! recovery point (`pg_control_recovery().min_recovery_end_lsn`) and its timeline, a point that
//! only moves forward, so read right after the stream it is at or past the real end — a
//! recovery that replays to it is consistent, and the segment waited for is at or after the one
//! recovery needs. The standby's timeline must still be the label's (a standby that followed a
//! new leader mid-backup, or was promoted, is not trusted), and the leader is asked to complete
//! its WAL segment ([`LeaderWal`]) so that the end segment reaches the archive now rather than
//! at its next `archive_timeout`.
//!
//! Must not import `osb`, `broker`, `store` or `jobs`: the runtime hands us the leader's switch.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::backup_tar::{self, Label};
use super::layout::{format_lsn, parse_lsn, InstancePrefix, WalFileName};
use super::{frame, ArchiveError};
use crate::storage::ObjectStore;

/// Completes the current WAL segment of the leader a standby streams from (`pg_switch_wal()`
/// there, even when all it holds since the last switch is housekeeping), given by the runtime
/// that knows where the leader runs.
#[async_trait::async_trait]
pub trait LeaderWal: Send + Sync {
    async fn switch_wal(&self) -> Result<(), String>;
}

/// Where a backup ends, and (rounded up) when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct End {
    pub stop_lsn: u64,
    pub stop_time: DateTime<Utc>,
}

/// A primary's backup: its end from the backup history file.
pub(super) async fn primary_end(
    store: &ObjectStore,
    prefix: &InstancePrefix,
    label: &Label,
    segment_size: u64,
    archive_wait: Duration,
    cipher: Option<&crate::crypto::archive_cipher::ArchiveCipher>,
) -> Result<End, ArchiveError> {
    let history = await_history(store, prefix, label, segment_size, archive_wait, cipher).await?;
    Ok(End {
        stop_lsn: history.stop_lsn,
        // STOP TIME has one-second precision; rounding up keeps "restorable from" from ever
        // lying before the real end, where a recovery target would fail.
        stop_time: history.stop_time + chrono::Duration::seconds(1),
    })
}

/// A standby's backup: its end from the standby's control data (see the module doc), then the
/// leader's segment completed. A failed switch is logged, not fatal: while anything but
/// housekeeping is written, the leader's own `archive_timeout` completes the segment too.
pub(super) async fn standby_end(
    instance_id: &str,
    server: &sqlx::postgres::PgConnectOptions,
    label: &Label,
    leader: Option<&dyn LeaderWal>,
) -> Result<End, ArchiveError> {
    use sqlx::Row;
    let mut conn = crate::pg::sql::connect(server, crate::pg::sql::ADMIN_DATABASE)
        .await
        .map_err(|e| ArchiveError::Io(e.to_string()))?;
    let sql_err =
        |e: sqlx::Error| ArchiveError::Io(format!("read the standby's recovery point: {e}"));
    let row = sqlx::query(
        "SELECT pg_is_in_recovery(), min_recovery_end_lsn::text, \
         min_recovery_end_timeline::int8, \
         (extract(epoch FROM clock_timestamp()) * 1000)::int8 \
         FROM pg_control_recovery()",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(sql_err)?;
    let in_recovery: bool = row.try_get(0).map_err(sql_err)?;
    let lsn: String = row.try_get(1).map_err(sql_err)?;
    let timeline: i64 = row.try_get(2).map_err(sql_err)?;
    let now_ms: i64 = row.try_get(3).map_err(sql_err)?;
    let stop_lsn = parse_lsn(&lsn).unwrap_or(0);
    if !in_recovery {
        return Err(ArchiveError::Io(
            "the standby was promoted during its base backup; its end is unknown, take the \
             backup again"
                .into(),
        ));
    }
    if timeline != i64::from(label.timeline) || stop_lsn < label.start_lsn {
        return Err(ArchiveError::Io(format!(
            "the standby's recovery point {lsn} on timeline {timeline} does not end a backup \
             that started at {} on timeline {} (it followed a new leader during the backup); \
             take the backup again",
            format_lsn(label.start_lsn),
            label.timeline
        )));
    }
    if let Some(leader) = leader {
        if let Err(e) = leader.switch_wal().await {
            tracing::warn!(instance = %instance_id, error = %e, "cannot complete the leader's WAL segment after a standby's backup; waiting for its archive_timeout");
        }
    }
    let now = DateTime::<Utc>::from_timestamp_millis(now_ms).ok_or_else(|| {
        ArchiveError::Io(format!("the standby's clock reads {now_ms} ms since 1970"))
    })?;
    Ok(End {
        stop_lsn,
        // Read after the end; one second more, as for a primary, against the members' clocks
        // differing by a little.
        stop_time: now + chrono::Duration::seconds(1),
    })
}

pub(super) fn wal_key(prefix: &InstancePrefix, name: &str) -> Result<String, ArchiveError> {
    Ok(prefix.wal(&WalFileName::parse(name).map_err(ArchiveError::Io)?))
}

/// Waits for the backup history file and reads the backup's end from it.
async fn await_history(
    store: &ObjectStore,
    prefix: &InstancePrefix,
    label: &backup_tar::Label,
    segment_size: u64,
    archive_wait: Duration,
    cipher: Option<&crate::crypto::archive_cipher::ArchiveCipher>,
) -> Result<backup_tar::History, ArchiveError> {
    let name = backup_tar::history_file_name(&label.start_wal, label.start_lsn, segment_size);
    let key = wal_key(prefix, &name)?;
    await_object(store, &key, archive_wait, "backup history file").await?;
    let bytes = store
        .get(&key)
        .await?
        .ok_or_else(|| ArchiveError::Io(format!("{key} vanished from the archive")))?;
    let sealing = cipher.map(|cipher| frame::Sealing {
        cipher,
        name: &name,
    });
    let (_, raw) = frame::decode_with(&bytes, sealing).map_err(|e| ArchiveError::Corrupt {
        key: key.clone(),
        detail: e.to_string(),
    })?;
    let history = backup_tar::parse_history(&raw).map_err(ArchiveError::Io)?;
    if history.start_lsn != label.start_lsn || history.stop_timeline != label.timeline {
        return Err(ArchiveError::Io(format!(
            "{key} does not describe this backup (start {} on timeline {}, expected {} on {})",
            format_lsn(history.start_lsn),
            history.stop_timeline,
            format_lsn(label.start_lsn),
            label.timeline
        )));
    }
    Ok(history)
}

/// Polls until `key` is in the store, up to `archive_wait` (`wal.final_archive_timeout_secs`).
pub(super) async fn await_object(
    store: &ObjectStore,
    key: &str,
    archive_wait: Duration,
    what: &str,
) -> Result<(), ArchiveError> {
    let deadline = Instant::now() + archive_wait;
    let mut last_error = None;
    loop {
        match store.head(key).await {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => {}
            Err(e) if e.is_permanent() => return Err(e.into()),
            Err(e) => last_error = Some(e.to_string()),
        }
        if Instant::now() >= deadline {
            return Err(ArchiveError::Io(format!(
                "the {what} {} did not reach the archive within {} s (wal.final_archive_timeout_secs){}; \
                 the backup would not be restorable without it — check that archiving works \
                 (pg_stat_archiver, the cluster's log) and that the archive storage is reachable",
                store.location(key),
                archive_wait.as_secs(),
                last_error.map(|e| format!("; last error: {e}")).unwrap_or_default()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
