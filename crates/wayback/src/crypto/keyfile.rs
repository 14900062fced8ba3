//! Where the keyring comes from: the configured keys (`encryption.keys`, one of them
//! `encryption.current_key`), else one key generated once into `<data_dir>/encryption-key`
//! (mode 0600) for a broker that has none configured (quickstart, local use). That file holds
//! `<key id>:<base64 key>`; when it exists beside configured keys its key still opens what it
//! sealed, so an operator can move to configured keys and `wayback rekey` at leisure. Must not
//! import anything of the crate.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};

use super::{decode_key, encode_key, random_key_bytes, Keyring};

/// The generated key's file in the data directory.
pub const KEY_FILE: &str = "encryption-key";

/// What may happen when no key is configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenNoKey {
    /// Generate one into the data directory (the broker and its operator commands).
    Generate,
    /// Use the generated one if it exists, else fail (commands that must not invent a key).
    Existing,
}

/// The keyring of the settings' keys and, when present, the data directory's generated key.
/// `generate` says whether a missing key may be created. Logs (ids only) what it used.
pub fn keyring(
    configured: &BTreeMap<String, SecretString>,
    current: Option<&str>,
    data_dir: &Path,
    when_none: WhenNoKey,
) -> anyhow::Result<Keyring> {
    let path = data_dir.join(KEY_FILE);
    let mut keys = Vec::new();
    for (id, b64) in configured {
        keys.push((id.clone(), decode_key(id, b64).context("encryption.keys")?));
    }
    let local = read_key_file(&path)?;
    // The generated key seals only while no key is configured.
    let current = match (current, &local) {
        (Some(c), _) => Some(c.to_string()),
        (None, _) if configured.len() == 1 => configured.keys().next().cloned(),
        (None, Some((id, _))) if configured.is_empty() => Some(id.clone()),
        (None, _) => None,
    };
    match local {
        Some((id, key)) if !configured.contains_key(&id) => keys.push((id, key)),
        _ => {}
    }
    if keys.is_empty() {
        if when_none == WhenNoKey::Existing {
            anyhow::bail!(
                "no encryption key is configured (encryption.keys, WAYBACK_ENCRYPTION_KEYS) and \
                 {} does not exist",
                path.display()
            );
        }
        let (id, key) = generate_key_file(&path)?;
        tracing::warn!(
            key_id = %id,
            file = %path.display(),
            "no encryption key configured: generated one into this file; back it up (losing it \
             loses the secrets it seals) or configure encryption.keys"
        );
        return Ok(Keyring::new(vec![(id.clone(), key)], Some(&id))?);
    }
    let keyring = Keyring::new(keys, current.as_deref()).context("encryption.current_key")?;
    tracing::info!(keys = ?keyring.key_ids().collect::<Vec<_>>(), current = keyring.current_id(), "encryption keys");
    Ok(keyring)
}

type KeyEntry = (String, secrecy::SecretBox<[u8; 32]>);

fn read_key_file(path: &PathBuf) -> anyhow::Result<Option<KeyEntry>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => SecretString::from(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    // The file may predate the mode rule or have been copied in: it is a key, so 0600.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("set the mode of {}", path.display()))?;
    let (id, b64) = text
        .expose_secret()
        .trim()
        .split_once(':')
        .with_context(|| format!("{} is not `<key id>:<base64 key>`", path.display()))?;
    let key = decode_key(id, &SecretString::from(b64.to_string()))
        .with_context(|| format!("key file {}", path.display()))?;
    Ok(Some((id.to_string(), key)))
}

fn generate_key_file(path: &Path) -> anyhow::Result<KeyEntry> {
    let key = random_key_bytes();
    let id = format!("local-{}", random_suffix());
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    let line = format!("{id}:{}\n", encode_key(&key).expose_secret());
    file.write_all(line.as_bytes())?;
    file.sync_all()?;
    // Never replace a key someone else generated meanwhile: link fails if the file exists.
    std::fs::hard_link(&tmp, path).with_context(|| format!("install {}", path.display()))?;
    std::fs::remove_file(&tmp).ok();
    Ok((id, key))
}

/// A short id suffix that says nothing about the key: random, not derived from it.
fn random_suffix() -> String {
    let bytes = random_key_bytes();
    bytes.expose_secret()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
