//! Taking a base backup: `pg_basebackup` streams one tar to our stdin-less pipe, we cut it into
//! parts that compress and upload while the next part is read (see [`backup_upload`]), learn the
//! start from the `backup_label` inside the stream, the end from the backup history file
//! PostgreSQL archives (or, from an HA standby, from the standby itself: [`backup_end`]), and
//! write `manifest.json` last — only once the segment holding the end is in the archive
//! (docs/architecture.md §7 rule 7). Nothing is staged on disk; memory holds a few parts.
//!
//! A failed backup removes what it uploaded (best effort: retention removes manifest-less
//! backups anyway), so the archive never holds a backup that looks usable and is not.
//!
//! The superuser password reaches `pg_basebackup` through its environment (`PGPASSWORD`, with
//! the rest of the environment cleared), never its command line. Must not import `osb`,
//! `broker`, `store` or `jobs`: the runtime hands us a [`BackupSource`].
//!
//! [`backup_upload`]: super::backup_upload
//! [`backup_end`]: super::backup_end

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use tokio::io::AsyncReadExt;

use super::backup_end::{self, wal_key, LeaderWal};
use super::backup_tar::{self, TarScanner};
use super::backup_upload::PartUploader;
use super::layout::{format_lsn, segment_for_lsn, InstancePrefix};
use super::manifest::{
    backup_id, BackupManifest, BackupPart, SettingFloors, FORMAT, FORMAT_ENCRYPTED,
};
use super::ArchiveError;
use crate::storage::ObjectStore;

/// What it takes to reach a running cluster as its superuser (given by the runtime).
#[derive(Clone)]
pub struct BackupSource {
    pub instance_id: String,
    /// PostgreSQL 15's `pg_basebackup`.
    pub pg_basebackup: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    pub password: SecretString,
    /// The instance's system identifier, as its archive knows it (rule 8): a cluster that
    /// answers with another one is not backed up into this prefix.
    pub system_identifier: u64,
    /// The data key the instance's archive is encrypted with (its archive target's); None: in
    /// clear.
    pub data_key: Option<super::keydoc::ArchiveKey>,
}

impl std::fmt::Debug for BackupSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupSource")
            .field("instance_id", &self.instance_id)
            .field("socket_dir", &self.socket_dir)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// How to take it.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub compression_level: i32,
    /// Raw tar bytes per part (`backup.part_bytes`).
    pub part_bytes: u64,
    pub uploads_in_flight: usize,
    /// The longest `pg_basebackup` may stream.
    pub stream_timeout: Duration,
    /// The longest `pg_basebackup` may send nothing: at its end PostgreSQL waits there, before
    /// the stream ends, for the backup's end segment to be archived — forever, if archiving is
    /// stuck. Then the backup fails, and its server side is ended too.
    pub stall_timeout: Duration,
    /// The longest we wait for the end segment to reach the archive (rule 7).
    pub archive_wait: Duration,
    /// `provision`, `schedule`, `wal-volume`, `manual`.
    pub reason: String,
}

impl BackupOptions {
    /// The options the settings give, for a backup taken for `reason`.
    pub fn from_settings(s: &crate::config::Settings, reason: &str) -> Self {
        Self {
            compression_level: s.backup.compression_level,
            part_bytes: s.backup.part_bytes,
            uploads_in_flight: s.backup.uploads_in_flight,
            stream_timeout: Duration::from_secs(s.backup.stream_timeout_secs),
            stall_timeout: Duration::from_secs(s.backup.stall_timeout_secs),
            archive_wait: Duration::from_secs(s.wal.final_archive_timeout_secs),
            reason: reason.to_string(),
        }
    }
}

/// Where the time went, in milliseconds.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct BackupTimings {
    pub stream_ms: u64,
    pub archive_wait_ms: u64,
    pub total_ms: u64,
}

#[derive(Debug, Clone)]
pub struct BackupReport {
    pub manifest: BackupManifest,
    pub timings: BackupTimings,
}

