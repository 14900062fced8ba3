//! The fake's HA members (issue 15): one scope per instance in memory, as Patroni would show it.
//! The first member leads (on timeline 2: Patroni promotes an adopted data directory), a later
//! one is the sync standby in `sync` mode (else a replica), streaming with no lag; a switchover
//! swaps the leader and starts the next timeline. The fake stands for every machine, so all
//! members of a scope are here. A member kept under its member key (`<id>~<member>`) belongs
//! to its instance's scope; a seeded member gets a running cluster under its key, and
//! destroying a member's key removes the member from the scope (as the runtime removes it
//! from etcd).

use wayback::domain::InstanceId;
use wayback::pg::PgError;
use wayback::runtime::{
    ClusterStatus, Durability, HaMember, HaMemberSpec, HaRole, HaSeed, HaStatus, RuntimeError,
    TimelineSwitch,
};

use super::{lock, FakeCluster, FakeRuntime};

/// The history line of a promotion of `leader` that ended timeline `from`.
fn switch(from: u32, leader: &str) -> TimelineSwitch {
    TimelineSwitch {
        from_timeline: from,
        to_timeline: from + 1,
        lsn: format!("0/{:X}", 0x300_0000 * from),
        reason: "no recovery target specified".into(),
        at: Some(chrono::Utc::now()),
        new_leader: Some(leader.into()),
    }
}

impl FakeRuntime {
    /// The scope of `id` as the fake keeps it.
    pub fn ha_scope(&self, id: &str) -> Option<HaStatus> {
        lock(&self.ha).get(id).cloned()
    }

    /// Sets what Patroni would say of `member`'s state (`stopped`: no healthy standby).
    pub fn ha_set_member_state(&self, id: &str, member: &str, state: &str) {
        let mut scopes = lock(&self.ha);
        if let Some(m) = scopes
            .get_mut(id)
            .and_then(|s| s.members.iter_mut().find(|m| m.name == member))
        {
            m.state = state.into();
        }
    }

    pub(super) fn fake_ha_start_member(&self, spec: &HaMemberSpec) -> Result<(), RuntimeError> {
        let id = &spec.cluster.instance;
        if spec.seed == HaSeed::AdoptSingle {
            // The single cluster under the instance's id moves under the member key (once).
            let mut clusters = lock(&self.clusters);
            if !clusters.contains_key(id.as_str()) {
                let single = clusters.remove(id.instance().as_str()).ok_or_else(|| {
                    RuntimeError::from(PgError::NoCluster {
                        instance: id.instance().to_string(),
                    })
                })?;
                clusters.insert(id.to_string(), single);
            }
            drop(clusters);
            self.with(id, false, |c| c.status = ClusterStatus::Running)?;
        } else if spec.seed == HaSeed::Adopt {
            self.with(id, false, |c| c.status = ClusterStatus::Running)?;
        } else if id.member().is_some() {
            let mut clusters = lock(&self.clusters);
            let cluster = clusters
                .entry(id.to_string())
                .or_insert_with(|| FakeCluster::new(ClusterStatus::Running, spec.cluster.port));
            cluster.status = ClusterStatus::Running;
        }
        let mut scopes = lock(&self.ha);
        let scope = scopes.entry(id.instance().to_string()).or_default();
        if scope.member(&spec.member).is_some() {
            return Ok(());
        }
        let role = if scope.leader().is_none() {
            HaRole::Leader
        } else if spec.durability == Durability::Sync
            && !scope.members.iter().any(|m| m.role == HaRole::SyncStandby)
        {
            HaRole::SyncStandby
        } else {
            HaRole::Replica
        };
        let leads = role == HaRole::Leader;
        if leads {
            // Patroni promotes the adopted directory: timeline 1 ends, the first leader's begins.
            scope.history.push(switch(1, &spec.member));
        }
        scope.members.push(HaMember {
            name: spec.member.clone(),
            role,
            state: if leads { "running" } else { "streaming" }.into(),
            timeline: Some(scope.leader().and_then(|l| l.timeline).unwrap_or(2)),
            lag_bytes: (!leads).then_some(0),
            host: spec.advertise_host.clone(),
            port: spec.cluster.port,
        });
        Ok(())
    }

