//! The reads of the OSB API: fetch an instance, and the last operation of one.

use super::instances::{InstanceView, LastOperation};
use super::{Broker, BrokerError};
use crate::domain::{InstanceId, InstanceState, OperationKind, OperationState};
use crate::store::InstanceRecord;

impl Broker {
    pub async fn fetch_instance(&self, id: &InstanceId) -> Result<InstanceView, BrokerError> {
        let existing = self.ctx.store.get_instance(id).await?;
        match existing {
            Some(i) if matches!(i.state, InstanceState::Ready) => Ok(InstanceView {
                dashboard_url: self.dashboard_url(&i.id),
                service_id: i.service_id,
                plan_id: i.plan_id,
                parameters: i.parameters,
            }),
            Some(i) if i.state == InstanceState::Updating => Err(BrokerError::Concurrency(
                format!("Service instance {id} is being updated; fetch it when the update ends."),
            )),
            Some(i) if i.state == InstanceState::Provisioning => Err(BrokerError::NotFound(
                format!("Service instance {id} is still being provisioned."),
            )),
            _ => Err(BrokerError::NotFound(format!(
                "Service instance {id} does not exist."
            ))),
        }
    }

    pub async fn last_operation(
        &self,
        id: &InstanceId,
        operation: Option<&str>,
    ) -> Result<LastOperation, BrokerError> {
        // The operation is read before the instance: a job records its effect on the instance
        // before it marks the operation finished, so a succeeded deprovision read here always
        // meets the instance already deleted (the other order could answer 200 instead of 410).
        let op = match operation {
            Some(op_id) => self
                .ctx
                .store
                .get_operation(op_id)
                .await?
                .filter(|op| op.instance_id == *id && op.binding_id.is_none()),
            None => self.ctx.store.latest_operation(id, None).await?,
        };
        let Some(instance) = self.ctx.store.get_instance(id).await? else {
            return Err(BrokerError::NotFound(format!(
                "Service instance {id} does not exist."
            )));
        };
        let op = match (op, operation) {
            (Some(op), _) => op,
            (None, Some(op_id)) => {
                return Err(BrokerError::BadRequest(format!(
                    "Operation {op_id:?} is not an operation of service instance {id}."
                )))
            }
            (None, None) => {
                return Err(BrokerError::NotFound(format!(
                    "Service instance {id} has no operation."
                )))
            }
        };
        // A finished deprovision: the platform forgets the instance on 410.
        if op.kind == OperationKind::Deprovision
            && op.state == OperationState::Succeeded
            && instance.state == InstanceState::Deleted
        {
            return Err(BrokerError::Gone);
        }
        Ok(LastOperation {
            state: op.state,
            description: op.description,
        })
    }

    /// An instance that exists and is not deleted, else 404.
    pub(crate) async fn live_instance(
        &self,
        id: &InstanceId,
    ) -> Result<InstanceRecord, BrokerError> {
        match self.ctx.store.get_instance(id).await? {
            Some(i) if i.state != InstanceState::Deleted => Ok(i),
            _ => Err(BrokerError::NotFound(format!(
                "Service instance {id} does not exist."
            ))),
        }
    }
}
