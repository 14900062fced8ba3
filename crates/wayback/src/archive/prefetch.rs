//! The WAL prefetcher: a detached `wayback wal-prefetch` process that keeps the next
//! `fetch_ahead` segments after the one recovery last asked for downloaded, verified and waiting
//! in the instance's `wal-prefetch/` directory, so that replay and downloading overlap.
//!
//! Why a process of its own: PostgreSQL runs `restore_command` once per file and waits for it,
//! so anything one `wal-fetch` starts in the background dies with it, and a batch fetched inside
//! one call makes that call (and the replay behind it) wait for the whole batch. The prefetcher
//! instead follows `wal-prefetch/.wanted`, which every `wal-fetch` writes, downloads up to
//! `PARALLEL` segments at a time, and ends by itself once recovery stops asking.
//!
//! It is only a cache: every file it writes was verified exactly as `wal-fetch` verifies
//! (checksum, system identifier), and any doubt (an error, an absent file) just leaves the file
//! out, so that `wal-fetch` fetches it itself and keeps the exit-status rules. One prefetcher per
//! cache directory, held by an advisory lock on `.prefetcher.lock`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::download::{cache_dir, download, following, write_file};
use super::layout::WalFileName;
use super::target::ArchiveTarget;
use super::ArchiveError;

/// Downloads in flight at once.
const PARALLEL: usize = 4;
/// The prefetcher ends when recovery has asked for nothing new for this long.
const IDLE_EXIT: Duration = Duration::from_secs(10);
/// After a segment was absent, it is asked for again no sooner than this.
const ABSENT_RETRY: Duration = Duration::from_secs(1);

pub(crate) const WANTED: &str = ".wanted";
const LOCK: &str = ".prefetcher.lock";

/// The marker of a download in flight.
pub(crate) fn inflight_marker(cache: &Path, name: &str) -> PathBuf {
    cache.join(format!("{name}.inflight"))
}

/// Tries to take the prefetcher lock; the lock is held until the value is dropped.
fn try_lock(cache: &Path) -> Option<nix::fcntl::Flock<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(cache.join(LOCK))
        .ok()?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).ok()
}

/// Whether a prefetcher holds the lock of `cache`.
pub(crate) fn running(cache: &Path) -> bool {
    // Taking the lock and letting it go at once tells whether someone else holds it.
    try_lock(cache).is_none() && cache.join(LOCK).exists()
}

/// Starts a detached prefetcher for `target_path` unless one runs. Never fails the caller.
pub(crate) fn ensure_running(target_path: &Path, cache: &Path) {
    if running(cache) {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    use std::os::unix::process::CommandExt;
    let spawned = std::process::Command::new(exe)
        .arg("wal-prefetch")
        .arg("--target")
        .arg(target_path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        // Its own process group: not PostgreSQL's to wait for or to signal.
        .process_group(0)
        .spawn();
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "cannot start the WAL prefetcher; fetching one file at a time");
    }
}

/// Records the file recovery asks for now.
pub(crate) async fn set_wanted(cache: &Path, name: &str) {
    let tmp = cache.join(".wanted.tmp");
    if tokio::fs::write(&tmp, name).await.is_ok() {
        let _ = tokio::fs::rename(&tmp, cache.join(WANTED)).await;
    }
}

fn wanted(cache: &Path) -> Option<WalFileName> {
    let text = std::fs::read_to_string(cache.join(WANTED)).ok()?;
    WalFileName::parse(text.trim()).ok()
}

/// The `wal-prefetch` command. Exit status 0 whatever happened: it is only a cache.
pub fn wal_prefetch_main(target_path: &Path) -> u8 {
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    else {
        return 0;
    };
    if let Err(e) = runtime.block_on(run(target_path)) {
        tracing::debug!(error = %e, "WAL prefetcher ended");
    }
    0
}

async fn run(target_path: &Path) -> Result<(), ArchiveError> {
    let target = ArchiveTarget::load(target_path)?;
    let cache = cache_dir(target_path);
    let Some(_lock) = try_lock(&cache) else {
        return Ok(());
    };
    let store = target.open_store()?;
    let mut tasks = tokio::task::JoinSet::new();
    let mut in_flight: HashSet<String> = HashSet::new();
    let mut absent: Option<(String, Instant)> = None;
    let mut last_wanted = String::new();
    let mut last_change = Instant::now();
    loop {
        if !target_path.exists() {
            break;
        }
        let Some(now_wanted) = wanted(&cache) else {
            break;
        };
        if now_wanted.as_str() != last_wanted {
            last_wanted = now_wanted.as_str().to_string();
            last_change = Instant::now();
        } else if tasks.is_empty() && last_change.elapsed() > IDLE_EXIT {
            break;
        }
        if absent
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() > ABSENT_RETRY)
        {
            absent = None;
        }
        for next in following(&now_wanted, target.fetch_ahead) {
            if tasks.len() >= PARALLEL {
                break;
            }
            let name = next.as_str().to_string();
            if absent
                .as_ref()
                .is_some_and(|(a, _)| name.as_str() >= a.as_str())
            {
                break;
            }
            if in_flight.contains(&name) || cache.join(&name).exists() {
                continue;
            }
            let marker = inflight_marker(&cache, &name);
            if tokio::fs::write(&marker, b"").await.is_err() {
                break;
            }
            in_flight.insert(name.clone());
            let (target, store, cache) = (target.clone(), store.clone(), cache.clone());
            tasks.spawn(async move {
                let result = download(&target, &store, &next).await;
                let found = match result {
                    Ok(Some(raw)) => {
                        let _ = write_file(&cache.join(next.as_str()), &raw).await;
                        true
                    }
                    Ok(None) => false,
                    // Left to wal-fetch, which applies the exit-status rules.
                    Err(_) => true,
                };
                let _ = tokio::fs::remove_file(inflight_marker(&cache, next.as_str())).await;
                (next.as_str().to_string(), found)
            });
        }
        tokio::select! {
            done = tasks.join_next(), if !tasks.is_empty() => {
                if let Some(Ok((name, found))) = done {
                    in_flight.remove(&name);
                    if !found {
                        absent = Some((name, Instant::now()));
                    }
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    // Recovery is over (or moved on): what is left in the cache is never asked for.
    tasks.shutdown().await;
    for name in in_flight {
        let _ = tokio::fs::remove_file(inflight_marker(&cache, &name)).await;
    }
    Ok(())
}
