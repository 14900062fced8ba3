//! Object storage: where archived WAL and base backups live.
//!
//! [`ObjectStore`] is one cheap-to-clone handle over one enum of backends ([`Backend`]): S3 (any
//! S3-compatible server, through aws-sdk-s3), a local directory, and [`Backend::Faulty`], a
//! wrapper that injects failures for tests. The archive layer sees the same contract whatever the
//! backend; `tests/it/storage_contract/` runs one suite against a directory and a real S3 server.
//!
//! The contract, which the archive rules of docs/architecture.md §7 lean on:
//!
//! - `put` / `put_stream` return only once the object is durable: S3 answered 2xx to a request
//!   that carried our own CRC32 of the bytes (the server checks it), or the file and its
//!   directory were fsynced after an atomic rename. A reader never sees half an object.
//! - Reads of a whole S3 object check the CRC32 the server stored with it and fail rather than
//!   return damaged bytes. Multipart objects carry only a composite checksum that no reader can
//!   check, so keep [`PutInfo::crc32`] (in a manifest) for anything sent with `put_stream`.
//! - `put` replaces an existing object. Refusing to overwrite is the archive's rule, not ours.
//! - `get` / `head` answer `Ok(None)` only when the object is definitely absent; every doubt is an
//!   `Err` whose [`StorageError::is_permanent`] says whether a retry can help.
//! - Keys are relative to the URL's prefix and follow [`key::validate_key`]. `list` takes a plain
//!   string prefix (S3 semantics), pages under the hood and returns keys sorted.
//! - Every S3 request has a connect timeout, a per-attempt timeout and a bounded number of
//!   attempts with jittered backoff; a store made with [`ObjectStore::with_cancel`] also stops
//!   when its token fires, aborting a multipart upload in flight. A write that was cancelled (or
//!   failed transiently) may still have happened: retry it, don't assume it absent.
//!
//! Must not import anything from the crate but `domain`: storage knows nothing of OSB, instances
//! or WAL; the archive layer gives keys their meaning.

mod error;
mod faulty;
pub mod key;
mod local;
mod local_fs;
mod ops;
mod reachability;
mod s3;
mod s3_error;
mod s3_list;
mod s3_multipart;
mod settings;

#[cfg(test)]
mod settings_tests;

use std::pin::Pin;
use std::task::{Context, Poll};

use chrono::{DateTime, Utc};
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::sync::CancellationToken;

pub use error::{Op, StorageError};
pub use faulty::{FaultHandle, FaultPlan, FaultyStore};
pub use key::{join_key, validate_key};
pub use local::LocalStore;
pub use reachability::{Outage, Reachability};
pub use s3::S3Store;
pub use settings::{S3Target, StorageSettings, StorageUrl, Target};

/// What `head` and `list` tell about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Relative to the store's root, like every key the caller passes.
    pub key: String,
    pub size: u64,
    /// When the object was last written, if the backend says.
    pub last_modified: Option<DateTime<Utc>>,
}

/// What `put_stream` stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutInfo {
    /// Bytes read from the reader and stored.
    pub size: u64,
    /// CRC32 (IEEE) of those bytes, computed as they were read: worth keeping in a manifest.
    pub crc32: u32,
}

/// The backends, one variant each. Each variant is itself cheap to clone.
#[derive(Debug, Clone)]
pub enum Backend {
    S3(S3Store),
    Local(LocalStore),
    Faulty(FaultyStore),
}

/// A handle on one archive root. Clone it freely: clones share the S3 client and connections.
#[derive(Debug, Clone)]
pub struct ObjectStore {
    backend: Backend,
    cancel: CancellationToken,
}

impl ObjectStore {
    /// Opens the store the settings describe. Does no network I/O (see [`ObjectStore::check`]);
    /// creates a local store's directory if it is missing.
    pub fn open(settings: &StorageSettings) -> Result<Self, StorageError> {
        let backend = match settings.resolve()? {
            Target::Local { dir } => Backend::Local(LocalStore::open(&dir)?),
            Target::S3(target) => Backend::S3(S3Store::new(&target)),
        };
        Ok(Self::from_backend(backend))
    }

    /// A store over a local directory, created if missing.
    pub fn local(dir: &std::path::Path) -> Result<Self, StorageError> {
        Ok(Self::from_backend(Backend::Local(LocalStore::open(dir)?)))
    }

    /// Wraps `inner` in a fault injector; the handle controls what fails.
    pub fn faulty(inner: ObjectStore) -> (Self, FaultHandle) {
        let (store, handle) = FaultyStore::new(inner);
        (Self::from_backend(Backend::Faulty(store)), handle)
    }

    pub fn from_backend(backend: Backend) -> Self {
        Self {
            backend,
            cancel: CancellationToken::new(),
        }
    }

    /// The same store, whose calls end with [`StorageError::Cancelled`] once `cancel` fires.
    pub fn with_cancel(&self, cancel: CancellationToken) -> Self {
        Self {
            backend: self.backend.clone(),
            cancel,
        }
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Where `key` lives, for messages: `s3://bucket/prefix/key` or `file:///dir/key`.
    pub fn location(&self, key: &str) -> String {
        match &self.backend {
            Backend::S3(s) => s.location(key),
            Backend::Local(l) => l.location(key),
            Backend::Faulty(f) => f.inner().location(key),
        }
    }
}

/// The body of an object being read: an [`AsyncRead`] that ends with an error, not a short read,
/// if the backend fails or a checksum does not match.
pub struct ObjectReader {
    inner: Pin<Box<dyn AsyncRead + Send>>,
}

impl ObjectReader {
    pub fn new(reader: impl AsyncRead + Send + 'static) -> Self {
        Self {
            inner: Box::pin(reader),
        }
    }
}

impl std::fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ObjectReader")
    }
}

impl AsyncRead for ObjectReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.inner.as_mut().poll_read(cx, buf)
    }
}
