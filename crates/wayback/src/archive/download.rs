//! Reading archived WAL back: one file downloaded, verified and unframed (rule 8: WAL of
//! another database system is refused), written into place atomically, and the names that
//! follow a segment. Shared by `wal-fetch` ([`super::fetch`]) and the prefetcher that keeps the
//! next segments ready ([`super::prefetch`]); imports neither.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::frame;
use super::keydoc::ArchiveKey;
use super::layout::{WalFileKind, WalFileName};
use super::target::ArchiveTarget;
use super::ArchiveError;
use crate::storage::ObjectStore;

fn source(target: &ArchiveTarget) -> (&str, u64, Option<&ArchiveKey>) {
    match &target.restore_from {
        Some(s) => (&s.prefix, s.system_identifier, s.data_key.as_ref()),
        None => (
            &target.prefix,
            target.system_identifier,
            target.data_key.as_ref(),
        ),
    }
}

/// Downloads, verifies and unframes one file; None when definitely absent. Transient errors
/// are retried for up to `fetch_retry_secs`.
pub(crate) async fn download(
    target: &ArchiveTarget,
    store: &ObjectStore,
    name: &WalFileName,
) -> Result<Option<Vec<u8>>, ArchiveError> {
    let (prefix, sysid, data_key) = source(target);
    let cipher = data_key.map(ArchiveKey::cipher);
    let key = format!("{prefix}/wal/{}", name.as_str());
    let deadline = Instant::now() + Duration::from_secs(target.fetch_retry_secs);
    let mut delay = Duration::from_millis(250);
    let bytes = loop {
        match store.get(&key).await {
            Ok(found) => break found,
            Err(e) if !e.is_permanent() && Instant::now() + delay < deadline => {
                tracing::warn!(file = name.as_str(), error = %e, "archive unavailable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    };
    let Some(bytes) = bytes else { return Ok(None) };
    let file = name.as_str().to_string();
    let (header, raw) = tokio::task::spawn_blocking(move || {
        let sealing = cipher.as_ref().map(|cipher| frame::Sealing {
            cipher,
            name: &file,
        });
        frame::decode_with(&bytes, sealing)
    })
    .await
    .map_err(|e| ArchiveError::Io(format!("decompress: {e}")))?
    .map_err(|e| ArchiveError::Corrupt {
        key: key.clone(),
        detail: e.to_string(),
    })?;
    if matches!(name.kind(), WalFileKind::Segment | WalFileKind::Partial)
        && header.system_identifier != sysid
    {
        return Err(ArchiveError::Refused(format!(
            "{key} belongs to database system {}, not {sysid}; refusing to replay foreign WAL",
            header.system_identifier
        )));
    }
    Ok(Some(raw))
}

/// Writes `raw` to `dest` through a temporary file in the same directory.
pub(crate) async fn write_file(dest: &Path, raw: &[u8]) -> Result<(), ArchiveError> {
    let tmp = dest.with_extension("wayback-tmp");
    tokio::fs::write(&tmp, raw)
        .await
        .map_err(|e| ArchiveError::io(format!("write {}", tmp.display()), e))?;
    tokio::fs::rename(&tmp, dest)
        .await
        .map_err(|e| ArchiveError::io(format!("rename to {}", dest.display()), e))
}

/// The next `n` segment names after `name` on its timeline (16 MiB segments).
pub(crate) fn following(name: &WalFileName, n: usize) -> Vec<WalFileName> {
    let Some((tli, log, seg)) = name.segment_parts() else {
        return Vec::new();
    };
    let per_log = 0x1_0000_0000u64 / (16 << 20);
    let start = u64::from(log) * per_log + u64::from(seg);
    (1..=n as u64)
        .filter_map(|i| {
            let no = start + i;
            WalFileName::parse(&format!(
                "{tli:08X}{:08X}{:08X}",
                no / per_log,
                no % per_log
            ))
            .ok()
        })
        .collect()
}

/// Where the prefetcher keeps segments downloaded ahead, beside the target file.
pub(crate) fn cache_dir(target_path: &Path) -> PathBuf {
    target_path
        .parent()
        .unwrap_or(Path::new("."))
        .join("wal-prefetch")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn following_segments_cross_log_boundaries() {
        let n = WalFileName::parse("0000000200000001000000FE").unwrap();
        let next: Vec<String> = following(&n, 3)
            .iter()
            .map(|w| w.as_str().to_string())
            .collect();
        assert_eq!(
            next,
            [
                "0000000200000001000000FF",
                "000000020000000200000000",
                "000000020000000200000001"
            ]
        );
    }
}
