//! An etcd of a test's own (the HA coordinator, issue 15): one node on free client and peer
//! ports of 127.0.0.1 with a temporary data directory, healthy before [`Etcd::start`] returns,
//! killed on drop. [`Etcd::stop`] / [`Etcd::resume`] take it away and bring it back on the same
//! ports and data (the coordinator-down test).
//!
//! The binaries come from Debian (`scripts/setup` installs `etcd-server` and `patroni`). A test
//! that needs them skips with a message when they are missing, unless `CI` is set: then it fails.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub client_port: u16,
    pub peer_port: u16,
}

/// Whether `etcd` and `patroni` are installed; a missing one skips the test (false) with a
/// message, or fails it under `CI`.
pub fn ha_binaries_available() -> bool {
    let missing: Vec<&str> = ["etcd", "patroni"]
        .into_iter()
        .filter(|b| find_binary(b).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let what = format!(
        "{} (bash scripts/setup installs them from Debian)",
        missing.join(" and ")
    );
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("CI is set and {what} is missing");
    }
    eprintln!("SKIPPED: {what} is missing");
    false
}

/// The program `name` on PATH or in /usr/bin.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

impl Etcd {
    /// Starts one etcd node and waits until it says it is healthy.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut etcd = Self {
            child: None,
            dir,
            client_port: super::free_port(),
            peer_port: super::free_port(),
        };
        etcd.resume().await;
        etcd
    }

    /// `127.0.0.1:port` of the client API, as Patroni's `etcd3.hosts` takes it.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Starts etcd again (after [`Etcd::stop`]) on the same ports and data directory.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "etcd already runs");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log");
        let child = Command::new(find_binary("etcd").expect("etcd"))
            .arg("--name=wbt")
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls={}", self.client_url()))
            .arg(format!("--advertise-client-urls={}", self.client_url()))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=wbt={peer}"))
            .arg("--initial-cluster-state=new")
            .env_clear()
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let healthy = match client
                .get(format!("{}/health", self.client_url()))
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                Ok(r) => r.text().await.unwrap_or_default().contains("\"true\""),
                Err(_) => false,
            };
            if healthy {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("etcd exited ({status}): {}", self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "etcd on {} is not healthy after 30 s: {}",
                self.client_port,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills etcd: the coordinator is down until [`Etcd::resume`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last lines of etcd's log, for a failure message.
    pub fn log_tail(&self) -> String {
        tail(
            &std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default(),
            20,
        )
    }

    /// How many keys start with `prefix` (through etcd's v3 JSON gateway).
    pub async fn count_prefix(&self, prefix: &str) -> u64 {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().expect("a prefix") += 1;
        let body: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/v3/kv/range", self.client_url()))
            .json(&serde_json::json!({
                "key": b64(prefix.as_bytes()),
                "range_end": b64(&end),
                "count_only": true,
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        // The gateway writes int64 as a string and leaves out zero values.
        body["count"]
            .as_str()
            .map(|c| c.parse().unwrap())
            .unwrap_or(0)
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
