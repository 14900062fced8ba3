//! Parking and unparking in the local runtime: `park`, the parked side of `start` and `destroy`,
//! and `prepare`'s re-hold of every marked cluster. Must not import `osb`, `broker`, `store` or
//! `jobs`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::hold::{self, Channels, Hold};
use super::marker;
use crate::domain::InstanceId;
use crate::pg::ctl::{self, StopMode};
use crate::pg::{ClusterDirs, PgError};
use crate::runtime::local::{io, rt, LocalRuntime};
use crate::runtime::RuntimeError;

/// How long `destroy` waits for a hold's listener to close.
const HOLD_CLOSE: Duration = Duration::from_secs(10);

impl LocalRuntime {
    /// Stops an idle cluster and holds its port (see [`crate::runtime::ClusterRuntime::park`]).
    pub async fn park(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        if self.is_ha_member(id) {
            return Err(rt(PgError::Setup(format!(
                "instance {id} is an HA member: it is never stopped when idle (its standbys need it)"
            ))));
        }
        let _guard = self.lock(id).await;
        let tools = self.tools().await?;
        let dirs = self.existing(id)?;
        let cluster = self.layout.cluster(id);
        let port = self.configured_port(&dirs)?;
        let (entries, target) = self.listen_target(id, &dirs, port).await?;
        let running = ctl::live_postmaster(&dirs.pgdata).map_err(rt)?.is_some();
        if !running && self.wake.is_held(id) && marker::is_parked(&cluster) {
            return Ok(());
        }
        if running {
            let started = Instant::now();
            self.archive_last_segment(id, &dirs).await?;
            // A client may have come while the segment was archived (a second or so); a fast
            // stop would end its session. Counted last thing before the stop: the window left
            // is the stop's own milliseconds.
            let now = self.sessions(id).await?;
            if now.clients > 0 || now.replication > 0 {
                return Err(rt(PgError::Io {
                    context: format!("instance {id} is not idle any more: not stopped"),
                    source: std::io::Error::other(format!(
                        "{} client and {} replication sessions came while its WAL was archived",
                        now.clients, now.replication
                    )),
                }));
            }
            ctl::stop(tools, &dirs.pgdata, StopMode::Fast, self.timeout())
                .await
                .map_err(rt)?;
            tracing::info!(instance = %id, elapsed_ms = started.elapsed().as_millis() as u64, "stopped an idle cluster; its port is held until a client connects");
        }
        if !marker::is_parked(&cluster) {
            marker::write(&cluster, port).map_err(io(format!(
                "write the parked marker of {}",
                cluster.display()
            )))?;
        }
        if self.wake.is_held(id) {
            return Ok(());
        }
        if let Err(e) = self.hold(id, port, entries, target, true).await {
            // Back as it was: running and not parked; the caller may try again.
            let restarted = self.start_unlocked(tools, id).await;
            if restarted.is_ok() {
                marker::remove(&cluster).map_err(io(format!(
                    "remove the parked marker of {}",
                    cluster.display()
                )))?;
            }
            return Err(rt(PgError::Io {
                context: format!(
                    "hold port {port} of instance {id} while it is stopped (it was started again)"
                ),
                source: e,
            }));
        }
        Ok(())
    }

    /// Wakes of parked clusters as they happen ([`crate::runtime::WakeEvent`]).
    pub fn subscribe_wakes(&self) -> tokio::sync::broadcast::Receiver<crate::runtime::WakeEvent> {
        self.wake.subscribe()
    }

    /// Whether `id` is marked parked (stopped when idle, to be woken by a client).
    pub(crate) fn is_parked(&self, id: &InstanceId) -> bool {
        marker::is_parked(&self.layout.cluster(id))
    }

    /// The parked side of `start`: a held cluster is started by its hold (single-flight with
    /// the clients that wait); true when that answered.
    pub(crate) async fn start_held(&self, id: &InstanceId) -> Option<Result<(), RuntimeError>> {
        let sender = self.wake.start_sender(id)?;
        let (reply, answer) = oneshot::channel();
        sender.send(reply).ok()?;
        // A hold that ended meanwhile answers nothing: the caller starts it itself.
        answer.await.ok()
    }

    /// After a start by other means than the hold: the cluster is no longer parked.
    pub(crate) fn unmark(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        let cluster = self.layout.cluster(id);
        marker::remove(&cluster).map_err(io(format!(
            "remove the parked marker of {}",
            cluster.display()
        )))
    }

    /// Releases the port of `id` (destroy): its hold stops and its listener closes.
    pub(crate) async fn release_hold(&self, id: &InstanceId) {
        if let Some(task) = self.wake.drop_hold(id) {
            if tokio::time::timeout(HOLD_CLOSE, task).await.is_err() {
                tracing::warn!(instance = %id, "the hold of a parked cluster did not end in time");
            }
        }
    }

    /// Holds the port of every parked cluster again (start-up of the broker or an agent); a
    /// port that cannot be bound is logged and tried again every few seconds.
    pub(crate) async fn hold_parked(&self) {
        for id in self.cluster_ids() {
            if !self.is_parked(&id) || self.wake.is_held(&id) {
                continue;
            }
            if let Err(e) = self.hold_again(&id).await {
                tracing::warn!(instance = %id, error = %e, "cannot hold the port of a parked cluster");
            }
        }
    }

