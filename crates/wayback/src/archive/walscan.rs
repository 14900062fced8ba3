//! Finds the commit times in a WAL segment, so the archive knows its last *commit* and not
//! just its last segment (an idle instance's switched segments hold no commit).
//!
//! A deliberately small reader of PostgreSQL 15's WAL format: it walks the records of one
//! segment, skipping page headers (a long 40-byte one on the segment's first page, 24 bytes
//! elsewhere) and the tail of a record continued from the previous segment, and reads the
//! `xact_time` of transaction commit records (`RM_XACT_ID`, `XLOG_XACT_COMMIT` or
//! `XLOG_XACT_COMMIT_PREPARED`), which is the first field of their main data. It stops at the
//! first zero length (unused space), at a switch record, or at a record running past the
//! segment's end (a commit split across segments is then not seen: the window may end one
//! commit early, never late). CRCs are not checked: PostgreSQL archived the segment complete.

const PAGE: usize = 8192;
const SHORT_HEADER: usize = 24;
const LONG_HEADER: usize = 40;
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
const XLP_LONG_HEADER: u16 = 0x0002;
const RECORD_HEADER: usize = 24;
const RM_XLOG_ID: u8 = 0;
const RM_XACT_ID: u8 = 1;
const XLOG_SWITCH: u8 = 0x40;
const XLOG_XACT_OPMASK: u8 = 0x70;
const XLOG_XACT_COMMIT: u8 = 0x00;
const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
/// Microseconds between 1970-01-01 and PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

fn maxalign(n: usize) -> usize {
    (n + 7) & !7
}

/// Reads bytes of the record stream at absolute segment offsets, hopping over page headers.
struct Stream<'a> {
    seg: &'a [u8],
}

impl Stream<'_> {
    fn page_header_len(&self, page_start: usize) -> usize {
        let info = u16::from_le_bytes([self.seg[page_start + 2], self.seg[page_start + 3]]);
        if info & XLP_LONG_HEADER != 0 {
            LONG_HEADER
        } else {
            SHORT_HEADER
        }
    }

    /// Copies `len` stream bytes starting at `pos` into `out`; returns the position after them,
    /// or None when the segment ends first.
    fn read(&self, mut pos: usize, mut len: usize, out: &mut Vec<u8>) -> Option<usize> {
        while len > 0 {
            let page_start = pos / PAGE * PAGE;
            if pos == page_start {
                if page_start >= self.seg.len() {
                    return None;
                }
                pos += self.page_header_len(page_start);
                continue;
            }
            let page_end = (page_start + PAGE).min(self.seg.len());
            if pos >= page_end {
                return None;
            }
            let take = len.min(page_end - pos);
            out.extend_from_slice(&self.seg[pos..pos + take]);
            pos += take;
            len -= take;
        }
        Some(pos)
    }

    /// Moves to where the next record may start: aligned, and past a page header.
    fn align(&self, pos: usize) -> usize {
        let pos = maxalign(pos);
        if pos % PAGE == 0 && pos < self.seg.len() {
            pos + self.page_header_len(pos)
        } else {
            pos
        }
    }
}

/// The commit time (Unix µs) of a commit record's bytes, if it is one.
fn commit_time(record: &[u8]) -> Option<i64> {
    let rmid = record[17];
    let info = record[16];
    let op = info & XLOG_XACT_OPMASK;
    if rmid != RM_XACT_ID || !(op == XLOG_XACT_COMMIT || op == XLOG_XACT_COMMIT_PREPARED) {
        return None;
    }
    // Headers after the fixed part: origin (253, +2), top-level xid (252, +4), main data
    // short (255, 1-byte length) or long (254, 4-byte length). Commits carry no block refs.
    let mut p = RECORD_HEADER;
    loop {
        let id = *record.get(p)?;
        p += 1;
        match id {
            255 => {
                p += 1;
                break;
            }
            254 => {
                p += 4;
                break;
            }
            253 => p += 2,
            252 => p += 4,
            _ => return None,
        }
    }
    let ts = i64::from_le_bytes(record.get(p..p + 8)?.try_into().ok()?);
    Some(ts + PG_EPOCH_UNIX_MICROS)
}

