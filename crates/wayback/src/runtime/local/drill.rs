//! Restore drills on this machine (issue 18): an instance's archive restored by the production
//! engine (`archive::restore`) into a scratch copy, checked ([`super::drill_checks`]), and
//! deleted — on the broker's machine, or on the agent holding the instance, the same code.
//!
//! The scratch copy is `<data_dir>/drills/<instance's first 8 hex digits>-<started>/` (data
//! directory, socket directory, server log, the private archive target file `wal-fetch` reads,
//! a passfile). It is
//! unreachable by anything else: `listen_addresses = ''` (no TCP listener at all, only the unix
//! socket in its own 0700 directory), no archiving (rule 4: a drill writes nothing into any
//! prefix), and a superuser password of its own, random, known only to the drill. It is
//! restored to the archive's newest point at the drill's start, so the engine's own
//! verification holds it to "a new timeline, and recovery ended at or after the archive's
//! newest segment".
//!
//! Costs: PostgreSQL's processes in the scratch copy (the startup process that replays,
//! `wal-fetch` and its prefetcher, the backends `pg_amcheck` and the counts use) are moved to
//! the lowest CPU priority (nice 19) and the lowest best-effort I/O priority (class 2, level 7)
//! as soon as they appear, by a watcher that looks every 200 ms; downloading and unpacking the
//! base backup run in this process at its own priority.
//!
//! A running drill gives way to a user's restore: [`LocalRuntime::cancel_drill`]
//! (`super::drill_cancel`) fires its token, the engine's future or the checks' are dropped
//! where they are (download and unpack, recovery, checks), and the drill ends with a
//! `cancelled` report once its copy is gone.
//!
//! The copy is always deleted: after the checks, after a failure, after a cancel, and at start-up for a copy a
//! killed broker or agent left behind ([`LocalRuntime::clear_drills`]: its server and every
//! process still working in it are stopped first). A running drill holds an exclusive `flock`
//! on `<scratch>.lock`, so that another process on the machine (`wayback drill` beside the
//! broker) never removes a drill that runs. Must not import `osb`, `broker`, `store` or `jobs`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;
use wayback_api::drills::{DrillFailure, DrillReport, DrillResult};

use super::restore::stop_everything_in;
use super::{drill_checks, io, rt, ArchiveAccess, LocalRuntime};
use crate::archive::keydoc;
use crate::archive::layout::parse_lsn;
use crate::archive::restore::{self as engine, RestoreError, RestoreTarget};
use crate::domain::InstanceId;
use crate::pg::{fsutil, scram, ClusterDirs, PgError, Tools};
use crate::runtime::{DrillSpec, RuntimeError};

/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// The port of the drill's socket name; nothing listens on TCP, so no port is taken.
const DRILL_PORT: u16 = 5432;

/// One drill's scratch directory and what is in it.
#[derive(Clone)]
struct Scratch {
    root: PathBuf,
    dirs: ClusterDirs,
}

impl Scratch {
    fn new(drills: &Path, id: &InstanceId, started: chrono::DateTime<Utc>) -> Self {
        // Short on purpose: the socket's path must fit a unix socket's 107 bytes wherever a
        // cluster's own socket fits (`<data_dir>/clusters/<instance>/run/`), so the name takes
        // the instance's first 8 hex digits, not all 36 characters; two drills of one machine
        // that share those and the second are kept apart by the scratch's lock.
        let short: String = id.to_string().chars().take(8).collect();
        let root = drills.join(format!("{short}-{}", started.timestamp()));
        let dirs = ClusterDirs {
            pgdata: root.join("pgdata"),
            socket_dir: root.join("run"),
            log_file: root.join("postgres.log"),
            log_dir: root.join("log"),
        };
        Self { root, dirs }
    }

    fn lock_file(&self) -> PathBuf {
        self.root.with_extension("lock")
    }

    /// The directories the engine and `wal-fetch` expect, owned as they need.
    fn create(&self, tools: &Tools) -> Result<(), RuntimeError> {
        let owner = tools.run_as.owner();
        let socket = self.dirs.socket_dir.join(format!(".s.PGSQL.{DRILL_PORT}"));
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(rt(PgError::Setup(format!(
                "the drill's unix socket path {} is longer than the {MAX_SOCKET_PATH} bytes a \
                 socket allows; use a shorter data directory",
                socket.display()
            ))));
        }
        fsutil::ensure_dir(&self.root, 0o711, None)
            .map_err(io(format!("create {}", self.root.display())))?;
        for dir in [
            &self.dirs.socket_dir,
            &self.dirs.log_dir,
            &self.root.join("wal-prefetch"),
        ] {
            fsutil::ensure_dir(dir, 0o700, owner)
                .map_err(io(format!("create {}", dir.display())))?;
        }
        fsutil::ensure_file(&self.dirs.log_file, 0o600, owner)
            .map_err(io(format!("create {}", self.dirs.log_file.display())))
    }
}

