//! Giving a copied data directory its own system identifier.
//!
//! `global/pg_control` starts with the cluster's `system_identifier` (u64, native endian). WAL,
//! base backups and replication all check it, and the archive keys restores on it (docs/architecture.md §7,
//! rule 8), so two instances copied from one template must not share it. PostgreSQL 15's
//! `pg_resetwal` cannot set it (that came in 17), so we patch the 8 bytes and recompute the
//! CRC-32C that guards the struct. The CRC's offset differs between versions and platforms; rather
//! than hard-code it, we find it on the *original* file: the 4-aligned offset whose stored u32
//! equals the CRC of every byte before it. The caller then runs `pg_resetwal -f`, because the
//! template's WAL carries the old identifier in its page headers.
//!
//! [`read_summary`] reads what a kept copy of a deleted instance is checked by before a clone
//! takes it (issue 16): the cluster state and the latest checkpoint's LSN, whose offsets
//! (16 and 32) are fixed by `ControlFileData`'s leading fields in every 64-bit build of
//! PostgreSQL 15. The image's CRC is checked first, so a torn or tampered file is refused.
//! Imports only `pg` siblings.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::PgError;

/// Where the CRC field may be: ControlFileData is a few hundred bytes in every release.
const SEARCH_LIMIT: usize = 1024;

/// A fresh identifier built like PostgreSQL's (`seconds << 32 | usec << 12 | 12 low bits`), with
/// random low bits instead of the pid, and strictly increasing within this process so that two
/// clusters created in the same microsecond still differ.
pub fn new_system_identifier() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let candidate = (now.as_secs() << 32)
        | (u64::from(now.subsec_micros()) << 12)
        | (rand::random::<u64>() & 0xFFF);
    let prev = LAST
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
            Some(candidate.max(last + 1))
        })
        .unwrap_or(0);
    candidate.max(prev + 1)
}

/// The offset of the CRC field: the first 4-aligned offset `o` (after the identifier) where the
/// stored native-endian u32 equals CRC-32C of `bytes[..o]`.
pub fn find_crc_offset(bytes: &[u8]) -> Option<usize> {
    let limit = bytes.len().saturating_sub(4).min(SEARCH_LIMIT);
    (8..=limit)
        .step_by(4)
        .find(|&o| crc32c::crc32c(&bytes[..o]).to_ne_bytes() == bytes[o..o + 4])
}

/// The identifier stored in a pg_control image.
pub fn system_identifier(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_ne_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// Replaces the identifier in a pg_control image and fixes its CRC. Fails if the image's CRC
/// cannot be found (not a valid pg_control).
pub fn patch_system_identifier(bytes: &mut [u8], id: u64) -> Result<(), String> {
    let offset = find_crc_offset(bytes)
        .ok_or("no valid CRC-32C found in the first 1 KiB: not a valid pg_control file")?;
    bytes[..8].copy_from_slice(&id.to_ne_bytes());
    let crc = crc32c::crc32c(&bytes[..offset]);
    bytes[offset..offset + 4].copy_from_slice(&crc.to_ne_bytes());
    Ok(())
}

/// Patches `<pgdata>/global/pg_control` in place (same size, fsynced) and returns the old id.
pub fn rewrite_system_identifier(pgdata: &Path, id: u64) -> Result<u64, PgError> {
    let path = pgdata.join("global/pg_control");
    let io = |what: &str| PgError::io(format!("{what} {}", path.display()));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io("open"))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io("read"))?;
    let old = system_identifier(&bytes).ok_or_else(|| PgError::ControlFile {
        path: path.clone(),
        reason: "file is shorter than 8 bytes".into(),
    })?;
    patch_system_identifier(&mut bytes, id).map_err(|reason| PgError::ControlFile {
        path: path.clone(),
        reason,
    })?;
    // Rewriting in place keeps the inode, mode and owner; the file is one 8 KiB block.
    file.seek(SeekFrom::Start(0)).map_err(io("seek"))?;
    file.write_all(&bytes).map_err(io("write"))?;
    file.sync_all().map_err(io("fsync"))?;
    Ok(old)
}

/// `DB_SHUTDOWNED` of PostgreSQL's `DBState`: stopped cleanly, nothing to replay.
const DB_SHUT_DOWN: i32 = 1;

