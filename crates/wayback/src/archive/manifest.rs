//! A base backup's `manifest.json`, the contract between taking a backup, restoring one and
//! retention.
//!
//! A backup is the byte stream of `pg_basebackup -Ft -X none` (one tar: the data directory with
//! its `backup_label`), cut into parts of at most `backup.part_bytes` raw bytes (default
//! [`DEFAULT_PART_BYTES`](crate::config::DEFAULT_PART_BYTES); a reader goes by each part's
//! `raw_bytes`), each compressed
//! as one independent zstd frame and stored as its own object:
//!
//! ```text
//! base/<backup_id>/data/00000.tar.zst   the first part_bytes of the tar
//! base/<backup_id>/data/00001.tar.zst   the next part_bytes
//! …
//! base/<backup_id>/manifest.json        written last
//! ```
//!
//! Independent parts let a backup compress and upload on every core and a restore download and
//! decompress ahead in parallel, while the tar is still unpacked in order. The manifest is
//! written only after every part is stored *and* the WAL segment holding `stop_lsn` is in the
//! archive (docs/architecture.md §7 rule 7): a backup without a manifest is incomplete and ignored (and removed
//! by retention once it is older than a day).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::layout::InstancePrefix;

/// The manifest's format version; a restore refuses versions it does not know.
pub const FORMAT: u32 = 1;

/// The format of a manifest whose parts are encrypted (with the data key in the instance's
/// `key.json`; each part `nonce | AES-256-GCM(zstd part) | tag` with its object key as
/// associated data, and `sha256` the keyed hash): the same fields, so that retention and the
/// restore window read it as before, but a wayback that knows only format 1 refuses it
/// instead of failing on the parts.
pub const FORMAT_ENCRYPTED: u32 = 2;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupManifest {
    pub format: u32,
    /// Sortable by time: `YYYYMMDDTHHMMSSmmmZ` of the backup's start (see [`backup_id`]).
    pub backup_id: String,
    pub instance_id: String,
    pub system_identifier: u64,
    /// `server_version_num`, e.g. 150008.
    pub pg_version: u32,
    pub timeline: u32,
    /// `X/Y` text form, as PostgreSQL prints it.
    pub start_lsn: String,
    pub stop_lsn: String,
    /// The WAL segment holding `start_lsn` (the first one a restore needs).
    pub start_wal: String,
    /// The WAL segment holding `stop_lsn` (archived before this manifest was written).
    pub stop_wal: String,
    pub start_time: DateTime<Utc>,
    /// When the backup ended: the earliest point in time it can restore to.
    pub stop_time: DateTime<Utc>,
    /// Hot-standby-sensitive settings of the source at backup time (rule 6).
    pub floors: SettingFloors,
    /// Tar bytes before compression.
    pub raw_bytes: u64,
    /// Bytes stored (sum of the parts).
    pub stored_bytes: u64,
    pub parts: Vec<BackupPart>,
    /// Why it was taken: `provision`, `schedule`, `wal-volume`, `manual`.
    #[serde(default)]
    pub reason: String,
}

/// Settings a restored cluster must have at least the source's value of.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingFloors {
    pub max_connections: u32,
    pub max_worker_processes: u32,
    pub max_locks_per_transaction: u32,
    pub max_prepared_transactions: u32,
    pub max_wal_senders: u32,
}

impl SettingFloors {
    /// The setting names, in the order of the fields.
    pub const NAMES: [&'static str; 5] = [
        "max_connections",
        "max_worker_processes",
        "max_locks_per_transaction",
        "max_prepared_transactions",
        "max_wal_senders",
    ];

