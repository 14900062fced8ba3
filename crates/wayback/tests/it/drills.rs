//! Restore drills (issue 18) on real PostgreSQL and the S3-compatible server: a healthy
//! instance's drill passes and shows in the store, the metrics and the archive, and leaves no
//! scratch copy or process behind; a WAL segment whose archived payload is corrupt (its frame
//! header kept) fails the drill naming the segment and enqueues a fresh base backup; a deleted
//! instance within retention is drilled, a reaped one is not.

use crate::common;
use crate::common::archive_wait::{archive_now, prefix_of, wait_for_backup};

use std::time::{Duration, Instant};

use common::*;
use wayback::domain::InstanceId;
use wayback::runtime::DrillReport;
use wayback::storage::ObjectStore;

/// A real app on the shared S3 server, and a client of the same bucket; None when skipped.
async fn s3_app(tag: &str) -> Option<(TestApp, ObjectStore)> {
    let s3 = shared_s3_settings(tag);
    if !require("an S3 server in WAYBACK_TEST_S3_*", s3.is_some()) || !pg_available() {
        return None;
    }
    let s3 = s3.unwrap();
    let store = ObjectStore::open(&s3).unwrap();
    let app = spawn_app_with(|s| s.archive = s3.clone()).await;
    Some((app, store))
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
    let Some((app, store)) = s3_app("dr").await else {
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
