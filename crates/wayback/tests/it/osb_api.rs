//! The OSB API as a wire contract: every status code the broker answers, with its body compared
//! as JSON against a golden file in `tests/fixtures/osb/`, plus table-driven bad input.
//!
//! Volatile values (operation ids, GUIDs, the broker's address, binding secrets and ports) are
//! replaced by placeholders before comparing (`Norm`). `WAYBACK_BLESS=1` rewrites the golden
//! files from what the broker answers; review the diff before committing it.
//!
//! Some assertions look at an operation while it runs (a repeated PUT gets the same operation,
//! GET answers 404/422). The broker has no hook to hold a job, so those requests go out right
//! after the 202: a few local round trips (about a millisecond each) against initdb, a
//! PostgreSQL start or restart (hundreds of milliseconds). Their messages say so if that ever
//! stops holding.

use crate::common;

use std::future::Future;
use std::path::PathBuf;

use base64::Engine;
use common::*;
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Map, Value};
use wayback::domain::{BindingId, InstanceId};

/// Catalog and CF ids are stable: goldens show them as they are.
const STABLE_IDS: [&str; 5] = [SERVICE_ID, SMALL, MEDIUM, ORG, SPACE];
const RUNNING: &str = "(sent while the operation runs; see the module docs)";
const ASYNC: &str = "accepts_incomplete=true";

// ---------------------------------------------------------------------------------------------
// Normalising and goldens
// ---------------------------------------------------------------------------------------------

/// Replaces volatile values with placeholders.
#[derive(Clone)]
struct Norm {
    subs: Vec<(String, String)>,
    numbers: Vec<(u64, String)>,
}

impl Norm {
    fn new(app: &TestApp) -> Self {
        let subs = vec![(app.address.clone(), "<broker>".into())];
        Norm {
            subs,
            numbers: vec![],
        }
    }

    fn sub(mut self, from: impl Into<String>, to: &str) -> Self {
        self.subs.push((from.into(), to.into()));
        self
    }

    /// Placeholders for a binding's secret and per-cluster values.
    fn credentials(self, credentials: &Value) -> Self {
        let text = |k: &str| {
            credentials[k]
                .as_str()
                .expect("credentials field")
                .to_string()
        };
        let port = credentials["port"]
            .as_u64()
            .expect("credentials.port is a number");
        let mut n = self
            .sub(text("password"), "<password>")
            .sub(text("username"), "<username>")
            .sub(format!(":{port}/"), ":<port>/");
        n.numbers.push((port, "<port>".into()));
        n
    }

    fn apply(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => {
                let mut s = s.clone();
                for (from, to) in &self.subs {
                    s = s.replace(from.as_str(), to);
                }
                Value::String(replace_uuids(&s))
            }
            Value::Number(n) => match self.numbers.iter().find(|(k, _)| n.as_u64() == Some(*k)) {
                Some((_, to)) => Value::String(to.clone()),
                None => v.clone(),
            },
            Value::Array(a) => Value::Array(a.iter().map(|x| self.apply(x)).collect()),
            Value::Object(m) => {
                Value::Object(m.iter().map(|(k, x)| (k.clone(), self.apply(x))).collect())
            }
            other => other.clone(),
        }
    }
}

fn is_uuid(b: &[u8]) -> bool {
    let ok = |(i, c): (usize, &u8)| match i {
        8 | 13 | 18 | 23 => *c == b'-',
        _ => c.is_ascii_hexdigit(),
    };
    b.len() == 36 && b.iter().enumerate().all(ok)
}

