//! Logging: tracing with plain or JSON output on stderr.
//!
//! Secrets are kept out by construction (they are `SecretString`s, whose `Debug` is redacted,
//! and are never recorded as fields); request spans carry the request identity and ids only.

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber once; later calls (tests) are ignored.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_new(&settings.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Plain => builder.try_init(),
    };
}

/// Logging for `wal-push` / `wal-fetch`: plain lines on stderr, which PostgreSQL copies into its
/// own log; `WAYBACK_LOG` may raise the level.
pub fn init_for_postgres() {
    let level = std::env::var("WAYBACK_LOG").unwrap_or_else(|_| "info".into());
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .with_ansi(false)
        .try_init();
}
