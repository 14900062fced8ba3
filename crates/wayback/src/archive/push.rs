//! `wal-push`: archive one WAL file, and push ready ones ahead in parallel.
//!
//! PostgreSQL's archiver runs one command per file, one at a time; one upload per segment cannot
//! keep up with a busy cluster. So each call also uploads up to `push_ahead` later segments that
//! PostgreSQL has marked `.ready`, and records each durable upload in a marker file holding the
//! file's SHA-256. When PostgreSQL then asks for such a segment, the marker (checked against the
//! file's current content) answers at once. A segment is acknowledged only after its upload
//! returned: nothing is reported archived that is not.
//!
//! With `--fence` (HA members) every segment first passes the timeline fence (`fence.rs`): WAL
//! of a timeline past the point where a later, archived timeline began is refused.

use std::path::{Path, PathBuf};

use super::frame::{self, FrameHeader, HEADER_LEN};
use super::layout::{WalFileKind, WalFileName};
use super::target::ArchiveTarget;
use super::{fence, walscan, ArchiveError};
use crate::storage::ObjectStore;

/// How a push ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Uploaded now.
    Stored,
    /// The archive already holds identical content (a re-push after a lost answer).
    AlreadyArchived,
    /// Fenced WAL of a timeline this server has left (`fence.rs`): acknowledged, never
    /// archived. Only with `--fence`.
    Fenced,
}

fn key(target: &ArchiveTarget, name: &WalFileName) -> String {
    format!("{}/wal/{}", target.prefix, name.as_str())
}

/// Archives `file` (whose base name is a WAL file name) under `target`.
pub async fn push(
    target: &ArchiveTarget,
    store: &ObjectStore,
    file: &Path,
) -> Result<Pushed, ArchiveError> {
    let name = file_name(file)?;
    let raw = tokio::fs::read(file)
        .await
        .map_err(|e| ArchiveError::io(format!("read {}", file.display()), e))?;
    push_bytes(target, store, &name, raw, None).await
}

/// `fence`: the data directory of the server asking, when WAL past where a later archived
/// timeline began is refused (`fence.rs`).
async fn push_bytes(
    target: &ArchiveTarget,
    store: &ObjectStore,
    name: &WalFileName,
    raw: Vec<u8>,
    fence: Option<&Path>,
) -> Result<Pushed, ArchiveError> {
    if let Some(pgdata) = fence {
        if let fence::Verdict::Left { .. } = fence::check(target, store, name, &raw, pgdata).await?
        {
            return Ok(Pushed::Fenced);
        }
    }
    let key = key(target, name);
    let segment_like = matches!(name.kind(), WalFileKind::Segment | WalFileKind::Partial);
    let (sysid, commits) = if segment_like {
        match frame::segment_system_identifier(&raw) {
            Some(id) if id == target.system_identifier => {}
            Some(id) => {
                return Err(ArchiveError::Refused(format!(
                    "{} belongs to database system {id}, not to this instance's {}; a wrong archive target would mix clusters' WAL",
                    name.as_str(),
                    target.system_identifier
                )))
            }
            None => return Err(ArchiveError::Refused(format!("{} does not start with a WAL page header", name.as_str()))),
        }
        let commits = if name.kind() == WalFileKind::Segment {
            walscan::commit_times(&raw)
        } else {
            None
        };
        (target.system_identifier, commits)
    } else {
        (0, None)
    };
    let cipher = target.data_key.as_ref().map(|k| k.cipher());
    if let Some(existing) = existing_header(store, &key).await? {
        // Compared in the form the archived header records (keyed when it is encrypted).
        let ours = if existing.encrypted {
            cipher.as_ref()
        } else {
            None
        };
        if existing.encrypted && ours.is_none() {
            return Err(ArchiveError::Refused(format!(
                "{key} is archived encrypted, but this instance's archive target has no data key"
            )));
        }
        if existing.sha256 == frame::content_digest(&raw, ours) {
            tracing::info!(
                file = name.as_str(),
                "already archived with identical content"
            );
            return Ok(Pushed::AlreadyArchived);
        }
        tracing::error!(
            file = name.as_str(),
            key = %key,
            "SPLIT BRAIN? the archive already holds DIFFERENT content under this name; refusing to overwrite it"
        );
        return Err(ArchiveError::Refused(format!(
            "{key} is already archived with different content; two clusters may be archiving to one prefix"
        )));
    }
    let level = target.compression_level;
    let file = name.as_str().to_string();
    let framed = tokio::task::spawn_blocking(move || {
        let sealing = cipher.as_ref().map(|cipher| frame::Sealing {
            cipher,
            name: &file,
        });
        frame::encode_with(&raw, sysid, commits, level, sealing)
    })
    .await
    .map_err(|e| ArchiveError::Io(format!("compress: {e}")))?
    .map_err(|e| ArchiveError::io("compress", e))?;
    store.put(&key, framed).await?;
    Ok(Pushed::Stored)
}

