//! A clone's restore on this machine, run in the background and polled — by the job step when
//! the broker runs its clusters itself, and through the agent API when an agent does: the same
//! code either way.
//!
//! The restore engine writes into `pgdata/` directly and refuses a non-empty directory, so a
//! restore interrupted half-way is started again from nothing: preparing it stops whatever runs
//! there and removes it — unless the `restored` marker says a restore already finished, in which
//! case the cluster is kept.
//!
//! Starting again from nothing means *nothing* of the earlier attempt may live on. A broker
//! killed while the recovery server replayed leaves that server running on its own (pg_ctl
//! starts it in its own session), with its `wal-fetch` and prefetch processes; it promotes and
//! archives its new timeline into the clone's prefix. A second restore then promotes onto the
//! same timeline with different content, and the archive refuses every file of it ("SPLIT
//! BRAIN?", rule 2): the clone would never archive again (issue 12). So preparing also kills
//! every process still working in the directories it removes, and empties the clone's own
//! prefix (`wal/` and `base/`): nothing in it was written by this restore, and no one else
//! writes there (a clone is `provisioning` until its restore and first archive are done).
//!
//! The superuser's new password is written to `admin-password` *before* the restore, and the
//! engine sets its verifier at promotion, so that the two cannot disagree. A restore that runs
//! (or succeeded) is joined by the next start; one that failed is started again. The record of restores lives in memory: a runtime restarted during one starts
//! it again from nothing when asked. Must not import `osb`, `broker`, `store` or `jobs`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use wayback_api::agent::{RestorePhase, RestoreState, RestoreStatus, WireError};

use super::layout::Layout;
use super::{fork, io, rt, trash, ArchiveAccess, LocalRuntime};
use crate::archive::keydoc;
use crate::archive::layout::InstancePrefix;
use crate::archive::restore::{self as engine, RestoreProgress, RestoreReport};
use crate::archive::ArchiveTarget;
use crate::domain::InstanceId;
use crate::pg::ctl::{self, StopMode};
use crate::pg::{fsutil, scram, PgError, Tools};
use crate::runtime::error::to_wire;
use crate::runtime::{RestoreSpec, RuntimeError};

/// The restores this runtime started, by instance.
#[derive(Default)]
pub(super) struct Restores(Mutex<HashMap<InstanceId, Arc<RestoreTask>>>);

/// A restore running (or finished).
#[derive(Default)]
struct RestoreTask {
    progress: Arc<RestoreProgress>,
    /// Why the kept copy asked for was not used, once known (the restore goes on from the
    /// archive).
    kept_copy_refused: Mutex<Option<String>>,
    /// Why the live fork asked for was not made, once known (likewise).
    live_fork_refused: Mutex<Option<String>>,
    /// None while it runs.
    outcome: Mutex<Option<Result<RestoreDone, WireError>>>,
}

/// What a finished restore reports; empty when an earlier run had already restored.
#[derive(Clone, Default)]
struct RestoreDone {
    backup_id: Option<String>,
    timeline: Option<u32>,
    total_secs: Option<f64>,
    from_kept_copy: bool,
    wal_bytes: Option<u64>,
    live_fork_bytes: Option<u64>,
}

impl Restores {
    fn get(&self, id: &InstanceId) -> Option<Arc<RestoreTask>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }
}

impl RestoreTask {
    fn failed(&self) -> bool {
        matches!(
            *self.outcome.lock().unwrap_or_else(|p| p.into_inner()),
            Some(Err(_))
        )
    }
}

/// What a background restore makes: a clone (promoted) or a follower (a standby).
#[derive(Clone)]
pub(super) enum Work {
    Clone(RestoreSpec),
    Follow(crate::runtime::FollowSpec),
}

impl LocalRuntime {
    /// Starts the restore of `spec` into `id`'s cluster in the background, or joins the one
    /// that runs or succeeded (see the module docs).
    pub async fn start_restore(
        &self,
        id: &InstanceId,
        spec: &RestoreSpec,
    ) -> Result<RestoreStatus, RuntimeError> {
        self.start_work(id, Work::Clone(spec.clone())).await
    }

