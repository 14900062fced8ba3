//! The answers OSB checkers trip on (issue 12, point 1), table-driven on the fake runtime, each
//! case with its golden `{status, body}` in a table of `tests/fixtures/osb/`:
//!
//! - a provision without the top-level `organization_guid` / `space_guid` is a 400 naming the
//!   field, even when `context` carries it, and creates nothing (`checker-provision-400`);
//! - `last_operation`'s `operation` is a hint: a value the broker never issued (a checker sends
//!   the literal `provision`) answers for the current operation; another instance's or
//!   binding's operation stays a 400 (`checker-operation-hint`);
//! - a finished asynchronous deprovision or unbind is kept as a tombstone: `last_operation`
//!   answers 200 `succeeded`, while GET stays 404 and a second DELETE 410
//!   (`checker-tombstones`);
//! - a method a route does not serve is a 405 with the OSB error body and an `Allow` header
//!   (`checker-405`).
//!
//! Each case says why it is there; one run reports every case that differs (`Problems`).

use crate::common;

use common::golden::*;
use common::osb_client::*;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use wayback::domain::BindingId;

/// Sends `request` and records its answer (status and normalised body) in `table`.
async fn check(
    app: &TestApp,
    table: &mut GoldenTable,
    problems: &mut Problems,
    case: &str,
    request: reqwest::RequestBuilder,
) -> Reply {
    let reply = Reply::of(request.send().await.expect("request sent")).await;
    problems.add(table.check(case, reply.status, &Norm::new(app).apply(&reply.body)));
    reply
}

#[tokio::test]
async fn provision_needs_top_level_organization_and_space() {
    let app = spawn_fast_app().await;
    let mut table = GoldenTable::load("checker-provision-400");
    let mut problems = Problems::default();
    // (case, why, what to change in a valid body, the field the description must name)
    #[rustfmt::skip]
    let cases = [
        ("organization_guid only in context", "v2.17 marks the top-level field REQUIRED",
         json!({"organization_guid": null}), "organization_guid"),
        ("space_guid only in context", "v2.17 marks the top-level field REQUIRED",
         json!({"space_guid": null}), "space_guid"),
        ("both only in context", "the first missing field is named",
         json!({"organization_guid": null, "space_guid": null}), "organization_guid"),
        ("organization_guid empty, context set", "MUST be a non-empty string",
         json!({"organization_guid": ""}), "organization_guid"),
        ("space_guid blank, context set", "MUST be a non-empty string",
         json!({"space_guid": "  "}), "space_guid"),
    ];
    for (case, why, patch, field) in cases {
        let mut body = provision_body(SMALL, "checker");
        merge(&mut body, &patch);
        for key in ["organization_guid", "space_guid"] {
            assert!(
                body["context"][key].is_string(),
                "{case}: context keeps {key}"
            );
        }
        let id = new_id();
        let request = app
            .osb(Method::PUT, &format!("{}?{ASYNC}", inst(&id)))
            .json(&body);
        let reply = check(&app, &mut table, &mut problems, case, request).await;
        problems.check(reply.status == StatusCode::BAD_REQUEST, || {
            format!("{case} ({why}): {} {}", reply.status, reply.body)
        });
        let description = reply.body["description"].as_str().unwrap_or_default();
        problems.check(
            description.contains(&format!("{field:?}")) && description.contains("top level"),
            || {
                format!(
                    "{case}: the description must name {field} at the top level: {description:?}"
                )
            },
        );
        let fetched = app.osb(Method::GET, &inst(&id)).send().await.unwrap();
        problems.check(fetched.status() == StatusCode::NOT_FOUND, || {
            format!("{case}: GET answers {}", fetched.status())
        });
    }
    problems.add(table.finish());
    problems.assert_none("provision without top-level ids");
    assert_store_empty(&app, "after provisions without top-level ids").await;
}

