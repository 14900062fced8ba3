//! Where a new instance goes among the agents: a pure choice over what each agent answered
//! and what the broker has placed, so that it can be tested without any agent; and the
//! [`PlacementLedger`] through which the runtime reads and writes the broker's placements (the
//! store, handed in by the caller: the runtime does not import it).

use std::collections::HashMap;

use async_trait::async_trait;
use wayback_api::agent::Capacity;

use super::RuntimeError;
use crate::domain::InstanceId;

/// What the platform's user reads when no agent has room.
pub const NO_ROOM: &str = "no database VM has room for another instance; ask your operator \
                           to add agents or raise agent.max_instances";

/// The broker's record of where instances live. The remote runtime reads and writes it while
/// it holds its placement lock, so that concurrent provisions count each other.
#[async_trait]
pub trait PlacementLedger: Send + Sync {
    /// Live and in-flight instances per agent.
    async fn placed(&self) -> anyhow::Result<HashMap<String, usize>>;
    /// Records that `id` goes where `placement` says.
    async fn record(&self, id: &InstanceId, placement: &Placement) -> anyhow::Result<()>;
    /// The agent this instance should go to when it has room (a clone: the agent holding its
    /// source's copy kept at delete time, issue 16); None: wherever there is the most room.
    fn preferred(&self) -> Option<&str> {
        None
    }

    /// An agent to place on only when no other has room (a follower's leader's agent).
    fn avoid(&self) -> Option<&str> {
        None
    }
}

/// Where a new instance goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub agent: String,
    /// The host its bindings name.
    pub host: String,
}

/// `preferred` when it answered and has a free instance slot, else [`choose`].
pub fn choose_preferring(
    answers: &[(String, Result<Capacity, RuntimeError>)],
    placed: &HashMap<String, usize>,
    preferred: Option<&str>,
) -> Result<Placement, RuntimeError> {
    let room = answers.iter().find_map(|(name, answer)| match answer {
        Ok(cap) if Some(name.as_str()) == preferred => {
            let held = (cap.instances as usize).max(placed.get(name).copied().unwrap_or(0));
            (held < cap.max_instances as usize).then(|| Placement {
                agent: name.clone(),
                host: cap.advertise_host.clone(),
            })
        }
        _ => None,
    });
    match room {
        Some(placement) => Ok(placement),
        None => choose(answers, placed),
    }
}

/// The agent with the most free instance slots (its maximum less what it holds or the broker
/// placed there, whichever is more: provisions in flight count), then the most available
/// memory, then the first name. Agents that did not answer are skipped. None fits: transient
/// while some agent did not answer (it may come back), permanent when every one is full.
pub fn choose(
    answers: &[(String, Result<Capacity, RuntimeError>)],
    placed: &HashMap<String, usize>,
) -> Result<Placement, RuntimeError> {
    choose_avoiding(answers, placed, None)
}

/// [`choose`], where any agent with room beats `avoid` (a follower's leader's agent: a
/// follower on its leader's machine is still allowed, when nothing else has room).
pub fn choose_avoiding(
    answers: &[(String, Result<Capacity, RuntimeError>)],
    placed: &HashMap<String, usize>,
    avoid: Option<&str>,
) -> Result<Placement, RuntimeError> {
    let mut best: Option<(bool, u64, u64, &str, &str)> = None;
    let mut why = Vec::new();
    let mut unreachable = false;
    for (name, answer) in answers {
        let cap = match answer {
            Ok(cap) => cap,
            Err(e) => {
                unreachable = true;
                why.push(format!("{name}: {e}"));
                continue;
            }
        };
        let held = (cap.instances as usize).max(placed.get(name).copied().unwrap_or(0));
        let free = (cap.max_instances as usize).saturating_sub(held) as u64;
        if free == 0 {
            why.push(format!(
                "{name}: full ({held} of {} instances)",
                cap.max_instances
            ));
            continue;
        }
        let elsewhere = avoid != Some(name.as_str());
        let better = match best {
            None => true,
            Some((e, f, m, n, _)) => {
                (
                    elsewhere,
                    free,
                    cap.memory_available_bytes,
                    std::cmp::Reverse(name.as_str()),
                ) > (e, f, m, std::cmp::Reverse(n))
            }
        };
        if better {
            best = Some((
                elsewhere,
                free,
                cap.memory_available_bytes,
                name,
                &cap.advertise_host,
            ));
        }
    }
    match best {
        Some((_, _, _, name, host)) => Ok(Placement {
            agent: name.to_string(),
            host: host.to_string(),
        }),
        None => Err(RuntimeError::Agent {
            agent: "*".into(),
            user_message: (!unreachable).then(|| NO_ROOM.to_string()),
            message: format!(
                "no agent can take a new instance ({})",
                if why.is_empty() {
                    "none configured".to_string()
                } else {
                    why.join("; ")
                }
            ),
            permanent: !unreachable,
        }),
    }
}

