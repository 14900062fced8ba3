//! Plan changes between single and HA through OSB on the fake runtime (issue 15 point 2,
//! `jobs/steps/ha_update.rs`): `small` → `ha-small` hands the running cluster to Patroni as the
//! first member (moved under `<id>~m1`, its port kept) and adds a standby; `ha-small` → `small`
//! switches over to the first member if it does not lead, destroys the standby, releases the
//! first member as the instance's single cluster and forgets the members. Each step's runtime
//! call failing once is retried (the steps are idempotent); a failure before the move leaves
//! the single instance as it was; the refusals that stay are 422s before the 202 (with agents,
//! only the one an HA provision has: too few agents with room).

use crate::common;

use common::fake_runtime::Call;
use common::followers::set_leader;
use common::osb_client::*;
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use wayback::domain::InstanceId;
use wayback::pg::PgError;
use wayback::runtime::{ClusterStatus, HaRole, RuntimeError};

async fn ha_app() -> TestApp {
    spawn_fast_app_with(|s| s.ha.dcs_endpoints = vec!["127.0.0.1:2379".into()]).await
}

fn key(id: &str, member: &str) -> String {
    InstanceId::parse(id)
        .unwrap()
        .member_key(member)
        .to_string()
}

fn patch_body(to: &str, from: &str) -> Value {
    json!({
        "service_id": SERVICE_ID,
        "plan_id": to,
        "previous_values": { "plan_id": from, "service_id": SERVICE_ID },
    })
}

/// PATCHes `id` from plan `from` to `to` and waits for the operation's end.
async fn change_plan(app: &TestApp, id: &str, to: &str, from: &str) -> Value {
    let r = Osb::new(app).patch(id, &patch_body(to, from), true).await;
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, done) = app.poll_instance(id, body["operation"].as_str()).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    done
}

/// The PATCH's 422 text; nothing changed.
async fn refused(app: &TestApp, id: &str, to: &str, from: &str) -> String {
    let ops_before = app.store.operation_counts().await.unwrap();
    let r = Osb::new(app).patch(id, &patch_body(to, from), true).await;
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(app.store.operation_counts().await.unwrap(), ops_before);
    let record = app.store.get_instance(&iid(id)).await.unwrap().unwrap();
    assert_eq!(record.plan_id, from);
    body["description"].as_str().unwrap_or_default().to_string()
}

fn refusal() -> RuntimeError {
    PgError::NotRunning {
        instance: "x".into(),
    }
    .into()
}

