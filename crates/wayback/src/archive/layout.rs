//! Where things live in object storage, as pure functions (docs/architecture.md §7):
//!
//! ```text
//! spaces/<space>/instances/<instance>/instance.json        the instance's self-description
//! spaces/<space>/instances/<instance>/wal/<walfile>        WAL segments, .history, .backup, .partial
//! spaces/<space>/instances/<instance>/base/<id>/data/NNNNN.tar.zst  a base backup, in parts
//! spaces/<space>/instances/<instance>/base/<id>/manifest.json  written last: a backup without
//!                                                    one is incomplete and ignored (manifest.rs)
//! ```
//!
//! One prefix per instance, never shared: a clone reads its source's prefix and writes only
//! its own. Ids are validated domain types, so keys cannot escape their prefix.

use crate::domain::{InstanceId, SpaceGuid};

/// The prefix of one instance's archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstancePrefix(String);

impl InstancePrefix {
    pub fn new(space: &SpaceGuid, instance: &InstanceId) -> Self {
        Self(format!("spaces/{space}/instances/{instance}"))
    }

    /// Rebuilds a prefix from a key such as `spaces/S/instances/I/instance.json`.
    pub fn from_key(key: &str) -> Option<(SpaceGuid, InstanceId)> {
        let mut parts = key.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("spaces"), Some(space), Some("instances"), Some(instance)) => Some((
                SpaceGuid::parse(space).ok()?,
                InstanceId::parse(instance).ok()?,
            )),
            _ => None,
        }
    }

    /// The prefix an archive target names (`spaces/<space>/instances/<instance>`, nothing
    /// more): `None` for anything else, so a key built from it cannot leave the prefix.
    pub fn parse(prefix: &str) -> Option<Self> {
        let (space, instance) = Self::from_key(prefix)?;
        let parsed = Self::new(&space, &instance);
        (parsed.0 == prefix).then_some(parsed)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn instance_json(&self) -> String {
        format!("{}/instance.json", self.0)
    }

    pub fn wal_dir(&self) -> String {
        format!("{}/wal/", self.0)
    }

    /// The key of a WAL file; `name` must be a valid WAL file name.
    pub fn wal(&self, name: &WalFileName) -> String {
        format!("{}/wal/{}", self.0, name.as_str())
    }

    pub fn base_dir(&self) -> String {
        format!("{}/base/", self.0)
    }

    pub fn base_manifest(&self, backup_id: &str) -> String {
        format!("{}/base/{backup_id}/manifest.json", self.0)
    }
}

/// What kind of file PostgreSQL archives or asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WalFileKind {
    /// `000000010000000000000003`
    Segment,
    /// `00000002.history`
    History,
    /// `000000010000000000000003.00000028.backup`
    BackupLabel,
    /// `000000010000000000000003.partial`
    Partial,
}

/// A validated WAL file name (the only names `wal-push` / `wal-fetch` accept).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WalFileName {
    name: String,
    kind: WalFileKind,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase())
}

