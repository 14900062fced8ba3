//! Reading the record headers at the start of a WAL segment: is what a cluster wrote since its
//! last segment switch only PostgreSQL's own housekeeping?
//!
//! Why: a `pg_switch_wal()` counts as "important" WAL, and after important WAL the background
//! writer logs a standby snapshot (`RUNNING_XACTS`) within 15 s and the checkpointer a checkpoint
//! within `checkpoint_timeout`. A supervisor that switched whenever *anything* was written since
//! its last switch kept every idle cluster in a loop: switch → snapshot → switch → …, one
//! archived segment and one session per archive interval, forever (PostgreSQL's own
//! `archive_timeout` avoids it by switching "unimportantly", which SQL cannot). Those records
//! carry nothing a restore needs sooner: they reach the archive with the next real WAL.
//!
//! The format (PostgreSQL 12–17, `access/xlog_internal.h`, `access/xlogrecord.h`): a segment
//! starts with a long page header of 40 bytes (`xlp_pageaddr` at 8, `xlp_seg_size` at 32); each
//! record starts with a 24-byte header (`xl_tot_len` at 0, `xl_info` at 16, `xl_rmid` at 17)
//! and the next one starts at the 8-byte alignment of its end. Only records within the first
//! 8 KiB page are read: anything longer is not housekeeping. Anything unexpected answers
//! "not only housekeeping", and the caller switches as it always did. Imports nothing.

/// The long page header at the start of every segment.
const LONG_PAGE_HEADER: u64 = 40;
/// The WAL page size (`XLOG_BLCKSZ`) of every PostgreSQL built with defaults.
pub const PAGE: usize = 8192;
const RECORD_HEADER: usize = 24;

/// `RM_XLOG_ID` / `XLOG_CHECKPOINT_ONLINE` and `RM_STANDBY_ID` / `XLOG_RUNNING_XACTS`.
const HOUSEKEEPING: [(u8, u8); 2] = [(0, 0x10), (8, 0x10)];

/// True when the WAL from `segment_start` (a segment boundary, where the last switch left it)
/// up to `end` (the flushed position) in `first_page` (the first bytes of that segment's file)
/// holds only housekeeping records (see the module doc); false for anything else, including
/// nothing to read (`end` at the boundary: nothing was written, the caller needs no answer) or a
/// file that is not that segment (its page header names another address or segment size).
pub fn only_housekeeping(
    first_page: &[u8],
    segment_start: u64,
    segment_size: u64,
    end: u64,
) -> bool {
    let page = &first_page[..first_page.len().min(PAGE)];
    if page.len() < LONG_PAGE_HEADER as usize
        || segment_start % segment_size != 0
        || u64_at(page, 8) != Some(segment_start)
        || u32_at(page, 32).map(u64::from) != Some(segment_size)
        || end <= segment_start + LONG_PAGE_HEADER
    {
        return false;
    }
    let Some(end) = usize::try_from(end - segment_start)
        .ok()
        .filter(|e| *e <= page.len())
    else {
        return false;
    };
    let mut at = LONG_PAGE_HEADER as usize;
    while at < end {
        let Some(len) = u32_at(page, at).map(|l| l as usize) else {
            return false;
        };
        if len < RECORD_HEADER || at + RECORD_HEADER > page.len() {
            return false;
        }
        let (info, rmid) = (page[at + 16] & 0xF0, page[at + 17]);
        if !HOUSEKEEPING.contains(&(rmid, info)) {
            return false;
        }
        at = (at + len).div_ceil(8) * 8;
    }
    at == end
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 * 1024 * 1024;
    const START: u64 = 0x0300_0000;

    /// A first page of the segment at START with records of (length, rmid, info).
    fn page(records: &[(u32, u8, u8)]) -> (Vec<u8>, u64) {
        let mut p = vec![0u8; PAGE];
        p[8..16].copy_from_slice(&START.to_le_bytes());
        p[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
        let mut at = 40usize;
        for &(len, rmid, info) in records {
            p[at..at + 4].copy_from_slice(&len.to_le_bytes());
            p[at + 16] = info;
            p[at + 17] = rmid;
            at = (at + len as usize).div_ceil(8) * 8;
        }
        (p, START + at as u64)
    }

    #[test]
    fn a_standby_snapshot_alone_is_housekeeping() {
        // What PostgreSQL 15 wrote here after a switch on an idle cluster: 0/3000060.
        let (p, end) = page(&[(50, 8, 0x10)]);
        assert_eq!(end, START + 0x60);
        assert!(only_housekeeping(&p, START, SEG, end));
    }

    #[test]
    fn a_checkpoint_with_its_snapshot_is_housekeeping() {
        let (p, end) = page(&[(50, 8, 0x10), (114, 0, 0x10), (50, 8, 0x10)]);
        assert!(only_housekeeping(&p, START, SEG, end));
    }

    #[test]
    fn a_commit_or_a_heap_insert_is_not() {
        for other in [(34, 1, 0x00), (59, 10, 0x00), (24, 0, 0x40), (50, 8, 0x00)] {
            let (p, end) = page(&[(50, 8, 0x10), other]);
            assert!(!only_housekeeping(&p, START, SEG, end), "{other:?}");
        }
    }

    #[test]
    fn anything_unexpected_is_not() {
        let (p, end) = page(&[(50, 8, 0x10)]);
        assert!(!only_housekeeping(&p, START, SEG, START), "nothing written");
        assert!(
            !only_housekeeping(&p, START, SEG, START + 40),
            "nothing written"
        );
        assert!(
            !only_housekeeping(&p, START, SEG, end + 8),
            "the end is not a record's end"
        );
        assert!(
            !only_housekeeping(&p, START, SEG, end - 8),
            "the end is inside a record"
        );
        assert!(
            !only_housekeeping(&p, START + SEG, SEG, end + SEG),
            "another segment's file"
        );
        assert!(
            !only_housekeeping(&p, START, SEG * 4, end),
            "another segment size"
        );
        assert!(
            !only_housekeeping(&p[..30], START, SEG, end),
            "a short file"
        );
        assert!(
            !only_housekeeping(&p, START, SEG, START + PAGE as u64 + 8),
            "past the page"
        );
        let (zero, _) = page(&[(0, 8, 0x10)]);
        assert!(!only_housekeeping(&zero, START, SEG, end), "a zero length");
    }
}
