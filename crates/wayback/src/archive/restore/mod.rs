//! The restore engine: one instance's archive → a new, promoted PostgreSQL cluster.
//!
//! [`restore`] is what the clone-from provisioning and `wayback restore` call. Its steps, each
//! in its own file:
//!
//! 1. [`plan`]: read the source's backup manifests (a backup without one is incomplete and
//!    ignored; an unknown format or another cluster's identifier is refused), find the restore
//!    window — earliest: the oldest backup's end; latest: the last archived *commit* — and pick
//!    the newest backup that ends at or before the target. A target outside the window fails
//!    here, before anything is created, and the error names the window (docs/architecture.md §7 rule 5).
//! 2. [`download`] / [`untar`]: fetch the parts a few at a time, check each stored CRC32 and raw
//!    SHA-256, decompress, and unpack the tar stream in order into the data directory — download,
//!    decompression and unpacking overlap, and nothing but the parts in flight is held (in
//!    memory; the compressed backup is never staged on disk).
//! 3. [`recovery`]: `recovery.signal`, `restore_command` = `wayback wal-fetch` reading the
//!    *source's* prefix through a private target file outside the data directory, the target
//!    time (or none for latest), `recovery_target_action = 'promote'` (rule 4), the hot-standby
//!    floors of the source (rule 6), and archiving only into the new instance's own prefix or
//!    not at all (rule 4: nothing is ever written into the source's prefix).
//! 4. [`server`]: start, wait for promotion within a bound that grows with the WAL to replay,
//!    and verify it: a new timeline, and for "latest" an end of recovery no earlier than the
//!    archive's newest segment. A server that exits instead (wal-fetch's 126 aborts recovery)
//!    is reported with its log tail, and shown not to have been promoted. Then the recovery
//!    settings go, so later restarts are ordinary ones.
//!
//!
//! A **standby** restore ([`RestoreRequest::standby`], a follower of its leader) shares steps
//! 1–3 with these differences: `standby.signal` instead of `recovery.signal`,
//! `primary_conninfo` and `primary_slot_name` (streaming from the leader, through its slot) and
//! `hot_standby_feedback = on` beside the same `restore_command` (so the archive covers what
//! the stream cannot), no target, no promotion, no archiving of its own. Step 4 waits until the
//! server accepts read-only connections (consistent) instead of promotion, and only the
//! temporary peer line goes afterwards: the recovery settings and the target file stay, since
//! the cluster is a standby for its whole life (until it is promoted on purpose).
//!
//! Must not import `osb`, `broker`, `store` or `jobs`.

mod download;
mod plan;
mod recovery;
mod server;
mod untar;

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::Serialize;

use super::layout::InstancePrefix;
use super::target::ArchiveTarget;
use crate::pg::{ClusterDirs, PgError, Tools};
use crate::storage::{ObjectStore, StorageError, StorageSettings};

pub use plan::source_system_identifier;

/// How far to replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreTarget {
    /// Everything archived.
    Latest,
    /// Every transaction committed at or before this time (`recovery_target_inclusive`).
    PointInTime(DateTime<Utc>),
}

/// Where a standby streams from. The conninfo holds no password: it names a `passfile`
/// outside the data directory (written by the caller), so no secret is in the server's
/// configuration files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbySource {
    /// libpq connection string to the leader (`host=… port=… user=… passfile=… sslmode=…`).
    pub conninfo: String,
    /// The physical replication slot on the leader.
    pub slot: String,
}

