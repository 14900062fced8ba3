//! The broker process killed with SIGKILL in the middle of an operation, then started again on
//! the same data directory: the operation completes, and nothing is left half-done. (A job an
//! older broker queued is resumed by this one: `fast::resume`.) `harness` runs the broker as a
//! process; `crash_steps` kills it at every step.

pub(crate) mod harness;

use crate::common::*;

use harness::Site;
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn a_broker_killed_mid_provision_finishes_the_provision_after_restart() {
    let root = test_root();
    let site = Site::new(root.path());
    let data_dir = site.data_dir.clone();
    let mut broker = site.start();
    let client = site.client();
    client.wait_healthy().await;

    let id = new_id();
    let (status, body) = client
        .put_instance(&id, &provision_body(SMALL, "phoenix"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);
    let op = body["operation"].as_str().unwrap().to_string();
    // Kill as soon as the work has visibly started (or at once if it is still queued): either
    // way the provision was accepted and is not finished.
    let (_, before) = client.last_operation(&id, Some(&op)).await;
    assert_eq!(before["state"], "in progress", "{before}");
    broker.kill9();

    let mut broker = site.start();
    client.wait_healthy().await;
    let (status, body) = client.wait_done(&id, Some(&op)).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{body}"
    );

    // The instance works: bind and connect.
    let b = new_id();
    let r = client
        .req(
            reqwest::Method::PUT,
            &format!("/v2/service_instances/{id}/service_bindings/{b}"),
        )
        .json(&bind_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let creds: Value = r.json().await.unwrap();
    assert!(connect(creds["credentials"]["uri"].as_str().unwrap())
        .await
        .is_ok());

    // Kill again in the middle of the deprovision; the restarted broker finishes it.
    let (status, body) = client.delete_instance(&id).await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);
    let op = body["operation"].as_str().unwrap().to_string();
    broker.kill9();
    let _broker = site.start();
    client.wait_healthy().await;
    let (status, body) = client.wait_done(&id, Some(&op)).await;
    assert_delete_finished(status, &body);
    assert!(!data_dir.join("clusters").join(&id).exists());
}