    pub fn as_pairs(&self) -> [(&'static str, u32); 5] {
        [
            (Self::NAMES[0], self.max_connections),
            (Self::NAMES[1], self.max_worker_processes),
            (Self::NAMES[2], self.max_locks_per_transaction),
            (Self::NAMES[3], self.max_prepared_transactions),
            (Self::NAMES[4], self.max_wal_senders),
        ]
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupPart {
    /// Position in the tar stream, from 0.
    pub index: u32,
    /// Raw (tar) bytes in this part.
    pub raw_bytes: u64,
    /// Bytes of the stored (compressed) object.
    pub stored_bytes: u64,
    /// CRC32 (IEEE) of the stored object, checked on download.
    pub crc32: u32,
    /// SHA-256 of the raw bytes, hex, checked after decompression.
    pub sha256: String,
}

/// The key of part `index` of a backup.
pub fn part_key(prefix: &InstancePrefix, backup_id: &str, index: u32) -> String {
    format!(
        "{}/base/{backup_id}/data/{index:05}.tar.zst",
        prefix.as_str()
    )
}

/// The id of a backup started at `t`: sortable, and valid in a key.
pub fn backup_id(t: DateTime<Utc>) -> String {
    t.format("%Y%m%dT%H%M%S%3fZ").to_string()
}

/// Whether `s` is a backup id (so that a key under `base/` can be trusted as one).
pub fn is_backup_id(s: &str) -> bool {
    s.len() == 19
        && s.ends_with('Z')
        && s.as_bytes()[8] == b'T'
        && s.bytes()
            .enumerate()
            .all(|(i, b)| i == 8 || i == 18 || b.is_ascii_digit())
}

impl BackupManifest {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a manifest serializes")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let m: Self = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if m.format != FORMAT && m.format != FORMAT_ENCRYPTED {
            return Err(format!(
                "manifest format {} is not supported (this wayback reads formats {FORMAT} and \
                 {FORMAT_ENCRYPTED})",
                m.format
            ));
        }
        Ok(m)
    }

    /// Whether the parts are encrypted with the instance's data key.
    pub fn parts_encrypted(&self) -> bool {
        self.format == FORMAT_ENCRYPTED
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{InstanceId, SpaceGuid};

    #[test]
    fn ids_sort_by_time_and_are_recognised() {
        let a = backup_id("2026-11-21T18:01:02.003Z".parse().unwrap());
        let b = backup_id("2026-11-21T18:01:02.040Z".parse().unwrap());
        assert_eq!(a, "20261121T180102003Z");
        assert!(a < b);
        assert!(is_backup_id(&a));
        for bad in ["", "20261121T180102003", "2026112lT180102003Z", "../x"] {
            assert!(!is_backup_id(bad), "{bad}");
        }
    }

    #[test]
    fn formats_1_and_2_read_and_2_says_the_parts_are_encrypted() {
        let text = |format: u32| {
            serde_json::json!({
                "format": format, "backup_id": "20261121T180102003Z", "instance_id": "i",
                "system_identifier": 1, "pg_version": 150008, "timeline": 1,
                "start_lsn": "0/2000028", "stop_lsn": "0/2000100",
                "start_wal": "000000010000000000000002", "stop_wal": "000000010000000000000002",
                "start_time": "2026-11-21T18:01:02Z", "stop_time": "2026-11-21T18:01:03Z",
                "floors": SettingFloors::default(), "raw_bytes": 1, "stored_bytes": 1,
                "parts": []
            })
            .to_string()
        };
        let clear = BackupManifest::from_json(text(FORMAT).as_bytes()).unwrap();
        assert!(!clear.parts_encrypted());
        let sealed = BackupManifest::from_json(text(FORMAT_ENCRYPTED).as_bytes()).unwrap();
        assert!(sealed.parts_encrypted());
        let e = BackupManifest::from_json(text(3).as_bytes()).unwrap_err();
        assert!(e.contains("format 3"), "{e}");
    }

    #[test]
    fn part_keys_live_under_the_backup() {
        let p = InstancePrefix::new(
            &SpaceGuid::parse("s1").unwrap(),
            &InstanceId::parse("i1").unwrap(),
        );
        assert_eq!(
            part_key(&p, "20261121T180102003Z", 7),
            "spaces/s1/instances/i1/base/20261121T180102003Z/data/00007.tar.zst"
        );
    }
}
