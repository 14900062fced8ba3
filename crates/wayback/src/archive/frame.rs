//! The format of every archived WAL file: a small self-describing header, then the payload.
//!
//! ```text
//! 0   4  magic "WBK1"
//! 4   1  flags (bit 0: payload is zstd-compressed; bit 1: payload is encrypted)
//! 5   3  reserved, zero
//! 8   8  length of the original file (u64 LE)
//! 16 32  SHA-256 of the original file, or when encrypted its keyed hash (see below)
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
//!
//! **Encrypted frames** (flag bit 1; an instance whose archive has a data key, see
//! [`super::keydoc`]): the header stays readable — the restore window and planning read headers
//! only, and none of it is the tenant's data — but the digest field holds HMAC-SHA256 of the
//! original under a key derived from the data key ([`ArchiveCipher::keyed_hash`]), since a plain
//! SHA-256 would confirm a guess of the content. The payload (compressed first, as before) is
//! sealed with AES-256-GCM: `nonce (12, random) | ciphertext | tag (16)`, the associated data
//! being the 72 header bytes followed by the file's WAL name, so that an altered header or a
//! frame moved to another name fails to open; a frame moved to another instance fails too,
//! every instance having its own data key. Frames without the flag (everything archived before
//! encryption, and instances with `archive.encrypt` off) decode exactly as before.

use sha2::{Digest, Sha256};

use crate::crypto::archive_cipher::ArchiveCipher;

pub const MAGIC: &[u8; 4] = b"WBK1";
pub const HEADER_LEN: usize = 72;
const FLAG_ZSTD: u8 = 1;
const FLAG_ENCRYPTED: u8 = 2;

/// How a frame is encrypted: the instance's cipher and the file's WAL name (bound as
/// associated data).
#[derive(Debug, Clone, Copy)]
pub struct Sealing<'a> {
    pub cipher: &'a ArchiveCipher,
    pub name: &'a str,
}

fn aad(header: &[u8], name: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(HEADER_LEN + name.len());
    aad.extend_from_slice(&header[..HEADER_LEN]);
    aad.extend_from_slice(name.as_bytes());
    aad
}

/// What the header says about a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameHeader {
    pub compressed: bool,
    /// The payload is encrypted, and `sha256` is the keyed hash of the original.
    pub encrypted: bool,
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
    #[error("the archived file is encrypted and no data key was given to open it")]
    NeedsKey,
    #[error("the encrypted archived file does not open with this instance's data key (wrong key, or the file was altered or moved)")]
    Unauthentic,
}

/// Hashes a file's original content.
pub fn sha256(raw: &[u8]) -> [u8; 32] {
    Sha256::digest(raw).into()
}

/// The digest a header records for `raw`: its SHA-256, or with a cipher its keyed hash.
pub fn content_digest(raw: &[u8], cipher: Option<&ArchiveCipher>) -> [u8; 32] {
    match cipher {
        Some(c) => c.keyed_hash(raw),
        None => sha256(raw),
    }
}

/// Frames `raw` in clear, compressing it with zstd at `level` (0 disables compression).
pub fn encode(
    raw: &[u8],
    system_identifier: u64,
    commits: Option<(i64, i64)>,
    level: i32,
) -> std::io::Result<Vec<u8>> {
    encode_with(raw, system_identifier, commits, level, None)
}

/// Frames `raw`, compressed at `level` and, with `sealing`, encrypted.
pub fn encode_with(
    raw: &[u8],
    system_identifier: u64,
    commits: Option<(i64, i64)>,
    level: i32,
    sealing: Option<Sealing<'_>>,
) -> std::io::Result<Vec<u8>> {
    let payload = if level > 0 {
        zstd::bulk::compress(raw, level)?
    } else {
        raw.to_vec()
    };
    let mut flags = if level > 0 { FLAG_ZSTD } else { 0 };
    if sealing.is_some() {
        flags |= FLAG_ENCRYPTED;
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + 28);
    out.extend_from_slice(MAGIC);
    out.push(flags);
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&(raw.len() as u64).to_le_bytes());
    out.extend_from_slice(&content_digest(raw, sealing.map(|s| s.cipher)));
    out.extend_from_slice(&system_identifier.to_le_bytes());
    let (first, last) = commits.unwrap_or((0, 0));
    out.extend_from_slice(&first.to_le_bytes());
    out.extend_from_slice(&last.to_le_bytes());
    match sealing {
        Some(s) => {
            let sealed = s.cipher.seal(&payload, &aad(&out, s.name));
            out.extend_from_slice(&sealed);
        }
        None => out.extend_from_slice(&payload),
    }
    Ok(out)
}

