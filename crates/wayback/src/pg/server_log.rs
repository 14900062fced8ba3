//! A cluster's server log, kept bounded.
//!
//! The server writes its log through PostgreSQL's `logging_collector` into files of their own,
//! `log/postgresql-YYYYMMDD-HHMMSS.log` beside the data directory (`log_directory = '../log'`,
//! outside `pgdata` so that base backups and clones never carry it). A file is closed and a
//! new one begun at `log_rotation_size` (an eighth of what is kept) and daily. PostgreSQL never
//! deletes a file, so the runtime does: [`prune`] deletes the oldest files until the directory
//! holds at most `postgres.log_keep_mb` (the newest file, the one being written, is never
//! deleted), at every start and every supervisor check of the cluster.
//!
//! `postgres.log` (`pg_ctl -l`) keeps only what the postmaster says before the collector runs:
//! why a start failed (a taken port, shared memory still held). It is emptied at a start once it
//! passes [`STARTUP_LOG_LIMIT`] (clusters made before the collector wrote everything there).
//! Error messages quote the tail of both ([`tail`]). Imports only `pg` siblings.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::ClusterDirs;

/// `log_filename`: unique per second, so a rotation never appends to or truncates an old file.
pub const LOG_FILENAME: &str = "postgresql-%Y%m%d-%H%M%S.log";
/// `log_directory`, relative to the data directory.
pub const LOG_DIRECTORY: &str = "../log";
/// `postgres.log` larger than this is emptied at the next start.
pub const STARTUP_LOG_LIMIT: u64 = 1 << 20;

/// How much of the server log to keep, in bytes, and the rotation size that follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBudget {
    pub keep_bytes: u64,
}

impl LogBudget {
    pub fn from_mb(mb: u64) -> Self {
        Self {
            keep_bytes: mb.max(1).saturating_mul(1 << 20),
        }
    }

    /// `log_rotation_size` in kB: an eighth of what is kept, so pruning deletes small steps.
    pub fn rotation_kb(&self) -> u64 {
        (self.keep_bytes / 1024 / 8).max(64)
    }
}

fn is_server_log(name: &str) -> bool {
    name.starts_with("postgresql-") && name.ends_with(".log")
}

/// The server log files of `dir`, oldest first (by name: the names are timestamps).
fn files(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(is_server_log))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            meta.is_file()
                .then(|| (e.path(), meta.len(), meta.modified().ok()))
        })
        .collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files
}

/// Keeps the server log of `dir` within `budget`: first, a newest file grown past half of it is
/// cut — its last quarter-budget is copied to `<name>-tail.log` (which sorts just before it)
/// and the file is emptied in place (the server appends to it, so it carries on at the new
/// end; lines written between the copy and the cut are lost). Then the oldest files are deleted
/// until at most `budget` bytes remain; the newest is never deleted. Returns the bytes deleted.
/// A file that vanished meanwhile is fine.
pub fn prune(dir: &Path, budget: LogBudget) -> std::io::Result<u64> {
    let mut deleted = 0;
    if let Some((newest, size, _)) = files(dir).pop() {
        if size > budget.keep_bytes / 2 {
            let keep = budget.keep_bytes / 4;
            let tail_path = newest.with_file_name(format!(
                "{}-tail.log",
                newest
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or("postgresql-")
            ));
            let mut f = std::fs::File::open(&newest)?;
            f.seek(SeekFrom::Start(size - keep))?;
            let mut tail = Vec::with_capacity(keep as usize);
            f.take(keep).read_to_end(&mut tail)?;
            std::fs::write(&tail_path, &tail)?;
            std::fs::OpenOptions::new()
                .write(true)
                .open(&newest)?
                .set_len(0)?;
            deleted += size.saturating_sub(keep);
        }
    }
    let files = files(dir);
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    for (path, size, _) in files.iter().take(files.len().saturating_sub(1)) {
        if total <= budget.keep_bytes {
            break;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        total -= size;
        deleted += size;
    }
    Ok(deleted)
}

/// Bytes the server log files of `dir` hold.
pub fn total_bytes(dir: &Path) -> u64 {
    files(dir).iter().map(|f| f.1).sum()
}

/// Empties `postgres.log` when it has grown past [`STARTUP_LOG_LIMIT`].
pub fn trim_startup_log(path: &Path) {
    if std::fs::metadata(path).is_ok_and(|m| m.len() > STARTUP_LOG_LIMIT) {
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) {
            let _ = f.set_len(0);
        }
    }
}

