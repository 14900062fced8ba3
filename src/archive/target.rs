//! The archive target file: what `wal-push` and `wal-fetch` need, kept in the instance's
//! directory with mode 0600 and owned by the cluster's OS user, so that no credential appears
//! in `postgresql.conf` or in `ps`.

use std::path::Path;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::ArchiveError;
use crate::storage::StorageSettings;

/// Where an instance archives, and (while it restores) where it reads from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ArchiveTarget {
    pub storage: StorageFile,
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
}

fn default_fetch_retry_secs() -> u64 {
    60
}

/// The archive a restore reads WAL from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RestoreSource {
    pub prefix: String,
    pub system_identifier: u64,
}

/// The storage settings as written to the target file (the secret in clear: the file is
/// private to the cluster's OS user).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StorageFile {
    pub url: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub force_path_style: bool,
    pub allow_http: bool,
    pub connect_timeout_ms: u64,
    pub attempt_timeout_secs: u64,
    pub max_attempts: u32,
    pub part_size_mib: usize,
    pub upload_concurrency: usize,
}

impl StorageFile {
    /// Captures settings, with the AWS_* environment resolved now: PostgreSQL runs the
    /// archiver with its own environment, not the broker's.
    pub fn from_settings(s: &StorageSettings) -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            url: s.url.clone(),
            endpoint: s
                .endpoint
                .clone()
                .or_else(|| env("AWS_ENDPOINT_URL_S3"))
                .or_else(|| env("AWS_ENDPOINT_URL")),
            region: s
                .region
                .clone()
                .or_else(|| env("AWS_REGION"))
                .or_else(|| env("AWS_DEFAULT_REGION")),
            access_key_id: s.access_key_id.clone().or_else(|| env("AWS_ACCESS_KEY_ID")),
            secret_access_key: s
                .secret_access_key
                .as_ref()
                .map(|k| k.expose_secret().to_string())
                .or_else(|| env("AWS_SECRET_ACCESS_KEY")),
            force_path_style: s.force_path_style,
            allow_http: s.allow_http,
            connect_timeout_ms: s.connect_timeout_ms,
            attempt_timeout_secs: s.attempt_timeout_secs,
            max_attempts: s.max_attempts,
            part_size_mib: s.part_size_mib,
            upload_concurrency: s.upload_concurrency,
        }
    }

    pub fn to_settings(&self) -> StorageSettings {
        StorageSettings {
            url: self.url.clone(),
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone().map(SecretString::from),
            force_path_style: self.force_path_style,
            allow_http: self.allow_http,
            connect_timeout_ms: self.connect_timeout_ms,
            attempt_timeout_secs: self.attempt_timeout_secs,
            max_attempts: self.max_attempts,
            part_size_mib: self.part_size_mib,
            upload_concurrency: self.upload_concurrency,
            ..StorageSettings::default()
        }
    }
}

impl ArchiveTarget {
    /// The target of instance `id` in `space` (system identifier filled in by the runtime).
    pub fn for_instance(
        settings: &crate::config::Settings,
        space: &crate::domain::SpaceGuid,
        id: &crate::domain::InstanceId,
    ) -> Self {
        Self {
            storage: StorageFile::from_settings(&settings.archive),
            prefix: super::layout::InstancePrefix::new(space, id)
                .as_str()
                .to_string(),
            system_identifier: 0,
            compression_level: settings.wal.compression_level,
            push_ahead: settings.wal.push_ahead,
            fetch_ahead: settings.wal.fetch_ahead,
            fetch_retry_secs: default_fetch_retry_secs(),
            restore_from: None,
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
        f.write_all(&text)
            .and_then(|_| f.sync_all())
            .map_err(|e| ArchiveError::io(format!("write {}", tmp.display()), e))?;
        std::fs::rename(&tmp, path)
            .map_err(|e| ArchiveError::io(format!("rename {}", path.display()), e))
    }

    pub fn open_store(&self) -> Result<crate::storage::ObjectStore, ArchiveError> {
        Ok(crate::storage::ObjectStore::open(
            &self.storage.to_settings(),
        )?)
    }
}