/// What the server says about itself before the backup starts.
struct ServerFacts {
    pg_version: u32,
    system_identifier: u64,
    segment_size: u64,
    archive_mode: String,
    /// A standby: its backup's end is read from it, and its leader completes the segment.
    in_recovery: bool,
    floors: SettingFloors,
}

/// Takes a base backup of `source` into `prefix`. On failure nothing of it stays usable: the
/// manifest was not written and the uploaded parts are deleted.
pub async fn take_backup(
    source: &BackupSource,
    store: &ObjectStore,
    prefix: &InstancePrefix,
    options: &BackupOptions,
) -> Result<BackupReport, ArchiveError> {
    take(source, store, prefix, options, None).await
}

/// [`take_backup`] from an HA standby (`source`), whose `leader` completes its WAL segment
/// once the stream is done, so that the backup's end reaches the archive (issue 15 point 4).
/// The manifest and parts are a primary's backup's: the restore code reads both alike. Should
/// the standby have been promoted before the backup began, it is a primary's backup.
pub async fn take_standby_backup(
    source: &BackupSource,
    store: &ObjectStore,
    prefix: &InstancePrefix,
    options: &BackupOptions,
    leader: &dyn LeaderWal,
) -> Result<BackupReport, ArchiveError> {
    take(source, store, prefix, options, Some(leader)).await
}

async fn take(
    source: &BackupSource,
    store: &ObjectStore,
    prefix: &InstancePrefix,
    options: &BackupOptions,
    leader: Option<&dyn LeaderWal>,
) -> Result<BackupReport, ArchiveError> {
    let started = Instant::now();
    let start_time = Utc::now();
    let id = backup_id(start_time);
    let cipher = source
        .data_key
        .as_ref()
        .map(|k| std::sync::Arc::new(k.cipher()));
    let mut uploader = PartUploader::new(
        store.clone(),
        prefix.clone(),
        id.clone(),
        options.compression_level,
        cipher.clone(),
        options.uploads_in_flight,
    );
    let how = How {
        id: &id,
        start_time,
        leader,
    };
    match run(source, store, prefix, options, how, &mut uploader).await {
        Ok(mut report) => {
            report.timings.total_ms = started.elapsed().as_millis() as u64;
            Ok(report)
        }
        Err(e) => {
            uploader.drain().await;
            remove_backup(store, prefix, &id).await;
            Err(failed(source, e))
        }
    }
}

/// Says which backup failed, why, and what to do; and whether a retry as-is can help.
fn failed(source: &BackupSource, e: ArchiveError) -> ArchiveError {
    let permanent = match &e {
        ArchiveError::Refused(_) | ArchiveError::Target(_) | ArchiveError::Key(_) => true,
        ArchiveError::Storage(s) => s.is_permanent(),
        ArchiveError::Backup { permanent, .. } => *permanent,
        _ => false,
    };
    ArchiveError::Backup {
        message: format!(
            "base backup of instance {} failed: {e}; its parts were removed and no manifest \
             was written, so nothing half-done can be restored from; fix the cause and take it \
             again (`wayback backup {}`), or let the schedule retry",
            source.instance_id, source.instance_id
        ),
        permanent,
    }
}

/// Deletes every object of backup `id` (best effort, logged).
pub async fn remove_backup(store: &ObjectStore, prefix: &InstancePrefix, id: &str) {
    let dir = format!("{}/base/{id}/", prefix.as_str());
    let keys = match store.list(&dir).await {
        Ok(objects) => objects.into_iter().map(|o| o.key).collect::<Vec<_>>(),
        Err(e) => {
            tracing::warn!(backup = id, error = %e, "cannot list a failed backup's parts to remove them; retention will");
            return;
        }
    };
    if keys.is_empty() {
        return;
    }
    if let Err(e) = store.delete_many(&keys).await {
        tracing::warn!(backup = id, error = %e, "cannot remove a failed backup's parts; retention will");
    }
}

