//! The archive target file: what `wal-push` and `wal-fetch` need, kept in the instance's
//! directory with mode 0600 and owned by the cluster's OS user, so that no credential appears
//! in `postgresql.conf` or in `ps`.
//!
//! When the instance's archive is encrypted the file also carries its unwrapped data key (and,
//! while it restores, the source's): `wal-push` and `wal-fetch` run as the cluster's OS user
//! and must not hold the operator's keyring, so this private file — which already holds the
//! storage credentials — is where the cluster's own key lives. `Debug` redacts the keys.

use std::path::Path;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::keydoc::ArchiveKey;
use super::ArchiveError;
use crate::storage::StorageSettings;

/// Where an instance archives, and (while it restores) where it reads from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArchiveTarget {
    /// Where the archive is (the secret written in clear: the file is private).
    pub storage: StorageSettings,
    /// This instance's prefix (`spaces/<space>/instances/<id>`): the only one it writes.
    pub prefix: String,
    /// The cluster's system identifier: WAL of any other cluster is refused.
    pub system_identifier: u64,
    pub compression_level: i32,
    pub push_ahead: usize,
    pub fetch_ahead: usize,
    /// How long `wal-fetch` retries a transient storage error before it gives up with 126.
    #[serde(default = "default_fetch_retry_secs")]
    pub fetch_retry_secs: u64,
    /// Set while the cluster restores from another instance's archive (a clone).
    pub restore_from: Option<RestoreSource>,
    /// The data key this instance's archive is encrypted with (`key.json`); None: in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_key: Option<ArchiveKey>,
}

fn default_fetch_retry_secs() -> u64 {
    60
}

/// The archive a restore reads WAL from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RestoreSource {
    pub prefix: String,
    pub system_identifier: u64,
    /// The source archive's data key; None: the source is in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_key: Option<ArchiveKey>,
}

/// The storage settings with the AWS_* environment captured now: PostgreSQL runs the archiver
/// with its own environment, not the broker's.
pub fn capture_environment(s: &StorageSettings) -> StorageSettings {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let mut s = s.clone();
    s.endpoint = s
        .endpoint
        .or_else(|| env("AWS_ENDPOINT_URL_S3"))
        .or_else(|| env("AWS_ENDPOINT_URL"));
    s.region = s
        .region
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"));
    s.access_key_id = s.access_key_id.or_else(|| env("AWS_ACCESS_KEY_ID"));
    s.secret_access_key = s
        .secret_access_key
        .or_else(|| env("AWS_SECRET_ACCESS_KEY").map(SecretString::from));
    s
}

impl ArchiveTarget {
    /// The target of instance `id` in `space` (system identifier filled in by the runtime).
    pub fn for_instance(
        settings: &crate::config::Settings,
        space: &crate::domain::SpaceGuid,
        id: &crate::domain::InstanceId,
    ) -> Self {
        Self {
            storage: capture_environment(&settings.archive),
            prefix: super::layout::InstancePrefix::new(space, id)
                .as_str()
                .to_string(),
            system_identifier: 0,
            compression_level: settings.wal.compression_level,
            push_ahead: settings.wal.push_ahead,
            fetch_ahead: settings.wal.fetch_ahead,
            fetch_retry_secs: default_fetch_retry_secs(),
            restore_from: None,
            data_key: None,
        }
    }

    pub fn load(path: &Path) -> Result<Self, ArchiveError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ArchiveError::io(format!("read {}", path.display()), e))?;
        serde_json::from_str(&text)
            .map_err(|e| ArchiveError::Target(format!("{}: {e}", path.display())))
    }

    /// Writes the file atomically with mode 0600 (the caller chowns it to the cluster's user).
    pub fn write(&self, path: &Path) -> Result<(), ArchiveError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = path.with_extension("json.tmp");
        let text =
            serde_json::to_vec_pretty(self).map_err(|e| ArchiveError::Target(e.to_string()))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| ArchiveError::io(format!("write {}", tmp.display()), e))?;
        // A leftover temporary file keeps its old mode through `open`: set it.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| ArchiveError::io(format!("chmod {}", tmp.display()), e))?;
        f.write_all(&text)
            .and_then(|_| f.sync_all())
            .map_err(|e| ArchiveError::io(format!("write {}", tmp.display()), e))?;
        std::fs::rename(&tmp, path)
            .map_err(|e| ArchiveError::io(format!("rename {}", path.display()), e))
    }

    pub fn open_store(&self) -> Result<crate::storage::ObjectStore, ArchiveError> {
        Ok(crate::storage::ObjectStore::open(&self.storage)?)
    }
}
