//! The worker's leases and lanes, on the fake runtime: a step held for several lease periods
//! runs once and keeps its owner; a provision is claimed and finishes while fifty background
//! jobs wait and the background lane is full; a deprovision waiting for another operation on its
//! instance gives its slot to other work. Holding a runtime call (`app.fake().hold(…)`) keeps a
//! step running for as long as a test needs.

use std::time::{Duration, Instant};

use crate::common;

use common::fake_runtime::Call;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use wayback::domain::InstanceId;
use wayback::store::{now_millis, JOB_PENDING};

/// Polls `check` until it holds, for at most 30 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "not within 30 s: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// PUTs a provision; (instance id, operation id).
async fn start_provision(app: &TestApp, name: &str) -> (String, String) {
    let id = new_id();
    let r = app.put_instance(&id, &provision_body(SMALL, name)).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let body: Value = r.json().await.unwrap();
    (id, body["operation"].as_str().unwrap().to_string())
}

fn count(app: &TestApp, call: Call, id: Option<&str>) -> usize {
    app.fake()
        .calls()
        .iter()
        .filter(|(c, i)| *c == call && (id.is_none() || i.as_deref() == id))
        .count()
}

#[tokio::test]
async fn a_step_held_for_several_lease_periods_runs_once_and_keeps_its_owner() {
    let app = spawn_fast_app_with(|s| s.jobs.lease_secs = 2).await;
    let gate = app.fake().hold(Call::EnsureDatabase);
    let (id, operation) = start_provision(&app, "long-step").await;
    gate.reached().await;
    let claimed = app.store.get_job(&operation).await.unwrap().unwrap();
    let owner = claimed
        .lease_owner
        .clone()
        .expect("a running job is leased");

    // Three lease periods.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let job = app.store.get_job(&operation).await.unwrap().unwrap();
        assert_eq!(
            job.lease_owner.as_deref(),
            Some(owner.as_str()),
            "the lease stays with its owner"
        );
        assert!(
            job.lease_until.is_some_and(|t| t > now_millis()),
            "the lease never lapses while its step runs: {job:?}"
        );
    }
    assert_eq!(
        count(&app, Call::EnsureDatabase, Some(&id)),
        1,
        "nobody claimed the running step again"
    );

    gate.release();
    let (status, body) = app.poll_instance(&id, Some(&operation)).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{body}"
    );
    assert_eq!(count(&app, Call::EnsureDatabase, Some(&id)), 1);
}

#[tokio::test]
async fn a_provision_runs_while_fifty_background_jobs_wait() {
    let app = spawn_fast_app().await;
    let started = Instant::now();
    app.provision_ready("on-an-idle-broker").await;
    let idle = started.elapsed();
    let app = &app;
    eventually("the idle instance's first backup", || async move {
        count(app, Call::TakeBackup, None) >= 1
    })
    .await;
    let before = count(app, Call::TakeBackup, None);

    // Two backups running (the background lane's two slots), held; fifty more queued.
    let backups = app.fake().hold(Call::TakeBackup);
    app.provision_ready("busy-1").await;
    app.provision_ready("busy-2").await;
    eventually("two backups running", || async move {
        count(app, Call::TakeBackup, None) >= before + 2
    })
    .await;
    let queued: Vec<InstanceId> = (0..50)
        .map(|i| InstanceId::parse(format!("queued-{i}")).unwrap())
        .collect();
    for instance in &queued {
        let job = wayback::jobs::backup_job(instance, "schedule");
        assert!(app.store.enqueue_backup(&job).await.unwrap());
    }
    app.worker.wake();

    let started = Instant::now();
    let (id, operation) = start_provision(app, "while-backups-wait").await;
    let (status, body) = app.poll_instance(&id, Some(&operation)).await;
    let busy = started.elapsed();
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{body}"
    );
    let mut pending = 0;
    for instance in &queued {
        if let Some(job) = app.store.pending_backup_job(instance).await.unwrap() {
            assert_eq!(job.state, JOB_PENDING);
            pending += 1;
        }
    }
    assert_eq!(
        pending, 50,
        "the provision ran while every queued background job still waited"
    );
    eprintln!(
        "provision on an idle broker: {} ms; with 50 background jobs queued and 2 running: {} ms",
        idle.as_millis(),
        busy.as_millis()
    );
    backups.release();
}

#[tokio::test]
async fn a_deprovision_waiting_for_a_running_backup_gives_its_slot_to_other_work() {
    // One user slot: whatever holds it blocks every other operation.
    let app = spawn_fast_app_with(|s| s.jobs.concurrency = 1).await;
    let backups = app.fake().hold(Call::TakeBackup);
    let busy = app.provision_ready("busy").await;
    backups.reached().await;

    let r = app.delete_instance(&busy).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let delete: Value = r.json().await.unwrap();
    let delete = delete["operation"].as_str().unwrap().to_string();
    let path = format!(
        "/v2/service_instances/{busy}/last_operation?service_id={SERVICE_ID}&plan_id={SMALL}&operation={delete}"
    );
    let (app, path) = (&app, &path);
    eventually("the delete waits for the backup", || async move {
        let r = app.osb(Method::GET, path).send().await.unwrap();
        let body: Value = r.json().await.unwrap();
        body["description"]
            .as_str()
            .is_some_and(|d| d.contains("waiting for the running operation"))
    })
    .await;

    // The waiting delete holds no slot: another user's provision runs to its end.
    let other = app.provision_ready("meanwhile").await;
    let waiting = app.store.get_job(&delete).await.unwrap().unwrap();
    assert_eq!(
        (waiting.state.as_str(), waiting.step.as_str()),
        (JOB_PENDING, "wait_exclusive"),
        "the delete still waits"
    );
    assert!(app.fake().exists(&other));

    backups.release();
    app.poll_instance(&busy, Some(&delete)).await;
    assert!(
        !app.fake().exists(&busy),
        "the delete went on once the backup ended"
    );
}
