//! Names the platform did not send: asked from the Cloud Controller, in the background.
//!
//! Undo finds instances by name, and the broker only ever receives GUIDs, so an instance
//! whose provision carried no `context.instance_name` (older platforms, other clients) would
//! be invisible to `clone-from`. The [`NameResolver`] keeps asking the CC
//! (`GET /v3/service_instances/:guid`) for every live instance without a name, each with its
//! own jittered backoff, until it answers; the name is recorded with source
//! `cloud_controller`. Such instances are never dropped silently: they are counted in the
//! `wayback_instances_name_unknown` gauge and each is logged at WARN once (not every pass).
//!
//! A periodic reconcile (`cc.reconcile_interval_secs`) compares every live instance's name
//! with the CC's, so a rename the broker never heard of (no PATCH, or one without context) is
//! recorded too. An answer older than the name the broker holds, by the CC's `updated_at` or
//! by when it was asked, never overrides it: a PATCH is answered before the CC commits the new
//! name, and a reconcile in that window must not record the old name again.
//!
//! Imports `cc`, `store`, `jobs` (instance.json) and `metrics`; never `osb`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::cc::backoff::Backoff;
use crate::cc::{CcError, CloudController};
use crate::context::AppContext;
use crate::domain::{InstanceId, InstanceState};
use crate::store::{now_millis, InstanceRecord};

/// The source recorded with names learned from the Cloud Controller.
pub const SOURCE_CLOUD_CONTROLLER: &str = "cloud_controller";

/// How often the store is looked at for instances without a name.
const RESOLVE_TICK: Duration = Duration::from_secs(1);

/// Between two questions about the same nameless instance.
const INSTANCE_BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(300),
};

/// Lookups in flight at once during a reconcile.
const RECONCILE_CONCURRENCY: usize = 4;

/// A nameless instance the resolver is waiting on.
struct Pending {
    failures: u32,
    next_at: Instant,
    warned: bool,
}

/// What one resolve pass did, for tests and logs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ResolvePass {
    /// Names learned in this pass.
    pub learned: usize,
    /// Live instances still without a name after it.
    pub unknown: usize,
}

pub struct NameResolver {
    ctx: Arc<AppContext>,
    cc: Option<Arc<CloudController>>,
    reconcile_interval: Duration,
    pending: HashMap<InstanceId, Pending>,
}

impl NameResolver {
    pub fn new(
        ctx: Arc<AppContext>,
        cc: Option<Arc<CloudController>>,
        reconcile_interval: Duration,
    ) -> Self {
        Self {
            ctx,
            cc,
            reconcile_interval,
            pending: HashMap::new(),
        }
    }

    /// Asks the CC about every nameless live instance whose backoff has run out, records what
    /// it learns, and updates the gauge.
    pub async fn resolve_pass(&mut self) -> anyhow::Result<ResolvePass> {
        let nameless = self.ctx.store.instances_without_name().await?;
        self.pending
            .retain(|id, _| nameless.iter().any(|i| &i.id == id));
        let mut pass = ResolvePass::default();
        for instance in &nameless {
            if self.resolve_one(instance).await {
                pass.learned += 1;
            }
        }
        pass.unknown = nameless.len() - pass.learned;
        self.ctx.metrics.names_unknown(pass.unknown as u64);
        Ok(pass)
    }

    /// True when the instance's name was learned now.
    async fn resolve_one(&mut self, instance: &InstanceRecord) -> bool {
        let now = Instant::now();
        let pending = self.pending.entry(instance.id.clone()).or_insert(Pending {
            failures: 0,
            next_at: now,
            warned: false,
        });
        let Some(cc) = &self.cc else {
            if !pending.warned {
                pending.warned = true;
                tracing::warn!(instance = %instance.id, space = %instance.space_guid, "instance has no name: its request carried no context.instance_name and no Cloud Controller is configured (cc.api_url); it cannot be cloned by name");
            }
            return false;
        };
        if now < pending.next_at {
            return false;
        }
        let asked_at = now_millis();
        let why = match cc.service_instance(&instance.id).await {
            Ok(Some(found)) => {
                let id = &instance.id;
                match self
                    .ctx
                    .store
                    .record_name_as_of(id, &found.name, SOURCE_CLOUD_CONTROLLER, asked_at)
                    .await
                {
                    Ok(written) => {
                        let after = pending.failures;
                        self.pending.remove(id);
                        if written {
                            tracing::info!(instance = %id, name = %found.name, failed_attempts = after, "learned the instance's name from the Cloud Controller");
                            self.instance_doc_changed(id).await;
                        } else {
                            // A request named it meanwhile; that name is newer.
                            tracing::debug!(instance = %id, "instance named by a request while the Cloud Controller was asked");
                        }
                        return true;
                    }
                    Err(e) => format!("cannot record the name: {e}"),
                }
            }
            Ok(None) => "the Cloud Controller does not know the instance (404)".to_string(),
            Err(e) => format!("{e}"),
        };
        let pending = self
            .pending
            .get_mut(&instance.id)
            .expect("entry inserted above");
        pending.next_at = Instant::now() + INSTANCE_BACKOFF.delay(pending.failures);
        pending.failures += 1;
        if pending.warned {
            tracing::debug!(instance = %instance.id, reason = %why, failures = pending.failures, "instance name still unknown");
        } else {
            pending.warned = true;
            tracing::warn!(instance = %instance.id, space = %instance.space_guid, reason = %why, "instance name unknown: its request carried no context.instance_name and the Cloud Controller did not tell it yet; asking again with backoff");
        }
        false
    }