/// The header of the archived object at `key`; None when absent or unreadable as ours (a
/// corrupt object is no archived content: it may be replaced, loudly).
async fn existing_header(
    store: &ObjectStore,
    key: &str,
) -> Result<Option<FrameHeader>, ArchiveError> {
    let Some(meta) = store.head(key).await? else {
        return Ok(None);
    };
    if meta.size < HEADER_LEN as u64 {
        tracing::warn!(
            key,
            size = meta.size,
            "replacing a truncated archived object"
        );
        return Ok(None);
    }
    let Some(head) = store.get_range(key, 0..HEADER_LEN as u64).await? else {
        return Ok(None);
    };
    match frame::header(&head) {
        Ok(h) => Ok(Some(h)),
        Err(e) => {
            tracing::warn!(key, error = %e, "replacing an archived object that is not a valid archive file");
            Ok(None)
        }
    }
}

fn file_name(file: &Path) -> Result<WalFileName, ArchiveError> {
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| ArchiveError::Target(format!("{} has no file name", file.display())))?;
    WalFileName::parse(name).map_err(ArchiveError::Target)
}

/// Markers of segments pushed ahead, next to the target file.
fn marker_dir(target_path: &Path) -> PathBuf {
    target_path
        .parent()
        .unwrap_or(Path::new("."))
        .join("wal-pushed")
}

/// Ready segments after `current`, oldest first, at most `limit`.
fn ready_after(wal_file: &Path, current: &str, limit: usize) -> Vec<PathBuf> {
    let dir = wal_file.parent().unwrap_or(Path::new("."));
    let Ok(entries) = std::fs::read_dir(dir.join("archive_status")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".ready")
                .map(str::to_string)
        })
        .filter(|n| {
            n.as_str() > current
                && WalFileName::parse(n).is_ok_and(|w| w.kind() == WalFileKind::Segment)
        })
        .collect();
    names.sort();
    names.truncate(limit);
    names.into_iter().map(|n| dir.join(n)).collect()
}

/// The `wal-push` command: exit status for PostgreSQL. `fenced`: `--fence` (see the module docs).
pub fn wal_push_main(target_path: &Path, wal_file: &Path, fenced: bool) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return 1;
        }
    };
    match runtime.block_on(push_main(target_path, wal_file, fenced)) {
        Ok(outcome) => {
            tracing::debug!(file = %wal_file.display(), ?outcome, "archived");
            0
        }
        Err(e) => {
            tracing::error!(file = %wal_file.display(), error = %e, "wal-push failed; PostgreSQL will retry");
            1
        }
    }
}

async fn push_main(
    target_path: &Path,
    wal_file: &Path,
    fenced: bool,
) -> Result<Pushed, ArchiveError> {
    let target = ArchiveTarget::load(target_path)?;
    let store = target.open_store()?;
    let name = file_name(wal_file)?;
    // %p is `pg_wal/<name>`, relative to the data directory PostgreSQL runs the command in.
    let pgdata = wal_file
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."));
    let fence = fenced.then_some(pgdata);
    let markers = marker_dir(target_path);
    let raw = tokio::fs::read(wal_file)
        .await
        .map_err(|e| ArchiveError::io(format!("read {}", wal_file.display()), e))?;
    // Pushed ahead earlier, and the file is still what we pushed: durable already.
    if let Ok(recorded) = tokio::fs::read_to_string(markers.join(name.as_str())).await {
        if recorded.trim() == hex::encode(frame::sha256(&raw)) {
            let _ = tokio::fs::remove_file(markers.join(name.as_str())).await;
            return Ok(Pushed::AlreadyArchived);
        }
    }
    clean_markers(&markers, name.as_str()).await;
    let ahead = if name.kind() == WalFileKind::Segment && target.push_ahead > 0 {
        ready_after(wal_file, name.as_str(), target.push_ahead)
    } else {
        Vec::new()
    };
    let pushes = ahead.iter().map(|path| {
        let (target, store, markers) = (&target, &store, &markers);
        async move {
            let n = file_name(path)?;
            let bytes = tokio::fs::read(path)
                .await
                .map_err(|e| ArchiveError::io(format!("read {}", path.display()), e))?;
            let digest = hex::encode(frame::sha256(&bytes));
            if push_bytes(target, store, &n, bytes, fence).await? == Pushed::Fenced {
                // No marker: nothing was stored; PostgreSQL asks for it in turn.
                return Ok(());
            }
            let _ = tokio::fs::create_dir_all(markers).await;
            tokio::fs::write(markers.join(n.as_str()), digest)
                .await
                .map_err(|e| ArchiveError::io("write marker", e))
        }
    });
    let (current, ahead_results) = tokio::join!(
        push_bytes(&target, &store, &name, raw, fence),
        futures::future::join_all(pushes)
    );
    for (path, r) in ahead.iter().zip(ahead_results) {
        if let Err(e) = r {
            // Not fatal: PostgreSQL will ask for it in turn.
            tracing::warn!(file = %path.display(), error = %e, "pushing ahead failed");
        }
    }
    current
}

/// Removes markers of segments before `current`: PostgreSQL archives in order, so those were
/// acknowledged (or recycled) already.
async fn clean_markers(dir: &Path, current: &str) {
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return;
    };
    while let Ok(Some(e)) = entries.next_entry().await {
        if e.file_name().to_str().is_some_and(|n| n < current) {
            let _ = tokio::fs::remove_file(e.path()).await;
        }
    }
}
