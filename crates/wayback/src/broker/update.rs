//! Update: a plan change (a job, asynchronous only) and a rename (`context.instance_name`,
//! answered at once; `instance.json` is rewritten in the background).

use serde_json::Value;

use super::audit::Audit;
use super::instances::{
    busy_word, check_parameters, context_name, UpdateRequest, Updated, UPDATE_PARAMETERS,
};
use super::{new_operation_id, Broker, BrokerError};
use crate::domain::{InstanceId, InstanceState, OperationKind, OperationState, Originator};
use crate::jobs::{new_job, Job, JobSpec};
use crate::store::{now_millis, AuditKind, OperationRecord};

impl Broker {
    pub async fn update(&self, req: UpdateRequest) -> Result<Updated, BrokerError> {
        let existing = self.live_instance(&req.instance_id).await?;
        if req.service_id != existing.service_id {
            return Err(BrokerError::BadRequest(format!(
                "service_id {:?} is not this instance's service ({:?}).",
                req.service_id, existing.service_id
            )));
        }
        let target_plan = req
            .plan_id
            .clone()
            .unwrap_or_else(|| existing.plan_id.clone());
        let plan = self.check_plan(&existing.service_id, &target_plan)?;
        Self::check_maintenance(plan, req.maintenance_version.as_deref())?;
        if let Some(p) = &req.parameters {
            check_parameters(p, UPDATE_PARAMETERS, "an update")?;
        }
        let unfollow = super::follow::parse_unfollow(req.parameters.as_ref())?;
        if unfollow {
            if existing.leader_id.is_none() {
                return Err(BrokerError::Unprocessable(format!(
                    "Service instance {} is not a follower, so there is nothing to unfollow; \
                     \"unfollow\" applies to instances made with -c '{{\"follow\":NAME}}'.",
                    existing.id
                )));
            }
            if target_plan != existing.plan_id {
                return Err(BrokerError::BadRequest(
                    "\"unfollow\" cannot be combined with a plan change: unfollow first, then \
                     change the plan."
                        .into(),
                ));
            }
        }
        let dashboard_url = self.dashboard_url(&existing.id);
        match existing.state {
            InstanceState::Ready => {}
            InstanceState::Updating => {
                // The same PATCH again while it runs gets the same operation.
                let op = self.ctx.store.latest_operation(&existing.id, None).await?;
                if let Some(op) = op.filter(|o| {
                    o.kind == OperationKind::Update && o.state == OperationState::InProgress
                }) {
                    let same_plan = self
                        .ctx
                        .store
                        .get_job(&op.id)
                        .await?
                        .and_then(|j| Job::from_record(&j).ok())
                        .is_some_and(|j| {
                            matches!(&j.spec, JobSpec::Update(u)
                                if u.plan_id == target_plan && u.unfollow == unfollow)
                        });
                    if same_plan {
                        return Ok(Updated::Accepted {
                            operation: op.id,
                            dashboard_url,
                        });
                    }
                }
                return Err(BrokerError::Concurrency(format!(
                    "Service instance {} is being updated; wait until that ends.",
                    existing.id
                )));
            }
            other => {
                return Err(BrokerError::Concurrency(format!(
                    "Service instance {} is being {}; wait until that ends.",
                    existing.id,
                    busy_word(other)
                )))
            }
        }
        let plan_change = target_plan != existing.plan_id;
        if (plan_change || unfollow) && !req.accepts_incomplete {
            return Err(BrokerError::AsyncRequired);
        }
        let mut ha_change = None;
        if plan_change {
            if let Some(from) = self
                .ctx
                .catalog
                .plan(&existing.service_id, &existing.plan_id)
            {
                ha_change = self.check_ha_plan_change(&existing, from, plan).await?;
            }
            self.check_plan_change(&existing, plan).await?;
        }
        if !plan_change && !unfollow {
            // A rename (`cf rename-service`) is context only: record it and answer at once.
            self.rename(&existing.id, &req.context, req.originator.as_ref())
                .await?;
            return Ok(Updated::Done { dashboard_url });
        }
        let now = now_millis();
        let operation = new_operation_id(OperationKind::Update);
        let op = OperationRecord {
            id: operation.clone(),
            instance_id: existing.id.clone(),
            binding_id: None,
            kind: OperationKind::Update,
            state: OperationState::InProgress,
            description: if unfollow {
                "Unfollowing: queued"
            } else {
                "Updating: queued"
            }
            .into(),
            created_at: now,
            updated_at: now,
            finished_at: None,
        };
        let spec = match (unfollow, ha_change) {
            (true, _) => JobSpec::unfollow(target_plan.clone()),
            // Between single and HA: a standby added or removed (`jobs/steps/ha_update.rs`).
            (false, Some(change)) => JobSpec::ha_update(target_plan.clone(), change),
            (false, None) => JobSpec::update(target_plan.clone()),
        };
        let job = new_job(&operation, &existing.id, None, spec);
        if !self
            .ctx
            .store
            .transition_instance(
                &existing.id,
                &[InstanceState::Ready],
                InstanceState::Updating,
                &op,
                &job,
            )
            .await?
        {
            return Err(BrokerError::Concurrency(format!(
                "Service instance {} is busy with another operation; try again when it ends.",
                existing.id
            )));
        }
        tracing::info!(instance = %existing.id, plan = %plan.name, unfollow, "update accepted");
        let mut detail = serde_json::json!({ "plan_id": target_plan, "plan": plan.name });
        if unfollow {
            detail["unfollow"] = serde_json::Value::Bool(true);
        }
        let audit = Audit::new(AuditKind::Update, &existing.id, req.originator.as_ref());
        self.audit(audit.operation(&operation).detail(detail)).await;
        self.rename(&existing.id, &req.context, req.originator.as_ref())
            .await?;
        self.worker.wake();
        Ok(Updated::Accepted {
            operation,
            dashboard_url,
        })
    }

    /// Records `context.instance_name` as the instance's name if it is new.
    async fn rename(
        &self,
        id: &InstanceId,
        context: &Value,
        originator: Option<&Originator>,
    ) -> Result<(), BrokerError> {
        if let Some(name) = context_name(context) {
            if self.ctx.store.record_name(id, name, "update").await? {
                tracing::info!(instance = %id, name, "instance renamed");
                let detail = serde_json::json!({ "name": name });
                self.audit(Audit::new(AuditKind::Rename, id, originator).detail(detail))
                    .await;
                self.rewrite_instance_doc(id).await?;
            }
        }
        Ok(())
    }

    /// Rewrites `instance.json` in the background: a rename answers at once, and a storage
    /// outage must not fail it. Marked stale first, so that the supervisor's maintenance pass
    /// writes it if this attempt fails or the broker stops before it ends.
    async fn rewrite_instance_doc(&self, id: &InstanceId) -> Result<(), BrokerError> {
        self.ctx.store.set_instance_doc_hash(id, None).await?;
        let ctx = self.ctx.clone();
        let id = id.clone();
        tokio::spawn(async move {
            crate::jobs::instance_doc::sync_instance_doc_or_mark_stale(
                &ctx.store,
                &ctx.catalog,
                &ctx.archive,
                &id,
                "renamed",
            )
            .await;
        });
        Ok(())
    }
}
