//! HA plans' rules (issue 15): which requests an HA plan (`metadata.wayback.ha`) is refused
//! for, before the 202, each with a 422 naming what to do. The coordinator must be configured
//! (`ha.dcs_endpoints`); with agents, as many as the plan has members must have room and run
//! HA members (each member on its own agent); an HA instance is never a follower or a clone. A
//! plan change between single and HA adopts the running cluster as the first member and adds a
//! standby, or removes the standby and releases the first member, on the broker's machine or on
//! agents (`jobs/steps/ha_update.rs`; [`Broker::check_ha_plan_change`] says which way, or why
//! not). Anything else is provisioned by the HA job
//! (`jobs::JobSpec::provision_ha`, the steps in `jobs/steps/ha.rs`). An HA instance's binding
//! credentials name every member ([`Broker::ha_credentials`]).
//! Imports `catalog`, `context`, `jobs` (the plan change's direction; `jobs::ha`: agents with
//! room for a member) and `store` only.

use serde::Serialize;

use super::{Broker, BrokerError, Credentials};
use crate::catalog::Plan;
use crate::jobs::HaChange;
use crate::store::{BindingRecord, InstanceRecord};

/// An HA instance's members as the OSB fetch shows them (`"ha"`).
#[derive(Debug, Clone, Serialize)]
pub struct HaView {
    pub members: Vec<HaMemberView>,
    /// "both members share one machine" when they do (a lab without agents), and why roles
    /// are missing when Patroni could not be asked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Changes of leader since the first leader (failovers and switchovers), from Patroni's
    /// history (`broker/ha_ops.rs`); absent when Patroni could not be asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failovers: Option<u64>,
    /// The newest change of leader; absent when none happened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failover: Option<super::ha_ops::FailoverView>,
}

/// One member: its machine and port as recorded, its role, state, lag and timeline as Patroni
/// shows them now (absent when Patroni could not be asked or does not list it).
#[derive(Debug, Clone, Serialize)]
pub struct HaMemberView {
    pub name: String,
    /// The agent's name, or "broker" for the broker's own machine.
    pub machine: String,
    pub port: u16,
    pub role: Option<String>,
    pub state: Option<String>,
    pub lag_bytes: Option<u64>,
    pub timeline: Option<u32>,
}

impl Broker {
    /// Refuses a provision of an HA plan the deployment cannot serve. `clone`/`follow`: the
    /// request asked for one.
    pub(super) async fn check_ha_provision(
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
        // With agents, the members go to different ones (`jobs::ha::member_machine`).
        if let Some(room) = crate::jobs::ha::agents_with_ha_room(&self.ctx).await? {
            if room.len() < ha.members as usize {
                return Err(BrokerError::Unprocessable(format!(
                    "Plan {name:?} is highly available ({} members, each on its own database \
                     VM), and {} of this broker's agents have room and run HA members: {}",
                    ha.members,
                    room.len(),
                    crate::jobs::ha::NO_HA_ROOM
                )));
            }
        }
        Ok(())
    }

    /// Which way a plan change from `from` to `to` crosses between single and HA (None: it does
    /// not), or why it is refused: a change between two HA plans of another shape, an instance
    /// with followers or one that is a follower, and to HA whatever an HA provision is refused
    /// for (no coordinator; with agents, fewer with room for a member than the plan has
    /// members).
    pub(super) async fn check_ha_plan_change(
        &self,
        instance: &InstanceRecord,
        from: &Plan,
        to: &Plan,
    ) -> Result<Option<HaChange>, BrokerError> {
        let change = match (from.ha, to.ha) {
            (None, None) => return Ok(None),
            (Some(a), Some(b)) if a == b => return Ok(None),
            (Some(a), Some(b)) => {
                return Err(BrokerError::Unprocessable(format!(
                    "A plan change from {:?} ({} members, {} commits) to {:?} ({} members, {} \
                     commits) changes the HA shape, which is not offered yet: change to a plan \
                     without HA first, then to {:?}.",
                    from.name,
                    a.members,
                    a.durability.as_str(),
                    to.name,
                    b.members,
                    b.durability.as_str(),
                    to.name
                )))
            }
            (None, Some(_)) => HaChange::AddStandby,
            (Some(_), None) => HaChange::RemoveStandby,
        };
        if instance.leader_id.is_some() {
            return Err(BrokerError::Unprocessable(format!(
                "Service instance {} is a follower, which has one member: unfollow it first \
                 (-c '{{\"unfollow\":true}}'), then change to plan {:?}.",
                instance.id, to.name
            )));
        }
        if !self.ctx.store.followers_of(&instance.id).await?.is_empty() {
            return Err(BrokerError::Unprocessable(format!(
                "Service instance {} has followers, and a leader with followers cannot change \
                 between single and HA plans yet (the followers' replication slots live on \
                 one member): unfollow or delete its followers first.",
                instance.id
            )));
        }
        if change == HaChange::AddStandby {
            self.check_ha_provision(to, false, false).await?;
        }
        Ok(Some(change))
    }

