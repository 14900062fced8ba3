//! The fence (issue 15 point 4): after a failover the new primary archives into the same prefix
//! on the next timeline, while the old primary, partitioned but still running, may go on
//! writing on the old one for up to Patroni's ttl. Its WAL past the point where the new timeline
//! began must never reach the archive: a restore reading it would return writes the new primary
//! never had.
//!
//! The new primary's first archived file is its timeline history (PostgreSQL's archiver takes
//! `.history` files before any segment), whose last line names the switch point: where timeline
//! N ended and N+1 began. So `wal-push --fence` for a segment of timeline N reads
//! `(N+1).history` from the instance's own prefix (one GET per segment, pushed-ahead ones too;
//! a 404 while there was no failover) and refuses:
//!
//! - a full segment holding any WAL past the switch point (its end is after it): only a server
//!   that went on writing timeline N after the new one began can have made it. The segment that
//!   merely reaches the switch point (ends exactly there) is history both timelines share;
//! - a `.partial` segment that starts at or after the switch point. The new primary archives the
//!   old timeline's last segment, cut at the switch point, as `.partial`: that one passes.
//!
//! A refusal is `ArchiveError::Refused`: `wal-push` exits 1, PostgreSQL keeps the segment and
//! retries, nothing is archived — while the server is still on that timeline (the old primary,
//! running on). A server that has left it (its `pg_control` checkpoint is on a later timeline:
//! rewound or re-seeded and promoted again) can never need that WAL, and PostgreSQL's archiver
//! retries its oldest ready file for ever, blocking every later one: such a leftover is
//! acknowledged without being archived ([`Verdict::Left`], a warning in the log), the one
//! exception to rule 1, for WAL that must never be archived. Left open: an old primary that archives in the moment between
//! the promotion and the new primary's `.history` reaching the archive is not fenced (the fence
//! knows a new timeline only from the archive); restores do not read such segments (the restore
//! window skips WAL of a timeline past where a later timeline began, `window.rs`).
//!
//! Must not import `osb`, `broker`, `store` or `jobs`.

use std::path::Path;

use super::frame;
use super::keydoc::ArchiveKey;
use super::layout::{format_lsn, WalFileKind, WalFileName};
use super::target::ArchiveTarget;
use super::ArchiveError;
use crate::storage::ObjectStore;

/// One line of a timeline history file: timeline `timeline` ended at `switch_lsn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryEntry {
    pub timeline: u32,
    pub switch_lsn: u64,
}

/// Parses a timeline history file (`<parent TLI>\t<switch LSN>\t<reason>` per line; `#`
/// comments and blank lines skipped). A line that does not parse is an error: a history file
/// we cannot read must not be taken to say "no switch".
pub fn parse_history(text: &str) -> Result<Vec<HistoryEntry>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let parsed = (|| {
            let timeline = fields.next()?.parse::<u32>().ok()?;
            let switch_lsn = super::layout::parse_lsn(fields.next()?)?;
            Some(HistoryEntry {
                timeline,
                switch_lsn,
            })
        })();
        out.push(parsed.ok_or_else(|| format!("unreadable timeline history line {line:?}"))?);
    }
    Ok(out)
}

/// Where `timeline` ended, as `history` (of a later timeline) records it.
pub fn switch_point(history: &[HistoryEntry], timeline: u32) -> Option<u64> {
    history
        .iter()
        .find(|e| e.timeline == timeline)
        .map(|e| e.switch_lsn)
}

/// The LSN range `[start, end)` a segment-like file covers, for `segment_size`-byte segments.
pub fn segment_range(name: &WalFileName, segment_size: u64) -> Option<(u64, u64)> {
    let (_, log, seg) = name.segment_parts()?;
    if segment_size == 0 || !segment_size.is_power_of_two() {
        return None;
    }
    let per_log = 0x1_0000_0000u64 / segment_size;
    let start = (u64::from(log) * per_log + u64::from(seg)) * segment_size;
    Some((start, start + segment_size))
}

/// Whether the fence refuses `name` given where its timeline ended (`switch`); see the module
/// docs. History and backup-label files always pass.
pub fn refuses(name: &WalFileName, segment_size: u64, switch: u64) -> bool {
    let Some((start, end)) = segment_range(name, segment_size) else {
        return false;
    };
    match name.kind() {
        WalFileKind::Segment => end > switch,
        WalFileKind::Partial => start >= switch,
        WalFileKind::History | WalFileKind::BackupLabel => false,
    }
}

/// The WAL segment size a segment's first (long) page header records (`xlp_seg_size`, at byte
/// 32); the file's length when the header does not say.
pub fn segment_size(raw: &[u8]) -> u64 {
    const XLP_LONG_HEADER: u16 = 0x0002;
    if raw.len() >= 36 && u16::from_le_bytes([raw[2], raw[3]]) & XLP_LONG_HEADER != 0 {
        let size = u32::from_le_bytes(raw[32..36].try_into().expect("4 bytes"));
        if size.is_power_of_two() {
            return u64::from(size);
        }
    }
    raw.len() as u64
}

