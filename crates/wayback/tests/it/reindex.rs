//! `wayback reindex` against real clusters and a real archive (local directory, and the S3
//! server when the test script provides one): an instance is provisioned, renamed and deleted,
//! a second instance stays live; a new broker on an EMPTY state database with the same archive
//! runs `wayback reindex` and knows both instances and every name again, with the same times,
//! and the deleted instance's restore window is computable. A dry run changes nothing, a second
//! run changes nothing, no cluster is started for a reindexed instance, and the first broker's
//! own (complete) database is left exactly as it was.

use crate::common;
use crate::common::archive_wait::prefix_of;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use wayback::archive::window::restore_window;
use wayback::domain::{InstanceId, InstanceState};
use wayback::storage::{ObjectStore, StorageSettings};
use wayback::store::Store;

fn iid(id: &str) -> InstanceId {
    InstanceId::parse(id.to_string()).unwrap()
}

/// Runs `wayback reindex --json ARGS` on `data_dir` with `archive`; the report.
/// `keys`: `WAYBACK_ENCRYPTION_KEYS`, the operator's keys the sealed documents need.
fn reindex_cli(
    data_dir: &std::path::Path,
    archive: &StorageSettings,
    keys: &str,
    extra: &[&str],
) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wayback"));
    cmd.env("WAYBACK_ENCRYPTION_KEYS", keys);
    cmd.args(["reindex", "--json", "--windows", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env("WAYBACK_LOG", "warn");
    crate::common::archive_wait::archive_env(&mut cmd, archive);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "reindex failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn line<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["instance_id"] == id)
        .unwrap_or_else(|| panic!("{id} not in the report: {report}"))
}

/// (action, names added) per instance of ours.
fn actions(report: &Value, ids: &[&str]) -> Vec<(String, u64)> {
    ids.iter()
        .map(|id| {
            let l = line(report, id);
            if let Some(e) = l["error"].as_str() {
                eprintln!("reindex of {id} failed: {e}");
            }
            (
                l["action"].as_str().unwrap().to_string(),
                l["names_added"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Everything the store says about one instance: the record (minus `updated_at`, which
/// reindex sets for an inserted instance), its names, final LSN and reaping time.
async fn facts(store: &Store, id: &str) -> Value {
    let id = iid(id);
    let Some(r) = store.get_instance(&id).await.unwrap() else {
        return Value::Null;
    };
    let names: Vec<Value> = store
        .instance_names(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|n| json!([n.name, n.source, n.recorded_at]))
        .collect();
    json!({
        "state": r.state.as_str(), "space": r.space_guid, "org": r.organization_guid,
        "service": r.service_id, "plan": r.plan_id, "created_at": r.created_at,
        "deleted_at": r.deleted_at, "port": r.port, "names": names,
        "final": store.instance_final(&id).await.unwrap(),
        "reaped_at": store.instance_reaped_at(&id).await.unwrap(),
    })
}

/// Waits until the instance's archive holds a complete base backup and a commit.
async fn wait_for_window(archive: &ObjectStore, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let w = restore_window(archive, &prefix_of(id)).await.unwrap();
        if !w.backups.is_empty() && w.latest.is_some() {
            return;
        }
        assert!(Instant::now() < deadline, "no restorable archive: {w:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The whole story on `archive` (None: the first broker's local directory).
async fn database_lost_then_reindexed(archive: Option<StorageSettings>) {
    let shared = archive.clone();
    let old = spawn_app_with(|s| {
        if let Some(a) = shared {
            s.archive = a;
        }
    })
    .await;
    let archive = archive.unwrap_or_else(|| StorageSettings {
        url: StorageSettings::default_url(&old.data_dir, "archive"),
        ..StorageSettings::default()
    });
    let objects = ObjectStore::open(&archive).unwrap();

    // "orders": provisioned, written to, renamed, deleted. "live": still in use.
    let gone = old.provision_ready("orders").await;
    let live = old.provision_ready("live").await;
    let creds = old.bind_sync(&gone, &new_id()).await;
    let mut conn = connect(creds["uri"].as_str().unwrap()).await.unwrap();
    exec(
        &mut conn,
        "CREATE TABLE t (n int); INSERT INTO t VALUES (1)",
    )
    .await;
    drop(conn);
    old.rename(&gone, "orders-2025").await;
    wait_for_window(&objects, &gone).await;
    old.deprovision_done(&gone).await;
    let want = facts(&old.store, &gone).await;
    assert_eq!(want["names"].as_array().unwrap().len(), 2, "{want}");
    let want_live = facts(&old.store, &live).await;

    // The old broker's own database has everything already: nothing to add or change.
    let report = wayback::maintenance::reindex::reindex(&old.store, &objects, false, false)
        .await
        .unwrap();
    assert_eq!(
        actions(&report_json(&report), &[&gone, &live]),
        [("unchanged".into(), 0), ("unchanged".into(), 0)]
    );
    assert_eq!(facts(&old.store, &gone).await, want);
    let mut old = old;
    old.stop().await;

    // A new broker on an empty state database, the same archive, and the operator's key
    // (the archive is encrypted with data keys it wraps: without it nothing could be restored).
    let (key_id, key) = archive_keys::generated_key(&old.data_dir);
    let keys = format!("{key_id}:{}", secrecy::ExposeSecret::expose_secret(&key));
    let new = spawn_app_with(|s| {
        s.archive = archive.clone();
        s.encryption.keys.insert(key_id, key);
    })
    .await;
    assert_eq!(facts(&new.store, &gone).await, Value::Null);

    let dry = reindex_cli(&new.data_dir, &archive, &keys, &["--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(
        actions(&dry, &[&gone, &live]),
        [("added".into(), 2), ("added".into(), 1)]
    );
    assert_eq!(
        facts(&new.store, &gone).await,
        Value::Null,
        "a dry run adds nothing"
    );
    assert_eq!(
        facts(&new.store, &live).await,
        Value::Null,
        "a dry run adds nothing"
    );

    let first = reindex_cli(&new.data_dir, &archive, &keys, &[]);
    assert_eq!(
        actions(&first, &[&gone, &live]),
        [("added".into(), 2), ("added".into(), 1)]
    );
    assert_eq!(first["unreadable"], json!([]));
    // The deleted instance: every fact as the old broker had it, every name with its time.
    assert_eq!(facts(&new.store, &gone).await, want);
    // Its window comes from the archive on demand.
    let w = &line(&first, &gone)["window"];
    assert!(w["backups"].as_u64().unwrap() >= 1, "{w}");
    assert!(!w["latest"].is_null() && !w["earliest"].is_null(), "{w}");
    let window = restore_window(&objects, &prefix_of(&gone)).await.unwrap();
    assert!(window.earliest.is_some() && window.latest.is_some());

    // The live one is known by name, recorded as deleted (no time): never started here.
    let mut live_now = facts(&new.store, &live).await;
    assert_eq!(live_now["state"], InstanceState::Deleted.as_str());
    assert_eq!(live_now["deleted_at"], Value::Null);
    assert!(line(&first, &live)["note"]
        .as_str()
        .unwrap()
        .contains("was ready"));
    for key in ["state", "port"] {
        live_now[key] = want_live[key].clone();
    }
    assert_eq!(
        live_now, want_live,
        "names and ids as the old broker had them"
    );
    assert!(
        !new.cluster_dir(&live).exists(),
        "no cluster is started for a reindexed instance"
    );

    // Again: nothing changes.
    let before = (
        facts(&new.store, &gone).await,
        facts(&new.store, &live).await,
    );
    let second = reindex_cli(&new.data_dir, &archive, &keys, &[]);
    assert_eq!(
        actions(&second, &[&gone, &live]),
        [("unchanged".into(), 0), ("unchanged".into(), 0)]
    );
    let after = (
        facts(&new.store, &gone).await,
        facts(&new.store, &live).await,
    );
    assert_eq!(before, after);

    // And undo works on the new broker, by the name the instance had before its rename: the
    // rows written on the old broker come back.
    let (clone, seen) = new
        .clone_ready("orders-back", json!({"clone-from": "orders"}))
        .await;
    assert!(seen.last().unwrap().contains(&gone), "{seen:?}");
    let creds = new.bind_sync(&clone, &new_id()).await;
    let mut conn = connect(creds["uri"].as_str().unwrap()).await.unwrap();
    let n: i32 = sqlx::query_scalar("SELECT n FROM t")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

fn report_json(r: &wayback::maintenance::reindex::ReindexReport) -> Value {
    serde_json::to_value(r).unwrap()
}

#[tokio::test]
async fn reindex_rebuilds_a_lost_database_from_a_local_archive() {
    if !pg_available() {
        return;
    }
    database_lost_then_reindexed(None).await;
}

#[tokio::test]
async fn reindex_rebuilds_a_lost_database_from_s3() {
    if !pg_available() {
        return;
    }
    let s3 = shared_s3_settings("reidx");
    if !require("an S3 server in WAYBACK_TEST_S3_*", s3.is_some()) {
        return;
    }
    database_lost_then_reindexed(s3).await;
}
