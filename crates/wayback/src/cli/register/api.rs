//! The Cloud Controller's v3 API as `register-broker` calls it: find the broker, poll a job,
//! list and page, make plans visible; and the answers said so that a person knows what to do
//! (403 names the `cloud_controller.admin` authority). Through `cc::CloudController`, which
//! finds the UAA, keeps the token and retries; it must not reach the CC any other way.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use reqwest::Method;
use serde_json::{json, Value};

use super::report::{JobOutcome, OrgRef, PlanAccess};
use super::wire::{errors_text, join_errors, WireBroker, WireJob, WireList};
use crate::cc::{CcError, CloudController};
use crate::cli::encode;
use crate::config::CcSettings;

/// One answer of the CC, read whole.
pub(super) struct Answer {
    what: &'static str,
    pub(super) status: u16,
    pub(super) location: Option<String>,
    body: String,
}

pub(super) struct Broker {
    pub(super) guid: String,
    pub(super) space_guid: Option<String>,
}

/// The CC's v3 API as the UAA client of the `cc.*` settings (`cc::CloudController`, which
/// finds the UAA, keeps the token and retries transient failures).
pub(super) struct Api {
    cc: CloudController,
    client_id: String,
}

impl Api {
    /// The client, with its token fetched now so that bad credentials are said first.
    pub(super) async fn connect(settings: &CcSettings) -> anyhow::Result<Api> {
        let cc = CloudController::from_settings(settings)?
            .ok_or_else(|| anyhow!("cc.api_url is not set"))?;
        match cc.check_credentials().await {
            Ok(()) => {}
            Err(CcError::Unauthorized { what, status }) => bail!(
                "{what}: HTTP {status}; check cc.client_id ({}) and cc.client_secret",
                settings.client_id
            ),
            Err(e) => return Err(e.into()),
        }
        Ok(Api {
            cc,
            client_id: settings.client_id.clone(),
        })
    }

    /// One authenticated call with an optional JSON body; with `retry`, again on transient
    /// failures.
    pub(super) async fn call(
        &self,
        what: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        retry: bool,
    ) -> anyhow::Result<Answer> {
        let answer = self.cc.call(what, method, path, body, retry).await?;
        Ok(Answer {
            what,
            status: answer.status,
            location: answer.location,
            body: answer.body,
        })
    }

    /// The answer if its status is one of `ok`, else an error saying what to do about it.
    pub(super) fn expect(&self, answer: Answer, ok: &[u16]) -> anyhow::Result<Answer> {
        if ok.contains(&answer.status) {
            return Ok(answer);
        }
        let detail = errors_text(&answer.body);
        match answer.status {
            403 => bail!(
                "{}: HTTP 403: {detail}. The UAA client {} may not do this: registering a broker and enabling access need the `cloud_controller.admin` authority (e.g. `uaac client update {} --authorities cloud_controller.admin`), then run this again",
                answer.what, self.client_id, self.client_id
            ),
            401 => bail!(
                "{}: HTTP 401: {detail}. The Cloud Controller refused the UAA client's token: check that cc.uaa_url is this Cloud Controller's UAA",
                answer.what
            ),
            status => bail!("{}: HTTP {status}: {detail}", answer.what),
        }
    }

