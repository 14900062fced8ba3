//! Bind and unbind steps.
//!
//! A binding's role lives where its instance's roles live. On a follower (an instance with a
//! `leader_id`) that is the leader: a standby cannot create roles, and the leader's roles
//! replicate to it. So a follower's binding role is created (read-only, whatever was asked) and
//! dropped on the leader through the leader's runtime placement, and the bind then waits, for at
//! most [`REPLAY_WAIT`], until the follower has replayed the leader's WAL past the new role, so
//! that the app's first connection works. Past that bound the bind still succeeds and its
//! operation says the role works once the follower catches up. An unbind whose leader is gone
//! has nothing left to drop and succeeds.
//!
//! An HA instance's roles are made and dropped on the member that leads now
//! (`jobs::ha::cluster_key`); its standby gets them by replication.
//!
//! An instance stopped when idle (issue 17) is started first (`jobs::idle::unpark`); it stops
//! again after its plan's idle time. A follower's leader never stops (it has a follower).
//!
//! A leaf of `steps`: imports none of its siblings nor the dispatcher, and never `broker`.

use std::time::{Duration, Instant};

use anyhow::Context;

use crate::context::AppContext;
use crate::domain::{BindingState, InstanceState};
use crate::jobs::model::{Job, JobKind, Step};
use crate::jobs::{Outcome, StepError, StepResult};
use crate::runtime::RoleAccess;
use crate::store::{BindingRecord, InstanceRecord};

/// How long a follower's bind waits for the follower to replay its new role: below the 45 s a
/// synchronous bind may take, so that the platform gets the credentials, not a timeout.
const REPLAY_WAIT: Duration = Duration::from_secs(30);
/// How often the follower's replay is looked at meanwhile.
const REPLAY_POLL: Duration = Duration::from_millis(250);

/// What a follower's bind says when it ends before the follower replayed the role.
pub const BEHIND_NOTE: &str = "The binding's credentials are ready, but this follower is \
     behind its leader: the new role works on it once the follower has caught up (`cf followers` \
     shows its lag).";

async fn load(ctx: &AppContext, job: &Job) -> Result<(InstanceRecord, BindingRecord), StepError> {
    let missing = |what: &str| StepError::Permanent {
        user_message: format!("the {what} record is missing"),
        source: anyhow::anyhow!("{what} of job {} not in the store", job.id),
    };
    let binding_id = job.binding_id.as_ref().ok_or_else(|| missing("binding"))?;
    let binding = ctx
        .store
        .get_binding(binding_id)
        .await?
        .ok_or_else(|| missing("binding"))?;
    let instance = ctx
        .store
        .get_instance(&job.instance_id)
        .await?
        .ok_or_else(|| missing("instance"))?;
    Ok((instance, binding))
}

pub async fn bind_step(ctx: &AppContext, job: &Job) -> StepResult {
    let (instance, binding) = load(ctx, job).await?;
    if binding.state != BindingState::Creating {
        return Ok(Outcome::Cancelled(
            "Binding was stopped because it is being deleted.".into(),
        ));
    }
    match job.step {
        Step::CreateRole => {
            let Some(leader_id) = &instance.leader_id else {
                let access = if binding.read_only {
                    RoleAccess::ReadOnly {
                        database: instance.database_name.clone(),
                    }
                } else {
                    RoleAccess::Owner
                };
                // An HA instance's roles are made on its leader; the standby gets them by
                // replication (`jobs::ha`).
                let cluster = crate::jobs::ha::cluster_key(ctx, &instance.id)
                    .await
                    .map_err(StepError::transient)?;
                // Stopped when idle: started for the role (it stops again once idle).
                crate::jobs::idle::unpark(ctx, &instance, &cluster).await?;
                ctx.runtime
                    .create_login_role(
                        &cluster,
                        &binding.role_name,
                        &binding.password,
                        &instance.owner_role,
                        &access,
                    )
                    .await?;
                return Ok(Outcome::Next);
            };
            let leader = match ctx.store.get_instance(leader_id).await? {
                Some(l) if l.state != InstanceState::Deleted => l,
                _ => {
                    return Err(StepError::Permanent {
                        user_message: format!(
                            "this follower's leader {leader_id} is gone, so no role can be made \
                             for it; unfollow or delete this instance"
                        ),
                        source: anyhow::anyhow!("leader {leader_id} of {} is gone", instance.id),
                    })
                }
            };
            let access = RoleAccess::ReadOnly {
                database: leader.database_name.clone(),
            };
            ctx.runtime
                .create_login_role(
                    &leader.id,
                    &binding.role_name,
                    &binding.password,
                    &leader.owner_role,
                    &access,
                )
                .await?;
            if replayed(ctx, &leader, &instance).await? {
                Ok(Outcome::Next)
            } else {
                tracing::warn!(instance = %instance.id, leader = %leader.id, binding = %binding.id,
                    "the follower did not replay its new role within {REPLAY_WAIT:?}; bound anyway");
                Ok(Outcome::Succeeded(BEHIND_NOTE.into()))
            }
        }
        other => Err(unknown_step(other)),
    }
}