/// Reads the header alone.
pub fn header(bytes: &[u8]) -> Result<FrameHeader, FrameError> {
    if bytes.len() < HEADER_LEN || &bytes[..4] != MAGIC {
        return Err(FrameError::NotAFrame);
    }
    let flags = bytes[4];
    if flags & !(FLAG_ZSTD | FLAG_ENCRYPTED) != 0 {
        return Err(FrameError::Corrupt(format!("unknown flags {flags:#x}")));
    }
    Ok(FrameHeader {
        compressed: flags & FLAG_ZSTD != 0,
        encrypted: flags & FLAG_ENCRYPTED != 0,
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

/// Unframes and verifies a frame in clear (an encrypted one is [`FrameError::NeedsKey`]).
pub fn decode(bytes: &[u8]) -> Result<(FrameHeader, Vec<u8>), FrameError> {
    decode_with(bytes, None)
}

/// Unframes and verifies: the original content, whose length and digest match the header. An
/// encrypted frame needs `sealing` (the name it was archived under); a clear one ignores it.
pub fn decode_with(
    bytes: &[u8],
    sealing: Option<Sealing<'_>>,
) -> Result<(FrameHeader, Vec<u8>), FrameError> {
    let h = header(bytes)?;
    let opened;
    let payload = if h.encrypted {
        let s = sealing.ok_or(FrameError::NeedsKey)?;
        opened = s
            .cipher
            .open(&bytes[HEADER_LEN..], &aad(bytes, s.name))
            .map_err(|_| FrameError::Unauthentic)?;
        &opened[..]
    } else {
        &bytes[HEADER_LEN..]
    };
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
    let cipher = if h.encrypted {
        sealing.map(|s| s.cipher)
    } else {
        None
    };
    if content_digest(&raw, cipher) != h.sha256 {
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

    fn marked_segment() -> Vec<u8> {
        let mut seg = fake_segment(42);
        seg[4000..4018].copy_from_slice(b"MARKER-tenant-row1");
        seg
    }

    const NAME: &str = "000000010000000000000003";

    #[test]
    fn encrypted_frames_round_trip_and_show_no_plaintext() {
        let cipher = ArchiveCipher::new(&crate::crypto::DataKey::generate());
        let sealing = Sealing {
            cipher: &cipher,
            name: NAME,
        };
        let seg = marked_segment();
        for level in [0, 3] {
            let framed = encode_with(&seg, 42, Some((5, 9)), level, Some(sealing)).unwrap();
            assert!(!framed.windows(6).any(|w| w == b"MARKER"), "level {level}");
            let h = header(&framed).unwrap();
            assert!(h.encrypted);
            assert_eq!((h.system_identifier, h.commits), (42, Some((5, 9))));
            assert_ne!(h.sha256, sha256(&seg), "no plain digest to confirm guesses");
            assert_eq!(h.sha256, cipher.keyed_hash(&seg));
            let (h2, raw) = decode_with(&framed, Some(sealing)).unwrap();
            assert_eq!((h2, raw), (h, seg.clone()));
            assert_eq!(decode(&framed).unwrap_err(), FrameError::NeedsKey);
        }
    }

    #[test]
    fn an_encrypted_frame_tampered_moved_or_opened_with_another_key_fails() {
        let cipher = ArchiveCipher::new(&crate::crypto::DataKey::generate());
        let sealing = Sealing {
            cipher: &cipher,
            name: NAME,
        };
        let framed = encode_with(&marked_segment(), 42, Some((5, 9)), 1, Some(sealing)).unwrap();
        let moved = Sealing {
            cipher: &cipher,
            name: "000000010000000000000004",
        };
        assert_eq!(
            decode_with(&framed, Some(moved)).unwrap_err(),
            FrameError::Unauthentic
        );
        let other = ArchiveCipher::new(&crate::crypto::DataKey::generate());
        let wrong = Sealing {
            cipher: &other,
            name: NAME,
        };
        assert_eq!(
            decode_with(&framed, Some(wrong)).unwrap_err(),
            FrameError::Unauthentic
        );
        // The readable header is authenticated: a commit time altered does not open.
        let mut altered = framed.clone();
        altered[60] ^= 1;
        assert_eq!(
            decode_with(&altered, Some(sealing)).unwrap_err(),
            FrameError::Unauthentic
        );
        let mut altered = framed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert_eq!(
            decode_with(&altered, Some(sealing)).unwrap_err(),
            FrameError::Unauthentic
        );
    }

    #[test]
    fn clear_frames_decode_as_before_with_or_without_a_key() {
        let seg = marked_segment();
        let framed = encode(&seg, 42, None, 1).unwrap();
        assert_eq!(framed[4], 1, "old flag byte: zstd only");
        let cipher = ArchiveCipher::new(&crate::crypto::DataKey::generate());
        let sealing = Sealing {
            cipher: &cipher,
            name: NAME,
        };
        let (h, raw) = decode_with(&framed, Some(sealing)).unwrap();
        assert!(!h.encrypted);
        assert_eq!(h.sha256, sha256(&seg));
        assert_eq!(raw, seg);
        assert_eq!(decode(&framed).unwrap().1, seg);
    }

    #[test]
    fn reads_the_system_identifier_of_a_segment() {
        assert_eq!(segment_system_identifier(&fake_segment(99)), Some(99));
        let mut short = fake_segment(99);
        short[2] = 0;
        assert_eq!(segment_system_identifier(&short), None, "no long header");
    }
}
