//! What a base backup learns from its own tar stream, as it passes: the `backup_label` (start
//! LSN, timeline, time) and `global/pg_control` (the system identifier of the cluster the bytes
//! really come from), plus the parsing of the backup history file (`….backup`) that PostgreSQL
//! archives when a backup stops (stop LSN and time).
//!
//! The scanner reads tar headers (512-byte blocks, POSIX ustar as PostgreSQL writes them) without
//! holding more than one header and the few small members it wants; it never sees the stream as
//! a whole. Pure code, unit-tested; imports nothing but `layout`.

use chrono::{DateTime, NaiveDateTime, Utc};

use super::layout::parse_lsn;

const BLOCK: usize = 512;
/// Members we keep are small (backup_label < 1 KiB, pg_control 8 KiB); anything larger under
/// those names is not what we think it is.
const MAX_KEPT: u64 = 64 * 1024;
pub const LABEL: &str = "backup_label";
pub const CONTROL: &str = "global/pg_control";

/// Incremental tar reader that keeps the contents of [`LABEL`] and [`CONTROL`].
#[derive(Debug, Default)]
pub struct TarScanner {
    header: Vec<u8>,
    /// Bytes of the current member's data (plus padding) still to pass.
    remaining: u64,
    /// The current member's data length and name, when we keep it.
    keeping: Option<(String, u64)>,
    kept_buf: Vec<u8>,
    pub label: Option<Vec<u8>>,
    pub control: Option<Vec<u8>>,
    /// Set at the end-of-archive marker (a zero block) or on a header we cannot read.
    ended: bool,
    pub error: Option<String>,
}

fn octal(field: &[u8]) -> Option<u64> {
    // GNU base-256 for sizes ≥ 8 GiB: PostgreSQL writes it for big files.
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            v = v.checked_mul(256)? + u64::from(*b);
        }
        return Some(v);
    }
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

impl TarScanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes of the stream.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.ended {
            if self.remaining > 0 {
                let n = (self.remaining.min(data.len() as u64)) as usize;
                if let Some((_, len)) = &self.keeping {
                    let want = (*len as usize).saturating_sub(self.kept_buf.len());
                    self.kept_buf.extend_from_slice(&data[..n.min(want)]);
                }
                self.remaining -= n as u64;
                data = &data[n..];
                if self.remaining == 0 {
                    self.finish_member();
                }
                continue;
            }
            let n = (BLOCK - self.header.len()).min(data.len());
            self.header.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.header.len() == BLOCK {
                let header = std::mem::take(&mut self.header);
                self.start_member(&header);
            }
        }
    }

    fn start_member(&mut self, h: &[u8]) {
        if h.iter().all(|&b| b == 0) {
            self.ended = true;
            return;
        }
        let Some(size) = octal(&h[124..136]) else {
            self.error = Some("unreadable tar header (size)".into());
            self.ended = true;
            return;
        };
        let mut name = cstr(&h[0..100]);
        if &h[257..262] == b"ustar" {
            let prefix = cstr(&h[345..500]);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        let typeflag = h[156];
        // Only regular files carry data we count; directories and links have size 0.
        let size = if matches!(typeflag, b'0' | 0 | b'7') {
            size
        } else {
            0
        };
        let wanted = matches!(name.as_str(), LABEL | CONTROL) && size <= MAX_KEPT;
        self.keeping = wanted.then_some((name, size));
        self.kept_buf.clear();
        self.remaining = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        if self.remaining == 0 {
            self.finish_member();
        }
    }

    fn finish_member(&mut self) {
        if let Some((name, _)) = self.keeping.take() {
            let data = std::mem::take(&mut self.kept_buf);
            match name.as_str() {
                LABEL => self.label = Some(data),
                _ => self.control = Some(data),
            }
        }
    }
}

/// What `backup_label` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub start_lsn: u64,
    pub start_wal: String,
    pub timeline: u32,
    pub start_time: Option<DateTime<Utc>>,
    /// `BACKUP FROM: standby`: taken from a server in recovery, which writes no backup history
    /// file; its end comes from the server itself (`backup_end`).
    pub from_standby: bool,
}

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
        .map(str::trim)
}

/// `2026-11-21 18:04:42 UTC`: PostgreSQL formats it in `log_timezone`, which our clusters pin to
/// UTC; any other zone is not trusted (None).
fn pg_time(text: &str) -> Option<DateTime<Utc>> {
    let t = text
        .strip_suffix(" UTC")
        .or_else(|| text.strip_suffix(" GMT"))?;
    NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S")
        .ok()
        .map(|n| n.and_utc())
}

/// `0/2000028 (file 000000010000000000000002)` → (LSN, file).
fn location(text: &str) -> Option<(u64, String)> {
    let (lsn, rest) = text.split_once(' ')?;
    let file = rest.strip_prefix("(file ")?.strip_suffix(')')?;
    Some((parse_lsn(lsn)?, file.to_string()))
}

