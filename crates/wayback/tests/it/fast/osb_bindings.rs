//! The OSB binding contract on the fake runtime: every binding status code with its golden body
//! (the same goldens as `osb_pg::bind_fetch_and_unbind`, which also logs in with the
//! credentials on real PostgreSQL), so that the edit-test loop sees every golden. Where the
//! real test connects, this one asks the fake whether the binding's role exists.

use crate::common;

use common::fake_runtime::Call;
use common::golden::*;
use common::osb_client::*;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Whether the instance's cluster has the login role of `credentials`.
fn has_role(app: &TestApp, instance: &str, credentials: &Value) -> bool {
    let role = credentials["username"]
        .as_str()
        .expect("credentials.username");
    let cluster = app
        .fake()
        .cluster(instance)
        .expect("the instance's cluster");
    cluster.roles.contains(role)
}

#[tokio::test]
async fn bind_fetch_and_unbind_bodies() {
    let app = spawn_fast_app().await;
    let o = Osb::new(&app);
    let id = app.provision_ready("bound").await;
    let (b1, b2) = (new_id(), new_id());
    let first = bnd(&id, &b1);

    // Synchronous bind: 201 with the credentials of a new login role.
    let r = app.osb(Method::PUT, &bnd(&id, &b1)).json(&bind_body());
    let r = r.header("X-Broker-API-Request-Identity", "req-bind").send();
    let created = Reply::of(r.await.unwrap()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let identity = created.header("x-broker-api-request-identity");
    assert_eq!(identity, Some("req-bind"));
    let credentials = created.body["credentials"].clone();
    let oc = o.with(|n| n.credentials(&credentials));
    assert_golden("bind-201", &oc.norm.apply(&created.body));
    assert!(has_role(&app, &id, &credentials), "the role is created");
    let ca = std::fs::read_to_string(app.data_dir.join("tls/ca.crt")).expect("the broker's CA");
    assert_eq!(
        credentials["ca_certificate"],
        ca.as_str(),
        "the CA the broker issues from"
    );
    assert_eq!(credentials["sslrootcert"], ca.as_str());

    let mut extra = bind_body();
    extra["a_future_field"] = json!(1);
    oc.expect(app.put_binding(&id, &b1, false), "bind-200")
        .await;
    let with_extra = o.send(Method::PUT, &first, Some(&extra));
    oc.expect(with_extra, "bind-200").await;
    let mut other = bind_body();
    merge(
        &mut other,
        &json!({ "app_guid": new_id(), "bind_resource": { "app_guid": new_id() } }),
    );
    let other_app = o.send(Method::PUT, &first, Some(&other));
    o.expect(other_app, "bind-409").await;
    oc.expect(o.get(&bnd(&id, &b1)), "binding-200").await;

    // Asynchronous bind: 202 without credentials, in progress until the role exists; GET gives
    // the credentials once it succeeded.
    let creating = app.fake().hold(Call::CreateLoginRole);
    let bind_op = o
        .expect(app.put_binding(&id, &b2, true), "bind-202")
        .await
        .operation();
    let running = Reply::of(o.get(&last_op(&bnd(&id, &b2), Some(&bind_op))).await).await;
    assert_eq!(running.body["state"], "in progress", "{}", running.body);
    creating.release();
    let (status, done) = app.poll_binding(&id, &b2, Some(&bind_op)).await;
    assert_eq!(status, StatusCode::OK);
    assert_golden("binding-last-operation-200-bind", &o.norm.apply(&done));
    let fetched = Reply::of(o.get(&bnd(&id, &b2)).await).await;
    assert_eq!(fetched.status, StatusCode::OK);
    let fetched_credentials = &fetched.body["credentials"];
    let of = o.with(|n| n.credentials(fetched_credentials));
    assert_golden("binding-200", &of.norm.apply(&fetched.body));
    assert_ne!(
        fetched_credentials["password"], credentials["password"],
        "one password per binding"
    );
    assert!(has_role(&app, &id, fetched_credentials), "async role");

    // Binding last_operation: another binding's operation is 400, an unknown binding 404.
    let other_binding = last_op(&bnd(&id, &b1), Some(&bind_op));
    o.expect(o.get(&other_binding), "binding-last-operation-400")
        .await;
    let unknown = last_op(&bnd(&id, &new_id()), Some(&bind_op));
    o.expect(o.get(&unknown), "binding-404").await;

    // Synchronous unbind: 200 {}; the role is gone.
    o.expect(app.delete_binding(&id, &b1, false), "unbind-200")
        .await;
    assert!(!has_role(&app, &id, &credentials), "the role is dropped");
    let (status, body) = app.poll_binding(&id, &b1, None).await;
    assert_delete_finished(status, &body);
    o.expect(o.get(&bnd(&id, &b1)), "binding-404").await;
    o.expect(app.delete_binding(&id, &b1, false), "gone-410")
        .await;
    o.expect(app.put_binding(&id, &b1, false), "bind-409-deleted")
        .await;

    // Asynchronous unbind: 202, then last_operation says succeeded (a tombstone).
    let unbind_op = o
        .expect(app.delete_binding(&id, &b2, true), "unbind-202")
        .await
        .operation();
    let (status, done) = app.poll_binding(&id, &b2, Some(&unbind_op)).await;
    assert_delete_finished(status, &done);
    assert_golden("binding-last-operation-200-unbind", &o.norm.apply(&done));
    o.expect(o.get(&bnd(&id, &b2)), "binding-404").await;
    assert!(!has_role(&app, &id, fetched_credentials), "async unbind");
}