    /// The credentials of a binding of an HA instance (two members or more recorded), else
    /// `None`: `uri`/`jdbcUrl` with every member, `host`/`port` of the member Patroni shows as
    /// leader now (the first member when it cannot be asked), a read-only binding preferring a
    /// standby.
    pub(super) async fn ha_credentials(
        &self,
        instance: &InstanceRecord,
        binding: &BindingRecord,
    ) -> Result<Option<Credentials>, BrokerError> {
        let members = self.ctx.store.ha_members(&instance.id).await?;
        if members.len() < 2 {
            return Ok(None);
        }
        let leader = match self.ctx.runtime.ha_status(&instance.id).await {
            Ok(status) => status.leader().map(|l| l.name.clone()),
            Err(e) => {
                tracing::warn!(instance = %instance.id, error = %e, "cannot ask Patroni for the leader; host/port name the first member");
                None
            }
        };
        let primary = leader
            .and_then(|name| members.iter().position(|m| m.member == name))
            .unwrap_or(0);
        let addresses: Vec<(String, u16)> = members
            .iter()
            .map(|m| {
                let host = m
                    .agent_host
                    .clone()
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| self.advertise_host.clone());
                (host, m.port)
            })
            .collect();
        let mut credentials = Credentials::for_members(
            &addresses,
            primary,
            &instance.database_name,
            &binding.role_name,
            &binding.password,
            &self.client_tls,
            binding.read_only,
        );
        credentials.read_only = binding.read_only.then_some(true);
        Ok(Some(credentials))
    }

    /// The members of an HA instance (two or more recorded) with Patroni's view of each;
    /// None for a single-member instance.
    pub(super) async fn ha_view(
        &self,
        instance: &InstanceRecord,
    ) -> Result<Option<HaView>, BrokerError> {
        let members = self.ctx.store.ha_members(&instance.id).await?;
        if members.len() < 2 {
            return Ok(None);
        }
        let mut notes = Vec::new();
        let status = match self.ctx.runtime.ha_status(&instance.id).await {
            Ok(status) => Some(status),
            Err(e) => {
                notes.push(format!(
                    "Patroni could not be asked for the members' roles: {e}"
                ));
                None
            }
        };
        if members.iter().all(|m| m.agent == members[0].agent) {
            notes.push(
                "both members share one machine: a failure of that machine stops both".into(),
            );
        }
        let failovers = status.as_ref().map(|s| s.failovers());
        let last_failover =
            status
                .as_ref()
                .and_then(|s| s.last_failover())
                .map(|f| super::ha_ops::FailoverView {
                    at: f.at,
                    reason: f.reason.clone(),
                    from_timeline: f.from_timeline,
                    to_timeline: f.to_timeline,
                    lsn: f.lsn.clone(),
                    new_leader: f.new_leader.clone(),
                });
        let members = members
            .into_iter()
            .map(|m| {
                let seen = status.as_ref().and_then(|s| s.member(&m.member)).cloned();
                HaMemberView {
                    machine: if m.agent.is_empty() {
                        "broker".into()
                    } else {
                        m.agent.clone()
                    },
                    port: m.port,
                    // Patroni's word: the role's tag (`leader`, `sync_standby`, `replica`), or
                    // the name an unknown role carries (the broker names no runtime type).
                    role: seen.as_ref().and_then(|s| {
                        let v = serde_json::to_value(&s.role).ok()?;
                        v.get("name")
                            .or(v.get("role"))
                            .and_then(|r| r.as_str())
                            .map(String::from)
                    }),
                    state: seen.as_ref().map(|s| s.state.clone()),
                    lag_bytes: seen.as_ref().and_then(|s| s.lag_bytes),
                    timeline: seen.as_ref().and_then(|s| s.timeline),
                    name: m.member,
                }
            })
            .collect();
        Ok(Some(HaView {
            members,
            notes,
            failovers,
            last_failover,
        }))
    }
}
