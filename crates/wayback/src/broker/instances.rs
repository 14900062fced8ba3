//! Provision, update, deprovision, fetch and last_operation for instances.

use serde_json::{Map, Value};

use super::{new_operation_id, Broker, BrokerError};
use crate::domain::{InstanceId, InstanceState, OperationKind, OperationState, OrgGuid, SpaceGuid};
use crate::jobs::{new_job, Job, JobSpec};
use crate::store::{now_millis, InstanceRecord, OperationRecord, StoreError};

/// Provision parameters this version accepts (`-c '{…}'`): undo (see `clone`).
const PROVISION_PARAMETERS: &[&str] = &[super::clone::CLONE_FROM, super::clone::POINT_IN_TIME];
/// Update parameters this version accepts.
const UPDATE_PARAMETERS: &[&str] = &[];

/// The application database and its owner role, the same in every instance.
const DATABASE_NAME: &str = "app";
const OWNER_ROLE: &str = "app_owner";

/// A validated provision request.
#[derive(Debug, Clone)]
pub struct ProvisionRequest {
    pub instance_id: InstanceId,
    pub service_id: String,
    pub plan_id: String,
    pub organization_guid: OrgGuid,
    pub space_guid: SpaceGuid,
    pub context: Value,
    pub parameters: Value,
    pub maintenance_version: Option<String>,
    pub accepts_incomplete: bool,
}

#[derive(Debug, PartialEq)]
pub enum Provisioned {
    /// An identical instance exists and is ready (200).
    Exists { dashboard_url: String },
    /// Provisioning runs (202); also for an identical PUT while it runs.
    Accepted {
        operation: String,
        dashboard_url: String,
    },
}

#[derive(Debug, Clone)]
pub struct UpdateRequest {
    pub instance_id: InstanceId,
    pub service_id: String,
    pub plan_id: Option<String>,
    pub context: Value,
    pub parameters: Option<Value>,
    pub maintenance_version: Option<String>,
    pub accepts_incomplete: bool,
}

#[derive(Debug, PartialEq)]
pub enum Updated {
    /// Applied at once (a rename) or nothing to do (200).
    Done { dashboard_url: String },
    Accepted {
        operation: String,
        dashboard_url: String,
    },
}

#[derive(Debug, PartialEq)]
pub enum Deprovisioned {
    Accepted { operation: String },
}

/// What GET instance returns.
#[derive(Debug)]
pub struct InstanceView {
    pub service_id: String,
    pub plan_id: String,
    pub dashboard_url: String,
    pub parameters: Value,
}

/// What last_operation returns.
#[derive(Debug)]
pub struct LastOperation {
    pub state: OperationState,
    pub description: String,
}

/// The `instance_name` the platform put in `context`, if any.
pub(crate) fn context_name(context: &Value) -> Option<&str> {
    context
        .get("instance_name")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|n| !n.is_empty())
}

/// `parameters` must be an object whose keys are all in `accepted`.
fn check_parameters(
    parameters: &Value,
    accepted: &[&str],
    what: &str,
) -> Result<Map<String, Value>, BrokerError> {
    let map = match parameters {
        Value::Null => return Ok(Map::new()),
        Value::Object(m) => m.clone(),
        _ => {
            return Err(BrokerError::BadRequest(
                "\"parameters\" must be a JSON object, e.g. -c '{}'.".into(),
            ))
        }
    };
    if let Some(unknown) = map.keys().find(|k| !accepted.contains(&k.as_str())) {
        let known = if accepted.is_empty() {
            format!("{what} accepts no parameters")
        } else {
            format!("{what} accepts: {}", accepted.join(", "))
        };
        return Err(BrokerError::BadRequest(format!(
            "Unknown parameter {unknown:?}: {known}. Remove it from -c and try again."
        )));
    }
    Ok(map)
}