#[tokio::test]
async fn single_to_ha_adopts_the_running_cluster_and_back_keeps_it() {
    let app = ha_app().await;
    let id = app.provision_ready("orders").await;
    let binding = app.bind_sync(&id, &new_id()).await;
    let port = app.fake().cluster(&id).unwrap().port;
    let role = binding["username"].as_str().unwrap().to_string();
    let (m1, m2) = (key(&id, "m1"), key(&id, "m2"));

    // Single → HA: the cluster moves under m1 with its port and roles; a standby is seeded.
    let done = change_plan(&app, &id, HA_SMALL, SMALL).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(!app.fake().exists(&id), "nothing is left under the id");
    let first = app.fake().cluster(&m1).expect("the first member");
    assert_eq!(
        first.port, port,
        "the first member keeps the instance's port"
    );
    assert!(first.roles.contains(&role), "{first:?}");
    assert!(!app.fake().calls_for(&m1).contains(&Call::CreateCluster));
    assert_eq!(
        app.fake().calls_for(&m2).first(),
        Some(&Call::HaStartMember)
    );
    let scope = app.fake().ha_scope(&id).unwrap();
    assert_eq!(scope.leader().unwrap().name, "m1");
    assert_eq!(scope.member("m2").unwrap().role, HaRole::SyncStandby);
    let record = app.store.get_instance(&iid(&id)).await.unwrap().unwrap();
    assert_eq!(
        (record.plan_id.as_str(), record.port),
        (HA_SMALL, Some(port))
    );
    let members = app.store.ha_members(&iid(&id)).await.unwrap();
    assert_eq!(members.len(), 2);
    assert_eq!(members[0].port, port);
    assert!(app
        .store
        .ha_system_identifier(&iid(&id))
        .await
        .unwrap()
        .is_some());
    // A new binding gets the multi-host credentials; its role is made on the leader.
    let b2 = app.bind_sync(&id, &new_id()).await;
    assert!(
        b2["uri"]
            .as_str()
            .unwrap()
            .contains("target_session_attrs=read-write"),
        "{b2}"
    );

    // HA → single: m1 leads, so no switchover; m2 destroyed; m1 released as the id's cluster.
    let done = change_plan(&app, &id, SMALL, HA_SMALL).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(!app.fake().calls_for(&id).contains(&Call::HaSwitchover));
    assert!(app.fake().calls_for(&m2).contains(&Call::Destroy));
    assert!(app.fake().calls_for(&m1).contains(&Call::HaReleaseMember));
    assert!(!app.fake().exists(&m1) && !app.fake().exists(&m2));
    let single = app.fake().cluster(&id).expect("the single cluster again");
    assert_eq!((single.status, single.port), (ClusterStatus::Running, port));
    assert!(
        single.archiving && single.roles.contains(&role),
        "{single:?}"
    );
    assert!(app.fake().ha_scope(&id).is_none());
    assert!(app.store.ha_members(&iid(&id)).await.unwrap().is_empty());
    let record = app.store.get_instance(&iid(&id)).await.unwrap().unwrap();
    assert_eq!(record.plan_id, SMALL);

    // And HA again, as often as asked; then the delete removes every member.
    let done = change_plan(&app, &id, HA_SMALL, SMALL).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    app.deprovision_done(&id).await;
    assert!(!app.fake().exists(&m1) && !app.fake().exists(&m2) && !app.fake().exists(&id));
}

#[tokio::test]
async fn back_to_single_switches_over_to_the_first_member_when_the_standby_leads() {
    let app = ha_app().await;
    let id = app.provision_ready("orders").await;
    let done = change_plan(&app, &id, HA_SMALL, SMALL).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    app.fake().ha_fail_over_to(&id, "m2");
    let done = change_plan(&app, &id, SMALL, HA_SMALL).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(app.fake().calls_for(&id).contains(&Call::HaSwitchover));
    let (m1, m2) = (key(&id, "m1"), key(&id, "m2"));
    assert!(app.fake().exists(&id) && !app.fake().exists(&m1) && !app.fake().exists(&m2));
}

