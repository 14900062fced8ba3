//! `key.json`: an instance's archive data key, wrapped by the operator's keyring, kept in the
//! archive itself so that the archive stays self-contained.
//!
//! ```json
//! {"version":1,"key_id":"k2","wrapped":"wbenc:v1:k2:…"}
//! ```
//!
//! The data key is generated when an instance's archive is first configured (provision, clone,
//! restore target) while `archive.encrypt` is on, and wrapped with [`Keyring::wrap`] under the
//! current key, bound to the instance's prefix (a `key.json` copied to another prefix does not
//! unwrap). Its presence is what says an instance's archive is encrypted, for its whole life: an
//! instance that started without one stays in clear. Reindex, a restore after the state database
//! is lost and `wayback rekey` need only the operator's keys. Rekey rewraps (never regenerates):
//! the data stays as it is.
//!
//! `wal-push` / `wal-fetch` run as the cluster's OS user and never see the keyring: the cluster's
//! private archive target file carries the unwrapped data key ([`ArchiveKey`], base64) instead.
//!
//! Must not import `osb`, `broker`, `store` or `jobs`.

use std::fmt;

use futures::StreamExt;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::layout::InstancePrefix;
use super::ArchiveError;
use crate::crypto::archive_cipher::ArchiveCipher;
use crate::crypto::{sealed_key_id, CryptoError, DataKey, Keyring};
use crate::storage::ObjectStore;

/// The document's format version.
pub const VERSION: u32 = 1;

/// The name of the document in an instance prefix.
pub const FILE: &str = "key.json";

/// Parallel requests while rewrapping every instance's key.
const REWRAP_CONCURRENCY: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDoc {
    pub version: u32,
    /// The operator key that wraps the data key (also named inside `wrapped`).
    pub key_id: String,
    pub wrapped: String,
}

/// The key of `key.json` under an instance prefix (given as text).
pub fn doc_key(prefix: &str) -> String {
    format!("{prefix}/{FILE}")
}

/// What a wrapped data key is bound to.
fn context(prefix: &str) -> String {
    format!("archive-key:{prefix}")
}

/// An unwrapped data key as the cluster's archive target file carries it: base64 in the file,
/// redacted in `Debug`.
#[derive(Clone)]
pub struct ArchiveKey(pub DataKey);

impl ArchiveKey {
    pub fn cipher(&self) -> ArchiveCipher {
        ArchiveCipher::new(&self.0)
    }
}

impl fmt::Debug for ArchiveKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ArchiveKey(<redacted>)")
    }
}

impl Serialize for ArchiveKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use secrecy::ExposeSecret;
        self.0.to_base64().expose_secret().serialize(s)
    }
}

impl<'de> Deserialize<'de> for ArchiveKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        DataKey::from_base64(&text)
            .map(ArchiveKey)
            .map_err(|_| serde::de::Error::custom("an archive data key must be 32 bytes in base64"))
    }
}

impl PartialEq for ArchiveKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.expose() == other.0.expose()
    }
}

/// A key error named for the operator: which instance, which key id.
fn key_error(prefix: &str, e: CryptoError) -> ArchiveError {
    let instance = InstancePrefix::from_key(&format!("{prefix}/"))
        .map(|(_, id)| id.to_string())
        .unwrap_or_else(|| prefix.to_string());
    ArchiveError::Key(match e {
        CryptoError::MissingKey(id) => format!(
            "the archive of instance {instance} is encrypted with a data key wrapped by key {id}, \
             which is not configured (encryption.keys); configure it to read this archive"
        ),
        CryptoError::Unauthentic(id) => format!(
            "the archive data key of instance {instance} does not unwrap with the configured key \
             {id} (a different key under the same id, or {} was altered)",
            doc_key(prefix)
        ),
        other => format!("the archive data key of instance {instance}: {other}"),
    })
}

/// Reads `key.json` of `prefix`; None when the instance's archive is in clear.
pub async fn load(store: &ObjectStore, prefix: &str) -> Result<Option<KeyDoc>, ArchiveError> {
    let key = doc_key(prefix);
    let Some(bytes) = store.get(&key).await? else {
        return Ok(None);
    };
    let doc: KeyDoc = serde_json::from_slice(&bytes).map_err(|e| ArchiveError::Corrupt {
        key: key.clone(),
        detail: e.to_string(),
    })?;
    if doc.version != VERSION {
        return Err(ArchiveError::Corrupt {
            key,
            detail: format!("key.json version {} is not supported", doc.version),
        });
    }
    Ok(Some(doc))
}

