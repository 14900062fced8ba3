//! Test harness: `spawn_app()` builds the same `Application` the binary runs, on a random port,
//! with a fresh data directory (SQLite state, real PostgreSQL clusters) and typed OSB helpers;
//! `spawn_fast_app()` builds it on a [`fake_runtime::FakeRuntime`] instead (the fast tier: no
//! PostgreSQL, the archive a local directory). Dropping the `TestApp` stops the application
//! and every cluster it started.
#![allow(dead_code)]

pub mod archive_keys;
pub mod archive_wait;
pub mod browser;
pub mod dashboard;
pub mod etcd;
pub mod fake_cf;
pub mod fake_runtime;
pub mod followers;
pub mod golden;
pub mod ha_pair;
pub mod osb_client;
pub mod s3_server;
pub mod wayback_client;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use wayback::config::Settings;
use wayback::startup::Application;
use wayback::storage::StorageSettings;

use fake_runtime::FakeRuntime;

pub const SERVICE_ID: &str = "5f6b3c1e-8a43-4f0e-9d7c-6a1b2c3d4e5f";
pub const SMALL: &str = "0d2e9a44-1c3b-4b55-8f6e-2a7d9c0b1e01";
pub const MEDIUM: &str = "0d2e9a44-1c3b-4b55-8f6e-2a7d9c0b1e02";
/// The built-in catalog's HA plan (`ha-small`, issue 15).
pub const HA_SMALL: &str = "0d2e9a44-1c3b-4b55-8f6e-2a7d9c0b1e11";
/// The built-in catalog's plan that stops when idle (`dev`, issue 17).
pub const DEV: &str = "0d2e9a44-1c3b-4b55-8f6e-2a7d9c0b1e21";
pub const ORG: &str = "c0ffee00-0000-4000-8000-000000000001";
pub const SPACE: &str = "5ace0000-0000-4000-8000-000000000002";
pub const USER: &str = "broker-admin";

pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub data_dir: PathBuf,
    _root: tempfile::TempDir,
    pub password: String,
    pub client: reqwest::Client,
    pub store: wayback::store::Store,
    pub worker: wayback::jobs::Worker,
    /// The fake runtime of a fast app (`spawn_fast_app`); None on real PostgreSQL.
    pub fake: Option<Arc<FakeRuntime>>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Fails loudly when the test script drives the run and a prerequisite is missing; otherwise
/// says why the test is skipped.
pub fn require(what: &str, present: bool) -> bool {
    if present {
        return true;
    }
    if std::env::var("WAYBACK_TEST_DRIVEN").is_ok() {
        panic!("{what} is required (run the tests through scripts/test)");
    }
    eprintln!("SKIPPED: {what} is missing; run the tests through scripts/test");
    false
}

/// A fresh, cluster-user-traversable directory for a test. Always directly under /tmp, not
/// under $TMPDIR: a cluster's unix socket path (data dir + instance GUID + `.s.PGSQL.port`)
/// must stay under the 107 bytes a socket address holds. Named `wbt-<run>-…` with the run's tag
/// from `scripts/test` (`WAYBACK_TEST_RUN`), whose cleanup stops only its own run's clusters.
pub fn test_root() -> tempfile::TempDir {
    let run = std::env::var("WAYBACK_TEST_RUN").unwrap_or_default();
    let root = tempfile::Builder::new()
        .prefix(&format!("wbt-{run}-"))
        .tempdir_in("/tmp")
        .expect("tempdir");
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    root
}

