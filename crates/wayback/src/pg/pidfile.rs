//! Reading a data directory's lock files: is a postmaster alive, which port and socket does it
//! use, and which lock files did a dead one leave behind.
//!
//! `postmaster.pid` is the server's own statement of its state (the `ready` line is what
//! `pg_ctl -w` waits for), so readiness and the live port come from here, not from guesses. A
//! pid in that file counts as our postmaster only if the process is alive, not a zombie, and
//! works in the data directory (the postmaster chdirs into it) — which rules out pid reuse after
//! a reboot and killed postmasters that nobody reaped. Linux `/proc` is used where available.
//! Imports only `pg` siblings.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::kill;
use nix::unistd::Pid;

use super::{ClusterDirs, PgError};

/// What `postmaster.pid` says (lines: pid, data dir, start time, port, socket dir, listen
/// address, shared memory key, status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostmasterPid {
    pub pid: i32,
    pub port: Option<u16>,
    pub socket_dir: Option<PathBuf>,
    /// `starting`, `ready`, `stopping`… (absent while the postmaster is still initialising).
    pub status: Option<String>,
}

pub fn parse_postmaster_pid(text: &str) -> Option<PostmasterPid> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let pid: i32 = lines.first()?.parse().ok().filter(|p| *p > 0)?;
    Some(PostmasterPid {
        pid,
        port: lines.get(3).and_then(|l| l.parse().ok()),
        socket_dir: lines.get(4).filter(|l| !l.is_empty()).map(PathBuf::from),
        status: lines
            .get(7)
            .filter(|l| !l.is_empty())
            .map(|s| s.to_string()),
    })
}

/// The postmaster of `pgdata` if one is alive.
pub fn live_postmaster(pgdata: &Path) -> Result<Option<PostmasterPid>, PgError> {
    let path = pgdata.join("postmaster.pid");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(PgError::io(format!("read {}", path.display()))(e)),
    };
    // An empty or half-written file: a postmaster is creating it right now.
    let Some(pm) = parse_postmaster_pid(&text) else {
        return Ok(None);
    };
    Ok(is_postmaster_of(pm.pid, pgdata).then_some(pm))
}

/// True if `pid` is a live (non-zombie) process whose working directory is `pgdata` — the
/// postmaster chdirs into its data directory. Where `/proc` cannot tell, a live pid counts.
pub fn is_postmaster_of(pid: i32, pgdata: &Path) -> bool {
    match kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => {}
        Err(_) => return false,
    }
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim().chars().next());
        if matches!(state, Some('Z' | 'X')) {
            return false;
        }
    }
    match std::fs::read_link(format!("/proc/{pid}/cwd")) {
        Ok(cwd) => std::fs::canonicalize(pgdata).is_ok_and(|p| p == cwd),
        Err(_) => true,
    }
}

/// Live (non-zombie) processes whose working directory is `pgdata`: a postmaster and its
/// children, or the orphaned children of a killed postmaster.
pub fn processes_in(pgdata: &Path) -> Vec<i32> {
    let Ok(target) = std::fs::canonicalize(pgdata) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == target)
                && is_postmaster_of(*pid, pgdata)
        })
        .collect()
}

/// Live `pg_basebackup` processes writing into `pgdata` (named by a `--pgdata`/`-D` argument):
/// a live fork's copy (issue 16) whose broker or agent died mid-copy. Its working directory is
/// not `pgdata`, so [`processes_in`] does not see it, and left alone it would go on writing into
/// a directory a retried restore has emptied and filled again.
pub fn copiers_into(pgdata: &Path) -> Vec<i32> {
    let wanted: Vec<std::ffi::OsString> = [
        Some(pgdata.to_path_buf()),
        std::fs::canonicalize(pgdata).ok(),
    ]
    .into_iter()
    .flatten()
    .map(|p| p.into_os_string())
    .collect();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            copies_into(&raw, &wanted)
        })
        .collect()
}

/// Whether a NUL-separated command line is `pg_basebackup` with one of `wanted` as its
/// `--pgdata` / `-D` argument.
fn copies_into(cmdline: &[u8], wanted: &[std::ffi::OsString]) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let args: Vec<&std::ffi::OsStr> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(std::ffi::OsStr::from_bytes)
        .collect();
    let is_copier = args
        .first()
        .is_some_and(|a| Path::new(a).file_name() == Some(std::ffi::OsStr::new("pg_basebackup")));
    let names = |dir: &std::ffi::OsStr| wanted.iter().any(|w| w.as_os_str() == dir);
    is_copier
        && args.windows(2).any(|w| {
            (w[0] == "--pgdata" || w[0] == "-D") && names(w[1])
                || w[1]
                    .as_bytes()
                    .strip_prefix(b"--pgdata=")
                    .is_some_and(|d| names(std::ffi::OsStr::from_bytes(d)))
        })
}

