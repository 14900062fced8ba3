//! A running drill gives way to a user's restore (issue 18 point 4): a clone-from on the same
//! machine cancels it — its row says `cancelled`, no scratch copy is left, no failure is
//! counted — the clone succeeds, and the drill runs again to success afterwards.

use super::*;
use crate::common::archive_wait::wait_for_backup;

use std::time::{Duration, Instant};

use wayback::domain::InstanceId;
use wayback::runtime::DrillResult;

/// A superuser session on database `db` of the cluster in `data_dir` (the broker's or an
/// agent's).
async fn admin_in(data_dir: &std::path::Path, id: &str, db: &str) -> sqlx::PgConnection {
    use sqlx::ConnectOptions;
    let dir = data_dir.join("clusters").join(id);
    let pid = std::fs::read_to_string(dir.join("pgdata/postmaster.pid")).expect("running");
    let port: u16 = pid.lines().nth(3).unwrap().trim().parse().unwrap();
    let password = std::fs::read_to_string(dir.join("admin-password")).unwrap();
    wayback::pg::sql::admin_options(
        &dir.join("run"),
        port,
        &secrecy::SecretString::from(password.trim().to_string()),
    )
    .database(db)
    .connect()
    .await
    .expect("superuser session")
}

/// Enough WAL after the base backup that the drill's recovery replays for seconds.
async fn fill_large(data_dir: &std::path::Path, id: &str, store: &ObjectStore) {
    let mut admin = admin_in(data_dir, id, "template1").await;
    exec(
        &mut admin,
        "CREATE TABLE drilled (id int PRIMARY KEY, v text); \
         INSERT INTO drilled SELECT g, md5(g::text) || md5((g + 1)::text) \
         FROM generate_series(1, 600000) g; ANALYZE drilled",
    )
    .await;
    archive_now(&mut admin, store, id).await;
}

#[tokio::test]
async fn a_users_clone_from_cancels_a_running_drill_on_the_same_machine() {
    let Some((app, store)) = s3_app("dy").await else {
        return;
    };
    let drills = app.data_dir.join("drills");
    clone_cancels_the_drill(&app, &store, &drills).await;
    assert_no_scratch(&app);
}

/// On an agent: the broker cancels the agent's drill (`DELETE /v1/clusters/{id}/drill`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_users_clone_from_cancels_a_running_drill_on_an_agent() {
    if !pg_available() {
        return;
    }
    let fleet = crate::agents::Fleet::start(1, |_| {}).await;
    let (app, store) = (&fleet.app, fleet.store());
    let agent = &fleet.agents[0];
    clone_cancels_the_drill(app, &store, &agent.data_dir.join("drills")).await;
    let left: Vec<_> = std::fs::read_dir(agent.data_dir.join("drills"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "scratch left on the agent: {left:?}");
}

/// Provisions `busy`, drills it (its scratch copy in `drills`), asks for a clone of it on
/// the same machine meanwhile, and checks the drill was cancelled, the clone succeeded and the
/// drill then passed.
async fn clone_cancels_the_drill(app: &TestApp, store: &ObjectStore, drills: &std::path::Path) {
    let id = app.provision_ready("busy").await;
    wait_for_backup(store, &id).await;
    fill_large(drills.parent().unwrap(), &id, store).await;
    let iid = InstanceId::parse(id.clone()).unwrap();
    let job = wayback::jobs::drill_job(&iid, "manual");
    assert!(app.store.enqueue_drill(&job).await.unwrap());
    let (worker, job_id) = (app.worker.clone(), job.id.clone());
    let drill = tokio::spawn(async move {
        worker
            .run_job(&job_id, Duration::from_secs(900))
            .await
            .unwrap()
    });
    // The drill's server replays in its scratch copy.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_dir(drills).is_ok_and(|d| {
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

    // The drill is cancelled: its row says so, and nothing of it is left.
    let deadline = Instant::now() + Duration::from_secs(120);
    let cancelled = loop {
        let rows = app.store.drills_of(&iid, 10).await.unwrap();
        if let Some(row) = rows.into_iter().find(|r| r.result == "cancelled") {
            break row;
        }
        assert!(Instant::now() < deadline, "the drill was not cancelled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        cancelled.job_id.starts_with(&job.id),
        "{}",
        cancelled.job_id
    );
    assert!(cancelled.finished_at.is_some());
    let report: DrillReport = serde_json::from_str(cancelled.report.as_deref().unwrap()).unwrap();
    assert_eq!(report.result, DrillResult::Cancelled);
    assert_eq!(report.failure, None);
    let left: Vec<_> = std::fs::read_dir(drills)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "scratch left after the cancel: {left:?}");
    // Not a failure: nothing counted.
    let stats = app.store.drill_stats().await.unwrap();
    assert!(stats.iter().all(|(_, s)| s.failures == 0), "{stats:?}");
    // The user's clone succeeds.
    let (status, body) = app.poll_instance(&clone, Some(&op)).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert_eq!(body["state"], "succeeded", "{body}");

    // The drill runs again, to success; no base backup was asked for by a failure.
    let ended = drill.await.unwrap();
    assert_eq!(ended.state, "done", "{:?}", ended.last_error);
    let latest = app.store.latest_backup(&iid).await.unwrap();
    assert!(latest.is_some_and(|b| b.reason != "drill-failed"));
    let rows = app.store.drills_of(&iid, 10).await.unwrap();
    let newest = &rows[0];
    assert_eq!(newest.job_id, job.id);
    assert_eq!(newest.result, "passed", "{rows:?}");
    assert_eq!(rows.iter().filter(|r| r.result == "cancelled").count(), 1);
}
