//! The OSB API as a wire contract, for requests about no instance or an unknown one: health
//! and the catalog, basic auth and the API version checked on every route, unknown instances
//! and bindings. Every status code is checked with its body against a golden file in
//! `tests/fixtures/osb/` (`common::golden`), on the fake runtime: none of these reaches a
//! cluster.

use crate::common;

use base64::Engine;
use common::osb_client::*;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;

#[tokio::test]
async fn health_catalog_and_request_identity() {
    let app = spawn_fast_app().await;
    let o = Osb::new(&app);
    let health = app.client.get(format!("{}/health", app.address)).send();
    o.expect(async { health.await.unwrap() }, "health-200")
        .await;

    let r = app
        .osb(Method::GET, "/v2/catalog")
        .header("X-Broker-API-Request-Identity", "req-1");
    let reply = Reply::of(r.send().await.unwrap()).await;
    assert_eq!(reply.status, StatusCode::OK);
    let repo_catalog: Value =
        serde_json::from_str(include_str!("../../../../../catalog.json")).unwrap();
    assert_eq!(
        reply.body, repo_catalog,
        "the catalog is served verbatim from catalog.json"
    );
    assert_eq!(reply.header("x-broker-api-request-identity"), Some("req-1"));

    o.expect(o.get("/v2/no_such_thing"), "endpoint-404").await;
}

/// Every OSB route, with a valid request.
fn all_routes() -> Vec<(Method, String, Option<Value>)> {
    let (i, b) = (new_id(), new_id());
    let async_q = format!("?{ASYNC}");
    vec![
        (Method::GET, "/v2/catalog".into(), None),
        (
            Method::PUT,
            inst(&i) + &async_q,
            Some(provision_body(SMALL, "x")),
        ),
        (
            Method::PATCH,
            inst(&i) + &async_q,
            Some(plan_change(MEDIUM)),
        ),
        (
            Method::DELETE,
            inst(&i) + &ids_query(&format!("&{ASYNC}")),
            None,
        ),
        (Method::GET, inst(&i), None),
        (Method::GET, last_op(&inst(&i), None), None),
        (Method::PUT, bnd(&i, &b), Some(bind_body())),
        (Method::DELETE, bnd(&i, &b) + &ids_query(""), None),
        (Method::GET, bnd(&i, &b), None),
        (Method::GET, last_op(&bnd(&i, &b), None), None),
    ]
}

#[tokio::test]
async fn basic_auth_is_checked_first_on_every_route() {
    let app = spawn_fast_app().await;
    let o = Osb::new(&app);
    let basic = |user: &str, pass: &str| {
        let pair = format!("{user}:{pass}");
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    };
    let wrong: [(&str, Option<String>); 5] = [
        ("no Authorization header", None),
        ("wrong password", Some(basic(USER, "not-the-password"))),
        ("wrong user", Some(basic("admin", &app.password))),
        ("a bearer token", Some(format!("Bearer {}", app.password))),
        ("not base64", Some("Basic !!!".into())),
    ];
    for (method, path, body) in all_routes() {
        for (why, authorization) in &wrong {
            for version in [Some("2.17"), None] {
                let url = format!("{}{path}", app.address);
                let mut r = app.client.request(method.clone(), url);
                if let Some(a) = authorization {
                    r = r.header("Authorization", a);
                }
                if let Some(v) = version {
                    r = r.header("X-Broker-API-Version", v);
                }
                if let Some(b) = &body {
                    r = r.json(b);
                }
                let r = r.header("X-Broker-API-Request-Identity", "req-401").send();
                let reply = o.expect(async { r.await.unwrap() }, "error-401").await;
                let case = format!("{method} {path}, {why}, version {version:?}");
                let challenge = reply.header("www-authenticate");
                assert_eq!(challenge, Some("Basic realm=\"wayback\""), "{case}");
                let identity = reply.header("x-broker-api-request-identity");
                assert_eq!(identity, Some("req-401"), "{case}");
            }
        }
    }
    assert_store_empty(&app, "after unauthenticated requests").await;
}

#[tokio::test]
async fn api_version_must_be_2_13_to_2_17() {
    let app = spawn_fast_app().await;
    let o = Osb::new(&app);
    let unsupported = ["2.12", "2.18", "3.0", "2", "two", ""];
    for (method, path, body) in all_routes() {
        let with = |version: Option<&str>| {
            let url = format!("{}{path}", app.address);
            let mut r = app
                .client
                .request(method.clone(), url)
                .basic_auth(USER, Some(&app.password));
            if let Some(v) = version {
                r = r.header("X-Broker-API-Version", v);
            }
            if let Some(b) = &body {
                r = r.json(b);
            }
            let r = r.header("X-Broker-API-Request-Identity", "req-412").send();
            async { r.await.unwrap() }
        };
        let reply = o.expect(with(None), "error-412-missing").await;
        assert_eq!(
            reply.header("x-broker-api-request-identity"),
            Some("req-412")
        );
        for v in unsupported {
            let o = o.with(|n| n.sub(format!("{v:?}"), "\"<version>\""));
            o.expect(with(Some(v)), "error-412-unsupported").await;
        }
    }
    assert_store_empty(&app, "after requests with a bad version").await;
    for v in ["2.13", "2.14", "2.15", "2.16", "2.17"] {
        let r = app.client.get(format!("{}/v2/catalog", app.address));
        let r = r
            .basic_auth(USER, Some(&app.password))
            .header("X-Broker-API-Version", v);
        assert_eq!(
            r.send().await.unwrap().status(),
            StatusCode::OK,
            "version {v} is supported"
        );
    }
}

#[tokio::test]
async fn unknown_instances_and_bindings() {
    let app = spawn_fast_app().await;
    let o = Osb::new(&app);
    let (i, b) = (new_id(), new_id());

    o.expect(o.get(&inst(&i)), "instance-404").await;
    o.expect(o.get(&last_op(&inst(&i), None)), "instance-404")
        .await;
    let op = format!("provision-{}", new_id());
    o.expect(o.get(&last_op(&inst(&i), Some(&op))), "instance-404")
        .await;
    o.expect(o.patch(&i, &plan_change(MEDIUM), true), "instance-404")
        .await;
    // DELETE of an unknown instance is 410 whether or not the platform accepts async ...
    o.expect(app.delete_instance(&i), "gone-410").await;
    o.expect(o.delete(&(inst(&i) + &ids_query(""))), "gone-410")
        .await;
    // ... but one without service_id/plan_id is malformed before anything is looked up.
    for (golden, query) in [
        ("delete-400-service-id", format!("?{ASYNC}&plan_id={SMALL}")),
        (
            "delete-400-service-id",
            format!("?{ASYNC}&service_id=&plan_id={SMALL}"),
        ),
        (
            "delete-400-plan-id",
            format!("?{ASYNC}&service_id={SERVICE_ID}"),
        ),
        (
            "delete-400-plan-id",
            format!("?{ASYNC}&service_id={SERVICE_ID}&plan_id="),
        ),
    ] {
        o.expect(o.delete(&(inst(&i) + &query)), golden).await;
    }

    o.expect(app.put_binding(&i, &b, false), "instance-404")
        .await;
    o.expect(o.get(&bnd(&i, &b)), "binding-404").await;
    o.expect(o.get(&last_op(&bnd(&i, &b), None)), "binding-404")
        .await;
    o.expect(app.delete_binding(&i, &b, false), "gone-410")
        .await;
    o.expect(app.delete_binding(&i, &b, true), "gone-410").await;
    assert_store_empty(&app, "after requests for unknown resources").await;
}
