//! The archive across timelines (issue 15 point 4) on real PostgreSQL and the S3 server the
//! test script runs, without Patroni: a failover made by hand. The leader (provisioned by the
//! broker, archiving to prefix P) archives as an HA member does, with `wal-push --fence`; a
//! standby (the follower engine's standby restore) streams from it with `archive_mode = on`
//! and, once promoted, archives to P too, fenced likewise. After the promotion the old primary
//! keeps running and writing: its segment holding WAL past the switch point is refused (its
//! archiver reports the failure, its log says FENCED, P never gets it), while the new
//! timeline's `.history`, the old timeline's `.partial` and the new segments arrive; the same
//! segment beside a `pg_control` on timeline 2 (a server that left timeline 1) is acknowledged
//! without being archived. Then the runtime restores P as a clone does: "latest" holds every
//! row the new primary committed and none of the old primary's after the failover; a point in
//! time before the failover holds the rows of that time.
//!
//! Run: `bash scripts/test ha_timelines::`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::archive_wait::{archive_now, prefix_of, wait_for_backup};
use crate::common::*;
use crate::follow_engine::{admin_at, at_port, current_lsn};
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use wayback::archive::fence;
use wayback::archive::layout::{segment_for_lsn, InstancePrefix, WalFileName};
use wayback::archive::restore::RestoreTarget;
use wayback::archive::window::restore_window;
use wayback::archive::ArchiveTarget;
use wayback::domain::{InstanceId, SpaceGuid};
use wayback::runtime::{
    ArchiveAccess, ClusterRuntime, FollowSpec, LocalRuntime, ReplicationGrant, RestoreSpec,
    RestoreState,
};
use wayback::storage::{ObjectStore, StorageSettings};

const ROLE: &str = "wb_repl_timelines";
const SLOT: &str = "wb_follower_timelines";
const SEGMENT: u64 = 16 << 20;
const WAIT: Duration = Duration::from_secs(120);

/// A local runtime over the app's data directory with the app's S3 archive, keys and CA.
fn runtime_on(app: &TestApp, archive: &StorageSettings) -> LocalRuntime {
    let mut settings = test_settings(&app.data_dir, "unused");
    settings.archive = archive.clone();
    let keyring = wayback::open::keyring(&settings, &app.data_dir).unwrap();
    let tls = wayback::open::cluster_tls(&settings, &app.data_dir).unwrap();
    LocalRuntime::new(app.data_dir.clone(), settings.postgres.clone())
        .with_tls(tls)
        .with_archive(ArchiveAccess {
            store: ObjectStore::open(archive).unwrap(),
            wayback_bin: settings.wal.wayback_bin.clone().unwrap(),
            settings: Arc::new(settings),
            keyring: Some(Arc::new(keyring)),
        })
}

/// Polls `check` until it answers Some, for at most [`WAIT`].
async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn archived(store: &ObjectStore, p: &InstancePrefix, name: &str) -> bool {
    let key = p.wal(&WalFileName::parse(name).unwrap());
    store.head(&key).await.unwrap().is_some()
}

/// Waits until `name` is under `p`.
async fn wait_archived(store: &ObjectStore, p: &InstancePrefix, name: &str) {
    until(&format!("{name} in the archive"), || async {
        archived(store, p, name).await.then_some(())
    })
    .await
}

async fn rows(conn: &mut sqlx::PgConnection) -> Vec<String> {
    sqlx::query_scalar("SELECT what FROM t ORDER BY 1")
        .fetch_all(conn)
        .await
        .unwrap()
}

