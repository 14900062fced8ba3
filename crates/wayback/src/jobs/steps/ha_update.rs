//! Plan changes between a single-member plan and an HA plan (issue 15; docs/architecture.md
//! "HA plans"): `cf update-service -p ha-small` adds a standby, the reverse removes it.
//!
//! ```text
//! single → HA:  ha_place → ha_adopt_single → ha_first_backup → ha_seed_standby → ha_wait_standby
//! HA → single:  ha_keep_first → ha_drop_standby → ha_release → ha_forget → configure_archive → start
//! ```
//!
//! **Single → HA.** The running cluster becomes the first member: `ha_place` records both
//! members (the first with the instance's port), and `ha_adopt_single` hands the cluster to
//! Patroni with `HaSeed::AdoptSingle` — prepared while it still serves (shared superuser
//! password, replication role, `pg_hba` lines), then stopped, its directory renamed under the
//! member key `<id>~m1` (the instance's single-member paths become the first member's, so
//! every HA path has one layout) and started by Patroni: one restart, and the cluster keeps its
//! data, port and archive prefix. The rest is an HA provision's tail (`steps::ha`). Existing
//! bindings keep their host/port, which is the first member's.
//!
//! **HA → single.** `ha_keep_first` switches over to the first member (whose port the
//! instance row names, so existing bindings keep working) unless it leads; `ha_drop_standby`
//! destroys every other member, after checking again that the first leads (a failover in
//! between goes back to `ha_keep_first`: the member to keep must have every commit);
//! `ha_release` takes the first member out of Patroni (`ClusterRuntime::ha_release_member`:
//! a clean stop, the scope out of etcd, the directory back under the instance's id with its
//! plain configuration); `ha_forget` deletes the `ha_members` rows; then the plan's archiving
//! and a start, as for any single cluster.
//!
//! `ha_adopt_single` and `ha_release` stop the server: each waits first for another job of the
//! instance that runs now (a base backup) to end. The HA steps read the plan of the record they are given, so they are given the instance with
//! the target plan. Each step is idempotent (a row, a member, a move already done is seen).
//! A failed plan change ([`on_failure`]) leaves the instance serving: single → HA before the
//! move forgets the placed members (the single cluster is untouched), after it the instance is
//! HA and the same update may be asked again; HA → single after the release is recorded as done
//! as far as it went (a single cluster on the new plan).
//!
//! A leaf of `steps`: imports `ha` and `instance` of its siblings, never the dispatcher.

use std::time::Duration;

use super::ha;
use super::instance::{archive_of, spec};
use crate::context::AppContext;
use crate::domain::InstanceState;
use crate::jobs::model::{HaChange, Job, JobSpec, Step};
use crate::jobs::{Outcome, StepError, StepResult};
use crate::runtime::{ClusterStatus, HaSeed};
use crate::store::InstanceRecord;

/// Runs one step of a plan change between single and HA.
pub async fn update_step(
    ctx: &AppContext,
    job: &Job,
    instance: &InstanceRecord,
    plan_id: &str,
    change: HaChange,
) -> StepResult {
    // The two steps that stop the server wait for another job of the instance running now (a
    // base backup: the stop would cut it off, and it would fail once and be retried).
    if matches!(job.step, Step::HaAdoptSingle | Step::HaRelease) && other_job_runs(ctx, job).await?
    {
        return Ok(Outcome::Wait(Duration::from_millis(200)));
    }
    let mut target = instance.clone();
    target.plan_id = plan_id.to_string();
    let target = &target;
    match (change, job.step) {
        (HaChange::AddStandby, Step::HaPlace) => ha::place(ctx, target).await,
        (HaChange::AddStandby, Step::HaAdoptSingle) => {
            // Stopped when idle (issue 17): Patroni takes over a running cluster, and an HA
            // instance never stops.
            crate::jobs::idle::unpark(ctx, instance, &instance.id).await?;
            ha::adopt(ctx, job, target, HaSeed::AdoptSingle).await
        }
        (HaChange::AddStandby, Step::HaFirstBackup) => ha::first_backup(ctx, job, target).await,
        (HaChange::AddStandby, Step::HaSeedStandby) => ha::seed_standby(ctx, target).await,
        (HaChange::AddStandby, Step::HaWaitStandby) => ha::wait_standby(ctx, job, target).await,
        (HaChange::RemoveStandby, Step::HaKeepFirst) => keep_first(ctx, target).await,
        (HaChange::RemoveStandby, Step::HaDropStandby) => drop_standbys(ctx, target).await,
        (HaChange::RemoveStandby, Step::HaRelease) => release(ctx, target).await,
        (HaChange::RemoveStandby, Step::HaForget) => {
            ctx.store.delete_ha_members(&target.id).await?;
            Ok(Outcome::Next)
        }
        (HaChange::RemoveStandby, Step::ConfigureArchive) => {
            let (archive, command) = archive_of(ctx, target)?;
            ctx.runtime
                .configure_archive(&target.id, &archive, &command)
                .await?;
            Ok(Outcome::Next)
        }
        (HaChange::RemoveStandby, Step::Start) => {
            ctx.runtime.start(&target.id).await?;
            Ok(Outcome::Next)
        }
        (change, other) => Err(StepError::Permanent {
            user_message: "internal error".into(),
            source: anyhow::anyhow!("{other} is not a step of a plan change {change:?}"),
        }),
    }
}

/// Whether another job of `job`'s instance holds its lease now (runs).
async fn other_job_runs(ctx: &AppContext, job: &Job) -> Result<bool, StepError> {
    let now = crate::store::now_millis();
    Ok(ctx
        .store
        .other_pending_jobs(&job.instance_id, &job.id)
        .await?
        .iter()
        .any(|j| j.lease_until.is_some_and(|t| t > now)))
}

