//! The follower engine on real PostgreSQL and a real (encrypted) archive, through the local
//! runtime's replication primitives: a leader provisioned and backed up by the broker, a
//! follower made by the standby restore into a second cluster. Rows reach the follower by
//! streaming; it refuses writes; with the stream cut (walsender ended, `pg_hba` line gone) it
//! keeps replaying from the archive and streams again once allowed; the slot goes with
//! `drop_replication`; promotion makes it writable on a new timeline.
//!
//! Run: `bash scripts/test follow_engine::`.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use secrecy::SecretString;
use sqlx::Row;
use wayback::archive::layout::InstancePrefix;
use wayback::archive::window::restore_window;
use wayback::domain::{InstanceId, SpaceGuid};
use wayback::runtime::{
    ArchiveAccess, FollowSpec, LocalRuntime, ReplicationGrant, RestoreState, StandbyStatus,
};
use wayback::storage::ObjectStore;

const ROLE: &str = "wb_repl_engine";
const SLOT: &str = "wb_follower_engine";

fn prefix_of(id: &str) -> InstancePrefix {
    InstancePrefix::new(
        &SpaceGuid::parse(SPACE).unwrap(),
        &InstanceId::parse(id.to_string()).unwrap(),
    )
}

/// A second local runtime over the app's data directory, with the broker's archive, keys and
/// CA: what the broker's own runtime would do, called directly.
fn runtime_beside(app: &TestApp) -> LocalRuntime {
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

async fn wait_for_backup(store: &ObjectStore, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while restore_window(store, &prefix_of(id))
        .await
        .unwrap()
        .backups
        .is_empty()
    {
        assert!(Instant::now() < deadline, "no base backup of {id} in 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn current_lsn(leader: &mut sqlx::PgConnection) -> u64 {
    sqlx::query_scalar::<_, i64>("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
        .fetch_one(leader)
        .await
        .unwrap() as u64
}

/// Polls the follower until `done` holds of its status.
async fn wait_standby(
    rt: &LocalRuntime,
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

fn at_port(uri: &str, port: u16) -> String {
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

#[tokio::test]
async fn a_follower_streams_falls_back_to_the_archive_and_is_promoted() {
    if !pg_available() {
        return;
    }
    let app = spawn_app().await;
    let store = ObjectStore::local(&app.data_dir.join("archive")).unwrap();
    let leader = app.provision_ready("production").await;
    wait_for_backup(&store, &leader).await;
    assert!(
        store
            .get(&format!("{}/key.json", prefix_of(&leader).as_str()))
            .await
            .unwrap()
            .is_some(),
        "the leader's archive is encrypted"
    );
    let binding = app.bind_sync(&leader, &new_id()).await;
    let uri = binding["uri"].as_str().unwrap().to_string();
    let mut writer = connect(&uri).await.unwrap();
    exec(
        &mut writer,
        "CREATE TABLE orders (what text); INSERT INTO orders VALUES ('one')",
    )
    .await;

    let rt = runtime_beside(&app);
    let leader_id = InstanceId::parse(leader.clone()).unwrap();
    let mut admin = app.admin(&leader).await;
    let leader_port: i64 = sqlx::query_scalar("SELECT current_setting('port')::bigint")
        .fetch_one(&mut admin)
        .await
        .unwrap();
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

    let follower = InstanceId::parse(new_id()).unwrap();
    let port = free_port();
    let superuser =
        std::fs::read_to_string(app.cluster_dir(&leader).join("admin-password")).unwrap();
    let spec = FollowSpec {
        port,
        leader: prefix_of(&leader),
        leader_system_identifier: rt.system_identifier(&leader_id).unwrap(),
        leader_host: "127.0.0.1".into(),
        leader_port: leader_port as u16,
        role: ROLE.into(),
        password: password.clone(),
        slot: SLOT.into(),
        superuser_password: SecretString::from(superuser.trim().to_string()),
    };
    rt.start_follow(&follower, &spec).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let s = rt.restore_status(&follower).await.unwrap();
        match s.state {
            RestoreState::Succeeded => break,
            RestoreState::Failed => panic!("the standby restore failed: {:?}", s.error),
            _ => assert!(Instant::now() < deadline, "no standby in 180 s: {s:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let conf = std::fs::read_to_string(
        app.cluster_dir(follower.as_str())
            .join("pgdata/wayback-archive.conf"),
    )
    .unwrap();
    assert!(
        !conf.contains(password_text(&password)),
        "no password in the conf"
    );
    assert!(conf.contains("sslmode=verify-full"), "{conf}");

    // Streaming: a row written on the leader is replayed on the follower.
    exec(&mut writer, "INSERT INTO orders VALUES ('two')").await;
    let lsn = current_lsn(&mut admin).await;
    wait_standby(&rt, &follower, "streamed replay", |s| {
        s.streaming && s.replay_lsn >= Some(lsn)
    })
    .await;
    let mut reader = connect(&at_port(&uri, port)).await.unwrap();
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
    let slot = status.iter().find(|s| s.slot == SLOT).expect("the slot");
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
    wait_standby(&rt, &follower, "the stream cut", |s| !s.streaming).await;
    exec(&mut writer, "INSERT INTO orders VALUES ('three')").await;
    let lsn = current_lsn(&mut admin).await;
    sqlx::query("SELECT pg_switch_wal()")
        .execute(&mut admin)
        .await
        .unwrap();
    let s = wait_standby(&rt, &follower, "replay from the archive", |s| {
        s.replay_lsn >= Some(lsn)
    })
    .await;
    assert!(
        !s.streaming,
        "replayed from the archive, not streamed: {s:?}"
    );
    assert_eq!(rows(&mut reader).await, ["one", "three", "two"]);

    // Allowed again: it streams again.
    rt.prepare_replication(&leader_id, &grant("127.0.0.1"))
        .await
        .unwrap();
    wait_standby(&rt, &follower, "streaming again", |s| s.streaming).await;

    // Withdrawn: the slot goes (and with it the WAL it held).
    rt.drop_replication(&leader_id, ROLE, SLOT).await.unwrap();
    rt.drop_replication(&leader_id, ROLE, SLOT)
        .await
        .expect("idempotent");
    let status = rt.replication_status(&leader_id).await.unwrap();
    assert!(status.iter().all(|s| s.slot != SLOT), "{status:?}");
    let roles: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_roles WHERE rolname = $1")
        .bind(ROLE)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(roles, 0);

    // Promoted: writable, on a new timeline, with no standby settings left.
    drop(reader);
    let timeline = rt.promote(&follower).await.unwrap();
    assert!(timeline > 1, "a new timeline: {timeline}");
    let mut own = connect(&at_port(&uri, port)).await.unwrap();
    exec(&mut own, "INSERT INTO orders VALUES ('four')").await;
    let row = sqlx::query("SELECT count(*) FROM orders")
        .fetch_one(&mut own)
        .await
        .unwrap();
    assert_eq!(row.get::<i64, _>(0), 4);
    assert!(!app
        .cluster_dir(follower.as_str())
        .join("pgdata/standby.signal")
        .exists());
    drop(own);
    rt.destroy(&follower).await.unwrap();
}

fn password_text(p: &SecretString) -> &str {
    secrecy::ExposeSecret::expose_secret(p)
}
