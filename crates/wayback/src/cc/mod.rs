//! A client of the Cloud Controller v3 API, for the one thing the broker needs from it: the
//! name of a service instance when the platform's OSB request did not carry one (older
//! platforms, other clients), and the current names of live instances for the reconcile.
//!
//! It authenticates as a UAA client (client-credentials grant, [`uaa`]); the token is cached
//! and renewed before it expires, and a 401 renews it once. Every call has timeouts and is
//! retried with jittered backoff ([`backoff`]) when the failure is transient (connection
//! errors, timeouts, 5xx, 429); [`CcError::is_permanent`] tells callers which failures will
//! not heal by themselves. The client secret and the tokens are [`SecretString`]s and never
//! reach logs or errors.
//!
//! Imports `config` and `domain` only; must not import `osb`, `jobs`, `broker` or `store`:
//! what to do with a name is the caller's business (`maintenance::names`).

pub mod backoff;
mod sso;
mod uaa;
mod user;

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::{Mutex, OnceCell};

use crate::config::CcSettings;
use crate::domain::InstanceId;
use backoff::Backoff;
pub use sso::{InstancePermissions, SsoClient};
pub use user::UaaKey;

/// One answer of the Cloud Controller to [`CloudController::call`], read whole.
#[derive(Debug)]
pub struct CcAnswer {
    pub status: u16,
    /// The `Location` header (an asynchronous operation's job).
    pub location: Option<String>,
    pub body: String,
}

/// A failed Cloud Controller or UAA call, saying which call and why.
#[derive(Debug, thiserror::Error)]
pub enum CcError {
    #[error("Cloud Controller client settings: {0}")]
    Config(String),
    #[error("{what}: {source}")]
    Transport {
        what: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("{what}: HTTP {status}: {detail}")]
    Status {
        what: &'static str,
        status: u16,
        detail: String,
    },
    #[error("{what}: the UAA client is not authorised (HTTP {status}); check cc.client_id, cc.client_secret and the client's scopes (cloud_controller.admin_read_only or cloud_controller.global_auditor)")]
    Unauthorized { what: &'static str, status: u16 },
    #[error("{what}: unexpected response: {message}")]
    Decode { what: &'static str, message: String },
}

impl CcError {
    /// True when trying again later will not help without an operator's change.
    pub fn is_permanent(&self) -> bool {
        match self {
            CcError::Config(_) | CcError::Unauthorized { .. } | CcError::Decode { .. } => true,
            CcError::Transport { .. } => false,
            CcError::Status { status, .. } => !retryable_status(*status),
        }
    }
}

fn retryable_status(status: u16) -> bool {
    status >= 500 || status == 429 || status == 408
}

/// What the broker keeps of a `GET /v3/service_instances/:guid`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceInstance {
    pub guid: String,
    pub name: String,
    /// When the CC last changed the instance (a rename does); `None` if it did not say.
    pub updated_at: Option<DateTime<Utc>>,
    pub space_guid: Option<String>,
}

#[derive(Deserialize)]
struct WireInstance {
    guid: String,
    name: String,
    #[serde(default)]
    updated_at: Option<DateTime<Utc>>,
    #[serde(default)]
    relationships: Option<WireRelationships>,
}

#[derive(Deserialize)]
struct WireRelationships {
    space: Option<WireToOne>,
}

#[derive(Deserialize)]
struct WireToOne {
    data: Option<WireGuid>,
}

#[derive(Deserialize)]
struct WireGuid {
    guid: String,
}

/// The CC's error envelope: `{"errors": [{"code", "title", "detail"}]}`.
#[derive(Deserialize)]
struct WireErrors {
    errors: Vec<WireError>,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(default)]
    title: String,
    #[serde(default)]
    detail: String,
}

/// The readable part of an error body: the CC's `title: detail`s, or the start of the text.
fn error_detail(body: &str) -> String {
    if let Ok(e) = serde_json::from_str::<WireErrors>(body) {
        if !e.errors.is_empty() {
            return e
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.title, e.detail))
                .collect::<Vec<_>>()
                .join("; ");
        }
    }
    let body = body.trim();
    match body.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &body[..cut]),
        None if body.is_empty() => "(empty body)".into(),
        None => body.to_string(),
    }
}

