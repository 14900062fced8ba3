//! The audit trail (issue 12, point 2) on the fake runtime: the originating identity of each
//! request that starts an operation is recorded (provision, bind, rename, unbind, deprovision;
//! a clone's source is the real tier's `clone::a_clone_records_who_and_from_what`), a malformed
//! `X-Broker-API-Originating-Identity` is a 400 that changes nothing, and
//! `GET /wayback/v1/instances/{id}/audit` shows the trail to those who may see the space.

use crate::common;

use base64::Engine;
use common::fake_cf::FakeCf;
use common::osb_client::*;
use common::wayback_client::*;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use wayback::archive::instance_doc;
use wayback::storage::ObjectStore;

const ALICE: &str = "a11ce000-0000-4000-8000-000000000001";
const BOB: &str = "b0b00000-0000-4000-8000-000000000002";
pub const IDENTITY: &str = "X-Broker-API-Originating-Identity";

/// The header Cloud Foundry sends for `user_id`.
pub fn cf_identity(user_id: &str) -> String {
    let json = json!({ "user_id": user_id }).to_string();
    format!(
        "cloudfoundry {}",
        base64::engine::general_purpose::STANDARD.encode(json)
    )
}

/// Sends `method path` with `body` as `user` (no identity header when `None`).
async fn as_user(
    app: &TestApp,
    user: Option<&str>,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let mut r = app.osb(method, path);
    if let Some(u) = user {
        r = r.header(IDENTITY, cf_identity(u));
    }
    if let Some(b) = body {
        r = r.json(b);
    }
    let r = r.send().await.unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

/// (event, user_id, binding_id) of each event of the trail, oldest first.
fn events(trail: &Value) -> Vec<(String, Value, Value)> {
    trail["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            let kind = e["event"].as_str().unwrap().to_string();
            (kind, e["user_id"].clone(), e["binding_id"].clone())
        })
        .collect()
}

