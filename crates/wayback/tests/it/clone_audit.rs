//! A clone records who asked and what it was cloned from (issue 12, point 2), on real
//! clusters: in the audit trail and in the clone's own `instance.json`, which the archive
//! keeps after the state database is gone.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use wayback::archive::instance_doc::{self, InstanceDoc};
use wayback::archive::layout::InstancePrefix;
use wayback::domain::{InstanceId, SpaceGuid};
use wayback::storage::ObjectStore;

use crate::fast::osb_audit::{cf_identity, IDENTITY};

const ALICE: &str = "a11ce000-0000-4000-8000-0000000000c1";

/// The clone's `instance.json` once it names its source (written when the clone is ready).
async fn clone_doc(app: &TestApp, id: &str) -> InstanceDoc {
    let store = ObjectStore::local(&app.data_dir.join("archive")).unwrap();
    let prefix = InstancePrefix::new(
        &SpaceGuid::parse(SPACE).unwrap(),
        &InstanceId::parse(id.to_string()).unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let key = archive_keys::data_key(&store, &app.data_dir, prefix.as_str()).await;
        if let Some(doc) = instance_doc::read(&store, &prefix, key.as_ref())
            .await
            .unwrap()
        {
            if doc.cloned_from.is_some() {
                return doc;
            }
        }
        assert!(
            Instant::now() < deadline,
            "instance.json of {id} never named its source"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_clone_records_who_and_from_what() {
    if !pg_available() {
        return;
    }
    let app = spawn_app().await;
    let src = app.provision_ready("ledger").await;
    app.deprovision_done(&src).await;

    let clone = new_id();
    let r = app
        .osb(
            Method::PUT,
            &format!("/v2/service_instances/{clone}?accepts_incomplete=true"),
        )
        .header(IDENTITY, cf_identity(ALICE))
        .json(&clone_body(
            "ledger",
            SPACE,
            json!({"clone-from": "ledger"}),
        ))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (_, done) = app.poll_instance(&clone, body["operation"].as_str()).await;
    assert_eq!(done["state"], "succeeded", "{done}");

    let trail = app
        .store
        .audit_events_of(&InstanceId::parse(clone.clone()).unwrap())
        .await
        .unwrap();
    assert_eq!(trail.len(), 1, "{trail:?}");
    let event = &trail[0];
    assert_eq!(event.kind.as_str(), "clone");
    assert_eq!(
        event.originator.as_ref().and_then(|o| o.user_id.as_deref()),
        Some(ALICE)
    );
    assert_eq!(event.detail["source"]["instance_id"], src.as_str());
    assert_eq!(event.detail["source"]["name"], "ledger");
    assert_eq!(event.detail["source"]["point_in_time"], "latest");

    let doc = clone_doc(&app, &clone).await;
    let from = doc.cloned_from.expect("cloned_from");
    assert_eq!(
        (
            from.instance_id.as_str(),
            from.name.as_str(),
            from.point_in_time.as_str()
        ),
        (src.as_str(), "ledger", "latest")
    );
    let by = doc.created_by.expect("created_by");
    assert_eq!(
        (by.platform.as_str(), by.user_id.as_deref()),
        ("cloudfoundry", Some(ALICE))
    );
}
