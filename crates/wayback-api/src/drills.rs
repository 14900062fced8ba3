//! Restore drills (issue 18): what one drill found, as the agent answers it, the broker stores
//! it, writes it into the archive next to `instance.json` and serves it on `/wayback/v1`, and
//! `cf-wayback` shows it. One type for all of them, so that every reader sees the same fields.
//!
//! Add fields with defaults, never rename one. A [`DrillResult`] this side does not know reads
//! as `failed`: a reader never claims a restore was proven when it cannot tell.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How a drill ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrillResult {
    /// Restored, promoted, and every check passed.
    Passed,
    /// Stopped half-way to give way to a user's clone or follower restore on the same machine
    /// (issue 18 point 4): proves nothing either way, and is not a failure.
    Cancelled,
    /// A check failed, or the restore itself did; `failure` says which.
    #[serde(other)]
    Failed,
}

impl DrillResult {
    pub fn as_str(self) -> &'static str {
        match self {
            DrillResult::Passed => "passed",
            DrillResult::Cancelled => "cancelled",
            DrillResult::Failed => "failed",
        }
    }
}

/// The first check that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillFailure {
    /// `restore` (the base backup could not be read or unpacked), `recovery` (WAL replay
    /// stopped: `detail` names the segment when the archive's copy was bad), `timeline` (not
    /// promoted onto a new timeline, or recovery ended before the archive's last segment),
    /// `amcheck` (`detail` names the relation), `row_counts`, `catalog`, or `drill` (the drill
    /// could not run: no room, no backup).
    pub check: String,
    pub detail: String,
}

/// One drill of one instance's archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillReport {
    pub instance: String,
    pub started: DateTime<Utc>,
    pub result: DrillResult,
    /// The base backup restored (None when none could be chosen).
    #[serde(default)]
    pub backup_id: Option<String>,
    /// WAL replayed: from the backup's start to where recovery ended, in bytes.
    #[serde(default)]
    pub wal_bytes: Option<u64>,
    /// Where recovery ended (the new timeline's switch point), and the time of the last
    /// transaction it replayed.
    #[serde(default)]
    pub end_lsn: Option<String>,
    #[serde(default)]
    pub end_time: Option<DateTime<Utc>>,
    /// The new timeline the drill's copy was promoted onto.
    #[serde(default)]
    pub timeline: Option<u32>,
    /// From the start of the drill to the end of its checks: a measured recovery time.
    pub duration_secs: f64,
    /// Databases `pg_amcheck` checked, and tables whose rows were counted.
    #[serde(default)]
    pub databases_checked: u32,
    #[serde(default)]
    pub tables_counted: u32,
    /// What was checked and how, one line each (for people and auditors).
    #[serde(default)]
    pub checks: Vec<String>,
    #[serde(default)]
    pub failure: Option<DrillFailure>,
}

impl DrillReport {
    pub fn passed(&self) -> bool {
        self.result == DrillResult::Passed
    }
}

/// `POST /v1/clusters/{id}/drill` on an agent: restore the instance's archive into a scratch
/// copy there, check it, delete it, and answer the [`DrillReport`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillBody {
    /// The instance's archive prefix (`spaces/<space>/instances/<id>`).
    pub prefix: String,
    /// Live instances' catalogs are compared with the drill's.
    pub live: bool,
    pub started: DateTime<Utc>,
}

/// `DELETE /v1/clusters/{id}/drill` on an agent: whether a drill of the instance was running
/// there and was asked to stop.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct DrillCancelled {
    pub cancelled: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_result_reads_as_failed() {
        let r: DrillResult = serde_json::from_str("\"skipped\"").unwrap();
        assert_eq!(r, DrillResult::Failed);
        assert_eq!(
            serde_json::to_string(&DrillResult::Passed).unwrap(),
            "\"passed\""
        );
    }
}
