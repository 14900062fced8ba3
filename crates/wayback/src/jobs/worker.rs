//! The worker loop: two lanes of bounded concurrency, leases held while a job runs, backoff,
//! shutdown.
//!
//! User-facing operations and background jobs run in separate lanes ([`Lane`]), each with its
//! own slots and its own claim query, so a queue of backups never delays a provision. A job
//! holds a slot only while it works: one that waits (`Outcome::Wait`, e.g. a deprovision
//! waiting for another operation on its instance) is released with a `run_after` and gives
//! its slot back, whatever the wait.
//!
//! A provision (or clone) whose step fails while object storage does not answer (the worker
//! checks it then) does not spend its attempts: it waits for storage, saying so in its last
//! operation, for up to `jobs.storage_retry_secs`, then fails naming the outage.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::lease::{holding, LeaseLost};
use super::model::{Job, JobKind, Lane, Step};
use super::{steps, Outcome, StepError};
use crate::context::AppContext;
use crate::domain::OperationState;
use crate::storage::Outage;
use crate::store::{now_millis, JobRecord};

/// How long the worker waits for object storage to answer the check it makes after a
/// provision's step failed (the S3 client's own timeouts and attempts apply within it).
const STORAGE_CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs jobs. Cheap to clone; clones share the wake-up signal.
#[derive(Clone)]
pub struct Worker {
    ctx: Arc<AppContext>,
    owner: String,
    /// One wake-up signal per lane (indexed by `lane_index`).
    wake: Arc<[Notify; 2]>,
    /// When each job began waiting for object storage (its budget counts from there, not
    /// from the outage's start, so a job accepted late in an outage still gets its minutes).
    storage_waits: Arc<Mutex<HashMap<String, DateTime<Utc>>>>,
}

fn lane_index(lane: Lane) -> usize {
    match lane {
        Lane::User => 0,
        Lane::Background => 1,
    }
}

impl Worker {
    pub fn new(ctx: Arc<AppContext>) -> Self {
        Self {
            ctx,
            owner: format!("broker-{}", uuid::Uuid::new_v4()),
            wake: Arc::new([Notify::new(), Notify::new()]),
            storage_waits: Arc::default(),
        }
    }

    pub fn context(&self) -> &Arc<AppContext> {
        &self.ctx
    }

    /// Tells both lanes that a new job is waiting.
    pub fn wake(&self) {
        for notify in self.wake.iter() {
            notify.notify_one();
        }
    }

    fn lease(&self) -> Duration {
        Duration::from_secs(self.ctx.settings.jobs.lease_secs)
    }

    fn lease_until(&self) -> i64 {
        now_millis() + self.lease().as_millis() as i64
    }

    /// Claims and runs the next runnable job, if any. Returns whether one ran.
    pub async fn run_next(&self) -> anyhow::Result<bool> {
        match self
            .ctx
            .store
            .claim_job(&self.owner, self.lease_until(), None)
            .await?
        {
            Some(job) => {
                self.run_claimed(job).await;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Runs job `id` to its end (or until `timeout`), retrying transient failures in place.
    /// Used for synchronous OSB requests. Returns the job as it ended.
    pub async fn run_job(&self, id: &str, timeout: Duration) -> anyhow::Result<JobRecord> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(job) = self
                .ctx
                .store
                .claim_job(&self.owner, self.lease_until(), Some(id))
                .await?
            {
                self.run_claimed(job).await;
            }
            let job = self
                .ctx
                .store
                .get_job(id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("job {id} vanished"))?;
            if job.state != crate::store::JOB_PENDING || Instant::now() >= deadline {
                return Ok(job);
            }
            let until_ready =
                Duration::from_millis((job.run_after - now_millis()).clamp(20, 1000) as u64);
            tokio::time::sleep(until_ready.min(deadline.saturating_duration_since(Instant::now())))
                .await;
        }
    }

    /// Runs jobs until `shutdown` fires: user-facing ones at most `jobs.concurrency` at a time,
    /// background ones at most `jobs.background_concurrency`, each lane on its own slots; then
    /// waits for running steps to end (their leases let another broker resume anything left).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) {
        let jobs = &self.ctx.settings.jobs;
        let user = self
            .clone()
            .run_lane(Lane::User, jobs.concurrency, shutdown.clone());
        let background =
            self.clone()
                .run_lane(Lane::Background, jobs.background_concurrency, shutdown);
        tokio::join!(user, background);
    }

