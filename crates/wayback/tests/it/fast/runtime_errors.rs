//! What a provision does with the runtime's errors, made to order by the fake runtime
//! (`app.fake().fail_next(…)`): a transient error is retried, a permanent one fails the
//! operation with a line the user can read (and removes the cluster it created), and a port
//! some other process took sends the provision back to choose another one.

use crate::common;

use common::fake_runtime::Call;
use common::*;
use reqwest::StatusCode;
use serde_json::Value;
use wayback::pg::PgError;
use wayback::runtime::RuntimeError;

/// PUTs a provision and waits for its end; (id, last_operation body).
async fn provision(app: &TestApp) -> (String, Value) {
    let id = new_id();
    let r = app.put_instance(&id, &provision_body(SMALL, "db")).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let op: Value = r.json().await.unwrap();
    let (status, body) = app.poll_instance(&id, op["operation"].as_str()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (id, body)
}

#[tokio::test]
async fn a_transient_runtime_error_is_retried() {
    let app = spawn_fast_app().await;
    let refused = PgError::NotRunning {
        instance: "x".into(),
    };
    app.fake().fail_next(Call::Start, refused.into());
    let (id, done) = provision(&app).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let starts = app.fake().calls_for(&id);
    let starts = starts.iter().filter(|c| **c == Call::Start).count();
    assert_eq!(starts, 2, "the failed start is tried again");
}

#[tokio::test]
async fn a_permanent_runtime_error_fails_the_provision_with_a_readable_line() {
    let app = spawn_fast_app().await;
    let broken = PgError::Setup("/data is not writable".into());
    app.fake().fail_next(Call::CreateCluster, broken.into());
    let (id, failed) = provision(&app).await;
    assert_eq!(
        (failed["state"].as_str(), failed["description"].as_str()),
        (
            Some("failed"),
            Some("Provisioning: initialising the database cluster: the database server could not be set up")
        ),
        "no path of the operator's machine reaches the user: {failed}"
    );
    let calls = app.fake().calls_for(&id);
    assert_eq!(
        calls.iter().filter(|c| **c == Call::CreateCluster).count(),
        1,
        "a permanent error is not retried: {calls:?}"
    );
    app.deprovision_done(&id).await;
}

#[tokio::test]
async fn a_port_taken_at_start_sends_the_provision_to_another_port() {
    let app = spawn_fast_app().await;
    let gate = app.fake().hold(Call::Start);
    let id = new_id();
    let r = app.put_instance(&id, &provision_body(SMALL, "db")).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let op: Value = r.json().await.unwrap();
    gate.reached().await;
    let first = app.fake().cluster(&id).expect("created").port;
    // Another process takes the port between allocation and start.
    let taker = std::net::TcpListener::bind(("127.0.0.1", first)).expect("the port is free");
    app.fake()
        .fail_next(Call::Start, RuntimeError::PortInUse(first));
    gate.release();
    let (status, done) = app.poll_instance(&id, op["operation"].as_str()).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{done}"
    );
    let cluster = app.fake().cluster(&id).expect("running");
    assert_ne!(cluster.port, first, "another port was chosen");
    let record = app
        .store
        .get_instance(&wayback::domain::InstanceId::parse(id).unwrap())
        .await;
    assert_eq!(
        record.unwrap().unwrap().port,
        Some(cluster.port),
        "and recorded"
    );
    drop(taker);
}

/// A failed provision removes what it created at once (a failed delete would keep it, for
/// undo); the record stays `failed` and the platform can still delete it.
#[tokio::test]
async fn a_failed_provision_removes_its_cluster() {
    let app = spawn_fast_app().await;
    let broken = PgError::Setup("postgres will not start".into());
    app.fake().fail_next(Call::Start, broken.into());
    let (id, failed) = provision(&app).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(
        !app.fake().exists(&id),
        "the failed provision's cluster is gone"
    );
    assert!(
        app.fake().calls_for(&id).contains(&Call::Destroy),
        "removed through the runtime"
    );
    let record = app
        .store
        .get_instance(&wayback::domain::InstanceId::parse(id.clone()).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.port, None, "its port is free again");
    app.deprovision_done(&id).await;
}
