//! Provision (and a repeated provision), and the request and answer types of every instance
//! call; update, deprovision and the reads are in `update`, `deprovision` and `fetch`.

use serde_json::{Map, Value};

use super::audit::{clone_detail, Audit};
use super::{new_operation_id, Broker, BrokerError};
use crate::domain::{
    InstanceId, InstanceState, OperationKind, OperationState, OrgGuid, Originator, SpaceGuid,
};
use crate::jobs::{new_job, JobSpec};
use crate::store::{now_millis, AuditKind, InstanceRecord, OperationRecord, StoreError};

/// Provision parameters this version accepts (`-c '{…}'`): undo (see `clone`).
const PROVISION_PARAMETERS: &[&str] = &[
    super::clone::CLONE_FROM,
    super::clone::POINT_IN_TIME,
    super::follow::FOLLOW,
];
/// Update parameters this version accepts.
pub(super) const UPDATE_PARAMETERS: &[&str] = &[super::follow::UNFOLLOW];

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
    /// Who asked (`X-Broker-API-Originating-Identity`), for the audit trail.
    pub originator: Option<Originator>,
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
    /// Who asked, for the audit trail.
    pub originator: Option<Originator>,
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
    /// A follower's leader and lag, or a leader's followers (`broker::followers`); None for
    /// an instance that is neither.
    pub replication: Option<super::followers::Replication>,
    /// An HA instance's members (`broker::ha`); None for a single-member instance.
    pub ha: Option<super::ha::HaView>,
    /// When its cluster was stopped for being idle (Unix ms; issue 17); None while it runs.
    pub stopped_at: Option<i64>,
    /// Why a client's connection could not wake it, and when (Unix ms); None once it started.
    pub wake_error: Option<(String, i64)>,
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
pub(super) fn check_parameters(
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

    pub(super) fn check_maintenance(
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
        let (clone, follow) = match &parameters {
            Value::Object(m) => (
                super::clone::parse_params(m)?,
                super::follow::parse_params(m)?,
            ),
            _ => (None, None),
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
        self.check_ha_provision(plan, clone.is_some(), follow.is_some())
            .await?;
        let leader = match &follow {
            Some(from) => Some(
                self.check_follow(&req.instance_id, &req.space_guid, plan, from)
                    .await?,
            ),
            None => None,
        };
        let (source, queued) = match &clone {
            None if leader.is_some() => (None, "Following: queued".to_string()),
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
            leader_id: leader.as_ref().map(|l| l.leader.clone()),
            stopped_at: None,
            wake_error: None,
            wake_error_at: None,
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
        let audit = match &source {
            None if leader.is_some() => {
                let l = leader.as_ref().expect("checked");
                Audit::new(
                    AuditKind::Provision,
                    &req.instance_id,
                    req.originator.as_ref(),
                )
                .detail(serde_json::json!({ "follow": l.leader.as_str(), "follow_name": l.name }))
            }
            None => Audit::new(
                AuditKind::Provision,
                &req.instance_id,
                req.originator.as_ref(),
            ),
            Some(s) => Audit::new(AuditKind::Clone, &req.instance_id, req.originator.as_ref())
                .detail(clone_detail(s)),
        };
        let audit = audit.operation(&operation);
        let spec = match leader {
            Some(l) => JobSpec::follow(l),
            // An HA plan (never a clone or a follower: refused above): its own sequence.
            None if plan.ha.is_some() => JobSpec::provision_ha(),
            None => JobSpec::provision(source),
        };
        let job = new_job(&operation, &req.instance_id, None, spec);
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
        self.audit(audit).await;
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
}

pub(super) fn busy_word(state: InstanceState) -> &'static str {
    match state {
        InstanceState::Provisioning => "provisioned",
        InstanceState::Updating => "updated",
        InstanceState::Deprovisioning => "deleted",
        InstanceState::Failed => "cleaned up",
        InstanceState::Ready => "used",
        InstanceState::Deleted => "deleted",
    }
}
