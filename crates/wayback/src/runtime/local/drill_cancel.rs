//! Cancelling a running restore drill on this machine (issue 18 point 4: a user's clone or
//! follower restore goes first). Each running drill registers a cancellation token under its
//! instance; [`LocalRuntime::cancel_drill`] fires it, and the drill engine
//! (`super::drill`) obeys at once — during the download and unpack, the recovery and the
//! checks — by dropping what it was doing, stopping its server and deleting its scratch copy
//! before it returns a `cancelled` report.
//!
//! The registry lives in this process only: a drill run by another process (`wayback drill`
//! beside the broker) is not cancelled by it, and a broker killed mid-cancel leaves its copy to
//! the start-up clean-up ([`LocalRuntime::clear_drills`]). Must not import `osb`, `broker`,
//! `store` or `jobs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

use super::LocalRuntime;
use crate::domain::InstanceId;
use crate::runtime::RuntimeError;

/// The running drills' tokens, by instance; each with the number of its registration, so that
/// a drill ending never removes a later drill's token.
#[derive(Default)]
pub(super) struct RunningDrills {
    tokens: Mutex<HashMap<InstanceId, (u64, CancellationToken)>>,
    next: AtomicU64,
}

/// A drill's registration: its token, removed from the registry when this is dropped.
pub(super) struct Registered<'a> {
    drills: &'a RunningDrills,
    id: InstanceId,
    number: u64,
    pub token: CancellationToken,
}

impl RunningDrills {
    pub(super) fn register(&self, id: &InstanceId) -> Registered<'_> {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        self.lock().insert(id.clone(), (number, token.clone()));
        Registered {
            drills: self,
            id: id.clone(),
            number,
            token,
        }
    }

    /// Fires the token of `id`'s running drill; whether one was running.
    fn cancel(&self, id: &InstanceId) -> bool {
        match self.lock().get(id) {
            Some((_, token)) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<InstanceId, (u64, CancellationToken)>> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut tokens = self.drills.lock();
        if tokens.get(&self.id).is_some_and(|(n, _)| *n == self.number) {
            tokens.remove(&self.id);
        }
    }
}

impl LocalRuntime {
    /// Asks the running drill of `id` in this process to stop; whether one was running.
    pub async fn cancel_drill(&self, id: &InstanceId) -> Result<bool, RuntimeError> {
        let cancelled = self.running_drills.cancel(id);
        if cancelled {
            tracing::info!(instance = %id, "restore drill cancelled: a user's restore goes first");
        }
        Ok(cancelled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drill_ending_keeps_a_later_drills_token() {
        let drills = RunningDrills::default();
        let id = InstanceId::parse("3F2A0000-0000-4000-8000-00000000000B").unwrap();
        let first = drills.register(&id);
        let second = drills.register(&id);
        drop(first);
        assert!(drills.cancel(&id));
        assert!(second.token.is_cancelled());
        drop(second);
        assert!(!drills.cancel(&id));
    }
}
