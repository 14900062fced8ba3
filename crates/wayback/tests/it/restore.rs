//! The restore engine against real clusters, a real archive and the real `wayback wal-fetch`:
//! an archive restores to exactly the source's data (local directory and S3), to a point in
//! time, after a deprovision, refuses a target outside the window without creating anything,
//! and aborts — never promotes — when the archive cannot be read during replay.

use crate::common;
use crate::common::archive_wait::{archive_now, past_the_backups_second, prefix_of};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::*;
use secrecy::SecretString;
use sqlx::ConnectOptions;
use wayback::archive::backup::{take_backup, BackupOptions};
use wayback::archive::manifest::BackupManifest;
use wayback::archive::restore::{
    restore, RestoreError, RestorePhase, RestoreProgress, RestoreReport, RestoreRequest,
    RestoreTarget,
};
use wayback::archive::ArchiveTarget;
use wayback::domain::{InstanceId, SpaceGuid};
use wayback::pg::{Binaries, ClusterDirs, RunAs, Tools};
use wayback::runtime::LocalRuntime;
use wayback::storage::{ObjectStore, StorageSettings};

const PASSWORD: &str = "restored-superuser-password";

fn pg_settings() -> wayback::config::PostgresSettings {
    let mut pg = wayback::config::PostgresSettings::default();
    if let Ok(u) = std::env::var("WAYBACK_PG_OS_USER") {
        pg.os_user = u;
    }
    pg
}

/// A base backup of the running instance, through the backup engine; small parts so that the
/// restore's in-order reassembly of several parts is exercised.
async fn backup(app: &TestApp, id: &str, store: &ObjectStore) -> BackupManifest {
    let runtime = LocalRuntime::new(app.data_dir.clone(), pg_settings());
    let source = runtime
        .backup_source(&InstanceId::parse(id.to_string()).unwrap())
        .await
        .expect("backup source");
    let options = BackupOptions {
        compression_level: 3,
        part_bytes: 8 << 20,
        uploads_in_flight: 4,
        stream_timeout: Duration::from_secs(300),
        stall_timeout: Duration::from_secs(300),
        archive_wait: Duration::from_secs(90),
        reason: "manual".into(),
    };
    take_backup(&source, store, &prefix_of(id), &options)
        .await
        .expect("base backup")
        .manifest
}

/// md5 of every row of every table in `public`, by table.
async fn checksums(conn: &mut sqlx::PgConnection) -> BTreeMap<String, String> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let mut out = BTreeMap::new();
    for t in tables {
        let sql = format!(
            "SELECT coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') FROM public.\"{t}\" t"
        );
        let sum: String = sqlx::query_scalar(&sql)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        out.insert(t, sum);
    }
    out
}

/// Where a test restores to: /tmp/wbt-*/ (short socket paths).
struct Scratch {
    root: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        Self { root: test_root() }
    }
    fn path(&self) -> PathBuf {
        self.root.path().to_path_buf()
    }
}

/// The app's local-directory archive: a handle on it and its settings.
fn local_archive(app: &TestApp) -> (ObjectStore, StorageSettings) {
    let dir = app.data_dir.join("archive");
    (
        ObjectStore::local(&dir).unwrap(),
        StorageSettings {
            url: format!("file://{}", dir.display()),
            ..StorageSettings::default()
        },
    )
}

/// The instance a test restores from: its app, its archive and its id.
struct Source {
    app: TestApp,
    store: ObjectStore,
    storage: StorageSettings,
    id: String,
}

/// What most tests start from: an app archiving to its local directory, a ready instance
/// `name` on it and a superuser session on that; `None` (the test skips) without PostgreSQL.
async fn source(name: &str) -> Option<(Source, sqlx::PgConnection)> {
    if !pg_available() {
        return None;
    }
    let app = spawn_app().await;
    let (store, storage) = local_archive(&app);
    let id = app.provision_ready(name).await;
    let admin = app.admin(&id).await;
    Some((
        Source {
            app,
            store,
            storage,
            id,
        },
        admin,
    ))
}

