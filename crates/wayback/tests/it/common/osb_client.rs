//! An OSB client for the golden tests: [`Osb::expect`] sends a request and checks its status
//! and golden body; [`Reply`] is a response read whole (every OSB response is JSON); the rest
//! builds paths and bodies (`inst`, `bnd`, `last_op`, `plan_change`, a JSON merge patch) and
//! sends what a URL library would not (`raw_request`, for `..` in a path).

use std::future::Future;

use base64::Engine;
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};
use wayback::domain::InstanceId;

use super::golden::{assert_golden, Norm};
use super::{TestApp, ORG, SERVICE_ID, SMALL, SPACE, USER};

pub const ASYNC: &str = "accepts_incomplete=true";

/// A response, read whole. Every OSB response is JSON.
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub async fn of(r: Response) -> Reply {
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

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn operation(&self) -> String {
        let op = self.body["operation"].as_str();
        op.unwrap_or_else(|| panic!("no operation in {}", self.body))
            .to_string()
    }
}

/// An OSB client over a test app that checks statuses and golden bodies.
pub struct Osb<'a> {
    pub app: &'a TestApp,
    pub norm: Norm,
}

impl<'a> Osb<'a> {
    pub fn new(app: &'a TestApp) -> Self {
        Osb {
            app,
            norm: Norm::new(app),
        }
    }

    /// The same client with more placeholders.
    pub fn with(&self, norm: impl FnOnce(Norm) -> Norm) -> Osb<'a> {
        Osb {
            app: self.app,
            norm: norm(self.norm.clone()),
        }
    }

    pub async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Response {
        let request = self.app.osb(method, path);
        let request = match body {
            Some(b) => request.json(b),
            None => request,
        };
        request.send().await.expect("request sent")
    }

    pub async fn get(&self, path: &str) -> Response {
        self.send(Method::GET, path, None).await
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.send(Method::DELETE, path, None).await
    }

    pub async fn patch(&self, id: &str, body: &Value, accepts_incomplete: bool) -> Response {
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
    pub async fn expect(&self, request: impl Future<Output = Response>, golden: &str) -> Reply {
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

pub fn inst(id: &str) -> String {
    format!("/v2/service_instances/{id}")
}

pub fn bnd(instance: &str, binding: &str) -> String {
    format!("/v2/service_instances/{instance}/service_bindings/{binding}")
}

/// `…/last_operation` of an instance or binding path, with an optional `operation`.
pub fn last_op(path: &str, operation: Option<&str>) -> String {
    let q = operation
        .map(|o| format!("?operation={o}"))
        .unwrap_or_default();
    format!("{path}/last_operation{q}")
}

/// DELETE's query with `service_id`, `plan_id` and `rest`.
pub fn ids_query(rest: &str) -> String {
    format!("?service_id={SERVICE_ID}&plan_id={SMALL}{rest}")
}

pub fn plan_change(plan: &str) -> Value {
    json!({
        "service_id": SERVICE_ID,
        "plan_id": plan,
        "context": { "platform": "cloudfoundry", "organization_guid": ORG, "space_guid": SPACE },
        "previous_values": { "plan_id": SMALL, "service_id": SERVICE_ID, "space_id": SPACE },
    })
}

pub fn named(mut body: Value, name: &str) -> Value {
    body["context"]["instance_name"] = json!(name);
    body
}

/// RFC 7386 merge patch: objects merge, `null` removes, anything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
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

pub fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

pub fn iid(id: &str) -> InstanceId {
    InstanceId::parse(id).unwrap()
}

/// An HTTP/1.1 request written by hand, for paths a URL library would normalise (`..`).
pub async fn raw_request(
    app: &TestApp,
    method: &str,
    path: &str,
    body: &str,
) -> (StatusCode, Value) {
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
pub async fn assert_store_empty(app: &TestApp, case: &str) {
    let instances = app.store.instance_counts().await.unwrap();
    let operations = app.store.operation_counts().await.unwrap();
    let empty = instances.iter().all(|(_, n)| *n == 0) && operations.is_empty();
    assert!(
        empty,
        "{case}: the store changed: {instances:?}, {operations:?}"
    );
}
