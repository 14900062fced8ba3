//! The operator's key family: named AES-256-GCM keys (`ring`), one of them current, that seal
//! small secrets for storage and wrap data keys.
//!
//! A sealed value names the key that sealed it — `wbenc:v1:<key id>:<base64(nonce | ciphertext
//! | tag)>` — so keys rotate: [`Keyring::open`] takes any configured key, [`Keyring::seal`]
//! always the current one, and `wayback rekey` re-seals what an older key sealed. Every seal
//! binds an associated-data string (e.g. the binding id a password belongs to): a sealed value
//! copied to another row does not open there. Nonces are 96 random bits from the OS per seal.
//! [`Keyring::wrap`] / [`Keyring::unwrap`] seal a 32-byte [`DataKey`]: the archive's
//! per-instance data keys are meant to be wrapped this way, so that rekeying rewraps them
//! without rewriting data.
//!
//! [`archive_cipher`] derives what one instance's archive is encrypted with from its data key.
//!
//! Key material never reaches logs: `Debug` of every key type prints its id only.
//! Where keys come from (settings, or a key generated once into the data directory) is
//! [`keyfile`]'s. Must not import anything of the crate.

pub mod archive_cipher;
pub mod keyfile;

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};
use secrecy::{ExposeSecret, SecretBox, SecretString};

/// The prefix of every sealed value, with the format's version.
pub const SEALED_PREFIX: &str = "wbenc:v1:";

/// The HKDF salt of every key derived from an operator key ([`Keyring::mac_key`]).
const DERIVATION_SALT: &[u8] = b"wayback keyring derivation v1";

/// A key-family failure. Messages name key ids, never key material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("key id {0:?} is not valid: use 1–64 letters, digits, '.', '_' or '-'")]
    BadKeyId(String),
    #[error("key {id}: {message}")]
    BadKey { id: String, message: String },
    #[error("no encryption key is configured")]
    NoKeys,
    #[error("the current key {0} is not among the configured keys")]
    UnknownCurrent(String),
    #[error("several keys are configured and none is named current")]
    NoCurrent,
    #[error("sealed with key {0}, which is not configured")]
    MissingKey(String),
    #[error("not a sealed value of a known format")]
    Malformed,
    #[error("does not open with key {0} (wrong key, or the value was altered or moved)")]
    Unauthentic(String),
}

/// True for a key id we accept: short, printable, no separator of the sealed format.
pub fn valid_key_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The id of the key that sealed `value`, if it is a sealed value.
pub fn sealed_key_id(value: &str) -> Option<&str> {
    let rest = value.strip_prefix(SEALED_PREFIX)?;
    let (id, _) = rest.split_once(':')?;
    valid_key_id(id).then_some(id)
}

/// A fresh 32-byte key from the OS's generator (an operator key or a data key).
pub fn random_key_bytes() -> SecretBox<[u8; 32]> {
    let mut bytes = Box::new([0u8; 32]);
    SystemRandom::new()
        .fill(&mut bytes[..])
        .expect("the OS random generator works");
    SecretBox::new(bytes)
}

/// A 32-byte data key (e.g. one instance's archive key), to be wrapped by the keyring.
pub struct DataKey(SecretBox<[u8; 32]>);

impl DataKey {
    pub fn generate() -> DataKey {
        DataKey(random_key_bytes())
    }

    pub fn expose(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }

    /// The key as base64, for the one file that carries it unwrapped (a cluster's private
    /// archive target file).
    pub fn to_base64(&self) -> SecretString {
        SecretString::from(B64.encode(self.expose()))
    }

    /// A key read back from [`DataKey::to_base64`].
    pub fn from_base64(text: &str) -> Result<DataKey, CryptoError> {
        let bytes = B64
            .decode(text.trim())
            .map_err(|_| CryptoError::Malformed)?;
        let array: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::Malformed)?;
        Ok(DataKey(SecretBox::new(Box::new(array))))
    }
}

impl Clone for DataKey {
    fn clone(&self) -> Self {
        DataKey(SecretBox::new(Box::new(*self.expose())))
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

/// Configured keys by id, one current.
pub struct Keyring {
    keys: BTreeMap<String, LessSafeKey>,
    /// Per key, the HKDF-SHA256 pseudo-random key that [`Keyring::mac_key`] expands: a MAC
    /// key is never the AEAD key itself, and each purpose gets its own.
    derivation: BTreeMap<String, hkdf::Prk>,
    current: String,
    rng: SystemRandom,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .field("current", &self.current)
            .finish()
    }
}

/// Decodes a base64 key (standard alphabet) that must be 32 bytes.
pub fn decode_key(id: &str, base64: &SecretString) -> Result<SecretBox<[u8; 32]>, CryptoError> {
    let bad = |message: &str| CryptoError::BadKey {
        id: id.to_string(),
        message: message.to_string(),
    };
    let bytes = B64
        .decode(base64.expose_secret().trim())
        .map_err(|_| bad("not valid base64"))?;
    let array: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| bad("must be 32 bytes (44 base64 characters)"))?;
    Ok(SecretBox::new(Box::new(array)))
}

/// Encodes a key as base64 for a key file or a setting.
pub fn encode_key(key: &SecretBox<[u8; 32]>) -> SecretString {
    SecretString::from(B64.encode(key.expose_secret()))
}