/// Every GUID but the stable ones becomes `<uuid>`.
fn replace_uuids(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b.get(i..i + 36).filter(|c| is_uuid(c)) {
            Some(c) if !STABLE_IDS.iter().any(|k| k.as_bytes() == c) => {
                out.extend_from_slice(b"<uuid>");
                i += 36;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("only ASCII was replaced")
}

fn fixture_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/osb");
    dir.join(format!("{name}.json"))
}

fn bless() -> bool {
    std::env::var_os("WAYBACK_BLESS").is_some()
}

/// Compares a normalised body with `tests/fixtures/osb/<name>.json`.
fn assert_golden(name: &str, actual: &Value) {
    let path = fixture_path(name);
    let pretty = serde_json::to_string_pretty(actual).unwrap();
    if bless() {
        std::fs::write(&path, pretty + "\n").unwrap();
        return;
    }
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("golden {}: {e}; the body was:\n{pretty}", path.display()));
    let expected: Value = serde_json::from_str(&text).expect("golden is JSON");
    assert_eq!(
        actual,
        &expected,
        "golden {} differs; the body was:\n{pretty}",
        path.display()
    );
}

/// A golden table: `tests/fixtures/osb/<file>.json` maps case names to `{status, body}`.
struct GoldenTable {
    file: &'static str,
    expected: Map<String, Value>,
    actual: Map<String, Value>,
}

impl GoldenTable {
    fn load(file: &'static str) -> Self {
        let expected = match std::fs::read_to_string(fixture_path(file)) {
            Ok(text) => serde_json::from_str(&text).expect("golden table is a JSON object"),
            Err(_) if bless() => Map::new(),
            Err(e) => panic!("golden table {file}: {e}"),
        };
        GoldenTable {
            file,
            expected,
            actual: Map::new(),
        }
    }

    /// Records the case; returns how it differs from its golden, if it does.
    fn check(&mut self, case: &str, status: StatusCode, body: &Value) -> Option<String> {
        let got = json!({ "status": status.as_u16(), "body": body });
        self.actual.insert(case.to_string(), got.clone());
        let file = self.file;
        match self.expected.get(case) {
            _ if bless() => None,
            Some(want) if *want == got => None,
            Some(want) => Some(format!(
                "{case:?} differs from {file}:\n    want {want}\n    got  {got}"
            )),
            None => Some(format!("{case:?} has no golden in {file}; got {got}")),
        }
    }

    fn finish(self) -> Option<String> {
        if bless() {
            let text = serde_json::to_string_pretty(&Value::Object(self.actual)).unwrap();
            std::fs::write(fixture_path(self.file), text + "\n").unwrap();
            return None;
        }
        let stale: Vec<_> = self
            .expected
            .keys()
            .filter(|k| !self.actual.contains_key(*k))
            .collect();
        (!stale.is_empty()).then(|| format!("{}: goldens of cases not run: {stale:?}", self.file))
    }
}

