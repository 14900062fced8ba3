//! The sign-in: OAuth2's authorization-code flow (RFC 6749 §4.1) with PKCE (RFC 7636, S256)
//! against the platform's UAA, then the Cloud Controller's verdict on the instance.
//!
//! 1. [`Sso::start`]: a fresh `state` (256 random bits) and PKCE `code_verifier` (256 random
//!    bits, base64url: 43 characters); the store keeps the state's SHA-256, the instance and
//!    the verifier sealed with the keyring, so any broker sharing the state database can finish
//!    the sign-in, also after a restart. The browser goes to the UAA's `/oauth/authorize`
//!    with the state and `code_challenge` = base64url(SHA-256(verifier)), and keeps the state
//!    in a short-lived cookie scoped to the callback, which binds the sign-in to this browser
//!    (no one can finish a sign-in they did not start, so no one can sign a victim in as
//!    themselves).
//! 2. [`Sso::finish`] at the callback: the state must be the cookie's and a stored sign-in of
//!    the last 10 minutes, taken (deleted) in the same statement, so a replayed state finds
//!    nothing. The code is exchanged at `/oauth/token` with the dashboard client's basic auth
//!    and the verifier; the access token is verified ([`TokenVerifier`]: RS256 signature, `exp`,
//!    `iss`, `aud` naming `cloud_controller_service_permissions`) and must have been issued to
//!    the dashboard client (`cid`). Then the Cloud Controller is asked, with that token,
//!    `GET /v3/service_instances/:guid/permissions`: only `read: true` signs the user in. The
//!    token is dropped afterwards; the session cookie carries no token.
//!
//! PKCE is always sent: the UAA supports S256 since 4.x (2017), and an authorization server
//! that does not know PKCE ignores the parameters (RFC 7636 §5), so it costs nothing there.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::session::{Session, SessionKeys};
use crate::api::jwt::TokenVerifier;
use crate::cc::{CloudController, SsoClient};
use crate::domain::InstanceId;
use crate::store::Store;

/// The scopes the dashboard asks for: who the user is, and the CC's permissions endpoint.
pub const SCOPE: &str = "openid cloud_controller_service_permissions.read";
/// The `aud` the UAA gives a token with [`SCOPE`] (a scope's resource is its part before the dot).
pub const AUDIENCE: &str = "cloud_controller_service_permissions";
/// How long a started sign-in may take to come back.
pub const LOGIN_TTL: Duration = Duration::from_secs(10 * 60);
/// The cookie that binds a started sign-in to the browser that started it.
pub const STATE_COOKIE: &str = "wayback_dashboard_login";
/// The path of the callback (the registered redirect URI's).
pub const CALLBACK_PATH: &str = "/dashboard/callback";

/// The dashboard's sign-in, when configured.
pub struct Sso {
    pub(super) client_id: String,
    pub(super) client_secret: SecretString,
    pub(super) redirect_uri: String,
    pub(super) cc: Arc<CloudController>,
    /// Verifies the user's access token for [`AUDIENCE`].
    pub(super) verifier: TokenVerifier,
    pub(super) store: Store,
    pub(super) sessions: SessionKeys,
    /// Cookies carry `Secure` (the external URL is https).
    pub(super) secure: bool,
    pub(super) session_life: Duration,
}

/// A sign-in started: where to send the browser, and the state to keep in its cookie.
pub struct Started {
    pub authorize_url: String,
    pub state: String,
}

/// Why a sign-in did not finish.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// No such state, used already, expired, or not this browser's.
    #[error("the sign-in is unknown, used or expired")]
    UnknownState,
    /// The UAA refused the code or the token does not verify.
    #[error("the UAA's answer was refused: {0}")]
    Refused(String),
    /// The CC says the user may not read the instance (or does not know it).
    #[error("the user may not read the instance")]
    Forbidden,
    /// The UAA, the CC or the store did not answer as they should; logged where handled.
    #[error("{0}")]
    Unavailable(String),
}