    /// A `GET` answered 200, its body parsed.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        path: &str,
    ) -> anyhow::Result<T> {
        let answer = self.call(what, Method::GET, path, None, true).await?;
        let answer = self.expect(answer, &[200])?;
        serde_json::from_str(&answer.body).map_err(|e| anyhow!("{what}: unexpected response: {e}"))
    }

    /// Every resource of a paginated list, following `pagination.next`.
    async fn list(&self, what: &'static str, first: String) -> anyhow::Result<Vec<Value>> {
        let mut all = Vec::new();
        let mut next = Some(first);
        while let Some(path) = next.take() {
            let page: WireList = self.get_json(what, &path).await?;
            all.extend(page.resources);
            next = page.pagination["next"]["href"].as_str().map(String::from);
        }
        Ok(all)
    }

    pub(super) async fn find_broker(&self, name: &str) -> anyhow::Result<Option<Broker>> {
        let path = format!("/v3/service_brokers?names={}", encode(name));
        let found = self.list("look up the service broker", path).await?;
        let Some(first) = found.into_iter().next() else {
            return Ok(None);
        };
        let wire: WireBroker = serde_json::from_value(first)
            .map_err(|e| anyhow!("look up the service broker: unexpected response: {e}"))?;
        Ok(Some(Broker {
            space_guid: wire.relationships["space"]["data"]["guid"]
                .as_str()
                .map(String::from),
            guid: wire.guid,
        }))
    }

    /// Polls `GET /v3/jobs/:guid` until the job is `COMPLETE` (or fails, or `timeout` passes).
    pub(super) async fn wait_for_job(
        &self,
        location: &str,
        timeout: Duration,
    ) -> anyhow::Result<JobOutcome> {
        let deadline = Instant::now() + timeout;
        let mut wait = Duration::from_millis(250);
        loop {
            let job: WireJob = self
                .get_json("poll the Cloud Controller's job", location)
                .await?;
            match job.state.as_str() {
                "COMPLETE" => {
                    return Ok(JobOutcome {
                        guid: job.guid,
                        state: job.state,
                        warnings: job.warnings.into_iter().map(|w| w.detail).collect(),
                    })
                }
                "FAILED" => bail!(
                    "the Cloud Controller's job {} ({}) FAILED: {}",
                    job.guid,
                    job.operation,
                    if job.errors.is_empty() { "(no errors given)".into() } else { join_errors(&job.errors) }
                ),
                state if Instant::now() + wait > deadline => bail!(
                    "the Cloud Controller's job {} is still {state} after {} s; look at it with `cf curl /v3/jobs/{}`",
                    job.guid,
                    timeout.as_secs(),
                    job.guid
                ),
                _ => {}
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    /// Makes every plan of the broker visible, publicly or to the named orgs.
    pub(super) async fn enable_access(
        &self,
        broker_guid: &str,
        org_names: &[String],
    ) -> anyhow::Result<Vec<PlanAccess>> {
        let mut orgs = Vec::new();
        for name in org_names {
            let path = format!("/v3/organizations?names={}", encode(name));
            let found = self.list("look up the organization", path).await?;
            let guid = found
                .first()
                .and_then(|o| o["guid"].as_str())
                .ok_or_else(|| {
                    anyhow!("no organization named {name:?} (or the UAA client cannot see it)")
                })?;
            orgs.push(OrgRef {
                guid: guid.to_string(),
                name: name.clone(),
            });
        }
        let path = format!(
            "/v3/service_plans?service_broker_guids={}&per_page=5000",
            encode(broker_guid)
        );
        let plans = self.list("list the broker's service plans", path).await?;
        if plans.is_empty() {
            bail!("the Cloud Controller lists no plans of broker {broker_guid}: is the catalog empty?");
        }
        let body = if orgs.is_empty() {
            json!({"type": "public"})
        } else {
            let list: Vec<Value> = orgs.iter().map(|o| json!({"guid": o.guid})).collect();
            json!({"type": "organization", "organizations": list})
        };
        let mut done = Vec::new();
        for plan in plans {
            let guid = plan["guid"]
                .as_str()
                .ok_or_else(|| anyhow!("a service plan without a guid"))?;
            let path = format!("/v3/service_plans/{guid}/visibility");
            let answer = self
                .call(
                    "set the service plan's visibility",
                    Method::POST,
                    &path,
                    Some(&body),
                    true,
                )
                .await?;
            self.expect(answer, &[200, 201])?;
            done.push(PlanAccess {
                plan_guid: guid.to_string(),
                plan_name: plan["name"].as_str().unwrap_or_default().to_string(),
                visibility: if orgs.is_empty() {
                    "public"
                } else {
                    "organization"
                },
                organizations: orgs.clone(),
            });
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("my org, inc & co"), "my%20org%2C%20inc%20%26%20co");
        assert_eq!(encode("wayback-1.0_x~"), "wayback-1.0_x~");
    }
}
