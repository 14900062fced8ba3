//! Plan changes between single and HA through OSB with two `wayback agent`s on 127.0.0.1
//! (issue 15 point 2 on agents), real PostgreSQL, a real etcd and real Patroni: `small` is
//! provisioned on one agent (A), bound, and written to under a steady load through that
//! binding's single-host credentials (the writer never tries a value twice);
//! `cf update-service -p ha-small` makes A's running cluster the first member on A (moved under
//! the member key there, with its TLS files and archive target) and seeds the standby on the
//! other agent (B): the fetch's "ha" names both machines; after a switchover to B's member, the
//! change back to `small` switches over to A's member, destroys B's member (its directory gone
//! from B), releases A's member through the agent's release route as the instance's single
//! cluster under its id, and leaves no key of the scope in etcd. Every acknowledged row is
//! present, calls for the instance id reach A again (a new binding is made there and writes),
//! and the delete removes it from A. Prints each change's longest write gap; asserts no timing.
//!
//! Run: `bash scripts/test ha_update_agents::` (needs `patroni` and `etcd`: `bash scripts/setup`).

use std::path::PathBuf;
use std::time::Instant;

use crate::agents::Fleet;
use crate::common::etcd::{ha_binaries_available, Etcd};
use crate::common::osb_client::*;
use crate::common::*;
use crate::ha_broker::{
    assert_every_acked_row, fetch, patroni_pid, patroni_runs, psql, role_of, uri_with_ca,
    wait_members, Cleanup, Writer,
};
use crate::ha_update::{change_plan, switch_over};
use wayback::domain::InstanceId;

