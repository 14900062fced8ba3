//! The wake listener (issue 17 points 2 and 4): while a cluster is parked — stopped when idle,
//! marked `parked` — its advertised port is held by a listener in the process that runs the
//! local runtime (the broker, or an agent), and a client's connection starts it.
//!
//! It is a hand-off, not a proxy always in the path: a running cluster has no listener in front
//! of it, so running costs nothing. The rules, each kept in the code:
//!
//! 1. **One hold per parked cluster** ([`hold`]): a task owns the listening sockets (bound on the
//!    addresses of the cluster's `listen_addresses`, at its port) and runs every wake of that
//!    cluster — single-flight: clients that arrive while it starts wait and are served.
//! 2. **No protocol beyond the first packet** ([`client`], `pg::wire`): a client must send its
//!    first packet (≤ 10 KB) within [`WakeLimits::first_packet`], else it is closed and wakes
//!    nothing — a port scanner or a silent client cannot keep a cluster awake. A
//!    `CancelRequest` to a stopped cluster is just closed.
//! 3. **Bounded starts**: a cluster is started by clients at most
//!    [`WakeLimits::starts_per_window`] times per [`WakeLimits::window`]; beyond that its clients
//!    get a readable error. At most [`WakeLimits::concurrent_starts`] clusters start at once on
//!    this machine; hundreds of first connections to different clusters queue. The broker's own
//!    `start` (a bind, a plan change, a delete) is not rate-limited.
//! 4. **The refused window is short**: the listening sockets are closed right before `pg_ctl`
//!    spawns the postmaster (connections already in the backlog are accepted first), so only a
//!    connection that arrives between that moment and the postmaster's `listen()` is refused
//!    (the kernel answers RST: libpq says "connection refused"). `bash scripts/bench-wake
//!    --wakes 20` measured it on 2026-12-07 (2 shared cores, debug build): seen in every wake,
//!    p50 36 ms, max 79 ms — the postmaster's own start up to its `listen()`; a wake (connect
//!    to the first `SELECT 1`) took p50 224 ms, p95 389 ms, a warm connect p50 31 ms.
//! 5. **Then the server is PostgreSQL's**: the marker is removed only after a successful start;
//!    every waiting client is connected to the server over TCP (so `pg_hba.conf`'s `host` and
//!    `hostssl` lines and TLS apply as to a direct client — from the loopback address), its
//!    first packet written, and the bytes spliced both ways. Only those first sessions pass
//!    through this process, for their life (a restart of the broker or agent ends them; their
//!    clients reconnect, straight to the server); every later connection is the server's own.
//! 6. **A failed start keeps the cluster parked**: the port is held again, and every waiting
//!    client gets a PostgreSQL `ErrorResponse` (FATAL, SQLSTATE 57P03) that says so, without
//!    paths; the reason is logged at warn. A client whose first packet asked for TLS is told
//!    'N' first (the error then travels in the clear; a client with `sslmode=require` shows
//!    "server does not support SSL" instead).
//!
//! Must not import `osb`, `broker`, `store` or `jobs`.

mod client;
mod hold;
pub(crate) mod marker;
mod park;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::domain::InstanceId;
use crate::runtime::{RuntimeError, WakeEvent};

/// The listener's knobs; the defaults are what the broker and agents use.
#[derive(Debug, Clone)]
pub struct WakeLimits {
    /// How long a client may take to send its first packet.
    pub first_packet: Duration,
    /// Client-started wakes of one cluster allowed per `window`.
    pub starts_per_window: usize,
    pub window: Duration,
    /// Clusters starting at once on this machine.
    pub concurrent_starts: usize,
    /// Connections of one parked cluster waiting for their first packet at once; more are
    /// closed at once.
    pub pending_clients: usize,
    /// How long `park` waits for the last segment to be archived.
    pub archive_wait: Duration,
}

impl Default for WakeLimits {
    fn default() -> Self {
        Self {
            first_packet: Duration::from_secs(5),
            starts_per_window: 3,
            window: Duration::from_secs(60),
            concurrent_starts: 4,
            pending_clients: 512,
            archive_wait: Duration::from_secs(60),
        }
    }
}

/// A `start` asked of a hold (the broker's bind, plan change or delete of a parked cluster).
type StartReply = oneshot::Sender<Result<(), RuntimeError>>;

