//! The follower engine on real PostgreSQL and a real (encrypted) archive, through the runtime's
//! replication calls: a leader provisioned and backed up by the broker, a follower made by the
//! standby restore into a second cluster. Rows reach the follower by streaming; it refuses
//! writes; with the stream cut (walsender ended, `pg_hba` line gone) it keeps replaying from the
//! archive and streams again once allowed, after its leader's postmaster is killed (and
//! started again by the supervisor) and after its own restart by its runtime; a dead
//! follower's slot is lost past `max_slot_wal_keep_size` (granted again, it is replaced by a
//! slot that reserves WAL) and it replays from the archive; the
//! slot goes with `drop_replication`; promotion makes it writable on a new timeline. Once with the
//! local runtime, once through two agents (leader on one, follower on the other: every call
//! over the agent API).
//!
//! Run: `bash scripts/test follow_engine::`.

use crate::agents::Fleet;
use crate::common;
use crate::common::archive_wait::{prefix_of, wait_for_backup};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use secrecy::SecretString;
use sqlx::{ConnectOptions, Row};
use wayback::config::{AgentEndpoint, AgentsSettings};
use wayback::domain::InstanceId;
use wayback::runtime::{
    ArchiveAccess, ClusterRuntime, ClusterSpec, FollowSpec, LocalRuntime, RemoteRuntime,
    ReplicationGrant, RestoreState, StandbyStatus,
};
use wayback::storage::ObjectStore;

const ROLE: &str = "wb_repl_engine";
const SLOT: &str = "wb_follower_engine";

/// A second local runtime over the app's data directory, with the broker's archive, keys and
/// CA: what the broker's own runtime would do, called directly.
pub(crate) fn runtime_beside(app: &TestApp) -> LocalRuntime {
    let mut settings = test_settings(&app.data_dir, "unused");
    settings.archive = wayback::config::resolve::archive(&settings, &app.data_dir);
    let keyring = wayback::open::keyring(&settings, &app.data_dir).unwrap();
    let tls = wayback::open::cluster_tls(&settings, &app.data_dir).unwrap();
    LocalRuntime::new(app.data_dir.clone(), settings.postgres.clone())
        .with_tls(tls)
        .with_archive(ArchiveAccess {
            store: ObjectStore::local(&app.data_dir.join("archive")).unwrap(),
            wayback_bin: settings.wal.wayback_bin.clone().unwrap(),
            settings: Arc::new(settings),
            keyring: Some(Arc::new(keyring)),
        })
}

/// A superuser session on the running cluster in `dir` (a cluster directory).
pub(crate) async fn admin_at(dir: &Path) -> sqlx::PgConnection {
    let pid = std::fs::read_to_string(dir.join("pgdata/postmaster.pid")).expect("running");
    let port: u16 = pid.lines().nth(3).unwrap().trim().parse().unwrap();
    let password = std::fs::read_to_string(dir.join("admin-password")).unwrap();
    wayback::pg::sql::admin_options(
        &dir.join("run"),
        port,
        &SecretString::from(password.trim().to_string()),
    )
    .connect()
    .await
    .expect("superuser session")
}

