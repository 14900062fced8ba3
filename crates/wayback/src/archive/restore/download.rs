//! Downloading a base backup: parts fetched and decompressed a few at a time, verified, and
//! handed in order to the unpacker.
//!
//! Each part is one task (download, CRC32 of the stored bytes, decryption when the manifest says
//! the parts are encrypted, zstd decompression, SHA-256 — or the keyed hash — of the raw bytes), so parts progress on their own while the unpacker writes an earlier one;
//! `buffered` keeps at most `parallel` of them in flight and yields them in tar order. The
//! unpacker runs on a blocking thread fed through a channel of one part. Memory is bounded by
//! the parts in flight — nothing is staged on disk but the unpacked files themselves.

use std::path::Path;
use std::sync::{mpsc, Arc};

use bytes::Bytes;
use futures::StreamExt;

use super::untar;
use super::RestoreError;
use crate::archive::layout::InstancePrefix;
use crate::archive::manifest::{part_key, BackupManifest, BackupPart};
use crate::crypto::archive_cipher::ArchiveCipher;
use crate::pg::fsutil::Owner;
use crate::storage::ObjectStore;

/// A spawned part that stops when the restore gives up on it.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

/// Downloads, verifies and decompresses one part.
async fn fetch_part(
    store: ObjectStore,
    key: String,
    part: BackupPart,
    cipher: Option<Arc<ArchiveCipher>>,
) -> Result<Bytes, RestoreError> {
    let stored = store
        .get(&key)
        .await?
        .ok_or_else(|| RestoreError::Corrupt {
            key: key.clone(),
            detail: "the part is missing although the manifest lists it".into(),
        })?;
    tokio::task::spawn_blocking(move || {
        let corrupt = |detail: String| RestoreError::Corrupt {
            key: key.clone(),
            detail,
        };
        if stored.len() as u64 != part.stored_bytes {
            return Err(corrupt(format!(
                "{} bytes stored, the manifest says {}",
                stored.len(),
                part.stored_bytes
            )));
        }
        let crc = crc32fast::hash(&stored);
        if crc != part.crc32 {
            return Err(corrupt(format!(
                "CRC32 {crc:08x}, the manifest says {:08x}",
                part.crc32
            )));
        }
        let cap = usize::try_from(part.raw_bytes).map_err(|_| corrupt("raw size".into()))?;
        let opened;
        let compressed = match &cipher {
            Some(c) => {
                opened = c
                    .open(&stored, key.as_bytes())
                    .map_err(|e| corrupt(e.to_string()))?;
                &opened[..]
            }
            None => &stored[..],
        };
        let raw =
            zstd::bulk::decompress(compressed, cap).map_err(|e| corrupt(format!("zstd: {e}")))?;
        if raw.len() as u64 != part.raw_bytes {
            return Err(corrupt(format!(
                "{} raw bytes, the manifest says {}",
                raw.len(),
                part.raw_bytes
            )));
        }
        let sha = hex::encode(crate::archive::frame::content_digest(
            &raw,
            cipher.as_deref(),
        ));
        if !sha.eq_ignore_ascii_case(&part.sha256) {
            return Err(corrupt(format!(
                "SHA-256 {sha}, the manifest says {}",
                part.sha256
            )));
        }
        Ok(Bytes::from(raw))
    })
    .await
    .map_err(|e| RestoreError::Io {
        context: "decompress a backup part".into(),
        source: std::io::Error::other(e.to_string()),
    })?
}

/// Where a backup's parts are read from: the archive, the source's prefix and, when the
/// manifest says the parts are encrypted, the source's cipher.
pub(super) struct PartSource<'a> {
    pub store: &'a ObjectStore,
    pub prefix: &'a InstancePrefix,
    pub cipher: Option<Arc<ArchiveCipher>>,
}

/// Downloads backup `m` from `source` and unpacks it into `pgdata` (created, mode 0700, owned
/// by `owner`). Returns the compressed bytes downloaded.
pub(super) async fn download_and_unpack(
    source: PartSource<'_>,
    m: &BackupManifest,
    pgdata: &Path,
    owner: Option<Owner>,
    parallel: usize,
    progress: Option<&super::RestoreProgress>,
) -> Result<u64, RestoreError> {
    let PartSource {
        store,
        prefix,
        cipher,
    } = source;
    let mut parts = m.parts.clone();
    parts.sort_by_key(|p| p.index);
    if parts.iter().enumerate().any(|(i, p)| p.index as usize != i) {
        return Err(RestoreError::Refused(format!(
            "backup {} lists parts {:?}: not a sequence from 0",
            m.backup_id,
            parts.iter().map(|p| p.index).collect::<Vec<_>>()
        )));
    }
    untar::create_data_dir(pgdata, owner)?;
    let (tx, rx) = mpsc::sync_channel::<Bytes>(1);
    let dest = pgdata.to_path_buf();
    let unpacker = tokio::task::spawn_blocking(move || {
        untar::unpack(untar::ChannelReader::new(rx), &dest, owner)
    });

    let mut stream = futures::stream::iter(parts)
        .map(|part| {
            let key = part_key(prefix, &m.backup_id, part.index);
            AbortOnDrop(tokio::spawn(fetch_part(
                store.clone(),
                key,
                part,
                cipher.clone(),
            )))
        })
        .buffered(parallel);
    let mut failure = None;
    while let Some(joined) = stream.next().await {
        let part = match joined {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                failure = Some(e);
                break;
            }
            Err(e) => {
                failure = Some(RestoreError::Io {
                    context: "download a backup part".into(),
                    source: std::io::Error::other(e.to_string()),
                });
                break;
            }
        };
        // A closed channel means the unpacker stopped: its error says why. Counted when handed
        // over: the unpacker holds at most one part, so the figure is never far ahead.
        let raw_len = part.len() as u64;
        let tx = tx.clone();
        let sent = tokio::task::spawn_blocking(move || tx.send(part)).await;
        if !matches!(sent, Ok(Ok(()))) {
            break;
        }
        if let Some(p) = progress {
            p.add_bytes(raw_len);
        }
    }
    // Parts still in flight are aborted with the stream.
    drop(stream);
    drop(tx);
    let unpacked = unpacker.await.map_err(|e| RestoreError::Io {
        context: "unpack the base backup".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    let files = unpacked?;
    tracing::debug!(backup = %m.backup_id, files, "unpacked");
    Ok(m.parts.iter().map(|p| p.stored_bytes).sum())
}
