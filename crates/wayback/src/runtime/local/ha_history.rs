//! What the operations of an HA member read on this machine (issue 15 point 5): the scope's
//! timeline switches from Patroni's `GET /history` (read beside `GET /cluster` for
//! [`LocalRuntime::ha_status`]; a Patroni that does not answer it leaves the history empty
//! rather than failing the status), and which member of an instance this machine runs
//! ([`LocalRuntime::ha_member_name`], for the drain). `GET /history` is one of Patroni's safe
//! endpoints: no credentials.
//! Must not import `osb`, `broker`, `store` or `jobs`.

use std::time::Duration;

use super::ha_patroni::PatroniFiles;
use super::LocalRuntime;
use crate::domain::InstanceId;
use crate::runtime::ha_ops::{parse_history, TimelineSwitch};

/// How long Patroni may take to answer `GET /history`.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(5);

/// The scope's timeline switches from the member whose REST API is at `rest`; empty (and a
/// line in the log) when it does not answer.
pub(super) async fn history(id: &InstanceId, rest: &str) -> Vec<TimelineSwitch> {
    let asked = async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(HISTORY_TIMEOUT)
            .build()?;
        client
            .get(format!("http://{rest}/history"))
            .send()
            .await?
            .error_for_status()?
            .json::<serde_json::Value>()
            .await
    };
    match asked.await {
        Ok(body) => parse_history(&body),
        Err(e) => {
            tracing::info!(instance = %id, rest, error = %e, "patroni did not answer GET /history");
            Vec::new()
        }
    }
}

impl LocalRuntime {
    /// The name of the member of `id` this machine runs; None when `id` is no HA member here.
    pub fn ha_member_name(&self, id: &InstanceId) -> Option<String> {
        PatroniFiles::new(&self.layout.cluster(id))
            .load_record()
            .ok()
            .map(|r| r.name)
    }
}