impl Source {
    async fn backup(&self) -> BackupManifest {
        backup(&self.app, &self.id, &self.store).await
    }

    async fn archive_now(&self, admin: &mut sqlx::PgConnection) {
        archive_now(admin, &self.store, &self.id).await;
    }

    /// A restore of this instance's archive, from `manifest`'s system, into `scratch`.
    async fn request(
        &self,
        scratch: &Scratch,
        manifest: &BackupManifest,
        target: RestoreTarget,
    ) -> RestoreRequest {
        let root = scratch.path();
        let source_key = archive_keys::data_key(
            &self.store,
            &self.app.data_dir,
            prefix_of(&self.id).as_str(),
        )
        .await;
        RestoreRequest {
            standby: None,
            store: self.store.clone(),
            storage: self.storage.clone(),
            source: prefix_of(&self.id),
            system_identifier: manifest.system_identifier,
            source_key,
            target,
            dirs: ClusterDirs {
                pgdata: root.join("pgdata"),
                socket_dir: root.join("run"),
                log_file: root.join("postgres.log"),
                log_dir: root.join("log"),
            },
            port: free_port(),
            listen_address: "127.0.0.1".into(),
            tools: tools().await,
            wayback_bin: env!("CARGO_BIN_EXE_wayback").into(),
            target_file: root.join("archive.json"),
            archive: None,
            archive_timeout_secs: 2,
            fetch_ahead: 8,
            fetch_retry_secs: 10,
            parallel: 4,
            superuser_verifier: Some(SecretString::from(
                wayback::pg::scram::verifier(&SecretString::from(PASSWORD)).unwrap(),
            )),
            progress: None,
            prefilled: false,
        }
    }
}

async fn tools() -> Tools {
    let pg = pg_settings();
    Tools {
        bin: Binaries::discover(pg.bin_dir.as_deref()).await.unwrap(),
        run_as: RunAs::resolve(&pg.os_user).unwrap(),
    }
}

/// A superuser session on the restored cluster (its password was set by the restore).
async fn restored_admin(req: &RestoreRequest, db: &str) -> sqlx::PgConnection {
    wayback::pg::sql::admin_options(
        &req.dirs.socket_dir,
        req.port,
        &SecretString::from(PASSWORD),
    )
    .database(db)
    .connect()
    .await
    .expect("session on the restored cluster")
}

/// Stops the restored server (immediate: the test is over).
async fn stop(req: &RestoreRequest) {
    let _ = wayback::pg::ctl::stop(
        &req.tools,
        &req.dirs.pgdata,
        wayback::pg::ctl::StopMode::Immediate,
        Duration::from_secs(30),
    )
    .await;
}

