//! HA members on agents (issue 15): the engine's calls through `RemoteRuntime` and two real
//! `wayback agent`s on 127.0.0.1 (the agents tests' fleet), with a real etcd. A primary adopted
//! on agent A and a standby Patroni seeds on agent B stream in `sync` mode; `kill -9` of A's
//! Patroni and PostgreSQL makes B's member the leader by itself (its status read through B
//! when A's member does not answer), with no acknowledged row missing; A's member, started
//! again through its agent, rejoins as a replica; a switchover through the agents moves the
//! leader back; destroying both members leaves nothing of the scope in etcd.
//!
//! Run: `bash scripts/test ha_agents::` (needs `patroni` and `etcd`: `bash scripts/setup`).

use std::time::Instant;

use crate::agents::Fleet;
use crate::common::etcd::{ha_binaries_available, Etcd};
use crate::common::*;
use crate::ha_engine::{
    crash_member, member_logs, psql, rows_on, streams_in_sync, timeline, uri, wait_writable,
    Cleanup, Writer, ENGINE_WAIT, SUPERUSER_PASSWORD,
};
use secrecy::SecretString;
use wayback::archive::ArchiveTarget;
use wayback::config::{AgentEndpoint, AgentsSettings};
use wayback::domain::{InstanceId, SpaceGuid};
use wayback::runtime::{
    ArchiveCommand, ClusterRuntime, ClusterSpec, ClusterStatus, Durability, HaMemberSpec, HaSeed,
    HaStatus, RemoteRuntime,
};

/// A remote runtime over the fleet's agents that places every instance on `home`.
fn remote_on(fleet: &Fleet, home: &str) -> RemoteRuntime {
    let remote = RemoteRuntime::new(&AgentsSettings {
        urls: fleet
            .agents
            .iter()
            .map(|a| AgentEndpoint {
                name: a.name.clone(),
                url: a.url(),
            })
            .collect(),
        username: "broker".into(),
        password: Some(fleet.password.clone().into()),
        ca_cert: Some(fleet.ca.clone()),
        ..AgentsSettings::default()
    })
    .unwrap();
    let home = home.to_string();
    remote.set_resolver(Box::new(move |_| {
        let home = home.clone();
        Box::pin(async move { Some(home) })
    }));
    remote
}

