//! One root signal: SIGTERM or Ctrl-C cancels the token every task of the process watches
//! (the broker's server, worker and loops; the agent's API and clusters).

use tokio_util::sync::CancellationToken;

/// Cancels `token` at SIGTERM or Ctrl-C (the broker's and the agent's shutdown).
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown requested");
        token.cancel();
    });
}