impl Sso {
    /// Starts a sign-in for instance `id` (see the module doc, step 1).
    pub async fn start(&self, id: &InstanceId) -> Result<Started, LoginError> {
        let state = random_token();
        let verifier = SecretString::from(random_token());
        let challenge = B64.encode(Sha256::digest(verifier.expose_secret().as_bytes()));
        let now = crate::store::now_millis();
        self.store
            .insert_dashboard_login(
                &state_hash(&state),
                id,
                &verifier,
                now,
                now - LOGIN_TTL.as_millis() as i64,
            )
            .await
            .map_err(|e| LoginError::Unavailable(format!("record a dashboard sign-in: {e}")))?;
        let login = self.cc.login_base_url().await.map_err(|e| {
            LoginError::Unavailable(format!("find the UAA for a dashboard sign-in: {e}"))
        })?;
        let url = reqwest::Url::parse_with_params(
            &format!("{login}/oauth/authorize"),
            &[
                ("response_type", "code"),
                ("client_id", self.client_id.as_str()),
                ("redirect_uri", self.redirect_uri.as_str()),
                ("scope", SCOPE),
                ("state", state.as_str()),
                ("code_challenge", challenge.as_str()),
                ("code_challenge_method", "S256"),
            ],
        )
        .map_err(|e| LoginError::Unavailable(format!("the UAA's URL {login:?}: {e}")))?;
        Ok(Started {
            authorize_url: url.into(),
            state,
        })
    }

    /// Takes the sign-in `state` names, if `browser_state` (the state cookie) is the same; a
    /// sign-in the user cancelled at the UAA ends here too.
    pub async fn take(
        &self,
        state: &str,
        browser_state: Option<&str>,
    ) -> Result<crate::store::PendingLogin, LoginError> {
        let same_browser =
            browser_state.is_some_and(|b| bool::from(b.as_bytes().ct_eq(state.as_bytes())));
        if state.is_empty() || state.len() > 128 || !same_browser {
            return Err(LoginError::UnknownState);
        }
        let not_before = crate::store::now_millis() - LOGIN_TTL.as_millis() as i64;
        self.store
            .take_dashboard_login(&state_hash(state), not_before)
            .await
            .map_err(|e| LoginError::Unavailable(format!("take a dashboard sign-in: {e}")))?
            .ok_or(LoginError::UnknownState)
    }

    /// Finishes the sign-in `state` names with `code` (see the module doc, step 2): the
    /// session to sign into the cookie.
    pub async fn finish(
        &self,
        code: &str,
        state: &str,
        browser_state: Option<&str>,
    ) -> Result<Session, LoginError> {
        let pending = self.take(state, browser_state).await?;
        let client = SsoClient {
            id: &self.client_id,
            secret: &self.client_secret,
            redirect_uri: &self.redirect_uri,
        };
        let token = self
            .cc
            .exchange_code(&client, code, &pending.verifier)
            .await
            .map_err(|e| match e.is_permanent() {
                true => LoginError::Refused(e.to_string()),
                false => LoginError::Unavailable(e.to_string()),
            })?;
        let claims = self
            .verifier
            .verify(token.expose_secret())
            .await
            .map_err(|e| match e.status.as_u16() {
                401 => LoginError::Refused(e.description),
                _ => LoginError::Unavailable(e.description),
            })?;
        if claims.cid.as_deref() != Some(self.client_id.as_str()) {
            return Err(LoginError::Refused(
                "the token was not issued to the dashboard's client".into(),
            ));
        }
        let permissions = self
            .cc
            .instance_permissions(&pending.instance_id, &token)
            .await
            .map_err(|e| LoginError::Unavailable(e.to_string()))?;
        if !permissions.is_some_and(|p| p.read) {
            return Err(LoginError::Forbidden);
        }
        let now = chrono::Utc::now().timestamp();
        Ok(Session {
            instance: pending.instance_id.as_str().to_string(),
            user_id: claims.user_id.unwrap_or_default(),
            user_name: claims.user_name.unwrap_or_default(),
            issued_at: now,
            expires_at: now + self.session_life.as_secs() as i64,
        })
    }
}

/// 256 random bits, base64url without padding (43 characters: a valid PKCE verifier too).
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the OS random generator works");
    B64.encode(bytes)
}

/// What the store keeps of a state: its SHA-256, hex.
fn state_hash(state: &str) -> String {
    Sha256::digest(state.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_verifiers_are_fresh_43_character_base64url() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_eq!(state_hash("x").len(), 64);
        assert_ne!(state_hash(&a), a);
    }

    #[test]
    fn the_challenge_is_rfc_7636_s256() {
        // RFC 7636 appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert_eq!(
            B64.encode(Sha256::digest(verifier.as_bytes())),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
