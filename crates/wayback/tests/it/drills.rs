//! Restore drills (issue 18) on real PostgreSQL and the S3-compatible server: a healthy
//! instance's drill passes and shows in the store, the API, the metrics and the archive (and
//! comes back from it with `wayback reindex`), and leaves no scratch copy or process behind; a WAL segment whose archived payload is corrupt (its frame
//! header kept) fails the drill naming the segment and enqueues a fresh base backup; a deleted
//! instance within retention is drilled, a reaped one is not; an index page zeroed in a base
//! backup part (the part sealed and checksummed again) fails the drill naming the index; a
//! `wayback drill` killed mid-drill leaves nothing once the runtime starts again; a user's
//! clone-from on the same machine starts while a drill runs.

use crate::common;
use crate::common::archive_wait::{archive_now, prefix_of, wait_for_backup};

use std::time::{Duration, Instant};

use common::*;
use serde::Deserialize;
use wayback::domain::InstanceId;
use wayback::runtime::DrillReport;
use wayback::storage::{ObjectStore, StorageSettings};

/// A real app on the shared S3 server, and a client of the same bucket; None when skipped.
async fn s3_app(tag: &str) -> Option<(TestApp, ObjectStore)> {
    s3_app_settings(tag)
        .await
        .map(|(app, store, _)| (app, store))
}

async fn s3_app_settings(tag: &str) -> Option<(TestApp, ObjectStore, StorageSettings)> {
    let s3 = shared_s3_settings(tag);
    if !require("an S3 server in WAYBACK_TEST_S3_*", s3.is_some()) || !pg_available() {
        return None;
    }
    let s3 = s3.unwrap();
    let store = ObjectStore::open(&s3).unwrap();
    let app = spawn_app_with(|s| s.archive = s3.clone()).await;
    Some((app, store, s3))
}

/// Some rows, an index over several pages, statistics; then archived.
async fn fill(app: &TestApp, id: &str, store: &ObjectStore) {
    let mut admin = app.admin_on(id, "template1").await;
    exec(
        &mut admin,
        "CREATE TABLE drilled (id int PRIMARY KEY, v text); \
         INSERT INTO drilled SELECT g, md5(g::text) FROM generate_series(1, 20000) g; \
         ANALYZE drilled",
    )
    .await;
    archive_now(&mut admin, store, id).await;
}

/// Runs one job to its end in a task of its own, as the broker's worker does (inline in the
/// test's future, a drill's deep futures overflow the test thread's stack in debug builds).
async fn run_job(app: &TestApp, id: &str) -> wayback::store::JobRecord {
    let (worker, id) = (app.worker.clone(), id.to_string());
    tokio::spawn(async move { worker.run_job(&id, Duration::from_secs(600)).await })
        .await
        .unwrap()
        .unwrap()
}

/// Enqueues a drill of `id` and runs it through the job worker; its report.
async fn drill(app: &TestApp, id: &str) -> DrillReport {
    let iid = InstanceId::parse(id.to_string()).unwrap();
    let job = wayback::jobs::drill_job(&iid, "manual");
    assert!(app.store.enqueue_drill(&job).await.unwrap());
    let ended = run_job(app, &job.id).await;
    assert_eq!(ended.state, "done", "{:?}", ended.last_error);
    let row = app
        .store
        .drills_of(&iid, 1)
        .await
        .unwrap()
        .pop()
        .expect("the drill is recorded");
    assert_eq!(row.job_id, job.id);
    serde_json::from_str(row.report.as_deref().expect("a report")).unwrap()
}

/// Nothing of any drill is left: no scratch directory, no process working in one.
fn assert_no_scratch(app: &TestApp) {
    let drills = app.data_dir.join("drills");
    let left: Vec<_> = std::fs::read_dir(&drills)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "scratch left behind: {left:?}");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) {
            assert!(
                !cwd.starts_with(&drills),
                "process {:?} still works in {}",
                entry.file_name(),
                cwd.display()
            );
        }
    }
}

