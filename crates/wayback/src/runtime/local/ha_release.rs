//! An HA member taken out of Patroni (issue 15, a plan change from an HA plan back to a
//! single-member one): [`LocalRuntime::ha_release_member`] makes the scope's last member, the
//! leader, a plain Wayback cluster under the instance's own id again, with its data.
//!
//! In order, each part idempotent so that a run again after a crash finishes the rest:
//! Patroni stops (SIGTERM: it shuts its PostgreSQL down cleanly, a shutdown checkpoint, and
//! exits; no other member is left to take over), the scope's keys leave etcd, `patroni.yml`
//! goes (from then on the cluster is no HA member for any lifecycle call), the member's
//! directory is renamed to the instance's (atomic), then Wayback's own `postgresql.conf` and
//! `pg_hba.conf` for the single cluster are written over Patroni's and the rest of the
//! member's `patroni/` directory goes last (its presence under the instance's id says the
//! configuration is still to be written). The server is left stopped: the caller configures
//! its archiving and starts it.
//! Must not import `osb`, `broker`, `store` or `jobs`.

use nix::sys::signal::Signal;

use super::ha::PATRONI_STOP;
use super::ha_patroni as patroni;
use super::{fsutil, io, rt, LocalRuntime};
use crate::domain::InstanceId;
use crate::pg::{ctl, PgError};
use crate::runtime::{ClusterSpec, RuntimeError};

/// A file Patroni keeps in the data directory (its view of the DCS settings); a plain cluster
/// has no use for it.
const PATRONI_DYNAMIC: &str = "patroni.dynamic.json";

impl LocalRuntime {
    /// Makes the HA member `member` the single-member cluster `single.instance` again (see the
    /// module doc); leaves it stopped.
    pub async fn ha_release_member(
        &self,
        member: &InstanceId,
        single: &ClusterSpec,
    ) -> Result<(), RuntimeError> {
        let id = &single.instance;
        if member.member().is_none() || &member.instance() != id {
            return Err(rt(PgError::Setup(format!(
                "{member} is no HA member of instance {id}"
            ))));
        }
        let _member_guard = self.lock(member).await;
        let _guard = self.lock(id).await;
        let tools = self.tools().await?;
        let from = self.layout.cluster(member);
        if from.exists() {
            let files = self.patroni_files(member);
            if files.config().is_file() {
                let record = files.load_record()?;
                patroni::signal_and_wait(&files, Signal::SIGTERM, PATRONI_STOP).await?;
                let pgdata = self.layout.dirs(member).pgdata;
                ctl::stop(tools, &pgdata, ctl::StopMode::Fast, self.timeout())
                    .await
                    .map_err(rt)?;
                patroni::etcd_delete(&record.dcs, &patroni::scope_prefix(&record.scope)).await?;
                let config = files.config();
                std::fs::remove_file(&config)
                    .map_err(io(format!("remove {}", config.display())))?;
            }
            let to = self.layout.cluster(id);
            if to.exists() {
                return Err(rt(PgError::Setup(format!(
                    "cannot release HA member {member}: {} exists already",
                    to.display()
                ))));
            }
            std::fs::rename(&from, &to).map_err(io(format!(
                "move {} to {}",
                from.display(),
                to.display()
            )))?;
            let clusters = self.layout.clusters();
            fsutil::fsync_dir(&clusters).map_err(io(format!("fsync {}", clusters.display())))?;
            self.forget_restore(member);
        }
        let dirs = self.existing(id)?;
        let leftover = self.patroni_files(id).dir;
        if leftover.exists() {
            self.write_confs(tools, &dirs.pgdata, single, true)?;
            let dynamic = dirs.pgdata.join(PATRONI_DYNAMIC);
            if dynamic.exists() {
                std::fs::remove_file(&dynamic)
                    .map_err(io(format!("remove {}", dynamic.display())))?;
            }
            std::fs::remove_dir_all(&leftover)
                .map_err(io(format!("remove {}", leftover.display())))?;
            tracing::info!(instance = %id, member = ?member.member(), "HA member released: a single cluster again");
        }
        Ok(())
    }
}
