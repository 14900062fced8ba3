//! The archive encrypted client-side (issue 13 point 2), on real PostgreSQL and the test's own
//! S3 server, whose files the test reads raw: a marker written in a row is nowhere in the
//! bucket (and is, in a control run with `archive.encrypt` off, so the check can fail), while
//! point in time, undo, fork of a clone, reindex and a restore after `wayback rekey` with only
//! the new key all return the rows; a wrong key is refused before anything is created; and an
//! archive written in clear still restores on a broker with encryption on.

use crate::common;
use crate::common::archive_wait::{archive_now, prefix_of, wait_for_backup};

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::s3_server::S3Server;
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use wayback::archive::keydoc;
use wayback::archive::{take_backup, BackupOptions};
use wayback::domain::InstanceId;
use wayback::storage::{ObjectStore, StorageSettings};

/// A base backup now, as `wayback backup` takes it (with the cluster's own archive target, so
/// encrypted exactly as its WAL is).
async fn backup_now(app: &TestApp, store: &ObjectStore, id: &str) {
    let mut pg = wayback::config::PostgresSettings::default();
    if let Ok(u) = std::env::var("WAYBACK_PG_OS_USER") {
        pg.os_user = u;
    }
    let source = wayback::runtime::LocalRuntime::new(app.data_dir.clone(), pg)
        .backup_source(&InstanceId::parse(id.to_string()).unwrap())
        .await
        .unwrap();
    let options = BackupOptions {
        compression_level: 1,
        part_bytes: 1 << 20,
        uploads_in_flight: 2,
        stream_timeout: Duration::from_secs(300),
        stall_timeout: Duration::from_secs(300),
        archive_wait: Duration::from_secs(120),
        reason: "manual".into(),
    };
    take_backup(&source, store, &prefix_of(id), &options)
        .await
        .unwrap();
}

