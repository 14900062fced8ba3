use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::*;

const DAY: Duration = Duration::from_secs(86_400);

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_generated_ca_is_kept_private_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o000));
    let first = CaSource::default().load(dir.path());
    nix::sys::stat::umask(old);
    let first = first.unwrap();
    let tls = dir.path().join("tls");
    assert_eq!(mode(&tls), 0o700);
    assert_eq!(mode(&tls.join(CA_KEY_FILE)), 0o600);
    assert_eq!(mode(&tls.join(CA_CERT_FILE)), 0o600);
    let again = CaSource::default().load(dir.path()).unwrap();
    assert_eq!(
        first.fingerprint(),
        again.fingerprint(),
        "loaded, not generated again"
    );
    assert!(first
        .certificate_pem()
        .starts_with("-----BEGIN CERTIFICATE-----"));
}

#[test]
fn an_operator_ca_is_taken_as_pem_or_as_paths() {
    let ca = Ca::generate("operator CA", 30 * DAY).unwrap();
    let cert = ca.certificate_pem().to_string();
    let key = ca.issuer.key().serialize_pem();
    let dir = tempfile::tempdir().unwrap();
    let as_pem = CaSource {
        cert: Some(cert.clone()),
        key: Some(SecretString::from(key.clone())),
    };
    assert_eq!(
        as_pem.load(dir.path()).unwrap().fingerprint(),
        ca.fingerprint()
    );
    assert!(!dir.path().join("tls").exists(), "nothing generated");
    std::fs::write(dir.path().join("c.pem"), &cert).unwrap();
    std::fs::write(dir.path().join("k.pem"), &key).unwrap();
    let as_paths = CaSource {
        cert: Some(dir.path().join("c.pem").display().to_string()),
        key: Some(SecretString::from(
            dir.path().join("k.pem").display().to_string(),
        )),
    };
    assert_eq!(
        as_paths.load(dir.path()).unwrap().fingerprint(),
        ca.fingerprint()
    );
}

#[test]
fn half_an_operator_ca_is_refused_by_name() {
    let only_cert = CaSource {
        cert: Some("x".into()),
        key: None,
    };
    assert!(only_cert.check().unwrap_err().contains("tls.ca_key"));
    let dir = tempfile::tempdir().unwrap();
    let bad = CaSource {
        cert: Some("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into()),
        key: Some(SecretString::from(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )),
    };
    let err = bad.load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("tls.ca_key"), "{err}");
}

#[test]
fn a_server_certificate_names_its_hosts_and_ca() {
    let ca = Ca::generate("test CA", 30 * DAY).unwrap();
    let hosts = vec!["db.example.com".to_string(), "127.0.0.1".to_string()];
    let cert = ca.issue_server(&hosts, 90 * DAY).unwrap();
    assert!(cert.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(cert.key_pem.expose_secret().contains("PRIVATE KEY"));
    assert_eq!(cert.issued.hosts, hosts);
    assert_eq!(cert.issued.ca_fingerprint, ca.fingerprint());
    let other = ca.issue_server(&hosts, 90 * DAY).unwrap();
    assert_ne!(cert.key_pem.expose_secret(), other.key_pem.expose_secret());
    assert!(format!("{ca:?}").contains("fingerprint"));
}

#[test]
fn a_mistyped_ca_key_is_refused_without_quoting_it() {
    let dir = tempfile::tempdir().unwrap();
    let pasted = " MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgsecretkeymaterial";
    let source = CaSource {
        cert: Some("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".into()),
        key: Some(SecretString::from(pasted.to_string())),
    };
    let err = source.load(dir.path()).unwrap_err();
    let text = format!("{err:#} {err:?}");
    assert!(text.contains("tls.ca_key"), "{text}");
    assert!(!text.contains("secretkeymaterial"), "{text}");
}