#[tokio::test]
async fn a_healthy_instance_passes_and_shows_everywhere() {
    let Some((app, store, s3)) = s3_app_settings("dr").await else {
        return;
    };
    let id = app.provision_ready("drilled").await;
    wait_for_backup(&store, &id).await;
    fill(&app, &id, &store).await;

    let report = drill(&app, &id).await;
    assert!(report.passed(), "{report:#?}");
    assert!(report.backup_id.is_some());
    assert!(report.wal_bytes.unwrap() > 0);
    assert!(report.end_lsn.is_some());
    assert!(report.timeline.unwrap() >= 2);
    assert!(report.databases_checked >= 2, "{report:#?}");
    assert!(report.tables_counted >= 1, "{report:#?}");
    assert!(
        report
            .checks
            .iter()
            .any(|c| c.starts_with("catalog: the same")),
        "a live instance's catalog is compared: {report:#?}"
    );
    assert_no_scratch(&app);

    // In the broker's API (what `cf backups` reads: its "verified" column and `--drills`).
    let answer = crate::common::wayback_client::get(
        &app,
        &format!("/instances/{id}"),
        crate::common::wayback_client::operator(&app),
    )
    .await;
    assert_eq!(answer.status, reqwest::StatusCode::OK, "{}", answer.body);
    let listed = wayback_api::v1::Instance::deserialize(&answer.body).unwrap();
    assert_eq!(listed.drills.first(), Some(&report), "{}", answer.body);
    // In the archive, next to instance.json.
    let key = wayback::jobs::drill_report_key(&prefix_of(&id), report.started);
    assert!(store.get(&key).await.unwrap().is_some(), "{key} missing");
    // In the metrics.
    let text = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = format!("wayback_restore_drill_last_success_timestamp_seconds{{instance=\"{id}\"}}");
    assert!(text.contains(&line), "{text}");
    assert!(text.contains(&format!(
        "wayback_restore_drill_failures_total{{instance=\"{id}\"}} 0"
    )));

    // A broker that lost its state database gets the drill back from the archive
    // (`wayback reindex`), with the operator's key the archive is sealed with.
    let (key_id, key) = archive_keys::generated_key(&app.data_dir);
    let fresh = spawn_app_with(|s| {
        s.archive = s3.clone();
        s.encryption.keys.insert(key_id.clone(), key);
        s.encryption.current_key = Some(key_id);
    })
    .await;
    let reindexed = wayback::maintenance::reindex::reindex(&fresh.store, &store, false, false)
        .await
        .unwrap();
    let line = reindexed
        .instances
        .iter()
        .find(|l| l.instance_id == id)
        .expect("the instance is reindexed");
    assert_eq!(line.drills_added, 1, "{reindexed:#?}");
    let iid = InstanceId::parse(id.clone()).unwrap();
    let back = fresh.store.drills_of(&iid, 10).await.unwrap();
    assert_eq!(back.len(), 1);
    let back: DrillReport = serde_json::from_str(back[0].report.as_deref().unwrap()).unwrap();
    assert_eq!(back, report);
}

