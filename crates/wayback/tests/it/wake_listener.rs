//! The wake listener on real PostgreSQL 15 clusters (issue 17 points 2 and 4), driven through a
//! `LocalRuntime` as `pg_runtime` does: a parked cluster's port is held with no postmaster, a
//! client's login wakes it and sees every row, ten first connections at once are all served, a
//! silent connection wakes nothing, a cluster that cannot start answers SQLSTATE 57P03 and stays
//! parked, the fourth client start within a minute is refused, a new runtime on the same data
//! directory holds the port again, and destroy releases it.
//!
//! Run: `bash scripts/test wake_listener::`; the benchmark: `bash scripts/bench-wake`.

use crate::pg_support;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pg_support::{free_port, pg_available, TestRuntime};
use secrecy::SecretString;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wayback::domain::InstanceId;
use wayback::runtime::{ClusterSpec, ClusterStatus, LocalRuntime, RoleAccess, WakeLimits};

const USER: &str = "app_user";
const PASSWORD: &str = "Wake-Passw0rd";
const ROWS: i64 = 500;

struct Parked {
    t: TestRuntime,
    id: InstanceId,
    port: u16,
}

fn spec(id: &str, port: u16) -> ClusterSpec {
    ClusterSpec {
        instance: InstanceId::parse(id).unwrap(),
        port,
        settings: BTreeMap::new(),
        require_tls: false,
    }
}

async fn login(port: u16) -> Result<PgConnection, sqlx::Error> {
    PgConnectOptions::new_without_pgpass()
        .host("127.0.0.1")
        .port(port)
        .username(USER)
        .password(PASSWORD)
        .database("app")
        .disable_statement_logging()
        .connect()
        .await
}

async fn rows(port: u16) -> Result<i64, sqlx::Error> {
    let mut c = login(port).await?;
    let n = sqlx::query_scalar("SELECT count(*) FROM notes")
        .fetch_one(&mut c)
        .await?;
    c.close().await?;
    Ok(n)
}

fn postmaster_runs(p: &Parked) -> bool {
    let pgdata = p.t.local.cluster_dirs(&p.id).pgdata;
    wayback::pg::ctl::live_postmaster(&pgdata)
        .unwrap()
        .is_some()
}

/// Turns on archiving into `<data_dir>/wal/` with `cp` (the include the archive subsystem
/// owns), so that `park` has a segment to wait for.
fn archive_with_cp(t: &TestRuntime, id: &InstanceId) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let wal = t.data_dir().join("wal");
    std::fs::create_dir_all(&wal).unwrap();
    std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o777)).unwrap();
    let pgdata = t.local.cluster_dirs(id).pgdata;
    let include = pgdata.join(wayback::pg::conf::ARCHIVE_INCLUDE);
    std::fs::write(
        &include,
        format!(
            "archive_mode = on\narchive_command = 'cp %p {}/%f'\n",
            wal.display()
        ),
    )
    .unwrap();
    let owner = std::fs::metadata(&pgdata).unwrap();
    std::os::unix::fs::chown(&include, Some(owner.uid()), Some(owner.gid())).unwrap();
    wal
}

/// A running cluster with a login role and `ROWS` rows, then parked.
async fn parked(name: &str, archive: bool, limits: Option<WakeLimits>) -> Option<Parked> {
    if !pg_available() {
        return None;
    }
    let mut t = TestRuntime::new(true);
    if let Some(limits) = limits {
        t.local = Arc::new(
            LocalRuntime::new(t.data_dir(), pg_support::settings(true)).with_wake_limits(limits),
        );
        t.runtime = t.local.clone();
    }
    Some(park_new(t, name, archive).await)
}

/// [`parked`] in the runtime `t`.
async fn park_new(t: TestRuntime, name: &str, archive: bool) -> Parked {
    t.local.prepare().await.unwrap();
    let (id, port) = park_one(&t, name, archive).await;
    let p = Parked { t, id, port };
    assert_eq!(
        p.t.local.status(&p.id).await.unwrap(),
        ClusterStatus::Parked
    );
    assert!(!postmaster_runs(&p));
    p
}