/// Everything a restore needs. The data directory must be absent or empty.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// The archive, for the engine's own reads (manifests, parts, WAL headers).
    pub store: ObjectStore,
    /// The same archive as settings: `wal-fetch` opens it in PostgreSQL's process.
    pub storage: StorageSettings,
    /// The instance to restore from, and its system identifier (rule 8).
    pub source: InstancePrefix,
    pub system_identifier: u64,
    /// The source archive's data key (unwrapped from its `key.json` by the caller, who holds
    /// the keyring); None: the source is in clear.
    pub source_key: Option<super::keydoc::ArchiveKey>,
    pub target: RestoreTarget,
    /// Some: make a standby of the source's leader (target must be `Latest`, no archive of its
    /// own, no superuser verifier: its roles are the leader's).
    pub standby: Option<StandbySource>,
    /// Data directory, socket directory and server log of the new cluster.
    pub dirs: ClusterDirs,
    pub port: u16,
    pub listen_address: String,
    /// PostgreSQL binaries and the OS user the cluster runs as.
    pub tools: Tools,
    /// The `wayback` binary PostgreSQL runs as `restore_command` (and `archive_command`).
    pub wayback_bin: PathBuf,
    /// The archive target file `wal-fetch`/`wal-push` read: must be outside the data directory,
    /// in a directory where the cluster user may create `wal-prefetch/` next to it.
    pub target_file: PathBuf,
    /// The new instance's own archive (its prefix must differ from the source's); None: off.
    pub archive: Option<ArchiveTarget>,
    pub archive_timeout_secs: u64,
    /// WAL segments `wal-fetch` downloads ahead of the one recovery asks for.
    pub fetch_ahead: usize,
    /// How long `wal-fetch` retries a storage error before it aborts recovery.
    pub fetch_retry_secs: u64,
    /// Backup parts downloaded and decompressed at once (memory: about (n + 2) × 64 MiB).
    pub parallel: usize,
    /// When set, the superuser's password becomes this SCRAM verifier once promoted (a clone
    /// must not keep its source's secrets).
    pub superuser_verifier: Option<SecretString>,
    /// Where the engine reports how far it got (the clone's last_operation reads it); None:
    /// nobody is watching.
    pub progress: Option<Arc<RestoreProgress>>,
    /// The data directory already holds a copy of the source with all the WAL its recovery
    /// needs in its own pg_wal (a live fork: `pg_basebackup -X stream`, made by the caller): no
    /// base backup is unpacked, recovery reads nothing from the archive (`recovery::render_conf`)
    /// and ends at the end of that WAL before it promotes onto a new timeline, and the
    /// verification does not ask it to reach the archive's newest segment (the source runs on
    /// and archives past the copy).
    pub prefilled: bool,
}

/// A restore's phase and byte counts, updated by the engine as it goes and read by whoever
/// shows progress. Plain atomics: readers poll, the engine never waits on them.
#[derive(Debug, Default)]
pub struct RestoreProgress {
    phase: AtomicU8,
    /// Raw (uncompressed) bytes of the base backup unpacked so far, and in all.
    bytes_done: AtomicU64,
    bytes_total: AtomicU64,
    /// The chosen backup's stop time, Unix seconds (0 until chosen).
    backup_stop: AtomicI64,
}

/// Where a restore is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestorePhase {
    /// Reading manifests and WAL headers to choose a base backup.
    Planning,
    /// Downloading and unpacking the base backup.
    Unpacking,
    /// PostgreSQL replays WAL from the archive up to the target, then promotes.
    Replaying,
    Done,
}

impl RestoreProgress {
    pub fn phase(&self) -> RestorePhase {
        match self.phase.load(Ordering::Relaxed) {
            0 => RestorePhase::Planning,
            1 => RestorePhase::Unpacking,
            2 => RestorePhase::Replaying,
            _ => RestorePhase::Done,
        }
    }

    /// (raw bytes unpacked, raw bytes of the whole backup).
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.bytes_done.load(Ordering::Relaxed),
            self.bytes_total.load(Ordering::Relaxed),
        )
    }

    /// The stop time of the base backup being restored, once chosen.
    pub fn backup_stop_time(&self) -> Option<DateTime<Utc>> {
        match self.backup_stop.load(Ordering::Relaxed) {
            0 => None,
            t => DateTime::from_timestamp(t, 0),
        }
    }

    fn set_phase(&self, phase: RestorePhase) {
        let n = match phase {
            RestorePhase::Planning => 0,
            RestorePhase::Unpacking => 1,
            RestorePhase::Replaying => 2,
            RestorePhase::Done => 3,
        };
        self.phase.store(n, Ordering::Relaxed);
    }

    pub(crate) fn add_bytes(&self, n: u64) {
        self.bytes_done.fetch_add(n, Ordering::Relaxed);
    }
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub backup_id: String,
    pub backup_stop_time: DateTime<Utc>,
    /// Where the base backup's WAL begins (replay starts here).
    pub backup_start_lsn: String,
    /// None for "latest".
    pub target_time: Option<DateTime<Utc>>,
    /// Compressed bytes of the base backup downloaded.
    pub bytes_downloaded: u64,
    pub raw_bytes: u64,
    /// Download, verification, decompression and unpacking, overlapped.
    pub download_unpack_secs: f64,
    /// Start of PostgreSQL until promotion (WAL replay).
    pub start_to_promoted_secs: f64,
    pub total_secs: f64,
    /// WAL segments in the archive from the backup's start on (what replay may need).
    pub wal_segments: usize,
    pub backup_timeline: u32,
    pub timeline: u32,
    /// Where recovery ended and the new timeline began.
    pub end_lsn: String,
    pub port: u16,
}