pub(crate) async fn current_lsn(leader: &mut sqlx::PgConnection) -> u64 {
    sqlx::query_scalar::<_, i64>("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
        .fetch_one(leader)
        .await
        .unwrap() as u64
}

/// Polls the follower until `done` holds of its status.
async fn wait_standby(
    rt: &dyn ClusterRuntime,
    id: &InstanceId,
    what: &str,
    done: impl Fn(&StandbyStatus) -> bool,
) -> StandbyStatus {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = rt.standby_status(id).await.unwrap();
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: not within 120 s: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn at_port(uri: &str, port: u16) -> String {
    let mut u = reqwest::Url::parse(uri).unwrap();
    u.set_port(Some(port)).unwrap();
    u.to_string()
}

async fn rows(conn: &mut sqlx::PgConnection) -> Vec<String> {
    sqlx::query_scalar("SELECT what FROM orders ORDER BY 1")
        .fetch_all(conn)
        .await
        .unwrap()
}

/// The two sides of one story.
struct Sides {
    leader: String,
    leader_dir: PathBuf,
    follower: InstanceId,
    follower_dir: PathBuf,
    /// A binding of the leader (its tables belong to the app's owner role).
    uri: String,
    store: ObjectStore,
}

/// Provisions "production", waits for its first backup and binds it.
async fn leader(app: &TestApp, store: &ObjectStore) -> (String, String) {
    let leader = app.provision_ready("production").await;
    wait_for_backup(store, &leader).await;
    let binding = app.bind_sync(&leader, &new_id()).await;
    (leader, binding["uri"].as_str().unwrap().to_string())
}

async fn story(rt: &dyn ClusterRuntime, s: Sides) {
    assert!(
        s.store
            .get(&format!("{}/key.json", prefix_of(&s.leader).as_str()))
            .await
            .unwrap()
            .is_some(),
        "the leader's archive is encrypted"
    );
    let mut writer = connect(&s.uri).await.unwrap();
    exec(
        &mut writer,
        "CREATE TABLE orders (what text); INSERT INTO orders VALUES ('one')",
    )
    .await;
    let leader_id = InstanceId::parse(s.leader.clone()).unwrap();
    let mut admin = admin_at(&s.leader_dir).await;
    let leader_port: i64 = sqlx::query_scalar("SELECT current_setting('port')::bigint")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    let control = std::fs::read(s.leader_dir.join("pgdata/global/pg_control")).unwrap();
    let sysid = wayback::pg::control::system_identifier(&control).unwrap();
    let password = SecretString::from(format!("repl-{}", new_id()));
    let grant = |addr: &str| ReplicationGrant {
        role: ROLE.into(),
        password: password.clone(),
        slot: SLOT.into(),
        follower_address: addr.into(),
    };
    rt.prepare_replication(&leader_id, &grant("127.0.0.1"))
        .await
        .unwrap();
    rt.prepare_replication(&leader_id, &grant("127.0.0.1"))
        .await
        .expect("idempotent");

    let port = free_port();
    let spec = FollowSpec {
        port,
        leader: prefix_of(&s.leader),
        leader_system_identifier: sysid,
        leader_host: "127.0.0.1".into(),
        leader_port: leader_port as u16,
        role: ROLE.into(),
        password: password.clone(),
        slot: SLOT.into(),
    };
    let follower = &s.follower;
    rt.start_follow(follower, &spec).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let st = rt.restore_status(follower).await.unwrap();
        match st.state {
            RestoreState::Succeeded => break,
            RestoreState::Failed => panic!("the standby restore failed: {:?}", st.error),
            _ => assert!(Instant::now() < deadline, "no standby in 180 s: {st:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let conf = std::fs::read_to_string(s.follower_dir.join("pgdata/wayback-archive.conf")).unwrap();
    let secret = secrecy::ExposeSecret::expose_secret(&password);
    assert!(!conf.contains(secret), "no password in the conf");
    assert!(conf.contains("sslmode=verify-full"), "{conf}");

    // Streaming: a row written on the leader is replayed on the follower.
    exec(&mut writer, "INSERT INTO orders VALUES ('two')").await;
    let lsn = current_lsn(&mut admin).await;
    wait_standby(rt, follower, "streamed replay", |st| {
        st.streaming && st.replay_lsn >= Some(lsn)
    })
    .await;
    let mut reader = connect(&at_port(&s.uri, port)).await.unwrap();
    assert_eq!(rows(&mut reader).await, ["one", "two"]);
    let err = sqlx::query("INSERT INTO orders VALUES ('no')")
        .execute(&mut reader)
        .await
        .expect_err("a follower refuses writes");
    assert!(
        err.to_string()
            .contains("cannot execute INSERT in a read-only transaction"),
        "{err}"
    );
    let status = rt.replication_status(&leader_id).await.unwrap();
    let slot = status.iter().find(|r| r.slot == SLOT).expect("the slot");
    assert!(
        slot.active && slot.role.as_deref() == Some(ROLE),
        "{slot:?}"
    );
    assert!(slot.xmin_age.is_some(), "hot_standby_feedback: {slot:?}");

    // The stream cut: the follower's address is no longer allowed, its walsender ended.
    rt.prepare_replication(&leader_id, &grant("127.0.0.2"))
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_replication WHERE usename = $1")
        .bind(ROLE)
        .execute(&mut admin)
        .await
        .unwrap();
    wait_standby(rt, follower, "the stream cut", |st| !st.streaming).await;
    exec(&mut writer, "INSERT INTO orders VALUES ('three')").await;
    let lsn = current_lsn(&mut admin).await;
    sqlx::query("SELECT pg_switch_wal()")
        .execute(&mut admin)
        .await
        .unwrap();
    let st = wait_standby(rt, follower, "replay from the archive", |st| {
        st.replay_lsn >= Some(lsn)
    })
    .await;
    assert!(
        !st.streaming,
        "replayed from the archive, not streamed: {st:?}"
    );
    assert_eq!(rows(&mut reader).await, ["one", "three", "two"]);

    // Allowed again: it streams again.
    rt.prepare_replication(&leader_id, &grant("127.0.0.1"))
        .await
        .unwrap();
    wait_standby(rt, follower, "streaming again", |st| st.streaming).await;

    // The leader's postmaster killed: the broker's supervisor starts it again, its pg_hba.conf
    // rewritten with the follower's line kept, and the follower streams again.
    let pid = std::fs::read_to_string(s.leader_dir.join("pgdata/postmaster.pid")).unwrap();
    let pid: i32 = pid.lines().next().unwrap().trim().parse().unwrap();
    drop((admin, writer));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut writer = loop {
        match connect(&s.uri).await {
            Ok(c) => break c,
            Err(e) => assert!(Instant::now() < deadline, "the leader is not back: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut admin = admin_at(&s.leader_dir).await;
    let hba = std::fs::read_to_string(s.leader_dir.join("pgdata/pg_hba.conf")).unwrap();
    assert!(
        hba.contains(&format!("replication  {ROLE}  127.0.0.1/32")),
        "{hba}"
    );
    wait_standby(rt, follower, "streaming after the leader's restart", |st| {
        st.streaming
    })
    .await;

    // A follower stopped and started by its runtime is a standby still, and streams.
    drop(reader);
    rt.stop(follower).await.unwrap();
    rt.start(follower).await.unwrap();
    exec(&mut writer, "INSERT INTO orders VALUES ('3b')").await;
    let lsn = current_lsn(&mut admin).await;
    wait_standby(rt, follower, "streaming after a restart", |st| {
        st.in_recovery && st.streaming && st.replay_lsn >= Some(lsn)
    })
    .await;
    let mut reader = connect(&at_port(&s.uri, port)).await.unwrap();
    assert_eq!(rows(&mut reader).await, ["3b", "one", "three", "two"]);

    // A dead follower's slot is bounded: past the leader's max_slot_wal_keep_size it is lost
    // (the leader keeps no more WAL for it), and the follower, started again, catches up from
    // the archive.
    drop(reader);
    let mut bounded = std::collections::BTreeMap::new();
    bounded.insert("max_slot_wal_keep_size".to_string(), "1MB".to_string());
    // The hot-standby floors stay as they are: a leader above its follower pauses its replay.
    for name in [
        "max_connections",
        "max_worker_processes",
        "max_locks_per_transaction",
        "max_prepared_transactions",
        "max_wal_senders",
    ] {
        let value: String = sqlx::query_scalar(&format!("SHOW {name}"))
            .fetch_one(&mut admin)
            .await
            .unwrap();
        bounded.insert(name.to_string(), value);
    }
    // (The plan's other settings go, which may restart the leader.)
    rt.apply_settings(&ClusterSpec {
        instance: leader_id.clone(),
        port: leader_port as u16,
        settings: bounded,
        require_tls: false,
    })
    .await
    .unwrap();
    drop((admin, writer));
    let mut writer = connect(&s.uri).await.unwrap();
    let mut admin = admin_at(&s.leader_dir).await;
    rt.stop(follower).await.unwrap();
    for i in 0..4 {
        exec(&mut writer, &format!("INSERT INTO orders VALUES ('4-{i}')")).await;
        sqlx::query("SELECT pg_switch_wal()")
            .execute(&mut admin)
            .await
            .unwrap();
    }
    exec(&mut admin, "CHECKPOINT").await;
    let status = rt.replication_status(&leader_id).await.unwrap();
    let slot = status.iter().find(|r| r.slot == SLOT).expect("the slot");
    assert_eq!(slot.wal_status.as_deref(), Some("lost"), "{slot:?}");
    // Granted again (as the supervisor does for a lost slot), the lost slot is replaced by one
    // that reserves WAL from now on.
    rt.prepare_replication(&leader_id, &grant("127.0.0.1"))
        .await
        .unwrap();
    let status = rt.replication_status(&leader_id).await.unwrap();
    let slot = status.iter().find(|r| r.slot == SLOT).expect("the slot");
    assert_ne!(slot.wal_status.as_deref(), Some("lost"), "{slot:?}");
    exec(&mut writer, "INSERT INTO orders VALUES ('5')").await;
    let lsn = current_lsn(&mut admin).await;
    sqlx::query("SELECT pg_switch_wal()")
        .execute(&mut admin)
        .await
        .unwrap();
    rt.start(follower).await.unwrap();
    let st = wait_standby(
        rt,
        follower,
        "replay from the archive past a lost slot",
        |st| st.replay_lsn >= Some(lsn),
    )
    .await;
    // (The segments it missed are gone from the leader, so they came from the archive;
    // PostgreSQL 15 then lets the lost physical slot stream again from where it is.)
    assert!(st.in_recovery, "{st:?}");
    let mut reader = connect(&at_port(&s.uri, port)).await.unwrap();
    assert_eq!(rows(&mut reader).await.len(), 9);

    // Withdrawn: the slot goes (and with it the WAL it held).
    rt.drop_replication(&leader_id, ROLE, SLOT).await.unwrap();
    rt.drop_replication(&leader_id, ROLE, SLOT)
        .await
        .expect("idempotent");
    let status = rt.replication_status(&leader_id).await.unwrap();
    assert!(status.iter().all(|r| r.slot != SLOT), "{status:?}");
    let roles: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_roles WHERE rolname = $1")
        .bind(ROLE)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(roles, 0);

    // Promoted: writable, on a new timeline, with no standby settings left.
    drop(reader);
    let timeline = rt.promote(follower).await.unwrap();
    assert!(timeline > 1, "a new timeline: {timeline}");
    let mut own = connect(&at_port(&s.uri, port)).await.unwrap();
    exec(&mut own, "INSERT INTO orders VALUES ('four')").await;
    let row = sqlx::query("SELECT count(*) FROM orders")
        .fetch_one(&mut own)
        .await
        .unwrap();
    assert_eq!(row.get::<i64, _>(0), 10);
    assert!(!s.follower_dir.join("pgdata/standby.signal").exists());
    drop(own);
    rt.destroy(follower).await.unwrap();
}

#[tokio::test]
async fn a_follower_streams_falls_back_to_the_archive_and_is_promoted() {
    if !pg_available() {
        return;
    }
    let app = spawn_app().await;
    let store = ObjectStore::local(&app.data_dir.join("archive")).unwrap();
    let (leader, uri) = leader(&app, &store).await;
    let local = runtime_beside(&app);
    let follower = InstanceId::parse(new_id()).unwrap();
    let sides = Sides {
        leader_dir: app.cluster_dir(&leader),
        follower_dir: app.cluster_dir(follower.as_str()),
        leader,
        follower,
        uri,
        store,
    };
    // Through the trait, as the broker's job steps will call it.
    story(&local, sides).await;
}

#[tokio::test]
async fn a_follower_on_another_agent_streams_from_its_leader_over_the_agent_api() {
    if !pg_available() {
        return;
    }
    let fleet = Fleet::start(2, |_| {}).await;
    let store = fleet.store();
    let (leader, uri) = leader(&fleet.app, &store).await;
    let on = fleet.placed_on(&leader).await.expect("placed");
    let leader_agent = fleet.agents.iter().find(|a| a.name == on).unwrap();
    let other = fleet.agents.iter().find(|a| a.name != on).unwrap();
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
    let follower = InstanceId::parse(new_id()).unwrap();
    let (leader_name, other_name) = (on.clone(), other.name.clone());
    let follower_id = follower.to_string();
    remote.set_resolver(Box::new(move |id| {
        let agent = if id.as_str() == follower_id {
            other_name.clone()
        } else {
            leader_name.clone()
        };
        Box::pin(async move { Some(agent) })
    }));
    let sides = Sides {
        leader_dir: leader_agent.data_dir.join("clusters").join(&leader),
        follower_dir: other.data_dir.join("clusters").join(follower.as_str()),
        leader,
        follower,
        uri,
        store,
    };
    story(&remote, sides).await;
}
