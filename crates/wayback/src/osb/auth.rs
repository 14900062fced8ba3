//! Basic auth with a constant-time comparison.
//!
//! Both the expected and the offered credentials are hashed with SHA-256 first, so that the
//! comparison is constant-time over equal-length digests and leaks neither content nor length.

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub struct BasicAuth {
    username: [u8; 32],
    password: [u8; 32],
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl BasicAuth {
    pub fn new(username: &str, password: &SecretString) -> Self {
        Self {
            username: digest(username.as_bytes()),
            password: digest(password.expose_secret().as_bytes()),
        }
    }

    /// Checks an `Authorization` header value.
    pub fn check(&self, header: Option<&str>) -> bool {
        let Some(encoded) = header.and_then(|h| {
            h.strip_prefix("Basic ")
                .or_else(|| h.strip_prefix("basic "))
        }) else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let Some(colon) = decoded.iter().position(|b| *b == b':') else {
            return false;
        };
        let user_ok = digest(&decoded[..colon]).ct_eq(&self.username);
        let pass_ok = digest(&decoded[colon + 1..]).ct_eq(&self.password);
        bool::from(user_ok & pass_ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        )
    }

    #[test]
    fn accepts_only_the_right_pair() {
        let auth = BasicAuth::new("admin", &SecretString::from("p:w".to_string()));
        assert!(
            auth.check(Some(&header("admin", "p:w"))),
            "password may contain ':'"
        );
        for (why, h) in [
            ("wrong password", header("admin", "x")),
            ("wrong user", header("root", "p:w")),
            ("empty", header("", "")),
            ("not base64", "Basic !!!".to_string()),
            ("bearer", "Bearer abc".to_string()),
            (
                "no colon",
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode("adminp:w")
                ),
            ),
        ] {
            assert!(!auth.check(Some(&h)), "{why}");
        }
        assert!(!auth.check(None));
    }
}
