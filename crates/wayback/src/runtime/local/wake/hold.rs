//! The hold of one parked cluster: its listening sockets ([`Acceptor`]) and the task that runs
//! every wake of it, single-flight (rules 1, 3, 4, 5 and 6 of the module doc). Must not import
//! `osb`, `broker`, `store` or `jobs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::client::{self, Arrival};
use super::{marker, Shared, StartReply};
use crate::domain::InstanceId;
use crate::pg::PgError;
use crate::runtime::local::{io, LocalRuntime};
use crate::runtime::{RuntimeError, WakeEvent};

/// How often a hold whose port could not be bound tries again.
const REBIND: Duration = Duration::from_secs(5);

/// The listening sockets of a hold, one accept task each.
pub(super) struct Acceptor {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Acceptor {
    /// Closes the listening sockets and returns once they are closed. Connections the kernel
    /// already completed (the backlog) are accepted first: they wait for the server instead of
    /// being reset.
    pub(super) async fn close(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Binds `port` on the addresses of `entries` (the cluster's `listen_addresses`); at least one
/// must bind. Accepted connections are read (rule 2) and sent to `arrivals`.
pub(super) async fn bind(
    entries: &[String],
    port: u16,
    shared: &Arc<Shared>,
    arrivals: &mpsc::UnboundedSender<Arrival>,
) -> std::io::Result<Acceptor> {
    let mut listeners = Vec::new();
    let mut last_error = None;
    for entry in entries {
        let candidates = match marker::bind_candidates(entry, port) {
            Some(c) => c,
            None => tokio::net::lookup_host((entry.as_str(), port))
                .await
                .map(|a| a.collect())
                .unwrap_or_default(),
        };
        // A wildcard's candidates are alternatives; a host name's addresses are all bound.
        let alternatives = entry == "*";
        for addr in candidates {
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    listeners.push(l);
                    if alternatives {
                        break;
                    }
                }
                Err(e) => last_error = Some(e),
            }
        }
    }
    if listeners.is_empty() {
        return Err(last_error.unwrap_or_else(|| {
            std::io::Error::other(format!(
                "no address to listen on (listen_addresses {entries:?})"
            ))
        }));
    }
    let stop = shared.cancel.child_token();
    let pending = Arc::new(Semaphore::new(shared.limits.pending_clients.max(1)));
    let tasks = listeners
        .into_iter()
        .map(|l| {
            tokio::spawn(accept_loop(
                l,
                stop.clone(),
                pending.clone(),
                shared.limits.first_packet,
                arrivals.clone(),
            ))
        })
        .collect();
    Ok(Acceptor { stop, tasks })
}

async fn accept_loop(
    listener: TcpListener,
    stop: CancellationToken,
    pending: Arc<Semaphore>,
    timeout: Duration,
    arrivals: mpsc::UnboundedSender<Arrival>,
) {
    let read = |stream: tokio::net::TcpStream| {
        // Over the limit of connections waiting for a first packet: closed at once.
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            return;
        };
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            if let Some(a) = client::first_packet(stream, timeout).await {
                let _ = arrivals.send(a);
            }
            drop(permit);
        });
    };
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => read(stream),
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::debug!(error = %e, "accept failed on a parked cluster's port");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    // Drain the backlog without waiting, then close (rule 4).
    let Ok(listener) = listener.into_std() else {
        return;
    };
    while let Ok((stream, _)) = listener.accept() {
        if stream.set_nonblocking(true).is_ok() {
            if let Ok(stream) = tokio::net::TcpStream::from_std(stream) {
                read(stream);
            }
        }
    }
}

/// Everything one hold task needs.
pub(super) struct Hold {
    pub id: InstanceId,
    pub port: u16,
    pub entries: Vec<String>,
    /// Where the running server is reached.
    pub target: SocketAddr,
    /// A runtime sharing the per-instance locks of the one that parked it.
    pub runtime: Arc<LocalRuntime>,
    pub shared: Arc<Shared>,
    pub generation: u64,
}

/// The channels of a hold task.
pub(super) struct Channels {
    pub arrivals_tx: mpsc::UnboundedSender<Arrival>,
    pub arrivals: mpsc::UnboundedReceiver<Arrival>,
    pub starts: mpsc::UnboundedReceiver<StartReply>,
}