/// One backup's name, start, and (from a standby) its leader.
#[derive(Clone, Copy)]
struct How<'a> {
    id: &'a str,
    start_time: DateTime<Utc>,
    leader: Option<&'a dyn LeaderWal>,
}

async fn run(
    source: &BackupSource,
    store: &ObjectStore,
    prefix: &InstancePrefix,
    options: &BackupOptions,
    how: How<'_>,
    uploader: &mut PartUploader,
) -> Result<BackupReport, ArchiveError> {
    let How {
        id,
        start_time,
        leader,
    } = how;
    let facts = server_facts(source).await?;
    if facts.system_identifier != source.system_identifier {
        return Err(ArchiveError::Refused(format!(
            "the server answers with database system {}, not the instance's {}; a wrong \
             socket or port would back up another cluster into this archive",
            facts.system_identifier, source.system_identifier
        )));
    }
    if facts.archive_mode != "on" {
        return Err(ArchiveError::Io(format!(
            "archive_mode is {:?}: without archiving no base backup is usable (rule 7)",
            facts.archive_mode
        )));
    }
    if facts.in_recovery && leader.is_none() {
        return Err(ArchiveError::Io(
            "the server is a standby (in recovery): its backup's end segment is archived only \
             once its leader completes it, and no leader was named; take the backup from the \
             leader"
                .into(),
        ));
    }
    let streamed = Instant::now();
    let (scanner, raw_bytes) = tokio::time::timeout(
        options.stream_timeout,
        stream(source, options, id, uploader),
    )
    .await
    .map_err(|_| {
        ArchiveError::Io(format!(
            "pg_basebackup did not finish within {} s (backup.stream_timeout_secs)",
            options.stream_timeout.as_secs()
        ))
    })??;
    let parts = uploader.finish().await?;
    let stream_ms = streamed.elapsed().as_millis() as u64;
    let label = backup_tar::parse_label(
        scanner
            .label
            .as_deref()
            .ok_or_else(|| ArchiveError::Io("the backup stream has no backup_label".into()))?,
    )
    .map_err(ArchiveError::Io)?;
    let control = scanner
        .control
        .as_deref()
        .and_then(crate::pg::control::system_identifier);
    if control != Some(source.system_identifier) {
        return Err(ArchiveError::Refused(format!(
            "global/pg_control in the backup names database system {control:?}, not the \
             instance's {}",
            source.system_identifier
        )));
    }
    let waited = Instant::now();
    let cipher = source.data_key.as_ref().map(|k| k.cipher());
    let end = if label.from_standby {
        let server =
            crate::pg::sql::admin_options(&source.socket_dir, source.port, &source.password);
        backup_end::standby_end(&source.instance_id, &server, &label, leader).await?
    } else {
        backup_end::primary_end(
            store,
            prefix,
            &label,
            facts.segment_size,
            options.archive_wait,
            cipher.as_ref(),
        )
        .await?
    };
    // The last segment recovery needs holds the byte before stop_lsn (PostgreSQL's
    // XLByteToPrevSeg): when the end record finishes exactly on a boundary, that is the
    // segment before the one `stop_lsn` points into.
    let stop_wal = segment_for_lsn(
        label.timeline,
        end.stop_lsn.saturating_sub(1),
        facts.segment_size,
    );
    backup_end::await_object(
        store,
        &wal_key(prefix, &stop_wal)?,
        options.archive_wait,
        "end segment",
    )
    .await?;
    let archive_wait_ms = waited.elapsed().as_millis() as u64;
    let manifest = BackupManifest {
        format: if cipher.is_some() {
            FORMAT_ENCRYPTED
        } else {
            FORMAT
        },
        backup_id: id.to_string(),
        instance_id: source.instance_id.clone(),
        system_identifier: source.system_identifier,
        pg_version: facts.pg_version,
        timeline: label.timeline,
        start_lsn: format_lsn(label.start_lsn),
        stop_lsn: format_lsn(end.stop_lsn),
        start_wal: label.start_wal.clone(),
        stop_wal,
        start_time: label.start_time.unwrap_or(start_time),
        stop_time: end.stop_time,
        floors: facts.floors,
        raw_bytes,
        stored_bytes: parts.iter().map(|p: &BackupPart| p.stored_bytes).sum(),
        parts,
        reason: options.reason.clone(),
    };
    store
        .put(&prefix.base_manifest(id), manifest.to_json())
        .await?;
    Ok(BackupReport {
        manifest,
        timings: BackupTimings {
            stream_ms,
            archive_wait_ms,
            total_ms: 0,
        },
    })
}