/// Tables written before and after the base backup (inserts, updates, deletes, a new table):
/// the restore must match the source exactly.
async fn round_trip(app: TestApp, store: ObjectStore, storage: StorageSettings) {
    let id = app.provision_ready("round-trip").await;
    let src = Source {
        app,
        store,
        storage,
        id,
    };
    let Source {
        app,
        store,
        storage,
        id,
    } = &src;
    let mut admin = app.admin(id).await;
    let mut app_db = app.admin_on(id, "app").await;
    exec(
        &mut app_db,
        "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint, note text);
         INSERT INTO accounts SELECT g, g * 10, md5(g::text) FROM generate_series(1, 60000) g;
         CREATE TABLE history (id bigserial PRIMARY KEY, account int, delta bigint, at timestamptz);
         INSERT INTO history (account, delta, at)
           SELECT g % 1000, g, '2026-01-01'::timestamptz + g * interval '1 s'
           FROM generate_series(1, 40000) g;",
    )
    .await;
    let manifest = src.backup().await;
    assert!(
        manifest.parts.len() >= 2,
        "several parts: {:?}",
        manifest.parts.len()
    );
    exec(
        &mut app_db,
        "UPDATE accounts SET balance = balance + 1 WHERE id % 7 = 0;
         DELETE FROM history WHERE id % 11 = 0;
         CREATE TABLE after_backup AS SELECT g AS n, repeat('x', g % 50) AS s FROM generate_series(1, 30000) g;
         INSERT INTO accounts SELECT g, 0, 'late' FROM generate_series(60001, 61000) g;",
    )
    .await;
    let want = checksums(&mut app_db).await;
    src.archive_now(&mut admin).await;
    let source_keys_before: Vec<String> = store
        .list(&format!("{}/", prefix_of(id).as_str()))
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();

    // The clone archives into its own prefix (rule 4).
    let scratch = Scratch::new();
    let clone_id = new_id();
    let mut req = src
        .request(&scratch, &manifest, RestoreTarget::Latest)
        .await;
    let mut own = ArchiveTarget::for_instance(
        &wayback::config::Settings {
            archive: storage.clone(),
            ..Default::default()
        },
        &SpaceGuid::parse(SPACE).unwrap(),
        &InstanceId::parse(clone_id.clone()).unwrap(),
    );
    own.storage = storage.clone();
    req.archive = Some(own);
    let progress = std::sync::Arc::new(RestoreProgress::default());
    req.progress = Some(progress.clone());
    let report: RestoreReport = restore(&req).await.expect("restore");
    eprintln!("report: {}", serde_json::to_string(&report).unwrap());
    // What a watcher saw last: the whole backup unpacked, its stop time, the restore done.
    assert_eq!(progress.phase(), RestorePhase::Done);
    assert_eq!(progress.bytes(), (report.raw_bytes, report.raw_bytes));
    assert_eq!(
        progress.backup_stop_time(),
        DateTime::from_timestamp(report.backup_stop_time.timestamp(), 0)
    );
    // The newest complete backup: ours, or one the broker took since (its WAL-volume rule).
    assert!(report.backup_id >= manifest.backup_id, "{report:?}");
    assert!(report.timeline > manifest.timeline, "{report:?}");

    let mut restored = restored_admin(&req, "app").await;
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut restored)
        .await
        .unwrap();
    assert!(!in_recovery);
    assert_eq!(
        checksums(&mut restored).await,
        want,
        "every table as in the source"
    );

    // Recovery settings are gone; the target file no longer reads from the source.
    let conf = std::fs::read_to_string(req.dirs.pgdata.join("wayback-archive.conf")).unwrap();
    assert!(
        !conf.contains("restore_command") && conf.contains("archive_mode = 'on'"),
        "{conf}"
    );
    let target = ArchiveTarget::load(&req.target_file).unwrap();
    assert!(target.restore_from.is_none());
    assert!(!req.dirs.pgdata.join("recovery.signal").exists());

    // The clone's new timeline reaches its own prefix; nothing of it reaches the source's.
    let history = format!(
        "{}/wal/{:08X}.history",
        prefix_of(&clone_id).as_str(),
        report.timeline
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.get(&history).await.unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "{history} not archived by the clone"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tli = format!("{:08X}", report.timeline);
    let new_in_source: Vec<String> = store
        .list(&format!("{}/", prefix_of(id).as_str()))
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .filter(|k| {
            !source_keys_before.contains(k)
                && k.rsplit('/').next().is_some_and(|n| n.starts_with(&tli))
        })
        .collect();
    assert!(
        new_in_source.is_empty(),
        "the clone wrote into the source's prefix: {new_in_source:?}"
    );
    stop(&req).await;
}

#[tokio::test]
async fn round_trip_on_a_local_archive() {
    if !pg_available() {
        return;
    }
    let app = spawn_app().await;
    let (store, storage) = local_archive(&app);
    round_trip(app, store, storage).await;
}

