//! The broker's side of the copies kept at delete time for a fast undo (issue 16,
//! docs/architecture.md §5): a deprovision's `destroy` step keeps the data directory when the
//! plan says so and records which machine holds it; a clone of the deleted instance at its
//! latest point asks its restore to try that copy first; and [`tend`] keeps the records and the
//! machines' trash equal and evicts copies by age and by free space.
//!
//! The runtime's trash is the truth about what is on disk, and the copy is only ever an
//! accelerator: every byte of it is in the archive too, so losing one costs speed, never data.
//! Eviction therefore never touches the archive. Imports `context`, `runtime`, `store`,
//! `catalog` and the job types; never `broker` or `maintenance`.

use std::collections::HashSet;

use crate::archive::restore::RestoreTarget;
use crate::context::AppContext;
use crate::domain::InstanceId;
use crate::jobs::clone_source::CloneSource;
use crate::jobs::StepError;
use crate::runtime::{MachineTrash, TrashedSource};
use crate::store::{now_millis, InstanceRecord, KeptCopyRecord};

/// A copy seen on disk without a record younger than this is left alone by the periodic pass:
/// its deprovision may be between the move and the record. At start-up nothing is in flight.
const UNRECORDED_GRACE_MS: i64 = 10 * 60 * 1000;

/// The hours the instance's plan keeps a deleted instance's data directory (24 if the plan is
/// gone from the catalog).
fn keep_hours(ctx: &AppContext, instance: &InstanceRecord) -> u64 {
    ctx.catalog
        .plan(&instance.service_id, &instance.plan_id)
        .map_or(24, |p| p.undo_keep_hours)
}

/// The deprovision's last step: keep the data directory for undo when the plan says so, else
/// remove it as before.
pub async fn destroy_or_keep(ctx: &AppContext, instance: &InstanceRecord) -> Result<(), StepError> {
    let hours = keep_hours(ctx, instance);
    if hours == 0 {
        ctx.runtime.destroy(&instance.id).await?;
        return Ok(());
    }
    let Some(copy) = ctx.runtime.trash_cluster(&instance.id).await? else {
        return Ok(());
    };
    crate::crash_point::reached("destroy:trashed");
    let system_identifier = copy
        .system_identifier
        .parse()
        .map_err(|e| StepError::transient(anyhow::anyhow!("kept copy's system identifier: {e}")))?;
    ctx.store
        .record_kept_copy(&KeptCopyRecord {
            instance_id: instance.id.clone(),
            agent: instance.agent.clone(),
            checkpoint_lsn: copy.checkpoint_lsn,
            system_identifier,
            size_bytes: copy.size_bytes as i64,
            kept_at: copy.kept_at,
            expires_at: copy.kept_at + (hours as i64) * 3_600_000,
        })
        .await?;
    Ok(())
}

/// The kept copy a clone of `src` into `instance` should try first: the source is deleted, a
/// copy is recorded on the machine the clone runs on, and the target is its latest point (no
/// point in time, or one at or after its deletion, which is after its final commit).
pub async fn usable_copy(
    ctx: &AppContext,
    instance: &InstanceRecord,
    src: &CloneSource,
) -> Result<Option<TrashedSource>, StepError> {
    if !takes_copy(src) {
        return Ok(None);
    }
    Ok(ctx
        .store
        .kept_copy(&src.id)
        .await?
        .filter(|r| r.agent == instance.agent && r.system_identifier == src.system_identifier)
        .map(|r| TrashedSource {
            source: r.instance_id,
            checkpoint_lsn: r.checkpoint_lsn,
        }))
}

/// A deleted source, cloned at its latest point: no point in time, or one at or after its
/// final commit (or its deletion, which is later still).
fn takes_copy(src: &CloneSource) -> bool {
    let Some(deleted_at) = src.deleted_at.filter(|_| !src.live) else {
        return false;
    };
    match src.target {
        RestoreTarget::Latest => true,
        RestoreTarget::PointInTime(t) => {
            let t = t.timestamp_millis();
            t >= deleted_at || src.final_commit_ms.is_some_and(|f| t >= f)
        }
    }
}

/// What one pass of [`tend`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tended {
    /// Copies removed: expired, for room, or on disk without a record.
    pub evicted: Vec<InstanceId>,
    /// Records dropped because their copy is gone.
    pub forgotten: Vec<InstanceId>,
}

/// Reconciles each machine's trash with the records and evicts: copies without a record
/// (`startup`: all of them; else those older than a grace period), records without a copy,
/// expired copies, then the oldest while the machine's data file system has less free space
/// than `trash.min_free_bytes` or `trash.min_free_share` of it. A machine that does not answer
/// (an agent away) is left as it is until it does.
pub async fn tend(ctx: &AppContext, startup: bool) -> anyhow::Result<Tended> {
    let mut done = Tended::default();
    let records = ctx.store.kept_copies().await?;
    for machine in ctx.runtime.list_trash().await? {
        let mine: Vec<KeptCopyRecord> = records
            .iter()
            .filter(|r| r.agent == machine.agent)
            .cloned()
            .collect();
        tend_machine(ctx, &machine, mine, startup, &mut done).await?;
    }
    Ok(done)
}

