//! Running the restored cluster through recovery: start it, wait for promotion, verify it.
//!
//! Promotion is read from the server itself: `postmaster.pid` says `ready` only once the
//! startup process has finished (during recovery it says `starting` or `standby`), and then
//! `pg_is_in_recovery()` confirms it over the socket. A postmaster that disappears instead has
//! aborted recovery — `wal-fetch` exits 126 when it cannot tell whether a file exists, which
//! PostgreSQL treats as fatal — and the control file then shows it never reached production.
//! SQL runs through `psql` as the cluster's OS user with the temporary peer line (see
//! `recovery`), so no password of the source is needed.

use std::time::{Duration, Instant};

use secrecy::ExposeSecret;

use super::plan::Plan;
use super::{replay_bound, RestoreError, RestoreRequest, RestoreTarget};
use crate::archive::layout::parse_lsn;
use crate::pg::ctl::{self, StopMode};
use crate::pg::process::tail_lines;
use crate::pg::sql::{quote_literal, ADMIN_DATABASE};
use crate::pg::{PgError, SUPERUSER};

/// Where recovery ended.
#[derive(Debug, Clone, Copy)]
pub(super) struct Promoted {
    pub timeline: u32,
    pub end_lsn: u64,
}

/// How long a postmaster must stay absent to count as stopped.
const GONE_FOR: Duration = Duration::from_millis(500);

