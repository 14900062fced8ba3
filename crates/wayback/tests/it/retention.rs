//! The archive's self-description, restore window and retention, against real objects and real
//! clusters: retention keeps exactly what the window needs (local directory and S3 server),
//! the window ends at the last archived commit and not at the idle segments after it,
//! `instance.json` follows provision, rename and deprovision, the reaper empties a deleted
//! instance's archive only after `retention.deleted_days` (time injected, no sleeping), and
//! `wayback prune --dry-run` deletes nothing.

use crate::common;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::Row;
use wayback::archive::frame;
use wayback::archive::instance_doc::{self, InstanceDoc};
use wayback::archive::layout::{InstancePrefix, WalFileName};
use wayback::archive::manifest::{backup_id, part_key, BackupManifest, SettingFloors, FORMAT};
use wayback::archive::retention::{prune_instance, RetentionPolicy};
use wayback::archive::window::restore_window;
use wayback::config::RetentionSettings;
use wayback::domain::{InstanceId, SpaceGuid};
use wayback::maintenance::ArchiveMaintenance;
use wayback::storage::ObjectStore;

fn prefix_of(space: &str, id: &str) -> InstancePrefix {
    InstancePrefix::new(
        &SpaceGuid::parse(space).unwrap(),
        &InstanceId::parse(id).unwrap(),
    )
}

fn seg(tl: u32, n: u32) -> String {
    format!("{tl:08X}00000000{n:08X}")
}

fn manifest(start: DateTime<Utc>, tl: u32, start_seg: u32) -> BackupManifest {
    BackupManifest {
        format: FORMAT,
        backup_id: backup_id(start),
        instance_id: "i".into(),
        system_identifier: 7,
        pg_version: 150008,
        timeline: tl,
        start_lsn: format!("0/{start_seg:X}000028"),
        stop_lsn: format!("0/{start_seg:X}000100"),
        start_wal: seg(tl, start_seg),
        stop_wal: seg(tl, start_seg),
        start_time: start,
        stop_time: start + chrono::Duration::minutes(5),
        floors: SettingFloors::default(),
        raw_bytes: 10,
        stored_bytes: 10,
        parts: vec![],
        reason: "schedule".into(),
    }
}

/// Stores a backup (two parts, then its manifest) and returns its keys.
async fn put_backup(store: &ObjectStore, p: &InstancePrefix, m: &BackupManifest) -> Vec<String> {
    let mut keys = vec![];
    for i in 0..2 {
        let k = part_key(p, &m.backup_id, i);
        store.put(&k, vec![1u8; 10]).await.unwrap();
        keys.push(k);
    }
    let k = p.base_manifest(&m.backup_id);
    store.put(&k, m.to_json()).await.unwrap();
    keys.push(k);
    keys
}

async fn put_wal(store: &ObjectStore, p: &InstancePrefix, name: &str) -> String {
    let k = p.wal(&WalFileName::parse(name).unwrap());
    let framed = frame::encode(&[0u8; 64], 7, None, 0).unwrap();
    store.put(&k, framed).await.unwrap();
    k
}

async fn keys(store: &ObjectStore, p: &InstancePrefix) -> BTreeSet<String> {
    store
        .list(&format!("{}/", p.as_str()))
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}

