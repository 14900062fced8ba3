//! The broker as a separate process (`wayback serve`), for the tests that kill it: start it on
//! a data directory, kill it with SIGKILL (or let the crash hook `WAYBACK_TEST_KILL_AT` do it at
//! a named step), stop it with SIGTERM, start it again on the same directory; and a small OSB
//! client for it that also reads the local archive and the clusters' files.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::common::*;

/// Where one broker's state lives and how it listens; every broker started from it (one after
/// another) shares them.
pub struct Site {
    pub data_dir: PathBuf,
    pub port: u16,
    pub pg_base: u16,
    pub password: String,
    /// More settings for every broker of the site, as environment variables (e.g. the HA
    /// coordinator's `WAYBACK_HA_DCS_ENDPOINTS`).
    pub env: Vec<(String, String)>,
}

impl Site {
    pub fn new(root: &Path) -> Site {
        Site {
            data_dir: root.join("data"),
            port: free_port(),
            pg_base: 20000 + (rand::random::<u16>() % 400) * 100,
            password: format!("pw-{}", new_id()),
            env: Vec::new(),
        }
    }

    pub fn client(&self) -> Client {
        Client {
            address: format!("http://127.0.0.1:{}", self.port),
            password: self.password.clone(),
            data_dir: self.data_dir.clone(),
            http: reqwest::Client::new(),
        }
    }

    pub fn start(&self) -> Broker {
        self.start_with(None)
    }

