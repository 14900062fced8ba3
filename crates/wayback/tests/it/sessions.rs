//! Counting a cluster's sessions without a session (issue 17's idle clock), on a real
//! PostgreSQL 15: a login role's connection is a client, the superuser's (the broker's own) is
//! not, a walsender (`pg_receivewal` as the superuser, as a base backup would connect) is
//! replication, closed sessions leave the count, the count holds with `update_process_title =
//! off`, and a stopped cluster says it is not running instead of answering zero. On a real
//! `wayback agent` (the agents tests' fleet), the same count through `RemoteRuntime`, and the
//! agent's capacity says it stops clusters when idle.
//!
//! Run: `bash scripts/test sessions::`.

use crate::pg_support;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pg_support::{free_port, pg_available, TestRuntime, BIN_DIR};
use secrecy::SecretString;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use wayback::config::{AgentEndpoint, AgentsSettings};
use wayback::domain::InstanceId;
use wayback::pg::PgError;
use wayback::runtime::{
    ClusterRuntime, ClusterSpec, RemoteRuntime, RoleAccess, RuntimeError, Sessions,
};

fn spec(id: &InstanceId, port: u16, settings: &[(&str, &str)]) -> ClusterSpec {
    ClusterSpec {
        instance: id.clone(),
        port,
        settings: settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        require_tls: false,
    }
}

async fn login(port: u16) -> PgConnection {
    PgConnectOptions::new_without_pgpass()
        .host("127.0.0.1")
        .port(port)
        .username("app_user")
        .password("Sessions-Passw0rd")
        .database("app")
        .disable_statement_logging()
        .connect()
        .await
        .unwrap()
}

/// Polls the count until it is `want` (backends leave a moment after their client closes).
async fn wait_for(t: &TestRuntime, id: &InstanceId, want: Sessions, what: &str) {
    wait_on(t.runtime.as_ref(), id, want, what).await
}

