//! The certificate authority that signs every cluster's server certificate, and the
//! certificates it issues.
//!
//! Apps verify a cluster with the CA certificate their binding carries (`sslmode=verify-full`),
//! so one CA stands behind every cluster a broker hands out. Where it comes from:
//!
//! 1. **The operator's** (`tls.ca_cert` + `tls.ca_key`, each a path or the PEM itself; on BOSH
//!    a CredHub CA variable). Rotating it is the operator's: give the new pair and restart; each
//!    cluster gets a certificate from it at its next start or renewal.
//! 2. **Generated once** when none is configured: `<data_dir>/tls/ca.crt` and `ca.key` (key
//!    0600, directory 0700, whatever the umask), kept across restarts. Fine for one machine;
//!    with agents the operator gives the broker and every agent the same pair, because the
//!    credentials carry the broker's CA certificate while agents issue their clusters'
//!    certificates (an agent that generated its own CA would issue certificates apps cannot
//!    verify).
//!
//! A server certificate is issued for the names a cluster is reached by (its advertised host,
//! plus `localhost` and 127.0.0.1) and is renewed at two thirds of its life ([`Issued::due`]);
//! its [`Issued`] record beside it says when and for which names and CA, so deciding needs no
//! X.509 parsing. Keys are ECDSA P-256 (ring, through `rcgen`). Imports nothing from the crate.

mod ca_files;
mod issued;

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

pub use ca_files::{CaSource, CA_CERT_FILE, CA_KEY_FILE};
pub use issued::Issued;

/// What can go wrong with the CA or a certificate; every message names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{what} is not valid: {reason}")]
    Invalid { what: String, reason: String },
    #[error("cannot make a certificate: {0}")]
    Generate(String),
}

fn generate_err(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e.to_string())
}

/// The CA: its certificate (handed to apps) and the key that signs cluster certificates.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// A freshly issued server certificate and its key.
pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: SecretString,
    pub issued: Issued,
}

impl Ca {
    /// A new self-signed CA, valid for `lifetime` from now.
    pub fn generate(common_name: &str, lifetime: Duration) -> Result<Self, TlsError> {
        let key = KeyPair::generate().map_err(generate_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + lifetime;
        let cert = params.self_signed(&key).map_err(generate_err)?;
        let cert_pem = cert.pem();
        Ok(Self {
            cert_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA of a PEM certificate and its PEM private key (PKCS#8, or SEC1/PKCS#1 as
    /// CredHub and openssl write them).
    pub fn from_pem(cert_pem: &str, key_pem: &SecretString) -> Result<Self, TlsError> {
        let invalid = |what: &str| {
            let what = what.to_string();
            move |e: rcgen::Error| TlsError::Invalid {
                what,
                reason: e.to_string(),
            }
        };
        let key = KeyPair::from_pem(key_pem.expose_secret()).map_err(invalid("tls.ca_key"))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(invalid("tls.ca_cert"))?;
        Ok(Self {
            cert_pem: first_certificate(cert_pem)?,
            issuer,
        })
    }

    /// The CA certificate (PEM), what credentials carry as `ca_certificate`.
    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    /// SHA-256 of the CA certificate's PEM text, hex: names the CA in [`Issued`] records.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(self.cert_pem.as_bytes()))
    }

    /// A server certificate for `hosts` (DNS names or IP addresses; the first is the
    /// subject's common name), valid for `lifetime` from now.
    pub fn issue_server(
        &self,
        hosts: &[String],
        lifetime: Duration,
    ) -> Result<ServerCert, TlsError> {
        let key = KeyPair::generate().map_err(generate_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            hosts.first().map(String::as_str).unwrap_or("wayback"),
        );
        params.distinguished_name = dn;
        params.subject_alt_names = hosts
            .iter()
            .map(|h| match h.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => h
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|e: rcgen::Error| TlsError::Invalid {
                        what: format!("host name {h:?}"),
                        reason: e.to_string(),
                    }),
            })
            .collect::<Result<_, _>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        // An hour back, so a client whose clock is a little behind still accepts it.
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + lifetime;
        let cert = params.signed_by(&key, &self.issuer).map_err(generate_err)?;
        let issued = Issued {
            issued_at: chrono::Utc::now(),
            lifetime_secs: lifetime.as_secs(),
            hosts: hosts.to_vec(),
            ca_fingerprint: self.fingerprint(),
        };
        Ok(ServerCert {
            cert_pem: cert.pem(),
            key_pem: SecretString::from(key.serialize_pem()),
            issued,
        })
    }
}

/// The first `CERTIFICATE` block of a PEM text (an operator's file may hold a chain).
fn first_certificate(pem_text: &str) -> Result<String, TlsError> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let start = pem_text.find(BEGIN);
    let end = start.and_then(|s| pem_text[s..].find(END).map(|e| s + e + END.len()));
    match (start, end) {
        (Some(s), Some(e)) => Ok(format!("{}\n", &pem_text[s..e])),
        _ => Err(TlsError::Invalid {
            what: "tls.ca_cert".into(),
            reason: "it holds no PEM CERTIFICATE block".into(),
        }),
    }
}

#[cfg(test)]
mod tests;
