//! An HA plan through OSB on real PostgreSQL, a real etcd and real Patroni (issue 15), with the
//! broker's local runtime holding both members ("for labs"): `ha-small` (sync) is provisioned,
//! bound, and written to through the binding's multi-host `uri`; under a write load through the
//! SAME credentials: `kill -9` of the primary's Patroni and PostgreSQL — writes succeed again
//! by themselves once Patroni promotes the sync standby, and the supervisor then starts the old
//! leader's Patroni, which rejoins as the sync standby — then the leader hangs (SIGSTOP) until Patroni promotes the sync
//! standby and is then killed — writes succeed again on the new leader, and the old one's
//! Patroni, started again by the supervisor, rejoins as the sync standby; no acknowledged row
//! is missing; the delete leaves no
//! Patroni process, no member directory and no key of the scope in etcd; and the deleted
//! instance is undone from its archive by name into a plan without HA, with every row, and to a
//! point in time before both failovers (on the first timeline), with the rows of that time.
//!
//! Run: `bash scripts/test ha_broker::` (needs `patroni` and `etcd`: `bash scripts/setup`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::etcd::{ha_binaries_available, Etcd};
use crate::common::osb_client::*;
use crate::common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use reqwest::StatusCode;
use serde_json::{json, Value};
use wayback::domain::InstanceId;

pub(crate) const PSQL: &str = "/usr/lib/postgresql/15/bin/psql";
/// Long enough for a provision (adoption, a base backup, a seed), a failover (ttl 20 s) and a
/// rejoin on a machine shared with other builds.
pub(crate) const WAIT: Duration = Duration::from_secs(300);

