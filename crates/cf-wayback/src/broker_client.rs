//! The broker's own read-only API (`/wayback/v1`, docs/wayback-api.md), called with the
//! user's UAA token, and the HTTP client every `cf-wayback` request goes through.
//!
//! The broker's documents are read as the typed [`wayback_api::v1`] types, which ignore fields
//! they do not know. Each instance is also kept as the JSON object it came as ([`Listed`]):
//! `--json` passes it through whole, so fields the broker adds later reach scripts without a
//! CLI release. The broker's error descriptions already say what to do; they are shown
//! verbatim with a hint of which cf command helps.
//!
//! Imports `cli_error` and `wayback_api::v1`.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;
use wayback_api::v1;

use crate::cli_error::CliError;

/// GETs are retried this often when the connection fails; each waits twice as long.
const GET_ATTEMPTS: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(300);

/// The client for the broker, the Cloud Controller and the UAA: bounded connect and request
/// times; certificate checks off only when cf itself runs with `--skip-ssl-validation`.
pub fn http_client(ssl_disabled: bool) -> Result<reqwest::Client, CliError> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .danger_accept_invalid_certs(ssl_disabled)
        .user_agent(concat!("cf-wayback/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| CliError::Failed(format!("cannot build an HTTP client: {e}")))
}

/// A GET with bounded retries on connection failures (never on an HTTP answer).
pub async fn get_with_retry(
    http: &reqwest::Client,
    url: &str,
    query: &[(&str, &str)],
    token: &SecretString,
) -> Result<reqwest::Response, reqwest::Error> {
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        let sent = http
            .get(url)
            .query(query)
            .header(
                reqwest::header::AUTHORIZATION,
                format!("bearer {}", token.expose_secret()),
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await;
        match sent {
            Err(e) if attempt < GET_ATTEMPTS && (e.is_connect() || e.is_timeout()) => {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Why a broker call failed: unreachable (so a remembered URL may be stale) or anything else.
#[derive(Debug)]
pub enum BrokerError {
    Unreachable(CliError),
    Other(CliError),
}

impl From<BrokerError> for CliError {
    fn from(e: BrokerError) -> CliError {
        match e {
            BrokerError::Unreachable(e) | BrokerError::Other(e) => e,
        }
    }
}

/// One broker `INSTANCE`: typed for what the CLI reads, and the object as it came for `--json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub instance: v1::Instance,
    pub raw: Value,
}

impl Listed {
    /// Reads one `INSTANCE` object.
    pub fn from_raw(raw: Value) -> Result<Listed, serde_json::Error> {
        let instance = v1::Instance::deserialize(&raw)?;
        Ok(Listed { instance, raw })
    }
}

/// The list document's instances, each typed and as it came; why not, for a person.
pub fn read_list(text: &str) -> Result<Vec<Listed>, String> {
    /// The list with its instances left as JSON objects, to be read one by one.
    #[derive(Deserialize)]
    struct RawList {
        instances: Vec<Value>,
    }
    let list: RawList =
        serde_json::from_str(text).map_err(|_| "without an `instances` list".to_string())?;
    list.instances
        .into_iter()
        .map(|raw| {
            Listed::from_raw(raw)
                .map_err(|e| format!("an instance this cf-wayback cannot read ({e})"))
        })
        .collect()
}

/// The broker at `base` (its external URL, no trailing slash), as one user.
pub struct BrokerApi<'a> {
    pub http: &'a reqwest::Client,
    pub base: &'a str,
    pub token: &'a SecretString,
}

impl BrokerApi<'_> {
    /// `GET /wayback/v1/spaces/{space}/instances[?name=]`: newest first, as the broker sorts.
    pub async fn instances(
        &self,
        space_guid: &str,
        space_name: &str,
        name: Option<&str>,
    ) -> Result<Vec<Listed>, BrokerError> {
        let url = format!("{}/wayback/v1/spaces/{space_guid}/instances", self.base);
        let query: Vec<(&str, &str)> = name.map(|n| ("name", n)).into_iter().collect();
        let resp = get_with_retry(self.http, &url, &query, self.token)
            .await
            .map_err(|e| {
                BrokerError::Unreachable(CliError::transport(
                    &format!("the Wayback broker at {} cannot be reached", self.base),
                    &e,
                ))
            })?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if status.is_success() {
            return read_list(&text).map_err(|why| {
                BrokerError::Other(CliError::Failed(format!(
                    "the broker at {} answered {why}; is that URL a Wayback broker? (pass the \
                     right one with --broker-url)",
                    self.base
                )))
            });
        }
        Err(BrokerError::Other(broker_error(status, &text, space_name)))
    }
}

impl BrokerApi<'_> {
    /// `GET /wayback/v1/instances/{id}/{document}` (`diagnose`, `locks`, `outliers`): the
    /// document as it came (for `--json`) and typed.
    pub async fn instance_document<T: serde::de::DeserializeOwned>(
        &self,
        instance_id: &str,
        document: &str,
        space_name: &str,
    ) -> Result<(Value, T), CliError> {
        let url = format!(
            "{}/wayback/v1/instances/{instance_id}/{document}",
            self.base
        );
        let resp = get_with_retry(self.http, &url, &[], self.token)
            .await
            .map_err(|e| {
                CliError::transport(
                    &format!("the Wayback broker at {} cannot be reached", self.base),
                    &e,
                )
            })?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if status == reqwest::StatusCode::NOT_FOUND
            && serde_json::from_str::<v1::ErrorBody>(&text).is_err()
        {
            return Err(CliError::Failed(format!(
                "the broker at {} does not serve /wayback/v1/instances/{{id}}/{document}: it \
                 is older than `cf db-{document}`; ask the operator to upgrade it",
                self.base
            )));
        }
        if !status.is_success() {
            return Err(broker_error(status, &text, space_name));
        }
        let raw: Value = serde_json::from_str(&text).map_err(|_| {
            CliError::Failed(format!(
                "the broker at {} answered a {document} document that is not JSON",
                self.base
            ))
        })?;
        let doc = T::deserialize(&raw).map_err(|e| {
            CliError::Failed(format!(
                "a {document} document this cf-wayback cannot read ({e})"
            ))
        })?;
        Ok((raw, doc))
    }

    /// `GET /wayback/v1/instances/{id}/audit`: the document as it came (for `--json`) and typed.
    pub async fn audit(
        &self,
        instance_id: &str,
        space_name: &str,
    ) -> Result<(Value, v1::AuditTrail), CliError> {
        let url = format!("{}/wayback/v1/instances/{instance_id}/audit", self.base);
        let resp = get_with_retry(self.http, &url, &[], self.token)
            .await
            .map_err(|e| {
                CliError::transport(
                    &format!("the Wayback broker at {} cannot be reached", self.base),
                    &e,
                )
            })?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(broker_error(status, &text, space_name));
        }
        let raw: Value = serde_json::from_str(&text).map_err(|_| {
            CliError::Failed(format!(
                "the broker at {} answered an audit trail that is not JSON; is it a Wayback \
                 broker that keeps one (release with `cf audit`)?",
                self.base
            ))
        })?;
        let trail = v1::AuditTrail::deserialize(&raw).map_err(|e| {
            CliError::Failed(format!("an audit trail this cf-wayback cannot read ({e})"))
        })?;
        Ok((raw, trail))
    }
}