/// Runs pg_basebackup and feeds its stdout to the uploader, part by part. Returns the scanner
/// (what it saw in the tar) and the raw byte count.
async fn stream(
    source: &BackupSource,
    options: &BackupOptions,
    id: &str,
    uploader: &mut PartUploader,
) -> Result<(TarScanner, u64), ArchiveError> {
    // Names this backup's walsender, so that a stalled one can be found and ended.
    let application_name = format!("wayback-backup {id}");
    let mut cmd = tokio::process::Command::new(&source.pg_basebackup);
    cmd.arg("--host")
        .arg(&source.socket_dir)
        .arg(format!("--port={}", source.port))
        .arg(format!("--username={}", crate::pg::SUPERUSER))
        .args([
            "--no-password",
            "--pgdata=-",
            "--format=tar",
            "--wal-method=none",
        ])
        .args(["--checkpoint=fast", "--no-manifest"])
        .arg(format!("--label=wayback {id}"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LC_ALL", "C")
        .env("PGPASSWORD", source.password.expose_secret())
        .env("PGAPPNAME", &application_name)
        .env("PGCONNECT_TIMEOUT", "10")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let command = format!(
        "{} --host {} --port={} --pgdata=- --format=tar --wal-method=none --checkpoint=fast",
        source.pg_basebackup.display(),
        source.socket_dir.display(),
        source.port
    );
    let mut child = cmd
        .spawn()
        .map_err(|e| ArchiveError::io(format!("cannot run `{command}`"), e))?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    // Drained concurrently: a child blocked on a full stderr pipe would stop the stream.
    let errors = tokio::spawn(async move {
        let mut text = Vec::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut text).await;
        let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
        String::from_utf8_lossy(&text).into_owned()
    });
    let part_bytes = options.part_bytes.max(1) as usize;
    let mut scanner = TarScanner::new();
    let mut chunk = vec![0u8; 1 << 20];
    let mut part = Vec::with_capacity(part_bytes);
    let mut total = 0u64;
    loop {
        let read = tokio::time::timeout(options.stall_timeout, stdout.read(&mut chunk)).await;
        let Ok(read) = read else {
            // Dropping `child` kills pg_basebackup; the server's side of the backup waits on
            // by itself (for archiving) unless it is ended as well.
            end_server_side(source, &application_name).await;
            return Err(ArchiveError::Io(format!(
                "pg_basebackup sent nothing for {} s (backup.stall_timeout_secs) after {total} \
                 bytes{}; PostgreSQL waits there for the backup's end segment to be archived — \
                 check that archiving works (pg_stat_archiver, the cluster's log) and that the \
                 archive storage is reachable",
                options.stall_timeout.as_secs(),
                if scanner.label.is_some() {
                    ""
                } else {
                    " (still at its start checkpoint)"
                }
            )));
        };
        let n = read.map_err(|e| ArchiveError::io("read pg_basebackup's output", e))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        scanner.feed(&chunk[..n]);
        let mut rest = &chunk[..n];
        while !rest.is_empty() {
            let take = (part_bytes - part.len()).min(rest.len());
            part.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if part.len() == part_bytes {
                let full = std::mem::replace(&mut part, Vec::with_capacity(part_bytes));
                uploader.submit(full).await?;
            }
        }
    }
    if !part.is_empty() {
        uploader.submit(part).await?;
    }
    let status = child
        .wait()
        .await
        .map_err(|e| ArchiveError::io(format!("wait for `{command}`"), e))?;
    let stderr = errors.await.unwrap_or_default();
    if !status.success() {
        return Err(ArchiveError::Io(format!(
            "`{command}` {status}: {}",
            crate::pg::process::tail_lines(&stderr, 20)
        )));
    }
    if let Some(e) = scanner.error.take() {
        return Err(ArchiveError::Io(format!("the backup stream: {e}")));
    }
    Ok((scanner, total))
}

/// Ends the server's side of a backup given up on (its walsender, named `application_name`);
/// best effort, logged. Left alone, it would keep a WAL sender slot until archiving recovers.
async fn end_server_side(source: &BackupSource, application_name: &str) {
    let options = crate::pg::sql::admin_options(&source.socket_dir, source.port, &source.password);
    let ended = async {
        let mut conn = crate::pg::sql::connect(&options, crate::pg::sql::ADMIN_DATABASE)
            .await
            .map_err(|e| e.to_string())?;
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        )
        .bind(application_name)
        .execute(&mut conn)
        .await
        .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(Duration::from_secs(30), ended).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(instance = %source.instance_id, error = %e, "cannot end a stalled base backup on the server; it ends when archiving recovers")
        }
        Err(_) => {
            tracing::warn!(instance = %source.instance_id, "the server did not answer in 30 s while ending a stalled base backup; it ends when archiving recovers")
        }
    }
}