/// Three backups over three weeks, a timeline switch between the second and the third, WAL
/// and labels on both timelines; a 7-day window keeps the second backup on.
async fn retention_on_real_objects(store: ObjectStore) {
    let p = prefix_of("space-r", "inst-r");
    let now: DateTime<Utc> = "2026-03-01T12:00:00Z".parse().unwrap();
    let day = chrono::Duration::days(1);
    let b1 = manifest(now - day * 20, 1, 0x02);
    let b2 = manifest(now - day * 9, 1, 0x06);
    let b3 = manifest(now - day * 2, 2, 0x0A);
    let b1_keys = put_backup(&store, &p, &b1).await;
    let mut kept = BTreeSet::new();
    for b in [&b2, &b3] {
        kept.extend(put_backup(&store, &p, b).await);
    }
    let mut deleted: BTreeSet<String> = b1_keys.into_iter().collect();
    for n in 0x01..0x06 {
        deleted.insert(put_wal(&store, &p, &seg(1, n)).await);
    }
    deleted.insert(put_wal(&store, &p, &format!("{}.00000028.backup", seg(1, 0x02))).await);
    for n in 0x06..0x09 {
        kept.insert(put_wal(&store, &p, &seg(1, n)).await);
    }
    kept.insert(put_wal(&store, &p, &format!("{}.00000028.backup", seg(1, 0x06))).await);
    kept.insert(put_wal(&store, &p, &format!("{}.partial", seg(1, 0x09))).await);
    kept.insert(put_wal(&store, &p, "00000002.history").await);
    for n in 0x09..0x0D {
        kept.insert(put_wal(&store, &p, &seg(2, n)).await);
    }
    let doc = p.instance_json();
    store.put(&doc, "{}").await.unwrap();
    kept.insert(doc);

    let policy = RetentionPolicy::days(7);
    let dry = prune_instance(&store, &p, now, &policy, true)
        .await
        .unwrap();
    assert_eq!(dry.delete.iter().cloned().collect::<BTreeSet<_>>(), deleted);
    assert_eq!(
        keys(&store, &p).await.len(),
        kept.len() + deleted.len(),
        "dry run"
    );

    let plan = prune_instance(&store, &p, now, &policy, false)
        .await
        .unwrap();
    assert_eq!(plan.deleted_backups, vec![b1.backup_id.clone()]);
    assert_eq!(
        plan.kept_backups,
        vec![b2.backup_id.clone(), b3.backup_id.clone()]
    );
    assert_eq!(
        keys(&store, &p).await,
        kept,
        "exactly what the window needs is left"
    );

    let window = restore_window(&store, &p).await.unwrap();
    assert_eq!(window.earliest, Some(b2.stop_time));
    assert_eq!(window.backups.len(), 2);
    // A second pass finds nothing more to delete.
    let again = prune_instance(&store, &p, now, &policy, false)
        .await
        .unwrap();
    assert!(again.delete.is_empty(), "{:?}", again.delete);
}

#[tokio::test]
async fn retention_keeps_exactly_what_the_window_needs_on_a_local_archive() {
    let dir = tempfile::tempdir().unwrap();
    retention_on_real_objects(ObjectStore::local(dir.path()).unwrap()).await;
}

#[tokio::test]
async fn retention_keeps_exactly_what_the_window_needs_on_s3() {
    let s3 = shared_s3_settings("retention");
    if !require("an S3 server in WAYBACK_TEST_S3_*", s3.is_some()) {
        return;
    }
    retention_on_real_objects(ObjectStore::open(&s3.unwrap()).unwrap()).await;
}

async fn clock(conn: &mut sqlx::PgConnection) -> DateTime<Utc> {
    let us: i64 = sqlx::query("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8")
        .fetch_one(conn)
        .await
        .unwrap()
        .get(0);
    DateTime::from_timestamp_micros(us).unwrap()
}

/// A superuser connection to the instance's cluster (to write WAL without committing).
async fn admin(app: &TestApp, id: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    // The test app runs its clusters itself, under its data directory.
    let rt = wayback::runtime::LocalRuntime::new(
        app.data_dir.clone(),
        app.worker.context().settings.postgres.clone(),
    );
    let options = rt
        .admin_options(&InstanceId::parse(id).unwrap())
        .await
        .unwrap();
    sqlx::PgConnection::connect_with(&options.database("template1"))
        .await
        .unwrap()
}