    /// [`Self::start_restore`] for either kind of work.
    pub(super) async fn start_work(
        &self,
        id: &InstanceId,
        work: Work,
    ) -> Result<RestoreStatus, RuntimeError> {
        let site = Site {
            layout: self.layout.clone(),
            tools: self.tools().await?.clone(),
            lock: self.lock_of(id),
            listen_address: self.settings.listen_address.clone(),
            timeout: self.timeout(),
            archive: self.archive_access()?.clone(),
            tls: self.tls.clone(),
        };
        let task = {
            let mut map = self.restores.0.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(id).filter(|t| !t.failed()) {
                Some(task) => task.clone(),
                None => {
                    let task = Arc::new(RestoreTask::default());
                    map.insert(id.clone(), task.clone());
                    tokio::spawn(run(site, id.clone(), work, task.clone()));
                    task
                }
            }
        };
        Ok(self.restore_view(id, Some(&task)))
    }

    /// Where `id`'s restore is; `none` when this runtime started none.
    pub async fn restore_status(&self, id: &InstanceId) -> Result<RestoreStatus, RuntimeError> {
        let task = self.restores.get(id);
        Ok(self.restore_view(id, task.as_deref()))
    }

    /// Forgets `id`'s restore (its cluster is gone).
    pub(super) fn forget_restore(&self, id: &InstanceId) {
        self.restores
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// True while the instance's cluster is still in recovery (`recovery.signal` present).
    pub fn recovering(&self, id: &InstanceId) -> bool {
        self.layout.dirs(id).pgdata.join("recovery.signal").exists()
    }

    fn restore_view(&self, id: &InstanceId, task: Option<&RestoreTask>) -> RestoreStatus {
        let Some(task) = task else {
            return RestoreStatus::default();
        };
        let (bytes_done, bytes_total) = task.progress.bytes();
        let mut out = RestoreStatus {
            state: RestoreState::Running,
            phase: match task.progress.phase() {
                engine::RestorePhase::Planning => RestorePhase::Planning,
                engine::RestorePhase::Unpacking => RestorePhase::Unpacking,
                engine::RestorePhase::Replaying => RestorePhase::Replaying,
                engine::RestorePhase::Done => RestorePhase::Done,
            },
            bytes_done,
            bytes_total,
            backup_stop: task.progress.backup_stop_time().map(|t| t.timestamp()),
            recovering: self.recovering(id),
            kept_copy_refused: task
                .kept_copy_refused
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            live_fork_refused: task
                .live_fork_refused
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            ..Default::default()
        };
        match &*task.outcome.lock().unwrap_or_else(|p| p.into_inner()) {
            None => {}
            Some(Ok(done)) => {
                out.state = RestoreState::Succeeded;
                out.backup_id = done.backup_id.clone();
                out.timeline = done.timeline;
                out.total_secs = done.total_secs;
                out.from_kept_copy = done.from_kept_copy;
                out.wal_bytes = done.wal_bytes;
                out.live_fork_bytes = done.live_fork_bytes;
            }
            Some(Err(e)) => {
                out.state = RestoreState::Failed;
                out.error = Some(e.clone());
            }
        }
        out
    }
}

/// Runs one restore to its end and records how it ended.
async fn run(site: Site, id: InstanceId, work: Work, task: Arc<RestoreTask>) {
    let result = match work {
        Work::Clone(spec) => site.restore(&id, spec, &task).await,
        Work::Follow(spec) => site
            .follow(&id, spec, task.progress.clone())
            .await
            .map(|r| r.map(Restored::Archive)),
    };
    let outcome = match result {
        Ok(restored) => {
            let done = match restored {
                None => RestoreDone::default(),
                Some(Restored::Archive(r)) => RestoreDone {
                    backup_id: Some(r.backup_id),
                    timeline: Some(r.timeline),
                    total_secs: Some(r.total_secs),
                    from_kept_copy: false,
                    // The WAL replayed from the backup's start to the end of recovery, not
                    // every segment the archive holds.
                    wal_bytes: crate::archive::layout::parse_lsn(&r.end_lsn)
                        .zip(crate::archive::layout::parse_lsn(&r.backup_start_lsn))
                        .map(|(end, start)| end.saturating_sub(start)),
                    live_fork_bytes: None,
                },
                Some(Restored::LiveFork { report: r, bytes }) => RestoreDone {
                    backup_id: Some(r.backup_id),
                    timeline: Some(r.timeline),
                    total_secs: Some(r.total_secs),
                    live_fork_bytes: Some(bytes),
                    ..RestoreDone::default()
                },
                Some(Restored::KeptCopy { secs }) => RestoreDone {
                    total_secs: Some(secs),
                    from_kept_copy: true,
                    ..RestoreDone::default()
                },
            };
            tracing::info!(instance = %id, backup = ?done.backup_id, kept_copy = done.from_kept_copy, "restore finished");
            Ok(done)
        }
        Err(e) => {
            tracing::warn!(instance = %id, error = %e, permanent = e.is_permanent(), "restore failed");
            Err(to_wire(&e))
        }
    };
    *task.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
}

/// How a restore that ran got its data directory.
enum Restored {
    /// The engine restored and recovered it from the archive.
    Archive(RestoreReport),
    /// The source's copy kept at delete time, taken and readied (`trash::adopt`).
    KeptCopy { secs: f64 },
    /// A copy of the running source (`fork::copy_running`, `bytes` of it), recovered by the
    /// engine.
    LiveFork { report: RestoreReport, bytes: u64 },
}

/// What a restore needs of the runtime, owned: it outlives the call that starts it.
pub(super) struct Site {
    pub(super) layout: Layout,
    pub(super) tools: Tools,
    /// The instance's lock, held while its directories are prepared.
    lock: Arc<tokio::sync::Mutex<()>>,
    pub(super) listen_address: String,
    timeout: Duration,
    pub(super) archive: ArchiveAccess,
    pub(super) tls: Option<super::ClusterTls>,
}

/// An emptied cluster directory, ready for the engine.
pub(super) struct Slot {
    pub(super) target_file: PathBuf,
    /// The SCRAM verifier of the new superuser password, already in `admin-password`.
    pub(super) superuser_verifier: SecretString,
}

impl Site {
    pub(super) fn restored_marker(&self, id: &InstanceId) -> PathBuf {
        self.layout.cluster(id).join("restored")
    }

