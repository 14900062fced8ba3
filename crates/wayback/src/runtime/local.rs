//! The local runtime: clusters on this machine, one per instance, under
//! `<data_dir>/clusters/<instance>/` (see [`layout`]), driven by the `pg` driver.
//!
//! Every call is idempotent, because a job step that crashed half-way is simply run again:
//! creation builds `pgdata.partial` and renames it to `pgdata` only when it is complete (so
//! `pgdata/PG_VERSION` means "done"), start/stop/destroy look before they act, and SQL steps
//! check before they create. Calls for one instance are serialised by a per-instance lock, since
//! the job worker and the supervisor may both reach for the same cluster. The port lives in the
//! rendered `postgresql.conf`; while the server runs, `postmaster.pid` says which port it really
//! listens on. Base backups and clones' restores need the archive as well: a runtime that
//! takes them is given one ([`LocalRuntime::with_archive`]) — the broker's own, or the agent's.
//! Must not import `osb`, `broker`, `store` or `jobs`.

mod activity;
mod admin;
mod archive;
mod backup;
mod clone;
mod drill;
mod drill_cancel;
mod drill_checks;
mod follow;
mod fork;
mod ha;
mod ha_history;
mod ha_patroni;
mod ha_release;
mod inspect;
mod interface;
mod layout;
mod lifecycle;
mod quiet;
mod replication;
mod restore;
mod sessions;
mod stats;
mod tls;
mod trash;
mod wake;

pub use wake::WakeLimits;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::sync::OnceCell;

use super::{ClusterSpec, RuntimeError};
use crate::config::PostgresSettings;
use crate::domain::InstanceId;
use crate::pg::ctl;
use crate::pg::fsutil::{self, Owner};
use crate::pg::{conf, initdb, scram, Binaries, ClusterDirs, PgError, RunAs, Tools};
use layout::Layout;
pub use tls::ClusterTls;

