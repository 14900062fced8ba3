//! The storage layer's one error type, and the names of its operations.
//!
//! Absence is not an error here: `get` and `head` answer `Ok(None)` when an object is definitely
//! absent (S3 `NoSuchKey` / 404, or no such file), so a caller can never mistake a timeout for
//! "not archived" — the mistake that makes a WAL restore stop early at the wrong point (docs/architecture.md §7
//! rule 3). Every other failure is an `Err` that says whether retrying can help
//! ([`StorageError::is_permanent`]): bad credentials, a missing bucket or a malformed request are
//! permanent; timeouts, refused connections, 5xx and throttling are transient.
//!
//! Messages name the operation and the object's location (`s3://bucket/prefix/key` or
//! `file:///dir/key`) and never credentials: the S3 error text comes from the service's error code
//! and message, which do not echo secrets.

use std::fmt;

/// The operations of [`super::ObjectStore`], for error messages and for fault injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Put,
    PutStream,
    Get,
    GetStream,
    GetRange,
    Head,
    List,
    Delete,
    DeleteMany,
    Check,
}

impl Op {
    /// Every operation, in declaration order.
    pub const ALL: [Op; 10] = [
        Op::Put,
        Op::PutStream,
        Op::Get,
        Op::GetStream,
        Op::GetRange,
        Op::Head,
        Op::List,
        Op::Delete,
        Op::DeleteMany,
        Op::Check,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::PutStream => "put_stream",
            Op::Get => "get",
            Op::GetStream => "get_stream",
            Op::GetRange => "get_range",
            Op::Head => "head",
            Op::List => "list",
            Op::Delete => "delete",
            Op::DeleteMany => "delete_many",
            Op::Check => "check",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong in object storage.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Retrying later may succeed: a timeout, a refused or reset connection, a 5xx answer,
    /// throttling, or a checksum mismatch in transit.
    #[error("{op} {location}: transient storage error: {detail}")]
    Transient {
        op: Op,
        location: String,
        detail: String,
    },
    /// Retrying will not help until a person acts: access denied, bad credentials, no such bucket,
    /// a key that cannot be stored, a full or read-only disk.
    #[error("{op} {location}: {detail}")]
    Permanent {
        op: Op,
        location: String,
        detail: String,
    },
    /// The store's cancellation token fired before the operation finished.
    #[error("{op} {location}: cancelled")]
    Cancelled { op: Op, location: String },
    /// The caller passed a key that breaks the rules of [`super::key`].
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },
    /// The archive URL cannot be used.
    #[error("invalid storage URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// Settings that cannot work together (e.g. no credentials for an S3 URL).
    #[error("storage settings: {0}")]
    Config(String),
}

impl StorageError {
    /// True when retrying the same call cannot succeed without someone changing something.
    /// Cancellation is not permanent, but callers should not retry it either: see
    /// [`StorageError::is_cancelled`].
    pub fn is_permanent(&self) -> bool {
        match self {
            StorageError::Transient { .. } | StorageError::Cancelled { .. } => false,
            StorageError::Permanent { .. }
            | StorageError::InvalidKey { .. }
            | StorageError::InvalidUrl { .. }
            | StorageError::Config(_) => true,
        }
    }

    /// True when the operation stopped because the store's cancellation token fired.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, StorageError::Cancelled { .. })
    }

    /// The operation that failed, when the error comes from one.
    pub fn op(&self) -> Option<Op> {
        match self {
            StorageError::Transient { op, .. }
            | StorageError::Permanent { op, .. }
            | StorageError::Cancelled { op, .. } => Some(*op),
            _ => None,
        }
    }

    pub(crate) fn transient(
        op: Op,
        location: impl Into<String>,
        detail: impl fmt::Display,
    ) -> Self {
        StorageError::Transient {
            op,
            location: location.into(),
            detail: detail.to_string(),
        }
    }

    pub(crate) fn permanent(
        op: Op,
        location: impl Into<String>,
        detail: impl fmt::Display,
    ) -> Self {
        StorageError::Permanent {
            op,
            location: location.into(),
            detail: detail.to_string(),
        }
    }

    /// Classifies a local filesystem error: missing permissions, a read-only or full disk and
    /// paths that cannot exist are permanent; anything else (EINTR, EIO, …) is worth a retry.
    pub(crate) fn from_io(op: Op, location: impl Into<String>, err: &std::io::Error) -> Self {
        use nix::errno::Errno;
        // Raw errno values rather than the newer `ErrorKind`s, which postdate our MSRV.
        let permanent = matches!(
            err.kind(),
            std::io::ErrorKind::PermissionDenied
                | std::io::ErrorKind::InvalidInput
                | std::io::ErrorKind::Unsupported
        ) || err.raw_os_error().is_some_and(|code| {
            [
                Errno::EROFS,
                Errno::ENOSPC,
                Errno::EDQUOT,
                Errno::ENOTDIR,
                Errno::EISDIR,
                Errno::ENAMETOOLONG,
                Errno::ENOTEMPTY,
                Errno::EACCES,
                Errno::EPERM,
            ]
            .contains(&Errno::from_raw(code))
        });
        if permanent {
            Self::permanent(op, location, err)
        } else {
            Self::transient(op, location, err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_io_errors() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let e = StorageError::from_io(Op::Put, "file:///x/k", &denied);
        assert!(e.is_permanent());
        assert!(e.to_string().starts_with("put file:///x/k: "), "{e}");
        let eio = std::io::Error::other("boom");
        assert!(!StorageError::from_io(Op::Get, "file:///x/k", &eio).is_permanent());
    }

    #[test]
    fn op_names_are_distinct() {
        let names: std::collections::HashSet<_> = Op::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(names.len(), Op::ALL.len());
    }
}