    /// Restores the source into the instance's data directory, recovers and promotes it, and
    /// records that it did. None: an earlier run already finished the restore.
    ///
    /// A kept copy (issue 16) is tried first when the spec names one: taken by rename if its
    /// `pg_control` is exactly what was recorded at delete time — it then holds every commit
    /// the archive holds, up to its clean shutdown — and readied without a recovery
    /// (`trash::adopt`: a new superuser password; why its WAL can never be confused with the
    /// source's is said there). It is left shut down: the clone's next steps write its
    /// configuration and own archiving and start it once. If the copy is refused, or readying
    /// it fails, the directory is emptied again and the restore goes on from the archive.
    async fn restore(
        &self,
        id: &InstanceId,
        spec: RestoreSpec,
        task: &RestoreTask,
    ) -> Result<Option<Restored>, RuntimeError> {
        let progress = task.progress.clone();
        let settings = &self.archive.settings;
        // The source's data key first: a key that is missing or does not unwrap fails the
        // restore before anything is created (not even the new instance's key.json).
        let keyring = self.archive.keyring.as_deref();
        let source_key = keydoc::data_key(&self.archive.store, keyring, spec.source.as_str())
            .await
            .map_err(|e| RuntimeError::Restore(e.into()))?
            .map(keydoc::ArchiveKey);
        // The new instance's own archive: it archives there from its first moment.
        let mut own = ArchiveTarget::for_instance(settings, &spec.space, id);
        let own_prefix = InstancePrefix::new(&spec.space, id);
        own.data_key = keydoc::ensure(
            &self.archive.store,
            keyring,
            own_prefix.as_str(),
            settings.archive.encrypt,
        )
        .await
        .map_err(|e| RuntimeError::Restore(e.into()))?
        .map(keydoc::ArchiveKey);
        let Some(slot) = self
            .prepare(id, spec.port, Some((&own, &own_prefix)), None)
            .await?
        else {
            return Ok(None);
        };
        let request = |slot: Slot| engine::RestoreRequest {
            standby: None,
            store: self.archive.store.clone(),
            storage: crate::archive::target::capture_environment(&settings.archive),
            source: spec.source.clone(),
            system_identifier: spec.source_system_identifier,
            source_key: source_key.clone(),
            target: spec.target,
            dirs: self.layout.dirs(id),
            port: spec.port,
            listen_address: self.listen_address.clone(),
            tools: self.tools.clone(),
            wayback_bin: self.archive.wayback_bin.clone(),
            target_file: slot.target_file,
            archive: Some(own.clone()),
            archive_timeout_secs: spec.archive_timeout_secs,
            fetch_ahead: settings.wal.fetch_ahead,
            fetch_retry_secs: 60,
            parallel: 4,
            superuser_verifier: Some(slot.superuser_verifier),
            progress: Some(progress.clone()),
            prefilled: false,
        };
        if let Some(source) = &spec.live_fork {
            let mut req = request(slot);
            let why = match fork::copy_running(&self.layout, &self.tools, source, &req.dirs.pgdata)
                .await
            {
                Ok(bytes) => {
                    tracing::info!(instance = %id, source = %source, bytes, "forked the running source");
                    req.prefilled = true;
                    req.target = engine::RestoreTarget::Latest;
                    match self.run_engine(id, req).await {
                        Ok(report) => return Ok(Some(Restored::LiveFork { report, bytes })),
                        Err(e) => format!("recovering the copy failed ({e})"),
                    }
                }
                Err(why) => why,
            };
            tracing::warn!(instance = %id, source = %source, why, "the running source was not forked; restoring from the archive");
            *task
                .live_fork_refused
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(why);
            let Some(slot) = self
                .prepare(id, spec.port, Some((&own, &own_prefix)), None)
                .await?
            else {
                return Ok(None);
            };
            let report = self.run_engine(id, request(slot)).await?;
            return Ok(Some(Restored::Archive(report)));
        }
        let Some(kept) = &spec.kept_copy else {
            let report = self.run_engine(id, request(slot)).await?;
            return Ok(Some(Restored::Archive(report)));
        };
        let started = std::time::Instant::now();
        let pgdata = self.layout.dirs(id).pgdata;
        let why = match trash::take(
            &self.layout,
            &kept.source,
            &kept.checkpoint_lsn,
            spec.source_system_identifier,
            &pgdata,
        ) {
            Ok(()) => {
                tracing::info!(instance = %id, source = %kept.source, "restoring from the copy kept at delete time");
                let adopted =
                    trash::adopt(&self.tools, &pgdata, &slot.superuser_verifier, self.timeout)
                        .await;
                match adopted.and_then(|()| self.mark_restored(id).map_err(|e| e.to_string())) {
                    Ok(()) => {
                        let secs = started.elapsed().as_secs_f64();
                        return Ok(Some(Restored::KeptCopy { secs }));
                    }
                    Err(e) => format!("readying it failed ({e})"),
                }
            }
            Err(why) => why,
        };
        tracing::warn!(instance = %id, source = %kept.source, why, "the kept copy is not used; restoring from the archive");
        *task
            .kept_copy_refused
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(why);
        let Some(slot) = self
            .prepare(id, spec.port, Some((&own, &own_prefix)), None)
            .await?
        else {
            return Ok(None);
        };
        let report = self.run_engine(id, request(slot)).await?;
        Ok(Some(Restored::Archive(report)))
    }