#[tokio::test]
async fn a_corrupt_wal_segment_fails_the_drill_naming_it() {
    let Some((app, store)) = s3_app("dw").await else {
        return;
    };
    let id = app.provision_ready("walrot").await;
    wait_for_backup(&store, &id).await;
    fill(&app, &id, &store).await;
    let prefix = prefix_of(&id);
    let window = wayback::archive::window::restore_window(&store, &prefix)
        .await
        .unwrap();
    let newest = window.backups.last().expect("a backup");
    // The first segment replay needs: its payload corrupted, its 72-byte frame header kept.
    let segment = newest.start_wal.clone();
    let key = format!("{}/wal/{segment}", prefix.as_str());
    let mut bytes = store
        .get(&key)
        .await
        .unwrap()
        .expect("segment archived")
        .to_vec();
    for b in bytes.iter_mut().skip(72).step_by(97) {
        *b ^= 0x5a;
    }
    store.delete_many(std::slice::from_ref(&key)).await.unwrap();
    store.put(&key, bytes).await.unwrap();

    let report = drill(&app, &id).await;
    assert!(!report.passed(), "{report:#?}");
    let failure = report.failure.clone().expect("a failure");
    assert_eq!(failure.check, "recovery", "{report:#?}");
    assert!(failure.detail.contains(&segment), "{report:#?}");
    assert_no_scratch(&app);

    // A fresh base backup follows the failure.
    let iid = InstanceId::parse(id.clone()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let latest = app.store.latest_backup(&iid).await.unwrap();
        if latest.is_some_and(|b| b.reason == "drill-failed") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no base backup after the failed drill"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_deleted_instance_is_drilled_until_reaped() {
    let Some((app, store)) = s3_app("dd").await else {
        return;
    };
    let id = app.provision_ready("gone").await;
    wait_for_backup(&store, &id).await;
    fill(&app, &id, &store).await;
    app.deprovision_done(&id).await;
    let iid = InstanceId::parse(id.clone()).unwrap();
    let listed = |c: &[wayback::store::DrillCandidate]| c.iter().any(|c| c.instance.id == iid);
    assert!(listed(&app.store.drill_candidates().await.unwrap()));

    let report = drill(&app, &id).await;
    assert!(report.passed(), "{report:#?}");
    assert!(
        !report.checks.iter().any(|c| c.starts_with("catalog")),
        "a deleted instance has no live catalog: {report:#?}"
    );
    assert_no_scratch(&app);

    app.store
        .set_instance_reaped(&iid, wayback::store::now_millis())
        .await
        .unwrap();
    assert!(!listed(&app.store.drill_candidates().await.unwrap()));
    let job = wayback::jobs::drill_job(&iid, "manual");
    assert!(app.store.enqueue_drill(&job).await.unwrap());
    run_job(&app, &job.id).await;
    let drills = app.store.drills_of(&iid, 10).await.unwrap();
    assert_eq!(drills.len(), 1, "a reaped instance is not drilled");
}

/// The tar entry `name` in `tar` (a plain ustar stream): the offset of its data.
fn tar_entry(tar: &[u8], name: &str) -> Option<usize> {
    let mut at = 0;
    while at + 512 <= tar.len() && tar[at] != 0 {
        let header = &tar[at..at + 512];
        let end = header[..100].iter().position(|b| *b == 0).unwrap_or(100);
        let entry = std::str::from_utf8(&header[..end]).unwrap_or_default();
        let size_text = std::str::from_utf8(&header[124..136]).unwrap_or_default();
        let size =
            usize::from_str_radix(size_text.trim_matches(|c: char| c == '\0' || c == ' '), 8)
                .unwrap_or(0);
        if entry.trim_start_matches("./") == name {
            return Some(at + 512);
        }
        at += 512 + size.div_ceil(512) * 512;
    }
    None
}

#[tokio::test]
async fn a_corrupt_index_page_in_a_base_backup_fails_the_drill_naming_the_index() {
    let Some((app, store)) = s3_app("di").await else {
        return;
    };
    let id = app.provision_ready("indexrot").await;
    wait_for_backup(&store, &id).await;
    let iid = InstanceId::parse(id.clone()).unwrap();
    let db = app
        .store
        .get_instance(&iid)
        .await
        .unwrap()
        .unwrap()
        .database_name;
    let mut conn = app.admin_on(&id, &db).await;
    exec(
        &mut conn,
        "CREATE TABLE rotten (id int PRIMARY KEY, v text) WITH (autovacuum_enabled = false); \
         INSERT INTO rotten SELECT g, md5(g::text) FROM generate_series(1, 20000) g; \
         ANALYZE rotten; CHECKPOINT",
    )
    .await;
    let file: String = sqlx::query_scalar("SELECT pg_relation_filepath('rotten_pkey')")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    drop(conn);
    // A base backup holding the index, with nothing written to it afterwards.
    let job = wayback::jobs::backup_job(&iid, "manual");
    assert!(app.store.enqueue_backup(&job).await.unwrap());
    assert_eq!(run_job(&app, &job.id).await.state, "done");
    let prefix = prefix_of(&id);
    let backup = app.store.backup_of_job(&job.id).await.unwrap().unwrap();
    let manifest_key = prefix.base_manifest(&backup.backup_id);
    let mut m = wayback::archive::manifest::BackupManifest::from_json(
        &store.get(&manifest_key).await.unwrap().unwrap(),
    )
    .unwrap();

    // The whole tar, block 1 of the index zeroed, cut again where the parts were cut, each part
    // compressed, sealed and checksummed again: only pg_amcheck can tell.
    let key = archive_keys::data_key(&store, &app.data_dir, prefix.as_str()).await;
    let part_key = |i| wayback::archive::manifest::part_key(&prefix, &m.backup_id, i);
    let mut tar = Vec::new();
    for part in &m.parts {
        let k = part_key(part.index);
        let stored = store.get(&k).await.unwrap().unwrap();
        let payload = archive_keys::part_payload(&stored, &k, &m, key.as_ref());
        tar.extend(zstd::stream::decode_all(&payload[..]).unwrap());
    }
    let data = tar_entry(&tar, &file).unwrap_or_else(|| panic!("{file} is not in the backup"));
    tar[data + 8192..data + 16384].fill(0);
    let mut at = 0;
    let mut parts = m.parts.clone();
    for part in &mut parts {
        let raw = &tar[at..at + part.raw_bytes as usize];
        at += part.raw_bytes as usize;
        let compressed = zstd::stream::encode_all(raw, 3).unwrap();
        let k = part_key(part.index);
        let stored = match (&key, m.parts_encrypted()) {
            (Some(key), true) => key.cipher().seal(&compressed, k.as_bytes()),
            _ => compressed,
        };
        part.stored_bytes = stored.len() as u64;
        part.crc32 = crc32fast::hash(&stored);
        part.sha256 = archive_keys::part_digest(raw, &m, key.as_ref());
        store.delete_many(std::slice::from_ref(&k)).await.unwrap();
        store.put(&k, stored).await.unwrap();
    }
    m.stored_bytes = parts.iter().map(|p| p.stored_bytes).sum();
    m.parts = parts;
    store
        .delete_many(std::slice::from_ref(&manifest_key))
        .await
        .unwrap();
    store.put(&manifest_key, m.to_json()).await.unwrap();

    let report = drill(&app, &id).await;
    assert!(!report.passed(), "{report:#?}");
    assert_eq!(report.backup_id.as_deref(), Some(m.backup_id.as_str()));
    let failure = report.failure.clone().expect("a failure");
    assert_eq!(failure.check, "amcheck", "{report:#?}");
    assert!(failure.detail.contains("rotten_pkey"), "{report:#?}");
    assert_no_scratch(&app);
}

#[tokio::test]
async fn a_drill_killed_half_way_leaves_nothing_after_a_restart() {
    let Some((mut app, store, s3)) = s3_app_settings("dk").await else {
        return;
    };
    let id = app.provision_ready("killed").await;
    wait_for_backup(&store, &id).await;
    fill(&app, &id, &store).await;
    // The broker stops (its clusters run on), so that the command's own process runs the drill.
    app.stop().await;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_wayback"));
    cmd.args(["drill", &id])
        .env("WAYBACK_DATA_DIR", &app.data_dir)
        .env("WAYBACK_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    crate::common::archive_wait::archive_env(&mut cmd, &s3);
    let mut child = cmd.spawn().expect("run wayback drill");
    let drills = app.data_dir.join("drills");
    let deadline = Instant::now() + Duration::from_secs(120);
    let scratch = loop {
        let running = std::fs::read_dir(&drills).ok().and_then(|d| {
            d.flatten()
                .map(|e| e.path())
                .find(|p| p.join("pgdata/postmaster.pid").is_file())
        });
        if let Some(dir) = running {
            break dir;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the drill ended before its server was seen"
        );
        assert!(Instant::now() < deadline, "no drill server within 120 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(scratch.exists(), "the killed drill left its scratch copy");

    // What `serve` and `agent` do at start-up.
    let mut pg = wayback::config::PostgresSettings::default();
    if let Ok(u) = std::env::var("WAYBACK_PG_OS_USER") {
        pg.os_user = u;
    }
    let runtime = wayback::runtime::LocalRuntime::new(app.data_dir.clone(), pg);
    runtime.prepare().await.unwrap();
    assert_no_scratch(&app);
}

#[tokio::test]
async fn a_users_clone_from_starts_while_a_drill_runs_on_the_same_machine() {
    let Some((app, store)) = s3_app("dc").await else {
        return;
    };
    let id = app.provision_ready("busy").await;
    wait_for_backup(&store, &id).await;
    fill(&app, &id, &store).await;
    let iid = InstanceId::parse(id.clone()).unwrap();
    let job = wayback::jobs::drill_job(&iid, "manual");
    assert!(app.store.enqueue_drill(&job).await.unwrap());
    let (worker, job_id) = (app.worker.clone(), job.id.clone());
    let drill = tokio::spawn(async move {
        worker
            .run_job(&job_id, Duration::from_secs(600))
            .await
            .unwrap()
    });
    // The drill's server runs in its scratch copy.
    let drills = app.data_dir.join("drills");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_dir(&drills).is_ok_and(|d| {
        d.flatten()
            .any(|e| e.path().join("pgdata/postmaster.pid").is_file())
    }) {
        assert!(Instant::now() < deadline, "no drill server within 120 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let clone = new_id();
    let r = app
        .put_instance(
            &clone,
            &clone_body(
                "busy-copy",
                SPACE,
                serde_json::json!({"clone-from": "busy"}),
            ),
        )
        .await;
    assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED);
    let op: serde_json::Value = r.json().await.unwrap();
    let op = op["operation"].as_str().unwrap().to_string();
    // The clone's job is taken up and moves on while the drill still runs: user restores
    // never wait behind a drill.
    loop {
        let step = app.store.get_job(&op).await.unwrap().unwrap().step;
        let drilling = app.store.drills_of(&iid, 1).await.unwrap()[0].result == "running";
        if step != "allocate_port" {
            assert!(
                drilling,
                "the drill ended before the clone moved on (step {step})"
            );
            break;
        }
        assert!(drilling, "the drill ended before the clone started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(drill.await.unwrap().state, "done");
    let (status, body) = app.poll_instance(&clone, Some(&op)).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert_eq!(body["state"], "succeeded", "{body}");
    assert_no_scratch(&app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drill_runs_on_the_agent_holding_the_instance() {
    if !pg_available() {
        return;
    }
    let fleet = crate::agents::Fleet::start(1, |_| {}).await;
    let app = &fleet.app;
    let store = fleet.store();
    let id = app.provision_ready("remote").await;
    wait_for_backup(&store, &id).await;
    let agent = fleet.placed_on(&id).await.expect("placed on an agent");

    let report = drill(app, &id).await;
    assert!(report.passed(), "{report:#?}");
    let iid = InstanceId::parse(id.clone()).unwrap();
    assert_eq!(app.store.drills_of(&iid, 1).await.unwrap()[0].agent, agent);
    let on_agent = fleet
        .agents
        .iter()
        .find(|a| a.name == agent)
        .unwrap()
        .data_dir
        .join("drills");
    let left: Vec<_> = std::fs::read_dir(&on_agent)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "scratch left on the agent: {left:?}");
    assert!(
        !app.data_dir.join("drills").exists(),
        "the broker restored it itself"
    );
}
