//! A live fork (issue 16): a clone of a running instance on this machine copies it with
//! `pg_basebackup` over its unix socket instead of downloading its newest base backup.
//!
//! `pg_basebackup -X stream --checkpoint=fast` writes a consistent copy of the running source
//! into the clone's empty data directory, with the WAL written while it copied; the restore
//! engine then recovers it (`prefilled`) as it recovers an unpacked backup, but from that WAL
//! alone (the archive would only add what the source committed after the request) — promotion
//! onto a new timeline, the new superuser password, archiving only into the clone's own
//! prefix. The copy holds every commit made before it started, so everything committed before
//! the request is in the fork.
//!
//! It logs in as the source's superuser with the password the runtime keeps for it (through
//! `PGPASSWORD`, never the command line), on the `local replication` line every cluster's
//! `pg_hba.conf` has for base backups. Runs as the cluster user, so the copy is that user's.
//! Anything that fails leaves the directory to the caller, who empties it and restores from
//! the archive. A copy whose broker or agent died mid-way is killed before the retried restore
//! empties the directory (`stop_everything_in` finds it by its `--pgdata` argument). Must not import `osb`, `broker`, `store` or `jobs`.

use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::layout::Layout;
use crate::domain::InstanceId;
use crate::pg::ctl;
use crate::pg::{Tools, SUPERUSER};

/// The longest a fork may copy before the archive is the better way.
const FORK_TIMEOUT: Duration = Duration::from_secs(3600);

/// Copies the running cluster of `source` into `pgdata` (absent or empty); its bytes. Err: why
/// not, for the progress line (the source is not here or not running, or the copy failed).
pub(super) async fn copy_running(
    layout: &Layout,
    tools: &Tools,
    source: &InstanceId,
    pgdata: &Path,
) -> Result<u64, String> {
    let dirs = layout.dirs(source);
    if !dirs.exists() {
        return Err("it does not run on this machine".into());
    }
    let port = match ctl::live_postmaster(&dirs.pgdata) {
        Ok(Some(pm)) => pm
            .port
            .ok_or_else(|| "its server does not say its port".to_string())?,
        Ok(None) => return Err("its server is not running".into()),
        Err(e) => return Err(format!("its server's state cannot be read ({e})")),
    };
    let pw_file = layout.password_file(source);
    let password = std::fs::read_to_string(&pw_file)
        .map(|t| SecretString::from(t.trim().to_string()))
        .map_err(|e| format!("its superuser password cannot be read ({e})"))?;
    // The cluster directory is the broker's: the empty data directory is made for the cluster
    // user, who runs pg_basebackup.
    crate::pg::fsutil::ensure_dir(pgdata, 0o700, tools.run_as.owner())
        .map_err(|e| format!("{} cannot be created ({e})", pgdata.display()))?;
    let out = tools
        .cmd("pg_basebackup", "fork the running source")
        .arg("--pgdata")
        .arg(pgdata)
        .args(["--wal-method=stream", "--checkpoint=fast", "--no-password"])
        .arg("--host")
        .arg(&dirs.socket_dir)
        .args(["--port", &port.to_string(), "--username", SUPERUSER])
        .env("PGPASSWORD", password.expose_secret())
        .env("PGAPPNAME", "wayback-fork")
        .env("PGCONNECT_TIMEOUT", "10")
        .timeout(FORK_TIMEOUT)
        .output()
        .await
        .map_err(|e| format!("pg_basebackup could not run ({e})"))?;
    if !out.success {
        return Err(format!(
            "pg_basebackup failed ({}): {}",
            out.status,
            crate::pg::process::tail_lines(&out.stderr, 3)
        ));
    }
    Ok(super::trash::tree_size(pgdata))
}