impl WalFileName {
    pub fn parse(name: &str) -> Result<Self, String> {
        let kind = if is_hex(name, 24) {
            WalFileKind::Segment
        } else if let Some(tli) = name.strip_suffix(".history") {
            if !is_hex(tli, 8) {
                return Err(format!("{name:?} is not a timeline history file name"));
            }
            WalFileKind::History
        } else if let Some(seg) = name.strip_suffix(".partial") {
            if !is_hex(seg, 24) {
                return Err(format!("{name:?} is not a partial segment name"));
            }
            WalFileKind::Partial
        } else if let Some(rest) = name.strip_suffix(".backup") {
            match rest.split_once('.') {
                Some((seg, off)) if is_hex(seg, 24) && is_hex(off, 8) => WalFileKind::BackupLabel,
                _ => return Err(format!("{name:?} is not a backup history file name")),
            }
        } else {
            return Err(format!(
                "{name:?} is not a WAL file name PostgreSQL archives"
            ));
        };
        Ok(Self {
            name: name.to_string(),
            kind,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> WalFileKind {
        self.kind
    }

    /// For segments (and partial / backup files): (timeline, log, seg).
    pub fn segment_parts(&self) -> Option<(u32, u32, u32)> {
        if self.kind == WalFileKind::History {
            return None;
        }
        let s = &self.name[..24];
        Some((
            u32::from_str_radix(&s[0..8], 16).ok()?,
            u32::from_str_radix(&s[8..16], 16).ok()?,
            u32::from_str_radix(&s[16..24], 16).ok()?,
        ))
    }

    /// The timeline of a history file or segment.
    pub fn timeline(&self) -> u32 {
        u32::from_str_radix(&self.name[..8], 16).unwrap_or(0)
    }
}

/// The WAL segment name holding `lsn` on `timeline`, for the default 16 MiB segments.
pub fn segment_for_lsn(timeline: u32, lsn: u64, segment_size: u64) -> String {
    let segno = lsn / segment_size;
    let per_xlogid = 0x1_0000_0000u64 / segment_size;
    format!(
        "{timeline:08X}{:08X}{:08X}",
        segno / per_xlogid,
        segno % per_xlogid
    )
}

/// Parses an LSN written as `X/Y` (hex).
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Formats an LSN as `X/Y`.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_design() {
        let p = InstancePrefix::new(
            &SpaceGuid::parse("s1").unwrap(),
            &InstanceId::parse("i1").unwrap(),
        );
        assert_eq!(p.instance_json(), "spaces/s1/instances/i1/instance.json");
        let seg = WalFileName::parse("000000010000000000000003").unwrap();
        assert_eq!(
            p.wal(&seg),
            "spaces/s1/instances/i1/wal/000000010000000000000003"
        );
        assert_eq!(
            p.base_manifest("20261121T030000Z"),
            "spaces/s1/instances/i1/base/20261121T030000Z/manifest.json"
        );
        assert_eq!(
            InstancePrefix::from_key("spaces/s1/instances/i1/instance.json"),
            Some((
                SpaceGuid::parse("s1").unwrap(),
                InstanceId::parse("i1").unwrap()
            ))
        );
        assert_eq!(InstancePrefix::from_key("other/s1/instances/i1/x"), None);
    }

    #[test]
    fn a_prefix_parses_back_and_nothing_else_does() {
        let p = InstancePrefix::new(
            &SpaceGuid::parse("s1").unwrap(),
            &InstanceId::parse("i1").unwrap(),
        );
        assert_eq!(InstancePrefix::parse(p.as_str()), Some(p));
        for bad in [
            "spaces/s1/instances/i1/",
            "spaces/s1/instances/i1/wal",
            "spaces/s1/instances",
            "spaces/s1/instances/../x",
            "other/s1/instances/i1",
            "",
        ] {
            assert_eq!(InstancePrefix::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn wal_file_names() {
        use WalFileKind::*;
        for (name, kind) in [
            ("000000010000000000000003", Segment),
            ("00000002.history", History),
            ("000000010000000000000003.00000028.backup", BackupLabel),
            ("000000010000000A000000FF.partial", Partial),
        ] {
            assert_eq!(WalFileName::parse(name).unwrap().kind(), kind, "{name}");
        }
        for bad in [
            "",
            "../etc/passwd",
            "00000001000000000000003",
            "0000000100000000000000g3",
            "000000010000000000000003.zst",
            "x.history",
            "000000010000000000000003/../x",
            "00000001000000000000000a",
        ] {
            assert!(WalFileName::parse(bad).is_err(), "{bad:?}");
        }
        let s = WalFileName::parse("000000020000000A000000FF").unwrap();
        assert_eq!(s.segment_parts(), Some((2, 10, 255)));
        assert_eq!(s.timeline(), 2);
    }

    #[test]
    fn lsn_and_segments() {
        assert_eq!(parse_lsn("0/3000028"), Some(0x3000028));
        assert_eq!(parse_lsn("1A/FF"), Some((0x1A << 32) | 0xFF));
        assert_eq!(format_lsn(0x1_0300_0028), "1/3000028");
        assert_eq!(
            segment_for_lsn(1, 0x3000028, 16 << 20),
            "000000010000000000000003"
        );
        assert_eq!(
            segment_for_lsn(3, (1 << 32) + (5 << 24), 16 << 20),
            "000000030000000100000005"
        );
        assert_eq!(parse_lsn("nonsense"), None);
    }
}
