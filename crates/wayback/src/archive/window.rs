//! The restore window of one instance's archive: from the end of the oldest retained complete
//! base backup to the last archived *commit*.
//!
//! The latest end is a commit time, not the time of the newest segment: an idle instance's
//! switched segments (archive timeout, checkpoints) hold no commit and must not stretch the
//! window past the last state anyone wrote (docs/architecture.md §7 rule 5). Every archived WAL object starts
//! with a 72-byte header that carries its first and last commit times (`frame.rs`), so the
//! window costs one listing, one GET per backup manifest and a ranged GET of 72 bytes for each
//! segment read from the newest backwards, until one holds a commit; no payload is downloaded.
//!
//! The listing's classification ([`classify`]) and the manifest loading are shared with
//! retention, which must see the archive exactly as the window does.
//!
//! Must not import `osb`, `broker`, `store` or `jobs`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use futures::StreamExt;

use super::frame;
use super::layout::{InstancePrefix, WalFileKind, WalFileName};
use super::manifest::{is_backup_id, BackupManifest};
use super::ArchiveError;
use crate::storage::{ObjectMeta, ObjectStore};

/// Headers read at once while walking back from the newest segment.
const HEADER_BATCH: usize = 8;
/// Manifests fetched at once.
const MANIFEST_CONCURRENCY: usize = 8;

/// What a key under an instance prefix is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchivedObject {
    InstanceDoc,
    /// `key.json`: the instance's wrapped data key, kept as long as `instance.json` is.
    KeyDoc,
    Wal(WalFileName),
    /// `base/<id>/manifest.json`
    BackupManifest(String),
    /// Any other object under `base/<id>/` (a part of the backup).
    BackupPart(String),
    /// Not ours to judge (kept by retention, ignored by the window).
    Other,
}

/// Classifies `key`, which must lie under `prefix`.
pub fn classify(prefix: &InstancePrefix, key: &str) -> ArchivedObject {
    let Some(rest) = key
        .strip_prefix(prefix.as_str())
        .and_then(|r| r.strip_prefix('/'))
    else {
        return ArchivedObject::Other;
    };
    if rest == "instance.json" {
        return ArchivedObject::InstanceDoc;
    }
    if rest == super::keydoc::FILE {
        return ArchivedObject::KeyDoc;
    }
    if let Some(name) = rest.strip_prefix("wal/") {
        return match WalFileName::parse(name) {
            Ok(n) => ArchivedObject::Wal(n),
            Err(_) => ArchivedObject::Other,
        };
    }
    if let Some(inner) = rest.strip_prefix("base/") {
        if let Some((id, tail)) = inner.split_once('/') {
            if is_backup_id(id) && !tail.is_empty() {
                return if tail == "manifest.json" {
                    ArchivedObject::BackupManifest(id.to_string())
                } else {
                    ArchivedObject::BackupPart(id.to_string())
                };
            }
        }
    }
    ArchivedObject::Other
}

/// The manifests in `listing`, by backup id: parsed, or why not.
pub type Manifests = BTreeMap<String, Result<BackupManifest, String>>;

/// Reads every manifest the listing names. A manifest that does not parse is returned as
/// `Err`, so that callers can refuse to act on a backup they do not understand.
pub async fn load_manifests(
    store: &ObjectStore,
    prefix: &InstancePrefix,
    listing: &[ObjectMeta],
) -> Result<Manifests, ArchiveError> {
    let ids: Vec<String> = listing
        .iter()
        .filter_map(|o| match classify(prefix, &o.key) {
            ArchivedObject::BackupManifest(id) => Some(id),
            _ => None,
        })
        .collect();
    let fetched: Vec<_> = futures::stream::iter(ids)
        .map(|id| async move {
            let key = prefix.base_manifest(&id);
            (id, store.get(&key).await)
        })
        .buffered(MANIFEST_CONCURRENCY)
        .collect()
        .await;
    let mut out = Manifests::new();
    for (id, got) in fetched {
        // Absent: deleted since the listing (retention), no longer a backup.
        if let Some(bytes) = got? {
            out.insert(id, BackupManifest::from_json(&bytes));
        }
    }
    Ok(out)
}

