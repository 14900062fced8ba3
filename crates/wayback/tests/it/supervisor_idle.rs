//! Supervision at the floor (issue 17 point 0) on real clusters: an idle instance watched by the
//! supervisor gets no new PostgreSQL session over many passes — its status, archiver
//! statistics, WAL switch and WAL position come from its files — while a killed cluster beside
//! it is still started again, by those same passes.
//!
//! Sessions are counted in the idle cluster's own server log with `log_connections`, which
//! records every connection the server accepts, pg_isready's and unauthenticated ones included.
//! Passes are shown by the other instance's restarts, each the work of one supervisor pass.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use wayback::domain::InstanceId;
use wayback::runtime::ClusterStatus;

/// How long a watch lasts at least: past the supervisor's archiver reading (every 15 s) and
/// many archive-interval switches (2 s in tests).
const WATCH: Duration = Duration::from_secs(20);

/// Connections the server of `instance` logged so far.
fn connections(app: &TestApp, instance: &str) -> usize {
    let dir = app.cluster_dir(instance).join("log");
    std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .map(|text| text.matches("connection received").count())
        .sum()
}

/// Waits until `id` has a base backup and no backup job pending.
async fn first_backup_done(app: &TestApp, id: &InstanceId) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let done = app.store.latest_backup(id).await.unwrap().is_some()
            && app.store.pending_backup_job(id).await.unwrap().is_none();
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no first backup of {id} in 180 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGKILLs the postmaster of `instance` and waits until the supervisor has started a new one.
async fn kill_and_await_restart(app: &TestApp, instance: &str) {
    let dir = app.cluster_dir(instance);
    let pid = postmaster_pid(&dir).expect("postmaster.pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let pidfile =
            std::fs::read_to_string(dir.join("pgdata/postmaster.pid")).unwrap_or_default();
        let restarted = postmaster_pid(&dir).is_some_and(|p| p != pid)
            && pidfile.lines().nth(7).map(str::trim) == Some("ready");
        if restarted {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the supervisor did not start {instance} again within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Watches `idle` for at least [`WATCH`] and two restarts of `other`, asking the runtime the
/// supervisor's read-only questions about `idle` directly as well (not `switch_wal`: two
/// switchers each see the other's switch record as new WAL); returns the sessions `idle`'s
/// server logged meanwhile and the restarts.
async fn watch(
    app: &TestApp,
    runtime: &wayback::runtime::LocalRuntime,
    idle: &str,
    other: &str,
) -> (usize, usize) {
    let id = InstanceId::parse(idle).unwrap();
    let before = connections(app, idle);
    let start = Instant::now();
    let mut restarts = 0;
    while restarts < 2 || start.elapsed() < WATCH {
        kill_and_await_restart(app, other).await;
        restarts += 1;
        assert_eq!(runtime.status(&id).await.unwrap(), ClusterStatus::Running);
        runtime.archiver_stats(&id).await.unwrap();
        runtime.wal_position(&id).await.unwrap();
    }
    (connections(app, idle) - before, restarts)
}

#[tokio::test]
async fn an_idle_instance_gets_no_session_while_a_dead_one_is_restarted() {
    let app = spawn_app().await;
    let idle = app.provision_ready("idle").await;
    let other = app.provision_ready("killed").await;
    for id in [&idle, &other] {
        first_backup_done(&app, &InstanceId::parse(id.as_str()).unwrap()).await;
    }
    let mut conn = app.admin(&idle).await;
    exec(&mut conn, "ALTER SYSTEM SET log_connections = on").await;
    exec(&mut conn, "SELECT pg_reload_conf()").await;
    // Idle for real: a fresh cluster is busy by itself for minutes — autovacuum analyses the
    // new databases' tables (writing WAL each minute), and the first sessions after a
    // checkpoint set hint bits (full page images with data checksums) — and the supervisor
    // rightly completes the segments of any WAL. An instance idle for long has done all that;
    // here it is done at once, and autovacuum stopped. Then a checkpoint, so that no timed one
    // falls into the watch.
    exec(&mut conn, "ALTER SYSTEM SET autovacuum = off").await;
    exec(&mut conn, "SELECT pg_reload_conf()").await;
    let databases: Vec<String> =
        sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE datallowconn")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    for db in databases {
        exec(
            &mut app.admin_on(&idle, &db).await,
            "VACUUM (FREEZE, ANALYZE)",
        )
        .await;
    }
    exec(&mut conn, "CHECKPOINT").await;
    drop(conn);
    let runtime = crate::backup::runtime_for(&app);

    // Until the WAL of the provision, the backup and the checkpoint has been switched for and
    // the cluster's housekeeping after it looked at (a session or two), then quiet.
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let (sessions, restarts) = watch(&app, &runtime, &idle, &other).await;
        eprintln!("settling: {sessions} sessions during {restarts} restarts of the other");
        if sessions == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the idle instance still gets sessions after 240 s ({sessions} in the last watch)"
        );
    }
    let (sessions, restarts) = watch(&app, &runtime, &idle, &other).await;
    assert_eq!(
        sessions, 0,
        "an idle instance got {sessions} new sessions over a watch of {restarts} restarts"
    );

    // The evidence works: a session of ours is logged.
    let logged = connections(&app, &idle);
    let conn = app.admin(&idle).await;
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(30);
    while connections(&app, &idle) == logged {
        assert!(Instant::now() < deadline, "a new session was not logged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // And what is written still reaches the archive (the supervisor's switch or PostgreSQL's
    // own archive_timeout), and the archiver's statistics say so at once.
    let id = InstanceId::parse(idle.as_str()).unwrap();
    let archived = runtime.archiver_stats(&id).await.unwrap().archived_count;
    let mut conn = app.admin(&idle).await;
    exec(
        &mut conn,
        "CREATE TABLE after_idle (x int); INSERT INTO after_idle VALUES (1)",
    )
    .await;
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(90);
    while runtime.archiver_stats(&id).await.unwrap().archived_count <= archived {
        assert!(
            Instant::now() < deadline,
            "the commit's segment was not archived within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
