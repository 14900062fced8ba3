//! Issue 19 on an agent: what its clusters are doing, read from its own sampler's rings
//! (`GET /v1/clusters/{id}/activity?since=<RFC 3339>`) and every instance's counters for the
//! broker's `/metrics` in one answer (`GET /v1/activity`, so that a scrape costs one call per
//! agent, not one per instance). Reading never starts or wakes a cluster.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest};

use super::handlers::{authorized, instance, ok, AgentError, Reply};
use super::AgentState;
use crate::runtime::ClusterRuntime;

#[derive(Debug, serde::Deserialize)]
pub(super) struct Since {
    since: Option<String>,
}

/// `since`, when given, is an RFC 3339 time (`2026-12-07T03:00:00Z`).
fn parse_since(raw: Option<&str>) -> Result<Option<chrono::DateTime<chrono::Utc>>, AgentError> {
    raw.map(|s| {
        chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(|e| {
                AgentError::new(
                    StatusCode::BAD_REQUEST,
                    format!("since {s:?} is not an RFC 3339 time (e.g. 2026-12-07T03:00:00Z): {e}"),
                    true,
                )
            })
    })
    .transpose()
}

pub(super) async fn cluster_activity(
    state: web::Data<AgentState>,
    req: HttpRequest,
    query: web::Query<Since>,
) -> Reply {
    let id = instance(&state, &req)?;
    let since = parse_since(query.since.as_deref())?;
    ok(&ClusterRuntime::activity(state.runtime.as_ref(), &id, since).await?)
}

pub(super) async fn summaries(state: web::Data<AgentState>, req: HttpRequest) -> Reply {
    authorized(&state, &req)?;
    ok(&ClusterRuntime::activity_summaries(state.runtime.as_ref()).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_an_rfc3339_time_or_nothing() {
        assert_eq!(parse_since(None).unwrap(), None);
        let t = parse_since(Some("2026-12-07T03:00:00Z")).unwrap().unwrap();
        assert_eq!(t.to_rfc3339(), "2026-12-07T03:00:00+00:00");
        let e = parse_since(Some("yesterday")).unwrap_err();
        assert!(e.to_string().contains("RFC 3339"), "{e}");
    }
}
