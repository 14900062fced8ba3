//! The HA engine (issue 15) in `async` mode, and its members reading the instance's archive, on
//! real PostgreSQL, a real etcd and real Patroni (two `LocalRuntime`s stand for two machines, as
//! in `ha_engine`). A standby stopped while its leader recycled the WAL it needs (its slot gone,
//! segments switched, checkpointed) catches up from the archive through the member's
//! `restore_command` (`wal-fetch` from the instance's prefix) when started again. Then `kill -9`
//! of the primary under a write load: the standby leads by itself and takes writes; the
//! acknowledged rows `async` mode lost are counted and printed (not asserted: the engine bounds
//! them by `maximum_lag_on_failover`); the old primary, started again, rejoins by `pg_rewind`
//! and ends with the new primary's rows. Last, a member whose rewind fails (it diverged, and
//! `pg_rewind` cannot write its data directory) is emptied and seeded again from the leader by
//! Patroni (`remove_data_directory_on_rewind_failure`), not left down.
//!
//! Run: `bash scripts/test ha_async::` (needs `patroni` and `etcd`: `bash scripts/setup`).

use std::time::{Duration, Instant};

use crate::common::etcd::{ha_binaries_available, tail, Etcd};
use crate::common::s3_server::S3Server;
use crate::common::*;
use crate::ha_engine::{
    crash_member, member_logs, psql, rows_on, server_log, timeline, uri, wait_status,
    wait_writable, Cleanup, Machine, Writer, ENGINE_WAIT, SUPERUSER_PASSWORD,
};
use secrecy::SecretString;
use wayback::archive::ArchiveTarget;
use wayback::domain::{InstanceId, SpaceGuid};
use wayback::runtime::{
    ArchiveCommand, ClusterSpec, Durability, HaMemberSpec, HaRole, HaSeed, HaStatus,
};