/// The size of a file (0 when it is missing).
pub fn len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// What was appended to `path` since `offset` (the last 64 KiB of it at most).
pub fn since(path: &Path, offset: u64) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let start = offset.max(len(path).saturating_sub(64 * 1024));
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_ok() {
        let _ = f.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// What the server said lately: `postgres.log` since `offset`, then the newest collector file
/// if it was written at or after `after` (the last 64 KiB of each at most).
pub fn recent(dirs: &ClusterDirs, offset: u64, after: Option<SystemTime>) -> String {
    let mut out = since(&dirs.log_file, offset);
    if let Some((path, _, modified)) = files(&dirs.log_dir).pop() {
        let fresh = match (after, modified) {
            (Some(after), Some(m)) => m >= after,
            (Some(_), None) => false,
            (None, _) => true,
        };
        if fresh {
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out += &since(&path, 0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: usize) {
        std::fs::write(dir.join(name), vec![b'x'; bytes]).unwrap();
    }

    #[test]
    fn prune_deletes_the_oldest_files_down_to_the_budget_but_never_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let mb = 1 << 20;
        let part = 700 * 1024;
        for (i, name) in [
            "postgresql-20261201-000000.log",
            "postgresql-20261202-000000.log",
            "postgresql-20261203-000000.log",
        ]
        .iter()
        .enumerate()
        {
            write(dir.path(), name, part + i);
        }
        write(dir.path(), "postgres.log", 5 * mb);
        write(dir.path(), "notes.txt", 5 * mb);
        let budget = LogBudget::from_mb(2);
        let deleted = prune(dir.path(), budget).unwrap();
        assert_eq!(deleted, part as u64, "only the oldest goes");
        assert!(!dir.path().join("postgresql-20261201-000000.log").exists());
        assert!(
            dir.path().join("notes.txt").exists(),
            "other files are not ours"
        );
        assert!(total_bytes(dir.path()) <= budget.keep_bytes + 1);
        // A newest file larger than half the budget (a burst within one second, which PostgreSQL
        // cannot rotate: the name would be the same) is cut: its tail is kept beside it.
        let mut big = vec![b'a'; 3 * mb];
        big.extend_from_slice(b"the last line\n");
        std::fs::write(dir.path().join("postgresql-20261204-000000.log"), &big).unwrap();
        prune(dir.path(), budget).unwrap();
        let left = files(dir.path());
        assert!(total_bytes(dir.path()) <= budget.keep_bytes, "{left:?}");
        let newest = &left.last().unwrap().0;
        assert!(
            newest.ends_with("postgresql-20261204-000000.log"),
            "{left:?}"
        );
        assert_eq!(
            std::fs::metadata(newest).unwrap().len(),
            0,
            "emptied in place"
        );
        let tail = dir.path().join("postgresql-20261204-000000-tail.log");
        assert!(std::fs::read_to_string(&tail)
            .unwrap()
            .ends_with("the last line\n"));
        assert!(prune(&dir.path().join("missing"), budget).is_ok());
    }

    #[test]
    fn rotation_is_an_eighth_of_the_budget() {
        assert_eq!(LogBudget::from_mb(64).rotation_kb(), 8192);
        assert_eq!(LogBudget::from_mb(0).rotation_kb(), 128);
    }
}
