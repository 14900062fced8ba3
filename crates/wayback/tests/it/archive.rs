//! WAL archiving against real clusters and the real `wayback wal-push` / `wal-fetch` binary:
//! continuous archiving, a deprovision that loses nothing, and docs/architecture.md §7's rules (identical
//! re-push succeeds, different content is refused, absent → 1, corrupt or unreachable → 126,
//! foreign WAL refused). Runs on the local-directory archive and, when the test script
//! provides one, on the S3-compatible server.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use sqlx::Row;
use wayback::archive::{frame, ArchiveTarget};
use wayback::domain::InstanceId;
use wayback::storage::ObjectStore;

async fn wait_for_object(store: &ObjectStore, key: &str) -> bytes::Bytes {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(b) = store.get(key).await.unwrap() {
            return b;
        }
        assert!(Instant::now() < deadline, "{key} not archived within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Provision, commit, delete: the final segment, with the last commit in it, is archived.
async fn deprovision_loses_nothing(app: TestApp, store: ObjectStore) {
    let id = app.provision_ready("ledger").await;
    let creds = app.bind_sync(&id, &new_id()).await;
    let mut conn = connect(creds["uri"].as_str().unwrap()).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE ledger (n int); INSERT INTO ledger SELECT generate_series(1, 1000)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let committed_at: f64 = sqlx::query("SELECT extract(epoch FROM clock_timestamp())::float8")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    drop(conn);

    app.deprovision_done(&id).await;

    let iid = InstanceId::parse(id.clone()).unwrap();
    let (final_lsn, _) = app
        .store
        .instance_final(&iid)
        .await
        .unwrap()
        .expect("final LSN recorded");
    let prefix = format!("spaces/{SPACE}/instances/{id}/wal/");
    let data_key =
        archive_keys::data_key(&store, &app.data_dir, prefix.trim_end_matches("/wal/")).await;
    assert!(data_key.is_some(), "archives are encrypted by default");
    let objects = store.list(&prefix).await.unwrap();
    assert!(!objects.is_empty(), "no WAL archived under {prefix}");
    // Every object is a valid frame of this cluster; the newest commit we made is in one.
    let mut last_commit = 0i64;
    let mut sysids = std::collections::BTreeSet::new();
    for o in &objects {
        let bytes = store.get(&o.key).await.unwrap().unwrap();
        let (header, raw) = archive_keys::decode_frame(&bytes, &o.key, data_key.as_ref())
            .expect("valid archived file");
        if o.key.ends_with(".history") || o.key.ends_with(".backup") {
            continue;
        }
        assert_eq!(raw.len(), 16 << 20, "{} is a whole segment", o.key);
        sysids.insert(header.system_identifier);
        if let Some((_, last)) = header.commits {
            last_commit = last_commit.max(last);
        }
    }
    assert_eq!(sysids.len(), 1, "one cluster's WAL only");
    let committed_us = (committed_at * 1e6) as i64;
    assert!(
        last_commit > 0 && (last_commit - committed_us).abs() < 5_000_000,
        "the archive's last commit ({last_commit}) should be our last commit ({committed_us}); final LSN {final_lsn}"
    );
}

#[tokio::test]
async fn deprovision_loses_nothing_on_a_local_archive() {
    let app = spawn_app().await;
    let store = ObjectStore::local(&app.data_dir.join("archive")).unwrap();
    deprovision_loses_nothing(app, store).await;
}

#[tokio::test]
async fn deprovision_loses_nothing_on_s3() {
    let s3 = shared_s3_settings("archive");
    if !require("an S3 server in WAYBACK_TEST_S3_*", s3.is_some()) {
        return;
    }
    let s3 = s3.unwrap();
    let store = ObjectStore::open(&s3).unwrap();
    let app = spawn_app_with(|s| s.archive = s3.clone()).await;
    deprovision_loses_nothing(app, store).await;
}

/// Runs the real binary; returns (exit code, stderr).
fn wayback(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wayback"))
        .args(args)
        .output()
        .expect("run wayback");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_target(dir: &Path, name: &str, target: &ArchiveTarget) -> String {
    let path = dir.join(name);
    target.write(&path).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn wal_push_and_fetch_keep_the_archive_rules() {
    let app = spawn_app().await;
    let id = app.provision_ready("rules").await;
    let creds = app.bind_sync(&id, &new_id()).await;
    let mut conn = connect(creds["uri"].as_str().unwrap()).await.unwrap();
    sqlx::raw_sql("CREATE TABLE t AS SELECT generate_series(1, 100) AS n")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let target = ArchiveTarget::load(&app.cluster_dir(&id).join("archive.json"))
        .expect("the cluster's archive target");
    assert_ne!(target.system_identifier, 0);
    let store = target.open_store().unwrap();
    // Complete a segment now, as the broker's deprovision does.
    let mut pg = Default::default();
    let runtime = wayback::runtime::LocalRuntime::new(app.data_dir.clone(), {
        let p: &mut wayback::config::PostgresSettings = &mut pg;
        if let Ok(u) = std::env::var("WAYBACK_PG_OS_USER") {
            p.os_user = u;
        }
        pg
    });
    let iid = InstanceId::parse(id.clone()).unwrap();
    let options = runtime.admin_options(&iid).await.unwrap();
    let mut admin = wayback::pg::sql::connect(&options, "template1")
        .await
        .unwrap();
    sqlx::query("SELECT pg_switch_wal()")
        .execute(&mut admin)
        .await
        .unwrap();

    let listing_deadline = Instant::now() + Duration::from_secs(90);
    let key = loop {
        let objects = store
            .list(&format!("{}/wal/", target.prefix))
            .await
            .unwrap();
        if let Some(o) = objects
            .iter()
            .find(|o| o.key.rsplit('/').next().is_some_and(|n| n.len() == 24))
        {
            break o.key.clone();
        }
        if Instant::now() > listing_deadline {
            let dirs = wayback::pg::ClusterDirs {
                pgdata: app.cluster_dir(&id).join("pgdata"),
                socket_dir: app.cluster_dir(&id).join("run"),
                log_file: app.cluster_dir(&id).join("postgres.log"),
                log_dir: app.cluster_dir(&id).join("log"),
            };
            let log = wayback::pg::server_log::recent(&dirs, 0, None);
            let conf =
                std::fs::read_to_string(app.cluster_dir(&id).join("pgdata/wayback-archive.conf"))
                    .unwrap_or_default();
            panic!(
                "no segment archived\n--- conf\n{conf}\n--- log\n{}",
                &log[log.len().saturating_sub(3000)..]
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let name = key.rsplit('/').next().unwrap().to_string();
    let work = test_root();
    let dir = work.path();
    let t = write_target(dir, "target.json", &target);

    // wal-fetch restores the exact bytes.
    let restored = dir.join("restored");
    let (code, err) = wayback(&[
        "wal-fetch",
        "--target",
        &t,
        &name,
        restored.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let original = std::fs::read(&restored).unwrap();
    let data_key = target.data_key.clone();
    let (_, archived_raw) = archive_keys::decode_frame(
        &wait_for_object(&store, &key).await,
        &key,
        data_key.as_ref(),
    )
    .unwrap();
    assert_eq!(original, archived_raw);

    // An identical re-push succeeds; different content under the same name is refused.
    let pg_wal = dir.join("pg_wal");
    std::fs::create_dir_all(pg_wal.join("archive_status")).unwrap();
    let same = pg_wal.join(&name);
    std::fs::write(&same, &original).unwrap();
    let (code, err) = wayback(&["wal-push", "--target", &t, same.to_str().unwrap()]);
    assert_eq!(code, 0, "identical re-push: {err}");
    let mut changed = original.clone();
    changed[100_000] ^= 0xFF;
    std::fs::write(&same, &changed).unwrap();
    let (code, err) = wayback(&["wal-push", "--target", &t, same.to_str().unwrap()]);
    assert_ne!(code, 0, "different content must be refused");
    assert!(err.contains("different content"), "{err}");
    let (_, still) = archive_keys::decode_frame(
        &store.get(&key).await.unwrap().unwrap(),
        &key,
        data_key.as_ref(),
    )
    .unwrap();
    assert_eq!(still, original, "the archive kept the original");

    // Foreign WAL: a segment of another system is refused on push and on fetch.
    let mut foreign = target.clone();
    foreign.system_identifier += 1;
    let tf = write_target(dir, "foreign.json", &foreign);
    std::fs::write(&same, &original).unwrap();
    let (code, err) = wayback(&["wal-push", "--target", &tf, same.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("belongs to database system"), "{err}");
    let mut restore_foreign = target.clone();
    restore_foreign.restore_from = Some(wayback::archive::RestoreSource {
        prefix: target.prefix.clone(),
        system_identifier: target.system_identifier + 1,
        data_key: target.data_key.clone(),
    });
    restore_foreign.fetch_ahead = 0;
    let trf = write_target(dir, "restore-foreign.json", &restore_foreign);
    let (code, err) = wayback(&[
        "wal-fetch",
        "--target",
        &trf,
        &name,
        dir.join("x").to_str().unwrap(),
    ]);
    assert_eq!(code, 126, "foreign WAL must stop recovery: {err}");

    // Absent → 1 (and only then).
    let (code, err) = wayback(&[
        "wal-fetch",
        "--target",
        &t,
        "0000000100000000000000FF",
        dir.join("y").to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    let (code, _) = wayback(&[
        "wal-fetch",
        "--target",
        &t,
        "00000009.history",
        dir.join("z").to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "a future timeline's history is absent");

    // Unreachable storage → 126 (after bounded retries), never 1.
    let mut down = target.clone();
    down.storage.url = "s3://wayback/none".into();
    down.storage.endpoint = Some(format!("http://127.0.0.1:{}", free_port()));
    down.storage.access_key_id = Some("k".into());
    down.storage.secret_access_key = Some("s".to_string().into());
    down.fetch_retry_secs = 2;
    let td = write_target(dir, "down.json", &down);
    let started = Instant::now();
    let (code, err) = wayback(&[
        "wal-fetch",
        "--target",
        &td,
        &name,
        dir.join("w").to_str().unwrap(),
    ]);
    assert_eq!(code, 126, "{err}");
    assert!(started.elapsed() < Duration::from_secs(60));

    // A corrupted object is detected on fetch → 126.
    if let Some(root) = target.storage.url.strip_prefix("file://") {
        let file = PathBuf::from(root).join(&key);
        let mut bytes = std::fs::read(&file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xFF;
        std::fs::write(&file, bytes).unwrap();
        let (code, err) = wayback(&[
            "wal-fetch",
            "--target",
            &t,
            &name,
            dir.join("v").to_str().unwrap(),
        ]);
        assert_eq!(code, 126, "corruption must stop recovery: {err}");
        assert!(err.contains("corrupt"), "{err}");
    }
}

#[tokio::test]
async fn a_commit_reaches_the_archive_within_the_archive_interval() {
    // Tests use a 2 s interval; no manual WAL switch anywhere.
    let app = spawn_app().await;
    let id = app.provision_ready("steady").await;
    let creds = app.bind_sync(&id, &new_id()).await;
    let mut conn = connect(creds["uri"].as_str().unwrap()).await.unwrap();
    sqlx::raw_sql("CREATE TABLE t (n int); INSERT INTO t VALUES (1)")
        .execute(&mut conn)
        .await
        .unwrap();
    let committed_us = (sqlx::query("SELECT extract(epoch FROM clock_timestamp())::float8")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get::<f64, _>(0)
        * 1e6) as i64;
    let store = ObjectStore::local(&app.data_dir.join("archive")).unwrap();
    let prefix = format!("spaces/{SPACE}/instances/{id}/wal/");
    let started = Instant::now();
    loop {
        let mut newest = 0i64;
        for o in store.list(&prefix).await.unwrap() {
            if let Some(h) = store
                .get_range(&o.key, 0..frame::HEADER_LEN as u64)
                .await
                .unwrap()
            {
                if let Some((_, last)) = frame::header(&h).unwrap().commits {
                    newest = newest.max(last);
                }
            }
        }
        if newest >= committed_us - 1_000_000 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the commit was not archived within 30 s (interval 2 s)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
