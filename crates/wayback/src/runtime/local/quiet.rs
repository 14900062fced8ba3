//! Answers about a quiet cluster without connecting to it (issue 17 point 0: supervision at the
//! floor). The supervisor asks every running cluster, every few seconds, for its archiver's
//! statistics, to complete its WAL segment and for its WAL position; each answer used to cost a
//! new SCRAM-authenticated session. For an idle cluster every one of those answers is the one it
//! gave last time, and the files PostgreSQL writes say so: any WAL written changes the
//! modification time of a file in `pg_wal/` (the segment written, or the directory when a
//! segment is created, recycled or removed), and any archiving changes `pg_wal/archive_status/`
//! (`.ready` renamed to `.done`, `.done` removed at a checkpoint).
//!
//! A [`Mark`] is that evidence: the postmaster's pid and the newest of those modification
//! times. The rules, each kept below:
//!
//! 1. A mark is taken *before* the query it vouches for, and kept with its answer. Whatever the
//!    query itself writes (the switch record of `pg_switch_wal()`) changes the files, so the
//!    next call queries once more; that query writes nothing and its mark holds from then on.
//! 2. A mark counts only when *settled*: its newest time is [`SETTLE`] older than now. The
//!    kernel stamps files with a coarse clock (a few milliseconds behind), and statistics of
//!    WAL a backend wrote reach `pg_stat_wal` up to a second after the WAL: an unsettled mark
//!    could miss a write made just after it was taken, so it is never kept.
//! 3. An answer is reused only while the current mark equals the kept one — same postmaster,
//!    nothing in `pg_wal/` or `archive_status/` modified since. Archiver statistics are kept
//!    only when no segment waits (`.ready`): a failing `archive_command` retries a waiting
//!    segment without touching any file, and its failures must reach the metrics.
//! 4. Anything else (no postmaster, an unreadable directory, an error in between) asks the
//!    server, as before. A kept answer is dropped with its cluster ([`Quiet::forget`]).
//!
//! Must not import `osb`, `broker`, `store` or `jobs`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::archive::layout::parse_lsn;
use crate::domain::InstanceId;
use crate::pg::wal_records;
use crate::runtime::{ArchiverStats, WalPosition};

/// How long the newest file time must lie in the past before a mark counts (rule 2).
pub(super) const SETTLE: Duration = Duration::from_secs(5);

/// What the files of a running cluster say about its WAL at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Mark {
    postmaster: i32,
    newest: SystemTime,
    /// Whether any segment waits in `archive_status/` (`*.ready`).
    waiting: bool,
}

impl Mark {
    /// The mark of `pgdata` run by `postmaster`, if settled at `now` (rule 2); None when it is
    /// not or a directory cannot be read (rule 4).
    pub(super) fn settled(pgdata: &Path, postmaster: i32, now: SystemTime) -> Option<Mark> {
        let wal = pgdata.join("pg_wal");
        let status = wal.join("archive_status");
        let mut newest = modified(&wal)?.max(modified(&status)?);
        for entry in std::fs::read_dir(&wal).ok()? {
            let meta = entry.ok()?.metadata().ok()?;
            newest = newest.max(meta.modified().ok()?);
        }
        let mut waiting = false;
        for entry in std::fs::read_dir(&status).ok()? {
            waiting |= entry
                .ok()?
                .file_name()
                .to_string_lossy()
                .ends_with(".ready");
        }
        let settled = now.duration_since(newest).is_ok_and(|age| age >= SETTLE);
        settled.then_some(Mark {
            postmaster,
            newest,
            waiting,
        })
    }
}

impl super::LocalRuntime {
    /// The settled mark of the running cluster of `id`, if any (rules 2 and 4).
    pub(super) fn quiet_mark(&self, id: &InstanceId) -> Option<Mark> {
        let pgdata = self.layout.dirs(id).pgdata;
        let pm = crate::pg::ctl::live_postmaster(&pgdata).ok()??;
        Mark::settled(&pgdata, pm.pid, SystemTime::now())
    }

