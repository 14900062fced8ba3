//! The HA engine (issue 15) on real PostgreSQL, a real etcd and real Patroni, through the local
//! runtime's HA calls: two `LocalRuntime`s with separate data directories stand for two
//! machines, the test's own S3 server holds the archive. In `sync` mode: the adopted primary
//! and a standby Patroni seeds stream; `kill -9` of the primary's Patroni and PostgreSQL makes
//! the standby the leader by itself, writes through a multi-host URI
//! (`target_session_attrs=read-write`) succeed again and no acknowledged row is missing; the
//! new primary archives its timeline's `.history` into the same prefix; the old member, started
//! again, rejoins as a replica by `pg_rewind`; a switchover moves the leader back; with etcd
//! stopped for longer than the leader key's ttl the primary keeps taking writes
//! (`failsafe_mode`) and the standby stays a standby; destroying both members leaves nothing of
//! the scope in etcd.
//!
//! Run: `bash scripts/test ha_engine::` (needs `patroni` and `etcd`: `bash scripts/setup`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::etcd::{ha_binaries_available, Etcd};
use crate::common::s3_server::S3Server;
use crate::common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use secrecy::SecretString;
use wayback::archive::layout::InstancePrefix;
use wayback::archive::ArchiveTarget;
use wayback::domain::{InstanceId, SpaceGuid};
use wayback::runtime::{
    ArchiveAccess, ArchiveCommand, ClusterRuntime, ClusterSpec, ClusterStatus, Durability,
    HaMemberSpec, HaRole, HaSeed, HaStatus, LocalRuntime,
};
use wayback::storage::ObjectStore;

pub(crate) const PSQL: &str = "/usr/lib/postgresql/15/bin/psql";
pub(crate) const SUPERUSER_PASSWORD: &str = "ha-engine-superuser-pw";
/// Long enough for a failover (ttl 20 s) and a rejoin on a busy machine.
pub(crate) const ENGINE_WAIT: Duration = Duration::from_secs(180);

/// One "machine": a runtime over its own data directory, with the shared archive.
pub(crate) struct Machine {
    pub(crate) runtime: LocalRuntime,
    pub(crate) data_dir: PathBuf,
    pub(crate) pg_port: u16,
    pub(crate) rest_port: u16,
}

