//! Idle stop and wake end to end (issue 17), through OSB on a real broker with real PostgreSQL
//! 15 clusters: the catalog is the built-in one with the `dev` plan's `idle.stop_after_secs` at
//! [`STOP_AFTER_SECS`], and the supervisor passes every second (`test_settings`).
//!
//! - an idle `dev` instance stops with every commit archived, stays stopped over supervisor
//!   passes and a silent connection, and a login with its binding's credentials wakes it and
//!   sees every row; once stopped again, eight first connections at once are all served; the
//!   wakes are timed (`wayback_wake_seconds`) and `stopped_at` is cleared;
//! - bind, unbind, `clone-from` and deprovision of a stopped instance; a plan change to a plan
//!   that never stops starts it, and one to `ha-small` hands it to Patroni (real etcd and
//!   Patroni); a backup job starts it, and `wayback backup` (another process) says why it does
//!   not;
//! - a broker restart (a separate process) keeps it stopped with its port held; a start that
//!   fails answers the client SQLSTATE 57P03 and it stays stopped; a login then wakes it;
//! - on an agent: it stops when idle, stays parked and held across the agent's restart, a
//!   login wakes it, and a bind starts it through the agent.
//!
//! A client's wakes of one instance are limited to three a minute (`WakeLimits`): each test
//! makes at most three. Run: `bash scripts/test idle_stop::`.

use crate::agents::Fleet;
use crate::common;
use crate::restart::harness::{self, Site};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::archive_wait::prefix_of;
use common::osb_client::iid;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use wayback::storage::ObjectStore;

/// The `dev` plan's idle time here: short, yet long enough that a test's own sessions, one
/// after another, do not let the instance stop between them.
const STOP_AFTER_SECS: u64 = 3;
/// What [`write_notes`] commits: rows, and the sum of their values.
const ROWS: i64 = 500;
const SUM: i64 = ROWS * (ROWS + 1) / 2;

/// The built-in catalog with the `dev` plan stopping after [`STOP_AFTER_SECS`], in `dir`.
pub(crate) fn idle_catalog(dir: &Path) -> PathBuf {
    let mut doc: Value = serde_json::from_str(wayback::catalog::BUILTIN_CATALOG).unwrap();
    let plans = doc["services"][0]["plans"].as_array_mut().unwrap();
    let dev = plans.iter_mut().find(|p| p["id"] == DEV).expect("dev plan");
    dev["metadata"]["wayback"]["idle"]["stop_after_secs"] = STOP_AFTER_SECS.into();
    let path = dir.join("catalog-idle.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    path
}

async fn spawn_idle_app() -> (TestApp, tempfile::TempDir) {
    let dir = test_root();
    let catalog = idle_catalog(dir.path());
    let app = spawn_app_with(move |s| s.catalog = Some(catalog)).await;
    (app, dir)
}

/// Provisions a `dev` instance named `name` and waits until it is ready; its id.
pub(crate) async fn provision_dev(app: &TestApp, name: &str) -> String {
    let id = new_id();
    let r = app.put_instance(&id, &provision_body(DEV, name)).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let op: Value = r.json().await.unwrap();
    let (status, body) = app.poll_instance(&id, op["operation"].as_str()).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{body}"
    );
    id
}

fn port_of(credentials: &Value) -> u16 {
    credentials["port"].as_u64().expect("credentials.port") as u16
}

fn uri_of(credentials: &Value) -> String {
    credentials["uri"].as_str().expect("credentials.uri").into()
}

/// Commits [`ROWS`] rows in five transactions through `uri`, in one session (which keeps the
/// instance running); the WAL segment holding the last commit.
async fn write_notes(uri: &str) -> String {
    let mut c = connect(uri).await.expect("the binding logs in");
    exec(&mut c, "CREATE TABLE notes (n int)").await;
    let per = ROWS / 5;
    for t in 0..5 {
        let (from, to) = (t * per + 1, (t + 1) * per);
        exec(
            &mut c,
            &format!("INSERT INTO notes SELECT generate_series({from}, {to})"),
        )
        .await;
    }
    sqlx::query_scalar("SELECT pg_walfile_name(pg_current_wal_lsn())")
        .fetch_one(&mut c)
        .await
        .unwrap()
}

/// Logs in with `uri` and reads the rows' count and sum.
async fn notes(uri: String) -> Result<(i64, i64), sqlx::Error> {
    let mut c = connect(&uri).await?;
    sqlx::query_as("SELECT count(*), coalesce(sum(n), 0)::bigint FROM notes")
        .fetch_one(&mut c)
        .await
}

