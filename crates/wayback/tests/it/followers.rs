//! Followers through OSB on real PostgreSQL and a real archive (issue 14, part 2): `follow`
//! makes a read-only replica that streams from its leader (rows written on the leader are read
//! on the follower once its replay passes the leader's LSN; writes fail with PostgreSQL's
//! read-only error); the refusals that need a leader with a base backup (a chain, a plan below
//! the leader's floors, a leader's plan change above its follower's, deleting a leader with
//! followers) change nothing; deleting a follower drops its slot on the leader; `unfollow`
//! under writes keeps every row committed before it, archives into the instance's own prefix
//! (a base backup appears) and the leader's credentials no longer log in; `clone-from` naming
//! a follower restores its leader's archive and says so; a leader restarted by a plan change
//! leaves its follower streaming, and so does a kill -9 of the follower's postmaster (the
//! supervisor starts it again); a slot lost on the leader is granted again by the supervisor.
//!
//! Run: `bash scripts/test followers::`.

use crate::common;
use crate::common::archive_wait::{prefix_of, wait_for_backup};
use crate::follow_engine::{admin_at, at_port};

use std::time::{Duration, Instant};

use common::osb_client::iid;
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use wayback::storage::ObjectStore;

const MEDIUM_PLAN: &str = MEDIUM;

async fn lsn_of(conn: &mut sqlx::PgConnection, expr: &str) -> i64 {
    sqlx::query_scalar::<_, Option<i64>>(&format!("SELECT pg_wal_lsn_diff({expr}, '0/0')::bigint"))
        .fetch_one(conn)
        .await
        .unwrap()
        .unwrap_or(0)
}

