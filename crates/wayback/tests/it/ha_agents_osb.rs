//! An HA plan through OSB with two `wayback agent`s on 127.0.0.1 (issue 15 point 2: "a primary
//! and a standby on different agents"), real PostgreSQL, a real etcd and real Patroni:
//! `ha-small` (sync) is provisioned with its members on different agents (the fetch's "ha" names
//! both machines, and no "share one machine" note), bound, backed up from the standby on the
//! other agent (its archived label says `BACKUP FROM: standby`), and written to under a steady load
//! through the binding's multi-host `uri` (the writer never retries a value); `kill -9` of the
//! primary's Patroni and PostgreSQL on its agent — writes through the same credentials succeed
//! again, the supervisor starts the killed member's Patroni through its agent and it rejoins;
//! `wayback drain --agent` of the leader's agent hands the lead to the other agent's member
//! first (a switchover, writes go on); no acknowledged row is missing; the HA instance is cloned by name into `small` with every
//! row; the delete leaves no Patroni, no member directory on either agent and no key of the
//! scope in etcd.
//!
//! Run: `bash scripts/test ha_agents_osb::` (needs `patroni` and `etcd`: `bash scripts/setup`).

use std::path::PathBuf;
use std::time::Instant;

use crate::agents::Fleet;
use crate::backup::verify_with;
use crate::common::etcd::{ha_binaries_available, Etcd};
use crate::common::osb_client::*;
use crate::common::*;
use crate::ha_broker::{
    assert_every_acked_row, delete_whole, fetch, kill_member, patroni_pid, provision_ha_succeeded,
    psql, role_of, uri_with_ca, wait_members, whole, Cleanup, Writer, WAIT,
};
use crate::ha_engine::member_logs;
use crate::ha_standby_backup::{label_of, next_backup};
use serde_json::json;
use wayback::domain::InstanceId;

/// A member's cluster directory on the agent that holds it (the agent keeps it under the
/// broker's member key).
fn member_dir(fleet: &Fleet, agent: &str, id: &str, member: &str) -> PathBuf {
    let key = InstanceId::parse(id).unwrap().member_key(member);
    let agent = fleet.agents.iter().find(|a| a.name == agent).unwrap();
    agent.data_dir.join("clusters").join(key.as_str())
}

