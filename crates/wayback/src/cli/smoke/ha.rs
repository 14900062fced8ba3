//! What the walk proves of an HA plan (one whose catalog entry has `metadata.wayback.ha`), as a
//! platform sees it:
//!
//! - `ha` (after `bind`): the instance fetch's `"ha"` lists the plan's number of members, each
//!   with its machine, exactly one `leader` and the rest standbys (`sync_standby` each for
//!   `sync` durability; `sync_standby` or `replica` for `async`), polled until it does; and the
//!   binding names them all: `uri` multi-host with `target_session_attrs=read-write`, `jdbcUrl`
//!   with `targetServerType=primary`, `hosts` one per member;
//! - `switchover` (after `write`): the operator's `POST /wayback/v1/instances/{id}/switchover`
//!   (basic auth with the broker's credentials, which the command already has for OSB) hands
//!   the lead to the standby; a row is then written through the SAME binding uri, which must
//!   land on the new leader, and the fetch must show the new leader and its standby again. No
//!   process is killed: a crash failover is the tests' and `scripts/bench-failover`'s.
//!
//! The catalog's part (the plan's HA shape, the clone's plan) is in `plan`. The checks are pure
//! functions over the JSON the broker answered. Must not import the broker's internals.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use reqwest::Method;
use serde_json::{json, Value};

use super::plan::HaShape;
use super::sql::{write_one_more, AppLogin};
use super::walk::Walk;

/// The members as the fetch showed them, once they have the plan's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Members {
    pub(super) leader: String,
    /// (name, role) of each standby.
    pub(super) standbys: Vec<(String, String)>,
    /// (name, machine, port) of each member, in the fetch's order.
    pub(super) all: Vec<(String, String, u64)>,
    pub(super) notes: Vec<String>,
}

impl Members {
    fn describe(&self, durability: &str) -> String {
        let mut text = self.roles(durability);
        for note in &self.notes {
            text.push_str(&format!("; note: {note}"));
        }
        text
    }

    /// The members, each with its role and machine.
    fn roles(&self, durability: &str) -> String {
        let mut parts: Vec<String> = self
            .all
            .iter()
            .map(|(name, machine, port)| {
                let role = if *name == self.leader {
                    "leader"
                } else {
                    self.standbys
                        .iter()
                        .find(|(n, _)| n == name)
                        .map_or("?", |(_, r)| r.as_str())
                };
                format!("{name} {role} on {machine}:{port}")
            })
            .collect();
        parts.sort();
        format!(
            "{} members ({durability}): {}",
            self.all.len(),
            parts.join(", ")
        )
    }

    fn port_of(&self, name: &str) -> Option<u64> {
        self.all.iter().find(|(n, ..)| n == name).map(|(.., p)| *p)
    }
}