/// Whether the first member was released already: its member key holds nothing, and a cluster
/// is under the instance's own id.
async fn released(ctx: &AppContext, instance: &InstanceRecord) -> Result<bool, StepError> {
    let members = ctx.store.ha_members(&instance.id).await?;
    let Some(first) = members.first() else {
        return Ok(true);
    };
    let key = instance.id.member_key(&first.member);
    Ok(ctx.runtime.status(&key).await? == ClusterStatus::Absent
        && ctx.runtime.status(&instance.id).await? != ClusterStatus::Absent)
}

/// The name of the member to keep (the first recorded), and whether it leads now.
async fn first_leads(
    ctx: &AppContext,
    instance: &InstanceRecord,
) -> Result<(String, bool), StepError> {
    let members = ctx.store.ha_members(&instance.id).await?;
    let first = members
        .first()
        .ok_or_else(|| StepError::transient(anyhow::anyhow!("no HA member is recorded")))?
        .member
        .clone();
    let status = ctx.runtime.ha_status(&instance.id).await?;
    let leads = status
        .leader()
        .is_some_and(|l| l.name == first && l.state == "running");
    Ok((first, leads))
}

/// `ha_keep_first`: the first member leads (a switchover to it if it does not).
async fn keep_first(ctx: &AppContext, instance: &InstanceRecord) -> StepResult {
    if released(ctx, instance).await? {
        return Ok(Outcome::Next);
    }
    let (first, leads) = first_leads(ctx, instance).await?;
    if leads {
        return Ok(Outcome::Next);
    }
    let new = ctx
        .runtime
        .ha_switchover(&instance.id, Some(&first))
        .await?;
    if new != first {
        return Err(StepError::transient(anyhow::anyhow!(
            "the switchover to {first} made {new} the leader"
        )));
    }
    tracing::info!(instance = %instance.id, member = %first, "switched over to the member to keep");
    Ok(Outcome::Next)
}

/// `ha_drop_standby`: every member but the first destroyed, while the first leads.
async fn drop_standbys(ctx: &AppContext, instance: &InstanceRecord) -> StepResult {
    if released(ctx, instance).await? {
        return Ok(Outcome::Next);
    }
    let members = ctx.store.ha_members(&instance.id).await?;
    let mut others = Vec::new();
    for member in members.iter().skip(1) {
        let key = instance.id.member_key(&member.member);
        if ctx.runtime.status(&key).await? != ClusterStatus::Absent {
            others.push(key);
        }
    }
    if others.is_empty() {
        return Ok(Outcome::Next);
    }
    let (first, leads) = first_leads(ctx, instance).await?;
    if !leads {
        tracing::warn!(instance = %instance.id, member = %first, "the member to keep no longer leads; switching over again");
        return Ok(Outcome::Back(Step::HaKeepFirst));
    }
    for key in others {
        ctx.runtime.destroy(&key).await?;
        tracing::info!(instance = %instance.id, member = ?key.member(), "HA standby destroyed");
    }
    Ok(Outcome::Next)
}

/// `ha_release`: the first member out of Patroni, a single cluster under the instance's id
/// with the new plan's configuration (stopped).
async fn release(ctx: &AppContext, instance: &InstanceRecord) -> StepResult {
    let members = ctx.store.ha_members(&instance.id).await?;
    let Some(first) = members.first() else {
        return Ok(Outcome::Next);
    };
    let single = spec(ctx, instance, &instance.plan_id)?;
    ctx.runtime
        .ha_release_member(&instance.id.member_key(&first.member), &single)
        .await?;
    Ok(Outcome::Next)
}

/// A plan change between single and HA that failed: the instance is left serving, as the module
/// doc says, and Ready for the next request.
pub async fn on_failure(ctx: &AppContext, job: &Job) -> anyhow::Result<Option<String>> {
    let JobSpec::Update(update) = &job.spec else {
        return Ok(None);
    };
    let Some(change) = update.ha_change else {
        return Ok(None);
    };
    let store = &ctx.store;
    let id = &job.instance_id;
    let Some(instance) = store.get_instance(id).await? else {
        return Ok(None);
    };
    let single_there = ctx.runtime.status(id).await? != ClusterStatus::Absent;
    match change {
        // Not moved yet: the single cluster serves as before; the placed members are forgotten.
        HaChange::AddStandby if single_there => {
            store.delete_ha_members(id).await?;
            if let Err(e) = ctx.runtime.start(id).await {
                tracing::warn!(instance = %id, error = %e, "cannot start the single cluster again; the supervisor will");
            }
        }
        HaChange::AddStandby => {
            tracing::warn!(instance = %id, "the plan change to HA failed after Patroni took the cluster over; the same update may be asked again");
        }
        // Released: a single cluster on the new plan, whatever is left of the steps.
        HaChange::RemoveStandby if single_there => {
            store.delete_ha_members(id).await?;
            store.set_instance_plan(id, &update.plan_id).await?;
            if let Err(e) = ctx.runtime.start(id).await {
                tracing::warn!(instance = %id, error = %e, "cannot start the released cluster; the supervisor will");
            }
        }
        HaChange::RemoveStandby => {
            tracing::warn!(instance = %id, "the plan change from HA failed before the first member was released; the instance stays HA");
        }
    }
    if instance.state == InstanceState::Updating {
        store.set_instance_state(id, InstanceState::Ready).await?;
    }
    Ok(None)
}