/// The switch point of `timeline` recorded in `(timeline+1).history` under the target's own
/// prefix; None when that file is not archived (no later timeline began from this one).
pub async fn archived_switch_point(
    target: &ArchiveTarget,
    store: &ObjectStore,
    timeline: u32,
) -> Result<Option<u64>, ArchiveError> {
    let Some(next) = timeline.checked_add(1) else {
        return Ok(None);
    };
    let name = WalFileName::parse(&format!("{next:08X}.history")).map_err(ArchiveError::Target)?;
    let key = format!("{}/wal/{}", target.prefix, name.as_str());
    let Some(bytes) = store.get(&key).await? else {
        return Ok(None);
    };
    let cipher = target.data_key.as_ref().map(ArchiveKey::cipher);
    let sealing = cipher.as_ref().map(|cipher| frame::Sealing {
        cipher,
        name: name.as_str(),
    });
    let corrupt = |detail: String| ArchiveError::Corrupt {
        key: key.clone(),
        detail,
    };
    let (_, raw) = frame::decode_with(&bytes, sealing).map_err(|e| corrupt(e.to_string()))?;
    let text = String::from_utf8(raw).map_err(|e| corrupt(e.to_string()))?;
    let history = parse_history(&text).map_err(corrupt)?;
    Ok(switch_point(&history, timeline))
}

/// The timeline of the latest checkpoint in a `pg_control` image (`checkPointCopy.
/// ThisTimeLineID`, at byte 48 in PostgreSQL 15's layout); None when the image's CRC does not
/// check.
pub fn checkpoint_timeline(pg_control: &[u8]) -> Option<u32> {
    crate::pg::control::find_crc_offset(pg_control)?;
    Some(u32::from_ne_bytes(pg_control.get(48..52)?.try_into().ok()?))
}

/// What the fence says of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not fenced: archive it.
    Pass,
    /// Fenced, and the server has left its timeline for `server_timeline`: acknowledge it
    /// without archiving (see the module docs).
    Left { server_timeline: u32 },
}

