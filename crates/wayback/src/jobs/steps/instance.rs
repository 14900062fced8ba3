//! Provision, update and deprovision steps (the steps a provision shares with a clone-from
//! provision included). Their order is in `jobs::model`.
//!
//! A leaf of `steps`: imports `backup` and `final_wal` of its siblings, never `clone`, `ha` or
//! the dispatcher (`steps` itself), and never `broker`.

use std::collections::HashMap;
use std::net::TcpListener;
use std::time::Duration;

use anyhow::Context;

use crate::context::AppContext;
use crate::domain::{InstanceId, InstanceState};
use crate::jobs::model::{Job, JobSpec, Step};
use crate::jobs::{Outcome, StepError, StepResult};
use crate::runtime::{ClusterSpec, Placement, PlacementLedger, RuntimeError};
use crate::store::InstanceRecord;

pub async fn load(ctx: &AppContext, job: &Job) -> Result<InstanceRecord, StepError> {
    ctx.store
        .get_instance(&job.instance_id)
        .await?
        .ok_or_else(|| StepError::Permanent {
            user_message: "the instance record is missing".into(),
            source: anyhow::anyhow!("instance {} not in the store", job.instance_id),
        })
}

pub(super) fn spec(
    ctx: &AppContext,
    instance: &InstanceRecord,
    plan_id: &str,
) -> Result<ClusterSpec, StepError> {
    let plan = ctx
        .catalog
        .plan(&instance.service_id, plan_id)
        .ok_or_else(|| StepError::Permanent {
            user_message: "the plan is no longer in the catalog".into(),
            source: anyhow::anyhow!("plan {plan_id} not in catalog"),
        })?;
    let port = instance
        .port
        .ok_or_else(|| StepError::transient(anyhow::anyhow!("instance has no port yet")))?;
    Ok(ClusterSpec {
        instance: instance.id.clone(),
        port,
        settings: plan.settings.clone(),
        require_tls: plan.require_tls,
    })
}

/// Runs a step a provision and a clone share, on the instance being provisioned.
pub async fn provision_step(ctx: &AppContext, step: Step, instance: &InstanceRecord) -> StepResult {
    match step {
        Step::AllocatePort => {
            if instance.port.is_none() {
                allocate_port(ctx, instance, None).await?;
            }
            Ok(Outcome::Next)
        }
        Step::CreateCluster => {
            // A kept copy of a deleted instance gives way to a new one that needs the room.
            crate::jobs::kept::make_room(ctx).await;
            let spec = spec(ctx, instance, &instance.plan_id)?;
            ctx.runtime.create_cluster(&spec).await?;
            Ok(Outcome::Next)
        }
        Step::ConfigureArchive => {
            let (target, command) = archive_of(ctx, instance)?;
            ctx.runtime
                .configure_archive(&instance.id, &target, &command)
                .await?;
            // A clone's restored server still runs with the restore's settings: its sequence
            // restarts it next.
            Ok(Outcome::Next)
        }
        Step::Start => match ctx.runtime.start(&instance.id).await {
            Ok(()) => Ok(Outcome::Next),
            Err(RuntimeError::PortInUse(port)) => port_taken(ctx, instance, port).await,
            Err(e) => Err(e.into()),
        },
        Step::CreateDatabase => {
            ctx.runtime
                .ensure_database(&instance.id, &instance.database_name, &instance.owner_role)
                .await?;
            Ok(Outcome::Next)
        }
        other => Err(unknown_step(other)),
    }
}

/// The instance's archive target (its own prefix) and how its clusters run the archiver (the
/// plan's archive interval).
pub(super) fn archive_of(
    ctx: &AppContext,
    instance: &InstanceRecord,
) -> Result<
    (
        crate::archive::ArchiveTarget,
        crate::runtime::ArchiveCommand,
    ),
    StepError,
