//! OSB lifecycles as a wire contract: provision, fetch, update, deprovision, and the refusals
//! on the way, each status code with its golden body (`common::golden`), on the fake runtime.
//!
//! Some assertions look at an operation while it runs (a repeated PUT gets the same operation,
//! GET answers 404/422, last_operation says "in progress"). The test holds the fake runtime's
//! call that the job is about to make (`app.fake().hold(Call::…)`) and releases it after those
//! assertions, so the operation is still running when they are sent, however fast the fake is.
//! Binding with real credentials is `osb_pg::bind_fetch_and_unbind`.

use crate::common;

use common::fake_runtime::Call;
use common::golden::*;
use common::osb_client::*;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

const RUNNING: &str = "(sent while the operation runs; see the module docs)";

#[tokio::test]
async fn provision_fetch_and_deprovision() {
    let app = spawn_fast_app().await;
    let o = Osb::new(&app);
    let id = new_id();
    let mut body = provision_body(SMALL, "lifecycle");
    // Fields this broker does not know are ignored, not refused.
    body["a_future_field"] = json!({ "x": 1 });
    body["context"]["a_future_context_field"] = json!(true);

    // The provision stays in progress until the cluster's creation is let through.
    let creating = app.fake().hold(Call::CreateCluster);
    let r = app
        .osb(Method::PUT, &format!("{}?{ASYNC}", inst(&id)))
        .json(&body);
    let r = r
        .header("X-Broker-API-Request-Identity", "req-provision")
        .send();
    let accepted = o.expect(async { r.await.unwrap() }, "provision-202").await;
    assert_eq!(
        accepted.header("x-broker-api-request-identity"),
        Some("req-provision")
    );
    let provision_op = accepted.operation();

    // While it provisions.
    let again = o
        .expect(app.put_instance(&id, &body), "provision-202")
        .await;
    assert_eq!(
        again.operation(),
        provision_op,
        "a repeated PUT: same operation {RUNNING}"
    );
    o.expect(o.get(&inst(&id)), "instance-404-provisioning")
        .await;
    let running = Reply::of(o.get(&last_op(&inst(&id), Some(&provision_op))).await).await;
    assert_eq!(running.body["state"], "in progress", "{RUNNING}");
    let description = running.body["description"].as_str().unwrap_or_default();
    assert!(description.starts_with("Provisioning"), "{}", running.body);
    assert_eq!(
        running.body.as_object().unwrap().len(),
        2,
        "state, description: {}",
        running.body
    );
    let retry_after = running
        .header("retry-after")
        .and_then(|s| s.parse::<u64>().ok());
    assert!(
        retry_after.is_some(),
        "Retry-After in seconds while in progress"
    );
    o.expect(
        o.patch(&id, &plan_change(MEDIUM), true),
        "update-422-provisioning",
    )
    .await;
    o.expect(app.put_binding(&id, &new_id(), false), "bind-422-not-ready")
        .await;
    creating.release();

    let (status, done) = app.poll_instance(&id, Some(&provision_op)).await;
    assert_eq!(status, StatusCode::OK);
    assert_golden("last-operation-200-provision", &o.norm.apply(&done));

    // Ready.
    o.expect(app.put_instance(&id, &body), "provision-200")
        .await;
    let mut empty_parameters = body.clone();
    empty_parameters["parameters"] = json!({});
    o.expect(app.put_instance(&id, &empty_parameters), "provision-200")
        .await;
    let medium = provision_body(MEDIUM, "lifecycle");
    o.expect(app.put_instance(&id, &medium), "provision-409")
        .await;
    o.expect(o.get(&inst(&id)), "instance-200-small").await;
    o.expect(o.get(&(inst(&id) + &ids_query(""))), "instance-200-small")
        .await;
    o.expect(
        o.get(&format!("{}?plan_id=", inst(&id))),
        "instance-400-empty-hint",
    )
    .await;

    // `operation` is a hint: one this broker never issued answers for the current operation
    // (was a 400 before issue 12); one of another instance is refused.
    let stranger = format!("provision-{}", new_id());
    o.expect(
        o.get(&last_op(&inst(&id), Some(&stranger))),
        "last-operation-200-provision",
    )
    .await;
    o.expect(
        o.get(&last_op(&inst(&id), Some(""))),
        "last-operation-400-empty",
    )
    .await;
    let other = app.provision_ready("other").await;
    let other_op = app
        .store
        .latest_operation(&iid(&other), None)
        .await
        .unwrap()
        .unwrap()
        .id;
    o.expect(
        o.get(&last_op(&inst(&id), Some(&other_op))),
        "last-operation-400",
    )
    .await;

    // Refused DELETEs leave the instance as it was.
    for (query, golden) in [
        (ids_query(""), "async-required-422"),
        (ids_query("&accepts_incomplete=false"), "async-required-422"),
        (
            ids_query("&accepts_incomplete=maybe"),
            "delete-400-accepts-incomplete",
        ),
        (format!("?{ASYNC}&plan_id={SMALL}"), "delete-400-service-id"),
        (
            format!("?{ASYNC}&service_id={SERVICE_ID}&plan_id="),
            "delete-400-plan-id",
        ),
        (
            format!("?{ASYNC}&service_id={SERVICE_ID}&plan_id=nope"),
            "delete-400-unknown-plan",
        ),
        (
            format!("?{ASYNC}&service_id=nope&plan_id={SMALL}"),
            "delete-400-wrong-service",
        ),
    ] {
        o.expect(o.delete(&(inst(&id) + &query)), golden).await;
        o.expect(o.get(&inst(&id)), "instance-200-small").await;
    }

    // Deprovision, held before the cluster is destroyed.
    let destroying = app.fake().hold(Call::Destroy);
    let delete_op = o
        .expect(app.delete_instance(&id), "deprovision-202")
        .await
        .operation();
    let again = o.expect(app.delete_instance(&id), "deprovision-202").await;
    assert_eq!(
        again.operation(),
        delete_op,
        "a repeated DELETE: same operation {RUNNING}"
    );
    o.expect(app.put_instance(&id, &body), "provision-422-deprovisioning")
        .await;
    destroying.release();
    let (status, done) = app.poll_instance(&id, Some(&delete_op)).await;
    assert_delete_finished(status, &done);
    assert_golden("last-operation-200-deprovision", &o.norm.apply(&done));

    // Deleted: the deprovision is kept as a tombstone (was 410 before issue 12).
    for operation in [None, Some("deprovision"), Some(delete_op.as_str())] {
        o.expect(
            o.get(&last_op(&inst(&id), operation)),
            "last-operation-200-deprovision",
        )
        .await;
    }
    let old = Reply::of(o.get(&last_op(&inst(&id), Some(&provision_op))).await).await;
    assert_eq!(
        old.body["state"], "succeeded",
        "finished operations are remembered"
    );
    o.expect(app.delete_instance(&id), "gone-410").await;
    o.expect(o.get(&inst(&id)), "instance-404").await;
    o.expect(o.patch(&id, &plan_change(MEDIUM), true), "instance-404")
        .await;
    o.expect(app.put_instance(&id, &body), "provision-409-deleted")
        .await;
    o.expect(app.put_binding(&id, &new_id(), false), "instance-404")
        .await;
    assert!(!app.fake().exists(&id), "the cluster is removed");
}