    /// One lane: claims only its own kinds, into its own `limit` slots.
    async fn run_lane(self, lane: Lane, limit: usize, shutdown: CancellationToken) {
        let kinds = lane.kinds();
        let wake = &self.wake[lane_index(lane)];
        let slots = Arc::new(Semaphore::new(limit));
        let poll = Duration::from_millis(self.ctx.settings.jobs.poll_interval_ms);
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
                _ = shutdown.cancelled() => break,
            };
            let claimed = match self
                .ctx
                .store
                .claim_job_of(&self.owner, self.lease_until(), &kinds)
                .await
            {
                Ok(job) => job,
                Err(e) => {
                    tracing::warn!(lane = lane.as_str(), error = %e, "cannot claim jobs; retrying");
                    None
                }
            };
            match claimed {
                Some(job) => {
                    let me = self.clone();
                    tokio::spawn(async move {
                        me.run_claimed(job).await;
                        drop(permit);
                        me.wake();
                    });
                }
                None => {
                    drop(permit);
                    tokio::select! {
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(poll) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
            }
        }
        // Wait for in-flight steps (bounded by their own timeouts).
        let _ = slots.acquire_many(limit as u32).await;
    }

    /// Runs a claimed job while holding its lease; stops where it is if the lease is lost.
    async fn run_claimed(&self, record: JobRecord) {
        let (id, kind) = (record.id.clone(), record.kind.clone());
        let work = self.run_holding(record);
        match holding(&self.ctx.store, &id, &self.owner, self.lease(), work).await {
            Ok(()) => {}
            Err(LeaseLost::Taken) => {
                tracing::warn!(job = %id, kind = %kind, "lost the job's lease; another worker has it, so this one stopped")
            }
            // Logged where it was found.
            Err(LeaseLost::Unrenewable) => {}
        }
    }