/// Stops everything working in a scratch copy and removes it; a failure is logged (the next
/// start-up tries again).
async fn remove_scratch(tools: &Tools, root: &Path, timeout: Duration) {
    let pgdata = root.join("pgdata");
    if pgdata.exists() {
        if let Err(e) = stop_everything_in(tools, &pgdata, timeout).await {
            tracing::warn!(dir = %root.display(), error = %e, "cannot stop the drill's server");
        }
    }
    match std::fs::remove_dir_all(root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %root.display(), error = %e, "cannot remove the drill's scratch copy")
        }
    }
}

/// Holds an exclusive lock on `path` for as long as it lives; None when another process holds it.
fn try_lock(path: &Path) -> Option<nix::fcntl::Flock<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .ok()?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).ok()
}

impl LocalRuntime {
    /// Where drills' scratch copies live.
    fn drills_dir(&self) -> PathBuf {
        self.layout.root().join("drills")
    }

    /// Removes every scratch copy no running drill holds (a broker or agent killed mid-drill
    /// leaves its copy, and perhaps its server, behind); returns how many it removed.
    pub async fn clear_drills(&self) -> Result<usize, RuntimeError> {
        let dir = self.drills_dir();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(0);
        };
        let tools = self.tools().await?.clone();
        let mut removed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let lock_path = path.with_extension("lock");
            let Some(_lock) = try_lock(&lock_path) else {
                continue;
            };
            tracing::warn!(dir = %path.display(), "removing a restore drill's scratch copy left behind by an earlier run");
            remove_scratch(&tools, &path, self.timeout()).await;
            let _ = std::fs::remove_file(&lock_path);
            removed += 1;
        }
        Ok(removed)
    }

    /// Runs one drill of `id`'s archive (see the module docs). A restore or check that fails
    /// is a report with result `failed`; an `Err` means the drill could not be run at all.
    pub async fn drill(
        &self,
        id: &InstanceId,
        spec: &DrillSpec,
    ) -> Result<DrillReport, RuntimeError> {
        let archive = self.archive_access()?.clone();
        let tools = self.tools().await?.clone();
        let clock = Instant::now();
        let drills = self.drills_dir();
        fsutil::ensure_dir(&drills, 0o711, None)
            .map_err(io(format!("create {}", drills.display())))?;
        let scratch = Scratch::new(&drills, id, spec.started);
        let lock = try_lock(&scratch.lock_file()).ok_or_else(|| {
            rt(PgError::Setup(format!(
                "a drill of {id} started at {} runs already",
                spec.started
            )))
        })?;
        let registered = self.running_drills.register(id);
        let cancel = registered.token.clone();
        // A copy of this very drill left by a killed run: from nothing.
        remove_scratch(&tools, &scratch.root, self.timeout()).await;
        let live_before = match spec.live {
            true => self.live_catalog(id).await,
            false => None,
        };
        let mut report = DrillReport {
            instance: id.to_string(),
            started: spec.started,
            result: DrillResult::Failed,
            backup_id: None,
            wal_bytes: None,
            end_lsn: None,
            end_time: None,
            timeline: None,
            duration_secs: 0.0,
            databases_checked: 0,
            tables_counted: 0,
            checks: Vec::new(),
            failure: None,
        };
        let watcher = tokio::spawn(lower_priority(scratch.dirs.pgdata.clone()));
        // On a blocking thread of its own, with owned values: the engine's future is not
        // `Send` for every lifetime of a borrow (the compiler limit `run_engine` works around).
        let handle = tokio::runtime::Handle::current();
        let (scratch2, tools2, id2, spec2, report2, cancel2) = (
            scratch.clone(),
            tools.clone(),
            id.clone(),
            spec.clone(),
            report.clone(),
            cancel.clone(),
        );
        let task = tokio::task::spawn_blocking(move || {
            handle.block_on(drill_in(
                scratch2, tools2, archive, id2, spec2, report2, cancel2,
            ))
        });
        let outcome = match task.await {
            Ok((r, outcome)) => {
                report = r;
                outcome
            }
            Err(e) => Err(DrillFailure {
                check: "drill".into(),
                detail: format!("the drill task ended: {e}"),
            }),
        };
        let outcome = match outcome {
            Ok(copy) => {
                let checks = async {
                    let checked = drill_checks::run(&copy, &mut report).await;
                    if checked.is_ok() && spec.live {
                        let after = self.live_catalog(id).await;
                        drill_checks::compare_catalogs(&copy, live_before, after, &mut report).await
                    } else {
                        checked
                    }
                };
                // Cancelled: the checks' futures are dropped (their clients and `pg_amcheck`
                // with them); the server goes with the scratch copy below.
                tokio::select! {
                    checked = checks => checked,
                    () = cancel.cancelled() => Err(cancelled()),
                }
            }
            Err(failure) => Err(failure),
        };
        watcher.abort();
        remove_scratch(&tools, &scratch.root, self.timeout()).await;
        if cancel.is_cancelled() {
            // An unpacker dropped half-way may still have been writing its last part while
            // the copy was removed: remove what it left, if anything.
            for _ in 0..20 {
                if !scratch.root.exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                remove_scratch(&tools, &scratch.root, self.timeout()).await;
            }
        }
        drop(registered);
        drop(lock);
        let _ = std::fs::remove_file(scratch.lock_file());
        report.duration_secs = clock.elapsed().as_secs_f64();
        match outcome {
            Ok(()) => report.result = DrillResult::Passed,
            Err(_) if cancel.is_cancelled() => {
                report.result = DrillResult::Cancelled;
                report.failure = None;
                report.checks.push(
                    "cancelled: a user's clone or follower restore on this machine goes first"
                        .into(),
                );
            }
            Err(failure) => {
                report.result = DrillResult::Failed;
                report.failure = Some(failure);
            }
        }
        Ok(report)
    }
}

