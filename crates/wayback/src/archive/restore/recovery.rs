//! The files that turn an unpacked backup into a recovering server, and back into an ordinary
//! one once it is promoted.
//!
//! Settings go into `wayback-archive.conf`, the file the restored `postgresql.conf` includes
//! last, so that the source's own files stay untouched and ours win: the new address, port and
//! socket directory, archiving only into the new instance's prefix (or off), and while
//! recovering `restore_command`, the target, `promote` and the hot-standby floors. The archive
//! target file that `wal-fetch` reads holds the storage credentials, so it lives outside the
//! data directory with mode 0600 for the cluster user. For the duration of the restore,
//! `pg_hba.conf` lets the cluster's OS user in as the superuser by peer authentication (the
//! source's passwords are not ours to know); `finish` puts the source's files back.

use std::path::{Path, PathBuf};

use super::plan::Plan;
use super::{RestoreError, RestoreRequest, RestoreTarget, StandbySource};
use crate::archive::manifest::SettingFloors;
use crate::archive::target::{capture_environment, ArchiveTarget, RestoreSource};
use crate::pg::conf::{quote_value, ARCHIVE_INCLUDE, TLS_CERT_FILE, TLS_DIRECTORY, TLS_KEY_FILE};
use crate::pg::fsutil::{self, Owner};
use crate::pg::SUPERUSER;

/// The ident map of the temporary peer line.
pub(super) const PEER_MAP: &str = "wayback_restore";

/// What `finish` must put back: the source's `pg_hba.conf` and `pg_ident.conf`.
#[derive(Debug)]
pub(super) struct RecoveryFiles {
    hba: Vec<u8>,
    ident: Vec<u8>,
}

/// Quotes a word for the shell PostgreSQL runs `restore_command` with.
fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// What the override file says.
pub(super) struct ConfInput<'a> {
    pub listen_address: &'a str,
    pub port: u16,
    pub socket_dir: &'a str,
    /// The restored cluster's own server log directory: the source's `postgresql.conf` names
    /// `../log`, which for a restore outside a cluster directory would be beside the target.
    pub log_dir: &'a str,
    pub wayback_bin: &'a str,
    pub target_file: &'a str,
    /// False for a data directory that already holds all the WAL its recovery needs (a live
    /// fork): recovery reads nothing from the archive (see [`render_conf`]).
    pub archive_reads: bool,
    pub archiving: bool,
    pub archive_timeout_secs: u64,
    /// None once promoted.
    pub recovery: Option<(RestoreTarget, &'a SettingFloors)>,
    /// A standby's stream from its leader (with `recovery`): no target and no promotion.
    pub standby: Option<&'a StandbySource>,
    /// The TLS certificate and key a restored `postgresql.conf` may name (`../tls/`, beside
    /// `pgdata`) are there: a cluster's runtime issues them before its restore. When they are
    /// not (a restore into a scratch directory, `wayback restore`), TLS is off, else a source
    /// that served TLS could not be restored anywhere else.
    pub tls_files: bool,
}

