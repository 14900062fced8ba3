//! Verifying a UAA access token: RS256 only, against the UAA's `GET /token_keys`, with `exp`
//! (60 s leeway), `iss` = `<uaa>/oauth/token` and `cloud_controller` in `aud`.
//!
//! The keys are fetched on first use and kept. A token that names an unknown `kid` (the UAA
//! rotated its key) makes the verifier fetch them again, at most once per [`REFRESH_EVERY`],
//! so that a stream of forged key ids cannot make the broker hammer the UAA.
//!
//! A key's PEM `value` is preferred; its JWK `n`/`e` are the fallback, read leniently: the
//! UAA's docs show standard base64 with a leading sign byte, a current UAA emits base64url
//! without one. Symmetric (HS256) keys are ignored: a token the broker could verify with a
//! shared secret is one anybody holding that secret could forge.
//!
//! Imports `cc` (the key fetch) only; the token itself is never logged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::Mutex;

use super::error::ApiError;
use crate::cc::{CloudController, UaaKey};

/// The least time between two key fetches caused by unknown key ids.
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);
/// Clock skew tolerated on `exp`.
const LEEWAY_SECS: u64 = 60;
const AUDIENCE: &str = "cloud_controller";

/// What the broker keeps of a verified token (for logs: never the token itself).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TokenClaims {
    #[serde(default)]
    pub jti: Option<String>,
    #[serde(default)]
    pub user_name: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    /// The client the token was issued to (UAA's `cid`).
    #[serde(default)]
    pub cid: Option<String>,
}

#[derive(Default)]
struct KeyCache {
    loaded: bool,
    keys: HashMap<String, DecodingKey>,
    issuer: String,
    last_refresh: Option<Instant>,
}

pub struct TokenVerifier {
    cc: Arc<CloudController>,
    cache: Mutex<KeyCache>,
    /// The resource a token must name in `aud`.
    audience: &'static str,
}

impl TokenVerifier {
    /// A verifier of tokens for the Cloud Controller (`cloud_controller` in `aud`).
    pub fn new(cc: Arc<CloudController>) -> Self {
        Self::for_audience(cc, AUDIENCE)
    }

    /// A verifier of tokens that must name `audience` in `aud` (the UAA puts there the
    /// resources of the token's scopes: `cloud_controller_service_permissions` for the
    /// dashboard's `cloud_controller_service_permissions.read`).
    pub fn for_audience(cc: Arc<CloudController>, audience: &'static str) -> Self {
        Self {
            cc,
            cache: Mutex::new(KeyCache::default()),
            audience,
        }
    }

    /// The token's claims if the UAA signed it for the Cloud Controller and it is current.
    pub async fn verify(&self, token: &str) -> Result<TokenClaims, ApiError> {
        let kid = key_id(token)?;
        let (key, issuer) = self.key(&kid).await?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = LEEWAY_SECS;
        validation.set_issuer(&[&issuer]);
        validation.set_audience(&[self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        jsonwebtoken::decode::<TokenClaims>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|e| ApiError::unauthorized(describe(e.kind(), &issuer, self.audience)))
    }

    /// The key `kid` and the issuer tokens must name; fetches the keys on first use and again
    /// (rate-limited) for an unknown `kid`.
    async fn key(&self, kid: &str) -> Result<(DecodingKey, String), ApiError> {
        let mut cache = self.cache.lock().await;
        let mut fetched = false;
        if !cache.loaded {
            self.load(&mut cache).await?;
            fetched = true;
        }
        if !cache.keys.contains_key(kid)
            && !fetched
            && cache
                .last_refresh
                .map_or(true, |at| at.elapsed() >= REFRESH_EVERY)
        {
            tracing::info!(
                kid,
                "a token names an unknown UAA key id; fetching the UAA's keys again"
            );
            cache.last_refresh = Some(Instant::now());
            self.load(&mut cache).await?;
        }
        match cache.keys.get(kid) {
            Some(key) => Ok((key.clone(), cache.issuer.clone())),
            None => Err(ApiError::unauthorized(
                "The token names a signing key the UAA does not publish: log in again (cf login) \
                 and retry.",
            )),
        }
    }

    async fn load(&self, cache: &mut KeyCache) -> Result<(), ApiError> {
        let unavailable = |e: crate::cc::CcError| {
            tracing::warn!(error = %e, "cannot get the UAA's token keys");
            ApiError::unavailable(
                "The broker cannot reach the UAA to verify your token; try again later.",
            )
        };
        let uaa = self.cc.uaa_base_url().await.map_err(unavailable)?;
        let keys = self.cc.uaa_token_keys().await.map_err(unavailable)?;
        cache.keys = keys
            .iter()
            .filter_map(|k| Some((k.kid.clone()?, decoding_key(k)?)))
            .collect();
        cache.issuer = format!("{uaa}/oauth/token");
        cache.loaded = true;
        tracing::debug!(keys = cache.keys.len(), "loaded the UAA's token keys");
        Ok(())
    }
}

/// The `kid` of an RS256 token's header; 401 for anything else.
fn key_id(token: &str) -> Result<String, ApiError> {
    match jsonwebtoken::decode_header(token) {
        Ok(h) if h.alg != Algorithm::RS256 => Err(alg_refused(&format!("{:?}", h.alg))),
        Ok(h) => h.kid.ok_or_else(|| {
            ApiError::unauthorized(
                "The token's header names no key id (kid); use a UAA access token.",
            )
        }),
        // `none` and other algorithms jsonwebtoken does not know fail to parse: say which.
        Err(_) => match raw_alg(token) {
            Some(alg) => Err(alg_refused(&alg)),
            None => Err(ApiError::unauthorized(
                "The bearer value is not a JWT: send the UAA access token the cf CLI holds \
                 (cf oauth-token).",
            )),
        },
    }
}

fn alg_refused(alg: &str) -> ApiError {
    ApiError::unauthorized(format!(
        "The token is signed with {alg}; only RS256 tokens from the UAA are accepted."
    ))
}

/// The `alg` of a header jsonwebtoken cannot parse.
fn raw_alg(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value["alg"].as_str().map(String::from)
}

fn describe(kind: &ErrorKind, issuer: &str, audience: &str) -> String {
    match kind {
        ErrorKind::ExpiredSignature => {
            "The token has expired: log in again (cf login) and retry.".into()
        }
        ErrorKind::InvalidIssuer => format!(
            "The token was not issued by this platform's UAA (the broker accepts issuer {issuer}): \
             log in to the Cloud Foundry API this broker serves."
        ),
        ErrorKind::InvalidAudience => format!(
            "The token is not meant for the Cloud Controller (its audience lacks {audience}): \
             use the access token the cf CLI holds (cf oauth-token)."
        ),
        ErrorKind::InvalidSignature | ErrorKind::InvalidRsaKey(_) => {
            "The token's signature does not verify with the UAA's keys: log in again (cf login)."
                .into()
        }
        ErrorKind::InvalidAlgorithm => alg_refused("another algorithm").description,
        ErrorKind::MissingRequiredClaim(claim) => {
            format!("The token lacks the `{claim}` claim; use a UAA access token.")
        }
        ErrorKind::ImmatureSignature => {
            "The token is not valid yet (nbf); check the clocks.".into()
        }
        _ => "The bearer value is not a valid JWT: send the UAA access token the cf CLI holds \
              (cf oauth-token)."
            .into(),
    }
}

/// An RSA verification key from a `/token_keys` entry: the PEM `value`, else `n`/`e`.
pub fn decoding_key(key: &UaaKey) -> Option<DecodingKey> {
    if key.kty.as_deref().is_some_and(|t| t != "RSA")
        || key.alg.as_deref().is_some_and(|a| a != "RS256")
    {
        return None;
    }
    if let Some(pem) = &key.value {
        if let Ok(k) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
            return Some(k);
        }
    }
    let n = lenient_base64(key.n.as_deref()?)?;
    let e = lenient_base64(key.e.as_deref()?)?;
    Some(DecodingKey::from_rsa_raw_components(
        strip_sign(&n),
        strip_sign(&e),
    ))
}