    /// Compares the name of every live instance with the CC's and records the CC's when it
    /// is newer. Returns how many names changed. Stops at the first failure that is not about
    /// one instance (the CC down, the client refused): the next interval tries again.
    pub async fn reconcile_pass(&self) -> anyhow::Result<usize> {
        let Some(cc) = &self.cc else {
            return Ok(0);
        };
        let live = self
            .ctx
            .store
            .instances_in_states(&[
                InstanceState::Provisioning,
                InstanceState::Ready,
                InstanceState::Updating,
                InstanceState::Failed,
            ])
            .await?;
        let mut results = futures::stream::iter(live)
            .map(|instance| async move {
                let asked_at = now_millis();
                let answer = cc.service_instance(&instance.id).await;
                (instance, asked_at, answer)
            })
            .buffer_unordered(RECONCILE_CONCURRENCY);
        let mut changed = 0;
        while let Some((instance, asked_at, answer)) = results.next().await {
            match answer {
                Ok(Some(found)) => {
                    let as_of = found
                        .updated_at
                        .map_or(asked_at, |t| t.timestamp_millis().min(asked_at));
                    let recorded = self
                        .ctx
                        .store
                        .record_name_as_of(
                            &instance.id,
                            &found.name,
                            SOURCE_CLOUD_CONTROLLER,
                            as_of,
                        )
                        .await?;
                    if recorded {
                        changed += 1;
                        tracing::info!(instance = %instance.id, name = %found.name, "the Cloud Controller has a newer name for the instance; recorded");
                        self.instance_doc_changed(&instance.id).await;
                    }
                }
                Ok(None) => {
                    tracing::debug!(instance = %instance.id, "the Cloud Controller does not know the instance; name left as it is")
                }
                Err(e) => return Err(reconcile_failed(e)),
            }
        }
        Ok(changed)
    }

    /// Marks `instance.json` stale and writes it again (the maintenance pass retries it).
    async fn instance_doc_changed(&self, id: &InstanceId) {
        let ctx = &self.ctx;
        if let Err(e) = ctx.store.set_instance_doc_hash(id, None).await {
            tracing::warn!(instance = %id, error = %e, "cannot mark instance.json stale");
        }
        crate::jobs::instance_doc::sync_instance_doc_or_mark_stale(
            &ctx.store,
            &ctx.catalog,
            &ctx.archive,
            id,
            "name learned from the Cloud Controller",
        )
        .await;
    }

    /// Resolves every tick and reconciles every interval (the first right away), until
    /// `shutdown`.
    pub async fn run_until_stopped(mut self, shutdown: CancellationToken) {
        match &self.cc {
            Some(cc) => {
                tracing::info!(api = cc.api_url(), "instance names missing from requests are asked from the Cloud Controller")
            }
            None => tracing::info!(
                "no Cloud Controller configured (cc.api_url): instance names come only from requests"
            ),
        }
        let mut next_reconcile = Instant::now();
        loop {
            if let Err(e) = self.resolve_pass().await {
                tracing::warn!(error = format!("{e:#}"), "name resolution pass failed");
            }
            if self.cc.is_some() && Instant::now() >= next_reconcile {
                match self.reconcile_pass().await {
                    Ok(n) => tracing::debug!(changed = n, "name reconcile done"),
                    Err(e) => {
                        tracing::warn!(error = format!("{e:#}"), "name reconcile with the Cloud Controller failed; trying again next interval")
                    }
                }
                next_reconcile = Instant::now() + self.reconcile_interval;
            }
            tokio::select! {
                _ = tokio::time::sleep(RESOLVE_TICK) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

fn reconcile_failed(e: CcError) -> anyhow::Error {
    anyhow::Error::new(e).context("ask the Cloud Controller for instance names")
}
