//! The steps a clone-from provision adds to an ordinary one (docs/architecture.md §6):
//!
//! ```text
//! allocate_port → clone_fork → clone_restore → create_cluster → configure_archive
//!               → clone_restart → start → clone_rotate
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
//! and owner), so no credential of the source works on the clone.
//!
//! The order is the clone sequence in `jobs::model`; these are the steps only a clone has. The
//! resolved source is the job's [`CloneSource`] (built by the broker's check).
//!
//! A leaf of `steps`: imports `final_wal` of its siblings, never `instance` or the dispatcher
//! (`steps` itself), and never `broker`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::archive::layout::{InstancePrefix, WalFileName};
use crate::archive::restore::{RestoreError, RestorePhase, RestoreProgress, RestoreTarget};
use crate::archive::ArchiveTarget;
use crate::domain::{OperationState, SpaceGuid};
use crate::jobs::clone_source::CloneSource;
use crate::jobs::model::Job;
use crate::jobs::{JobContext, Outcome, StepError, StepResult};
use crate::runtime::wire::RestoreBody;
use crate::runtime::{
    CloneRestore, CloneRestoreError, ClusterStatus, RemoteRuntime, Runtime, RuntimeError,
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

async fn progress_text(ctx: &JobContext, job: &Job, text: &str) {
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
pub async fn restart(ctx: &JobContext, instance: &InstanceRecord) -> StepResult {
    ctx.runtime.stop(&instance.id).await?;
    Ok(Outcome::Next)
}

/// Takes every copied login away and opens the app database again: a source that was
/// deprovisioned was archived with its database closed to connections (the deprovision's seal),
/// and a clone of it must be usable. Both statements are idempotent, so a retried step is safe.
pub async fn rotate(ctx: &JobContext, instance: &InstanceRecord) -> StepResult {
    let roles = ctx.runtime.revoke_copied_logins(&instance.id).await?;
    tracing::info!(instance = %instance.id, ?roles, "logins copied from the source revoked");
    ctx.runtime
        .reopen_database(&instance.id, &instance.database_name)
        .await?;
    Ok(Outcome::Next)
}

/// For a live source: switch its WAL and wait until that segment is in the archive. Anything
/// else (a source deleted, stopped or out of reach) goes on with what its archive holds.
pub async fn fork(ctx: &JobContext, job: &Job, src: &CloneSource) -> StepResult {
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
    match ctx.runtime.status(&src.id).await {
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
    let (lsn, walfile) = ctx.runtime.switch_wal_segment(&src.id).await?;
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

pub async fn restore_step(
    ctx: &JobContext,
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
    let source_prefix = InstancePrefix::new(&space, &src.id);
    let from = src.to_string();
    let rt = match &ctx.runtime {
        Runtime::Local(rt) => rt.clone(),
        Runtime::Remote(remote) => {
            return restore_on_agent(
                ctx,
                job,
                instance,
                remote,
                RestoreBody {
                    port,
                    prefix: InstancePrefix::new(&space, &instance.id)
                        .as_str()
                        .to_string(),
                    source_prefix: source_prefix.as_str().to_string(),
                    source_system_identifier: src.system_identifier,
                    point_in_time: match src.target {
                        RestoreTarget::Latest => None,
                        RestoreTarget::PointInTime(t) => Some(t),
                    },
                    archive_timeout_secs,
                },
                src,
            )
            .await
        }
    };
    let progress = Arc::new(RestoreProgress::default());
    let c = CloneRestore {
        store: ctx.archive.clone(),
        storage: crate::archive::target::capture_environment(&ctx.settings.archive),
        source: source_prefix,
        system_identifier: src.system_identifier,
        target: src.target,
        port,
        own: ArchiveTarget::for_instance(&ctx.settings, &space, &instance.id),
        wayback_bin: ctx.archive_command.wayback_bin.clone(),
        archive_timeout_secs,
        fetch_ahead: ctx.settings.wal.fetch_ahead,
        progress: progress.clone(),
    };
    let watch = async {
        let mut shown = String::new();
        let mut replay_seen = false;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let view = RestoreView::of(&progress, rt.recovering(&instance.id));
            let text = phase_text(&from, &view, &mut replay_seen, src.target);
            if text != shown {
                progress_text(ctx, job, &text).await;
                shown = text;
            }
        }
    };
    let result = tokio::select! {
        r = rt.restore_clone(&instance.id, c) => r,
        () = watch => unreachable!("the watcher never ends"),
    };
    match result {
        Ok(Some(report)) => {
            tracing::info!(instance = %instance.id, source = %src.id, backup = %report.backup_id, timeline = report.timeline, secs = report.total_secs, "clone restored");
            Ok(Outcome::Next)
        }
        Ok(None) => Ok(Outcome::Next),
        Err(CloneRestoreError::Runtime(e)) => Err(e.into()),
        Err(CloneRestoreError::Restore(e)) => Err(restore_error(e)),
    }
}

/// A restore error as the step reports it: storage trouble is retried, the rest fails the
/// operation with what the user may read.
fn restore_error(e: RestoreError) -> StepError {
    if e.is_transient() {
        StepError::Transient(e.into())
    } else {
        StepError::Permanent {
            user_message: e.user_message(),
            source: e.into(),
        }
    }
}

/// The restore runs on the instance's agent: start (or join) it, then poll its status every
/// half second and show it like a local one.
async fn restore_on_agent(
    ctx: &JobContext,
    job: &Job,
    instance: &InstanceRecord,
    remote: &RemoteRuntime,
    body: RestoreBody,
    src: &CloneSource,
) -> StepResult {
    let (from, target) = (src.to_string(), src.target);
    let mut status = remote.start_restore(&instance.id, &body).await?;
    let mut shown = String::new();
    let mut replay_seen = false;
    loop {
        match status.state.as_str() {
            "succeeded" => {
                tracing::info!(instance = %instance.id, backup = ?status.backup_id, timeline = ?status.timeline, secs = ?status.total_secs, "clone restored on its agent");
                return Ok(Outcome::Next);
            }
            "failed" => {
                let e = status
                    .error
                    .unwrap_or_else(|| crate::runtime::wire::WireError {
                        message: "the agent's restore failed".into(),
                        permanent: false,
                        port_in_use: None,
                        user_message: None,
                    });
                let source = anyhow::anyhow!("restore on the agent failed: {}", e.message);
                return Err(if e.permanent {
                    StepError::Permanent {
                        user_message: e.user_message.unwrap_or(e.message),
                        source,
                    }
                } else {
                    StepError::Transient(source)
                });
            }
            "running" => {}
            // The agent restarted and lost the restore: start it again.
            _ => {
                status = remote.start_restore(&instance.id, &body).await?;
                continue;
            }
        }
        let view = RestoreView {
            phase: match status.phase.as_str() {
                "unpacking" => RestorePhase::Unpacking,
                "replaying" => RestorePhase::Replaying,
                "done" => RestorePhase::Done,
                _ => RestorePhase::Planning,
            },
            bytes: (status.bytes_done, status.bytes_total),
            backup_stop: status
                .backup_stop
                .and_then(|t| DateTime::from_timestamp(t, 0)),
            recovering: status.recovering,
        };
        let text = phase_text(&from, &view, &mut replay_seen, target);
        if text != shown {
            progress_text(ctx, job, &text).await;
            shown = text;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        status = remote.restore_status(&instance.id).await?;
    }
}

/// Where a restore is, wherever it runs.
struct RestoreView {
    phase: RestorePhase,
    bytes: (u64, u64),
    backup_stop: Option<DateTime<Utc>>,
    /// `recovery.signal` is still there.
    recovering: bool,
}

impl RestoreView {
    fn of(p: &RestoreProgress, recovering: bool) -> Self {
        Self {
            phase: p.phase(),
            bytes: p.bytes(),
            backup_stop: p.backup_stop_time(),
            recovering,
        }
    }
}

/// The line last_operation shows: the base backup's bytes while it unpacks, then WAL replay,
/// then promotion (the server removes `recovery.signal` when it promotes). Every line names
/// the source.
fn phase_text(
    from: &str,
    view: &RestoreView,
    replay_seen: &mut bool,
    target: RestoreTarget,
) -> String {
    match view.phase {
        RestorePhase::Planning => format!("Cloning {from}: choosing a base backup"),
        RestorePhase::Unpacking => {
            let (done, total) = view.bytes;
            let base = view
                .backup_stop
                .map_or("the newest backup".to_string(), when);
            format!(
                "Cloning {from}: restoring base backup of {base} ({} of {})",
                human_bytes(done),
                human_bytes(total)
            )
        }
        RestorePhase::Replaying | RestorePhase::Done => {
            *replay_seen |= view.recovering;
            if *replay_seen && !view.recovering {
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
