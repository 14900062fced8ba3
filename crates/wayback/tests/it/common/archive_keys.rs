//! Reading an encrypted archive back in tests the way wayback does: the instance's data key
//! unwrapped from its `key.json` with the broker's keyring (the key generated into the test
//! app's data directory, or the keys a test configured), then frames and backup parts opened.

use std::path::Path;

use wayback::archive::frame::{self, FrameHeader, Sealing};
use wayback::archive::keydoc::{self, ArchiveKey};
use wayback::archive::manifest::BackupManifest;
use wayback::config::Settings;
use wayback::storage::ObjectStore;

/// The keyring a broker with `settings` (keys configured, else its data directory's generated
/// key) uses; never generates one.
pub fn keyring(settings: &Settings, data_dir: &Path) -> wayback::crypto::Keyring {
    wayback::crypto::keyfile::keyring(
        &settings.encryption.keys,
        settings.encryption.current_key.as_deref(),
        data_dir,
        wayback::crypto::keyfile::WhenNoKey::Existing,
    )
    .expect("the broker's keyring")
}

/// The data key of the instance archive at `prefix` (`spaces/…/instances/…`), if encrypted,
/// as the broker of `data_dir` with no configured keys sees it.
pub async fn data_key(store: &ObjectStore, data_dir: &Path, prefix: &str) -> Option<ArchiveKey> {
    let ring = keyring(&Settings::default(), data_dir);
    keydoc::data_key(store, Some(&ring), prefix)
        .await
        .expect("the instance's data key unwraps")
        .map(ArchiveKey)
}

/// Decodes the archived WAL object at `object_key` with `key` (None: a frame in clear).
pub fn decode_frame(
    bytes: &[u8],
    object_key: &str,
    key: Option<&ArchiveKey>,
) -> Result<(FrameHeader, Vec<u8>), frame::FrameError> {
    let cipher = key.map(ArchiveKey::cipher);
    let name = object_key.rsplit('/').next().expect("a key");
    frame::decode_with(
        bytes,
        cipher.as_ref().map(|cipher| Sealing { cipher, name }),
    )
}

/// The zstd frame of a stored backup part (decrypted when the manifest says its parts are).
pub fn part_payload(
    stored: &[u8],
    part_key: &str,
    m: &BackupManifest,
    key: Option<&ArchiveKey>,
) -> Vec<u8> {
    if !m.parts_encrypted() {
        return stored.to_vec();
    }
    key.expect("an encrypted backup needs its data key")
        .cipher()
        .open(stored, part_key.as_bytes())
        .expect("the part opens with its instance's key")
}

/// SHA-256 as the manifest records it: plain, or keyed when the parts are encrypted.
pub fn part_digest(raw: &[u8], m: &BackupManifest, key: Option<&ArchiveKey>) -> String {
    let cipher = key.filter(|_| m.parts_encrypted()).map(ArchiveKey::cipher);
    hex::encode(frame::content_digest(raw, cipher.as_ref()))
}

/// The key a broker generated into `data_dir` (`encryption-key`: `<id>:<base64>`), to configure
/// another broker with, as an operator moving to a new state database keeps the keys.
pub fn generated_key(data_dir: &Path) -> (String, secrecy::SecretString) {
    let text = std::fs::read_to_string(data_dir.join(wayback::crypto::keyfile::KEY_FILE))
        .expect("the generated key file");
    let (id, b64) = text.trim().split_once(':').expect("<id>:<base64>");
    (id.to_string(), secrecy::SecretString::from(b64.to_string()))
}