/// `wayback-archive.conf` for a restored cluster (pure).
pub(super) fn render_conf(i: &ConfInput<'_>) -> Result<String, RestoreError> {
    let q = |name: &str, v: &str| {
        quote_value(name, v)
            .map(|v| format!("{name} = {v}\n"))
            .map_err(RestoreError::from)
    };
    let mut out = String::from("# Written by Wayback for a restored cluster. Do not edit.\n");
    out += &q("listen_addresses", i.listen_address)?;
    out += &q("port", &i.port.to_string())?;
    out += &q("unix_socket_directories", i.socket_dir)?;
    out += &q("log_directory", i.log_dir)?;
    if !i.tls_files {
        out += &q("ssl", "off")?;
    }
    let target = shell_word(i.target_file);
    let bin = shell_word(i.wayback_bin);
    if i.archiving {
        out += &q("archive_mode", "on")?;
        out += &q(
            "archive_command",
            &format!("{bin} wal-push --target {target} %p"),
        )?;
        out += &q("archive_timeout", &format!("{}s", i.archive_timeout_secs))?;
    } else {
        out += &q("archive_mode", "off")?;
    }
    if let Some((goal, floors)) = i.recovery {
        out += if i.standby.is_some() {
            "# Standby of a leader: kept for the cluster's whole life.\n"
        } else {
            "# Recovery: removed once the cluster is promoted.\n"
        };
        // A live fork (`pg_basebackup -X stream`) holds in its own pg_wal every record from its
        // backup's start to its end, and so every commit made before the clone was asked for.
        // Its recovery asks the archive for nothing — a command that finds nothing, since
        // PostgreSQL requires one for archive recovery — and ends at the end of that WAL: the
        // source's archive would only add what the source committed after the request, one
        // `wal-fetch` process and object-store read per segment.
        let fetch = if i.archive_reads {
            format!("{bin} wal-fetch --target {target} %f %p")
        } else {
            "false".to_string()
        };
        out += &q("restore_command", &fetch)?;
        if let Some(s) = i.standby {
            out += &q("primary_conninfo", &s.conninfo)?;
            out += &q("primary_slot_name", &s.slot)?;
            out += &q("hot_standby_feedback", "on")?;
        } else {
            out += &q("recovery_target_action", "promote")?;
        }
        out += &q("recovery_target_timeline", "latest")?;
        if let (RestoreTarget::PointInTime(t), None) = (goal, i.standby) {
            out += &q(
                "recovery_target_time",
                &t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
            )?;
        }
        out += &q("hot_standby", "on")?;
        for (name, value) in floors.as_pairs() {
            if value > 0 {
                out += &q(name, &value.to_string())?;
            }
        }
    }
    Ok(out)
}

/// The source's own values of the floor settings in its `postgresql.conf`, raised to the
/// manifests' floors: the restored server must not run with less than either (rule 6).
pub(super) fn effective_floors(conf: &str, floors: &SettingFloors) -> SettingFloors {
    let own = |name: &str| -> u32 {
        // The last assignment wins, as in PostgreSQL.
        conf.lines()
            .rev()
            .filter_map(|l| l.split_once('='))
            .filter(|(n, _)| n.trim() == name)
            .find_map(|(_, v)| {
                let v = v.split('#').next()?.trim().trim_matches('\'');
                v.parse().ok()
            })
            .unwrap_or(0)
    };
    SettingFloors {
        max_connections: floors.max_connections.max(own("max_connections")),
        max_worker_processes: floors.max_worker_processes.max(own("max_worker_processes")),
        max_locks_per_transaction: floors
            .max_locks_per_transaction
            .max(own("max_locks_per_transaction")),
        max_prepared_transactions: floors
            .max_prepared_transactions
            .max(own("max_prepared_transactions")),
        max_wal_senders: floors.max_wal_senders.max(own("max_wal_senders")),
    }
}

fn conf_input<'a>(
    req: &'a RestoreRequest,
    recovery: Option<(RestoreTarget, &'a SettingFloors)>,
) -> Result<ConfInput<'a>, RestoreError> {
    let utf8 = |p: &'a Path, what: &str| {
        p.to_str()
            .ok_or_else(|| RestoreError::Refused(format!("{what} {} is not UTF-8", p.display())))
    };
    Ok(ConfInput {
        listen_address: &req.listen_address,
        port: req.port,
        socket_dir: utf8(&req.dirs.socket_dir, "the socket directory")?,
        log_dir: utf8(&req.dirs.log_dir, "the log directory")?,
        wayback_bin: utf8(&req.wayback_bin, "the wayback binary")?,
        target_file: utf8(&req.target_file, "the archive target file")?,
        archive_reads: !req.prefilled,
        archiving: req.archive.is_some(),
        archive_timeout_secs: req.archive_timeout_secs,
        recovery,
        standby: req.standby.as_ref(),
        tls_files: [TLS_CERT_FILE, TLS_KEY_FILE]
            .iter()
            .all(|f| req.dirs.pgdata.join(TLS_DIRECTORY).join(f).is_file()),
    })
}

