//! The state database stays bounded: two months of a busy platform, a day at a time, on SQLite
//! and on PostgreSQL (the test script's server).
//!
//! Time is injected the other way round: each simulated day writes through the store's own
//! API (stamped with the real clock), runs the pruning pass as of now, and then ages every
//! stored time by one day — as if the clock had moved on. After the first retention period
//! every table but the instance index holds the same number of rows at the end of each day.

use crate::store::keyed;
use std::collections::BTreeSet;

use chrono::Utc;
use serde_json::json;
use sqlx::{AnyConnection, Connection};
use wayback::domain::{
    BindingId, BindingState, InstanceId, InstanceState, OperationKind, OperationState,
};
use wayback::maintenance::prune_state;
use wayback::store::{
    now_millis, BackupRecord, BindingRecord, InstanceRecord, NewJob, OperationRecord, RowCounts,
    Store, JOB_DONE,
};

use crate::common;

const DAY_MS: i64 = 86_400_000;
const RETENTION_DAYS: u64 = 30;
/// Days a deleted instance's archive is kept before the reaper (retention.deleted_days).
const REAP_AFTER_DAYS: i64 = 14;
/// Days of backups archive retention keeps (a plan's recovery window).
const BACKUP_WINDOW_DAYS: usize = 7;
const DAYS: usize = 62;
/// New instances a day: each is provisioned, bound, unbound and deleted the same day.
const CHURN: usize = 4;
/// Instances that live the whole time, updated, bound and backed up every day.
const LONG_LIVED: usize = 3;

fn id(s: &str) -> InstanceId {
    InstanceId::parse(s.to_string()).unwrap()
}

fn instance(i: &str) -> InstanceRecord {
    let now = now_millis();
    InstanceRecord {
        id: id(i),
        service_id: "svc".into(),
        plan_id: "plan".into(),
        organization_guid: "org".into(),
        space_guid: "space".into(),
        parameters: json!({}),
        context: json!({ "instance_name": i }),
        state: InstanceState::Provisioning,
        port: None,
        database_name: "app".into(),
        owner_role: "app_owner".into(),
        created_at: now,
        updated_at: now,
        deleted_at: None,
        agent: None,
        agent_host: None,
        leader_id: None,
        stopped_at: None,
        wake_error: None,
        wake_error_at: None,
    }
}

fn operation(op: &str, i: &str, b: Option<&str>, kind: OperationKind) -> OperationRecord {
    let now = now_millis();
    OperationRecord {
        id: op.into(),
        instance_id: id(i),
        binding_id: b.map(|b| BindingId::parse(b.to_string()).unwrap()),
        kind,
        state: OperationState::InProgress,
        description: "queued".into(),
        created_at: now,
        updated_at: now,
        finished_at: None,
    }
}

fn job(op: &str, kind: &str, i: &str, b: Option<&str>) -> NewJob {
    NewJob {
        id: op.into(),
        kind: kind.into(),
        instance_id: id(i),
        binding_id: b.map(|b| BindingId::parse(b.to_string()).unwrap()),
        operation_id: (kind != "backup").then(|| op.into()),
        payload: json!({}),
        first_step: "first".into(),
    }
}

/// What a worker does when a job ends well.
async fn finish(store: &Store, op: &str) {
    store.finish_job(op, JOB_DONE, None).await.unwrap();
    store
        .update_operation(op, OperationState::Succeeded, "done")
        .await
        .unwrap();
}

async fn provision(store: &Store, i: &str) {
    let op = format!("{i}-provision");
    store
        .insert_instance(
            &instance(i),
            Some(i),
            &operation(&op, i, None, OperationKind::Provision),
            &job(&op, "provision", i, None),
        )
        .await
        .unwrap();
    store
        .set_instance_state(&id(i), InstanceState::Ready)
        .await
        .unwrap();
    finish(store, &op).await;
}

async fn bind_and_unbind(store: &Store, i: &str, b: &str) {
    let op = format!("{b}-bind");
    let now = now_millis();
    let binding = BindingRecord {
        id: BindingId::parse(b.to_string()).unwrap(),
        instance_id: id(i),
        request: json!({}),
        role_name: format!("role_{b}"),
        password: "pw".to_string().into(),
        state: BindingState::Creating,
        read_only: false,
        created_at: now,
        updated_at: now,
        deleted_at: None,
    };
    store
        .insert_binding(
            &binding,
            &operation(&op, i, Some(b), OperationKind::Bind),
            &job(&op, "bind", i, Some(b)),
        )
        .await
        .unwrap();
    store
        .set_binding_state(&binding.id, BindingState::Ready)
        .await
        .unwrap();
    finish(store, &op).await;
    let op = format!("{b}-unbind");
    assert!(store
        .transition_binding(
            &binding.id,
            BindingState::Ready,
            BindingState::Deleting,
            &operation(&op, i, Some(b), OperationKind::Unbind),
            &job(&op, "unbind", i, Some(b)),
        )
        .await
        .unwrap());
    store
        .set_binding_state(&binding.id, BindingState::Deleted)
        .await
        .unwrap();
    finish(store, &op).await;
}