async fn rows(app: &TestApp, id: &str) -> Vec<String> {
    let mut conn = app.admin_on(id, "app").await;
    sqlx::query_scalar("SELECT v FROM t ORDER BY at")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

async fn server_now(conn: &mut sqlx::PgConnection) -> DateTime<Utc> {
    let text: String = sqlx::query_scalar(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
    .fetch_one(conn)
    .await
    .unwrap();
    text.parse().unwrap()
}

/// Every file under `dir` (the S3 server's own files) whose raw bytes contain `marker`.
fn files_containing(dir: &Path, marker: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files += 1;
                let bytes = std::fs::read(&path).unwrap();
                if bytes.windows(marker.len()).any(|w| w == marker) {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    assert!(files > 10, "the bucket holds an archive ({files} files)");
    found
}

/// A broker's settings for the S3 server's `prefix`, archiving WAL uncompressed so that only
/// encryption can hide the marker.
fn on_archive(s: &mut wayback::config::Settings, archive: &StorageSettings) {
    s.archive = archive.clone();
    s.wal.compression_level = 0;
}

/// Writes the marker row, a point in time after it, a second row; then a base backup holding
/// both and their WAL archived. Returns the point in time.
async fn write_rows(app: &TestApp, store: &ObjectStore, id: &str, marker: &str) -> DateTime<Utc> {
    let mut admin = app.admin_on(id, "app").await;
    exec(
        &mut admin,
        &format!(
            "CREATE TABLE t (v text, at timestamptz DEFAULT clock_timestamp()); \
             INSERT INTO t (v) VALUES ('{marker}')"
        ),
    )
    .await;
    let between = server_now(&mut admin).await;
    exec(&mut admin, "INSERT INTO t (v) VALUES ('after')").await;
    backup_now(app, store, id).await;
    archive_now(&mut admin, store, id).await;
    between
}

fn wayback_cli(data_dir: &Path, archive: &StorageSettings, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wayback"));
    cmd.args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("WAYBACK_LOG", "warn");
    crate::common::archive_wait::archive_env(&mut cmd, archive);
    cmd
}

/// A key in base64, as `encryption.keys` takes it.
fn new_key() -> secrecy::SecretString {
    wayback::crypto::encode_key(&wayback::crypto::random_key_bytes())
}

#[tokio::test]
async fn the_bucket_holds_no_plaintext_and_every_restore_returns_the_rows() {
    if !pg_available() {
        return;
    }
    let Some(s3) = S3Server::start().await else {
        require("s3s-fs (the test's own S3 server)", false);
        return;
    };
    let archive = s3.settings("enc");
    let store = ObjectStore::open(&archive).unwrap();
    let marker = format!("WBMARKER-{}", new_id());
    let shared = archive.clone();
    let mut app = spawn_app_with(move |s| on_archive(s, &shared)).await;

    let src = app.provision_ready("vault").await;
    wait_for_backup(&store, &src).await;
    assert!(
        store
            .head(&format!("{}/key.json", prefix_of(&src).as_str()))
            .await
            .unwrap()
            .is_some(),
        "the instance's wrapped data key is in its prefix"
    );
    let between = write_rows(&app, &store, &src, &marker).await;

    // Point in time: the marker, not the row after it.
    let (pit, _) = app
        .clone_ready(
            "vault-pit",
            json!({"clone-from": "vault", "point-in-time": between.to_rfc3339()}),
        )
        .await;
    assert_eq!(rows(&app, &pit).await, vec![marker.clone()]);
    // Undo: deleted, then cloned to its latest.
    app.deprovision_done(&src).await;
    let (undo, _) = app
        .clone_ready("vault-undo", json!({"clone-from": "vault"}))
        .await;
    assert_eq!(rows(&app, &undo).await, [marker.clone(), "after".into()]);
    // Fork of the clone (its own archive, its own data key).
    wait_for_backup(&store, &undo).await;
    let (fork, _) = app
        .clone_ready("vault-fork", json!({"clone-from": "vault-undo"}))
        .await;
    assert_eq!(rows(&app, &fork).await, [marker.clone(), "after".into()]);
    let mut admin = app.admin_on(&fork, "app").await;
    archive_now(&mut admin, &store, &fork).await;
    drop(admin);

    // Nothing in the S3 server's files shows the row.
    let leaked = files_containing(s3.root(), marker.as_bytes());
    assert!(leaked.is_empty(), "the marker is readable in {leaked:?}");

    // Rekey to a new current key: every key.json is rewrapped; again: nothing to do.
    let (old_id, old_key) = archive_keys::generated_key(&app.data_dir);
    let new = new_key();
    let keys = format!(
        "{old_id}:{},k2:{}",
        secrecy::ExposeSecret::expose_secret(&old_key),
        secrecy::ExposeSecret::expose_secret(&new)
    );
    for expected in ["4 re-sealed", "0 re-sealed"] {
        let out = wayback_cli(&app.data_dir, &archive, &["rekey"])
            .env("WAYBACK_ENCRYPTION_KEYS", &keys)
            .env("WAYBACK_ENCRYPTION_CURRENT_KEY", "k2")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("archive data keys (key.json): {expected}")),
            "{stdout}"
        );
    }
    app.stop().await;

    // A broker with ONLY the new key, on a new state database: reindex, then restore.
    let (shared, k2) = (archive.clone(), new.clone());
    let fresh = spawn_app_with(move |s| {
        on_archive(s, &shared);
        s.encryption.keys.insert("k2".into(), k2);
    })
    .await;
    let report = wayback::maintenance::reindex::reindex(&fresh.store, &store, false, false)
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&report).unwrap()["unreadable"],
        json!([])
    );

    // The source's data key wrapped by another key under the same id k2 (a wrong key): the
    // clone is refused before the 202, naming the key and the instance; nothing is created.
    let key_json = format!("{}/key.json", prefix_of(&src).as_str());
    let original = store.get(&key_json).await.unwrap().unwrap();
    store.delete(&key_json).await.unwrap();
    let other = wayback::crypto::Keyring::new(
        vec![("k2".into(), wayback::crypto::random_key_bytes())],
        None,
    )
    .unwrap();
    keydoc::ensure(&store, Some(&other), prefix_of(&src).as_str(), true)
        .await
        .unwrap();
    let id = new_id();
    let r = fresh
        .put_instance(
            &id,
            &clone_body("vault-wrong", SPACE, json!({"clone-from": "vault"})),
        )
        .await;
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let description = body["description"].as_str().unwrap();
    assert!(
        description.contains("k2") && description.contains(&src),
        "names the key and the instance: {description}"
    );
    let iid = InstanceId::parse(id.clone()).unwrap();
    assert!(fresh.store.get_instance(&iid).await.unwrap().is_none());
    assert!(!fresh.cluster_dir(&id).exists());
    assert!(store
        .list(&format!("{}/", prefix_of(&id).as_str()))
        .await
        .unwrap()
        .is_empty());
    store.put(&key_json, original).await.unwrap();

    // With the right key back: restored with ONLY the new key configured.
    let (again, _) = fresh
        .clone_ready("vault-again", json!({"clone-from": "vault"}))
        .await;
    assert_eq!(rows(&fresh, &again).await, [marker.clone(), "after".into()]);
    drop(fresh);

    // A broker whose k2 is another key cannot open the sealed instance.json documents: reindex
    // reports each, naming the instance and the key, and adds nothing it cannot read.
    let shared = archive.clone();
    let wrong = spawn_app_with(move |s| {
        on_archive(s, &shared);
        s.encryption.keys.insert("k2".into(), new_key());
    })
    .await;
    let report = wayback::maintenance::reindex::reindex(&wrong.store, &store, false, false)
        .await
        .unwrap();
    let report = serde_json::to_value(&report).unwrap();
    let unreadable = report["unreadable"].as_array().unwrap();
    assert!(unreadable.len() >= 4, "{report}");
    assert!(
        unreadable
            .iter()
            .all(|u| u["error"].as_str().unwrap().contains("k2")),
        "{report}"
    );
    assert!(
        unreadable
            .iter()
            .any(|u| u["error"].as_str().unwrap().contains(&src)),
        "{report}"
    );
}