/// The archive target file: reading from the source while `restoring`, writing (if at all) only
/// to the new instance's prefix.
fn target_file(req: &RestoreRequest, sysid: u64, restoring: bool) -> ArchiveTarget {
    let base = req.archive.clone();
    ArchiveTarget {
        storage: capture_environment(base.as_ref().map_or(&req.storage, |a| &a.storage)),
        // Empty when archiving is off: a stray wal-push then fails instead of writing anywhere.
        prefix: base.as_ref().map_or(String::new(), |a| a.prefix.clone()),
        // The clone continues the source's cluster: same identifier (rule 8 holds per lineage).
        system_identifier: sysid,
        compression_level: base.as_ref().map_or(3, |a| a.compression_level),
        push_ahead: base.as_ref().map_or(0, |a| a.push_ahead),
        fetch_ahead: req.fetch_ahead,
        fetch_retry_secs: req.fetch_retry_secs,
        restore_from: restoring.then(|| RestoreSource {
            prefix: req.source.as_str().to_string(),
            system_identifier: sysid,
            data_key: req.source_key.clone(),
        }),
        data_key: base.as_ref().and_then(|a| a.data_key.clone()),
    }
}

fn write_target(
    req: &RestoreRequest,
    t: &ArchiveTarget,
    owner: Option<Owner>,
) -> Result<(), RestoreError> {
    let path = &req.target_file;
    t.write(path)
        .map_err(|e| RestoreError::Refused(format!("write the archive target file: {e}")))?;
    if let Some(o) = owner {
        std::os::unix::fs::chown(path, Some(o.uid), Some(o.gid))
            .map_err(RestoreError::io(format!("chown {}", path.display())))?;
    }
    Ok(())
}

fn prefetch_dir(req: &RestoreRequest) -> PathBuf {
    req.target_file
        .parent()
        .unwrap_or(Path::new("/"))
        .join("wal-prefetch")
}

fn write(path: &Path, bytes: &[u8], owner: Option<Owner>) -> Result<(), RestoreError> {
    fsutil::write_unsynced(path, bytes, 0o600, owner)
        .map_err(RestoreError::io(format!("write {}", path.display())))
}

/// A file's bytes; empty when it does not exist.
fn read(path: &Path) -> Result<Vec<u8>, RestoreError> {
    match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        other => other.map_err(RestoreError::io(format!("read {}", path.display()))),
    }
}

/// Writes everything recovery needs into the unpacked data directory and next to it.
pub(super) fn write_recovery(
    req: &RestoreRequest,
    plan: &Plan,
) -> Result<RecoveryFiles, RestoreError> {
    let owner = req.tools.run_as.owner();
    let pgdata = &req.dirs.pgdata;
    let dir_err = |p: &Path| RestoreError::io(format!("create {}", p.display()));
    fsutil::ensure_dir(&req.dirs.socket_dir, 0o700, owner)
        .map_err(dir_err(&req.dirs.socket_dir))?;
    fsutil::ensure_file(&req.dirs.log_file, 0o600, owner).map_err(dir_err(&req.dirs.log_file))?;
    fsutil::ensure_dir(&req.dirs.log_dir, 0o700, owner).map_err(dir_err(&req.dirs.log_dir))?;
    let prefetch = prefetch_dir(req);
    fsutil::ensure_dir(&prefetch, 0o700, owner).map_err(dir_err(&prefetch))?;
    // Segments prefetched for an earlier attempt may come from another source: never reuse them.
    clear_dir(&prefetch);
    write_target(
        req,
        &target_file(req, plan.backup.system_identifier, true),
        owner,
    )?;
    if let Some(a) = &req.archive {
        prepare_local_archive(a, owner)?;
    }

    let conf = String::from_utf8_lossy(&read(&pgdata.join("postgresql.conf"))?).into_owned();
    let floors = effective_floors(&conf, &plan.floors);
    if let Some(own) = without_patroni_conf(&conf) {
        write(&pgdata.join("postgresql.conf"), own.as_bytes(), owner)?;
    }
    let text = render_conf(&conf_input(req, Some((plan.target, &floors)))?)?;
    write(&pgdata.join(ARCHIVE_INCLUDE), text.as_bytes(), owner)?;
    let (signal, other) = if req.standby.is_some() {
        ("standby.signal", "recovery.signal")
    } else {
        ("recovery.signal", "standby.signal")
    };
    write(&pgdata.join(signal), b"", owner)?;
    let _ = std::fs::remove_file(pgdata.join(other));
    let files = RecoveryFiles {
        hba: read(&pgdata.join("pg_hba.conf"))?,
        ident: read(&pgdata.join("pg_ident.conf"))?,
    };
    let mut hba = format!("local template1 {SUPERUSER} peer map={PEER_MAP}\n").into_bytes();
    hba.extend_from_slice(&files.hba);
    write(&pgdata.join("pg_hba.conf"), &hba, owner)?;
    let mut ident = files.ident.clone();
    ident.extend_from_slice(
        format!("\n{PEER_MAP} {} {SUPERUSER}\n", req.tools.run_as.name).as_bytes(),
    );
    write(&pgdata.join("pg_ident.conf"), &ident, owner)?;
    Ok(files)
}

