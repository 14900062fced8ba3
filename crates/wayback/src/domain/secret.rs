//! Fresh secrets: random passwords for roles, bindings and the broker itself.

use rand::distributions::Alphanumeric;
use rand::Rng;
use secrecy::SecretString;

/// A fresh password: 32 random letters and digits from the OS's generator (about 190 bits).
pub fn new_password() -> SecretString {
    let pw: String = rand::rngs::OsRng
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    SecretString::from(pw)
}