/// `psql` against `uri`; Ok(stdout) when it succeeded.
pub(crate) fn psql(uri: &str, sql: &str) -> Result<String, String> {
    // Bounded: a connection to a server that hangs (SIGSTOP) would wait for ever.
    let out = std::process::Command::new("timeout")
        .args(["10", PSQL])
        .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", uri])
        .args(["-c", sql])
        .env("PGCONNECT_TIMEOUT", "2")
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

pub(crate) fn member_dir(app: &TestApp, id: &str, member: &str) -> PathBuf {
    let key = InstanceId::parse(id).unwrap().member_key(member);
    app.data_dir.join("clusters").join(key.as_str())
}

/// The pid of a member's Patroni while it runs.
pub(crate) fn patroni_pid(dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join("patroni/patroni.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    patroni_runs(pid).then_some(pid)
}

pub(crate) fn patroni_runs(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("patroni"))
}

/// The pids of a postmaster and of its children.
pub(crate) fn server_processes(pgdata: &Path) -> Vec<i32> {
    let Ok(Some(pm)) = wayback::pg::ctl::live_postmaster(pgdata) else {
        return Vec::new();
    };
    let mut pids = vec![pm.pid];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
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

/// A binding's `uri` with the CA file (kept alive by the caller) as `sslrootcert`.
pub(crate) fn uri_with_ca(credentials: &Value, ca: &tempfile::NamedTempFile) -> String {
    std::fs::write(ca.path(), credentials["ca_certificate"].as_str().unwrap()).unwrap();
    let uri = credentials["uri"].as_str().unwrap();
    let sep = if uri.contains('?') { "&" } else { "?" };
    format!("{uri}{sep}sslrootcert={}", ca.path().display())
}

/// `kill -9` of a member's Patroni and every process of its server (all stopped first, so
/// that none sees another go); the pids killed.
pub(crate) fn kill_member(dir: &Path) -> Vec<i32> {
    let mut victims = vec![patroni_pid(dir).expect("the member's Patroni runs")];
    victims.extend(server_processes(&dir.join("pgdata")));
    for sig in [Signal::SIGSTOP, Signal::SIGKILL] {
        for pid in &victims {
            let _ = kill(Pid::from_raw(*pid), sig);
        }
    }
    victims
}

/// The rows of `ha_rows` read through `uri`, once every acknowledged one is seen among them.
pub(crate) fn assert_every_acked_row(uri: &str, acked: &[i64]) -> Vec<i64> {
    let present: Vec<i64> = psql(uri, "SELECT n FROM ha_rows ORDER BY n")
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let missing: Vec<&i64> = acked.iter().filter(|n| !present.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "lost {} of {} acknowledged rows: {missing:?}",
        missing.len(),
        acked.len()
    );
    present
}

/// Kills the members' Patroni if the test ends early (before the app's own drop stops the
/// servers: Patroni would start them again).
pub(crate) struct Cleanup(pub(crate) Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for dir in &self.0 {
            if let Some(pid) = patroni_pid(dir) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            // A server left hanging (SIGSTOP) takes no signal but SIGKILL.
            if dir.join("pgdata").is_dir() {
                for pid in server_processes(&dir.join("pgdata")) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }
}

/// One INSERT after another, each over a new connection to `uri` and each with a new value;
/// every acknowledged row is kept with the time its attempt started.
pub(crate) struct Writer {
    pub(crate) acked: Arc<Mutex<Vec<(i64, Instant)>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub(crate) fn start(uri: String) -> Self {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (acked.clone(), stop.clone());
        let task = tokio::task::spawn_blocking(move || {
            let mut n = 1;
            while !s.load(Ordering::Relaxed) {
                let started = Instant::now();
                // A value is never tried twice: an attempt whose answer a restart or a
                // switchover cut off may have committed, and trying it again would hit the
                // primary key for good.
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

    pub(crate) async fn wait_acked_since(&self, t: Instant, n: usize, what: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let seen = self
                .acked
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, s)| *s >= t)
                .count();
            if seen >= n {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: no write acknowledged");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The longest time between the starts of two acknowledged writes after `since`: what a
    /// restart or a switchover cost the app.
    pub(crate) fn longest_gap_since(&self, since: Instant) -> Duration {
        let acked = self.acked.lock().unwrap();
        let starts: Vec<Instant> = acked
            .iter()
            .map(|(_, s)| *s)
            .filter(|s| *s >= since)
            .collect();
        starts
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    }

    pub(crate) async fn finish(mut self) -> Vec<i64> {
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

/// Deletes the HA instance `id` through OSB and checks it is gone whole: no Patroni of
/// `dirs` runs, no member directory is left, no key of its scope in etcd, no member recorded.
pub(crate) async fn delete_whole(app: &TestApp, etcd: &Etcd, id: &str, dirs: &[PathBuf]) {
    let pids: Vec<i32> = dirs.iter().filter_map(|d| patroni_pid(d)).collect();
    assert_eq!(pids.len(), 2, "both Patroni run before the delete");
    let r = app.delete_instance(id).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let op: Value = r.json().await.unwrap();
    let (status, done) = finished(app, id, op["operation"].as_str().unwrap()).await;
    assert_delete_finished(status, &done);
    assert!(
        pids.iter().all(|p| !patroni_runs(*p)),
        "a Patroni still runs"
    );
    assert!(
        dirs.iter().all(|d| !d.exists()),
        "a member directory is left"
    );
    assert_eq!(etcd.count_prefix(&format!("/wayback/{id}/")).await, 0);
    assert!(app.store.ha_members(&iid(id)).await.unwrap().is_empty());
}

/// PUTs an `ha-small` provision of `id` named `name` and waits until it succeeded.
pub(crate) async fn provision_ha_succeeded(app: &TestApp, id: &str, name: &str) {
    let r = app.put_instance(id, &provision_body(HA_SMALL, name)).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let op: Value = r.json().await.unwrap();
    let (status, done) = finished(app, id, op["operation"].as_str().unwrap()).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{done}"
    );
}

/// Polls last_operation of `operation` until it is terminal.
pub(crate) async fn finished(app: &TestApp, id: &str, operation: &str) -> (StatusCode, Value) {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = app
            .osb(
                reqwest::Method::GET,
                &format!("/v2/service_instances/{id}/last_operation?operation={operation}"),
            )
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if status != StatusCode::OK || body["state"] != "in progress" {
            return (status, body);
        }
        assert!(Instant::now() < deadline, "still in progress: {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The OSB fetch's `ha` members, until `done` holds for them.
pub(crate) async fn wait_members(
    app: &TestApp,
    id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = app
            .osb(reqwest::Method::GET, &format!("/v2/service_instances/{id}"))
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        let members = &body["ha"]["members"];
        if done(members) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not reached: {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Both members run, one leading and the other its sync standby.
pub(crate) fn whole(m: &Value) -> bool {
    matches!(
        (role_of(m, "m1"), role_of(m, "m2")),
        (Some("leader"), Some("sync_standby")) | (Some("sync_standby"), Some("leader"))
    )
}

pub(crate) async fn fetch(app: &TestApp, id: &str) -> Value {
    let r = app
        .osb(reqwest::Method::GET, &format!("/v2/service_instances/{id}"))
        .send()
        .await
        .unwrap();
    r.json().await.unwrap()
}

pub(crate) fn role_of<'a>(members: &'a Value, name: &str) -> Option<&'a str> {
    members
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)?
        .get("role")?
        .as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ha_instance_fails_over_by_itself_loses_no_acknowledged_row_and_is_deleted_whole() {
    if !pg_available() || !ha_binaries_available() {
        return;
    }
    let etcd = Etcd::start().await;
    let app = spawn_app_with(|s| s.ha.dcs_endpoints = vec![etcd.endpoint()]).await;
    let id = new_id();
    let dirs = vec![member_dir(&app, &id, "m1"), member_dir(&app, &id, "m2")];
    let _cleanup = Cleanup(dirs.clone());

    eprintln!("ha_broker: provision");
    provision_ha_succeeded(&app, &id, "orders").await;
    wait_members(&app, &id, "m1 leads, m2 in sync", |m| {
        role_of(m, "m1") == Some("leader") && role_of(m, "m2") == Some("sync_standby")
    })
    .await;

    eprintln!("ha_broker: bind and write");
    let credentials = app.bind_sync(&id, &new_id()).await;
    let ca = tempfile::NamedTempFile::new().unwrap();
    let uri = uri_with_ca(&credentials, &ca);
    assert!(uri.contains("target_session_attrs=read-write"), "{uri}");
    psql(&uri, "CREATE TABLE ha_rows (n bigint PRIMARY KEY)").unwrap();
    // A point in time on the first timeline, for the undo before the failovers at the end.
    psql(&uri, "CREATE TABLE marks (what text)").unwrap();
    psql(&uri, "INSERT INTO marks VALUES ('before')").unwrap();
    let before_failovers = psql(
        &uri,
        r#"SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"#,
    )
    .unwrap();
    psql(&uri, "INSERT INTO marks VALUES ('after')").unwrap();

    eprintln!("ha_broker: kill -9 of the primary's Patroni and PostgreSQL");
    let writer = Writer::start(uri.clone());
    writer
        .wait_acked_since(Instant::now(), 20, "before the kill")
        .await;
    let victims = kill_member(&dirs[0]);
    let killed = Instant::now();
    // Through the same credentials, by themselves: Patroni promotes the sync standby, libpq
    // finds the writer.
    writer
        .wait_acked_since(killed, 10, "writes after the kill")
        .await;
    let view = fetch(&app, &id).await;
    eprintln!(
        "ha_broker: writes again {:.1} s after the kill; members: {}",
        killed.elapsed().as_secs_f64(),
        view["ha"]["members"]
    );
    // The killed member's Patroni is started again by the supervisor once another member
    // leads (or after its grace), and the pair is whole again.
    wait_members(&app, &id, "both members back, one leading", whole).await;
    assert!(
        patroni_pid(&dirs[0]).is_some_and(|p| !victims.contains(&p)),
        "m1 runs a new Patroni"
    );

    eprintln!("ha_broker: the leader hangs (SIGSTOP) until Patroni fails over, then kill -9");
    let view = fetch(&app, &id).await;
    let members = &view["ha"]["members"];
    let (old, new) = if role_of(members, "m1") == Some("leader") {
        ("m1", "m2")
    } else {
        ("m2", "m1")
    };
    let dir = &dirs[usize::from(old == "m2")];
    let mut hung = vec![patroni_pid(dir).expect("the leader's Patroni runs")];
    hung.extend(server_processes(&dir.join("pgdata")));
    for pid in &hung {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGSTOP);
    }
    let stopped = Instant::now();
    wait_members(&app, &id, "the other member leads", |m| {
        role_of(m, new) == Some("leader")
    })
    .await;
    writer
        .wait_acked_since(stopped, 10, "writes on the new leader")
        .await;
    eprintln!(
        "ha_broker: {new} leads and takes writes {:.1} s after the hang",
        stopped.elapsed().as_secs_f64()
    );
    for pid in &hung {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    // The supervisor starts the old leader's Patroni again; it rejoins (by pg_rewind).
    wait_members(&app, &id, "the old leader rejoins", |m| {
        role_of(m, new) == Some("leader") && role_of(m, old) == Some("sync_standby")
    })
    .await;

    let acked = writer.finish().await;
    let present = assert_every_acked_row(&uri, &acked);
    eprintln!(
        "ha_broker: {} rows acknowledged, all present; members: {}",
        acked.len(),
        fetch(&app, &id).await["ha"]["members"]
    );

    eprintln!("ha_broker: delete");
    delete_whole(&app, &etcd, &id, &dirs).await;

    eprintln!("ha_broker: undo from the archive into a plan without HA");
    let (undo, _) = app
        .clone_ready("orders-undo", json!({ "clone-from": "orders" }))
        .await;
    let c = app.bind_sync(&undo, &new_id()).await;
    let mut conn = connect(c["uri"].as_str().unwrap()).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM ha_rows")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows as usize, present.len(), "the undo has every row");

    eprintln!("ha_broker: undo to a point in time before both failovers");
    let (pitr, _) = app
        .clone_ready(
            "orders-pitr",
            json!({ "clone-from": "orders", "point-in-time": before_failovers.trim() }),
        )
        .await;
    let c = app.bind_sync(&pitr, &new_id()).await;
    let mut conn = connect(c["uri"].as_str().unwrap()).await.unwrap();
    let marks: Vec<String> = sqlx::query_scalar("SELECT what FROM marks ORDER BY 1")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(marks, ["before"], "the rows of {before_failovers}");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM ha_rows")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows, 0, "no row the writer began after that time");
}