#[tokio::test]
async fn last_operation_takes_operation_as_a_hint() {
    let app = spawn_fast_app().await;
    let o = Osb::new(&app);
    let a = app.provision_ready("hint-a").await;
    let b = app.provision_ready("hint-b").await;
    let a_provision = latest(&app, &a, None).await;
    let b_provision = latest(&app, &b, None).await;
    // A's current operation is a plan change, not its provision.
    let update = o.patch(&a, &plan_change(MEDIUM), true).await;
    let update = Reply::of(update).await.operation();
    let (status, _) = app.poll_instance(&a, Some(&update)).await;
    assert_eq!(status, StatusCode::OK);
    let (b1, b2) = (new_id(), new_id());
    app.bind_sync(&a, &b1).await;
    app.bind_sync(&a, &b2).await;
    let b1_bind = latest(&app, &a, Some(&b1)).await;
    let b2_bind = latest(&app, &a, Some(&b2)).await;

    let mut table = GoldenTable::load("checker-operation-hint");
    let mut problems = Problems::default();
    let unknown = format!("provision-{}", new_id());
    // (case, why, path, operation, status)
    #[rustfmt::skip]
    let cases = [
        ("instance: none", "the current operation", inst(&a), None, 200),
        ("instance: literal provision", "a checker's guess: the current operation", inst(&a), Some("provision"), 200),
        ("instance: literal deprovision", "any unknown value: the current operation", inst(&a), Some("deprovision"), 200),
        ("instance: an id never issued", "unknown: the current operation", inst(&a), Some(unknown.as_str()), 200),
        ("instance: its own older operation", "named: that operation", inst(&a), Some(a_provision.as_str()), 200),
        ("instance: another instance's", "names a different instance's operation", inst(&a), Some(b_provision.as_str()), 400),
        ("instance: a binding's", "a binding's operation is not the instance's", inst(&a), Some(b1_bind.as_str()), 400),
        ("instance: empty", "MUST be a non-empty string", inst(&a), Some(""), 400),
        ("binding: none", "the current operation", bnd(&a, &b1), None, 200),
        ("binding: literal bind", "a checker's guess: the current operation", bnd(&a, &b1), Some("bind"), 200),
        ("binding: an id never issued", "unknown: the current operation", bnd(&a, &b1), Some(unknown.as_str()), 200),
        ("binding: its own", "named: that operation", bnd(&a, &b1), Some(b1_bind.as_str()), 200),
        ("binding: another binding's", "names a different binding's operation", bnd(&a, &b1), Some(b2_bind.as_str()), 400),
        ("binding: the instance's", "an instance operation is not the binding's", bnd(&a, &b1), Some(update.as_str()), 400),
    ];
    for (case, why, path, operation, want) in cases {
        let request = app.osb(Method::GET, &last_op(&path, operation));
        let reply = check(&app, &mut table, &mut problems, case, request).await;
        problems.check(reply.status.as_u16() == want, || {
            format!(
                "{case} ({why}): {} {}, want {want}",
                reply.status, reply.body
            )
        });
    }
    problems.add(table.finish());
    problems.assert_none("last_operation's operation hint");
}

#[tokio::test]
async fn finished_deletes_are_kept_as_tombstones() {
    let app = spawn_fast_app().await;
    let id = app.provision_ready("tombstone").await;
    let binding = new_id();
    app.bind_sync(&id, &binding).await;

    let unbind = Reply::of(app.delete_binding(&id, &binding, true).await).await;
    assert_eq!(unbind.status, StatusCode::ACCEPTED, "{}", unbind.body);
    let unbind_op = unbind.operation();
    let (status, body) = app.poll_binding(&id, &binding, Some(&unbind_op)).await;
    assert_delete_finished(status, &body);
    let delete = Reply::of(app.delete_instance(&id).await).await;
    assert_eq!(delete.status, StatusCode::ACCEPTED, "{}", delete.body);
    let delete_op = delete.operation();
    let (status, body) = app.poll_instance(&id, Some(&delete_op)).await;
    assert_delete_finished(status, &body);

    let mut table = GoldenTable::load("checker-tombstones");
    let mut problems = Problems::default();
    let (i, b) = (inst(&id), bnd(&id, &binding));
    let sync_delete = format!("{i}{}", ids_query(""));
    // (case, why, method, path, status)
    #[rustfmt::skip]
    let cases = [
        ("deprovision: last_operation", "the tombstone of the operation", Method::GET, last_op(&i, Some(&delete_op)), 200),
        ("deprovision: last_operation, no operation", "the latest operation is the deprovision", Method::GET, last_op(&i, None), 200),
        ("deprovision: last_operation, literal deprovision", "a checker's guess", Method::GET, last_op(&i, Some("deprovision")), 200),
        ("deprovision: GET instance", "a deleted instance is not found", Method::GET, i.clone(), 404),
        ("deprovision: DELETE again", "MUST be 410 if the instance does not exist", Method::DELETE, format!("{i}{}", ids_query(&format!("&{ASYNC}"))), 410),
        ("deprovision: DELETE again, synchronous", "410 whether or not async is accepted", Method::DELETE, sync_delete, 410),
        ("unbind: last_operation", "the tombstone of the operation", Method::GET, last_op(&b, Some(&unbind_op)), 200),
        ("unbind: last_operation, no operation", "the latest operation is the unbind", Method::GET, last_op(&b, None), 200),
        ("unbind: last_operation, literal unbind", "a checker's guess", Method::GET, last_op(&b, Some("unbind")), 200),
        ("unbind: GET binding", "a deleted binding is not found", Method::GET, b.clone(), 404),
        ("unbind: DELETE again", "MUST be 410 if the binding does not exist", Method::DELETE, format!("{b}{}", ids_query(&format!("&{ASYNC}"))), 410),
    ];
    for (case, why, method, path, want) in cases {
        let request = app.osb(method, &path);
        let reply = check(&app, &mut table, &mut problems, case, request).await;
        problems.check(reply.status.as_u16() == want, || {
            format!(
                "{case} ({why}): {} {}, want {want}",
                reply.status, reply.body
            )
        });
        if want == 200 {
            let state = reply.body["state"].as_str();
            let described = reply.body["description"]
                .as_str()
                .is_some_and(|d| !d.is_empty());
            problems.check(state == Some("succeeded") && described, || {
                format!(
                    "{case}: want state succeeded with a description: {}",
                    reply.body
                )
            });
        }
    }
    problems.add(table.finish());
    problems.assert_none("tombstones of finished deletes");
}

