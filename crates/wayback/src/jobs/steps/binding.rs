//! Bind and unbind steps.

use anyhow::Context;

use super::JobKind;
use crate::domain::BindingState;
use crate::jobs::{JobContext, Outcome, StepError, StepResult};
use crate::store::{BindingRecord, InstanceRecord, JobRecord};

pub const CREATE_ROLE: &str = "create_role";
pub const DROP_ROLE: &str = "drop_role";

async fn load(
    ctx: &JobContext,
    job: &JobRecord,
) -> Result<(InstanceRecord, BindingRecord), StepError> {
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

pub async fn bind_step(ctx: &JobContext, job: &JobRecord) -> StepResult {
    let (instance, binding) = load(ctx, job).await?;
    if binding.state != BindingState::Creating {
        return Ok(Outcome::Cancelled(
            "Binding was stopped because it is being deleted.".into(),
        ));
    }
    match job.step.as_str() {
        CREATE_ROLE => {
            ctx.runtime
                .create_login_role(
                    &instance.id,
                    &binding.role_name,
                    &binding.password,
                    &instance.owner_role,
                )
                .await?;
            Ok(Outcome::Done)
        }
        other => Err(StepError::transient(anyhow::anyhow!(
            "unknown step {other:?}"
        ))),
    }
}

pub async fn unbind_step(ctx: &JobContext, job: &JobRecord) -> StepResult {
    let (instance, binding) = load(ctx, job).await?;
    match job.step.as_str() {
        DROP_ROLE => {
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
            Ok(Outcome::Done)
        }
        other => Err(StepError::transient(anyhow::anyhow!(
            "unknown step {other:?}"
        ))),
    }
}

pub async fn on_end(
    kind: JobKind,
    ctx: &JobContext,
    job: &JobRecord,
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
    let next = match (kind, succeeded) {
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
