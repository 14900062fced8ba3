//! Restore drills (issue 18) on real PostgreSQL and the S3-compatible server, one module per
//! concern: `checks` (a healthy instance's drill passes and shows in the store, the API, the
//! metrics and the archive, and comes back from it with `wayback reindex`; a WAL segment whose
//! archived payload is corrupt, its frame header kept, fails the drill naming the segment and
//! enqueues a fresh base backup; an index page zeroed in a base backup part, the part sealed and
//! checksummed again, fails it naming the index), `life` (a deleted instance within retention is
//! drilled, a reaped one is not; a `wayback drill` killed mid-drill leaves nothing once the
//! runtime starts again; a drill runs on the agent holding the instance), `give_way` (a user's
//! clone-from on the same machine cancels a running drill, here and on an agent; the drill runs
//! again afterwards), `retention` (state retention prunes old drill rows) and `cost` (a
//! measurement, not run by default). Every drill leaves no scratch copy or process behind. Helpers here.

mod checks;
mod cost;
mod give_way;
mod life;
mod retention;

use crate::common;
use crate::common::archive_wait::archive_now;

use std::time::Duration;

use common::*;
use wayback::domain::InstanceId;
use wayback::runtime::DrillReport;
use wayback::storage::{ObjectStore, StorageSettings};

/// A real app on the shared S3 server, and a client of the same bucket; None when skipped.
pub(super) async fn s3_app(tag: &str) -> Option<(TestApp, ObjectStore)> {
    s3_app_settings(tag)
        .await
        .map(|(app, store, _)| (app, store))
}

pub(super) async fn s3_app_settings(tag: &str) -> Option<(TestApp, ObjectStore, StorageSettings)> {
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
pub(super) async fn fill(app: &TestApp, id: &str, store: &ObjectStore) {
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
pub(super) async fn run_job(app: &TestApp, id: &str) -> wayback::store::JobRecord {
    let (worker, id) = (app.worker.clone(), id.to_string());
    tokio::spawn(async move { worker.run_job(&id, Duration::from_secs(600)).await })
        .await
        .unwrap()
        .unwrap()
}

/// Enqueues a drill of `id` and runs it through the job worker; its report.
pub(super) async fn drill(app: &TestApp, id: &str) -> DrillReport {
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
pub(super) fn assert_no_scratch(app: &TestApp) {
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
