//! Archiving for a local cluster: the archive target file that `wal-push` / `wal-fetch` read,
//! and `wayback-archive.conf`, the one configuration file the archive owns (included last by
//! `postgresql.conf`). No credential is written to a file PostgreSQL shows or to a command line.

use crate::archive::ArchiveTarget;
use crate::domain::InstanceId;
use crate::pg::{fsutil, PgError};
use crate::runtime::{ArchiveCommand, RuntimeError};

use super::{rt, LocalRuntime};

/// A PostgreSQL string literal.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl LocalRuntime {
    /// Points the cluster's archiver at `target` (its system identifier is read from
    /// `pg_control` here). Takes effect at the next start: `archive_mode` needs a restart.
    pub async fn configure_archive(
        &self,
        id: &InstanceId,
        target: &ArchiveTarget,
        command: &ArchiveCommand,
    ) -> Result<(), RuntimeError> {
        let tools = self.tools().await?;
        let owner = tools.run_as.owner();
        let dirs = self.cluster_dirs(id);
        if !dirs.exists() {
            return Err(rt(PgError::NoCluster {
                instance: id.to_string(),
            }));
        }
        let mut target = target.clone();
        target.system_identifier = self.system_identifier(id)?;
        let conf = self
            .write_archive_target(id, target, command, owner, false)
            .await?;
        let conf_path = dirs.pgdata.join(crate::pg::conf::ARCHIVE_INCLUDE);
        fsutil::write_atomic(&conf_path, conf.as_bytes(), 0o600, owner)
            .map_err(PgError::io(format!("write {}", conf_path.display())))
            .map_err(rt)?;
        Ok(())
    }

    /// Writes `<cluster>/archive.json` for `target` (whose system identifier the caller set),
    /// keeping the data key the cluster already archives with, and makes the directories
    /// `wal-push` uses; returns the text of the archive include that runs it. `fence`: an HA
    /// member's `wal-push --fence`, which refuses WAL of a timeline past where a later archived
    /// timeline began (`archive/fence.rs`).
    pub(super) async fn write_archive_target(
        &self,
        id: &InstanceId,
        mut target: ArchiveTarget,
        command: &ArchiveCommand,
        owner: Option<fsutil::Owner>,
        fence: bool,
    ) -> Result<String, RuntimeError> {
        let root = self.layout.cluster(id);
        let target_file = root.join("archive.json");
        // The key this cluster already archives with (a clone's restore wrote it; a step run
        // again): kept, with no storage round trip.
        let existing = ArchiveTarget::load(&target_file)
            .ok()
            .filter(|t| t.prefix == target.prefix)
            .and_then(|t| t.data_key);
        target.data_key = match existing {
            Some(key) => Some(key),
            None => self.archive_data_key(&target.prefix).await?,
        };
        target
            .write(&target_file)
            .map_err(|e| rt(PgError::Setup(format!("write the archive target: {e}"))))?;
        if let Some(o) = owner {
            std::os::unix::fs::chown(&target_file, Some(o.uid), Some(o.gid))
                .map_err(PgError::io(format!("chown {}", target_file.display())))
                .map_err(rt)?;
        }
        for sub in ["wal-pushed", "wal-prefetch"] {
            let dir = root.join(sub);
            fsutil::ensure_dir(&dir, 0o700, owner)
                .map_err(PgError::io(format!("create {}", dir.display())))
                .map_err(rt)?;
        }
        prepare_local_archive(&target, owner)?;
        let bin = command.wayback_bin.display().to_string();
        let target_path = target_file.display().to_string();
        let conf = format!(
            "# Written by Wayback: archiving of this instance. Do not edit.\n\
             archive_mode = 'on'\n\
             archive_command = {}\n\
             archive_timeout = '{}s'\n",
            quote(&format!(
                "{} wal-push {}--target {} %p",
                shell_word(&bin),
                if fence { "--fence " } else { "" },
                shell_word(&target_path)
            )),
            command.archive_timeout_secs,
        );
        Ok(conf)
    }
}

impl LocalRuntime {
    /// The data key the instance at `prefix` archives with (see the module docs); None: in
    /// clear (`archive.encrypt` off), or this runtime has no archive access (it then writes the
    /// target as given).
    pub(super) async fn archive_data_key(
        &self,
        prefix: &str,
    ) -> Result<Option<crate::archive::keydoc::ArchiveKey>, RuntimeError> {
        let Some(access) = &self.archive else {
            return Ok(None);
        };
        // In clear: nothing to store, so a provision needs no object storage (README "When
        // object storage is down"); a key.json can only exist for a new prefix once the
        // restore that made it wrote this cluster's target, which the caller keeps.
        if !access.settings.archive.encrypt {
            return Ok(None);
        }
        crate::archive::keydoc::ensure(
            &access.store,
            access.keyring.as_deref(),
            prefix,
            access.settings.archive.encrypt,
        )
        .await
        .map(|k| k.map(crate::archive::keydoc::ArchiveKey))
        // Storage trouble is retried; a key that is missing or does not unwrap is permanent
        // (the restore error's classification, shared with a clone's source key).
        .map_err(|e| RuntimeError::Restore(e.into()))
    }
}

