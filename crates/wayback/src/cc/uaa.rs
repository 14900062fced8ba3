//! The UAA side of the client: where the UAA is (configured, or the `uaa`/`login` link of the
//! CC root document `GET /`), and a client-credentials token (`POST /oauth/token` with the
//! client's id and secret as basic auth) kept until shortly before `expires_in` runs out.
//!
//! One token serves every lookup: the cache's lock is held while a token is fetched, so
//! callers that arrive meanwhile wait for that token instead of asking the UAA again.

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{error_detail, CcError, CloudController};

/// A cached access token and when to stop using it.
pub(super) struct Token {
    value: SecretString,
    renew_at: Instant,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: SecretString,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct Root {
    links: RootLinks,
}

#[derive(Deserialize)]
pub(super) struct RootLinks {
    #[serde(default)]
    pub(super) uaa: Option<Link>,
    #[serde(default)]
    pub(super) login: Option<Link>,
}

#[derive(Deserialize)]
pub(super) struct Link {
    pub(super) href: String,
}

/// How long before its expiry a token is renewed: a tenth of its life, at most a minute, so a
/// request never leaves with a token that expires on the way.
pub(super) fn renew_after(expires_in: Duration) -> Duration {
    let margin = (expires_in / 10).min(Duration::from_secs(60));
    expires_in - margin
}

impl CloudController {
    /// The UAA's base URL: configured, or found once from the CC root document.
    async fn uaa_url(&self) -> Result<&str, CcError> {
        const WHAT: &str = "find the UAA from the Cloud Controller root (GET /)";
        self.uaa_url
            .get_or_try_init(|| async {
                let links = self.root_links().await?;
                let href = links
                    .uaa
                    .or(links.login)
                    .map(|l| l.href)
                    .ok_or_else(|| CcError::Decode {
                        what: WHAT,
                        message: "the root document has neither a `uaa` nor a `login` link; set cc.uaa_url".into(),
                    })?;
                tracing::info!(uaa = %href, "found the UAA from the Cloud Controller root");
                Ok(href.trim_end_matches('/').to_string())
            })
            .await
            .map(String::as_str)
    }

    /// The links of the CC root document `GET /`.
    pub(super) async fn root_links(&self) -> Result<RootLinks, CcError> {
        const WHAT: &str = "read the Cloud Controller root (GET /)";
        let url = format!("{}/", self.api_url);
        let root: Root = self.get_json(WHAT, &url, None).await?;
        Ok(root.links)
    }

    /// The UAA's base URL (configured, or found from the CC root), without a trailing `/`.
    pub async fn uaa_base_url(&self) -> Result<String, CcError> {
        self.uaa_url().await.map(String::from)
    }

    /// A token that is still good, fetched from the UAA when there is none.
    pub(super) async fn token(&self) -> Result<SecretString, CcError> {
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref() {
            if Instant::now() < t.renew_at {
                return Ok(t.value.clone());
            }
        }
        let token = self.fetch_token().await?;
        let value = token.value.clone();
        *cached = Some(token);
        Ok(value)
    }

    /// Drops `stale` from the cache (unless another caller already replaced it).
    pub(super) async fn forget_token(&self, stale: &SecretString) {
        let mut cached = self.token.lock().await;
        if cached
            .as_ref()
            .is_some_and(|t| t.value.expose_secret() == stale.expose_secret())
        {
            *cached = None;
        }
    }

    async fn fetch_token(&self) -> Result<Token, CcError> {
        const WHAT: &str = "get a client-credentials token from the UAA";
        let url = format!("{}/oauth/token", self.uaa_url().await?);
        let asked_at = Instant::now();
        let response = self
            .send(WHAT, || {
                self.http
                    .post(&url)
                    .basic_auth(&self.client_id, Some(self.client_secret.expose_secret()))
                    .header(reqwest::header::ACCEPT, "application/json")
                    .form(&[("grant_type", "client_credentials")])
            })
            .await?;
        let status = response.status().as_u16();
        match status {
            200 => {}
            400 | 401 | 403 => return Err(CcError::Unauthorized { what: WHAT, status }),
            _ => {
                let body = response.text().await.unwrap_or_default();
                return Err(CcError::Status {
                    what: WHAT,
                    status,
                    detail: error_detail(&body),
                });
            }
        }
        let body: TokenResponse = response.json().await.map_err(|e| CcError::Decode {
            what: WHAT,
            message: e.to_string(),
        })?;
        // UAA always says; without it, assume a short life rather than forever.
        let life = Duration::from_secs(body.expires_in.unwrap_or(300));
        tracing::debug!(expires_in = life.as_secs(), "got a UAA token");
        Ok(Token {
            value: body.access_token,
            renew_at: asked_at + renew_after(life),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_renewed_before_they_expire() {
        assert_eq!(
            renew_after(Duration::from_secs(43199)),
            Duration::from_secs(43139)
        );
        assert_eq!(
            renew_after(Duration::from_secs(3600)),
            Duration::from_secs(3540)
        );
        assert_eq!(renew_after(Duration::from_secs(10)), Duration::from_secs(9));
        assert_eq!(renew_after(Duration::ZERO), Duration::ZERO);
    }
}
