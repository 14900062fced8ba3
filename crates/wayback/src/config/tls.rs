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
