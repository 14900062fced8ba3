//! The steps a clone-from provision adds to an ordinary one (docs/architecture.md §6):
//!
//! ```text
//! allocate_port → clone_fork → clone_restore → create_cluster → configure_archive
//!               → clone_restart → start → clone_rotate → clone_first_archive
//! ```
//!
//! `clone_fork` matters for a live source: it switches the source's WAL and waits until that
//! segment is in the archive (the deprovision's wait, without closing the database), so that the
//! clone holds everything committed before the request. `clone_restore` runs the restore engine
//! into the new instance's cluster directories: the source's prefix is only read, the promoted
//! server archives into the clone's own prefix from its first moment, and the superuser gets a
//! fresh password. The ordinary `create_cluster` then rewrites the configuration for the plan,
//! `configure_archive` writes the clone's own archiving, and a restart applies both.
//! `clone_rotate` takes login and password from every role copied from the source (its bindings
//! and owner), so no credential of the source works on the clone. `clone_first_archive`
//! switches the clone's WAL and waits until its new timeline is in its own archive: a clone
//! succeeds only once it archives, since one that cannot would never be undoable.
//!
//! The order is the clone sequence in `jobs::model`; these are the steps only a clone has. The
//! resolved source is the job's [`CloneSource`] (built by the broker's check).
//!
//! A leaf of `steps`: imports `final_wal` of its siblings, never `instance` or the dispatcher
//! (`steps` itself), and never `broker`.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::archive::layout::{InstancePrefix, WalFileName};
use crate::archive::restore::RestoreTarget;
use crate::context::AppContext;
use crate::domain::{OperationState, SpaceGuid};
use crate::jobs::clone_source::CloneSource;
use crate::jobs::model::Job;
use crate::jobs::{Outcome, StepError, StepResult};
use crate::runtime::{
    ClusterStatus, RestorePhase, RestoreSpec, RestoreState, RestoreStatus, RuntimeError,
};
use crate::store::InstanceRecord;

fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn target_text(t: RestoreTarget) -> String {
    match t {
        RestoreTarget::Latest => "latest".into(),
        RestoreTarget::PointInTime(t) => when(t),
    }
}

async fn progress_text(ctx: &AppContext, job: &Job, text: &str) {
    if let Some(op) = &job.operation_id {
        if let Err(e) = ctx
            .store
            .update_operation(op, OperationState::InProgress, text)
            .await
        {
            tracing::warn!(job = %job.id, error = %e, "cannot record progress");
        }
    }
}

/// Stops the restored server; the sequence's `start` brings it up with the plan's settings and
/// the clone's own archiving.
pub async fn restart(ctx: &AppContext, instance: &InstanceRecord) -> StepResult {
    ctx.runtime.stop(&instance.id).await?;
    Ok(Outcome::Next)
}

/// Takes every copied login away and opens the app database again: a source that was
/// deprovisioned was archived with its database closed to connections (the deprovision's seal),
/// and a clone of it must be usable. Both statements are idempotent, so a retried step is safe.
pub async fn rotate(ctx: &AppContext, instance: &InstanceRecord) -> StepResult {
    ensure_running(ctx, instance).await?;
    let roles = ctx.runtime.revoke_copied_logins(&instance.id).await?;
    tracing::info!(instance = %instance.id, ?roles, "logins copied from the source revoked");
    ctx.runtime
        .reopen_database(&instance.id, &instance.database_name)
        .await?;
    Ok(Outcome::Next)
}

