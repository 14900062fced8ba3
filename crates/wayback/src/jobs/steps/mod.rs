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
pub mod drill;
mod final_wal;
pub mod follow;
mod ha;
mod ha_update;
mod idle_stop;
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
            if let Some(src) = &provision.follow {
                return match job.step {
                    Step::FollowGrant => follow::grant_step(ctx, &instance, src).await,
                    Step::FollowRestore => follow::restore_step(ctx, job, &instance, src).await,
                    Step::ApplySettings => {
                        instance::apply_plan(ctx, &instance, &instance.plan_id).await
                    }
                    step => instance::provision_step(ctx, step, &instance).await,
                };
            }
            if provision.ha {
                return match job.step {
                    Step::AllocatePort => instance::provision_step(ctx, job.step, &instance).await,
                    _ => ha::provision_step(ctx, job, &instance).await,
                };
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
        JobSpec::Update(update) if update.unfollow => {
            let instance = instance::load(ctx, job).await?;
            match job.step {
                Step::FollowPromote => follow::promote_step(ctx, &instance).await,
                Step::CloneRestart => clone::restart(ctx, &instance).await,
                Step::CloneRotate => clone::rotate(ctx, &instance).await,
                Step::CloneFirstArchive => clone::first_archive(ctx, &instance).await,
                Step::FollowRelease => follow::release_step(ctx, &instance).await,
                // Its port is its own already: one taken by another process is retried (a
                // transient error), never given up (no `allocate_port` in this sequence).
                Step::Start => {
                    ctx.runtime.start(&instance.id).await?;
                    Ok(Outcome::Next)
                }
                step => instance::provision_step(ctx, step, &instance).await,
            }
        }
        JobSpec::Update(super::model::UpdatePayload {
            ha_change: Some(change),
            plan_id,
            ..
        }) => {
            let instance = instance::load(ctx, job).await?;
            ha_update::update_step(ctx, job, &instance, plan_id, *change).await
        }
        JobSpec::Update(update) => instance::update_step(ctx, job, &update.plan_id).await,
        JobSpec::Deprovision(_) if job.step == Step::FollowRelease => {
            let instance = instance::load(ctx, job).await?;
            follow::release_step(ctx, &instance).await
        }
        JobSpec::Deprovision(_) => instance::deprovision_step(ctx, job).await,
        JobSpec::Bind(_) => binding::bind_step(ctx, job).await,
        JobSpec::Unbind(_) => binding::unbind_step(ctx, job).await,
        JobSpec::Backup(backup) => backup::backup_step(ctx, job, &backup.reason).await,
        JobSpec::Drill(_) => drill::drill_step(ctx, job).await,
        JobSpec::IdleStop(_) => idle_stop::idle_stop_step(ctx, job).await,
    }
}

/// What the platform's user reads while `job` is at its current step. Every line of a clone
/// names its source ("Cloning from "production" (GUID, deleted at …) as of …: …").
pub(crate) fn describe(job: &Job) -> String {
    let text = match job.step {
        // A follower's (or an unfollowed one's) cluster exists: these only write and apply
        // its own plan's configuration over the leader's restored one.
        Step::CreateCluster if job.spec.follow_source().is_some() || job.spec.is_unfollow() => {
            "Following: writing the plan's own PostgreSQL configuration"
        }
        Step::CloneRestart if job.spec.follow_source().is_some() || job.spec.is_unfollow() => {
            "Following: restarting with the plan's own settings"
        }
        Step::ApplySettings if job.spec.follow_source().is_some() => {
            "Following: applying the plan's own settings (restarting only if one needs it)"
        }
        Step::CloneRotate if job.spec.is_unfollow() => {
            "Unfollowing: taking the login from every role of the leader, so that only this \
             instance's own bindings work on it"
        }
        Step::CloneFirstArchive if job.spec.is_unfollow() => {
            "Unfollowing: archiving the first WAL of its new timeline into its own archive"
        }
        // A plan change to HA runs an HA provision's tail: it says "Updating".
        step if matches!(&job.spec, JobSpec::Update(u) if u.ha_change.is_some()) => {
            match step_text(step).strip_prefix("Provisioning") {
                Some(rest) => return format!("Updating{rest}"),
                None => step_text(step),
            }
        }
        step => step_text(step),
    };
    if let Some(source) = job.spec.follow_source() {
        let what = text.split_once(": ").map_or(text, |(_, w)| w);
        return format!("Following {source}: {what}");
    }
    if job.spec.is_unfollow() {
        let what = text.split_once(": ").map_or(text, |(_, w)| w);
        return format!("Unfollowing: {what}");
    }
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
            "Cloning: archiving the clone's first WAL into its own archive, so that it can be undone"
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
        Step::Destroy => {
            "Deleting: stopping PostgreSQL and keeping its data directory for a fast undo (or removing it)"
        }
        Step::CreateRole => "Binding: creating a login role with a new password",
        Step::DropRole => "Unbinding: ending the role's sessions and dropping it",
        Step::TakeBackup => "Taking a base backup",
        Step::RunDrill => "Restore drill: restoring the archive into a scratch copy and checking it",
        Step::FollowGrant => {
            "Following: granting the follower a replication role, slot and pg_hba line on the leader"
        }
        Step::FollowRestore => "Following: restoring the leader's newest base backup as a standby",
        Step::FollowPromote => {
            "Unfollowing: promoting the follower on a new timeline, so that it takes writes"
        }
        Step::FollowRelease => {
            "Deleting: withdrawing the follower's replication slot and role on its leader"
        }
        Step::HaPlace => "Provisioning (HA): choosing each member's machine and ports",
        Step::HaAdopt => {
            "Provisioning (HA): handing the primary to Patroni, which promotes it to lead"
        }
        Step::HaFirstBackup => "Provisioning (HA): taking the first base backup from the primary",
        Step::HaSeedStandby => {
            "Provisioning (HA): starting the standby, which Patroni copies from the primary"
        }
        Step::HaWaitStandby => "Provisioning (HA): waiting until the standby streams",
        Step::HaAdoptSingle => {
            "Updating (HA): handing the running cluster to Patroni as the first member (one restart)"
        }
        Step::HaKeepFirst => "Updating: making the first member the leader (a switchover if needed)",
        Step::HaDropStandby => "Updating: removing the standby",
        Step::HaRelease => {
            "Updating: taking the first member out of Patroni as a single cluster (one restart)"
        }
        Step::HaForget => "Updating: forgetting the removed members",
        Step::IdleStop => {
            "Stopping the idle instance (archiving its last WAL first); its next connection starts it"
        }
    }
}