    /// Runs a claimed job step by step until it ends, waits, or must be retried later.
    async fn run_holding(&self, record: JobRecord) {
        let mut job = match Job::from_record(&record) {
            Ok(job) => job,
            Err(e) => return self.refuse(&record, &e.to_string()).await,
        };
        let span = tracing::info_span!("job", job = %job.id, kind = %job.kind(), instance = %job.instance_id);
        let _enter = span.enter();
        drop(_enter);
        loop {
            if let Some(op) = &job.operation_id {
                let text = steps::describe(&job);
                if let Err(e) = self
                    .ctx
                    .store
                    .update_operation(op, OperationState::InProgress, &text)
                    .await
                {
                    tracing::warn!(parent: &span, error = %e, "cannot record progress");
                }
            }
            crate::crash_point::reached(job.step.as_str());
            let step_started = Instant::now();
            let result = steps::run_step(&self.ctx, &job).await;
            tracing::debug!(parent: &span, step = %job.step, ms = step_started.elapsed().as_millis() as u64, ok = result.is_ok(), "step ran");
            if result.is_ok() {
                self.storage_wait_over(&job.id);
            }
            if matches!(result, Ok(Outcome::Next)) {
                crate::crash_point::reached_after(job.step.as_str());
            }
            match result {
                Ok(Outcome::Next) => match job.next_step() {
                    Some(step) if self.advance(&mut job, step, &span).await => {}
                    Some(_) => return,
                    None => {
                        self.finish(&job, OperationState::Succeeded, None).await;
                        return;
                    }
                },
                Ok(Outcome::Back(step)) => {
                    if !self.advance(&mut job, step, &span).await {
                        return;
                    }
                }
                Ok(Outcome::Cancelled(why)) => {
                    self.finish(&job, OperationState::Failed, Some(why)).await;
                    return;
                }
                Ok(Outcome::Succeeded(note)) => {
                    self.finish(&job, OperationState::Succeeded, Some(note))
                        .await;
                    return;
                }
                // Never slept through in place: the slot goes to other work meanwhile.
                Ok(Outcome::Wait(d)) => {
                    self.release(&job.id, job.attempts, d, "waiting").await;
                    return;
                }
                Err(StepError::Transient(e)) => {
                    if let Some(outage) = self.storage_outage(&job).await {
                        self.wait_for_storage(&job, &outage, &e, &span).await;
                        return;
                    }
                    let attempts = job.attempts + 1;
                    if attempts >= self.ctx.settings.jobs.max_attempts {
                        tracing::error!(parent: &span, step = %job.step, error = format!("{e:#}"), "step failed {attempts} times; giving up");
                        let mut msg = format!("{} failed repeatedly", steps::describe(&job));
                        // Which machine is missing is what the user and operator need to know
                        // (nothing else of the error: it may hold paths).
                        if let Some(crate::runtime::RuntimeError::Unreachable { agent, .. }) =
                            e.downcast_ref::<crate::runtime::RuntimeError>()
                        {
                            msg.push_str(&format!(
                                ": the database VM (agent {agent}) does not answer; ask your \
                                 operator to bring it back, then try again"
                            ));
                        }
                        self.finish(&job, OperationState::Failed, Some(msg)).await;
                        return;
                    }
                    let backoff = Duration::from_millis((500u64 << attempts.min(6)).min(30_000));
                    tracing::warn!(parent: &span, step = %job.step, attempt = attempts, retry_in_ms = backoff.as_millis() as u64, error = format!("{e:#}"), "step failed; will retry");
                    self.release(&job.id, attempts, backoff, &format!("{e:#}"))
                        .await;
                    return;
                }
                Err(StepError::Permanent {
                    user_message,
                    source,
                }) => {
                    // A restore's WAL replay stops for good when `wal-fetch` cannot reach
                    // storage (rule 3: never end recovery early); while storage is down that
                    // is an outage to wait for, not the clone's fault.
                    if job.step == Step::CloneRestore {
                        if let Some(outage) = self.storage_outage(&job).await {
                            self.wait_for_storage(&job, &outage, &source, &span).await;
                            return;
                        }
                    }
                    tracing::error!(parent: &span, step = %job.step, error = format!("{source:#}"), "step failed permanently");
                    let msg = format!("{}: {user_message}", steps::describe(&job));
                    self.finish(&job, OperationState::Failed, Some(msg)).await;
                    return;
                }
            }
        }
    }

    /// For a provision (or clone) whose step failed transiently: the object-storage outage in
    /// progress, if the archive does not answer a check now. Other kinds keep their attempts:
    /// a delete that cannot archive its last WAL fails and keeps the instance (§5).
    async fn storage_outage(&self, job: &Job) -> Option<Outage> {
        if job.kind() != JobKind::Provision {
            return None;
        }
        let archive = &self.ctx.archive;
        let health = &self.ctx.archive_health;
        match tokio::time::timeout(STORAGE_CHECK_TIMEOUT, archive.check()).await {
            Ok(Ok(())) => {
                health.answered();
                self.storage_wait_over(&job.id);
                None
            }
            Ok(Err(e)) if e.is_permanent() || e.is_cancelled() => None,
            Ok(Err(e)) => Some(health.failed(&archive.location(""), &e, Utc::now())),
            Err(_) => Some(health.failed_with(
                &archive.location(""),
                "the check did not answer in time",
                Utc::now(),
            )),
        }
    }

