//! The Cloud Controller and UAA calls of the dashboard's single sign-on: where browsers sign
//! in (the UAA's login server), the authorization-code exchange (`POST /oauth/token` with the
//! dashboard client's basic auth and the PKCE `code_verifier`), and the CC's
//! `GET /v3/service_instances/:guid/permissions` asked with the user's own token.
//!
//! The code exchange is sent once, never retried: an authorization code is single-use, and a
//! retry after a lost answer would only be refused. Tokens and the client secret are
//! [`SecretString`]s and never reach logs or errors.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{error_detail, CcError, CloudController};
use crate::domain::InstanceId;

/// The dashboard's UAA client (the catalog's `dashboard_client`).
pub struct SsoClient<'a> {
    pub id: &'a str,
    pub secret: &'a SecretString,
    pub redirect_uri: &'a str,
}

/// What the CC says a user may do with a service instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct InstancePermissions {
    pub read: bool,
    #[serde(default)]
    pub manage: bool,
}

#[derive(Deserialize)]
struct CodeTokenResponse {
    access_token: SecretString,
}

impl CloudController {
    /// The base URL browsers sign in at: `cc.uaa_url` when configured, else the CC root's
    /// `login` link (the login server, which serves `/oauth/authorize`), else its `uaa` link.
    pub async fn login_base_url(&self) -> Result<String, CcError> {
        self.login_url
            .get_or_try_init(|| async {
                if let Some(configured) = self.uaa_url.get() {
                    return Ok(configured.clone());
                }
                let links = self.root_links().await?;
                links.login.or(links.uaa).map(|l| l.href.trim_end_matches('/').to_string()).ok_or_else(|| {
                    CcError::Decode {
                        what: "find the login server from the Cloud Controller root (GET /)",
                        message: "the root document has neither a `login` nor a `uaa` link; set cc.uaa_url".into(),
                    }
                })
            })
            .await
            .cloned()
    }

    /// Exchanges an authorization code for the user's access token (sent once, see the module
    /// doc). A refusal (a used, expired or foreign code; a wrong verifier) is `Status` 400/401.
    pub async fn exchange_code(
        &self,
        client: &SsoClient<'_>,
        code: &str,
        code_verifier: &SecretString,
    ) -> Result<SecretString, CcError> {
        const WHAT: &str = "exchange the dashboard's authorization code at the UAA";
        let url = format!("{}/oauth/token", self.uaa_base_url().await?);
        let response = self
            .send_up_to(WHAT, 1, || {
                self.http
                    .post(&url)
                    .basic_auth(client.id, Some(client.secret.expose_secret()))
                    .header(reqwest::header::ACCEPT, "application/json")
                    .form(&[
                        ("grant_type", "authorization_code"),
                        ("code", code),
                        ("redirect_uri", client.redirect_uri),
                        ("code_verifier", code_verifier.expose_secret()),
                    ])
            })
            .await?;
        let status = response.status().as_u16();
        if status != 200 {
            let body = response.text().await.unwrap_or_default();
            return Err(CcError::Status {
                what: WHAT,
                status,
                detail: oauth_error(&body),
            });
        }
        let body: CodeTokenResponse = response.json().await.map_err(|e| CcError::Decode {
            what: WHAT,
            message: e.to_string(),
        })?;
        Ok(body.access_token)
    }

    /// `GET /v3/service_instances/:guid/permissions` with the user's token: `None` when the CC
    /// answers 403 or 404 (the user may not know of the instance).
    pub async fn instance_permissions(
        &self,
        id: &InstanceId,
        user_token: &SecretString,
    ) -> Result<Option<InstancePermissions>, CcError> {
        const WHAT: &str = "ask the Cloud Controller for the user's permissions on an instance";
        let url = format!(
            "{}/v3/service_instances/{}/permissions",
            self.api_url,
            id.as_str()
        );
        let response = self
            .send(WHAT, || {
                self.http.get(&url).bearer_auth(user_token.expose_secret())
            })
            .await?;
        match response.status().as_u16() {
            200 => response
                .json::<InstancePermissions>()
                .await
                .map(Some)
                .map_err(|e| CcError::Decode {
                    what: WHAT,
                    message: e.to_string(),
                }),
            403 | 404 => Ok(None),
            status => {
                let body = response.text().await.unwrap_or_default();
                Err(CcError::Status {
                    what: WHAT,
                    status,
                    detail: error_detail(&body),
                })
            }
        }
    }
}

/// The OAuth2 error of a token endpoint's refusal (`error`: `error_description`), else the
/// CC-style detail. Never echoes a code or a token: the UAA does not put them in errors.
fn oauth_error(body: &str) -> String {
    #[derive(Deserialize)]
    struct OauthError {
        error: String,
        #[serde(default)]
        error_description: String,
    }
    match serde_json::from_str::<OauthError>(body) {
        Ok(e) => format!("{}: {}", e.error, e.error_description),
        Err(_) => error_detail(body),
    }
}
