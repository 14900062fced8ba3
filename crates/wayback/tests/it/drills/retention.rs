//! State retention prunes restore drills' rows: each instance keeps its newest
//! `DRILLS_KEPT` whatever their age and everything of the last `state.retention_days`; a row a
//! dead job left `running` goes once it is older than that. On SQLite and on PostgreSQL (the
//! test script's server).

use chrono::Utc;
use sqlx::Connection;
use wayback::domain::InstanceId;
use wayback::maintenance::prune_state;
use wayback::store::Store;

use crate::common;

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

async fn prunes_old_drills(store: Store) {
    let now = Utc::now();
    let ms = now.timestamp_millis();
    let busy = InstanceId::parse("3F2A0000-0000-4000-8000-0000000000A1").unwrap();
    let quiet = InstanceId::parse("3F2A0000-0000-4000-8000-0000000000A2").unwrap();
    // One drill a day for 60 days: the newest 50 stay, though 20 of those are past the cut-off.
    for day in 1..=60 {
        let started = ms - day * DAY_MS - HOUR_MS;
        assert!(store
            .record_archived_drill(&busy, started, started + 1000, true, "{}")
            .await
            .unwrap());
    }
    // Five drills, all older than the cut-off: fewer than 50, so all stay.
    for day in 40..45 {
        let started = ms - day * DAY_MS;
        assert!(store
            .record_archived_drill(&quiet, started, started + 1000, day != 42, "{}")
            .await
            .unwrap());
    }
    // A row left `running` by a job that is gone, older than the cut-off.
    store
        .begin_drill("gone-job", &quiet, "", ms - 40 * DAY_MS - HOUR_MS)
        .await
        .unwrap();

    let pruned = prune_state(&store, now, 30).await.unwrap();
    assert_eq!(pruned.drills, 11, "{pruned:?}");
    let busy_rows = store.drills_of(&busy, 1000).await.unwrap();
    assert_eq!(busy_rows.len(), 50);
    assert!(
        busy_rows.iter().all(|r| r.started_at > ms - 51 * DAY_MS),
        "the newest 50 stay"
    );
    let quiet_rows = store.drills_of(&quiet, 1000).await.unwrap();
    assert_eq!(quiet_rows.len(), 5);
    assert!(quiet_rows.iter().all(|r| r.result != "running"));
    // A second pass finds nothing more.
    assert_eq!(prune_state(&store, now, 30).await.unwrap().drills, 0);
    // 0 days keeps everything.
    assert_eq!(prune_state(&store, now, 0).await.unwrap().drills, 0);
}

#[tokio::test]
async fn state_retention_prunes_old_drills_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = wayback::config::resolve::default_sqlite_url(dir.path());
    prunes_old_drills(Store::connect(&url).await.unwrap()).await;
}

#[tokio::test]
async fn state_retention_prunes_old_drills_on_postgres() {
    let base = std::env::var("WAYBACK_TEST_PG_URL").ok();
    if !common::require("a PostgreSQL server in WAYBACK_TEST_PG_URL", base.is_some()) {
        return;
    }
    let base = base.unwrap();
    let db = format!("drills_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    let store = Store::connect(&format!("{prefix}/{db}")).await.unwrap();
    prunes_old_drills(store.clone()).await;
    store.close().await;
    sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
}
