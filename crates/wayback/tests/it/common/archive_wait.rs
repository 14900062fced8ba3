//! The archive as tests wait on it: an instance's prefix in the tests' space, its first
//! complete base backup, and a WAL switch until its segment is stored. (One copy of what
//! clone, restore, agents, archive_crypt and others each wrote.)

use std::time::{Duration, Instant};

use wayback::archive::layout::InstancePrefix;
use wayback::archive::window::restore_window;
use wayback::domain::{InstanceId, SpaceGuid};
use wayback::storage::ObjectStore;

use super::SPACE;

/// The archive prefix of instance `id` in the tests' space ([`SPACE`]).
pub fn prefix_of(id: &str) -> InstancePrefix {
    InstancePrefix::new(
        &SpaceGuid::parse(SPACE).unwrap(),
        &InstanceId::parse(id.to_string()).unwrap(),
    )
}

/// Waits until the instance has a complete base backup (the broker takes one after a
/// provision or clone), so that it can be cloned.
pub async fn wait_for_backup(store: &ObjectStore, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while restore_window(store, &prefix_of(id))
        .await
        .unwrap()
        .backups
        .is_empty()
    {
        assert!(Instant::now() < deadline, "no base backup of {id} in 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Switches WAL on `admin`'s cluster and waits until the completed segment is archived.
pub async fn archive_now(admin: &mut sqlx::PgConnection, store: &ObjectStore, id: &str) {
    let seg: String = sqlx::query_scalar("SELECT pg_walfile_name(pg_switch_wal())")
        .fetch_one(&mut *admin)
        .await
        .unwrap();
    let key = format!("{}/wal/{seg}", prefix_of(id).as_str());
    let deadline = Instant::now() + Duration::from_secs(90);
    while store.head(&key).await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "{key} not archived within 90 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