/// Whether `follower` replayed its leader's WAL up to where it is now (so a role just made on
/// the leader exists there), waiting at most [`REPLAY_WAIT`]. A follower that does not answer
/// is waited for like one that is behind.
async fn replayed(
    ctx: &AppContext,
    leader: &InstanceRecord,
    follower: &InstanceRecord,
) -> Result<bool, StepError> {
    let target = ctx.runtime.wal_position(&leader.id).await?.current_lsn;
    let deadline = Instant::now() + REPLAY_WAIT;
    loop {
        match ctx.runtime.standby_status(&follower.id).await {
            // Promoted meanwhile: nothing more will be replayed from this leader.
            Ok(s) if !s.in_recovery => return Ok(true),
            Ok(s) if s.replay_lsn >= Some(target) => return Ok(true),
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(instance = %follower.id, error = %e, "standby status while binding")
            }
        }
        if Instant::now() + REPLAY_POLL > deadline {
            return Ok(false);
        }
        tokio::time::sleep(REPLAY_POLL).await;
    }
}

pub async fn unbind_step(ctx: &AppContext, job: &Job) -> StepResult {
    let (instance, binding) = load(ctx, job).await?;
    match job.step {
        Step::DropRole => {
            // An unbind during a bind: let the bind see the new state and stop, or it could
            // create the role after we dropped it.
            let now = crate::store::now_millis();
            let racing = ctx.store.other_pending_jobs(&instance.id, &job.id).await?;
            if racing
                .iter()
                .any(|j| j.binding_id == job.binding_id && j.lease_until.is_some_and(|t| t > now))
            {
                return Ok(Outcome::Wait(std::time::Duration::from_millis(200)));
            }
            // A follower's binding role is its leader's; a leader that is gone took it along.
            let home = match &instance.leader_id {
                None => Some(instance),
                Some(leader) => ctx
                    .store
                    .get_instance(leader)
                    .await?
                    .filter(|l| l.state != InstanceState::Deleted),
            };
            if let Some(home) = home {
                // An HA instance's roles are dropped on its leader (`jobs::ha`).
                let cluster = crate::jobs::ha::cluster_key(ctx, &home.id)
                    .await
                    .map_err(StepError::transient)?;
                crate::jobs::idle::unpark(ctx, &home, &cluster).await?;
                ctx.runtime
                    .drop_login_role(&cluster, &binding.role_name, &home.owner_role)
                    .await?;
            }
            Ok(Outcome::Next)
        }
        other => Err(unknown_step(other)),
    }
}

/// A step of another sequence: `steps` dispatches only a bind's or unbind's steps here.
fn unknown_step(step: Step) -> StepError {
    StepError::Permanent {
        user_message: "internal error".into(),
        source: anyhow::anyhow!("{step} is not a step of this job"),
    }
}

pub async fn on_end(
    ctx: &AppContext,
    job: &Job,
    succeeded: bool,
) -> anyhow::Result<Option<String>> {
    let id = job
        .binding_id
        .as_ref()
        .context("binding job without binding id")?;
    let current = ctx
        .store
        .get_binding(id)
        .await?
        .context("binding record missing")?;
    let next = match (job.kind(), succeeded) {
        (JobKind::Bind, true) => BindingState::Ready,
        // A bind cancelled by an unbind leaves the binding to the unbind.
        (JobKind::Bind, false) if current.state != BindingState::Creating => return Ok(None),
        (JobKind::Bind, false) => BindingState::Failed,
        (JobKind::Unbind, true) => BindingState::Deleted,
        (JobKind::Unbind, false) => BindingState::Failed,
        _ => return Ok(None),
    };
    ctx.store.set_binding_state(id, next).await?;
    Ok(None)
}