/// Settings for a test app in `data_dir`: random HTTP port, a random slice of cluster ports
/// (tests run in parallel processes), short leases so restarts resume quickly.
pub fn test_settings(data_dir: &Path, password: &str) -> Settings {
    let mut s = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_path_buf(),
        ..Settings::default()
    };
    s.broker.username = USER.into();
    s.broker.password = Some(password.to_string().into());
    let base = 20000 + (rand::random::<u16>() % 400) * 100;
    s.postgres.port_min = base;
    s.postgres.port_max = base + 99;
    if let Ok(user) = std::env::var("WAYBACK_PG_OS_USER") {
        s.postgres.os_user = user;
    }
    s.jobs.lease_secs = 3;
    // PostgreSQL must run the real binary for archive_command, not this test executable.
    s.wal.wayback_bin = Some(env!("CARGO_BIN_EXE_wayback").into());
    s.wal.archive_timeout_secs = 2;
    s.jobs.poll_interval_ms = 100;
    s.supervisor.interval_secs = 1;
    // No free-space floor for the copies kept at delete time (nor for drills' scratch room):
    // a test must not depend on how full the machine's disk is. Tests of eviction set their own.
    s.trash.min_free_bytes = 0;
    s.trash.min_free_share = 0.0;
    s.log.level = std::env::var("WAYBACK_TEST_LOG").unwrap_or_else(|_| "warn".into());
    s
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(customise: impl FnOnce(&mut Settings)) -> TestApp {
    spawn(customise, None).await
}

/// A test app on a fresh [`FakeRuntime`] (reachable as `app.fake()`): the whole broker — HTTP,
/// worker, supervisor, name resolver — with clusters in memory and the archive a local
/// directory. Needs no PostgreSQL binaries and no S3 server.
pub async fn spawn_fast_app() -> TestApp {
    spawn_fast_app_with(|_| {}).await
}

pub async fn spawn_fast_app_with(customise: impl FnOnce(&mut Settings)) -> TestApp {
    spawn(customise, Some(FakeRuntime::new())).await
}

async fn spawn(customise: impl FnOnce(&mut Settings), fake: Option<Arc<FakeRuntime>>) -> TestApp {
    let root = test_root();
    let data_dir = root.path().join("data");
    let password = format!("pw-{}", uuid::Uuid::new_v4());
    let mut settings = test_settings(&data_dir, &password);
    customise(&mut settings);
    let password = settings
        .broker
        .password
        .as_ref()
        .map(|p| secrecy::ExposeSecret::expose_secret(p).to_string())
        .unwrap_or(password);
    wayback::telemetry::init(&settings.log);
    let app = match &fake {
        Some(fake) => Application::build_with_runtime(settings, fake.clone()).await,
        None => Application::build(settings).await,
    }
    .expect("application builds");
    let port = app.port();
    let shutdown = app.shutdown_token();
    let store = app.store();
    let worker = app.worker();
    let task = tokio::spawn(app.run_until_stopped());
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        data_dir,
        _root: root,
        password,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
        store,
        worker,
        fake,
        shutdown,
        task: Some(task),
    }
}

/// A provision body as the Cloud Controller sends it (shape from the CC source).
pub fn provision_body(plan: &str, name: &str) -> Value {
    json!({
        "service_id": SERVICE_ID,
        "plan_id": plan,
        "organization_guid": ORG,
        "space_guid": SPACE,
        "context": {
            "platform": "cloudfoundry",
            "organization_guid": ORG,
            "space_guid": SPACE,
            "instance_name": name,
            "organization_name": "org",
            "space_name": "space",
        },
        "maintenance_info": null
    })
}

/// A provision body in `space` with `parameters` (a clone's `clone-from`, `point-in-time`).
pub fn clone_body(name: &str, space: &str, parameters: Value) -> Value {
    let mut body = provision_body(SMALL, name);
    body["space_guid"] = json!(space);
    body["context"]["space_guid"] = json!(space);
    body["parameters"] = parameters;
    body
}

pub fn bind_body() -> Value {
    json!({
        "service_id": SERVICE_ID,
        "plan_id": SMALL,
        "app_guid": "a9900000-0000-4000-8000-000000000003",
        "bind_resource": { "app_guid": "a9900000-0000-4000-8000-000000000003" },
        "context": { "platform": "cloudfoundry", "organization_guid": ORG, "space_guid": SPACE }
    })
}