    /// Whether the WAL of `id` after its last switch (`last`, what `pg_switch_wal()` returned:
    /// the end of its switch record, or a segment start when there was nothing to switch) up to
    /// `to` (its flushed end) is only PostgreSQL's housekeeping ([`crate::pg::wal_records`]),
    /// read from the first page of the segment after the switch.
    pub(super) fn housekeeping_since(&self, id: &InstanceId, last: &str, to: &str) -> bool {
        use std::io::Read;
        let (Some(last), Some(to)) = (parse_lsn(last), parse_lsn(to)) else {
            return false;
        };
        let from = last.div_ceil(SEGMENT_SIZE) * SEGMENT_SIZE;
        // `TTTTTTTTXXXXXXXXYYYYYYYY`: any timeline; the newest holds the current WAL.
        let suffix = format!(
            "{:08X}{:08X}",
            from >> 32,
            (from & 0xFFFF_FFFF) / SEGMENT_SIZE
        );
        let wal = self.layout.dirs(id).pgdata.join("pg_wal");
        let Some(name) = std::fs::read_dir(&wal)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.len() == 24 && n.ends_with(&suffix))
            .max()
        else {
            return false;
        };
        let mut page = Vec::with_capacity(wal_records::PAGE);
        let read = std::fs::File::open(wal.join(name))
            .and_then(|f| f.take(wal_records::PAGE as u64).read_to_end(&mut page));
        read.is_ok() && wal_records::only_housekeeping(&page, from, SEGMENT_SIZE, to)
    }
}

/// The WAL segment size of clusters Wayback makes (initdb's default); the segment's own page
/// header is checked against it, and a cluster with another size is simply switched.
const SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).ok()?.modified().ok()
}

/// The answers kept per instance, each with the mark taken before it was asked.
#[derive(Default)]
pub(super) struct Quiet {
    kept: Mutex<HashMap<InstanceId, Kept>>,
}

#[derive(Default)]
struct Kept {
    /// The last switch's LSN, with the mark taken before it when that was settled.
    switched: Option<(Option<Mark>, String)>,
    archiver: Option<(Mark, ArchiverStats)>,
    position: Option<(Mark, WalPosition)>,
}

/// Which kept answer.
pub(super) enum Answer {
    Switched,
    Archiver,
    Position,
}

impl Quiet {
    fn with<T>(&self, id: &InstanceId, f: impl FnOnce(&mut Kept) -> T) -> T {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        f(kept.entry(id.clone()).or_default())
    }

    /// The LSN the last `pg_switch_wal()` returned if nothing was written since (rule 3): a
    /// switch now would write nothing.
    pub(super) fn switched(&self, id: &InstanceId, now: &Mark) -> Option<String> {
        self.with(id, |k| match &k.switched {
            Some((Some(m), lsn)) if m == now => Some(lsn.clone()),
            _ => None,
        })
    }

    /// The LSN the last switch of `id` left the WAL at, whatever was written since.
    pub(super) fn last_switch(&self, id: &InstanceId) -> Option<String> {
        self.with(id, |k| k.switched.as_ref().map(|(_, lsn)| lsn.clone()))
    }

    pub(super) fn archiver(&self, id: &InstanceId, now: &Mark) -> Option<ArchiverStats> {
        self.with(id, |k| match &k.archiver {
            Some((m, stats)) if m == now => Some(stats.clone()),
            _ => None,
        })
    }

    pub(super) fn position(&self, id: &InstanceId, now: &Mark) -> Option<WalPosition> {
        self.with(id, |k| match &k.position {
            Some((m, p)) if m == now => Some(*p),
            _ => None,
        })
    }

    pub(super) fn keep_switched(&self, id: &InstanceId, before: Option<Mark>, lsn: &str) {
        self.with(id, |k| k.switched = Some((before, lsn.to_string())));
    }

