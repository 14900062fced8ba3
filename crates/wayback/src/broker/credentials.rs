//! Binding credentials in Cloud Foundry's conventional shape, with what an app needs to verify
//! the cluster over TLS.
//!
//! Every cluster serves TLS from one CA (the `tls` module), so credentials carry that CA's
//! certificate (`ca_certificate`, and the same PEM as `sslrootcert`, the key Cloud Service
//! Broker's PostgreSQL bindings use) and ask for TLS in both URLs:
//!
//! - `uri` ends in `?sslmode=verify-full` (or `require`, `tls.client_sslmode`). A URI cannot
//!   carry a PEM: a libpq app writes `ca_certificate` to a file and names it
//!   (`PGSSLROOTCERT`, or `&sslrootcert=PATH` appended).
//! - `jdbcUrl` adds `ssl=true&sslmode=verify-full` and, since pgjdbc reads `sslrootcert` only
//!   as a file path, pgjdbc's `SingleCertValidatingFactory` with the CA PEM itself,
//!   percent-encoded, as `sslfactoryarg`: the URL alone verifies the cluster. With `require`,
//!   the URL only asks for encryption (pgjdbc's `require` does not verify).
//!
//! Credentials are built when they are read (bind, `GET` binding), from the binding's record
//! and the broker's CA, so a binding made before this version gets the same keys.
//! Imports nothing from the crate but `domain`.

use rand::distributions::Alphanumeric;
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

/// pgjdbc's socket factory that trusts the one certificate given in `sslfactoryarg`.
const JDBC_SSL_FACTORY: &str = "org.postgresql.ssl.SingleCertValidatingFactory";

/// What bindings say about TLS: the CA apps verify clusters with, and how strictly.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The CA certificate (PEM) every cluster's certificate chains to.
    pub ca_certificate: String,
    /// `sslmode=verify-full` (true) or `require` (false) in the URLs.
    pub verify_full: bool,
}

impl ClientTls {
    fn sslmode(&self) -> &'static str {
        if self.verify_full {
            "verify-full"
        } else {
            "require"
        }
    }
}

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
    /// `verify-full` or `require`, as in `uri` and `jdbcUrl`.
    pub sslmode: String,
    /// The CA certificate (PEM) the cluster's certificate chains to.
    pub ca_certificate: String,
    /// The same PEM under the name Cloud Service Broker's bindings give it.
    pub sslrootcert: String,
    /// `true` for a role that reads and never writes (a `read_only` binding, every binding of
    /// a follower); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// On a leader with ready followers: one URI per follower, with this binding's user and
    /// password (roles replicate) and the same `sslmode`; absent without followers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica_uris: Option<Vec<String>>,
    /// An HA instance's members, `host:port` each; absent for a single-member instance. `uri`
    /// and `jdbcUrl` name them all, and `host`/`port` are the member that was primary when the
    /// credentials were read (they do not follow a failover: use `uri`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<String>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("username", &self.username)
            .field("sslmode", &self.sslmode)
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
        tls: &ClientTls,
    ) -> Self {
        // Role names and passwords are generated from [a-z0-9] / [A-Za-z0-9]: nothing to escape.
        let pw = password.expose_secret();
        let host_part = host_port(host, port);
        let sslmode = tls.sslmode();
        let jdbc_tls = jdbc_tls(tls);
        Self {
            uri: format!("postgres://{username}:{pw}@{host_part}/{database}?sslmode={sslmode}"),
            jdbc_url: format!(
                "jdbc:postgresql://{host_part}/{database}?user={username}&password={pw}&{jdbc_tls}"
            ),
            host: host.to_string(),
            port,
            name: database.to_string(),
            database: database.to_string(),
            username: username.to_string(),
            password: pw.to_string(),
            sslmode: sslmode.to_string(),
            ca_certificate: tls.ca_certificate.clone(),
            sslrootcert: tls.ca_certificate.clone(),
            read_only: None,
            replica_uris: None,
            hosts: None,
        }
    }

    /// An HA instance's credentials: `uri` and `jdbcUrl` name every member (`members`, in
    /// order) and let the driver find the primary (`target_session_attrs=read-write`,
    /// `targetServerType=primary`) or, for a read-only binding, prefer a standby
    /// (`prefer-standby`, `preferSecondary`); `host`/`port` are `members[primary]`.
    #[allow(clippy::too_many_arguments)]
    pub fn for_members(
        members: &[(String, u16)],
        primary: usize,
        database: &str,
        username: &str,
        password: &SecretString,
        tls: &ClientTls,
        read_only: bool,
    ) -> Self {
        let (host, port) = members
            .get(primary)
            .or(members.first())
            .map(|(h, p)| (h.as_str(), *p))
            .unwrap_or(("", 0));
        let mut c = Self::new(host, port, database, username, password, tls);
        let list: Vec<String> = members.iter().map(|(h, p)| host_port(h, *p)).collect();
        let joined = list.join(",");
        let pw = password.expose_secret();
        let sslmode = tls.sslmode();
        let (libpq, jdbc) = if read_only {
            ("prefer-standby", "preferSecondary")
        } else {
            ("read-write", "primary")
        };
        c.uri = format!(
            "postgres://{username}:{pw}@{joined}/{database}?target_session_attrs={libpq}&sslmode={sslmode}"
        );
        c.jdbc_url = format!(
            "jdbc:postgresql://{joined}/{database}?user={username}&password={pw}&targetServerType={jdbc}&{}",
            jdbc_tls(tls)
        );
        c.hosts = Some(list);
        c
    }
}