/// The fetch's `"ha"` read against the plan's shape: the members, or why they do not have it
/// (yet).
pub(super) fn members_shape(ha: &Value, shape: &HaShape) -> Result<Members, String> {
    let Some(list) = ha["members"].as_array() else {
        return Err(format!("the fetch shows no \"ha\".\"members\": {ha}"));
    };
    if list.len() != shape.members {
        return Err(format!(
            "{} members, the plan has {}: {ha}",
            list.len(),
            shape.members
        ));
    }
    let mut leaders = Vec::new();
    let mut standbys = Vec::new();
    let mut all = Vec::new();
    for m in list {
        let name = m["name"].as_str().unwrap_or_default().to_string();
        let machine = m["machine"].as_str().unwrap_or_default().to_string();
        if name.is_empty() || machine.is_empty() {
            return Err(format!("a member without its name or machine: {m}"));
        }
        all.push((name.clone(), machine, m["port"].as_u64().unwrap_or(0)));
        match m["role"].as_str() {
            Some("leader") => leaders.push(name),
            Some(r @ "sync_standby") => standbys.push((name, r.to_string())),
            Some(r @ "replica") if shape.durability == "async" => {
                standbys.push((name, r.to_string()))
            }
            other => {
                return Err(format!(
                    "member {name} is {} (state {}), not {}",
                    other.unwrap_or("without a role"),
                    m["state"].as_str().unwrap_or("?"),
                    if shape.durability == "sync" {
                        "the leader or a sync_standby"
                    } else {
                        "the leader or a standby"
                    }
                ))
            }
        }
    }
    if leaders.len() != 1 {
        return Err(format!("{} leaders, not one: {ha}", leaders.len()));
    }
    let notes = ha["notes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str().map(str::to_string))
        .collect();
    Ok(Members {
        leader: leaders.remove(0),
        standbys,
        all,
        notes,
    })
}

/// A binding of an HA instance names every member and asks drivers for the primary.
pub(super) fn binding_shape(credentials: &Value, members: usize) -> anyhow::Result<String> {
    let uri = credentials["uri"].as_str().unwrap_or_default();
    let parsed = super::pguri::PgUri::parse(uri)?;
    if parsed.hosts.len() != members {
        bail!(
            "the binding's uri names {} host(s), the instance has {members} members",
            parsed.hosts.len()
        );
    }
    let attrs = parsed.param("target_session_attrs")?;
    if attrs.as_deref() != Some("read-write") {
        bail!("the binding's uri has target_session_attrs={attrs:?}, not read-write");
    }
    let jdbc = credentials["jdbcUrl"].as_str().unwrap_or_default();
    if !jdbc.contains("targetServerType=primary") {
        bail!("the binding's jdbcUrl does not ask for targetServerType=primary");
    }
    let hosts = credentials["hosts"].as_array().map_or(0, Vec::len);
    if hosts != members {
        bail!("the binding's hosts lists {hosts} member(s), the instance has {members}");
    }
    Ok(format!(
        "the binding's uri names {} ({members} hosts, target_session_attrs=read-write), jdbcUrl targetServerType=primary",
        parsed.hosts.join(",")
    ))
}

impl<'a> Walk<'a> {
    /// Polls the instance fetch until its `"ha"` has the plan's shape, with `leader` leading
    /// when one is named (or the deadline).
    pub(super) async fn ha_members(
        &mut self,
        shape: &HaShape,
        leader: Option<&str>,
    ) -> anyhow::Result<Members> {
        let id = self.instance(false)?;
        let path = format!("/v2/service_instances/{id}");
        let mut last = String::new();
        loop {
            let answer = self.osb.call(Method::GET, &path, None).await?;
            let body = answer.expect(&format!("GET {path}"), &[200])?;
            let why = match members_shape(&body["ha"], shape) {
                Ok(m) if leader.map_or(true, |l| l == m.leader) => return Ok(m),
                Ok(m) => format!("{} leads, not {}", m.leader, leader.unwrap_or("?")),
                Err(why) => why,
            };
            if why != last {
                (self.print)(&format!("      {why}"));
                last = why;
            }
            if Instant::now() + Duration::from_secs(1) > self.deadline {
                bail!("the fetch's \"ha\" at the deadline (--timeout-secs): {last}");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// The `ha` step.
    pub(super) async fn ha_step(
        &mut self,
        shape: &HaShape,
        login: &AppLogin,
    ) -> anyhow::Result<(Members, String)> {
        let members = self.ha_members(shape, None).await?;
        let binding = binding_shape(&login.credentials, shape.members)?;
        let detail = format!("{}; {binding}", members.describe(&shape.durability));
        Ok((members, detail))
    }

    /// The `switchover` step: the lead to the first standby through the operator API, a row
    /// written through the same uri on the new leader, the fetch showing it lead.
    pub(super) async fn switchover(
        &mut self,
        shape: &HaShape,
        before: &Members,
        login: &AppLogin,
        rows: &[(i32, String)],
        marker: &str,
    ) -> anyhow::Result<(Vec<(i32, String)>, String)> {
        let id = self.instance(false)?;
        let to = before
            .standbys
            .first()
            .map(|(n, _)| n.clone())
            .ok_or_else(|| anyhow!("no standby to switch over to"))?;
        let path = format!("/wayback/v1/instances/{id}/switchover");
        let t = Instant::now();
        // Not repeated: a second switchover would hand the lead back.
        let answer = self
            .osb
            .call_once(
                Method::POST,
                &path,
                &json!({ "to": to }),
                SWITCHOVER_TIMEOUT,
            )
            .await?;
        let reply = answer.expect(&format!("POST {path}"), &[200])?;
        let took = t.elapsed().as_secs_f64();
        let from = reply["from"].as_str().unwrap_or(&before.leader).to_string();
        let t = Instant::now();
        let (rows, port) = write_one_more(login, rows, marker).await?;
        let wrote = t.elapsed().as_secs_f64();
        let (from_port, to_port) = (before.port_of(&from), before.port_of(&to));
        let on = if from_port != to_port && Some(port as u64) == from_port {
            bail!("after the switchover the row went to port {port}, the old leader {from}'s");
        } else if from_port != to_port && Some(port as u64) == to_port {
            format!("{to}'s port {port}")
        } else {
            format!("port {port}")
        };
        let t = Instant::now();
        let after = self.ha_members(shape, Some(&to)).await?;
        let whole = t.elapsed().as_secs_f64();
        Ok((
            rows.clone(),
            format!(
                "{from} → {to} through the operator API ({took:.1} s); row {} written through \
                 the same uri on {on} ({wrote:.1} s); the fetch shows {} ({whole:.1} s later)",
                rows.len(),
                after.roles(&shape.durability)
            ),
        ))
    }
}

/// How long the switchover call may take: the broker answers once the other member leads.
const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(180);

#[cfg(test)]
mod tests {
    use super::*;

    fn sync2() -> HaShape {
        HaShape {
            members: 2,
            durability: "sync".into(),
        }
    }

    fn member(name: &str, role: Option<&str>) -> Value {
        json!({"name": name, "machine": "broker", "port": 5001, "role": role, "state": "streaming"})
    }

    #[test]
    fn the_members_need_one_leader_and_sync_standbys_each_on_a_machine() {
        let ok = json!({"members": [member("m1", Some("leader")), member("m2", Some("sync_standby"))],
            "notes": ["both members share one machine: a failure of that machine stops both"]});
        let m = members_shape(&ok, &sync2()).unwrap();
        assert_eq!(m.leader, "m1");
        assert_eq!(m.standbys, [("m2".to_string(), "sync_standby".to_string())]);
        assert!(m
            .describe("sync")
            .contains("m2 sync_standby on broker:5001"));
        assert!(m.describe("sync").contains("share one machine"));

        let cases = [
            (json!({}), "no \"ha\""),
            (
                json!({"members": [member("m1", Some("leader"))]}),
                "1 members, the plan has 2",
            ),
            (
                json!({"members": [member("m1", Some("leader")), member("m2", Some("replica"))]}),
                "m2 is replica",
            ),
            (
                json!({"members": [member("m1", Some("leader")), member("m2", None)]}),
                "without a role",
            ),
            (
                json!({"members": [member("m1", Some("leader")), member("m2", Some("leader"))]}),
                "2 leaders",
            ),
            (
                json!({"members": [member("m1", Some("leader")), {"name": "m2", "role": "sync_standby"}]}),
                "without its name or machine",
            ),
        ];
        for (ha, why) in cases {
            let e = members_shape(&ha, &sync2()).unwrap_err();
            assert!(e.contains(why), "{ha}: {e}");
        }
        let async2 = HaShape {
            members: 2,
            durability: "async".into(),
        };
        let replica =
            json!({"members": [member("m1", Some("leader")), member("m2", Some("replica"))]});
        assert!(members_shape(&replica, &async2).is_ok());
    }

    #[test]
    fn an_ha_binding_names_every_member_and_asks_for_the_primary() {
        let good = json!({
            "uri": "postgres://u:p@h:1,h:2/app?target_session_attrs=read-write&sslmode=verify-full",
            "jdbcUrl": "jdbc:postgresql://h:1,h:2/app?user=u&password=p&targetServerType=primary&ssl=true",
            "hosts": ["h:1", "h:2"],
        });
        assert!(binding_shape(&good, 2).unwrap().contains("h:1,h:2"));
        let mut one_host = good.clone();
        one_host["uri"] = json!("postgres://u:p@h:1/app?sslmode=verify-full");
        assert!(binding_shape(&one_host, 2)
            .unwrap_err()
            .to_string()
            .contains("1 host(s)"));
        let mut any = good.clone();
        any["uri"] = json!("postgres://u:p@h:1,h:2/app?sslmode=verify-full");
        assert!(binding_shape(&any, 2)
            .unwrap_err()
            .to_string()
            .contains("not read-write"));
        let mut jdbc = good.clone();
        jdbc["jdbcUrl"] = json!("jdbc:postgresql://h:1,h:2/app");
        assert!(binding_shape(&jdbc, 2)
            .unwrap_err()
            .to_string()
            .contains("targetServerType=primary"));
    }
}