/// A finished delete (deprovision or unbind) as last_operation tells it: 200 `succeeded`, the
/// operation kept as a tombstone (410 would do by the spec; both public osb-checkers want this).
pub fn assert_delete_finished(status: StatusCode, body: &Value) {
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "a finished delete answers 200 succeeded: {body}"
    );
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The shared S3-compatible server the test script provides (`WAYBACK_TEST_S3_*`), under a
/// fresh prefix `TAG-xxxxxxxx` of its own; `None` without one. Keep tags short and distinct
/// per test file: s3s-fs keeps per-object metadata in a file named after the whole key, and a
/// backup part's key under a long prefix passes the 255-byte file name limit (HTTP 500).
pub fn shared_s3_settings(prefix_tag: &str) -> Option<StorageSettings> {
    let var = |name: &str| std::env::var(format!("WAYBACK_TEST_S3_{name}")).ok();
    let endpoint = var("ENDPOINT")?;
    Some(StorageSettings {
        url: format!("s3://{}/{prefix_tag}-{}", var("BUCKET")?, &new_id()[..8]),
        endpoint: Some(endpoint),
        region: var("REGION"),
        access_key_id: var("ACCESS_KEY"),
        secret_access_key: var("SECRET_KEY").map(Into::into),
        ..StorageSettings::default()
    })
}

/// PostgreSQL 15's binaries are installed (`scripts/setup`); see [`require`].
pub fn pg_available() -> bool {
    require(
        "PostgreSQL 15 (scripts/setup)",
        Path::new("/usr/lib/postgresql/15/bin/postgres").exists(),
    )
}

/// A TCP port on 127.0.0.1 that nothing listens on (at the moment of asking).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `sql` (one or more statements, no parameters) on `conn`.
pub async fn exec(conn: &mut sqlx::PgConnection, sql: &str) {
    sqlx::raw_sql(sql).execute(conn).await.unwrap();
}

