//! Archive maintenance for every instance the state database knows: prune live instances'
//! archives to their plan's recovery window, reap deleted instances' archives once
//! `retention.deleted_days` have passed, keep every `instance.json` current, and remove audit
//! rows past `audit.retention_days`.
//!
//! The rules are in `archive::retention` (a pure plan, then deletion); this is the glue that
//! knows instances, plans and times. The supervisor runs [`ArchiveMaintenance::run_until_stopped`];
//! `wayback prune` runs [`ArchiveMaintenance::prune_all`] once. One instance's failure never
//! stops the others: it is reported for that instance and logged once (again only after it
//! has recovered and failed anew). Time is a parameter, so tests reap without sleeping.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::archive::retention::{self, RetentionPlan, RetentionPolicy};
use crate::catalog::Catalog;
use crate::config::RetentionSettings;
use crate::domain::{InstanceId, InstanceState};
use crate::jobs::instance_doc;
use crate::storage::ObjectStore;
use crate::store::{InstanceRecord, Store};

/// What a pass did (or, dry, would do) to one instance's archive.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceReport {
    pub instance_id: String,
    pub space_guid: String,
    pub state: String,
    /// `prune`, `reap`, `keep` (deleted, within its grace period), `skip`.
    pub action: &'static str,
    pub deleted_objects: usize,
    pub deleted_bytes: u64,
    pub kept_objects: usize,
    pub kept_bytes: u64,
    /// Complete base backups deleted, and abandoned incomplete ones.
    pub deleted_backups: Vec<String>,
    pub incomplete_backups: Vec<String>,
    pub kept_backups: Vec<String>,
    pub note: Option<String>,
    pub error: Option<String>,
}

/// One pass over every instance.
#[derive(Debug, Clone, Serialize)]
pub struct PassReport {
    pub at: DateTime<Utc>,
    pub dry_run: bool,
    pub instances: Vec<InstanceReport>,
}

impl PassReport {
    pub fn deleted_objects(&self) -> usize {
        self.instances.iter().map(|i| i.deleted_objects).sum()
    }

    pub fn deleted_bytes(&self) -> u64 {
        self.instances.iter().map(|i| i.deleted_bytes).sum()
    }

    pub fn failures(&self) -> usize {
        self.instances.iter().filter(|i| i.error.is_some()).count()
    }
}

impl InstanceReport {
    fn new(instance: &InstanceRecord, action: &'static str) -> Self {
        Self {
            instance_id: instance.id.to_string(),
            space_guid: instance.space_guid.clone(),
            state: instance.state.as_str().to_string(),
            action,
            deleted_objects: 0,
            deleted_bytes: 0,
            kept_objects: 0,
            kept_bytes: 0,
            deleted_backups: vec![],
            incomplete_backups: vec![],
            kept_backups: vec![],
            note: None,
            error: None,
        }
    }

    fn with_plan(mut self, plan: RetentionPlan) -> Self {
        self.deleted_objects = plan.delete.len();
        self.deleted_bytes = plan.delete_bytes;
        self.kept_objects = plan.keep.len();
        self.kept_bytes = plan.keep_bytes;
        self.deleted_backups = plan.deleted_backups;
        self.incomplete_backups = plan.incomplete_backups;
        self.kept_backups = plan.kept_backups;
        if !plan.notes.is_empty() {
            self.note = Some(plan.notes.join("; "));
        }
        self
    }
}

pub struct ArchiveMaintenance {
    store: Store,
    catalog: Arc<Catalog>,
    archive: ObjectStore,
    settings: RetentionSettings,
    /// How often missing or stale `instance.json` documents are written again.
    doc_interval: Duration,
    /// Days audit rows are kept (`audit.retention_days`); None: forever, or not this loop's job.
    audit_days: Option<u64>,
    /// Instances whose last attempt failed, so that each failure is logged once.
    failing: Mutex<HashSet<InstanceId>>,
    /// `state.retention_days` (0: the state database is not pruned).
    state_retention_days: u64,
}

impl ArchiveMaintenance {
    pub fn new(
        store: Store,
        catalog: Arc<Catalog>,
        archive: ObjectStore,
        settings: RetentionSettings,
        doc_interval: Duration,
    ) -> Self {
        Self {
            store,
            catalog,
            archive,
            settings,
            doc_interval,
            audit_days: None,
            failing: Mutex::new(HashSet::new()),
            state_retention_days: 0,
        }
    }