/// The data key of `prefix`'s archive, unwrapped; None when the archive is in clear. A key that
/// is not configured, or does not unwrap, is [`ArchiveError::Key`] naming instance and key id.
pub async fn data_key(
    store: &ObjectStore,
    keyring: Option<&Keyring>,
    prefix: &str,
) -> Result<Option<DataKey>, ArchiveError> {
    let Some(doc) = load(store, prefix).await? else {
        return Ok(None);
    };
    let keyring =
        keyring.ok_or_else(|| key_error(prefix, CryptoError::MissingKey(doc.key_id.clone())))?;
    keyring
        .unwrap(&doc.wrapped, &context(prefix))
        .map(Some)
        .map_err(|e| key_error(prefix, e))
}

/// The data key an instance archives with: the one its `key.json` holds, else (when `encrypt`)
/// a new one, wrapped under the current key and stored first; None: the archive is in clear.
pub async fn ensure(
    store: &ObjectStore,
    keyring: Option<&Keyring>,
    prefix: &str,
    encrypt: bool,
) -> Result<Option<DataKey>, ArchiveError> {
    if let Some(key) = data_key(store, keyring, prefix).await? {
        return Ok(Some(key));
    }
    if !encrypt {
        return Ok(None);
    }
    let keyring = keyring.ok_or_else(|| {
        ArchiveError::Key(format!(
            "archive.encrypt is on but no encryption key is available to wrap the archive key of {prefix}"
        ))
    })?;
    let key = DataKey::generate();
    let doc = KeyDoc {
        version: VERSION,
        key_id: keyring.current_id().to_string(),
        wrapped: keyring.wrap(&key, &context(prefix)),
    };
    store
        .put(
            &doc_key(prefix),
            serde_json::to_vec(&doc).expect("a key document serializes"),
        )
        .await?;
    Ok(Some(key))
}

/// Rewraps `prefix`'s data key under the current key; true when it was wrapped by another key.
pub async fn rewrap(
    store: &ObjectStore,
    keyring: &Keyring,
    prefix: &str,
) -> Result<bool, ArchiveError> {
    let Some(doc) = load(store, prefix).await? else {
        return Ok(false);
    };
    if !keyring.is_stale(&doc.wrapped) {
        return Ok(false);
    }
    let key = keyring
        .unwrap(&doc.wrapped, &context(prefix))
        .map_err(|e| key_error(prefix, e))?;
    let new = KeyDoc {
        version: VERSION,
        key_id: keyring.current_id().to_string(),
        wrapped: keyring.wrap(&key, &context(prefix)),
    };
    debug_assert_eq!(sealed_key_id(&new.wrapped), Some(keyring.current_id()));
    store
        .put(
            &doc_key(prefix),
            serde_json::to_vec(&new).expect("a key document serializes"),
        )
        .await?;
    Ok(true)
}

/// What rewrapping every instance's data key did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RewrapReport {
    /// Instances whose `key.json` was found.
    pub keys: usize,
    /// Of those, rewrapped now (the others already were under the current key).
    pub rewrapped: usize,
    /// Instances whose key could not be rewrapped, with why.
    pub failed: Vec<(String, String)>,
}

/// Rewraps every `spaces/*/instances/*/key.json` under the current key.
pub async fn rewrap_all(
    store: &ObjectStore,
    keyring: &Keyring,
) -> Result<RewrapReport, ArchiveError> {
    let prefixes: Vec<String> = store
        .list("spaces/")
        .await?
        .into_iter()
        .filter_map(|o| {
            let prefix = o.key.strip_suffix(&format!("/{FILE}"))?.to_string();
            InstancePrefix::parse(&prefix).map(|_| prefix)
        })
        .collect();
    let mut report = RewrapReport {
        keys: prefixes.len(),
        ..Default::default()
    };
    let results: Vec<_> = futures::stream::iter(prefixes)
        .map(|p| async move {
            let r = rewrap(store, keyring, &p).await;
            (p, r)
        })
        .buffer_unordered(REWRAP_CONCURRENCY)
        .collect()
        .await;
    for (prefix, r) in results {
        match r {
            Ok(true) => report.rewrapped += 1,
            Ok(false) => {}
            Err(e) => report.failed.push((prefix, e.to_string())),
        }
    }
    report.failed.sort();
    Ok(report)
}

#[cfg(test)]
mod tests;