#[tokio::test]
async fn the_window_ends_at_the_last_commit_not_at_idle_segments() {
    let app = spawn_app().await;
    let id = app.provision_ready("quiet").await;
    let creds = app.bind_sync(&id, &new_id()).await;
    let mut conn = connect(creds["uri"].as_str().unwrap()).await.unwrap();
    exec(&mut conn, "CREATE TABLE t (n int)").await;
    let before = clock(&mut conn).await;
    exec(&mut conn, "INSERT INTO t VALUES (1)").await;
    let after = clock(&mut conn).await;
    drop(conn);

    // Idle, but WAL moves on: checkpoints and switches write segments without a commit.
    // (CHECKPOINT is forced, so it always writes a record; the switch then completes the
    // segment, which the archiver pushes.)
    let mut su = admin(&app, &id).await;
    let mut last_switched = String::new();
    for _ in 0..4 {
        exec(&mut su, "CHECKPOINT").await;
        last_switched = sqlx::query("SELECT pg_walfile_name(pg_switch_wal())")
            .fetch_one(&mut su)
            .await
            .unwrap()
            .get(0);
    }

    let store = ObjectStore::local(&app.data_dir.join("archive")).unwrap();
    let p = prefix_of(SPACE, &id);
    let deadline = Instant::now() + Duration::from_secs(60);
    let window = loop {
        let w = restore_window(&store, &p).await.unwrap();
        // Names of one timeline sort by position: wait until the last idle one is archived.
        let caught_up = w
            .newest_segment
            .as_deref()
            .is_some_and(|n| n >= last_switched.as_str());
        if caught_up && w.latest.is_some() {
            break w;
        }
        assert!(
            Instant::now() < deadline,
            "archive did not catch up to {last_switched}: {w:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let latest = window.latest.unwrap();
    assert!(
        before <= latest && latest <= after,
        "latest {latest} should be our commit, between {before} and {after}; {window:?}"
    );
    assert_ne!(
        window.latest_commit_segment, window.newest_segment,
        "idle segments were archived after the commit"
    );
    assert!(window.segments >= 3);
}

async fn wait_for_doc(
    store: &ObjectStore,
    p: &InstancePrefix,
    key: Option<&wayback::archive::keydoc::ArchiveKey>,
    ok: impl Fn(&InstanceDoc) -> bool,
) -> InstanceDoc {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(doc) = instance_doc::read(store, p, key).await.unwrap() {
            if ok(&doc) {
                return doc;
            }
            assert!(
                Instant::now() < deadline,
                "instance.json never matched: {doc:?}"
            );
        }
        assert!(
            Instant::now() < deadline,
            "no instance.json at {}",
            p.instance_json()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// instance.json on provision, rename and deprovision; then the reaper after deleted_days.
#[tokio::test]
async fn instance_json_follows_the_instance_and_the_reaper_waits_for_its_days() {
    let app = spawn_app().await;
    let store = ObjectStore::local(&app.data_dir.join("archive")).unwrap();
    let id = app.provision_ready("orders").await;
    let p = prefix_of(SPACE, &id);
    // The archive is encrypted: instance.json is sealed with the instance's data key.
    let key = archive_keys::data_key(&store, &app.data_dir, p.as_str()).await;
    assert!(key.is_some());

    let doc = wait_for_doc(&store, &p, key.as_ref(), |d| d.state == "ready").await;
    assert_eq!(
        (
            doc.instance_id.as_str(),
            doc.space_guid.as_str(),
            doc.organization_guid.as_str()
        ),
        (id.as_str(), SPACE, ORG)
    );
    assert_eq!(
        (doc.plan_id.as_str(), doc.plan_name.as_deref()),
        (SMALL, Some("small"))
    );
    assert_eq!(doc.service_id, SERVICE_ID);
    assert_eq!(doc.current_name(), Some("orders"));
    assert_eq!(doc.names[0].source, "provision");
    assert_eq!((doc.deleted_at, doc.final_lsn.as_deref()), (None, None));

    // `cf rename-service`: answered at once, the document follows.
    let rename = json!({
        "service_id": SERVICE_ID,
        "context": { "platform": "cloudfoundry", "space_guid": SPACE, "instance_name": "orders-2025" },
        "previous_values": { "plan_id": SMALL, "service_id": SERVICE_ID },
    });
    let r = app
        .osb(Method::PATCH, &format!("/v2/service_instances/{id}"))
        .json(&rename)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let doc = wait_for_doc(&store, &p, key.as_ref(), |d| d.names.len() == 2).await;
    let names: Vec<(&str, &str)> = doc
        .names
        .iter()
        .map(|n| (n.name.as_str(), n.source.as_str()))
        .collect();
    assert_eq!(names, [("orders", "provision"), ("orders-2025", "update")]);

    // Deprovision: written before the cluster is destroyed, with where the history ends.
    app.deprovision_done(&id).await;
    let iid = InstanceId::parse(id.clone()).unwrap();
    let record = app.store.get_instance(&iid).await.unwrap().unwrap();
    let deleted_ms = record.deleted_at.expect("deleted_at recorded");
    let doc = wait_for_doc(&store, &p, key.as_ref(), |d| {
        d.deleted_at.map(|t| t.timestamp_millis()) == Some(deleted_ms)
    })
    .await;
    let (lsn, final_ms) = app.store.instance_final(&iid).await.unwrap().unwrap();
    assert_eq!(doc.state, "deleted");
    assert_eq!(doc.final_lsn.as_deref(), Some(lsn.as_str()));
    assert_eq!(doc.final_at.map(|t| t.timestamp_millis()), Some(final_ms));
    assert_eq!(doc.names.len(), 2);
    assert_eq!(doc.reaped_at, None);

    // The index can be rebuilt from storage alone.
    let ring = archive_keys::keyring(&wayback::config::Settings::default(), &app.data_dir);
    let index = instance_doc::rebuild_index(&store, Some(&ring))
        .await
        .unwrap();
    assert_eq!(index.docs, vec![doc.clone()]);

    // The reaper: nothing before deleted_days, everything but instance.json (and key.json,
    // which opens it) after.
    let maintenance = ArchiveMaintenance::new(
        app.store.clone(),
        Arc::new(wayback::catalog::Catalog::load(None).unwrap()),
        store.clone(),
        RetentionSettings {
            deleted_days: 14,
            interval_secs: 3600,
        },
        Duration::from_secs(1),
    );
    let deleted = DateTime::from_timestamp_millis(deleted_ms).unwrap();
    let everything = keys(&store, &p).await;
    assert!(everything.len() > 2, "WAL was archived: {everything:?}");
    let early = maintenance
        .prune_all(deleted + chrono::Duration::days(13), false)
        .await
        .unwrap();
    assert_eq!(early.instances[0].action, "keep");
    assert_eq!(keys(&store, &p).await, everything);

    let later = deleted + chrono::Duration::days(15);
    let dry = maintenance.prune_all(later, true).await.unwrap();
    assert_eq!(dry.instances[0].action, "reap");
    assert_eq!(dry.instances[0].deleted_objects, everything.len() - 2);
    assert_eq!(
        keys(&store, &p).await,
        everything,
        "a dry run deletes nothing"
    );

    let done = maintenance.prune_all(later, false).await.unwrap();
    assert_eq!(done.instances[0].deleted_objects, everything.len() - 2);
    assert_eq!(
        keys(&store, &p).await,
        BTreeSet::from([p.instance_json(), format!("{}/key.json", p.as_str())])
    );
    assert_eq!(
        app.store.instance_reaped_at(&iid).await.unwrap(),
        Some(later.timestamp_millis())
    );
    let doc = instance_doc::read(&store, &p, key.as_ref())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(doc.reaped_at, Some(later));
    assert_eq!(doc.final_lsn.as_deref(), Some(lsn.as_str()), "history kept");
    let again = maintenance.prune_all(later, false).await.unwrap();
    assert_eq!(again.instances[0].note.as_deref(), Some("reaped earlier"));
}

/// `wayback prune --dry-run` reports and deletes nothing; without it, it deletes.
#[tokio::test]
async fn prune_dry_run_deletes_nothing() {
    let app = spawn_app().await;
    let id = app.provision_ready("pruned").await;
    let store = ObjectStore::local(&app.data_dir.join("archive")).unwrap();
    let p = prefix_of(SPACE, &id);
    // Two old backups, both older than the 7-day window: the older one is not needed.
    let old = manifest("2020-01-01T00:00:00Z".parse().unwrap(), 1, 0x01);
    let newer = manifest("2020-01-02T00:00:00Z".parse().unwrap(), 1, 0x01);
    let old_keys: BTreeSet<String> = put_backup(&store, &p, &old).await.into_iter().collect();
    put_backup(&store, &p, &newer).await;
    let before = keys(&store, &p).await;

    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_wayback"))
            .args(["prune", "--json", "--data-dir"])
            .arg(&app.data_dir)
            .args(extra)
            .env("WAYBACK_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "prune failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let report = run(&["--dry-run"]);
    assert_eq!(report["dry_run"], true);
    let mine = report["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["instance_id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(mine["action"], "prune");
    assert_eq!(mine["deleted_objects"], 3, "{mine}");
    assert_eq!(mine["deleted_backups"], json!([old.backup_id]));
    assert_eq!(keys(&store, &p).await, before, "a dry run deletes nothing");

    let report = run(&[]);
    assert_eq!(report["dry_run"], false);
    let after = keys(&store, &p).await;
    let gone: BTreeSet<String> = before.difference(&after).cloned().collect();
    assert_eq!(gone, old_keys);
}
