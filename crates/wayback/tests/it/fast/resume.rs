//! A job an older broker queued — its row written as `kind`, `step` and payload text, before
//! jobs were typed — is resumed by this one, and a row no broker wrote fails its operation with
//! the reason recorded while the worker goes on. On the fake runtime: the point is the job
//! model and the store, not what the update does to the cluster.

use crate::common;

use common::fake_runtime::Call;
use common::*;
use reqwest::StatusCode;
use wayback::domain::{InstanceId, InstanceState, OperationKind, OperationState};
use wayback::store::{now_millis, NewJob, OperationRecord, JOB_FAILED};

/// An operation queued with its job row as `kind`, `step` and payload text, the way a broker
/// before typed jobs wrote it, moving a ready instance to `updating`.
async fn queue_update_row(app: &TestApp, id: &str, operation: &str, payload: &str) {
    let now = now_millis();
    let instance = InstanceId::parse(id).unwrap();
    let op = OperationRecord {
        id: operation.into(),
        instance_id: instance.clone(),
        binding_id: None,
        kind: OperationKind::Update,
        state: OperationState::InProgress,
        description: "Updating: queued".into(),
        created_at: now,
        updated_at: now,
        finished_at: None,
    };
    let row = NewJob {
        id: operation.into(),
        kind: "update".into(),
        instance_id: instance.clone(),
        binding_id: None,
        operation_id: Some(operation.into()),
        payload: serde_json::from_str(payload).unwrap(),
        first_step: "apply_settings".into(),
    };
    let moved = app
        .store
        .transition_instance(
            &instance,
            &[InstanceState::Ready],
            InstanceState::Updating,
            &op,
            &row,
        )
        .await
        .unwrap();
    assert!(moved, "the instance was ready");
    app.worker.wake();
}

#[tokio::test]
async fn a_job_queued_by_an_older_broker_is_resumed_and_an_unreadable_one_fails() {
    let app = spawn_fast_app().await;
    let id = app.provision_ready("upgraded").await;

    // Exactly the text `payload.to_string()` gave for an update before typed jobs.
    let payload = format!(
        r#"{{"plan_id":"{MEDIUM}","requested_at":{}}}"#,
        now_millis()
    );
    queue_update_row(&app, &id, "update-from-an-older-broker", &payload).await;
    let (status, body) = app
        .poll_instance(&id, Some("update-from-an-older-broker"))
        .await;
    assert_eq!(
        (status, body["state"].as_str(), body["description"].as_str()),
        (
            StatusCode::OK,
            Some("succeeded"),
            Some("The new plan's settings are in effect.")
        ),
        "{body}"
    );
    let instance = InstanceId::parse(id.clone()).unwrap();
    let record = app.store.get_instance(&instance).await.unwrap().unwrap();
    assert_eq!(
        (record.plan_id.as_str(), record.state),
        (MEDIUM, InstanceState::Ready)
    );
    let calls = app.fake().calls_for(&id);
    assert!(calls.contains(&Call::ApplySettings), "{calls:?}");

    // A row no broker wrote (an update without its plan): its job and operation fail, with
    // the reason in the job's record; the worker goes on.
    let payload = format!(r#"{{"requested_at":{}}}"#, now_millis());
    queue_update_row(&app, &id, "update-unreadable", &payload).await;
    let (status, body) = app.poll_instance(&id, Some("update-unreadable")).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("failed")),
        "{body}"
    );
    assert!(
        body["description"]
            .as_str()
            .unwrap()
            .contains("cannot read this operation's job record"),
        "{body}"
    );
    // The worker fails the operation first and the job last (`Worker::refuse`): the job's
    // record may still be pending for a moment after the operation reads failed.
    let mut job = app
        .store
        .get_job("update-unreadable")
        .await
        .unwrap()
        .unwrap();
    for _ in 0..200 {
        if job.state == JOB_FAILED {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        job = app
            .store
            .get_job("update-unreadable")
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(job.state, JOB_FAILED);
    assert!(
        job.last_error
            .as_deref()
            .is_some_and(|e| e.contains("missing field `plan_id`")),
        "{job:?}"
    );
}
