//! A plan's high-availability shape (issue 15): `metadata.wayback.ha`, e.g.
//! `{"members": 2, "durability": "sync"}`. Absent: a single-member plan. Validated at load like
//! the rest of the plan, so a typo stops the broker with the plan named instead of provisioning
//! an instance without its standby. Must not import anything but `domain`.

use serde::Deserialize;
use serde_json::Value;

/// How many members an HA plan's instances have; only two for now (a primary and a standby).
pub const HA_MEMBERS: u32 = 2;

/// When a commit returns, as Patroni's `synchronous_mode` decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HaDurability {
    /// A commit returns once the primary has it; a failover may lose what the standby had not
    /// received yet (bounded by Patroni's `maximum_lag_on_failover`).
    Async,
    /// A commit returns once the standby has it too, and only that standby may be promoted:
    /// a failover loses no acknowledged commit.
    Sync,
}

impl HaDurability {
    pub fn as_str(self) -> &'static str {
        match self {
            HaDurability::Async => "async",
            HaDurability::Sync => "sync",
        }
    }
}

/// `metadata.wayback.ha` of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaPolicy {
    /// Members of each instance, the primary included.
    pub members: u32,
    pub durability: HaDurability,
}

/// Reads `metadata.wayback.ha`: `None` when absent (or `null`).
pub(super) fn plan_ha(metadata: Option<&Value>) -> Result<Option<HaPolicy>, String> {
    let p = "metadata.wayback.ha";
    let Some(v) = metadata
        .and_then(|m| m.get("wayback"))
        .and_then(|w| w.get("ha"))
        .filter(|v| !v.is_null())
    else {
        return Ok(None);
    };
    if !v.is_object() {
        return Err(format!(
            "{p} must be an object like {{\"members\": 2, \"durability\": \"sync\"}}, not {v}"
        ));
    }
    for field in ["members", "durability"] {
        if v.get(field).is_none() {
            return Err(format!("{p}.{field} is missing"));
        }
    }
    if !matches!(v["durability"].as_str(), Some("async" | "sync")) {
        return Err(format!(
            "{p}.durability must be \"async\" or \"sync\", not {}",
            v["durability"]
        ));
    }
    let policy: HaPolicy = serde_json::from_value(v.clone()).map_err(|e| format!("{p}: {e}"))?;
    if policy.members != HA_MEMBERS {
        return Err(format!(
            "{p}.members must be {HA_MEMBERS} (a primary and one standby), not {}",
            policy.members
        ));
    }
    Ok(Some(policy))
}
