//! The broker killed (SIGKILL, by the crash hook `WAYBACK_TEST_KILL_AT`) at the steps of a plan
//! change between single and HA (issue 15 point 2), then started again on the same data
//! directory, with real PostgreSQL, etcd and Patroni: `small` → `ha-small` is killed at one
//! step, `ha-small` → `small` at another, and each operation still ends `succeeded`; after the
//! change back the instance is a plain single cluster (no member directory, no Patroni files,
//! no key of the scope in etcd) whose superuser logs in, and the delete removes it.
//!
//! Run: `bash scripts/test ha_update_crash::` (needs `patroni` and `etcd`).

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::etcd::{ha_binaries_available, Etcd};
use crate::common::*;
use crate::ha_broker_crash::{done, patroni_pid, Cleanup, WAIT};
use crate::restart::harness::{Client, Site};

macro_rules! killed_at {
    ($($test:ident: $up:literal, $down:literal;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            killed_at($up, $down).await
        }
    )*};
}

killed_at! {
    ha_update_at_adopt_single_and_release: "ha_adopt_single", "ha_release";
    ha_update_after_adopt_single_and_drop_standby: "ha_adopt_single:after", "ha_drop_standby";
    ha_update_at_wait_standby_and_after_release: "ha_wait_standby", "ha_release:after";
}

/// PATCHes the plan; the operation id, if the killed broker answered.
async fn patch(client: &Client, id: &str, to: &str, from: &str) -> Option<String> {
    let body = json!({
        "service_id": SERVICE_ID,
        "plan_id": to,
        "previous_values": { "plan_id": from, "service_id": SERVICE_ID },
    });
    let r = client
        .req(
            Method::PATCH,
            &format!("/v2/service_instances/{id}?accepts_incomplete=true"),
        )
        .json(&body)
        .send()
        .await
        .ok()?;
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body["operation"].as_str().map(String::from)
}

async fn succeeded(client: &Client, id: &str, op: Option<&str>, what: &str) {
    let (status, body) = done(client, id, op).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{what}: {body}"
    );
}

async fn killed_at(up: &str, down: &str) {
    if !pg_available() || !ha_binaries_available() {
        return;
    }
    let etcd = Etcd::start().await;
    let root = test_root();
    let mut site = Site::new(root.path());
    site.env
        .push(("WAYBACK_HA_DCS_ENDPOINTS".into(), etcd.endpoint()));
    let client = site.client();
    let id = new_id();
    let clusters = site.data_dir.join("clusters");
    let key = |m: &str| {
        let key = wayback::domain::InstanceId::parse(id.clone())
            .unwrap()
            .member_key(m);
        clusters.join(key.as_str())
    };
    let dirs = [key("m1"), key("m2")];
    let single = clusters.join(&id);
    let _cleanup = Cleanup(vec![dirs[0].clone(), dirs[1].clone(), single.clone()]);

    // The provision of `small` never reaches the HA steps' points.
    let mut broker = site.start_with(Some(up));
    client.wait_healthy().await;
    let (status, body) = client
        .put_instance(&id, &provision_body(SMALL, "ha-update-crash"))
        .await
        .expect("an answer");
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    succeeded(&client, &id, body["operation"].as_str(), "provision").await;

    let op = patch(&client, &id, HA_SMALL, SMALL).await;
    broker.wait_killed(up, WAIT).await;
    drop(broker);
    let mut broker = site.start_with(Some(down));
    client.wait_healthy().await;
    succeeded(
        &client,
        &id,
        op.as_deref(),
        &format!("to HA, killed at {up}"),
    )
    .await;
    assert!(
        !single.exists(),
        "killed at {up}: the cluster moved under m1"
    );
    assert_eq!(
        dirs.iter().filter_map(|d| patroni_pid(d)).count(),
        2,
        "killed at {up}: one Patroni per member"
    );

    let op = patch(&client, &id, SMALL, HA_SMALL).await;
    broker.wait_killed(down, WAIT).await;
    drop(broker);
    let _broker = site.start();
    client.wait_healthy().await;
    succeeded(
        &client,
        &id,
        op.as_deref(),
        &format!("to single, killed at {down}"),
    )
    .await;
    assert!(
        dirs.iter().all(|d| !d.exists() && patroni_pid(d).is_none()),
        "killed at {down}: a member is left"
    );
    assert!(single.join("pgdata").is_dir() && !single.join("patroni").exists());
    assert_eq!(etcd.count_prefix(&format!("/wayback/{id}/")).await, 0);
    let mut admin = client.admin(&id).await;
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(one, 1);
    drop(admin);

    let (status, body) = client.delete_instance(&id).await.expect("an answer");
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, body) = done(&client, &id, body["operation"].as_str()).await;
    assert_delete_finished(status, &body);
    assert!(!single.exists() || !single.join("pgdata").exists());
}
