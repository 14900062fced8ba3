//! Two machines running an HA instance under Patroni with a test's own etcd and S3 server, for
//! the HA operations tests (issue 15 point 5): two `LocalRuntime`s over separate data
//! directories stand for two machines; member `m1` adopts a cluster Wayback made on `a`, `m2`
//! is seeded by Patroni on `b` and streams in `sync` mode. Also a write load through the
//! multi-host URI that keeps every acknowledged row ([`Writer`]), and polls of Patroni's view
//! ([`wait_status`]). Everything the pair runs is killed on drop. (The same pieces as
//! `ha_engine.rs`, which predates this module.)
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use secrecy::SecretString;
use wayback::archive::ArchiveTarget;
use wayback::domain::{InstanceId, SpaceGuid};
use wayback::runtime::{
    ArchiveAccess, ArchiveCommand, ClusterRuntime, ClusterSpec, Durability, HaMemberSpec, HaRole,
    HaSeed, HaStatus, LocalRuntime,
};
use wayback::storage::ObjectStore;

use super::etcd::Etcd;
use super::s3_server::S3Server;
use super::{free_port, stop_all_clusters, test_root, test_settings, SPACE};

const PSQL: &str = "/usr/lib/postgresql/15/bin/psql";
pub const SUPERUSER_PASSWORD: &str = "ha-ops-superuser-pw";
/// Long enough for a failover or a switchover and a rejoin on a busy machine.
pub const ENGINE_WAIT: Duration = Duration::from_secs(180);
/// The archive prefix of the pair's S3 server.
pub const ARCHIVE_PREFIX: &str = "ha";

/// One "machine": a runtime over its own data directory, with the shared archive.
pub struct Machine {
    pub runtime: LocalRuntime,
    pub data_dir: PathBuf,
    pub pg_port: u16,
    pub rest_port: u16,
}

impl Machine {
    fn new(root: &Path, name: &str, s3: &S3Server) -> Self {
        let data_dir = root.join(name);
        let mut settings = test_settings(&data_dir, "unused");
        settings.archive = s3.settings(ARCHIVE_PREFIX);
        settings.archive.encrypt = false;
        let store = ObjectStore::open(&settings.archive).unwrap();
        let runtime = LocalRuntime::new(data_dir.clone(), settings.postgres.clone()).with_archive(
            ArchiveAccess {
                store,
                wayback_bin: settings.wal.wayback_bin.clone().unwrap(),
                settings: Arc::new(settings),
                keyring: None,
            },
        );
        Self {
            runtime,
            data_dir,
            pg_port: free_port(),
            rest_port: free_port(),
        }
    }

    /// The runtime as the broker holds it.
    pub fn rt(&self) -> &dyn ClusterRuntime {
        &self.runtime
    }

    pub fn cluster_dir(&self, id: &InstanceId) -> PathBuf {
        self.data_dir.join("clusters").join(id.as_str())
    }

    pub fn patroni_log(&self, id: &InstanceId) -> String {
        std::fs::read_to_string(self.cluster_dir(id).join("patroni/patroni.log"))
            .unwrap_or_default()
    }
}

/// An HA instance on two machines, `m1` leading on `a`, `m2` in sync on `b`.
pub struct Pair {
    pub a: Machine,
    pub b: Machine,
    pub id: InstanceId,
    /// The timeline `m1` leads on once it promoted the adopted directory.
    pub timeline: u32,
    pub etcd: Etcd,
    pub s3: S3Server,
    _root: tempfile::TempDir,
}