    /// What last_operation says of a success; a provision done while object storage does not
    /// answer says that its archiving is behind (the cluster keeps its WAL meanwhile).
    async fn success_description(&self, job: &Job) -> String {
        let mut done = steps::success_description(job);
        if job.spec.clone_source().is_some() {
            match self.ctx.store.restore_note(&job.instance_id).await {
                Ok(Some(note)) => {
                    let secs = (now_millis() - job.spec.requested_at()).max(0) as f64 / 1000.0;
                    done = steps::with_restore_note(done, &note, secs);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(job = %job.id, error = %e, "cannot read how the clone was restored")
                }
            }
        }
        match (job.kind(), self.ctx.archive_health.outage()) {
            (JobKind::Provision, Some(outage)) => format!(
                "{done} Archiving is behind: object storage at {} does not answer (since {}); the \
                 instance keeps its WAL and archives it, with its first base backup, once storage \
                 is back.",
                outage.location,
                outage.since.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            _ => done,
        }
    }

    /// `id` no longer waits for storage: a later outage gives it a whole wait again.
    fn storage_wait_over(&self, id: &str) {
        let mut waits = self.storage_waits.lock().expect("storage waits");
        if !waits.is_empty() {
            waits.remove(id);
        }
    }

    /// A step of `job` failed while object storage is down: retry it (without spending its
    /// attempts) until `jobs.storage_retry_secs` after it began waiting, saying so in the
    /// operation's description; then fail it, naming the cause and what to do.
    async fn wait_for_storage(
        &self,
        job: &Job,
        outage: &Outage,
        e: &anyhow::Error,
        span: &tracing::Span,
    ) {
        let now = Utc::now();
        let began = *self
            .storage_waits
            .lock()
            .expect("storage waits")
            .entry(job.id.clone())
            .or_insert(now);
        let waited = (now - began).to_std().unwrap_or_default();
        let budget = Duration::from_secs(self.ctx.settings.jobs.storage_retry_secs);
        let since = outage.since.format("%Y-%m-%d %H:%M:%S UTC");
        if waited >= budget {
            tracing::error!(parent: span, step = %job.step, archive = %outage.location, since = %since, error = format!("{e:#}"), "object storage did not come back in time; giving up");
            let msg = format!(
                "{} failed: object storage is unreachable at {} since {since} (waited {} s). \
                 Ask your operator to bring object storage back, then delete this instance and \
                 create it again.",
                steps::describe(job),
                outage.location,
                waited.as_secs()
            );
            self.storage_wait_over(&job.id);
            self.finish(job, OperationState::Failed, Some(msg)).await;
            return;
        }
        let retry_in = (waited / 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
        let retry_in = retry_in.min(budget - waited).max(Duration::from_secs(1));
        tracing::warn!(parent: span, step = %job.step, archive = %outage.location, since = %since, retry_in_secs = retry_in.as_secs(), error = format!("{e:#}"), "object storage does not answer; will retry");
        if let Some(op) = &job.operation_id {
            let text = format!(
                "{}: waiting for object storage (unreachable at {} since {since}), retrying in {} s",
                steps::describe(job),
                outage.location,
                retry_in.as_secs()
            );
            if let Err(e) = self
                .ctx
                .store
                .update_operation(op, OperationState::InProgress, &text)
                .await
            {
                tracing::warn!(parent: span, error = %e, "cannot record progress");
            }
        }
        self.release(&job.id, job.attempts, retry_in, &format!("{e:#}"))
            .await;
    }

    /// Records `step` as the job's current one (attempts reset, lease kept); false when the
    /// job must stop here (its lease is lost, or the store failed and it is released).
    async fn advance(&self, job: &mut Job, step: Step, span: &tracing::Span) -> bool {
        match self
            .ctx
            .store
            .advance_job(&job.id, &self.owner, step.as_str())
            .await
        {
            Ok(true) => {
                job.step = step;
                true
            }
            Ok(false) => {
                tracing::warn!(parent: span, "lost the job's lease; another worker has it");
                false
            }
            Err(e) => {
                tracing::warn!(parent: span, error = %e, "cannot record step; will retry");
                self.release(
                    &job.id,
                    job.attempts,
                    Duration::from_secs(1),
                    &e.to_string(),
                )
                .await;
                false
            }
        }
    }

    /// Fails a claimed job this broker cannot read, and its operation, saying why in the log.
    async fn refuse(&self, record: &JobRecord, why: &str) {
        tracing::error!(job = %record.id, kind = %record.kind, step = %record.step, error = why, "unreadable job; failing it");
        let store = &self.ctx.store;
        // The operation first, the job last (as `finish` does): once the job is no longer
        // pending its lease cannot be renewed, and the lease keeper drops this work at its next
        // await, so a write after `finish_job` may never happen.
        if let Some(op) = &record.operation_id {
            let text = "The broker cannot read this operation's job record; ask your operator \
                        (the broker's log names the job).";
            if let Err(e) = store
                .update_operation(op, OperationState::Failed, text)
                .await
            {
                tracing::warn!(job = %record.id, error = %e, "cannot mark the operation failed");
            }
        }
        if let Err(e) = store
            .finish_job(&record.id, crate::store::JOB_FAILED, Some(why))
            .await
        {
            tracing::warn!(job = %record.id, error = %e, "cannot mark the unreadable job failed");
        }
    }

    async fn release(&self, id: &str, attempts: u32, after: Duration, why: &str) {
        let run_after = now_millis() + after.as_millis() as i64;
        if let Err(e) = self
            .ctx
            .store
            .retry_job(id, &self.owner, attempts, run_after, why)
            .await
        {
            tracing::warn!(job = %id, error = %e, "cannot release job; its lease will expire");
        }
    }

    async fn finish(&self, job: &Job, state: OperationState, message: Option<String>) {
        let store = &self.ctx.store;
        let kind = job.kind();
        let hook = steps::on_end(&self.ctx, job, state == OperationState::Succeeded).await;
        let (state, message) = match hook {
            Ok(Some(superseded)) => (OperationState::Failed, Some(superseded)),
            Ok(None) => (state, message),
            Err(e) => {
                tracing::warn!(job = %job.id, error = format!("{e:#}"), "cannot record the job's end; will retry");
                self.release(
                    &job.id,
                    job.attempts,
                    Duration::from_secs(1),
                    "recording the end",
                )
                .await;
                return;
            }
        };
        let succeeded = state == OperationState::Succeeded;
        let description = match message {
            Some(m) => m,
            None => self.success_description(job).await,
        };
        if let Some(op) = &job.operation_id {
            if let Err(e) = store.update_operation(op, state, &description).await {
                tracing::warn!(job = %job.id, error = %e, "cannot record the operation's end; will retry");
                self.release(
                    &job.id,
                    job.attempts,
                    Duration::from_secs(1),
                    "recording the end",
                )
                .await;
                return;
            }
        }
        let job_state = if succeeded {
            crate::store::JOB_DONE
        } else {
            crate::store::JOB_FAILED
        };
        if let Err(e) = store
            .finish_job(
                &job.id,
                job_state,
                (!succeeded).then_some(description.as_str()),
            )
            .await
        {
            tracing::warn!(job = %job.id, error = %e, "cannot mark job finished");
        }
        let elapsed = (now_millis() - job.spec.requested_at()).max(0) as f64 / 1000.0;
        self.ctx.metrics.operation_finished(
            kind.as_str(),
            if succeeded { "succeeded" } else { "failed" },
            elapsed,
        );
        tracing::info!(job = %job.id, kind = kind.as_str(), instance = %job.instance_id, outcome = state.as_str(), "operation finished");
    }
}