async fn exec(conn: &mut sqlx::PgConnection, sql: &str, context: &str) -> Result<(), RuntimeError> {
    use sqlx::Executor;
    conn.execute(sql).await.map(drop).map_err(|source| {
        rt(PgError::Sql {
            context: context.to_string(),
            source,
        })
    })
}

async fn fetch_strings(
    conn: &mut sqlx::PgConnection,
    sql: &str,
    context: &str,
) -> Result<Vec<String>, RuntimeError> {
    use sqlx::Row;
    let row = sqlx::query(sql)
        .fetch_one(&mut *conn)
        .await
        .map_err(|source| {
            rt(PgError::Sql {
                context: context.to_string(),
                source,
            })
        })?;
    (0..row.len())
        .map(|i| row.try_get::<String, _>(i))
        .collect::<Result<_, _>>()
        .map_err(|source| {
            rt(PgError::Sql {
                context: context.to_string(),
                source,
            })
        })
}

impl LocalRuntime {
    /// Closes `database` to new connections, ends client sessions, and switches to a new WAL
    /// segment, so that everything committed is in a completed segment the archiver will push.
    /// Returns (switch LSN, name of the last segment to archive), or None when the cluster does
    /// not archive (it never got that far).
    pub async fn seal_wal(
        &self,
        id: &InstanceId,
        database: &str,
    ) -> Result<Option<(String, String)>, RuntimeError> {
        let options = self.admin_options(id).await?;
        let mut conn = crate::pg::sql::connect(&options, "template1")
            .await
            .map_err(rt)?;
        let mode = fetch_strings(&mut conn, "SHOW archive_mode", "read archive_mode").await?;
        if mode.first().map(String::as_str) != Some("on") {
            return Ok(None);
        }
        let ident = crate::pg::sql::quote_ident("database", database).map_err(rt)?;
        let close = format!("ALTER DATABASE {ident} WITH ALLOW_CONNECTIONS false");
        exec(&mut conn, &close, "close the database").await?;
        exec(
            &mut conn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            "end client sessions",
        )
        .await?;
        // After a switch, pg_walfile_name names the segment just completed; with nothing to
        // switch, the LSN is a segment boundary and it names the previous (archived) segment.
        let row = fetch_strings(
            &mut conn,
            "SELECT l::text, pg_walfile_name(l) FROM pg_switch_wal() AS l",
            "switch WAL",
        )
        .await?;
        Ok(Some((row[0].clone(), row[1].clone())))
    }

    /// Completes the current WAL segment so the archiver takes it (PostgreSQL does nothing when
    /// no WAL was written since the last switch). Returns the LSN after the switch.
    pub async fn switch_wal(&self, id: &InstanceId) -> Result<String, RuntimeError> {
        let options = self.admin_options(id).await?;
        let mut conn = crate::pg::sql::connect(&options, "template1")
            .await
            .map_err(rt)?;
        let row = fetch_strings(&mut conn, "SELECT pg_switch_wal()::text", "switch WAL").await?;
        Ok(row[0].clone())
    }

    /// Opens `database` to connections again (a deprovision that could not archive gave up).
    pub async fn reopen_database(
        &self,
        id: &InstanceId,
        database: &str,
    ) -> Result<(), RuntimeError> {
        let options = self.admin_options(id).await?;
        let mut conn = crate::pg::sql::connect(&options, "template1")
            .await
            .map_err(rt)?;
        let ident = crate::pg::sql::quote_ident("database", database).map_err(rt)?;
        let open = format!("ALTER DATABASE {ident} WITH ALLOW_CONNECTIONS true");
        exec(&mut conn, &open, "reopen the database").await
    }
}

/// A local archive is written by wal-push, which runs as the cluster's user: give it the
/// instance's directories (the broker, as root, can write there anyway).
pub(super) fn prepare_local_archive(
    target: &ArchiveTarget,
    owner: Option<fsutil::Owner>,
) -> Result<(), RuntimeError> {
    if let Some(dir) = target.storage.url.strip_prefix("file://") {
        let mut path = std::path::PathBuf::from(dir);
        fsutil::ensure_dir(&path, 0o711, None)
            .or_else(|_| std::fs::create_dir_all(&path))
            .map_err(PgError::io(format!("create {}", path.display())))
            .map_err(rt)?;
        for part in target.prefix.split('/').chain(["wal"]) {
            path.push(part);
            fsutil::ensure_dir(&path, 0o755, owner)
                .map_err(PgError::io(format!("create {}", path.display())))
                .map_err(rt)?;
        }
    }
    Ok(())
}

/// Quotes a path for the shell PostgreSQL runs archive_command with.
fn shell_word(s: &str) -> String {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_word("/usr/bin/wayback"), "/usr/bin/wayback");
        assert_eq!(shell_word("/a b/it's"), r"'/a b/it'\''s'");
        assert_eq!(quote("x 'y'"), "'x ''y'''");
    }
}
