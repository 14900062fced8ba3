//! Who is asking, and may they see a space.
//!
//! `Authorization: Basic` with the broker's OSB credentials is the operator, who sees every
//! space. `Authorization: bearer <UAA access token>` is a user: the token is verified
//! ([`super::jwt`]), then the Cloud Controller is asked `GET /v3/spaces/:guid` *with the user's
//! token*, so the platform's own roles decide. 200 allows; 403 and 404 deny alike (the caller
//! learns nothing about spaces they cannot see); anything else is 503. Verdicts are cached
//! for [`SPACE_TTL`] per (token digest, space): `cf backups` lists and then details, and the
//! CC need not be asked twice a second.
//!
//! Tokens are [`SecretString`]s, cached only as SHA-256 digests, never logged (the `jti` and
//! `user_name` are, at debug level).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::jwt::{TokenClaims, TokenVerifier};
use crate::cc::CloudController;
use crate::domain::SpaceGuid;
use crate::osb::BasicAuth;

/// How long a space verdict is reused.
pub const SPACE_TTL: Duration = Duration::from_secs(30);
/// Cached verdicts beyond which stale ones are swept.
const CACHE_SWEEP_AT: usize = 4096;

/// An authenticated caller.
pub enum Caller {
    /// The broker's basic credentials: every space.
    Operator,
    User(User),
}

pub struct User {
    token: SecretString,
    digest: [u8; 32],
    pub claims: TokenClaims,
}

/// (token digest, space) → (allowed, when the CC said so).
type Verdicts = HashMap<([u8; 32], String), (bool, Instant)>;

struct Bearer {
    cc: Arc<CloudController>,
    verifier: TokenVerifier,
    verdicts: Mutex<Verdicts>,
}

pub struct Authenticator {
    basic: BasicAuth,
    /// None without `cc.api_url`: bearer tokens cannot be checked.
    bearer: Option<Bearer>,
}

impl Authenticator {
    pub fn new(basic: BasicAuth, cc: Option<Arc<CloudController>>) -> Self {
        Self {
            basic,
            bearer: cc.map(|cc| Bearer {
                verifier: TokenVerifier::new(cc.clone()),
                cc,
                verdicts: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The caller an `Authorization` header names; 401 (or 503) otherwise.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Caller, ApiError> {
        let Some(header) = header.map(str::trim).filter(|h| !h.is_empty()) else {
            return Err(ApiError::unauthorized(
                "No Authorization header: send `Authorization: bearer <token>` with your UAA \
                 access token (cf oauth-token), or the broker's basic credentials.",
            ));
        };
        let (scheme, value) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return if self.basic.check(Some(&format!("Basic {}", value.trim()))) {
                Ok(Caller::Operator)
            } else {
                Err(ApiError::unauthorized(
                    "Wrong basic credentials: use the broker's OSB username and password.",
                ))
            };
        }
        if !scheme.eq_ignore_ascii_case("bearer") || value.trim().is_empty() {
            return Err(ApiError::unauthorized(
                "Malformed Authorization header: use `bearer <UAA access token>` or `Basic …`.",
            ));
        }
        let Some(bearer) = &self.bearer else {
            return Err(ApiError::unavailable(
                "This broker cannot check UAA tokens: the operator must set WAYBACK_CC_API_URL \
                 (cc.api_url) and the Cloud Controller client settings. Operators may use the \
                 broker's basic credentials meanwhile.",
            ));
        };
        let token = value.trim();
        let claims = bearer.verifier.verify(token).await.inspect_err(|e| {
            tracing::debug!(reason = %e.description, "bearer token refused");
        })?;
        tracing::debug!(
            jti = claims.jti.as_deref().unwrap_or(""),
            user = claims.user_name.as_deref().unwrap_or(""),
            "bearer token verified"
        );
        Ok(Caller::User(User {
            digest: Sha256::digest(token.as_bytes()).into(),
            token: SecretString::from(token.to_string()),
            claims,
        }))
    }

    /// Whether `caller` may see `space`: Ok(false) when the Cloud Controller says no (or the
    /// GUID cannot be one), Err (503, or 401 for a token the CC revoked) when it cannot tell.
    pub async fn may_see_space(&self, caller: &Caller, space: &str) -> Result<bool, ApiError> {
        let user = match caller {
            Caller::Operator => return Ok(true),
            Caller::User(user) => user,
        };
        let Some(bearer) = &self.bearer else {
            return Ok(false); // unreachable: users exist only with a bearer checker
        };
        if SpaceGuid::parse(space).is_err() {
            return Ok(false);
        }
        let key = (user.digest, space.to_string());
        if let Some((allowed, at)) = bearer.verdicts.lock().expect("verdicts").get(&key) {
            if at.elapsed() < SPACE_TTL {
                return Ok(*allowed);
            }
        }
        let path = format!("/v3/spaces/{space}");
        let allowed =
            match bearer.cc.get_status_as_user(&path, &user.token).await {
                Ok(200) => true,
                Ok(403 | 404) => false,
                Ok(401) => return Err(ApiError::unauthorized(
                    "The Cloud Controller refused your token (revoked, or you logged out): log \
                     in again (cf login).",
                )),
                Ok(status) => {
                    tracing::warn!(
                        status,
                        "the Cloud Controller gave no verdict on a space check"
                    );
                    return Err(cc_unavailable());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check a space with the Cloud Controller");
                    return Err(cc_unavailable());
                }
            };
        tracing::debug!(
            jti = user.claims.jti.as_deref().unwrap_or(""),
            user = user.claims.user_name.as_deref().unwrap_or(""),
            space,
            allowed,
            "space checked"
        );
        let mut verdicts = bearer.verdicts.lock().expect("verdicts");
        if verdicts.len() >= CACHE_SWEEP_AT {
            verdicts.retain(|_, (_, at)| at.elapsed() < SPACE_TTL);
        }
        verdicts.insert(key, (allowed, Instant::now()));
        Ok(allowed)
    }
}

fn cc_unavailable() -> ApiError {
    ApiError::unavailable(
        "The broker cannot reach the Cloud Controller to check your access to the space; try \
         again later.",
    )
}