/// Polls the scope through the agents until `done` holds.
async fn wait_status(
    rt: &dyn ClusterRuntime,
    id: &InstanceId,
    what: &str,
    done: impl Fn(&HaStatus) -> bool,
) -> HaStatus {
    let deadline = Instant::now() + ENGINE_WAIT;
    loop {
        let last = match rt.ha_status(id).await {
            Ok(s) if done(&s) => return s,
            Ok(s) => format!("{s:?}"),
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "{what}: not reached; last seen: {last}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn patroni_pid(data_dir: &std::path::Path, id: &InstanceId) -> i32 {
    std::fs::read_to_string(
        data_dir
            .join("clusters")
            .join(id.as_str())
            .join("patroni/patroni.pid"),
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_members_on_two_agents_fail_over_rejoin_and_switch_over() {
    if !pg_available() || !ha_binaries_available() {
        return;
    }
    let etcd = Etcd::start().await;
    let fleet = Fleet::start(2, |_| {}).await;
    let (a, b) = (&fleet.agents[0], &fleet.agents[1]);
    let id = InstanceId::parse(new_id()).unwrap();
    let _cleanup = Cleanup(vec![
        (a.data_dir.clone(), id.clone()),
        (b.data_dir.clone(), id.clone()),
    ]);
    // The instance is placed on agent A; B's member is addressed by `machine`.
    let remote = remote_on(&fleet, &a.name);
    let rt: &dyn ClusterRuntime = &remote;
    assert!(rt.supports_ha().await, "the agents say they run HA members");

    let (pg_a, pg_b) = (free_port(), free_port());
    let cluster = |port| ClusterSpec {
        instance: id.clone(),
        port,
        settings: Default::default(),
        require_tls: false,
    };
    rt.create_cluster(&cluster(pg_a)).await.unwrap();
    let space = SpaceGuid::parse(SPACE).unwrap();
    // Only the prefix and the system identifier cross the wire: each agent builds the target
    // from its own archive settings.
    let target = ArchiveTarget::for_instance(&test_settings(&a.data_dir, "unused"), &space, &id);
    let command = ArchiveCommand {
        wayback_bin: env!("CARGO_BIN_EXE_wayback").into(),
        archive_timeout_secs: 2,
    };
    let member = |machine: &str, name: &str, port, seed, target: ArchiveTarget| HaMemberSpec {
        cluster: cluster(port),
        member: name.into(),
        seed,
        dcs: vec![etcd.endpoint()],
        rest_port: free_port(),
        advertise_host: "127.0.0.1".into(),
        durability: Durability::Sync,
        replication_role: "wb_ha_repl".into(),
        replication_password: SecretString::from("ha-agents-replication-pw"),
        superuser_password: SecretString::from(SUPERUSER_PASSWORD),
        peer_addresses: vec!["127.0.0.1".into()],
        archive: Some((target, command.clone())),
        machine: Some(machine.into()),
    };
    let spec_a = member(&a.name, "m1", pg_a, HaSeed::Adopt, target.clone());
    rt.ha_start_member(&spec_a).await.unwrap();
    wait_status(rt, &id, "m1 leads", |s| {
        s.leader()
            .is_some_and(|l| l.name == "m1" && l.state == "running")
    })
    .await;
    let both = uri(&[pg_a, pg_b], "target_session_attrs=read-write");
    wait_writable(&both).await;
    let tl = timeline(&both);
    psql(&both, "CREATE TABLE ha_rows (n bigint PRIMARY KEY)").unwrap();
    psql(&both, "INSERT INTO ha_rows SELECT generate_series(1, 100)").unwrap();

    eprintln!("ha_agents: the standby on agent B");
    let mut standby_target = target.clone();
    standby_target.system_identifier = psql(
        &uri(&[pg_a], "connect_timeout=2"),
        "SELECT system_identifier FROM pg_control_system()",
    )
    .unwrap()
    .parse()
    .unwrap();
    let spec_b = member(&b.name, "m2", pg_b, HaSeed::FromLeader, standby_target);
    rt.ha_start_member(&spec_b).await.unwrap();
    assert!(
        b.data_dir
            .join("clusters")
            .join(id.as_str())
            .join("patroni/patroni.yml")
            .is_file(),
        "m2 runs on agent B"
    );
    wait_status(rt, &id, "m2 streams in sync", |s| {
        streams_in_sync(s, "m1", "m2", tl)
    })
    .await;
    assert_eq!(rows_on(pg_b).len(), 100, "the standby has the rows");

    eprintln!("ha_agents: the kill on agent A");
    let dir_a = a.data_dir.join("clusters").join(id.as_str());
    let dir_b = b.data_dir.join("clusters").join(id.as_str());
    let logs = || member_logs("agent a", &dir_a) + &member_logs("agent b", &dir_b);
    let writer = Writer::start(both.clone(), 1000);
    let begun = Instant::now();
    writer
        .wait_acked_since(begun, 20, "before the kill", logs)
        .await;
    crash_member(patroni_pid(&a.data_dir, &id), &dir_a.join("pgdata"));
    let killed = Instant::now();
    // Agent A's member no longer answers: the status comes through agent B.
    wait_status(rt, &id, "m2 takes over", |s| {
        s.leader()
            .is_some_and(|l| l.name == "m2" && l.state == "running")
    })
    .await;
    writer
        .wait_acked_since(killed, 5, "writes on the new primary", logs)
        .await;
    assert_eq!(timeline(&both), tl + 1, "the new primary's timeline");
    let log = writer.finish().await;
    let present = rows_on(pg_b);
    log.report_in_doubt("ha_agents: the failover", &present);
    let missing = log.missing(&present);
    assert!(
        missing.is_empty(),
        "sync mode lost {} of {} acknowledged rows: {missing:?}",
        missing.len(),
        log.acked.len()
    );

    eprintln!("ha_agents: the rejoin on agent A");
    // The lifecycle call through agent A starts its member's Patroni again.
    rt.start(&id).await.unwrap();
    wait_status(rt, &id, "m1 rejoins", |s| {
        streams_in_sync(s, "m2", "m1", tl + 1)
    })
    .await;
    assert_eq!(rows_on(pg_a), present, "the rejoined member has every row");
    assert_eq!(rt.status(&id).await.unwrap(), ClusterStatus::Running);

    eprintln!("ha_agents: the switchover");
    let leader = rt.ha_switchover(&id, Some("m1")).await.unwrap();
    assert_eq!(leader, "m1");
    wait_status(rt, &id, "m2 follows m1", |s| {
        streams_in_sync(s, "m1", "m2", tl + 2)
    })
    .await;
    psql(&both, "INSERT INTO ha_rows VALUES (-1)").unwrap();

    eprintln!("ha_agents: destroy");
    // Each member through its own agent; the last one removes the scope from etcd.
    remote_on(&fleet, &b.name).destroy(&id).await.unwrap();
    rt.destroy(&id).await.unwrap();
    assert_eq!(rt.status(&id).await.unwrap(), ClusterStatus::Absent);
    assert_eq!(etcd.count_prefix(&format!("/wayback/{id}/")).await, 0);
}
