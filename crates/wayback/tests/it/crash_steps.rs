//! The broker killed (SIGKILL, by the crash hook `WAYBACK_TEST_KILL_AT`) at every step of a
//! provision, a clone and a deprovision in turn, then started again on the same data directory.
//! Not one lucky moment: one test per step, each with its own broker and data directory.
//!
//! After the restart the operation must end — never stuck — in `succeeded`, with an instance
//! that archives (a write and a WAL switch put a new segment into its archive) and can be
//! undone (a clone of it by name succeeds); a deprovision must have deleted the instance, and
//! the deleted instance must still be undoable. Points inside the clone's restore are named by
//! the restore engine: `clone_restore:unpacking` (downloading the base backup),
//! `clone_restore:replaying` (the recovery server started, not promoted: the broker's death
//! leaves it running on its own — the split brain of issue 12) and `clone_restore:promoted`.
//! `STEP:after` kills once a step has finished but before the next one is recorded, so the
//! restarted broker runs the finished step again. Last, a clone whose archive already holds
//! other content under the name of its first segment must fail, saying so.
//!
//! A `follow` provision (issue 14) killed at each of its steps (and inside its standby
//! restore) ends `succeeded` too, with the follower streaming from its leader: a row written
//! on the leader after the restart reaches the follower's WAL receiver.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::*;
use crate::restart::harness::{Client, Site};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Provision,
    Clone,
    Deprovision,
    Follow,
}

/// One test per (operation, point): the table of every step.
macro_rules! killed_at {
    ($($test:ident: $op:ident at $point:literal;)*) => {$(
        #[tokio::test]
        async fn $test() {
            killed_at(Op::$op, $point).await
        }
    )*};
}

killed_at! {
    provision_at_allocate_port: Provision at "allocate_port";
    provision_at_create_cluster: Provision at "create_cluster";
    provision_at_configure_archive: Provision at "configure_archive";
    provision_at_start: Provision at "start";
    provision_at_create_database: Provision at "create_database";
    provision_after_create_database: Provision at "create_database:after";
    clone_at_fork: Clone at "clone_fork";
    clone_while_downloading: Clone at "clone_restore:unpacking";
    clone_while_replaying: Clone at "clone_restore:replaying";
    clone_once_promoted: Clone at "clone_restore:promoted";
    clone_after_restore: Clone at "clone_restore:after";
    clone_at_restart: Clone at "clone_restart";
    clone_at_rotate: Clone at "clone_rotate";
    clone_at_first_archive: Clone at "clone_first_archive";
    deprovision_at_wait_exclusive: Deprovision at "wait_exclusive";
    deprovision_at_final_backup: Deprovision at "final_backup";
    deprovision_at_final_wal: Deprovision at "final_wal";
    deprovision_at_write_instance_doc: Deprovision at "write_instance_doc";
    deprovision_at_destroy: Deprovision at "destroy";
    follow_at_allocate_port: Follow at "allocate_port";
    follow_at_grant: Follow at "follow_grant";
    follow_at_restore: Follow at "follow_restore";
    follow_while_downloading: Follow at "clone_restore:unpacking";
    follow_while_replaying: Follow at "clone_restore:replaying";
    follow_after_restore: Follow at "follow_restore:after";
    follow_at_apply_settings: Follow at "apply_settings";
    follow_at_start: Follow at "start";
}

