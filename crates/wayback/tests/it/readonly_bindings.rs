//! Read-only bindings and followers' bindings on real PostgreSQL (issue 14 part 3).
//!
//! - A `read_only` binding of a leader reads every table, also one its owner creates after the
//!   bind, and cannot write (PostgreSQL's read-only error; with the session made writable, a
//!   permission error: it is no member of the owner role); a different `read_only` for the same
//!   binding id is a 409, a `read_only` that is not a boolean a 400.
//! - The same through an agent (the agent API's role body with `read_only`).
//! - A follower made as `follow_engine` makes one (the standby restore into a second cluster,
//!   streaming through the slot named for it), recorded in the store with its `leader_id` by a
//!   test-only write (`common::followers`): its binding's role is created on the leader and
//!   works on the follower at once (read, not write); the leader's binding lists the follower
//!   in `replica_uris`, which connects; the OSB fetch, `/wayback/v1` and the metrics show the
//!   follower streaming with its lag back at 0 after writes; with its replay paused the lag goes
//!   up and a new binding succeeds after its bounded wait, saying the role works once the
//!   follower catches up (it does, once replay resumes); unbind drops the role on the leader.
//!
//! Run: `bash scripts/test readonly_bindings::`.

use crate::agents::Fleet;
use crate::common;
use crate::common::archive_wait::{prefix_of, wait_for_backup};
use crate::follow_engine::{admin_at, current_lsn, runtime_beside};

use std::time::{Duration, Instant};

use common::followers::insert_follower;
use common::osb_client::*;
use common::wayback_client as api;
use common::*;
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{json, Value};
use wayback::domain::{follower_slot, InstanceId};
use wayback::runtime::{FollowSpec, ReplicationGrant, RestoreState};
use wayback::storage::ObjectStore;

/// A binding PUT with `parameters`, synchronous.
async fn bind_with(app: &TestApp, instance: &str, binding: &str, parameters: Value) -> Reply {
    let mut body = bind_body();
    body["parameters"] = parameters;
    Reply::of(
        app.osb(Method::PUT, &bnd(instance, binding))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn count(conn: &mut sqlx::PgConnection, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(conn)
        .await
        .unwrap_or_else(|e| panic!("read {table}: {e}"))
}

/// A write through `conn` fails with PostgreSQL's read-only error.
async fn refuses_writes(conn: &mut sqlx::PgConnection, table: &str) {
    let err = sqlx::query(&format!("INSERT INTO {table} VALUES ('no')"))
        .execute(&mut *conn)
        .await
        .expect_err("a read-only session refuses writes");
    assert!(
        err.to_string()
            .contains("cannot execute INSERT in a read-only transaction"),
        "{err}"
    );
}

#[tokio::test]
async fn a_read_only_binding_reads_every_table_and_writes_nothing() {
    if !pg_available() {
        return;
    }
    let app = spawn_app().await;
    let id = app.provision_ready("production").await;
    let writer = app.bind_sync(&id, &new_id()).await;
    let mut owner = connect(writer["uri"].as_str().unwrap()).await.unwrap();
    exec(
        &mut owner,
        "CREATE TABLE before_bind (what text); INSERT INTO before_bind VALUES ('a')",
    )
    .await;

    assert_eq!(
        bind_with(&app, &id, &new_id(), json!({"read_only": "yes"}))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    let binding = new_id();
    let created = bind_with(&app, &id, &binding, json!({"read_only": true})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let credentials = created.body["credentials"].clone();
    assert_eq!(credentials["read_only"], true);
    exec(
        &mut owner,
        "CREATE SCHEMA later; CREATE TABLE later.after_bind (what text); \
         INSERT INTO later.after_bind VALUES ('b'), ('c')",
    )
    .await;

    let mut reader = connect_verified(&credentials, None)
        .await
        .expect("the read-only credentials log in");
    assert_eq!(count(&mut reader, "before_bind").await, 1);
    assert_eq!(count(&mut reader, "later.after_bind").await, 2);
    refuses_writes(&mut reader, "before_bind").await;
    refuses_writes(&mut reader, "later.after_bind").await;
    // Made writable by the session itself, it still may not write: it is no owner.
    exec(&mut reader, "SET default_transaction_read_only = off").await;
    let err = sqlx::query("INSERT INTO before_bind VALUES ('no')")
        .execute(&mut reader)
        .await
        .expect_err("no write privilege");
    assert!(err.to_string().contains("permission denied"), "{err}");
    let member_of_owner: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid \
         WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = current_user) \
         AND r.rolname <> 'pg_read_all_data')",
    )
    .fetch_one(&mut reader)
    .await
    .unwrap();
    assert!(!member_of_owner, "a member of pg_read_all_data only");
    drop(reader);

    let conflict = bind_with(&app, &id, &binding, json!({"read_only": false})).await;
    assert_eq!(conflict.status, StatusCode::CONFLICT, "{}", conflict.body);
    let again = bind_with(&app, &id, &binding, json!({"read_only": true})).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);

    let r = app.delete_binding(&id, &binding, false).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        connect_verified(&credentials, None).await.is_err(),
        "unbound, the role is gone"
    );
}

