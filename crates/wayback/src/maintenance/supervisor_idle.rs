//! The supervisor's idle clock (issue 17): when each running instance whose plan stops when
//! idle (`metadata.wayback.idle.stop_after_secs`) last had a client or replication session,
//! and the `idle_stop` job enqueued once it has had none for that long.
//!
//! The clock is in memory: a broker start counts as activity (every instance starts its clock
//! at the first pass that sees it running), and so does a wake. Each pass asks the runtime for
//! the sessions of each such instance — read from `/proc`, never over a session of its own —
//! and a client or a replication connection resets its clock. An instance that is HA, a
//! follower, or a leader with followers has no clock: it never stops. An instance whose
//! runtime cannot count sessions (an agent too old: a permanent error) never stops either,
//! said once in the log. The job is enqueued on the background lane only while no other job
//! of the instance waits or runs (`Store::enqueue_idle_stop`), and runs its own checks again.
//!
//! A parked cluster is left alone (never started to be watched); its `stopped_at` is recorded
//! if the job could not (a broker killed between the park and the record). A running cluster
//! still recorded as stopped (or with a failed wake recorded) was woken by a client: the record
//! is cleared and its clock starts.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::Supervisor;
use crate::domain::InstanceId;
use crate::store::InstanceRecord;

/// After an idle stop could not be enqueued (another job of the instance waits or runs), the
/// next try waits this long: no query of the state database per instance per pass.
const RETRY_ENQUEUE: Duration = Duration::from_secs(60);

/// One instance's idle clock.
#[derive(Debug, Clone, Copy)]
pub(super) struct IdleClock {
    /// The last pass that saw a session (or a start, or a wake).
    last_active: Instant,
    /// No idle stop is enqueued before this.
    not_before: Option<Instant>,
    /// The runtime cannot count its sessions: it never stops (logged once).
    refused: bool,
}

impl IdleClock {
    fn started() -> Self {
        IdleClock {
            last_active: Instant::now(),
            not_before: None,
            refused: false,
        }
    }
}

impl Supervisor {
    /// A running, non-follower instance: its recorded stop cleared if it was woken, and its
    /// idle clock moved on (an idle stop enqueued once it is due). `leaders` are the ready
    /// instances with a ready follower.
    pub(super) async fn tend_idle_running(
        &self,
        instance: &InstanceRecord,
        leaders: &HashSet<InstanceId>,
    ) {
        let id = &instance.id;
        if instance.stopped_at.is_some() || instance.wake_error.is_some() {
            // Woken by a client's connection (an agent's wakes are seen this way).
            match self.ctx.store.clear_stopped_at(id).await {
                Ok(_) => tracing::info!(instance = %id, "stopped-when-idle instance runs again"),
                Err(e) => {
                    tracing::warn!(instance = %id, error = %e, "cannot record that the instance runs again")
                }
            }
            self.idle_clocks().insert(id.clone(), IdleClock::started());
        }
        let Some(stop_after) = self.stop_after(instance, leaders) else {
            self.idle_clocks().remove(id);
            return;
        };
        let clock = *self
            .idle_clocks()
            .entry(id.clone())
            .or_insert_with(IdleClock::started);
        if clock.refused {
            return;
        }
        match self.ctx.runtime.sessions(id).await {
            Ok(s) if s.clients > 0 || s.replication > 0 => {
                self.idle_clocks().insert(id.clone(), IdleClock::started());
                return;
            }
            Ok(_) => {}
            Err(e) if e.is_permanent() => {
                tracing::warn!(instance = %id, error = %e, "cannot count the cluster's sessions: this instance never stops when idle");
                if let Some(c) = self.idle_clocks().get_mut(id) {
                    c.refused = true;
                }
                return;
            }
            Err(e) => {
                tracing::debug!(instance = %id, error = %e, "cannot count the cluster's sessions this pass");
                return;
            }
        }
        let now = Instant::now();
        if now.duration_since(clock.last_active) < stop_after
            || clock.not_before.is_some_and(|t| now < t)
        {
            return;
        }
        let enqueued = self.enqueue_idle_stop(instance).await;
        if let Some(c) = self.idle_clocks().get_mut(id) {
            if enqueued {
                // The job parks it, or finds a reason not to: either way the clock starts over.
                *c = IdleClock::started();
            } else {
                c.not_before = Some(now + RETRY_ENQUEUE);
            }
        }
    }

    /// A parked cluster: left stopped; its stop recorded if it is not yet.
    pub(super) async fn tend_idle_parked(&self, instance: &InstanceRecord) {
        self.idle_clocks().remove(&instance.id);
        if instance.stopped_at.is_none() {
            let now = crate::store::now_millis();
            if let Err(e) = self.ctx.store.set_stopped_at(&instance.id, now).await {
                tracing::warn!(instance = %instance.id, error = %e, "cannot record that the instance is stopped");
            }
        }
    }

    /// The plan's idle time of an instance that may stop when idle; None for the others.
    fn stop_after(
        &self,
        instance: &InstanceRecord,
        leaders: &HashSet<InstanceId>,
    ) -> Option<Duration> {
        if crate::jobs::idle::may_stop(&self.ctx, instance).is_some()
            || leaders.contains(&instance.id)
        {
            return None;
        }
        self.ctx
            .catalog
            .plan(&instance.service_id, &instance.plan_id)
            .and_then(|p| p.idle_stop_after_secs)
            .map(Duration::from_secs)
    }

    /// Enqueues the instance's idle stop unless a follower is on its way (one not ready yet:
    /// asked only now, not every pass) or another of its jobs waits or runs. Whether it was.
    async fn enqueue_idle_stop(&self, instance: &InstanceRecord) -> bool {
        let id = &instance.id;
        match self.ctx.store.followers_of(id).await {
            Ok(f) if f.is_empty() => {}
            Ok(_) => return false,
            Err(e) => {
                tracing::warn!(instance = %id, error = %e, "cannot read the instance's followers");
                return false;
            }
        }
        match self
            .ctx
            .store
            .enqueue_idle_stop(&crate::jobs::idle::idle_stop_job(id))
            .await
        {
            Ok(true) => {
                tracing::info!(instance = %id, "instance idle; idle stop enqueued");
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(instance = %id, error = %e, "cannot enqueue the idle stop");
                false
            }
        }
    }

    fn idle_clocks(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<InstanceId, IdleClock>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}