async fn killed_at(op: Op, point: &str) {
    if !pg_available() {
        return;
    }
    let root = test_root();
    let site = Site::new(root.path());
    let client = site.client();
    let name = format!("crash-{}", &new_id()[..8]);

    // What the operation needs, made by a broker without the hook (a clone's and a
    // deprovision's steps share no name with a provision's, but `start` and others do).
    let source = if op == Op::Provision {
        None
    } else {
        let mut setup = site.start();
        client.wait_healthy().await;
        let id = provision(&client, &name).await;
        if op == Op::Clone || op == Op::Follow {
            client.wait_backup(&id).await;
        }
        setup.stop().await;
        Some(id)
    };

    let mut broker = site.start_with(Some(point));
    client.wait_healthy().await;
    let source_id = source.clone();
    let (id, instance_name, answer) = match (op, source) {
        (Op::Provision, _) => {
            let id = new_id();
            let answer = client
                .put_instance(&id, &provision_body(SMALL, &name))
                .await;
            (id, name.clone(), answer)
        }
        (Op::Clone, Some(_)) => {
            let id = new_id();
            let clone_name = format!("{name}-clone");
            let body = clone_body(&clone_name, SPACE, json!({ "clone-from": name }));
            let answer = client.put_instance(&id, &body).await;
            (id, clone_name, answer)
        }
        (Op::Follow, Some(_)) => {
            let id = new_id();
            let follower = format!("{name}-follower");
            let body = clone_body(&follower, SPACE, json!({ "follow": name }));
            let answer = client.put_instance(&id, &body).await;
            (id, follower, answer)
        }
        (Op::Deprovision, Some(id)) => {
            let answer = client.delete_instance(&id).await;
            (id, name.clone(), answer)
        }
        _ => unreachable!(),
    };
    // The hook may kill the broker before its answer is out; when it came, it is a 202.
    let operation = answer.map(|(status, body)| {
        assert_eq!(status, StatusCode::ACCEPTED, "{point}: {body}");
        body["operation"].as_str().unwrap().to_string()
    });
    broker.wait_killed(point, Duration::from_secs(120)).await;
    drop(broker);
    if op == Op::Clone && point == "clone_restore:replaying" {
        let source = source_id.as_deref().unwrap();
        orphan_archives_its_timeline(&client, &id, source).await;
    }

    let _broker = site.start();
    client.wait_healthy().await;
    let (status, body) = client.wait_done(&id, operation.as_deref()).await;
    if op == Op::Deprovision {
        assert_delete_finished(status, &body);
        assert!(
            !client.data_dir.join("clusters").join(&id).exists(),
            "{point}: the deleted instance's cluster is still there"
        );
        // Deleted, and still undoable.
        undo(&client, &name).await;
        return;
    }
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "killed at {point}: {body}"
    );
    if op == Op::Follow {
        streams(&client, source_id.as_deref().unwrap(), &id, point).await;
        return;
    }
    archives(&client, &id).await;
    client.wait_backup(&id).await;
    undo(&client, &instance_name).await;
}

/// Issue 12's split brain, made certain: the recovery server the killed broker left behind
/// replays on its own, promotes and archives its new timeline into the clone's prefix — its
/// history file, and (switched here, as its archive timeout would) its first segment, whose
/// content no second restore can repeat. The restarted broker must not be fooled by either.
async fn orphan_archives_its_timeline(client: &Client, clone: &str, source: &str) {
    let history = |n: &str| n.ends_with(".history");
    client.wait_archived(clone, "history file", history).await;
    // Until the broker's part of the restore runs, the superuser has the source's password.
    let mut conn = client.admin_as(clone, source).await;
    let (file,): (String,) = sqlx::query_as("SELECT pg_walfile_name(pg_switch_wal())")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    client
        .wait_archived(clone, "segment of the orphan", |n| n == file)
        .await;
}

/// A row written on `leader` reaches `follower`'s WAL receiver (streaming, not the archive).
async fn streams(client: &Client, leader: &str, follower: &str, point: &str) {
    let mut conn = client.admin(leader).await;
    exec(
        &mut conn,
        "CREATE TABLE IF NOT EXISTS crash_marks (at timestamptz DEFAULT now()); \
         INSERT INTO crash_marks DEFAULT VALUES",
    )
    .await;
    let lsn: i64 =
        sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    // The follower's superuser is the runtime's OS user by peer: this test's user.
    let mut standby = client.admin(follower).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got: Option<i64> =
            sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0')::bigint")
                .fetch_one(&mut standby)
                .await
                .unwrap();
        if got.is_some_and(|g| g >= lsn) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "killed at {point}: the follower does not stream ({got:?} < {lsn})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Provisions `name` and waits until it is ready; its id.
async fn provision(client: &Client, name: &str) -> String {
    let id = new_id();
    let (status, body) = client
        .put_instance(&id, &provision_body(SMALL, name))
        .await
        .expect("an answer");
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, body) = client.wait_done(&id, body["operation"].as_str()).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{body}"
    );
    id
}

