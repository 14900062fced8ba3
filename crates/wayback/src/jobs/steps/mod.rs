//! What runs at each step of each job, what the user reads while it runs, and what a job's end
//! changes.
//!
//! The order of the steps is in `model` (one table per sequence); here each step is dispatched
//! to its function in a leaf module (`instance`, `clone`, `binding`, `backup`). A step function
//! ends with [`Outcome::Next`] and the worker takes the next step from the sequence, so no leaf
//! names another leaf's step and no two leaves call each other.

pub mod backup;
mod binding;
mod clone;
mod final_wal;
mod instance;

use super::model::{Job, JobKind, JobSpec, Step};
use super::{Outcome, StepResult};
use crate::context::AppContext;
use crate::domain::InstanceState;

/// Runs the current step of `job`.
pub(crate) async fn run_step(ctx: &AppContext, job: &Job) -> StepResult {
    match &job.spec {
        JobSpec::Provision(provision) => {
            let instance = instance::load(ctx, job).await?;
            // A DELETE during provisioning (orphan mitigation) moves the instance on; stop
            // here and let the deprovision job clean up whatever exists.
            if instance.state != InstanceState::Provisioning {
                return Ok(Outcome::Cancelled(
                    "Provisioning was stopped because the instance is being deleted.".into(),
                ));
            }
            match (job.step, &provision.clone) {
                (Step::AllocatePort, Some(source)) => {
                    let preferred = crate::jobs::kept::preferred_agent(ctx, source).await?;
                    instance::allocate_port_step(ctx, &instance, preferred).await
                }
                (Step::CloneFork, Some(source)) => clone::fork(ctx, job, source).await,
                (Step::CloneRestore, Some(source)) => {
                    clone::restore_step(ctx, job, &instance, source).await
                }
                (Step::CloneRestart, Some(_)) => clone::restart(ctx, &instance).await,
                (Step::CloneRotate, Some(_)) => clone::rotate(ctx, &instance).await,
                (Step::CloneFirstArchive, Some(_)) => clone::first_archive(ctx, &instance).await,
                (step, _) => instance::provision_step(ctx, step, &instance).await,
            }
        }
        JobSpec::Update(update) => instance::update_step(ctx, job, &update.plan_id).await,
        JobSpec::Deprovision(_) => instance::deprovision_step(ctx, job).await,
        JobSpec::Bind(_) => binding::bind_step(ctx, job).await,
        JobSpec::Unbind(_) => binding::unbind_step(ctx, job).await,
        JobSpec::Backup(backup) => backup::backup_step(ctx, job, &backup.reason).await,
    }
}

/// What the platform's user reads while `job` is at its current step. Every line of a clone
/// names its source ("Cloning from "production" (GUID, deleted at …) as of …: …").
pub(crate) fn describe(job: &Job) -> String {
    let text = step_text(job.step);
    if let Some(source) = job.spec.clone_source() {
        let what = text
            .strip_prefix("Provisioning: ")
            .or_else(|| text.strip_prefix("Cloning: "))
            .unwrap_or(text);
        return format!("Cloning {source}: {what}");
    }
    text.to_string()
}

