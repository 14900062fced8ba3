//! Idle stop, broker side (issue 17), on the fake runtime: the supervisor's idle clock, the
//! `idle_stop` job, and what shows a stopped instance. The catalog here is the built-in one with
//! the `dev` plan's `idle.stop_after_secs` at 1 s, and the supervisor passes every second.
//!
//! - an idle `dev` instance gets an `idle_stop` job and is parked; the OSB fetch
//!   (`metadata.attributes`), `/wayback/v1/instances/:id` (`stopped_at`) and `GET /metrics`
//!   (`wayback_instances_stopped`) show it; a client's wake clears it and is timed
//!   (`wayback_wake_seconds`);
//! - a wake that fails leaves it stopped and says why in the OSB fetch
//!   (`metadata.attributes.wake_error`) and the broker API (`wake_error`); a later wake that
//!   works clears it;
//! - a session keeps it running over many passes;
//! - a leader with a follower, and the follower, never stop; an `idle_stop` job for the leader
//!   finds the follower and stops nothing;
//! - a bind on a parked instance starts it, makes the role, and it shows running.

use crate::common;

use common::fake_runtime::Call;
use common::followers::set_leader;
use common::wayback_client as api;
use common::*;
use reqwest::StatusCode;
use serde_json::Value;
use wayback::runtime::ClusterStatus;

