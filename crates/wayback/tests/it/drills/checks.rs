//! What a drill checks: a healthy copy passes (and shows everywhere), a corrupt WAL segment and
//! a corrupt index page fail it, each named.

use super::*;
use crate::common::archive_wait::{prefix_of, wait_for_backup};

use std::time::{Duration, Instant};

use serde::Deserialize;
use wayback::domain::InstanceId;
use wayback::runtime::DrillReport;

#[tokio::test]
async fn a_healthy_instance_passes_and_shows_everywhere() {
    let Some((app, store, s3)) = s3_app_settings("dr").await else {
        return;
    };
    let id = app.provision_ready("drilled").await;
    wait_for_backup(&store, &id).await;
    fill(&app, &id, &store).await;

    let report = drill(&app, &id).await;
    assert!(report.passed(), "{report:#?}");
    assert!(report.backup_id.is_some());
    assert!(report.wal_bytes.unwrap() > 0);
    assert!(report.end_lsn.is_some());
    assert!(report.end_time.is_some(), "{report:#?}");
    assert!(report.timeline.unwrap() >= 2);
    assert!(report.databases_checked >= 2, "{report:#?}");
    assert!(report.tables_counted >= 1, "{report:#?}");
    assert!(
        report
            .checks
            .iter()
            .any(|c| c.starts_with("catalog: the same")),
        "a live instance's catalog is compared: {report:#?}"
    );
    assert_no_scratch(&app);

    // In the broker's API (what `cf backups` reads: its "verified" column and `--drills`).
    let answer = crate::common::wayback_client::get(
        &app,
        &format!("/instances/{id}"),
        crate::common::wayback_client::operator(&app),
    )
    .await;
    assert_eq!(answer.status, reqwest::StatusCode::OK, "{}", answer.body);
    let listed = wayback_api::v1::Instance::deserialize(&answer.body).unwrap();
    assert_eq!(listed.drills.first(), Some(&report), "{}", answer.body);
    // In the archive, next to instance.json.
    let key = wayback::jobs::drill_report_key(&prefix_of(&id), report.started);
    assert!(store.get(&key).await.unwrap().is_some(), "{key} missing");
    // In the metrics.
    let text = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = format!("wayback_restore_drill_last_success_timestamp_seconds{{instance=\"{id}\"}}");
    assert!(text.contains(&line), "{text}");
    assert!(text.contains(&format!(
        "wayback_restore_drill_failures_total{{instance=\"{id}\"}} 0"
    )));

    // A broker that lost its state database gets the drill back from the archive
    // (`wayback reindex`), with the operator's key the archive is sealed with.
    let (key_id, key) = archive_keys::generated_key(&app.data_dir);
    let fresh = spawn_app_with(|s| {
        s.archive = s3.clone();
        s.encryption.keys.insert(key_id.clone(), key);
        s.encryption.current_key = Some(key_id);
    })
    .await;
    let reindexed = wayback::maintenance::reindex::reindex(&fresh.store, &store, false, false)
        .await
        .unwrap();
    let line = reindexed
        .instances
        .iter()
        .find(|l| l.instance_id == id)
        .expect("the instance is reindexed");
    assert_eq!(line.drills_added, 1, "{reindexed:#?}");
    let iid = InstanceId::parse(id.clone()).unwrap();
    let back = fresh.store.drills_of(&iid, 10).await.unwrap();
    assert_eq!(back.len(), 1);
    let back: DrillReport = serde_json::from_str(back[0].report.as_deref().unwrap()).unwrap();
    assert_eq!(back, report);
}