fn step_text(step: Step) -> &'static str {
    match step {
        Step::AllocatePort => "Provisioning: allocating a port",
        Step::CreateCluster => "Provisioning: initialising the database cluster",
        Step::ConfigureArchive => "Provisioning: setting up continuous WAL archiving",
        Step::Start => "Provisioning: starting PostgreSQL",
        Step::CreateDatabase => {
            "Provisioning: creating the application database and its owner role"
        }
        Step::CloneFork => "Cloning: archiving the source's latest WAL (fork)",
        Step::CloneRestore => "Cloning: restoring the source's base backup",
        Step::CloneRestart => "Cloning: restarting with the plan's settings and its own archive",
        Step::CloneRotate => "Cloning: rotating every password copied from the source",
        Step::CloneFirstArchive => {
            "Cloning: archiving the clone's first WAL on its new timeline, so that it can be undone"
        }
        Step::ApplySettings => "Updating: applying the new plan's PostgreSQL settings",
        Step::WaitExclusive => {
            "Deleting: waiting for the running operation on this instance to stop"
        }
        Step::FinalBackup => {
            "Deleting: taking a base backup first (the instance has none yet), so that it can be restored"
        }
        Step::FinalWal => "Deleting: closing connections and archiving the last WAL, so that no commit is lost",
        Step::WriteInstanceDoc => "Deleting: recording the instance's history in its archive (instance.json)",
        Step::Destroy => "Deleting: stopping PostgreSQL and removing its data directory",
        Step::CreateRole => "Binding: creating a login role with a new password",
        Step::DropRole => "Unbinding: ending the role's sessions and dropping it",
        Step::TakeBackup => "Taking a base backup",
    }
}

/// What last_operation says once `job` succeeded: a clone names its source for good (the
/// progress lines that named it are gone once it is done).
pub(crate) fn success_description(job: &Job) -> String {
    if let Some(source) = job.spec.clone_source() {
        return format!(
            "The PostgreSQL instance is ready, cloned {source}. Bind it to an app to get new \
             credentials: none of the source's work on it."
        );
    }
    success_text(job.kind()).to_string()
}

/// The success description of a clone with how it was restored and how long it took from
/// the request (issue 16).
pub(crate) fn with_restore_note(done: String, note: &str, secs: f64) -> String {
    format!("{done} It was {note}, in {secs:.1} s.")
}

fn success_text(kind: JobKind) -> &'static str {
    match kind {
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

/// Records the effect of a job's end on the instance or binding (on failure, a state the
/// platform can delete); `Some(reason)` when a success was superseded at the last moment and
/// must be reported as failed.
pub(crate) async fn on_end(
    ctx: &AppContext,
    job: &Job,
    succeeded: bool,
) -> anyhow::Result<Option<String>> {
    match job.kind() {
        JobKind::Provision | JobKind::Update | JobKind::Deprovision => {
            instance::on_end(ctx, job, succeeded).await
        }
        JobKind::Bind | JobKind::Unbind => binding::on_end(ctx, job, succeeded).await,
        JobKind::Backup => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::InstanceId;
    use crate::jobs::CloneSource;

    fn job(spec: JobSpec, step: Step) -> Job {
        Job {
            id: "j".into(),
            instance_id: InstanceId::parse("i").unwrap(),
            binding_id: None,
            operation_id: None,
            spec,
            step,
            attempts: 0,
        }
    }

    #[test]
    fn a_clone_names_its_source_on_every_line() {
        let source: CloneSource = serde_json::from_value(serde_json::json!({
            "source": "src-1", "name": "production", "live": true, "deleted_at": null,
            "target": null, "system_identifier": "1", "backup_stop_time": "2026-11-21T08:00:00+00:00",
        }))
        .unwrap();
        let from = "from \"production\" (src-1) as of the latest archived commit";
        let clone = JobSpec::provision(Some(source));
        assert_eq!(
            describe(&job(clone.clone(), Step::CreateCluster)),
            format!("Cloning {from}: initialising the database cluster")
        );
        assert_eq!(
            describe(&job(clone.clone(), Step::CloneFork)),
            format!("Cloning {from}: archiving the source's latest WAL (fork)")
        );
        assert!(
            success_description(&job(clone, Step::CloneRotate)).starts_with(&format!(
                "The PostgreSQL instance is ready, cloned {from}. "
            ))
        );
        let plain = job(JobSpec::provision(None), Step::Start);
        assert_eq!(describe(&plain), "Provisioning: starting PostgreSQL");
        assert_eq!(
            success_description(&plain),
            "The PostgreSQL instance is ready. Bind it to an app to get credentials."
        );
    }
}
