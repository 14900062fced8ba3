//! HA instances in `/wayback/v1` (issue 15 point 5): an HA instance's `ha` in its document
//! (each member's machine and port as recorded, its role, state, lag and timeline as Patroni
//! shows them now, the failover count and the last failover), and the one call of this API that
//! changes something: the operator's `POST /wayback/v1/instances/{id}/switchover`
//! (`{"to": MEMBER}` optional), which hands the lead to a healthy standby through the runtime's
//! `ha_switchover` ([`crate::runtime::switch_over`]). Only the operator (basic auth with the
//! broker's credentials) may ask it: 403 for a user's token. 409 when the instance is not HA,
//! not ready, or has no healthy standby (or the named member is not one). Imports `store`,
//! `runtime` and `domain`.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use wayback_api::v1;

use super::{authorization, internal, ApiError, ApiState, Caller};
use crate::domain::{InstanceId, InstanceState};
use crate::runtime::{switch_over, HaRole, SwitchoverError};
use crate::store::InstanceRecord;

/// How long the view waits for Patroni.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Fills in `view.ha` for an instance with two members or more recorded.
pub(super) async fn attach(
    state: &ApiState,
    record: &InstanceRecord,
    view: &mut v1::Instance,
) -> Result<(), ApiError> {
    let members = state
        .store
        .ha_members(&record.id)
        .await
        .map_err(internal("read an instance's HA members"))?;
    if members.len() < 2 {
        return Ok(());
    }
    let status =
        match tokio::time::timeout(STATUS_TIMEOUT, state.runtime.ha_status(&record.id)).await {
            Ok(Ok(status)) => Some(status),
            Ok(Err(e)) => {
                tracing::info!(instance = %record.id, error = %e, "no HA status for the view");
                None
            }
            Err(_) => {
                tracing::info!(instance = %record.id, "the HA status timed out for the view");
                None
            }
        };
    let seen = |name: &str| status.as_ref().and_then(|s| s.member(name));
    view.ha = Some(v1::Ha {
        members: members
            .iter()
            .map(|m| v1::HaMember {
                name: m.member.clone(),
                machine: (!m.agent.is_empty()).then(|| m.agent.clone()),
                port: m.port,
                role: seen(&m.member).map(|s| role_word(&s.role).to_string()),
                state: seen(&m.member).map(|s| s.state.clone()),
                lag_bytes: seen(&m.member).and_then(|s| s.lag_bytes),
                timeline: seen(&m.member).and_then(|s| s.timeline),
            })
            .collect(),
        failovers: status.as_ref().map(|s| s.failovers()),
        last_failover: status
            .as_ref()
            .and_then(|s| s.last_failover())
            .map(|f| v1::Failover {
                at: f.at,
                reason: f.reason.clone(),
                from_timeline: f.from_timeline,
                to_timeline: f.to_timeline,
                lsn: f.lsn.clone(),
                new_leader: f.new_leader.clone(),
            }),
    });
    Ok(())
}

fn role_word(role: &HaRole) -> &str {
    match role {
        HaRole::Leader => "leader",
        HaRole::SyncStandby => "sync_standby",
        HaRole::Replica => "replica",
        HaRole::Other(o) => o,
    }
}

/// `POST /wayback/v1/instances/{instance_id}/switchover`
pub(super) async fn switchover(
    state: web::Data<ApiState>,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let caller = state.auth.authenticate(authorization(&req)).await?;
    if !matches!(caller, Caller::Operator) {
        return Err(ApiError::operator_only(
            "A switchover is the operator's: authenticate with the broker's basic credentials.",
        ));
    }
    let request: v1::SwitchoverRequest = if body.iter().all(u8::is_ascii_whitespace) {
        v1::SwitchoverRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(format!("The body must be {{\"to\": MEMBER}} or empty: {e}"))
        })?
    };
    let Ok(id) = InstanceId::parse(id.into_inner()) else {
        return Err(ApiError::instance_not_found());
    };
    let record = state
        .store
        .get_instance(&id)
        .await
        .map_err(internal("read an instance"))?
        .ok_or_else(ApiError::instance_not_found)?;
    let members = state
        .store
        .ha_members(&id)
        .await
        .map_err(internal("read an instance's HA members"))?;
    if members.len() < 2 {
        return Err(ApiError::conflict(format!(
            "Instance {id} is not highly available: it has one member, so there is nothing to \
             switch over to."
        )));
    }
    if record.state != InstanceState::Ready {
        return Err(ApiError::conflict(format!(
            "Instance {id} is {}: a switchover waits until it is ready.",
            record.state
        )));
    }
    let done = switch_over(state.runtime.as_ref(), &id, request.to.as_deref(), &[]).await;
    match done {
        Ok(plan) => {
            tracing::info!(instance = %id, from = %plan.leader, to = %plan.candidate, "switchover done");
            Ok(HttpResponse::Ok().json(v1::Switchover {
                instance_id: id.to_string(),
                from: plan.leader,
                to: plan.candidate,
            }))
        }
        Err(SwitchoverError::Refused(why)) => Err(ApiError::conflict(format!(
            "Instance {id} cannot switch over now: {why}."
        ))),
        Err(e @ SwitchoverError::NoStatus(_)) => {
            tracing::warn!(instance = %id, error = %e, "switchover: no HA status");
            Err(ApiError::unavailable(format!("Instance {id}: {e}")))
        }
        Err(e @ SwitchoverError::Failed { .. }) => {
            tracing::error!(instance = %id, error = %e, "switchover failed");
            Err(ApiError::operator_failure(format!("Instance {id}: {e}")))
        }
    }
}
