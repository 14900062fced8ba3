//! Table-driven tests of the retention plan over a realistic archive: four complete backups
//! over twenty days with a timeline switch between the second and the third, abandoned and
//! in-flight incomplete backups, `.history`, `.backup` and `.partial` files; and the thinning of
//! an archive with a backup every five minutes for three days (an idle instance's old loop).

use std::collections::BTreeSet;

use super::*;
use crate::archive::manifest::{backup_id, BackupManifest, SettingFloors, FORMAT};
use crate::domain::{InstanceId, SpaceGuid};

const P: &str = "spaces/s1/instances/i1";

fn prefix() -> InstancePrefix {
    InstancePrefix::new(
        &SpaceGuid::parse("s1").unwrap(),
        &InstanceId::parse("i1").unwrap(),
    )
}

fn now() -> DateTime<Utc> {
    "2026-03-01T12:00:00Z".parse().unwrap()
}

fn ago(hours: i64) -> DateTime<Utc> {
    now() - Duration::hours(hours)
}

fn seg(tl: u32, n: u32) -> String {
    format!("{tl:08X}00000000{n:08X}")
}

struct Backup {
    id: String,
    manifest: BackupManifest,
}

fn backup(started_hours_ago: i64, tl: u32, start_seg: u32) -> Backup {
    backup_at(ago(started_hours_ago), tl, start_seg)
}

fn backup_at(start: DateTime<Utc>, tl: u32, start_seg: u32) -> Backup {
    let id = backup_id(start);
    Backup {
        manifest: BackupManifest {
            format: FORMAT,
            backup_id: id.clone(),
            instance_id: "i1".into(),
            system_identifier: 7,
            pg_version: 150008,
            timeline: tl,
            start_lsn: format!("0/{start_seg:X}000028"),
            stop_lsn: format!("0/{start_seg:X}000100"),
            start_wal: seg(tl, start_seg),
            stop_wal: seg(tl, start_seg),
            start_time: start,
            stop_time: start + Duration::minutes(10),
            floors: SettingFloors::default(),
            raw_bytes: 1000,
            stored_bytes: 300,
            parts: vec![],
            reason: "schedule".into(),
        },
        id,
    }
}

/// The archive: (listing, manifests, backup ids B1..B4, incomplete ids I1..I3).
struct Archive {
    listing: Vec<ObjectMeta>,
    manifests: Manifests,
    b: Vec<String>,
    i: Vec<String>,
}

fn obj(key: String, size: u64, written: DateTime<Utc>) -> ObjectMeta {
    ObjectMeta {
        key,
        size,
        last_modified: Some(written),
    }
}

fn archive() -> Archive {
    let backups = [
        backup(20 * 24, 1, 0x02),
        backup(10 * 24, 1, 0x10),
        backup(5 * 24, 2, 0x19),
        backup(26, 2, 0x20), // ends 25 h 50 min ago: older than a 1-day window
    ];
    let mut listing = vec![obj(format!("{P}/instance.json"), 900, ago(1))];
    listing.push(obj(format!("{P}/notes/unknown.txt"), 5, ago(500)));
    let mut manifests = Manifests::new();
    for b in &backups {
        let t = b.manifest.stop_time;
        for part in 0..2 {
            listing.push(obj(
                format!("{P}/base/{}/data/{part:05}.tar.zst", b.id),
                100,
                t,
            ));
        }
        listing.push(obj(format!("{P}/base/{}/manifest.json", b.id), 10, t));
        let label = format!("{}.00000028.backup", b.manifest.start_wal);
        listing.push(obj(format!("{P}/wal/{label}"), 1, t));
        manifests.insert(b.id.clone(), Ok(b.manifest.clone()));
    }
    // Timeline 1 up to 0x17, its last segment as .partial at the promotion, then timeline 2.
    for n in 0x01..=0x17 {
        listing.push(obj(format!("{P}/wal/{}", seg(1, n)), 1000, ago(500)));
    }
    listing.push(obj(
        format!("{P}/wal/{}.partial", seg(1, 0x18)),
        1000,
        ago(150),
    ));
    listing.push(obj(format!("{P}/wal/00000002.history"), 42, ago(150)));
    for n in 0x18..=0x22 {
        listing.push(obj(format!("{P}/wal/{}", seg(2, n)), 1000, ago(1)));
    }
    // Incomplete: abandoned 3 days ago; started an hour ago; started 30 h ago but still
    // uploading (a part written 2 h ago).
    let incomplete = [
        (backup_id(ago(72)), ago(72)),
        (backup_id(ago(1)), ago(1)),
        (backup_id(ago(30)), ago(2)),
    ];
    for (id, written) in &incomplete {
        listing.push(obj(
            format!("{P}/base/{id}/data/00000.tar.zst"),
            100,
            *written,
        ));
    }
    listing.sort_by(|a, b| a.key.cmp(&b.key));
    Archive {
        listing,
        manifests,
        b: backups.iter().map(|b| b.id.clone()).collect(),
        i: incomplete.into_iter().map(|(id, _)| id).collect(),
    }
}

