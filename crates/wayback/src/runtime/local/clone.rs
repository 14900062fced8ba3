//! What a clone-from provision needs of the local runtime: a place for the restore engine to
//! restore into, a marker that it did, a WAL switch that names its segment (fork), and the
//! revocation of every login copied from the source.
//!
//! The restore engine writes into `pgdata/` directly and refuses a non-empty directory, so a
//! restore interrupted half-way is started again from nothing: [`LocalRuntime::prepare_restore`]
//! stops whatever runs there and removes it — unless the `restored` marker says a restore
//! already finished, in which case the cluster is kept. The superuser's new password is written
//! to `admin-password` *before* the restore, and the engine sets its verifier at promotion, so
//! that the two cannot disagree. Must not import `osb`, `broker`, `store` or `jobs`.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};

use super::{io, rt, LocalRuntime};
use crate::archive::ArchiveTarget;
use crate::domain::InstanceId;
use crate::pg::ctl::{self, StopMode};
use crate::pg::{fsutil, scram, sql, ClusterDirs, PgError, Tools, SUPERUSER};
use crate::runtime::RuntimeError;

/// Where and how the restore engine restores an instance's cluster.
#[derive(Debug, Clone)]
pub struct RestoreSlot {
    pub dirs: ClusterDirs,
    pub tools: Tools,
    /// The archive target file of the new cluster (the one `configure_archive` writes later).
    pub target_file: PathBuf,
    pub listen_address: String,
    /// The SCRAM verifier of the new superuser password, already in `admin-password`.
    pub superuser_verifier: SecretString,
}

impl LocalRuntime {
    fn restored_marker(&self, id: &InstanceId) -> PathBuf {
        self.layout.cluster(id).join("restored")
    }

    /// Prepares an empty data directory for a restore that archives into `archive` once
    /// promoted; `None` when an earlier run already restored it (see the module docs).
    pub async fn prepare_restore(
        &self,
        id: &InstanceId,
        port: u16,
        archive: &ArchiveTarget,
    ) -> Result<Option<RestoreSlot>, RuntimeError> {
        let _guard = self.lock(id).await;
        let tools = self.tools().await?.clone();
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
        // wal-fetch (prefetch) and wal-push run as the cluster user, next to the target file.
        for sub in ["wal-pushed", "wal-prefetch"] {
            let dir = cluster.join(sub);
            fsutil::ensure_dir(&dir, 0o700, owner)
                .map_err(io(format!("create {}", dir.display())))?;
        }
        super::archive::prepare_local_archive(archive, owner)?;
        for dir in [dirs.pgdata.clone(), self.layout.partial(id)] {
            if dir.exists() {
                ctl::stop(&tools, &dir, StopMode::Immediate, self.timeout())
                    .await
                    .map_err(rt)?;
                std::fs::remove_dir_all(&dir).map_err(io(format!("remove {}", dir.display())))?;
            }
        }
        let password = scram::random_password(32);
        let verifier = scram::verifier(&password).map_err(rt)?;
        let pw_file = self.layout.password_file(id);
        fsutil::write_atomic(&pw_file, password.expose_secret().as_bytes(), 0o600, None)
            .map_err(io(format!("write {}", pw_file.display())))?;
        Ok(Some(RestoreSlot {
            dirs,
            tools,
            target_file: cluster.join("archive.json"),
            listen_address: self.settings.listen_address.clone(),
            superuser_verifier: SecretString::from(verifier),
        }))
    }

    /// Records that the restore into `id`'s data directory finished.
    pub fn mark_restored(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        let marker = self.restored_marker(id);
        fsutil::write_atomic(&marker, b"restored\n", 0o600, None)
            .map_err(io(format!("write {}", marker.display())))
    }

    /// Switches WAL; (LSN, the segment just completed — or, with nothing to switch, the last
    /// one, already archived).
    pub async fn switch_wal_segment(
        &self,
        id: &InstanceId,
    ) -> Result<(String, String), RuntimeError> {
        use sqlx::Row;
        let options = self.admin_options(id).await?;
        let mut conn = sql::connect(&options, sql::ADMIN_DATABASE)
            .await
            .map_err(rt)?;
        let row = sqlx::query("SELECT l::text, pg_walfile_name(l) FROM pg_switch_wal() AS l")
            .fetch_one(&mut conn)
            .await
            .map_err(|source| {
                rt(PgError::Sql {
                    context: "switch WAL".into(),
                    source,
                })
            })?;
        Ok((row.get(0), row.get(1)))
    }

