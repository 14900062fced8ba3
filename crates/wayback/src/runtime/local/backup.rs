//! What the archive needs to take a base backup of a local cluster, and what the schedule needs
//! to decide when: the binaries, socket, live port and superuser password; the current WAL
//! position, the WAL records written so far (`pg_stat_wal`) and the databases' size.
//!
//! The system identifier handed over is the one the instance's archive target names (what its
//! WAL is checked against, rule 8), so a backup can never land in an archive whose WAL belongs
//! to another cluster; likewise its data key, so that backups are encrypted as its WAL is. Must not import `osb`, `broker`, `store` or `jobs`.

use secrecy::SecretString;

use super::{io, rt, LocalRuntime};
use crate::archive::{ArchiveTarget, BackupSource};
use crate::domain::InstanceId;
use crate::pg::PgError;
use crate::runtime::{RuntimeError, WalPosition};

impl LocalRuntime {
    /// How to reach the running cluster of `id` for a base backup.
    pub async fn backup_source(&self, id: &InstanceId) -> Result<BackupSource, RuntimeError> {
        let tools = self.tools().await?;
        let dirs = self.existing(id)?;
        let port = self.running_port(id, &dirs)?;
        let pw_file = self.layout.password_file(id);
        let text =
            std::fs::read_to_string(&pw_file).map_err(io(format!("read {}", pw_file.display())))?;
        let target_file = self.layout.cluster(id).join("archive.json");
        let target = if target_file.is_file() {
            ArchiveTarget::load(&target_file)
                .map_err(|e| rt(PgError::Setup(format!("read the archive target: {e}"))))?
        } else {
            return Err(rt(PgError::Setup(format!(
                "instance {id} does not archive (no {}); a base backup would not be restorable",
                target_file.display()
            ))));
        };
        Ok(BackupSource {
            // An HA member's backup is its instance's.
            instance_id: id.instance().to_string(),
            pg_basebackup: tools.bin.path("pg_basebackup"),
            socket_dir: dirs.socket_dir,
            port,
            password: SecretString::from(text.trim().to_string()),
            system_identifier: target.system_identifier,
            // The key the cluster's own WAL is encrypted with: its backups use the same.
            data_key: target.data_key,
        })
    }

    /// Where the cluster's WAL is now, and how large its databases are. When the files say
    /// nothing was written since the last answer, that answer stands ([`super::quiet`]).
    pub async fn wal_position(&self, id: &InstanceId) -> Result<WalPosition, RuntimeError> {
        let before = self.quiet_mark(id);
        if let Some(p) = before.and_then(|m| self.quiet.position(id, &m)) {
            return Ok(p);
        }
        let position = self.read_wal_position(id).await;
        match &position {
            Ok(p) => self.quiet.keep_position(id, before, *p),
            Err(_) => self.quiet.drop_answer(id, super::quiet::Answer::Position),
        }
        position
    }

    async fn read_wal_position(&self, id: &InstanceId) -> Result<WalPosition, RuntimeError> {
        use sqlx::Row;
        let options = self.admin_options(id).await?;
        let mut conn = crate::pg::sql::connect(&options, crate::pg::sql::ADMIN_DATABASE)
            .await
            .map_err(rt)?;
        let sql_err = |source| {
            rt(PgError::Sql {
                context: "read the WAL position and database size".into(),
                source,
            })
        };
        let row = sqlx::query(
            "SELECT pg_current_wal_lsn()::text, \
             (SELECT sum(pg_database_size(oid))::int8 FROM pg_database), \
             (SELECT wal_bytes::int8 FROM pg_stat_wal)",
        )
        .fetch_one(&mut conn)
        .await
        .map_err(sql_err)?;
        let lsn: String = row.try_get(0).map_err(sql_err)?;
        let size: Option<i64> = row.try_get(1).map_err(sql_err)?;
        let written: Option<i64> = row.try_get(2).map_err(sql_err)?;
        Ok(WalPosition {
            current_lsn: crate::archive::layout::parse_lsn(&lsn).unwrap_or(0),
            database_bytes: size.unwrap_or(0).max(0) as u64,
            wal_bytes: written.and_then(|w| u64::try_from(w).ok()),
        })
    }
}

impl LocalRuntime {
    /// Takes a base backup of the running cluster of `id` into `prefix` of the runtime's
    /// archive.
    pub async fn take_backup(
        &self,
        id: &InstanceId,
        prefix: &crate::archive::layout::InstancePrefix,
        options: &crate::archive::BackupOptions,
    ) -> Result<crate::archive::BackupReport, RuntimeError> {
        let store = &self.archive_access()?.store;
        let source = self.backup_source(id).await?;
        Ok(crate::archive::take_backup(&source, store, prefix, options).await?)
    }

    /// Takes a base backup of the standby `standby` (an HA member) into `prefix`; `leader`'s
    /// WAL segment is completed here once the stream is done. A leader that does not run on
    /// this machine (an agent's standby whose leader is on another agent) is switched by the
    /// broker meanwhile (`runtime::remote::backup`).
    pub async fn take_standby_backup(
        &self,
        standby: &InstanceId,
        leader: &InstanceId,
        prefix: &crate::archive::layout::InstancePrefix,
        options: &crate::archive::BackupOptions,
    ) -> Result<crate::archive::BackupReport, RuntimeError> {
        let store = &self.archive_access()?.store;
        let source = self.backup_source(standby).await?;
        let leader = LocalLeader {
            runtime: self,
            leader,
            here: self.layout.cluster(leader).is_dir(),
        };
        Ok(crate::archive::take_standby_backup(&source, store, prefix, options, &leader).await?)
    }
}

/// A leader on this machine, whose WAL segment a standby's backup completes — always with
/// `pg_switch_wal()` itself, never [`LocalRuntime::switch_wal`], which skips a segment holding
/// only housekeeping records: a standby's backup may end just after such a record (a standby
/// moves its recovery point to the last record it replayed), and neither that switch nor
/// PostgreSQL's `archive_timeout` would ever complete the segment.
struct LocalLeader<'a> {
    runtime: &'a LocalRuntime,
    leader: &'a InstanceId,
    /// The leader's cluster is on this machine.
    here: bool,
}

#[async_trait::async_trait]
impl crate::archive::LeaderWal for LocalLeader<'_> {
    async fn switch_wal(&self) -> Result<(), String> {
        if !self.here {
            tracing::debug!(leader = %self.leader, "the leader runs on another machine; the broker completes its WAL segment");
            return Ok(());
        }
        self.runtime
            .switch_wal_segment(self.leader)
            .await
            .map(drop)
            .map_err(|e| format!("switch the WAL of {}: {e}", self.leader))
    }
}