impl LocalRuntime {
    /// The live instance's tables, per database; None when it cannot be read (stopped, busy).
    async fn live_catalog(&self, id: &InstanceId) -> Option<drill_checks::Catalog> {
        let opts = self.admin_options(id).await.ok()?;
        match drill_checks::catalog(&opts).await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::info!(instance = %id, error = %e, "restore drill: cannot read the live catalog");
                None
            }
        }
    }
}

/// Restores into the scratch copy; on success the running copy to check.
async fn drill_in(
    scratch: Scratch,
    tools: Tools,
    archive: ArchiveAccess,
    id: InstanceId,
    spec: DrillSpec,
    mut report: DrillReport,
    cancel: CancellationToken,
) -> (DrillReport, Result<drill_checks::Copy, DrillFailure>) {
    let outcome = restore_copy(&scratch, &tools, &archive, &id, &spec, &mut report, &cancel).await;
    (report, outcome)
}

/// What a cancelled drill's engine answers (the report says `cancelled`, not this).
fn cancelled() -> DrillFailure {
    DrillFailure {
        check: "drill".into(),
        detail: "cancelled".into(),
    }
}

async fn restore_copy(
    scratch: &Scratch,
    tools: &Tools,
    archive: &ArchiveAccess,
    id: &InstanceId,
    spec: &DrillSpec,
    report: &mut DrillReport,
    cancel: &CancellationToken,
) -> Result<drill_checks::Copy, DrillFailure> {
    let failed = |check: &str, detail: String| DrillFailure {
        check: check.into(),
        detail,
    };
    scratch
        .create(tools)
        .map_err(|e| failed("drill", e.to_string()))?;
    let store = &archive.store;
    let system_identifier = engine::source_system_identifier(store, &spec.source)
        .await
        .map_err(|e| failed("restore", e.to_string()))?
        .ok_or_else(|| {
            failed(
                "drill",
                format!("{} has no complete base backup", spec.source.as_str()),
            )
        })?;
    let source_key = keydoc::data_key(store, archive.keyring.as_deref(), spec.source.as_str())
        .await
        .map_err(|e| failed("restore", e.to_string()))?
        .map(keydoc::ArchiveKey);
    let password = scram::random_password(32);
    let verifier = scram::verifier(&password).map_err(|e| failed("drill", e.to_string()))?;
    let settings = &archive.settings;
    let request = engine::RestoreRequest {
        standby: None,
        store: store.clone(),
        storage: crate::archive::target::capture_environment(&settings.archive),
        source: spec.source.clone(),
        system_identifier,
        source_key,
        target: RestoreTarget::Latest,
        dirs: scratch.dirs.clone(),
        port: DRILL_PORT,
        listen_address: String::new(),
        tools: tools.clone(),
        wayback_bin: archive.wayback_bin.clone(),
        target_file: scratch.root.join("archive.json"),
        archive: None,
        archive_timeout_secs: settings.wal.archive_timeout_secs,
        fetch_ahead: settings.wal.fetch_ahead,
        fetch_retry_secs: 60,
        parallel: 2,
        superuser_verifier: Some(SecretString::from(verifier)),
        progress: None,
        prefilled: false,
    };
    tracing::info!(instance = %id, source = spec.source.as_str(), dir = %scratch.root.display(), "restore drill: restoring");
    let handle = tokio::runtime::Handle::current();
    let cancel2 = cancel.clone();
    // Cancelled: the engine's future is dropped where it runs — its downloads aborted, its
    // unpacker left to stop at the closed channel, its server stopped with the scratch copy.
    let restored = tokio::task::spawn_blocking(move || {
        handle.block_on(async {
            tokio::select! {
                r = engine::restore(&request) => Some(r),
                () = cancel2.cancelled() => None,
            }
        })
    })
    .await
    .map_err(|e| failed("drill", format!("the restore task ended: {e}")))?;
    let restored = match restored {
        None => return Err(cancelled()),
        Some(Ok(r)) => r,
        Some(Err(e)) => return Err(restore_failure(&e, &scratch.dirs)),
    };
    report.backup_id = Some(restored.backup_id.clone());
    report.timeline = Some(restored.timeline);
    report.end_lsn = Some(restored.end_lsn.clone());
    report.wal_bytes = parse_lsn(&restored.end_lsn)
        .zip(parse_lsn(&restored.backup_start_lsn))
        .map(|(end, start)| end.saturating_sub(start));
    report.checks.push(format!(
        "restored base backup {} and replayed the archive's WAL to its newest segment; \
             promoted onto timeline {} (the backup's was {}) at {}",
        restored.backup_id, restored.timeline, restored.backup_timeline, restored.end_lsn
    ));
    let passfile = scratch.root.join("passfile");
    let line = format!(
        "*:*:*:{}:{}\n",
        crate::pg::SUPERUSER,
        password.expose_secret()
    );
    fsutil::write_atomic(&passfile, line.as_bytes(), 0o600, tools.run_as.owner())
        .map_err(|e| failed("drill", format!("write {}: {e}", passfile.display())))?;
    Ok(drill_checks::Copy {
        tools: tools.clone(),
        socket_dir: scratch.dirs.socket_dir.clone(),
        port: DRILL_PORT,
        password,
        passfile,
    })
}

