//! The broker over OSB, as the Cloud Controller calls it: `Osb` sends one authenticated call
//! with the API version header, again on transport errors and 502/503/504 (`call_once`: never
//! again, for the operator's switchover of an HA instance); `Answer` is the
//! broker's answer read whole, and says what went wrong in the broker's own words. Must not
//! import the broker's internals: it speaks HTTP only.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::Target;
use crate::cc::backoff::Backoff;

/// The broker over OSB, as the Cloud Controller calls it.
pub(super) struct Osb {
    http: reqwest::Client,
    url: String,
    username: String,
    password: SecretString,
    backoff: Backoff,
}

/// One answer of the broker, read whole.
pub(super) struct Answer {
    pub(super) status: u16,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The OSB error's `description` (or `error`), else the body.
    pub(super) fn description(&self) -> String {
        let v = self.json();
        v["description"]
            .as_str()
            .or(v["error"].as_str())
            .map(String::from)
            .unwrap_or_else(|| short(&self.body))
    }

    pub(super) fn describe(&self) -> String {
        format!("HTTP {}: {}", self.status, self.description())
    }

    /// The body as JSON if the status is one of `ok`, else an error with the broker's answer.
    pub(super) fn expect(&self, what: &str, ok: &[u16]) -> anyhow::Result<Value> {
        if ok.contains(&self.status) {
            return Ok(self.json());
        }
        if self.status == 401 {
            bail!(
                "{}: {}; check broker.username and broker.password (WAYBACK_BROKER_USERNAME / WAYBACK_BROKER_PASSWORD)",
                path_only(what),
                self.describe()
            );
        }
        bail!("{}: {}", path_only(what), self.describe())
    }
}

fn short(body: &str) -> String {
    let body = body.trim();
    match body.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &body[..cut]),
        None if body.is_empty() => "(empty body)".into(),
        None => body.to_string(),
    }
}

impl Osb {
    pub(super) fn new(target: &Target) -> anyhow::Result<Osb> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("wayback-smoke-test/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("build the HTTP client")?;
        Ok(Osb {
            http,
            url: target.url.clone(),
            username: target.username.clone(),
            password: target.password.clone(),
            backoff: Backoff {
                base: Duration::from_millis(250),
                max: Duration::from_secs(4),
            },
        })
    }

    /// One call; again (up to 4 times) on transport errors and 502/503/504, which OSB's
    /// idempotent PUTs and DELETEs allow.
    pub(super) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        let what = format!("{method} {}", path_only(path));
        let mut attempt = 0;
        loop {
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.url))
                .basic_auth(&self.username, Some(self.password.expose_secret()))
                .header("X-Broker-API-Version", "2.17");
            if let Some(b) = body {
                request = request.json(b);
            }
            let failure = match request.send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body = r.text().await.unwrap_or_default();
                    let answer = Answer { status, body };
                    if !matches!(status, 502..=504) {
                        return Ok(answer);
                    }
                    anyhow!("{what}: {}", answer.describe())
                }
                Err(e) => anyhow!("{what}: {}", e.without_url()),
            };
            attempt += 1;
            if attempt >= 4 {
                return Err(failure);
            }
            tokio::time::sleep(self.backoff.delay(attempt - 1)).await;
        }
    }
}

impl Osb {
    /// One call, never repeated (for a POST that is not idempotent), bounded by `timeout`.
    pub(super) async fn call_once(
        &self,
        method: Method,
        path: &str,
        body: &Value,
        timeout: Duration,
    ) -> anyhow::Result<Answer> {
        let what = format!("{method} {}", path_only(path));
        let r = self
            .http
            .request(method, format!("{}{path}", self.url))
            .basic_auth(&self.username, Some(self.password.expose_secret()))
            .timeout(timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| anyhow!("{what}: {}", e.without_url()))?;
        let status = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        Ok(Answer { status, body })
    }
}

pub(super) fn path_only(path: &str) -> &str {
    path.split('?').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_show_the_osb_description() {
        let a = Answer {
            status: 422,
            body: r#"{"error":"X","description":"no complete base backup yet"}"#.into(),
        };
        assert_eq!(a.describe(), "HTTP 422: no complete base backup yet");
        let a = Answer {
            status: 401,
            body: String::new(),
        };
        let e = a.expect("GET /v2/catalog?x=1", &[200]).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("GET /v2/catalog: HTTP 401: (empty body); check broker.username"));
    }
}
