//! The `encryption` section: the operator's keys (id → base64 of 32 random bytes) and which
//! one seals. Unset: the broker generates one key into its data directory (`crypto::keyfile`).

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncryptionSettings {
    /// Every key that may open stored secrets, by id (`openssl rand -base64 32` makes one).
    pub keys: BTreeMap<String, SecretString>,
    /// The key that seals new secrets; may be left out when one key is configured.
    pub current_key: Option<String>,
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
