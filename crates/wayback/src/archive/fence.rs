//! The fence (issue 15 point 4): after a failover the new primary archives into the same prefix
//! on the next timeline, while the old primary, partitioned but still running, may go on
//! writing on the old one for up to Patroni's ttl. Its WAL past the point where the new timeline
//! began must never reach the archive: a restore reading it would return writes the new primary
//! never had.
//!
//! The new primary's first archived file is its timeline history (PostgreSQL's archiver takes
//! `.history` files before any segment), whose last line names the switch point: where timeline
//! N ended and N+1 began. So `wal-push --fence` for a segment of timeline N reads
//! `(N+1).history` from the instance's own prefix (one GET per call, a 404 while there was no
//! failover) and refuses:
//!
//! - a full segment holding any WAL past the switch point (its end is after it): only a server
//!   that went on writing timeline N after the new one began can have made it. The segment that
//!   merely reaches the switch point (ends exactly there) is history both timelines share;
//! - a `.partial` segment that starts at or after the switch point. The new primary archives the
//!   old timeline's last segment, cut at the switch point, as `.partial`: that one passes.
//!
//! A refusal is `ArchiveError::Refused`: `wal-push` exits 1, PostgreSQL keeps the segment and
//! retries, nothing is archived. Left open: an old primary that archives in the moment between
//! the promotion and the new primary's `.history` reaching the archive is not fenced (the fence
//! knows a new timeline only from the archive); restores do not read such segments (the restore
//! window skips WAL of a timeline past where a later timeline began, `window.rs`).
//!
//! Must not import `osb`, `broker`, `store` or `jobs`.

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

/// Refuses `name` (content `raw`) when a later timeline's archived history says its timeline
/// ended before the WAL it holds.
pub async fn check(
    target: &ArchiveTarget,
    store: &ObjectStore,
    name: &WalFileName,
    raw: &[u8],
) -> Result<(), ArchiveError> {
    if !matches!(name.kind(), WalFileKind::Segment | WalFileKind::Partial) {
        return Ok(());
    }
    let timeline = name.timeline();
    let Some(switch) = archived_switch_point(target, store, timeline).await? else {
        return Ok(());
    };
    if refuses(name, segment_size(raw), switch) {
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
    Ok(())
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
        let late = n("000000010000000000000006");
        check(&target, &store, &late, &seg)
            .await
            .expect("no later timeline: not fenced");
        let history =
            frame::encode(b"1\t0/5000028\tno recovery target specified\n", 0, None, 1).unwrap();
        store
            .put("spaces/s1/instances/i1/wal/00000002.history", history)
            .await
            .unwrap();
        let err = check(&target, &store, &late, &seg).await.unwrap_err();
        assert!(
            matches!(&err, ArchiveError::Refused(m) if m.contains("FENCED") && m.contains("0/5000028")),
            "{err}"
        );
        check(&target, &store, &n("000000010000000000000004"), &seg)
            .await
            .expect("before the switch point");
        check(&target, &store, &n("000000020000000000000006"), &seg)
            .await
            .expect("the new timeline");
    }
}