    pub(super) fn keep_archiver(&self, id: &InstanceId, before: Option<Mark>, s: &ArchiverStats) {
        // Rule 3: with a segment waiting, failures can grow without any file changing.
        let before = before.filter(|m| !m.waiting && s.ready_segments == 0);
        self.with(id, |k| k.archiver = before.map(|m| (m, s.clone())));
    }

    pub(super) fn keep_position(&self, id: &InstanceId, before: Option<Mark>, p: WalPosition) {
        self.with(id, |k| k.position = before.map(|m| (m, p)));
    }

    /// Drops one kept answer (the query it vouches for failed: rule 4).
    pub(super) fn drop_answer(&self, id: &InstanceId, which: Answer) {
        self.with(id, |k| match which {
            Answer::Switched => k.switched = None,
            Answer::Archiver => k.archiver = None,
            Answer::Position => k.position = None,
        });
    }

    /// Drops everything kept of `id` (its cluster is destroyed, restored or replaced).
    pub(super) fn forget(&self, id: &InstanceId) {
        self.kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pgdata() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("pg_wal/archive_status")).unwrap();
        std::fs::write(dir.path().join("pg_wal/000000010000000000000001"), b"x").unwrap();
        dir
    }

    fn later(by: u64) -> SystemTime {
        SystemTime::now() + Duration::from_secs(by)
    }

    #[test]
    fn a_fresh_write_is_not_settled() {
        let dir = pgdata();
        assert_eq!(Mark::settled(dir.path(), 7, SystemTime::now()), None);
        assert!(Mark::settled(dir.path(), 7, later(10)).is_some());
    }

    #[test]
    fn a_write_to_a_segment_changes_the_mark() {
        let dir = pgdata();
        let before = Mark::settled(dir.path(), 7, later(10)).unwrap();
        let seg = dir.path().join("pg_wal/000000010000000000000001");
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_modified(later(1)).unwrap();
        assert_ne!(Mark::settled(dir.path(), 7, later(10)), Some(before));
    }

    #[test]
    fn a_new_postmaster_or_a_waiting_segment_changes_the_mark() {
        let dir = pgdata();
        let at = later(10);
        let before = Mark::settled(dir.path(), 7, at).unwrap();
        assert_ne!(Mark::settled(dir.path(), 8, at), Some(before));
        let ready = dir
            .path()
            .join("pg_wal/archive_status/000000010000000000000001.ready");
        std::fs::write(&ready, b"").unwrap();
        let waiting = Mark::settled(dir.path(), 7, later(20)).unwrap();
        assert!(waiting.waiting);
    }

    #[test]
    fn answers_are_reused_only_under_the_same_mark() {
        let dir = pgdata();
        let id = InstanceId::parse("5c3f6c5e-0000-4000-8000-000000000001").unwrap();
        let quiet = Quiet::default();
        let m = Mark::settled(dir.path(), 7, later(10)).unwrap();
        quiet.keep_switched(&id, Some(m), "0/3000000");
        assert_eq!(quiet.switched(&id, &m).as_deref(), Some("0/3000000"));
        let other = Mark { postmaster: 8, ..m };
        assert_eq!(quiet.switched(&id, &other), None);
        // Unsettled before the query: nothing kept.
        quiet.keep_switched(&id, None, "0/4000000");
        assert_eq!(quiet.switched(&id, &m), None);
        assert_eq!(quiet.last_switch(&id).as_deref(), Some("0/4000000"));
        // Archiver statistics with a waiting segment are never kept.
        let stats = ArchiverStats {
            ready_segments: 1,
            ..Default::default()
        };
        quiet.keep_archiver(&id, Some(m), &stats);
        assert_eq!(quiet.archiver(&id, &m), None);
        quiet.keep_archiver(&id, Some(m), &ArchiverStats::default());
        assert!(quiet.archiver(&id, &m).is_some());
        quiet.forget(&id);
        assert!(quiet.archiver(&id, &m).is_none());
    }
}