/// Refuses `name` (content `raw`) when a later timeline's archived history says its timeline
/// ended before the WAL it holds; `pgdata` is the data directory of the server asking (its
/// `pg_control` is read only then).
pub async fn check(
    target: &ArchiveTarget,
    store: &ObjectStore,
    name: &WalFileName,
    raw: &[u8],
    pgdata: &Path,
) -> Result<Verdict, ArchiveError> {
    if !matches!(name.kind(), WalFileKind::Segment | WalFileKind::Partial) {
        return Ok(Verdict::Pass);
    }
    let timeline = name.timeline();
    let Some(switch) = archived_switch_point(target, store, timeline).await? else {
        return Ok(Verdict::Pass);
    };
    if refuses(name, segment_size(raw), switch) {
        let server_timeline = std::fs::read(pgdata.join("global/pg_control"))
            .ok()
            .and_then(|c| checkpoint_timeline(&c));
        if let Some(server_timeline) = server_timeline.filter(|t| *t > timeline) {
            tracing::warn!(
                file = name.as_str(),
                server_timeline,
                switch = %format_lsn(switch),
                "FENCED leftover of a timeline this server has left: acknowledged, never archived"
            );
            return Ok(Verdict::Left { server_timeline });
        }
        return Err(ArchiveError::Refused(format!(
            "FENCED: {} holds WAL of timeline {timeline} past {}, where timeline {} began \
             ({:08X}.history is archived): this server is no longer the primary, and its WAL \
             after the failover is never archived",
            name.as_str(),
            format_lsn(switch),
            timeline + 1,
            timeline + 1
        )));
    }
    Ok(Verdict::Pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    fn n(s: &str) -> WalFileName {
        WalFileName::parse(s).unwrap()
    }

    #[test]
    fn parses_history_files() {
        let text = "1\t0/4000000\tno recovery target specified\n\n\
                    # a comment\n2\t1/2A0000C8\tat restore point \"x\"\n";
        let h = parse_history(text).unwrap();
        assert_eq!(
            h,
            [
                HistoryEntry {
                    timeline: 1,
                    switch_lsn: 0x400_0000
                },
                HistoryEntry {
                    timeline: 2,
                    switch_lsn: 0x1_2A00_00C8
                }
            ]
        );
        assert_eq!(switch_point(&h, 2), Some(0x1_2A00_00C8));
        assert_eq!(switch_point(&h, 3), None);
        assert_eq!(parse_history("").unwrap(), []);
        for bad in ["x\t0/1\tr", "1\tnonsense\tr", "1"] {
            assert!(parse_history(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn segment_ranges() {
        assert_eq!(
            segment_range(&n("000000010000000000000003"), SEG),
            Some((0x300_0000, 0x400_0000))
        );
        assert_eq!(
            segment_range(&n("0000000200000001000000FF.partial"), SEG),
            Some((0x1_FF00_0000, 0x2_0000_0000))
        );
        assert_eq!(
            segment_range(&n("000000010000000000000003"), 1 << 30),
            Some((3 << 30, 4 << 30))
        );
        assert_eq!(segment_range(&n("00000002.history"), SEG), None);
        assert_eq!(segment_range(&n("000000010000000000000003"), 0), None);
    }

    #[test]
    fn the_fence_refuses_wal_past_the_switch_point_only() {
        // Timeline 1 ended at 0/5000028, inside segment 5.
        let mid = 0x500_0028;
        for (name, refused) in [
            ("000000010000000000000004", false), // before: shared history
            ("000000010000000000000005", true),  // holds WAL past the switch
            ("000000010000000000000006", true),
            ("000000010000000100000000", true),
            ("000000010000000000000005.partial", false), // the new primary's cut copy
            ("000000010000000000000006.partial", true),
            ("00000002.history", false),
            ("000000010000000000000005.00000028.backup", false),
        ] {
            assert_eq!(refuses(&n(name), SEG, mid), refused, "{name}");
        }
        // Timeline 1 ended exactly where segment 5 begins: segment 4 ends there and passes.
        let boundary = 0x500_0000;
        for (name, refused) in [
            ("000000010000000000000004", false),
            ("000000010000000000000005", true),
            ("000000010000000000000005.partial", true),
        ] {
            assert_eq!(refuses(&n(name), SEG, boundary), refused, "{name}");
        }
    }

    #[test]
    fn segment_size_comes_from_the_long_page_header() {
        let mut seg = vec![0u8; 4096];
        seg[2..4].copy_from_slice(&0x0002u16.to_le_bytes());
        seg[32..36].copy_from_slice(&(64u32 << 20).to_le_bytes());
        assert_eq!(segment_size(&seg), 64 << 20);
        seg[2..4].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(
            segment_size(&seg),
            4096,
            "no long header: the file's length"
        );
    }

    #[tokio::test]
    async fn a_push_checks_the_next_timelines_archived_history() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::local(dir.path()).unwrap();
        let target: ArchiveTarget = serde_json::from_value(serde_json::json!({
            "storage": {"url": format!("file://{}", dir.path().display())},
            "prefix": "spaces/s1/instances/i1",
            "system_identifier": 7,
            "compression_level": 1,
            "push_ahead": 0,
            "fetch_ahead": 0,
            "restore_from": null
        }))
        .unwrap();
        let mut seg = vec![0u8; SEG as usize];
        seg[2..4].copy_from_slice(&0x0002u16.to_le_bytes());
        seg[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
        let pgdata = dir.path().join("pgdata");
        let late = n("000000010000000000000006");
        let check = |name: WalFileName| {
            let (target, store, seg, pgdata) = (&target, &store, &seg, &pgdata);
            async move { check(target, store, &name, seg, pgdata).await }
        };
        assert_eq!(
            check(late.clone()).await.unwrap(),
            Verdict::Pass,
            "no later timeline: not fenced"
        );
        let history =
            frame::encode(b"1\t0/5000028\tno recovery target specified\n", 0, None, 1).unwrap();
        store
            .put("spaces/s1/instances/i1/wal/00000002.history", history)
            .await
            .unwrap();
        let err = check(late.clone()).await.unwrap_err();
        assert!(
            matches!(&err, ArchiveError::Refused(m) if m.contains("FENCED") && m.contains("0/5000028")),
            "{err}"
        );
        for passes in ["000000010000000000000004", "000000020000000000000006"] {
            assert_eq!(check(n(passes)).await.unwrap(), Verdict::Pass, "{passes}");
        }
        // The server still on timeline 1 (the old primary) is refused; once its checkpoint is
        // on a later timeline, the leftover is acknowledged without being archived.
        std::fs::create_dir_all(pgdata.join("global")).unwrap();
        std::fs::write(pgdata.join("global/pg_control"), control(1)).unwrap();
        assert!(check(late.clone()).await.is_err());
        std::fs::write(pgdata.join("global/pg_control"), control(3)).unwrap();
        assert_eq!(
            check(late).await.unwrap(),
            Verdict::Left { server_timeline: 3 }
        );
    }

    /// A pg_control image whose latest checkpoint is on `timeline`, with its CRC.
    fn control(timeline: u32) -> Vec<u8> {
        let mut bytes = vec![0u8; 8192];
        bytes[48..52].copy_from_slice(&timeline.to_ne_bytes());
        let crc = crc32c::crc32c(&bytes[..288]);
        bytes[288..292].copy_from_slice(&crc.to_ne_bytes());
        bytes
    }

    #[test]
    fn reads_the_checkpoint_timeline_of_pg_control() {
        assert_eq!(checkpoint_timeline(&control(2)), Some(2));
        let mut broken = control(2);
        broken[48] = 9;
        assert_eq!(checkpoint_timeline(&broken), None, "CRC no longer checks");
    }
}
