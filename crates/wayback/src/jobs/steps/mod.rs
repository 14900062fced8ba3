//! The steps of each job kind, and what the user reads while each runs.

pub mod backup;
mod binding;
mod clone;
mod final_wal;
mod instance;

use std::str::FromStr;

use serde_json::{json, Value};

use super::{JobContext, StepResult};
use crate::domain::{BindingId, InstanceId};
use crate::store::{now_millis, JobRecord, NewJob};

/// The kinds of job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Provision,
    Update,
    Deprovision,
    Bind,
    Unbind,
    /// A base backup (no OSB operation; see [`backup`]).
    Backup,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Provision => "provision",
            JobKind::Update => "update",
            JobKind::Deprovision => "deprovision",
            JobKind::Bind => "bind",
            JobKind::Unbind => "unbind",
            JobKind::Backup => "backup",
        }
    }

    pub fn first_step(self) -> &'static str {
        match self {
            JobKind::Provision => instance::ALLOCATE_PORT,
            JobKind::Update => instance::APPLY_SETTINGS,
            JobKind::Deprovision => instance::WAIT_EXCLUSIVE,
            JobKind::Bind => binding::CREATE_ROLE,
            JobKind::Unbind => binding::DROP_ROLE,
            JobKind::Backup => backup::TAKE_BACKUP,
        }
    }

    /// What the platform's user reads while `job` is at its current step. Every line of a
    /// clone names its source ("Cloning from "production" (GUID, deleted at …) as of …: …").
    pub fn describe(self, job: &JobRecord) -> String {
        let text = Self::step_text(&job.step);
        if self == JobKind::Provision && clone::is_clone(job) {
            let what = text
                .strip_prefix("Provisioning: ")
                .or_else(|| text.strip_prefix("Cloning: "))
                .unwrap_or(text);
            return format!(
                "Cloning {}: {what}",
                crate::broker::clone::describe(&job.payload)
            );
        }
        text.to_string()
    }

    fn step_text(step: &str) -> &'static str {
        match step {
            instance::ALLOCATE_PORT => "Provisioning: allocating a port",
            instance::CREATE_CLUSTER => "Provisioning: initialising the database cluster",
                        instance::CONFIGURE_ARCHIVE => "Provisioning: setting up continuous WAL archiving",
            instance::START => "Provisioning: starting PostgreSQL",
            instance::CREATE_DATABASE => {
                "Provisioning: creating the application database and its owner role"
            }
            clone::FORK => "Cloning: archiving the source's latest WAL (fork)",
            clone::RESTORE => "Cloning: restoring the source's base backup",
            clone::RESTART => "Cloning: restarting with the plan's settings and its own archive",
            clone::ROTATE => "Cloning: rotating every password copied from the source",
            instance::APPLY_SETTINGS => "Updating: applying the new plan's PostgreSQL settings",
            instance::WAIT_EXCLUSIVE => {
                "Deleting: waiting for the running operation on this instance to stop"
            }
            instance::FINAL_BACKUP => {
                "Deleting: taking a base backup first (the instance has none yet), so that it can be restored"
            }
                        instance::FINAL_WAL => "Deleting: closing connections and archiving the last WAL, so that no commit is lost",
            instance::WRITE_DOC => "Deleting: recording the instance's history in its archive (instance.json)",
            instance::DESTROY => "Deleting: stopping PostgreSQL and removing its data directory",
            binding::CREATE_ROLE => "Binding: creating a login role with a new password",
            binding::DROP_ROLE => "Unbinding: ending the role's sessions and dropping it",
            backup::TAKE_BACKUP => "Taking a base backup",
            _ => "Working",
        }
    }

    /// What last_operation says once `job` succeeded: a clone names its source for good (the
    /// progress lines that named it are gone once it is done).
    pub fn success_description(self, job: &JobRecord) -> String {
        if self == JobKind::Provision && clone::is_clone(job) {
            return format!(
                "The PostgreSQL instance is ready, cloned {}. Bind it to an app to get new \
                 credentials: none of the source's work on it.",
                crate::broker::clone::describe(&job.payload)
            );
        }
        self.success_text().to_string()
    }

    pub fn success_text(self) -> &'static str {
        match self {
            JobKind::Provision => {
                "The PostgreSQL instance is ready. Bind it to an app to get credentials."
            }
            JobKind::Update => "The new plan's settings are in effect.",
            JobKind::Deprovision => {
                "The instance was deleted. Its history is kept so it can be restored."
            }
            JobKind::Bind => "The binding's credentials are ready.",
            JobKind::Unbind => {
                "The binding's role was dropped; its objects belong to the instance's owner role."
            }
            JobKind::Backup => "The base backup is in the archive.",
        }
    }

    pub(crate) async fn run_step(self, ctx: &JobContext, job: &JobRecord) -> StepResult {
        match self {
            JobKind::Provision => instance::provision_step(ctx, job).await,
            JobKind::Update => instance::update_step(ctx, job).await,
            JobKind::Deprovision => instance::deprovision_step(ctx, job).await,
            JobKind::Bind => binding::bind_step(ctx, job).await,
            JobKind::Unbind => binding::unbind_step(ctx, job).await,
            JobKind::Backup => backup::backup_step(ctx, job).await,
        }
    }

    /// Records the effect of a successful job on the instance or binding; `Some(reason)` when
    /// it was superseded at the last moment and must be reported as failed.
    pub(crate) async fn on_success(
        self,
        ctx: &JobContext,
        job: &JobRecord,
    ) -> anyhow::Result<Option<String>> {
        match self {
            JobKind::Provision | JobKind::Update | JobKind::Deprovision => {
                instance::on_end(self, ctx, job, true).await
            }
            JobKind::Bind | JobKind::Unbind => binding::on_end(self, ctx, job, true).await,
            JobKind::Backup => Ok(None),
        }
    }

    /// Records the effect of a failed job, leaving a state the platform can delete.
    pub(crate) async fn on_failure(
        self,
        ctx: &JobContext,
        job: &JobRecord,
    ) -> anyhow::Result<Option<String>> {
        match self {
            JobKind::Provision | JobKind::Update | JobKind::Deprovision => {
                instance::on_end(self, ctx, job, false).await
            }
            JobKind::Bind | JobKind::Unbind => binding::on_end(self, ctx, job, false).await,
            JobKind::Backup => Ok(None),
        }
    }
}

impl FromStr for JobKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [
            JobKind::Provision,
            JobKind::Update,
            JobKind::Deprovision,
            JobKind::Bind,
            JobKind::Unbind,
            JobKind::Backup,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| format!("unknown job kind {s:?}"))
    }
}

/// A new job for an operation. `extra` is merged into the payload.
pub fn new_job(
    kind: JobKind,
    operation_id: &str,
    instance: &InstanceId,
    binding: Option<&BindingId>,
    extra: Value,
) -> NewJob {
    let mut payload = json!({ "requested_at": now_millis() });
    if let (Some(p), Value::Object(extra)) = (payload.as_object_mut(), extra) {
        p.extend(extra);
    }
    NewJob {
        id: operation_id.to_string(),
        kind: kind.as_str().to_string(),
        instance_id: instance.clone(),
        binding_id: binding.cloned(),
        operation_id: Some(operation_id.to_string()),
        payload,
        first_step: kind.first_step().to_string(),
    }
}