#[tokio::test]
async fn unserved_methods_are_405_with_an_osb_body() {
    let app = spawn_fast_app().await;
    let (i, b) = (inst(&new_id()), bnd(&new_id(), &new_id()));
    let mut table = GoldenTable::load("checker-405");
    let mut problems = Problems::default();
    // (case, method, path, the Allow header)
    #[rustfmt::skip]
    let cases = [
        ("POST instance", Method::POST, i.clone(), "GET, PUT, PATCH, DELETE"),
        ("POST binding", Method::POST, b.clone(), "GET, PUT, DELETE"),
        ("PATCH binding", Method::PATCH, b.clone(), "GET, PUT, DELETE"),
        ("POST catalog", Method::POST, "/v2/catalog".into(), "GET"),
        ("DELETE instance last_operation", Method::DELETE, format!("{i}/last_operation"), "GET"),
        ("PUT binding last_operation", Method::PUT, format!("{b}/last_operation"), "GET"),
        ("POST health", Method::POST, "/health".into(), "GET"),
        ("DELETE metrics", Method::DELETE, "/metrics".into(), "GET"),
    ];
    for (case, method, path, allow) in cases {
        let request = app.osb(method.clone(), &path).json(&json!({}));
        let reply = check(&app, &mut table, &mut problems, case, request).await;
        problems.check(reply.status == StatusCode::METHOD_NOT_ALLOWED, || {
            format!("{case}: {} {}", reply.status, reply.body)
        });
        problems.check(reply.header("allow") == Some(allow), || {
            format!("{case}: Allow {:?}, want {allow:?}", reply.header("allow"))
        });
        let description = reply.body["description"].as_str().unwrap_or_default();
        problems.check(
            reply.body["error"] == "MethodNotAllowed"
                && description.contains(method.as_str())
                && description.contains(allow),
            || {
                format!(
                    "{case}: the body must name the method and {allow}: {}",
                    reply.body
                )
            },
        );
    }
    problems.add(table.finish());
    problems.assert_none("unserved methods");

    // Authentication comes first: without credentials it is a 401, as on every /v2 route.
    let anonymous = app.client.post(format!("{}{i}", app.address)).send();
    let anonymous = anonymous.await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_store_empty(&app, "after unserved methods").await;
}

/// The id of the latest operation of an instance (`binding` None) or of one of its bindings.
async fn latest(app: &TestApp, instance: &str, binding: Option<&str>) -> String {
    let binding = binding.map(|b| BindingId::parse(b).unwrap());
    let instance = iid(instance);
    let op = app.store.latest_operation(&instance, binding.as_ref());
    op.await.unwrap().expect("an operation").id
}