/// How long a started postmaster may take to write `postmaster.pid`.
const APPEAR_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs one SQL text through psql as the cluster user; returns stdout.
async fn psql(req: &RestoreRequest, what: &str, sql: &str) -> Result<String, PgError> {
    let out = req
        .tools
        .cmd("psql", what)
        .args(["-X", "-w", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(&req.dirs.socket_dir)
        .args([
            "-p",
            &req.port.to_string(),
            "-U",
            SUPERUSER,
            "-d",
            ADMIN_DATABASE,
            "-f",
            "-",
        ])
        .stdin(sql.as_bytes().to_vec())
        .timeout(Duration::from_secs(30))
        .run()
        .await?;
    Ok(out.stdout.trim().to_string())
}

fn log_tail(req: &RestoreRequest) -> String {
    tail_lines(&crate::pg::server_log::recent(&req.dirs, 0, None), 30)
}

/// True if the control file says the cluster was promoted: in production *and* checkpointed
/// on a timeline after the backup's. The state alone does not tell: a backup's copy of
/// `pg_control` says "in production" until recovery has got far enough to change it.
pub(super) async fn control_says_promoted(req: &RestoreRequest, backup_timeline: u32) -> bool {
    let out = req
        .tools
        .cmd("pg_controldata", "read the control file")
        .arg("-D")
        .arg(&req.dirs.pgdata)
        .timeout(Duration::from_secs(30))
        .output()
        .await;
    let Ok(o) = out else { return false };
    let field = |name: &str| {
        o.stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    let in_production = field("Database cluster state:").as_deref() == Some("in production");
    let timeline = field("Latest checkpoint's TimeLineID:").and_then(|t| t.parse::<u32>().ok());
    in_production && timeline.is_some_and(|t| t > backup_timeline)
}

async fn failed(req: &RestoreRequest, plan: &Plan, reason: String) -> RestoreError {
    let log_tail = log_tail(req);
    // Another process holds the port (on an agent's machine the broker cannot check it is
    // free before it allocates it): the caller gives the port up and takes another.
    if ctl::says_port_in_use(&log_tail) {
        return RestoreError::Pg(PgError::PortInUse { port: req.port });
    }
    RestoreError::RecoveryFailed {
        pgdata: req.dirs.pgdata.display().to_string(),
        reason,
        promoted: control_says_promoted(req, plan.backup.timeline).await,
        log_tail,
    }
}

/// Starts a standby and waits until it accepts read-only connections: `postmaster.pid` says
/// `ready` (PostgreSQL 15 writes it once hot standby opens, consistent; `standby` is accepted
/// too) and `pg_is_in_recovery()` confirms it is still a standby.
/// Returns its timeline and replay position then.
pub(super) async fn wait_standby(
    req: &RestoreRequest,
    plan: &Plan,
) -> Result<Promoted, RestoreError> {
    start_server(req).await?;
    let started = Instant::now();
    let bound = replay_bound(plan.wal_segments);
    let mut gone_since: Option<Instant> = None;
    let mut seen = false;
    let mut pause = Duration::from_millis(20);
    // What the last look found, for the error when it never becomes consistent.
    let mut last = String::from("no postmaster");
    loop {
        match ctl::live_postmaster(&req.dirs.pgdata)? {
            Some(pm) => {
                seen = true;
                gone_since = None;
                last = format!("postmaster status {:?}", pm.status);
                if matches!(pm.status.as_deref(), Some("ready" | "standby")) {
                    let row = psql(
                        req,
                        "check the standby",
                        "SELECT pg_is_in_recovery(), (SELECT timeline_id FROM \
                         pg_control_checkpoint()), pg_last_wal_replay_lsn()",
                    )
                    .await?;
                    last = format!("server says {row:?}");
                    let mut f = row.split('|');
                    if f.next() == Some("t") {
                        let timeline = f.next().and_then(|t| t.parse().ok());
                        let lsn = f.next().and_then(parse_lsn);
                        if let (Some(timeline), Some(end_lsn)) = (timeline, lsn) {
                            return Ok(Promoted { timeline, end_lsn });
                        }
                    }
                }
            }
            None if seen || started.elapsed() > APPEAR_TIMEOUT => {
                let since = *gone_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= GONE_FOR {
                    let reason = "the standby stopped before it became consistent".to_string();
                    return Err(failed(req, plan, reason).await);
                }
            }
            None => {}
        }
        if started.elapsed() > bound {
            let reason = format!(
                "not consistent within {} s ({} WAL segments to replay; last seen: {last})",
                bound.as_secs(),
                plan.wal_segments
            );
            return Err(failed(req, plan, reason).await);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// `pg_ctl start -W`: recovery may take long; the caller watches it instead of pg_ctl's fixed
/// timeout.
async fn start_server(req: &RestoreRequest) -> Result<(), RestoreError> {
    let pgdata = &req.dirs.pgdata;
    req.tools
        .cmd(
            "pg_ctl",
            format!("start the restored server in {}", pgdata.display()),
        )
        .args(["start", "-W", "-s", "-D"])
        .arg(pgdata)
        .arg("-l")
        .arg(&req.dirs.log_file)
        .timeout(Duration::from_secs(60))
        .run()
        .await?;
    crate::crash_point::reached("clone_restore:replaying");
    Ok(())
}

/// Starts the server and waits until it is promoted; verifies where it ended.
pub(super) async fn recover(req: &RestoreRequest, plan: &Plan) -> Result<Promoted, RestoreError> {
    let pgdata = &req.dirs.pgdata;
    start_server(req).await?;
    let started = Instant::now();
    let bound = replay_bound(plan.wal_segments);
    let mut seen = false;
    // A postmaster counts as gone only once it stays gone for a moment: `postmaster.pid` is
    // rewritten in place as the server changes state, and one unlucky read must not turn a
    // healthy recovery into a failure (and an immediate shutdown).
    let mut gone_since: Option<Instant> = None;
    let mut pause = Duration::from_millis(20);
    loop {
        match ctl::live_postmaster(pgdata)? {
            Some(pm) => {
                seen = true;
                gone_since = None;
                if pm.status.as_deref() == Some("ready") {
                    let state = psql(req, "check recovery", "SELECT pg_is_in_recovery()").await?;
                    if state == "f" {
                        break;
                    }
                }
            }
            None if seen || started.elapsed() > APPEAR_TIMEOUT => {
                let since = *gone_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= GONE_FOR {
                    let reason = "the server stopped before it was promoted".to_string();
                    return Err(failed(req, plan, reason).await);
                }
            }
            None => {}
        }
        if started.elapsed() > bound {
            let _ = ctl::stop(
                &req.tools,
                pgdata,
                StopMode::Immediate,
                Duration::from_secs(30),
            )
            .await;
            return Err(failed(
                req,
                plan,
                format!(
                    "not promoted within {} s ({} WAL segments to replay)",
                    bound.as_secs(),
                    plan.wal_segments
                ),
            )
            .await);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
    let promoted = verify(req, plan).await?;
    if let Some(v) = &req.superuser_verifier {
        let sql = format!(
            "ALTER ROLE {SUPERUSER} PASSWORD {}",
            quote_literal(v.expose_secret())
        );
        psql(req, "set the superuser's password", &sql).await?;
    }
    Ok(promoted)
}

/// A new timeline, and for "latest" an end of recovery at or after the start of the archive's
/// newest segment (recovery did not stop early on a missing file).
async fn verify(req: &RestoreRequest, plan: &Plan) -> Result<Promoted, RestoreError> {
    let pgdata = req.dirs.pgdata.display().to_string();
    let bad = |detail: String| RestoreError::Verify {
        pgdata: pgdata.clone(),
        detail,
    };
    let wal = psql(
        req,
        "read the timeline",
        "SELECT pg_walfile_name(pg_current_wal_lsn())",
    )
    .await?;
    let timeline = wal
        .get(..8)
        .and_then(|t| u32::from_str_radix(t, 16).ok())
        .ok_or_else(|| bad(format!("unexpected WAL file name {wal:?}")))?;
    if timeline <= plan.backup.timeline {
        return Err(bad(format!(
            "still on timeline {timeline}, the backup's; it was not promoted onto a new one"
        )));
    }
    let history = req
        .dirs
        .pgdata
        .join(format!("pg_wal/{timeline:08X}.history"));
    let text = std::fs::read_to_string(&history)
        .map_err(RestoreError::io(format!("read {}", history.display())))?;
    let end_lsn = text
        .lines()
        .rfind(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(parse_lsn)
        .ok_or_else(|| bad(format!("{} names no switch point", history.display())))?;
    if plan.target == RestoreTarget::Latest && !req.prefilled {
        if let Some((_, log, seg)) = plan.newest_segment.as_ref().and_then(|n| n.segment_parts()) {
            let start = (u64::from(log) << 32) + u64::from(seg) * (16 << 20);
            if end_lsn < start {
                return Err(bad(format!(
                    "recovery ended at {} but the archive holds WAL up to segment {} (from {}); \
                     it ended early",
                    crate::archive::layout::format_lsn(end_lsn),
                    plan.newest_segment.as_ref().map_or("", |n| n.as_str()),
                    crate::archive::layout::format_lsn(start)
                )));
            }
        }
    }
    Ok(Promoted { timeline, end_lsn })
}

/// Applies the files `recovery::finish` wrote (hba, ident, settings) and waits until the
/// server uses them: the reload is a signal, and until the postmaster has read the new
/// `pg_hba.conf` the peer line still shadows password logins to `template1`. Once a peer login
/// fails, the source's rules are in force.
pub(super) async fn reload(req: &RestoreRequest) -> Result<(), RestoreError> {
    req.tools
        .cmd("pg_ctl", "reload the restored server")
        .args(["reload", "-s", "-D"])
        .arg(&req.dirs.pgdata)
        .timeout(Duration::from_secs(30))
        .run()
        .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while psql(req, "check that the reload took effect", "SELECT 1")
        .await
        .is_ok()
    {
        if Instant::now() > deadline {
            return Err(RestoreError::Verify {
                pgdata: req.dirs.pgdata.display().to_string(),
                detail: "the server did not reload pg_hba.conf within 30 s; the temporary \
                         peer login is still allowed"
                    .into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Stops a server whose restore failed, whatever state it is in.
pub(super) async fn stop_after_failure(req: &RestoreRequest) {
    let pgdata = &req.dirs.pgdata;
    if ctl::stop(
        &req.tools,
        pgdata,
        StopMode::Immediate,
        Duration::from_secs(30),
    )
    .await
    .is_err()
    {
        let _ = ctl::kill_postmaster(pgdata, Duration::from_secs(10)).await;
    }
}
