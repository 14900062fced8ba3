//! The dashboard's session cookie: who signed in, for which instance, until when — signed,
//! never encrypted (it carries nothing secret, and no token: the user's access token is used
//! once at sign-in and dropped).
//!
//! The value is `v1.<key id>.<payload>.<tag>`: the payload is base64url JSON, the tag the
//! HMAC-SHA256 of `v1.<key id>.<payload>` under a key derived from the operator's keyring
//! ([`crate::crypto::Keyring::mac_key`], purpose [`PURPOSE`]). Every broker with the same keys
//! accepts it, before and after a restart, and a key rotation keeps sessions signed by the
//! older key readable while it stays configured. The tag is checked in constant time
//! (`ring::hmac::verify`) before the payload is parsed.
//!
//! The cookie is `HttpOnly`, `SameSite=Lax`, `Path=/dashboard/`, `Secure` when the broker's
//! external URL is https, and expires with the session. A session names one instance: a cookie
//! for another instance is refused, and the user signs in again for that one.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::crypto::Keyring;
use crate::domain::InstanceId;

/// The session cookie's name.
pub const COOKIE: &str = "wayback_dashboard";
/// The purpose the session's MAC key is derived for.
pub const PURPOSE: &str = "dashboard-session-v1";
const VERSION: &str = "v1";
/// Clock skew tolerated on `iat` (a session from another broker whose clock runs ahead).
const SKEW_SECS: i64 = 60;

/// A signed-in user's session for one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The instance it is for.
    #[serde(rename = "i")]
    pub instance: String,
    #[serde(rename = "u")]
    pub user_id: String,
    #[serde(rename = "n")]
    pub user_name: String,
    /// Unix seconds.
    #[serde(rename = "iat")]
    pub issued_at: i64,
    /// Unix seconds.
    #[serde(rename = "exp")]
    pub expires_at: i64,
}

impl Session {
    pub fn is_for(&self, id: &InstanceId) -> bool {
        self.instance == id.as_str()
    }
}

/// Why a cookie was refused (for the log at debug level; the user just signs in again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Malformed,
    UnknownKey,
    BadSignature,
    Expired,
}

/// Signs and verifies session cookies with the keyring.
pub struct SessionKeys {
    keyring: Arc<Keyring>,
}

impl SessionKeys {
    pub fn new(keyring: Arc<Keyring>) -> Self {
        Self { keyring }
    }

    /// The cookie value of `session`, signed with the current key.
    pub fn sign(&self, session: &Session) -> String {
        let (key_id, key) = self.keyring.current_mac_key(PURPOSE);
        let payload = B64.encode(serde_json::to_vec(session).expect("a session serialises"));
        let signed = format!("{VERSION}.{key_id}.{payload}");
        let tag = hmac::sign(&key, signed.as_bytes());
        format!("{signed}.{}", B64.encode(tag.as_ref()))
    }

    /// The session `value` carries, if its tag verifies and it has not expired at `now`
    /// (Unix seconds).
    pub fn verify(&self, value: &str, now: i64) -> Result<Session, Refused> {
        let (signed, tag) = value.rsplit_once('.').ok_or(Refused::Malformed)?;
        let mut parts = signed.splitn(3, '.');
        let (Some(VERSION), Some(key_id), Some(payload)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(Refused::Malformed);
        };
        let tag = B64.decode(tag).map_err(|_| Refused::Malformed)?;
        let key = self
            .keyring
            .mac_key(key_id, PURPOSE)
            .ok_or(Refused::UnknownKey)?;
        hmac::verify(&key, signed.as_bytes(), &tag).map_err(|_| Refused::BadSignature)?;
        let bytes = B64.decode(payload).map_err(|_| Refused::Malformed)?;
        let session: Session = serde_json::from_slice(&bytes).map_err(|_| Refused::Malformed)?;
        if now >= session.expires_at || session.issued_at > now + SKEW_SECS {
            return Err(Refused::Expired);
        }
        Ok(session)
    }
}