    /// A broker that kills itself at `kill_at` (the crash hook, `wayback::crash_point`).
    pub fn start_with(&self, kill_at: Option<&str>) -> Broker {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wayback"));
        cmd.args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", self.port),
            "--data-dir",
        ])
        .arg(&self.data_dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("WAYBACK_BROKER_USERNAME", USER)
        .env("WAYBACK_BROKER_PASSWORD", &self.password)
        .env("WAYBACK_PG_PORT_MIN", self.pg_base.to_string())
        .env("WAYBACK_PG_PORT_MAX", (self.pg_base + 99).to_string())
        .env("WAYBACK_JOBS_LEASE_SECS", "2")
        .env("WAYBACK_JOBS_POLL_INTERVAL_MS", "100")
        .env(
            "WAYBACK_LOG",
            std::env::var("WAYBACK_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("WAYBACK_WAL_FINAL_ARCHIVE_TIMEOUT_SECS", "60")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
        if let Ok(user) = std::env::var("WAYBACK_PG_OS_USER") {
            cmd.env("WAYBACK_PG_OS_USER", user);
        }
        if let Some(point) = kill_at {
            cmd.env(wayback::crash_point::ENV, point);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        Broker {
            child: cmd.spawn().expect("start wayback serve"),
        }
    }
}

pub struct Broker {
    child: Child,
}

impl Broker {
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().unwrap();
    }

    /// Stops it as the platform does (SIGTERM: running steps end, nothing new is claimed).
    pub async fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "broker did not stop within 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the crash hook killed the broker (SIGKILL); fails if it ends otherwise or
    /// is still alive after `within`.
    pub async fn wait_killed(&mut self, point: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert_eq!(
                    status.signal(),
                    Some(9),
                    "the broker was to be killed at {point}; it ended with {status}"
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the broker never reached {point} within {} s",
                within.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An OSB client for a broker process, which also reads its data directory.
pub struct Client {
    address: String,
    password: String,
    pub data_dir: PathBuf,
    http: reqwest::Client,
}

impl Client {
    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = self
                .http
                .get(format!("{}/health", self.address))
                .send()
                .await
            {
                if r.status() == StatusCode::OK {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "broker not healthy within 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{}", self.address, path))
            .basic_auth(USER, Some(&self.password))
            .header("X-Broker-API-Version", "2.17")
    }

    /// PUTs an instance; (status, body). A broker the crash hook kills as soon as the job
    /// starts may not finish the answer: that is `None` (the job was stored before it ran).
    pub async fn put_instance(&self, id: &str, body: &Value) -> Option<(StatusCode, Value)> {
        let r = self
            .req(
                Method::PUT,
                &format!("/v2/service_instances/{id}?accepts_incomplete=true"),
            )
            .json(body)
            .send()
            .await
            .ok()?;
        let status = r.status();
        Some((status, r.json().await.unwrap_or(Value::Null)))
    }

    /// DELETEs an instance, like [`Client::put_instance`].
    pub async fn delete_instance(&self, id: &str) -> Option<(StatusCode, Value)> {
        let r = self
            .req(
                Method::DELETE,
                &format!("/v2/service_instances/{id}?accepts_incomplete=true&service_id={SERVICE_ID}&plan_id={SMALL}"),
            )
            .send()
            .await
            .ok()?;
        let status = r.status();
        Some((status, r.json().await.unwrap_or(Value::Null)))
    }

    /// The instance's last operation (`op`, or without a hint its latest one).
    pub async fn last_operation(&self, id: &str, op: Option<&str>) -> (StatusCode, Value) {
        let query = op.map_or(String::new(), |op| format!("?operation={op}"));
        let r = self
            .req(
                Method::GET,
                &format!("/v2/service_instances/{id}/last_operation{query}"),
            )
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Polls until the operation is no longer in progress (bounded: never stuck).
    pub async fn wait_done(&self, id: &str, op: Option<&str>) -> (StatusCode, Value) {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let (status, body) = self.last_operation(id, op).await;
            if status != StatusCode::OK || body["state"] != "in progress" {
                return (status, body);
            }
            assert!(Instant::now() < deadline, "still in progress: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The directory of the local archive (`file://DATA_DIR/archive`) holding `id`'s prefix.
    pub fn archive_dir(&self, id: &str) -> PathBuf {
        self.data_dir
            .join("archive/spaces")
            .join(SPACE)
            .join("instances")
            .join(id)
    }

    /// True once `id` has a complete base backup (its manifest is written last).
    pub fn has_backup(&self, id: &str) -> bool {
        std::fs::read_dir(self.archive_dir(id).join("base"))
            .map(|d| {
                d.flatten()
                    .any(|e| e.path().join("manifest.json").is_file())
            })
            .unwrap_or(false)
    }

    /// Waits (bounded) until a file whose name `matches` is in `id`'s archived WAL.
    pub async fn wait_archived(&self, id: &str, what: &str, matches: impl Fn(&str) -> bool) {
        let dir = self.archive_dir(id).join("wal");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let found = std::fs::read_dir(&dir).is_ok_and(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_str().is_some_and(&matches))
            });
            if found {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} of {id} archived within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_backup(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.has_backup(id) {
            assert!(
                Instant::now() < deadline,
                "{id} has no base backup after 120 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A superuser session on `id`'s running cluster, over its unix socket.
    pub async fn admin(&self, id: &str) -> sqlx::PgConnection {
        use sqlx::ConnectOptions;
        let (port, password) = self.admin_secret(id, id);
        let socket = self.data_dir.join("clusters").join(id).join("run");
        wayback::pg::sql::admin_options(&socket, port, &password)
            .connect()
            .await
            .expect("superuser session")
    }

    /// A superuser session over TCP on `id`'s running cluster with the superuser password of
    /// `password_of` (a clone not yet through its restore still has its source's; its socket
    /// has a temporary peer line for the cluster's OS user).
    pub async fn admin_as(&self, id: &str, password_of: &str) -> sqlx::PgConnection {
        use secrecy::ExposeSecret;
        use sqlx::ConnectOptions;
        let (port, password) = self.admin_secret(id, password_of);
        sqlx::postgres::PgConnectOptions::new_without_pgpass()
            .host("127.0.0.1")
            .port(port)
            .username(wayback::pg::SUPERUSER)
            .password(password.expose_secret())
            .database(wayback::pg::sql::ADMIN_DATABASE)
            .ssl_mode(sqlx::postgres::PgSslMode::Disable)
            .connect()
            .await
            .expect("superuser session")
    }

    fn admin_secret(&self, id: &str, password_of: &str) -> (u16, secrecy::SecretString) {
        let clusters = self.data_dir.join("clusters");
        let pid = std::fs::read_to_string(clusters.join(id).join("pgdata/postmaster.pid"))
            .expect("running");
        let port: u16 = pid.lines().nth(3).unwrap().trim().parse().unwrap();
        let password =
            std::fs::read_to_string(clusters.join(password_of).join("admin-password")).unwrap();
        (port, password.trim().to_string().into())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        stop_all_clusters(&self.data_dir);
    }
}
