//! The `[tls]` section: the CA that signs the clusters' certificates (see the `tls` module).

use secrecy::SecretString;
use serde::Deserialize;

/// The operator's CA. Unset: the broker (or agent) generates one once into
/// `<data_dir>/tls/`. With agents, give the broker and every agent the same pair.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// The CA certificate: a path, or the PEM itself.
    pub ca_cert: Option<String>,
    /// The CA's private key: a path, or the PEM itself (secret).
    pub ca_key: Option<SecretString>,
    /// Clusters refuse TCP connections without TLS (`hostssl` only in `pg_hba.conf`).
    pub require: bool,
    /// The `sslmode` bindings' credentials ask for.
    pub client_sslmode: ClientSslMode,
}

/// The `sslmode` in bindings' `uri` and `jdbcUrl` (`tls.client_sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientSslMode {
    /// The client checks the CA and that the host is one the certificate names.
    #[default]
    VerifyFull,
    /// Encrypted, not verified: for apps that cannot be given the CA certificate.
    Require,
}

impl ClientSslMode {
    pub fn verifies(self) -> bool {
        self == ClientSslMode::VerifyFull
    }
}

impl std::str::FromStr for ClientSslMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "verify-full" => Ok(ClientSslMode::VerifyFull),
            "require" => Ok(ClientSslMode::Require),
            other => Err(format!("expected verify-full or require, not {other:?}")),
        }
    }
}

impl TlsSettings {
    /// Both or neither.
    pub(super) fn check(&self) -> Result<(), (&'static str, &'static str)> {
        match (&self.ca_cert, &self.ca_key) {
            (Some(_), None) => Err((
                "tls.ca_key",
                "tls.ca_cert is set: set tls.ca_key too (or neither)",
            )),
            (None, Some(_)) => Err((
                "tls.ca_cert",
                "tls.ca_key is set: set tls.ca_cert too (or neither)",
            )),
            _ => Ok(()),
        }
    }
}
