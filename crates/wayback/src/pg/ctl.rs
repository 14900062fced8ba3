//! Starting, stopping and checking a server: `pg_ctl`, `pg_isready`, `postgres -C`.
//!
//! Readiness comes from the server itself — `pg_ctl -w` waits for the `ready` status line that the
//! postmaster writes into `postmaster.pid`, and `pg_isready` asks the socket — never from a sleep.
//! `pg_ctl` runs the postmaster in its own session with its output sent to the log file, so a
//! cluster outlives the broker, even a `kill -9` of it (the server's own log goes through the
//! logging collector into rotated files: `server_log`). After a `kill -9` of the *postmaster*, its
//! children notice and exit within moments but may still hold the shared memory segment; the new
//! postmaster then refuses to start ("pre-existing shared memory block is still in use"), so start
//! retries that case until the start timeout. Why a start failed is read from the log lines it
//! appended to `postgres.log` and the collector's newest file (a taken port becomes
//! [`PgError::PortInUse`]). Imports only `pg` siblings.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub use super::pidfile::{
    clear_stale_locks, is_postmaster_of, live_postmaster, processes_in, PostmasterPid,
};
use super::process::{tail_lines, Output, PgCommand};
use super::{server_log, ClusterDirs, PgError, Tools, SUPERUSER};

/// Checks the configuration files of `pgdata` the way a starting postmaster reads them, without
/// starting one (`postgres -C`; works while a server runs). An invalid value or unknown name is an
/// [`PgError::InvalidSetting`] that quotes the server's complaint.
pub async fn check_config(tools: &Tools, pgdata: &Path) -> Result<(), PgError> {
    let out = tools
        .cmd(
            "postgres",
            format!("check the configuration of {}", pgdata.display()),
        )
        .arg("-D")
        .arg(pgdata)
        .args(["-C", "port"])
        .timeout(Duration::from_secs(30))
        .output()
        .await?;
    if out.success {
        return Ok(());
    }
    Err(
        refused_settings(&out.stderr).unwrap_or_else(|| PgError::Command {
            what: format!("check the configuration of {}", pgdata.display()),
            command: format!("postgres -D {} -C port", pgdata.display()),
            status: out.status.clone(),
            output: out.tail(),
        }),
    )
}

/// The [`PgError::InvalidSetting`] that quotes what a server which would not start said about
/// its configuration files, if that is why (`output` is its stderr).
pub fn refused_settings(output: &str) -> Option<PgError> {
    let complaints: Vec<&str> = output
        .lines()
        .filter(|l| {
            l.contains("invalid value for parameter") || l.contains("configuration parameter")
        })
        .map(|l| l.split_once("LOG:").map_or(l, |(_, msg)| msg).trim())
        .collect();
    (!complaints.is_empty()).then(|| PgError::InvalidSetting {
        name: "plan settings".into(),
        reason: format!("PostgreSQL refuses them: {}", complaints.join("; ")),
    })
}

/// Whether the server on `socket_dir`/`port` accepts connections (`pg_isready` exit 0).
pub async fn is_ready(tools: &Tools, socket_dir: &Path, port: u16) -> Result<bool, PgError> {
    let out = tools
        .cmd("pg_isready", "check readiness")
        .as_broker()
        .arg("-h")
        .arg(socket_dir)
        .args([
            "-p",
            &port.to_string(),
            "-t",
            "5",
            "-U",
            SUPERUSER,
            "-d",
            super::sql::ADMIN_DATABASE,
        ])
        .timeout(Duration::from_secs(10))
        .output()
        .await?;
    Ok(out.code == Some(0))
}

/// The log lines a failed start wrote mean its TCP port is taken.
pub fn says_port_in_use(log: &str) -> bool {
    log.contains("Address already in use") || log.contains("could not create any TCP/IP sockets")
}

/// The log lines mean orphaned children of a killed postmaster still hold shared memory.
pub fn says_shared_memory_busy(log: &str) -> bool {
    log.contains("pre-existing shared memory block")
}

/// Starts the server and waits until it accepts connections.
pub async fn start(
    tools: &Tools,
    dirs: &ClusterDirs,
    port: u16,
    timeout: Duration,
) -> Result<(), PgError> {
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(50);
    server_log::trim_startup_log(&dirs.log_file);
    loop {
        let offset = server_log::len(&dirs.log_file);
        let began = std::time::SystemTime::now();
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        let cmd = tools
            .cmd(
                "pg_ctl",
                format!("start the server in {}", dirs.pgdata.display()),
            )
            .args([
                "start",
                "-w",
                "-s",
                "-t",
                &remaining.as_secs().max(1).to_string(),
                "-D",
            ])
            .arg(&dirs.pgdata)
            .arg("-l")
            .arg(&dirs.log_file)
            .timeout(remaining + Duration::from_secs(10));
        let command = cmd.display();
        let Some(out) = run_until_ready(cmd, &dirs.pgdata).await? else {
            return Ok(());
        };
        if out.success {
            return Ok(());
        }
        let log = server_log::recent(dirs, offset, Some(began));
        if says_port_in_use(&log) {
            return Err(PgError::PortInUse { port });
        }
        if says_shared_memory_busy(&log) && Instant::now() + backoff < deadline {
            tracing::info!(pgdata = %dirs.pgdata.display(), "old server processes still hold shared memory; retrying start");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            continue;
        }
        return Err(PgError::Command {
            what: format!("start the server in {}", dirs.pgdata.display()),
            command,
            status: out.status.clone(),
            output: tail_lines(&format!("{}\n{log}", out.tail()), 20),
        });
    }
}

