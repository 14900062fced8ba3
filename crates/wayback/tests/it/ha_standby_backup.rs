//! An HA instance's base backup comes from its standby (issue 15 point 4), on real PostgreSQL,
//! a real etcd and real Patroni with the broker's local runtime holding both members: once
//! `m2` streams as the sync standby, a backup job's backup is the standby's — its
//! `backup_label` in the archive says `BACKUP FROM: standby`, which PostgreSQL writes only for
//! a backup that began in recovery — its manifest and parts check as a primary's do, its end
//! segment is archived (the leader completed it), and a clone to a point in time after it has
//! every row written before and after it, and none after the point.
//!
//! Run: `bash scripts/test ha_standby_backup::` (needs `patroni` and `etcd`: `bash scripts/setup`).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::backup::{runtime_for, verify};
use crate::common::archive_wait::prefix_of;
use crate::common::etcd::{ha_binaries_available, Etcd};
use crate::common::*;
use crate::ha_broker::{
    member_dir, provision_ha_succeeded, psql, role_of, uri_with_ca, wait_members, Cleanup,
};
use wayback::archive::manifest::BackupManifest;
use wayback::domain::InstanceId;
use wayback::jobs::backup_job;
use wayback::storage::ObjectStore;

/// Long enough for a backup (and its end segment) on a machine shared with other builds.
const WAIT: Duration = Duration::from_secs(300);

/// The leader's clock, to the microsecond.
fn now_on(uri: &str) -> DateTime<Utc> {
    let text = psql(
        uri,
        "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
    .unwrap();
    text.parse().unwrap()
}

/// The text of `backup_label` in a backup's tar.
pub(crate) fn label_of(tar: &[u8]) -> String {
    use std::io::Read;
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_string_lossy() == "backup_label" {
            let mut text = String::new();
            entry.read_to_string(&mut text).unwrap();
            return text;
        }
    }
    panic!("no backup_label in the backup's tar");
}

/// Enqueues a backup job for `id` and returns the manifest of the next backup recorded.
pub(crate) async fn next_backup(app: &TestApp, store: &ObjectStore, id: &str) -> BackupManifest {
    let iid = InstanceId::parse(id).unwrap();
    let before = app.store.latest_backup(&iid).await.unwrap();
    let before = before.map(|b| b.backup_id);
    // A backup job already pending (the one a provision enqueues) takes it as well.
    app.store
        .enqueue_backup(&backup_job(&iid, "manual"))
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let record = loop {
        if let Some(b) = app.store.latest_backup(&iid).await.unwrap() {
            if Some(&b.backup_id) != before.as_ref() {
                break b;
            }
        }
        assert!(Instant::now() < deadline, "no new backup of {id}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let key = prefix_of(id).base_manifest(&record.backup_id);
    BackupManifest::from_json(&store.get(&key).await.unwrap().unwrap()).unwrap()
}

/// Switches the leader's WAL (as the broker's runtime does: the binding's role may not) and
/// waits until that segment is archived.
async fn archive_now(app: &TestApp, leader: &InstanceId, store: &ObjectStore, id: &str) {
    let (_, seg) = runtime_for(app).switch_wal_segment(leader).await.unwrap();
    let key = format!("{}/wal/{seg}", prefix_of(id).as_str());
    let deadline = Instant::now() + WAIT;
    while store.head(&key).await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "{key} not archived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ha_instances_backup_comes_from_its_standby_and_restores_every_row() {
    if !pg_available() || !ha_binaries_available() {
        return;
    }
    let etcd = Etcd::start().await;
    let app = spawn_app_with(|s| s.ha.dcs_endpoints = vec![etcd.endpoint()]).await;
    let store = ObjectStore::local(&app.data_dir.join("archive")).unwrap();
    let id = new_id();
    let iid = InstanceId::parse(id.clone()).unwrap();
    let _cleanup = Cleanup(vec![
        member_dir(&app, &id, "m1"),
        member_dir(&app, &id, "m2"),
    ]);

    provision_ha_succeeded(&app, &id, "ledger").await;
    wait_members(&app, &id, "m1 leads, m2 in sync", |m| {
        role_of(m, "m1") == Some("leader") && role_of(m, "m2") == Some("sync_standby")
    })
    .await;
    let credentials = app.bind_sync(&id, &new_id()).await;
    let ca = tempfile::NamedTempFile::new().unwrap();
    let uri = uri_with_ca(&credentials, &ca);
    psql(&uri, "CREATE TABLE ha_rows (n bigint PRIMARY KEY)").unwrap();
    psql(&uri, "INSERT INTO ha_rows SELECT generate_series(1, 100)").unwrap();

    eprintln!("ha_standby_backup: a backup while m2 streams in sync");
    let manifest = next_backup(&app, &store, &id).await;
    let tar = verify(&store, &id, &manifest, &app.data_dir).await;
    let label = label_of(&tar);
    assert!(
        label.contains("BACKUP FROM: standby"),
        "the backup is the standby's: {label}"
    );
    assert!(
        label.contains(&format!(
            "START WAL LOCATION: {} (file {})",
            manifest.start_lsn, manifest.start_wal
        )),
        "{label}"
    );
    let leader_timeline = {
        let file = psql(&uri, "SELECT pg_walfile_name(pg_current_wal_lsn())").unwrap();
        u32::from_str_radix(&file[..8], 16).unwrap()
    };
    assert_eq!(
        manifest.timeline, leader_timeline,
        "on the leader's timeline"
    );
    eprintln!(
        "ha_standby_backup: backup {} from the standby: {} .. {} (end segment {})",
        manifest.backup_id, manifest.start_lsn, manifest.stop_lsn, manifest.stop_wal
    );

    eprintln!("ha_standby_backup: rows after it, a point in time, a row after that");
    // The point must lie after the backup's end ("restorable from" is its stop time), so that
    // the clone restores this backup and not the provision's.
    let deadline = Instant::now() + WAIT;
    while now_on(&uri) <= manifest.stop_time {
        assert!(Instant::now() < deadline, "the leader's clock stands still");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    psql(&uri, "INSERT INTO ha_rows SELECT generate_series(101, 200)").unwrap();
    let target = now_on(&uri);
    psql(&uri, "INSERT INTO ha_rows VALUES (1000)").unwrap();
    archive_now(&app, &iid.member_key("m1"), &store, &id).await;

    let (clone, _) = app
        .clone_ready(
            "ledger-after-backup",
            json!({"clone-from": "ledger", "point-in-time": target.to_rfc3339()}),
        )
        .await;
    let mut restored = app.admin_on(&clone, "app").await;
    let rows: Vec<i64> = sqlx::query_scalar("SELECT n FROM ha_rows ORDER BY n")
        .fetch_all(&mut restored)
        .await
        .unwrap();
    assert_eq!(
        rows,
        (1..=200).collect::<Vec<i64>>(),
        "every row to the point"
    );
}
