//! The archive under faults, with an S3 server of the test's own that it stops and starts again:
//! while storage is down PostgreSQL keeps every completed segment and retries `wal-push`; once
//! storage is back every segment arrives, in order, and the broker's metrics said what happened.

use crate::common;

use std::time::{Duration, Instant};

use common::s3_server::S3Server;
use common::*;
use sqlx::Row;
use wayback::archive::layout::{WalFileKind, WalFileName};
use wayback::storage::ObjectStore;

/// (archived segments, failed pushes, ready files, last archived WAL) of an instance.
async fn archiver(conn: &mut sqlx::PgConnection) -> (i64, i64, i64, Option<String>) {
    let row = sqlx::query(
        "SELECT archived_count, failed_count, \
                (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'), \
                last_archived_wal FROM pg_stat_archiver",
    )
    .fetch_one(conn)
    .await
    .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

/// The value of `name{instance="id"}` in a scrape.
fn gauge(scrape: &str, name: &str, id: &str) -> Option<f64> {
    let prefix = format!("{name}{{instance=\"{id}\"}} ");
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn storage_down_during_wal_push_loses_nothing_once_it_returns() {
    let Some(mut s3) = S3Server::start().await else {
        require("the s3s-fs binary (scripts/setup --with-s3)", false);
        return;
    };
    if !pg_available() {
        return;
    }
    let settings = s3.settings("faults");
    let app = spawn_app_with(|s| s.archive = settings.clone()).await;
    let store = ObjectStore::open(&settings).unwrap();
    let id = app.provision_ready("outage").await;
    let mut admin = app.admin(&id).await;
    exec(
        &mut admin,
        "CREATE TABLE t (n int); INSERT INTO t VALUES (0)",
    )
    .await;

    s3.stop();
    // Three completed segments while storage is down, each with a commit.
    let mut switched = Vec::new();
    for n in 1..=3 {
        sqlx::query("INSERT INTO t VALUES ($1)")
            .bind(n)
            .execute(&mut admin)
            .await
            .unwrap();
        let seg: String = sqlx::query("SELECT pg_walfile_name(pg_switch_wal())")
            .fetch_one(&mut admin)
            .await
            .unwrap()
            .get(0);
        switched.push(seg);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, failed, ready, _) = archiver(&mut admin).await;
        if failed > 0 && ready >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "with storage down, pushes should fail and segments wait (failed {failed}, ready {ready})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The broker's metrics say archiving is behind and failing.
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let scrape = app.metrics().await;
        let lag = gauge(&scrape, "wayback_archive_lag_segments", &id).unwrap_or(0.0);
        let failures = gauge(&scrape, "wayback_archive_push_failures_total", &id).unwrap_or(0.0);
        if lag >= 2.0 && failures > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics should show the lag and the failures: lag {lag}, failures {failures}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    s3.resume().await;
    // PostgreSQL retries on its own (no switch or signal from the test); every segment arrives.
    let last = switched.last().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let (_, _, ready, archived) = archiver(&mut admin).await;
        if ready == 0 && archived.as_deref() >= Some(last.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "archiving did not catch up after storage returned (ready {ready}, last {archived:?}, want {last})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // In the archive: every segment from the first to the last switched one, no gap, each a
    // valid frame of this cluster.
    let prefix = format!("spaces/{SPACE}/instances/{id}/wal/");
    let segments: Vec<(WalFileName, String)> = store
        .list(&prefix)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|o| {
            let name = WalFileName::parse(o.key.rsplit('/').next()?).ok()?;
            (name.kind() == WalFileKind::Segment).then_some((name, o.key))
        })
        .collect();
    let numbers: Vec<u64> = segments
        .iter()
        .map(|(n, _)| {
            let (_, log, seg) = n.segment_parts().unwrap();
            ((log as u64) << 8) | seg as u64
        })
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "segments archived without a gap: {:?}",
        segments.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>()
    );
    for seg in &switched {
        assert!(
            segments.iter().any(|(n, _)| n.as_str() == seg),
            "{seg} archived"
        );
    }
    let data_key =
        archive_keys::data_key(&store, &app.data_dir, prefix.trim_end_matches("/wal/")).await;
    let mut sysids = std::collections::BTreeSet::new();
    for (_, key) in &segments {
        let bytes = store.get(key).await.unwrap().unwrap();
        let (header, raw) =
            archive_keys::decode_frame(&bytes, key, data_key.as_ref()).expect("a valid frame");
        assert_eq!(raw.len(), 16 << 20);
        sysids.insert(header.system_identifier);
    }
    assert_eq!(sysids.len(), 1, "one cluster's WAL only");

    // Once caught up, the metrics say so.
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let lag = gauge(&app.metrics().await, "wayback_archive_lag_segments", &id);
        if lag == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "lag stays at {lag:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
