//! The archive as tests use it: an instance's prefix in the tests' space, its first
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
/// provision or clone), so that it can be cloned, and until the clock has passed the start of
/// its restore window: the backup's end rounded up to the whole second (a backup label's stop
/// time has whole seconds), so that a point in time taken from now on is inside the window.
pub async fn wait_for_backup(store: &ObjectStore, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let earliest = loop {
        let window = restore_window(store, &prefix_of(id)).await.unwrap();
        match window.earliest {
            Some(earliest) if !window.backups.is_empty() => break earliest,
            _ => {}
        }
        assert!(Instant::now() < deadline, "no base backup of {id} in 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    past(chrono::DateTime::from_timestamp(earliest.timestamp() + 1, 0).unwrap()).await;
}

/// Waits until the clock is past the next whole second: called after a backup finished, a
/// point in time read from then on is past that backup's restorable start (its end rounded up
/// to the second).
pub async fn past_the_backups_second() {
    past(chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp() + 1, 0).unwrap()).await;
}

async fn past(t: chrono::DateTime<chrono::Utc>) {
    while chrono::Utc::now() <= t {
        tokio::time::sleep(Duration::from_millis(20)).await;
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

/// Points a `wayback` command at `archive`: `WAYBACK_ARCHIVE_URL` and the `AWS_*` variables
/// the settings hold (the secret only in the child's environment).
pub fn archive_env(cmd: &mut std::process::Command, archive: &wayback::storage::StorageSettings) {
    cmd.env("WAYBACK_ARCHIVE_URL", &archive.url);
    for (var, value) in [
        ("AWS_ENDPOINT_URL", archive.endpoint.clone()),
        ("AWS_REGION", archive.region.clone()),
        ("AWS_ACCESS_KEY_ID", archive.access_key_id.clone()),
        (
            "AWS_SECRET_ACCESS_KEY",
            archive
                .secret_access_key
                .as_ref()
                .map(|s| secrecy::ExposeSecret::expose_secret(s).to_string()),
        ),
    ] {
        if let Some(v) = value {
            cmd.env(var, v);
        }
    }
}
