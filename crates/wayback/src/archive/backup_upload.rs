//! The parts of a base backup on their way to storage: each part is hashed (SHA-256 of the raw
//! tar bytes), compressed as one zstd frame on the blocking thread pool, CRC32'd and stored,
//! with a bounded number of parts in flight. For an encrypted archive the compressed part is
//! sealed with the instance's [`ArchiveCipher`] (the part's object key as associated data, so a
//! part moved to another name does not open), the recorded hash is keyed instead of a plain
//! SHA-256, and the CRC32 is of what is stored, as before.
//!
//! The bound is what keeps memory flat whatever the database's size: the reader cannot hand over
//! a new part until a slot is free, so at most `in_flight` parts plus the one being filled are
//! held at once. Compression runs off the async threads so that several parts compress on
//! several cores while others upload. Imports only `archive` siblings and `storage`.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::layout::InstancePrefix;
use super::manifest::{part_key, BackupPart};
use super::ArchiveError;
use crate::crypto::archive_cipher::ArchiveCipher;
use crate::storage::ObjectStore;

pub struct PartUploader {
    store: ObjectStore,
    prefix: InstancePrefix,
    backup_id: String,
    level: i32,
    cipher: Option<Arc<ArchiveCipher>>,
    slots: Arc<Semaphore>,
    tasks: JoinSet<Result<BackupPart, ArchiveError>>,
    done: Vec<BackupPart>,
    next: u32,
}

/// Hashes, compresses, (with `sealing`: cipher and the part's key) encrypts and checksums one
/// part (CPU work: run it on the blocking pool).
pub fn encode_part(
    raw: &[u8],
    level: i32,
    sealing: Option<(&ArchiveCipher, &str)>,
) -> std::io::Result<(String, Vec<u8>, u32)> {
    let compressed = zstd::bulk::compress(raw, level)?;
    let (sha, stored) = match sealing {
        Some((cipher, key)) => (
            hex::encode(cipher.keyed_hash(raw)),
            cipher.seal(&compressed, key.as_bytes()),
        ),
        None => (hex::encode(Sha256::digest(raw)), compressed),
    };
    let crc = crc32fast::hash(&stored);
    Ok((sha, stored, crc))
}

impl PartUploader {
    pub fn new(
        store: ObjectStore,
        prefix: InstancePrefix,
        backup_id: String,
        level: i32,
        cipher: Option<Arc<ArchiveCipher>>,
        in_flight: usize,
    ) -> Self {
        Self {
            store,
            prefix,
            backup_id,
            level,
            cipher,
            slots: Arc::new(Semaphore::new(in_flight.max(1))),
            tasks: JoinSet::new(),
            done: Vec::new(),
            next: 0,
        }
    }

    /// Hands over the next part; waits while `in_flight` parts are being worked on. Fails early
    /// with the error of any part that already failed.
    pub async fn submit(&mut self, raw: Vec<u8>) -> Result<(), ArchiveError> {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        while let Some(joined) = self.tasks.try_join_next() {
            self.done.push(joined.map_err(join_error)??);
        }
        let index = self.next;
        self.next += 1;
        let key = part_key(&self.prefix, &self.backup_id, index);
        let (store, level, cipher) = (self.store.clone(), self.level, self.cipher.clone());
        self.tasks.spawn(async move {
            let raw_bytes = raw.len() as u64;
            let name = key.clone();
            let (sha256, stored, crc32) = tokio::task::spawn_blocking(move || {
                encode_part(&raw, level, cipher.as_deref().map(|c| (c, name.as_str())))
            })
            .await
            .map_err(join_error)?
            .map_err(|e| ArchiveError::io(format!("compress part {index}"), e))?;
            let stored_bytes = stored.len() as u64;
            store.put(&key, stored).await?;
            drop(permit);
            Ok(BackupPart {
                index,
                raw_bytes,
                stored_bytes,
                crc32,
                sha256,
            })
        });
        Ok(())
    }

    /// Waits for every part; the parts in order, or the first failure.
    pub async fn finish(&mut self) -> Result<Vec<BackupPart>, ArchiveError> {
        while let Some(joined) = self.tasks.join_next().await {
            self.done.push(joined.map_err(join_error)??);
        }
        let mut parts = std::mem::take(&mut self.done);
        parts.sort_by_key(|p| p.index);
        Ok(parts)
    }

    /// Lets every part in flight end before the caller's cleanup removes the backup's objects.
    /// Aborting them instead would not stop a write already handed to a blocking thread (the
    /// local store's), which could then land after the cleanup and leave a part behind.
    pub async fn drain(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

fn join_error(e: tokio::task::JoinError) -> ArchiveError {
    ArchiveError::Io(format!("a backup task ended abnormally: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_is_one_zstd_frame_with_checksums_of_both_forms() {
        let raw: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let (sha, stored, crc) = encode_part(&raw, 1, None).unwrap();
        assert_eq!(zstd::bulk::decompress(&stored, raw.len()).unwrap(), raw);
        assert_eq!(sha, hex::encode(Sha256::digest(&raw)));
        assert_eq!(crc, crc32fast::hash(&stored));
        assert!(stored.len() < raw.len() / 4);
    }

    #[test]
    fn an_encrypted_part_opens_only_under_its_own_name_and_shows_no_plain_hash() {
        let raw = b"MARKER a tenant's row ".repeat(5000);
        let cipher = ArchiveCipher::new(&crate::crypto::DataKey::generate());
        let key = "spaces/s/instances/i/base/b/data/00000.tar.zst";
        let (sha, stored, crc) = encode_part(&raw, 1, Some((&cipher, key))).unwrap();
        assert!(!stored.windows(6).any(|w| w == b"MARKER"));
        assert_ne!(sha, hex::encode(Sha256::digest(&raw)));
        assert_eq!(sha, hex::encode(cipher.keyed_hash(&raw)));
        assert_eq!(crc, crc32fast::hash(&stored));
        let opened = cipher.open(&stored, key.as_bytes()).unwrap();
        assert_eq!(zstd::bulk::decompress(&opened, raw.len()).unwrap(), raw);
        assert!(cipher
            .open(&stored, b"spaces/s/instances/i/base/b/data/00001.tar.zst")
            .is_err());
    }
}