/// From when to when an instance can be restored.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreWindow {
    /// The oldest retained complete backup's end; None without a complete backup.
    pub earliest: Option<DateTime<Utc>>,
    /// The last archived commit; None when no archived segment holds a commit.
    pub latest: Option<DateTime<Utc>>,
    /// Complete backups (manifest present and readable), oldest first.
    pub backups: Vec<BackupManifest>,
    /// Manifests present but not understood: (backup id, why).
    pub unreadable_backups: Vec<(String, String)>,
    /// The newest archived segment (by timeline, then position) on the newest timeline's
    /// history ([`on_newest_history`]).
    pub newest_segment: Option<String>,
    /// The segment holding the last archived commit.
    pub latest_commit_segment: Option<String>,
    /// Archived segments (including `.partial`) on the newest timeline's history.
    pub segments: usize,
    /// Segment headers read to find `latest`.
    pub headers_read: usize,
}

/// The complete backups, oldest first (by stop time, then id).
pub fn complete_backups(manifests: &Manifests) -> Vec<BackupManifest> {
    let mut backups: Vec<BackupManifest> = manifests
        .values()
        .filter_map(|m| m.as_ref().ok().cloned())
        .collect();
    backups.sort_by(|a, b| (a.stop_time, &a.backup_id).cmp(&(b.stop_time, &b.backup_id)));
    backups
}

/// Segments and partial segments in `listing`, newest first: (name, key).
pub fn segments_newest_first(
    prefix: &InstancePrefix,
    listing: &[ObjectMeta],
) -> Vec<(WalFileName, String)> {
    let mut segs: Vec<(WalFileName, String)> = listing
        .iter()
        .filter_map(|o| match classify(prefix, &o.key) {
            ArchivedObject::Wal(n)
                if matches!(n.kind(), WalFileKind::Segment | WalFileKind::Partial) =>
            {
                Some((n, o.key.clone()))
            }
            _ => None,
        })
        .collect();
    // (timeline, log, seg) orders positions; a higher timeline is newer history. Among equal
    // positions, a full segment sorts after its .partial (it is the one that continued).
    segs.sort_by_key(|(n, _)| (n.segment_parts(), n.kind() == WalFileKind::Segment));
    segs.reverse();
    segs
}

/// Drops from `segments` the WAL no restore following the newest timeline reads: a segment of
/// timeline N at or after the first position of any later timeline (that timeline's file of
/// the same position holds the shared history up to the switch point, and PostgreSQL reads it
/// instead), and a full segment of timeline N at or after a `.partial` of N (the new primary's
/// copy of N's last segment, cut at the switch point: the full one can only be an old
/// primary's, written past it). What is left is one line of history: an old primary's WAL
/// archived after a failover (before the fence knew of it) neither stretches the window's end
/// nor counts as the newest segment a "latest" restore must reach. Positions are compared as
/// (log, seg), so any segment size orders right.
pub fn on_newest_history(segments: Vec<(WalFileName, String)>) -> Vec<(WalFileName, String)> {
    use std::collections::BTreeMap;
    let pos = |n: &WalFileName| n.segment_parts().map(|(t, l, s)| (t, (l, s)));
    // Per timeline: its first position, and its lowest `.partial`.
    let mut first: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
    let mut partial: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
    for (n, _) in &segments {
        let Some((tli, p)) = pos(n) else { continue };
        let e = first.entry(tli).or_insert(p);
        *e = (*e).min(p);
        if n.kind() == WalFileKind::Partial {
            let e = partial.entry(tli).or_insert(p);
            *e = (*e).min(p);
        }
    }
    let later_start = |tli: u32| first.range(tli + 1..).map(|(_, p)| *p).min();
    segments
        .into_iter()
        .filter(|(n, _)| {
            let Some((tli, p)) = pos(n) else { return true };
            let superseded = later_start(tli).is_some_and(|start| p >= start);
            let past_cut =
                n.kind() == WalFileKind::Segment && partial.get(&tli).is_some_and(|cut| p >= *cut);
            !(superseded || past_cut)
        })
        .collect()
}

/// Unix microseconds (the frame header's unit) as a time.
pub fn micros_to_time(us: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us)
}

