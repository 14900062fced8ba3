//! `wal-fetch`: restore one WAL file for recovery, fetching the next ones ahead in parallel.
//!
//! Exit statuses carry meaning to PostgreSQL: 0 restored; 1 "not in the archive" — recovery
//! then ends (or tries another timeline) — so it is said only on a definite 404; anything we
//! cannot be sure of (a storage error that outlasts the retries, a corrupt object, WAL of
//! another cluster) is 126, which makes the startup process stop instead of promoting at a
//! point earlier than the user asked for.

use std::path::Path;
use std::time::{Duration, Instant};

use super::download::{cache_dir, download, write_file};
use super::layout::{WalFileKind, WalFileName};
use super::prefetch;
use super::target::ArchiveTarget;
use super::ArchiveError;
use crate::storage::ObjectStore;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    Restored,
    Absent,
}

/// The exit status that aborts recovery.
pub const EXIT_ABORT: u8 = 126;

/// Restores `name` to `dest`.
pub async fn fetch(
    target: &ArchiveTarget,
    store: &ObjectStore,
    name: &str,
    dest: &Path,
) -> Result<Fetched, ArchiveError> {
    let name = WalFileName::parse(name).map_err(ArchiveError::Target)?;
    match download(target, store, &name).await? {
        Some(raw) => {
            write_file(dest, &raw).await?;
            Ok(Fetched::Restored)
        }
        None => Ok(Fetched::Absent),
    }
}

/// The `wal-fetch` command: exit status for PostgreSQL.
pub fn wal_fetch_main(target_path: &Path, name: &str, dest: &Path) -> u8 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return EXIT_ABORT;
        }
    };
    match runtime.block_on(fetch_main(target_path, name, dest)) {
        Ok(Fetched::Restored) => 0,
        Ok(Fetched::Absent) => 1,
        Err(e) => {
            tracing::error!(file = name, error = %e, "wal-fetch failed; stopping recovery rather than ending it early");
            EXIT_ABORT
        }
    }
}

async fn fetch_main(target_path: &Path, name: &str, dest: &Path) -> Result<Fetched, ArchiveError> {
    let target = ArchiveTarget::load(target_path)?;
    let wal = WalFileName::parse(name).map_err(ArchiveError::Target)?;
    let cache = cache_dir(target_path);
    let ahead = wal.kind() == WalFileKind::Segment && target.fetch_ahead > 0;
    if ahead && tokio::fs::create_dir_all(&cache).await.is_ok() {
        prefetch::set_wanted(&cache, wal.as_str()).await;
        prefetch::ensure_running(target_path, &cache);
    }
    let cached = cache.join(wal.as_str());
    if ahead {
        // Being downloaded by the prefetcher: wait for it rather than download it twice.
        let marker = prefetch::inflight_marker(&cache, wal.as_str());
        let deadline = Instant::now() + Duration::from_secs(target.fetch_retry_secs.max(1));
        while marker.exists() && !cached.exists() && Instant::now() < deadline {
            if !prefetch::running(&cache) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Fetched ahead (and verified then): move it into place.
    if tokio::fs::rename(&cached, dest).await.is_ok() {
        clean_cache(&cache, wal.as_str()).await;
        return Ok(Fetched::Restored);
    }
    if ahead {
        clean_cache(&cache, wal.as_str()).await;
    }
    let store = target.open_store()?;
    fetch(&target, &store, name, dest).await
}

/// Removes cached segments recovery has gone past (names sort in WAL order on a timeline).
async fn clean_cache(dir: &Path, current: &str) {
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return;
    };
    while let Ok(Some(e)) = entries.next_entry().await {
        let stale = e.file_name().to_str().is_some_and(|n| {
            !n.starts_with('.') && !n.ends_with(".inflight") && n.len() >= 24 && &n[..24] <= current
        });
        if stale {
            let _ = tokio::fs::remove_file(e.path()).await;
        }
    }
}
