//! The local runtime's SQL calls: the app database, login roles, and superuser access for other
//! subsystems (the archive needs the socket, the port and the password to take base backups).
//!
//! The superuser password is read from the instance's `admin-password` file on every call, so
//! nothing secret is cached in memory longer than one call. Must not import `osb`, `broker`,
//! `store` or `jobs`.

use secrecy::SecretString;
use sqlx::postgres::PgConnectOptions;

use super::{io, rt, LocalRuntime};
use crate::domain::InstanceId;
use crate::pg::{control, ctl, sql, ClusterDirs, PgError};
use crate::runtime::{RoleAccess, RuntimeError};

impl LocalRuntime {
    pub(super) fn admin_options_at(
        &self,
        dirs: &ClusterDirs,
        port: u16,
    ) -> Result<PgConnectOptions, RuntimeError> {
        let pw_file = dirs.pgdata.with_file_name("admin-password");
        let text =
            std::fs::read_to_string(&pw_file).map_err(io(format!("read {}", pw_file.display())))?;
        let password = SecretString::from(text.trim().to_string());
        Ok(sql::admin_options(&dirs.socket_dir, port, &password))
    }

    /// The port the running cluster of `id` listens on (as its postmaster recorded it, else as
    /// configured); `NotRunning` when no postmaster is live.
    pub(super) fn running_port(
        &self,
        id: &InstanceId,
        dirs: &ClusterDirs,
    ) -> Result<u16, RuntimeError> {
        let Some(pm) = ctl::live_postmaster(&dirs.pgdata).map_err(rt)? else {
            return Err(rt(PgError::NotRunning {
                instance: id.to_string(),
            }));
        };
        match pm.port {
            Some(p) => Ok(p),
            None => self.configured_port(dirs),
        }
    }

    /// Superuser connection options (unix socket) for a running cluster — for the archive
    /// subsystem and for tests. The password inside never reaches `Debug` output of ours.
    pub async fn admin_options(&self, id: &InstanceId) -> Result<PgConnectOptions, RuntimeError> {
        let dirs = self.existing(id)?;
        let port = self.running_port(id, &dirs)?;
        self.admin_options_at(&dirs, port)
    }

    /// The cluster's system identifier, read from `global/pg_control`.
    pub fn system_identifier(&self, id: &InstanceId) -> Result<u64, RuntimeError> {
        let path = self.existing(id)?.pgdata.join("global/pg_control");
        let bytes = std::fs::read(&path).map_err(io(format!("read {}", path.display())))?;
        control::system_identifier(&bytes).ok_or_else(|| {
            rt(PgError::ControlFile {
                path,
                reason: "too short".into(),
            })
        })
    }

    pub async fn ensure_database(
        &self,
        id: &InstanceId,
        database: &str,
        owner_role: &str,
    ) -> Result<(), RuntimeError> {
        let opts = self.admin_options(id).await?;
        sql::ensure_database(&opts, database, owner_role)
            .await
            .map_err(rt)
    }

    pub async fn create_login_role(
        &self,
        id: &InstanceId,
        role: &str,
        password: &SecretString,
        owner_role: &str,
        access: &RoleAccess,
    ) -> Result<(), RuntimeError> {
        let opts = self.admin_options(id).await?;
        match access {
            RoleAccess::Owner => sql::create_login_role(&opts, role, password, owner_role).await,
            RoleAccess::ReadOnly { database } => {
                crate::pg::readonly::create_read_only_role(&opts, role, password, database).await
            }
        }
        .map_err(rt)
    }

    pub async fn drop_login_role(
        &self,
        id: &InstanceId,
        role: &str,
        owner_role: &str,
    ) -> Result<(), RuntimeError> {
        let opts = self.admin_options(id).await?;
        sql::drop_login_role(&opts, role, owner_role)
            .await
            .map_err(rt)
    }
}