    /// Runs the engine and records that it finished.
    pub(super) async fn run_engine(
        &self,
        id: &InstanceId,
        req: engine::RestoreRequest,
    ) -> Result<RestoreReport, RuntimeError> {
        // On a blocking thread of its own: the engine's future is not `Send` for every lifetime
        // (a known compiler limit with borrowed streams), and callers spawn their futures.
        let handle = tokio::runtime::Handle::current();
        let report = tokio::task::spawn_blocking(move || handle.block_on(engine::restore(&req)))
            .await
            .map_err(|e| {
                RuntimeError::Pg(PgError::Setup(format!("the restore task ended: {e}")))
            })??;
        self.mark_restored(id)?;
        Ok(report)
    }

    fn mark_restored(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        let marker = self.restored_marker(id);
        fsutil::write_atomic(&marker, b"restored\n", 0o600, None)
            .map_err(io(format!("write {}", marker.display())))
    }

    /// Prepares an empty data directory for a restore that archives into `own` once
    /// promoted (a clone; None: a follower, which archives nothing), with `superuser` as its
    /// superuser password (None: a new random one); `None` when an earlier run already
    /// restored it (see the module docs).
    pub(super) async fn prepare(
        &self,
        id: &InstanceId,
        port: u16,
        own: Option<(&ArchiveTarget, &InstancePrefix)>,
        superuser: Option<&SecretString>,
    ) -> Result<Option<Slot>, RuntimeError> {
        let _guard = self.lock.clone().lock_owned().await;
        let tools = &self.tools;
        self.layout
            .check_socket_path(id, port)
            .map_err(|m| rt(PgError::Setup(m)))?;
        let dirs = self.layout.dirs(id);
        if self.restored_marker(id).is_file() && dirs.exists() {
            return Ok(None);
        }
        let owner = tools.run_as.owner();
        let cluster = self.layout.cluster(id);
        fsutil::ensure_dir(&cluster, 0o711, None)
            .map_err(io(format!("create {}", cluster.display())))?;
        fsutil::ensure_dir(&dirs.socket_dir, 0o700, owner)
            .map_err(io(format!("create {}", dirs.socket_dir.display())))?;
        fsutil::ensure_file(&dirs.log_file, 0o600, owner)
            .map_err(io(format!("create {}", dirs.log_file.display())))?;
        fsutil::ensure_dir(&dirs.log_dir, 0o700, owner)
            .map_err(io(format!("create {}", dirs.log_dir.display())))?;
        // wal-fetch (prefetch) and wal-push run as the cluster user, next to the target file.
        for sub in ["wal-pushed", "wal-prefetch"] {
            let dir = cluster.join(sub);
            fsutil::ensure_dir(&dir, 0o700, owner)
                .map_err(io(format!("create {}", dir.display())))?;
        }
        if let Some((archive, _)) = own {
            super::archive::prepare_local_archive(archive, owner)?;
        }
        for dir in [dirs.pgdata.clone(), self.layout.partial(id)] {
            if dir.exists() {
                stop_everything_in(tools, &dir, self.timeout).await?;
                std::fs::remove_dir_all(&dir).map_err(io(format!("remove {}", dir.display())))?;
            }
        }
        // The earlier attempt's prefetched WAL and its markers of segments pushed ahead go
        // with it (a marker would let wal-push skip a file that is no longer archived).
        for sub in ["wal-pushed", "wal-prefetch"] {
            let dir = cluster.join(sub);
            std::fs::remove_dir_all(&dir).map_err(io(format!("remove {}", dir.display())))?;
            fsutil::ensure_dir(&dir, 0o700, owner)
                .map_err(io(format!("create {}", dir.display())))?;
        }
        if let Some((_, own_prefix)) = own {
            self.empty_own_prefix(id, own_prefix).await?;
        }
        // A clone's own certificate and key, never its source's (which no backup carries).
        if let Some(tls) = &self.tls {
            tls.ensure(&self.layout, owner, id, true)?;
        }
        let password = superuser
            .cloned()
            .unwrap_or_else(|| scram::random_password(32));
        let verifier = scram::verifier(&password).map_err(rt)?;
        let pw_file = self.layout.password_file(id);
        fsutil::write_atomic(&pw_file, password.expose_secret().as_bytes(), 0o600, None)
            .map_err(io(format!("write {}", pw_file.display())))?;
        Ok(Some(Slot {
            target_file: cluster.join("archive.json"),
            superuser_verifier: SecretString::from(verifier),
        }))
    }