    async fn hold_again(&self, id: &InstanceId) -> Result<(), RuntimeError> {
        let _guard = self.lock(id).await;
        self.tools().await?;
        let dirs = self.existing(id)?;
        if ctl::live_postmaster(&dirs.pgdata).map_err(rt)?.is_some() {
            tracing::info!(instance = %id, "a parked cluster runs; it is no longer parked");
            return self.unmark(id);
        }
        let port = self.configured_port(&dirs)?;
        if let Some(m) = marker::read(&self.layout.cluster(id)).filter(|m| m.port != port) {
            tracing::info!(instance = %id, parked_at = m.port, port, "a parked cluster's port changed; holding the configured one");
        }
        let (entries, target) = self.listen_target(id, &dirs, port).await?;
        self.hold(id, port, entries, target, false)
            .await
            .map_err(|e| {
                rt(PgError::Io {
                    context: format!("hold port {port} of instance {id}"),
                    source: e,
                })
            })?;
        tracing::info!(instance = %id, port, "holding a parked cluster's port");
        Ok(())
    }

    /// Binds (or, when `must_bind` is false, tries to) and spawns the hold of `id`.
    async fn hold(
        &self,
        id: &InstanceId,
        port: u16,
        entries: Vec<String>,
        target: SocketAddr,
        must_bind: bool,
    ) -> std::io::Result<()> {
        let shared = self.wake.shared.clone();
        let (arrivals_tx, arrivals) = mpsc::unbounded_channel();
        let acceptor = match hold::bind(&entries, port, &shared, &arrivals_tx).await {
            Ok(a) => Some(a),
            Err(e) if must_bind => return Err(e),
            Err(e) => {
                tracing::warn!(instance = %id, port, error = %e, "cannot hold a parked cluster's port yet; trying again");
                None
            }
        };
        let (generation, starts) = self.wake.register(id);
        let hold = Hold {
            id: id.clone(),
            port,
            entries,
            target,
            runtime: Arc::new(self.waker()),
            shared,
            generation,
        };
        let channels = Channels {
            arrivals_tx,
            arrivals,
            starts,
        };
        let task = tokio::spawn(hold.run(acceptor, channels));
        self.wake.set_task(id, generation, task);
        Ok(())
    }

    /// The `listen_addresses` of the cluster's configuration and where its server is reached.
    async fn listen_target(
        &self,
        id: &InstanceId,
        dirs: &ClusterDirs,
        port: u16,
    ) -> Result<(Vec<String>, SocketAddr), RuntimeError> {
        let path = dirs.pgdata.join("postgresql.conf");
        let text =
            std::fs::read_to_string(&path).map_err(io(format!("read {}", path.display())))?;
        let entries = marker::listen_addresses(&text);
        let first = entries.first().ok_or_else(|| {
            rt(PgError::Setup(format!(
                "instance {id} listens on no TCP address (listen_addresses is empty): no client \
                 could wake it, so it is not stopped when idle"
            )))
        })?;
        let target = match marker::bind_candidates(first, port) {
            Some(c) => c.first().copied().map(marker::connect_target),
            None => tokio::net::lookup_host((first.as_str(), port))
                .await
                .ok()
                .and_then(|mut a| a.next()),
        };
        let target = target.ok_or_else(|| {
            rt(PgError::Setup(format!(
                "instance {id}: cannot resolve its listen address {first:?}"
            )))
        })?;
        Ok((entries, target))
    }

    /// A runtime that shares this one's per-instance locks and tools, for hold tasks (which
    /// outlive the call that made them and cannot borrow this runtime).
    pub(in crate::runtime::local) fn waker(&self) -> LocalRuntime {
        let mut waker = LocalRuntime::new(self.layout.root().to_path_buf(), self.settings.clone());
        waker.locks = self.locks.clone();
        waker.tls = self.tls.clone();
        if let Some(tools) = self.tools.get() {
            let _ = waker.tools.set(tools.clone());
        }
        waker
    }

    /// Completes the current WAL segment and waits until every completed segment up to it is
    /// archived, so that the restore window ends at the last commit; a cluster that does not
    /// archive has nothing waiting.
    async fn archive_last_segment(
        &self,
        id: &InstanceId,
        dirs: &ClusterDirs,
    ) -> Result<(), RuntimeError> {
        let (_, segment) = self.switch_wal_segment(id).await?;
        let status = dirs.pgdata.join("pg_wal").join("archive_status");
        let wait = self.wake.limits().archive_wait;
        let deadline = Instant::now() + wait;
        let mut backoff = Duration::from_millis(10);
        while waiting_up_to(&status, &segment).map_err(io(format!("read {}", status.display())))? {
            if Instant::now() + backoff >= deadline {
                return Err(rt(PgError::Timeout {
                    what: format!(
                        "wait until WAL segment {segment} of instance {id} is archived before \
                         stopping it (it keeps running)"
                    ),
                    command: "archive_command".into(),
                    secs: wait.as_secs(),
                    output: String::new(),
                }));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(250));
        }
        Ok(())
    }
}

/// Whether a segment at or before `segment` waits to be archived (`<segment>.ready`).
fn waiting_up_to(status: &Path, segment: &str) -> std::io::Result<bool> {
    for entry in std::fs::read_dir(status)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(seg) = name.strip_suffix(".ready") {
            if seg.len() == 24 && seg.bytes().all(|b| b.is_ascii_hexdigit()) && *seg <= *segment {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_earlier_ready_segments_wait() {
        let dir = tempfile::tempdir().unwrap();
        let seg = "000000010000000000000005";
        assert!(!waiting_up_to(dir.path(), seg).unwrap());
        std::fs::write(dir.path().join("000000010000000000000004.done"), "").unwrap();
        std::fs::write(dir.path().join("000000010000000000000006.ready"), "").unwrap();
        std::fs::write(dir.path().join("00000002.history.ready"), "").unwrap();
        assert!(!waiting_up_to(dir.path(), seg).unwrap());
        std::fs::write(dir.path().join("000000010000000000000005.ready"), "").unwrap();
        assert!(waiting_up_to(dir.path(), seg).unwrap());
    }
}
