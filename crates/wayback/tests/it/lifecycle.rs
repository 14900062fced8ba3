//! The whole life of an instance against real PostgreSQL clusters: provision → bind → connect
//! and write → unbind → deprovision; isolation between instances; supervision; plan changes.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::{Connection, Row};
use wayback::domain::{InstanceId, InstanceState};

async fn query_i64(uri: &str, sql: &str) -> i64 {
    let mut conn = connect(uri).await.expect("connect");
    let row = sqlx::query(sql).fetch_one(&mut conn).await.expect(sql);
    row.try_get::<i64, _>(0).unwrap()
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300))
        .is_ok()
}

#[tokio::test]
async fn provision_bind_write_unbind_deprovision() {
    let app = spawn_app().await;
    let id = app.provision_ready("orders").await;

    // Asynchronous bind: 202 without credentials, then GET binding has them.
    let b1 = new_id();
    let r = app.put_binding(&id, &b1, true).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let accepted: Value = r.json().await.unwrap();
    assert!(
        accepted.get("credentials").is_none(),
        "202 must not carry credentials: {accepted}"
    );
    let (status, last) = app
        .poll_binding(&id, &b1, accepted["operation"].as_str())
        .await;
    assert_eq!(
        (status, last["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{last}"
    );
    let got: Value = app
        .osb(
            Method::GET,
            &format!("/v2/service_instances/{id}/service_bindings/{b1}"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let c1 = got["credentials"].clone();
    for key in [
        "uri", "jdbcUrl", "host", "port", "name", "database", "username", "password",
    ] {
        assert!(!c1[key].is_null(), "credentials lack {key}: {c1}");
    }
    let uri1 = c1["uri"].as_str().unwrap().to_string();

    // Write and read a row with the binding's credentials.
    let mut conn = connect(&uri1).await.expect("binding can log in");
    sqlx::query("CREATE TABLE orders (id int primary key, item text)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO orders VALUES (1, 'tea')")
        .execute(&mut conn)
        .await
        .unwrap();
    let item: String = sqlx::query("SELECT item FROM orders WHERE id = 1")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(item, "tea");
    conn.close().await.unwrap();

    // A second, synchronous binding: its own role and password, same data.
    let b2 = new_id();
    let c2 = app.bind_sync(&id, &b2).await;
    assert_ne!(
        c1["password"], c2["password"],
        "no two bindings share a password"
    );
    assert_ne!(c1["username"], c2["username"]);
    let uri2 = c2["uri"].as_str().unwrap().to_string();
    assert_eq!(query_i64(&uri2, "SELECT count(*) FROM orders").await, 1);

    // Unbind the first (asynchronously): its role can no longer log in; the table stays.
    let r = app.delete_binding(&id, &b1, true).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let op: Value = r.json().await.unwrap();
    let (status, body) = app.poll_binding(&id, &b1, op["operation"].as_str()).await;
    assert_delete_finished(status, &body);
    let refused = connect(&uri1)
        .await
        .expect_err("an unbound role must not log in");
    assert!(
        refused.to_string().contains("authentication")
            || refused.to_string().contains("does not exist"),
        "{refused}"
    );
    assert_eq!(
        query_i64(&uri2, "SELECT count(*) FROM orders").await,
        1,
        "objects outlive the binding"
    );

    // Synchronous unbind of the second.
    let r = app.delete_binding(&id, &b2, false).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(connect(&uri2).await.is_err());

    // Deprovision: port closed, data directory gone, record kept as deleted.
    let port = c1["port"].as_u64().unwrap() as u16;
    assert!(port_open(port));
    let r = app.delete_instance(&id).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let op: Value = r.json().await.unwrap();
    let (status, body) = app.poll_instance(&id, op["operation"].as_str()).await;
    assert_delete_finished(status, &body);
    assert!(!port_open(port), "the cluster's port must be closed");
    assert!(
        !app.cluster_dir(&id).exists(),
        "the data directory must be gone"
    );
    let iid = InstanceId::parse(id.clone()).unwrap();
    let record = app
        .store
        .get_instance(&iid)
        .await
        .unwrap()
        .expect("record kept");
    assert_eq!(record.state, InstanceState::Deleted);
    assert!(record.deleted_at.is_some());
    assert_eq!(record.space_guid, SPACE);
    assert_eq!(record.organization_guid, ORG);
    let names = app.store.instance_names(&iid).await.unwrap();
    assert_eq!(
        names.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["orders"]
    );
    // A second DELETE: gone.
    assert_eq!(app.delete_instance(&id).await.status(), StatusCode::GONE);
}

#[tokio::test]
async fn instances_are_isolated_from_each_other() {
    let app = spawn_app().await;
    let (a, b) = tokio::join!(app.provision_ready("a"), app.provision_ready("b"));
    let ca = app.bind_sync(&a, &new_id()).await;
    let cb = app.bind_sync(&b, &new_id()).await;
    assert_ne!(ca["port"], cb["port"]);
    // A's role and password against B's cluster.
    let crossed = format!(
        "postgres://{}:{}@127.0.0.1:{}/app",
        ca["username"].as_str().unwrap(),
        ca["password"].as_str().unwrap(),
        cb["port"]
    );
    assert!(
        connect(&crossed).await.is_err(),
        "A's credentials must not open B"
    );
    // And A's data is not visible from B.
    let mut conn = connect(ca["uri"].as_str().unwrap()).await.unwrap();
    sqlx::query("CREATE TABLE secret_a (x int)")
        .execute(&mut conn)
        .await
        .unwrap();
    let mut conn_b = connect(cb["uri"].as_str().unwrap()).await.unwrap();
    let seen: i64 = sqlx::query("SELECT count(*) FROM pg_tables WHERE tablename = 'secret_a'")
        .fetch_one(&mut conn_b)
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 0);
    // Each instance has its own system identifier (templates must not share one).
    let sys = |uri: String| async move {
        let mut c = connect(&uri).await.unwrap();
        let id: i64 = sqlx::query("SELECT system_identifier FROM pg_control_system()")
            .fetch_one(&mut c)
            .await
            .unwrap()
            .get(0);
        id
    };
    assert_ne!(
        sys(ca["uri"].as_str().unwrap().into()).await,
        sys(cb["uri"].as_str().unwrap().into()).await
    );
}

#[tokio::test]
async fn a_killed_postmaster_is_restarted_by_the_supervisor() {
    let app = spawn_app().await;
    let id = app.provision_ready("resilient").await;
    let creds = app.bind_sync(&id, &new_id()).await;
    let uri = creds["uri"].as_str().unwrap().to_string();
    let mut conn = connect(&uri).await.unwrap();
    sqlx::raw_sql("CREATE TABLE t (x int); INSERT INTO t VALUES (42)")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);

    let pid = postmaster_pid(&app.cluster_dir(&id)).expect("postmaster.pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(n) = tokio::time::timeout(Duration::from_secs(5), async {
            let mut c = connect(&uri).await?;
            sqlx::query("SELECT x FROM t")
                .fetch_one(&mut c)
                .await
                .map(|r| r.get::<i32, _>(0))
        })
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut))
        {
            assert_eq!(n, 42);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cluster not restarted within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let new_pid = postmaster_pid(&app.cluster_dir(&id)).unwrap();
    assert_ne!(new_pid, pid, "a new postmaster runs");
    // The supervisor counts the restart once start() has returned, a moment after readiness.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = app
            .client
            .get(format!("{}/metrics", app.address))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains("wayback_cluster_restarts_total 1") {
            break;
        }
        assert!(Instant::now() < deadline, "restart not counted: {metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_restarted_broker_starts_its_stopped_clusters() {
    let mut app = spawn_app().await;
    let id = app.provision_ready("survivor").await;
    let creds = app.bind_sync(&id, &new_id()).await;
    app.stop().await;
    // The machine "reboots": the cluster goes down while no broker runs.
    stop_all_clusters(&app.data_dir);
    let port = creds["port"].as_u64().unwrap() as u16;
    let deadline = Instant::now() + Duration::from_secs(30);
    while port_open(port) {
        assert!(Instant::now() < deadline, "cluster did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A new broker on the same data directory and state.
    let data_dir = app.data_dir.clone();
    let password = app.password.clone();
    let app2 = spawn_app_with(|s| {
        s.data_dir = data_dir.clone();
        s.broker.password = Some(password.clone().into());
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while connect(creds["uri"].as_str().unwrap()).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "cluster not started by the new broker"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(app2);
}

#[tokio::test]
async fn a_plan_change_applies_the_new_settings_and_a_rename_is_recorded() {
    let app = spawn_app().await;
    let id = app.provision_ready("growing").await;
    let creds = app.bind_sync(&id, &new_id()).await;
    let uri = creds["uri"].as_str().unwrap().to_string();
    let show = |setting: &'static str| {
        let uri = uri.clone();
        async move {
            let mut c = connect(&uri).await.unwrap();
            let v: String = sqlx::query(&format!("SHOW {setting}"))
                .fetch_one(&mut c)
                .await
                .unwrap()
                .get(0);
            v
        }
    };
    assert_eq!(show("shared_buffers").await, "128MB");

    // Rename only: answered at once, and both names kept with their times.
    let r = app
        .osb(Method::PATCH, &format!("/v2/service_instances/{id}?accepts_incomplete=true"))
        .json(&json!({ "service_id": SERVICE_ID, "context": { "platform": "cloudfoundry", "instance_name": "grown" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let names = app
        .store
        .instance_names(&InstanceId::parse(id.clone()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        names.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["growing", "grown"]
    );
    assert!(names[0].recorded_at <= names[1].recorded_at);

    // Plan change: shared_buffers needs a restart, work_mem a reload.
    let r = app
        .osb(Method::PATCH, &format!("/v2/service_instances/{id}?accepts_incomplete=true"))
        .json(&json!({ "service_id": SERVICE_ID, "plan_id": MEDIUM, "previous_values": { "plan_id": SMALL } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let op: Value = r.json().await.unwrap();
    let (status, body) = app.poll_instance(&id, op["operation"].as_str()).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{body}"
    );
    assert_eq!(show("shared_buffers").await, "512MB");
    assert_eq!(show("max_connections").await, "200");
    assert_eq!(show("work_mem").await, "8MB");
    let got: Value = app
        .osb(Method::GET, &format!("/v2/service_instances/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["plan_id"], MEDIUM);
}

#[tokio::test]
async fn two_brokers_share_one_postgresql_state_database() {
    let base = std::env::var("WAYBACK_TEST_PG_URL").ok();
    if !require("a PostgreSQL server in WAYBACK_TEST_PG_URL", base.is_some()) {
        return;
    }
    let base = base.unwrap();
    let db = format!("brokers_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let url = format!("{}/{db}", base.rsplit_once('/').unwrap().0);
    // Two brokers, one state database, one archive; each has its own cluster directory, as
    // brokers on one machine sharing a data directory would be a misconfiguration.
    let a = spawn_app_with(|s| s.database_url = Some(url.clone().into())).await;
    let b = spawn_app_with(|s| {
        s.database_url = Some(url.clone().into());
        s.broker.password = Some(a.password.clone().into());
        s.data_dir = a.data_dir.clone();
    })
    .await;
    let id = a.provision_ready("shared").await;
    // B sees A's instance and its finished operation, and can bind it.
    let (status, body) = b.poll_instance(&id, None).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{body}"
    );
    let creds = b.bind_sync(&id, &new_id()).await;
    assert!(connect(creds["uri"].as_str().unwrap()).await.is_ok());
    // A PUT of the same id through B is an identical repeat.
    let r = b.put_instance(&id, &provision_body(SMALL, "shared")).await;
    assert_eq!(r.status(), StatusCode::OK);
    drop(b);
    drop(a);
    sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
}
