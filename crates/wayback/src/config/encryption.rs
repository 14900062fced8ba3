//! The `encryption` section: the operator's keys (id → base64 of 32 random bytes) and which
//! one seals. Unset: the broker generates one key into its data directory (`crypto::keyfile`).

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncryptionSettings {
    /// Every key that may open stored secrets, by id (`openssl rand -base64 32` makes one).
    pub keys: BTreeMap<String, SecretString>,
    /// The key that seals new secrets; may be left out when one key is configured.
    pub current_key: Option<String>,
}

impl EncryptionSettings {
    /// Checks ids, key sizes and the current key (the same rules `crypto` applies when it
    /// builds the keyring, here so that `check-config` catches them); names no key material.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        use base64::Engine;
        for (id, key) in &self.keys {
            let id_ok = (1..=64).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !id_ok {
                let message = format!("key id {id:?}: use 1–64 letters, digits, '.', '_' or '-'");
                return Err(("encryption.keys", message));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(key.expose_secret().trim())
                .map_err(|_| ("encryption.keys", format!("key {id}: not valid base64")))?;
            if bytes.len() != 32 {
                let message = format!("key {id}: must be 32 bytes (44 base64 characters)");
                return Err(("encryption.keys", message));
            }
        }
        match &self.current_key {
            Some(c) if !self.keys.contains_key(c) => Err((
                "encryption.current_key",
                format!("{c} is not among encryption.keys"),
            )),
            None if self.keys.len() > 1 => Err((
                "encryption.current_key",
                "several keys are configured: name the one that seals".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// Parses `WAYBACK_ENCRYPTION_KEYS`: `id:base64,id:base64` (neither part holds `:` or `,`).
pub fn parse_key_list(v: &str) -> Result<BTreeMap<String, SecretString>, String> {
    let mut keys = BTreeMap::new();
    for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, key) = item
            .split_once(':')
            .ok_or_else(|| "expected id:base64key[,id:base64key…]".to_string())?;
        let id = id.trim();
        if keys
            .insert(id.to_string(), SecretString::from(key.trim().to_string()))
            .is_some()
        {
            return Err(format!("key id {id} is listed twice"));
        }
    }
    Ok(keys)
}