/// [`Writer::wait_acked_since`] for 10 writes after the kill, telling on failure what each
/// member's Patroni, server and agent said (a failover that never takes writes is the
/// failure to explain).
async fn wait_writes(
    fleet: &Fleet,
    writer: &Writer,
    since: Instant,
    id: &str,
    dirs: &[PathBuf],
    uri: &str,
) {
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = writer
            .acked
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| *s >= since)
            .count();
        if seen >= 10 {
            return;
        }
        if Instant::now() >= deadline {
            let mut report = format!(
                "writes after the kill: none acknowledged in {WAIT:?}\nfetch: {}\npsql: {:?}\n",
                fetch(&fleet.app, id).await["ha"],
                psql(
                    uri,
                    "SELECT pg_is_in_recovery(), current_setting('synchronous_standby_names')"
                ),
            );
            for (i, dir) in dirs.iter().enumerate() {
                report.push_str(&member_logs(&format!("member {}", i + 1), dir));
            }
            for a in &fleet.agents {
                let log =
                    std::fs::read_to_string(a.data_dir.with_extension("log")).unwrap_or_default();
                report.push_str(&format!(
                    "--- {} log\n{}\n",
                    a.name,
                    crate::common::etcd::tail(&log, 60)
                ));
            }
            panic!("{report}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_members_on_two_agents_through_osb_fail_over_rejoin_clone_and_delete() {
    if !pg_available() || !ha_binaries_available() {
        return;
    }
    let etcd = Etcd::start().await;
    let endpoint = etcd.endpoint();
    let fleet = Fleet::start(2, move |s| s.ha.dcs_endpoints = vec![endpoint]).await;
    let app = &fleet.app;
    let id = new_id();
    // Every member directory either agent could hold, killed on an early end.
    let mut all_dirs = Vec::new();
    for a in &fleet.agents {
        for m in ["m1", "m2"] {
            all_dirs.push(member_dir(&fleet, &a.name, &id, m));
        }
    }
    let _cleanup = Cleanup(all_dirs);

    eprintln!("ha_agents_osb: provision");
    provision_ha_succeeded(app, &id, "orders").await;
    let rows = app.store.ha_members(&iid(&id)).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_ne!(rows[0].agent, rows[1].agent, "members on different agents");
    assert_eq!(
        fleet.placed_on(&id).await.as_deref(),
        Some(rows[0].agent.as_str()),
        "the primary is where the instance was placed"
    );
    let dirs: Vec<PathBuf> = rows
        .iter()
        .map(|m| member_dir(&fleet, &m.agent, &id, &m.member))
        .collect();
    assert!(
        dirs.iter().all(|d| d.is_dir()),
        "each agent holds its member"
    );
    wait_members(app, &id, "m1 leads, m2 in sync", |m| {
        role_of(m, "m1") == Some("leader") && role_of(m, "m2") == Some("sync_standby")
    })
    .await;
    let view = fetch(app, &id).await;
    let machines: Vec<&str> = view["ha"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["machine"].as_str().unwrap())
        .collect();
    assert_eq!(
        machines,
        vec![rows[0].agent.as_str(), rows[1].agent.as_str()]
    );
    assert!(
        !view["ha"]["notes"]
            .to_string()
            .contains("share one machine"),
        "{view}"
    );

    eprintln!("ha_agents_osb: bind and write");
    let credentials = app.bind_sync(&id, &new_id()).await;
    let ca = tempfile::NamedTempFile::new().unwrap();
    let uri = uri_with_ca(&credentials, &ca);
    psql(&uri, "CREATE TABLE ha_rows (n bigint PRIMARY KEY)").unwrap();

    eprintln!("ha_agents_osb: a base backup from the standby on the other agent");
    // The standby's agent streams it; the broker completes the leader's segment through the
    // leader's agent (issue 15 point 4).
    let store = fleet.store();
    let manifest = next_backup(app, &store, &id).await;
    let tar = verify_with(&store, &id, &manifest, fleet.data_key(&id).await).await;
    let label = label_of(&tar);
    assert!(
        label.contains("BACKUP FROM: standby"),
        "the backup is the standby's: {label}"
    );

    eprintln!("ha_agents_osb: kill -9 of the primary's Patroni and PostgreSQL on its agent");
    let writer = Writer::start(uri.clone());
    writer
        .wait_acked_since(Instant::now(), 20, "before the kill")
        .await;
    let victims = kill_member(&dirs[0]);
    let killed = Instant::now();
    wait_writes(&fleet, &writer, killed, &id, &dirs, &uri).await;
    eprintln!(
        "ha_agents_osb: writes again {:.1} s after the kill; members: {}",
        killed.elapsed().as_secs_f64(),
        fetch(app, &id).await["ha"]["members"]
    );
    // The supervisor starts the killed member's Patroni through its agent; it rejoins.
    wait_members(app, &id, "both members back, one leading", whole).await;
    assert!(
        patroni_pid(&dirs[0]).is_some_and(|p| !victims.contains(&p)),
        "m1 runs a new Patroni on its agent"
    );

    eprintln!("ha_agents_osb: drain of the leader's agent hands the lead over first");
    let view = fetch(app, &id).await;
    let leader = view["ha"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "leader")
        .cloned()
        .expect("a member leads");
    let (old, new) = match leader["name"].as_str() {
        Some("m1") => ("m1", "m2"),
        _ => ("m2", "m1"),
    };
    let agent = fleet
        .agents
        .iter()
        .find(|a| Some(a.name.as_str()) == leader["machine"].as_str())
        .expect("the leader's agent");
    let begun = Instant::now();
    let (ok, report) = tokio::task::block_in_place(|| agent.drain());
    let drained = Instant::now();
    assert!(ok, "{report}");
    let switched = &report["switchovers"];
    assert_eq!(switched.as_array().map(Vec::len), Some(1), "{report}");
    assert_eq!(
        (
            switched[0]["member"].as_str(),
            switched[0]["to"].as_str(),
            switched[0]["switched"].as_bool()
        ),
        (Some(old), Some(new), Some(true)),
        "{report}"
    );
    wait_members(app, &id, "the other agent's member leads", |m| {
        role_of(m, new) == Some("leader") && role_of(m, old) == Some("sync_standby")
    })
    .await;
    writer
        .wait_acked_since(drained, 5, "writes after the drain")
        .await;
    eprintln!(
        "ha_agents_osb: drained in {:.1} s; the longest pause between writes across it: {:.2} s",
        (drained - begun).as_secs_f64(),
        writer.longest_gap_since(begun).as_secs_f64()
    );

    let acked = writer.finish().await;
    let present = assert_every_acked_row(&uri, &acked);
    eprintln!(
        "ha_agents_osb: {} rows acknowledged, all present",
        acked.len()
    );

    eprintln!("ha_agents_osb: clone the HA instance by name into small");
    let (copy, _) = app
        .clone_ready("orders-copy", json!({ "clone-from": "orders" }))
        .await;
    let c = app.bind_sync(&copy, &new_id()).await;
    let mut conn = connect(c["uri"].as_str().unwrap()).await.unwrap();
    let copied: Vec<i64> = sqlx::query_scalar("SELECT n FROM ha_rows ORDER BY n")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(copied, present, "the clone has every row");
    drop(conn);

    eprintln!("ha_agents_osb: delete");
    delete_whole(app, &etcd, &id, &dirs).await;
}
