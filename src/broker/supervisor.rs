//! Keeps every ready instance's cluster running: after a broker restart, and when a postmaster
//! dies. Instances in the middle of an operation are left to that operation's job.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::InstanceState;
use crate::metrics::Metrics;
use crate::runtime::{ClusterStatus, Runtime};
use crate::store::Store;

pub struct Supervisor {
    store: Store,
    runtime: Runtime,
    metrics: Metrics,
    interval: Duration,
}

impl Supervisor {
    pub fn new(store: Store, runtime: Runtime, metrics: Metrics, interval: Duration) -> Self {
        Self {
            store,
            runtime,
            metrics,
            interval,
        }
    }

    /// Checks every ready instance once and starts those that are down. Returns how many it
    /// started.
    pub async fn check_all(&self) -> anyhow::Result<usize> {
        let mut started = 0;
        for instance in self
            .store
            .instances_in_states(&[InstanceState::Ready])
            .await?
        {
            match self.runtime.status(&instance.id).await {
                Ok(ClusterStatus::Running) => {}
                Ok(ClusterStatus::Stopped) => {
                    tracing::warn!(instance = %instance.id, "cluster is down; starting it");
                    match self.runtime.start(&instance.id).await {
                        Ok(()) => {
                            started += 1;
                            self.metrics.cluster_restarted();
                            tracing::info!(instance = %instance.id, "cluster started again");
                        }
                        Err(e) => {
                            tracing::error!(instance = %instance.id, error = %e, "cannot start cluster")
                        }
                    }
                }
                Ok(ClusterStatus::Absent) => {
                    tracing::error!(instance = %instance.id, "cluster data directory is missing; restore the instance from its archive")
                }
                Err(e) => {
                    tracing::warn!(instance = %instance.id, error = %e, "cannot check cluster")
                }
            }
        }
        Ok(started)
    }

    /// Checks at once, then every interval, until `shutdown`.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.check_all().await {
                tracing::warn!(error = %e, "supervisor pass failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}
