//! The local runtime's lifecycle calls: start, stop, status, destroy, apply_settings.
//!
//! Each looks before it acts, so that running it twice is harmless: a running server is not
//! started again, a stopped one not stopped, an absent one not destroyed. `destroy` escalates
//! from a fast shutdown to an immediate one to SIGKILL, because a cluster that will not stop must
//! still go. Must not import `osb`, `broker`, `store` or `jobs`.

use std::time::Duration;

use super::{fsutil, io, rt, LocalRuntime};
use crate::domain::InstanceId;
use crate::pg::ctl::{self, StopMode};
use crate::pg::{conf, sql, ClusterDirs, PgError, Tools};
use crate::runtime::{Applied, ClusterSpec, ClusterStatus, RuntimeError};

impl LocalRuntime {
    /// The port in the cluster's `postgresql.conf`.
    pub(super) fn configured_port(&self, dirs: &ClusterDirs) -> Result<u16, RuntimeError> {
        let path = dirs.pgdata.join("postgresql.conf");
        let text =
            std::fs::read_to_string(&path).map_err(io(format!("read {}", path.display())))?;
        conf::configured_port(&text)
            .ok_or_else(|| rt(PgError::Setup(format!("{} sets no port", path.display()))))
    }

    pub(super) fn existing(&self, id: &InstanceId) -> Result<ClusterDirs, RuntimeError> {
        let dirs = self.layout.dirs(id);
        if !dirs.exists() {
            return Err(rt(PgError::NoCluster {
                instance: id.to_string(),
            }));
        }
        Ok(dirs)
    }

    pub(super) async fn start_unlocked(
        &self,
        tools: &Tools,
        id: &InstanceId,
    ) -> Result<(), RuntimeError> {
        self.start_unlocked_with(tools, id, async {}).await
    }

    /// [`Self::start_unlocked`] that runs `before_spawn` right before `pg_ctl` spawns the
    /// postmaster (the wake listener closes a parked cluster's port there, as late as it can).
    pub(super) async fn start_unlocked_with(
        &self,
        tools: &Tools,
        id: &InstanceId,
        before_spawn: impl std::future::Future<Output = ()>,
    ) -> Result<(), RuntimeError> {
        if self.is_ha_member(id) {
            return self.ha_start(tools, id).await;
        }
        let dirs = self.existing(id)?;
        if ctl::live_postmaster(&dirs.pgdata).map_err(rt)?.is_some()
            && ctl::wait_ready(tools, &dirs, self.timeout())
                .await
                .map_err(rt)?
        {
            return Ok(());
        }
        self.current_logging(tools, &dirs)?;
        self.current_tls(tools.run_as.owner(), id, &dirs)?;
        ctl::clear_stale_locks(&dirs, self.timeout())
            .await
            .map_err(rt)?;
        let port = self.configured_port(&dirs)?;
        before_spawn.await;
        ctl::start(tools, &dirs, port, self.timeout())
            .await
            .map_err(rt)
    }

    /// Before a start: the log directory exists (clusters made before it did get it now), the
    /// managed logging settings are today's (`conf::with_current_logging`), and old server log
    /// files beyond the budget are gone.
    fn current_logging(&self, tools: &Tools, dirs: &ClusterDirs) -> Result<(), RuntimeError> {
        let owner = tools.run_as.owner();
        fsutil::ensure_dir(&dirs.log_dir, 0o700, owner)
            .map_err(io(format!("create {}", dirs.log_dir.display())))?;
        let path = dirs.pgdata.join("postgresql.conf");
        let text =
            std::fs::read_to_string(&path).map_err(io(format!("read {}", path.display())))?;
        if let Some(current) = conf::with_current_logging(&text, self.log_budget()) {
            fsutil::write_atomic(&path, current.as_bytes(), 0o600, owner)
                .map_err(io(format!("write {}", path.display())))?;
        }
        self.prune_server_log(dirs);
        Ok(())
    }

    /// Starts the cluster; a parked one through its hold, so that clients waiting for it are
    /// served by the same start (a parked cluster whose port is not held is started here).
    pub async fn start(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        if let Some(started) = self.start_held(id).await {
            return started;
        }
        let _guard = self.lock(id).await;
        let tools = self.tools().await?;
        self.start_unlocked(tools, id).await?;
        if self.is_parked(id) {
            self.unmark(id)?;
        }
        Ok(())
    }

    pub async fn stop(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        let _guard = self.lock(id).await;
        let tools = self.tools().await?;
        if self.is_ha_member(id) {
            return self.ha_stop(tools, id).await;
        }
        let dirs = self.layout.dirs(id);
        if !dirs.exists() {
            return Ok(());
        }
        ctl::stop(tools, &dirs.pgdata, StopMode::Fast, self.timeout())
            .await
            .map_err(rt)
    }

