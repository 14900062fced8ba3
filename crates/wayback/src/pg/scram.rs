//! SCRAM-SHA-256 password verifiers, computed on our side (RFC 5802, RFC 7677).
//!
//! `CREATE ROLE … PASSWORD '<cleartext>'` would put the password into the statement text, where
//! a statement log, `pg_stat_activity` or an error report may keep it. PostgreSQL also accepts an
//! already-hashed password: a string of the form
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` is stored as is. So we compute the
//! verifier here and only it ever reaches the server. Cleartext is an ASCII password: SASLprep is
//! the identity for printable ASCII, which is all we accept. Imports only `pg` siblings.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::PgError;

/// PostgreSQL's default (`scram_iterations` became settable only in 16).
pub const ITERATIONS: u32 = 4096;
const SALT_LEN: usize = 16;

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 with a 32-byte output, i.e. exactly one block (RFC 8018 §5.2): SCRAM's
/// `Hi(password, salt, i)`. The keyed HMAC state is made once and cloned per round, which halves
/// the hashing (the key's inner and outer pads are not recomputed 4096 times).
pub fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let prf = Hmac::<Sha256>::new_from_slice(password).expect("HMAC takes keys of any length");
    let mut mac = prf.clone();
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut u: [u8; 32] = mac.finalize().into_bytes().into();
    let mut out = u;
    for _ in 1..iterations {
        let mut mac = prf.clone();
        mac.update(&u);
        u = mac.finalize().into_bytes().into();
        out.iter_mut().zip(u.iter()).for_each(|(o, x)| *o ^= x);
    }
    out
}

/// `(StoredKey, ServerKey)` for a salted password.
pub fn keys(salted: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
    let client_key = hmac(salted, b"Client Key");
    let stored_key: [u8; 32] = Sha256::digest(client_key).into();
    (stored_key, hmac(salted, b"Server Key"))
}

/// The verifier for `password` with the given salt and iteration count.
pub fn verifier_with(password: &[u8], salt: &[u8], iterations: u32) -> String {
    let (stored, server) = keys(&salted_password(password, salt, iterations));
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        B64.encode(salt),
        B64.encode(stored),
        B64.encode(server)
    )
}

/// A verifier for `password` with a fresh random salt. Refuses what is not printable ASCII, where
/// the server's SASLprep could disagree with us.
pub fn verifier(password: &SecretString) -> Result<String, PgError> {
    let pw = password.expose_secret();
    if pw.is_empty() || !pw.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(PgError::InvalidName {
            what: "password",
            name: "<redacted>".into(),
            reason: "a password must be non-empty printable ASCII",
        });
    }
    let salt: [u8; SALT_LEN] = rand::random();
    Ok(verifier_with(pw.as_bytes(), &salt, ITERATIONS))
}

/// A random password of ASCII letters and digits (~190 bits for 32 characters).
pub fn random_password(len: usize) -> SecretString {
    use rand::distributions::{Alphanumeric, DistString};
    Alphanumeric
        .sample_string(&mut rand::rngs::OsRng, len)
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677 §3: user "user", password "pencil".
    const SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const CLIENT_FIRST_BARE: &str = "n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL_NO_PROOF: &str =
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const PROOF: &str = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_SIGNATURE: &str = "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    /// Our keys reproduce the RFC's client proof and server signature, which covers PBKDF2, HMAC,
    /// StoredKey and ServerKey — everything the verifier is made of.
    #[test]
    fn reproduces_the_rfc_7677_exchange() {
        let salt = B64.decode(SALT).unwrap();
        let salted = salted_password(b"pencil", &salt, 4096);
        let client_key = hmac(&salted, b"Client Key");
        let (stored_key, server_key) = keys(&salted);
        let auth = format!("{CLIENT_FIRST_BARE},{SERVER_FIRST},{CLIENT_FINAL_NO_PROOF}");
        let client_signature = hmac(&stored_key, auth.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(client_signature.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        assert_eq!(B64.encode(proof), PROOF);
        assert_eq!(
            B64.encode(hmac(&server_key, auth.as_bytes())),
            SERVER_SIGNATURE
        );
    }

    #[test]
    fn pbkdf2_matches_rfc_7914_test_vector() {
        // RFC 7914 §11: PBKDF2-HMAC-SHA256, P="passwd", S="salt", c=1, dkLen=64 (first 32 bytes).
        let out = salted_password(b"passwd", b"salt", 1);
        let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
        );
    }

    #[test]
    fn verifier_has_postgres_format() {
        let v = verifier(&SecretString::from("pencil")).unwrap();
        let (head, keys) = v.split_once('$').unwrap().1.split_once('$').unwrap();
        let (iters, salt) = head.split_once(':').unwrap();
        assert!(v.starts_with("SCRAM-SHA-256$4096:"));
        assert_eq!(iters, "4096");
        assert_eq!(B64.decode(salt).unwrap().len(), 16);
        let (stored, server) = keys.split_once(':').unwrap();
        assert_eq!(B64.decode(stored).unwrap().len(), 32);
        assert_eq!(B64.decode(server).unwrap().len(), 32);
        assert_ne!(
            v,
            verifier(&SecretString::from("pencil")).unwrap(),
            "fresh salt"
        );
    }

    #[test]
    fn refuses_non_ascii_and_hides_the_password() {
        let err = verifier(&SecretString::from("pässwörd")).unwrap_err();
        assert!(!err.to_string().contains("pässwörd"));
        assert!(verifier(&SecretString::from("")).is_err());
        assert_eq!(random_password(32).expose_secret().len(), 32);
    }
}
