//! The broker while its object storage is down (README "When object storage is down"), with an
//! S3 server of the test's own that it stops and starts: the broker starts anyway and says so
//! on `/health`, serves what needs no storage, refuses a clone with a 503 that names storage, a
//! provision of an encrypted archive and a clone caught by an outage wait for it and finish, and one that outlasts its wait fails
//! saying why and leaves no cluster behind.

use crate::common;
use crate::common::archive_wait::prefix_of;

use std::time::{Duration, Instant};

use common::s3_server::S3Server;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use wayback::archive::window::restore_window;
use wayback::startup::Application;
use wayback::storage::ObjectStore;

async fn health(app: &TestApp) -> (StatusCode, Value) {
    let r = app
        .client
        .get(format!("{}/health", app.address))
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap())
}

/// The current last_operation of an instance (no waiting).
async fn last_operation(app: &TestApp, id: &str) -> Value {
    let r = app
        .osb(
            Method::GET,
            &format!("/v2/service_instances/{id}/last_operation"),
        )
        .send()
        .await
        .unwrap();
    r.json().await.unwrap()
}

/// Waits until the instance's last operation says it waits for object storage.
async fn wait_for_storage_wait(app: &TestApp, id: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let body = last_operation(app, id).await;
        let d = body["description"].as_str().unwrap_or("").to_string();
        assert_eq!(body["state"], "in progress", "{body}");
        if d.contains("waiting for object storage") {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "never waited for storage: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_broker_starts_without_object_storage_and_serves_what_needs_none() {
    let Some(mut s3) = S3Server::start().await else {
        require("the s3s-fs binary (scripts/setup --with-s3)", false);
        return;
    };
    if !pg_available() {
        return;
    }
    let settings = s3.settings("down-at-start");
    s3.stop();
    // In clear: an encrypted instance's first step writes its key.json, so it waits for
    // storage (README "When object storage is down").
    let app = spawn_app_with(|s| {
        s.archive = settings.clone();
        s.archive.encrypt = false;
    })
    .await;

    let (status, body) = health(&app).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["archive"], "unreachable", "{body}");
    assert!(body["archive_unreachable_since"].is_string(), "{body}");

    // A plain provision needs no storage: PostgreSQL keeps its WAL until the archive is back.
    let id = app.provision_ready("no-storage").await;
    let (_, done) = app.poll_instance(&id, None).await;
    assert!(
        done["description"]
            .as_str()
            .unwrap()
            .contains("Archiving is behind: object storage at s3://"),
        "the instance says its archiving is behind: {done}"
    );
    let credentials = app.bind_sync(&id, &new_id()).await;
    assert!(credentials["uri"].is_string());

    // A clone must read the source's restore window: refused for now, naming storage.
    let r = app
        .put_instance(
            &new_id(),
            &clone_body("copy", SPACE, json!({"clone-from": "no-storage"})),
        )
        .await;
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let d = body["description"].as_str().unwrap();
    assert!(
        d.contains("Object storage") && d.contains("s3://"),
        "the refusal names storage: {body}"
    );

    // Every other instance and binding call answers as usual: none needs storage in its
    // request (a rename rewrites instance.json in the background).
    app.rename(&id, "renamed-without-storage").await;
    let r = app
        .osb(
            Method::PATCH,
            &format!("/v2/service_instances/{id}?accepts_incomplete=true"),
        )
        .json(&json!({ "service_id": SERVICE_ID, "plan_id": MEDIUM, "previous_values": { "plan_id": SMALL } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let op: Value = r.json().await.unwrap();
    let (status, body) = app.poll_instance(&id, op["operation"].as_str()).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{body}"
    );
    let binding = new_id();
    app.bind_sync(&id, &binding).await;
    let r = app.delete_binding(&id, &binding, false).await;
    assert_eq!(r.status(), StatusCode::OK);
    // A delete is accepted; it needs the archive for its final WAL, so it runs once storage is
    // back (or fails and keeps the instance, as the deprovision tests show).
    let r = app.delete_instance(&id).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let op: Value = r.json().await.unwrap();

    s3.resume().await;
    let (status, body) = app.poll_instance(&id, op["operation"].as_str()).await;
    assert_delete_finished(status, &body);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = health(&app).await;
        if status == StatusCode::OK && body["status"] == "ok" {
            break;
        }
        assert!(Instant::now() < deadline, "still degraded: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn storage_that_refuses_the_broker_stops_its_start_with_a_clear_message() {
    let Some(s3) = S3Server::start().await else {
        require("the s3s-fs binary (scripts/setup --with-s3)", false);
        return;
    };
    let root = test_root();
    let mut settings = test_settings(&root.path().join("data"), "pw");
    settings.archive = s3.settings("refused");
    settings.archive.secret_access_key = Some("not-the-secret".to_string().into());
    let err = match Application::build(settings).await {
        Ok(_) => panic!("a broker with bad storage credentials must not start"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("refused"), "{err}");
    assert!(!err.contains("not-the-secret"), "{err}");
}

/// With `archive.encrypt` on, a provision's archive step writes the instance's key.json first:
/// it waits for storage (saying so, spending no attempt) and finishes once storage is back.
#[tokio::test]
async fn an_encrypted_provision_waits_for_storage_to_store_its_key() {
    let Some(mut s3) = S3Server::start().await else {
        require("the s3s-fs binary (scripts/setup --with-s3)", false);
        return;
    };
    if !pg_available() {
        return;
    }
    let settings = s3.settings("key-wait");
    let store = ObjectStore::open(&settings).unwrap();
    s3.stop();
    let app = spawn_app_with(|s| s.archive = settings.clone()).await;
    let id = new_id();
    let r = app
        .put_instance(&id, &provision_body(SMALL, "sealed"))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let op: Value = r.json().await.unwrap();
    let waiting = wait_for_storage_wait(&app, &id).await;
    assert!(waiting.contains("unreachable at s3://"), "{waiting}");
    s3.resume().await;
    let (status, body) = app.poll_instance(&id, op["operation"].as_str()).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{body}"
    );
    let key = format!("{}/key.json", prefix_of(&id).as_str());
    assert!(store.head(&key).await.unwrap().is_some(), "{key} stored");
}

/// A clone caught by an outage waits (saying so) and finishes once storage is back; one whose
/// outage outlasts `jobs.storage_retry_secs` fails naming the cause and leaves no cluster.
#[tokio::test]
async fn a_clone_waits_for_object_storage_and_gives_up_only_after_its_wait() {
    let Some(mut s3) = S3Server::start().await else {
        require("the s3s-fs binary (scripts/setup --with-s3)", false);
        return;
    };
    if !pg_available() {
        return;
    }
    let settings = s3.settings("clone-wait");
    let store = ObjectStore::open(&settings).unwrap();
    let app = spawn_app_with(|s| {
        s.archive = settings.clone();
        s.jobs.storage_retry_secs = 25;
    })
    .await;
    let src = app.provision_ready("orders").await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while restore_window(&store, &prefix_of(&src))
        .await
        .unwrap()
        .backups
        .is_empty()
    {
        assert!(Instant::now() < deadline, "no base backup of the source");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Deleted, so that the clone reads only the archive (no fork of a live server).
    app.deprovision_done(&src).await;

    // A blip shorter than the wait: the clone says it waits, then finishes.
    let clone = new_id();
    let r = app
        .put_instance(
            &clone,
            &clone_body("orders-back", SPACE, json!({"clone-from": "orders"})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    s3.stop();
    let waiting = wait_for_storage_wait(&app, &clone).await;
    assert!(
        waiting.contains("unreachable at s3://") && waiting.contains("retrying in"),
        "{waiting}"
    );
    s3.resume().await;
    let (status, body) = app.poll_instance(&clone, None).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{body}"
    );

    // An outage longer than the wait: failed, saying why, and nothing left on disk.
    let doomed = new_id();
    let r = app
        .put_instance(
            &doomed,
            &clone_body("orders-doomed", SPACE, json!({"clone-from": "orders"})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    s3.stop();
    wait_for_storage_wait(&app, &doomed).await;
    let (status, body) = app.poll_instance(&doomed, None).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("failed")),
        "{body}"
    );
    let d = body["description"].as_str().unwrap();
    assert!(
        d.contains("object storage is unreachable at s3://") && d.contains("since"),
        "the failure names its cause: {d}"
    );
    assert!(
        !app.cluster_dir(&doomed).exists(),
        "a failed clone removes its cluster directory"
    );
    // The platform can delete what failed, once storage is back.
    s3.resume().await;
    app.deprovision_done(&doomed).await;
}
