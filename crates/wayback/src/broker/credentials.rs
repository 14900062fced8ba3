//! Binding credentials in Cloud Foundry's conventional shape.

use rand::distributions::Alphanumeric;
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

/// What an app receives in `VCAP_SERVICES`.
#[derive(Serialize)]
pub struct Credentials {
    pub uri: String,
    #[serde(rename = "jdbcUrl")]
    pub jdbc_url: String,
    pub host: String,
    pub port: u16,
    pub name: String,
    pub database: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn new(
        host: &str,
        port: u16,
        database: &str,
        username: &str,
        password: &SecretString,
    ) -> Self {
        // Role names and passwords are generated from [a-z0-9] / [A-Za-z0-9]: nothing to escape.
        let pw = password.expose_secret();
        let host_part = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        Self {
            uri: format!("postgres://{username}:{pw}@{host_part}:{port}/{database}"),
            jdbc_url: format!(
                "jdbc:postgresql://{host_part}:{port}/{database}?user={username}&password={pw}"
            ),
            host: host.to_string(),
            port,
            name: database.to_string(),
            database: database.to_string(),
            username: username.to_string(),
            password: pw.to_string(),
        }
    }
}

pub use crate::domain::new_password;

/// A fresh role name for a binding: `u_` and 16 random lowercase letters and digits.
pub fn new_role_name() -> String {
    let tail: String = rand::rngs::OsRng
        .sample_iter(&Alphanumeric)
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .take(16)
        .map(char::from)
        .collect();
    format!("u_{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_long_random_and_distinct() {
        let a = new_password();
        let b = new_password();
        assert_eq!(a.expose_secret().len(), 32);
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert!(a.expose_secret().chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn credentials_follow_cf_conventions_and_hide_the_password_in_debug() {
        let pw = SecretString::from("Secret123".to_string());
        let c = Credentials::new("10.0.0.5", 40001, "app", "u_abc", &pw);
        assert_eq!(c.uri, "postgres://u_abc:Secret123@10.0.0.5:40001/app");
        assert_eq!(
            c.jdbc_url,
            "jdbc:postgresql://10.0.0.5:40001/app?user=u_abc&password=Secret123"
        );
        assert!(!format!("{c:?}").contains("Secret123"));
        let v6 = Credentials::new("::1", 1, "app", "u", &pw);
        assert!(v6.uri.contains("@[::1]:1/"));
    }

    #[test]
    fn role_names_are_safe_identifiers() {
        let r = new_role_name();
        assert!(r.starts_with("u_") && r.len() == 18);
        assert!(r
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
    }
}
