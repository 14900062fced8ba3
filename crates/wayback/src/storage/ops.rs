//! The operations of [`ObjectStore`]: validate the key, dispatch to the backend, and stop when
//! the store's cancellation token fires.
//!
//! The fault injector's futures are boxed ([`futures::future::BoxFuture`]) because it calls back
//! into an `ObjectStore`: without the box the future types would contain themselves.

use std::future::Future;
use std::ops::Range;

use bytes::Bytes;
use tokio::io::AsyncRead;

use super::key::{validate_key, validate_prefix};
use super::{Backend, ObjectMeta, ObjectReader, ObjectStore, Op, PutInfo, StorageError};

impl ObjectStore {
    /// Stores `bytes` under `key`, replacing any object there; returns once durable.
    pub async fn put(&self, key: &str, bytes: impl Into<Bytes>) -> Result<(), StorageError> {
        validate_key(key)?;
        let bytes = bytes.into();
        self.guard(Op::Put, key, async {
            match &self.backend {
                Backend::S3(s) => s.put(key, bytes).await,
                Backend::Local(l) => l.put(key, bytes).await,
                Backend::Faulty(f) => f.put(key, bytes).await,
            }
        })
        .await
    }

    /// Streams `reader` to `key` without holding the whole object: S3 uploads parts of the
    /// configured size (multipart above one part), a bounded number at a time, and aborts the
    /// upload on any error or cancellation; a local store writes a temporary file and renames it.
    /// Returns once durable.
    pub async fn put_stream<R>(&self, key: &str, mut reader: R) -> Result<PutInfo, StorageError>
    where
        R: AsyncRead + Unpin + Send,
    {
        validate_key(key)?;
        let reader: &mut (dyn AsyncRead + Unpin + Send) = &mut reader;
        match &self.backend {
            // S3 watches the token itself, so that it can abort the multipart upload.
            Backend::S3(s) => s.put_stream(key, reader, &self.cancel).await,
            Backend::Local(l) => {
                self.guard(Op::PutStream, key, l.put_stream(key, reader))
                    .await
            }
            Backend::Faulty(f) => {
                let inner = f.put_stream(key, reader);
                self.guard(Op::PutStream, key, inner).await
            }
        }
    }

    /// The whole object, or `None` when it is definitely absent.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        validate_key(key)?;
        self.guard(Op::Get, key, async {
            match &self.backend {
                Backend::S3(s) => s.get(key).await,
                Backend::Local(l) => l.get(key).await,
                Backend::Faulty(f) => f.get(key).await,
            }
        })
        .await
    }

    /// A reader over the object, or `None` when it is definitely absent. The token stops the
    /// opening of the object, not the reading: drop the reader to stop that.
    pub async fn get_stream(&self, key: &str) -> Result<Option<ObjectReader>, StorageError> {
        validate_key(key)?;
        self.guard(Op::GetStream, key, async {
            match &self.backend {
                Backend::S3(s) => s.get_stream(key).await,
                Backend::Local(l) => l.get_stream(key).await,
                Backend::Faulty(f) => f.get_stream(key).await,
            }
        })
        .await
    }

    /// Bytes `range` of the object, or `None` when it is absent. The range must lie within the
    /// object (S3 servers disagree about clipping, so we refuse rather than guess).
    pub async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
    ) -> Result<Option<Bytes>, StorageError> {
        validate_key(key)?;
        if range.start >= range.end {
            return Err(StorageError::permanent(
                Op::GetRange,
                self.location(key),
                format!("empty range {range:?}"),
            ));
        }
        self.guard(Op::GetRange, key, async {
            match &self.backend {
                Backend::S3(s) => s.get_range(key, range).await,
                Backend::Local(l) => l.get_range(key, range).await,
                Backend::Faulty(f) => f.get_range(key, range).await,
            }
        })
        .await
    }

    /// Size and time of the object, or `None` when it is absent.
    ///
    /// On S3 a HEAD cannot tell a missing key from a missing bucket (both are a bare 404): call
    /// [`ObjectStore::check`] once at start-up, and use `get` where absence decides something.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        validate_key(key)?;
        self.guard(Op::Head, key, async {
            match &self.backend {
                Backend::S3(s) => s.head(key).await,
                Backend::Local(l) => l.head(key).await,
                Backend::Faulty(f) => f.head(key).await,
            }
        })
        .await
    }

    /// Every object whose key starts with `prefix` (a plain string prefix: `wal/0000000100`
    /// matches `wal/000000010000000000000001`), sorted by key. Pages under the hood.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        validate_prefix(prefix)?;
        self.guard(Op::List, prefix, async {
            match &self.backend {
                Backend::S3(s) => s.list(prefix).await,
                Backend::Local(l) => l.list(prefix).await,
                Backend::Faulty(f) => f.list(prefix).await,
            }
        })
        .await
    }

    /// Deletes the object; an absent object is fine.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        validate_key(key)?;
        self.guard(Op::Delete, key, async {
            match &self.backend {
                Backend::S3(s) => s.delete(key).await,
                Backend::Local(l) => l.delete(key).await,
                Backend::Faulty(f) => f.delete(key).await,
            }
        })
        .await
    }

    /// Deletes every object named (S3: batches of 1000); absent objects are fine. Fails with the
    /// first error after trying every batch.
    pub async fn delete_many(&self, keys: &[String]) -> Result<(), StorageError> {
        for key in keys {
            validate_key(key)?;
        }
        let first = keys.first().map(String::as_str).unwrap_or("");
        self.guard(Op::DeleteMany, first, async {
            match &self.backend {
                Backend::S3(s) => s.delete_many(keys).await,
                Backend::Local(l) => l.delete_many(keys).await,
                Backend::Faulty(f) => f.delete_many(keys).await,
            }
        })
        .await
    }

    /// Proves that the store is usable: S3 lists one key under the prefix (credentials, bucket,
    /// endpoint); a local store checks that its directory exists.
    pub async fn check(&self) -> Result<(), StorageError> {
        self.guard(Op::Check, "", async {
            match &self.backend {
                Backend::S3(s) => s.check().await,
                Backend::Local(l) => l.check().await,
                Backend::Faulty(f) => f.check().await,
            }
        })
        .await
    }

    async fn guard<T>(
        &self,
        op: Op,
        key: &str,
        work: impl Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Err(StorageError::Cancelled {
                op,
                location: self.location(key),
            }),
            result = work => result,
        }
    }
}
