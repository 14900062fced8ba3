//! HA plans' refusals (issue 15): a provision of plan `ha-small` the deployment cannot serve is
//! a 422 naming what to do, before the 202, and changes nothing; so is a plan change to an HA
//! plan the deployment cannot serve. What is served is provisioned (`osb_ha_provision`) or
//! changed (`osb_ha_update`).

use crate::common;

use common::osb_client::*;
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn refused(app: &TestApp, parameters: Value) -> String {
    let id = new_id();
    let mut body = provision_body(HA_SMALL, "orders");
    body["parameters"] = parameters;
    let r = app.put_instance(&id, &body).await;
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    let text = body["description"].as_str().unwrap_or_default().to_string();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    assert!(
        app.store.get_instance(&iid(&id)).await.unwrap().is_none(),
        "nothing was created: {text}"
    );
    text
}

#[tokio::test]
async fn ha_plans_without_a_coordinator_are_refused_naming_the_setting() {
    let app = spawn_fast_app().await;
    let text = refused(&app, json!({})).await;
    assert!(
        text.contains("ha.dcs_endpoints") && text.contains("WAYBACK_HA_DCS_ENDPOINTS"),
        "{text}"
    );
    assert!(text.contains("2 members, sync commits"), "{text}");
    assert_store_empty(&app, "no coordinator").await;
}

#[tokio::test]
async fn ha_plans_are_refused_when_fewer_agents_than_members_run_ha_with_room() {
    let app = spawn_fast_app_with(|s| {
        s.ha.dcs_endpoints = vec!["127.0.0.1:2379".into()];
        s.agents.urls = wayback::config::parse_agent_list("a1=https://127.0.0.1:1").unwrap();
        s.agents.password = Some("agents-pw".to_string().into());
    })
    .await;
    let text = refused(&app, json!({})).await;
    // The fake runtime surveys no agent: none has room (the pure choice over agents'
    // answers is placement's unit tests; two real agents are `ha_agents_osb`).
    assert!(
        text.contains("each on its own database VM")
            && text.contains("0 of this broker's agents have room and run HA members"),
        "{text}"
    );
    assert_store_empty(&app, "agents without HA").await;
}

#[tokio::test]
async fn ha_plans_are_never_followers_or_clones() {
    let app = spawn_fast_app_with(|s| s.ha.dcs_endpoints = vec!["127.0.0.1:2379".into()]).await;
    let text = refused(&app, json!({ "follow": "production" })).await;
    assert!(text.contains("cannot follow another instance"), "{text}");
    let text = refused(&app, json!({ "clone-from": "production" })).await;
    assert!(text.contains("clone into a plan without HA"), "{text}");
    // Anything else is provisioned (`osb_ha_provision`).
    assert_store_empty(&app, "HA refusals").await;
}

/// A plan change between single and HA is served (`osb_ha_update`), except where an HA
/// provision would be refused: here, without a coordinator.
#[tokio::test]
async fn a_plan_change_to_ha_without_a_coordinator_is_refused() {
    let app = spawn_fast_app().await;
    let o = Osb::new(&app);
    let id = app.provision_ready("production").await;
    let ops_before = app.store.operation_counts().await.unwrap();
    let body = json!({
        "service_id": SERVICE_ID,
        "plan_id": HA_SMALL,
        "previous_values": { "plan_id": SMALL, "service_id": SERVICE_ID },
    });
    let r = o.patch(&id, &body, true).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let answer: Value = r.json().await.unwrap();
    let text = answer["description"].as_str().unwrap_or_default();
    assert!(text.contains("ha.dcs_endpoints"), "{text}");
    assert_eq!(app.store.operation_counts().await.unwrap(), ops_before);
    let record = app.store.get_instance(&iid(&id)).await.unwrap().unwrap();
    assert_eq!(record.plan_id, SMALL);
}