    pub(super) fn fake_ha_status(&self, id: &InstanceId) -> Result<HaStatus, RuntimeError> {
        self.ha_scope(id.instance().as_str()).ok_or_else(|| {
            PgError::NoCluster {
                instance: id.to_string(),
            }
            .into()
        })
    }

    pub(super) fn fake_ha_switchover(
        &self,
        id: &InstanceId,
        candidate: Option<&str>,
    ) -> Result<String, RuntimeError> {
        let mut scopes = lock(&self.ha);
        let no_switchover = |why: &str| -> RuntimeError {
            PgError::Setup(format!("instance {id}: no switchover: {why}")).into()
        };
        let scope = scopes
            .get_mut(id.instance().as_str())
            .ok_or_else(|| no_switchover("no HA members"))?;
        let old = scope
            .leader()
            .ok_or_else(|| no_switchover("no leader"))?
            .name
            .clone();
        let new = scope
            .members
            .iter()
            .find(|m| m.name != old && candidate.map_or(true, |c| m.name == c))
            .ok_or_else(|| no_switchover("no candidate"))?
            .name
            .clone();
        let timeline = scope.leader().and_then(|l| l.timeline).map(|t| t + 1);
        if let Some(t) = timeline {
            scope.history.push(switch(t - 1, &new));
        }
        for m in &mut scope.members {
            if m.name == new {
                (m.role, m.state, m.lag_bytes) = (HaRole::Leader, "running".into(), None);
            } else if m.name == old {
                (m.role, m.state, m.lag_bytes) = (HaRole::SyncStandby, "streaming".into(), Some(0));
            }
            m.timeline = timeline;
        }
        Ok(new)
    }
}

impl FakeRuntime {
    /// `destroy` of a member's key: the member leaves its scope (the scope goes with its last).
    pub(super) fn fake_ha_leave(&self, id: &InstanceId) {
        let Some(member) = id.member() else {
            return;
        };
        let mut scopes = lock(&self.ha);
        let scope_id = id.instance().to_string();
        if let Some(scope) = scopes.get_mut(&scope_id) {
            scope.members.retain(|m| m.name != member);
            if scope.members.is_empty() {
                scopes.remove(&scope_id);
            }
        }
    }

    /// Patroni's failover, as the fake shows it: `member` leads on the next timeline, and the
    /// old leader is a replica (or gone, if `gone`).
    pub fn ha_fail_over_to(&self, id: &str, member: &str) {
        let mut scopes = lock(&self.ha);
        let scope = scopes.get_mut(id).expect("an HA scope");
        let timeline = scope.leader().and_then(|l| l.timeline).map(|t| t + 1);
        for m in &mut scope.members {
            if m.name == member {
                (m.role, m.state, m.lag_bytes) = (HaRole::Leader, "running".into(), None);
            } else {
                (m.role, m.state, m.lag_bytes) = (HaRole::Replica, "streaming".into(), Some(0));
            }
            m.timeline = timeline;
        }
    }
}

impl FakeRuntime {
    /// `ha_release_member`: the member's cluster moves back to the instance's id, stopped,
    /// with the single plan's port and settings, and the scope is gone (once: a call again
    /// finds it moved).
    pub(super) fn fake_ha_release_member(
        &self,
        member: &InstanceId,
        single: &wayback::runtime::ClusterSpec,
    ) -> Result<(), RuntimeError> {
        let id = single.instance.to_string();
        let mut clusters = lock(&self.clusters);
        if let Some(mut cluster) = clusters.remove(member.as_str()) {
            cluster.status = ClusterStatus::Stopped;
            (cluster.port, cluster.settings) = (single.port, single.settings.clone());
            clusters.insert(id.clone(), cluster);
        } else if !clusters.contains_key(&id) {
            return Err(PgError::NoCluster { instance: id }.into());
        }
        lock(&self.ha).remove(&id);
        Ok(())
    }
}