#[tokio::test]
async fn round_trip_on_s3() {
    let s3 = shared_s3_settings("r");
    if !require("an S3 server in WAYBACK_TEST_S3_*", s3.is_some()) || !pg_available() {
        return;
    }
    let s3 = s3.unwrap();
    let store = ObjectStore::open(&s3).unwrap();
    let app = spawn_app_with(|s| s.archive = s3.clone()).await;
    round_trip(app, store, s3).await;
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
async fn point_in_time_restores_only_what_was_committed_before() {
    let Some((src, mut admin)) = source("pitr").await else {
        return;
    };
    exec(&mut admin, "CREATE TABLE events (what text)").await;
    let manifest = src.backup().await;
    past_the_backups_second().await;
    exec(&mut admin, "INSERT INTO events VALUES ('T1')").await;
    // Read after T1 committed and before T2 begins: T1 ≤ target < T2 on the server's clock.
    let target = now(&mut admin).await;
    exec(&mut admin, "INSERT INTO events VALUES ('T2')").await;
    src.archive_now(&mut admin).await;

    let scratch = Scratch::new();
    let req = src
        .request(&scratch, &manifest, RestoreTarget::PointInTime(target))
        .await;
    let report = restore(&req).await.expect("restore to a point in time");
    assert_eq!(report.target_time, Some(target));
    let mut restored = restored_admin(&req, "template1").await;
    let rows: Vec<String> = sqlx::query_scalar("SELECT what FROM events ORDER BY 1")
        .fetch_all(&mut restored)
        .await
        .unwrap();
    assert_eq!(rows, ["T1"], "only what was committed at the target");
    stop(&req).await;
}

#[tokio::test]
async fn deprovision_then_restore_has_the_last_committed_row() {
    let Some((src, mut admin)) = source("doomed").await else {
        return;
    };
    exec(&mut admin, "CREATE TABLE ledger (n int)").await;
    let manifest = src.backup().await;
    exec(
        &mut admin,
        "INSERT INTO ledger SELECT generate_series(1, 999); INSERT INTO ledger VALUES (1000)",
    )
    .await;
    drop(admin);
    src.app.deprovision_done(&src.id).await;
    assert!(
        !src.app.cluster_dir(&src.id).join("pgdata").exists(),
        "the source is gone"
    );

    let scratch = Scratch::new();
    let req = src
        .request(&scratch, &manifest, RestoreTarget::Latest)
        .await;
    restore(&req).await.expect("restore of a deleted instance");
    let mut restored = restored_admin(&req, "template1").await;
    let (count, last): (i64, Option<i32>) = sqlx::query_as("SELECT count(*), max(n) FROM ledger")
        .fetch_one(&mut restored)
        .await
        .unwrap();
    assert_eq!(
        (count, last),
        (1000, Some(1000)),
        "the last committed row is there"
    );
    stop(&req).await;
}

#[tokio::test]
async fn storage_errors_during_wal_fetch_abort_recovery_and_never_promote() {
    let Some((src, mut admin)) = source("unreachable").await else {
        return;
    };
    exec(
        &mut admin,
        "CREATE TABLE t AS SELECT generate_series(1, 1000) AS n",
    )
    .await;
    let manifest = src.backup().await;
    src.archive_now(&mut admin).await;

    // The engine reads the backup; wal-fetch, in PostgreSQL's process, meets an S3 endpoint
    // that refuses every connection, retries for a few seconds, and exits 126.
    let dead = StorageSettings {
        url: "s3://nowhere/archive".into(),
        endpoint: Some(format!("http://127.0.0.1:{}", free_port())),
        region: Some("us-east-1".into()),
        access_key_id: Some("x".into()),
        secret_access_key: Some(SecretString::from("y")),
        ..StorageSettings::default()
    };
    let scratch = Scratch::new();
    let mut req = src
        .request(&scratch, &manifest, RestoreTarget::Latest)
        .await;
    req.storage = dead;
    req.fetch_retry_secs = 2;
    let started = Instant::now();
    let err = restore(&req).await.expect_err("recovery must abort");
    let msg = err.to_string();
    match &err {
        RestoreError::RecoveryFailed {
            promoted, log_tail, ..
        } => {
            assert!(!promoted, "{msg}");
            assert!(
                log_tail.contains("126") || log_tail.contains("could not restore"),
                "{msg}"
            );
        }
        other => panic!("expected a failed recovery, got {other}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "it failed promptly: {msg}"
    );
    assert!(
        wayback::pg::ctl::live_postmaster(&req.dirs.pgdata)
            .unwrap()
            .is_none(),
        "stopped"
    );
    let pg_wal: Vec<String> = std::fs::read_dir(req.dirs.pgdata.join("pg_wal"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert!(
        !pg_wal.iter().any(|n| n.ends_with(".history")),
        "no new timeline: {pg_wal:?}"
    );
}

#[tokio::test]
async fn a_target_outside_the_window_is_refused_and_nothing_is_created() {
    let Some((src, mut admin)) = source("window").await else {
        return;
    };
    let manifest = src.backup().await;
    exec(
        &mut admin,
        "CREATE TABLE t (n int); INSERT INTO t VALUES (1)",
    )
    .await;
    src.archive_now(&mut admin).await;
    // The provision's own backup may be the oldest: ask the window what it is.
    let window = wayback::archive::window::restore_window(&src.store, &prefix_of(&src.id))
        .await
        .unwrap();
    let (earliest, latest) = (window.earliest.unwrap(), window.latest.unwrap());
    assert!(earliest <= manifest.stop_time);
    let scratch = Scratch::new();
    for target in [
        earliest - chrono::Duration::hours(1),
        latest + chrono::Duration::hours(1),
    ] {
        let req = src
            .request(&scratch, &manifest, RestoreTarget::PointInTime(target))
            .await;
        let err = restore(&req).await.expect_err("outside the window");
        let msg = err.to_string();
        assert!(matches!(err, RestoreError::OutsideWindow { .. }), "{msg}");
        assert!(
            msg.contains(&earliest.to_rfc3339()) && msg.contains(&latest.to_rfc3339()),
            "names the window: {msg}"
        );
        assert!(
            !req.dirs.pgdata.exists() && !req.target_file.exists(),
            "nothing created"
        );
    }
}

/// `wayback restore` finds the instance through the broker's database and prints its report.
#[tokio::test]
async fn the_restore_command_prints_a_json_report() {
    let Some((src, mut admin)) = source("cli").await else {
        return;
    };
    exec(
        &mut admin,
        "CREATE TABLE t AS SELECT generate_series(1, 500) AS n",
    )
    .await;
    src.backup().await;
    src.archive_now(&mut admin).await;
    let Source { app, id, .. } = &src;
    let scratch = Scratch::new();
    let dir = scratch.path().join("copy");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wayback"))
        .args(["restore", "--from-instance", id, "--json", "--target-dir"])
        .arg(&dir)
        .env("WAYBACK_DATA_DIR", &app.data_dir)
        .env("WAYBACK_PG_OS_USER", pg_settings().os_user)
        .env("WAYBACK_WAL_BIN", env!("CARGO_BIN_EXE_wayback"))
        .env("WAYBACK_LOG", "warn")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "wayback restore failed: {stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(json["instance"], id.as_str());
    assert_eq!(json["running"], false);
    assert!(json["report"]["timeline"].as_u64().unwrap() >= 2, "{json}");
    assert!(
        json["report"]["start_to_promoted_secs"].as_f64().is_some(),
        "{json}"
    );
    assert!(
        wayback::pg::ctl::live_postmaster(&dir).unwrap().is_none(),
        "stopped afterwards"
    );
}
