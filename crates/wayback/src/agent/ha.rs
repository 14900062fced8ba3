//! The agent's HA routes (issue 15): each the local runtime's call of the same name —
//! `PUT /v1/clusters/{id}/ha` ([`LocalRuntime::ha_start_member`](crate::runtime::LocalRuntime)),
//! `GET /v1/clusters/{id}/ha` (`ha_status`), `POST /v1/clusters/{id}/ha/switchover`
//! (`ha_switchover`), `POST /v1/clusters/{member key}/ha/release` (`ha_release_member`: the
//! member becomes the instance's single cluster again, a plan change back from HA). A member's start, stop and destroy are the ordinary cluster routes: the
//! local runtime runs them through Patroni. The passwords arrive in the body as the follower
//! calls' do; the archive target is built from this agent's own settings (no storage
//! credential crosses the wire).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest};
use secrecy::SecretString;
use wayback_api::agent as wire;

use super::handlers::{instance, ok, own_prefix, spec, AgentError, Reply};
use super::AgentState;
use crate::archive::ArchiveTarget;
use crate::runtime::{ArchiveCommand, ClusterRuntime, Durability, HaMemberSpec, HaSeed};

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/clusters/{id}/ha", web::put().to(start_member))
        .route("/v1/clusters/{id}/ha", web::get().to(status))
        .route(
            "/v1/clusters/{id}/ha/switchover",
            web::post().to(switchover),
        )
        .route("/v1/clusters/{id}/ha/release", web::post().to(release));
}

fn bad(message: String) -> AgentError {
    AgentError::new(StatusCode::BAD_REQUEST, message, true)
}

async fn start_member(
    state: web::Data<AgentState>,
    req: HttpRequest,
    body: web::Json<wire::HaMemberBody>,
) -> Reply {
    let id = instance(&state, &req)?;
    let body = body.into_inner();
    let seed = match body.seed.as_str() {
        "adopt" => HaSeed::Adopt,
        "from_leader" => HaSeed::FromLeader,
        "adopt_single" => HaSeed::AdoptSingle,
        other => return Err(bad(format!("unknown HA seed {other:?}"))),
    };
    let durability = match body.durability.as_str() {
        "async" => Durability::Async,
        "sync" => Durability::Sync,
        other => return Err(bad(format!("unknown HA durability {other:?}"))),
    };
    let archive = match &body.archive {
        Some(a) => {
            let (space, _) = own_prefix(&a.prefix, &id)?;
            let mut target = ArchiveTarget::for_instance(&state.settings, &space, &id.instance());
            target.system_identifier = body.system_identifier;
            let command = ArchiveCommand {
                wayback_bin: state.wayback_bin.clone(),
                archive_timeout_secs: a.archive_timeout_secs,
            };
            Some((target, command))
        }
        None => None,
    };
    let member = HaMemberSpec {
        cluster: spec(id, body.cluster),
        member: body.member,
        seed,
        dcs: body.dcs,
        rest_port: body.rest_port,
        advertise_host: body.advertise_host,
        durability,
        replication_role: body.replication_role,
        replication_password: SecretString::from(body.replication_password),
        superuser_password: SecretString::from(body.superuser_password),
        peer_addresses: body.peer_addresses,
        archive,
        machine: None,
    };
    // Through the trait: its boxed future keeps this handler's own future small (the engine's
    // is too deep for the compiler's layout limit when inlined here).
    ClusterRuntime::ha_start_member(&*state.runtime, &member).await?;
    ok(&())
}

async fn status(state: web::Data<AgentState>, req: HttpRequest) -> Reply {
    let id = instance(&state, &req)?;
    ok(&ClusterRuntime::ha_status(&*state.runtime, &id).await?)
}

async fn switchover(
    state: web::Data<AgentState>,
    req: HttpRequest,
    body: web::Json<wire::HaSwitchoverBody>,
) -> Reply {
    let id = instance(&state, &req)?;
    let leader =
        ClusterRuntime::ha_switchover(&*state.runtime, &id, body.candidate.as_deref()).await?;
    ok(&wire::HaSwitchoverAnswer { leader })
}

/// The path's key is the member's (`<id>~<member>`); the body is the single cluster it becomes,
/// under the instance's own id.
async fn release(
    state: web::Data<AgentState>,
    req: HttpRequest,
    body: web::Json<wire::HaReleaseBody>,
) -> Reply {
    let member = instance(&state, &req)?;
    if member.member().is_none() {
        return Err(bad(format!(
            "{member} is an instance id; a release names an HA member's key (<id>~<member>)"
        )));
    }
    let single = spec(member.instance(), body.into_inner().cluster);
    ClusterRuntime::ha_release_member(&*state.runtime, &member, &single).await?;
    ok(&())
}