#[tokio::test]
async fn a_corrupt_wal_segment_fails_the_drill_naming_it() {
    let Some((app, store)) = s3_app("dw").await else {
        return;
    };
    let id = app.provision_ready("walrot").await;
    wait_for_backup(&store, &id).await;
    fill(&app, &id, &store).await;
    let prefix = prefix_of(&id);
    let window = wayback::archive::window::restore_window(&store, &prefix)
        .await
        .unwrap();
    let newest = window.backups.last().expect("a backup");
    // The first segment replay needs: its payload corrupted, its 72-byte frame header kept.
    let segment = newest.start_wal.clone();
    let key = format!("{}/wal/{segment}", prefix.as_str());
    let mut bytes = store
        .get(&key)
        .await
        .unwrap()
        .expect("segment archived")
        .to_vec();
    for b in bytes.iter_mut().skip(72).step_by(97) {
        *b ^= 0x5a;
    }
    store.delete_many(std::slice::from_ref(&key)).await.unwrap();
    store.put(&key, bytes).await.unwrap();

    let report = drill(&app, &id).await;
    assert!(!report.passed(), "{report:#?}");
    let failure = report.failure.clone().expect("a failure");
    assert_eq!(failure.check, "recovery", "{report:#?}");
    assert!(failure.detail.contains(&segment), "{report:#?}");
    assert_no_scratch(&app);

    // A fresh base backup follows the failure.
    let iid = InstanceId::parse(id.clone()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let latest = app.store.latest_backup(&iid).await.unwrap();
        if latest.is_some_and(|b| b.reason == "drill-failed") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no base backup after the failed drill"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The tar entry `name` in `tar` (a plain ustar stream): the offset of its data.
fn tar_entry(tar: &[u8], name: &str) -> Option<usize> {
    let mut at = 0;
    while at + 512 <= tar.len() && tar[at] != 0 {
        let header = &tar[at..at + 512];
        let end = header[..100].iter().position(|b| *b == 0).unwrap_or(100);
        let entry = std::str::from_utf8(&header[..end]).unwrap_or_default();
        let size_text = std::str::from_utf8(&header[124..136]).unwrap_or_default();
        let size =
            usize::from_str_radix(size_text.trim_matches(|c: char| c == '\0' || c == ' '), 8)
                .unwrap_or(0);
        if entry.trim_start_matches("./") == name {
            return Some(at + 512);
        }
        at += 512 + size.div_ceil(512) * 512;
    }
    None
}

#[tokio::test]
async fn a_corrupt_index_page_in_a_base_backup_fails_the_drill_naming_the_index() {
    let Some((app, store)) = s3_app("di").await else {
        return;
    };
    let id = app.provision_ready("indexrot").await;
    wait_for_backup(&store, &id).await;
    let iid = InstanceId::parse(id.clone()).unwrap();
    let db = app
        .store
        .get_instance(&iid)
        .await
        .unwrap()
        .unwrap()
        .database_name;
    let mut conn = app.admin_on(&id, &db).await;
    exec(
        &mut conn,
        "CREATE TABLE rotten (id int PRIMARY KEY, v text) WITH (autovacuum_enabled = false); \
         INSERT INTO rotten SELECT g, md5(g::text) FROM generate_series(1, 20000) g; \
         ANALYZE rotten; CHECKPOINT",
    )
    .await;
    let file: String = sqlx::query_scalar("SELECT pg_relation_filepath('rotten_pkey')")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    drop(conn);
    // A base backup holding the index, with nothing written to it afterwards.
    let job = wayback::jobs::backup_job(&iid, "manual");
    assert!(app.store.enqueue_backup(&job).await.unwrap());
    assert_eq!(run_job(&app, &job.id).await.state, "done");
    let prefix = prefix_of(&id);
    let backup = app.store.backup_of_job(&job.id).await.unwrap().unwrap();
    let manifest_key = prefix.base_manifest(&backup.backup_id);
    let mut m = wayback::archive::manifest::BackupManifest::from_json(
        &store.get(&manifest_key).await.unwrap().unwrap(),
    )
    .unwrap();

    // The whole tar, block 1 of the index zeroed, cut again where the parts were cut, each part
    // compressed, sealed and checksummed again: only pg_amcheck can tell.
    let key = archive_keys::data_key(&store, &app.data_dir, prefix.as_str()).await;
    let part_key = |i| wayback::archive::manifest::part_key(&prefix, &m.backup_id, i);
    let mut tar = Vec::new();
    for part in &m.parts {
        let k = part_key(part.index);
        let stored = store.get(&k).await.unwrap().unwrap();
        let payload = archive_keys::part_payload(&stored, &k, &m, key.as_ref());
        tar.extend(zstd::stream::decode_all(&payload[..]).unwrap());
    }
    let data = tar_entry(&tar, &file).unwrap_or_else(|| panic!("{file} is not in the backup"));
    tar[data + 8192..data + 16384].fill(0);
    let mut at = 0;
    let mut parts = m.parts.clone();
    for part in &mut parts {
        let raw = &tar[at..at + part.raw_bytes as usize];
        at += part.raw_bytes as usize;
        let compressed = zstd::stream::encode_all(raw, 3).unwrap();
        let k = part_key(part.index);
        let stored = match (&key, m.parts_encrypted()) {
            (Some(key), true) => key.cipher().seal(&compressed, k.as_bytes()),
            _ => compressed,
        };
        part.stored_bytes = stored.len() as u64;
        part.crc32 = crc32fast::hash(&stored);
        part.sha256 = archive_keys::part_digest(raw, &m, key.as_ref());
        store.delete_many(std::slice::from_ref(&k)).await.unwrap();
        store.put(&k, stored).await.unwrap();
    }
    m.stored_bytes = parts.iter().map(|p| p.stored_bytes).sum();
    m.parts = parts;
    store
        .delete_many(std::slice::from_ref(&manifest_key))
        .await
        .unwrap();
    store.put(&manifest_key, m.to_json()).await.unwrap();

    let report = drill(&app, &id).await;
    assert!(!report.passed(), "{report:#?}");
    assert_eq!(report.backup_id.as_deref(), Some(m.backup_id.as_str()));
    let failure = report.failure.clone().expect("a failure");
    assert_eq!(failure.check, "amcheck", "{report:#?}");
    assert!(failure.detail.contains("rotten_pkey"), "{report:#?}");
    assert_no_scratch(&app);
}
