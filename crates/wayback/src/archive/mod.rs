//! WAL archiving: what PostgreSQL's `archive_command` and `restore_command` run, and the
//! archive's layout and object format. docs/architecture.md §7's rules, each of which once bit a
//! well-known tool, are kept here:
//!
//! 1. `wal-push` exits 0 only once the file is durably stored (the storage layer's contract).
//! 2. An archived file is never overwritten with different content: identical → success,
//!    different → failure and a loud log line (split brain). History files likewise.
//! 3. `wal-fetch` exits 1 only when the file is definitely absent; persistent transient
//!    errors end with 126 so that recovery aborts instead of ending early at the wrong point.
//! 8. WAL carries its cluster's system identifier; a file of another cluster is refused on
//!    push and on fetch.
//!
//! And the fence (`fence.rs`): with `wal-push --fence` (HA members), WAL of a timeline past the
//! switch point an archived later timeline's history records is refused.
//!
//! Must not import `osb`, `broker`, `store` or `jobs`.

pub mod backup;
mod backup_end;
mod backup_tar;
mod backup_upload;
mod download;
pub mod fence;
mod fetch;
pub mod frame;
pub mod instance_doc;
pub mod keydoc;
pub mod layout;
pub mod manifest;
mod prefetch;
mod push;
pub mod restore;
pub mod retention;
pub mod target;
pub mod walscan;
pub mod window;

pub use backup::{
    take_backup, take_standby_backup, BackupOptions, BackupReport, BackupSource, BackupTimings,
};
pub use backup_end::LeaderWal;
pub use fetch::{fetch, wal_fetch_main, Fetched};
pub use prefetch::wal_prefetch_main;
pub use push::{push, wal_push_main, Pushed};
pub use target::{ArchiveTarget, RestoreSource};

/// An archiving failure.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error("{0}")]
    Io(String),
    /// Different content under an archived name, or WAL of another cluster: never retried.
    #[error("REFUSED: {0}")]
    Refused(String),
    #[error("archived file {key} is corrupt: {detail}")]
    Corrupt { key: String, detail: String },
    /// An archive data key that is missing, or does not unwrap: never retried.
    #[error("{0}")]
    Key(String),
    #[error("invalid archive target: {0}")]
    Target(String),
    /// A base backup failed (and was cleaned up); the message says what to do. `permanent`:
    /// taking it again as it is cannot help (a refusal, bad credentials).
    #[error("{message}")]
    Backup { message: String, permanent: bool },
}

impl ArchiveError {
    pub fn io(what: impl std::fmt::Display, e: std::io::Error) -> Self {
        ArchiveError::Io(format!("{what}: {e}"))
    }
}
