//! The format of every archived WAL file: a small self-describing header, then the payload.
//!
//! ```text
//! 0   4  magic "WBK1"
//! 4   1  flags (bit 0: payload is zstd-compressed)
//! 5   3  reserved, zero
//! 8   8  length of the original file (u64 LE)
//! 16 32  SHA-256 of the original file
//! 48  8  system identifier of the cluster that wrote it (u64 LE; 0 for history files)
//! 56  8  commit time of the first transaction committed in the segment (Unix µs, i64 LE; 0: none)
//! 64  8  commit time of the last transaction committed in the segment (Unix µs, i64 LE; 0: none)
//! 72  …  payload
//! ```
//!
//! The header lets `wal-fetch` verify what it restores (rule: checksums verified on fetch),
//! lets `wal-push` tell an identical re-push from a different file without downloading the
//! payload's meaning, and lets a restore refuse WAL of another cluster (rule 8), and carries
//! the segment's commit times, so that the restore window can end at the last archived *commit*
//! by reading headers only. It is the same
//! on S3 and on a local directory, so no backend-specific metadata is needed.

use sha2::{Digest, Sha256};

pub const MAGIC: &[u8; 4] = b"WBK1";
pub const HEADER_LEN: usize = 72;
const FLAG_ZSTD: u8 = 1;

/// What the header says about a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameHeader {
    pub compressed: bool,
    pub raw_len: u64,
    pub sha256: [u8; 32],
    pub system_identifier: u64,
    /// Commit times found in the segment (Unix microseconds), if any.
    pub commits: Option<(i64, i64)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("not an archived WAL file (bad magic or short header)")]
    NotAFrame,
    #[error("archived file is corrupt: {0}")]
    Corrupt(String),
}

/// Hashes a file's original content.
pub fn sha256(raw: &[u8]) -> [u8; 32] {
    Sha256::digest(raw).into()
}

/// Frames `raw`, compressing it with zstd at `level` (0 disables compression).
pub fn encode(
    raw: &[u8],
    system_identifier: u64,
    commits: Option<(i64, i64)>,
    level: i32,
) -> std::io::Result<Vec<u8>> {
    let payload = if level > 0 {
        zstd::bulk::compress(raw, level)?
    } else {
        raw.to_vec()
    };
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.push(if level > 0 { FLAG_ZSTD } else { 0 });
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&(raw.len() as u64).to_le_bytes());
    out.extend_from_slice(&sha256(raw));
    out.extend_from_slice(&system_identifier.to_le_bytes());
    let (first, last) = commits.unwrap_or((0, 0));
    out.extend_from_slice(&first.to_le_bytes());
    out.extend_from_slice(&last.to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Reads the header alone.
pub fn header(bytes: &[u8]) -> Result<FrameHeader, FrameError> {
    if bytes.len() < HEADER_LEN || &bytes[..4] != MAGIC {
        return Err(FrameError::NotAFrame);
    }
    let flags = bytes[4];
    if flags & !FLAG_ZSTD != 0 {
        return Err(FrameError::Corrupt(format!("unknown flags {flags:#x}")));
    }
    Ok(FrameHeader {
        compressed: flags & FLAG_ZSTD != 0,
        raw_len: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
        sha256: bytes[16..48].try_into().expect("32 bytes"),
        system_identifier: u64::from_le_bytes(bytes[48..56].try_into().expect("8 bytes")),
        commits: {
            let first = i64::from_le_bytes(bytes[56..64].try_into().expect("8 bytes"));
            let last = i64::from_le_bytes(bytes[64..72].try_into().expect("8 bytes"));
            (last != 0).then_some((first, last))
        },
    })
}

/// Unframes and verifies: the original content, whose length and SHA-256 match the header.
pub fn decode(bytes: &[u8]) -> Result<(FrameHeader, Vec<u8>), FrameError> {
    let h = header(bytes)?;
    let payload = &bytes[HEADER_LEN..];
    let raw = if h.compressed {
        let cap = usize::try_from(h.raw_len).map_err(|_| FrameError::Corrupt("length".into()))?;
        zstd::bulk::decompress(payload, cap)
            .map_err(|e| FrameError::Corrupt(format!("zstd: {e}")))?
    } else {
        payload.to_vec()
    };
    if raw.len() as u64 != h.raw_len {
        return Err(FrameError::Corrupt(format!(
            "length {} instead of {}",
            raw.len(),
            h.raw_len
        )));
    }
    if sha256(&raw) != h.sha256 {
        return Err(FrameError::Corrupt("SHA-256 mismatch".into()));
    }
    Ok((h, raw))
}

/// The system identifier in a WAL segment's first (long) page header, at byte 24
/// (`XLogLongPageHeaderData.xlp_sysid`), if the page carries the long-header flag.
pub fn segment_system_identifier(segment: &[u8]) -> Option<u64> {
    const XLP_LONG_HEADER: u16 = 0x0002;
    if segment.len() < 32 {
        return None;
    }
    let info = u16::from_le_bytes([segment[2], segment[3]]);
    if info & XLP_LONG_HEADER == 0 {
        return None;
    }
    Some(u64::from_le_bytes(segment[24..32].try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_segment(sysid: u64) -> Vec<u8> {
        let mut seg = vec![0u8; 64 * 1024];
        seg[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        seg[2..4].copy_from_slice(&0x0002u16.to_le_bytes());
        seg[24..32].copy_from_slice(&sysid.to_le_bytes());
        seg
    }

    #[test]
    fn round_trips_compressed_and_plain() {
        let seg = fake_segment(7_300_000_000_000_000_001);
        for level in [0, 1, 3] {
            let framed = encode(&seg, 42, Some((5, 9)), level).unwrap();
            let (h, raw) = decode(&framed).unwrap();
            assert_eq!(raw, seg);
            assert_eq!(
                (h.system_identifier, h.compressed, h.commits),
                (42, level > 0, Some((5, 9)))
            );
        }
        assert!(
            encode(&seg, 1, None, 1).unwrap().len() < seg.len() / 10,
            "zeros compress"
        );
    }

    #[test]
    fn detects_corruption() {
        let mut framed = encode(&fake_segment(1), 1, None, 0).unwrap();
        let last = framed.len() - 1;
        framed[last] ^= 0xFF;
        assert_eq!(
            decode(&framed).unwrap_err(),
            FrameError::Corrupt("SHA-256 mismatch".into())
        );
        let mut framed = encode(&fake_segment(1), 1, None, 1).unwrap();
        framed.truncate(framed.len() - 5);
        assert!(matches!(decode(&framed), Err(FrameError::Corrupt(_))));
        assert_eq!(decode(b"PGDMP...").unwrap_err(), FrameError::NotAFrame);
    }

    #[test]
    fn reads_the_system_identifier_of_a_segment() {
        assert_eq!(segment_system_identifier(&fake_segment(99)), Some(99));
        let mut short = fake_segment(99);
        short[2] = 0;
        assert_eq!(segment_system_identifier(&short), None, "no long header");
    }
}