    /// Also prunes the state database every pass (`state.retention_days`; 0: never).
    pub fn with_state_retention(mut self, days: u64) -> Self {
        self.state_retention_days = days;
        self
    }

    /// One pass of the state database's retention as of `now` (see `state_retention`).
    pub async fn prune_state(&self, now: DateTime<Utc>) -> anyhow::Result<crate::store::Pruned> {
        Ok(super::prune_state(&self.store, now, self.state_retention_days).await?)
    }

    /// Also removes audit rows older than `days` (0: keeps them forever) on each pass.
    pub fn with_audit_retention_days(mut self, days: u64) -> Self {
        self.audit_days = (days > 0).then_some(days);
        self
    }

    /// Removes the audit rows past their retention as of `now` (`Store::prune_audit_events`
    /// keeps each instance's origin). Returns how many went.
    pub async fn prune_audit(&self, now: DateTime<Utc>) -> anyhow::Result<u64> {
        let Some(days) = self.audit_days else {
            return Ok(0);
        };
        let days = i64::try_from(days).unwrap_or(i64::MAX / 2);
        let before = now - chrono::Duration::days(days.min(100_000));
        Ok(self
            .store
            .prune_audit_events(before.timestamp_millis())
            .await?)
    }

    /// Prunes or reaps every instance's archive as of `now` (only reports when `dry_run`).
    /// Fails only when the state database cannot be read; per-instance failures are in the
    /// report.
    pub async fn prune_all(&self, now: DateTime<Utc>, dry_run: bool) -> anyhow::Result<PassReport> {
        let instances = self.store.instances_in_states(InstanceState::ALL).await?;
        let mut report = PassReport {
            at: now,
            dry_run,
            instances: Vec::with_capacity(instances.len()),
        };
        for instance in &instances {
            let outcome = self.prune_one(instance, now, dry_run).await;
            let entry = match outcome {
                Ok(r) => {
                    self.recovered(&instance.id);
                    r
                }
                Err(e) => {
                    self.failed(&instance.id, "archive retention", &e);
                    let mut r = InstanceReport::new(instance, "skip");
                    r.error = Some(format!("{e:#}"));
                    r
                }
            };
            report.instances.push(entry);
        }
        Ok(report)
    }

    async fn prune_one(
        &self,
        instance: &InstanceRecord,
        now: DateTime<Utc>,
        dry_run: bool,
    ) -> anyhow::Result<InstanceReport> {
        let prefix = instance_doc::instance_prefix(instance)?;
        match instance.state {
            // Nothing archived worth judging yet, and its archive is being set up.
            InstanceState::Provisioning => {
                let mut r = InstanceReport::new(instance, "skip");
                r.note = Some("still provisioning".into());
                Ok(r)
            }
            InstanceState::Deleted => {
                if self.store.instance_reaped_at(&instance.id).await?.is_some() {
                    let mut r = InstanceReport::new(instance, "skip");
                    r.note = Some("reaped earlier".into());
                    return Ok(r);
                }
                let days = i64::try_from(self.settings.deleted_days).unwrap_or(i64::MAX / 2);
                let due = instance
                    .deleted_at
                    .and_then(DateTime::from_timestamp_millis)
                    .map(|t| t + chrono::Duration::days(days));
                match due {
                    Some(due) if due <= now => {
                        let plan =
                            retention::reap_instance(&self.archive, &prefix, dry_run).await?;
                        if !dry_run {
                            self.store
                                .set_instance_reaped(&instance.id, now.timestamp_millis())
                                .await?;
                            self.store.forget_backups(&instance.id, None).await?;
                            instance_doc::sync_instance_doc_or_mark_stale(
                                &self.store,
                                &self.catalog,
                                &self.archive,
                                &instance.id,
                                "reaped",
                            )
                            .await;
                            tracing::info!(instance = %instance.id, objects = plan.delete.len(), bytes = plan.delete_bytes, "deleted instance's archive reaped");
                        }
                        Ok(InstanceReport::new(instance, "reap").with_plan(plan))
                    }
                    _ => {
                        let mut r = InstanceReport::new(instance, "keep");
                        r.note = Some(match due {
                            Some(due) => format!("deleted; whole archive kept until {due}"),
                            None => "deleted without a deletion time; kept".into(),
                        });
                        Ok(r)
                    }
                }
            }
            _ => {
                let Some(plan) = self.catalog.plan(&instance.service_id, &instance.plan_id) else {
                    // Never delete by a guessed policy.
                    let mut r = InstanceReport::new(instance, "skip");
                    r.note = Some(format!(
                        "plan {} is not in the catalog; nothing pruned",
                        instance.plan_id
                    ));
                    return Ok(r);
                };
                let policy = RetentionPolicy::days(plan.archive.recovery_window_days);
                let plan = retention::prune_instance(&self.archive, &prefix, now, &policy, dry_run)
                    .await?;
                if !dry_run && !plan.deleted_backups.is_empty() {
                    // The rows follow the archive: a backup retention deleted is no more.
                    self.store
                        .forget_backups(&instance.id, Some(&plan.deleted_backups))
                        .await?;
                }
                if !dry_run && !plan.delete.is_empty() {
                    tracing::info!(instance = %instance.id, objects = plan.delete.len(), bytes = plan.delete_bytes, backups = plan.deleted_backups.len(), "archive pruned to the recovery window");
                }
                Ok(InstanceReport::new(instance, "prune").with_plan(plan))
            }
        }
    }

