//! HA instances in operation (issue 15 point 5): the last failover as the OSB fetch's `"ha"`
//! shows it ([`FailoverView`]), and every HA instance's members, roles, lag and failover count
//! for a metrics scrape ([`Broker::ha_metrics`]), read from Patroni at scrape time as the
//! followers' lag is (each instance asked with a short timeout; one that does not answer has
//! no sample). A failover here is any change of leader after the first (Patroni's history does
//! not tell a failover from a switchover). Imports `context`, `domain` and `store` only.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;

use super::{Broker, BrokerError};
use crate::domain::{InstanceId, InstanceState};

/// How long a scrape waits for each instance's Patroni.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// Instances asked at once during a scrape.
const SCRAPE_CONCURRENCY: usize = 4;

/// The newest change of leader of an HA instance.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverView {
    /// When the new leader's timeline began (absent when Patroni did not record it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
    /// PostgreSQL's reason in the timeline history file.
    pub reason: String,
    pub from_timeline: u32,
    pub to_timeline: u32,
    /// Where the old timeline ended.
    pub lsn: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_leader: Option<String>,
}

/// One member of an HA instance, as a scrape found it.
#[derive(Debug, Clone)]
pub struct HaMemberMetric {
    pub member: String,
    /// Patroni's word: `leader`, `sync_standby`, `replica`, or another it uses.
    pub role: String,
    pub lag_bytes: Option<u64>,
}

/// One HA instance, as a scrape found it; `members` empty when Patroni did not answer.
#[derive(Debug, Clone)]
pub struct HaMetric {
    pub instance: InstanceId,
    pub members: Vec<HaMemberMetric>,
    pub failovers: Option<u64>,
}

impl Broker {
    /// Every live HA instance's members and failovers, for a metrics scrape.
    pub async fn ha_metrics(&self) -> Result<Vec<HaMetric>, BrokerError> {
        let ids = self.ctx.store.ha_instance_ids().await?;
        let mut live = Vec::new();
        for id in ids {
            let state = self.ctx.store.get_instance(&id).await?.map(|r| r.state);
            if matches!(state, Some(InstanceState::Ready | InstanceState::Updating)) {
                live.push(id);
            }
        }
        let out = futures::stream::iter(live)
            .map(|instance| async move {
                let asked =
                    tokio::time::timeout(SCRAPE_TIMEOUT, self.ctx.runtime.ha_status(&instance))
                        .await;
                match asked {
                    Ok(Ok(status)) => HaMetric {
                        members: status
                            .members
                            .iter()
                            .map(|m| HaMemberMetric {
                                member: m.name.clone(),
                                role: role_word(&m.role),
                                lag_bytes: m.lag_bytes,
                            })
                            .collect(),
                        failovers: Some(status.failovers()),
                        instance,
                    },
                    Ok(Err(e)) => {
                        tracing::info!(instance = %instance, error = %e, "no HA status for the metrics");
                        HaMetric {
                            instance,
                            members: Vec::new(),
                            failovers: None,
                        }
                    }
                    Err(_) => {
                        tracing::info!(instance = %instance, "the HA status timed out for the metrics");
                        HaMetric {
                            instance,
                            members: Vec::new(),
                            failovers: None,
                        }
                    }
                }
            })
            .buffered(SCRAPE_CONCURRENCY)
            .collect()
            .await;
        Ok(out)
    }
}

/// Patroni's word for a role: the serialised role's tag, or the name an unknown role carries
/// (the broker names no runtime type).
pub(super) fn role_word<T: Serialize>(role: &T) -> String {
    let v = serde_json::to_value(role).unwrap_or_default();
    v.get("name")
        .or(v.get("role"))
        .and_then(|r| r.as_str())
        .unwrap_or("unknown")
        .to_string()
}