/// Makes lock files left by a dead postmaster harmless before a start: `postmaster.pid` and the
/// socket's `.s.PGSQL.<port>.lock`. The postmaster ignores a lock whose pid is gone, but not one
/// whose pid is an unreaped zombie (a killed postmaster whose parent — init in a container — does
/// not reap it) or was reused by another program after a reboot. We remove those, but only once
/// no process works in the data directory any more: the shared-memory key in `postmaster.pid` is
/// how a new postmaster detects orphaned backends still writing to the data files.
pub async fn clear_stale_locks(dirs: &ClusterDirs, timeout: Duration) -> Result<(), PgError> {
    let mut locks = vec![dirs.pgdata.join("postmaster.pid")];
    if let Ok(entries) = std::fs::read_dir(&dirs.socket_dir) {
        locks.extend(entries.flatten().map(|e| e.path()).filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(".s.PGSQL.") && n.ends_with(".lock"))
        }));
    }
    let stale: Vec<PathBuf> = locks
        .into_iter()
        .filter(|path| {
            let pid = std::fs::read_to_string(path)
                .ok()
                .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok());
            pid.is_some_and(|pid| {
                !is_postmaster_of(pid, &dirs.pgdata)
                    && kill(Pid::from_raw(pid), None) != Err(nix::errno::Errno::ESRCH)
            })
        })
        .collect();
    if stale.is_empty() {
        return Ok(());
    }
    let deadline = Instant::now() + timeout;
    while !processes_in(&dirs.pgdata).is_empty() {
        if Instant::now() >= deadline {
            return Err(PgError::Timeout {
                what: format!(
                    "wait for processes of a killed server in {} to exit",
                    dirs.pgdata.display()
                ),
                command: format!("(pids {:?})", processes_in(&dirs.pgdata)),
                secs: timeout.as_secs(),
                output: String::new(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for path in stale {
        tracing::info!(path = %path.display(), "removing a stale lock file");
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(PgError::io(format!("remove {}", path.display()))(e))
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copier_is_known_by_its_target_directory() {
        let wanted = vec![std::ffi::OsString::from("/data/clusters/b/pgdata")];
        let line = |args: &[&str]| args.join("\0").into_bytes();
        let ours = line(&[
            "/usr/lib/postgresql/15/bin/pg_basebackup",
            "--pgdata",
            "/data/clusters/b/pgdata",
            "--wal-method=stream",
        ]);
        assert!(copies_into(&ours, &wanted));
        assert!(copies_into(
            &line(&["pg_basebackup", "--pgdata=/data/clusters/b/pgdata"]),
            &wanted
        ));
        assert!(copies_into(
            &line(&["pg_basebackup", "-D", "/data/clusters/b/pgdata"]),
            &wanted
        ));
        // Another cluster's copy, and another program naming the directory, are not it.
        assert!(!copies_into(
            &line(&["pg_basebackup", "--pgdata", "/data/clusters/c/pgdata"]),
            &wanted
        ));
        assert!(!copies_into(
            &line(&["postgres", "-D", "/data/clusters/b/pgdata"]),
            &wanted
        ));
    }

    #[test]
    fn parses_postmaster_pid() {
        let text = "29458\n/tmp/exp/inst\n1795274225\n45432\n/tmp/exp/run\nlocalhost\n 10011252     32797\nready   \n";
        let pm = parse_postmaster_pid(text).unwrap();
        assert_eq!(pm.pid, 29458);
        assert_eq!(pm.port, Some(45432));
        assert_eq!(pm.socket_dir.as_deref(), Some(Path::new("/tmp/exp/run")));
        assert_eq!(pm.status.as_deref(), Some("ready"));
        // While starting, only the first lines exist.
        let early = parse_postmaster_pid("29458\n/tmp/exp/inst\n").unwrap();
        assert_eq!((early.port, early.status), (None, None));
        assert_eq!(parse_postmaster_pid(""), None);
        assert_eq!(parse_postmaster_pid("-1\n"), None);
    }

    #[test]
    fn a_dead_or_foreign_pid_is_not_a_postmaster() {
        let dir = tempfile::tempdir().unwrap();
        // Our own process is alive, but its working directory is not the data directory.
        assert!(!is_postmaster_of(std::process::id() as i32, dir.path()));
        assert!(!is_postmaster_of(i32::MAX - 1, dir.path()));
        std::fs::write(
            dir.path().join("postmaster.pid"),
            format!("{}\n", i32::MAX - 1),
        )
        .unwrap();
        assert_eq!(live_postmaster(dir.path()).unwrap(), None);
    }
}