/// A Cloud Controller v3 client; share it behind an `Arc`.
pub struct CloudController {
    http: reqwest::Client,
    api_url: String,
    uaa_url: OnceCell<String>,
    /// Where browsers sign in (the root's `login` link); see `sso`.
    login_url: OnceCell<String>,
    client_id: String,
    client_secret: SecretString,
    token: Mutex<Option<uaa::Token>>,
    attempts: u32,
    backoff: Backoff,
}

impl std::fmt::Debug for CloudController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudController")
            .field("api_url", &self.api_url)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl CloudController {
    /// The client the settings describe; `None` when `cc.api_url` is unset (feature off).
    pub fn from_settings(settings: &CcSettings) -> Result<Option<CloudController>, CcError> {
        let Some(api_url) = settings.api_url.as_deref() else {
            return Ok(None);
        };
        let secret = settings.client_secret.clone().ok_or_else(|| {
            CcError::Config("cc.api_url is set but cc.client_secret is not".into())
        })?;
        if settings.client_id.is_empty() {
            return Err(CcError::Config(
                "cc.api_url is set but cc.client_id is not".into(),
            ));
        }
        if settings.skip_tls_verify {
            tracing::warn!(api = api_url, "cc.skip_tls_verify is on: the Cloud Controller's and UAA's TLS certificates are not checked (labs only)");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(settings.connect_timeout_secs))
            .timeout(Duration::from_secs(settings.request_timeout_secs))
            .danger_accept_invalid_certs(settings.skip_tls_verify)
            .user_agent(concat!("wayback/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CcError::Config(format!("build the HTTP client: {e}")))?;
        let uaa_url = OnceCell::new();
        if let Some(u) = settings.uaa_url.as_deref() {
            let _ = uaa_url.set(u.trim_end_matches('/').to_string());
        }
        Ok(Some(CloudController {
            http,
            api_url: api_url.trim_end_matches('/').to_string(),
            uaa_url,
            login_url: OnceCell::new(),
            client_id: settings.client_id.clone(),
            client_secret: secret,
            token: Mutex::new(None),
            attempts: settings.attempts.max(1),
            backoff: Backoff {
                base: Duration::from_millis(200),
                max: Duration::from_secs(5),
            },
        }))
    }

    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// `GET /v3/service_instances/:guid`: `None` when the CC does not know the instance (404).
    pub async fn service_instance(
        &self,
        id: &InstanceId,
    ) -> Result<Option<ServiceInstance>, CcError> {
        const WHAT: &str = "get service instance from the Cloud Controller";
        let url = format!("{}/v3/service_instances/{}", self.api_url, id.as_str());
        let mut renewed = false;
        loop {
            let token = self.token().await?;
            let response = self
                .send(WHAT, || {
                    self.http.get(&url).bearer_auth(token.expose_secret())
                })
                .await?;
            let status = response.status().as_u16();
            match status {
                200 => {
                    let wire: WireInstance =
                        response.json().await.map_err(|e| CcError::Decode {
                            what: WHAT,
                            message: e.to_string(),
                        })?;
                    return Ok(Some(ServiceInstance {
                        guid: wire.guid,
                        name: wire.name,
                        updated_at: wire.updated_at,
                        space_guid: wire
                            .relationships
                            .and_then(|r| r.space)
                            .and_then(|s| s.data)
                            .map(|d| d.guid),
                    }));
                }
                404 => return Ok(None),
                // The token was revoked or the UAA's keys rotated: renew it once.
                401 if !renewed => {
                    tracing::info!("the Cloud Controller refused the UAA token; renewing it");
                    self.forget_token(&token).await;
                    renewed = true;
                }
                401 | 403 => return Err(CcError::Unauthorized { what: WHAT, status }),
                _ => {
                    let body = response.text().await.unwrap_or_default();
                    return Err(CcError::Status {
                        what: WHAT,
                        status,
                        detail: error_detail(&body),
                    });
                }
            }
        }
    }

    /// A call to the CC's API as the UAA client, for operator commands beyond the broker's own
    /// lookups (`wayback register-broker`): `path` under `api_url` (or the path and query of a
    /// URL the CC gave, so the token never goes to another host), the token attached and
    /// renewed once on a 401, transient failures retried when `retry` (not for a create that
    /// must not run twice). Every other status is the caller's, with its body.
    pub async fn call(
        &self,
        what: &'static str,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
        retry: bool,
    ) -> Result<CcAnswer, CcError> {
        let url = match reqwest::Url::parse(path) {
            Ok(u) => match u.query() {
                Some(q) => format!("{}{}?{q}", self.api_url, u.path()),
                None => format!("{}{}", self.api_url, u.path()),
            },
            Err(_) => format!("{}{path}", self.api_url),
        };
        let attempts = if retry { self.attempts } else { 1 };
        let mut renewed = false;
        loop {
            let token = self.token().await?;
            let response = self
                .send_up_to(what, attempts, || {
                    let r = self
                        .http
                        .request(method.clone(), &url)
                        .bearer_auth(token.expose_secret());
                    match body {
                        Some(b) => r.json(b),
                        None => r,
                    }
                })
                .await?;
            let status = response.status().as_u16();
            if status == 401 && !renewed {
                tracing::info!("the Cloud Controller refused the UAA token; renewing it");
                self.forget_token(&token).await;
                renewed = true;
                continue;
            }
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(String::from);
            let body = response.text().await.unwrap_or_default();
            return Ok(CcAnswer {
                status,
                location,
                body,
            });
        }
    }

    /// Gets a client-credentials token now (a command checks its credentials before it acts).
    pub async fn check_credentials(&self) -> Result<(), CcError> {
        self.token().await.map(|_| ())
    }

    /// `GET url` (with `bearer`, if any) answered 200, its JSON body parsed.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        url: &str,
        bearer: Option<&SecretString>,
    ) -> Result<T, CcError> {
        let response = self
            .send(what, || {
                let r = self.http.get(url);
                match bearer {
                    Some(t) => r.bearer_auth(t.expose_secret()),
                    None => r,
                }
            })
            .await?;
        let status = response.status().as_u16();
        if status != 200 {
            let body = response.text().await.unwrap_or_default();
            return Err(CcError::Status {
                what,
                status,
                detail: error_detail(&body),
            });
        }
        response.json().await.map_err(|e| CcError::Decode {
            what,
            message: e.to_string(),
        })
    }

    /// Sends the request `build` makes, again on transport errors and retryable statuses
    /// (jittered backoff), up to `attempts` times. Any other status is the caller's.
    async fn send(
        &self,
        what: &'static str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, CcError> {
        self.send_up_to(what, self.attempts, build).await
    }

    async fn send_up_to(
        &self,
        what: &'static str,
        attempts: u32,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, CcError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure = match build().send().await {
                Ok(r) if !retryable_status(r.status().as_u16()) => return Ok(r),
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body = r.text().await.unwrap_or_default();
                    CcError::Status {
                        what,
                        status,
                        detail: error_detail(&body),
                    }
                }
                Err(e) => CcError::Transport {
                    what,
                    source: e.without_url(),
                },
            };
            if attempt >= attempts {
                return Err(failure);
            }
            let wait = self.backoff.delay(attempt - 1);
            tracing::debug!(error = %failure, attempt, wait_ms = wait.as_millis() as u64, "Cloud Controller call failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_details_come_from_the_cc_envelope() {
        let body = r#"{"errors":[{"code":10010,"title":"CF-ResourceNotFound","detail":"Service instance not found"}]}"#;
        assert_eq!(
            error_detail(body),
            "CF-ResourceNotFound: Service instance not found"
        );
        assert_eq!(error_detail("  "), "(empty body)");
        assert_eq!(error_detail(&"x".repeat(400)).chars().count(), 301);
    }

    #[test]
    fn only_transient_failures_are_retried() {
        let status = |status| CcError::Status {
            what: "t",
            status,
            detail: String::new(),
        };
        assert!(!status(503).is_permanent());
        assert!(!status(429).is_permanent());
        assert!(status(400).is_permanent());
        assert!(CcError::Unauthorized {
            what: "t",
            status: 401
        }
        .is_permanent());
    }

    #[test]
    fn off_without_an_api_url_and_secret_free_debug() {
        assert!(CloudController::from_settings(&CcSettings::default())
            .unwrap()
            .is_none());
        let settings = CcSettings {
            api_url: Some("https://api.example.org/".into()),
            client_id: "wayback".into(),
            client_secret: Some("hunter2".to_string().into()),
            ..CcSettings::default()
        };
        let cc = CloudController::from_settings(&settings).unwrap().unwrap();
        assert_eq!(cc.api_url(), "https://api.example.org");
        assert!(!format!("{cc:?}").contains("hunter2"));
    }
}