/// What went wrong across a table, reported together so that one run shows every bad case.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn check(&mut self, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            self.0.push(message());
        }
    }

    fn add(&mut self, problem: Option<String>) {
        self.0.extend(problem);
    }

    fn assert_none(self, table: &str) {
        let list = self.0.join("\n  - ");
        assert!(
            self.0.is_empty(),
            "{table}: {} problem(s):\n  - {list}",
            self.0.len()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// A response, read whole. Every OSB response is JSON.
struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Reply {
    async fn of(r: Response) -> Reply {
        let (status, headers) = (r.status(), r.headers().clone());
        let text = r.text().await.expect("response body");
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {text:?}"));
        let kind = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(
            kind.starts_with("application/json"),
            "{status}: content-type {kind:?}"
        );
        Reply {
            status,
            headers,
            body,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn operation(&self) -> String {
        let op = self.body["operation"].as_str();
        op.unwrap_or_else(|| panic!("no operation in {}", self.body))
            .to_string()
    }
}

/// An OSB client over a test app that checks statuses and golden bodies.
struct Osb<'a> {
    app: &'a TestApp,
    norm: Norm,
}

impl<'a> Osb<'a> {
    fn new(app: &'a TestApp) -> Self {
        Osb {
            app,
            norm: Norm::new(app),
        }
    }

    /// The same client with more placeholders.
    fn with(&self, norm: impl FnOnce(Norm) -> Norm) -> Osb<'a> {
        Osb {
            app: self.app,
            norm: norm(self.norm.clone()),
        }
    }

    async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Response {
        let request = self.app.osb(method, path);
        let request = match body {
            Some(b) => request.json(b),
            None => request,
        };
        request.send().await.expect("request sent")
    }

    async fn get(&self, path: &str) -> Response {
        self.send(Method::GET, path, None).await
    }

    async fn delete(&self, path: &str) -> Response {
        self.send(Method::DELETE, path, None).await
    }

    async fn patch(&self, id: &str, body: &Value, accepts_incomplete: bool) -> Response {
        let q = if accepts_incomplete {
            "?accepts_incomplete=true"
        } else {
            ""
        };
        self.send(Method::PATCH, &format!("{}{q}", inst(id)), Some(body))
            .await
    }

    /// Awaits `request` and asserts its status and body against the golden `name`, which is
    /// `<what>-<status>[-<case>]`.
    async fn expect(&self, request: impl Future<Output = Response>, golden: &str) -> Reply {
        let reply = Reply::of(request.await).await;
        let status = golden.split('-').find_map(|p| p.parse::<u16>().ok());
        assert_eq!(
            Some(reply.status.as_u16()),
            status,
            "{golden}: {}",
            reply.body
        );
        assert_golden(golden, &self.norm.apply(&reply.body));
        reply
    }
}

fn inst(id: &str) -> String {
    format!("/v2/service_instances/{id}")
}

fn bnd(instance: &str, binding: &str) -> String {
    format!("/v2/service_instances/{instance}/service_bindings/{binding}")
}

/// `…/last_operation` of an instance or binding path, with an optional `operation`.
fn last_op(path: &str, operation: Option<&str>) -> String {
    let q = operation
        .map(|o| format!("?operation={o}"))
        .unwrap_or_default();
    format!("{path}/last_operation{q}")
}

/// DELETE's query with `service_id`, `plan_id` and `rest`.
fn ids_query(rest: &str) -> String {
    format!("?service_id={SERVICE_ID}&plan_id={SMALL}{rest}")
}

fn plan_change(plan: &str) -> Value {
    json!({
        "service_id": SERVICE_ID,
        "plan_id": plan,
        "context": { "platform": "cloudfoundry", "organization_guid": ORG, "space_guid": SPACE },
        "previous_values": { "plan_id": SMALL, "service_id": SERVICE_ID, "space_id": SPACE },
    })
}

fn named(mut body: Value, name: &str) -> Value {
    body["context"]["instance_name"] = json!(name);
    body
}

/// RFC 7386 merge patch: objects merge, `null` removes, anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().unwrap();
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

fn iid(id: &str) -> InstanceId {
    InstanceId::parse(id).unwrap()
}

/// An HTTP/1.1 request written by hand, for paths a URL library would normalise (`..`).
async fn raw_request(app: &TestApp, method: &str, path: &str, body: &str) -> (StatusCode, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let auth = format!("{USER}:{}", app.password);
    let auth = base64::engine::general_purpose::STANDARD.encode(auth);
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\n\
         X-Broker-API-Version: 2.17\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("header/body separator");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    (
        StatusCode::from_u16(status).unwrap(),
        serde_json::from_str(body).expect("JSON body"),
    )
}

/// Asserts that the store holds no instance and no operation.
async fn assert_store_empty(app: &TestApp, case: &str) {
    let instances = app.store.instance_counts().await.unwrap();
    let operations = app.store.operation_counts().await.unwrap();
    let empty = instances.iter().all(|(_, n)| *n == 0) && operations.is_empty();
    assert!(
        empty,
        "{case}: the store changed: {instances:?}, {operations:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Auth, version, catalog, unknown resources: no cluster needed
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn health_catalog_and_request_identity() {
    let app = spawn_app().await;
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
        serde_json::from_str(include_str!("../../../../catalog.json")).unwrap();
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
    let app = spawn_app().await;
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
    let app = spawn_app().await;
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
    let app = spawn_app().await;
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

// ---------------------------------------------------------------------------------------------
// Bad input tables
// ---------------------------------------------------------------------------------------------

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
        case("unknown parameter", "bindings take no parameters", Patch(json!({"parameters": {"foo": 1}})), 400, "Remove it from -c"),
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
    let app = spawn_app().await;
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
    let app = spawn_app().await;
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

// ---------------------------------------------------------------------------------------------
// Lifecycles, with PostgreSQL clusters
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn provision_fetch_and_deprovision() {
    let app = spawn_app().await;
    let o = Osb::new(&app);
    let id = new_id();
    let mut body = provision_body(SMALL, "lifecycle");
    // Fields this broker does not know are ignored, not refused.
    body["a_future_field"] = json!({ "x": 1 });
    body["context"]["a_future_context_field"] = json!(true);

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

    // last_operation refuses operations that are not this instance's.
    let stranger = format!("provision-{}", new_id());
    o.expect(
        o.get(&last_op(&inst(&id), Some(&stranger))),
        "last-operation-400",
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

    // Deprovision.
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
    let (status, gone) = app.poll_instance(&id, Some(&delete_op)).await;
    assert_eq!(
        status,
        StatusCode::GONE,
        "a finished deprovision is 410: {gone}"
    );
    assert_golden("gone-410", &gone);

    // Deleted.
    o.expect(o.get(&last_op(&inst(&id), None)), "gone-410")
        .await;
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
    assert!(
        !app.cluster_dir(&id).join("pgdata").exists(),
        "the data directory is removed"
    );
}

#[tokio::test]
async fn update_rename_plan_change_and_refusals() {
    let app = spawn_app().await;
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

    // Plan change small → medium.
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
    let app = spawn_app().await;
    let o = Osb::new(&app);
    let id = new_id();
    let body = provision_body(SMALL, "orphan");
    let provision_op = o
        .expect(app.put_instance(&id, &body), "provision-202")
        .await
        .operation();
    // Orphan mitigation: the platform gave up at once and deletes.
    let delete_op = o
        .expect(app.delete_instance(&id), "deprovision-202")
        .await
        .operation();
    assert_ne!(delete_op, provision_op);

    let (status, gone) = app.poll_instance(&id, Some(&delete_op)).await;
    assert_eq!(
        status,
        StatusCode::GONE,
        "the instance ends deleted: {gone}"
    );
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
    assert!(
        !app.cluster_dir(&id).join("pgdata").exists(),
        "no cluster is left behind"
    );
}

#[tokio::test]
async fn failed_provision_can_be_deleted() {
    // The only port the broker may use is taken: provisioning fails at once, before initdb.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let app = spawn_app_with(|s| {
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
    let (status, gone) = app.poll_instance(&id, Some(&delete_op)).await;
    assert_eq!(status, StatusCode::GONE, "{gone}");
    let record = app.store.get_instance(&iid(&id)).await.unwrap().unwrap();
    assert_eq!(record.state.as_str(), "deleted");
    drop(holder);
}

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
    let (status, _) = app.poll_binding(&id, &b1, None).await;
    assert_eq!(status, StatusCode::GONE);
    o.expect(o.get(&bnd(&id, &b1)), "binding-404").await;
    o.expect(app.delete_binding(&id, &b1, false), "gone-410")
        .await;
    o.expect(app.put_binding(&id, &b1, false), "bind-409-deleted")
        .await;

    // Asynchronous unbind: 202, then last_operation says 410.
    let unbind_op = o
        .expect(app.delete_binding(&id, &b2, true), "unbind-202")
        .await
        .operation();
    let (status, gone) = app.poll_binding(&id, &b2, Some(&unbind_op)).await;
    assert_eq!(status, StatusCode::GONE, "{gone}");
    assert_golden("gone-410", &gone);
    o.expect(o.get(&bnd(&id, &b2)), "binding-404").await;
}
