//! The `idle_stop` step (issue 17): an idle instance's cluster parked — WAL switched and
//! archived, stopped cleanly, its port held by the runtime's wake listener — and
//! `instances.stopped_at` recorded.
//!
//! The supervisor enqueues it once an instance has had no client and no replication session
//! for its plan's `idle.stop_after_secs`; by the time it runs, anything may have changed, so
//! every condition is checked again here: still ready, its plan still stops when idle, not HA,
//! not a follower, no followers, no other job of the instance waiting or running, and no
//! session now. Anything else ends the job without stopping (logged); the supervisor's clock
//! starts over. The step may run again at any point (a broker killed mid-way): `park` is
//! idempotent, and a cluster found parked already only gets its `stopped_at`.
//!
//! A leaf of `steps`: imports none of its siblings nor the dispatcher, and never `broker`.

use crate::context::AppContext;
use crate::jobs::model::{Job, Step};
use crate::jobs::{Outcome, StepError, StepResult};
use crate::runtime::ClusterStatus;
use crate::store::now_millis;

pub async fn idle_stop_step(ctx: &AppContext, job: &Job) -> StepResult {
    if job.step != Step::IdleStop {
        return Err(StepError::Permanent {
            user_message: "internal error".into(),
            source: anyhow::anyhow!("{} is not a step of an idle stop", job.step),
        });
    }
    let id = &job.instance_id;
    let keep = |why: &str| {
        tracing::info!(instance = %id, why, "idle stop not done; the instance keeps running");
        Ok(Outcome::Next)
    };
    let Some(instance) = ctx.store.get_instance(id).await? else {
        return keep("the instance is gone");
    };
    if let Some(why) = crate::jobs::idle::may_stop(ctx, &instance) {
        return keep(why);
    }
    if !ctx.store.ha_members(id).await?.is_empty() {
        return keep("it is highly available");
    }
    if !ctx.store.followers_of(id).await?.is_empty() {
        return keep("it has followers");
    }
    if !ctx.store.other_pending_jobs(id, &job.id).await?.is_empty() {
        return keep("another job of the instance is waiting or running");
    }
    match ctx.runtime.status(id).await? {
        ClusterStatus::Running => match ctx.runtime.sessions(id).await {
            Ok(s) if s.clients == 0 && s.replication == 0 => {}
            Ok(s) => {
                tracing::info!(instance = %id, clients = s.clients, replication = s.replication, "idle stop not done: sessions came since");
                return Ok(Outcome::Next);
            }
            Err(e) => {
                tracing::warn!(instance = %id, error = %e, "idle stop not done: cannot count the cluster's sessions");
                return Ok(Outcome::Next);
            }
        },
        // Re-run after a park that was not recorded: park again (idempotent) and record it.
        ClusterStatus::Parked => {}
        // Down or missing: the supervisor's to handle, not ours.
        ClusterStatus::Stopped | ClusterStatus::Absent => {
            return keep("its cluster is not running");
        }
    }
    let started = std::time::Instant::now();
    ctx.runtime.park(id).await?;
    ctx.store.set_stopped_at(id, now_millis()).await?;
    tracing::info!(instance = %id, secs = started.elapsed().as_secs_f64(), "idle instance stopped; its next connection starts it");
    Ok(Outcome::Next)
}
