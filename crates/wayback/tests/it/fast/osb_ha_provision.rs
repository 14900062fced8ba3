//! HA plans provisioned through OSB on the fake runtime (issue 15): the HA job's steps and the
//! runtime calls each makes (the primary's cluster under its member key `<id>~m1`, Patroni
//! adopting it, the first base backup, the standby seeded as `<id>~m2`), the members recorded,
//! the shared superuser password sealed once; a transient failure of a step is retried (each
//! step is idempotent) and a permanent one removes every member; bindings' roles made and
//! dropped on the member that leads now (also after a failover); the supervisor starts a
//! member's Patroni again; and a delete destroys every member and forgets them.

use crate::common;

use common::fake_runtime::Call;
use common::osb_client::*;
use common::*;
use reqwest::StatusCode;
use serde_json::Value;
use wayback::domain::InstanceId;
use wayback::pg::PgError;
use wayback::runtime::{ClusterRuntime, ClusterStatus, HaRole, RuntimeError};

async fn ha_app() -> TestApp {
    spawn_fast_app_with(|s| s.ha.dcs_endpoints = vec!["127.0.0.1:2379".into()]).await
}

/// PUTs an `ha-small` provision and waits for its end; (id, last_operation body, descriptions
/// seen on the way).
async fn provision_ha(app: &TestApp) -> (String, Value) {
    let id = new_id();
    let r = app
        .put_instance(&id, &provision_body(HA_SMALL, "orders"))
        .await;
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, done) = app.poll_instance(&id, body["operation"].as_str()).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    (id, done)
}

fn key(id: &str, member: &str) -> String {
    InstanceId::parse(id)
        .unwrap()
        .member_key(member)
        .to_string()
}

#[tokio::test]
async fn an_ha_plan_is_provisioned_with_a_primary_and_a_sync_standby() {
    let app = ha_app().await;
    let (id, done) = provision_ha(&app).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (m1, m2) = (key(&id, "m1"), key(&id, "m2"));

    // The primary's cluster is made as a provision makes one, under its member key, then
    // adopted; the first backup comes from it; the standby is seeded, not created.
    assert_eq!(
        app.fake().calls_for(&m1)[..4],
        [
            Call::CreateCluster,
            Call::ConfigureArchive,
            Call::Start,
            Call::EnsureDatabase
        ],
        "{:?}",
        app.fake().calls_for(&m1)
    );
    assert!(app.fake().calls_for(&m1).contains(&Call::HaStartMember));
    assert!(app.fake().calls_for(&m1).contains(&Call::TakeBackup));
    let standby = app.fake().calls_for(&m2);
    assert_eq!(standby.first(), Some(&Call::HaStartMember), "{standby:?}");
    assert!(!standby.contains(&Call::CreateCluster), "{standby:?}");
    assert!(
        !app.fake().exists(&id),
        "nothing is kept under the instance's own id"
    );
    let primary = app.fake().cluster(&m1).unwrap();
    assert!(
        primary.archiving && !primary.databases.is_empty(),
        "{primary:?}"
    );

    // Both members recorded, on this machine, with their own ports; Patroni's view.
    let iid = iid(&id);
    let members = app.store.ha_members(&iid).await.unwrap();
    let names: Vec<&str> = members.iter().map(|m| m.member.as_str()).collect();
    assert_eq!(names, ["m1", "m2"]);
    let record = app.store.get_instance(&iid).await.unwrap().unwrap();
    assert_eq!(
        record.port,
        Some(members[0].port),
        "the instance's port is m1's"
    );
    assert_ne!(members[0].port, members[1].port);
    let scope = app.fake().ha_scope(&id).unwrap();
    assert_eq!(scope.leader().unwrap().name, "m1");
    assert_eq!(scope.member("m2").unwrap().role, HaRole::SyncStandby);

    // The shared superuser password is sealed in the store, and the system identifier known.
    assert!(app
        .store
        .ha_superuser_password(&iid)
        .await
        .unwrap()
        .is_some());
    assert!(app
        .store
        .ha_system_identifier(&iid)
        .await
        .unwrap()
        .is_some());
    assert!(app.store.latest_backup(&iid).await.unwrap().is_some());
    assert!(
        app.store.pending_backup_job(&iid).await.unwrap().is_none(),
        "its first backup was a step: no second one is queued"
    );

    // The fetch shows both members, sharing one machine.
    let r = app
        .osb(reqwest::Method::GET, &format!("/v2/service_instances/{id}"))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["ha"]["members"][1]["role"], "sync_standby", "{body}");
    assert!(
        body["ha"]["notes"]
            .to_string()
            .contains("both members share one machine"),
        "{body}"
    );

    // The broker API's archive health is the leader's archiver's, read under its member key.
    let doc = common::wayback_client::get(
        &app,
        &format!("/instances/{id}"),
        common::wayback_client::operator(&app),
    )
    .await;
    assert_eq!(doc.status, StatusCode::OK, "{}", doc.body);
    assert_eq!(doc.body["archive"]["healthy"], true, "{}", doc.body);
    assert!(app.fake().calls_for(&m1).contains(&Call::ArchiverStats));
}

