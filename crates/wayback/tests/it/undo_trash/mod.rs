//! Undo from the copy kept at delete time (issue 16), on real clusters and the real S3 server
//! (a local-directory archive when the script provides none): a deleted instance's data
//! directory is moved into the trash, a clone of it at its latest point takes it by rename
//! and starts it without a recovery, archiving into its own prefix alone, and every case that
//! cannot use it — a copy whose `pg_control` is not what was recorded, a point in time before
//! the final commit, a second undo — falls back to the archive with the right rows. Copies are evicted by time, for room
//! and before a provision, never touching the archive; `keep_hours: 0` keeps nothing. With
//! broker processes ([`processes`]): a broker killed between the move and its record, and two
//! agents.

mod processes;

use crate::common;
use crate::common::archive_wait::{archive_now, prefix_of, wait_for_backup};

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::*;
use serde_json::{json, Value};
use wayback::domain::InstanceId;
use wayback::storage::ObjectStore;

/// An app on the shared S3 server when there is one, else on its local archive; and a handle
/// on that archive.
async fn app_with(
    customise: impl FnOnce(&mut wayback::config::Settings),
) -> (TestApp, ObjectStore) {
    // Kept copies stay whatever room the machine's disk has left (a shared test machine's may
    // be under the default floor); the eviction tests set their own floor.
    let customise = |s: &mut wayback::config::Settings| {
        s.trash.min_free_bytes = 0;
        s.trash.min_free_share = 0.0;
        customise(s);
    };
    match shared_s3_settings("ut") {
        Some(s3) => {
            let store = ObjectStore::open(&s3).unwrap();
            let app = spawn_app_with(|s| {
                s.archive = s3.clone();
                customise(s);
            })
            .await;
            (app, store)
        }
        None => {
            let app = spawn_app_with(customise).await;
            let store = ObjectStore::local(&app.data_dir.join("archive")).unwrap();
            (app, store)
        }
    }
}

fn trash_entry(app: &TestApp, id: &str) -> PathBuf {
    app.data_dir.join("trash").join(id)
}

async fn rows(conn: &mut sqlx::PgConnection, sql: &str) -> Vec<String> {
    sqlx::query_scalar(sql).fetch_all(conn).await.unwrap()
}

/// Every object key under an instance's prefix.
async fn archive_keys(store: &ObjectStore, id: &str) -> BTreeSet<String> {
    store
        .list(&format!("{}/", prefix_of(id).as_str()))
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}

/// Provisions `name`, writes `orders` ('one', 'two') through a binding, waits for its first
/// base backup; returns its id and the binding's credentials.
async fn source_with_rows(app: &TestApp, store: &ObjectStore, name: &str) -> (String, Value) {
    let src = app.provision_ready(name).await;
    wait_for_backup(store, &src).await;
    let creds = app.bind_sync(&src, &new_id()).await;
    let mut writer = connect(creds["uri"].as_str().unwrap()).await.unwrap();
    exec(
        &mut writer,
        "CREATE TABLE orders (what text); INSERT INTO orders VALUES ('one'), ('two')",
    )
    .await;
    (src, creds)
}

async fn clone_rows(app: &TestApp, clone: &str) -> Vec<String> {
    let mut conn = app.admin_on(clone, "app").await;
    rows(&mut conn, "SELECT what FROM orders ORDER BY 1").await
}

fn said(seen: &[String], text: &str) -> bool {
    seen.iter().any(|d| d.contains(text))
}