> {
    let space = crate::domain::SpaceGuid::parse(instance.space_guid.clone())
        .map_err(StepError::transient)?;
    let target = crate::archive::ArchiveTarget::for_instance(&ctx.settings, &space, &instance.id);
    let mut command = ctx.archive_command.clone();
    if let Some(secs) = ctx
        .catalog
        .plan(&instance.service_id, &instance.plan_id)
        .and_then(|p| p.archive.archive_interval_secs)
    {
        command.archive_timeout_secs = secs;
    }
    Ok((target, command))
}

/// Someone outside Wayback took the instance's port (on an agent's machine the broker cannot
/// check a port is free before it allocates it): the port is given up and the job goes back to
/// take another; the steps after rewrite the configuration with it.
pub async fn port_taken(ctx: &AppContext, instance: &InstanceRecord, port: u16) -> StepResult {
    tracing::warn!(instance = %instance.id, port, "port taken by another process; choosing another");
    ctx.store.set_instance_port(&instance.id, None).await?;
    Ok(Outcome::Back(Step::AllocatePort))
}

pub async fn update_step(ctx: &AppContext, job: &Job, plan_id: &str) -> StepResult {
    let instance = load(ctx, job).await?;
    match job.step {
        Step::ApplySettings => apply_plan(ctx, &instance, plan_id).await,
        other => Err(unknown_step(other)),
    }
}

/// `apply_settings`: `plan_id`'s settings written and applied to the running cluster, by a
/// reload, or a restart when one of them needs it (a stopped cluster reads them at its start).
///
/// A cluster stopped when idle (issue 17) is started first: the new plan may never stop (one
/// left stopped would run from a client's wake on, and the supervisor would never stop it
/// again), and its settings are checked by the start rather than at the next client's wake.
pub async fn apply_plan(ctx: &AppContext, instance: &InstanceRecord, plan_id: &str) -> StepResult {
    let spec = spec(ctx, instance, plan_id)?;
    crate::jobs::idle::unpark(ctx, instance, &instance.id).await?;
    let applied = ctx.runtime.apply_settings(&spec).await?;
    tracing::info!(instance = %instance.id, restarted = applied.restarted, "plan settings applied");
    Ok(Outcome::Next)
}

pub async fn deprovision_step(ctx: &AppContext, job: &Job) -> StepResult {
    let instance = load(ctx, job).await?;
    match job.step {
        Step::WaitExclusive => {
            // A provision or update still running must see the new state and stop first, or
            // it could recreate what we are about to remove.
            let others = ctx.store.other_pending_jobs(&instance.id, &job.id).await?;
            if others.iter().any(|j| {
                j.lease_until
                    .is_some_and(|t| t > crate::store::now_millis())
            }) {
                return Ok(Outcome::Wait(Duration::from_millis(200)));
            }
            for other in others {
                // Not running (waiting for a retry): it would stop at its next step anyway.
                ctx.store
                    .finish_job(
                        &other.id,
                        crate::store::JOB_FAILED,
                        Some("superseded by deprovision"),
                    )
                    .await?;
                if let Some(op) = &other.operation_id {
                    ctx.store
                        .update_operation(
                            op,
                            crate::domain::OperationState::Failed,
                            "Stopped because the instance is being deleted.",
                        )
                        .await?;
                }
            }
            Ok(Outcome::Next)
        }
        // A follower has no archive of its own: nothing to back up, seal or describe.
        Step::FinalBackup | Step::FinalWal | Step::WriteInstanceDoc
            if instance.leader_id.is_some() =>
        {
            Ok(Outcome::Next)
        }
        // An HA instance without a base backup never got past its provision's
        // `ha_first_backup`, so it never served an app: nothing to keep.
        Step::FinalBackup
            if !ctx.store.ha_members(&instance.id).await?.is_empty()
                && ctx.store.latest_backup(&instance.id).await?.is_none() =>
        {
            Ok(Outcome::Next)
        }
        Step::FinalBackup => {
            // Deleted before its first base backup (the provision's backup job was still
            // queued and has just been superseded): WAL alone cannot be restored, so take one
            // now or nothing of it could be undone. Storage down: retried, then the delete
            // fails and the instance is kept, as for the final WAL.
            if ctx.store.latest_backup(&instance.id).await?.is_none()
                && ctx
                    .runtime
                    .status(
                        &crate::jobs::ha::cluster_key_or_first(ctx, &instance.id)
                            .await
                            .map_err(StepError::transient)?,
                    )
                    .await?
                    == crate::runtime::ClusterStatus::Running
            {
                super::backup::take_and_record(ctx, &job.id, &instance, "deprovision").await?;
            }
            Ok(Outcome::Next)
        }
        Step::FinalWal => {
            super::final_wal::archive_final_wal(ctx, &instance).await?;
            Ok(Outcome::Next)
        }
        Step::WriteInstanceDoc => {
            // Part of "loses nothing": the archive must describe itself (deleted, with its
            // final LSN) before the cluster is gone. A failure here keeps the instance.
            let deleted_at = chrono::Utc::now();
            crate::jobs::instance_doc::write_instance_doc(
                &ctx.store,
                &ctx.catalog,
                &ctx.archive,
                &instance.id,
                |doc| {
                    doc.state = crate::domain::InstanceState::Deleted.as_str().into();
                    doc.deleted_at.get_or_insert(deleted_at);
                },
            )
            .await
            .map_err(StepError::transient)?;
            Ok(Outcome::Next)
        }
        // An HA instance's members are destroyed, none kept in the trash: undo is from the
        // archive (the final WAL above is in it).
        Step::Destroy if !ctx.store.ha_members(&instance.id).await?.is_empty() => {
            crate::jobs::ha::destroy_members(ctx, &instance.id)
                .await
                .map_err(StepError::transient)?;
            Ok(Outcome::Next)
        }
        Step::Destroy => {
            crate::jobs::kept::destroy_or_keep(ctx, &instance).await?;
            Ok(Outcome::Next)
        }
        other => Err(unknown_step(other)),
    }
}

