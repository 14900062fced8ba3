//! Durable asynchronous work: claim → run step → record; resumes after a restart.
//!
//! Every OSB operation that takes time is a job made of named steps. The worker claims a job
//! with a lease, runs its current step, and records the next step before running it, so that a
//! broker killed at any moment leaves a job whose current step is re-run — steps are idempotent.
//! The lease is renewed from the claim on, for as long as the worker works on the job ((`lease`));
//! a worker that loses it stops, and a dead broker's lease runs out and any worker takes over. A
//! job that must wait gives its worker back. User-facing operations and background jobs run in
//! two lanes with their own slots ([`Lane`]), so background work never starves users. Tests
//! drive the same code through [`Worker::run_next`] and [`Worker::run_job`].
//!
//! A job is typed ([`model`]): its kind, payload and step are Rust values, read once from the
//! stored row when a worker claims it; each kind's steps are one table there. `steps` says what
//! runs at each step; its leaf modules never call each other back.
//!
//! Must not import `osb` or `broker` (the broker builds jobs; jobs never reach back up).

mod clone_source;
mod follow_source;
pub mod ha;
pub mod idle;
pub mod instance_doc;
pub mod kept;
mod lease;
mod model;
mod steps;
mod worker;

use std::time::Duration;

pub use clone_source::CloneSource;
pub use follow_source::{replication_names, FollowSource};
pub use model::{
    new_job, BackupPayload, HaChange, Job, JobKind, JobSpec, Lane, ProvisionPayload, Requested,
    Step, UnreadableJob, UpdatePayload,
};
pub use steps::backup::{backup_due, backup_job, wal_written_since};
pub use steps::drill::{
    drill_job, from_stored as drill_from_stored, report_key as drill_report_key,
};
pub use steps::follow::ensure_grant;
pub use worker::Worker;

/// What a step asks the worker to do next.
#[derive(Debug)]
pub enum Outcome {
    /// This step is complete: record the next step of the job's sequence and run it, or end
    /// the job with success after its last step.
    Next,
    /// Go back to this step of the same sequence and run it again from there (e.g. a port
    /// taken by another process: choose another).
    Back(Step),
    /// Not an error: run this step again after a while (e.g. waiting for another job).
    Wait(Duration),
    /// The job stops without success and without blaming anyone (e.g. a provision cancelled by
    /// a delete); the operation is marked failed with this description.
    Cancelled(String),
    /// The job ends now with success, and the operation's description is this text instead of
    /// the usual one (a step that succeeded with something the user must know: a follower's
    /// binding made before the follower caught up).
    Succeeded(String),
}

/// A step failure. Transient ones are retried with backoff up to `jobs.max_attempts`.
#[derive(Debug)]
pub enum StepError {
    Transient(anyhow::Error),
    /// Fails the operation at once. `user_message` is shown to the platform's user; the source
    /// goes to the log only.
    Permanent {
        user_message: String,
        source: anyhow::Error,
    },
}

impl StepError {
    pub fn transient(e: impl Into<anyhow::Error>) -> Self {
        StepError::Transient(e.into())
    }
}

impl From<crate::store::StoreError> for StepError {
    fn from(e: crate::store::StoreError) -> Self {
        StepError::Transient(e.into())
    }
}

/// The one reading of a runtime error: permanent ones fail the operation with what the user
/// may read about them, the rest are retried.
impl From<crate::runtime::RuntimeError> for StepError {
    fn from(e: crate::runtime::RuntimeError) -> Self {
        if e.is_permanent() {
            StepError::Permanent {
                user_message: e
                    .user_message()
                    .unwrap_or_else(|| "the database server could not be set up".into()),
                source: e.into(),
            }
        } else {
            StepError::Transient(e.into())
        }
    }
}

pub type StepResult = Result<Outcome, StepError>;
