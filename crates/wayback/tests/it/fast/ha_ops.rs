//! HA instances in operation (issue 15 point 5) on the fake runtime: the OSB fetch's and the
//! `/wayback/v1` document's `ha` with the failover count and the last failover, the operator's
//! `POST /wayback/v1/instances/{id}/switchover` (who may ask, the 409s, a switchover), and the
//! HA gauges of `GET /metrics`.

use crate::common;

use common::osb_client::iid;
use common::wayback_client::{self, assert_refused, operator, Auth};
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use wayback::runtime::{ClusterRuntime, ClusterSpec, Durability, HaMemberSpec, HaSeed};
use wayback::store::HaMemberRecord;

/// A ready instance with members m1 (leader) and m2 (sync standby) recorded and running.
async fn ha_instance(app: &TestApp, name: &str) -> String {
    let id = app.provision_ready(name).await;
    let port = app
        .store
        .get_instance(&iid(&id))
        .await
        .unwrap()
        .unwrap()
        .port
        .unwrap();
    for (member, p, rest, seed) in [
        ("m1", port, 45980, HaSeed::Adopt),
        ("m2", 45981, 45982, HaSeed::FromLeader),
    ] {
        app.store
            .ensure_ha_member(&HaMemberRecord {
                instance_id: iid(&id),
                member: member.into(),
                agent: String::new(),
                agent_host: None,
                port: p,
                rest_port: rest,
                created_at: 0,
            })
            .await
            .unwrap();
        let spec = HaMemberSpec {
            cluster: ClusterSpec {
                instance: iid(&id),
                port: p,
                settings: Default::default(),
                require_tls: false,
            },
            member: member.into(),
            seed,
            dcs: vec![],
            rest_port: rest,
            advertise_host: "127.0.0.1".into(),
            durability: Durability::Sync,
            replication_role: "wb_repl".into(),
            replication_password: "r".to_string().into(),
            superuser_password: "s".to_string().into(),
            peer_addresses: vec![],
            archive: None,
        };
        app.fake().ha_start_member(&spec).await.unwrap();
    }
    id
}