/// The server's clock, to the microsecond.
async fn now(conn: &mut sqlx::PgConnection) -> DateTime<Utc> {
    let text: String = sqlx::query_scalar(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
    .fetch_one(conn)
    .await
    .unwrap();
    text.parse().unwrap()
}

/// The archive include that makes a server archive to `target_file` with `wal-push --fence`.
fn fenced_archiving(target_file: &Path) -> String {
    format!(
        "archive_mode = 'on'\narchive_command = '{} wal-push --fence --target {} %p'\n\
         archive_timeout = '60s'\n",
        env!("CARGO_BIN_EXE_wayback"),
        target_file.display()
    )
}

/// The runtime restores P into a new cluster as a clone's restore does; its rows, read with
/// the leader's binding.
async fn restored_rows(
    rt: &dyn ClusterRuntime,
    p: &InstancePrefix,
    sysid: u64,
    target: RestoreTarget,
    uri: &str,
) -> Vec<String> {
    let id = InstanceId::parse(new_id()).unwrap();
    let port = free_port();
    let spec = RestoreSpec {
        port,
        space: SpaceGuid::parse(SPACE).unwrap(),
        source: p.clone(),
        source_system_identifier: sysid,
        target,
        archive_timeout_secs: 60,
        kept_copy: None,
        live_fork: None,
    };
    rt.start_restore(&id, &spec).await.unwrap();
    until("the restore", || async {
        let st = rt.restore_status(&id).await.unwrap();
        match st.state {
            RestoreState::Succeeded => Some(()),
            RestoreState::Failed => panic!("the restore failed: {:?}", st.error),
            _ => None,
        }
    })
    .await;
    let mut conn = connect(&at_port(uri, port)).await.unwrap();
    let got = rows(&mut conn).await;
    drop(conn);
    rt.destroy(&id).await.unwrap();
    got
}

#[tokio::test]
async fn after_a_failover_the_old_primary_is_fenced_and_restores_follow_the_new_timeline() {
    let s3 = shared_s3_settings("tl");
    if !require("an S3 server in WAYBACK_TEST_S3_*", s3.is_some()) || !pg_available() {
        return;
    }
    let s3 = s3.unwrap();
    let store = ObjectStore::open(&s3).unwrap();
    // No archive timeout or interval switch during the test: every switch is the test's own.
    let app = spawn_app_with(|s| {
        s.archive = s3.clone();
        s.wal.archive_timeout_secs = 60;
    })
    .await;
    let rt = runtime_on(&app, &s3);
    let leader = app.provision_ready("timelines").await;
    wait_for_backup(&store, &leader).await;
    let uri = app.bind_sync(&leader, &new_id()).await["uri"]
        .as_str()
        .unwrap()
        .to_string();
    let p = prefix_of(&leader);
    let leader_id = InstanceId::parse(leader.clone()).unwrap();
    let leader_dir = app.cluster_dir(&leader);

    // The leader archives as an HA member does.
    let include = leader_dir.join("pgdata/wayback-archive.conf");
    let text = std::fs::read_to_string(&include).unwrap();
    assert!(text.contains("wal-push --target"), "{text}");
    std::fs::write(
        &include,
        text.replace("wal-push --target", "wal-push --fence --target"),
    )
    .unwrap();
    let mut admin = app.admin(&leader).await;
    exec(&mut admin, "SELECT pg_reload_conf()").await;
    let deadline = Instant::now() + WAIT;
    loop {
        let cmd: String = sqlx::query_scalar("SHOW archive_command")
            .fetch_one(&mut admin)
            .await
            .unwrap();
        if cmd.contains("--fence") {
            break;
        }
        assert!(Instant::now() < deadline, "the reload: {cmd}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut old = connect(&uri).await.unwrap();
    exec(
        &mut old,
        "CREATE TABLE t (what text); INSERT INTO t VALUES ('one')",
    )
    .await;

    // A standby of it.
    let control = std::fs::read(leader_dir.join("pgdata/global/pg_control")).unwrap();
    let sysid = wayback::pg::control::system_identifier(&control).unwrap();
    let leader_port: i64 = sqlx::query_scalar("SELECT current_setting('port')::bigint")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    let password = SecretString::from(format!("repl-{}", new_id()));
    let grant = ReplicationGrant {
        role: ROLE.into(),
        password: password.clone(),
        slot: SLOT.into(),
        follower_address: "127.0.0.1".into(),
    };
    rt.prepare_replication(&leader_id, &grant).await.unwrap();
    let standby = InstanceId::parse(new_id()).unwrap();
    let standby_dir = app.cluster_dir(standby.as_str());
    let standby_port = free_port();
    let spec = FollowSpec {
        port: standby_port,
        leader: p.clone(),
        leader_system_identifier: sysid,
        leader_host: "127.0.0.1".into(),
        leader_port: leader_port as u16,
        role: ROLE.into(),
        password,
        slot: SLOT.into(),
    };
    rt.start_follow(&standby, &spec).await.unwrap();
    until("the standby", || async {
        let st = rt.restore_status(&standby).await.unwrap();
        match st.state {
            RestoreState::Succeeded => Some(()),
            RestoreState::Failed => panic!("the standby restore failed: {:?}", st.error),
            _ => None,
        }
    })
    .await;
    // Once promoted it archives into P, fenced: its own copy of the leader's target file.
    let shared = standby_dir.join("archive-shared.json");
    let leader_target = leader_dir.join("archive.json");
    ArchiveTarget::load(&leader_target)
        .unwrap()
        .write(&shared)
        .unwrap();
    let meta = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&leader_target).unwrap());
    let gid = std::os::unix::fs::MetadataExt::gid(&std::fs::metadata(&leader_target).unwrap());
    std::os::unix::fs::chown(&shared, Some(meta), Some(gid)).unwrap();
    let standby_include = standby_dir.join("pgdata/wayback-archive.conf");
    let mut text = std::fs::read_to_string(&standby_include).unwrap();
    text.push_str(&fenced_archiving(&shared));
    std::fs::write(&standby_include, text).unwrap();
    rt.stop(&standby).await.unwrap();
    rt.start(&standby).await.unwrap();

    exec(&mut old, "INSERT INTO t VALUES ('two')").await;
    let before_failover = now(&mut old).await;
    // A switch now restarts the leader's archive timeout; 'three' puts the switch point inside
    // the next segment.
    archive_now(&mut admin, &store, &leader).await;
    exec(&mut old, "INSERT INTO t VALUES ('three')").await;
    let lsn = current_lsn(&mut admin).await;
    until("the standby's replay", || async {
        let st = rt.standby_status(&standby).await.unwrap();
        (st.streaming && st.replay_lsn >= Some(lsn)).then_some(())
    })
    .await;

    // The failover: the standby is promoted while the old primary keeps running.
    let timeline = rt.promote(&standby).await.unwrap();
    assert_eq!(timeline, 2);
    // (`promote` turns archiving off, as for a follower; an HA member keeps it.)
    std::fs::write(&standby_include, fenced_archiving(&shared)).unwrap();
    let mut new_admin = admin_at(&standby_dir).await;
    exec(&mut new_admin, "SELECT pg_reload_conf()").await;
    wait_archived(&store, &p, "00000002.history").await;
    let history =
        std::fs::read_to_string(standby_dir.join("pgdata/pg_wal/00000002.history")).unwrap();
    let switch = fence::switch_point(&fence::parse_history(&history).unwrap(), 1).unwrap();
    assert!(switch % SEGMENT != 0, "'three' is past the segment start");
    let partial = format!("{}.partial", segment_for_lsn(1, switch, SEGMENT));
    wait_archived(&store, &p, &partial).await;

    // The old primary writes on: its segment holding WAL past the switch point is refused.
    exec(&mut old, "INSERT INTO t VALUES ('lost')").await;
    let refused: String = sqlx::query_scalar("SELECT pg_walfile_name(pg_switch_wal())")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(
        fence::refuses(&WalFileName::parse(&refused).unwrap(), SEGMENT, switch),
        "{refused} holds WAL past {switch:X}"
    );
    until("the old primary's archiver failing on it", || async {
        let stats = rt.archiver_stats(&leader_id).await.unwrap();
        (stats.failed_count > 0 && stats.last_failed_wal.as_deref() == Some(refused.as_str()))
            .then_some(())
    })
    .await;
    let log = std::fs::read_dir(leader_dir.join("log"))
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<String>();
    assert!(
        log.contains("FENCED") && log.contains(&refused),
        "the old primary's log says why"
    );

    // A server that has left timeline 1 (its checkpoint is on 2) acknowledges such a leftover
    // without archiving it; one still on 1 is refused. The real binary, on the real segment,
    // beside each server's real pg_control.
    exec(&mut new_admin, "CHECKPOINT").await;
    for (control_of, timeline, code) in [(&leader_dir, 1, 1), (&standby_dir, 2, 0)] {
        let control = std::fs::read(control_of.join("pgdata/global/pg_control")).unwrap();
        assert_eq!(fence::checkpoint_timeline(&control), Some(timeline));
        let pgdata = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(pgdata.path().join("pg_wal")).unwrap();
        std::fs::create_dir_all(pgdata.path().join("global")).unwrap();
        std::fs::write(pgdata.path().join("global/pg_control"), control).unwrap();
        std::fs::copy(
            leader_dir.join("pgdata/pg_wal").join(&refused),
            pgdata.path().join("pg_wal").join(&refused),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wayback"))
            .args(["wal-push", "--fence", "--target"])
            .arg(&shared)
            .arg(format!("pg_wal/{refused}"))
            .current_dir(pgdata.path())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "a server on timeline {timeline}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("FENCED"));
    }

    // The new primary writes on its timeline, which reaches P.
    let mut new = connect(&at_port(&uri, standby_port)).await.unwrap();
    exec(&mut new, "INSERT INTO t VALUES ('four')").await;
    let seg: String = sqlx::query_scalar("SELECT pg_walfile_name(pg_switch_wal())")
        .fetch_one(&mut new_admin)
        .await
        .unwrap();
    assert!(seg.starts_with("00000002"), "{seg}");
    wait_archived(&store, &p, &seg).await;
    assert!(
        !archived(&store, &p, &refused).await,
        "{refused} was fenced"
    );
    let listing = store.list(&p.wal_dir()).await.unwrap();
    for o in &listing {
        let name = o.key.rsplit('/').next().unwrap();
        let name = WalFileName::parse(name).unwrap();
        if name.timeline() == 1 {
            assert!(!fence::refuses(&name, SEGMENT, switch), "{name:?} in P");
        }
    }
    let window = restore_window(&store, &p).await.unwrap();
    assert!(
        window
            .newest_segment
            .as_deref()
            .is_some_and(|s| s.starts_with("00000002")),
        "{window:?}"
    );

    // Restores follow the new timeline: latest holds every row of the new primary and none of
    // the old primary's after the failover; before the failover, the rows of that time.
    assert_eq!(
        restored_rows(&rt, &p, sysid, RestoreTarget::Latest, &uri).await,
        ["four", "one", "three", "two"]
    );
    assert_eq!(
        restored_rows(
            &rt,
            &p,
            sysid,
            RestoreTarget::PointInTime(before_failover),
            &uri
        )
        .await,
        ["one", "two"]
    );
    drop((old, new, admin, new_admin));
    rt.destroy(&standby).await.unwrap();
}
