//! `wayback drain`: with the broker's own WAL switches an hour apart, a commit is only in the
//! instance's current segment; the drain completes that segment and returns once it is in the
//! archive, so the archive's restore window reaches the commit.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::*;
use wayback::archive::layout::InstancePrefix;
use wayback::archive::window::restore_window;
use wayback::domain::{InstanceId, SpaceGuid};
use wayback::storage::ObjectStore;

fn prefix_of(id: &str) -> InstancePrefix {
    InstancePrefix::new(
        &SpaceGuid::parse(SPACE).unwrap(),
        &InstanceId::parse(id.to_string()).unwrap(),
    )
}

async fn clock(conn: &mut sqlx::PgConnection) -> DateTime<Utc> {
    let text: String = sqlx::query_scalar(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
    .fetch_one(conn)
    .await
    .unwrap();
    text.parse().unwrap()
}

fn drain(app: &TestApp, extra: &[&str]) -> (bool, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_wayback"))
        .args(["drain", "--json"])
        .args(extra)
        .env("WAYBACK_DATA_DIR", &app.data_dir)
        .env("WAYBACK_LOG", "warn")
        .output()
        .expect("run wayback drain");
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "drain printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), report)
}

#[tokio::test]
async fn drain_archives_every_commit_made_so_far() {
    if !pg_available() {
        return;
    }
    let app = spawn_app_with(|s| s.wal.archive_timeout_secs = 3600).await;
    let archive = ObjectStore::local(&app.data_dir.join("archive")).unwrap();
    let id = app.provision_ready("drained").await;
    // The provision's base backup switches WAL itself: let it finish before the commit.
    let deadline = Instant::now() + Duration::from_secs(120);
    while restore_window(&archive, &prefix_of(&id))
        .await
        .unwrap()
        .backups
        .is_empty()
    {
        assert!(Instant::now() < deadline, "no base backup");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let creds = app.bind_sync(&id, &new_id()).await;
    let mut conn = connect(creds["uri"].as_str().unwrap()).await.unwrap();
    let before = clock(&mut conn).await;
    exec(
        &mut conn,
        "CREATE TABLE t (n int); INSERT INTO t VALUES (1)",
    )
    .await;
    let window = restore_window(&archive, &prefix_of(&id)).await.unwrap();
    assert!(
        window.latest.is_none_or(|t| t < before),
        "the commit must not be archived before the drain: {window:?}"
    );

    let (ok, report) = drain(&app, &[]);
    assert!(ok, "{report}");
    assert_eq!(report["ok"], true, "{report}");
    let mine = report["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["instance_id"] == id.as_str())
        .unwrap_or_else(|| panic!("the drain skipped {id}: {report}"));
    assert_eq!(mine["archived"], true, "{report}");
    let window = restore_window(&archive, &prefix_of(&id)).await.unwrap();
    assert!(
        window.latest.is_some_and(|t| t > before),
        "the archive must reach the commit after the drain: {window:?}"
    );
    // The cluster keeps running (the platform stops it next) and still takes writes.
    exec(&mut conn, "INSERT INTO t VALUES (2)").await;
}

#[tokio::test]
async fn a_drain_that_cannot_archive_fails_naming_the_instance() {
    if !pg_available() {
        return;
    }
    let app = spawn_app().await;
    let id = app.provision_ready("stuck").await;
    // The archive is somewhere the drain cannot see the segment arrive: it waits, then fails.
    let elsewhere = tempfile::tempdir().unwrap();
    let url = format!("file://{}", elsewhere.path().display());
    let (ok, report) = drain(&app, &["--archive-url", &url, "--timeout-secs", "2"]);
    assert!(!ok, "{report}");
    assert_eq!(report["ok"], false, "{report}");
    let mine = report["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["instance_id"] == id.as_str())
        .unwrap();
    assert_eq!(mine["archived"], false);
    assert!(
        mine["detail"]
            .as_str()
            .unwrap()
            .contains("did not reach the archive within 2 s"),
        "{report}"
    );
}