#[tokio::test]
async fn update_rename_plan_change_and_refusals() {
    let app = spawn_fast_app().await;
    let o = Osb::new(&app);
    let id = app.provision_ready("before").await;
    let names = || async {
        let records = app.store.instance_names(&iid(&id)).await.unwrap();
        records.into_iter().map(|r| r.name).collect::<Vec<_>>()
    };

    // `cf rename-service`: context only, applied at once, no accepts_incomplete needed.
    let rename = json!({
        "service_id": SERVICE_ID,
        "context": { "platform": "cloudfoundry", "space_guid": SPACE, "instance_name": "after" },
        "previous_values": { "plan_id": SMALL, "service_id": SERVICE_ID },
    });
    o.expect(o.patch(&id, &rename, false), "update-200").await;
    assert_eq!(names().await, ["before", "after"]);
    o.expect(o.get(&inst(&id)), "instance-200-small").await;

    // Refusals change nothing: neither the plan nor the name.
    let mut maintenance = plan_change(SMALL);
    maintenance["maintenance_info"] = json!({ "version": "1.0.0" });
    let mut parameters = named(plan_change(MEDIUM), "refused-2");
    parameters["parameters"] = json!({ "foo": 1 });
    let mut no_service = plan_change(MEDIUM);
    no_service.as_object_mut().unwrap().remove("service_id");
    let mut wrong_service = plan_change(MEDIUM);
    wrong_service["service_id"] = json!("nope");
    for (why, body, golden) in [
        (
            "unknown plan",
            named(plan_change("nope"), "refused-1"),
            "update-400-unknown-plan",
        ),
        (
            "maintenance_info",
            maintenance,
            "maintenance-info-conflict-422",
        ),
        (
            "unknown parameter",
            parameters,
            "update-400-unknown-parameter",
        ),
        ("service_id missing", no_service, "update-400-service-id"),
        (
            "service_id not the instance's",
            wrong_service,
            "update-400-wrong-service",
        ),
    ] {
        o.expect(o.patch(&id, &body, true), golden).await;
        assert_eq!(
            names().await,
            ["before", "after"],
            "{why}: a 4xx must not rename"
        );
        o.expect(o.get(&inst(&id)), "instance-200-small").await;
    }
    let no_body = format!("{}?{ASYNC}", inst(&id));
    let no_body = o.send(Method::PATCH, &no_body, None);
    o.expect(no_body, "update-400-service-id").await;

    // Plan change small → medium, held before the new settings are applied.
    let applying = app.fake().hold(Call::ApplySettings);
    let op = o
        .expect(o.patch(&id, &plan_change(MEDIUM), true), "update-202")
        .await
        .operation();
    let again = o
        .expect(o.patch(&id, &plan_change(MEDIUM), true), "update-202")
        .await;
    assert_eq!(
        again.operation(),
        op,
        "the same PATCH again: same operation {RUNNING}"
    );
    o.expect(o.get(&inst(&id)), "instance-422-updating").await;
    let busy = named(plan_change(SMALL), "refused-while-updating");
    o.expect(o.patch(&id, &busy, true), "update-422-updating")
        .await;
    o.expect(app.delete_instance(&id), "deprovision-422-updating")
        .await;
    let running = Reply::of(o.get(&last_op(&inst(&id), Some(&op))).await).await;
    assert_eq!(running.body["state"], "in progress", "{RUNNING}");
    assert!(running.header("retry-after").is_some());
    applying.release();

    let (status, done) = app.poll_instance(&id, Some(&op)).await;
    assert_eq!(status, StatusCode::OK);
    assert_golden("last-operation-200-update", &o.norm.apply(&done));
    o.expect(o.get(&inst(&id)), "instance-200-medium").await;
    // Asking for the plan it already has is a no-op.
    o.expect(o.patch(&id, &plan_change(MEDIUM), false), "update-200")
        .await;
    assert_eq!(names().await, ["before", "after"]);

    // A plan change refused for want of accepts_incomplete must not apply its rename either.
    let refused = named(plan_change(SMALL), "renamed-by-a-refused-request");
    o.expect(o.patch(&id, &refused, false), "async-required-422")
        .await;
    assert_eq!(
        names().await,
        ["before", "after"],
        "a 422 must leave the name as it was"
    );
    o.expect(o.get(&inst(&id)), "instance-200-medium").await;
}

