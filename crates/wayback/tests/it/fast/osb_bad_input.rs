//! Bad input, table-driven: each case says why it is wrong, the status it must get and what
//! the description must tell the user, and its body is checked against a golden table
//! (`bad-input-provision.json`, `bad-input-binding.json`). A refused request must change
//! nothing: no instance, binding or operation is recorded. On the fake runtime: the one
//! instance the binding cases need is provisioned in memory.

use crate::common;

use common::golden::*;
use common::osb_client::*;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use wayback::domain::{BindingId, InstanceId};

/// What a bad-input case sends.
enum Input {
    /// A merge patch applied to a valid body.
    Patch(Value),
    /// This body instead of a valid one.
    Body(Value),
    /// These bytes as the body.
    Text(&'static str),
}

struct Case {
    name: &'static str,
    why: &'static str,
    input: Input,
    status: u16,
    /// What the description must tell the user to do.
    hint: &'static str,
    /// The instance / binding path segment as sent (percent-encoded, `..`); default a new GUID.
    id: Option<String>,
    /// Replaces the default query string.
    query: Option<&'static str>,
    /// Bindings: the instance in the path; default the ready instance.
    instance: Option<String>,
}

fn case(
    name: &'static str,
    why: &'static str,
    input: Input,
    status: u16,
    hint: &'static str,
) -> Case {
    Case {
        name,
        why,
        input,
        status,
        hint,
        id: None,
        query: None,
        instance: None,
    }
}

impl Case {
    fn id(self, id: impl Into<String>) -> Self {
        Case {
            id: Some(id.into()),
            ..self
        }
    }
    fn query(self, query: &'static str) -> Self {
        Case {
            query: Some(query),
            ..self
        }
    }
    fn instance(self, instance: String) -> Self {
        Case {
            instance: Some(instance),
            ..self
        }
    }
}

fn ok() -> Input {
    Input::Patch(json!({}))
}

fn big() -> String {
    "x".repeat(256 * 1024)
}

#[rustfmt::skip]
fn provision_cases() -> Vec<Case> {
    use Input::*;
    let array = "must be a JSON object";
    let catalog = "cf update-service-broker";
    let id_chars = "use only letters";
    vec![
        case("malformed JSON", "the body must parse", Text("{\"service_id\": "), 400, "not valid JSON"),
        case("JSON array", "a body is an object", Body(json!([provision_body(SMALL, "x")])), 400, array),
        case("JSON array of the fields in order", "fields go by name, never by position",
             Body(json!([SERVICE_ID, SMALL, ORG, SPACE, null, null, null])), 400, array),
        case("service_id is a number", "ids are strings", Patch(json!({"service_id": 1})), 400, "\"service_id\" has the wrong type"),
        case("parameters is a string", "-c takes an object", Patch(json!({"parameters": "{}"})), 400, array),
        case("context is a string", "context is an object", Patch(json!({"context": "cf"})), 400, "\"context\" has the wrong type"),
        case("maintenance_info is a string", "it is an object", Patch(json!({"maintenance_info": "1.0.0"})), 400, "\"maintenance_info\" has the wrong type"),
        case("service_id missing", "mandatory", Patch(json!({"service_id": null})), 400, "\"service_id\" is required"),
        case("plan_id missing", "mandatory", Patch(json!({"plan_id": null})), 400, "\"plan_id\" is required"),
        case("space_guid missing", "mandatory, top level or in context",
             Patch(json!({"space_guid": null, "context": {"space_guid": null}})), 400, "\"space_guid\" is required"),
        case("service_id empty", "an empty id is no id", Patch(json!({"service_id": ""})), 400, "must not be empty"),
        case("plan_id blank", "a blank id is no id", Patch(json!({"plan_id": "  "})), 400, "must not be empty"),
        case("unknown service_id", "not in the catalog", Patch(json!({"service_id": "no-such-service"})), 400, catalog),
        case("unknown plan_id", "not in the catalog", Patch(json!({"plan_id": "no-such-plan"})), 400, catalog),
        case("space_guid with a space", "GUIDs name directories and keys",
             Patch(json!({"space_guid": "a b", "context": {"space_guid": "a b"}})), 400, id_chars),
        case("context.space_guid differs", "which space would it be?",
             Patch(json!({"context": {"space_guid": new_id()}})), 400, "context.space_guid"),
        case("context.organization_guid differs", "which org would it be?",
             Patch(json!({"context": {"organization_guid": new_id()}})), 400, "context.organization_guid"),
        case("unknown parameter", "the plan takes no parameters", Patch(json!({"parameters": {"foo": 1}})), 400, "Remove it from -c"),
        case("oversized body", "bodies are capped at 256 KiB", Patch(json!({"parameters": {"blob": big()}})), 413, "send a smaller"),
        case("maintenance_info.version for a plan without one", "the plan has no maintenance_info",
             Patch(json!({"maintenance_info": {"version": "1.0.0"}})), 422, "Fetch the broker's catalog again"),
        case("accepts_incomplete=maybe", "a boolean", ok(), 400, "must be true or false").query("accepts_incomplete=maybe"),
        case("accepts_incomplete missing", "provisioning is async only", ok(), 422, ASYNC).query(""),
        case("accepts_incomplete=false", "provisioning is async only", ok(), 422, ASYNC).query("accepts_incomplete=false"),
        case("id with an encoded slash", "ids name directories", ok(), 400, id_chars).id("a%2Fb"),
        case("id with an encoded space", "ids name directories", ok(), 400, id_chars).id("a%20b"),
        case("id ..", "path traversal", ok(), 400, "must not start with '.'").id(".."),
        case("id of 65 characters", "ids are at most 64 characters", ok(), 400, "at most 64").id("a".repeat(65)),
    ]
}

#[rustfmt::skip]
fn binding_cases() -> Vec<Case> {
    use Input::*;
    let array = "must be a JSON object";
    let catalog = "cf update-service-broker";
    vec![
        case("unknown instance", "nothing to bind to", ok(), 404, "does not exist").instance(new_id()),
        case("unknown service_id", "not in the catalog", Patch(json!({"service_id": "nope"})), 400, catalog),
        case("service_id empty", "an empty id is no id", Patch(json!({"service_id": ""})), 400, "must not be empty"),
        case("plan_id missing", "mandatory", Patch(json!({"plan_id": null})), 400, "\"plan_id\" is required"),
        case("unknown plan_id", "not in the catalog", Patch(json!({"plan_id": "nope"})), 400, catalog),
        case("unknown parameter", "bindings take only read_only", Patch(json!({"parameters": {"foo": 1}})), 400, "Remove it from -c"),
        case("read_only is a string", "read_only is a boolean", Patch(json!({"parameters": {"read_only": "yes"}})), 400, "must be true or false"),
        case("read_only is a number", "read_only is a boolean, not 1", Patch(json!({"parameters": {"read_only": 1}})), 400, "must be true or false"),
        case("parameters is a string", "-c takes an object", Patch(json!({"parameters": "foo"})), 400, array),
        case("app_guid empty", "an empty id is no id", Patch(json!({"app_guid": ""})), 400, "must not be empty"),
        case("app_guid is a number", "ids are strings", Patch(json!({"app_guid": 7})), 400, "\"app_guid\" has the wrong type"),
        case("malformed JSON", "the body must parse", Text("{"), 400, "not valid JSON"),
        case("JSON array", "a body is an object", Body(json!([bind_body()])), 400, array),
        case("JSON array of the fields in order", "fields go by name, never by position",
             Body(json!([SERVICE_ID, SMALL, null, null, null])), 400, array),
        case("oversized body", "bodies are capped at 256 KiB", Patch(json!({"bind_resource": {"route": big()}})), 413, "send a smaller"),
        case("accepts_incomplete=maybe", "a boolean", ok(), 400, "must be true or false").query("accepts_incomplete=maybe"),
        case("binding id with an encoded space", "ids name roles and logs", ok(), 400, "use only letters").id("a%20b"),
        case("binding id of 65 characters", "ids are at most 64 characters", ok(), 400, "at most 64").id("b".repeat(65)),
    ]
}

/// Sends a case's PUT to `path` (with `base` as the valid body) and judges status, hint and
/// golden.
async fn run_case(
    app: &TestApp,
    case: &Case,
    path: &str,
    base: Value,
    golden: &mut GoldenTable,
    problems: &mut Problems,
) {
    let label = format!("{} ({})", case.name, case.why);
    let body = match &case.input {
        Input::Patch(p) => {
            let mut b = base;
            merge(&mut b, p);
            b.to_string()
        }
        Input::Body(b) => b.to_string(),
        Input::Text(t) => t.to_string(),
    };
    let (status, reply) = if case.id.as_deref() == Some("..") {
        raw_request(app, "PUT", path, &body).await
    } else {
        let r = app
            .osb(Method::PUT, path)
            .header("Content-Type", "application/json")
            .body(body);
        let reply = Reply::of(r.send().await.unwrap()).await;
        (reply.status, reply.body)
    };
    let want = case.status;
    problems.check(status == want, || {
        format!("{label}: status {status}, want {want}: {reply}")
    });
    let description = reply["description"].as_str().unwrap_or_default();
    let hint = case.hint;
    problems.check(description.contains(hint), || {
        format!("{label}: the description should say {hint:?}: {description:?}")
    });
    let n = Norm::new(app)
        .sub("a".repeat(65), "<65 characters>")
        .sub("b".repeat(65), "<65 characters>");
    problems.add(golden.check(case.name, status, &n.apply(&reply)));
}

#[tokio::test]
async fn provision_bad_input_is_refused_and_changes_nothing() {
    let app = spawn_fast_app().await;
    let mut golden = GoldenTable::load("bad-input-provision");
    let mut problems = Problems::default();
    for case in provision_cases() {
        let id = case.id.clone().unwrap_or_else(new_id);
        let path = format!("{}?{}", inst(&id), case.query.unwrap_or(ASYNC));
        let base = provision_body(SMALL, "bad-input");
        run_case(&app, &case, &path, base, &mut golden, &mut problems).await;
        if let Ok(parsed) = InstanceId::parse(id.clone()) {
            let fetched = app
                .osb(Method::GET, &inst(&id))
                .send()
                .await
                .unwrap()
                .status();
            let stored = app
                .store
                .get_instance(&parsed)
                .await
                .unwrap()
                .map(|i| i.state);
            problems.check(fetched == StatusCode::NOT_FOUND && stored.is_none(), || {
                format!(
                    "{}: the instance was created (GET {fetched}, stored {stored:?})",
                    case.name
                )
            });
        }
    }
    problems.add(golden.finish());
    let instances = app.store.instance_counts().await.unwrap();
    problems.check(instances.is_empty(), || {
        format!("instances were recorded: {instances:?}")
    });
    problems.assert_none("bad provision input");
}

#[tokio::test]
async fn bind_bad_input_is_refused_and_changes_nothing() {
    let app = spawn_fast_app().await;
    let instance = app.provision_ready("bind-bad-input").await;
    let operations = sorted(app.store.operation_counts().await.unwrap());
    let mut golden = GoldenTable::load("bad-input-binding");
    let mut problems = Problems::default();
    for case in binding_cases() {
        let bindings_before = app.store.bindings_of(&iid(&instance)).await.unwrap().len();
        let operations_before = sorted(app.store.operation_counts().await.unwrap());
        let on = case.instance.clone().unwrap_or_else(|| instance.clone());
        let binding = case.id.clone().unwrap_or_else(new_id);
        let path = format!(
            "{}{}",
            bnd(&on, &binding),
            case.query.map(|q| format!("?{q}")).unwrap_or_default()
        );
        run_case(&app, &case, &path, bind_body(), &mut golden, &mut problems).await;
        if BindingId::parse(binding.clone()).is_ok() {
            let fetched = app
                .osb(Method::GET, &bnd(&on, &binding))
                .send()
                .await
                .unwrap()
                .status();
            problems.check(fetched == StatusCode::NOT_FOUND, || {
                format!("{}: GET binding answers {fetched}", case.name)
            });
        }
        let bindings = app.store.bindings_of(&iid(&instance)).await.unwrap().len();
        problems.check(bindings == bindings_before, || {
            format!("{}: a binding was recorded", case.name)
        });
        let now = sorted(app.store.operation_counts().await.unwrap());
        problems.check(now == operations_before, || {
            format!("{}: operations changed: {now:?}", case.name)
        });
    }
    let now = sorted(app.store.operation_counts().await.unwrap());
    problems.check(now == operations, || {
        format!("operations were recorded: {now:?}")
    });
    problems.add(golden.finish());
    problems.assert_none("bad bind input");

    // Unbind without service_id / plan_id is malformed; the binding stays.
    let o = Osb::new(&app);
    let b = new_id();
    app.bind_sync(&instance, &b).await;
    for (golden, query) in [
        ("delete-400-service-id", format!("?plan_id={SMALL}")),
        (
            "delete-400-service-id",
            format!("?service_id=&plan_id={SMALL}"),
        ),
        ("delete-400-plan-id", format!("?service_id={SERVICE_ID}")),
        (
            "delete-400-plan-id",
            format!("?service_id={SERVICE_ID}&plan_id="),
        ),
    ] {
        o.expect(o.delete(&(bnd(&instance, &b) + &query)), golden)
            .await;
        let fetched = o.get(&bnd(&instance, &b)).await.status();
        assert_eq!(fetched, StatusCode::OK, "{query}: the binding must stay");
    }
}