pub fn parse_label(bytes: &[u8]) -> Result<Label, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "backup_label is not text".to_string())?;
    let (start_lsn, start_wal) = field(text, "START WAL LOCATION")
        .and_then(location)
        .ok_or("backup_label has no readable START WAL LOCATION")?;
    let timeline = field(text, "START TIMELINE")
        .and_then(|t| t.parse().ok())
        .ok_or("backup_label has no readable START TIMELINE")?;
    Ok(Label {
        start_lsn,
        start_wal,
        timeline,
        start_time: field(text, "START TIME").and_then(pg_time),
        from_standby: field(text, "BACKUP FROM") == Some("standby"),
    })
}

/// What the backup history file (`<start_wal>.<offset>.backup`) says about the backup's end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    pub start_lsn: u64,
    pub stop_lsn: u64,
    pub stop_timeline: u32,
    pub stop_time: DateTime<Utc>,
}

pub fn parse_history(bytes: &[u8]) -> Result<History, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "backup history is not text".to_string())?;
    let bad = |what: &str| format!("backup history file has no readable {what}");
    Ok(History {
        start_lsn: field(text, "START WAL LOCATION")
            .and_then(location)
            .ok_or_else(|| bad("START WAL LOCATION"))?
            .0,
        stop_lsn: field(text, "STOP WAL LOCATION")
            .and_then(location)
            .ok_or_else(|| bad("STOP WAL LOCATION"))?
            .0,
        stop_timeline: field(text, "STOP TIMELINE")
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| bad("STOP TIMELINE"))?,
        stop_time: field(text, "STOP TIME")
            .and_then(pg_time)
            .ok_or_else(|| bad("STOP TIME (in UTC)"))?,
    })
}

/// The name of the backup history file of a backup that started at `start_lsn`.
pub fn history_file_name(start_wal: &str, start_lsn: u64, segment_size: u64) -> String {
    format!("{start_wal}.{:08X}.backup", start_lsn % segment_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABEL_TEXT: &str = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
        CHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n\
        START TIME: 2026-11-21 18:04:42 UTC\nLABEL: pg_basebackup base backup\nSTART TIMELINE: 1\n";

    fn header(name: &str, size: usize, flag: u8) -> Vec<u8> {
        let mut h = vec![0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let s = format!("{size:011o}\0");
        h[124..136].copy_from_slice(s.as_bytes());
        h[156] = flag;
        h[257..263].copy_from_slice(b"ustar\0");
        h
    }

    fn member(name: &str, data: &[u8]) -> Vec<u8> {
        let mut out = header(name, data.len(), b'0');
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
        out
    }

    #[test]
    fn finds_the_label_and_pg_control_in_any_chunking() {
        let mut tar = member(LABEL, LABEL_TEXT.as_bytes());
        tar.extend(header("base/", 0, b'5'));
        tar.extend(member("base/1/1259", &vec![7u8; 20000]));
        tar.extend(member(CONTROL, &[9u8; 8192]));
        tar.extend(vec![0u8; 1024]);
        for chunk in [1, 7, 512, 513, 4096, tar.len()] {
            let mut s = TarScanner::new();
            for c in tar.chunks(chunk) {
                s.feed(c);
            }
            assert_eq!(s.label.as_deref(), Some(LABEL_TEXT.as_bytes()), "{chunk}");
            assert_eq!(s.control.as_deref(), Some(&[9u8; 8192][..]), "{chunk}");
            assert!(s.error.is_none());
        }
    }

    #[test]
    fn reads_the_label() {
        let l = parse_label(LABEL_TEXT.as_bytes()).unwrap();
        assert_eq!(l.start_lsn, 0x2000028);
        assert_eq!(l.start_wal, "000000010000000000000002");
        assert_eq!(l.timeline, 1);
        assert_eq!(l.start_time, Some("2026-11-21T18:04:42Z".parse().unwrap()));
        assert!(!l.from_standby);
        let standby = LABEL_TEXT.replace("FROM: primary", "FROM: standby");
        assert!(parse_label(standby.as_bytes()).unwrap().from_standby);
        assert!(parse_label(b"LABEL: x\n").is_err());
    }

    #[test]
    fn reads_the_history_file() {
        let text = format!(
            "{LABEL_TEXT}STOP WAL LOCATION: 0/2000100 (file 000000010000000000000002)\n\
             STOP TIME: 2026-11-21 18:04:43 UTC\nSTOP TIMELINE: 1\n"
        );
        let h = parse_history(text.as_bytes()).unwrap();
        assert_eq!(
            (h.start_lsn, h.stop_lsn, h.stop_timeline),
            (0x2000028, 0x2000100, 1)
        );
        assert_eq!(
            h.stop_time,
            "2026-11-21T18:04:43Z".parse::<DateTime<Utc>>().unwrap()
        );
        let cet = text.replace("43 UTC", "43 CET");
        assert!(
            parse_history(cet.as_bytes()).is_err(),
            "only UTC is trusted"
        );
        assert_eq!(
            history_file_name("000000010000000000000002", 0x2000028, 16 << 20),
            "000000010000000000000002.00000028.backup"
        );
    }
}