impl Pair {
    /// Starts etcd, both members and a table `ha_rows` with 100 rows; returns once `m2`
    /// streams in sync. None when the test's S3 server cannot start (said, or failed in CI).
    pub async fn start() -> Option<Self> {
        let Some(s3) = S3Server::start().await else {
            super::require("s3s-fs (the test's own S3 server)", false);
            return None;
        };
        let etcd = Etcd::start().await;
        let root = test_root();
        let (a, b) = (
            Machine::new(root.path(), "a", &s3),
            Machine::new(root.path(), "b", &s3),
        );
        let id = InstanceId::parse(super::new_id()).unwrap();
        let space = SpaceGuid::parse(SPACE).unwrap();
        a.rt().prepare().await.unwrap();
        b.rt().prepare().await.unwrap();
        a.rt()
            .create_cluster(&cluster(&id, a.pg_port))
            .await
            .unwrap();
        let target = {
            let mut settings = test_settings(&a.data_dir, "unused");
            settings.archive = s3.settings(ARCHIVE_PREFIX);
            ArchiveTarget::for_instance(&settings, &space, &id)
        };
        let mut pair = Self {
            a,
            b,
            id,
            timeline: 0,
            etcd,
            s3,
            _root: root,
        };
        let spec_a = pair.member(&pair.a, "m1", HaSeed::Adopt, target.clone());
        pair.a.rt().ha_start_member(&spec_a).await.unwrap();
        wait_status(&pair.a, &pair.id, "m1 leads", |s| {
            s.leader()
                .is_some_and(|l| l.name == "m1" && l.state == "running")
        })
        .await;
        let both = pair.uri();
        wait_writable(&both).await;
        pair.timeline = timeline(&both);
        psql(&both, "CREATE TABLE ha_rows (n bigint PRIMARY KEY)").unwrap();
        psql(&both, "INSERT INTO ha_rows SELECT generate_series(1, 100)").unwrap();
        let mut standby_target = target;
        standby_target.system_identifier = pair.a.runtime.system_identifier(&pair.id).unwrap();
        let spec_b = pair.member(&pair.b, "m2", HaSeed::FromLeader, standby_target);
        pair.b.rt().ha_start_member(&spec_b).await.unwrap();
        let tl = pair.timeline;
        wait_status(&pair.a, &pair.id, "m2 streams in sync", |s| {
            streams_in_sync(s, "m1", "m2", tl)
        })
        .await;
        Some(pair)
    }

    fn member(&self, m: &Machine, name: &str, seed: HaSeed, target: ArchiveTarget) -> HaMemberSpec {
        HaMemberSpec {
            cluster: cluster(&self.id, m.pg_port),
            member: name.into(),
            seed,
            dcs: vec![self.etcd.endpoint()],
            rest_port: m.rest_port,
            advertise_host: "127.0.0.1".into(),
            durability: Durability::Sync,
            replication_role: "wb_ha_repl".into(),
            replication_password: SecretString::from("ha-ops-replication-pw"),
            superuser_password: SecretString::from(SUPERUSER_PASSWORD),
            peer_addresses: vec!["127.0.0.1".into()],
            archive: Some((
                target,
                ArchiveCommand {
                    wayback_bin: env!("CARGO_BIN_EXE_wayback").into(),
                    archive_timeout_secs: 2,
                },
            )),
        }
    }

    /// The multi-host URI of both members, to the one that takes writes.
    pub fn uri(&self) -> String {
        uri(
            &[self.a.pg_port, self.b.pg_port],
            "target_session_attrs=read-write",
        )
    }
}

