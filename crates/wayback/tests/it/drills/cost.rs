//! What a drill costs beside an undo, measured.

use super::*;
use crate::common::archive_wait::wait_for_backup;

use std::time::{Duration, Instant};

use wayback::domain::InstanceId;

/// A drill's cost beside a `clone-from`'s, measured (not run by default):
/// `WAYBACK_SKIP_LINT=1 bash scripts/test drills::cost_beside_an_undo -- --ignored --nocapture`.
/// `WAYBACK_DRILL_MB` (1024 by default) of table data, one fresh base backup, then one drill and
/// one clone-from of the same archive, one after the other; prints both times.
#[tokio::test]
#[ignore = "a measurement: runs for minutes"]
async fn cost_beside_an_undo() {
    let Some((app, store)) = s3_app("dm").await else {
        return;
    };
    let mb: u64 = std::env::var("WAYBACK_DRILL_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let id = app.provision_ready("measured").await;
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
    // About 240 bytes a row on disk: mb MiB of heap, plus its primary key.
    let rows = mb * 1024 * 1024 / 240;
    exec(
        &mut conn,
        &format!(
            "CREATE TABLE big (id bigint PRIMARY KEY, v text); \
             INSERT INTO big SELECT g, repeat(md5(g::text), 6) FROM generate_series(1, {rows}) g; \
             ANALYZE big"
        ),
    )
    .await;
    let size: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let job = wayback::jobs::backup_job(&iid, "manual");
    assert!(app.store.enqueue_backup(&job).await.unwrap());
    assert_eq!(run_job(&app, &job.id).await.state, "done");

    let report = drill(&app, &id).await;
    assert!(report.passed(), "{report:#?}");

    let clone = new_id();
    let started = Instant::now();
    let r = app
        .put_instance(
            &clone,
            &clone_body(
                "measured-copy",
                SPACE,
                serde_json::json!({"clone-from": "measured"}),
            ),
        )
        .await;
    assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED);
    let op: serde_json::Value = r.json().await.unwrap();
    let url = format!(
        "/v2/service_instances/{clone}/last_operation?service_id={SERVICE_ID}&plan_id={SMALL}&operation={}",
        op["operation"].as_str().unwrap()
    );
    let deadline = Instant::now() + Duration::from_secs(3600);
    let (status, body) = loop {
        let r = app.osb(reqwest::Method::GET, &url).send().await.unwrap();
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        if status != reqwest::StatusCode::OK || body["state"] != "in progress" {
            break (status, body);
        }
        assert!(Instant::now() < deadline, "clone still running: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        (status, body["state"].as_str()),
        (reqwest::StatusCode::OK, Some("succeeded")),
        "{body}"
    );
    let clone_secs = started.elapsed().as_secs_f64();
    println!(
        "MEASURED: database {:.0} MiB: restore drill {:.1} s (restore + pg_amcheck + counts + catalog), clone-from {:.1} s",
        size as f64 / 1048576.0,
        report.duration_secs,
        clone_secs
    );
}
