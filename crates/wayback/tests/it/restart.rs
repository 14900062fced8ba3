//! The broker process killed with SIGKILL in the middle of an operation, then started again on
//! the same data directory: the operation completes, and nothing is left half-done. (A job an
//! older broker queued is resumed by this one: `fast::resume`.)

use crate::common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::Value;

struct Broker {
    child: Child,
}

impl Broker {
    fn start(data_dir: &std::path::Path, port: u16, pg_base: u16, password: &str) -> Broker {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wayback"));
        cmd.args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data_dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("WAYBACK_BROKER_USERNAME", USER)
        .env("WAYBACK_BROKER_PASSWORD", password)
        .env("WAYBACK_PG_PORT_MIN", pg_base.to_string())
        .env("WAYBACK_PG_PORT_MAX", (pg_base + 99).to_string())
        .env("WAYBACK_JOBS_LEASE_SECS", "2")
        .env("WAYBACK_JOBS_POLL_INTERVAL_MS", "100")
        .env("WAYBACK_LOG", "warn")
        .env("WAYBACK_WAL_FINAL_ARCHIVE_TIMEOUT_SECS", "60")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
        if let Ok(user) = std::env::var("WAYBACK_PG_OS_USER") {
            cmd.env("WAYBACK_PG_OS_USER", user);
        }
        Broker {
            child: cmd.spawn().expect("start wayback serve"),
        }
    }

    fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().unwrap();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TestApp-like client for a broker running as a separate process.
fn client_for(port: u16, password: &str, data_dir: std::path::PathBuf) -> Client {
    Client {
        address: format!("http://127.0.0.1:{port}"),
        password: password.to_string(),
        data_dir,
        http: reqwest::Client::new(),
    }
}

struct Client {
    address: String,
    password: String,
    data_dir: std::path::PathBuf,
    http: reqwest::Client,
}

impl Client {
    async fn wait_healthy(&self) {
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

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{}", self.address, path))
            .basic_auth(USER, Some(&self.password))
            .header("X-Broker-API-Version", "2.17")
    }

    async fn last_operation(&self, id: &str, op: &str) -> (StatusCode, Value) {
        let r = self
            .req(
                reqwest::Method::GET,
                &format!("/v2/service_instances/{id}/last_operation?operation={op}"),
            )
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn wait_done(&self, id: &str, op: &str) -> (StatusCode, Value) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (status, body) = self.last_operation(id, op).await;
            if status != StatusCode::OK || body["state"] != "in progress" {
                return (status, body);
            }
            assert!(Instant::now() < deadline, "still in progress: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        stop_all_clusters(&self.data_dir);
    }
}

#[tokio::test]
async fn a_broker_killed_mid_provision_finishes_the_provision_after_restart() {
    let root = test_root();
    let data_dir = root.path().join("data");
    let password = format!("pw-{}", new_id());
    let port = free_port();
    let pg_base = 20000 + (rand::random::<u16>() % 400) * 100;
    let mut broker = Broker::start(&data_dir, port, pg_base, &password);
    let client = client_for(port, &password, data_dir.clone());
    client.wait_healthy().await;

    let id = new_id();
    let r = client
        .req(
            reqwest::Method::PUT,
            &format!("/v2/service_instances/{id}?accepts_incomplete=true"),
        )
        .json(&provision_body(SMALL, "phoenix"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let op = r.json::<Value>().await.unwrap()["operation"]
        .as_str()
        .unwrap()
        .to_string();
    // Kill as soon as the work has visibly started (or at once if it is still queued): either
    // way the provision was accepted and is not finished.
    let (_, before) = client.last_operation(&id, &op).await;
    assert_eq!(before["state"], "in progress", "{before}");
    broker.kill9();

    let mut broker = Broker::start(&data_dir, port, pg_base, &password);
    client.wait_healthy().await;
    let (status, body) = client.wait_done(&id, &op).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{body}"
    );

    // The instance works: bind and connect.
    let b = new_id();
    let r = client
        .req(
            reqwest::Method::PUT,
            &format!("/v2/service_instances/{id}/service_bindings/{b}"),
        )
        .json(&bind_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let creds: Value = r.json().await.unwrap();
    assert!(connect(creds["credentials"]["uri"].as_str().unwrap())
        .await
        .is_ok());

    // Kill again in the middle of the deprovision; the restarted broker finishes it.
    let r = client
        .req(
            reqwest::Method::DELETE,
            &format!("/v2/service_instances/{id}?accepts_incomplete=true&service_id={SERVICE_ID}&plan_id={SMALL}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let op = r.json::<Value>().await.unwrap()["operation"]
        .as_str()
        .unwrap()
        .to_string();
    broker.kill9();
    let _broker = Broker::start(&data_dir, port, pg_base, &password);
    client.wait_healthy().await;
    let (status, body) = client.wait_done(&id, &op).await;
    assert_delete_finished(status, &body);
    assert!(!data_dir.join("clusters").join(&id).exists());
}