/// Waits until the follower (read through `reader`) has replayed up to `lsn`.
async fn wait_replayed(reader: &mut sqlx::PgConnection, lsn: i64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if lsn_of(reader, "pg_last_wal_replay_lsn()").await >= lsn {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the follower did not replay {lsn}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn rows(conn: &mut sqlx::PgConnection) -> Vec<String> {
    sqlx::query_scalar("SELECT what FROM orders ORDER BY 1")
        .fetch_all(conn)
        .await
        .unwrap()
}

/// PUTs a follower of `leader` and waits until it is ready; its id and the descriptions seen.
async fn follow_ready(app: &TestApp, name: &str, leader: &str) -> (String, Vec<String>) {
    app.clone_ready(name, json!({ "follow": leader })).await
}

/// Provisions `name` on `plan` with `parameters` and waits until it is ready; its id.
async fn ready_on(app: &TestApp, name: &str, plan: &str, parameters: Value) -> String {
    let id = new_id();
    let mut body = provision_body(plan, name);
    body["parameters"] = parameters;
    let r = app.put_instance(&id, &body).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let op: Value = r.json().await.unwrap();
    let (status, done) = app.poll_instance(&id, op["operation"].as_str()).await;
    assert_eq!(done["state"], "succeeded", "{status} {done}");
    id
}

async fn refused(app: &TestApp, plan: &str, parameters: Value) -> (StatusCode, String) {
    let id = new_id();
    let mut body = provision_body(plan, "refused");
    body["parameters"] = parameters;
    let r = app.put_instance(&id, &body).await;
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert!(
        app.store
            .get_instance(&wayback::domain::InstanceId::parse(id).unwrap())
            .await
            .unwrap()
            .is_none(),
        "nothing was created"
    );
    (status, body["description"].as_str().unwrap_or("").into())
}

/// "production", backed up, bound, with a table `orders` holding 'one': its id, its binding's
/// uri and a session on it.
async fn leader_with_orders(
    app: &TestApp,
    store: &ObjectStore,
) -> (String, String, sqlx::PgConnection) {
    let leader = app.provision_ready("production").await;
    wait_for_backup(store, &leader).await;
    let uri = app.bind_sync(&leader, &new_id()).await["uri"]
        .as_str()
        .unwrap()
        .to_string();
    let mut writer = connect(&uri).await.unwrap();
    exec(
        &mut writer,
        "CREATE TABLE orders (what text); INSERT INTO orders VALUES ('one')",
    )
    .await;
    (leader, uri, writer)
}

/// PATCHes the instance `id` with `body` (asynchronously allowed).
async fn patch_instance(app: &TestApp, id: &str, body: &Value) -> reqwest::Response {
    app.osb(
        reqwest::Method::PATCH,
        &format!("/v2/service_instances/{id}?accepts_incomplete=true"),
    )
    .json(body)
    .send()
    .await
    .unwrap()
}

async fn slots(admin: &mut sqlx::PgConnection) -> Vec<String> {
    sqlx::query_scalar("SELECT slot_name::text FROM pg_replication_slots ORDER BY 1")
        .fetch_all(admin)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_follower_streams_refuses_writes_and_unfollows_into_its_own_archive() {
    if !pg_available() {
        return;
    }
    let app = spawn_app().await;
    let store = ObjectStore::local(&app.data_dir.join("archive")).unwrap();
    let (leader, uri, mut writer) = leader_with_orders(&app, &store).await;
    let mut admin = admin_at(&app.cluster_dir(&leader)).await;

    // A follower through OSB.
    let (follower, seen) = follow_ready(&app, "reports", "production").await;
    assert!(
        seen.iter()
            .any(|d| d.starts_with("Following \"production\"")),
        "{seen:?}"
    );
    assert!(
        seen.last().unwrap().starts_with(
            "The PostgreSQL follower is ready: a read-only replica streaming from \"production\""
        ),
        "{seen:?}"
    );
    let record = app
        .store
        .get_instance(&iid(&follower))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        record.leader_id.as_ref().map(|l| l.as_str()),
        Some(leader.as_str())
    );
    let port = record.port.unwrap();
    let (_, slot) = wayback::jobs::replication_names(&record.id);
    assert!(slots(&mut admin).await.contains(&slot));

    // Streaming: a row on the leader is read on the follower once replayed.
    exec(&mut writer, "INSERT INTO orders VALUES ('two')").await;
    let lsn = lsn_of(&mut admin, "pg_current_wal_lsn()").await;
    let mut reader = connect(&at_port(&uri, port)).await.unwrap();
    wait_replayed(&mut reader, lsn).await;
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
    // Through OSB end to end: a binding of the follower is read-only and points at it; a
    // binding of the leader made now lists the follower in `replica_uris`, and that URI reads
    // there with the binding's own credentials.
    let follower_creds = app.bind_sync(&follower, &new_id()).await;
    assert_eq!(follower_creds["read_only"], true, "{follower_creds}");
    assert_eq!(follower_creds["port"], port, "{follower_creds}");
    let mut bound = connect(follower_creds["uri"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(rows(&mut bound).await, ["one", "two"]);
    let err = sqlx::query("INSERT INTO orders VALUES ('no')")
        .execute(&mut bound)
        .await
        .expect_err("a follower's binding cannot write");
    assert!(err.to_string().contains("read-only transaction"), "{err}");
    let leader_creds = app.bind_sync(&leader, &new_id()).await;
    let replicas = leader_creds["replica_uris"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(replicas.len(), 1, "{leader_creds}");
    let mut replica = connect(replicas[0].as_str().unwrap()).await.unwrap();
    assert_eq!(rows(&mut replica).await, ["one", "two"]);
    let on_follower: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut replica)
        .await
        .unwrap();
    assert!(on_follower, "replica_uris lead to the follower");
    drop((bound, replica));
    // The leader's slot lost (its walsender ended, the slot dropped at once): the supervisor
    // grants it again and the follower streams again, without a person.
    drop(reader);
    sqlx::query(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(&slot)
    .execute(&mut admin)
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(&slot)
        .execute(&mut admin)
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the slot stays busy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    exec(&mut writer, "INSERT INTO orders VALUES ('after the slot')").await;
    let lsn = lsn_of(&mut admin, "pg_current_wal_lsn()").await;
    let mut reader = connect(&at_port(&uri, port)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while lsn_of(&mut reader, "pg_last_wal_receive_lsn()").await < lsn {
        assert!(Instant::now() < deadline, "the slot was not granted again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(slots(&mut admin).await.contains(&slot));
    exec(
        &mut writer,
        "DELETE FROM orders WHERE what = 'after the slot'",
    )
    .await;
    let lsn = lsn_of(&mut admin, "pg_current_wal_lsn()").await;
    wait_replayed(&mut reader, lsn).await;

    // No archive of its own: no base backup, no instance.json.
    assert!(app.store.latest_backup(&record.id).await.unwrap().is_none());
    // (A rename rewrites an instance's instance.json in the background; not a follower's.)
    app.rename(&follower, "reporting").await;
    app.rename(&follower, "reports").await;

    // Refusals that need a leader with a backup; each changes nothing.
    let (status, text) = refused(&app, SMALL, json!({ "follow": "reports" })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    assert!(
        text.contains("is itself a follower of \"production\"")
            && text.contains("cannot be chained"),
        "{text}"
    );
    let medium = ready_on(&app, "big", MEDIUM_PLAN, json!({})).await;
    wait_for_backup(&store, &medium).await;
    let (status, text) = refused(&app, SMALL, json!({ "follow": "big" })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    assert!(
        text.contains("cannot follow service instance \"big\"")
            && text.contains("(the leader has ")
            && text.contains("choose a plan at least as large as the leader's"),
        "{text}"
    );
    let patch = json!({
        "service_id": SERVICE_ID, "plan_id": MEDIUM_PLAN,
        "previous_values": { "plan_id": SMALL, "service_id": SERVICE_ID },
    });
    let r = patch_instance(&app, &leader, &patch).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let text: Value = r.json().await.unwrap();
    assert!(
        text["description"]
            .as_str()
            .unwrap()
            .contains("would raise settings above what follower \"reports\""),
        "{text}"
    );
    let r = app.delete_instance(&leader).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let text: Value = r.json().await.unwrap();
    let text = text["description"].as_str().unwrap().to_string();
    assert!(
        text.contains("has followers: \"reports\"") && text.contains("unfollow"),
        "{text}"
    );
    let leader_record = app
        .store
        .get_instance(&iid(&leader))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(leader_record.state, wayback::domain::InstanceState::Ready);
    assert_eq!(leader_record.plan_id, SMALL);

    // clone-from a follower restores its leader's archive, and says so.
    let (_, seen) = app
        .clone_ready("copy", json!({ "clone-from": "reports" }))
        .await;
    assert!(
        seen.iter()
            .all(|d| d.contains("the leader of follower \"reports\"")),
        "{seen:?}"
    );

    // A second follower, deleted: its slot goes from the leader.
    let (second, _) = follow_ready(&app, "scratch", "production").await;
    let (_, second_slot) = wayback::jobs::replication_names(&iid(&second));
    assert!(slots(&mut admin).await.contains(&second_slot));
    app.deprovision_done(&second).await;
    assert!(!slots(&mut admin).await.contains(&second_slot));

    let doc = format!("{}/instance.json", prefix_of(&follower).as_str());
    assert!(store.get(&doc).await.unwrap().is_none(), "{doc}");

    // Unfollow under writes: every row committed before it is there.
    let writes = {
        let uri = uri.clone();
        tokio::spawn(async move {
            let mut w = connect(&uri).await.unwrap();
            let mut committed = Vec::new();
            for i in 0..400 {
                let what = format!("w{i:04}");
                if sqlx::query("INSERT INTO orders VALUES ($1)")
                    .bind(&what)
                    .execute(&mut w)
                    .await
                    .is_err()
                {
                    break;
                }
                committed.push(what);
            }
            committed
        })
    };
    drop(reader);
    let body = json!({
        "service_id": SERVICE_ID, "parameters": { "unfollow": true },
        "previous_values": { "plan_id": SMALL, "service_id": SERVICE_ID },
    });
    let r = patch_instance(&app, &follower, &body).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let op: Value = r.json().await.unwrap();
    let (status, done) = app.poll_instance(&follower, op["operation"].as_str()).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{done}"
    );
    let committed = writes.await.unwrap();
    let record = app
        .store
        .get_instance(&iid(&follower))
        .await
        .unwrap()
        .unwrap();
    assert!(record.leader_id.is_none(), "no leader any more");
    assert!(
        !slots(&mut admin).await.contains(&slot),
        "the slot is dropped"
    );
    // The leader's credentials are refused on the promoted instance.
    assert!(connect(&at_port(&uri, port)).await.is_err());
    // Its own bindings work, and hold every row the leader had when it was promoted: the
    // rows before the writes, and a prefix of the writes (none after a gap).
    let own = app.bind_sync(&follower, &new_id()).await["uri"]
        .as_str()
        .unwrap()
        .to_string();
    let mut own = connect(&own).await.unwrap();
    let have = rows(&mut own).await;
    assert!(
        have.starts_with(&["one".to_string(), "two".to_string()]),
        "{have:?}"
    );
    let writes_seen: Vec<&String> = have.iter().filter(|w| w.starts_with('w')).collect();
    assert!(writes_seen.len() <= committed.len());
    for (a, b) in writes_seen.iter().zip(committed.iter()) {
        assert_eq!(
            *a, b,
            "the promoted instance holds a prefix of the leader's commits"
        );
    }
    exec(&mut own, "INSERT INTO orders VALUES ('own')").await;

    // A leader's restart by a plan change (allowed: its follower's plan is as large) leaves
    // the follower streaming.
    let mirror = ready_on(
        &app,
        "mirror",
        MEDIUM_PLAN,
        json!({ "follow": "production" }),
    )
    .await;
    let mirror_port = app
        .store
        .get_instance(&iid(&mirror))
        .await
        .unwrap()
        .unwrap()
        .port
        .unwrap();
    drop((admin, writer));
    let r = patch_instance(&app, &leader, &patch).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let op: Value = r.json().await.unwrap();
    let (_, done) = app.poll_instance(&leader, op["operation"].as_str()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let mut admin = admin_at(&app.cluster_dir(&leader)).await;
    let mut writer = connect(&uri).await.unwrap();
    exec(&mut writer, "INSERT INTO orders VALUES ('after restart')").await;
    let lsn = lsn_of(&mut admin, "pg_current_wal_lsn()").await;
    let mut reader = connect(&at_port(&uri, mirror_port)).await.unwrap();
    wait_replayed(&mut reader, lsn).await;
    // Received by its WAL receiver (the archive does not move this): it streams again.
    let deadline = Instant::now() + Duration::from_secs(60);
    while lsn_of(&mut reader, "pg_last_wal_receive_lsn()").await < lsn {
        assert!(Instant::now() < deadline, "not streaming again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(reader);
    // The follower's postmaster killed: the supervisor starts it again, and it streams again
    // without a person.
    let pid = postmaster_pid(&app.cluster_dir(&mirror)).expect("the follower runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    exec(&mut writer, "INSERT INTO orders VALUES ('after the kill')").await;
    let lsn = lsn_of(&mut admin, "pg_current_wal_lsn()").await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut reader = loop {
        if postmaster_pid(&app.cluster_dir(&mirror)).is_some_and(|p| p != pid) {
            if let Ok(c) = connect(&at_port(&uri, mirror_port)).await {
                break c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the follower was not started again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    while lsn_of(&mut reader, "pg_last_wal_receive_lsn()").await < lsn {
        assert!(
            Instant::now() < deadline,
            "not streaming after its postmaster was killed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(reader);
    // A follower's plan below its leader's is refused too, and changes nothing.
    let down = json!({
        "service_id": SERVICE_ID, "plan_id": SMALL,
        "previous_values": { "plan_id": MEDIUM_PLAN, "service_id": SERVICE_ID },
    });
    let r = patch_instance(&app, &mirror, &down).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let text: Value = r.json().await.unwrap();
    assert!(
        text["description"]
            .as_str()
            .unwrap()
            .contains("cannot follow leader \"production\""),
        "{text}"
    );
    let record = app
        .store
        .get_instance(&iid(&mirror))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.plan_id, MEDIUM_PLAN);
    app.deprovision_done(&mirror).await;
    // Its own archive: a base backup in its own prefix.
    wait_for_backup(&store, &follower).await;
    assert_ne!(prefix_of(&follower).as_str(), prefix_of(&leader).as_str());
}

/// With two agents the follower lands on the other agent than its leader's, streams across,
/// and streams again after its agent's restart (SIGTERM stops its clusters; the broker's
/// supervisor starts the follower again once the agent answers).
#[tokio::test]
async fn a_follower_on_the_other_agent_streams_again_after_that_agents_restart() {
    if !pg_available() {
        return;
    }
    let mut fleet = crate::agents::Fleet::start(2, |_| {}).await;
    let store = fleet.store();
    let app = &fleet.app;
    let (leader, uri, mut writer) = leader_with_orders(app, &store).await;
    let (follower, _) = follow_ready(app, "reports", "production").await;
    let on = fleet.placed_on(&leader).await.expect("placed");
    let follower_on = fleet.placed_on(&follower).await.expect("placed");
    assert_ne!(on, follower_on, "the follower is on the other agent");
    let leader_dir = fleet
        .agents
        .iter()
        .find(|a| a.name == on)
        .unwrap()
        .data_dir
        .join("clusters")
        .join(&leader);
    let mut admin = admin_at(&leader_dir).await;
    let port = app
        .store
        .get_instance(&iid(&follower))
        .await
        .unwrap()
        .unwrap()
        .port
        .unwrap();
    exec(&mut writer, "INSERT INTO orders VALUES ('two')").await;
    let lsn = lsn_of(&mut admin, "pg_current_wal_lsn()").await;
    let mut reader = connect(&at_port(&uri, port)).await.unwrap();
    wait_replayed(&mut reader, lsn).await;
    assert_eq!(rows(&mut reader).await, ["one", "two"]);
    drop(reader);

    let agent = fleet.agent_mut(&follower_on);
    agent.terminate();
    agent.start();
    exec(&mut writer, "INSERT INTO orders VALUES ('three')").await;
    let lsn = lsn_of(&mut admin, "pg_current_wal_lsn()").await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut reader = loop {
        match connect(&at_port(&uri, port)).await {
            Ok(c) => break c,
            Err(e) => assert!(Instant::now() < deadline, "the follower is not back: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    while lsn_of(&mut reader, "pg_last_wal_receive_lsn()").await < lsn {
        assert!(
            Instant::now() < deadline,
            "not streaming after its agent's restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_replayed(&mut reader, lsn).await;
    assert_eq!(rows(&mut reader).await, ["one", "three", "two"]);
}