async fn server_facts(source: &BackupSource) -> Result<ServerFacts, ArchiveError> {
    use sqlx::Row;
    let options = crate::pg::sql::admin_options(&source.socket_dir, source.port, &source.password);
    let mut conn = crate::pg::sql::connect(&options, crate::pg::sql::ADMIN_DATABASE)
        .await
        .map_err(|e| ArchiveError::Io(e.to_string()))?;
    let sql_err = |e: sqlx::Error| ArchiveError::Io(format!("read the server's settings: {e}"));
    let row = sqlx::query(
        "SELECT current_setting('server_version_num')::int4, \
         (SELECT system_identifier::text FROM pg_control_system()), \
         (SELECT setting::int8 FROM pg_settings WHERE name = 'wal_segment_size'), \
         current_setting('archive_mode'), pg_is_in_recovery()",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(sql_err)?;
    let sysid: String = row.try_get(1).map_err(sql_err)?;
    let rows = sqlx::query("SELECT name, setting::int4 FROM pg_settings WHERE name = ANY($1)")
        .bind(SettingFloors::NAMES.to_vec())
        .fetch_all(&mut conn)
        .await
        .map_err(sql_err)?;
    let mut floors = SettingFloors::default();
    for r in rows {
        let (name, value): (String, i32) = (
            r.try_get(0).map_err(sql_err)?,
            r.try_get(1).map_err(sql_err)?,
        );
        let v = value.max(0) as u32;
        match name.as_str() {
            "max_connections" => floors.max_connections = v,
            "max_worker_processes" => floors.max_worker_processes = v,
            "max_locks_per_transaction" => floors.max_locks_per_transaction = v,
            "max_prepared_transactions" => floors.max_prepared_transactions = v,
            "max_wal_senders" => floors.max_wal_senders = v,
            _ => {}
        }
    }
    Ok(ServerFacts {
        pg_version: row.try_get::<i32, _>(0).map_err(sql_err)?.max(0) as u32,
        // pg_control_system() shows the unsigned identifier as a signed bigint.
        system_identifier: sysid
            .parse::<i64>()
            .map(|v| v as u64)
            .map_err(|_| ArchiveError::Io(format!("unreadable system identifier {sysid:?}")))?,
        segment_size: row.try_get::<i64, _>(2).map_err(sql_err)?.max(1) as u64,
        archive_mode: row.try_get(3).map_err(sql_err)?,
        in_recovery: row.try_get(4).map_err(sql_err)?,
        floors,
    })
}

#[cfg(test)]
#[path = "backup_tests.rs"]
mod tests;