#[tokio::test]
async fn each_runtime_call_failing_once_is_retried_in_both_directions() {
    let app = ha_app().await;
    let id = app.provision_ready("orders").await;
    for call in [Call::HaStartMember, Call::HaStatus, Call::TakeBackup] {
        app.fake().fail_next(call, refusal());
    }
    let done = change_plan(&app, &id, HA_SMALL, SMALL).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(app.fake().ha_scope(&id).unwrap().members.len(), 2);

    app.fake().ha_fail_over_to(&id, "m2");
    for call in [
        Call::HaSwitchover,
        Call::HaReleaseMember,
        Call::ConfigureArchive,
        Call::Start,
    ] {
        app.fake().fail_next(call, refusal());
    }
    let done = change_plan(&app, &id, SMALL, HA_SMALL).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let single = app.fake().cluster(&id).unwrap();
    assert_eq!(single.status, ClusterStatus::Running);
    assert!(app.store.ha_members(&iid(&id)).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_failed_change_to_ha_before_the_move_leaves_the_single_instance_serving() {
    let app = ha_app().await;
    let id = app.provision_ready("orders").await;
    app.fake().fail_next(
        Call::HaStartMember,
        PgError::Setup("patroni is not installed".into()).into(),
    );
    let done = change_plan(&app, &id, HA_SMALL, SMALL).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert!(
        done["description"]
            .as_str()
            .unwrap()
            .starts_with("Updating (HA): handing the running cluster to Patroni"),
        "{done}"
    );
    let record = app.store.get_instance(&iid(&id)).await.unwrap().unwrap();
    assert_eq!(record.plan_id, SMALL);
    assert_eq!(record.state.as_str(), "ready");
    assert!(app.store.ha_members(&iid(&id)).await.unwrap().is_empty());
    assert_eq!(
        app.fake().cluster(&id).unwrap().status,
        ClusterStatus::Running
    );
    // Asked again, it succeeds.
    let done = change_plan(&app, &id, HA_SMALL, SMALL).await;
    assert_eq!(done["state"], "succeeded", "{done}");
}

#[tokio::test]
async fn the_refusals_that_stay_are_422s_before_the_202() {
    // No coordinator: the change to HA names the setting.
    let app = spawn_fast_app().await;
    let id = app.provision_ready("orders").await;
    let text = refused(&app, &id, HA_SMALL, SMALL).await;
    assert!(text.contains("ha.dcs_endpoints"), "{text}");

    // A leader with followers, and a follower.
    let app = ha_app().await;
    let leader = app.provision_ready("production").await;
    let follower = app.provision_ready("reports").await;
    set_leader(&app, &follower, Some(&leader)).await;
    app.fake().make_standby(&follower);
    let text = refused(&app, &leader, HA_SMALL, SMALL).await;
    assert!(text.contains("has followers"), "{text}");
    let text = refused(&app, &follower, HA_SMALL, SMALL).await;
    assert!(
        text.contains("is a follower") && text.contains("unfollow"),
        "{text}"
    );
}

/// With agents the change is served (`ha_update_agents` on two real agents) where an HA
/// provision would be: here the fake runtime surveys no agent, so none has room for the
/// standby, and the change to HA is refused as such a provision is — not for the agents.
#[tokio::test]
async fn a_change_to_ha_with_agents_is_refused_only_without_room_for_the_standby() {
    let app = spawn_fast_app_with(|s| {
        s.ha.dcs_endpoints = vec!["127.0.0.1:2379".into()];
        s.agents.urls = wayback::config::parse_agent_list("a1=https://127.0.0.1:1").unwrap();
        s.agents.password = Some("agents-pw".to_string().into());
    })
    .await;
    let id = app.provision_ready("orders").await;
    let text = refused(&app, &id, HA_SMALL, SMALL).await;
    assert!(
        text.contains("each on its own database VM")
            && text.contains("0 of this broker's agents have room and run HA members"),
        "{text}"
    );
    assert!(!text.contains("only without agents"), "{text}");
}

#[tokio::test]
async fn a_change_between_ha_plans_of_another_shape_is_refused() {
    // A catalog whose `medium` plan is HA with `async` commits (`ha-small` is `sync`).
    let dir = tempfile::tempdir().unwrap();
    let mut doc: Value = serde_json::from_str(wayback::catalog::BUILTIN_CATALOG).unwrap();
    let plans = doc["services"][0]["plans"].as_array_mut().unwrap();
    let medium = plans.iter_mut().find(|p| p["id"] == MEDIUM).unwrap();
    medium["metadata"]["wayback"]["ha"] = json!({ "members": 2, "durability": "async" });
    let catalog = dir.path().join("catalog-ha-async.json");
    std::fs::write(&catalog, doc.to_string()).unwrap();
    let app = spawn_fast_app_with(move |s| {
        s.ha.dcs_endpoints = vec!["127.0.0.1:2379".into()];
        s.catalog = Some(catalog);
    })
    .await;
    let id = new_id();
    let r = app
        .put_instance(&id, &provision_body(HA_SMALL, "orders"))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let body: Value = r.json().await.unwrap();
    let (_, done) = app.poll_instance(&id, body["operation"].as_str()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let text = refused(&app, &id, MEDIUM, HA_SMALL).await;
    assert!(
        text.contains("changes the HA shape") && text.contains("plan without HA"),
        "{text}"
    );
}