/// A restore that could not be done. Messages name the source and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{prefix} has no complete base backup to restore from")]
    NoBackup { prefix: String },
    #[error("{target} is outside the restore window of {prefix}: {}", fmt_window(.earliest, .latest))]
    OutsideWindow {
        prefix: String,
        target: DateTime<Utc>,
        earliest: DateTime<Utc>,
        latest: Option<DateTime<Utc>>,
    },
    /// A restore that must not go ahead: foreign WAL or manifest, unknown format, a target
    /// directory in use, archiving into the source's prefix.
    #[error("REFUSED: {0}")]
    Refused(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    #[error("base backup object {key} is corrupt: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Pg(#[from] PgError),
    /// The server stopped, or did not finish, before promotion. `promoted` is false when the
    /// control file shows it never left recovery.
    #[error(
        "recovery of {pgdata} failed: {reason} (promoted: {promoted}); server log:\n{log_tail}"
    )]
    RecoveryFailed {
        pgdata: String,
        reason: String,
        promoted: bool,
        log_tail: String,
    },
    /// Promoted, but not where it should be.
    #[error("the restored cluster in {pgdata} failed verification: {detail}")]
    Verify { pgdata: String, detail: String },
}

impl RestoreError {
    /// Storage trouble may pass (the restore is tried again); nothing else will.
    pub fn is_transient(&self) -> bool {
        match self {
            RestoreError::Storage(_) => true,
            RestoreError::Archive(e) => !matches!(e, crate::archive::ArchiveError::Key(_)),
            _ => false,
        }
    }

    /// What the platform's user reads about it (no paths, no server log).
    pub fn user_message(&self) -> String {
        match self {
            RestoreError::NoBackup { .. }
            | RestoreError::OutsideWindow { .. }
            | RestoreError::Archive(crate::archive::ArchiveError::Key(_)) => self.to_string(),
            RestoreError::RecoveryFailed { .. } => {
                "replaying the source's WAL failed; the operator's log has the server's messages"
                    .into()
            }
            _ => "the restore from the source's archive failed; the operator's log says why".into(),
        }
    }
}

fn fmt_window(earliest: &DateTime<Utc>, latest: &Option<DateTime<Utc>>) -> String {
    match latest {
        Some(l) if l >= earliest => format!(
            "it can be restored to any time from {} to {}",
            earliest.to_rfc3339(),
            l.to_rfc3339()
        ),
        Some(l) => format!(
            "no commit was archived after its oldest backup ended at {} (last archived commit: {})",
            earliest.to_rfc3339(),
            l.to_rfc3339()
        ),
        None => format!(
            "its oldest backup ended at {} and no archived commit is known",
            earliest.to_rfc3339()
        ),
    }
}

impl RestoreError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| RestoreError::Io { context, source }
    }
}

/// Restores `req.source` into `req.dirs.pgdata`, starts it on `req.port`, waits until it is
/// promoted and verified, and leaves it running with ordinary settings. On failure the server is
/// stopped and the files are left for inspection.
pub async fn restore(req: &RestoreRequest) -> Result<RestoreReport, RestoreError> {
    let started = Instant::now();
    check_request(req)?;
    let plan = plan::plan(&req.store, &req.source, req.system_identifier, req.target).await?;
    let m = &plan.backup;
    if m.parts_encrypted() && req.source_key.is_none() {
        return Err(crate::archive::ArchiveError::Key(format!(
            "backup {} of {} is encrypted, and the restore was given no data key for it \
             ({} is missing or unreadable)",
            m.backup_id,
            req.source.as_str(),
            super::keydoc::doc_key(req.source.as_str())
        ))
        .into());
    }
    tracing::info!(source = req.source.as_str(), backup = %m.backup_id, target = ?req.target, wal_segments = plan.wal_segments, "restoring");
    if let Some(p) = req.progress.as_ref().filter(|_| !req.prefilled) {
        p.bytes_total.store(m.raw_bytes, Ordering::Relaxed);
        p.backup_stop
            .store(m.stop_time.timestamp(), Ordering::Relaxed);
        p.set_phase(RestorePhase::Unpacking);
    }
    let t0 = Instant::now();
    let downloaded = if req.prefilled {
        // The crash tests' point for the data copy: here, just after the caller's copy.
        crate::crash_point::reached("clone_restore:unpacking");
        0
    } else {
        unpack(req, m).await?
    };
    let download_unpack_secs = t0.elapsed().as_secs_f64();
    tracing::info!(backup = %m.backup_id, bytes = downloaded, secs = download_unpack_secs, "base backup unpacked");

    let files = recovery::write_recovery(req, &plan)?;
    if let Some(p) = &req.progress {
        p.set_phase(RestorePhase::Replaying);
    }
    let t1 = Instant::now();
    if req.standby.is_some() {
        let consistent = match server::wait_standby(req, &plan).await {
            Ok(c) => c,
            Err(e) => {
                server::stop_after_failure(req).await;
                return Err(e);
            }
        };
        recovery::restore_access_files(req, &files)?;
        server::reload(req).await?;
        tracing::info!(backup = %m.backup_id, secs = t1.elapsed().as_secs_f64(), "standby consistent");
        if let Some(p) = &req.progress {
            p.set_phase(RestorePhase::Done);
        }
        return Ok(RestoreReport {
            backup_id: m.backup_id.clone(),
            backup_stop_time: m.stop_time,
            backup_start_lsn: m.start_lsn.clone(),
            target_time: None,
            bytes_downloaded: downloaded,
            raw_bytes: m.raw_bytes,
            download_unpack_secs,
            start_to_promoted_secs: t1.elapsed().as_secs_f64(),
            total_secs: started.elapsed().as_secs_f64(),
            wal_segments: plan.wal_segments,
            backup_timeline: m.timeline,
            timeline: consistent.timeline,
            end_lsn: super::layout::format_lsn(consistent.end_lsn),
            port: req.port,
        });
    }
    let promoted = match server::recover(req, &plan).await {
        Ok(p) => p,
        Err(e) => {
            server::stop_after_failure(req).await;
            return Err(e);
        }
    };
    let start_to_promoted_secs = t1.elapsed().as_secs_f64();
    crate::crash_point::reached("clone_restore:promoted");
    recovery::finish(req, &files, m.system_identifier)?;
    server::reload(req).await?;
    tracing::info!(backup = %m.backup_id, timeline = promoted.timeline, secs = start_to_promoted_secs, "restored cluster promoted");
    if let Some(p) = &req.progress {
        p.set_phase(RestorePhase::Done);
    }
    Ok(RestoreReport {
        backup_id: m.backup_id.clone(),
        backup_stop_time: m.stop_time,
        backup_start_lsn: m.start_lsn.clone(),
        target_time: match req.target {
            RestoreTarget::Latest => None,
            RestoreTarget::PointInTime(t) => Some(t),
        },
        bytes_downloaded: downloaded,
        raw_bytes: m.raw_bytes,
        download_unpack_secs,
        start_to_promoted_secs,
        total_secs: started.elapsed().as_secs_f64(),
        wal_segments: plan.wal_segments,
        backup_timeline: m.timeline,
        timeline: promoted.timeline,
        end_lsn: super::layout::format_lsn(promoted.end_lsn),
        port: req.port,
    })
}

