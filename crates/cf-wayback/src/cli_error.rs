//! The one error type of `cf-wayback`'s commands, and the exit code each kind maps to.
//!
//! Every message is written for the person at the terminal: what went wrong and what to do
//! next. Tokens never appear in them. Imports nothing from the crate.

/// Exit codes, documented in the help and the README.
pub mod exit {
    pub const OK: i32 = 0;
    /// The operation failed, or what was asked for does not exist.
    pub const FAILED: i32 = 1;
    /// Bad arguments, or nothing targeted to run against.
    pub const USAGE: i32 = 2;
    /// Not logged in, the token could not be refreshed, or the broker / CC said 401 or 403.
    pub const AUTH: i32 = 3;
    /// The broker, the Cloud Controller or the UAA cannot be reached.
    pub const UNREACHABLE: i32 = 4;
}

/// The text the help of every command ends with.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  the operation failed, or the instance was not found
  2  usage error (bad arguments, no space targeted, no broker found: pass --broker-url)
  3  authentication error (not logged in, token refresh failed, broker/CC said 401 or 403)
  4  the broker, the Cloud Controller or the UAA cannot be reached";

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Auth(String),
    #[error("{0}")]
    Unreachable(String),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Failed(_) => exit::FAILED,
            CliError::Usage(_) => exit::USAGE,
            CliError::Auth(_) => exit::AUTH,
            CliError::Unreachable(_) => exit::UNREACHABLE,
        }
    }

    /// A request that never got an HTTP answer. reqwest's own message stops at "error sending
    /// request", so the causes are appended: they name the refused connection or the bad
    /// certificate.
    pub fn transport(what: &str, err: &reqwest::Error) -> CliError {
        let mut msg = format!("{what}: {err}");
        let mut source = std::error::Error::source(err);
        while let Some(s) = source {
            msg.push_str(&format!(": {s}"));
            source = s.source();
        }
        CliError::Unreachable(msg)
    }
}
