//! Idle stop (issue 17), what the job layer shares: which instances may stop when idle
//! ([`may_stop`]), the `idle_stop` job ([`idle_stop_job`]), and [`unpark`] for the steps that
//! need a cluster running (a bind's role, a follower's grant on its leader, a live fork).
//!
//! A parked cluster is started by the runtime's `start`, which takes its port back from the
//! wake listener; the instance's `stopped_at` (and a failed wake's `wake_error`) is cleared at
//! once, and the supervisor's idle clock counts from the pass that sees it running, so it
//! stops again after its plan's `stop_after_secs`. Imports `store`, `runtime` and `catalog`;
//! never `steps` or `broker`.

use crate::context::AppContext;
use crate::domain::{InstanceId, InstanceState};
use crate::runtime::{ClusterStatus, RuntimeError};
use crate::store::{InstanceRecord, NewJob};

/// Why an instance may not stop when idle now; None: it may.
pub fn may_stop(ctx: &AppContext, instance: &InstanceRecord) -> Option<&'static str> {
    let plan = ctx.catalog.plan(&instance.service_id, &instance.plan_id);
    if instance.state != InstanceState::Ready {
        return Some("it is not ready");
    }
    if instance.leader_id.is_some() {
        return Some("it is a follower");
    }
    match plan {
        None => Some("its plan is not in the catalog"),
        Some(p) if p.ha.is_some() => Some("it is highly available"),
        Some(p) if p.idle_stop_after_secs.is_none() => Some("its plan does not stop when idle"),
        Some(_) => None,
    }
}

/// The row of an `idle_stop` job for `instance` (no OSB operation).
pub fn idle_stop_job(instance: &InstanceId) -> NewJob {
    super::JobSpec::idle_stop().to_row(
        format!("idle-stop-{}", uuid::Uuid::new_v4()),
        instance,
        None,
        None,
    )
}

/// Starts `cluster` (`instance`'s, or its HA leader's) if it is parked (stopped when idle), so
/// that work that needs its server can go on, and forgets that `instance` was stopped. Any
/// other status is left to the caller. True when it was parked.
///
/// Only an instance that can be parked is asked for its status — its plan stops when idle, or
/// it is recorded as stopped (its plan may have changed in the catalog since) — so that the
/// other instances' binds cost no extra call to their runtime.
pub async fn unpark(
    ctx: &AppContext,
    instance: &InstanceRecord,
    cluster: &InstanceId,
) -> Result<bool, RuntimeError> {
    let idle_plan = ctx
        .catalog
        .plan(&instance.service_id, &instance.plan_id)
        .is_some_and(|p| p.idle_stop_after_secs.is_some());
    if !idle_plan && instance.stopped_at.is_none() && instance.wake_error.is_none() {
        return Ok(false);
    }
    if ctx.runtime.status(cluster).await? != ClusterStatus::Parked {
        return Ok(false);
    }
    let id = &instance.id;
    let started = std::time::Instant::now();
    ctx.runtime.start(cluster).await?;
    tracing::info!(instance = %id, secs = started.elapsed().as_secs_f64(), "stopped-when-idle cluster started for the broker's work");
    if let Err(e) = ctx.store.clear_stopped_at(id).await {
        // The supervisor clears it on its next pass (it sees the cluster running).
        tracing::warn!(instance = %id, error = %e, "cannot record that the instance runs again");
    }
    Ok(true)
}