async fn wait_on(rt: &dyn ClusterRuntime, id: &InstanceId, want: Sessions, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = rt.sessions(id).await.unwrap();
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {got:?}, not {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `pg_receivewal` as the superuser over the unix socket: a walsender until it is killed.
struct Receiver(Child);

impl Receiver {
    fn start(t: &TestRuntime, id: &InstanceId, port: u16) -> Receiver {
        let dirs = t.local.cluster_dirs(id);
        let password = std::fs::read_to_string(dirs.pgdata.with_file_name("admin-password"))
            .unwrap()
            .trim()
            .to_string();
        let into = t.dir.path().join("received-wal");
        std::fs::create_dir_all(&into).unwrap();
        let child = Command::new(std::path::Path::new(BIN_DIR).join("pg_receivewal"))
            .arg("--directory")
            .arg(&into)
            .arg("--host")
            .arg(&dirs.socket_dir)
            .args(["--port", &port.to_string(), "--username", "wayback_admin"])
            .args(["--no-password", "--no-loop"])
            .env_clear()
            .env("PGPASSWORD", password)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run pg_receivewal");
        Receiver(child)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn clients_and_replication_are_counted_and_the_admin_is_not() {
    if !pg_available() {
        return;
    }
    let t = TestRuntime::new(true);
    let rt = &t.runtime;
    rt.prepare().await.unwrap();
    let id = InstanceId::parse("sessions-1").unwrap();
    let port = free_port();
    rt.create_cluster(&spec(&id, port, &[])).await.unwrap();

    // Not running: not zero, an error that says so (and may pass when retried).
    let e = rt.sessions(&id).await.unwrap_err();
    assert!(
        matches!(e, RuntimeError::Pg(PgError::NotRunning { .. })) && !e.is_permanent(),
        "{e:?}"
    );

    rt.start(&id).await.unwrap();
    rt.ensure_database(&id, "app", "app_owner").await.unwrap();
    let password = SecretString::from("Sessions-Passw0rd");
    rt.create_login_role(&id, "app_user", &password, "app_owner", &RoleAccess::Owner)
        .await
        .unwrap();
    // Only the server's own processes: checkpointer, walwriter, autovacuum, ...
    wait_for(&t, &id, Sessions::default(), "a fresh cluster").await;

    // The broker's sessions are the superuser's: they keep nobody awake.
    let admin_opts = t.local.admin_options(&id).await.unwrap();
    let mut admin = PgConnection::connect_with(&admin_opts.clone().database("app"))
        .await
        .unwrap();
    let title: String = sqlx::query_scalar("SHOW update_process_title")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(
        title, "on",
        "the rendered postgresql.conf leaves the default"
    );
    wait_for(&t, &id, Sessions::default(), "the admin's session").await;

    let mut app = login(port).await;
    let one = Sessions {
        clients: 1,
        replication: 0,
    };
    wait_for(&t, &id, one, "one login session").await;
    // Busy or idle in a transaction, a client is a client.
    sqlx::query("BEGIN").execute(&mut app).await.unwrap();
    let second = login(port).await;
    wait_for(
        &t,
        &id,
        Sessions {
            clients: 2,
            replication: 0,
        },
        "two login sessions",
    )
    .await;

    let receiver = Receiver::start(&t, &id, port);
    wait_for(
        &t,
        &id,
        Sessions {
            clients: 2,
            replication: 1,
        },
        "two login sessions and pg_receivewal",
    )
    .await;
    drop(receiver);
    second.close().await.unwrap();
    wait_for(&t, &id, one, "one login session left").await;
    drop(app);
    wait_for(&t, &id, Sessions::default(), "all closed").await;

    // With the titles' activity off, the fixed part still tells a client from the server.
    rt.apply_settings(&spec(&id, port, &[("update_process_title", "off")]))
        .await
        .unwrap();
    let mut admin = PgConnection::connect_with(&admin_opts.database("app"))
        .await
        .unwrap();
    let title: String = sqlx::query_scalar("SHOW update_process_title")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(title, "off");
    let app = login(port).await;
    wait_for(&t, &id, one, "a login session, update_process_title off").await;
    app.close().await.unwrap();
    wait_for(&t, &id, Sessions::default(), "closed again").await;
    drop(admin);

    rt.stop(&id).await.unwrap();
    assert!(rt.sessions(&id).await.is_err(), "a stopped cluster");
    rt.destroy(&id).await.unwrap();
    let e = rt.sessions(&id).await.unwrap_err();
    assert!(e.is_permanent(), "no cluster at all: {e:?}");
}

/// A remote runtime over the fleet's one agent, holding every instance there.
fn remote(fleet: &crate::agents::Fleet) -> RemoteRuntime {
    let agent = &fleet.agents[0];
    let remote = RemoteRuntime::new(&AgentsSettings {
        urls: vec![AgentEndpoint {
            name: agent.name.clone(),
            url: agent.url(),
        }],
        username: "broker".into(),
        password: Some(fleet.password.clone().into()),
        ca_cert: Some(fleet.ca.clone()),
        ..AgentsSettings::default()
    })
    .unwrap();
    let name = agent.name.clone();
    remote.set_resolver(Box::new(move |_| {
        let name = name.clone();
        Box::pin(async move { Some(name) })
    }));
    remote
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_counts_the_sessions_of_its_clusters() {
    if !pg_available() {
        return;
    }
    let fleet = crate::agents::Fleet::start(1, |_| {}).await;
    let remote = remote(&fleet);
    let rt: &dyn ClusterRuntime = &remote;
    let capacities = remote.capacities().await;
    let (name, capacity) = &capacities[0];
    assert!(
        capacity.as_ref().is_ok_and(|c| c.idle_stop),
        "agent {name} says it stops idle clusters: {capacity:?}"
    );

    let id = InstanceId::parse(crate::common::new_id()).unwrap();
    let port = free_port();
    rt.create_cluster(&spec(&id, port, &[])).await.unwrap();
    let e = rt.sessions(&id).await.unwrap_err();
    assert!(
        !e.is_permanent() && e.to_string().contains("not running"),
        "a stopped cluster on an agent: {e}"
    );
    rt.start(&id).await.unwrap();
    rt.ensure_database(&id, "app", "app_owner").await.unwrap();
    let password = SecretString::from("Sessions-Passw0rd");
    rt.create_login_role(&id, "app_user", &password, "app_owner", &RoleAccess::Owner)
        .await
        .unwrap();
    wait_on(rt, &id, Sessions::default(), "no session on the agent").await;
    let app = login(port).await;
    let one = Sessions {
        clients: 1,
        replication: 0,
    };
    wait_on(rt, &id, one, "a login session on the agent").await;
    app.close().await.unwrap();
    wait_on(rt, &id, Sessions::default(), "closed, on the agent").await;
    rt.destroy(&id).await.unwrap();
}