fn wal(name: &str) -> String {
    format!("{P}/wal/{name}")
}

fn backup_keys(id: &str) -> Vec<String> {
    vec![
        format!("{P}/base/{id}/data/00000.tar.zst"),
        format!("{P}/base/{id}/data/00001.tar.zst"),
        format!("{P}/base/{id}/manifest.json"),
    ]
}

fn label(tl: u32, n: u32) -> String {
    wal(&format!("{}.00000028.backup", seg(tl, n)))
}

#[test]
fn retention_keeps_exactly_what_the_window_needs() {
    let a = archive();
    let abandoned = format!("{P}/base/{}/data/00000.tar.zst", a.i[0]);
    // (window days, kept backups, first kept WAL, exactly the deleted keys)
    let cases: Vec<(u64, Vec<&String>, &str, Vec<String>)> = vec![
        (
            7,
            vec![&a.b[1], &a.b[2], &a.b[3]],
            "000000010000000000000010",
            [
                backup_keys(&a.b[0]),
                (0x01..0x10).map(|n| wal(&seg(1, n))).collect(),
                vec![label(1, 0x02), abandoned.clone()],
            ]
            .concat(),
        ),
        (
            1,
            vec![&a.b[3]],
            "000000020000000000000020",
            [
                backup_keys(&a.b[0]),
                backup_keys(&a.b[1]),
                backup_keys(&a.b[2]),
                (0x01..=0x17).map(|n| wal(&seg(1, n))).collect(),
                vec![wal(&format!("{}.partial", seg(1, 0x18)))],
                (0x18..0x20).map(|n| wal(&seg(2, n))).collect(),
                vec![
                    label(1, 0x02),
                    label(1, 0x10),
                    label(2, 0x19),
                    abandoned.clone(),
                ],
            ]
            .concat(),
        ),
        (
            // No backup is older than the window: all kept; WAL before the oldest is useless.
            30,
            vec![&a.b[0], &a.b[1], &a.b[2], &a.b[3]],
            "000000010000000000000002",
            vec![wal(&seg(1, 0x01)), abandoned.clone()],
        ),
    ];
    for (days, kept, first_wal, deleted) in cases {
        let plan = plan_retention(
            &prefix(),
            &a.listing,
            &a.manifests,
            now(),
            &RetentionPolicy::days(days),
        );
        let want: BTreeSet<String> = deleted.into_iter().collect();
        let got: BTreeSet<String> = plan.delete.iter().cloned().collect();
        assert_eq!(
            got.difference(&want).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "{days} d: deleted but needed"
        );
        assert_eq!(
            want.difference(&got).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "{days} d: kept but not needed"
        );
        assert_eq!(got.len(), plan.delete.len(), "{days} d: no key twice");
        let kept_ids: Vec<&String> = plan.kept_backups.iter().collect();
        assert_eq!(kept_ids, kept, "{days} d");
        assert_eq!(plan.oldest_kept_wal.as_deref(), Some(first_wal), "{days} d");
        assert_eq!(plan.incomplete_backups, vec![a.i[0].clone()], "{days} d");
        // Everything is either kept or deleted, and the byte counts add up.
        assert_eq!(
            plan.keep.len() + plan.delete.len(),
            a.listing.len(),
            "{days} d"
        );
        let total: u64 = a.listing.iter().map(|o| o.size).sum();
        assert_eq!(plan.keep_bytes + plan.delete_bytes, total, "{days} d");
        // Manifests of deleted backups go first, and nothing else does.
        let (first, rest) = plan.phases();
        assert_eq!(first.len(), plan.deleted_backups.len(), "{days} d");
        assert!(
            first.iter().all(|k| k.ends_with("/manifest.json")),
            "{days} d"
        );
        assert!(
            rest.iter().all(|k| !k.ends_with("/manifest.json")),
            "{days} d"
        );
        for always in [
            format!("{P}/instance.json"),
            format!("{P}/notes/unknown.txt"),
            wal("00000002.history"),
            format!("{P}/base/{}/data/00000.tar.zst", a.i[1]),
            format!("{P}/base/{}/data/00000.tar.zst", a.i[2]),
        ] {
            assert!(plan.keep.contains(&always), "{days} d: {always} must stay");
        }
    }
}

