//! Calls made for someone else: the UAA's verification keys (`GET /token_keys`, no
//! credentials) and Cloud Controller reads with a *user's* access token, which the CC answers
//! with that user's permissions (the broker's own API asks it whether a user may see a space).
//!
//! Same HTTP client, timeouts, TLS settings and transient-failure retries as the rest of the
//! client. The user's token is a [`SecretString`] and never reaches logs or errors.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{CcError, CloudController};

/// One entry of the UAA's `GET /token_keys` (`{"keys": [...]}`).
#[derive(Debug, Clone, Deserialize)]
pub struct UaaKey {
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub alg: Option<String>,
    #[serde(default)]
    pub kty: Option<String>,
    /// The public key as PEM (RSA) or, for symmetric keys, the secret itself.
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub n: Option<String>,
    #[serde(default)]
    pub e: Option<String>,
}

#[derive(Deserialize)]
struct UaaKeys {
    keys: Vec<UaaKey>,
}

impl CloudController {
    /// `GET <uaa>/token_keys`: the keys the UAA signs tokens with.
    pub async fn uaa_token_keys(&self) -> Result<Vec<UaaKey>, CcError> {
        const WHAT: &str = "get the UAA's token keys";
        let url = format!("{}/token_keys", self.uaa_base_url().await?);
        let keys: UaaKeys = self.get_json(WHAT, &url, None).await?;
        Ok(keys.keys)
    }

    /// `GET <api><path>` with a user's access token; the status the CC answered (after
    /// retrying transient failures). The body is not read: callers only need the verdict.
    pub async fn get_status_as_user(
        &self,
        path: &str,
        user_token: &SecretString,
    ) -> Result<u16, CcError> {
        const WHAT: &str = "ask the Cloud Controller with the user's token";
        let url = format!("{}{path}", self.api_url);
        let response = self
            .send(WHAT, || {
                self.http.get(&url).bearer_auth(user_token.expose_secret())
            })
            .await?;
        Ok(response.status().as_u16())
    }
}
