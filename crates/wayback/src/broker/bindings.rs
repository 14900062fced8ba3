//! Bind, unbind, fetch binding and binding last_operation.

use std::time::Duration;

use serde_json::{json, Value};

use super::audit::Audit;
use super::credentials::{new_password, new_role_name, Credentials};
use super::instances::LastOperation;
use super::{new_operation_id, Broker, BrokerError};
use crate::domain::{
    BindingId, BindingState, InstanceId, InstanceState, OperationKind, OperationState, Originator,
};
use crate::jobs::{new_job, JobSpec};
use crate::store::{now_millis, AuditKind, BindingRecord, OperationRecord, StoreError};

/// Bind parameters this version accepts.
const BIND_PARAMETERS: &[&str] = &["read_only"];
/// How long a synchronous bind or unbind may take before the platform is told to retry.
const SYNC_TIMEOUT: Duration = Duration::from_secs(45);

#[derive(Debug, Clone)]
pub struct BindRequest {
    pub instance_id: InstanceId,
    pub binding_id: BindingId,
    pub service_id: String,
    pub plan_id: String,
    pub app_guid: Option<String>,
    pub bind_resource: Value,
    pub parameters: Value,
    pub accepts_incomplete: bool,
    /// Who asked, for the audit trail.
    pub originator: Option<Originator>,
}

#[derive(Debug)]
pub enum Bound {
    /// Created now, synchronously (201).
    Created(Credentials),
    /// An identical binding exists (200).
    Exists(Credentials),
    /// Binding runs (202).
    Accepted { operation: String },
}

#[derive(Debug)]
pub enum Unbound {
    /// Done synchronously (200).
    Done,
    Accepted {
        operation: String,
    },
}

#[derive(Debug)]
pub struct BindingView {
    pub credentials: Credentials,
    pub parameters: Value,
}

impl Broker {
    /// The binding's credentials, pointing at its instance (a follower's at the follower),
    /// with `read_only` for a read-only role and, on a leader, `replica_uris`: the same
    /// user and password at each of its ready followers (roles replicate).
    async fn credentials(
        &self,
        instance: &crate::store::InstanceRecord,
        binding: &BindingRecord,
    ) -> Result<Credentials, BrokerError> {
        if let Some(ha) = self.ha_credentials(instance, binding).await? {
            return Ok(ha);
        }
        let (host, port) = self.address(instance)?;
        let mut credentials = Credentials::new(
            host,
            port,
            &instance.database_name,
            &binding.role_name,
            &binding.password,
            &self.client_tls,
        );
        if binding.read_only {
            credentials.read_only = Some(true);
        }
        if instance.leader_id.is_none() {
            let mut replicas = Vec::new();
            for follower in self.ctx.store.followers_of(&instance.id).await? {
                if follower.state != InstanceState::Ready {
                    continue;
                }
                let Ok((host, port)) = self.address(&follower) else {
                    continue;
                };
                replicas.push(
                    Credentials::new(
                        host,
                        port,
                        &follower.database_name,
                        &binding.role_name,
                        &binding.password,
                        &self.client_tls,
                    )
                    .uri,
                );
            }
            if !replicas.is_empty() {
                credentials.replica_uris = Some(replicas);
            }
        }
        Ok(credentials)
    }