struct HoldHandle {
    generation: u64,
    starts: mpsc::UnboundedSender<StartReply>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// What every hold of one runtime shares.
pub(super) struct Shared {
    limits: WakeLimits,
    holds: Mutex<HashMap<InstanceId, HoldHandle>>,
    starting: Arc<Semaphore>,
    recent: Mutex<HashMap<InstanceId, VecDeque<Instant>>>,
    events: broadcast::Sender<WakeEvent>,
    cancel: CancellationToken,
    generations: AtomicU64,
}

impl Shared {
    /// Whether a client may start `id` now (rule 3); counts the start when it may.
    fn may_start(&self, id: &InstanceId, now: Instant) -> bool {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let starts = recent.entry(id.clone()).or_default();
        while starts
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.limits.window)
        {
            starts.pop_front();
        }
        if starts.len() >= self.limits.starts_per_window {
            return false;
        }
        starts.push_back(now);
        true
    }

    /// Forgets the hold of `id` if it is still `generation` (a newer park made a newer one).
    fn release(&self, id: &InstanceId, generation: u64) {
        let mut holds = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        if holds.get(id).is_some_and(|h| h.generation == generation) {
            holds.remove(id);
        }
    }

    fn notify(&self, event: WakeEvent) {
        // No subscriber is fine.
        let _ = self.events.send(event);
    }
}

/// The holds of one runtime; dropping it (the runtime) closes every listener.
pub(super) struct Wake {
    shared: Arc<Shared>,
}

impl Default for Wake {
    fn default() -> Self {
        Self::new(WakeLimits::default())
    }
}

impl Wake {
    pub(super) fn new(limits: WakeLimits) -> Self {
        Self {
            shared: Arc::new(Shared {
                starting: Arc::new(Semaphore::new(limits.concurrent_starts.max(1))),
                limits,
                holds: Mutex::new(HashMap::new()),
                recent: Mutex::new(HashMap::new()),
                events: broadcast::channel(256).0,
                cancel: CancellationToken::new(),
                generations: AtomicU64::new(1),
            }),
        }
    }

    pub(super) fn subscribe(&self) -> broadcast::Receiver<WakeEvent> {
        self.shared.events.subscribe()
    }

    fn limits(&self) -> &WakeLimits {
        &self.shared.limits
    }

    /// Whether a hold (bound or trying to bind) exists for `id`.
    fn is_held(&self, id: &InstanceId) -> bool {
        let holds = self.shared.holds.lock().unwrap_or_else(|p| p.into_inner());
        holds.get(id).is_some_and(|h| !h.starts.is_closed())
    }

    /// The way to ask the hold of `id` to start it, if there is a live one.
    fn start_sender(&self, id: &InstanceId) -> Option<mpsc::UnboundedSender<StartReply>> {
        let holds = self.shared.holds.lock().unwrap_or_else(|p| p.into_inner());
        holds
            .get(id)
            .filter(|h| !h.starts.is_closed())
            .map(|h| h.starts.clone())
    }

    /// Stops the hold of `id`; its task, which closes the listener as it ends, is returned to
    /// be awaited. Dropping the sender ends the task's loop (it sees the channel closed).
    fn drop_hold(&self, id: &InstanceId) -> Option<tokio::task::JoinHandle<()>> {
        let mut holds = self.shared.holds.lock().unwrap_or_else(|p| p.into_inner());
        holds.remove(id).and_then(|h| h.task)
    }

    fn set_task(&self, id: &InstanceId, generation: u64, task: tokio::task::JoinHandle<()>) {
        let mut holds = self.shared.holds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = holds.get_mut(id).filter(|h| h.generation == generation) {
            h.task = Some(task);
        }
    }

    fn register(&self, id: &InstanceId) -> (u64, mpsc::UnboundedReceiver<StartReply>) {
        let generation = self.shared.generations.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let mut holds = self.shared.holds.lock().unwrap_or_else(|p| p.into_inner());
        holds.insert(
            id.clone(),
            HoldHandle {
                generation,
                starts: tx,
                task: None,
            },
        );
        (generation, rx)
    }
}

impl Drop for Wake {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_start_a_cluster_three_times_a_minute() {
        let wake = Wake::default();
        let id = InstanceId::parse("w-1").unwrap();
        let other = InstanceId::parse("w-2").unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(wake.shared.may_start(&id, t0));
        }
        assert!(!wake.shared.may_start(&id, t0 + Duration::from_secs(59)));
        assert!(wake.shared.may_start(&other, t0), "limits are per cluster");
        // A minute later the window is empty again.
        let t1 = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(wake.shared.may_start(&id, t1));
        }
        assert!(!wake.shared.may_start(&id, t1));
    }
}
