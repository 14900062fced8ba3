//! The OSB binding contract where its point is PostgreSQL's behaviour: the credentials a bind
//! returns log in to the instance's real cluster, and stop working once unbound. Bodies are
//! checked against the same goldens as the fast tier's OSB tests (`common::golden`); the rest of
//! the OSB contract runs on the fake runtime, in `fast::osb_*`.

use crate::common;

use common::golden::*;
use common::osb_client::*;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn bind_fetch_and_unbind() {
    let app = spawn_app().await;
    let o = Osb::new(&app);
    let id = app.provision_ready("bound").await;
    let (b1, b2) = (new_id(), new_id());

    // Synchronous bind: 201 with working credentials.
    let r = app.osb(Method::PUT, &bnd(&id, &b1)).json(&bind_body());
    let created = Reply::of(
        r.header("X-Broker-API-Request-Identity", "req-bind")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(
        created.header("x-broker-api-request-identity"),
        Some("req-bind")
    );
    let credentials = created.body["credentials"].clone();
    let oc = o.with(|n| n.credentials(&credentials));
    assert_golden("bind-201", &oc.norm.apply(&created.body));
    let uri = credentials["uri"].as_str().unwrap();
    let mut conn = connect(uri).await.expect("the credentials work");
    let one: (i32,) = sqlx::query_as("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one.0, 1);
    drop(conn);

    let mut extra = bind_body();
    extra["a_future_field"] = json!(1);
    oc.expect(app.put_binding(&id, &b1, false), "bind-200")
        .await;
    oc.expect(
        o.send(Method::PUT, &bnd(&id, &b1), Some(&extra)),
        "bind-200",
    )
    .await;
    let other_app = json!({ "app_guid": new_id(), "bind_resource": { "app_guid": new_id() } });
    let mut other = bind_body();
    merge(&mut other, &other_app);
    o.expect(
        o.send(Method::PUT, &bnd(&id, &b1), Some(&other)),
        "bind-409",
    )
    .await;
    oc.expect(o.get(&bnd(&id, &b1)), "binding-200").await;

    // Asynchronous bind: 202 without credentials; GET gives them once it succeeded.
    let bind_op = o
        .expect(app.put_binding(&id, &b2, true), "bind-202")
        .await
        .operation();
    let (status, done) = app.poll_binding(&id, &b2, Some(&bind_op)).await;
    assert_eq!(status, StatusCode::OK);
    assert_golden("binding-last-operation-200-bind", &o.norm.apply(&done));
    let fetched = Reply::of(o.get(&bnd(&id, &b2)).await).await;
    assert_eq!(fetched.status, StatusCode::OK);
    let fetched_credentials = &fetched.body["credentials"];
    assert_golden(
        "binding-200",
        &o.with(|n| n.credentials(fetched_credentials))
            .norm
            .apply(&fetched.body),
    );
    assert_ne!(
        fetched_credentials["password"], credentials["password"],
        "one password per binding"
    );
    connect(fetched_credentials["uri"].as_str().unwrap())
        .await
        .expect("async credentials work");

    // Binding last_operation: another binding's operation is 400, an unknown binding 404.
    let other_binding = last_op(&bnd(&id, &b1), Some(&bind_op));
    o.expect(o.get(&other_binding), "binding-last-operation-400")
        .await;
    o.expect(
        o.get(&last_op(&bnd(&id, &new_id()), Some(&bind_op))),
        "binding-404",
    )
    .await;

    // Synchronous unbind: 200 {}; the role is gone.
    o.expect(app.delete_binding(&id, &b1, false), "unbind-200")
        .await;
    assert!(
        connect(uri).await.is_err(),
        "unbound credentials stop working"
    );
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
}
