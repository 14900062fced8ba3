//! Kept copies across processes: a broker process killed between the move to the trash and
//! its record, and a fleet of two agents where the undo follows the copy and a live fork
//! follows its running source.

use std::time::{Duration, Instant};

use serde_json::json;
use wayback::domain::InstanceId;

use super::{rows, said, source_with_rows};
use crate::common::*;

/// The broker process killed after the deprovision moved the data directory into the trash
/// and before it recorded that (`destroy:trashed`): after the restart the delete finishes,
/// and the copy and the state database agree — recorded, or removed — with nothing orphaned;
/// the instance is undone from it.
#[tokio::test]
async fn a_broker_killed_between_the_move_and_its_record_leaves_nothing_orphaned() {
    use crate::restart::harness::Site;
    use reqwest::StatusCode;
    if !pg_available() {
        return;
    }
    let root = test_root();
    let site = Site::new(root.path());
    let client = site.client();
    let name = format!("kept-{}", &new_id()[..8]);
    let id = new_id();
    let mut setup = site.start();
    client.wait_healthy().await;
    let (status, body) = client
        .put_instance(&id, &provision_body(SMALL, &name))
        .await
        .expect("an answer");
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (_, done) = client.wait_done(&id, body["operation"].as_str()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    client.wait_backup(&id).await;
    setup.stop().await;

    let mut broker = site.start_with(Some("destroy:trashed"));
    client.wait_healthy().await;
    let answer = client.delete_instance(&id).await;
    broker
        .wait_killed("destroy:trashed", Duration::from_secs(120))
        .await;
    drop(broker);
    let entry = site.data_dir.join("trash").join(&id);
    let url = wayback::config::resolve::default_sqlite_url(&site.data_dir);
    let instance = InstanceId::parse(id.clone()).unwrap();
    {
        let store = wayback::store::Store::connect(&url).await.unwrap();
        assert!(entry.join("kept.json").is_file(), "moved before the kill");
        assert!(
            store.kept_copy(&instance).await.unwrap().is_none(),
            "not recorded yet"
        );
        store.close().await;
    }

    let _broker = site.start();
    client.wait_healthy().await;
    let operation = answer.and_then(|(_, b)| b["operation"].as_str().map(String::from));
    let (status, body) = client.wait_done(&id, operation.as_deref()).await;
    assert_delete_finished(status, &body);
    let store = wayback::store::Store::connect(&url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let recorded = store.kept_copy(&instance).await.unwrap().is_some();
        let on_disk = entry.exists();
        if recorded == on_disk && (!on_disk || entry.join("kept.json").is_file()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "orphaned: recorded {recorded}, on disk {on_disk}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Deleted, and undone (from the copy if it is still there, else from the archive).
    let clone = new_id();
    let body = clone_body(
        &format!("undo-{name}"),
        SPACE,
        json!({ "clone-from": name }),
    );
    let (status, answer) = client.put_instance(&clone, &body).await.expect("an answer");
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let (_, done) = client.wait_done(&clone, answer["operation"].as_str()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(!entry.exists(), "the copy was taken or never kept");
    assert!(store.kept_copy(&instance).await.unwrap().is_none());
}

/// With two agents the copy stays on the agent that ran the instance, and the undo is placed
/// there — even when that agent holds more instances than the other, where a new instance
/// would not go — and takes the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_two_agents_the_clone_lands_on_the_agent_holding_the_copy() {
    use crate::agents::Fleet;
    if !pg_available() {
        return;
    }
    let fleet = Fleet::start(2, |_| {}).await;
    let store = fleet.store();
    let (src, _) = source_with_rows(&fleet.app, &store, "production").await;
    let holder = fleet.placed_on(&src).await.unwrap();
    // Make the holder, without the source, hold more than the other agent: fillers until one
    // lands on the holder (placement balances), then the other agent's fillers deleted.
    let mut elsewhere = Vec::new();
    let mut on_holder = 0;
    for _ in 0..6 {
        let id = fleet
            .app
            .provision_ready(&format!("filler-{}", &new_id()[..6]))
            .await;
        if fleet.placed_on(&id).await.unwrap() == holder {
            on_holder += 1;
            break;
        }
        elsewhere.push(id);
    }
    assert_eq!(on_holder, 1, "no filler landed on {holder}");
    for id in &elsewhere {
        fleet.app.deprovision_done(id).await;
    }
    fleet.app.deprovision_done(&src).await;
    let agent_dir = &fleet
        .agents
        .iter()
        .find(|a| a.name == holder)
        .unwrap()
        .data_dir;
    let entry = agent_dir.join("trash").join(&src);
    assert!(entry.join("kept.json").is_file(), "kept on {holder}");
    let id = InstanceId::parse(src.clone()).unwrap();
    let record = fleet
        .app
        .store
        .kept_copy(&id)
        .await
        .unwrap()
        .expect("recorded");
    assert_eq!(record.agent.as_deref(), Some(holder.as_str()));

    let (clone, seen) = fleet
        .app
        .clone_ready("production-undo", json!({"clone-from": "production"}))
        .await;
    assert_eq!(
        fleet.placed_on(&clone).await.as_deref(),
        Some(holder.as_str())
    );
    assert!(
        said(&seen, "restored from the copy kept at delete time"),
        "{seen:?}"
    );
    assert!(!entry.exists());
    let creds = fleet.app.bind_sync(&clone, &new_id()).await;
    let mut conn = connect(creds["uri"].as_str().unwrap()).await.unwrap();
    assert_eq!(
        rows(&mut conn, "SELECT what FROM orders ORDER BY 1").await,
        ["one", "two"]
    );
}

/// With two agents a clone of a live instance is placed on its source's agent — even when that
/// agent holds more instances than the other — and forks the running server there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_two_agents_a_live_fork_lands_on_the_source_agent() {
    use crate::agents::Fleet;
    if !pg_available() {
        return;
    }
    let fleet = Fleet::start(2, |_| {}).await;
    let store = fleet.store();
    let (src, _) = source_with_rows(&fleet.app, &store, "running").await;
    let holder = fleet.placed_on(&src).await.unwrap();
    // The holder gets more instances than the other agent (as above): a new instance would
    // not go there.
    let mut elsewhere = Vec::new();
    let mut on_holder = false;
    for _ in 0..6 {
        let id = fleet
            .app
            .provision_ready(&format!("filler-{}", &new_id()[..6]))
            .await;
        if fleet.placed_on(&id).await.unwrap() == holder {
            on_holder = true;
            break;
        }
        elsewhere.push(id);
    }
    assert!(on_holder, "no filler landed on {holder}");
    for id in &elsewhere {
        fleet.app.deprovision_done(id).await;
    }

    let (clone, seen) = fleet
        .app
        .clone_ready("running-fork", json!({"clone-from": "running"}))
        .await;
    assert_eq!(
        fleet.placed_on(&clone).await.as_deref(),
        Some(holder.as_str())
    );
    assert!(
        said(&seen, "forked from the running instance (pg_basebackup, "),
        "{seen:?}"
    );
    let creds = fleet.app.bind_sync(&clone, &new_id()).await;
    let mut conn = connect(creds["uri"].as_str().unwrap()).await.unwrap();
    assert_eq!(
        rows(&mut conn, "SELECT what FROM orders ORDER BY 1").await,
        ["one", "two"]
    );
}