#[tokio::test]
async fn bindings_are_made_on_the_leader_also_after_a_failover_and_a_delete_removes_every_member() {
    let app = ha_app().await;
    let (id, done) = provision_ha(&app).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (m1, m2) = (key(&id, "m1"), key(&id, "m2"));

    let b1 = new_id();
    let c = app.bind_sync(&id, &b1).await;
    assert!(
        c["uri"]
            .as_str()
            .unwrap()
            .contains("target_session_attrs=read-write"),
        "{c}"
    );
    let role = c["username"].as_str().unwrap().to_string();
    assert!(app.fake().cluster(&m1).unwrap().roles.contains(&role));

    // Patroni fails over to m2: a new binding's role is made there, host/port name it.
    app.fake().ha_fail_over_to(&id, "m2");
    let b2 = new_id();
    let c2 = app.bind_sync(&id, &b2).await;
    let role2 = c2["username"].as_str().unwrap().to_string();
    assert!(app.fake().cluster(&m2).unwrap().roles.contains(&role2));
    let m2_port = app
        .store
        .ha_member(&iid(&id), "m2")
        .await
        .unwrap()
        .unwrap()
        .port;
    assert_eq!(c2["port"], m2_port, "{c2}");
    let r = app.delete_binding(&id, &b2, false).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(!app.fake().cluster(&m2).unwrap().roles.contains(&role2));

    // Delete: every member destroyed, the scope gone, the rows forgotten.
    app.deprovision_done(&id).await;
    assert!(!app.fake().exists(&m1) && !app.fake().exists(&m2));
    assert!(app.fake().ha_scope(&id).is_none());
    assert!(app.store.ha_members(&iid(&id)).await.unwrap().is_empty());
    let destroyed: Vec<Call> = app
        .fake()
        .calls_for(&m2)
        .into_iter()
        .filter(|c| *c == Call::Destroy)
        .collect();
    assert_eq!(destroyed.len(), 1);
}

#[tokio::test]
async fn a_transient_failure_of_an_ha_step_is_retried_and_a_permanent_one_removes_every_member() {
    let app = ha_app().await;
    let refused = || -> RuntimeError {
        PgError::NotRunning {
            instance: "x".into(),
        }
        .into()
    };
    // Each HA call fails once: its step runs again and the job ends as if it had not.
    app.fake().fail_next(Call::HaStartMember, refused());
    app.fake().fail_next(Call::HaStatus, refused());
    app.fake().fail_next(Call::TakeBackup, refused());
    let (id, done) = provision_ha(&app).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let scope = app.fake().ha_scope(&id).unwrap();
    assert_eq!(scope.members.len(), 2, "{scope:?}");

    // A permanent failure seeding the standby: the provision fails and removes both members.
    app.fake().fail_next(
        Call::HaStartMember,
        PgError::Setup("patroni is not installed".into()).into(),
    );
    let (failed_id, failed) = provision_ha(&app).await;
    // The first HA call is the primary's adoption.
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(
        failed["description"]
            .as_str()
            .unwrap()
            .starts_with("Provisioning (HA): handing the primary to Patroni"),
        "{failed}"
    );
    assert!(!app.fake().exists(&key(&failed_id, "m1")));
    assert!(app
        .store
        .ha_members(&iid(&failed_id))
        .await
        .unwrap()
        .is_empty());
    app.deprovision_done(&failed_id).await;
}

#[tokio::test]
async fn the_supervisor_starts_a_members_patroni_again_and_never_the_instance_id() {
    let app = ha_app().await;
    let (id, done) = provision_ha(&app).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let m2 = InstanceId::parse(id.clone()).unwrap().member_key("m2");
    // Patroni of m2 is gone (the runtime says stopped): the supervisor starts it.
    app.fake().stop(&m2).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while app.fake().status(&m2).await.unwrap() != ClusterStatus::Running {
        assert!(std::time::Instant::now() < deadline, "m2 was not started");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        !app.fake().calls_for(&id).contains(&Call::Start),
        "nothing is started under the instance's own id"
    );
}

#[tokio::test]
async fn a_delete_during_an_ha_provision_stops_it_and_removes_every_member() {
    let app = ha_app().await;
    let gate = app.fake().hold(Call::HaStartMember);
    let id = new_id();
    let r = app
        .put_instance(&id, &provision_body(HA_SMALL, "orders"))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    gate.reached().await;
    let r = app.delete_instance(&id).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let op: Value = r.json().await.unwrap();
    gate.release();
    let (status, body) = app.poll_instance(&id, op["operation"].as_str()).await;
    assert_delete_finished(status, &body);
    assert!(!app.fake().exists(&key(&id, "m1")) && !app.fake().exists(&key(&id, "m2")));
    assert!(app.fake().ha_scope(&id).is_none());
    assert!(app.store.ha_members(&iid(&id)).await.unwrap().is_empty());
}

/// A follower of an HA instance is refused before the 202 (a slot on one member would not
/// follow a failover), pointing at a read-only binding, which reads from the standby.
#[tokio::test]
async fn following_an_ha_instance_is_refused_and_names_the_read_only_binding() {
    let app = ha_app().await;
    let (_, done) = provision_ha(&app).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let id = new_id();
    let mut body = provision_body(SMALL, "reports");
    body["parameters"] = serde_json::json!({ "follow": "orders" });
    let r = app.put_instance(&id, &body).await;
    let status = r.status();
    let answer: Value = r.json().await.unwrap();
    let text = answer["description"].as_str().unwrap_or_default();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    assert!(
        text.contains("highly available") && text.contains("read_only"),
        "{text}"
    );
    assert!(app.store.get_instance(&iid(&id)).await.unwrap().is_none());
}