/// Applies a job's end to the instance record. `Some(reason)` from a success means the job was
/// superseded at the last moment (a DELETE during the last step): report it as failed.
pub async fn on_end(
    ctx: &AppContext,
    job: &Job,
    succeeded: bool,
) -> anyhow::Result<Option<String>> {
    let store = &ctx.store;
    let id = &job.instance_id;
    let instance = store
        .get_instance(id)
        .await?
        .context("instance record missing")?;
    match (&job.spec, succeeded) {
        (JobSpec::Provision(p), true) if p.follow.is_some() => {
            // A follower takes no base backups: its leader's archive is its history.
            if !store
                .set_instance_state_from(id, InstanceState::Provisioning, InstanceState::Ready)
                .await?
            {
                return Ok(Some(
                    "Provisioning was stopped because the instance is being deleted.".into(),
                ));
            }
        }
        (JobSpec::Provision(p), true) if p.ha => {
            // Its first base backup was a step of its own (`ha_first_backup`).
            if !store
                .set_instance_state_from(id, InstanceState::Provisioning, InstanceState::Ready)
                .await?
            {
                return Ok(Some(
                    "Provisioning was stopped because the instance is being deleted.".into(),
                ));
            }
            sync_doc(ctx, id, "provisioned").await;
        }
        (JobSpec::Provision(_), true) => {
            // The first base backup is a job of its own, so provisioning does not wait for it.
            let backup = super::backup::backup_job(id, "provision");
            if !store.set_ready_with_backup(id, &backup).await? {
                return Ok(Some(
                    "Provisioning was stopped because the instance is being deleted.".into(),
                ));
            }
            sync_doc(ctx, id, "provisioned").await;
        }
        (JobSpec::Provision(_), false) => {
            // A cancelled provision leaves the instance to the deprovision that cancelled it.
            if instance.state == InstanceState::Provisioning {
                // Nothing of a failed provision or clone is worth keeping (it holds no user
                // data yet): stop and remove what it created, wherever it runs. A failed
                // delete keeps its cluster for undo; this is not that. The record stays
                // `failed` until the platform deletes it.
                if let Some(src) = job.spec.follow_source() {
                    let (role, slot) = crate::jobs::replication_names(id);
                    if let Err(e) = ctx
                        .runtime
                        .drop_replication(&src.leader, &role, &slot)
                        .await
                    {
                        tracing::warn!(instance = %id, leader = %src.leader, error = %e, "cannot withdraw the failed follower's grant on its leader; its delete will");
                    }
                }
                // An HA provision's members (each under its member key), and their rows.
                if let Err(e) = crate::jobs::ha::destroy_members(ctx, id).await {
                    tracing::warn!(instance = %id, error = %e, "cannot remove the failed HA provision's members; the delete will");
                }
                match ctx.runtime.destroy(id).await {
                    // Its port is free for the next provision.
                    Ok(()) => store.set_instance_port(id, None).await?,
                    Err(e) => {
                        tracing::warn!(instance = %id, error = %e, "cannot remove what the failed provision created; the delete will");
                    }
                }
                store.set_instance_state(id, InstanceState::Failed).await?;
            }
        }
        (JobSpec::Update(u), true) if u.unfollow => {
            // Independent now: no leader, and its first base backup (as a provision's).
            store.end_following(id).await?;
            if instance.state == InstanceState::Updating {
                store.set_instance_state(id, InstanceState::Ready).await?;
            }
            store
                .enqueue_backup(&super::backup::backup_job(id, "provision"))
                .await?;
            sync_doc(ctx, id, "unfollowed").await;
        }
        (JobSpec::Update(u), false) if u.unfollow => {
            // Still a follower, or promoted part-way: the user may ask again (every step of
            // the sequence is repeatable).
            if instance.state == InstanceState::Updating {
                store.set_instance_state(id, InstanceState::Ready).await?;
            }
        }
        (JobSpec::Update(update), true) => {
            store.set_instance_plan(id, &update.plan_id).await?;
            sync_doc(ctx, id, "plan changed").await;
            if instance.state == InstanceState::Updating {
                store.set_instance_state(id, InstanceState::Ready).await?;
            }
        }
        (JobSpec::Update(_), false) => {
            // Put the old plan's settings back so the cluster matches the recorded plan.
            if let Ok(spec) = spec(ctx, &instance, &instance.plan_id) {
                if let Err(e) = ctx.runtime.apply_settings(&spec).await {
                    tracing::warn!(instance = %id, error = %e, "cannot restore the old plan's settings");
                }
            }
            if instance.state == InstanceState::Updating {
                store.set_instance_state(id, InstanceState::Ready).await?;
            }
        }
        (JobSpec::Deprovision(_), true) => {
            store.delete_bindings_of(id).await?;
            store.set_instance_state(id, InstanceState::Deleted).await?;
            sync_doc(ctx, id, "deleted").await;
        }
        (JobSpec::Deprovision(_), false) => {
            // Still there (e.g. the final WAL could not be archived): keep serving it (an HA
            // instance: on its leader).
            let cluster = crate::jobs::ha::cluster_key_or_first(ctx, id)
                .await
                .unwrap_or_else(|_| id.clone());
            if matches!(
                ctx.runtime.status(&cluster).await,
                Ok(crate::runtime::ClusterStatus::Running)
            ) {
                ctx.runtime
                    .reopen_database(&cluster, &instance.database_name)
                    .await?;
                store.set_instance_state(id, InstanceState::Ready).await?;
            } else {
                store.set_instance_state(id, InstanceState::Failed).await?;
            }
            // The write_instance_doc step may have recorded it as deleted already.
            sync_doc(ctx, id, "deletion failed").await;
        }
        (
            JobSpec::Bind(_)
            | JobSpec::Unbind(_)
            | JobSpec::Backup(_)
            | JobSpec::Drill(_)
            | JobSpec::IdleStop(_),
            _,
        ) => {}
    }
    Ok(None)
}