async fn update(store: &Store, i: &str, day: usize) {
    let op = format!("{i}-update-{day}");
    assert!(store
        .transition_instance(
            &id(i),
            &[InstanceState::Ready],
            InstanceState::Updating,
            &operation(&op, i, None, OperationKind::Update),
            &job(&op, "update", i, None),
        )
        .await
        .unwrap());
    store
        .set_instance_state(&id(i), InstanceState::Ready)
        .await
        .unwrap();
    finish(store, &op).await;
}

async fn deprovision(store: &Store, i: &str) {
    let op = format!("{i}-deprovision");
    assert!(store
        .transition_instance(
            &id(i),
            &[InstanceState::Ready],
            InstanceState::Deprovisioning,
            &operation(&op, i, None, OperationKind::Deprovision),
            &job(&op, "deprovision", i, None),
        )
        .await
        .unwrap());
    store
        .set_instance_state(&id(i), InstanceState::Deleted)
        .await
        .unwrap();
    store.delete_bindings_of(&id(i)).await.unwrap();
    finish(store, &op).await;
}

/// A base backup as the backup job records it, then archive retention forgetting the one that
/// left the recovery window (what `ArchiveMaintenance` does with a pass's `deleted_backups`).
async fn backup(store: &Store, i: &str, day: usize) {
    let job_id = format!("{i}-backup-{day}");
    assert!(store
        .enqueue_backup(&job(&job_id, "backup", i, None))
        .await
        .unwrap());
    store
        .record_backup(&BackupRecord {
            instance_id: id(i),
            backup_id: format!("2026{day:04}"),
            reason: "schedule".into(),
            start_lsn: "0/1000000".into(),
            stop_lsn: "0/2000000".into(),
            stop_wal: "000000010000000000000002".into(),
            stop_time: now_millis(),
            raw_bytes: 1,
            stored_bytes: 1,
            duration_ms: 1,
            stream_ms: 1,
            archive_wait_ms: 0,
            job_id: job_id.clone(),
            recorded_at: now_millis(),
            wal_bytes_at_start: None,
        })
        .await
        .unwrap();
    store.finish_job(&job_id, JOB_DONE, None).await.unwrap();
    if let Some(old) = day.checked_sub(BACKUP_WINDOW_DAYS) {
        store
            .forget_backups(&id(i), Some(&[format!("2026{old:04}")]))
            .await
            .unwrap();
    }
}