/// The cluster directory `key` names on `agent` (an instance id, or a member key).
fn dir_on(fleet: &Fleet, agent: &str, key: &str) -> PathBuf {
    let agent = fleet.agents.iter().find(|a| a.name == agent).unwrap();
    agent.data_dir.join("clusters").join(key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_change_single_to_ha_and_back_on_two_agents_under_writes_loses_nothing() {
    if !pg_available() || !ha_binaries_available() {
        return;
    }
    let etcd = Etcd::start().await;
    let endpoint = etcd.endpoint();
    let fleet = Fleet::start(2, move |s| s.ha.dcs_endpoints = vec![endpoint]).await;
    let app = &fleet.app;
    let id = app.provision_ready("orders").await;
    let a = fleet.placed_on(&id).await.expect("placed on an agent");
    let b = fleet
        .agents
        .iter()
        .map(|x| x.name.clone())
        .find(|n| *n != a)
        .unwrap();
    let key = |m: &str| InstanceId::parse(id.clone()).unwrap().member_key(m);
    let (m1_dir, m2_dir) = (
        dir_on(&fleet, &a, key("m1").as_str()),
        dir_on(&fleet, &b, key("m2").as_str()),
    );
    let single_dir = dir_on(&fleet, &a, &id);
    // Every member directory either agent could hold, its Patroni killed on an early end.
    let mut all_dirs = Vec::new();
    for agent in [&a, &b] {
        for m in ["m1", "m2"] {
            all_dirs.push(dir_on(&fleet, agent, key(m).as_str()));
        }
    }
    let _cleanup = Cleanup(all_dirs);

    eprintln!("ha_update_agents: bind and write (instance on {a})");
    let credentials = app.bind_sync(&id, &new_id()).await;
    let ca = tempfile::NamedTempFile::new().unwrap();
    let uri = uri_with_ca(&credentials, &ca);
    psql(&uri, "CREATE TABLE ha_rows (n bigint PRIMARY KEY)").unwrap();
    let writer = Writer::start(uri.clone());
    writer
        .wait_acked_since(Instant::now(), 20, "before the change to HA")
        .await;

    eprintln!("ha_update_agents: small -> ha-small");
    let began = Instant::now();
    change_plan(app, &id, HA_SMALL, SMALL).await;
    wait_members(app, &id, "m1 leads, m2 streams in sync", |m| {
        role_of(m, "m1") == Some("leader") && role_of(m, "m2") == Some("sync_standby")
    })
    .await;
    let after = Instant::now();
    writer
        .wait_acked_since(after, 10, "the existing binding after the change to HA")
        .await;
    eprintln!(
        "ha_update_agents: to HA in {:.1} s; longest write gap (its one restart) {:.1} s",
        (after - began).as_secs_f64(),
        writer.longest_gap_since(began).as_secs_f64()
    );
    let rows = app.store.ha_members(&iid(&id)).await.unwrap();
    let placed: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.member.as_str(), r.agent.as_str()))
        .collect();
    assert_eq!(placed, vec![("m1", a.as_str()), ("m2", b.as_str())]);
    // A's running cluster moved under m1's key, with what the agent keeps for it.
    assert!(
        !single_dir.exists(),
        "the cluster moved under m1's key on {a}"
    );
    assert!(m1_dir.join("pgdata").is_dir() && m1_dir.join("archive.json").is_file());
    assert!(m1_dir.join("tls").is_dir(), "its TLS files moved with it");
    assert!(patroni_pid(&m1_dir).is_some() && patroni_pid(&m2_dir).is_some());
    let view = fetch(app, &id).await;
    let machines: Vec<&str> = view["ha"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["machine"].as_str().unwrap())
        .collect();
    assert_eq!(machines, vec![a.as_str(), b.as_str()], "{view}");
    assert!(
        !view["ha"]["notes"]
            .to_string()
            .contains("share one machine"),
        "{view}"
    );

    // The change back while B's member leads: the job switches over to A's member first.
    eprintln!("ha_update_agents: switchover to m2 on {b}");
    switch_over(app, &id, "m1", "m2").await;
    wait_members(app, &id, "m2 leads, m1 streams in sync", |m| {
        role_of(m, "m2") == Some("leader") && role_of(m, "m1") == Some("sync_standby")
    })
    .await;

    eprintln!("ha_update_agents: ha-small -> small");
    let began = Instant::now();
    let pids: Vec<i32> = [&m1_dir, &m2_dir]
        .iter()
        .filter_map(|d| patroni_pid(d))
        .collect();
    change_plan(app, &id, SMALL, HA_SMALL).await;
    let after = Instant::now();
    writer
        .wait_acked_since(after, 10, "the existing binding after the change back")
        .await;
    eprintln!(
        "ha_update_agents: back to single in {:.1} s; longest write gap {:.1} s",
        (after - began).as_secs_f64(),
        writer.longest_gap_since(began).as_secs_f64()
    );
    let acked = writer.finish().await;
    assert_every_acked_row(&uri, &acked);
    eprintln!(
        "ha_update_agents: {} rows acknowledged, all present",
        acked.len()
    );

    // A plain single cluster on A again; B's member is gone from B, the scope from etcd.
    assert!(
        pids.iter().all(|p| !patroni_runs(*p)),
        "a Patroni still runs"
    );
    assert!(
        !m2_dir.exists(),
        "the removed member's directory is left on {b}"
    );
    assert!(!m1_dir.exists(), "the first member's key is left on {a}");
    assert!(single_dir.join("pgdata").is_dir());
    assert!(!single_dir.join("patroni").exists());
    assert_eq!(etcd.count_prefix(&format!("/wayback/{id}/")).await, 0);
    assert!(app.store.ha_members(&iid(&id)).await.unwrap().is_empty());
    let record = app.store.get_instance(&iid(&id)).await.unwrap().unwrap();
    assert_eq!(
        (record.plan_id.as_str(), record.agent.as_deref()),
        (SMALL, Some(a.as_str()))
    );
    let view = fetch(app, &id).await;
    assert!(view.get("ha").is_none(), "{view}");
    let settings = psql(
        &uri,
        "SELECT current_setting('cluster_name') || ' ' || current_setting('archive_mode')",
    )
    .unwrap();
    assert_eq!(settings, format!("{id} on"));
    // Calls for the instance id reach A again: a new binding's role is made there.
    let fresh = app.bind_sync(&id, &new_id()).await;
    let ca2 = tempfile::NamedTempFile::new().unwrap();
    let fresh_uri = uri_with_ca(&fresh, &ca2);
    assert!(
        !fresh_uri.contains("target_session_attrs"),
        "single-host credentials again: {fresh}"
    );
    psql(&fresh_uri, "INSERT INTO ha_rows VALUES (-1)").unwrap();

    eprintln!("ha_update_agents: delete");
    app.deprovision_done(&id).await;
    assert!(!single_dir.exists(), "the delete removed it from {a}");
}
