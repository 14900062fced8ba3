//! The broker killed (SIGKILL, by the crash hook `WAYBACK_TEST_KILL_AT`) at the steps of an HA
//! provision (issue 15), then started again on the same data directory, with real PostgreSQL,
//! etcd and Patroni: the operation ends `succeeded` with the standby streaming in sync, and the
//! delete then leaves no Patroni process, no member directory and no key of the scope in etcd.
//! The Patroni processes the killed broker started outlive it (they run in sessions of their
//! own), so a step run again finds its member running and goes on. `STEP:after` kills once a
//! step has finished but before the next one is recorded.
//!
//! Run: `bash scripts/test ha_broker_crash::` (needs `patroni` and `etcd`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::common::etcd::{ha_binaries_available, Etcd};
use crate::common::*;
use crate::restart::harness::{Client, Site};

macro_rules! killed_at {
    ($($test:ident: $point:literal;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            killed_at($point).await
        }
    )*};
}

killed_at! {
    ha_provision_at_place: "ha_place";
    ha_provision_after_adopt: "ha_adopt:after";
    ha_provision_at_first_backup: "ha_first_backup";
    ha_provision_after_seed_standby: "ha_seed_standby:after";
    ha_provision_at_wait_standby: "ha_wait_standby";
}

pub(crate) const WAIT: Duration = Duration::from_secs(300);

pub(crate) fn patroni_pid(dir: &std::path::Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join("patroni/patroni.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("patroni"))
        .then_some(pid)
}

/// Kills the members' Patroni if the test ends early (they outlive every broker).
pub(crate) struct Cleanup(pub(crate) Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for dir in &self.0 {
            if let Some(pid) = patroni_pid(dir) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        for dir in &self.0 {
            if let Some(pm) = wayback::pg::ctl::live_postmaster(&dir.join("pgdata"))
                .ok()
                .flatten()
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pm.pid),
                    nix::sys::signal::Signal::SIGQUIT,
                );
            }
        }
    }
}

/// Polls last_operation until it is terminal (the client's own wait has a shorter deadline).
pub(crate) async fn done(client: &Client, id: &str, op: Option<&str>) -> (StatusCode, Value) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = client.last_operation(id, op).await;
        if status != StatusCode::OK || body["state"] != "in progress" {
            return (status, body);
        }
        assert!(Instant::now() < deadline, "still in progress: {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn killed_at(point: &str) {
    if !pg_available() || !ha_binaries_available() {
        return;
    }
    let etcd = Etcd::start().await;
    let root = test_root();
    let mut site = Site::new(root.path());
    site.env
        .push(("WAYBACK_HA_DCS_ENDPOINTS".into(), etcd.endpoint()));
    let client = site.client();
    let id = new_id();
    let key = |m: &str| {
        let key = wayback::domain::InstanceId::parse(id.clone())
            .unwrap()
            .member_key(m);
        site.data_dir.join("clusters").join(key.as_str())
    };
    let dirs = vec![key("m1"), key("m2")];
    let _cleanup = Cleanup(dirs.clone());

    let mut broker = site.start_with(Some(point));
    client.wait_healthy().await;
    let answer = client
        .put_instance(&id, &provision_body(HA_SMALL, "ha-crash"))
        .await;
    let operation = answer.map(|(status, body)| {
        assert_eq!(status, StatusCode::ACCEPTED, "{point}: {body}");
        body["operation"].as_str().unwrap().to_string()
    });
    broker.wait_killed(point, WAIT).await;
    drop(broker);

    let _broker = site.start();
    client.wait_healthy().await;
    let (status, body) = done(&client, &id, operation.as_deref()).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "killed at {point}: {body}"
    );
    let r = client
        .req(Method::GET, &format!("/v2/service_instances/{id}"))
        .send()
        .await
        .unwrap();
    let view: Value = r.json().await.unwrap();
    let roles: Vec<&str> = view["ha"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["role"].as_str())
        .collect();
    assert_eq!(
        roles,
        ["leader", "sync_standby"],
        "killed at {point}: {view}"
    );

    let pids: Vec<i32> = dirs.iter().filter_map(|d| patroni_pid(d)).collect();
    assert_eq!(pids.len(), 2, "killed at {point}: one Patroni per member");
    let (status, body) = client.delete_instance(&id).await.expect("an answer");
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, body) = done(&client, &id, body["operation"].as_str()).await;
    assert_delete_finished(status, &body);
    let runs = |pid: &i32| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("patroni"))
    };
    assert!(
        dirs.iter().all(|d| !d.exists()) && !pids.iter().any(runs),
        "killed at {point}: a member is left"
    );
    assert_eq!(etcd.count_prefix(&format!("/wayback/{id}/")).await, 0);
}