/// Runs `pg_ctl start -w` and returns as soon as the server is ready. pg_ctl reads
/// `postmaster.pid` every 100 ms; we read it every 10 ms, which saves a good part of a template
/// cluster's creation time. When we see `ready` first, pg_ctl finishes (and is reaped) on its own
/// in the background. Otherwise its output is returned, success or not.
async fn run_until_ready(cmd: PgCommand, pgdata: &Path) -> Result<Option<Output>, PgError> {
    let mut pg_ctl = tokio::spawn(cmd.output());
    loop {
        tokio::select! {
            joined = &mut pg_ctl => {
                return joined
                    .map_err(|e| PgError::Setup(format!("the pg_ctl task failed: {e}")))?
                    .map(Some);
            }
            _ = tokio::time::sleep(Duration::from_millis(10)) => {
                let pm = live_postmaster(pgdata)?;
                if pm.is_some_and(|pm| pm.status.as_deref() == Some("ready")) {
                    return Ok(None);
                }
            }
        }
    }
}

/// Polls until a starting postmaster accepts connections, dies, or `timeout` passes.
pub async fn wait_ready(
    tools: &Tools,
    dirs: &ClusterDirs,
    timeout: Duration,
) -> Result<bool, PgError> {
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(20);
    loop {
        let Some(pm) = live_postmaster(&dirs.pgdata)? else {
            return Ok(false);
        };
        if let (Some(port), Some(dir)) = (pm.port, pm.socket_dir.as_deref()) {
            if pm.status.as_deref() == Some("ready") && is_ready(tools, dir, port).await? {
                return Ok(true);
            }
        }
        if Instant::now() + backoff >= deadline {
            return Err(PgError::Timeout {
                what: format!(
                    "wait for the server in {} to accept connections",
                    dirs.pgdata.display()
                ),
                command: "pg_isready".into(),
                secs: timeout.as_secs(),
                output: tail_lines(&server_log::recent(dirs, 0, None), 10),
            });
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

/// Shutdown modes of `pg_ctl stop -m`.
#[derive(Debug, Clone, Copy)]
pub enum StopMode {
    /// Disconnect clients, checkpoint, exit.
    Fast,
    /// Exit at once; the next start runs crash recovery.
    Immediate,
}

/// Stops the server; a server that is not running is fine.
pub async fn stop(
    tools: &Tools,
    pgdata: &Path,
    mode: StopMode,
    timeout: Duration,
) -> Result<(), PgError> {
    if live_postmaster(pgdata)?.is_none() {
        return Ok(());
    }
    let mode = match mode {
        StopMode::Fast => "fast",
        StopMode::Immediate => "immediate",
    };
    let result = tools
        .cmd("pg_ctl", format!("stop the server in {}", pgdata.display()))
        .args([
            "stop",
            "-w",
            "-s",
            "-m",
            mode,
            "-t",
            &timeout.as_secs().max(1).to_string(),
            "-D",
        ])
        .arg(pgdata)
        .timeout(timeout + Duration::from_secs(10))
        .run()
        .await;
    match result {
        // It may have gone away between our check and pg_ctl's.
        Err(_) if live_postmaster(pgdata)?.is_none() => Ok(()),
        other => other.map(drop),
    }
}

/// SIGKILLs the postmaster and waits (bounded) until it is gone. The last resort of `destroy`.
pub async fn kill_postmaster(pgdata: &Path, timeout: Duration) -> Result<(), PgError> {
    let deadline = Instant::now() + timeout;
    while let Some(pm) = live_postmaster(pgdata)? {
        let _ = kill(Pid::from_raw(pm.pid), Signal::SIGKILL);
        if Instant::now() >= deadline {
            return Err(PgError::Setup(format!(
                "postmaster {} of {} survives SIGKILL",
                pm.pid,
                pgdata.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_start_failures() {
        let busy = "LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use\n\
                    FATAL:  could not create any TCP/IP sockets\n";
        assert!(says_port_in_use(busy));
        let shm = "FATAL:  pre-existing shared memory block (key 1, ID 2) is still in use";
        assert!(says_shared_memory_busy(shm) && !says_port_in_use(shm));
    }
}