/// A fast app whose `dev` plan stops instances after 1 s without a session.
async fn spawn_idle_app() -> (TestApp, tempfile::TempDir) {
    let dir = test_root();
    let mut doc: Value = serde_json::from_str(wayback::catalog::BUILTIN_CATALOG).unwrap();
    let plans = doc["services"][0]["plans"].as_array_mut().unwrap();
    let dev = plans.iter_mut().find(|p| p["id"] == DEV).expect("dev plan");
    dev["metadata"]["wayback"]["idle"]["stop_after_secs"] = 1.into();
    let path = dir.path().join("catalog-idle.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    let app = spawn_fast_app_with(|s| s.catalog = Some(path)).await;
    (app, dir)
}

/// Provisions a `dev` instance with id `id` and waits until it is ready.
async fn provision_dev(app: &TestApp, id: &str, name: &str) {
    let r = app.put_instance(id, &provision_body(DEV, name)).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let op: Value = r.json().await.unwrap();
    let (status, body) = app.poll_instance(id, op["operation"].as_str()).await;
    assert_eq!(body["state"], "succeeded", "{status}: {body}");
}

fn iid(id: &str) -> wayback::domain::InstanceId {
    wayback::domain::InstanceId::parse(id).unwrap()
}

fn status(app: &TestApp, id: &str) -> Option<ClusterStatus> {
    app.fake().cluster(id).map(|c| c.status)
}

fn count(app: &TestApp, id: &str, call: Call) -> usize {
    app.fake()
        .calls_for(id)
        .iter()
        .filter(|c| **c == call)
        .count()
}

/// Waits until `id`'s cluster is parked and recorded as stopped.
async fn wait_parked(app: &TestApp, id: &str) {
    eventually("the idle instance is parked", 30, || async {
        status(app, id) == Some(ClusterStatus::Parked)
    })
    .await;
    eventually("its stop is recorded", 30, || async {
        let record = app.store.get_instance(&iid(id)).await.unwrap();
        record.is_some_and(|r| r.stopped_at.is_some())
    })
    .await;
}

/// Waits for `n` more supervisor passes over `id` (each asks for its status).
async fn passes(app: &TestApp, id: &str, n: usize) {
    let seen = count(app, id, Call::Status);
    eventually("supervisor passes", 30, || async {
        count(app, id, Call::Status) >= seen + n
    })
    .await;
}

#[tokio::test]
async fn an_idle_dev_instance_is_stopped_shown_stopped_and_woken() {
    let (app, _dir) = spawn_idle_app().await;
    let id = new_id();
    provision_dev(&app, &id, "scratch").await;
    wait_parked(&app, &id).await;
    assert!(
        count(&app, &id, Call::Sessions) > 0,
        "the clock asked for sessions"
    );
    assert_eq!(count(&app, &id, Call::Park), 1, "parked once");

    let body = app.fetch_instance(&id).await;
    let attributes = &body["metadata"]["attributes"];
    assert_eq!(attributes["state"], "stopped", "{body}");
    assert!(attributes["stopped_at"].is_string(), "{body}");
    let view = api::get(&app, &format!("/instances/{id}"), api::operator(&app)).await;
    assert_eq!(view.status, StatusCode::OK, "{}", view.body);
    assert_eq!(view.body["state"], "live", "{}", view.body);
    assert!(view.body["stopped_at"].is_string(), "{}", view.body);
    let text = app.metrics().await;
    assert!(text.contains("\nwayback_instances_stopped 1\n"), "{text}");

    // Stays parked over passes: the supervisor never starts it.
    passes(&app, &id, 3).await;
    assert_eq!(status(&app, &id), Some(ClusterStatus::Parked));
    assert_eq!(
        count(&app, &id, Call::Start),
        1,
        "only the provision's start"
    );

    // A client's connection wakes it: shown running at once, the wake timed.
    app.fake().set_sessions(&id, 1, 0);
    app.fake().wake(&id);
    eventually("the wake clears stopped_at", 30, || async {
        app.fetch_instance(&id).await.get("metadata").is_none()
    })
    .await;
    let view = api::get(&app, &format!("/instances/{id}"), api::operator(&app)).await;
    assert!(view.body.get("stopped_at").is_none(), "{}", view.body);
    let text = app.metrics().await;
    assert!(text.contains("\nwayback_instances_stopped 0\n"), "{text}");
    assert!(text.contains("\nwayback_wake_seconds_count 1\n"), "{text}");
    assert!(text.contains("\nwayback_wake_failures_total 0\n"), "{text}");
}

#[tokio::test]
async fn a_failed_wake_is_shown_until_a_wake_works() {
    let (app, _dir) = spawn_idle_app().await;
    let id = new_id();
    provision_dev(&app, &id, "broken").await;
    wait_parked(&app, &id).await;
    assert!(app.fetch_instance(&id).await["metadata"]["attributes"]
        .get("wake_error")
        .is_none());

    let reason = "its port is taken by another program";
    app.fake().fail_wake(&id, reason);
    eventually("the failed wake is recorded", 30, || async {
        let body = app.fetch_instance(&id).await;
        body["metadata"]["attributes"]["wake_error"] == reason
    })
    .await;
    let body = app.fetch_instance(&id).await;
    let attributes = &body["metadata"]["attributes"];
    assert_eq!(attributes["state"], "stopped", "{body}");
    assert!(attributes["wake_error_at"].is_string(), "{body}");
    let view = api::get(&app, &format!("/instances/{id}"), api::operator(&app)).await;
    assert_eq!(view.status, StatusCode::OK, "{}", view.body);
    assert_eq!(view.body["wake_error"]["reason"], reason, "{}", view.body);
    assert!(view.body["wake_error"]["at"].is_string(), "{}", view.body);
    assert!(view.body["stopped_at"].is_string(), "{}", view.body);
    let text = app.metrics().await;
    assert!(text.contains("\nwayback_wake_failures_total 1\n"), "{text}");
    assert_eq!(status(&app, &id), Some(ClusterStatus::Parked));

    // The next connection wakes it: running, and the failure forgotten.
    app.fake().set_sessions(&id, 1, 0);
    app.fake().wake(&id);
    eventually("the wake clears stopped_at and the failure", 30, || async {
        app.fetch_instance(&id).await.get("metadata").is_none()
    })
    .await;
    let view = api::get(&app, &format!("/instances/{id}"), api::operator(&app)).await;
    assert!(view.body.get("wake_error").is_none(), "{}", view.body);
    let record = app.store.get_instance(&iid(&id)).await.unwrap().unwrap();
    assert_eq!((record.wake_error, record.wake_error_at), (None, None));
}

#[tokio::test]
async fn a_session_keeps_it_running_and_its_end_starts_the_clock() {
    let (app, _dir) = spawn_idle_app().await;
    let id = new_id();
    app.fake().set_sessions(&id, 1, 0);
    provision_dev(&app, &id, "busy").await;
    let asked = count(&app, &id, Call::Sessions);
    eventually(
        "the clock asks for sessions on several passes",
        30,
        || async { count(&app, &id, Call::Sessions) >= asked + 3 },
    )
    .await;
    assert_eq!(
        count(&app, &id, Call::Park),
        0,
        "a session keeps it running"
    );
    assert_eq!(status(&app, &id), Some(ClusterStatus::Running));

    // A replication connection counts as much as a client.
    app.fake().set_sessions(&id, 0, 1);
    passes(&app, &id, 3).await;
    assert_eq!(
        count(&app, &id, Call::Park),
        0,
        "a walsender keeps it running"
    );

    app.fake().set_sessions(&id, 0, 0);
    wait_parked(&app, &id).await;
}

#[tokio::test]
async fn a_leader_with_a_follower_and_the_follower_never_stop() {
    let (app, _dir) = spawn_idle_app().await;
    let (leader, follower) = (new_id(), new_id());
    for id in [&leader, &follower] {
        app.fake().set_sessions(id, 1, 0);
    }
    provision_dev(&app, &leader, "production").await;
    provision_dev(&app, &follower, "reports").await;
    set_leader(&app, &follower, Some(&leader)).await;
    app.fake().make_standby(&follower);
    for id in [&leader, &follower] {
        app.fake().set_sessions(id, 0, 0);
    }
    passes(&app, &leader, 4).await;
    passes(&app, &follower, 4).await;
    for id in [&leader, &follower] {
        assert_eq!(count(&app, id, Call::Park), 0, "{id} never parks");
        assert_eq!(status(&app, id), Some(ClusterStatus::Running));
    }

    // An idle stop asked for anyway (enqueued before the follower came, say) stops nothing.
    let job = wayback::jobs::idle::idle_stop_job(&iid(&leader));
    let job_id = job.id.clone();
    assert!(app.store.enqueue_idle_stop(&job).await.unwrap());
    eventually("the idle stop job ends", 30, || async {
        let j = app.store.get_job(&job_id).await.unwrap().unwrap();
        j.state != wayback::store::JOB_PENDING
    })
    .await;
    let j = app.store.get_job(&job_id).await.unwrap().unwrap();
    assert_eq!(j.state, wayback::store::JOB_DONE, "{j:?}");
    assert_eq!(count(&app, &leader, Call::Park), 0);
}

#[tokio::test]
async fn an_idle_stop_is_not_enqueued_while_another_job_of_the_instance_waits() {
    let (app, _dir) = spawn_idle_app().await;
    let id = new_id();
    app.fake().set_sessions(&id, 1, 0);
    provision_dev(&app, &id, "queued").await;
    let instance = iid(&id);
    // Hold backups, then ask for one: it stays pending.
    let gate = app.fake().hold(Call::TakeBackup);
    let backup = wayback::jobs::backup_job(&instance, "manual");
    app.store.enqueue_backup(&backup).await.unwrap();
    gate.reached().await;
    let idle = wayback::jobs::idle::idle_stop_job(&instance);
    assert!(
        !app.store.enqueue_idle_stop(&idle).await.unwrap(),
        "never beside another job of the instance"
    );
    gate.release();
    eventually("the backup ends", 30, || async {
        app.store
            .pending_backup_job(&instance)
            .await
            .unwrap()
            .is_none()
    })
    .await;
    let first = wayback::jobs::idle::idle_stop_job(&instance);
    let second = wayback::jobs::idle::idle_stop_job(&instance);
    let gate = app.fake().hold(Call::Sessions);
    // The supervisor's own clock is held at `sessions`: only ours can enqueue.
    gate.reached().await;
    assert!(app.store.enqueue_idle_stop(&first).await.unwrap());
    assert!(
        !app.store.enqueue_idle_stop(&second).await.unwrap(),
        "at most one pending"
    );
    gate.release();
}

#[tokio::test]
async fn a_bind_on_a_parked_instance_starts_it_and_makes_the_role() {
    let (app, _dir) = spawn_idle_app().await;
    let id = new_id();
    provision_dev(&app, &id, "sleepy").await;
    wait_parked(&app, &id).await;
    // Its app connects as soon as it is bound: it stays up.
    app.fake().set_sessions(&id, 1, 0);
    let binding = new_id();
    let creds = app.bind_sync(&id, &binding).await;
    assert!(creds["uri"].is_string(), "{creds}");
    let cluster = app.fake().cluster(&id).unwrap();
    assert_eq!(cluster.status, ClusterStatus::Running);
    assert_eq!(cluster.roles.len(), 1, "{cluster:?}");
    assert!(app.fetch_instance(&id).await.get("metadata").is_none());
    let record = app.store.get_instance(&iid(&id)).await.unwrap();
    assert_eq!(record.unwrap().stopped_at, None);
}