#[tokio::test]
async fn every_operation_records_who_asked() {
    let app = spawn_fast_app().await;
    let id = new_id();
    let provision = provision_body(SMALL, "audited");
    let put = format!("{}?accepts_incomplete=true", inst(&id));
    let (status, body) = as_user(&app, Some(ALICE), Method::PUT, &put, Some(&provision)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (_, done) = app.poll_instance(&id, body["operation"].as_str()).await;
    assert_eq!(done["state"], "succeeded", "{done}");

    // A repeat starts nothing and records nothing.
    let (status, _) = as_user(&app, Some(BOB), Method::PUT, &put, Some(&provision)).await;
    assert_eq!(status, StatusCode::OK);

    let binding = new_id();
    let (status, _) = as_user(
        &app,
        Some(BOB),
        Method::PUT,
        &bnd(&id, &binding),
        Some(&bind_body()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let rename = json!({
        "service_id": SERVICE_ID,
        "context": { "platform": "cloudfoundry", "space_guid": SPACE, "instance_name": "renamed" },
    });
    let (status, _) = as_user(&app, Some(ALICE), Method::PATCH, &inst(&id), Some(&rename)).await;
    assert_eq!(status, StatusCode::OK);
    let unbind = format!(
        "{}?service_id={SERVICE_ID}&plan_id={SMALL}",
        bnd(&id, &binding)
    );
    let (status, _) = as_user(&app, None, Method::DELETE, &unbind, None).await;
    assert_eq!(status, StatusCode::OK);
    let delete = format!(
        "{}?accepts_incomplete=true&service_id={SERVICE_ID}&plan_id={SMALL}",
        inst(&id)
    );
    let (status, body) = as_user(&app, Some(BOB), Method::DELETE, &delete, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, done) = app.poll_instance(&id, body["operation"].as_str()).await;
    assert_delete_finished(status, &done);

    let trail = get(&app, &format!("/instances/{id}/audit"), operator(&app)).await;
    assert_eq!(trail.status, StatusCode::OK, "{}", trail.body);
    assert_eq!(trail.body["instance_id"], id.as_str());
    let b = json!(binding);
    assert_eq!(
        events(&trail.body),
        vec![
            ("provision".into(), json!(ALICE), Value::Null),
            ("bind".into(), json!(BOB), b.clone()),
            ("rename".into(), json!(ALICE), Value::Null),
            ("unbind".into(), Value::Null, b),
            ("deprovision".into(), json!(BOB), Value::Null),
        ],
        "{}",
        trail.body
    );
    let first = &trail.body["events"][0];
    assert_eq!(first["platform"], "cloudfoundry");
    assert!(first["operation"]
        .as_str()
        .unwrap()
        .starts_with("provision-"));
    assert_eq!(trail.body["events"][2]["name"], "renamed");
    assert_eq!(
        trail.body["events"][3]["platform"],
        Value::Null,
        "no header: no platform"
    );

    // instance.json names who created the instance.
    let archive = ObjectStore::local(&app.data_dir.join("archive")).unwrap();
    let prefix = wayback::archive::layout::InstancePrefix::new(
        &wayback::domain::SpaceGuid::parse(SPACE).unwrap(),
        &iid(&id),
    );
    // The fake runtime writes no key.json: the document is in clear.
    let doc = instance_doc::read(&archive, &prefix, None)
        .await
        .unwrap()
        .expect("instance.json");
    let created_by = doc.created_by.expect("created_by");
    assert_eq!(
        (created_by.platform.as_str(), created_by.user_id.as_deref()),
        ("cloudfoundry", Some(ALICE))
    );
    assert_eq!(doc.cloned_from, None);
}

#[tokio::test]
async fn a_malformed_identity_is_refused_and_changes_nothing() {
    let app = spawn_fast_app().await;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let cases = [
        ("one word", "cloudfoundry".to_string(), "two words"),
        ("not base64", "cloudfoundry ***".to_string(), "not base64"),
        (
            "not JSON",
            format!("cloudfoundry {}", b64("alice")),
            "not JSON",
        ),
        (
            "no user_id",
            format!("cloudfoundry {}", b64(r#"{"user":"a"}"#)),
            "user_id",
        ),
        (
            "too long",
            format!("cloudfoundry {}", "A".repeat(5000)),
            "bytes long",
        ),
    ];
    for (why, header, says) in cases {
        let id = new_id();
        let r = app
            .osb(
                Method::PUT,
                &format!("{}?accepts_incomplete=true", inst(&id)),
            )
            .header(IDENTITY, header.as_str())
            .json(&provision_body(SMALL, "bad-identity"))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{why}: {body}");
        assert_eq!(body["error"], "BadRequest", "{why}: {body}");
        let description = body["description"].as_str().unwrap();
        assert!(
            description.contains("X-Broker-API-Originating-Identity") && description.contains(says),
            "{why}: {description}"
        );
        assert_store_empty(&app, why).await;
    }
    // Every /v2 route, reads included.
    let r = app
        .osb(Method::GET, "/v2/catalog")
        .header(IDENTITY, "cloudfoundry")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_trail_is_shown_to_those_who_may_see_the_space() {
    let cf = FakeCf::start().await;
    cf.allow_space_for("alice", SPACE).await;
    cf.deny_space(SPACE, 403).await;
    let settings = cf.cc_settings();
    let app = spawn_fast_app_with(move |s| s.cc = settings).await;
    let id = app.provision_ready("watched").await;
    let alice = cf.token_for("alice", HOUR);
    let mallory = cf.token_for("mallory", HOUR);

    let seen = get(
        &app,
        &format!("/instances/{id}/audit"),
        Auth::Bearer(&alice),
    )
    .await;
    assert_eq!(seen.status, StatusCode::OK, "{}", seen.body);
    assert_eq!(
        events(&seen.body),
        vec![("provision".into(), Value::Null, Value::Null)],
        "no identity header: the provision is recorded without a user"
    );
    let hidden = get(
        &app,
        &format!("/instances/{id}/audit"),
        Auth::Bearer(&mallory),
    )
    .await;
    let nobody = get(
        &app,
        &format!("/instances/{}/audit", new_id()),
        Auth::Bearer(&mallory),
    )
    .await;
    assert_refused(
        &hidden,
        StatusCode::NOT_FOUND,
        "NotFound",
        "No such service instance",
        "foreign",
    );
    assert_eq!(
        hidden.body, nobody.body,
        "a foreign instance's trail looks unknown"
    );
    let anonymous = get(&app, &format!("/instances/{id}/audit"), Auth::None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

/// Audit pruning goes by the rows' own age and keeps an instance's origin (its provision or
/// clone row, which `instance.json` is built from).
#[tokio::test]
async fn audit_pruning_keeps_each_instance_origin() {
    let app = spawn_fast_app().await;
    let id = new_id();
    let put = format!("{}?accepts_incomplete=true", inst(&id));
    let provision = provision_body(SMALL, "pruned");
    let (_, body) = as_user(&app, Some(ALICE), Method::PUT, &put, Some(&provision)).await;
    app.poll_instance(&id, body["operation"].as_str()).await;
    app.bind_sync(&id, &new_id()).await;
    let future = chrono::Utc::now().timestamp_millis() + 60_000;
    let removed = app.store.prune_audit_events(future).await.unwrap();
    assert_eq!(removed, 1, "the bind goes");
    let left = app.store.audit_events_of(&iid(&id)).await.unwrap();
    let kinds: Vec<&str> = left.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["provision"]);
}
