//! What the catalog says of the walked plan: whether it is HA (`metadata.wayback.ha`, its
//! members and durability: [`HaShape`]) and the plan the `clone` step provisions into
//! ([`clone_plan`]: `--clone-plan`, else the same plan, or for an HA plan the service's first
//! plan without HA, since the broker clones only into those). Pure, over the catalog's JSON.
//! Must not import the broker's internals.

use anyhow::{anyhow, bail};
use serde_json::Value;

/// A plan's `metadata.wayback.ha` as the catalog shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HaShape {
    pub(super) members: usize,
    /// `sync` or `async`.
    pub(super) durability: String,
}

impl HaShape {
    /// The shape of a catalog plan; None when it is not HA.
    pub(super) fn of_plan(plan: &Value) -> anyhow::Result<Option<HaShape>> {
        let ha = &plan["metadata"]["wayback"]["ha"];
        if ha.is_null() {
            return Ok(None);
        }
        let members = ha["members"].as_u64().filter(|n| *n >= 2);
        let durability = ha["durability"].as_str();
        match (members, durability) {
            (Some(m), Some(d @ ("sync" | "async"))) => Ok(Some(HaShape {
                members: m as usize,
                durability: d.to_string(),
            })),
            _ => bail!("the plan's metadata.wayback.ha is not {{\"members\": N ≥ 2, \"durability\": \"sync\"|\"async\"}}: {ha}"),
        }
    }
}

/// The plan the clone step provisions into: `requested` (of the same service), else the
/// walked plan when it is not HA, else the service's first plan without HA. (name, id)
pub(super) fn clone_plan(
    service: &Value,
    plan: &Value,
    ha: Option<&HaShape>,
    requested: Option<&str>,
) -> anyhow::Result<(String, String)> {
    let plans = service["plans"].as_array().cloned().unwrap_or_default();
    let name_id = |p: &Value| -> anyhow::Result<(String, String)> {
        Ok((
            p["name"].as_str().unwrap_or_default().to_string(),
            p["id"]
                .as_str()
                .ok_or_else(|| anyhow!("the catalog has a plan without an id"))?
                .to_string(),
        ))
    };
    if let Some(want) = requested {
        return match plans.iter().find(|p| p["name"] == want) {
            Some(p) => name_id(p),
            None => bail!(
                "--clone-plan {want:?}: the service has no such plan; its plans: {}",
                plans
                    .iter()
                    .filter_map(|p| p["name"].as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
    }
    if ha.is_none() {
        return name_id(plan);
    }
    for p in &plans {
        if p["metadata"]["wayback"]["ha"].is_null() {
            return name_id(p);
        }
    }
    bail!(
        "plan {:?} is highly available, the broker clones only into plans without HA, and the \
         service has none: name the clone's plan with --clone-plan",
        plan["name"].as_str().unwrap_or("?")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sync2() -> HaShape {
        HaShape {
            members: 2,
            durability: "sync".into(),
        }
    }

    #[test]
    fn a_plan_is_ha_when_its_catalog_entry_says_so() {
        let ha = json!({"metadata": {"wayback": {"ha": {"members": 2, "durability": "sync"}}}});
        assert_eq!(HaShape::of_plan(&ha).unwrap(), Some(sync2()));
        assert_eq!(
            HaShape::of_plan(&json!({"metadata": {"wayback": {}}})).unwrap(),
            None
        );
        let bad = json!({"metadata": {"wayback": {"ha": {"members": 2}}}});
        assert!(HaShape::of_plan(&bad).is_err());
    }

    #[test]
    fn an_ha_plan_clones_into_the_first_plan_without_ha_unless_told() {
        let small = json!({"name": "small", "id": "p1", "metadata": {}});
        let ha = json!({"name": "ha-small", "id": "p2",
            "metadata": {"wayback": {"ha": {"members": 2, "durability": "sync"}}}});
        let service = json!({"plans": [ha.clone(), small.clone()]});
        let shape = sync2();
        let pick = |plan: &Value, ha: Option<&HaShape>, want: Option<&str>| {
            clone_plan(&service, plan, ha, want).map(|(n, _)| n)
        };
        assert_eq!(pick(&ha, Some(&shape), None).unwrap(), "small");
        assert_eq!(pick(&small, None, None).unwrap(), "small");
        assert_eq!(
            pick(&ha, Some(&shape), Some("ha-small")).unwrap(),
            "ha-small"
        );
        let e = pick(&ha, Some(&shape), Some("huge")).unwrap_err();
        assert!(e.to_string().contains("ha-small, small"), "{e}");
        let only_ha = json!({"plans": [ha.clone()]});
        let e = clone_plan(&only_ha, &ha, Some(&shape), None).unwrap_err();
        assert!(e.to_string().contains("--clone-plan"), "{e}");
    }
}
