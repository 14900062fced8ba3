//! Identical concurrent requests (issue 12, point 4): five identical PUTs of one binding id, or
//! of one instance id, fired at once, all get the answer the first got — 202 with the same
//! operation, or the finished answer — never a 409 "different parameters". The real tier's
//! `concurrent_pg` runs the same bursts on a PostgreSQL state database.

use crate::common;

use common::fake_runtime::Call;
use common::osb_client::*;
use common::*;
use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::Value;

const N: usize = 5;

/// Fires `N` identical requests at once; answers (status, body) in the order they were sent.
async fn burst(send: impl Fn() -> reqwest::RequestBuilder) -> Vec<(StatusCode, Value)> {
    let replies = join_all((0..N).map(|_| send().send())).await;
    let mut out = Vec::new();
    for r in replies {
        let r = r.expect("request sent");
        out.push((r.status(), r.json().await.unwrap_or(Value::Null)));
    }
    out
}

/// Every answer is 202 with one and the same operation.
fn one_operation(what: &str, answers: &[(StatusCode, Value)]) -> String {
    let ops: Vec<_> = answers
        .iter()
        .map(|(s, b)| {
            assert_eq!(*s, StatusCode::ACCEPTED, "{what}: {answers:?}");
            b["operation"].as_str().expect("operation").to_string()
        })
        .collect();
    assert!(ops.iter().all(|o| *o == ops[0]), "{what}: {ops:?}");
    ops[0].clone()
}

#[tokio::test]
async fn identical_concurrent_async_binds_share_one_operation() {
    async_bind_burst(&spawn_fast_app().await).await;
}

#[tokio::test]
async fn identical_concurrent_sync_binds_get_the_same_credentials() {
    sync_bind_burst(&spawn_fast_app().await).await;
}

#[tokio::test]
async fn identical_concurrent_provisions_share_one_operation() {
    provision_burst(&spawn_fast_app().await).await;
}

/// Five identical asynchronous binds while the first one's role is being created: one
/// operation for all, one role.
pub async fn async_bind_burst(app: &TestApp) {
    let id = app.provision_ready("burst-bind").await;
    let binding = new_id();
    let path = format!("{}?accepts_incomplete=true", bnd(&id, &binding));
    let creating = app.fake().hold(Call::CreateLoginRole);
    let answers = burst(|| app.osb(Method::PUT, &path).json(&bind_body())).await;
    let op = one_operation("async binds", &answers);
    creating.release();
    let (status, done) = app.poll_binding(&id, &binding, Some(&op)).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (StatusCode::OK, Some("succeeded"))
    );
    let roles = app.fake().cluster(&id).expect("cluster").roles;
    assert_eq!(roles.len(), 1, "one role for one binding: {roles:?}");
}

/// Five identical synchronous binds: one creates (201), the others wait for it and answer 200
/// with the same credentials.
pub async fn sync_bind_burst(app: &TestApp) {
    let id = app.provision_ready("burst-sync").await;
    let binding = new_id();
    let path = bnd(&id, &binding);
    let answers = burst(|| app.osb(Method::PUT, &path).json(&bind_body())).await;
    let created = answers.iter().filter(|(s, _)| *s == StatusCode::CREATED);
    assert_eq!(created.count(), 1, "one bind creates: {answers:?}");
    for (status, body) in &answers {
        assert!(
            matches!(*status, StatusCode::CREATED | StatusCode::OK),
            "{answers:?}"
        );
        assert_eq!(
            body["credentials"], answers[0].1["credentials"],
            "{answers:?}"
        );
    }
}

/// Five identical provisions while the first one's cluster is being created: one operation.
pub async fn provision_burst(app: &TestApp) {
    let id = new_id();
    let path = format!("{}?accepts_incomplete=true", inst(&id));
    let body = provision_body(SMALL, "burst-provision");
    let creating = app.fake().hold(Call::CreateCluster);
    let answers = burst(|| app.osb(Method::PUT, &path).json(&body)).await;
    let op = one_operation("provisions", &answers);
    creating.release();
    let (status, done) = app.poll_instance(&id, Some(&op)).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (StatusCode::OK, Some("succeeded"))
    );
}
