//! The broker's own API, `/wayback/v1` (docs/wayback-api.md), where it shows what real clusters
//! archived: names, restore windows and base backups of live and deleted instances, against a
//! real broker with real clusters and a fake Cloud Foundry (`common::fake_cf`: wiremock UAA and
//! CC, RS256 tokens). Its authentication and space rules run in the fast tier
//! (`fast::wayback_api`), with the same client (`common::wayback_client`).

use crate::common;

use std::time::{Duration, Instant};

use common::fake_cf::FakeCf;
use common::wayback_client::*;
use common::*;
use reqwest::StatusCode;
use serde_json::Value;
use wayback::domain::InstanceId;

/// A broker whose Cloud Controller (and, through its root, UAA) is `cf`.
async fn app_with(cf: &FakeCf) -> TestApp {
    let settings = cf.cc_settings();
    spawn_app_with(move |s| s.cc = settings).await
}

/// Waits until the broker has recorded the instance's first base backup.
async fn wait_for_backup(app: &TestApp, id: &str) {
    let id = InstanceId::parse(id.to_string()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while app.store.latest_backup(&id).await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "no base backup of {id} in 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Commits something on `id` (so the archive holds a commit) through a binding.
async fn commit_something(app: &TestApp, id: &str) {
    let creds = app.bind_sync(id, &new_id()).await;
    let mut conn = connect(creds["uri"].as_str().unwrap()).await.unwrap();
    sqlx::raw_sql("CREATE TABLE t AS SELECT 1 AS one")
        .execute(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_operator_sees_live_and_deleted_instances_with_names_windows_and_backups() {
    if !pg_available() {
        return;
    }
    let cf = FakeCf::start().await;
    let app = app_with(&cf).await;
    let live = app.provision_ready("production").await;
    app.rename(&live, "prod-v2").await;
    wait_for_backup(&app, &live).await;
    let gone = app.provision_ready("scratch").await;
    wait_for_backup(&app, &gone).await;
    commit_something(&app, &gone).await;
    app.deprovision_done(&gone).await;

    let list = get(&app, &format!("/spaces/{SPACE}/instances"), operator(&app)).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    assert_eq!(list.body["space_guid"], SPACE);
    assert_eq!(
        ids(&list.body),
        [gone.clone(), live.clone()],
        "newest first"
    );

    let deleted = &list.body["instances"][0];
    assert_eq!(deleted["state"], "deleted", "{deleted}");
    assert_eq!(deleted["name"], "scratch");
    assert!(deleted["deleted_at"].is_string(), "{deleted}");
    assert_eq!(deleted["restore_window"]["to_now"], false, "{deleted}");
    assert!(deleted["restore_window"]["from"].is_string(), "{deleted}");
    assert!(deleted["restore_window"]["to"].is_string(), "{deleted}");
    assert_eq!(deleted["archive"]["healthy"], true, "{deleted}");
    assert_eq!(
        deleted["archive"]["last_archived_at"], deleted["restore_window"]["to"],
        "a deleted instance's archive ends at its last commit"
    );

    let instance = &list.body["instances"][1];
    assert_eq!(instance["state"], "live", "{instance}");
    assert_eq!(instance["name"], "prod-v2");
    let names: Vec<&str> = instance["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["production", "prod-v2"], "oldest first");
    assert_eq!(instance["names"][0]["source"], "provision");
    assert!(instance["names"][1]["since"].is_string());
    assert_eq!(
        (
            &instance["service_id"],
            &instance["plan_id"],
            &instance["space_guid"],
            &instance["organization_guid"]
        ),
        (
            &Value::from(SERVICE_ID),
            &Value::from(SMALL),
            &Value::from(SPACE),
            &Value::from(ORG)
        )
    );
    assert!(instance["service_name"].is_string() && instance["plan_name"].is_string());
    assert!(instance["deleted_at"].is_null());
    let window = &instance["restore_window"];
    assert_eq!(
        (&window["to"], &window["to_now"]),
        (&Value::Null, &Value::Bool(true))
    );
    let backups = instance["base_backups"].as_array().unwrap();
    assert!(!backups.is_empty(), "{instance}");
    let first = &backups[0];
    assert!(first["backup_id"].is_string() && first["time"].is_string());
    assert!(first["raw_bytes"].as_u64().unwrap() > 0);
    assert!(first["stored_bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        instance["last_base_backup"],
        backups.last().unwrap()["time"]
    );
    assert!(window["from"].as_str().unwrap() >= first["time"].as_str().unwrap());
    let archive = &instance["archive"];
    for field in [
        "healthy",
        "last_archived_at",
        "lag_segments",
        "last_failure_at",
        "detail",
    ] {
        assert!(
            archive.get(field).is_some(),
            "archive.{field} missing: {archive}"
        );
    }

    // `name` keeps instances that have or had the name.
    for (name, want) in [
        ("prod-v2", vec![live.clone()]),
        ("production", vec![live.clone()]),
        ("scratch", vec![gone.clone()]),
        ("nothing-by-this-name", vec![]),
    ] {
        let r = get(
            &app,
            &format!("/spaces/{SPACE}/instances?name={name}"),
            operator(&app),
        )
        .await;
        assert_eq!(
            (r.status, ids(&r.body)),
            (StatusCode::OK, want),
            "name={name}"
        );
    }

    // One instance: the same view as in the list.
    let one = get(&app, &format!("/instances/{live}"), operator(&app)).await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.body);
    for field in [
        "instance_id",
        "names",
        "state",
        "base_backups",
        "restore_window",
    ] {
        assert_eq!(one.body[field], instance[field], "{field}");
    }
    let deleted_one = get(&app, &format!("/instances/{gone}"), operator(&app)).await;
    assert_eq!(deleted_one.body["state"], "deleted");

    // The operator sees every space, including one without instances.
    let empty = get(
        &app,
        &format!("/spaces/{OTHER_SPACE}/instances"),
        operator(&app),
    )
    .await;
    assert_eq!((empty.status, ids(&empty.body)), (StatusCode::OK, vec![]));
    let unknown = get(&app, &format!("/instances/{}", new_id()), operator(&app)).await;
    assert_refused(
        &unknown,
        StatusCode::NOT_FOUND,
        "NotFound",
        "No such service instance",
        "unknown id",
    );
    assert_eq!(
        cf.space_checks(SPACE).await,
        0,
        "basic auth never asks the CC"
    );
}