/// What Patroni writes at the top of the `postgresql.conf` it manages.
const PATRONI_MARK: &str = "overwritten by Patroni";

/// A base backup of an HA member (issue 15) holds the `postgresql.conf` Patroni wrote: it
/// includes that member's own base file outside the data directory (another cluster's port,
/// sockets and archiving, which a restore must never take, and which is gone once the member
/// is) and names that member's `hba_file`, `ident_file` and `synchronous_standby_names`. For
/// such a file, the one the restore uses instead: only `wayback-archive.conf` (the hot-standby
/// floors were read from the original first). A clone's or follower's own configuration is
/// written whole after the restore, as for any source. None: not Patroni's.
pub(super) fn without_patroni_conf(conf: &str) -> Option<String> {
    conf.contains(PATRONI_MARK).then(|| {
        format!(
            "# Written by Wayback's restore: the backup was an HA member's, whose configuration\n\
             # Patroni wrote for that member's machine.\n\
             include '{ARCHIVE_INCLUDE}'\n"
        )
    })
}

/// A local archive is written by wal-push as the cluster user: give it its prefix's directories.
fn prepare_local_archive(a: &ArchiveTarget, owner: Option<Owner>) -> Result<(), RestoreError> {
    let Some(dir) = a.storage.url.strip_prefix("file://") else {
        return Ok(());
    };
    let mut path = PathBuf::from(dir);
    std::fs::create_dir_all(&path)
        .map_err(RestoreError::io(format!("create {}", path.display())))?;
    for part in a.prefix.split('/').chain(["wal"]) {
        path.push(part);
        fsutil::ensure_dir(&path, 0o755, owner)
            .map_err(RestoreError::io(format!("create {}", path.display())))?;
    }
    Ok(())
}

/// The source's `pg_hba.conf` and `pg_ident.conf` back in place of the temporary peer line:
/// all a standby's `finish` does (its recovery settings and target file stay).
pub(super) fn restore_access_files(
    req: &RestoreRequest,
    files: &RecoveryFiles,
) -> Result<(), RestoreError> {
    let owner = req.tools.run_as.owner();
    let pgdata = &req.dirs.pgdata;
    write(&pgdata.join("pg_hba.conf"), &files.hba, owner)?;
    write(&pgdata.join("pg_ident.conf"), &files.ident, owner)
}

/// After promotion: ordinary settings, the source's hba and ident files, a target file without
/// `restore_from` (or none when archiving is off), no prefetched leftovers. The caller reloads.
pub(super) fn finish(
    req: &RestoreRequest,
    files: &RecoveryFiles,
    sysid: u64,
) -> Result<(), RestoreError> {
    let owner = req.tools.run_as.owner();
    let pgdata = &req.dirs.pgdata;
    let text = render_conf(&conf_input(req, None)?)?;
    write(&pgdata.join(ARCHIVE_INCLUDE), text.as_bytes(), owner)?;
    restore_access_files(req, files)?;
    if req.archive.is_some() {
        write_target(req, &target_file(req, sysid, false), owner)?;
    } else if let Err(e) = std::fs::remove_file(&req.target_file) {
        tracing::warn!(file = %req.target_file.display(), error = %e, "cannot remove the restore's archive target file");
    }
    clear_dir(&prefetch_dir(req));
    Ok(())
}

fn clear_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
#[path = "recovery_tests.rs"]
mod tests;