/// `standby` replicates `leader` asynchronously on `timeline`, caught up.
fn streams_async(s: &HaStatus, leader: &str, standby: &str, timeline: u32) -> bool {
    s.leader()
        .is_some_and(|l| l.name == leader && l.timeline == Some(timeline))
        && s.member(standby).is_some_and(|m| {
            m.role == HaRole::Replica
                && matches!(m.state.as_str(), "streaming" | "running")
                && m.timeline == Some(timeline)
                && m.lag_bytes == Some(0)
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_pair_reads_the_archive_fails_over_and_counts_what_it_lost() {
    if !pg_available() || !ha_binaries_available() {
        return;
    }
    let Some(s3) = S3Server::start().await else {
        require("s3s-fs (the test's own S3 server)", false);
        return;
    };
    let etcd = Etcd::start().await;
    let root = test_root();
    let (a, b) = (
        Machine::new(root.path(), "a", &s3),
        Machine::new(root.path(), "b", &s3),
    );
    let id = InstanceId::parse(new_id()).unwrap();
    let _cleanup = Cleanup(vec![
        (a.data_dir.clone(), id.clone()),
        (b.data_dir.clone(), id.clone()),
    ]);
    let space = SpaceGuid::parse(SPACE).unwrap();
    let logs = || member_logs("a", &a.cluster_dir(&id)) + &member_logs("b", &b.cluster_dir(&id));

    a.rt().prepare().await.unwrap();
    b.rt().prepare().await.unwrap();
    let cluster = |port| ClusterSpec {
        instance: id.clone(),
        port,
        settings: Default::default(),
        require_tls: false,
    };
    a.rt().create_cluster(&cluster(a.pg_port)).await.unwrap();
    let target = {
        let mut settings = test_settings(&a.data_dir, "unused");
        settings.archive = s3.settings("ha");
        ArchiveTarget::for_instance(&settings, &space, &id)
    };
    let command = ArchiveCommand {
        wayback_bin: env!("CARGO_BIN_EXE_wayback").into(),
        archive_timeout_secs: 2,
    };
    let member = |m: &Machine, name: &str, seed, target: ArchiveTarget| HaMemberSpec {
        cluster: cluster(m.pg_port),
        member: name.into(),
        seed,
        dcs: vec![etcd.endpoint()],
        rest_port: m.rest_port,
        advertise_host: "127.0.0.1".into(),
        durability: Durability::Async,
        replication_role: "wb_ha_repl".into(),
        replication_password: SecretString::from("ha-async-replication-pw"),
        superuser_password: SecretString::from(SUPERUSER_PASSWORD),
        peer_addresses: vec!["127.0.0.1".into()],
        archive: Some((target, command.clone())),
        machine: None,
    };
    a.rt()
        .ha_start_member(&member(&a, "m1", HaSeed::Adopt, target.clone()))
        .await
        .unwrap();
    wait_status(&a, &id, "m1 leads", |s| {
        s.leader()
            .is_some_and(|l| l.name == "m1" && l.state == "running")
    })
    .await;
    let both = uri(&[a.pg_port, b.pg_port], "target_session_attrs=read-write");
    let only_a = uri(&[a.pg_port], "connect_timeout=2");
    wait_writable(&both).await;
    let tl = timeline(&both);
    psql(&both, "CREATE TABLE ha_rows (n bigint PRIMARY KEY)").unwrap();
    psql(&both, "INSERT INTO ha_rows SELECT generate_series(1, 100)").unwrap();
    let mut standby_target = target.clone();
    standby_target.system_identifier = a.runtime.system_identifier(&id).unwrap();
    let spec_b = member(&b, "m2", HaSeed::FromLeader, standby_target);
    b.rt().ha_start_member(&spec_b).await.unwrap();
    wait_status(&a, &id, "m2 streams", |s| streams_async(s, "m1", "m2", tl)).await;

    eprintln!("ha_async: the standby stopped while the leader recycles its WAL");
    // The segment m2 stands in (it is caught up): it needs it, and every one after it.
    let needed = psql(&only_a, "SELECT pg_walfile_name(pg_current_wal_lsn())").unwrap();
    b.rt().stop(&id).await.unwrap();
    // m2's key expires (ttl); Patroni on m1 then drops m2's slot, which held the WAL.
    let deadline = Instant::now() + ENGINE_WAIT;
    while psql(
        &only_a,
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'm2'",
    )
    .as_deref()
        != Ok("0")
    {
        assert!(Instant::now() < deadline, "m2's slot stayed\n{}", logs());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let wal_a = a.cluster_dir(&id).join("pgdata/pg_wal");
    let deadline = Instant::now() + ENGINE_WAIT;
    let mut next = 1_000_000;
    while wal_a.join(&needed).exists() {
        assert!(
            Instant::now() < deadline,
            "m1 kept {needed} in pg_wal\n{}",
            logs()
        );
        // New WAL in new segments; a segment leaves pg_wal once archived and checkpointed past.
        psql(
            &only_a,
            &format!(
                "INSERT INTO ha_rows SELECT generate_series({next}, {})",
                next + 99
            ),
        )
        .unwrap();
        next += 100;
        psql(&only_a, "SELECT pg_switch_wal()").unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        psql(&only_a, "CHECKPOINT").unwrap();
    }
    b.rt().start(&id).await.unwrap();
    wait_status(&a, &id, "m2 catches up from the archive", |s| {
        streams_async(s, "m1", "m2", tl)
    })
    .await;
    assert_eq!(rows_on(b.pg_port), rows_on(a.pg_port), "m2 has every row");
    let restored = format!("restored log file \"{needed}\" from archive");
    assert!(
        server_log(&b.cluster_dir(&id)).contains(&restored),
        "m2 did not read {needed} from the archive\n{}",
        member_logs("b", &b.cluster_dir(&id))
    );

    eprintln!("ha_async: the kill");
    let writer = Writer::start(both.clone(), 2_000_000);
    let begun = Instant::now();
    writer
        .wait_acked_since(begun, 20, "before the kill", logs)
        .await;
    crash_member(
        a.patroni_pid(&id).expect("patroni runs on a"),
        &a.cluster_dir(&id).join("pgdata"),
    );
    let killed = Instant::now();
    wait_status(&b, &id, "m2 takes over", |s| {
        s.leader()
            .is_some_and(|l| l.name == "m2" && l.state == "running")
    })
    .await;
    writer
        .wait_acked_since(killed, 5, "writes on the new primary", logs)
        .await;
    assert_eq!(timeline(&both), tl + 1, "the new primary's timeline");
    let log = writer.finish().await;
    let present = rows_on(b.pg_port);
    log.report_in_doubt("ha_async: the failover", &present);
    let lost = log.missing(&present);
    eprintln!(
        "ha_async: async mode lost {} of {} acknowledged rows: {lost:?}",
        lost.len(),
        log.acked.len()
    );

    eprintln!("ha_async: the rejoin");
    a.rt().start(&id).await.unwrap();
    wait_status(&b, &id, "m1 rejoins", |s| {
        streams_async(s, "m2", "m1", tl + 1)
    })
    .await;
    assert!(
        a.patroni_log(&id).contains("rewind"),
        "m1 did not rejoin by pg_rewind:\n{}",
        tail(&a.patroni_log(&id), 30)
    );
    assert_eq!(
        rows_on(a.pg_port),
        rows_on(b.pg_port),
        "the rejoined member has the new primary's rows"
    );

    eprintln!("ha_async: a rewind that fails re-seeds the member");
    // m1 stops; m2 takes rows m1 never gets, and crashes; m1, started again, leads on the next
    // timeline: m2 has diverged and must be rewound. m2's pg_hba.conf becomes root's (readable,
    // not writable by the cluster user): pg_rewind, which copies it from the leader, fails.
    a.rt().stop(&id).await.unwrap();
    psql(
        &uri(&[b.pg_port], "connect_timeout=2"),
        "INSERT INTO ha_rows SELECT generate_series(3000000, 3000009)",
    )
    .unwrap();
    crash_member(
        b.patroni_pid(&id).expect("patroni runs on b"),
        &b.cluster_dir(&id).join("pgdata"),
    );
    a.rt().start(&id).await.unwrap();
    wait_status(&a, &id, "m1 leads again", |s| {
        s.leader()
            .is_some_and(|l| l.name == "m1" && l.timeline == Some(tl + 2))
    })
    .await;
    wait_writable(&only_a).await;
    let hba = b.cluster_dir(&id).join("pgdata/pg_hba.conf");
    std::os::unix::fs::chown(&hba, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&hba, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    b.rt().start(&id).await.unwrap();
    wait_status(&a, &id, "m2 re-seeded", |s| {
        streams_async(s, "m1", "m2", tl + 2)
    })
    .await;
    let log_b = b.patroni_log(&id);
    assert!(
        log_b.contains("Failed to rewind")
            && log_b.contains("remove_data_directory_on_rewind_failure"),
        "m2 was not re-seeded after a failed rewind:\n{}",
        tail(&log_b, 40)
    );
    let rows_b = rows_on(b.pg_port);
    assert_eq!(
        rows_b,
        rows_on(a.pg_port),
        "the re-seeded member has the leader's rows"
    );
    assert!(!rows_b.contains(&3_000_000), "m2's diverged rows are gone");

    b.rt().destroy(&id).await.unwrap();
    a.rt().destroy(&id).await.unwrap();
    assert_eq!(etcd.count_prefix(&format!("/wayback/{id}/")).await, 0);
}
