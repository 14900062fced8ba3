//! Shared set-up for the tests that drive real PostgreSQL 15 processes (`pg_runtime`,
//! `pg_driver`): finding the binaries (or failing loudly when the test script drives us), the OS
//! user clusters run as, free ports, and a guard that stops every server a test left running.

#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wayback::config::PostgresSettings;
use wayback::pg::ctl;
use wayback::runtime::{LocalRuntime, Runtime};

pub const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// True when PostgreSQL 15 is installed. When it is not: a panic under `WAYBACK_TEST_DRIVEN=1`
/// (CI must not pass by skipping), else a note on stderr and `false`.
pub fn pg_available() -> bool {
    let ok = [
        "initdb",
        "pg_ctl",
        "postgres",
        "pg_isready",
        "pg_resetwal",
        "pg_controldata",
    ]
    .iter()
    .all(|p| Path::new(BIN_DIR).join(p).is_file());
    if !ok {
        if std::env::var("WAYBACK_TEST_DRIVEN").as_deref() == Ok("1") {
            panic!("PostgreSQL 15 binaries are missing in {BIN_DIR}; install postgresql-15");
        }
        eprintln!("SKIPPED: PostgreSQL 15 binaries are missing in {BIN_DIR}");
    }
    ok
}

/// The user clusters run as when the tests run as root: `WAYBACK_TEST_OS_USER`, else `wayback`,
/// else `postgres`. (Not root: the runtime uses the current user and ignores this.)
pub fn os_user() -> String {
    if let Ok(u) = std::env::var("WAYBACK_TEST_OS_USER") {
        return u;
    }
    let exists = |n: &str| nix::unistd::User::from_name(n).ok().flatten().is_some();
    if !nix::unistd::Uid::effective().is_root() || exists("wayback") {
        return "wayback".into();
    }
    if exists("postgres") {
        return "postgres".into();
    }
    panic!("running as root but neither OS user `wayback` nor `postgres` exists; create one");
}

/// A port nobody listens on right now, from a random spot in a high range (tests run in
/// parallel processes, so a fixed port would collide).
pub fn free_port() -> u16 {
    loop {
        let port = rand::random::<u16>() % 20000 + 30000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn settings(use_template: bool) -> PostgresSettings {
    PostgresSettings {
        os_user: os_user(),
        start_timeout_secs: 30,
        use_template,
        ..PostgresSettings::default()
    }
}

/// A runtime on a fresh temporary data directory. Dropping it stops every server under it.
pub struct TestRuntime {
    pub local: Arc<LocalRuntime>,
    pub runtime: Runtime,
    pub dir: tempfile::TempDir,
}

impl TestRuntime {
    pub fn new(use_template: bool) -> Self {
        Self::with_settings(settings(use_template))
    }

    pub fn with_settings(settings: PostgresSettings) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let local = Arc::new(LocalRuntime::new(dir.path().to_path_buf(), settings));
        Self {
            runtime: local.clone(),
            local,
            dir,
        }
    }

    /// A runtime whose clusters serve TLS with certificates from the CA generated into its data
    /// directory, for `advertise_host` (plus localhost and 127.0.0.1).
    pub fn with_tls(settings: PostgresSettings, advertise_host: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = wayback::tls::CaSource::default()
            .load(dir.path())
            .expect("generate the CA");
        let tls = wayback::runtime::ClusterTls::new(Arc::new(ca), advertise_host);
        let local = Arc::new(LocalRuntime::new(dir.path().to_path_buf(), settings).with_tls(tls));
        Self {
            runtime: local.clone(),
            local,
            dir,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for TestRuntime {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.dir.path().join("clusters")) else {
            return;
        };
        for e in entries.flatten() {
            stop_now(&e.path().join("pgdata"));
        }
    }
}

/// Immediate shutdown (SIGQUIT) of the postmaster of `pgdata`, waiting up to 10 s.
pub fn stop_now(pgdata: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Ok(Some(pm)) = ctl::live_postmaster(pgdata) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pm.pid),
            nix::sys::signal::Signal::SIGQUIT,
        );
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lets the cluster user enter a root-owned temporary directory.
pub fn open_dir(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}
