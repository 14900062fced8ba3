//! Deprovision: the delete job, or the answer for an instance already gone or being deleted.

use super::audit::Audit;
use super::instances::Deprovisioned;
use super::{new_operation_id, Broker, BrokerError};
use crate::domain::{InstanceId, InstanceState, OperationKind, OperationState, Originator};
use crate::jobs::{new_job, JobSpec};
use crate::store::{now_millis, AuditKind, OperationRecord};

impl Broker {
    pub async fn deprovision(
        &self,
        id: &InstanceId,
        service_id: &str,
        plan_id: &str,
        accepts_incomplete: bool,
        originator: Option<&Originator>,
    ) -> Result<Deprovisioned, BrokerError> {
        let existing = match self.ctx.store.get_instance(id).await? {
            Some(i) if i.state != InstanceState::Deleted => i,
            _ => return Err(BrokerError::Gone),
        };
        if service_id != existing.service_id {
            return Err(BrokerError::BadRequest(format!(
                "service_id {service_id:?} is not this instance's service ({:?}).",
                existing.service_id
            )));
        }
        if self.ctx.catalog.plan(service_id, plan_id).is_none() {
            return Err(BrokerError::BadRequest(format!(
                                "Unknown plan_id {plan_id:?} for this service. Refresh the platform's copy of the catalog (cf update-service-broker)."
            )));
        }
        if !accepts_incomplete {
            return Err(BrokerError::AsyncRequired);
        }
        if existing.state == InstanceState::Deprovisioning {
            let op = self
                .ctx
                .store
                .latest_operation(id, None)
                .await?
                .ok_or_else(|| anyhow::anyhow!("deprovisioning without operation"))?;
            return Ok(Deprovisioned::Accepted { operation: op.id });
        }
        self.check_no_followers(id).await?;
        if existing.state == InstanceState::Updating {
            return Err(BrokerError::Concurrency(format!(
                "Service instance {id} is being updated; delete it when the update ends."
            )));
        }
        let now = now_millis();
        let operation = new_operation_id(OperationKind::Deprovision);
        let op = OperationRecord {
            id: operation.clone(),
            instance_id: id.clone(),
            binding_id: None,
            kind: OperationKind::Deprovision,
            state: OperationState::InProgress,
            description: "Deleting: queued".into(),
            created_at: now,
            updated_at: now,
            finished_at: None,
        };
        let job = new_job(&operation, id, None, JobSpec::deprovision());
        let from = [
            InstanceState::Ready,
            InstanceState::Provisioning,
            InstanceState::Failed,
        ];
        if !self
            .ctx
            .store
            .transition_instance(id, &from, InstanceState::Deprovisioning, &op, &job)
            .await?
        {
            return Err(BrokerError::Concurrency(format!(
                "Service instance {id} is busy with another operation; try again when it ends."
            )));
        }
        if existing.state == InstanceState::Provisioning {
            tracing::info!(instance = %id, "delete during provisioning: stopping the provision and cleaning up");
        }
        tracing::info!(instance = %id, "deprovision accepted");
        self.audit(Audit::new(AuditKind::Deprovision, id, originator).operation(&operation))
            .await;
        self.worker.wake();
        Ok(Deprovisioned::Accepted { operation })
    }
}