/// The first failing check of a restore that did not finish, naming the archived WAL
/// segment when its copy was bad.
fn restore_failure(e: &RestoreError, dirs: &ClusterDirs) -> DrillFailure {
    let (check, detail) = match e {
        RestoreError::Verify { detail, .. } => ("timeline", detail.clone()),
        RestoreError::RecoveryFailed { reason, .. } => {
            let log = crate::pg::server_log::recent(dirs, 0, None);
            let text = format!("{e}\n{log}");
            match bad_segment(&text) {
                Some((segment, line)) => (
                    "recovery",
                    format!("WAL segment {segment} in the archive cannot be replayed: {line}"),
                ),
                None => (
                    "recovery",
                    format!(
                        "{reason}; server log: {}",
                        crate::pg::process::tail_lines(&log, 5)
                    ),
                ),
            }
        }
        RestoreError::NoBackup { .. } => ("drill", e.to_string()),
        other => ("restore", other.to_string()),
    };
    DrillFailure {
        check: check.into(),
        detail,
    }
}

/// The first line of `text` that says an archived file is corrupt (or could not be fetched),
/// with the WAL segment name in it.
pub(super) fn bad_segment(text: &str) -> Option<(String, String)> {
    text.lines()
        .filter(|l| l.contains("corrupt") || l.contains("wal-fetch"))
        .find_map(|l| segment_name(l).map(|s| (s, l.trim().to_string())))
}

/// A 24-hex-digit WAL segment name in `line`.
fn segment_name(line: &str) -> Option<String> {
    let bytes = line.as_bytes();
    (0..bytes.len().saturating_sub(23)).find_map(|i| {
        let run = &bytes[i..i + 24];
        let before = i.checked_sub(1).map(|j| bytes[j]);
        let after = bytes.get(i + 24).copied();
        let boundary = |b: Option<u8>| !b.is_some_and(|b| b.is_ascii_hexdigit());
        (run.iter()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b))
            && boundary(before)
            && boundary(after))
        .then(|| String::from_utf8_lossy(run).into_owned())
    })
}

/// Moves every process working in `pgdata` to nice 19 and best-effort I/O level 7, until
/// aborted.
async fn lower_priority(pgdata: PathBuf) {
    let mut done = std::collections::HashSet::new();
    loop {
        for pid in crate::pg::ctl::processes_in(&pgdata) {
            if done.insert(pid) {
                // SAFETY: plain system calls on a pid; failure (the process is gone) is harmless.
                unsafe {
                    libc::setpriority(libc::PRIO_PROCESS, pid as libc::id_t, 19);
                    libc::syscall(libc::SYS_ioprio_set, 1, pid, (2 << 13) | 7);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_segment_is_named() {
        let log = "2026-12-06 LOG: restored log file\n\
                   wal-fetch: archived file spaces/s/instances/i/wal/000000010000000000000004 is \
                   corrupt: checksum mismatch\nFATAL: could not restore";
        let (seg, line) = bad_segment(log).unwrap();
        assert_eq!(seg, "000000010000000000000004");
        assert!(line.contains("corrupt"));
        assert_eq!(bad_segment("nothing here 0123"), None);
        assert_eq!(segment_name("x 0000000100000000000000041 y"), None);
    }
}
