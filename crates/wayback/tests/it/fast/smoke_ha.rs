//! `wayback smoke-test --plan ha-small` against the broker on the fake runtime: without a
//! coordinator the walk (eleven steps for an HA plan) fails at `provision` with the broker's
//! 422, which names the setting; with one, the `ha` step reads the fetch's members (one
//! leader, one sync standby, each on its machine) and the binding's multi-host uri, and the
//! walk then fails at `write` (the fake clusters serve no SQL) and cleans up. The whole walk
//! on real PostgreSQL, etcd and Patroni is `smoke_test::an_ha_plan_walks_eleven_steps…`.

use crate::common;
use crate::smoke_test::{smoke, text};

use common::*;
use serde_json::Value;

fn report(stdout: &str) -> Value {
    serde_json::from_str(stdout).expect("one JSON document")
}

fn names(report: &Value) -> Vec<&str> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn an_ha_plan_without_a_coordinator_fails_at_provision_with_the_brokers_answer() {
    let app = spawn_fast_app().await;
    let out = smoke(&app, &app.password, &["--plan", "ha-small", "--json"]).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let report = report(&stdout);
    // (then `cleanup`: the refused instance's DELETE, as after any failed provision)
    assert_eq!(names(&report)[..2], ["catalog", "provision"], "{report:#}");
    let catalog = report["steps"][0]["detail"].as_str().unwrap();
    assert!(
        catalog.contains("highly available: 2 members, sync commits")
            && catalog.contains("the clone goes into plan small"),
        "{catalog}"
    );
    let provision = &report["steps"][1];
    assert_eq!(provision["ok"], false);
    let detail = provision["detail"].as_str().unwrap();
    assert!(
        detail.contains("HTTP 422") && detail.contains("ha.dcs_endpoints"),
        "{detail}"
    );
    assert!(
        stderr.contains("step 2/11 (provision) failed") && stderr.contains("ha.dcs_endpoints"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_ha_step_reads_one_leader_a_sync_standby_and_a_binding_naming_both() {
    let app = spawn_fast_app_with(|s| s.ha.dcs_endpoints = vec!["127.0.0.1:2379".into()]).await;
    let out = smoke(
        &app,
        &app.password,
        &["--plan", "ha-small", "--timeout-secs", "120"],
    )
    .await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let ha = stdout
        .lines()
        .find(|l| l.starts_with("[4/11] ha … ok"))
        .unwrap_or_else(|| panic!("no ha step: {stdout}"));
    for part in [
        "2 members (sync)",
        "m1 leader on broker:",
        "m2 sync_standby on broker:",
        "both members share one machine",
        "2 hosts, target_session_attrs=read-write",
        "jdbcUrl targetServerType=primary",
    ] {
        assert!(ha.contains(part), "{part:?} in {ha}");
    }
    // The fake clusters serve no SQL: the walk stops at the write and removes what it made.
    assert!(stdout.contains("[5/11] write … FAILED"), "{stdout}");
    assert!(stdout.contains("[11/11] cleanup … ok"), "{stdout}");
    assert!(stderr.contains("step 5/11 (write) failed"), "{stderr}");
    assert!(
        !stdout.contains("postgres://") && !stderr.contains("postgres://"),
        "a uri (with its password) was printed: {stdout}{stderr}"
    );
}
