//! Bind and unbind steps.
//!
//! A leaf of `steps`: imports none of its siblings nor the dispatcher, and never `broker`.

use anyhow::Context;

use crate::context::AppContext;
use crate::domain::BindingState;
use crate::jobs::model::{Job, JobKind, Step};
use crate::jobs::{Outcome, StepError, StepResult};
use crate::store::{BindingRecord, InstanceRecord};

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
            ctx.runtime
                .create_login_role(
                    &instance.id,
                    &binding.role_name,
                    &binding.password,
                    &instance.owner_role,
                )
                .await?;
            Ok(Outcome::Next)
        }
        other => Err(unknown_step(other)),
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
            ctx.runtime
                .drop_login_role(&instance.id, &binding.role_name, &instance.owner_role)
                .await?;
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