/// Brings `instance.json` up to date without failing the operation (retried by the supervisor).
/// A follower has no archive of its own, so no `instance.json`.
async fn sync_doc(ctx: &AppContext, id: &crate::domain::InstanceId, why: &str) {
    if let Ok(Some(i)) = ctx.store.get_instance(id).await {
        if i.leader_id.is_some() {
            return;
        }
    }
    crate::jobs::instance_doc::sync_instance_doc_or_mark_stale(
        &ctx.store,
        &ctx.catalog,
        &ctx.archive,
        id,
        why,
    )
    .await;
}

/// A clone's `allocate_port`: placed on `preferred` (the agent holding its source's kept
/// copy) when that agent has room.
pub async fn allocate_port_step(
    ctx: &AppContext,
    instance: &InstanceRecord,
    preferred: Option<String>,
) -> StepResult {
    if instance.port.is_none() {
        allocate_port(ctx, instance, preferred.as_deref()).await?;
    }
    Ok(Outcome::Next)
}

/// Picks a port in the configured range that no instance holds and nothing listens on.
async fn allocate_port(
    ctx: &AppContext,
    instance: &InstanceRecord,
    preferred: Option<&str>,
) -> Result<u16, StepError> {
    let pg = &ctx.settings.postgres;
    let agent = match &instance.agent {
        Some(agent) => agent.clone(),
        None => {
            // A follower goes to another machine than its leader's when one has room.
            let avoid = match &instance.leader_id {
                Some(leader) => ctx.store.get_instance(leader).await?.and_then(|l| l.agent),
                None => None,
            };
            let ledger = StoreLedger {
                store: &ctx.store,
                preferred,
                avoid,
            };
            ctx.runtime
                .place(&instance.id, &ledger)
                .await?
                .map(|p| p.agent)
                .unwrap_or_default()
        }
    };
    let used = ctx.store.used_ports(&agent).await?;
    let span = u32::from(pg.port_max - pg.port_min) + 1;
    // Start at a random offset so that brokers sharing a range rarely race for one port.
    let offset = rand::random::<u32>() % span;
    for i in 0..span {
        let port = pg.port_min + ((offset + i) % span) as u16;
        // On an agent's machine the agent finds out at start (PortInUse: another port).
        if used.contains(&port) || (agent.is_empty() && !port_is_free(&pg.listen_address, port)) {
            continue;
        }
        match ctx.store.set_instance_port(&instance.id, Some(port)).await {
            Ok(()) => return Ok(port),
            Err(crate::store::StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StepError::Permanent {
        user_message:
            "no free port is left for a new database; ask your operator to widen the port range"
                .into(),
        source: anyhow::anyhow!("no free port in {}..={}", pg.port_min, pg.port_max),
    })
}

/// The store as the runtime's record of placements, with the agent a clone prefers (the one
/// holding its source's kept copy) and the one a follower avoids (its leader's).
struct StoreLedger<'a> {
    store: &'a crate::store::Store,
    preferred: Option<&'a str>,
    avoid: Option<String>,
}

#[async_trait::async_trait]
impl PlacementLedger for StoreLedger<'_> {
    async fn placed(&self) -> anyhow::Result<HashMap<String, usize>> {
        Ok(self.store.instances_per_agent().await?)
    }
    async fn record(&self, id: &InstanceId, placement: &Placement) -> anyhow::Result<()> {
        Ok(self
            .store
            .set_instance_agent(id, &placement.agent, &placement.host)
            .await?)
    }
    fn preferred(&self) -> Option<&str> {
        self.preferred
    }
    fn avoid(&self) -> Option<&str> {
        self.avoid.as_deref()
    }
}

pub(super) fn port_is_free(address: &str, port: u16) -> bool {
    let host = match address {
        "*" | "" => "0.0.0.0",
        other => other,
    };
    TcpListener::bind((host, port)).is_ok()
}

/// A step of another sequence: `steps` dispatches only this module's steps here.
fn unknown_step(step: Step) -> StepError {
    StepError::Permanent {
        user_message: "internal error".into(),
        source: anyhow::anyhow!("{step} is not a step of this job"),
    }
}