/// Polls `check` every 50 ms until it holds; fails the test after `secs` seconds with `what`.
pub async fn eventually<F, Fut>(what: &str, secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "not within {secs} s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl TestApp {
    /// The Prometheus text of `GET /metrics` (no metrics auth in the test settings).
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.address))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The OSB fetch of instance `id` (`GET /v2/service_instances/:id`), which must be 200.
    pub async fn fetch_instance(&self, id: &str) -> Value {
        let r = self
            .osb(Method::GET, &format!("/v2/service_instances/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::OK);
        r.json().await.unwrap()
    }

    /// An authenticated OSB request with the API version header.
    pub fn osb(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{}", self.address, path))
            .basic_auth(USER, Some(&self.password))
            .header("X-Broker-API-Version", "2.17")
    }

    pub async fn put_instance(&self, id: &str, body: &Value) -> Response {
        self.osb(
            Method::PUT,
            &format!("/v2/service_instances/{id}?accepts_incomplete=true"),
        )
        .json(body)
        .send()
        .await
        .unwrap()
    }

    pub async fn delete_instance(&self, id: &str) -> Response {
        self.osb(
            Method::DELETE,
            &format!("/v2/service_instances/{id}?accepts_incomplete=true&service_id={SERVICE_ID}&plan_id={SMALL}"),
        )
        .send()
        .await
        .unwrap()
    }

    pub async fn put_binding(
        &self,
        instance: &str,
        binding: &str,
        accepts_incomplete: bool,
    ) -> Response {
        let q = if accepts_incomplete {
            "?accepts_incomplete=true"
        } else {
            ""
        };
        self.osb(
            Method::PUT,
            &format!("/v2/service_instances/{instance}/service_bindings/{binding}{q}"),
        )
        .json(&bind_body())
        .send()
        .await
        .unwrap()
    }

    pub async fn delete_binding(
        &self,
        instance: &str,
        binding: &str,
        accepts_incomplete: bool,
    ) -> Response {
        let q = if accepts_incomplete {
            "&accepts_incomplete=true"
        } else {
            ""
        };
        self.osb(
            Method::DELETE,
            &format!("/v2/service_instances/{instance}/service_bindings/{binding}?service_id={SERVICE_ID}&plan_id={SMALL}{q}"),
        )
        .send()
        .await
        .unwrap()
    }

    /// Polls a last_operation URL until the state is terminal (or the status is not 200), with
    /// a deadline.
    /// Returns (status, body).
    pub async fn poll(&self, path: &str, operation: Option<&str>) -> (StatusCode, Value) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut url = format!("{path}?service_id={SERVICE_ID}&plan_id={SMALL}");
        if let Some(op) = operation {
            url.push_str(&format!("&operation={op}"));
        }
        loop {
            let r = self.osb(Method::GET, &url).send().await.unwrap();
            let status = r.status();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            let terminal = status != StatusCode::OK || body["state"] != "in progress";
            if terminal {
                return (status, body);
            }
            assert!(
                Instant::now() < deadline,
                "operation still in progress at the deadline: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn poll_instance(&self, id: &str, operation: Option<&str>) -> (StatusCode, Value) {
        self.poll(
            &format!("/v2/service_instances/{id}/last_operation"),
            operation,
        )
        .await
    }

    pub async fn poll_binding(
        &self,
        instance: &str,
        binding: &str,
        operation: Option<&str>,
    ) -> (StatusCode, Value) {
        self.poll(
            &format!("/v2/service_instances/{instance}/service_bindings/{binding}/last_operation"),
            operation,
        )
        .await
    }

    /// Provisions an instance named `name` and waits until it is ready; returns its id.
    pub async fn provision_ready(&self, name: &str) -> String {
        let id = new_id();
        let r = self.put_instance(&id, &provision_body(SMALL, name)).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let op: Value = r.json().await.unwrap();
        let (status, body) = self.poll_instance(&id, op["operation"].as_str()).await;
        assert_eq!(
            (status, body["state"].as_str()),
            (StatusCode::OK, Some("succeeded")),
            "{body}"
        );
        id
    }

    /// PUTs a clone named `name` (in SPACE) with `parameters` and waits for its provision;
    /// returns its id and every distinct description last_operation showed on the way.
    pub async fn clone_ready(&self, name: &str, parameters: Value) -> (String, Vec<String>) {
        let id = new_id();
        let r = self
            .put_instance(&id, &clone_body(name, SPACE, parameters))
            .await;
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let op = body["operation"].as_str().unwrap().to_string();
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let r = self
                .osb(
                    Method::GET,
                    &format!("/v2/service_instances/{id}/last_operation?operation={op}"),
                )
                .send()
                .await
                .unwrap();
            let body: Value = r.json().await.unwrap();
            let d = body["description"].as_str().unwrap_or("").to_string();
            if seen.last() != Some(&d) {
                seen.push(d);
            }
            match body["state"].as_str() {
                Some("in progress") => {}
                Some("succeeded") => return (id, seen),
                _ => panic!("clone failed: {body}; seen: {seen:?}"),
            }
            assert!(Instant::now() < deadline, "clone still running: {seen:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Renames an instance the way Cloud Foundry does (PATCH with the new context name).
    pub async fn rename(&self, id: &str, name: &str) {
        let body = json!({
            "service_id": SERVICE_ID,
            "context": { "platform": "cloudfoundry", "space_guid": SPACE, "instance_name": name },
            "previous_values": { "plan_id": SMALL, "service_id": SERVICE_ID },
        });
        let r = self
            .osb(Method::PATCH, &format!("/v2/service_instances/{id}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    }

    /// Deprovisions and waits until the instance is gone.
    pub async fn deprovision_done(&self, id: &str) {
        let r = self.delete_instance(id).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let op: Value = r.json().await.unwrap();
        let (status, body) = self.poll_instance(id, op["operation"].as_str()).await;
        assert_delete_finished(status, &body);
    }

    /// Binds synchronously and returns the credentials.
    pub async fn bind_sync(&self, instance: &str, binding: &str) -> Value {
        let r = self.put_binding(instance, binding, false).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let body: Value = r.json().await.unwrap();
        body["credentials"].clone()
    }

    /// The fake runtime of an app from `spawn_fast_app`.
    pub fn fake(&self) -> &FakeRuntime {
        self.fake
            .as_deref()
            .expect("a fast app (spawn_fast_app) has a fake runtime")
    }

    /// The cluster directory of an instance.
    pub fn cluster_dir(&self, instance: &str) -> PathBuf {
        self.data_dir.join("clusters").join(instance)
    }

    /// A superuser session on an instance's running cluster (over its unix socket).
    pub async fn admin(&self, instance: &str) -> sqlx::PgConnection {
        use sqlx::ConnectOptions;
        self.admin_options(instance)
            .connect()
            .await
            .expect("superuser session")
    }

    /// As [`TestApp::admin`], on database `db`.
    pub async fn admin_on(&self, instance: &str, db: &str) -> sqlx::PgConnection {
        use sqlx::ConnectOptions;
        self.admin_options(instance)
            .database(db)
            .connect()
            .await
            .expect("superuser session")
    }

    fn admin_options(&self, instance: &str) -> sqlx::postgres::PgConnectOptions {
        let dir = self.cluster_dir(instance);
        let pid = std::fs::read_to_string(dir.join("pgdata/postmaster.pid")).expect("running");
        let port: u16 = pid.lines().nth(3).unwrap().trim().parse().unwrap();
        let password = std::fs::read_to_string(dir.join("admin-password")).unwrap();
        wayback::pg::sql::admin_options(
            &dir.join("run"),
            port,
            &secrecy::SecretString::from(password.trim().to_string()),
        )
    }

    /// Stops the application (HTTP, worker, supervisor); clusters keep running.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("app task").expect("app ran");
        }
    }
}

/// The postmaster pid of a cluster, if one is recorded.
pub fn postmaster_pid(cluster_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(cluster_dir.join("pgdata").join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Stops every cluster under `data_dir` at once (immediate shutdown), so that no test leaves a
/// server behind.
pub fn stop_all_clusters(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir.join("clusters")) else {
        return;
    };
    for entry in entries.flatten() {
        // Only a live postmaster of that directory: the pid of a stale postmaster.pid may
        // belong to another process by now (pids wrap quickly on a busy machine).
        let pgdata = entry.path().join("pgdata");
        let live = wayback::pg::ctl::live_postmaster(&pgdata).ok().flatten();
        if let Some(pid) = live.map(|pm| pm.pid) {
            // SIGQUIT = immediate shutdown; the postmaster takes its children with it.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGQUIT,
            );
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        stop_all_clusters(&self.data_dir);
    }
}

/// Connects as an app that verifies its cluster: the binding's `uri` as it is (its
/// `sslmode`), with `host` instead of the uri's when given, and only the credentials'
/// `ca_certificate` to verify with (written to a file, as a libpq app must).
pub async fn connect_verified(
    credentials: &Value,
    host: Option<&str>,
) -> Result<sqlx::PgConnection, sqlx::Error> {
    use sqlx::postgres::PgConnectOptions;
    use sqlx::Connection;
    let uri = credentials["uri"].as_str().expect("credentials.uri");
    let ca = credentials["ca_certificate"]
        .as_str()
        .expect("credentials.ca_certificate");
    let dir = tempfile::tempdir().expect("a directory for the CA file");
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, ca).expect("write the CA file");
    let mut opts: PgConnectOptions = uri.parse()?;
    opts = opts.ssl_root_cert(&ca_file);
    if let Some(host) = host {
        opts = opts.host(host);
    }
    sqlx::PgConnection::connect_with(&opts).await
}

/// Connects to a binding's `uri` with sqlx.
pub async fn connect(uri: &str) -> Result<sqlx::PgConnection, sqlx::Error> {
    use sqlx::postgres::{PgConnectOptions, PgSslMode};
    use sqlx::Connection;
    // A binding's uri asks for verify-full, which needs the credentials' CA: these tests are
    // about data, so they take TLS without checking the certificate; `cluster_tls` checks it.
    let mut opts: PgConnectOptions = uri.parse()?;
    if matches!(
        opts.get_ssl_mode(),
        PgSslMode::VerifyFull | PgSslMode::VerifyCa
    ) {
        opts = opts.ssl_mode(PgSslMode::Require);
    }
    sqlx::PgConnection::connect_with(&opts).await
}

/// Runs a `wayback drain … --json` command to its end; (whether it exited 0, its JSON report).
pub fn drain_report(cmd: &mut std::process::Command) -> (bool, Value) {
    let out = cmd.output().expect("run wayback drain");
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "drain printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), report)
}