fn rt(e: PgError) -> RuntimeError {
    match e {
        PgError::PortInUse { port } => RuntimeError::PortInUse(port),
        other => RuntimeError::Pg(other),
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let f = PgError::io(context);
    move |e| RuntimeError::Pg(f(e))
}

/// What a runtime needs to take base backups and restore clones itself: the archive, the
/// settings an instance's archive target is built from, and the `wayback` binary its clusters
/// run as `restore_command` and `archive_command`.
#[derive(Clone)]
pub struct ArchiveAccess {
    pub store: crate::storage::ObjectStore,
    pub settings: Arc<crate::config::Settings>,
    pub wayback_bin: PathBuf,
    /// The operator's keys, which wrap every instance's archive data key (`key.json`); None:
    /// encrypted archives can be neither written nor read.
    pub keyring: Option<Arc<crate::crypto::Keyring>>,
}

pub struct LocalRuntime {
    layout: Layout,
    settings: PostgresSettings,
    archive: Option<ArchiveAccess>,
    tools: OnceCell<Tools>,
    template: OnceCell<()>,
    /// Shared with the wake listener's holds, which start parked clusters.
    locks: Arc<Mutex<HashMap<InstanceId, Arc<tokio::sync::Mutex<()>>>>>,
    restores: restore::Restores,
    running_drills: drill_cancel::RunningDrills,
    tls: Option<ClusterTls>,
    /// Answers kept for quiet clusters, so that watching them opens no session (issue 17).
    quiet: quiet::Quiet,
    /// The ports of parked clusters, held until a client connects (issue 17).
    wake: wake::Wake,
    /// What running clusters are doing, sampled every second (issue 19).
    activity: activity::Sampler,
}

impl LocalRuntime {
    /// Nothing is touched until the first call; `prepare()` checks everything at start-up.
    pub fn new(data_dir: PathBuf, settings: PostgresSettings) -> Self {
        // Children run with `/` as working directory, so every path we hand them is absolute.
        let root = std::path::absolute(&data_dir).unwrap_or(data_dir);
        Self {
            layout: Layout::new(root),
            settings,
            archive: None,
            tools: OnceCell::new(),
            template: OnceCell::new(),
            locks: Arc::new(Mutex::new(HashMap::new())),
            restores: restore::Restores::default(),
            running_drills: drill_cancel::RunningDrills::default(),
            tls: None,
            quiet: quiet::Quiet::default(),
            wake: wake::Wake::default(),
            activity: activity::Sampler::new(false),
        }
    }

    /// Other limits for the wake listener than the defaults (tests).
    pub fn with_wake_limits(mut self, limits: WakeLimits) -> Self {
        self.wake = wake::Wake::new(limits);
        self
    }

    /// The archive this runtime takes base backups into and restores clones from.
    pub fn with_archive(mut self, archive: ArchiveAccess) -> Self {
        self.archive = Some(archive);
        self
    }

    fn archive_access(&self) -> Result<&ArchiveAccess, RuntimeError> {
        self.archive.as_ref().ok_or_else(|| {
            rt(PgError::Setup(
                "this runtime was built without an archive: it takes no backups and restores \
                 no clones"
                    .into(),
            ))
        })
    }

    /// How much server log each cluster keeps (`postgres.log_keep_mb`).
    pub(super) fn log_budget(&self) -> crate::pg::server_log::LogBudget {
        crate::pg::server_log::LogBudget::from_mb(self.settings.log_keep_mb)
    }

    /// Deletes a cluster's oldest server log files beyond the budget; a failure is only logged
    /// (the log is not worth failing a start or a check for).
    pub(super) fn prune_server_log(&self, dirs: &ClusterDirs) {
        if let Err(e) = crate::pg::server_log::prune(&dirs.log_dir, self.log_budget()) {
            tracing::warn!(dir = %dirs.log_dir.display(), error = %e, "could not prune the server log");
        }
    }

    /// The data, socket and log locations of an instance's cluster.
    pub fn cluster_dirs(&self, id: &InstanceId) -> ClusterDirs {
        self.layout.dirs(id)
    }

    /// Every instance with a cluster directory on this machine (finished or not), sorted.
    pub fn cluster_ids(&self) -> Vec<InstanceId> {
        let mut ids: Vec<InstanceId> = std::fs::read_dir(self.layout.clusters())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| InstanceId::parse_cluster_key(&e.file_name().to_string_lossy()).ok())
            .collect();
        ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        ids
    }

    /// The archive target the cluster's `wal-push` uses (`<cluster>/archive.json`), if any.
    pub fn archive_target(&self, id: &InstanceId) -> Option<crate::archive::ArchiveTarget> {
        crate::archive::ArchiveTarget::load(&self.layout.cluster(id).join("archive.json")).ok()
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.settings.start_timeout_secs.max(1))
    }

    async fn lock(&self, id: &InstanceId) -> tokio::sync::OwnedMutexGuard<()> {
        self.lock_of(id).lock_owned().await
    }

    /// The per-instance lock itself, for work that outlives the call (a restore).
    fn lock_of(&self, id: &InstanceId) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(id.clone()).or_default().clone()
    }

    /// Binaries, user and directories, checked once.
    async fn tools(&self) -> Result<&Tools, RuntimeError> {
        self.tools
            .get_or_try_init(|| async {
                let bin = Binaries::discover(self.settings.bin_dir.as_deref()).await?;
                let run_as = RunAs::resolve(&self.settings.os_user)?;
                self.prepare_dirs(&run_as)?;
                tracing::info!(version = %bin.version, bin_dir = %bin.dir().display(), os_user = %run_as.name, "PostgreSQL driver ready");
                Ok(Tools { bin, run_as })
            })
            .await
            .map_err(rt)
    }

    /// Creates `data_dir`, `clusters/`, `template/`, and makes sure the cluster user can reach
    /// its directories (a 0700 data_dir we own gets opened to 0711: enter, not list).
    fn prepare_dirs(&self, run_as: &RunAs) -> Result<(), PgError> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let root = self.layout.root();
        std::fs::create_dir_all(root).map_err(PgError::io(format!("create {}", root.display())))?;
        if run_as.switch {
            let md =
                std::fs::metadata(root).map_err(PgError::io(format!("stat {}", root.display())))?;
            if md.uid() == nix::unistd::Uid::effective().as_raw() && md.mode() & 0o011 != 0o011 {
                let mode = (md.mode() & 0o7777) | 0o111;
                std::fs::set_permissions(root, std::fs::Permissions::from_mode(mode))
                    .map_err(PgError::io(format!("chmod {}", root.display())))?;
            }
        }
        for dir in [self.layout.clusters(), self.layout.templates()] {
            fsutil::ensure_dir(&dir, 0o711, None)
                .map_err(PgError::io(format!("create {}", dir.display())))?;
        }
        // A placement hint that makes creating a cluster's ~1000 files much cheaper on some
        // file systems (see `mark_top_directory`); clusters work the same without it.
        let clusters = self.layout.clusters();
        if let Err(e) = fsutil::mark_top_directory(&clusters) {
            tracing::warn!(dir = %clusters.display(), error = %e, "cannot mark the clusters directory as a top directory (chattr +T); creating clusters may be slower");
        }
        if run_as.switch {
            let clusters = self.layout.clusters();
            let closed = fsutil::first_untraversable(&clusters, run_as.uid, run_as.gid)
                .map_err(PgError::io(format!("inspect {}", clusters.display())))?;
            if let Some(dir) = closed {
                return Err(PgError::Setup(format!(
                    "OS user {:?} cannot enter {}, so it cannot reach its clusters under {}; \
                     allow it (e.g. chmod o+x {}) or choose another data_dir",
                    run_as.name,
                    dir.display(),
                    clusters.display(),
                    dir.display()
                )));
            }
        }
        Ok(())
    }

    /// The template data directory, made once (the OnceCell serialises concurrent callers).
    async fn template(&self, tools: &Tools) -> Result<PathBuf, RuntimeError> {
        self.template
            .get_or_try_init(|| async {
                if !self.layout.template_pgdata().join("PG_VERSION").is_file() {
                    let started = std::time::Instant::now();
                    let app = initdb::AppDatabase {
                        name: crate::pg::APP_DATABASE,
                        owner: crate::pg::APP_OWNER,
                    };
                    initdb::build_template(tools, &self.layout.template(), &app).await?;
                    tracing::info!(
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "made the template data directory"
                    );
                }
                for old in self.layout.obsolete_templates() {
                    if old.exists() {
                        match std::fs::remove_dir_all(&old) {
                            Ok(()) => tracing::info!(dir = %old.display(), "removed an obsolete template"),
                            Err(e) => tracing::warn!(dir = %old.display(), error = %e, "cannot remove an obsolete template"),
                        }
                    }
                }
                Ok::<(), PgError>(())
            })
            .await
            .map_err(rt)?;
        Ok(self.layout.template_pgdata())
    }

    pub async fn prepare(&self) -> Result<(), RuntimeError> {
        let tools = self.tools().await?;
        if self.settings.use_template {
            self.template(tools).await?;
        }
        // Restore drills' scratch copies a killed broker or agent left behind (issue 18).
        self.clear_drills().await?;
        // Parked clusters' ports are held again (issue 17); problems are logged.
        self.hold_parked().await;
        // What running clusters do, every second (issue 19).
        self.start_sampler();
        Ok(())
    }

    /// Writes `postgresql.conf`, `pg_hba.conf` (and an empty archive include) into `pgdata`.
    /// `durable`: fsync each file; a data directory still being made is flushed as a whole later.
    fn write_confs(
        &self,
        tools: &Tools,
        pgdata: &std::path::Path,
        spec: &ClusterSpec,
        durable: bool,
    ) -> Result<(), RuntimeError> {
        let dirs = self.layout.dirs(&spec.instance);
        let text = conf::render_postgresql_conf(&conf::ConfInput {
            listen_address: &self.settings.listen_address,
            port: spec.port,
            socket_dir: &dirs.socket_dir,
            cluster_name: spec.instance.as_str(),
            settings: &spec.settings,
            log_budget: self.log_budget(),
            tls: self.tls.is_some(),
        })
        .map_err(rt)?;
        self.record_plan_tls(&spec.instance, spec.require_tls)?;
        let owner = tools.run_as.owner();
        let write = if durable {
            fsutil::write_atomic
        } else {
            fsutil::write_unsynced
        };
        // The archive subsystem's include is empty until it enables archiving; it exists so that
        // the server does not log "skipping missing configuration file" at every reload.
        let archive = pgdata.join(conf::ARCHIVE_INCLUDE);
        let archive_text = (!archive.exists()).then(|| "# Archiving is off.\n".to_string());
        let files = [
            ("postgresql.conf", Some(text)),
            ("pg_hba.conf", Some(self.hba_text(&spec.instance)?)),
            (conf::ARCHIVE_INCLUDE, archive_text),
        ];
        for (name, content) in files {
            if let Some(content) = content {
                let path = pgdata.join(name);
                write(&path, content.as_bytes(), 0o600, owner)
                    .map_err(io(format!("write {}", path.display())))?;
            }
        }
        Ok(())
    }

    pub async fn create_cluster(&self, spec: &ClusterSpec) -> Result<(), RuntimeError> {
        let id = &spec.instance;
        let _guard = self.lock(id).await;
        let tools = self.tools().await?;
        self.layout
            .check_socket_path(id, spec.port)
            .map_err(|m| rt(PgError::Setup(m)))?;
        let dirs = self.layout.dirs(id);
        let owner: Option<Owner> = tools.run_as.owner();
        let cluster = self.layout.cluster(id);
        fsutil::ensure_dir(&cluster, 0o711, None)
            .map_err(io(format!("create {}", cluster.display())))?;
        fsutil::ensure_dir(&dirs.socket_dir, 0o700, owner)
            .map_err(io(format!("create {}", dirs.socket_dir.display())))?;
        fsutil::ensure_file(&dirs.log_file, 0o600, owner)
            .map_err(io(format!("create {}", dirs.log_file.display())))?;
        fsutil::ensure_dir(&dirs.log_dir, 0o700, owner)
            .map_err(io(format!("create {}", dirs.log_dir.display())))?;
        if let Some(tls) = &self.tls {
            tls.ensure(&self.layout, owner, id, !dirs.exists())?;
        }
        if dirs.exists() {
            // Made by an earlier run: only the configuration may have changed (e.g. the port).
            return self.write_confs(tools, &dirs.pgdata, spec, true);
        }
        let partial = self.layout.partial(id);
        if partial.exists() {
            std::fs::remove_dir_all(&partial)
                .map_err(io(format!("remove {}", partial.display())))?;
        }
        // The password is stored before any catalog holds it, so the two cannot disagree.
        let started = std::time::Instant::now();
        let password = scram::random_password(32);
        let verifier = scram::verifier(&password).map_err(rt)?;
        let pw_file = self.layout.password_file(id);
        // Unsynced: the file system is flushed before pgdata is renamed into place.
        fsutil::write_unsynced(&pw_file, password.expose_secret().as_bytes(), 0o600, None)
            .map_err(io(format!("write {}", pw_file.display())))?;
        let made_ms;
        if self.settings.use_template {
            let template = self.template(tools).await?;
            initdb::clone_template(tools, &template, &partial)
                .await
                .map_err(rt)?;
            made_ms = started.elapsed().as_millis() as u64;
            self.write_confs(tools, &partial, spec, false)?;
            // Reads the configuration as a start would, so a setting the server refuses is
            // refused here, not at every start attempt.
            initdb::set_superuser_password(tools, &partial, &verifier)
                .await
                .map_err(rt)?;
        } else {
            initdb::initdb(tools, &partial, &verifier)
                .await
                .map_err(rt)?;
            made_ms = started.elapsed().as_millis() as u64;
            self.write_confs(tools, &partial, spec, false)?;
            if !spec.settings.is_empty() {
                ctl::check_config(tools, &partial).await.map_err(rt)?;
            }
        }
        let configured_ms = started.elapsed().as_millis() as u64;
        fsutil::sync_filesystem(&partial).map_err(io(format!("sync {}", partial.display())))?;
        std::fs::rename(&partial, &dirs.pgdata)
            .map_err(io(format!("rename {}", partial.display())))?;
        fsutil::fsync_dir(&cluster).map_err(io(format!("fsync {}", cluster.display())))?;
        tracing::info!(
            instance = %id,
            from_template = self.settings.use_template,
            system_identifier = self.system_identifier(id).ok(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            made_ms,
            configured_ms,
            "cluster created"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn is_send<T: Send>(_: T) {}

    /// The job worker spawns these futures; a non-`Send` one (an sqlx executor borrowed across an
    /// await can cause it) would only show up there, far from the cause.
    #[allow(dead_code)]
    fn every_call_is_send(
        rt: &LocalRuntime,
        id: &InstanceId,
        spec: &ClusterSpec,
        pw: &SecretString,
    ) {
        is_send(rt.prepare());
        is_send(rt.create_cluster(spec));
        is_send(rt.start(id));
        is_send(rt.stop(id));
        is_send(rt.status(id));
        is_send(rt.destroy(id));
        is_send(rt.apply_settings(spec));
        is_send(rt.ensure_database(id, "db", "owner"));
        is_send(rt.create_login_role(id, "r", pw, "owner", &crate::runtime::RoleAccess::Owner));
        is_send(rt.drop_login_role(id, "r", "owner"));
    }
}
