//! What running instances are doing, for `/metrics` (issue 19): the runtime's counters of
//! every sampled instance (one call per agent), joined with the store's records, so that each
//! is labelled by the name the broker recorded last (a rename relabels), its space and its
//! plan's name. An instance the store does not know as live (deleted, or another broker's
//! machine) is left out. Imports `store` and `catalog`; never `runtime` (the sampling is the
//! runtime's).

use std::collections::HashMap;

use wayback_api::activity::ActivitySummary;

use super::{Broker, BrokerError};

/// One instance's figures and labels.
#[derive(Debug)]
pub struct ActivityMetric {
    pub summary: ActivitySummary,
    pub name: Option<String>,
    pub space: String,
    pub plan: String,
}

impl Broker {
    pub async fn activity_metrics(&self) -> Result<Vec<ActivityMetric>, BrokerError> {
        let (summaries, labels) = tokio::join!(
            self.ctx.runtime.activity_summaries(),
            self.ctx.store.metric_labels()
        );
        let mut labels: HashMap<String, crate::store::MetricLabels> =
            labels?.into_iter().map(|l| (l.id.clone(), l)).collect();
        let mut out: Vec<ActivityMetric> = summaries
            .into_iter()
            .filter_map(|summary| {
                let l = labels.remove(&summary.instance_id)?;
                let plan = self
                    .ctx
                    .catalog
                    .plan(&l.service_id, &l.plan_id)
                    .map_or(l.plan_id.clone(), |p| p.name.clone());
                Some(ActivityMetric {
                    summary,
                    name: l.name,
                    space: l.space_guid,
                    plan,
                })
            })
            .collect();
        out.sort_by(|a, b| a.summary.instance_id.cmp(&b.summary.instance_id));
        Ok(out)
    }
}