    pub async fn status(&self, id: &InstanceId) -> Result<ClusterStatus, RuntimeError> {
        let tools = self.tools().await?;
        let dirs = self.layout.dirs(id);
        let ha = self.is_ha_member(id);
        if ha && (!dirs.exists() || !self.ha_running(id)) {
            // A member Patroni is still seeding, or whose Patroni is down.
            return Ok(ClusterStatus::Stopped);
        }
        if !dirs.exists() {
            return Ok(ClusterStatus::Absent);
        }
        // An HA member lives while its Patroni runs: Patroni stops, demotes, rewinds and starts
        // its server (in a switchover the old leader's server restarts as a standby, its
        // postmaster.pid briefly gone), and whether that server takes connections is Patroni's
        // state (`ha_status`). Read as stopped, the supervisor would "start" a running Patroni.
        let down = match ha {
            true => ClusterStatus::Running,
            false => ClusterStatus::Stopped,
        };
        let Some(pm) = ctl::live_postmaster(&dirs.pgdata).map_err(rt)? else {
            if !ha && self.is_parked(id) {
                return Ok(ClusterStatus::Parked);
            }
            return Ok(down);
        };
        let port = match pm.port {
            Some(p) => p,
            None => return Ok(down), // still initialising
        };
        self.prune_server_log(&dirs);
        let socket_dir = pm.socket_dir.unwrap_or(dirs.socket_dir.clone());
        // The postmaster writes `ready` (`standby` on a hot standby) into postmaster.pid once
        // it accepts connections, and `stopping` or `starting` when it no longer does: a live
        // postmaster saying so needs no pg_isready (a process and a session per check; issue 17
        // point 0). Anything else is asked as before.
        let says_ready = matches!(pm.status.as_deref(), Some("ready" | "standby"));
        match says_ready || ctl::is_ready(tools, &socket_dir, port).await.map_err(rt)? {
            true => {
                self.renew_certificate(tools.run_as.owner(), id, pm.pid);
                Ok(ClusterStatus::Running)
            }
            false => Ok(down),
        }
    }

    /// Stops the cluster and removes every file of it, and forgets its restore; a parked
    /// cluster's port is released first.
    pub async fn destroy(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        self.release_hold(id).await;
        self.destroy_files(id).await?;
        self.forget_restore(id);
        self.quiet.forget(id);
        self.activity.forget(id);
        Ok(())
    }

    async fn destroy_files(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        let _guard = self.lock(id).await;
        let tools = self.tools().await?;
        let cluster = self.layout.cluster(id);
        if !cluster.exists() {
            return Ok(());
        }
        if self.is_ha_member(id) {
            self.ha_leave(id).await?;
        }
        let pgdata = self.layout.dirs(id).pgdata;
        if pgdata.exists() {
            let fast = ctl::stop(tools, &pgdata, StopMode::Fast, self.timeout()).await;
            if let Err(e) = fast {
                tracing::warn!(instance = %id, error = %e, "fast shutdown failed; trying immediate");
                let immediate =
                    ctl::stop(tools, &pgdata, StopMode::Immediate, Duration::from_secs(10)).await;
                if immediate.is_err() {
                    ctl::kill_postmaster(&pgdata, Duration::from_secs(10))
                        .await
                        .map_err(rt)?;
                }
            }
        }
        std::fs::remove_dir_all(&cluster).map_err(io(format!("remove {}", cluster.display())))?;
        let clusters = self.layout.clusters();
        fsutil::fsync_dir(&clusters).map_err(io(format!("fsync {}", clusters.display())))
    }

    pub async fn apply_settings(&self, spec: &ClusterSpec) -> Result<Applied, RuntimeError> {
        let id = &spec.instance;
        let _guard = self.lock(id).await;
        if self.is_ha_member(id) {
            // Patroni owns pgdata/postgresql.conf; a plan change goes through it (next step).
            return Err(rt(PgError::Setup(format!(
                "instance {id} is an HA member: changing its settings is not supported yet"
            ))));
        }
        let tools = self.tools().await?;
        let dirs = self.existing(id)?;
        self.layout
            .check_socket_path(id, spec.port)
            .map_err(|m| rt(PgError::Setup(m)))?;
        let conf_path = dirs.pgdata.join("postgresql.conf");
        let previous =
            std::fs::read(&conf_path).map_err(io(format!("read {}", conf_path.display())))?;
        self.write_confs(tools, &dirs.pgdata, spec, true)?;
        if let Err(e) = ctl::check_config(tools, &dirs.pgdata).await {
            // Put the old file back: a bad value must not break the next restart.
            let owner = tools.run_as.owner();
            fsutil::write_atomic(&conf_path, &previous, 0o600, owner)
                .map_err(io(format!("restore {}", conf_path.display())))?;
            return Err(rt(e));
        }
        let Some(pm) = ctl::live_postmaster(&dirs.pgdata).map_err(rt)? else {
            // Stopped: the next start reads the new files.
            return Ok(Applied { restarted: false });
        };
        let mut restart = pm.port != Some(spec.port);
        if !restart {
            let opts = self.admin_options_at(&dirs, pm.port.unwrap_or(spec.port))?;
            let pending = sql::reload(&opts).await.map_err(rt)?;
            restart = !pending.is_empty();
            if restart {
                tracing::info!(instance = %id, settings = ?pending, "new settings need a restart");
            }
        }
        if restart {
            ctl::stop(tools, &dirs.pgdata, StopMode::Fast, self.timeout())
                .await
                .map_err(rt)?;
            self.start_unlocked(tools, id).await?;
        }
        Ok(Applied { restarted: restart })
    }
}