/// base64url (current UAA) or standard base64 with padding (the UAA docs' form).
fn lenient_base64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(text))
        .ok()
}

/// A big-endian integer without the leading zero byte a signed encoding adds.
fn strip_sign(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The UAA docs' `/token_keys` example: PEM `value`, and `n` in standard base64 with a sign byte.
    const DOC_N: &str = "ANJufZdrvYg5zG61x36pDq59nVUN73wSanA7hVCtN3ftT2Rm1ZTQqp5KSCfLMhaaVvJY51sHj+/i4lqUaM9CO32G93fE44VfOmPfexZeAwa8YDOikyTrhP7sZ6A4WUNeC4DlNnJF4zsznU7JxjCkASwpdL6XFwbRSzGkm6b9aM4vIewyclWehJxUGVFhnYEzIQ65qnr38feVP9enOVgQzpKsCJ+xpa8vZ/UrscoG3/IOQM6VnLrGYAyyCGeyU1JXQW/KlNmtA5eJry2Tp+MD6I34/QsNkCArHOfj8H9tXz/oc3/tVkkR252L/Lmp0TtIGfHpBmoITP9h+oKiW6NpyCc=";

    fn key(value: Option<&str>, n: Option<&str>, alg: &str) -> UaaKey {
        UaaKey {
            kid: Some("k".into()),
            alg: Some(alg.into()),
            kty: Some(if alg == "HS256" { "MAC" } else { "RSA" }.into()),
            value: value.map(String::from),
            n: n.map(String::from),
            e: Some("AQAB".into()),
        }
    }

    #[test]
    fn reads_doc_style_and_current_moduli_and_ignores_symmetric_keys() {
        let n = lenient_base64(DOC_N).unwrap();
        assert_eq!((n.len(), n[0]), (257, 0), "doc form carries a sign byte");
        assert_eq!(strip_sign(&n).len(), 256);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(strip_sign(&n));
        assert_eq!(lenient_base64(&url).unwrap(), strip_sign(&n));
        assert!(decoding_key(&key(None, Some(DOC_N), "RS256")).is_some());
        assert!(decoding_key(&key(Some("not a pem"), Some(&url), "RS256")).is_some());
        assert!(decoding_key(&key(Some("tokenKey"), None, "HS256")).is_none());
        assert!(decoding_key(&key(None, None, "RS256")).is_none());
    }

    #[test]
    fn refuses_other_algorithms_before_looking_for_keys() {
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4In0.";
        assert!(key_id(none).unwrap_err().description.contains("none"));
        assert!(key_id("garbage")
            .unwrap_err()
            .description
            .contains("not a JWT"));
    }
}
