//! Plan changes between single and HA through OSB on real PostgreSQL, a real etcd and real
//! Patroni (issue 15 point 2), with the broker's local runtime holding both members ("for
//! labs"): `small` is provisioned and bound, a write load runs through that binding's
//! credentials (single-host: the first member's port, which the instance keeps) and never tries
//! a value twice; `cf update-service -p ha-small` hands the running cluster to Patroni as the
//! first member and seeds a standby, which streams in sync; after a switchover to the standby,
//! the change back to `small` switches over to the first member again and leaves a plain single
//! cluster (no Patroni process, one data directory under the instance's id, no key
//! of the scope in etcd, no member recorded); and every acknowledged row is present. The test
//! prints each change's longest write gap (the one restart of each) and asserts no timing.
//!
//! Run: `bash scripts/test ha_update::` (needs `patroni` and `etcd`: `bash scripts/setup`).

use std::time::Instant;

use crate::common::etcd::{ha_binaries_available, Etcd};
use crate::common::osb_client::*;
use crate::common::*;
use crate::ha_broker::{
    assert_every_acked_row, finished, member_dir, patroni_pid, psql, role_of, uri_with_ca,
    wait_members, Cleanup, Writer,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// PATCHes `id` from plan `from` to `to` and waits until the operation succeeded.
pub(crate) async fn change_plan(app: &TestApp, id: &str, to: &str, from: &str) {
    let body = json!({
        "service_id": SERVICE_ID,
        "plan_id": to,
        "previous_values": { "plan_id": from, "service_id": SERVICE_ID },
    });
    let r = Osb::new(app).patch(id, &body, true).await;
    let status = r.status();
    let op: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{op}");
    let (status, done) = finished(app, id, op["operation"].as_str().unwrap()).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{done}"
    );
}

/// Asks the broker's operator switchover (`POST /wayback/v1/instances/{id}/switchover`) to
/// hand the lead of `id` to `candidate`; `leader` leads now.
pub(crate) async fn switch_over(app: &TestApp, id: &str, leader: &str, candidate: &str) {
    let r = app
        .osb(
            reqwest::Method::POST,
            &format!("/wayback/v1/instances/{id}/switchover"),
        )
        .json(&json!({ "to": candidate }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    assert!(
        status.is_success(),
        "switchover from {leader} to {candidate}: {status} {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_change_single_to_ha_and_back_under_writes_loses_nothing() {
    if !pg_available() || !ha_binaries_available() {
        return;
    }
    let etcd = Etcd::start().await;
    let app = spawn_app_with(|s| s.ha.dcs_endpoints = vec![etcd.endpoint()]).await;
    let id = app.provision_ready("orders").await;
    let dirs = vec![member_dir(&app, &id, "m1"), member_dir(&app, &id, "m2")];
    let _cleanup = Cleanup(dirs.clone());
    let single_dir = app.data_dir.join("clusters").join(&id);

    eprintln!("ha_update: bind and write");
    let credentials = app.bind_sync(&id, &new_id()).await;
    let ca = tempfile::NamedTempFile::new().unwrap();
    let uri = uri_with_ca(&credentials, &ca);
    psql(&uri, "CREATE TABLE ha_rows (n bigint PRIMARY KEY)").unwrap();
    let writer = Writer::start(uri.clone());
    writer
        .wait_acked_since(Instant::now(), 20, "before the change to HA")
        .await;

    eprintln!("ha_update: small -> ha-small");
    let began = Instant::now();
    change_plan(&app, &id, HA_SMALL, SMALL).await;
    wait_members(&app, &id, "m1 leads, m2 streams in sync", |m| {
        role_of(m, "m1") == Some("leader") && role_of(m, "m2") == Some("sync_standby")
    })
    .await;
    let after = Instant::now();
    writer
        .wait_acked_since(after, 10, "the existing binding after the change to HA")
        .await;
    eprintln!(
        "ha_update: to HA in {:.1} s; longest write gap (its one restart) {:.1} s",
        (after - began).as_secs_f64(),
        writer.longest_gap_since(began).as_secs_f64()
    );
    assert!(!single_dir.exists(), "the cluster moved under m1's key");
    assert!(dirs.iter().all(|d| patroni_pid(d).is_some()));
    let record = app.store.get_instance(&iid(&id)).await.unwrap().unwrap();
    assert_eq!(record.plan_id, HA_SMALL);
    // A new binding gets every member.
    let multi = app.bind_sync(&id, &new_id()).await;
    assert!(
        multi["uri"]
            .as_str()
            .unwrap()
            .contains("target_session_attrs=read-write"),
        "{multi}"
    );

    // The standby leads when the change back is asked: the job switches over to the first
    // member (the instance's port) before it removes the standby. Meanwhile the first binding,
    // which names m1 only, cannot write (m1 is a standby): that is why it should be re-bound.
    eprintln!("ha_update: switchover to m2");
    switch_over(&app, &id, "m1", "m2").await;
    wait_members(&app, &id, "m2 leads, m1 streams in sync", |m| {
        role_of(m, "m2") == Some("leader") && role_of(m, "m1") == Some("sync_standby")
    })
    .await;

    eprintln!("ha_update: ha-small -> small");
    let began = Instant::now();
    let pids: Vec<i32> = dirs.iter().filter_map(|d| patroni_pid(d)).collect();
    change_plan(&app, &id, SMALL, HA_SMALL).await;
    let after = Instant::now();
    writer
        .wait_acked_since(after, 10, "the existing binding after the change back")
        .await;
    eprintln!(
        "ha_update: back to single (a switchover to m1, the release) in {:.1} s; longest write \
         gap once m1 led again {:.1} s",
        (after - began).as_secs_f64(),
        writer.longest_gap_since(began).as_secs_f64()
    );
    let acked = writer.finish().await;

    assert_every_acked_row(&uri, &acked);
    eprintln!("ha_update: {} rows acknowledged, all present", acked.len());

    // A plain single cluster again.
    assert!(
        pids.iter()
            .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()
                || !std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("patroni"))),
        "a Patroni still runs"
    );
    assert!(
        dirs.iter().all(|d| !d.exists()),
        "a member directory is left"
    );
    assert!(single_dir.join("pgdata").is_dir());
    assert!(!single_dir.join("patroni").exists());
    assert!(!single_dir.join("pgdata/patroni.dynamic.json").exists());
    assert_eq!(etcd.count_prefix(&format!("/wayback/{id}/")).await, 0);
    assert!(app.store.ha_members(&iid(&id)).await.unwrap().is_empty());
    let record = app.store.get_instance(&iid(&id)).await.unwrap().unwrap();
    assert_eq!(record.plan_id, SMALL);
    let r = app
        .osb(reqwest::Method::GET, &format!("/v2/service_instances/{id}"))
        .send()
        .await
        .unwrap();
    let view: Value = r.json().await.unwrap();
    assert!(view.get("ha").is_none(), "{view}");
    // Its own configuration again: the instance's name, archiving on.
    let settings = psql(
        &uri,
        "SELECT current_setting('cluster_name') || ' ' || current_setting('archive_mode')",
    )
    .unwrap();
    assert_eq!(settings, format!("{id} on"));
}