async fn tend_machine(
    ctx: &AppContext,
    machine: &MachineTrash,
    records: Vec<KeptCopyRecord>,
    startup: bool,
    done: &mut Tended,
) -> anyhow::Result<()> {
    let on_disk = &machine.trash;
    let now = now_millis();
    let recorded: HashSet<&str> = records.iter().map(|r| r.instance_id.as_str()).collect();
    let present: HashSet<&str> = on_disk
        .copies
        .iter()
        .map(|c| c.instance_id.as_str())
        .collect();
    for copy in &on_disk.copies {
        if recorded.contains(copy.instance_id.as_str()) {
            continue;
        }
        if !startup && copy.kept_at != 0 && now - copy.kept_at < UNRECORDED_GRACE_MS {
            continue;
        }
        let id = InstanceId::parse(copy.instance_id.clone())?;
        tracing::info!(instance = %id, agent = ?machine.agent, "removing a kept copy the state database does not know");
        ctx.runtime.evict_trash(&id).await?;
        done.evicted.push(id);
    }
    let mut live = Vec::new();
    for r in records {
        if !present.contains(r.instance_id.as_str()) {
            tracing::info!(instance = %r.instance_id, "forgetting a kept copy that is no longer on disk");
            ctx.store.drop_kept_copy(&r.instance_id).await?;
            done.forgotten.push(r.instance_id);
        } else if r.expires_at <= now {
            tracing::info!(instance = %r.instance_id, "the kept copy's time is up; removing it");
            evict(ctx, &r.instance_id).await?;
            done.evicted.push(r.instance_id);
        } else {
            live.push(r);
        }
    }
    let floor = free_floor(ctx, on_disk.total_bytes);
    let mut free = on_disk.free_bytes;
    let mut kept = (0u64, 0u64);
    for r in live {
        if free >= floor {
            kept = (kept.0 + 1, kept.1 + r.size_bytes.max(0) as u64);
            continue;
        }
        tracing::info!(instance = %r.instance_id, free, floor, "the data disk is short of room; removing the oldest kept copy");
        evict(ctx, &r.instance_id).await?;
        free += r.size_bytes.max(0) as u64;
        done.evicted.push(r.instance_id);
    }
    let label = machine.agent.as_deref().unwrap_or("local");
    ctx.metrics.trash_observed(label, kept.0, kept.1);
    Ok(())
}

/// The free bytes the data file system must keep: the higher of the two settings.
fn free_floor(ctx: &AppContext, total_bytes: u64) -> u64 {
    let t = &ctx.settings.trash;
    let share = (total_bytes as f64 * t.min_free_share) as u64;
    t.min_free_bytes.max(share)
}

async fn evict(ctx: &AppContext, id: &InstanceId) -> anyhow::Result<()> {
    ctx.runtime.evict_trash(id).await?;
    ctx.store.drop_kept_copy(id).await?;
    Ok(())
}

/// The agent a clone of `src` should be placed on: the one holding the source's kept copy,
/// when the clone would take it (see [`usable_copy`]); for a live source at its latest point,
/// the source's own, where the clone can fork it from its running server.
pub async fn preferred_agent(
    ctx: &AppContext,
    src: &CloneSource,
) -> Result<Option<String>, StepError> {
    if src.live && src.target == RestoreTarget::Latest {
        return Ok(ctx.store.get_instance(&src.id).await?.and_then(|r| r.agent));
    }
    if !takes_copy(src) {
        return Ok(None);
    }
    Ok(ctx.store.kept_copy(&src.id).await?.and_then(|r| r.agent))
}

/// Before a provision makes a cluster: evict kept copies if the disk is under its floor, so
/// that the new instance finds the room a copy would otherwise hold.
pub async fn make_room(ctx: &AppContext) {
    if let Err(e) = tend(ctx, false).await {
        tracing::warn!(error = format!("{e:#}"), "cannot check the trash's room");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(live: bool, target: Option<&str>, final_commit_ms: Option<i64>) -> CloneSource {
        let mut s: CloneSource = serde_json::from_value(serde_json::json!({
            "source": "src-1", "name": "production", "live": live,
            "deleted_at": if live { None } else { Some(2_000_000) },
            "target": target, "system_identifier": "1",
            "backup_stop_time": "1970-01-01T00:00:01+00:00",
        }))
        .unwrap();
        s.final_commit_ms = final_commit_ms;
        s
    }

    #[test]
    fn only_a_deleted_source_at_its_latest_point_takes_the_copy() {
        // 1 000 000 ms = 1970-01-01T00:16:40Z; deleted at 2 000 000 ms.
        assert!(takes_copy(&source(false, None, None)));
        assert!(!takes_copy(&source(true, None, None)));
        let at = |t: &str, f| takes_copy(&source(false, Some(t), f));
        assert!(
            at("1970-01-01T00:16:40+00:00", Some(1_000_000)),
            "at the final commit"
        );
        assert!(
            !at("1970-01-01T00:16:39.999+00:00", Some(1_000_000)),
            "before it"
        );
        assert!(
            !at("1970-01-01T00:16:40+00:00", None),
            "final commit unknown"
        );
        assert!(at("1970-01-01T00:33:20+00:00", None), "at the deletion");
    }
}