/// One more parked cluster in the prepared runtime `t`: its id and port.
async fn park_one(t: &TestRuntime, name: &str, archive: bool) -> (InstanceId, u16) {
    let port = free_port();
    let s = spec(name, port);
    let id = s.instance.clone();
    t.local.create_cluster(&s).await.unwrap();
    if archive {
        archive_with_cp(t, &id);
    }
    t.local.start(&id).await.unwrap();
    t.local
        .create_login_role(
            &id,
            USER,
            &SecretString::from(PASSWORD),
            "app_owner",
            &RoleAccess::Owner,
        )
        .await
        .unwrap();
    let mut c = login(port).await.unwrap();
    sqlx::query("CREATE TABLE notes (id int)")
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query(&format!(
        "INSERT INTO notes SELECT generate_series(1, {ROWS})"
    ))
    .execute(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();
    t.local.park(&id).await.unwrap();
    (id, port)
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

#[tokio::test]
async fn wake_a_parked_cluster_serves_every_row_and_ten_clients_at_once() {
    let Some(p) = parked("wake-1", true, None).await else {
        return;
    };
    let rt = &p.t.local;
    // Parked after archiving: nothing waits in archive_status, and the archive has segments.
    let status_dir = rt.cluster_dirs(&p.id).pgdata.join("pg_wal/archive_status");
    let ready: Vec<_> = std::fs::read_dir(&status_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".ready"))
        .collect();
    assert!(ready.is_empty(), "segments wait to be archived: {ready:?}");
    assert!(
        std::fs::read_dir(p.t.data_dir().join("wal"))
            .unwrap()
            .count()
            > 0
    );
    // Parking twice is fine.
    rt.park(&p.id).await.unwrap();
    // The port is held by the listener, not by a server.
    tokio::net::TcpStream::connect(("127.0.0.1", p.port))
        .await
        .expect("the parked port takes connections");
    assert!(!postmaster_runs(&p));
    assert_eq!(rt.status(&p.id).await.unwrap(), ClusterStatus::Parked);

    let mut wakes = rt.subscribe_wakes();
    let clients: Vec<_> = (0..10).map(|_| tokio::spawn(rows(p.port))).collect();
    for c in clients {
        assert_eq!(
            c.await.unwrap().expect("a first connection is served"),
            ROWS
        );
    }
    assert_eq!(rt.status(&p.id).await.unwrap(), ClusterStatus::Running);
    assert!(!rt
        .cluster_dirs(&p.id)
        .pgdata
        .parent()
        .unwrap()
        .join("parked")
        .exists());
    let event = wakes.try_recv().expect("one wake event");
    assert_eq!(
        (event.instance.clone(), event.error.clone()),
        (p.id.clone(), None)
    );
    assert!(event.seconds > 0.0);
    assert!(wakes.try_recv().is_err(), "one start for ten clients");

    // The broker's start of a parked cluster goes through the same hold.
    rt.park(&p.id).await.unwrap();
    rt.start(&p.id).await.unwrap();
    assert_eq!(rt.status(&p.id).await.unwrap(), ClusterStatus::Running);
    assert_eq!(rows(p.port).await.unwrap(), ROWS);
    assert!(wakes.try_recv().unwrap().error.is_none());

    // Destroy releases the port.
    rt.park(&p.id).await.unwrap();
    rt.destroy(&p.id).await.unwrap();
    assert_eq!(rt.status(&p.id).await.unwrap(), ClusterStatus::Absent);
    std::net::TcpListener::bind(("127.0.0.1", p.port)).expect("destroy released the port");
}

#[tokio::test]
async fn tls_goes_through_the_splice_to_the_woken_server() {
    if !pg_available() {
        return;
    }
    let settings = wayback::config::PostgresSettings {
        // A wildcard: the hold binds every address, the splice reaches the server on loopback.
        listen_address: "0.0.0.0".into(),
        ..pg_support::settings(true)
    };
    let t = TestRuntime::with_tls(settings, "127.0.0.1");
    let p = park_new(t, "wake-tls", false).await;
    let ca = p.t.data_dir().join("tls/ca.crt");
    // tokio's Command: a blocking psql would stop this runtime's only thread, the listener's.
    let out = tokio::process::Command::new(std::path::Path::new(pg_support::BIN_DIR).join("psql"))
        .args(["-X", "-q", "-A", "-t", "-c", "SET ROLE NONE", "-c"])
        .arg("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .env_clear()
        .env("HOME", "/nonexistent")
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", p.port.to_string())
        .env("PGUSER", USER)
        .env("PGPASSWORD", PASSWORD)
        .env("PGDATABASE", "app")
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", &ca)
        .env("PGCONNECT_TIMEOUT", "30")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t");
    assert_eq!(
        p.t.local.status(&p.id).await.unwrap(),
        ClusterStatus::Running
    );
}

#[tokio::test]
async fn trashing_a_parked_cluster_keeps_its_data_and_releases_its_port() {
    let Some(p) = parked("wake-trash", false, None).await else {
        return;
    };
    let kept = p.t.local.trash_cluster(&p.id).await.unwrap();
    assert!(kept.is_some(), "a cleanly stopped cluster is kept for undo");
    assert_eq!(
        p.t.local.status(&p.id).await.unwrap(),
        ClusterStatus::Absent
    );
    std::net::TcpListener::bind(("127.0.0.1", p.port)).expect("trash released the port");
}

#[tokio::test]
async fn a_silent_or_cancelling_client_wakes_nothing() {
    let Some(p) = parked("wake-silent", false, None).await else {
        return;
    };
    let rt = &p.t.local;
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", p.port))
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(30), silent.read(&mut buf))
        .await
        .expect("a silent client is closed by the listener");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // A CancelRequest to a stopped cluster and a hostile length are closed at once.
    for first in [
        [0, 0, 0, 16, 4, 210, 22, 46, 0, 0, 0, 1, 0, 0, 0, 2].to_vec(),
        [0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0].to_vec(),
    ] {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", p.port))
            .await
            .unwrap();
        c.write_all(&first).await.unwrap();
        let read = tokio::time::timeout(Duration::from_secs(30), c.read(&mut buf))
            .await
            .expect("closed");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    assert_eq!(rt.status(&p.id).await.unwrap(), ClusterStatus::Parked);
    assert!(!postmaster_runs(&p));
}

#[tokio::test]
async fn a_cluster_that_cannot_start_answers_57p03_and_stays_parked() {
    let Some(p) = parked("wake-broken", false, None).await else {
        return;
    };
    let rt = &p.t.local;
    let conf = rt.cluster_dirs(&p.id).pgdata.join("postgresql.conf");
    let good = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, format!("{good}no_such_setting_at_all = 1\n")).unwrap();
    let mut wakes = rt.subscribe_wakes();

    // sqlx asks for TLS first (sslmode=prefer): the listener declines and answers the startup.
    let (code, message) = refusal(login(p.port).await.unwrap_err());
    assert_eq!(code, "57P03", "{message}");
    assert!(
        message.contains("the database is stopped and could not be started")
            && message.contains("try again in a minute")
            && !message.contains('/'),
        "{message}"
    );
    // The broker keeps this reason for its instance view: short, and free of paths.
    let event = wakes.recv().await.unwrap();
    let reason = event.error.as_deref().unwrap_or_default();
    assert!(!reason.is_empty() && !reason.contains('/'), "{event:?}");
    assert_eq!(rt.status(&p.id).await.unwrap(), ClusterStatus::Parked);
    assert!(!postmaster_runs(&p));
    // Still held: a fixed configuration lets the next client in.
    std::fs::write(&conf, &good).unwrap();
    assert_eq!(rows(p.port).await.unwrap(), ROWS);
    assert_eq!(rt.status(&p.id).await.unwrap(), ClusterStatus::Running);
}

#[tokio::test]
async fn the_fourth_client_start_within_a_minute_is_refused() {
    let Some(p) = parked("wake-rate", false, None).await else {
        return;
    };
    let rt = &p.t.local;
    for round in 0..3 {
        assert_eq!(rows(p.port).await.unwrap(), ROWS, "wake {round}");
        rt.park(&p.id).await.unwrap();
    }
    let (code, message) = refusal(login(p.port).await.unwrap_err());
    assert_eq!(code, "57P03");
    assert!(
        message.contains("started 3 times in the last 60 seconds"),
        "{message}"
    );
    assert_eq!(rt.status(&p.id).await.unwrap(), ClusterStatus::Parked);
    // The broker's own start is not limited.
    rt.start(&p.id).await.unwrap();
    assert_eq!(rows(p.port).await.unwrap(), ROWS);
}

#[tokio::test]
async fn first_connections_to_several_clusters_queue_for_the_machines_starts() {
    // One start at a time on this machine: three clusters' first clients wait their turn.
    let limits = WakeLimits {
        concurrent_starts: 1,
        ..WakeLimits::default()
    };
    let Some(p) = parked("wake-queue-1", false, Some(limits)).await else {
        return;
    };
    let mut ports = vec![p.port];
    let mut ids = vec![p.id.clone()];
    for name in ["wake-queue-2", "wake-queue-3"] {
        let (id, port) = park_one(&p.t, name, false).await;
        ids.push(id);
        ports.push(port);
    }
    let clients: Vec<_> = ports
        .iter()
        .flat_map(|port| (0..3).map(move |_| tokio::spawn(rows(*port))))
        .collect();
    for c in clients {
        assert_eq!(c.await.unwrap().expect("served after its turn"), ROWS);
    }
    for id in &ids {
        assert_eq!(p.t.local.status(id).await.unwrap(), ClusterStatus::Running);
    }
}

#[tokio::test]
async fn a_new_runtime_on_the_same_data_dir_holds_the_port_again() {
    let Some(mut p) = parked("wake-restart", false, None).await else {
        return;
    };
    // The old runtime goes (a broker or agent restart): its listener closes with it.
    p.t.local = Arc::new(LocalRuntime::new(
        p.t.data_dir(),
        pg_support::settings(true),
    ));
    p.t.runtime = p.t.local.clone();
    assert_eq!(
        p.t.local.status(&p.id).await.unwrap(),
        ClusterStatus::Parked
    );
    p.t.local.prepare().await.unwrap();
    // The old listener may take a moment to close; the new hold binds within its retry.
    let deadline = Instant::now() + Duration::from_secs(20);
    let served = loop {
        match rows(p.port).await {
            Ok(n) => break n,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "not woken after the restart: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(served, ROWS);
    assert_eq!(
        p.t.local.status(&p.id).await.unwrap(),
        ClusterStatus::Running
    );
}

/// `scripts/bench-wake`: wakes of one parked cluster (connect → first `SELECT 1` result) beside
/// a warm connect, and the refused window. Prints figures only.
#[tokio::test]
#[ignore = "a benchmark: bash scripts/bench-wake"]
async fn bench_wake() {
    let n: usize = std::env::var("WAYBACK_BENCH_WAKES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let limits = WakeLimits {
        starts_per_window: usize::MAX,
        ..WakeLimits::default()
    };
    let Some(p) = parked("wake-bench", false, Some(limits)).await else {
        return;
    };
    let rt = &p.t.local;
    let select_1 = |port: u16| async move {
        let started = Instant::now();
        let mut c = login(port).await.unwrap();
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(one, 1);
        let took = started.elapsed();
        c.close().await.unwrap();
        took
    };
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let mut windows = Vec::new();
    for _ in 0..n {
        // A prober connects every 200 µs during the wake: refused connects are the window.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let prober = {
            let stop = stop.clone();
            let port = p.port;
            std::thread::spawn(move || {
                let (mut first, mut last) = (None, None);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let at = Instant::now();
                    if std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                        first.get_or_insert(at);
                        last = Some(at);
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                first.zip(last).map(|(f, l)| l.duration_since(f))
            })
        };
        cold.push(select_1(p.port).await);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        windows.push(prober.join().unwrap());
        warm.push(select_1(p.port).await);
        rt.park(&p.id).await.unwrap();
    }
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    let pct = |v: &mut Vec<Duration>, q: f64| {
        v.sort();
        ms(&v[((v.len() as f64 - 1.0) * q).round() as usize])
    };
    let refused: Vec<Duration> = windows.iter().flatten().copied().collect();
    println!("wakes: {n}");
    println!(
        "cold (parked) connect -> SELECT 1: p50 {:.1} ms, p95 {:.1} ms",
        pct(&mut cold, 0.5),
        pct(&mut cold, 0.95)
    );
    println!(
        "warm connect -> SELECT 1:          p50 {:.1} ms, p95 {:.1} ms",
        pct(&mut warm, 0.5),
        pct(&mut warm, 0.95)
    );
    let mut refused_sorted = refused.clone();
    println!(
        "refused window (prober every 0.2 ms): seen in {}/{n} wakes{}",
        refused.len(),
        if refused.is_empty() {
            String::new()
        } else {
            format!(
                ", p50 {:.2} ms, max {:.2} ms",
                pct(&mut refused_sorted, 0.5),
                pct(&mut refused_sorted, 1.0)
            )
        }
    );
}
