//! The few Cloud Controller v3 calls `cf-wayback` makes, as the user (their own token, so
//! the CC applies their roles): list a space's service instances, find a plan, create the
//! restored instance, and read its `last_operation`.
//!
//! CC errors come as `{"errors": [{code, title, detail}]}`; they are shown verbatim, because
//! a broker's refusal (say, a `point-in-time` outside the window) travels inside `detail`.
//! Imports `cli_error` and `broker_client` (the one HTTP client and its retries).

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::broker_client::get_with_retry;
use crate::cli_error::CliError;

/// Listing stops here: a space with more instances than this is not a case to page through.
const MAX_PAGES: usize = 20;

pub struct CcClient<'a> {
    pub http: &'a reqwest::Client,
    /// The API endpoint, e.g. `https://api.sys.example.com`, no trailing slash.
    pub api: &'a str,
    pub token: &'a SecretString,
}

/// `{"errors":[…]}` as one line per error: `CF-UnprocessableEntity (10008): detail`.
pub fn format_cc_errors(body: &Value, text: &str) -> String {
    let lines: Vec<String> = body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| {
                    format!(
                        "{} ({}): {}",
                        e["title"].as_str().unwrap_or("CF-Error"),
                        e["code"],
                        e["detail"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if lines.is_empty() {
        text.chars().take(300).collect()
    } else {
        lines.join("\n")
    }
}

/// A CC error answer, verbatim, with what to do next.
pub fn cc_error(status: reqwest::StatusCode, text: &str, hint: &str) -> CliError {
    let body: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let said = format!(
        "the Cloud Controller answered {status}:\n{}",
        format_cc_errors(&body, text)
    );
    match status.as_u16() {
        401 => CliError::Auth(format!("{said}\nLog in again with `cf login`.")),
        403 => CliError::Auth(format!(
            "{said}\nCreating service instances needs the SpaceDeveloper role in the targeted space."
        )),
        _ if hint.is_empty() => CliError::Failed(said),
        _ => CliError::Failed(format!("{said}\n{hint}")),
    }
}

impl CcClient<'_> {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api.trim_end_matches('/'))
    }

    async fn get(&self, url: &str, query: &[(&str, &str)]) -> Result<Value, CliError> {
        let resp = get_with_retry(self.http, url, query, self.token)
            .await
            .map_err(|e| CliError::transport("the Cloud Controller cannot be reached", &e))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(cc_error(status, &text, ""));
        }
        serde_json::from_str(&text).map_err(|e| {
            CliError::Failed(format!(
                "the Cloud Controller's answer to {url} is not JSON: {e}"
            ))
        })
    }

    /// Every resource of a paginated list, following `pagination.next`.
    async fn list(&self, path: &str, query: &[(&str, &str)]) -> Result<Vec<Value>, CliError> {
        let mut page = self.get(&self.url(path), query).await?;
        let mut all = Vec::new();
        for _ in 0..MAX_PAGES {
            all.extend(page["resources"].as_array().cloned().unwrap_or_default());
            match page["pagination"]["next"]["href"].as_str() {
                Some(next) => page = self.get(next, &[]).await?,
                None => break,
            }
        }
        Ok(all)
    }

    /// `GET /v3/service_instances?space_guids=…[&names=…]`.
    pub async fn service_instances(
        &self,
        space_guid: &str,
        name: Option<&str>,
    ) -> Result<Vec<Value>, CliError> {
        let mut query = vec![("space_guids", space_guid), ("type", "managed")];
        if let Some(name) = name {
            query.push(("names", name));
        }
        self.list("/v3/service_instances", &query).await
    }

    /// The CC guid of a plan, by the broker's catalog id or by name within an offering.
    pub async fn plan_guid(&self, query: &[(&str, &str)]) -> Result<Option<String>, CliError> {
        let plans = self.list("/v3/service_plans", query).await?;
        Ok(plans
            .first()
            .and_then(|p| p["guid"].as_str())
            .map(str::to_string))
    }

    /// `POST /v3/service_instances`; the CC answers 202 with a job in `Location`.
    pub async fn create_service_instance(&self, body: &Value, hint: &str) -> Result<(), CliError> {
        let resp = self
            .http
            .post(self.url("/v3/service_instances"))
            .header(
                reqwest::header::AUTHORIZATION,
                format!("bearer {}", self.token.expose_secret()),
            )
            .json(body)
            .send()
            .await
            .map_err(|e| CliError::transport("the Cloud Controller cannot be reached", &e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        Err(cc_error(status, &text, hint))
    }

    /// `GET /v3/service_instances/:guid`.
    pub async fn service_instance(&self, guid: &str) -> Result<Value, CliError> {
        self.get(&self.url(&format!("/v3/service_instances/{guid}")), &[])
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cc_errors_are_shown_verbatim() {
        let fixture = json!({"errors": [{"code": 10008, "title": "CF-UnprocessableEntity",
                                         "detail": "something went wrong"}]});
        let err = cc_error(
            reqwest::StatusCode::UNPROCESSABLE_ENTITY,
            &fixture.to_string(),
            "Pick another name.",
        );
        assert_eq!(err.exit_code(), 1);
        assert_eq!(
            err.to_string(),
            "the Cloud Controller answered 422 Unprocessable Entity:\n\
             CF-UnprocessableEntity (10008): something went wrong\nPick another name."
        );
        let err = cc_error(reqwest::StatusCode::UNAUTHORIZED, "not json", "");
        assert_eq!(err.exit_code(), 3);
        assert!(err.to_string().contains("not json"), "{err}");
    }
}