/// Computes the restore window of the archive under `prefix`: one listing, the manifests, and
/// segment headers from the newest backwards until one holds a commit.
pub async fn restore_window(
    store: &ObjectStore,
    prefix: &InstancePrefix,
) -> Result<RestoreWindow, ArchiveError> {
    let listing = store.list(&format!("{}/", prefix.as_str())).await?;
    let manifests = load_manifests(store, prefix, &listing).await?;
    let backups = complete_backups(&manifests);
    let unreadable_backups = manifests
        .iter()
        .filter_map(|(id, m)| m.as_ref().err().map(|e| (id.clone(), e.clone())))
        .collect();
    let segments = on_newest_history(segments_newest_first(prefix, &listing));
    let mut window = RestoreWindow {
        earliest: backups.first().map(|b| b.stop_time),
        latest: None,
        backups,
        unreadable_backups,
        newest_segment: segments.first().map(|(n, _)| n.as_str().to_string()),
        latest_commit_segment: None,
        segments: segments.len(),
        headers_read: 0,
    };
    for batch in segments.chunks(HEADER_BATCH) {
        let headers: Vec<_> = futures::stream::iter(batch)
            .map(|(_, key)| async move {
                (key, store.get_range(key, 0..frame::HEADER_LEN as u64).await)
            })
            .buffered(HEADER_BATCH)
            .collect()
            .await;
        for ((name, _), (key, got)) in batch.iter().zip(headers) {
            window.headers_read += 1;
            // Deleted since the listing (retention of an older segment): skip it.
            let Some(bytes) = got? else { continue };
            let header = frame::header(&bytes).map_err(|e| ArchiveError::Corrupt {
                key: key.clone(),
                detail: e.to_string(),
            })?;
            if let Some((_, last)) = header.commits {
                window.latest = micros_to_time(last);
                window.latest_commit_segment = Some(name.as_str().to_string());
                return Ok(window);
            }
        }
    }
    Ok(window)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{InstanceId, SpaceGuid};

    fn prefix() -> InstancePrefix {
        InstancePrefix::new(
            &SpaceGuid::parse("s1").unwrap(),
            &InstanceId::parse("i1").unwrap(),
        )
    }

    fn meta(key: &str) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size: 100,
            last_modified: None,
        }
    }

    #[test]
    fn classifies_every_kind_of_key() {
        let p = prefix();
        let base = "spaces/s1/instances/i1";
        let id = "20260101T000000000Z";
        let cases = [
            (format!("{base}/instance.json"), ArchivedObject::InstanceDoc),
            (format!("{base}/key.json"), ArchivedObject::KeyDoc),
            (
                format!("{base}/wal/00000002.history"),
                ArchivedObject::Wal(WalFileName::parse("00000002.history").unwrap()),
            ),
            (
                format!("{base}/base/{id}/manifest.json"),
                ArchivedObject::BackupManifest(id.into()),
            ),
            (
                format!("{base}/base/{id}/data/00000.tar.zst"),
                ArchivedObject::BackupPart(id.into()),
            ),
            (format!("{base}/wal/README"), ArchivedObject::Other),
            (format!("{base}/base/not-an-id/x"), ArchivedObject::Other),
            (format!("{base}/base/{id}/"), ArchivedObject::Other),
            (format!("{base}x/instance.json"), ArchivedObject::Other),
            (
                "spaces/s1/instances/i2/instance.json".into(),
                ArchivedObject::Other,
            ),
        ];
        for (key, want) in cases {
            assert_eq!(classify(&p, &key), want, "{key}");
        }
    }

    #[test]
    fn segments_sort_newest_first_across_timelines() {
        let p = prefix();
        let w = |n: &str| meta(&format!("spaces/s1/instances/i1/wal/{n}"));
        let listing = vec![
            w("000000010000000000000003"),
            w("000000010000000000000004.partial"),
            w("000000010000000000000004.00000028.backup"),
            w("00000002.history"),
            w("000000020000000000000004"),
            w("000000020000000000000005"),
            w("0000000100000001000000FF"),
        ];
        let names: Vec<String> = segments_newest_first(&p, &listing)
            .into_iter()
            .map(|(n, _)| n.as_str().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "000000020000000000000005",
                "000000020000000000000004",
                "0000000100000001000000FF",
                "000000010000000000000004.partial",
                "000000010000000000000003",
            ]
        );
    }

    #[test]
    fn only_the_newest_timelines_history_is_kept() {
        let p = prefix();
        let w = |n: &str| meta(&format!("spaces/s1/instances/i1/wal/{n}"));
        // Timeline 1 ended inside segment 5; the old primary archived 5 and 6 of timeline 1
        // before the fence knew (a failover), the new primary its .partial and timeline 2.
        let listing = vec![
            w("000000010000000000000004"),
            w("000000010000000000000005"),
            w("000000010000000000000005.partial"),
            w("000000010000000000000006"),
            w("00000002.history"),
            w("000000020000000000000005"),
            w("000000020000000000000006"),
        ];
        let names = |l: &[ObjectMeta]| -> Vec<String> {
            on_newest_history(segments_newest_first(&p, l))
                .into_iter()
                .map(|(n, _)| n.as_str().to_string())
                .collect()
        };
        assert_eq!(
            names(&listing),
            [
                "000000020000000000000006",
                "000000020000000000000005",
                "000000010000000000000004",
            ]
        );
        // Before timeline 2's first segment is archived, its .partial of timeline 1 marks the
        // cut: the old primary's full 5 and 6 are off the history, the .partial is on it.
        assert_eq!(
            names(&listing[..5]),
            [
                "000000010000000000000005.partial",
                "000000010000000000000004",
            ]
        );
        // A single timeline, or none past a switch: nothing dropped.
        assert_eq!(
            names(&listing[..2]),
            ["000000010000000000000005", "000000010000000000000004"]
        );
    }

    #[tokio::test]
    async fn a_failover_neither_stretches_nor_ends_the_window_on_the_old_timeline() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::local(dir.path()).unwrap();
        let p = prefix();
        let seg = |n: &str| p.wal(&WalFileName::parse(n).unwrap());
        let t0 = 1_767_225_600_000_000i64;
        for (name, commits) in [
            ("000000010000000000000004", Some((t0, t0 + 1_000))),
            // The old primary's writes after the failover, archived before the fence knew.
            (
                "000000010000000000000005",
                Some((t0 + 2_000, t0 + 9_000_000)),
            ),
            (
                "000000010000000000000005.partial",
                Some((t0 + 2_000, t0 + 3_000)),
            ),
            // The new primary: its first segment copies timeline 1's part, then nothing new.
            ("000000020000000000000005", Some((t0 + 2_000, t0 + 3_000))),
            ("000000020000000000000006", None),
        ] {
            let framed = frame::encode(&[0u8; 4096], 7, commits, 1).unwrap();
            store.put(&seg(name), framed).await.unwrap();
        }
        let w = restore_window(&store, &p).await.unwrap();
        assert_eq!(
            w.latest,
            micros_to_time(t0 + 3_000),
            "not the old primary's"
        );
        assert_eq!(
            w.latest_commit_segment.as_deref(),
            Some("000000020000000000000005")
        );
        assert_eq!(
            w.newest_segment.as_deref(),
            Some("000000020000000000000006")
        );
        assert_eq!(w.segments, 3);
    }

    #[tokio::test]
    async fn latest_is_the_last_commit_not_the_last_segment() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::local(dir.path()).unwrap();
        let p = prefix();
        let seg = |n: &str| p.wal(&WalFileName::parse(n).unwrap());
        let commit_us = 1_767_225_600_123_456i64; // 2026-01-01T00:00:00.123456Z
        for (name, commits) in [
            (
                "000000010000000000000001",
                Some((commit_us - 5_000_000, commit_us - 4_000_000)),
            ),
            (
                "000000010000000000000002",
                Some((commit_us - 1_000, commit_us)),
            ),
            ("000000010000000000000003", None),
            ("000000010000000000000004", None),
            ("000000010000000000000005", None),
        ] {
            let framed = frame::encode(&[0u8; 4096], 7, commits, 1).unwrap();
            store.put(&seg(name), framed).await.unwrap();
        }
        let w = restore_window(&store, &p).await.unwrap();
        assert_eq!(w.latest, micros_to_time(commit_us));
        assert_eq!(
            w.latest_commit_segment.as_deref(),
            Some("000000010000000000000002")
        );
        assert_eq!(
            w.newest_segment.as_deref(),
            Some("000000010000000000000005")
        );
        assert_eq!((w.segments, w.headers_read), (5, 4));
        assert_eq!(w.earliest, None, "no complete backup");

        // An idle archive (no commit at all) has no latest end.
        let empty = InstancePrefix::new(
            &SpaceGuid::parse("s1").unwrap(),
            &InstanceId::parse("idle").unwrap(),
        );
        let framed = frame::encode(&[0u8; 100], 7, None, 0).unwrap();
        store
            .put(
                &empty.wal(&WalFileName::parse("000000010000000000000001").unwrap()),
                framed,
            )
            .await
            .unwrap();
        let w = restore_window(&store, &empty).await.unwrap();
        assert_eq!((w.latest, w.segments, w.headers_read), (None, 1, 1));
    }
}