impl Drop for Pair {
    /// Patroni first (it would start its server again), then the servers.
    fn drop(&mut self) {
        for m in [&self.a, &self.b] {
            let dir = m.cluster_dir(&self.id);
            if let Some(pid) = std::fs::read_to_string(dir.join("patroni/patroni.pid"))
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
            {
                let named = std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("patroni"));
                if named {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            stop_all_clusters(&m.data_dir);
        }
    }
}

fn cluster(id: &InstanceId, port: u16) -> ClusterSpec {
    ClusterSpec {
        instance: id.clone(),
        port,
        settings: Default::default(),
        require_tls: false,
    }
}

/// `psql` against `uri` with the shared superuser password; Ok(stdout) when it succeeded.
pub fn psql(uri: &str, sql: &str) -> Result<String, String> {
    let out = std::process::Command::new(PSQL)
        .args([
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            uri,
            "-c",
            sql,
        ])
        .env("PGPASSWORD", SUPERUSER_PASSWORD)
        .env("PGCONNECT_TIMEOUT", "2")
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

pub fn uri(ports: &[u16], attrs: &str) -> String {
    let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    format!(
        "postgresql://{}@{}/app?{attrs}",
        wayback::pg::SUPERUSER,
        hosts.join(",")
    )
}

/// A write load: one INSERT after another, each over a new connection to the multi-host URI and
/// each with a new value; every acknowledged row is kept with the time its attempt started.
pub struct Writer {
    acked: Arc<Mutex<Vec<(i64, Instant)>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub fn start(uri: String, first: i64) -> Self {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (acked.clone(), stop.clone());
        let task = tokio::task::spawn_blocking(move || {
            let mut n = first;
            while !s.load(Ordering::Relaxed) {
                let started = Instant::now();
                // A value is never tried twice: an attempt whose answer a switchover cut off
                // may have committed, and trying it again would hit the primary key for good.
                let value = n;
                n += 1;
                if psql(&uri, &format!("INSERT INTO ha_rows VALUES ({value})")).is_ok() {
                    a.lock().unwrap().push((value, started));
                } else {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        Self { acked, stop, task }
    }

    pub fn acked_since(&self, t: Instant) -> usize {
        self.acked
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| *s >= t)
            .count()
    }

    pub async fn wait_acked_since(&self, t: Instant, n: usize, what: &str) {
        let deadline = Instant::now() + ENGINE_WAIT;
        while self.acked_since(t) < n {
            assert!(Instant::now() < deadline, "{what}: no write acknowledged");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the load; the rows it had acknowledged.
    pub async fn finish(mut self) -> Vec<i64> {
        self.stop.store(true, Ordering::Relaxed);
        (&mut self.task).await.unwrap();
        let rows = self.acked.lock().unwrap().iter().map(|(n, _)| *n).collect();
        rows
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Polls `machine`'s view of the scope until `done` holds.
pub async fn wait_status(
    machine: &Machine,
    id: &InstanceId,
    what: &str,
    done: impl Fn(&HaStatus) -> bool,
) -> HaStatus {
    let deadline = Instant::now() + ENGINE_WAIT;
    loop {
        let last = match machine.rt().ha_status(id).await {
            Ok(s) if done(&s) => return s,
            Ok(s) => format!("{s:?}"),
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "{what}: not reached; last seen: {last}; patroni log:\n{}",
            super::etcd::tail(&machine.patroni_log(id), 30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn streams_in_sync(s: &HaStatus, leader: &str, standby: &str, timeline: u32) -> bool {
    s.leader()
        .is_some_and(|l| l.name == leader && l.timeline == Some(timeline))
        && s.member(standby).is_some_and(|m| {
            m.role == HaRole::SyncStandby
                && matches!(m.state.as_str(), "streaming" | "running")
                && m.timeline == Some(timeline)
                && m.lag_bytes == Some(0)
        })
}

/// The timeline the primary at `uri` writes on.
pub fn timeline(uri: &str) -> u32 {
    let file = psql(uri, "SELECT pg_walfile_name(pg_current_wal_lsn())").unwrap();
    u32::from_str_radix(&file[..8], 16).unwrap()
}

/// Polls until `uri` takes writes.
pub async fn wait_writable(uri: &str) {
    let deadline = Instant::now() + ENGINE_WAIT;
    loop {
        match psql(uri, "SELECT 1") {
            Ok(_) => return,
            Err(e) => assert!(Instant::now() < deadline, "no primary at {uri}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The rows of `ha_rows` on the server at `port`.
pub fn rows_on(port: u16) -> Vec<i64> {
    psql(
        &uri(&[port], "connect_timeout=2"),
        "SELECT n FROM ha_rows ORDER BY n",
    )
    .unwrap()
    .lines()
    .map(|l| l.parse().unwrap())
    .collect()
}