impl Hold {
    /// Holds the port until the cluster runs, the hold is dropped (destroy) or the runtime goes.
    pub(super) async fn run(self, mut acceptor: Option<Acceptor>, channels: Channels) {
        let Channels {
            arrivals_tx,
            mut arrivals,
            mut starts,
        } = channels;
        let cancel = self.shared.cancel.clone();
        let limits = self.shared.limits.clone();
        loop {
            let mut waiting = Vec::new();
            let mut replies = Vec::new();
            tokio::select! {
                _ = cancel.cancelled() => break,
                a = arrivals.recv() => match a {
                    Some(a) => waiting.push(a),
                    None => break,
                },
                r = starts.recv() => match r {
                    Some(r) => replies.push(r),
                    None => break, // destroyed
                },
                _ = tokio::time::sleep(REBIND), if acceptor.is_none() => {
                    acceptor = self.rebind(&arrivals_tx).await;
                    continue;
                }
            }
            let first = waiting.first().map_or_else(Instant::now, |a| a.at);
            if replies.is_empty() && !self.shared.may_start(&self.id, Instant::now()) {
                let reason = format!(
                    "it was started {} times in the last {} seconds",
                    limits.starts_per_window,
                    limits.window.as_secs()
                );
                tracing::warn!(instance = %self.id, clients = waiting.len(), "a parked cluster was not started: too many starts; its clients are told to wait");
                self.refuse_all(waiting, &reason);
                self.shared.notify(WakeEvent {
                    instance: self.id.clone(),
                    seconds: first.elapsed().as_secs_f64(),
                    error: Some(reason),
                });
                continue;
            }
            let outcome = {
                let start = self.start(&mut acceptor);
                tokio::pin!(start);
                loop {
                    tokio::select! {
                        r = &mut start => break r,
                        Some(a) = arrivals.recv() => waiting.push(a),
                        Some(r) = starts.recv() => replies.push(r),
                    }
                }
            };
            let seconds = first.elapsed().as_secs_f64();
            match outcome {
                Ok(()) => {
                    tracing::info!(instance = %self.id, seconds, clients = waiting.len(), "woke a parked cluster");
                    self.shared.release(&self.id, self.generation);
                    self.shared.notify(WakeEvent {
                        instance: self.id.clone(),
                        seconds,
                        error: None,
                    });
                    for a in waiting {
                        tokio::spawn(client::splice(a, self.target, limits.first_packet));
                    }
                    for r in replies {
                        let _ = r.send(Ok(()));
                    }
                    if let Some(a) = acceptor.take() {
                        a.close().await;
                    }
                    // Clients whose first packet is still on its way are served as well.
                    drop(arrivals_tx);
                    let target = self.target;
                    tokio::spawn(async move {
                        starts.close();
                        while let Some(r) = starts.recv().await {
                            let _ = r.send(Ok(()));
                        }
                        while let Some(a) = arrivals.recv().await {
                            tokio::spawn(client::splice(a, target, limits.first_packet));
                        }
                    });
                    return;
                }
                Err(e) => {
                    let reason = short_reason(&e);
                    tracing::warn!(instance = %self.id, error = %e, clients = waiting.len(), "a parked cluster could not be started; it stays parked");
                    self.refuse_all(waiting, reason);
                    for r in replies {
                        let _ = r.send(Err(again(&self.id, &e)));
                    }
                    self.shared.notify(WakeEvent {
                        instance: self.id.clone(),
                        seconds,
                        error: Some(reason.to_string()),
                    });
                    if acceptor.is_none() {
                        acceptor = self.rebind(&arrivals_tx).await;
                    }
                }
            }
        }
        if let Some(a) = acceptor {
            a.close().await;
        }
    }

    fn refuse_all(&self, waiting: Vec<Arrival>, reason: &str) {
        let message = client::user_message(reason);
        let timeout = self.shared.limits.first_packet;
        for a in waiting {
            let message = message.clone();
            tokio::spawn(async move { client::refuse(a, &message, timeout).await });
        }
    }

    async fn rebind(&self, arrivals: &mpsc::UnboundedSender<Arrival>) -> Option<Acceptor> {
        match bind(&self.entries, self.port, &self.shared, arrivals).await {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::warn!(instance = %self.id, port = self.port, error = %e, "cannot hold a parked cluster's port; trying again in {} s", REBIND.as_secs());
                None
            }
        }
    }

    /// One start under the machine's bound and the instance's lock; the listening sockets are
    /// closed right before the postmaster is spawned (rule 4).
    async fn start(&self, acceptor: &mut Option<Acceptor>) -> Result<(), RuntimeError> {
        let _permit = self.shared.starting.clone().acquire_owned().await;
        let _guard = self.runtime.lock(&self.id).await;
        let tools = self.runtime.tools().await?;
        let cluster = self.runtime.layout.cluster(&self.id);
        if !marker::is_parked(&cluster) {
            // Started (or destroyed) by other means meanwhile.
            let dirs = self.runtime.existing(&self.id)?;
            return match crate::pg::ctl::live_postmaster(&dirs.pgdata) {
                Ok(Some(_)) => Ok(()),
                _ => Err(RuntimeError::Pg(PgError::NotRunning {
                    instance: self.id.to_string(),
                })),
            };
        }
        let close = async {
            if let Some(a) = acceptor.take() {
                a.close().await;
            }
        };
        self.runtime
            .start_unlocked_with(tools, &self.id, close)
            .await?;
        marker::remove(&cluster).map_err(io(format!(
            "remove the parked marker of {}",
            cluster.display()
        )))
    }
}

/// What a client is told about why its cluster could not be started: no paths, no log.
fn short_reason(e: &RuntimeError) -> &'static str {
    match e {
        RuntimeError::PortInUse(_) | RuntimeError::Pg(PgError::PortInUse { .. }) => {
            "its port is taken by another program"
        }
        RuntimeError::Pg(PgError::Timeout { .. }) => "it did not become ready in time",
        RuntimeError::Pg(PgError::InvalidSetting { .. }) => "its configuration is refused",
        RuntimeError::Pg(PgError::NoCluster { .. }) => "it no longer exists",
        _ => "the server would not start",
    }
}

/// The error a waiting `start` gets: the same text and permanence.
fn again(id: &InstanceId, e: &RuntimeError) -> RuntimeError {
    match e {
        RuntimeError::PortInUse(p) => RuntimeError::PortInUse(*p),
        _ if e.is_permanent() => {
            RuntimeError::Pg(PgError::Setup(format!("start instance {id}: {e}")))
        }
        _ => RuntimeError::Pg(PgError::Io {
            context: format!("start instance {id}"),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}