/// Switches the clone's WAL and waits until its archiver has nothing left to archive: then the
/// new timeline's history file and its first segment are in the clone's own prefix (wal-push
/// exits 0 only for a file durably stored with this very content, rules 1 and 2). Only then
/// may the clone succeed: one that cannot archive cannot itself be undone. A file the archiver
/// keeps failing on while the archive holds that name is another cluster's content ("SPLIT
/// BRAIN?"): the clone fails and says so. Anything else (storage slow or down) is retried.
pub async fn first_archive(ctx: &AppContext, instance: &InstanceRecord) -> StepResult {
    let space = SpaceGuid::parse(instance.space_guid.clone()).map_err(StepError::transient)?;
    let prefix = InstancePrefix::new(&space, &instance.id);
    ensure_running(ctx, instance).await?;
    let before = ctx.runtime.archiver_stats(&instance.id).await?;
    let (lsn, walfile) = ctx.runtime.switch_wal_segment(&instance.id).await?;
    let secs = ctx.settings.wal.final_archive_timeout_secs;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut pause = Duration::from_millis(10);
    loop {
        let stats = ctx.runtime.archiver_stats(&instance.id).await?;
        if stats.ready_segments == 0 {
            tracing::info!(instance = %instance.id, lsn, walfile, "clone's first WAL archived");
            return Ok(Outcome::Next);
        }
        // PostgreSQL tries a file three times in a row before it pauses: two more failures
        // since the switch, on a name the archive holds, are no passing storage error.
        if stats.failed_count >= before.failed_count + 2 {
            if let Some(file) = refused_file(ctx, &prefix, &stats).await {
                return Err(StepError::Permanent {
                    user_message: format!(
                        "the clone's new timeline cannot be archived: the archive already holds \
                         different content for {file} (SPLIT BRAIN?), so the clone could never \
                         be undone. Delete this instance and create the clone again"
                    ),
                    source: anyhow::anyhow!(
                        "{} is archived with other content; the clone's archiver keeps failing on it",
                        prefix.as_str()
                    ),
                });
            }
        }
        if Instant::now() >= deadline {
            return Err(StepError::Transient(anyhow::anyhow!(
                "the clone's first WAL ({walfile}) is not archived after {secs} s: {} files wait",
                stats.ready_segments
            )));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// Starts the clone's cluster if it is down (its machine restarted after the `start` step): a
/// resumed step must not fail for want of it.
async fn ensure_running(ctx: &AppContext, instance: &InstanceRecord) -> Result<(), StepError> {
    if ctx.runtime.status(&instance.id).await? == ClusterStatus::Stopped {
        tracing::info!(instance = %instance.id, "the clone's cluster is down; starting it");
        ctx.runtime.start(&instance.id).await?;
    }
    Ok(())
}

/// The file the archiver failed on last, if it is still failing and the archive holds that
/// name (with other content, or wal-push would have succeeded).
async fn refused_file(
    ctx: &AppContext,
    prefix: &InstancePrefix,
    stats: &crate::runtime::ArchiverStats,
) -> Option<String> {
    let still_failing = match (stats.last_failed_at, stats.last_archived_at) {
        (Some(failed), Some(archived)) => failed >= archived,
        (Some(_), None) => true,
        _ => false,
    };
    let file = stats.last_failed_wal.as_deref().filter(|_| still_failing)?;
    let name = WalFileName::parse(file).ok()?;
    match ctx.archive.head(&prefix.wal(&name)).await {
        Ok(Some(_)) => Some(file.to_string()),
        _ => None,
    }
}

/// For a live source: switch its WAL and wait until that segment is in the archive. Anything
/// else (a source deleted, stopped or out of reach) goes on with what its archive holds.
pub async fn fork(ctx: &AppContext, job: &Job, src: &CloneSource) -> StepResult {
    if !src.live {
        return Ok(Outcome::Next);
    }
    let Some(record) = ctx.store.get_instance(&src.id).await? else {
        return Ok(Outcome::Next);
    };
    // A source stopped or deleted since the PUT has archived what it had; restore that.
    if !record.state.is_live() {
        return Ok(Outcome::Next);
    }
    // An HA source's WAL is its leader's; with no leader now, what it archived is all there is.
    let cluster = match crate::jobs::ha::cluster_key(ctx, &src.id).await {
        Ok(key) => key,
        Err(crate::jobs::ha::LeaderError::Store(e)) => return Err(e.into()),
        Err(e) => {
            tracing::warn!(source = %src.id, error = %e, "no leader of the HA source; cloning what its archive holds");
            return Ok(Outcome::Next);
        }
    };
    // A source stopped when idle has archived every commit, but the live fork copies from its
    // running server (faster than the archive): start it (it stops again once idle).
    if let Err(e) = crate::jobs::idle::unpark(ctx, &record, &cluster).await {
        tracing::warn!(source = %src.id, error = %e, "cannot start the source stopped when idle; cloning what its archive holds");
        return Ok(Outcome::Next);
    }
    match ctx.runtime.status(&cluster).await {
        Ok(ClusterStatus::Running) => {}
        Ok(_) => return Ok(Outcome::Next),
        // The source's agent is gone (its VM lost, say): what it archived is all there is.
        Err(e @ (RuntimeError::Unreachable { .. } | RuntimeError::NotPlaced(_))) => {
            tracing::warn!(source = %src.id, error = %e, "the source's cluster cannot be reached; cloning what its archive holds");
            progress_text(
                ctx,
                job,
                &format!(
                    "Cloning {src}: the source's agent does not answer; restoring everything it archived"
                ),
            )
            .await;
            return Ok(Outcome::Next);
        }
        Err(e) => return Err(e.into()),
    }
    progress_text(
        ctx,
        job,
        &format!("Cloning {src}: archiving the source's latest WAL (fork)"),
    )
    .await;
    let (lsn, walfile) = ctx.runtime.switch_wal_segment(&cluster).await?;
    let space = SpaceGuid::parse(record.space_guid.clone()).map_err(StepError::transient)?;
    let name =
        WalFileName::parse(&walfile).map_err(|e| StepError::transient(anyhow::anyhow!(e)))?;
    let key = InstancePrefix::new(&space, &src.id).wal(&name);
    if !super::final_wal::wait_archived(ctx, &src.id, &key).await {
        return Err(StepError::Transient(anyhow::anyhow!(
            "{key} (the source's WAL up to {lsn}) is not in the archive yet"
        )));
    }
    tracing::info!(source = %src.id, lsn, walfile, "fork: source WAL archived");
    Ok(Outcome::Next)
}

/// Starts (or joins) the restore wherever the instance's cluster lives, then polls its status
/// every half second and shows it.
pub async fn restore_step(
    ctx: &AppContext,
    job: &Job,
    instance: &InstanceRecord,
    src: &CloneSource,
) -> StepResult {
    let space = SpaceGuid::parse(instance.space_guid.clone()).map_err(StepError::transient)?;
    let port = instance
        .port
        .ok_or_else(|| StepError::transient(anyhow::anyhow!("instance has no port yet")))?;
    let archive_timeout_secs = ctx
        .catalog
        .plan(&instance.service_id, &instance.plan_id)
        .and_then(|p| p.archive.archive_interval_secs)
        .unwrap_or(ctx.archive_command.archive_timeout_secs);
    let spec = RestoreSpec {
        port,
        source: InstancePrefix::new(&space, &src.id),
        space,
        source_system_identifier: src.system_identifier,
        target: src.target,
        archive_timeout_secs,
        kept_copy: crate::jobs::kept::usable_copy(ctx, instance, src).await?,
        // A live source at its latest point is copied from its running server when it runs
        // where the clone does (the runtime checks; else, or on failure, the archive). A point
        // in time needs the archive's history.
        live_fork: (src.live && src.target == RestoreTarget::Latest).then(|| src.id.clone()),
    };
    let from = src.to_string();
    let mut status = ctx.runtime.start_restore(&instance.id, &spec).await?;
    let mut shown = String::new();
    let mut replay_seen = false;
    let mut pause = Duration::from_millis(20);
    loop {
        match status.state {
            RestoreState::Succeeded => {
                tracing::info!(instance = %instance.id, source = %src.id, backup = ?status.backup_id, timeline = ?status.timeline, secs = ?status.total_secs, kept_copy = status.from_kept_copy, "clone restored");
                // Taken or refused, the copy is gone from its machine (issue 16).
                if spec.kept_copy.is_some() {
                    ctx.store.drop_kept_copy(&src.id).await?;
                }
                if let Some(note) = restore_note(&status) {
                    ctx.store.set_restore_note(&instance.id, &note).await?;
                }
                return Ok(Outcome::Next);
            }
            RestoreState::Failed => {
                return match RuntimeError::restore_failed(status.error) {
                    RuntimeError::PortInUse(port) => {
                        super::instance::port_taken(ctx, instance, port).await
                    }
                    e => Err(e.into()),
                };
            }
            RestoreState::Running => {}
            // The runtime (an agent, say) restarted and lost the restore: start it again.
            RestoreState::None => {
                status = ctx.runtime.start_restore(&instance.id, &spec).await?;
                continue;
            }
        }
        let text = match (&spec.live_fork, &status.live_fork_refused) {
            (Some(_), None) if status.phase == RestorePhase::Planning => {
                Some(format!("Cloning {from}: forking the running instance (pg_basebackup over its local socket)"))
            }
            (Some(_), Some(why)) => Some(format!(
                "{} (the running instance is not forked: {why}; restoring from the archive)",
                phase_text(&from, &status, &mut replay_seen, src.target)
            )),
            _ => None,
        };
        let text = match (text, &spec.kept_copy, &status.kept_copy_refused) {
            (Some(text), _, _) => text,
            (None, Some(_), None) if status.phase != RestorePhase::Unpacking => format!(
                "Cloning {from}: restoring from the copy kept at delete time (taking it and setting a new superuser password)"
            ),
            (None, Some(_), Some(why)) => format!(
                "{} (the copy kept at delete time is not used: {why}; restoring from the archive)",
                phase_text(&from, &status, &mut replay_seen, src.target)
            ),
            _ => phase_text(&from, &status, &mut replay_seen, src.target),
        };
        if text != shown {
            progress_text(ctx, job, &text).await;
            shown = text;
        }
        // Soon at first, then every fifth of a second: an undo from the kept copy is done in
        // a few hundred milliseconds and a small live fork in one, and a fixed half-second
        // wait was a third of the former.
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
        status = ctx.runtime.restore_status(&instance.id).await?;
    }
}

/// How the clone was restored, for its success description (issue 16); None when the runtime
/// does not say (a restore an earlier run had finished).
fn restore_note(status: &RestoreStatus) -> Option<String> {
    if status.from_kept_copy {
        return Some("restored from the copy kept at delete time".into());
    }
    if let Some(bytes) = status.live_fork_bytes {
        return Some(format!(
            "forked from the running instance (pg_basebackup, {} MB)",
            bytes.div_ceil(1_000_000)
        ));
    }
    let wal = status.wal_bytes?;
    let base = status
        .backup_stop
        .and_then(|t| DateTime::from_timestamp(t, 0))
        .map_or("the newest backup".to_string(), when);
    Some(format!(
        "restored from the archive: base backup of {base}, {} MB of WAL",
        wal.div_ceil(1_000_000)
    ))
}

/// The line last_operation shows: the base backup's bytes while it unpacks, then WAL replay,
/// then promotion (the server removes `recovery.signal` when it promotes). Every line names
/// the source.
fn phase_text(
    from: &str,
    status: &RestoreStatus,
    replay_seen: &mut bool,
    target: RestoreTarget,
) -> String {
    match status.phase {
        RestorePhase::Planning => format!("Cloning {from}: choosing a base backup"),
        RestorePhase::Unpacking => {
            let (done, total) = (status.bytes_done, status.bytes_total);
            let base = status
                .backup_stop
                .and_then(|t| DateTime::from_timestamp(t, 0))
                .map_or("the newest backup".to_string(), when);
            format!(
                "Cloning {from}: restoring base backup of {base} ({} of {})",
                human_bytes(done),
                human_bytes(total)
            )
        }
        RestorePhase::Replaying | RestorePhase::Done => {
            *replay_seen |= status.recovering;
            if *replay_seen && !status.recovering {
                format!("Cloning {from}: promoting")
            } else {
                format!(
                    "Cloning {from}: replaying WAL up to {}",
                    target_text(target)
                )
            }
        }
    }
}

/// "340 MB", "1.1 GB": decimal units, as storage consoles show them.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ if v < 10.0 => format!("{v:.1} {}", UNITS[unit]),
        _ => format!("{v:.0} {}", UNITS[unit]),
    }
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn bytes_read_like_a_console() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(340_000_000), "340 MB");
        assert_eq!(human_bytes(1_100_000_000), "1.1 GB");
        assert_eq!(human_bytes(8_192), "8.2 kB");
    }
}
