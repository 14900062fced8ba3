//! `wayback drain`: with the broker's own WAL switches an hour apart, a commit is only in the
//! instance's current segment; the drain completes that segment and returns once it is in the
//! archive, so the archive's restore window reaches the commit. `wayback drain --agent` does
//! the same from the clusters of the data directory alone, as on an agent VM, which has no
//! state database.

use crate::common;
use crate::common::archive_wait::prefix_of;

use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::*;
use wayback::archive::window::restore_window;
use wayback::storage::ObjectStore;

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
    drain_with_env(app, extra, &[])
}

fn drain_with_env(
    app: &TestApp,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (bool, serde_json::Value) {
    drain_report(
        Command::new(env!("CARGO_BIN_EXE_wayback"))
            .args(["drain", "--json"])
            .args(extra)
            .env("WAYBACK_DATA_DIR", &app.data_dir)
            .env("WAYBACK_LOG", "warn")
            .envs(env.iter().copied()),
    )
}

fn report_of<'a>(report: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    report["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["instance_id"] == id)
        .unwrap_or_else(|| panic!("the drain skipped {id}: {report}"))
}

/// Provisions an instance and commits a row in it once its base backup is archived; returns
/// the session and a time before the commit, which the archive does not reach yet.
async fn commit_not_yet_archived(
    app: &TestApp,
    archive: &ObjectStore,
    name: &str,
) -> (String, sqlx::PgConnection, DateTime<Utc>) {
    let id = app.provision_ready(name).await;
    // The provision's base backup switches WAL itself: let it finish before the commit.
    let deadline = Instant::now() + Duration::from_secs(120);
    while restore_window(archive, &prefix_of(&id))
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
    let window = restore_window(archive, &prefix_of(&id)).await.unwrap();
    assert!(
        !window.latest.is_some_and(|t| t >= before),
        "the commit must not be archived before the drain: {window:?}"
    );
    (id, conn, before)
}

#[tokio::test]
async fn drain_archives_every_commit_made_so_far() {
    if !pg_available() {
        return;
    }
    let app = spawn_app_with(|s| s.wal.archive_timeout_secs = 3600).await;
    let archive = ObjectStore::local(&app.data_dir.join("archive")).unwrap();
    let (id, mut conn, before) = commit_not_yet_archived(&app, &archive, "drained").await;

    let (ok, report) = drain(&app, &[]);
    assert!(ok, "{report}");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report_of(&report, &id)["archived"], true, "{report}");
    let window = restore_window(&archive, &prefix_of(&id)).await.unwrap();
    assert!(
        window.latest.is_some_and(|t| t > before),
        "the archive must reach the commit after the drain: {window:?}"
    );
    // The cluster keeps running (the platform stops it next) and still takes writes.
    exec(&mut conn, "INSERT INTO t VALUES (2)").await;
}

#[tokio::test]
async fn an_agent_drain_finds_its_clusters_without_a_state_database() {
    if !pg_available() {
        return;
    }
    let app = spawn_app_with(|s| s.wal.archive_timeout_secs = 3600).await;
    let archive = ObjectStore::local(&app.data_dir.join("archive")).unwrap();
    let (id, mut conn, before) = commit_not_yet_archived(&app, &archive, "on-an-agent").await;
    // A cluster directory without archive.json (say, one being created): nothing to wait for.
    let bare = new_id();
    std::fs::create_dir_all(app.data_dir.join("clusters").join(&bare)).unwrap();

    // An agent has no state database: opening one at this URL would fail the drain.
    let nowhere = app.data_dir.join("no-such-dir/wayback.db");
    let database_url = format!("sqlite://{}", nowhere.display());
    let (ok, report) = drain_with_env(
        &app,
        &["--agent"],
        &[("WAYBACK_DATABASE_URL", database_url.as_str())],
    );
    std::fs::remove_dir(app.data_dir.join("clusters").join(&bare)).unwrap();
    assert!(ok, "{report}");
    assert_eq!(report["ok"], true, "{report}");
    let mine = report_of(&report, &id);
    assert_eq!(mine["archived"], true, "{report}");
    assert!(
        mine["wal_file"].is_string(),
        "the running cluster switched: {report}"
    );
    let other = report_of(&report, &bare);
    assert_eq!(other["archived"], true, "{report}");
    assert!(other["wal_file"].is_null(), "{report}");
    assert!(
        other["detail"]
            .as_str()
            .unwrap()
            .contains("no archive.json"),
        "{report}"
    );
    assert!(
        !nowhere.parent().unwrap().exists(),
        "no state database was opened"
    );
    let window = restore_window(&archive, &prefix_of(&id)).await.unwrap();
    assert!(
        window.latest.is_some_and(|t| t > before),
        "the archive must reach the commit after the agent's drain: {window:?}"
    );
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
    let mine = report_of(&report, &id);
    assert_eq!(mine["archived"], false);
    assert!(
        mine["detail"]
            .as_str()
            .unwrap()
            .contains("did not reach the archive within 2 s"),
        "{report}"
    );
}
