//! The reads of the OSB API: fetch an instance, and the last operation of one.

use super::instances::{InstanceView, LastOperation};
use super::{Broker, BrokerError};
use crate::domain::{InstanceId, InstanceState};
use crate::store::InstanceRecord;

impl Broker {
    pub async fn fetch_instance(&self, id: &InstanceId) -> Result<InstanceView, BrokerError> {
        let existing = self.ctx.store.get_instance(id).await?;
        match existing {
            Some(i) if matches!(i.state, InstanceState::Ready) => {
                let replication = self.replication(&i).await?;
                let ha = self.ha_view(&i).await?;
                Ok(InstanceView {
                    dashboard_url: self.dashboard_url(&i.id),
                    service_id: i.service_id,
                    plan_id: i.plan_id,
                    parameters: i.parameters,
                    replication,
                    ha,
                    stopped_at: i.stopped_at,
                    wake_error: i.wake_error.zip(i.wake_error_at),
                })
            }
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

    /// The operation `operation` names, else the instance's latest one.
    ///
    /// `operation` is a hint: a value this broker never issued (a checker sends the literal
    /// `provision`) answers for the instance's current operation, while one that names another
    /// instance's or a binding's operation is a 400. A finished deprovision answers 200
    /// `succeeded`: the operation is kept as a tombstone, and the platform forgets the
    /// instance on `succeeded` as it would on 410.
    pub async fn last_operation(
        &self,
        id: &InstanceId,
        operation: Option<&str>,
    ) -> Result<LastOperation, BrokerError> {
        let named = match operation {
            Some(op_id) => self.ctx.store.get_operation(op_id).await?,
            None => None,
        };
        if self.ctx.store.get_instance(id).await?.is_none() {
            return Err(BrokerError::NotFound(format!(
                "Service instance {id} does not exist."
            )));
        }
        let op = match named {
            Some(op) if op.instance_id == *id && op.binding_id.is_none() => Some(op),
            Some(_) => {
                return Err(BrokerError::BadRequest(format!(
                    "Operation {:?} is not an operation of service instance {id}.",
                    operation.unwrap_or_default()
                )))
            }
            None => self.ctx.store.latest_operation(id, None).await?,
        };
        let Some(op) = op else {
            return Err(BrokerError::NotFound(format!(
                "Service instance {id} has no operation."
            )));
        };
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