impl Machine {
    pub(crate) fn new(root: &Path, name: &str, s3: &S3Server) -> Self {
        let data_dir = root.join(name);
        let mut settings = test_settings(&data_dir, "unused");
        settings.archive = s3.settings("ha");
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

    /// The runtime as the broker holds it: the calls under test go through the trait.
    pub(crate) fn rt(&self) -> &dyn ClusterRuntime {
        &self.runtime
    }

    pub(crate) fn cluster_dir(&self, id: &InstanceId) -> PathBuf {
        self.data_dir.join("clusters").join(id.as_str())
    }

    pub(crate) fn patroni_pid(&self, id: &InstanceId) -> Option<i32> {
        std::fs::read_to_string(self.cluster_dir(id).join("patroni/patroni.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub(crate) fn patroni_log(&self, id: &InstanceId) -> String {
        std::fs::read_to_string(self.cluster_dir(id).join("patroni/patroni.log"))
            .unwrap_or_default()
    }
}

/// Kills what the members run if the test ends early: Patroni first (it would start its server
/// again), then the servers.
pub(crate) struct Cleanup(pub(crate) Vec<(PathBuf, InstanceId)>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (data_dir, id) in &self.0 {
            let dir = data_dir.join("clusters").join(id.as_str());
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
            stop_all_clusters(data_dir);
        }
    }
}

/// The pids of a postmaster and of its children.
pub(crate) fn server_processes(pgdata: &Path) -> Vec<i32> {
    let Some(pm) = wayback::pg::ctl::live_postmaster(pgdata).unwrap() else {
        return Vec::new();
    };
    let mut pids = vec![pm.pid];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid …: comm may hold spaces, so parse after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(pm.pid) {
            pids.push(pid);
        }
    }
    pids
}

/// `psql` against `uri` with the shared superuser password; Ok(stdout) when it succeeded.
pub(crate) fn psql(uri: &str, sql: &str) -> Result<String, String> {
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

pub(crate) fn uri(ports: &[u16], attrs: &str) -> String {
    let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    format!(
        "postgresql://{}@{}/app?{attrs}",
        wayback::pg::SUPERUSER,
        hosts.join(",")
    )
}

/// A write load: one INSERT after another, each over a new connection to the multi-host URI;
/// every acknowledged row is kept with the time its attempt started. Every attempt takes a new
/// value: an attempt that failed is *in doubt* (the kill may have come after its commit reached
/// the standby and before its answer reached the client), so retrying its value could run into
/// the primary key forever.
pub(crate) struct Writer {
    state: Arc<Mutex<WriterState>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct WriterState {
    acked: Vec<(i64, Instant)>,
    in_doubt: Vec<(i64, String)>,
}

/// What a write load did: the rows acknowledged, and the attempts that failed with their errors
/// (each may or may not have committed).
pub(crate) struct WriteLog {
    pub(crate) acked: Vec<i64>,
    pub(crate) in_doubt: Vec<(i64, String)>,
}

impl WriteLog {
    /// The acknowledged rows missing from `present`.
    pub(crate) fn missing<'a>(&'a self, present: &[i64]) -> Vec<&'a i64> {
        self.acked.iter().filter(|n| !present.contains(n)).collect()
    }

    /// Prints how many failed attempts did commit after all (unacknowledged, yet present).
    pub(crate) fn report_in_doubt(&self, what: &str, present: &[i64]) {
        let committed: Vec<&(i64, String)> = self
            .in_doubt
            .iter()
            .filter(|(n, _)| present.contains(n))
            .collect();
        eprintln!(
            "{what}: {} acknowledged rows, {} failed attempts, of which committed anyway: {committed:?}",
            self.acked.len(),
            self.in_doubt.len()
        );
    }
}

impl Writer {
    pub(crate) fn start(uri: String, first: i64) -> Self {
        let state = Arc::new(Mutex::new(WriterState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, s) = (state.clone(), stop.clone());
        let task = tokio::task::spawn_blocking(move || {
            let mut n = first;
            while !s.load(Ordering::Relaxed) {
                let started = Instant::now();
                let result = psql(&uri, &format!("INSERT INTO ha_rows VALUES ({n})"));
                let failed = result.is_err();
                let mut st = shared.lock().unwrap();
                match result {
                    Ok(_) => st.acked.push((n, started)),
                    Err(e) => st.in_doubt.push((n, e)),
                }
                drop(st);
                n += 1;
                if failed {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        Self { state, stop, task }
    }

    fn acked_since(&self, t: Instant) -> usize {
        let st = self.state.lock().unwrap();
        st.acked.iter().filter(|(_, s)| *s >= t).count()
    }

    /// Waits until `n` writes that began after `t` were acknowledged; on a timeout the panic
    /// shows the last error and `logs()` (the members' logs).
    pub(crate) async fn wait_acked_since(
        &self,
        t: Instant,
        n: usize,
        what: &str,
        logs: impl Fn() -> String,
    ) {
        let deadline = Instant::now() + ENGINE_WAIT;
        while self.acked_since(t) < n {
            if Instant::now() >= deadline {
                let last = self.state.lock().unwrap().in_doubt.last().cloned();
                panic!(
                    "{what}: no write acknowledged; the last failed attempt: {last:?}\n{}",
                    logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) async fn finish(mut self) -> WriteLog {
        self.stop.store(true, Ordering::Relaxed);
        (&mut self.task).await.unwrap();
        let st = self.state.lock().unwrap();
        WriteLog {
            acked: st.acked.iter().map(|(n, _)| *n).collect(),
            in_doubt: st.in_doubt.clone(),
        }
    }
}

/// A test that fails with the load running must still end: the runtime waits for its thread.
impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `kill -9` of a member's Patroni and PostgreSQL, as a machine's crash would: everything is
/// stopped first (a stopped postmaster forks no backend the list would miss), then killed.
pub(crate) fn crash_member(patroni_pid: i32, pgdata: &Path) {
    let _ = kill(Pid::from_raw(patroni_pid), Signal::SIGSTOP);
    let postmaster = wayback::pg::ctl::live_postmaster(pgdata).unwrap();
    if let Some(pm) = &postmaster {
        let _ = kill(Pid::from_raw(pm.pid), Signal::SIGSTOP);
    }
    let mut victims = vec![patroni_pid];
    victims.extend(server_processes(pgdata));
    for sig in [Signal::SIGSTOP, Signal::SIGKILL] {
        for pid in &victims {
            let _ = kill(Pid::from_raw(*pid), sig);
        }
    }
}

/// A member's PostgreSQL log: what `pg_ctl` wrote, then the logging collector's files.
pub(crate) fn server_log(cluster_dir: &Path) -> String {
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    let mut text = read(cluster_dir.join("postgres.log"));
    if let Ok(entries) = std::fs::read_dir(cluster_dir.join("log")) {
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            text.push_str(&read(f));
        }
    }
    text
}

/// The last lines of a member's Patroni and PostgreSQL logs, for a failure's message.
pub(crate) fn member_logs(label: &str, cluster_dir: &Path) -> String {
    let patroni =
        std::fs::read_to_string(cluster_dir.join("patroni/patroni.log")).unwrap_or_default();
    format!(
        "--- {label}: patroni log\n{}\n--- {label}: postgresql log\n{}\n",
        crate::common::etcd::tail(&patroni, 40),
        crate::common::etcd::tail(&server_log(cluster_dir), 40)
    )
}

/// Polls `machine`'s view of the scope until `done` holds.
pub(crate) async fn wait_status(
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
            crate::common::etcd::tail(&machine.patroni_log(id), 30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) fn streams_in_sync(s: &HaStatus, leader: &str, standby: &str, timeline: u32) -> bool {
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
pub(crate) fn timeline(uri: &str) -> u32 {
    let file = psql(uri, "SELECT pg_walfile_name(pg_current_wal_lsn())").unwrap();
    u32::from_str_radix(&file[..8], 16).unwrap()
}

/// Polls until `uri` takes writes.
pub(crate) async fn wait_writable(uri: &str) {
    let deadline = Instant::now() + ENGINE_WAIT;
    loop {
        match psql(uri, "SELECT 1") {
            Ok(_) => return,
            Err(e) => assert!(Instant::now() < deadline, "no primary at {uri}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) fn rows_on(port: u16) -> Vec<i64> {
    psql(
        &uri(&[port], "connect_timeout=2"),
        "SELECT n FROM ha_rows ORDER BY n",
    )
    .unwrap()
    .lines()
    .map(|l| l.parse().unwrap())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patroni_pair_fails_over_rejoins_switches_over_and_rides_out_an_etcd_outage() {
    if !pg_available() || !ha_binaries_available() {
        return;
    }
    let Some(s3) = S3Server::start().await else {
        require("s3s-fs (the test's own S3 server)", false);
        return;
    };
    let mut etcd = Etcd::start().await;
    let root = test_root();
    let (a, b) = (
        Machine::new(root.path(), "a", &s3),
        Machine::new(root.path(), "b", &s3),
    );
    let id = InstanceId::parse(new_id()).unwrap();
    let _cleanup = Cleanup(vec![
        (a.data_dir.clone(), id.clone()),
        (b.data_dir.clone(), id.clone()),
    ]);
    let store = ObjectStore::open(&s3.settings("ha")).unwrap();
    let space = SpaceGuid::parse(SPACE).unwrap();
    let prefix = InstancePrefix::new(&space, &id);

    // The primary member adopts a data directory Wayback made.
    a.rt().prepare().await.unwrap();
    b.rt().prepare().await.unwrap();
    let cluster = |port| ClusterSpec {
        instance: id.clone(),
        port,
        settings: Default::default(),
        require_tls: false,
    };
    a.rt().create_cluster(&cluster(a.pg_port)).await.unwrap();
    let target = {
        let mut settings = test_settings(&a.data_dir, "unused");
        settings.archive = s3.settings("ha");
        ArchiveTarget::for_instance(&settings, &space, &id)
    };
    let command = ArchiveCommand {
        wayback_bin: env!("CARGO_BIN_EXE_wayback").into(),
        archive_timeout_secs: 2,
    };
    let member = |m: &Machine, name: &str, seed, target: ArchiveTarget| HaMemberSpec {
        cluster: cluster(m.pg_port),
        member: name.into(),
        seed,
        dcs: vec![etcd.endpoint()],
        rest_port: m.rest_port,
        advertise_host: "127.0.0.1".into(),
        durability: Durability::Sync,
        replication_role: "wb_ha_repl".into(),
        replication_password: SecretString::from("ha-engine-replication-pw"),
        superuser_password: SecretString::from(SUPERUSER_PASSWORD),
        peer_addresses: vec!["127.0.0.1".into()],
        archive: Some((target, command.clone())),
        machine: None,
    };
    let spec_a = member(&a, "m1", HaSeed::Adopt, target.clone());
    a.rt().ha_start_member(&spec_a).await.unwrap();
    wait_status(&a, &id, "m1 leads", |s| {
        s.leader()
            .is_some_and(|l| l.name == "m1" && l.state == "running")
    })
    .await;
    let conf = std::fs::metadata(a.cluster_dir(&id).join("patroni/patroni.yml")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&conf.permissions()) & 0o777,
        0o600
    );
    let auth = std::fs::metadata(a.cluster_dir(&id).join("patroni/rest-auth")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&auth.permissions()) & 0o777,
        0o600
    );
    // Patroni's REST API refuses a switchover without the scope's password (the runtime's
    // own switchover below sends it).
    let refused = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/switchover", a.rest_port))
        .json(&serde_json::json!({ "leader": "m1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::UNAUTHORIZED);
    let both = uri(&[a.pg_port, b.pg_port], "target_session_attrs=read-write");
    // Patroni names its leader as soon as it holds the key; the promotion follows.
    wait_writable(&both).await;
    // Patroni starts an adopted data directory as a standby and promotes it: a new timeline.
    let tl = timeline(&both);
    psql(&both, "CREATE TABLE ha_rows (n bigint PRIMARY KEY)").unwrap();
    psql(&both, "INSERT INTO ha_rows SELECT generate_series(1, 100)").unwrap();

    eprintln!("ha_engine: the standby");
    // The standby member is seeded by Patroni from the leader and streams in sync.
    let mut standby_target = target.clone();
    standby_target.system_identifier = a.runtime.system_identifier(&id).unwrap();
    let spec_b = member(&b, "m2", HaSeed::FromLeader, standby_target);
    b.rt().ha_start_member(&spec_b).await.unwrap();
    wait_status(&a, &id, "m2 streams in sync", |s| {
        streams_in_sync(s, "m1", "m2", tl)
    })
    .await;
    assert_eq!(rows_on(b.pg_port).len(), 100, "the standby has the rows");

    eprintln!("ha_engine: the kill");
    // kill -9 of the primary's Patroni and PostgreSQL, under a write load.
    let writer = Writer::start(both.clone(), 1000);
    let begun = Instant::now();
    let logs = || member_logs("a", &a.cluster_dir(&id)) + &member_logs("b", &b.cluster_dir(&id));
    writer
        .wait_acked_since(begun, 20, "before the kill", logs)
        .await;
    crash_member(
        a.patroni_pid(&id).expect("patroni runs on a"),
        &a.cluster_dir(&id).join("pgdata"),
    );
    let killed = Instant::now();
    wait_status(&b, &id, "m2 takes over", |s| {
        s.leader()
            .is_some_and(|l| l.name == "m2" && l.state == "running")
    })
    .await;
    writer
        .wait_acked_since(killed, 5, "writes on the new primary", logs)
        .await;
    assert_eq!(timeline(&both), tl + 1, "the new primary's timeline");
    let log = writer.finish().await;
    let present = rows_on(b.pg_port);
    log.report_in_doubt("ha_engine: the failover", &present);
    let missing = log.missing(&present);
    assert!(
        missing.is_empty(),
        "sync mode lost {} of {} acknowledged rows: {missing:?}",
        missing.len(),
        log.acked.len()
    );

    eprintln!("ha_engine: the history file");
    // The new primary archives into the same prefix, on the next timeline.
    let history = format!("{}/wal/{:08X}.history", prefix.as_str(), tl + 1);
    let deadline = Instant::now() + ENGINE_WAIT;
    while store.get(&history).await.unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "{history} never reached the archive"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    eprintln!("ha_engine: the rejoin");
    // The old member, started again, rejoins as a replica by pg_rewind.
    a.rt().start(&id).await.unwrap();
    wait_status(&b, &id, "m1 rejoins", |s| {
        streams_in_sync(s, "m2", "m1", tl + 1)
    })
    .await;
    assert!(
        a.patroni_log(&id).contains("rewind"),
        "m1 did not rejoin by pg_rewind:\n{}",
        crate::common::etcd::tail(&a.patroni_log(&id), 30)
    );
    assert_eq!(
        rows_on(a.pg_port),
        present,
        "the rejoined member has every row"
    );

    // The lifecycle calls know the member: it runs, and its settings are Patroni's to change.
    assert_eq!(a.rt().status(&id).await.unwrap(), ClusterStatus::Running);
    assert!(a.rt().apply_settings(&cluster(a.pg_port)).await.is_err());

    eprintln!("ha_engine: the switchover");
    // A switchover moves the leader back.
    let leader = b.rt().ha_switchover(&id, Some("m1")).await.unwrap();
    assert_eq!(leader, "m1");
    wait_status(&a, &id, "m2 follows m1", |s| {
        streams_in_sync(s, "m1", "m2", tl + 2)
    })
    .await;
    psql(&both, "INSERT INTO ha_rows VALUES (-1)").unwrap();

    eprintln!("ha_engine: etcd down");
    // etcd down for longer than the leader key's ttl: the primary keeps taking writes and the
    // standby is not promoted (failsafe_mode).
    etcd.stop();
    let down = Instant::now();
    let mut writes = 0;
    while down.elapsed() < Duration::from_secs(30) {
        psql(
            &uri(&[a.pg_port], "connect_timeout=2"),
            &format!("INSERT INTO ha_rows VALUES ({})", -2 - writes),
        )
        .unwrap_or_else(|e| panic!("a write failed with etcd down: {e}"));
        let standby = psql(
            &uri(&[b.pg_port], "connect_timeout=2"),
            "SELECT pg_is_in_recovery()",
        );
        assert_eq!(
            standby.as_deref(),
            Ok("t"),
            "m2 was promoted with etcd down"
        );
        writes += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    etcd.resume().await;
    wait_status(&a, &id, "healthy after etcd returns", |s| {
        streams_in_sync(s, "m1", "m2", tl + 2)
    })
    .await;

    eprintln!("ha_engine: destroy");
    // Destroying both members: the last one removes the scope from etcd.
    b.rt().destroy(&id).await.unwrap();
    a.rt().destroy(&id).await.unwrap();
    assert!(!a.cluster_dir(&id).exists() && !b.cluster_dir(&id).exists());
    assert_eq!(a.rt().status(&id).await.unwrap(), ClusterStatus::Absent);
    assert_eq!(etcd.count_prefix(&format!("/wayback/{id}/")).await, 0);
}