/// Waits until `cond` holds, for at most 30 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "{what} within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the broker dropped its record of `id`'s kept copy (just after the copy goes).
async fn forgotten(app: &TestApp, id: &InstanceId) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.store.kept_copy(id).await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "the kept copy's record is dropped within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn delete_then_undo_takes_the_kept_copy_and_a_second_undo_uses_the_archive() {
    if !pg_available() {
        return;
    }
    let (app, store) = app_with(|_| {}).await;
    let (src, old) = source_with_rows(&app, &store, "production").await;
    app.deprovision_done(&src).await;

    // The data directory is in the trash: the cluster user's alone, without the superuser's
    // password file or TLS key, with its record; the broker knows where it is.
    let entry = trash_entry(&app, &src);
    assert!(entry.join("pgdata/PG_VERSION").is_file());
    assert!(entry.join("kept.json").is_file());
    assert_eq!(
        entry.metadata().unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert!(!entry.join("admin-password").exists() && !entry.join("tls").exists());
    assert!(!app.cluster_dir(&src).exists());
    let id = InstanceId::parse(src.clone()).unwrap();
    let record = app.store.kept_copy(&id).await.unwrap().expect("recorded");
    assert!(record.agent.is_none() && record.size_bytes > 0);
    // The broker's API shows it with its size, and the metrics count it.
    let view: Value = app
        .osb(
            reqwest::Method::GET,
            &format!("/wayback/v1/instances/{src}"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        view["kept_copy"]["size_bytes"].as_i64(),
        Some(record.size_bytes),
        "{view}"
    );
    let line = "wayback_trash_instances{machine=\"local\"} 1";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = app
            .osb(reqwest::Method::GET, "/metrics")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.lines().any(|l| l == line) {
            assert!(metrics.contains("wayback_trash_bytes{machine=\"local\"} "));
            break;
        }
        assert!(Instant::now() < deadline, "no {line:?} in {metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (clone, seen) = app
        .clone_ready("production", json!({"clone-from": "production"}))
        .await;
    let last = seen.last().unwrap();
    assert!(
        last.contains("restored from the copy kept at delete time, in "),
        "{seen:?}"
    );
    assert_eq!(clone_rows(&app, &clone).await, ["one", "two"]);
    // Taken: neither on disk nor in the records.
    assert!(!entry.exists());
    assert!(app.store.kept_copy(&id).await.unwrap().is_none());

    // The clone's own credentials work; the source's binding is refused.
    let new = app.bind_sync(&clone, &new_id()).await;
    let mut conn = connect(new["uri"].as_str().unwrap()).await.unwrap();
    assert_eq!(
        rows(&mut conn, "SELECT what FROM orders ORDER BY 1").await,
        ["one", "two"]
    );
    let port = reqwest::Url::parse(new["uri"].as_str().unwrap())
        .unwrap()
        .port()
        .unwrap();
    let mut stale = reqwest::Url::parse(old["uri"].as_str().unwrap()).unwrap();
    stale.set_port(Some(port)).unwrap();
    assert!(
        connect(stale.as_str()).await.is_err(),
        "the source's binding must not log in"
    );
    // On the source's timeline (no promotion: `trash::adopt` says why none is needed, and
    // `an_undone_clone_needs_nothing_of_its_source_archive` shows it), archiving into its own
    // prefix, with its own first base backup.
    let timeline: i32 = sqlx::query_scalar("SELECT timeline_id FROM pg_control_checkpoint()")
        .fetch_one(&mut app.admin(&clone).await)
        .await
        .unwrap();
    assert_eq!(timeline, 1);
    wait_for_backup(&store, &clone).await;
    let own = archive_keys(&store, &clone).await;
    assert!(own.iter().any(|k| k.contains("/wal/")), "{own:?}");

    // A second undo of the same source: the copy is gone, so the archive.
    let (again, seen) = app
        .clone_ready("production-2", json!({"clone-from": src}))
        .await;
    assert!(
        seen.last()
            .unwrap()
            .contains("restored from the archive: base backup of "),
        "{seen:?}"
    );
    assert!(seen.last().unwrap().contains(" MB of WAL, in "), "{seen:?}");
    assert_eq!(clone_rows(&app, &again).await, ["one", "two"]);
}

/// The undone clone stays on its source's timeline; what keeps the two lineages apart is the
/// prefix: the source's is never written again, and the clone's own archive restores it with
/// nothing of the source's left.
#[tokio::test]
async fn an_undone_clone_needs_nothing_of_its_source_archive() {
    if !pg_available() {
        return;
    }
    let (app, store) = app_with(|_| {}).await;
    let (src, _) = source_with_rows(&app, &store, "lineage").await;
    app.deprovision_done(&src).await;
    let sealed = archive_keys(&store, &src).await;
    let (clone, seen) = app
        .clone_ready("lineage", json!({"clone-from": "lineage"}))
        .await;
    assert!(
        said(&seen, "restored from the copy kept at delete time"),
        "{seen:?}"
    );
    let mut conn = app.admin_on(&clone, "app").await;
    wait_for_backup(&store, &clone).await;
    exec(&mut conn, "INSERT INTO orders VALUES ('three')").await;
    let target = now(&mut conn).await;
    exec(&mut conn, "INSERT INTO orders VALUES ('four')").await;
    archive_now(&mut conn, &store, &clone).await;
    drop(conn);
    assert_eq!(
        archive_keys(&store, &src).await,
        sealed,
        "the source's prefix is never written"
    );
    // Without a byte of the source's archive, the clone's lineage restores from its own (a
    // point in time: the archive, not a live fork).
    let gone: Vec<String> = sealed.into_iter().collect();
    store.delete_many(&gone).await.unwrap();
    let (again, seen) = app
        .clone_ready(
            "lineage-2",
            json!({"clone-from": clone, "point-in-time": target.to_rfc3339()}),
        )
        .await;
    assert!(
        seen.last().unwrap().contains("restored from the archive"),
        "{seen:?}"
    );
    assert_eq!(clone_rows(&app, &again).await, ["one", "three", "two"]);
}

/// Rewrites the latest checkpoint's LSN in a pg_control file, keeping its CRC valid: a copy
/// that is intact but not at the point recorded at delete time.
fn move_checkpoint(pgdata: &std::path::Path) {
    let path = pgdata.join("global/pg_control");
    let mut bytes = std::fs::read(&path).unwrap();
    let crc_at = wayback::pg::control::find_crc_offset(&bytes).unwrap();
    let lsn = u64::from_ne_bytes(bytes[32..40].try_into().unwrap()) + 0x100;
    bytes[32..40].copy_from_slice(&lsn.to_ne_bytes());
    let crc = crc32c::crc32c(&bytes[..crc_at]);
    bytes[crc_at..crc_at + 4].copy_from_slice(&crc.to_ne_bytes());
    std::fs::write(&path, bytes).unwrap();
}

#[tokio::test]
async fn a_copy_whose_pg_control_moved_is_not_used() {
    if !pg_available() {
        return;
    }
    let (app, store) = app_with(|_| {}).await;
    let (src, _) = source_with_rows(&app, &store, "tampered").await;
    app.deprovision_done(&src).await;
    let entry = trash_entry(&app, &src);
    move_checkpoint(&entry.join("pgdata"));

    let (clone, seen) = app
        .clone_ready("tampered", json!({"clone-from": "tampered"}))
        .await;
    assert!(
        said(&seen, "the copy kept at delete time is not used"),
        "{seen:?}"
    );
    assert!(
        seen.last().unwrap().contains("restored from the archive"),
        "{seen:?}"
    );
    assert_eq!(clone_rows(&app, &clone).await, ["one", "two"]);
    // A copy that failed its check is gone, and so is its record.
    assert!(!entry.exists());
    let id = InstanceId::parse(src).unwrap();
    assert!(app.store.kept_copy(&id).await.unwrap().is_none());
}

/// The server's clock, to the microsecond.
async fn now(conn: &mut sqlx::PgConnection) -> DateTime<Utc> {
    let text: String = sqlx::query_scalar(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
    .fetch_one(conn)
    .await
    .unwrap();
    text.parse().unwrap()
}

#[tokio::test]
async fn a_point_in_time_before_the_final_commit_uses_the_archive() {
    if !pg_available() {
        return;
    }
    let (app, store) = app_with(|_| {}).await;
    let src = app.provision_ready("pitr").await;
    wait_for_backup(&store, &src).await;
    let mut admin = app.admin_on(&src, "app").await;
    exec(&mut admin, "CREATE TABLE orders (what text)").await;
    exec(&mut admin, "INSERT INTO orders VALUES ('one')").await;
    let target = now(&mut admin).await;
    exec(&mut admin, "INSERT INTO orders VALUES ('two')").await;
    archive_now(&mut admin, &store, &src).await;
    drop(admin);
    app.deprovision_done(&src).await;

    let (clone, seen) = app
        .clone_ready(
            "pitr-before",
            json!({"clone-from": "pitr", "point-in-time": target.to_rfc3339()}),
        )
        .await;
    assert!(
        seen.last().unwrap().contains("restored from the archive"),
        "{seen:?}"
    );
    assert_eq!(clone_rows(&app, &clone).await, ["one"]);
    // The copy was not asked for: it stays for an undo to the latest point.
    assert!(trash_entry(&app, &src).join("kept.json").is_file());
    let (latest, seen) = app
        .clone_ready("pitr-latest", json!({"clone-from": src}))
        .await;
    assert!(
        said(&seen, "restored from the copy kept at delete time"),
        "{seen:?}"
    );
    assert_eq!(clone_rows(&app, &latest).await, ["one", "two"]);
}

/// A catalog whose small plan keeps nothing (`metadata.wayback.undo.keep_hours: 0`).
fn catalog_keeping_nothing(dir: &std::path::Path) -> PathBuf {
    let mut doc: Value = serde_json::from_str(wayback::catalog::BUILTIN_CATALOG).unwrap();
    for plan in doc["services"][0]["plans"].as_array_mut().unwrap() {
        if plan["id"] == SMALL {
            plan["metadata"]["wayback"]["undo"] = json!({"keep_hours": 0});
        }
    }
    let path = dir.join("catalog-keep-nothing.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    path
}

#[tokio::test]
async fn keep_hours_zero_deletes_at_once() {
    if !pg_available() {
        return;
    }
    let dir = test_root();
    let catalog = catalog_keeping_nothing(dir.path());
    let (app, store) = app_with(|s| s.catalog = Some(catalog)).await;
    let (src, _) = source_with_rows(&app, &store, "gone").await;
    app.deprovision_done(&src).await;
    assert!(!trash_entry(&app, &src).exists());
    assert!(!app.cluster_dir(&src).exists());
    let id = InstanceId::parse(src).unwrap();
    assert!(app.store.kept_copy(&id).await.unwrap().is_none());
    let (clone, seen) = app.clone_ready("gone", json!({"clone-from": "gone"})).await;
    assert!(
        seen.last().unwrap().contains("restored from the archive"),
        "{seen:?}"
    );
    assert_eq!(clone_rows(&app, &clone).await, ["one", "two"]);
}

#[tokio::test]
async fn a_copy_whose_time_is_up_is_evicted_and_the_archive_stays() {
    if !pg_available() {
        return;
    }
    let (app, store) = app_with(|_| {}).await;
    let (src, _) = source_with_rows(&app, &store, "expiring").await;
    app.deprovision_done(&src).await;
    let before = archive_keys(&store, &src).await;
    let id = InstanceId::parse(src.clone()).unwrap();
    let mut record = app.store.kept_copy(&id).await.unwrap().expect("recorded");
    record.expires_at = wayback::store::now_millis() - 1;
    app.store.record_kept_copy(&record).await.unwrap();
    let entry = trash_entry(&app, &src);
    eventually("the expired copy is removed", || !entry.exists()).await;
    forgotten(&app, &id).await;
    assert_eq!(
        archive_keys(&store, &src).await,
        before,
        "the archive is untouched"
    );
    let (clone, _) = app
        .clone_ready("expiring", json!({"clone-from": "expiring"}))
        .await;
    assert_eq!(clone_rows(&app, &clone).await, ["one", "two"]);
}

#[tokio::test]
async fn a_disk_short_of_room_evicts_kept_copies() {
    if !pg_available() {
        return;
    }
    // Every byte of the disk must stay free: no copy can stay once the supervisor looks.
    let (app, store) = app_with(|s| s.trash.min_free_share = 1.0).await;
    let (src, _) = source_with_rows(&app, &store, "crowded").await;
    app.deprovision_done(&src).await;
    let before = archive_keys(&store, &src).await;
    let entry = trash_entry(&app, &src);
    eventually("the copy gives way to free space", || !entry.exists()).await;
    let id = InstanceId::parse(src.clone()).unwrap();
    forgotten(&app, &id).await;
    assert_eq!(
        archive_keys(&store, &src).await,
        before,
        "the archive is untouched"
    );
}

#[tokio::test]
async fn a_provision_that_needs_the_room_evicts_kept_copies_first() {
    if !pg_available() {
        return;
    }
    // The supervisor looks only at start-up here, so what evicts is the provision.
    let (app, store) = app_with(|s| {
        s.trash.min_free_share = 1.0;
        s.supervisor.interval_secs = 3600;
    })
    .await;
    let (src, _) = source_with_rows(&app, &store, "old").await;
    app.deprovision_done(&src).await;
    let before = archive_keys(&store, &src).await;
    let entry = trash_entry(&app, &src);
    assert!(
        entry.join("kept.json").is_file(),
        "kept until room is needed"
    );
    app.provision_ready("new").await;
    assert!(!entry.exists(), "the new instance took the room");
    let id = InstanceId::parse(src.clone()).unwrap();
    assert!(app.store.kept_copy(&id).await.unwrap().is_none());
    assert_eq!(
        archive_keys(&store, &src).await,
        before,
        "the archive is untouched"
    );
}
