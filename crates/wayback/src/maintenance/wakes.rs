//! Wakes of stopped-when-idle clusters (issue 17), as the runtime reports them
//! (`ClusterRuntime::subscribe_wakes`, subscribed once at start-up): the instance's
//! `stopped_at` is cleared at once (its state shows `running` again before the supervisor's
//! next pass), the wake's time goes into `wayback_wake_seconds` and a failed wake into
//! `wayback_wake_failures_total`. A failed wake leaves the instance stopped and records why
//! (`instances.wake_error`: the short reason its clients were told, free of paths) so that the
//! OSB fetch and the broker API say it; the next start that works clears it with `stopped_at`.
//! A runtime that reports no wakes (agents) leaves this to the supervisor, which clears
//! `stopped_at` when it finds the cluster running.

use tokio::sync::broadcast::{error::RecvError, Receiver};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::runtime::WakeEvent;
use crate::store::Store;

pub struct WakeWatch {
    store: Store,
    metrics: Metrics,
    wakes: Receiver<WakeEvent>,
}

impl WakeWatch {
    /// Watches `wakes`, from a subscription taken before anything can wake.
    pub fn new(store: Store, metrics: Metrics, wakes: Receiver<WakeEvent>) -> Self {
        Self {
            store,
            metrics,
            wakes,
        }
    }

    /// Records one wake.
    pub async fn observe(&self, wake: &WakeEvent) {
        let id = &wake.instance;
        match &wake.error {
            None => {
                self.metrics.wake_observed(wake.seconds);
                tracing::info!(instance = %id, secs = wake.seconds, "stopped-when-idle instance woken by a connection");
                if let Err(e) = self.store.clear_stopped_at(id).await {
                    tracing::warn!(instance = %id, error = %e, "cannot record that the woken instance runs; the supervisor will");
                }
            }
            Some(error) => {
                self.metrics.wake_failed();
                tracing::error!(instance = %id, error, "a connection could not wake the stopped-when-idle instance");
                let reason = bounded(error);
                let at = crate::store::now_millis();
                if let Err(e) = self.store.set_wake_error(id, reason, at).await {
                    tracing::warn!(instance = %id, error = %e, "cannot record why the instance could not be woken");
                }
            }
        }
    }

    pub async fn run_until_stopped(mut self, shutdown: CancellationToken) {
        loop {
            let received = tokio::select! {
                r = self.wakes.recv() => r,
                _ = shutdown.cancelled() => return,
            };
            match received {
                Ok(wake) => self.observe(&wake).await,
                // Missed some: the supervisor clears what is left on its next pass.
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "wake events missed; the supervisor catches up")
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}

/// At most this many bytes of a reason are kept (the runtime's are one short sentence).
const MAX_REASON: usize = 200;

/// `reason` cut to [`MAX_REASON`] bytes at a character boundary.
fn bounded(reason: &str) -> &str {
    if reason.len() <= MAX_REASON {
        return reason;
    }
    let mut end = MAX_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_reason_is_cut_at_a_character_boundary() {
        assert_eq!(bounded("it no longer exists"), "it no longer exists");
        let long = "é".repeat(150);
        let cut = bounded(&long);
        assert!(cut.len() <= MAX_REASON && long.starts_with(cut), "{cut}");
        assert_eq!(cut.chars().count(), MAX_REASON / 2);
    }
}
