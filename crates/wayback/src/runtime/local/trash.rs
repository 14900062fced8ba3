//! The trash: data directories of deleted instances kept on this machine for a fast undo
//! (issue 16, docs/architecture.md §5).
//!
//! A deprovision's last step stops the cluster cleanly and, if `pg_control` then says "shut
//! down", renames `clusters/<id>/pgdata` to `trash/<id>/pgdata` (one file system: a rename,
//! never a copy), writes `trash/<id>/kept.json`, and removes the rest of the cluster directory —
//! the superuser's password file, the TLS key, the archive target file and the logs go with it.
//! What stays is what the archive also holds, up to the clean shutdown. Every step looks before
//! it acts, so a step run again after a crash finishes the job: a `pgdata` already in the trash
//! is described and recorded; an entry without `kept.json` is listed as such and the broker's
//! reconciliation decides.
//!
//! A clone takes a copy by rename too ([`take`]), after checking that `pg_control` is exactly
//! what the broker recorded at delete time. A copy that does not pass is removed: it could be
//! trusted for nothing. A copy taken is readied without a recovery ([`adopt`]: new superuser
//! password in single-user mode; why no new timeline is needed is said there). Must not import `osb`, `broker`, `store` or `jobs`.

use std::path::Path;

use wayback_api::agent::{KeptCopies, KeptCopy};

use super::layout::Layout;
use super::{io, LocalRuntime};
use crate::archive::layout::format_lsn;
use crate::domain::InstanceId;
use crate::pg::control;
use crate::pg::ctl::{self, StopMode};
use crate::pg::fsutil;
use crate::runtime::RuntimeError;

const RECORD: &str = "kept.json";

impl LocalRuntime {
    /// Stops the cluster cleanly and moves its data directory into the trash (see the module
    /// docs); None when there was no cleanly stopped data directory to keep, and then the
    /// cluster is removed as by `destroy`.
    pub async fn trash_cluster(&self, id: &InstanceId) -> Result<Option<KeptCopy>, RuntimeError> {
        let kept = self.move_to_trash(id).await?;
        self.destroy(id).await?;
        Ok(kept)
    }

    async fn move_to_trash(&self, id: &InstanceId) -> Result<Option<KeptCopy>, RuntimeError> {
        let _guard = self.lock(id).await;
        let entry = self.layout.trash_entry(id);
        let kept_pgdata = entry.join("pgdata");
        if let Some(done) = read_record(&entry) {
            return Ok(Some(done));
        }
        let pgdata = self.layout.dirs(id).pgdata;
        if pgdata.join("PG_VERSION").is_file() {
            let tools = self.tools().await?;
            if let Err(e) = ctl::stop(tools, &pgdata, StopMode::Fast, self.timeout()).await {
                tracing::warn!(instance = %id, error = %e, "no clean shutdown; nothing is kept");
                return Ok(None);
            }
            match control::read_summary(&pgdata) {
                Ok(s) if s.shut_down => {}
                Ok(_) => {
                    tracing::warn!(instance = %id, "pg_control does not say shut down; nothing is kept");
                    return Ok(None);
                }
                Err(e) => {
                    tracing::warn!(instance = %id, error = %e, "cannot read pg_control; nothing is kept");
                    return Ok(None);
                }
            }
            let owner = tools.run_as.owner();
            let trash = self.layout.trash();
            fsutil::ensure_dir(&trash, 0o700, None)
                .map_err(io(format!("create {}", trash.display())))?;
            fsutil::ensure_dir(&entry, 0o700, owner)
                .map_err(io(format!("create {}", entry.display())))?;
            std::fs::rename(&pgdata, &kept_pgdata).map_err(io(format!(
                "move {} to {}",
                pgdata.display(),
                kept_pgdata.display()
            )))?;
            for dir in [pgdata.parent(), Some(entry.as_path())]
                .into_iter()
                .flatten()
            {
                fsutil::fsync_dir(dir).map_err(io(format!("fsync {}", dir.display())))?;
            }
        }
        if !kept_pgdata.is_dir() {
            return Ok(None);
        }
        let summary = match control::read_summary(&kept_pgdata) {
            Ok(s) if s.shut_down => s,
            _ => {
                remove_entry(&entry)?;
                return Ok(None);
            }
        };
        let copy = KeptCopy {
            instance_id: id.to_string(),
            checkpoint_lsn: format_lsn(summary.checkpoint_lsn),
            system_identifier: summary.system_identifier.to_string(),
            kept_at: chrono::Utc::now().timestamp_millis(),
            size_bytes: tree_size(&kept_pgdata),
        };
        let text = serde_json::to_vec_pretty(&copy).expect("a kept copy serialises");
        let path = entry.join(RECORD);
        fsutil::write_atomic(&path, &text, 0o600, None)
            .map_err(io(format!("write {}", path.display())))?;
        tracing::info!(instance = %id, lsn = copy.checkpoint_lsn, bytes = copy.size_bytes, "data directory kept for undo");
        Ok(Some(copy))
    }

    /// Every copy in the trash (one without `kept.json` as an empty record: a move the broker
    /// never learned of), and the data file system's room.
    pub async fn list_trash(&self) -> Result<KeptCopies, RuntimeError> {
        let trash = self.layout.trash();
        let mut copies = Vec::new();
        match std::fs::read_dir(&trash) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let Some(id) = entry
                        .file_name()
                        .to_str()
                        .and_then(|n| InstanceId::parse(n.to_string()).ok())
                    else {
                        continue;
                    };
                    copies.push(read_record(&entry.path()).unwrap_or(KeptCopy {
                        instance_id: id.to_string(),
                        checkpoint_lsn: String::new(),
                        system_identifier: String::new(),
                        kept_at: 0,
                        size_bytes: tree_size(&entry.path()),
                    }));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("list {}", trash.display()))(e)),
        }
        copies.sort_by(|a, b| (a.kept_at, &a.instance_id).cmp(&(b.kept_at, &b.instance_id)));
        let (free_bytes, total_bytes) = room(self.layout.root())?;
        Ok(KeptCopies {
            copies,
            free_bytes,
            total_bytes,
        })
    }

    /// Removes the kept copy of `id`, if any. Its archive is not touched.
    pub async fn evict_trash(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        let _guard = self.lock(id).await;
        remove_entry(&self.layout.trash_entry(id))
    }
}