    /// Where apps reach the instance's cluster: on an agent, the host that agent advertises;
    /// else the broker's own.
    fn address<'a>(
        &'a self,
        instance: &'a crate::store::InstanceRecord,
    ) -> Result<(&'a str, u16), BrokerError> {
        let port = instance
            .port
            .ok_or_else(|| anyhow::anyhow!("ready instance {} without port", instance.id))?;
        let host = instance
            .agent_host
            .as_deref()
            .unwrap_or(&self.advertise_host);
        Ok((host, port))
    }

    pub async fn bind(&self, req: BindRequest) -> Result<Bound, BrokerError> {
        self.check_plan(&req.service_id, &req.plan_id)?;
        if !matches!(req.parameters, Value::Null | Value::Object(_)) {
            return Err(BrokerError::BadRequest(
                "\"parameters\" must be a JSON object.".into(),
            ));
        }
        if let Some(unknown) = req
            .parameters
            .as_object()
            .and_then(|m| m.keys().find(|k| !BIND_PARAMETERS.contains(&k.as_str())))
        {
            return Err(BrokerError::BadRequest(format!(
                "Unknown parameter {unknown:?}: bindings accept: {}. Remove it from -c and try again.",
                BIND_PARAMETERS.join(", ")
            )));
        }
        let asked_read_only = match req.parameters.get("read_only") {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => {
                return Err(BrokerError::BadRequest(format!(
                    "\"read_only\" must be true or false, not {other}: -c '{{\"read_only\":true}}' \
                     gives credentials that can read everything in the database and write nothing."
                )))
            }
        };
        let instance = self.live_instance(&req.instance_id).await?;
        if instance.leader_id.is_some() && asked_read_only == Some(false) {
            return Err(BrokerError::Unprocessable(format!(
                "Service instance {} is a follower, and followers are read-only: every binding of \
                 it is read-only. Leave out \"read_only\", or bind its leader for writes.",
                instance.id
            )));
        }
        // A follower's roles are its leader's, made read-only whatever was asked.
        let read_only = asked_read_only.unwrap_or(false) || instance.leader_id.is_some();
        if instance.service_id != req.service_id {
            return Err(BrokerError::BadRequest(format!(
                "service_id {:?} is not this instance's service ({:?}).",
                req.service_id, instance.service_id
            )));
        }
        let request = json!({
            "service_id": req.service_id,
            "plan_id": req.plan_id,
            "app_guid": req.app_guid,
            "bind_resource": req.bind_resource,
            "parameters": req.parameters.as_object().cloned().unwrap_or_default(),
        });
        if let Some(existing) = self.ctx.store.get_binding(&req.binding_id).await? {
            return self.bind_again(&req, &request, &instance, existing).await;
        }
        if instance.state == InstanceState::Failed {
            return Err(BrokerError::Unprocessable(format!(
                "Service instance {} failed to provision and cannot be bound. Delete it and create it again.",
                instance.id
            )));
        }
        if instance.state != InstanceState::Ready {
            return Err(BrokerError::Concurrency(format!(
                "Service instance {} is not ready (it is {}); bind when its operation has finished.",
                instance.id, instance.state
            )));
        }
        let now = now_millis();
        let operation = new_operation_id(OperationKind::Bind);
        let binding = BindingRecord {
            id: req.binding_id.clone(),
            instance_id: instance.id.clone(),
            request,
            role_name: new_role_name(),
            password: new_password(),
            state: BindingState::Creating,
            read_only,
            created_at: now,
            updated_at: now,
            deleted_at: None,
        };
        let op = operation_record(
            &operation,
            &binding.instance_id,
            &binding.id,
            OperationKind::Bind,
            "Binding: queued",
        );
        let job = new_job(&operation, &instance.id, Some(&binding.id), JobSpec::bind());
        match self.ctx.store.insert_binding(&binding, &op, &job).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                let existing = self
                    .ctx
                    .store
                    .get_binding(&req.binding_id)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("binding vanished"))?;
                return self
                    .bind_again(&req, &binding.request, &instance, existing)
                    .await;
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(instance = %instance.id, binding = %binding.id, "bind accepted");
        let audit = Audit::new(AuditKind::Bind, &instance.id, req.originator.as_ref());
        self.audit(audit.binding(&binding.id).operation(&operation))
            .await;
        if req.accepts_incomplete {
            self.worker.wake();
            return Ok(Bound::Accepted { operation });
        }
        let job = self.worker.run_job(&operation, SYNC_TIMEOUT).await?;
        let done = self
            .ctx
            .store
            .get_binding(&binding.id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("binding vanished"))?;
        match done.state {
            BindingState::Ready => Ok(Bound::Created(self.credentials(&instance, &done).await?)),
            _ => Err(BrokerError::Internal(anyhow::anyhow!(
                "synchronous bind {} ended in state {} ({:?})",
                binding.id,
                done.state,
                job.last_error
            ))),
        }
    }

    async fn bind_again(
        &self,
        req: &BindRequest,
        request: &Value,
        instance: &crate::store::InstanceRecord,
        existing: BindingRecord,
    ) -> Result<Bound, BrokerError> {
        let asked_read_only = request["parameters"]
            .get("read_only")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if existing.instance_id == req.instance_id
            && existing.state != BindingState::Deleted
            && instance.leader_id.is_none()
            && existing.read_only != asked_read_only
        {
            return Err(BrokerError::Conflict(format!(
                "Service binding {} already exists with read_only {}; use a new binding id for \
                 read_only {asked_read_only}.",
                existing.id, existing.read_only
            )));
        }
        if existing.instance_id != req.instance_id
            || &existing.request != request
            || existing.state == BindingState::Deleted
        {
            return Err(BrokerError::Conflict(format!(
                "Service binding {} already exists with different parameters{}; use a new binding id.",
                existing.id,
                if existing.state == BindingState::Deleted { " (or was deleted)" } else { "" }
            )));
        }
        let existing = if existing.state == BindingState::Creating && !req.accepts_incomplete {
            self.wait_for_bind(&existing).await?
        } else {
            existing
        };
        match existing.state {
            BindingState::Ready => Ok(Bound::Exists(self.credentials(instance, &existing).await?)),
            BindingState::Creating if req.accepts_incomplete => {
                let op = self
                    .ctx
                    .store
                    .latest_operation(&req.instance_id, Some(&existing.id))
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("binding without operation"))?;
                Ok(Bound::Accepted { operation: op.id })
            }
            BindingState::Failed => Err(BrokerError::Conflict(format!(
                "Service binding {} failed; unbind it and bind again with a new id.",
                existing.id
            ))),
            _ => Err(BrokerError::Concurrency(format!(
                "Service binding {} is being {}; wait until that ends.",
                existing.id,
                if existing.state == BindingState::Creating {
                    "created"
                } else {
                    "deleted"
                }
            ))),
        }
    }

    /// An identical synchronous bind while another request creates the binding: waits for
    /// that bind as its own request does (up to [`SYNC_TIMEOUT`]) and returns the binding as it
    /// then is, so that every identical request gets the first one's credentials (issue 12: a
    /// burst of identical binds answered one success and four errors).
    async fn wait_for_bind(&self, binding: &BindingRecord) -> Result<BindingRecord, BrokerError> {
        let op = self
            .ctx
            .store
            .latest_operation(&binding.instance_id, Some(&binding.id))
            .await?
            .ok_or_else(|| anyhow::anyhow!("binding without operation"))?;
        self.worker.run_job(&op.id, SYNC_TIMEOUT).await?;
        Ok(self
            .ctx
            .store
            .get_binding(&binding.id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("binding vanished"))?)
    }

    pub async fn unbind(
        &self,
        instance_id: &InstanceId,
        binding_id: &BindingId,
        service_id: &str,
        plan_id: &str,
        accepts_incomplete: bool,
        originator: Option<&Originator>,
    ) -> Result<Unbound, BrokerError> {
        let binding = match self.ctx.store.get_binding(binding_id).await? {
            Some(b) if b.instance_id == *instance_id && b.state != BindingState::Deleted => b,
            _ => return Err(BrokerError::Gone),
        };
        self.check_plan(service_id, plan_id)?;
        if binding.state == BindingState::Deleting {
            let op = self
                .ctx
                .store
                .latest_operation(instance_id, Some(binding_id))
                .await?
                .ok_or_else(|| anyhow::anyhow!("unbinding without operation"))?;
            if accepts_incomplete {
                return Ok(Unbound::Accepted { operation: op.id });
            }
            return Err(BrokerError::Concurrency(format!(
                "Service binding {binding_id} is being deleted; wait until that ends."
            )));
        }
        let operation = new_operation_id(OperationKind::Unbind);
        let op = operation_record(
            &operation,
            instance_id,
            binding_id,
            OperationKind::Unbind,
            "Unbinding: queued",
        );
        let job = new_job(&operation, instance_id, Some(binding_id), JobSpec::unbind());
        let mut moved = false;
        for from in [
            BindingState::Ready,
            BindingState::Creating,
            BindingState::Failed,
        ] {
            if self
                .ctx
                .store
                .transition_binding(binding_id, from, BindingState::Deleting, &op, &job)
                .await?
            {
                moved = true;
                break;
            }
        }
        if !moved {
            return Err(BrokerError::Concurrency(format!(
                "Service binding {binding_id} is busy; try again."
            )));
        }
        tracing::info!(instance = %instance_id, binding = %binding_id, "unbind accepted");
        let audit = Audit::new(AuditKind::Unbind, instance_id, originator);
        self.audit(audit.binding(binding_id).operation(&operation))
            .await;
        if accepts_incomplete {
            self.worker.wake();
            return Ok(Unbound::Accepted { operation });
        }
        self.worker.run_job(&operation, SYNC_TIMEOUT).await?;
        let done = self
            .ctx
            .store
            .get_binding(binding_id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("binding vanished"))?;
        if done.state == BindingState::Deleted {
            Ok(Unbound::Done)
        } else {
            Err(BrokerError::Internal(anyhow::anyhow!(
                "synchronous unbind {binding_id} ended in state {}",
                done.state
            )))
        }
    }

    pub async fn fetch_binding(
        &self,
        instance_id: &InstanceId,
        binding_id: &BindingId,
    ) -> Result<BindingView, BrokerError> {
        let not_found =
            |why: &str| BrokerError::NotFound(format!("Service binding {binding_id} {why}."));
        let binding = match self.ctx.store.get_binding(binding_id).await? {
            Some(b) if b.instance_id == *instance_id => b,
            _ => return Err(not_found("does not exist")),
        };
        match binding.state {
            BindingState::Ready => {}
            BindingState::Creating => return Err(not_found("is still being created")),
            _ => return Err(not_found("does not exist")),
        }
        let instance = self.live_instance(instance_id).await?;
        Ok(BindingView {
            credentials: self.credentials(&instance, &binding).await?,
            parameters: binding
                .request
                .get("parameters")
                .cloned()
                .unwrap_or(json!({})),
        })
    }

    /// The operation `operation` names, else the binding's latest one; the same hint rule and
    /// tombstone as [`Broker::last_operation`]: an unknown value answers for the binding's
    /// current operation, another binding's operation is a 400, and a finished unbind answers
    /// 200 `succeeded`.
    pub async fn binding_last_operation(
        &self,
        instance_id: &InstanceId,
        binding_id: &BindingId,
        operation: Option<&str>,
    ) -> Result<LastOperation, BrokerError> {
        match self.ctx.store.get_binding(binding_id).await? {
            Some(b) if b.instance_id == *instance_id => {}
            _ => {
                return Err(BrokerError::NotFound(format!(
                    "Service binding {binding_id} does not exist."
                )))
            }
        }
        let named = match operation {
            Some(op_id) => self.ctx.store.get_operation(op_id).await?,
            None => None,
        };
        let op = match named {
            Some(op) if op.binding_id.as_ref() == Some(binding_id) => op,
            Some(_) => {
                return Err(BrokerError::BadRequest(format!(
                    "Operation {:?} is not an operation of binding {binding_id}.",
                    operation.unwrap_or_default()
                )))
            }
            None => self
                .ctx
                .store
                .latest_operation(instance_id, Some(binding_id))
                .await?
                .ok_or_else(|| {
                    BrokerError::NotFound(format!("Service binding {binding_id} has no operation."))
                })?,
        };
        Ok(LastOperation {
            state: op.state,
            description: op.description,
        })
    }
}

fn operation_record(
    id: &str,
    instance: &InstanceId,
    binding: &BindingId,
    kind: OperationKind,
    text: &str,
) -> OperationRecord {
    let now = now_millis();
    OperationRecord {
        id: id.to_string(),
        instance_id: instance.clone(),
        binding_id: Some(binding.clone()),
        kind,
        state: OperationState::InProgress,
        description: text.into(),
        created_at: now,
        updated_at: now,
        finished_at: None,
    }
}