    /// Every role but the superuser loses its password and its login, and its sessions end: a
    /// clone must accept no credential of its source. Returns the roles that could log in.
    pub async fn revoke_copied_logins(&self, id: &InstanceId) -> Result<Vec<String>, RuntimeError> {
        let options = self.admin_options(id).await?;
        let mut conn = sql::connect(&options, sql::ADMIN_DATABASE)
            .await
            .map_err(rt)?;
        let roles: Vec<(String, bool)> = sqlx::query_as(
            "SELECT rolname::text, rolcanlogin FROM pg_roles \
             WHERE rolname <> $1 AND rolname !~ '^pg_' AND (rolcanlogin OR rolpassword IS NOT NULL)",
        )
        .bind(SUPERUSER)
        .fetch_all(&mut conn)
        .await
        .map_err(sql_err("list the roles copied from the source"))?;
        let mut logins = Vec::new();
        for (role, can_login) in roles {
            let ident = sql::quote_ident_unchecked(&role);
            sqlx::query(&format!("ALTER ROLE {ident} NOLOGIN PASSWORD NULL"))
                .execute(&mut conn)
                .await
                .map_err(sql_err("revoke a role's login"))?;
            if can_login {
                logins.push(role);
            }
        }
        sqlx::query(
            "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a JOIN pg_roles r \
             ON r.rolname = a.usename WHERE NOT r.rolcanlogin AND a.pid <> pg_backend_pid()",
        )
        .execute(&mut conn)
        .await
        .map_err(sql_err("end the sessions of revoked roles"))?;
        Ok(logins)
    }
}

/// A plain fn, not a closure: a higher-ranked closure held across an await makes the job
/// future not `Send`.
fn sql_err(context: &'static str) -> impl FnOnce(sqlx::Error) -> RuntimeError {
    move |source| {
        rt(PgError::Sql {
            context: context.to_string(),
            source,
        })
    }
}

/// A clone's restore, as the job (local runtime) or an agent runs it.
pub struct CloneRestore {
    /// The archive, for the engine's reads, and as settings for `wal-fetch`.
    pub store: crate::storage::ObjectStore,
    pub storage: crate::storage::StorageSettings,
    pub source: crate::archive::layout::InstancePrefix,
    pub system_identifier: u64,
    pub target: crate::archive::restore::RestoreTarget,
    pub port: u16,
    /// The new instance's own archive (it archives there from its first moment).
    pub own: ArchiveTarget,
    pub wayback_bin: PathBuf,
    pub archive_timeout_secs: u64,
    pub fetch_ahead: usize,
    pub progress: std::sync::Arc<crate::archive::restore::RestoreProgress>,
}

/// Why a clone's restore failed.
#[derive(Debug, thiserror::Error)]
pub enum CloneRestoreError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Restore(#[from] crate::archive::restore::RestoreError),
}

impl LocalRuntime {
    /// Restores `c.source` into the instance's data directory, recovers and promotes it, and
    /// records that it did. None: an earlier run already finished the restore.
    pub async fn restore_clone(
        &self,
        id: &InstanceId,
        c: CloneRestore,
    ) -> Result<Option<crate::archive::restore::RestoreReport>, CloneRestoreError> {
        let Some(slot) = self.prepare_restore(id, c.port, &c.own).await? else {
            return Ok(None);
        };
        let req = crate::archive::restore::RestoreRequest {
            store: c.store,
            storage: c.storage,
            source: c.source,
            system_identifier: c.system_identifier,
            target: c.target,
            dirs: slot.dirs.clone(),
            port: c.port,
            listen_address: slot.listen_address.clone(),
            tools: slot.tools.clone(),
            wayback_bin: c.wayback_bin,
            target_file: slot.target_file.clone(),
            archive: Some(c.own),
            archive_timeout_secs: c.archive_timeout_secs,
            fetch_ahead: c.fetch_ahead,
            fetch_retry_secs: 60,
            parallel: 4,
            superuser_verifier: Some(slot.superuser_verifier.clone()),
            progress: Some(c.progress),
        };
        // On a blocking thread of its own: the engine's future is not `Send` for every lifetime
        // (a known compiler limit with borrowed streams), and callers spawn their futures.
        let handle = tokio::runtime::Handle::current();
        let report = tokio::task::spawn_blocking(move || {
            handle.block_on(crate::archive::restore::restore(&req))
        })
        .await
        .map_err(|e| RuntimeError::Pg(PgError::Setup(format!("the restore task ended: {e}"))))??;
        self.mark_restored(id)?;
        Ok(Some(report))
    }

    /// True while the instance's cluster is still in recovery (`recovery.signal` present).
    pub fn recovering(&self, id: &InstanceId) -> bool {
        self.layout.dirs(id).pgdata.join("recovery.signal").exists()
    }
}