/// Takes the kept copy of `source` into `pgdata` by rename, if `pg_control` says it was shut
/// down cleanly at exactly `checkpoint_lsn` and is the cluster `system_identifier`. Err: why
/// not (the copy is removed then, and `pgdata` is untouched). Either way no copy is left.
pub(super) fn take(
    layout: &Layout,
    source: &InstanceId,
    checkpoint_lsn: &str,
    system_identifier: u64,
    pgdata: &Path,
) -> Result<(), String> {
    let entry = layout.trash_entry(source);
    let kept = entry.join("pgdata");
    let verdict = match control::read_summary(&kept) {
        Err(e) => Err(format!("its pg_control cannot be read ({e})")),
        Ok(s) if !s.shut_down => Err("pg_control does not say it was shut down cleanly".into()),
        Ok(s) if format_lsn(s.checkpoint_lsn) != checkpoint_lsn => Err(format!(
            "pg_control says its last checkpoint is at {}, not at {checkpoint_lsn} as at delete time",
            format_lsn(s.checkpoint_lsn)
        )),
        Ok(s) if s.system_identifier != system_identifier => Err(format!(
            "pg_control names system {}, not the source's {system_identifier}",
            s.system_identifier
        )),
        Ok(_) => std::fs::rename(&kept, pgdata)
            .map_err(|e| format!("it cannot be moved into place: {e}")),
    };
    if let Err(e) = remove_entry(&entry) {
        tracing::warn!(source = %source, error = %e, "cannot remove what is left of the kept copy");
    }
    if let Some(parent) = pgdata.parent() {
        let _ = fsutil::fsync_dir(parent);
    }
    verdict
}

/// Readies a copy just taken into `pgdata` for the clone's first start, without a recovery:
/// the superuser's password becomes `superuser_verifier` (the one in the clone's
/// `admin-password`), set in single-user mode, which runs no postmaster, opens no socket and
/// archives nothing. Its shutdown checkpoint leaves the directory cleanly shut down again, to
/// be configured for the plan and the clone's own archive and started by the clone's later
/// steps.
///
/// The copy stays on its source's timeline (no promotion), and that is safe because nothing
/// ever reads the source's WAL and the clone's WAL together: the clone archives only into its
/// own prefix from its first start (its `archive_command` is the clone's before the server
/// ever runs), every restore of the clone — a clone of it, a follower, its own undo — reads
/// only that prefix (its base backups, its WAL, its `instance.json`), and no restore of the
/// source ever reads the clone's. Within one prefix a name means one content (archiving rule
/// 2), and the source's prefix is never written again (it is deleted). A new timeline adds
/// nothing to that separation; its recovery and the restart after it cost half a second.
pub(super) async fn adopt(
    tools: &crate::pg::Tools,
    pgdata: &Path,
    superuser_verifier: &secrecy::SecretString,
    timeout: std::time::Duration,
) -> Result<(), String> {
    use secrecy::ExposeSecret;
    let sql = format!(
        "ALTER ROLE {} PASSWORD {}\n",
        crate::pg::SUPERUSER,
        crate::pg::sql::quote_literal(superuser_verifier.expose_secret())
    );
    let out = tools
        .cmd(
            "postgres",
            "set the clone's superuser password (single-user mode)",
        )
        .arg("--single")
        .arg("-D")
        .arg(pgdata)
        .arg(crate::pg::sql::ADMIN_DATABASE)
        .stdin(sql.into_bytes())
        .timeout(timeout)
        .run()
        .await
        .map_err(|e| format!("single-user mode failed ({e})"))?;
    // A statement's error does not change single-user mode's exit status.
    // Only the ERROR lines: a STATEMENT line would hold the verifier.
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("ERROR:") || l.contains("FATAL:"))
        .collect();
    if !errors.is_empty() {
        return Err(format!(
            "setting the superuser's password failed: {}",
            errors.join("; ")
        ));
    }
    match control::read_summary(pgdata) {
        Ok(s) if s.shut_down => Ok(()),
        Ok(_) => Err("pg_control does not say shut down after single-user mode".into()),
        Err(e) => Err(format!("its pg_control cannot be read ({e})")),
    }
}

fn read_record(entry: &Path) -> Option<KeptCopy> {
    let bytes = std::fs::read(entry.join(RECORD)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn remove_entry(entry: &Path) -> Result<(), RuntimeError> {
    match std::fs::remove_dir_all(entry) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(format!("remove {}", entry.display()))(e)),
    }
    if let Some(parent) = entry.parent() {
        fsutil::fsync_dir(parent).map_err(io(format!("fsync {}", parent.display())))?;
    }
    Ok(())
}

/// Bytes of the regular files under `dir` (what its removal frees, near enough).
pub(super) fn tree_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

/// (free bytes for an unprivileged user, total bytes) of the file system holding `path`.
fn room(path: &Path) -> Result<(u64, u64), RuntimeError> {
    let v = nix::sys::statvfs::statvfs(path)
        .map_err(|e| io(format!("statvfs {}", path.display()))(std::io::Error::from(e)))?;
    let unit = v.fragment_size() as u64;
    Ok((v.blocks_available() as u64 * unit, v.blocks() as u64 * unit))
}
