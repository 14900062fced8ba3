//! A drill's life beside everything else: deleted and reaped instances, a killed drill, an
//! agent (a user's clone-from meanwhile: `give_way`).

use super::*;
use crate::common::archive_wait::wait_for_backup;

use std::time::{Duration, Instant};

use wayback::domain::InstanceId;

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