/// What the platform's user reads when an HA plan's members cannot go to different machines.
pub const NO_HA_ROOM: &str = "fewer than two database VMs have room for another instance and \
                              run HA members, and an HA instance's members need two; ask your \
                              operator to add agents or raise agent.max_instances, or choose a \
                              plan without HA";

/// The agents (from a survey: None where it did not answer) that run HA members and have a
/// free instance slot, counting `placed` as [`choose`] does.
pub fn ha_agents_with_room(
    answers: &[(String, Option<Capacity>)],
    placed: &HashMap<String, usize>,
) -> Vec<String> {
    answers
        .iter()
        .filter_map(|(name, cap)| {
            let cap = cap.as_ref().filter(|c| c.ha)?;
            let held = (cap.instances as usize).max(placed.get(name).copied().unwrap_or(0));
            (held < cap.max_instances as usize).then(|| name.clone())
        })
        .collect()
}

/// Where an HA instance's next member goes: an agent that runs HA members, has room and is
/// none of `taken` (the agents of the members already placed: two members on one machine
/// would fail together), the most room first as [`choose`]. None fits: [`NO_HA_ROOM`],
/// permanent unless some agent did not answer.
pub fn choose_ha_member(
    answers: &[(String, Option<Capacity>)],
    placed: &HashMap<String, usize>,
    taken: &[&str],
) -> Result<Placement, RuntimeError> {
    let unreachable = answers.iter().any(|(_, cap)| cap.is_none());
    let fit: Vec<(String, Result<Capacity, RuntimeError>)> = answers
        .iter()
        .filter(|(name, cap)| !taken.contains(&name.as_str()) && cap.as_ref().is_some_and(|c| c.ha))
        .map(|(name, cap)| (name.clone(), Ok(cap.clone().expect("filtered"))))
        .collect();
    choose(&fit, placed).map_err(|e| RuntimeError::Agent {
        agent: "*".into(),
        user_message: (!unreachable).then(|| NO_HA_ROOM.to_string()),
        message: format!("no other agent can take an HA member (taken: {taken:?}): {e}"),
        permanent: !unreachable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(instances: u32, max: u32, memory_gb: u64) -> Result<Capacity, RuntimeError> {
        Ok(Capacity {
            instances,
            max_instances: max,
            memory_total_bytes: 16 << 30,
            memory_available_bytes: memory_gb << 30,
            disk_total_bytes: 100 << 30,
            disk_available_bytes: 50 << 30,
            advertise_host: format!("10.0.0.{instances}{max}"),
            version: "0".into(),
            ha: false,
            standby_backup: false,
            idle_stop: false,
        })
    }

    fn down() -> Result<Capacity, RuntimeError> {
        Err(RuntimeError::Unreachable {
            agent: "x".into(),
            message: "connection refused".into(),
        })
    }

    fn answers(
        list: Vec<(&str, Result<Capacity, RuntimeError>)>,
    ) -> Vec<(String, Result<Capacity, RuntimeError>)> {
        list.into_iter().map(|(n, c)| (n.to_string(), c)).collect()
    }

    #[test]
    fn the_most_free_slots_win_then_memory_then_name() {
        let none = HashMap::new();
        let a = answers(vec![("a", cap(3, 10, 8)), ("b", cap(1, 10, 2))]);
        assert_eq!(choose(&a, &none).unwrap().agent, "b");
        // Same room: more memory.
        let a = answers(vec![("a", cap(1, 10, 8)), ("b", cap(1, 10, 2))]);
        assert_eq!(choose(&a, &none).unwrap().agent, "a");
        // Same room and memory: the first name.
        let a = answers(vec![("b", cap(1, 10, 2)), ("a", cap(1, 10, 2))]);
        let p = choose(&a, &none).unwrap();
        assert_eq!((p.agent.as_str(), p.host.as_str()), ("a", "10.0.0.110"));
        // A bigger agent with more held can still have more room.
        let a = answers(vec![("small", cap(0, 2, 8)), ("big", cap(5, 50, 8))]);
        assert_eq!(choose(&a, &none).unwrap().agent, "big");
    }

    #[test]
    fn a_follower_avoids_its_leaders_agent_while_another_has_room() {
        let none = HashMap::new();
        let a = answers(vec![("a", cap(0, 10, 8)), ("b", cap(8, 10, 1))]);
        assert_eq!(choose_avoiding(&a, &none, Some("a")).unwrap().agent, "b");
        let full = HashMap::from([("b".to_string(), 10)]);
        assert_eq!(choose_avoiding(&a, &full, Some("a")).unwrap().agent, "a");
    }

    #[test]
    fn placements_in_flight_count_and_the_maximum_holds() {
        // The agent has no cluster yet, but the broker placed 9 there (provisions in flight).
        let a = answers(vec![("a", cap(0, 10, 8)), ("b", cap(4, 10, 8))]);
        let placed = HashMap::from([("a".to_string(), 9)]);
        assert_eq!(choose(&a, &placed).unwrap().agent, "b");
        let placed = HashMap::from([("a".to_string(), 10), ("b".to_string(), 10)]);
        let e = choose(&a, &placed).unwrap_err();
        assert!(e.is_permanent(), "every agent full: retrying cannot help");
        assert_eq!(e.user_message().as_deref(), Some(NO_ROOM));
        assert!(
            e.to_string().contains("a: full (10 of 10 instances)"),
            "{e}"
        );
    }

    #[test]
    fn unreachable_agents_are_skipped_and_only_they_make_it_transient() {
        let none = HashMap::new();
        let a = answers(vec![("a", down()), ("b", cap(9, 10, 1))]);
        assert_eq!(choose(&a, &none).unwrap().agent, "b");
        let a = answers(vec![("a", down()), ("b", cap(10, 10, 1))]);
        let e = choose(&a, &none).unwrap_err();
        assert!(!e.is_permanent(), "{e}");
        assert!(e.to_string().contains("connection refused"), "{e}");
        assert!(choose(&[], &none)
            .unwrap_err()
            .to_string()
            .contains("none configured"));
    }

    #[test]
    fn a_preferred_agent_with_room_wins_else_the_most_room() {
        let list = answers(vec![
            ("a", cap(5, 10, 8)),
            ("b", cap(0, 10, 8)),
            ("c", down()),
        ]);
        let none = HashMap::new();
        assert_eq!(
            choose_preferring(&list, &none, Some("a")).unwrap().agent,
            "a"
        );
        assert_eq!(choose_preferring(&list, &none, None).unwrap().agent, "b");
        // Full, away or unknown: wherever there is the most room.
        let full = HashMap::from([("a".to_string(), 10)]);
        assert_eq!(
            choose_preferring(&list, &full, Some("a")).unwrap().agent,
            "b"
        );
        assert_eq!(
            choose_preferring(&list, &none, Some("c")).unwrap().agent,
            "b"
        );
        assert_eq!(
            choose_preferring(&list, &none, Some("z")).unwrap().agent,
            "b"
        );
    }
    fn survey(list: Vec<(&str, Option<Capacity>)>) -> Vec<(String, Option<Capacity>)> {
        list.into_iter().map(|(n, c)| (n.to_string(), c)).collect()
    }

    fn ha_cap(instances: u32, max: u32) -> Option<Capacity> {
        let mut c = cap(instances, max, 8).unwrap();
        c.ha = true;
        Some(c)
    }

    #[test]
    fn an_ha_member_goes_to_another_agent_that_runs_ha_or_nowhere() {
        let none = HashMap::new();
        let no_ha = cap(0, 10, 8).ok();
        let list = survey(vec![
            ("a", ha_cap(0, 10)),
            ("b", ha_cap(5, 10)),
            ("c", no_ha),
            ("d", ha_cap(10, 10)),
        ]);
        assert_eq!(choose_ha_member(&list, &none, &["a"]).unwrap().agent, "b");
        assert_eq!(ha_agents_with_room(&list, &none), vec!["a", "b"]);
        // Only the primary's agent has room: refused, never the same machine.
        let e = choose_ha_member(&list, &none, &["a", "b"]).unwrap_err();
        assert!(e.is_permanent(), "{e}");
        assert_eq!(e.user_message().as_deref(), Some(NO_HA_ROOM));
        // An agent that did not answer may come back: retry.
        let list = survey(vec![("a", ha_cap(0, 10)), ("b", None)]);
        assert!(!choose_ha_member(&list, &none, &["a"])
            .unwrap_err()
            .is_permanent());
        assert_eq!(ha_agents_with_room(&list, &none), vec!["a"]);
    }
}