/// First and last commit time (Unix µs) in a segment, or None when it holds no commit.
pub fn commit_times(segment: &[u8]) -> Option<(i64, i64)> {
    if segment.len() < PAGE || segment.len() % PAGE != 0 {
        return None;
    }
    let s = Stream { seg: segment };
    let info = u16::from_le_bytes([segment[2], segment[3]]);
    let mut pos = s.page_header_len(0);
    if info & XLP_FIRST_IS_CONTRECORD != 0 {
        // Skip the tail of a record begun in the previous segment (it may span pages).
        let rem = u32::from_le_bytes(segment[16..20].try_into().ok()?) as usize;
        let mut sink = Vec::new();
        pos = s.read(pos, rem, &mut sink)?;
    }
    let (mut first, mut last) = (None, None);
    let mut record = Vec::new();
    loop {
        pos = s.align(pos);
        record.clear();
        let Some(after_len) = s.read(pos, 4, &mut record) else {
            break;
        };
        let total = u32::from_le_bytes(record[..4].try_into().ok()?) as usize;
        if total < RECORD_HEADER {
            break;
        }
        let Some(end) = s.read(after_len, total - 4, &mut record) else {
            break;
        };
        if record[17] == RM_XLOG_ID && record[16] & 0xF0 == XLOG_SWITCH {
            break;
        }
        if let Some(t) = commit_time(&record) {
            first.get_or_insert(t);
            last = Some(t);
        }
        pos = end;
    }
    Some((first?, last?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a segment of `pages` pages holding the given records, as PostgreSQL lays them out.
    fn segment_with(records: &[Vec<u8>], pages: usize) -> Vec<u8> {
        let mut seg = vec![0u8; pages * PAGE];
        for p in 0..pages {
            let start = p * PAGE;
            seg[start..start + 2].copy_from_slice(&0xD110u16.to_le_bytes());
            let info = if p == 0 { XLP_LONG_HEADER } else { 0 };
            seg[start + 2..start + 4].copy_from_slice(&info.to_le_bytes());
        }
        let mut stream: Vec<u8> = Vec::new();
        for r in records {
            stream.extend_from_slice(r);
            while stream.len() % 8 != 0 {
                stream.push(0);
            }
        }
        // Lay the stream out over the pages.
        let mut pos = LONG_HEADER;
        for b in stream {
            if pos % PAGE == 0 {
                pos += SHORT_HEADER;
            }
            seg[pos] = b;
            pos += 1;
        }
        seg
    }

    fn record(rmid: u8, info: u8, main: &[u8]) -> Vec<u8> {
        let mut r = vec![0u8; RECORD_HEADER];
        r[16] = info;
        r[17] = rmid;
        if main.len() < 256 {
            r.push(255);
            r.push(main.len() as u8);
        } else {
            r.push(254);
            r.extend_from_slice(&(main.len() as u32).to_le_bytes());
        }
        r.extend_from_slice(main);
        let len = r.len() as u32;
        r[..4].copy_from_slice(&len.to_le_bytes());
        r
    }

    fn commit(pg_ts: i64) -> Vec<u8> {
        let mut main = pg_ts.to_le_bytes().to_vec();
        main.extend_from_slice(&[0; 4]);
        record(RM_XACT_ID, XLOG_XACT_COMMIT, &main)
    }

    #[test]
    fn finds_first_and_last_commit_across_pages() {
        let filler = record(10, 0, &vec![7u8; 9000]); // a heap record spanning a page boundary
        let seg = segment_with(
            &[
                commit(1_000),
                filler.clone(),
                commit(2_000),
                filler,
                commit(3_000),
            ],
            4,
        );
        assert_eq!(
            commit_times(&seg),
            Some((1_000 + PG_EPOCH_UNIX_MICROS, 3_000 + PG_EPOCH_UNIX_MICROS))
        );
    }

    #[test]
    fn no_commit_and_switch_records() {
        let seg = segment_with(&[record(10, 0, &[1, 2, 3])], 2);
        assert_eq!(commit_times(&seg), None);
        let seg = segment_with(
            &[commit(5), record(RM_XLOG_ID, XLOG_SWITCH, &[]), commit(9)],
            2,
        );
        assert_eq!(
            commit_times(&seg),
            Some((5 + PG_EPOCH_UNIX_MICROS, 5 + PG_EPOCH_UNIX_MICROS)),
            "nothing after a switch"
        );
        let aborted = record(RM_XACT_ID, 0x20, &[0; 12]);
        assert_eq!(
            commit_times(&segment_with(&[aborted], 1)),
            None,
            "aborts are not commits"
        );
        assert_eq!(commit_times(&[0u8; 100]), None, "not a segment");
    }
}