/// `host:port`, an IPv6 address in brackets.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The TLS parameters of a `jdbcUrl`.
fn jdbc_tls(tls: &ClientTls) -> String {
    let mut jdbc_tls = format!("ssl=true&sslmode={}", tls.sslmode());
    if tls.verify_full {
        jdbc_tls.push_str(&format!(
            "&sslfactory={JDBC_SSL_FACTORY}&sslfactoryarg={}",
            percent_encode(&tls.ca_certificate)
        ));
    }
    jdbc_tls
}

/// Every byte but RFC 3986's unreserved ones as `%XX`: pgjdbc URL-decodes parameter values,
/// and a PEM holds `+`, `/`, `=` and newlines.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3 / 2);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB+a/b=\n-----END CERTIFICATE-----\n";

    fn tls(verify_full: bool) -> ClientTls {
        ClientTls {
            ca_certificate: CA.into(),
            verify_full,
        }
    }

    #[test]
    fn credentials_follow_cf_conventions_and_hide_the_password_in_debug() {
        let pw = SecretString::from("Secret123".to_string());
        let c = Credentials::new("10.0.0.5", 40001, "app", "u_abc", &pw, &tls(true));
        assert_eq!(
            c.uri,
            "postgres://u_abc:Secret123@10.0.0.5:40001/app?sslmode=verify-full"
        );
        assert_eq!(
            c.jdbc_url,
            "jdbc:postgresql://10.0.0.5:40001/app?user=u_abc&password=Secret123&ssl=true\
             &sslmode=verify-full&sslfactory=org.postgresql.ssl.SingleCertValidatingFactory\
             &sslfactoryarg=-----BEGIN%20CERTIFICATE-----%0AMIIB%2Ba%2Fb%3D%0A\
             -----END%20CERTIFICATE-----%0A"
        );
        assert_eq!(
            (c.sslmode.as_str(), c.ca_certificate.as_str()),
            ("verify-full", CA)
        );
        assert_eq!(c.sslrootcert, CA);
        assert!(!format!("{c:?}").contains("Secret123"));
        let v6 = Credentials::new("::1", 1, "app", "u", &pw, &tls(true));
        assert!(v6.uri.contains("@[::1]:1/"));
    }

    #[test]
    fn with_require_the_urls_ask_for_encryption_only() {
        let pw = SecretString::from("Secret123".to_string());
        let c = Credentials::new("db.example", 5, "app", "u", &pw, &tls(false));
        assert_eq!(
            c.uri,
            "postgres://u:Secret123@db.example:5/app?sslmode=require"
        );
        assert!(
            c.jdbc_url.ends_with("&ssl=true&sslmode=require"),
            "{}",
            c.jdbc_url
        );
        assert_eq!(
            (c.sslmode.as_str(), c.ca_certificate.as_str()),
            ("require", CA)
        );
    }

    #[test]
    fn ha_credentials_name_every_member_and_find_the_primary_or_a_standby() {
        let pw = SecretString::from("Secret123".to_string());
        let members = [("10.0.0.5".to_string(), 40001), ("::1".to_string(), 40002)];
        let c = Credentials::for_members(&members, 1, "app", "u", &pw, &tls(false), false);
        assert_eq!(
            c.uri,
            "postgres://u:Secret123@10.0.0.5:40001,[::1]:40002/app\
             ?target_session_attrs=read-write&sslmode=require"
        );
        assert_eq!(
            c.jdbc_url,
            "jdbc:postgresql://10.0.0.5:40001,[::1]:40002/app?user=u&password=Secret123\
             &targetServerType=primary&ssl=true&sslmode=require"
        );
        assert_eq!((c.host.as_str(), c.port), ("::1", 40002));
        assert_eq!(
            c.hosts.as_deref(),
            Some(&["10.0.0.5:40001".to_string(), "[::1]:40002".to_string()][..])
        );
        let r = Credentials::for_members(&members, 0, "app", "u", &pw, &tls(true), true);
        assert!(
            r.uri
                .contains("?target_session_attrs=prefer-standby&sslmode=verify-full"),
            "{}",
            r.uri
        );
        assert!(
            r.jdbc_url.contains(
                "&targetServerType=preferSecondary&ssl=true&sslmode=verify-full&sslfactory="
            ),
            "{}",
            r.jdbc_url
        );
        assert_eq!((r.host.as_str(), r.port), ("10.0.0.5", 40001));
        let single = Credentials::new("10.0.0.5", 1, "app", "u", &pw, &tls(false));
        assert!(serde_json::to_value(&single)
            .unwrap()
            .get("hosts")
            .is_none());
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