impl Broker {
    pub(crate) fn check_plan(
        &self,
        service_id: &str,
        plan_id: &str,
    ) -> Result<&crate::catalog::Plan, BrokerError> {
        let service = self.ctx.catalog.service(service_id).ok_or_else(|| {
            BrokerError::BadRequest(format!(
                "Unknown service_id {service_id:?}: this broker offers {}. Refresh the platform's copy of the catalog (cf update-service-broker).",
                self.ctx.catalog.services().iter().map(|s| format!("{} ({})", s.name, s.id)).collect::<Vec<_>>().join(", ")
            ))
        })?;
        service.plans.iter().find(|p| p.id == plan_id).ok_or_else(|| {
            BrokerError::BadRequest(format!(
                "Unknown plan_id {plan_id:?} for service {:?}: the plans are {}. Refresh the platform's copy of the catalog (cf update-service-broker).",
                service.name,
                service.plans.iter().map(|p| format!("{} ({})", p.name, p.id)).collect::<Vec<_>>().join(", ")
            ))
        })
    }

    fn check_maintenance(
        plan: &crate::catalog::Plan,
        requested: Option<&str>,
    ) -> Result<(), BrokerError> {
        match (requested, plan.maintenance_version.as_deref()) {
            (None, _) => Ok(()),
            (Some(r), Some(p)) if r == p => Ok(()),
            (Some(r), p) => Err(BrokerError::MaintenanceInfoConflict(format!(
                "maintenance_info.version {r:?} does not match the plan's ({}). Fetch the broker's catalog again.",
                p.unwrap_or("none")
            ))),
        }
    }