/// What last_operation says once `job` succeeded: a clone names its source for good (the
/// progress lines that named it are gone once it is done).
pub(crate) fn success_description(job: &Job) -> String {
    if let Some(source) = job.spec.follow_source() {
        return format!(
            "The PostgreSQL follower is ready: a read-only replica streaming from {source}. \
             To make it an independent instance: cf update-service NAME -c '{{\"unfollow\":true}}'."
        );
    }
    if job.spec.is_unfollow() {
        return "The instance no longer follows its leader: it takes writes on a new timeline, \
                archives into its own archive and takes its first base backup now. The \
                leader's credentials no longer work on it: bind it to an app to get its own."
            .to_string();
    }
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
        JobKind::Drill => "The restore drill ran.",
        JobKind::IdleStop => "The idle stop ran.",
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
        // A failed plan change between single and HA is left serving (`ha_update`).
        JobKind::Update
            if !succeeded && matches!(&job.spec, JobSpec::Update(u) if u.ha_change.is_some()) =>
        {
            ha_update::on_failure(ctx, job).await
        }
        JobKind::Provision | JobKind::Update | JobKind::Deprovision => {
            instance::on_end(ctx, job, succeeded).await
        }
        JobKind::Bind | JobKind::Unbind => binding::on_end(ctx, job, succeeded).await,
        JobKind::Backup | JobKind::Drill | JobKind::IdleStop => Ok(None),
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
        let follow = JobSpec::follow(crate::jobs::FollowSource {
            leader: InstanceId::parse("l-1").unwrap(),
            name: "production".into(),
            system_identifier: 1,
        });
        assert_eq!(
            describe(&job(follow.clone(), Step::FollowGrant)),
            "Following \"production\" (l-1): granting the follower a replication role, slot and \
             pg_hba line on the leader"
        );
        assert_eq!(
            describe(&job(follow.clone(), Step::CreateCluster)),
            "Following \"production\" (l-1): writing the plan's own PostgreSQL configuration"
        );
        assert!(success_description(&job(follow, Step::Start)).starts_with(
            "The PostgreSQL follower is ready: a read-only replica streaming from \"production\""
        ));
        let unfollow = JobSpec::unfollow("p");
        assert_eq!(
            describe(&job(unfollow.clone(), Step::FollowRelease)),
            "Unfollowing: withdrawing the follower's replication slot and role on its leader"
        );
        assert_eq!(
            describe(&job(unfollow, Step::CloneRotate)),
            "Unfollowing: taking the login from every role of the leader, so that only this \
             instance's own bindings work on it"
        );
        let plain = job(JobSpec::provision(None), Step::Start);
        assert_eq!(describe(&plain), "Provisioning: starting PostgreSQL");
        assert_eq!(
            success_description(&plain),
            "The PostgreSQL instance is ready. Bind it to an app to get credentials."
        );
    }
}
