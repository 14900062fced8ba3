//! Read-only bindings, followers' bindings and followers' lag, on the fake runtime (issue 14
//! part 3). A follower here is an instance made a follower by a test-only write of its
//! `leader_id` (`common::followers`) whose fake cluster is a standby caught up with its leader;
//! the real tier's `readonly_bindings` shows the same on PostgreSQL.
//!
//! - `read_only` on a leader: a read-only role (`RoleAccess::ReadOnly`), `"read_only": true` in
//!   the credentials, 409 for the same binding id with another `read_only`, 400 for a value
//!   that is not a boolean (`osb_bad_input` has the golden bodies);
//! - a follower's binding: its role made (and dropped) on the leader, read-only whatever was
//!   asked, 422 for an explicit `read_only: false`, credentials pointing at the follower;
//!   unbind still succeeds once the leader is gone;
//! - the leader's bindings list the follower in `replica_uris`;
//! - `GET /v2/service_instances/:id`, `/wayback/v1/instances/:id` and `GET /metrics` show the
//!   follower streaming with no lag, and `unknown` (never a 500) when it does not answer.

use crate::common;

use common::fake_runtime::Call;
use common::followers::{set_leader, set_state};
use common::osb_client::*;
use common::wayback_client as api;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use wayback::runtime::RuntimeError;