/// Downloads and unpacks the plan's base backup into the empty data directory; its raw bytes.
async fn unpack(
    req: &RestoreRequest,
    m: &crate::archive::manifest::BackupManifest,
) -> Result<u64, RestoreError> {
    crate::crash_point::reached("clone_restore:unpacking");
    let owner = req.tools.run_as.owner();
    let parts = download::PartSource {
        store: &req.store,
        prefix: &req.source,
        cipher: req
            .source_key
            .as_ref()
            .filter(|_| m.parts_encrypted())
            .map(|k| std::sync::Arc::new(k.cipher())),
    };
    let downloaded = download::download_and_unpack(
        parts,
        m,
        &req.dirs.pgdata,
        owner,
        req.parallel.max(1),
        req.progress.as_deref(),
    )
    .await?;
    Ok(downloaded)
}

/// Refusals that need no I/O beyond looking at the target directory.
fn check_request(req: &RestoreRequest) -> Result<(), RestoreError> {
    if req.standby.is_some()
        && (req.archive.is_some()
            || req.superuser_verifier.is_some()
            || req.target != RestoreTarget::Latest)
    {
        return Err(RestoreError::Refused(
            "a standby follows its leader to the latest WAL, archives nothing and keeps the \
             leader's roles (no target, no archive, no new superuser password)"
                .into(),
        ));
    }
    if let Some(a) = &req.archive {
        let (new, src) = (a.prefix.trim_end_matches('/'), req.source.as_str());
        if new == src || new.starts_with(&format!("{src}/")) || src.starts_with(&format!("{new}/"))
        {
            return Err(RestoreError::Refused(format!(
                "the restored cluster would archive into {new}, the source's own prefix; \
                 a restore writes nothing there (give it its own prefix or turn archiving off)"
            )));
        }
    }
    if req.target_file.starts_with(&req.dirs.pgdata) {
        return Err(RestoreError::Refused(format!(
            "the archive target file {} must not be inside the data directory {}",
            req.target_file.display(),
            req.dirs.pgdata.display()
        )));
    }
    if req.prefilled {
        return Ok(());
    }
    match std::fs::read_dir(&req.dirs.pgdata) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(RestoreError::Refused(format!(
                    "the target directory {} is not empty",
                    req.dirs.pgdata.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(RestoreError::io(format!(
                "inspect the target directory {}",
                req.dirs.pgdata.display()
            ))(e))
        }
    }
    Ok(())
}

/// How long replay may take before we call it stuck: generous per segment, since a slow
/// archive or a busy machine must not fail a restore that is progressing.
fn replay_bound(wal_segments: usize) -> Duration {
    Duration::from_secs(120 + 5 * wal_segments as u64)
}