/// A binding PUT with `parameters`, synchronous; the credentials.
async fn bind_with(app: &TestApp, instance: &str, parameters: Value) -> Value {
    let mut body = bind_body();
    body["parameters"] = parameters;
    let r = app
        .osb(reqwest::Method::PUT, &bnd(instance, &new_id()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.unwrap();
    body["credentials"].clone()
}

/// The credentials of an instance with two HA members recorded (here the rows are written
/// directly; `osb_ha_provision` provisions them): `uri` and `jdbcUrl` name both, `host`/`port`
/// the member Patroni shows as leader (the first member while Patroni cannot be asked), a
/// read-only binding prefers the standby. A binding's role is made on the leader, so the first
/// binding is made before the rows exist and its credentials read back (`GET`) after.
#[tokio::test]
async fn an_ha_instances_credentials_name_every_member() {
    use wayback::runtime::{ClusterRuntime, ClusterSpec, Durability, HaMemberSpec, HaSeed};
    use wayback::store::HaMemberRecord;
    let app = spawn_fast_app().await;
    let id = app.provision_ready("orders").await;
    let early = new_id();
    let r = app
        .osb(reqwest::Method::PUT, &bnd(&id, &early))
        .json(&bind_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let record = app.store.get_instance(&iid(&id)).await.unwrap().unwrap();
    let first_port = record.port.unwrap();
    let member = |name: &str, host: Option<&str>, port: u16, rest_port: u16| HaMemberRecord {
        instance_id: iid(&id),
        member: name.into(),
        agent: String::new(),
        agent_host: host.map(String::from),
        port,
        rest_port,
        created_at: 0,
    };
    app.store
        .ensure_ha_member(&member("m1", None, first_port, 45998))
        .await
        .unwrap();
    app.store
        .ensure_ha_member(&member("m2", Some("10.1.2.3"), 45999, 45997))
        .await
        .unwrap();

    // Patroni cannot be asked (no scope yet): host/port are the first member's.
    let r = app
        .osb(reqwest::Method::GET, &bnd(&id, &early))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let c = r.json::<Value>().await.unwrap()["credentials"].clone();
    let uri = c["uri"].as_str().unwrap();
    assert!(
        uri.contains(&format!(":{first_port},10.1.2.3:45999/"))
            && uri.ends_with("?target_session_attrs=read-write&sslmode=verify-full"),
        "{uri}"
    );
    assert!(
        c["jdbcUrl"]
            .as_str()
            .unwrap()
            .contains("&targetServerType=primary&"),
        "{c}"
    );
    assert_eq!(c["port"], first_port, "{c}");
    assert_eq!(c["hosts"].as_array().unwrap().len(), 2, "{c}");

    // m2 leads: host/port name it; a read-only binding prefers the standby.
    let spec = HaMemberSpec {
        cluster: ClusterSpec {
            instance: iid(&id).member_key("m2"),
            port: 45999,
            settings: Default::default(),
            require_tls: false,
        },
        member: "m2".into(),
        seed: HaSeed::FromLeader,
        dcs: vec![],
        rest_port: 45997,
        advertise_host: "10.1.2.3".into(),
        durability: Durability::Sync,
        replication_role: "wb_repl".into(),
        replication_password: "r".to_string().into(),
        superuser_password: "s".to_string().into(),
        peer_addresses: vec![],
        archive: None,
        machine: None,
    };
    app.fake().ha_start_member(&spec).await.unwrap();
    let c = bind_with(&app, &id, json!({})).await;
    assert_eq!(
        (c["host"].as_str(), c["port"].as_u64()),
        (Some("10.1.2.3"), Some(45999))
    );
    let r = bind_with(&app, &id, json!({"read_only": true})).await;
    assert!(
        r["uri"]
            .as_str()
            .unwrap()
            .contains("?target_session_attrs=prefer-standby&"),
        "{r}"
    );
    assert!(
        r["jdbcUrl"]
            .as_str()
            .unwrap()
            .contains("&targetServerType=preferSecondary&"),
        "{r}"
    );
    assert_eq!(r["read_only"], true, "{r}");
}

/// The OSB fetch of an instance with two HA members recorded shows each with Patroni's view,
/// and says that both share one machine.
#[tokio::test]
async fn the_fetch_shows_each_member_and_a_shared_machine() {
    use wayback::runtime::{ClusterRuntime, ClusterSpec, Durability, HaMemberSpec, HaSeed};
    use wayback::store::HaMemberRecord;
    let app = spawn_fast_app().await;
    let id = app.provision_ready("orders").await;
    let port = app
        .store
        .get_instance(&iid(&id))
        .await
        .unwrap()
        .unwrap()
        .port
        .unwrap();
    for (name, p, rest) in [("m1", port, 45990), ("m2", 45991, 45992)] {
        app.store
            .ensure_ha_member(&HaMemberRecord {
                instance_id: iid(&id),
                member: name.into(),
                agent: String::new(),
                agent_host: None,
                port: p,
                rest_port: rest,
                created_at: 0,
            })
            .await
            .unwrap();
    }
    let fetch = || async {
        let r = app
            .osb(reqwest::Method::GET, &format!("/v2/service_instances/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json::<Value>().await.unwrap()
    };
    // Patroni cannot be asked yet: members without roles, and a note saying why.
    let body = fetch().await;
    let ha = &body["ha"];
    assert_eq!(ha["members"][0]["name"], "m1", "{body}");
    assert_eq!(ha["members"][1]["machine"], "broker", "{body}");
    assert!(ha["members"][0]["role"].is_null(), "{body}");
    let notes = ha["notes"].to_string();
    assert!(
        notes.contains("both members share one machine") && notes.contains("could not be asked"),
        "{body}"
    );
    for (member, p, seed) in [
        ("m1", port, HaSeed::Adopt),
        ("m2", 45991, HaSeed::FromLeader),
    ] {
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
            rest_port: 1,
            advertise_host: "127.0.0.1".into(),
            durability: Durability::Sync,
            replication_role: "wb_repl".into(),
            replication_password: "r".to_string().into(),
            superuser_password: "s".to_string().into(),
            peer_addresses: vec![],
            archive: None,
            machine: None,
        };
        app.fake().ha_start_member(&spec).await.unwrap();
    }
    let body = fetch().await;
    let m = &body["ha"]["members"];
    assert_eq!(
        (m[0]["role"].as_str(), m[1]["role"].as_str()),
        (Some("leader"), Some("sync_standby")),
        "{body}"
    );
    assert_eq!(
        (m[1]["state"].as_str(), m[1]["lag_bytes"].as_u64()),
        (Some("streaming"), Some(0))
    );
    assert_eq!(m[0]["timeline"], 2, "{body}");
    assert!(
        !body["ha"]["notes"]
            .to_string()
            .contains("could not be asked"),
        "{body}"
    );
}