#[tokio::test]
async fn a_read_only_binding_on_an_agent_is_read_only_there() {
    if !pg_available() {
        return;
    }
    // The role is made by the agent, from the wire's RoleBody with read_only and the database.
    let fleet = Fleet::start(1, |_| {}).await;
    let app = &fleet.app;
    let id = app.provision_ready("production").await;
    let writer = app.bind_sync(&id, &new_id()).await;
    let mut owner = connect(writer["uri"].as_str().unwrap()).await.unwrap();
    exec(
        &mut owner,
        "CREATE TABLE t (what text); INSERT INTO t VALUES ('on an agent')",
    )
    .await;
    let created = bind_with(app, &id, &new_id(), json!({"read_only": true})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let credentials = created.body["credentials"].clone();
    assert_eq!(credentials["read_only"], true);
    let mut reader = connect_verified(&credentials, None)
        .await
        .expect("the read-only credentials log in on the agent's cluster");
    assert_eq!(count(&mut reader, "t").await, 1);
    refuses_writes(&mut reader, "t").await;
}

/// Polls `what` of the OSB fetch of `id` until `done` holds of it.
async fn wait_fetch(app: &TestApp, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = Reply::of(Osb::new(app).get(&inst(id)).await).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        if done(&r.body) {
            return r.body;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within 60 s: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_followers_binding_reads_on_the_follower_and_lag_is_shown() {
    if !pg_available() {
        return;
    }
    let app = spawn_app().await;
    let store = ObjectStore::local(&app.data_dir.join("archive")).unwrap();
    let leader = app.provision_ready("production").await;
    wait_for_backup(&store, &leader).await;
    let writer = app.bind_sync(&leader, &new_id()).await;
    let mut owner = connect(writer["uri"].as_str().unwrap()).await.unwrap();
    exec(
        &mut owner,
        "CREATE TABLE orders (what text); INSERT INTO orders VALUES ('one')",
    )
    .await;

    // The follower, made as the broker's FOLLOW job will make it.
    let rt = runtime_beside(&app);
    let leader_id = InstanceId::parse(leader.clone()).unwrap();
    let follower_id = InstanceId::parse(new_id()).unwrap();
    let follower = follower_id.to_string();
    let leader_dir = app.cluster_dir(&leader);
    let mut admin = admin_at(&leader_dir).await;
    let leader_port: i64 = sqlx::query_scalar("SELECT current_setting('port')::bigint")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    let control = std::fs::read(leader_dir.join("pgdata/global/pg_control")).unwrap();
    let password = SecretString::from(format!("repl-{}", new_id()));
    let (role, slot) = ("wb_repl_views".to_string(), follower_slot(&follower_id));
    rt.prepare_replication(
        &leader_id,
        &ReplicationGrant {
            role: role.clone(),
            password: password.clone(),
            slot: slot.clone(),
            follower_address: "127.0.0.1".into(),
        },
    )
    .await
    .unwrap();
    let port = free_port();
    let spec = FollowSpec {
        port,
        leader: prefix_of(&leader),
        leader_system_identifier: wayback::pg::control::system_identifier(&control).unwrap(),
        leader_host: "127.0.0.1".into(),
        leader_port: leader_port as u16,
        role,
        password,
        slot,
    };
    rt.start_follow(&follower_id, &spec).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let st = rt.restore_status(&follower_id).await.unwrap();
        match st.state {
            RestoreState::Succeeded => break,
            RestoreState::Failed => panic!("the standby restore failed: {:?}", st.error),
            _ => assert!(Instant::now() < deadline, "no standby in 180 s: {st:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    insert_follower(&app, &follower, &leader, port, "reports").await;

    // Its binding: a read-only role made on the leader, working on the follower at once.
    let refused = bind_with(&app, &follower, &new_id(), json!({"read_only": false})).await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.body
    );
    let binding = new_id();
    let created = bind_with(&app, &follower, &binding, json!({})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let credentials = created.body["credentials"].clone();
    assert_eq!(credentials["read_only"], true);
    assert_eq!(credentials["port"], u64::from(port), "at the follower");
    let user = credentials["username"].as_str().unwrap().to_string();
    let on_leader: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_roles WHERE rolname = $1")
        .bind(&user)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(on_leader, 1, "the role is the leader's");
    let mut reader = connect_verified(&credentials, None)
        .await
        .expect("the follower's credentials log in at once");
    assert_eq!(count(&mut reader, "orders").await, 1);
    refuses_writes(&mut reader, "orders").await;
    drop(reader);

    // The leader's binding lists the follower; that URI reads there.
    let leader_creds = app.bind_sync(&leader, &new_id()).await;
    let replicas = leader_creds["replica_uris"]
        .as_array()
        .expect("replica_uris");
    assert_eq!(replicas.len(), 1, "{leader_creds}");
    assert!(replicas[0].as_str().unwrap().contains(&format!(":{port}/")));
    let mut replica = connect(replicas[0].as_str().unwrap()).await.unwrap();
    assert_eq!(count(&mut replica, "orders").await, 1);
    drop(replica);

    // Writes on the leader; the follower streams them, and its lag goes back to 0.
    exec(
        &mut owner,
        "INSERT INTO orders SELECT 'many' FROM generate_series(1, 5000)",
    )
    .await;
    let lsn = current_lsn(&mut admin).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while rt.standby_status(&follower_id).await.unwrap().replay_lsn < Some(lsn) {
        assert!(Instant::now() < deadline, "no replay of the writes in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = wait_fetch(&app, &follower, "streaming, caught up", |b| {
        b["follower"]["state"] == "streaming" && b["follower"]["lag_bytes"] == 0
    })
    .await;
    assert_eq!(body["follower"]["leader"]["id"], leader.as_str());
    assert_eq!(body["follower"]["leader"]["name"], "production");
    assert_eq!(body["follower"]["lag_seconds"], 0.0);
    assert_eq!(body["follower"]["same_machine"], true);
    wait_fetch(&app, &leader, "the leader's follower", |b| {
        b["followers"][0]["id"] == follower.as_str() && b["followers"][0]["state"] == "streaming"
    })
    .await;
    let view = api::get(&app, &format!("/instances/{follower}"), api::operator(&app)).await;
    assert_eq!(view.status, StatusCode::OK, "{}", view.body);
    assert_eq!(view.body["follower"]["leader"]["name"], "production");
    let labels = format!("{{instance=\"{follower}\",leader=\"{leader}\"}}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = app
            .client
            .get(format!("{}/metrics", app.address))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let streaming = text.contains(&format!("wayback_follower_streaming{labels} 1\n"));
        let caught_up = text.contains(&format!("wayback_follower_lag_bytes{labels} 0\n"));
        let xmin = text.contains(&format!("wayback_follower_xmin_age{labels} "));
        if streaming && caught_up && xmin {
            break;
        }
        assert!(Instant::now() < deadline, "metrics: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Replay paused on the follower: its lag goes up; a new binding waits its bound (30 s),
    // then succeeds saying the role works once the follower catches up, and it does.
    let mut follower_admin = admin_at(&app.cluster_dir(&follower)).await;
    exec(&mut follower_admin, "SELECT pg_wal_replay_pause()").await;
    exec(&mut owner, "INSERT INTO orders VALUES ('paused')").await;
    wait_fetch(&app, &follower, "lag while paused", |b| {
        b["follower"]["lag_bytes"].as_u64() > Some(0)
    })
    .await;
    let late = new_id();
    let r = app.put_binding(&follower, &late, true).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let (_, op) = app.poll_binding(&follower, &late, None).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    let says = op["description"].as_str().unwrap();
    assert!(says.contains("behind its leader"), "{says}");
    exec(&mut follower_admin, "SELECT pg_wal_replay_resume()").await;
    wait_fetch(&app, &follower, "lag back to 0", |b| {
        b["follower"]["lag_bytes"] == 0
    })
    .await;
    let fetched: Value = app
        .osb(Method::GET, &bnd(&follower, &late))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut late_reader = connect_verified(&fetched["credentials"], None)
        .await
        .expect("the role works once the follower caught up");
    assert_eq!(count(&mut late_reader, "orders").await, 5002);
    drop((late_reader, follower_admin));

    // Unbind drops the role on the leader.
    let r = app.delete_binding(&follower, &binding, false).await;
    assert_eq!(r.status(), StatusCode::OK);
    let on_leader: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_roles WHERE rolname = $1")
        .bind(&user)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(on_leader, 0, "dropped on the leader");
    drop((admin, owner));
    rt.destroy(&follower_id).await.unwrap();
}