/// A binding PUT with `parameters`, synchronous.
async fn bind_with(app: &TestApp, instance: &str, binding: &str, parameters: Value) -> Reply {
    let mut body = bind_body();
    body["parameters"] = parameters;
    Reply::of(
        app.osb(Method::PUT, &bnd(instance, binding))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// A leader "production" and a follower "reports" of it, caught up.
async fn leader_and_follower(app: &TestApp) -> (String, String) {
    let leader = app.provision_ready("production").await;
    let follower = app.provision_ready("reports").await;
    set_leader(app, &follower, Some(&leader)).await;
    app.fake().make_standby(&follower);
    (leader, follower)
}

fn port_of(app: &TestApp, instance: &str) -> u64 {
    u64::from(app.fake().cluster(instance).expect("its cluster").port)
}

#[tokio::test]
async fn a_read_only_binding_gets_a_read_only_role_and_says_so() {
    let app = spawn_fast_app().await;
    let id = app.provision_ready("production").await;
    let binding = new_id();
    let created = bind_with(&app, &id, &binding, json!({"read_only": true})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let credentials = &created.body["credentials"];
    assert_eq!(credentials["read_only"], true, "{credentials}");
    let role = credentials["username"].as_str().unwrap();
    let cluster = app.fake().cluster(&id).unwrap();
    assert!(cluster.read_only_roles.contains(role), "{cluster:?}");
    assert!(
        credentials.get("replica_uris").is_none(),
        "no followers, no replica_uris: {credentials}"
    );

    // The same PUT again: 200 with the same credentials; another read_only: 409.
    let again = bind_with(&app, &id, &binding, json!({"read_only": true})).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body["credentials"]["username"], role);
    for other in [json!({"read_only": false}), json!({})] {
        let conflict = bind_with(&app, &id, &binding, other.clone()).await;
        assert_eq!(
            conflict.status,
            StatusCode::CONFLICT,
            "{other}: {}",
            conflict.body
        );
        let says = conflict.body["description"].as_str().unwrap();
        assert!(says.contains("read_only true"), "{says}");
    }

    // A writable binding says nothing of read_only, and its role is no read-only one.
    let writable = app.bind_sync(&id, &new_id()).await;
    assert!(writable.get("read_only").is_none(), "{writable}");
    let cluster = app.fake().cluster(&id).unwrap();
    let writer = writable["username"].as_str().unwrap();
    assert!(cluster.roles.contains(writer) && !cluster.read_only_roles.contains(writer));
    let explicit = bind_with(&app, &id, &new_id(), json!({"read_only": false})).await;
    assert_eq!(explicit.status, StatusCode::CREATED, "{}", explicit.body);
    assert!(explicit.body["credentials"].get("read_only").is_none());
}

#[tokio::test]
async fn a_followers_binding_is_a_read_only_role_made_on_its_leader() {
    let app = spawn_fast_app().await;
    let (leader, follower) = leader_and_follower(&app).await;

    let refused = bind_with(&app, &follower, &new_id(), json!({"read_only": false})).await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.body
    );
    let says = refused.body["description"].as_str().unwrap();
    assert!(says.contains("followers are read-only"), "{says}");

    let binding = new_id();
    let created = bind_with(&app, &follower, &binding, json!({})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let credentials = &created.body["credentials"];
    assert_eq!(credentials["read_only"], true);
    assert_eq!(
        credentials["port"],
        port_of(&app, &follower),
        "at the follower"
    );
    let role = credentials["username"].as_str().unwrap().to_string();
    let on_leader = app.fake().cluster(&leader).unwrap();
    assert!(
        on_leader.read_only_roles.contains(&role),
        "made on the leader"
    );
    assert!(!app.fake().cluster(&follower).unwrap().roles.contains(&role));
    let (_, op) = app.poll_binding(&follower, &binding, None).await;
    assert_eq!(op["state"], "succeeded", "{op}");

    // The leader's bindings list the follower, with their own user and password.
    let leader_creds = app.bind_sync(&leader, &new_id()).await;
    let replicas = leader_creds["replica_uris"]
        .as_array()
        .expect("replica_uris");
    let uri = leader_creds["uri"].as_str().unwrap();
    let expected = uri.replace(
        &format!(":{}/", port_of(&app, &leader)),
        &format!(":{}/", port_of(&app, &follower)),
    );
    assert_eq!(replicas, &vec![json!(expected)], "{leader_creds}");
    assert!(
        credentials.get("replica_uris").is_none(),
        "a follower lists no replicas"
    );

    // Unbind drops the role on the leader.
    let r = app.delete_binding(&follower, &binding, false).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(!app.fake().cluster(&leader).unwrap().roles.contains(&role));

    // With the leader gone, an unbind of the follower still succeeds (nothing left to drop).
    let late = new_id();
    let created = bind_with(&app, &follower, &late, json!({"read_only": true})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    set_state(&app, &leader, "deleted").await;
    let drops_before = calls_of(&app, Call::DropLoginRole);
    let r = app.delete_binding(&follower, &late, false).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(calls_of(&app, Call::DropLoginRole), drops_before);
}

fn calls_of(app: &TestApp, call: Call) -> usize {
    app.fake()
        .calls()
        .iter()
        .filter(|(c, _)| *c == call)
        .count()
}

#[tokio::test]
async fn lag_is_shown_in_the_osb_fetch_the_api_and_the_metrics() {
    let app = spawn_fast_app().await;
    let (leader, follower) = leader_and_follower(&app).await;

    let fetched = Reply::of(Osb::new(&app).get(&inst(&follower)).await).await;
    assert_eq!(fetched.status, StatusCode::OK, "{}", fetched.body);
    assert_eq!(
        fetched.body["follower"],
        json!({
            "leader": {"id": leader, "name": "production"},
            "state": "streaming",
            "lag_bytes": 0,
            "lag_seconds": 0.0,
            "same_machine": true,
        })
    );
    assert!(fetched.body.get("followers").is_none());
    let fetched = Reply::of(Osb::new(&app).get(&inst(&leader)).await).await;
    assert_eq!(
        fetched.body["followers"],
        json!([{"id": follower, "name": "reports", "state": "streaming",
                "lag_bytes": 0, "lag_seconds": 0.0}])
    );

    let view = api::get(&app, &format!("/instances/{follower}"), api::operator(&app)).await;
    assert_eq!(view.status, StatusCode::OK, "{}", view.body);
    assert_eq!(view.body["follower"]["leader"]["name"], "production");
    assert_eq!(view.body["follower"]["state"], "streaming");
    assert_eq!(view.body["follower"]["lag_bytes"], 0);
    let view = api::get(&app, &format!("/instances/{leader}"), api::operator(&app)).await;
    assert_eq!(view.body["followers"][0]["id"], follower.as_str());
    assert_eq!(view.body["followers"][0]["state"], "streaming");

    let metrics = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let labels = format!("{{instance=\"{follower}\",leader=\"{leader}\"}}");
    for line in [
        format!("wayback_follower_streaming{labels} 1\n"),
        format!("wayback_follower_lag_bytes{labels} 0\n"),
        format!("wayback_follower_lag_seconds{labels} 0\n"),
        format!("wayback_follower_xmin_age{labels}"),
    ] {
        let expected = !line.starts_with("wayback_follower_xmin_age");
        assert_eq!(metrics.contains(&line), expected, "{line}: {metrics}");
    }

    // A follower that does not answer: state unknown, never an error.
    let away = || RuntimeError::Unreachable {
        agent: "a1".into(),
        message: "connection refused".into(),
    };
    app.fake().fail_next(Call::StandbyStatus, away());
    let fetched = Reply::of(Osb::new(&app).get(&inst(&follower)).await).await;
    assert_eq!(fetched.status, StatusCode::OK, "{}", fetched.body);
    assert_eq!(fetched.body["follower"]["state"], "unknown");
    assert_eq!(fetched.body["follower"]["lag_bytes"], Value::Null);
    app.fake().fail_next(Call::StandbyStatus, away());
    let view = api::get(&app, &format!("/instances/{leader}"), api::operator(&app)).await;
    assert_eq!(view.status, StatusCode::OK, "{}", view.body);
    assert_eq!(view.body["followers"][0]["state"], "unknown");
}