/// A write and a WAL switch put a new segment into the instance's archive.
async fn archives(client: &Client, id: &str) {
    let mut conn = client.admin(id).await;
    exec(
        &mut conn,
        "CREATE TABLE IF NOT EXISTS crash_marks (at timestamptz DEFAULT now())",
    )
    .await;
    exec(&mut conn, "INSERT INTO crash_marks DEFAULT VALUES").await;
    let (file,): (String,) = sqlx::query_as("SELECT pg_walfile_name(pg_switch_wal())")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let path = client.archive_dir(id).join("wal").join(&file);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.is_file() {
        if Instant::now() >= deadline {
            let cluster = client.data_dir.join("clusters").join(id);
            let dirs = wayback::pg::ClusterDirs {
                pgdata: cluster.join("pgdata"),
                socket_dir: cluster.join("run"),
                log_file: cluster.join("postgres.log"),
                log_dir: cluster.join("log"),
            };
            let log = wayback::pg::server_log::recent(&dirs, 0, None);
            panic!("{file} of {id} not archived within 60 s; server log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A clone of `name` (by name, in SPACE) succeeds.
async fn undo(client: &Client, name: &str) {
    let id = new_id();
    let body = clone_body(
        &format!("undo-{name}"),
        SPACE,
        json!({ "clone-from": name }),
    );
    let (status, answer) = client.put_instance(&id, &body).await.expect("an answer");
    assert_eq!(status, StatusCode::ACCEPTED, "clone of {name}: {answer}");
    let (status, done): (StatusCode, Value) =
        client.wait_done(&id, answer["operation"].as_str()).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "clone of {name}: {done}"
    );
}

/// The archive already holding other content under the name of the clone's first segment on
/// its new timeline (as an orphaned earlier attempt's server left it before the fix): the clone
/// fails, and says why, instead of succeeding without an archive.
#[tokio::test]
async fn a_clone_that_cannot_archive_fails_saying_split_brain() {
    if !pg_available() {
        return;
    }
    let root = test_root();
    let site = Site::new(root.path());
    let client = site.client();
    let name = format!("split-{}", &new_id()[..8]);
    let mut setup = site.start();
    client.wait_healthy().await;
    let source = provision(&client, &name).await;
    client.wait_backup(&source).await;
    setup.stop().await;

    let point = "clone_first_archive";
    let mut broker = site.start_with(Some(point));
    client.wait_healthy().await;
    let id = new_id();
    let body = clone_body(
        &format!("{name}-clone"),
        SPACE,
        json!({ "clone-from": name }),
    );
    let (status, answer) = client.put_instance(&id, &body).await.expect("an answer");
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    broker.wait_killed(point, Duration::from_secs(120)).await;
    drop(broker);

    // Another cluster's segment under the name the clone's next switch completes.
    let mut conn = client.admin(&id).await;
    let (current,): (String,) = sqlx::query_as("SELECT pg_walfile_name(pg_current_wal_lsn())")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let foreign = std::fs::read_dir(client.archive_dir(&source).join("wal"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().len() == 24)
        .expect("an archived segment of the source");
    let planted = client.archive_dir(&id).join("wal").join(&current);
    std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
    std::fs::copy(&foreign, &planted).unwrap();

    let _broker = site.start();
    client.wait_healthy().await;
    let (status, body) = client.wait_done(&id, answer["operation"].as_str()).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("failed")),
        "{body}"
    );
    let description = body["description"].as_str().unwrap_or_default();
    assert!(
        description.contains("SPLIT BRAIN") && description.contains(&current),
        "{description}"
    );
    // The failed clone removed its cluster, so its delete does not wait on an archive that
    // refuses it: it succeeds.
    assert!(
        !client.data_dir.join("clusters").join(&id).exists(),
        "the failed clone's cluster directory is gone"
    );
    let (status, answer) = client.delete_instance(&id).await.expect("an answer");
    assert!(
        status == StatusCode::OK || status == StatusCode::ACCEPTED,
        "{status}: {answer}"
    );
    if status == StatusCode::ACCEPTED {
        let (status, done) = client.wait_done(&id, answer["operation"].as_str()).await;
        assert_eq!(
            (status, done["state"].as_str()),
            (StatusCode::OK, Some("succeeded")),
            "{done}"
        );
    }
}