/// What a kept copy is checked by: who it is, whether it stopped cleanly, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlSummary {
    pub system_identifier: u64,
    /// `Database cluster state: shut down`.
    pub shut_down: bool,
    /// `Latest checkpoint location`, as a number.
    pub checkpoint_lsn: u64,
}

/// Reads a pg_control image (pure); an error when its CRC does not check or it is too short.
pub fn summary(bytes: &[u8]) -> Result<ControlSummary, String> {
    find_crc_offset(bytes).ok_or("no valid CRC-32C found: not an intact pg_control file")?;
    let u64_at = |o: usize| -> Option<u64> {
        Some(u64::from_ne_bytes(bytes.get(o..o + 8)?.try_into().ok()?))
    };
    let i32_at = |o: usize| -> Option<i32> {
        Some(i32::from_ne_bytes(bytes.get(o..o + 4)?.try_into().ok()?))
    };
    match (u64_at(0), i32_at(16), u64_at(32)) {
        (Some(system_identifier), Some(state), Some(checkpoint_lsn)) => Ok(ControlSummary {
            system_identifier,
            shut_down: state == DB_SHUT_DOWN,
            checkpoint_lsn,
        }),
        _ => Err("pg_control is too short".into()),
    }
}

/// Reads `<pgdata>/global/pg_control`.
pub fn read_summary(pgdata: &Path) -> Result<ControlSummary, PgError> {
    let path = pgdata.join("global/pg_control");
    let bytes = std::fs::read(&path).map_err(PgError::io(format!("read {}", path.display())))?;
    summary(&bytes).map_err(|reason| PgError::ControlFile { path, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake control image: 8-byte id, 280 bytes of fields, CRC, zero padding to 8 KiB.
    fn fake_control(id: u64) -> Vec<u8> {
        let mut bytes = vec![0u8; 8192];
        bytes[..8].copy_from_slice(&id.to_ne_bytes());
        for (i, b) in bytes[8..288].iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        let crc = crc32c::crc32c(&bytes[..288]);
        bytes[288..292].copy_from_slice(&crc.to_ne_bytes());
        bytes
    }

    #[test]
    fn patches_the_id_and_keeps_the_crc_valid() {
        let mut bytes = fake_control(42);
        assert_eq!(find_crc_offset(&bytes), Some(288));
        patch_system_identifier(&mut bytes, 7_000_000_000).unwrap();
        assert_eq!(system_identifier(&bytes), Some(7_000_000_000));
        assert_eq!(find_crc_offset(&bytes), Some(288));
    }

    #[test]
    fn refuses_an_image_without_a_crc() {
        let mut bytes = fake_control(42);
        bytes[300] ^= 1; // outside the CRC: still valid
        assert!(patch_system_identifier(&mut bytes.clone(), 1).is_ok());
        bytes[100] ^= 1; // inside: no offset matches any more
        assert!(patch_system_identifier(&mut bytes, 1).is_err());
    }

    #[test]
    fn identifiers_are_unique_and_time_based() {
        let ids: Vec<u64> = (0..1000).map(|_| new_system_identifier()).collect();
        let mut sorted = ids.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!((ids[0] >> 32).abs_diff(secs) < 5);
    }

    #[test]
    fn reads_state_and_checkpoint() {
        let mut bytes = fake_control(42);
        bytes[16..20].copy_from_slice(&1i32.to_ne_bytes());
        bytes[32..40].copy_from_slice(&0x1500790u64.to_ne_bytes());
        let crc = crc32c::crc32c(&bytes[..288]);
        bytes[288..292].copy_from_slice(&crc.to_ne_bytes());
        let s = summary(&bytes).unwrap();
        assert_eq!(
            (s.system_identifier, s.shut_down, s.checkpoint_lsn),
            (42, true, 0x1500790)
        );
        bytes[16..20].copy_from_slice(&6i32.to_ne_bytes()); // in production, CRC now wrong
        assert!(summary(&bytes).is_err());
        let crc = crc32c::crc32c(&bytes[..288]);
        bytes[288..292].copy_from_slice(&crc.to_ne_bytes());
        assert!(!summary(&bytes).unwrap().shut_down);
    }
}