    /// Removes what an earlier attempt's server archived into the clone's own prefix (see the
    /// module docs); its `instance.json`, if any, stays.
    async fn empty_own_prefix(
        &self,
        id: &InstanceId,
        prefix: &InstancePrefix,
    ) -> Result<(), RuntimeError> {
        let store = &self.archive.store;
        let storage = |e: crate::storage::StorageError| RuntimeError::Restore(e.into());
        let mut keys = Vec::new();
        for dir in [prefix.wal_dir(), prefix.base_dir()] {
            keys.extend(
                store
                    .list(&dir)
                    .await
                    .map_err(storage)?
                    .into_iter()
                    .map(|m| m.key),
            );
        }
        if !keys.is_empty() {
            tracing::warn!(instance = %id, objects = keys.len(), "an earlier attempt of this restore archived into the clone's prefix; removing it before restoring again");
            store.delete_many(&keys).await.map_err(storage)?;
        }
        Ok(())
    }
}

/// Stops the server of `dir` and kills every process still working there (the orphaned
/// `wal-fetch`, `wal-push` and prefetch processes of a server whose broker died, and a live
/// fork's `pg_basebackup` still copying into it), bounded.
pub(super) async fn stop_everything_in(
    tools: &Tools,
    dir: &Path,
    timeout: Duration,
) -> Result<(), RuntimeError> {
    if let Ok(Some(pm)) = ctl::live_postmaster(dir) {
        tracing::warn!(dir = %dir.display(), pid = pm.pid, "stopping the server an earlier attempt left running");
    }
    if ctl::stop(tools, dir, StopMode::Immediate, timeout)
        .await
        .is_err()
    {
        ctl::kill_postmaster(dir, Duration::from_secs(10))
            .await
            .map_err(rt)?;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut left = ctl::processes_in(dir);
        left.extend(crate::pg::pidfile::copiers_into(dir));
        if left.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(rt(PgError::Setup(format!(
                "processes {left:?} still work in {} after SIGKILL",
                dir.display()
            ))));
        }
        tracing::warn!(dir = %dir.display(), pids = ?left, "killing processes an earlier attempt left running");
        for pid in left {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
