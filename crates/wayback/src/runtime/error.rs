//! The runtime's one error type, and the one place it crosses the agent wire.
//!
//! Every error says whether retrying can help ([`RuntimeError::is_permanent`]) and, where the
//! platform's user may read more than "the database server could not be set up", what
//! ([`RuntimeError::user_message`]). An agent sends its local runtime's errors as
//! [`WireError`]s ([`to_wire`]) and the broker's remote runtime reads them back ([`from_wire`]),
//! so both flags survive the trip; the job worker maps the result once (`StepError: From`).
//! Must not import `osb`, `broker`, `store` or `jobs`.

use wayback_api::agent::WireError;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The cluster's port is taken by another process; the caller picks another port.
    #[error("port {0} is already in use")]
    PortInUse(u16),
    #[error(transparent)]
    Pg(#[from] crate::pg::PgError),
    /// A base backup failed (and was cleaned up).
    #[error(transparent)]
    Backup(#[from] crate::archive::ArchiveError),
    /// A clone's restore failed.
    #[error(transparent)]
    Restore(#[from] crate::archive::restore::RestoreError),
    /// The agent answered with an error.
    #[error("agent {agent}: {message}")]
    Agent {
        agent: String,
        message: String,
        permanent: bool,
        /// What the platform's user may read, when it says more than the generic line.
        user_message: Option<String>,
    },
    /// The agent did not answer (down, unreachable, or too slow).
    #[error("agent {agent} did not answer: {message}")]
    Unreachable { agent: String, message: String },
    /// Agents are configured, but no agent is recorded for the instance.
    #[error("instance {0} is not placed on any agent")]
    NotPlaced(String),
    /// A clone's restore ended with this error (reported by the restore's status).
    #[error("restore failed: {message}")]
    RestoreFailed {
        message: String,
        permanent: bool,
        user_message: Option<String>,
    },
    /// The broker's record of placements could not be read or written.
    #[error("the placement records: {0:#}")]
    Records(anyhow::Error),
}

impl RuntimeError {
    /// Permanent errors fail the operation at once; others are retried with backoff.
    pub fn is_permanent(&self) -> bool {
        match self {
            RuntimeError::PortInUse(_) => false,
            RuntimeError::Pg(e) => e.is_permanent(),
            RuntimeError::Backup(e) => matches!(
                e,
                crate::archive::ArchiveError::Backup {
                    permanent: true,
                    ..
                }
            ),
            RuntimeError::Restore(e) => !e.is_transient(),
            RuntimeError::Agent { permanent, .. } => *permanent,
            RuntimeError::Unreachable { .. } => false,
            RuntimeError::NotPlaced(_) => true,
            RuntimeError::RestoreFailed { permanent, .. } => *permanent,
            RuntimeError::Records(_) => false,
        }
    }

    /// What the platform's user may read about it (no paths, no server log), when there is
    /// more to say than that the database server could not be set up.
    pub fn user_message(&self) -> Option<String> {
        match self {
            RuntimeError::Backup(e) => Some(e.to_string()),
            RuntimeError::Restore(e) => Some(e.user_message()),
            RuntimeError::Agent { user_message, .. }
            | RuntimeError::RestoreFailed { user_message, .. } => user_message.clone(),
            _ => None,
        }
    }

    /// The error a failed restore's status carries (None: the status said only "failed"); a
    /// restore whose server could not bind its port is `PortInUse`.
    pub fn restore_failed(error: Option<WireError>) -> Self {
        if let Some(port) = error.as_ref().and_then(|e| e.port_in_use) {
            return RuntimeError::PortInUse(port);
        }
        let e = error.unwrap_or_else(|| WireError {
            message: "the restore failed".into(),
            permanent: false,
            port_in_use: None,
            user_message: None,
        });
        RuntimeError::RestoreFailed {
            message: e.message,
            permanent: e.permanent,
            user_message: e.user_message,
        }
    }
}

/// How an agent answers with `e`.
pub fn to_wire(e: &RuntimeError) -> WireError {
    WireError {
        message: e.to_string(),
        permanent: e.is_permanent(),
        port_in_use: match e {
            RuntimeError::PortInUse(p)
            | RuntimeError::Restore(crate::archive::restore::RestoreError::Pg(
                crate::pg::PgError::PortInUse { port: p },
            )) => Some(*p),
            _ => None,
        },
        user_message: e.user_message(),
    }
}

/// What `agent`'s error answer means to the broker.
pub fn from_wire(agent: &str, e: WireError) -> RuntimeError {
    match e.port_in_use {
        Some(port) => RuntimeError::PortInUse(port),
        None => RuntimeError::Agent {
            agent: agent.to_string(),
            message: e.message,
            permanent: e.permanent,
            user_message: e.user_message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::ArchiveError;
    use crate::pg::PgError;

    /// What the broker concludes from an agent's error is what the agent's runtime concluded.
    #[test]
    fn both_flags_survive_the_wire() {
        let cases = [
            RuntimeError::PortInUse(5433),
            RuntimeError::Pg(PgError::Setup("no binaries".into())),
            RuntimeError::Pg(PgError::NotRunning {
                instance: "i".into(),
            }),
            RuntimeError::Backup(ArchiveError::Backup {
                message: "refused".into(),
                permanent: true,
            }),
            RuntimeError::Backup(ArchiveError::Io("disk".into())),
            RuntimeError::NotPlaced("i".into()),
        ];
        for e in cases {
            let wire = to_wire(&e);
            let back = from_wire("a", wire.clone());
            assert_eq!(back.is_permanent(), e.is_permanent(), "{e}");
            assert_eq!(back.user_message(), e.user_message(), "{e}");
            if let RuntimeError::PortInUse(p) = e {
                assert!(matches!(back, RuntimeError::PortInUse(q) if q == p));
                assert_eq!(wire.http_status(), 409);
            } else {
                assert_eq!(back.to_string(), format!("agent a: {e}"));
                let status = if e.is_permanent() { 422 } else { 503 };
                assert_eq!(wire.http_status(), status, "{e}");
            }
        }
    }

    /// A restore whose server could not bind its port fails as `PortInUse`, locally and
    /// through an agent's restore status, so the job takes another port.
    #[test]
    fn a_restore_that_could_not_bind_its_port_is_port_in_use() {
        let e = RuntimeError::Restore(crate::archive::restore::RestoreError::Pg(
            PgError::PortInUse { port: 55684 },
        ));
        let wire = to_wire(&e);
        assert_eq!(wire.port_in_use, Some(55684));
        assert!(matches!(
            RuntimeError::restore_failed(Some(wire)),
            RuntimeError::PortInUse(55684)
        ));
    }

    #[test]
    fn a_failed_restore_keeps_its_kind_and_user_message() {
        let e = RuntimeError::restore_failed(Some(WireError {
            message: "no base backup".into(),
            permanent: true,
            port_in_use: None,
            user_message: Some("nothing to restore".into()),
        }));
        assert!(e.is_permanent());
        assert_eq!(e.user_message().as_deref(), Some("nothing to restore"));
        assert_eq!(e.to_string(), "restore failed: no base backup");
        assert!(!RuntimeError::restore_failed(None).is_permanent());
    }
}