#[tokio::test]
async fn delete_during_provisioning_cleans_up() {
    let app = spawn_fast_app().await;
    let o = Osb::new(&app);
    let id = new_id();
    let body = provision_body(SMALL, "orphan");
    let creating = app.fake().hold(Call::CreateCluster);
    let provision_op = o
        .expect(app.put_instance(&id, &body), "provision-202")
        .await
        .operation();
    // The provision is creating the cluster (as initdb would be on a real runtime) ...
    creating.reached().await;
    // ... when orphan mitigation starts: the platform gave up at once and deletes.
    let delete_op = o
        .expect(app.delete_instance(&id), "deprovision-202")
        .await
        .operation();
    assert_ne!(delete_op, provision_op);
    creating.release();

    let (status, done) = app.poll_instance(&id, Some(&delete_op)).await;
    assert_delete_finished(status, &done);
    let (status, provision) = app.poll_instance(&id, Some(&provision_op)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        provision["state"], "failed",
        "the provision itself failed: {provision}"
    );
    let description = provision["description"].as_str().unwrap_or_default();
    assert!(description.contains("being deleted"), "{provision}");
    o.expect(o.get(&inst(&id)), "instance-404").await;
    o.expect(app.delete_instance(&id), "gone-410").await;
    let record = app.store.get_instance(&iid(&id)).await.unwrap().unwrap();
    assert_eq!(record.state.as_str(), "deleted");
    let calls = app.fake().calls_for(&id);
    assert!(calls.contains(&Call::CreateCluster), "{calls:?}");
    assert!(!app.fake().exists(&id), "no cluster is left behind");
}

#[tokio::test]
async fn failed_provision_can_be_deleted() {
    // The only port the broker may use is taken: provisioning fails at once, before initdb.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let app = spawn_fast_app_with(|s| {
        s.postgres.port_min = port;
        s.postgres.port_max = port;
    })
    .await;
    let o = Osb::new(&app);
    let id = new_id();
    let body = provision_body(SMALL, "doomed");
    let op = o
        .expect(app.put_instance(&id, &body), "provision-202")
        .await
        .operation();
    let (status, failed) = app.poll_instance(&id, Some(&op)).await;
    assert_eq!(status, StatusCode::OK);
    assert_golden(
        "last-operation-200-provision-failed",
        &o.norm.apply(&failed),
    );
    o.expect(o.get(&inst(&id)), "instance-404").await;
    o.expect(app.put_instance(&id, &body), "provision-409-failed")
        .await;

    let delete_op = o
        .expect(app.delete_instance(&id), "deprovision-202")
        .await
        .operation();
    let (status, done) = app.poll_instance(&id, Some(&delete_op)).await;
    assert_delete_finished(status, &done);
    let record = app.store.get_instance(&iid(&id)).await.unwrap().unwrap();
    assert_eq!(record.state.as_str(), "deleted");
    let calls = app.fake().calls_for(&id);
    assert!(!calls.contains(&Call::CreateCluster), "{calls:?}");
    drop(holder);
}