pub(crate) fn postmaster_runs(cluster_dir: &Path) -> bool {
    wayback::pg::ctl::live_postmaster(&cluster_dir.join("pgdata"))
        .unwrap()
        .is_some()
}

/// Whether an OSB fetch's body shows the instance stopped (`metadata.attributes.state`).
fn shown_stopped(fetched: &Value) -> bool {
    fetched["metadata"]["attributes"]["state"] == "stopped"
}

async fn stopped_at(app: &TestApp, id: &str) -> Option<i64> {
    let record = app.store.get_instance(&iid(id)).await.unwrap();
    record.expect("the instance's record").stopped_at
}

/// The value of the unlabelled sample `name` in the broker's /metrics at `address`.
async fn metric(address: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{address}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// Waits until `id` is stopped: recorded, shown by the OSB fetch, and no postmaster in
/// `cluster_dir` (its first base backup and [`STOP_AFTER_SECS`] without a session come first).
pub(crate) async fn wait_stopped(app: &TestApp, id: &str, cluster_dir: &Path) {
    eventually(&format!("{id} stops when idle"), 180, || async {
        stopped_at(app, id).await.is_some()
            && shown_stopped(&app.fetch_instance(id).await)
            && !postmaster_runs(cluster_dir)
    })
    .await;
}

/// Waits until a wake of `id` is recorded: `stopped_at` cleared and the fetch without it.
async fn wait_running(app: &TestApp, id: &str) {
    eventually(&format!("the wake of {id} is recorded"), 60, || async {
        stopped_at(app, id).await.is_none()
            && app.fetch_instance(id).await.get("metadata").is_none()
    })
    .await;
}

/// A connection that sends nothing is closed by the listener (its first-packet timeout).
async fn silent_client_is_closed(port: u16) {
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("the stopped instance's port takes connections");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(30), silent.read(&mut buf))
        .await
        .expect("a silent client is closed within 30 s");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

/// Until a TCP connection to `port` is accepted (a hold may take a moment to bind again),
/// for at most 30 s; the connection is dropped at once (it sends nothing, so wakes nothing).
async fn wait_port_held(port: u16) {
    eventually(&format!("port {port} is held"), 30, || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
}

/// The SQLSTATE and message of a refused login.
fn refusal(e: sqlx::Error) -> (String, String) {
    match e {
        sqlx::Error::Database(db) => (
            db.code().map(|c| c.to_string()).unwrap_or_default(),
            db.message().to_string(),
        ),
        other => panic!("expected a server's error, got {other}"),
    }
}

/// `uri` with `sslmode=prefer`: the wake listener declines TLS and answers in the clear, which
/// a client that requires TLS would not read.
fn prefer_tls(uri: &str) -> String {
    assert!(uri.contains("sslmode=verify-full"), "{uri}");
    uri.replace("sslmode=verify-full", "sslmode=prefer")
}

#[tokio::test]
async fn an_idle_instance_stops_archived_stays_stopped_and_a_login_wakes_it() {
    if !pg_available() {
        return;
    }
    let (app, _dir) = spawn_idle_app().await;
    let id = provision_dev(&app, "scratch").await;
    let creds = app.bind_sync(&id, &new_id()).await;
    let (uri, port) = (uri_of(&creds), port_of(&creds));
    let last_segment = write_notes(&uri).await;
    let cluster = app.cluster_dir(&id);
    wait_stopped(&app, &id, &cluster).await;

    // Every commit made before the stop is archived: the last one's segment is in the archive
    // and nothing waits in archive_status.
    let store = ObjectStore::local(&app.data_dir.join("archive")).unwrap();
    let key = format!("{}/wal/{last_segment}", prefix_of(&id).as_str());
    assert!(
        store.head(&key).await.unwrap().is_some(),
        "the last commit's segment {key} is not archived"
    );
    let waiting: Vec<_> = std::fs::read_dir(cluster.join("pgdata/pg_wal/archive_status"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".ready"))
        .collect();
    assert!(
        waiting.is_empty(),
        "segments wait to be archived: {waiting:?}"
    );
    assert_eq!(metric(&app.address, "wayback_instances_stopped").await, 1.0);

    // Several supervisor passes leave it stopped: each records the stop again after we erase
    // it, and none starts the cluster.
    for pass in 0..3 {
        assert!(app.store.clear_stopped_at(&iid(&id)).await.unwrap());
        eventually(
            &format!("a supervisor pass records the stop again ({pass})"),
            30,
            || async {
                assert!(!postmaster_runs(&cluster), "a supervisor pass started it");
                stopped_at(&app, &id).await.is_some()
            },
        )
        .await;
    }
    // A silent connection is closed and wakes nothing.
    silent_client_is_closed(port).await;
    assert!(!postmaster_runs(&cluster), "a silent connection woke it");
    assert!(shown_stopped(&app.fetch_instance(&id).await));

    // A login with the binding's credentials wakes it and sees every row.
    let timed = metric(&app.address, "wayback_wake_seconds_count").await;
    let mut conn = connect(&uri).await.expect("a login wakes the instance");
    let seen: (i64, i64) = sqlx::query_as("SELECT count(*), sum(n)::bigint FROM notes")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(seen, (ROWS, SUM));
    assert!(postmaster_runs(&cluster));
    wait_running(&app, &id).await;
    assert_eq!(
        metric(&app.address, "wayback_wake_seconds_count").await,
        timed + 1.0
    );
    assert_eq!(metric(&app.address, "wayback_instances_stopped").await, 0.0);
    drop(conn);

    // Stopped again, eight first connections at once: one start serves them all.
    wait_stopped(&app, &id, &cluster).await;
    let timed = metric(&app.address, "wayback_wake_seconds_count").await;
    let clients: Vec<_> = (0..8).map(|_| tokio::spawn(notes(uri.clone()))).collect();
    for c in clients {
        let seen = c.await.unwrap().expect("a first connection is served");
        assert_eq!(seen, (ROWS, SUM));
    }
    wait_running(&app, &id).await;
    assert_eq!(
        metric(&app.address, "wayback_wake_seconds_count").await,
        timed + 1.0,
        "one start for eight clients"
    );
    assert_eq!(
        metric(&app.address, "wayback_wake_failures_total").await,
        0.0
    );
}

#[tokio::test]
async fn bind_unbind_clone_and_deprovision_of_a_stopped_instance() {
    if !pg_available() {
        return;
    }
    let (app, _dir) = spawn_idle_app().await;
    let id = provision_dev(&app, "sleepy").await;
    let cluster = app.cluster_dir(&id);
    let first = new_id();
    let old = app.bind_sync(&id, &first).await;
    write_notes(&uri_of(&old)).await;
    wait_stopped(&app, &id, &cluster).await;

    // A bind starts it; the new credentials log in and see every row; it stops again.
    let new = app.bind_sync(&id, &new_id()).await;
    assert_eq!(notes(uri_of(&new)).await.unwrap(), (ROWS, SUM));
    wait_stopped(&app, &id, &cluster).await;

    // An unbind starts it; the unbound credentials no longer log in; it stops again.
    let r = app.delete_binding(&id, &first, false).await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let refused = connect(&uri_of(&old))
        .await
        .expect_err("an unbound role must not log in");
    assert!(
        refused.to_string().contains("authentication")
            || refused.to_string().contains("does not exist"),
        "{refused}"
    );
    wait_stopped(&app, &id, &cluster).await;

    // clone-from a stopped instance has every row.
    let (clone, _) = app
        .clone_ready("sleepy-copy", json!({"clone-from": id}))
        .await;
    let copy = app.bind_sync(&clone, &new_id()).await;
    assert_eq!(notes(uri_of(&copy)).await.unwrap(), (ROWS, SUM));

    // Deprovision of a stopped instance frees its port.
    wait_stopped(&app, &id, &cluster).await;
    let port = port_of(&old);
    app.deprovision_done(&id).await;
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the deprovision freed the port");
    assert!(!cluster.exists(), "the cluster directory is gone");
}

/// GET of an instance on a broker process: its body.
async fn fetch_at(client: &harness::Client, id: &str) -> Value {
    let r = client
        .req(Method::GET, &format!("/v2/service_instances/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

#[tokio::test]
async fn a_broker_restart_keeps_a_stopped_instance_stopped_and_held() {
    if !pg_available() {
        return;
    }
    let root = test_root();
    let mut site = Site::new(root.path());
    let catalog = idle_catalog(root.path());
    site.env.extend(
        [
            ("WAYBACK_CATALOG", catalog.display().to_string()),
            ("WAYBACK_SUPERVISOR_INTERVAL_SECS", "1".into()),
            ("WAYBACK_WAL_ARCHIVE_TIMEOUT_SECS", "2".into()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    let mut broker = site.start();
    let client = site.client();
    client.wait_healthy().await;
    let address = format!("http://127.0.0.1:{}", site.port);

    let id = new_id();
    let (status, body) = client
        .put_instance(&id, &provision_body(DEV, "dormant"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, body) = client.wait_done(&id, body["operation"].as_str()).await;
    assert_eq!(body["state"], "succeeded", "{status}: {body}");
    let r = client
        .req(
            Method::PUT,
            &format!("/v2/service_instances/{id}/service_bindings/{}", new_id()),
        )
        .json(&bind_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let creds = r.json::<Value>().await.unwrap()["credentials"].clone();
    let (uri, port) = (uri_of(&creds), port_of(&creds));
    write_notes(&uri).await;
    let cluster = site.data_dir.join("clusters").join(&id);
    let stopped =
        || async { shown_stopped(&fetch_at(&client, &id).await) && !postmaster_runs(&cluster) };
    eventually("the idle instance stops", 180, stopped).await;

    broker.stop().await;
    let _broker = site.start();
    client.wait_healthy().await;
    // Still stopped, its port held again, over a few supervisor passes.
    wait_port_held(port).await;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert!(!postmaster_runs(&cluster), "started after the restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(shown_stopped(&fetch_at(&client, &id).await));

    // A start that fails: the client reads SQLSTATE 57P03; the instance stays stopped.
    let conf = cluster.join("pgdata/postgresql.conf");
    let good = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, format!("{good}no_such_setting_at_all = 1\n")).unwrap();
    let (code, message) = refusal(notes(prefer_tls(&uri)).await.unwrap_err());
    assert_eq!(code, "57P03", "{message}");
    assert!(message.contains("could not be started"), "{message}");
    assert!(!postmaster_runs(&cluster));
    assert!(shown_stopped(&fetch_at(&client, &id).await));
    assert_eq!(metric(&address, "wayback_wake_failures_total").await, 1.0);

    // Repaired, a login wakes it and sees every row.
    std::fs::write(&conf, &good).unwrap();
    assert_eq!(notes(uri).await.unwrap(), (ROWS, SUM));
    eventually("the wake is recorded", 60, || async {
        !shown_stopped(&fetch_at(&client, &id).await)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_an_agent_it_stops_stays_parked_across_a_restart_and_wakes() {
    if !pg_available() {
        return;
    }
    let dir = test_root();
    let catalog = idle_catalog(dir.path());
    let mut fleet = Fleet::start(1, move |s| s.catalog = Some(catalog)).await;
    let id = provision_dev(&fleet.app, "remote").await;
    assert_eq!(fleet.placed_on(&id).await.as_deref(), Some("agent-a"));
    let creds = fleet.app.bind_sync(&id, &new_id()).await;
    let (uri, port) = (uri_of(&creds), port_of(&creds));
    write_notes(&uri).await;
    let cluster = fleet.agents[0].data_dir.join("clusters").join(&id);
    wait_stopped(&fleet.app, &id, &cluster).await;
    wait_port_held(port).await;

    // The agent restarts (SIGTERM, as bpm stops it): the cluster stays parked and held.
    let agent = fleet.agent_mut("agent-a");
    let status = agent.terminate();
    assert!(status.success(), "{status}");
    agent.start();
    wait_port_held(port).await;
    assert!(!postmaster_runs(&cluster), "started by the agent's restart");
    assert!(shown_stopped(&fleet.app.fetch_instance(&id).await));

    // A login wakes it through the agent's hold and sees every row; the broker sees it run.
    assert_eq!(notes(uri).await.unwrap(), (ROWS, SUM));
    assert!(postmaster_runs(&cluster));
    wait_running(&fleet.app, &id).await;

    // Stopped again, a bind starts it through the agent; the new credentials see every row.
    wait_stopped(&fleet.app, &id, &cluster).await;
    let new = fleet.app.bind_sync(&id, &new_id()).await;
    assert_eq!(notes(uri_of(&new)).await.unwrap(), (ROWS, SUM));
}

#[tokio::test]
async fn a_plan_change_to_a_plan_that_never_stops_starts_a_stopped_instance() {
    if !pg_available() {
        return;
    }
    let (app, _dir) = spawn_idle_app().await;
    let id = provision_dev(&app, "promoted").await;
    let cluster = app.cluster_dir(&id);
    let creds = app.bind_sync(&id, &new_id()).await;
    write_notes(&uri_of(&creds)).await;
    wait_stopped(&app, &id, &cluster).await;

    let mut change = common::osb_client::plan_change(SMALL);
    change["previous_values"]["plan_id"] = DEV.into();
    let r = app
        .osb(
            Method::PATCH,
            &format!("/v2/service_instances/{id}?accepts_incomplete=true"),
        )
        .json(&change)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let op: Value = r.json().await.unwrap();
    let (status, body) = app.poll_instance(&id, op["operation"].as_str()).await;
    assert_eq!(body["state"], "succeeded", "{status}: {body}");

    // Running on its new plan, shown running, and it stays up past the old plan's idle time.
    assert!(
        postmaster_runs(&cluster),
        "still stopped after the plan change"
    );
    let shown = app.fetch_instance(&id).await;
    assert_eq!(
        (shown["plan_id"].as_str(), shown.get("metadata")),
        (Some(SMALL), None),
        "{shown}"
    );
    assert_eq!(stopped_at(&app, &id).await, None);
    let until = Instant::now() + Duration::from_secs(STOP_AFTER_SECS + 3);
    while Instant::now() < until {
        assert!(
            postmaster_runs(&cluster),
            "stopped on a plan that never stops"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(notes(uri_of(&creds)).await.unwrap(), (ROWS, SUM));
}

#[tokio::test]
async fn a_backup_of_a_stopped_instance_starts_it_and_the_cli_says_why_not() {
    if !pg_available() {
        return;
    }
    let (app, _dir) = spawn_idle_app().await;
    let id = provision_dev(&app, "archived").await;
    let cluster = app.cluster_dir(&id);
    let creds = app.bind_sync(&id, &new_id()).await;
    write_notes(&uri_of(&creds)).await;
    wait_stopped(&app, &id, &cluster).await;

    // A backup job the broker runs (a failed drill enqueues one) starts it, and it stops again.
    let job = wayback::jobs::backup_job(&iid(&id), "manual");
    let job_id = job.id.clone();
    assert!(app.store.enqueue_backup(&job).await.unwrap());
    eventually("the backup job ends", 120, || async {
        let j = app.store.get_job(&job_id).await.unwrap().unwrap();
        j.state != wayback::store::JOB_PENDING
    })
    .await;
    let j = app.store.get_job(&job_id).await.unwrap().unwrap();
    assert_eq!(j.state, wayback::store::JOB_DONE, "{j:?}");
    assert!(app.store.backup_of_job(&job_id).await.unwrap().is_some());
    wait_stopped(&app, &id, &cluster).await;

    // `wayback backup` (another process, which cannot start it through the broker's hold)
    // says why not and what to do; the instance stays stopped.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wayback"))
        .args(["backup", &id])
        .env("WAYBACK_DATA_DIR", &app.data_dir)
        .env("WAYBACK_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("is stopped when idle") && stderr.contains("wake it first"),
        "{stderr}"
    );
    assert!(!postmaster_runs(&cluster));
    assert!(shown_stopped(&app.fetch_instance(&id).await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_change_to_ha_takes_a_stopped_instance_over() {
    use crate::common::etcd::{ha_binaries_available, Etcd};
    use crate::ha_broker::{member_dir, psql, role_of, uri_with_ca, wait_members, Cleanup};
    if !pg_available() || !ha_binaries_available() {
        return;
    }
    let etcd = Etcd::start().await;
    let dir = test_root();
    let catalog = idle_catalog(dir.path());
    let dcs = etcd.endpoint();
    let app = spawn_app_with(move |s| {
        s.catalog = Some(catalog);
        s.ha.dcs_endpoints = vec![dcs];
    })
    .await;
    let id = provision_dev(&app, "grown-up").await;
    let _cleanup = Cleanup(vec![
        member_dir(&app, &id, "m1"),
        member_dir(&app, &id, "m2"),
    ]);
    let cluster = app.cluster_dir(&id);
    let creds = app.bind_sync(&id, &new_id()).await;
    write_notes(&uri_of(&creds)).await;
    wait_stopped(&app, &id, &cluster).await;

    crate::ha_update::change_plan(&app, &id, HA_SMALL, DEV).await;
    wait_members(&app, &id, "m1 leads, m2 streams in sync", |m| {
        role_of(m, "m1") == Some("leader") && role_of(m, "m2") == Some("sync_standby")
    })
    .await;
    assert_eq!(stopped_at(&app, &id).await, None);
    assert!(app.fetch_instance(&id).await.get("metadata").is_none());
    // Every row, through the first binding (m1 leads) and a new one naming every member.
    assert_eq!(notes(uri_of(&creds)).await.unwrap(), (ROWS, SUM));
    let multi = app.bind_sync(&id, &new_id()).await;
    let ca = tempfile::NamedTempFile::new().unwrap();
    let seen = psql(
        &uri_with_ca(&multi, &ca),
        "SELECT count(*) || ' ' || sum(n) FROM notes",
    );
    assert_eq!(seen.unwrap(), format!("{ROWS} {SUM}"));
}