    /// Writes every missing or stale `instance.json` (after a failed write, or ones that no
    /// longer match the database when `all`).
    pub async fn sync_docs(&self, all: bool) -> anyhow::Result<()> {
        let failed = if all {
            let mut failed = Vec::new();
            for instance in self.store.instances_in_states(InstanceState::ALL).await? {
                // A follower has no archive of its own (nor an instance.json).
                if instance.state == InstanceState::Provisioning || instance.leader_id.is_some() {
                    continue;
                }
                if let Err(e) = instance_doc::sync_instance_doc(
                    &self.store,
                    &self.catalog,
                    &self.archive,
                    &instance.id,
                )
                .await
                {
                    failed.push((instance.id, e));
                }
            }
            failed
        } else {
            instance_doc::write_stale_docs(&self.store, &self.catalog, &self.archive)
                .await?
                .1
        };
        for (id, e) in failed {
            self.failed(&id, "write instance.json", &e);
        }
        Ok(())
    }

    fn failed(&self, id: &InstanceId, what: &str, e: &anyhow::Error) {
        let first = self
            .failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone());
        if first {
            tracing::warn!(instance = %id, error = format!("{e:#}"), what, "archive maintenance failed for this instance; retrying every pass");
        } else {
            tracing::debug!(instance = %id, error = format!("{e:#}"), what, "archive maintenance still failing");
        }
    }

    fn recovered(&self, id: &InstanceId) {
        if self
            .failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
        {
            tracing::info!(instance = %id, "archive maintenance works again for this instance");
        }
    }

    /// Writes stale documents every `doc_interval`; prunes, reaps and re-checks every document
    /// every `retention.interval_secs`, starting at once. Until `shutdown`.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) {
        let every = Duration::from_secs(self.settings.interval_secs.max(1));
        let mut next_prune = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= next_prune {
                next_prune += every;
                match self.prune_all(Utc::now(), false).await {
                    Ok(report) if report.deleted_objects() > 0 => {
                        tracing::info!(
                            objects = report.deleted_objects(),
                            bytes = report.deleted_bytes(),
                            failures = report.failures(),
                            "archive retention pass done"
                        )
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = format!("{e:#}"), "archive retention pass failed")
                    }
                }
                if let Err(e) = self.sync_docs(true).await {
                    tracing::warn!(error = format!("{e:#}"), "instance.json sweep failed");
                }
                match self.prune_state(Utc::now()).await {
                    Ok(pruned) if pruned.total() > 0 => tracing::info!(
                        jobs = pruned.jobs,
                        operations = pruned.operations,
                        bindings = pruned.bindings,
                        drills = pruned.drills,
                        "state database pruned"
                    ),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = format!("{e:#}"), "state database pruning failed")
                    }
                }
                match self.prune_audit(Utc::now()).await {
                    Ok(0) => {}
                    Ok(rows) => {
                        tracing::info!(rows, "audit rows past audit.retention_days removed")
                    }
                    Err(e) => tracing::warn!(error = format!("{e:#}"), "audit pruning failed"),
                }
            } else if let Err(e) = self.sync_docs(false).await {
                tracing::warn!(error = format!("{e:#}"), "instance.json retry failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(self.doc_interval) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}