/// The broker's `{"error", "description"}` verbatim, with what to do next.
pub fn broker_error(status: reqwest::StatusCode, text: &str, space: &str) -> CliError {
    let description = serde_json::from_str::<v1::ErrorBody>(text)
        .map(|body| body.description)
        .unwrap_or_else(|_| text.chars().take(300).collect());
    let said = format!("the broker answered {status}: {description}");
    match status.as_u16() {
        401 => CliError::Auth(format!("{said}\nLog in again with `cf login`.")),
        403 => CliError::Auth(format!(
            "{said}\nYou need a role in space {space} (ask a space or org manager), \
             or target another space with `cf target -s SPACE`."
        )),
        404 => CliError::Failed(said),
        502..=504 => CliError::Unreachable(said),
        _ => CliError::Failed(said),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support;
    use serde_json::json;
    use wiremock::matchers::{header, method, path, query_param};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    #[tokio::test]
    async fn lists_with_the_users_token_and_maps_errors() {
        let broker = MockServer::start().await;
        let space = "5ace0000-0000-4000-8000-000000000002";
        let instance = test_support::instance(json!({"instance_id": "x"}));
        Mock::given(method("GET"))
            .and(path(format!("/wayback/v1/spaces/{space}/instances")))
            .and(query_param("name", "production"))
            .and(header("authorization", "bearer tok"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"space_guid": space, "instances": [instance.clone()]})),
            )
            .mount(&broker)
            .await;
        Mock::given(method("GET"))
            .and(path("/wayback/v1/spaces/other/instances"))
            .respond_with(ResponseTemplate::new(403).set_body_json(
                json!({"error": "Forbidden", "description": "you may not see this space"}),
            ))
            .mount(&broker)
            .await;
        let http = http_client(false).unwrap();
        let token = SecretString::from("tok".to_string());
        let base = broker.uri();
        let api = BrokerApi {
            http: &http,
            base: &base,
            token: &token,
        };
        let list = api
            .instances(space, "staging", Some("production"))
            .await
            .unwrap();
        assert_eq!(list, vec![Listed::from_raw(instance).unwrap()]);
        assert_eq!(list[0].instance.instance_id, "x");

        let err = CliError::from(api.instances("other", "dev", None).await.unwrap_err());
        assert_eq!(err.exit_code(), 3);
        assert!(
            err.to_string().contains("you may not see this space"),
            "{err}"
        );

        let gone = BrokerApi {
            http: &http,
            base: "http://127.0.0.1:9",
            token: &token,
        };
        assert!(matches!(
            gone.instances(space, "staging", None).await,
            Err(BrokerError::Unreachable(e)) if e.exit_code() == 4
        ));
    }

    /// A 200 that is not a Wayback list, or holds an instance this CLI cannot read, says so.
    #[test]
    fn a_document_that_is_not_a_list_of_instances_says_why() {
        for (text, says, why) in [
            (
                "<html>login</html>",
                "without an `instances` list",
                "not JSON",
            ),
            (
                r#"{"resources": []}"#,
                "without an `instances` list",
                "another API's JSON",
            ),
            (
                r#"{"space_guid": "s", "instances": [{"instance_id": 7}]}"#,
                "an instance this cf-wayback cannot read",
                "a malformed instance",
            ),
        ] {
            let err = read_list(text)
                .err()
                .unwrap_or_else(|| panic!("{why}: read"));
            assert!(err.contains(says), "{why}: {err}");
        }
        let with_more = test_support::instance(json!({"replicas": 2, "state": "stopped"}));
        let list = read_list(&json!({"instances": [with_more.clone()]}).to_string()).unwrap();
        assert_eq!(list[0].raw, with_more, "passed through whole");
        assert_eq!(list[0].instance.state.as_str(), "stopped");
    }
}