#[tokio::test]
async fn an_archive_written_in_clear_restores_on_a_broker_that_encrypts() {
    if !pg_available() {
        return;
    }
    let Some(s3) = S3Server::start().await else {
        require("s3s-fs (the test's own S3 server)", false);
        return;
    };
    let archive = s3.settings("clear");
    let store = ObjectStore::open(&archive).unwrap();
    let marker = format!("WBMARKER-{}", new_id());
    let shared = archive.clone();
    let mut old = spawn_app_with(move |s| {
        on_archive(s, &shared);
        s.archive.encrypt = false;
    })
    .await;
    let src = old.provision_ready("plain").await;
    wait_for_backup(&store, &src).await;
    write_rows(&old, &store, &src, &marker).await;
    // The control: in clear, the marker is right there in the files.
    assert!(
        !files_containing(s3.root(), marker.as_bytes()).is_empty(),
        "the control run must show the marker, or the encrypted run proves nothing"
    );
    assert!(
        archive_keys::data_key(&store, &old.data_dir, prefix_of(&src).as_str())
            .await
            .is_none()
    );
    old.deprovision_done(&src).await;
    old.stop().await;

    let shared = archive.clone();
    let new = spawn_app_with(move |s| on_archive(s, &shared)).await;
    wayback::maintenance::reindex::reindex(&new.store, &store, false, false)
        .await
        .unwrap();
    let (clone, _) = new
        .clone_ready("plain-back", json!({"clone-from": "plain"}))
        .await;
    assert_eq!(rows(&new, &clone).await, [marker, "after".into()]);
    // The clone's own archive is encrypted from its start.
    assert!(
        archive_keys::data_key(&store, &new.data_dir, prefix_of(&clone).as_str())
            .await
            .is_some()
    );
}