/// The `Set-Cookie` value that stores `value` under `name` for `max_age_secs` (0: deletes it).
pub fn set_cookie(name: &str, value: &str, path: &str, max_age_secs: i64, secure: bool) -> String {
    let mut cookie =
        format!("{name}={value}; Path={path}; Max-Age={max_age_secs}; HttpOnly; SameSite=Lax");
    if secure {
        cookie.push_str("; Secure");
    }
    cookie
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie_value<'a>(headers: impl Iterator<Item = &'a str>, name: &str) -> Option<&'a str> {
    headers
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::random_key_bytes;

    fn keys(ids: &[&str], current: &str) -> SessionKeys {
        let ring = Keyring::new(
            ids.iter()
                .map(|i| (i.to_string(), random_key_bytes()))
                .collect(),
            Some(current),
        )
        .unwrap();
        SessionKeys::new(Arc::new(ring))
    }

    fn session(exp: i64) -> Session {
        Session {
            instance: "6f8c2a4e-1b3d-4c5e-9f70-123456789abc".into(),
            user_id: "uid-alice".into(),
            user_name: "alice".into(),
            issued_at: 1_000,
            expires_at: exp,
        }
    }

    #[test]
    fn a_signed_session_verifies_until_it_expires() {
        let k = keys(&["k1"], "k1");
        let cookie = k.sign(&session(2_000));
        assert!(cookie.starts_with("v1.k1."), "{cookie}");
        assert_eq!(k.verify(&cookie, 1_500), Ok(session(2_000)));
        assert_eq!(k.verify(&cookie, 2_000), Err(Refused::Expired));
        // Issued in the future (beyond the skew): refused.
        assert_eq!(k.verify(&cookie, 900), Err(Refused::Expired));
    }

    #[test]
    fn altered_or_foreign_cookies_are_refused() {
        let k = keys(&["k1"], "k1");
        let cookie = k.sign(&session(2_000));
        let (signed, tag) = cookie.rsplit_once('.').unwrap();
        // Another payload under the old tag.
        let mut other = session(9_999);
        other.instance = "00000000-0000-4000-8000-000000000000".into();
        let forged_payload = B64.encode(serde_json::to_vec(&other).unwrap());
        let forged = format!("v1.k1.{forged_payload}.{tag}");
        assert_eq!(k.verify(&forged, 1_500), Err(Refused::BadSignature));
        // One changed character of the tag: the first, which carries six bits of the MAC (the
        // last of unpadded base64 carries four and two zero bits, so some changes there do not
        // decode at all).
        let mut bad_tag = tag.to_string();
        let first = if bad_tag.starts_with('A') { "B" } else { "A" };
        bad_tag.replace_range(..1, first);
        assert_eq!(
            k.verify(&format!("{signed}.{bad_tag}"), 1_500),
            Err(Refused::BadSignature)
        );
        // Signed by another keyring (another deployment).
        let stranger = keys(&["k1"], "k1").sign(&session(2_000));
        assert_eq!(k.verify(&stranger, 1_500), Err(Refused::BadSignature));
        assert_eq!(k.verify("v2.k1.x.y", 1_500), Err(Refused::Malformed));
        assert_eq!(k.verify("garbage", 1_500), Err(Refused::Malformed));
        assert_eq!(
            k.verify(&cookie.replacen("v1.k1.", "v1.k9.", 1), 1_500),
            Err(Refused::UnknownKey)
        );
    }

    #[test]
    fn cookies_are_read_and_written_with_their_attributes() {
        let set = set_cookie(COOKIE, "abc", "/dashboard/", 1800, true);
        assert_eq!(
            set,
            "wayback_dashboard=abc; Path=/dashboard/; Max-Age=1800; HttpOnly; SameSite=Lax; Secure"
        );
        assert!(!set_cookie(COOKIE, "", "/dashboard/", 0, false).contains("Secure"));
        let headers = ["a=1; wayback_dashboard=v1.k.p.t", "b=2"];
        assert_eq!(cookie_value(headers.into_iter(), COOKIE), Some("v1.k.p.t"));
        assert_eq!(cookie_value(headers.into_iter(), "c"), None);
    }
}
