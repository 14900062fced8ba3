//! Followers made by hand for tests of what depends on `instances.leader_id` (bindings, views,
//! metrics): a test-only write of the state database, the only way to make an instance a
//! follower without the broker's FOLLOW job.

use sqlx::Connection;

use super::TestApp;

/// Records `follower` as following `leader` (None: as following nobody) in the app's SQLite
/// state database.
pub async fn set_leader(app: &TestApp, follower: &str, leader: Option<&str>) {
    set(
        app,
        "UPDATE instances SET leader_id = ? WHERE id = ?",
        leader,
        follower,
    )
    .await
}

/// Sets `instance`'s state in the state database (a leader "gone": `deleted`).
pub async fn set_state(app: &TestApp, instance: &str, state: &str) {
    set(
        app,
        "UPDATE instances SET state = ? WHERE id = ?",
        Some(state),
        instance,
    )
    .await
}

async fn set(app: &TestApp, sql: &str, value: Option<&str>, id: &str) {
    let url = wayback::config::resolve::default_sqlite_url(&app.data_dir);
    let mut conn = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("the app's state database");
    let done = sqlx::query(sql)
        .bind(value)
        .bind(id)
        .execute(&mut conn)
        .await
        .expect("a test write of the state database");
    assert_eq!(done.rows_affected(), 1, "{sql} for {id}");
    let _ = conn.close().await;
}

/// Records a ready instance `follower` on `port` that follows `leader`, as a copy of the
/// leader's row (same service, plan, space, database and owner role), named `name`: the store's
/// side of a follower whose cluster a test made itself (the standby restore, as
/// `follow_engine` does).
pub async fn insert_follower(app: &TestApp, follower: &str, leader: &str, port: u16, name: &str) {
    let url = wayback::config::resolve::default_sqlite_url(&app.data_dir);
    let mut conn = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("the app's state database");
    let done = sqlx::query(
        "INSERT INTO instances (id, service_id, plan_id, organization_guid, space_guid, \
         parameters, context, state, port, database_name, owner_role, created_at, updated_at, \
         deleted_at, leader_id) \
         SELECT ?, service_id, plan_id, organization_guid, space_guid, '{}', context, 'ready', ?, \
         database_name, owner_role, created_at + 1, updated_at, NULL, id \
         FROM instances WHERE id = ?",
    )
    .bind(follower)
    .bind(i64::from(port))
    .bind(leader)
    .execute(&mut conn)
    .await
    .expect("a test write of the state database");
    assert_eq!(done.rows_affected(), 1, "the leader {leader} is recorded");
    let _ = conn.close().await;
    let id = wayback::domain::InstanceId::parse(follower.to_string()).unwrap();
    app.store
        .record_name(&id, name, "provision")
        .await
        .expect("the follower's name");
}