impl Keyring {
    /// A keyring of `keys`; `current` names the sealing key (optional when there is one key).
    pub fn new(
        keys: Vec<(String, SecretBox<[u8; 32]>)>,
        current: Option<&str>,
    ) -> Result<Keyring, CryptoError> {
        let mut map = BTreeMap::new();
        let mut derivation = BTreeMap::new();
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, DERIVATION_SALT);
        for (id, bytes) in keys {
            if !valid_key_id(&id) {
                return Err(CryptoError::BadKeyId(id));
            }
            derivation.insert(id.clone(), salt.extract(bytes.expose_secret()));
            let unbound = UnboundKey::new(&AES_256_GCM, bytes.expose_secret()).map_err(|_| {
                CryptoError::BadKey {
                    id: id.clone(),
                    message: "not an AES-256 key".into(),
                }
            })?;
            map.insert(id, LessSafeKey::new(unbound));
        }
        let current = match current {
            Some(c) if map.contains_key(c) => c.to_string(),
            Some(c) => return Err(CryptoError::UnknownCurrent(c.to_string())),
            None if map.len() == 1 => map.keys().next().cloned().expect("one key"),
            None if map.is_empty() => return Err(CryptoError::NoKeys),
            None => return Err(CryptoError::NoCurrent),
        };
        Ok(Keyring {
            keys: map,
            derivation,
            current,
            rng: SystemRandom::new(),
        })
    }

    /// The id of the key new seals use.
    pub fn current_id(&self) -> &str {
        &self.current
    }

    pub fn has_key(&self, id: &str) -> bool {
        self.keys.contains_key(id)
    }

    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Seals `plaintext` under the current key, bound to `context`.
    pub fn seal(&self, plaintext: &[u8], context: &str) -> String {
        let key = &self.keys[&self.current];
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .expect("the OS random generator works");
        let mut buf = plaintext.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(context.as_bytes()),
            &mut buf,
        )
        .expect("AES-GCM seals any input of this size");
        let mut framed = Vec::with_capacity(NONCE_LEN + buf.len());
        framed.extend_from_slice(&nonce);
        framed.extend_from_slice(&buf);
        format!("{SEALED_PREFIX}{}:{}", self.current, B64.encode(framed))
    }

    /// Opens a value sealed under any configured key, bound to `context`.
    pub fn open(&self, sealed: &str, context: &str) -> Result<Vec<u8>, CryptoError> {
        let id = sealed_key_id(sealed).ok_or(CryptoError::Malformed)?;
        let key = self
            .keys
            .get(id)
            .ok_or_else(|| CryptoError::MissingKey(id.to_string()))?;
        let body = &sealed[SEALED_PREFIX.len() + id.len() + 1..];
        let framed = B64.decode(body).map_err(|_| CryptoError::Malformed)?;
        if framed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(CryptoError::Malformed);
        }
        let (nonce, rest) = framed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Malformed)?;
        let mut buf = rest.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .map_err(|_| CryptoError::Unauthentic(id.to_string()))?;
        Ok(plain.to_vec())
    }

    /// Seals a secret string (see [`Keyring::seal`]).
    pub fn seal_secret(&self, secret: &SecretString, context: &str) -> String {
        self.seal(secret.expose_secret().as_bytes(), context)
    }

    /// Opens a sealed secret string (see [`Keyring::open`]).
    pub fn open_secret(&self, sealed: &str, context: &str) -> Result<SecretString, CryptoError> {
        let bytes = self.open(sealed, context)?;
        String::from_utf8(bytes)
            .map(SecretString::from)
            .map_err(|_| CryptoError::Malformed)
    }

    /// True when `sealed` was sealed by a key other than the current one (rekey re-seals it).
    pub fn is_stale(&self, sealed: &str) -> bool {
        sealed_key_id(sealed) != Some(self.current.as_str())
    }

    /// An HMAC-SHA256 key for `purpose` (e.g. `"dashboard-session"`), derived with HKDF from
    /// configured key `id`; `None` when no such key is configured. The same keys give the same
    /// MAC key on every broker and after every restart; another purpose gives another key.
    pub fn mac_key(&self, id: &str, purpose: &str) -> Option<hmac::Key> {
        let info = [purpose.as_bytes()];
        let okm = self
            .derivation
            .get(id)?
            .expand(&info, hmac::HMAC_SHA256)
            .ok()?;
        Some(hmac::Key::from(okm))
    }

    /// [`Keyring::mac_key`] of the current key, with its id (to name in what it signs).
    pub fn current_mac_key(&self, purpose: &str) -> (&str, hmac::Key) {
        let key = self
            .mac_key(&self.current, purpose)
            .expect("the current key is configured");
        (&self.current, key)
    }

    /// Wraps a data key under the current key, bound to `context` (e.g. the instance id).
    pub fn wrap(&self, data_key: &DataKey, context: &str) -> String {
        self.seal(data_key.expose(), context)
    }

    /// Unwraps a data key wrapped under any configured key.
    pub fn unwrap(&self, wrapped: &str, context: &str) -> Result<DataKey, CryptoError> {
        let bytes = self.open(wrapped, context)?;
        let array: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::Malformed)?;
        Ok(DataKey(SecretBox::new(Box::new(array))))
    }
}

#[cfg(test)]
mod tests;