async fn switchover(
    app: &TestApp,
    id: &str,
    body: Option<Value>,
    auth: Auth<'_>,
) -> (StatusCode, Value) {
    let mut request = app.client.post(format!(
        "{}/wayback/v1/instances/{id}/switchover",
        app.address
    ));
    request = match auth {
        Auth::Basic(user, password) => request.basic_auth(user, Some(password)),
        Auth::Bearer(token) => request.header("Authorization", format!("bearer {token}")),
        Auth::Raw(value) => request.header("Authorization", value),
        Auth::None => request,
    };
    if let Some(body) = body {
        request = request.json(&body);
    }
    let r = request.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn fetch(app: &TestApp, id: &str) -> Value {
    let r = app
        .osb(reqwest::Method::GET, &format!("/v2/service_instances/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

#[tokio::test]
async fn a_switchover_is_the_operators_and_shows_as_the_last_failover() {
    let app = spawn_fast_app().await;
    let id = ha_instance(&app, "orders").await;

    // Before: the first leader's promotion is no failover.
    let body = fetch(&app, &id).await;
    assert_eq!(body["ha"]["failovers"], 0, "{body}");
    assert!(body["ha"].get("last_failover").is_none(), "{body}");

    // Only the operator may ask.
    let (status, _) = switchover(&app, &id, None, Auth::None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = switchover(&app, &id, None, Auth::Basic(USER, "wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = switchover(&app, &id, Some(json!({"to": 3})), operator(&app)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // A switchover to the leader, or to a member that does not exist, is refused.
    let (status, body) = switchover(&app, &id, Some(json!({"to": "m1"})), operator(&app)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["description"]
            .as_str()
            .unwrap()
            .contains("\"m1\" leads already"),
        "{body}"
    );
    let (status, body) = switchover(&app, &id, Some(json!({"to": "m9"})), operator(&app)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["description"].as_str().unwrap().contains("m1, m2"),
        "{body}"
    );

    let (status, body) = switchover(&app, &id, None, operator(&app)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"instance_id": id, "from": "m1", "to": "m2"}));

    // The fetch and the API's document show it.
    let body = fetch(&app, &id).await;
    let ha = &body["ha"];
    assert_eq!(ha["failovers"], 1, "{body}");
    let last = &ha["last_failover"];
    assert_eq!(
        (
            &last["new_leader"],
            &last["from_timeline"],
            &last["to_timeline"]
        ),
        (&json!("m2"), &json!(2), &json!(3)),
        "{body}"
    );
    assert!(
        last["at"].is_string() && last["reason"].is_string(),
        "{body}"
    );
    let doc = wayback_client::get(&app, &format!("/instances/{id}"), operator(&app)).await;
    assert_eq!(doc.status, StatusCode::OK, "{}", doc.body);
    let ha = &doc.body["ha"];
    assert_eq!(ha["failovers"], 1, "{}", doc.body);
    assert_eq!(ha["last_failover"]["new_leader"], "m2", "{}", doc.body);
    let roles: Vec<(&str, &str)> = ha["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m["role"].as_str().unwrap()))
        .collect();
    assert_eq!(
        roles,
        [("m1", "sync_standby"), ("m2", "leader")],
        "{}",
        doc.body
    );
    assert!(
        ha["members"][0]["machine"].is_null(),
        "the broker's machine: {}",
        doc.body
    );
}

#[tokio::test]
async fn a_switchover_is_refused_without_ha_or_a_healthy_standby() {
    let app = spawn_fast_app().await;
    let single = app.provision_ready("single").await;
    let (status, body) = switchover(&app, &single, None, operator(&app)).await;
    let answer = wayback_client::Answer {
        status,
        www_authenticate: None,
        body,
    };
    assert_refused(
        &answer,
        StatusCode::CONFLICT,
        "Conflict",
        "is not highly available",
        "a single-member instance",
    );
    // A single instance's document has no `ha`.
    let doc = wayback_client::get(&app, &format!("/instances/{single}"), operator(&app)).await;
    assert!(doc.body.get("ha").is_none(), "{}", doc.body);

    let id = ha_instance(&app, "orders").await;
    app.fake().ha_set_member_state(&id, "m2", "stopped");
    let (status, body) = switchover(&app, &id, None, operator(&app)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let text = body["description"].as_str().unwrap();
    assert!(
        text.contains("no healthy standby") && text.contains("m2 is sync_standby, stopped"),
        "{text}"
    );
    let (status, body) = switchover(&app, &id, Some(json!({"to": "m2"})), operator(&app)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["description"]
            .as_str()
            .unwrap()
            .contains("\"m2\" is not a healthy standby"),
        "{body}"
    );
    assert_eq!(
        app.fake().ha_scope(&id).unwrap().leader().unwrap().name,
        "m1",
        "nothing moved"
    );
    // An unknown instance is a 404, as for a GET.
    let (status, _) = switchover(&app, &new_id(), None, operator(&app)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_metrics_show_each_members_role_lag_and_the_failovers() {
    let app = spawn_fast_app().await;
    let id = ha_instance(&app, "orders").await;
    app.fake()
        .ha_switchover(&iid(&id), Some("m2"))
        .await
        .unwrap();
    let text = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        format!("wayback_ha_member_role{{instance=\"{id}\",member=\"m2\",role=\"leader\"}} 1\n"),
        format!(
            "wayback_ha_member_role{{instance=\"{id}\",member=\"m1\",role=\"sync_standby\"}} 1\n"
        ),
        format!("wayback_ha_failovers_total{{instance=\"{id}\"}} 1\n"),
        format!("wayback_ha_replication_lag_bytes{{instance=\"{id}\",member=\"m1\"}} 0\n"),
    ] {
        assert!(text.contains(&line), "{line} missing from:\n{text}");
    }
    assert!(!text.contains("orders"), "no instance name in a label");
}

/// `wayback switchover` (the endpoint's command-line twin) refuses the same way, before it
/// opens a runtime: exit 1 with the reason.
#[tokio::test]
async fn the_switchover_command_refuses_an_instance_that_is_not_ha() {
    let app = spawn_fast_app().await;
    let single = app.provision_ready("single").await;
    let run = |instance: String| {
        let data_dir = app.data_dir.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_wayback"))
                .args(["switchover", &instance])
                .env("WAYBACK_DATA_DIR", &data_dir)
                .env("WAYBACK_LOG", "warn")
                .output()
                .expect("run wayback switchover")
        })
    };
    let out = run(single.clone()).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("instance {single} is not highly available")),
        "{stderr}"
    );
    let out = run(new_id()).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no instance"), "{stderr}");
}