#[test]
fn without_a_complete_backup_all_wal_is_kept() {
    let a = archive();
    let mut manifests = Manifests::new();
    let listing: Vec<ObjectMeta> = a
        .listing
        .iter()
        .filter(|o| !o.key.ends_with("manifest.json"))
        .cloned()
        .collect();
    let plan = plan_retention(
        &prefix(),
        &listing,
        &manifests,
        now(),
        &RetentionPolicy::days(1),
    );
    assert!(
        plan.delete.iter().all(|k| k.contains("/base/")),
        "{:?}",
        plan.delete
    );
    assert!(plan.notes[0].contains("no complete base backup"));
    // The parts of the old complete-looking backups are now incomplete and old: removed.
    assert!(plan.incomplete_backups.contains(&a.b[0]));
    assert!(!plan.incomplete_backups.contains(&a.i[1]));

    // An unreadable manifest stops all deletion.
    manifests = a.manifests.clone();
    manifests.insert(
        a.b[1].clone(),
        Err("manifest format 9 is not supported".into()),
    );
    let plan = plan_retention(
        &prefix(),
        &a.listing,
        &manifests,
        now(),
        &RetentionPolicy::days(1),
    );
    assert!(plan.delete.is_empty());
    assert!(plan.notes[0].contains("cannot be read"), "{:?}", plan.notes);
}

#[test]
fn the_reaper_leaves_only_instance_json() {
    let a = archive();
    let plan = reap_plan(&prefix(), &a.listing);
    assert_eq!(plan.keep, vec![format!("{P}/instance.json")]);
    assert_eq!(plan.delete.len(), a.listing.len() - 1);
    let (first, _) = plan.phases();
    assert_eq!(first.len(), 4);
    assert!(first.iter().all(|k| k.ends_with("/manifest.json")));
}

#[test]
fn backup_ids_give_their_start_time() {
    let t: DateTime<Utc> = "2026-11-21T18:01:02.003Z".parse().unwrap();
    assert_eq!(backup_id_time(&backup_id(t)), Some(t));
    assert_eq!(backup_id_time("nonsense"), None);
}

#[tokio::test]
async fn prune_and_reap_act_on_a_real_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = ObjectStore::local(dir.path()).unwrap();
    let a = archive();
    for o in &a.listing {
        let body = if let Some(id) = o
            .key
            .strip_suffix("/manifest.json")
            .and_then(|k| k.rsplit('/').next())
        {
            a.manifests[id].as_ref().unwrap().to_json()
        } else {
            vec![1u8; o.size as usize]
        };
        store.put(&o.key, body).await.unwrap();
    }
    // Local files are written now, so abandoned parts count by their id's time only when the
    // write time is old as well: judge them a week from now.
    let later = now() + Duration::days(7);
    let plan = prune_instance(&store, &prefix(), later, &RetentionPolicy::days(7), true)
        .await
        .unwrap();
    assert!(!plan.delete.is_empty());
    assert_eq!(
        store.list(&format!("{P}/")).await.unwrap().len(),
        a.listing.len(),
        "dry run"
    );
    let plan = prune_instance(&store, &prefix(), later, &RetentionPolicy::days(7), false)
        .await
        .unwrap();
    let left: Vec<String> = store
        .list(&format!("{P}/"))
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(left, plan.keep);

    let reaped = reap_instance(&store, &prefix(), false).await.unwrap();
    assert_eq!(reaped.keep, vec![format!("{P}/instance.json")]);
    let left: Vec<String> = store
        .list("spaces/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(left, vec![format!("{P}/instance.json")]);
}

/// A backup every 5 minutes for three days, a timeline switch at the 500th: (listing,
/// manifests, the backups oldest first).
fn dense_archive() -> (Vec<ObjectMeta>, Manifests, Vec<BackupManifest>) {
    let first = now() - Duration::days(3);
    let mut listing = vec![obj(format!("{P}/instance.json"), 900, first)];
    let mut manifests = Manifests::new();
    let mut all = Vec::new();
    for k in 0..864u32 {
        let tl = if k < 500 { 1 } else { 2 };
        let b = backup_at(first + Duration::minutes(5 * i64::from(k)), tl, k + 2);
        let t = b.manifest.stop_time;
        listing.push(obj(format!("{P}/base/{}/data/00000.tar.zst", b.id), 100, t));
        listing.push(obj(format!("{P}/base/{}/manifest.json", b.id), 10, t));
        manifests.insert(b.id.clone(), Ok(b.manifest.clone()));
        all.push(b.manifest);
    }
    for n in 1..=501 {
        listing.push(obj(wal(&seg(1, n)), 1000, first));
    }
    listing.push(obj(wal("00000002.history"), 42, first));
    for n in 501..=870 {
        listing.push(obj(wal(&seg(2, n)), 1000, first));
    }
    listing.sort_by(|a, b| a.key.cmp(&b.key));
    (listing, manifests, all)
}

