//! The refusals of `follow` and `unfollow` that need no archive (issue 14): each a 400 or 422
//! whose description says what to do, each changing nothing (no instance, no operation, no
//! job). The ones that need a leader with a base backup (a chain, a plan below the leader's
//! floors, a leader with followers) are in the real tier's `followers`.

use crate::common;

use common::osb_client::*;
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn refused(app: &TestApp, parameters: Value) -> (StatusCode, String) {
    let id = new_id();
    let mut body = provision_body(SMALL, "reports");
    body["parameters"] = parameters;
    let r = app.put_instance(&id, &body).await;
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    let text = body["description"].as_str().unwrap_or_default().to_string();
    assert!(
        app.store.get_instance(&iid(&id)).await.unwrap().is_none(),
        "nothing was created: {text}"
    );
    (status, text)
}

#[tokio::test]
async fn follow_refusals_change_nothing() {
    let app = spawn_fast_app().await;
    let (status, text) = refused(&app, json!({ "follow": "production" })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    assert!(
        text.contains("no instance of this space can be followed yet"),
        "{text}"
    );
    assert_store_empty(&app, "unknown name, empty space").await;

    let production = app.provision_ready("production").await;
    let staging = app.provision_ready("staging").await;
    app.deprovision_done(&staging).await;
    let (status, text) = refused(&app, json!({ "follow": "nightly" })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    assert!(
        text.contains("No live service instance named \"nightly\" can be followed")
            && text.contains("the names that can be followed in this space are: production"),
        "{text}"
    );
    let (status, text) = refused(&app, json!({ "follow": "staging" })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    assert!(
        text.contains("was deleted") && text.contains("clone-from"),
        "{text}"
    );
    // No base backup yet (the fake runtime writes none to the archive).
    let (status, text) = refused(&app, json!({ "follow": production })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    assert!(text.contains("has no complete base backup yet"), "{text}");

    for (parameters, why) in [
        (
            json!({ "follow": "production", "clone-from": "production" }),
            "cannot be used together",
        ),
        (json!({ "follow": 7 }), "must be the name (or GUID)"),
        (json!({ "follow": "" }), "must be the name (or GUID)"),
    ] {
        let (status, text) = refused(&app, parameters.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{parameters}: {text}");
        assert!(text.contains(why), "{parameters}: {text}");
    }
}

#[tokio::test]
async fn unfollow_refusals_change_nothing() {
    let app = spawn_fast_app().await;
    let o = Osb::new(&app);
    let id = app.provision_ready("production").await;
    let ops_before = app.store.operation_counts().await.unwrap();
    for (parameters, status, why) in [
        (
            json!({ "unfollow": true }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "is not a follower, so there is nothing to unfollow",
        ),
        (
            json!({ "unfollow": "yes" }),
            StatusCode::BAD_REQUEST,
            "\"unfollow\" must be true",
        ),
    ] {
        let body = json!({
            "service_id": SERVICE_ID,
            "parameters": parameters,
            "previous_values": { "plan_id": SMALL, "service_id": SERVICE_ID },
        });
        let r = o.patch(&id, &body, true).await;
        assert_eq!(r.status(), status, "{parameters}");
        let answer: Value = r.json().await.unwrap();
        let text = answer["description"].as_str().unwrap_or_default();
        assert!(text.contains(why), "{parameters}: {text}");
    }
    assert_eq!(app.store.operation_counts().await.unwrap(), ops_before);
    let record = app.store.get_instance(&iid(&id)).await.unwrap().unwrap();
    assert_eq!(record.state, wayback::domain::InstanceState::Ready);
}

/// A leader whose cluster does not answer (its agent down): a retryable 503, nothing made.
#[tokio::test]
async fn a_leader_out_of_reach_is_a_retryable_refusal() {
    let app = spawn_fast_app().await;
    app.provision_ready("production").await;
    // The supervisor asks too (every second): enough failures that the PUT meets one.
    for _ in 0..1000 {
        app.fake().fail_next(
            common::fake_runtime::Call::Status,
            wayback::runtime::RuntimeError::Unreachable {
                agent: "agent-a".into(),
                message: "connection refused".into(),
            },
        );
    }
    let (status, text) = refused(&app, json!({ "follow": "production" })).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert!(
        text.contains("does not answer right now") && text.contains("nothing was created"),
        "{text}"
    );
}
