//! A directory as an object store: the embedded default, and the reference the S3 backend is
//! tested against.
//!
//! A key is a path under the root. A write goes to a temporary file in the object's own
//! directory (so the rename cannot cross filesystems), is fsynced, renamed over the key and the
//! directory is fsynced: after a crash the object is either the old one or the new one, and once
//! `put` returns it survives power loss. Directories created on the way are fsynced into their
//! parents too. Temporary names start with [`TEMP_MARKER`](super::key::TEMP_MARKER), which keys
//! may not, and listings skip them. Empty directories left by `delete` stay: S3 has no
//! directories, so nothing depends on them, and removing them would race with a concurrent `put`
//! into the same directory.
//!
//! Unlike S3, a key cannot be both an object and a "directory" (`a` and `a/b`): such a `put`
//! fails with a permanent error.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::local_fs::{absent_is_none, create_dirs_durably, meta_of, open_file, walk, TempFile};
use super::{ObjectMeta, ObjectReader, Op, PutInfo, StorageError};

/// A local-directory store; cheap to clone.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: Arc<PathBuf>,
}

impl LocalStore {
    /// Opens (creating if needed) the directory `root`.
    pub fn open(root: &Path) -> Result<Self, StorageError> {
        let store = Self {
            root: Arc::new(root.to_owned()),
        };
        fs::create_dir_all(root)
            .map_err(|e| StorageError::from_io(Op::Check, store.location(""), &e))?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn location(&self, key: &str) -> String {
        format!("file://{}/{key}", self.root.display())
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        op: Op,
        key: &str,
        work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, StorageError> {
        match tokio::task::spawn_blocking(work).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(StorageError::from_io(op, self.location(key), &e)),
            Err(join) => Err(StorageError::transient(op, self.location(key), join)),
        }
    }

    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        let (root, path) = ((*self.root).clone(), self.path(key));
        self.blocking(Op::Put, key, move || {
            let dir = path.parent().expect("a key has a parent: the root");
            create_dirs_durably(&root, dir)?;
            let (temp, mut file) = TempFile::create(dir)?;
            file.write_all(&bytes)?;
            temp.persist(file, &path)
        })
        .await
    }

    pub async fn put_stream(
        &self,
        key: &str,
        reader: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<PutInfo, StorageError> {
        let (root, path) = ((*self.root).clone(), self.path(key));
        let dir = path
            .parent()
            .expect("a key has a parent: the root")
            .to_owned();
        let (temp, file) = self
            .blocking(Op::PutStream, key, move || {
                create_dirs_durably(&root, &dir)?;
                TempFile::create(&dir)
            })
            .await?;
        let io = |e: std::io::Error| StorageError::from_io(Op::PutStream, self.location(key), &e);
        let mut file = tokio::fs::File::from_std(file);
        let mut crc = crc32fast::Hasher::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                break;
            }
            crc.update(&buf[..n]);
            size += n as u64;
            file.write_all(&buf[..n]).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        let file = file.into_std().await;
        self.blocking(Op::PutStream, key, move || temp.persist(file, &path))
            .await?;
        Ok(PutInfo {
            size,
            crc32: crc.finalize(),
        })
    }

    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        let path = self.path(key);
        self.blocking(Op::Get, key, move || absent_is_none(fs::read(path)))
            .await
            .map(|o| o.map(Bytes::from))
    }

    pub async fn get_stream(&self, key: &str) -> Result<Option<ObjectReader>, StorageError> {
        let path = self.path(key);
        let file = self
            .blocking(Op::GetStream, key, move || absent_is_none(open_file(&path)))
            .await?;
        Ok(file.map(|f| ObjectReader::new(tokio::fs::File::from_std(f))))
    }

    pub async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
    ) -> Result<Option<Bytes>, StorageError> {
        let path = self.path(key);
        let location = self.location(key);
        let read = self
            .blocking(Op::GetRange, key, move || {
                let Some(mut file) = absent_is_none(open_file(&path))? else {
                    return Ok(None);
                };
                let size = file.metadata()?.len();
                if range.end > size {
                    return Ok(Some(Err(size)));
                }
                file.seek(SeekFrom::Start(range.start))?;
                let mut buf = vec![0u8; (range.end - range.start) as usize];
                file.read_exact(&mut buf)?;
                Ok(Some(Ok(Bytes::from(buf))))
            })
            .await?;
        match read {
            None => Ok(None),
            Some(Ok(bytes)) => Ok(Some(bytes)),
            Some(Err(size)) => Err(StorageError::permanent(
                Op::GetRange,
                location,
                format!("range ends beyond the object's {size} bytes"),
            )),
        }
    }

    pub async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let (path, key_owned) = (self.path(key), key.to_owned());
        self.blocking(Op::Head, key, move || {
            let meta = absent_is_none(fs::metadata(&path))?;
            Ok(meta.filter(|m| m.is_file()).map(|m| meta_of(key_owned, &m)))
        })
        .await
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let root = (*self.root).clone();
        let prefix_owned = prefix.to_owned();
        self.blocking(Op::List, prefix, move || {
            // Start from the deepest directory the prefix names, then filter by the whole prefix.
            let start = prefix_owned.rfind('/').map_or("", |i| &prefix_owned[..i]);
            let mut found = Vec::new();
            walk(&root, start, &prefix_owned, &mut found)?;
            found.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(found)
        })
        .await
    }

    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path(key);
        self.blocking(Op::Delete, key, move || {
            absent_is_none(fs::remove_file(&path)).map(drop)
        })
        .await
    }

    pub async fn delete_many(&self, keys: &[String]) -> Result<(), StorageError> {
        let mut first_error = None;
        for key in keys {
            if let Err(e) = self.delete(key).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    pub async fn check(&self) -> Result<(), StorageError> {
        let root = (*self.root).clone();
        self.blocking(Op::Check, "", move || {
            if fs::metadata(&root)?.is_dir() {
                Ok(())
            } else {
                Err(std::io::Error::from_raw_os_error(
                    nix::errno::Errno::ENOTDIR as i32,
                ))
            }
        })
        .await
    }
}