/// Every WAL segment from `start_wal` on (on its timeline, and all of later ones) is kept.
fn wal_from_is_kept(plan: &RetentionPlan, start_wal: &str) {
    let from = crate::archive::layout::WalFileName::parse(start_wal)
        .unwrap()
        .segment_parts()
        .unwrap();
    for key in &plan.delete {
        let Some(name) = key.strip_prefix(&format!("{P}/wal/")) else {
            continue;
        };
        let at = crate::archive::layout::WalFileName::parse(name)
            .unwrap()
            .segment_parts()
            .unwrap();
        assert!(
            at.0 < from.0 || (at.0 == from.0 && (at.1, at.2) < (from.1, from.2)),
            "{key} is deleted but a kept backup from {start_wal} needs it"
        );
    }
}

#[test]
fn backups_minutes_apart_are_thinned_to_one_an_hour_beyond_the_last_day() {
    let (listing, manifests, all) = dense_archive();
    let plan = plan_retention(
        &prefix(),
        &listing,
        &manifests,
        now(),
        &RetentionPolicy::days(7),
    );
    let kept: BTreeSet<&str> = plan.kept_backups.iter().map(String::as_str).collect();
    let day_ago = now() - Duration::hours(DENSE_HOURS);
    let hour = |b: &BackupManifest| b.stop_time.timestamp().div_euclid(3600);
    for (k, b) in all.iter().enumerate() {
        let newest_of_hour = !all.get(k + 1).is_some_and(|n| hour(n) == hour(b));
        let want = b.stop_time > day_ago || newest_of_hour || k == 0 || k == 500;
        assert_eq!(kept.contains(b.backup_id.as_str()), want, "backup {k}");
    }
    // The window's start (the oldest backup here) and the first on timeline 2 stay.
    assert_eq!(plan.kept_backups[0], all[0].backup_id);
    assert!(kept.contains(all[500].backup_id.as_str()));
    assert_eq!(
        plan.oldest_kept_wal.as_deref(),
        Some(all[0].start_wal.as_str())
    );
    wal_from_is_kept(&plan, &all[0].start_wal);
    assert_eq!(
        plan.delete.iter().filter(|k| k.contains("/wal/")).count(),
        1
    );
    // 288 of the last day, about 48 older hours: far fewer than 864.
    assert!(plan.kept_backups.len() < 350, "{}", plan.kept_backups.len());
    assert_eq!(
        plan.kept_backups.len() + plan.deleted_backups.len(),
        all.len()
    );
    let (first, _) = plan.phases();
    assert_eq!(first.len(), plan.deleted_backups.len());
}

#[test]
fn thinning_never_deletes_what_the_windows_start_needs() {
    let (listing, manifests, all) = dense_archive();
    for days in [1, 2] {
        let cutoff = now() - Duration::days(days);
        let plan = plan_retention(
            &prefix(),
            &listing,
            &manifests,
            now(),
            &RetentionPolicy::days(days as u64),
        );
        // The anchor: the newest backup that ended at or before the window's start.
        let anchor = all.iter().rposition(|b| b.stop_time <= cutoff).unwrap();
        assert_eq!(plan.kept_backups[0], all[anchor].backup_id, "{days} d");
        assert!(
            all[..anchor]
                .iter()
                .all(|b| plan.deleted_backups.contains(&b.backup_id)),
            "{days} d"
        );
        assert_eq!(
            plan.oldest_kept_wal.as_deref(),
            Some(all[anchor].start_wal.as_str()),
            "{days} d"
        );
        wal_from_is_kept(&plan, &all[anchor].start_wal);
        // Every point of the window has a kept backup that ended before it, with its WAL.
        let kept: Vec<&BackupManifest> = all
            .iter()
            .filter(|b| plan.kept_backups.contains(&b.backup_id))
            .collect();
        let mut t = cutoff;
        while t <= now() {
            let base = kept.iter().rev().find(|b| b.stop_time <= t);
            let base = base.unwrap_or_else(|| panic!("{days} d: no backup for {t}"));
            wal_from_is_kept(&plan, &base.start_wal);
            t += Duration::minutes(37);
        }
        assert!(plan.keep.contains(&wal("00000002.history")));
    }
}