/// Moves every stored time one day into the past: the clock moving on by a day.
async fn age_one_day(url: &str) {
    let mut conn = AnyConnection::connect(url).await.unwrap();
    for sql in [
        "UPDATE jobs SET created_at = created_at - {D}, updated_at = updated_at - {D}, \
         run_after = run_after - {D}, lease_until = lease_until - {D}",
        "UPDATE operations SET created_at = created_at - {D}, updated_at = updated_at - {D}, \
         finished_at = finished_at - {D}",
        "UPDATE bindings SET created_at = created_at - {D}, updated_at = updated_at - {D}, \
         deleted_at = deleted_at - {D}",
        "UPDATE instances SET created_at = created_at - {D}, updated_at = updated_at - {D}, \
         deleted_at = deleted_at - {D}, reaped_at = reaped_at - {D}",
        "UPDATE backups SET stop_time = stop_time - {D}, recorded_at = recorded_at - {D}",
    ] {
        sqlx::query(&sql.replace("{D}", &DAY_MS.to_string()))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    conn.close().await.unwrap();
}

async fn simulate(store: Store, url: &str) {
    for n in 0..LONG_LIVED {
        provision(&store, &format!("keep-{n}")).await;
    }
    let mut history: Vec<RowCounts> = Vec::new();
    for day in 0..DAYS {
        for n in 0..CHURN {
            let i = format!("d{day}-i{n}");
            provision(&store, &i).await;
            bind_and_unbind(&store, &i, &format!("d{day}-b{n}")).await;
            deprovision(&store, &i).await;
        }
        for n in 0..LONG_LIVED {
            let i = format!("keep-{n}");
            update(&store, &i, day).await;
            bind_and_unbind(&store, &i, &format!("keep{n}-d{day}-b")).await;
            backup(&store, &i, day).await;
        }
        // The reaper's part: deleted instances' archives go after REAP_AFTER_DAYS.
        if let Some(reap_day) = day.checked_sub(REAP_AFTER_DAYS as usize) {
            for n in 0..CHURN {
                let i = id(&format!("d{reap_day}-i{n}"));
                store.set_instance_reaped(&i, now_millis()).await.unwrap();
                store.forget_backups(&i, None).await.unwrap();
            }
        }
        prune_state(&store, Utc::now(), RETENTION_DAYS)
            .await
            .unwrap();
        history.push(store.row_counts().await.unwrap());
        age_one_day(url).await;
    }

    // Rows a day, once everything finished in the first days has passed its retention: the
    // same every day. Instances (the undo index) grow by the day's provisions, by design.
    let settled = RETENTION_DAYS as usize + REAP_AFTER_DAYS as usize + 2;
    for (day, counts) in history.iter().enumerate().skip(settled) {
        let before = &history[day - 1];
        assert_eq!(
            (
                counts.bindings,
                counts.operations,
                counts.jobs,
                counts.backups
            ),
            (
                before.bindings,
                before.operations,
                before.jobs,
                before.backups
            ),
            "day {day}: {counts:?} after {before:?}"
        );
        assert_eq!(counts.instances, before.instances + CHURN as i64);
    }
    let last = history.last().unwrap();
    assert_eq!(
        last.backups,
        (LONG_LIVED * BACKUP_WINDOW_DAYS) as i64,
        "{last:?}"
    );
    // What is left: the retention period's operations, plus one tombstone for each instance
    // deleted since — until its archive is reaped and that is a retention period old too.
    let ops_a_day = CHURN * 4 + LONG_LIVED * 3;
    let unpruned = (DAYS * ops_a_day) as i64;
    let bound = (RETENTION_DAYS as usize + 1) * ops_a_day + (REAP_AFTER_DAYS as usize + 1) * CHURN;
    assert!(
        last.operations <= bound as i64,
        "{last:?}: more than {bound}"
    );
    assert!(
        last.operations < unpruned,
        "{last:?} vs {unpruned} unpruned"
    );
    assert!(last.jobs <= ((RETENTION_DAYS as usize + 1) * (CHURN * 4 + LONG_LIVED * 4)) as i64);

    // What readers need is still there.
    for n in 0..LONG_LIVED {
        let i = id(&format!("keep-{n}"));
        let op = store.latest_operation(&i, None).await.unwrap().unwrap();
        assert_eq!(op.id, format!("keep-{n}-update-{}", DAYS - 1));
        assert!(store.latest_backup(&i).await.unwrap().is_some());
    }
    // The tombstone of a recent delete answers last_operation.
    let recent = id(&format!("d{}-i0", DAYS - 1));
    let tomb = store
        .latest_operation(&recent, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (tomb.kind, tomb.state),
        (OperationKind::Deprovision, OperationState::Succeeded)
    );
    // An old deleted instance is still found for undo, with its names.
    let old = id("d0-i0");
    assert_eq!(
        store.get_instance(&old).await.unwrap().unwrap().state,
        InstanceState::Deleted
    );
    assert_eq!(store.instance_names(&old).await.unwrap().len(), 1);

    // Work not finished is never pruned, however old.
    let stuck = "keep-0-stuck";
    assert!(store
        .transition_instance(
            &id("keep-0"),
            &[InstanceState::Ready],
            InstanceState::Updating,
            &operation(stuck, "keep-0", None, OperationKind::Update),
            &job(stuck, "update", "keep-0", None),
        )
        .await
        .unwrap());
    for _ in 0..(RETENTION_DAYS + 5) {
        age_one_day(url).await;
    }
    prune_state(&store, Utc::now(), RETENTION_DAYS)
        .await
        .unwrap();
    assert!(store.get_job(stuck).await.unwrap().is_some());
    assert!(store.get_operation(stuck).await.unwrap().is_some());
    let kinds: BTreeSet<String> = store
        .operation_counts()
        .await
        .unwrap()
        .into_iter()
        .map(|(k, s, _)| format!("{k}/{s}"))
        .collect();
    assert!(kinds.contains("update/in progress"), "{kinds:?}");
    // 0 days keeps everything.
    let before = store.row_counts().await.unwrap();
    prune_state(&store, Utc::now(), 0).await.unwrap();
    assert_eq!(store.row_counts().await.unwrap(), before);
}

#[tokio::test]
async fn state_database_stays_flat_over_two_busy_months_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = wayback::config::resolve::default_sqlite_url(dir.path());
    simulate(keyed(Store::connect(&url).await.unwrap()), &url).await;
}

#[tokio::test]
async fn state_database_stays_flat_over_two_busy_months_on_postgres() {
    let base = std::env::var("WAYBACK_TEST_PG_URL").ok();
    if !common::require("a PostgreSQL server in WAYBACK_TEST_PG_URL", base.is_some()) {
        return;
    }
    let base = base.unwrap();
    let db = format!("prune_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    let url = format!("{prefix}/{db}");
    let store = keyed(Store::connect(&url).await.unwrap());
    simulate(store.clone(), &url).await;
    store.close().await;
    sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
}
