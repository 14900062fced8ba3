//! The agent's inspection route (issue 19): `POST /v1/clusters/{id}/inspect` with
//! `{"kind": "locks" | "outliers" | "diagnose"}`, the local runtime's `inspect` (read-only; a
//! stopped or parked cluster is refused, never woken).

use actix_web::{web, HttpRequest};
use serde::Deserialize;

use super::handlers::{instance, ok, Reply};
use super::AgentState;
use crate::runtime::{ClusterRuntime, InspectKind};

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/clusters/{id}/inspect", web::post().to(inspect));
}

#[derive(Deserialize)]
struct InspectBody {
    kind: InspectKind,
}

async fn inspect(
    state: web::Data<AgentState>,
    req: HttpRequest,
    body: web::Json<InspectBody>,
) -> Reply {
    let id = instance(&state, &req)?;
    ok(&ClusterRuntime::inspect(state.runtime.as_ref(), &id, body.kind).await?)
}
