//! The identical-concurrent-request bursts of `fast::osb_concurrent` on a PostgreSQL state
//! database (`WAYBACK_TEST_PG_URL`), where concurrent inserts of one id wait on each other's
//! transaction instead of on SQLite's single writer.

use sqlx::Connection;

use crate::common;
use crate::fast::osb_concurrent::{async_bind_burst, provision_burst, sync_bind_burst};

#[tokio::test]
async fn identical_concurrent_requests_on_a_postgresql_state_database() {
    let base = std::env::var("WAYBACK_TEST_PG_URL").ok();
    if !common::require("a PostgreSQL server in WAYBACK_TEST_PG_URL", base.is_some()) {
        return;
    }
    let base = base.unwrap();
    let db = format!("burst_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let url = format!("{}/{db}", base.rsplit_once('/').unwrap().0);
    let app = common::spawn_fast_app_with(|s| s.database_url = Some(url.clone().into())).await;
    for _ in 0..3 {
        async_bind_burst(&app).await;
        provision_burst(&app).await;
        sync_bind_burst(&app).await;
    }
    drop(app);
    sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
}
