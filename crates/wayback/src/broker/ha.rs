//! HA plans' rules (issue 15): which requests an HA plan (`metadata.wayback.ha`) is refused
//! for, before the 202, each with a 422 naming what to do. The coordinator must be configured
//! (`ha.dcs_endpoints`); agents must answer the runtime's HA calls ([`AGENTS_RUN_HA`]); an HA
//! instance is never a follower or a clone; a plan change between single and HA is not offered
//! yet. Imports `catalog` and `context` only.

use super::{Broker, BrokerError};
use crate::catalog::Plan;

/// Whether agents (the remote runtime) run HA members. False until the agents answer
/// `ha_start_member` / `ha_status` / `ha_switchover`: with agents configured, HA plans are
/// refused. Flip it when they do.
pub(crate) const AGENTS_RUN_HA: bool = false;

/// Whether the broker provisions HA plans. False until the HA provisioning job exists: an HA
/// plan is refused rather than provisioned as a single member.
pub(crate) const HA_PROVISIONING: bool = false;

impl Broker {
    /// Refuses a provision of an HA plan the deployment cannot serve. `clone`/`follow`: the
    /// request asked for one.
    pub(super) fn check_ha_provision(
        &self,
        plan: &Plan,
        clone: bool,
        follow: bool,
    ) -> Result<(), BrokerError> {
        let Some(ha) = plan.ha else {
            return Ok(());
        };
        let name = &plan.name;
        if follow {
            return Err(BrokerError::Unprocessable(format!(
                "Plan {name:?} is highly available and cannot follow another instance: a \
                 follower has one member. Choose a plan without HA for the follower."
            )));
        }
        if clone {
            return Err(BrokerError::Unprocessable(format!(
                "Plan {name:?} is highly available, and a clone cannot be made into an HA plan \
                 yet: clone into a plan without HA."
            )));
        }
        if self.ctx.settings.ha.dcs_endpoints.is_empty() {
            return Err(BrokerError::Unprocessable(format!(
                "Plan {name:?} is highly available ({} members, {} commits), and this broker \
                 has no coordinator for it: the operator sets ha.dcs_endpoints \
                 (WAYBACK_HA_DCS_ENDPOINTS) to the etcd cluster's client endpoints. Choose a \
                 plan without HA meanwhile.",
                ha.members,
                ha.durability.as_str()
            )));
        }
        if !self.ctx.settings.agents.urls.is_empty() && !AGENTS_RUN_HA {
            return Err(BrokerError::Unprocessable(format!(
                "Plan {name:?} is highly available, and this broker's agents do not run HA \
                 members yet. Choose a plan without HA."
            )));
        }
        if !HA_PROVISIONING {
            return Err(BrokerError::Unprocessable(format!(
                "Plan {name:?} is highly available, and this broker does not provision HA \
                 plans yet. Choose a plan without HA."
            )));
        }
        Ok(())
    }

    /// Refuses a plan change between a single-member plan and an HA plan (not offered yet).
    pub(super) fn check_ha_plan_change(from: &Plan, to: &Plan) -> Result<(), BrokerError> {
        if from.ha == to.ha {
            return Ok(());
        }
        Err(BrokerError::Unprocessable(format!(
            "A plan change from {:?} to {:?} changes the number of members, which is not \
             offered yet: create a new instance of plan {:?} with -c '{{\"clone-from\":\"NAME\"}}' \
             and move the app to it.",
            from.name, to.name, to.name
        )))
    }
}