    pub async fn provision(&self, req: ProvisionRequest) -> Result<Provisioned, BrokerError> {
        let plan = self.check_plan(&req.service_id, &req.plan_id)?;
        Self::check_maintenance(plan, req.maintenance_version.as_deref())?;
        let parameters = Value::Object(check_parameters(
            &req.parameters,
            PROVISION_PARAMETERS,
            "this plan",
        )?);
        let clone = match &parameters {
            Value::Object(m) => super::clone::parse_params(m)?,
            _ => None,
        };
        if !req.accepts_incomplete {
            return Err(BrokerError::AsyncRequired);
        }
        let dashboard_url = self.dashboard_url(&req.instance_id);
        if let Some(existing) = self.ctx.store.get_instance(&req.instance_id).await? {
            return self
                .provision_again(&req, &parameters, existing, dashboard_url)
                .await;
        }
        let (source, queued) = match &clone {
            None => (None, "Provisioning: queued".to_string()),
            Some(c) => {
                let source = self
                    .check_clone(&req.instance_id, &req.space_guid, plan, c)
                    .await?;
                let queued = format!("Cloning {source}: queued");
                (Some(source), queued)
            }
        };
        let now = now_millis();
        let operation = new_operation_id(OperationKind::Provision);
        let record = InstanceRecord {
            id: req.instance_id.clone(),
            service_id: req.service_id.clone(),
            plan_id: req.plan_id.clone(),
            organization_guid: req.organization_guid.to_string(),
            space_guid: req.space_guid.to_string(),
            parameters,
            context: req.context.clone(),
            state: InstanceState::Provisioning,
            port: None,
            database_name: DATABASE_NAME.into(),
            owner_role: OWNER_ROLE.into(),
            created_at: now,
            updated_at: now,
            deleted_at: None,
            agent: None,
            agent_host: None,
        };
        let op = OperationRecord {
            id: operation.clone(),
            instance_id: req.instance_id.clone(),
            binding_id: None,
            kind: OperationKind::Provision,
            state: OperationState::InProgress,
            description: queued,
            created_at: now,
            updated_at: now,
            finished_at: None,
        };
        let job = new_job(
            &operation,
            &req.instance_id,
            None,
            JobSpec::provision(source),
        );
        match self
            .ctx
            .store
            .insert_instance(&record, context_name(&req.context), &op, &job)
            .await
        {
            Ok(()) => {}
            // Another request with the same id won the race: answer as for a repeat.
            Err(StoreError::Conflict(_)) => {
                let existing = self
                    .ctx
                    .store
                    .get_instance(&req.instance_id)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("instance vanished"))?;
                return self
                    .provision_again(&req, &record.parameters, existing, dashboard_url)
                    .await;
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(instance = %req.instance_id, plan = %plan.name, space = %req.space_guid, "provision accepted");
        self.worker.wake();
        Ok(Provisioned::Accepted {
            operation,
            dashboard_url,
        })
    }

    /// A PUT for an id we know: 200/202 when identical, else 409 (or 422 while busy).
    async fn provision_again(
        &self,
        req: &ProvisionRequest,
        parameters: &Value,
        existing: InstanceRecord,
        dashboard_url: String,
    ) -> Result<Provisioned, BrokerError> {
        let identical = existing.service_id == req.service_id
            && existing.plan_id == req.plan_id
            && existing.organization_guid == req.organization_guid.as_str()
            && existing.space_guid == req.space_guid.as_str()
            && &existing.parameters == parameters;
        if !identical || existing.state == InstanceState::Deleted {
            let why = if existing.state == InstanceState::Deleted {
                "existed and was deleted; instance ids are never reused, so choose a new id"
            } else {
                "already exists with different attributes (service, plan, organization, space or parameters)"
            };
            return Err(BrokerError::Conflict(format!(
                "Service instance {} {why}.",
                existing.id
            )));
        }
        match existing.state {
            InstanceState::Ready => Ok(Provisioned::Exists { dashboard_url }),
            InstanceState::Provisioning => {
                let op = self
                    .ctx
                    .store
                    .latest_operation(&existing.id, None)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("provisioning instance without operation"))?;
                Ok(Provisioned::Accepted {
                    operation: op.id,
                    dashboard_url,
                })
            }
            InstanceState::Failed => Err(BrokerError::Conflict(format!(
                "Service instance {} failed to provision. Delete it and create it again.",
                existing.id
            ))),
            InstanceState::Updating | InstanceState::Deprovisioning | InstanceState::Deleted => {
                Err(BrokerError::Concurrency(format!(
                    "Service instance {} is being {}; wait until that ends.",
                    existing.id,
                    busy_word(existing.state)
                )))
            }
        }
    }

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
                        .is_some_and(
                            |j| matches!(&j.spec, JobSpec::Update(u) if u.plan_id == target_plan),
                        );
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
        if plan_change && !req.accepts_incomplete {
            return Err(BrokerError::AsyncRequired);
        }
        if !plan_change {
            // A rename (`cf rename-service`) is context only: record it and answer at once.
            self.rename(&existing.id, &req.context).await?;
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
            description: "Updating: queued".into(),
            created_at: now,
            updated_at: now,
            finished_at: None,
        };
        let job = new_job(&operation, &existing.id, None, JobSpec::update(target_plan));
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
        self.rename(&existing.id, &req.context).await?;
        tracing::info!(instance = %existing.id, plan = %plan.name, "plan change accepted");
        self.worker.wake();
        Ok(Updated::Accepted {
            operation,
            dashboard_url,
        })
    }

    /// Records `context.instance_name` as the instance's name if it is new.
    async fn rename(&self, id: &InstanceId, context: &Value) -> Result<(), BrokerError> {
        if let Some(name) = context_name(context) {
            if self.ctx.store.record_name(id, name, "update").await? {
                tracing::info!(instance = %id, name, "instance renamed");
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

    pub async fn deprovision(
        &self,
        id: &InstanceId,
        service_id: &str,
        plan_id: &str,
        accepts_incomplete: bool,
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
        self.worker.wake();
        Ok(Deprovisioned::Accepted { operation })
    }

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

fn busy_word(state: InstanceState) -> &'static str {
    match state {
        InstanceState::Provisioning => "provisioned",
        InstanceState::Updating => "updated",
        InstanceState::Deprovisioning => "deleted",
        InstanceState::Failed => "cleaned up",
        InstanceState::Ready => "used",
        InstanceState::Deleted => "deleted",
    }
}
