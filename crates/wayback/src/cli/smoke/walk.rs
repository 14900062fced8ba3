//! The `Walk`: the nine steps of a smoke test taken in order (eleven for an HA plan: `ha` after
//! `bind`, `switchover` after `write`, in `ha`), each timed, printed and
//! recorded as a [`StepReport`], with every secret seen scrubbed from the details; the
//! `last_operation` poll that follows a 202 until the walk's deadline; and, after a failure,
//! the clean-up of whatever the walk created (`Made`). The steps' OSB calls are in `steps`.
//! Must not import the broker's internals: it sees the broker as a platform does.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use reqwest::Method;
use serde_json::json;

use super::osb::{path_only, Osb};
use super::plan::HaShape;
use super::sql::write;
use super::{steps_of, StepReport, Target};

/// An instance the walk created, and its binding while it has one.
#[derive(Debug, Clone)]
pub(super) struct Made1 {
    pub(super) id: String,
    pub(super) binding: Option<String>,
    pub(super) gone: bool,
}

#[derive(Debug, Default)]
pub(super) struct Made {
    pub(super) instance: Option<Made1>,
    pub(super) clone: Option<Made1>,
}

impl Made {
    pub(super) fn is_empty(&self) -> bool {
        [&self.instance, &self.clone]
            .iter()
            .all(|m| m.as_ref().map_or(true, |m| m.gone && m.binding.is_none()))
    }

    pub(super) fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (what, m) in [("instance", &self.instance), ("clone", &self.clone)] {
            if let Some(m) = m.as_ref().filter(|m| !m.gone) {
                parts.push(format!("{what} {}", m.id));
                if let Some(b) = &m.binding {
                    parts.push(format!("its binding {b}"));
                }
            }
        }
        if parts.is_empty() {
            "nothing".into()
        } else {
            parts.join(", ")
        }
    }
}

pub(super) struct Walk<'a> {
    pub(super) osb: Osb,
    pub(super) target: &'a Target,
    pub(super) print: &'a dyn Fn(&str),
    pub(super) steps: Vec<StepReport>,
    pub(super) made: Made,
    /// Passwords seen in credentials: scrubbed from every detail.
    pub(super) secrets: Vec<String>,
    pub(super) deadline: Instant,
    /// Whether the walked plan is HA (known after the catalog step): the walk has 11 steps.
    pub(super) ha: bool,
}

/// What the catalog step found.
pub(super) struct Ids {
    pub(super) service_id: String,
    pub(super) plan_id: String,
    /// The plan the clone step provisions into (`ha::clone_plan`).
    pub(super) clone_plan_id: String,
    /// The walked plan's `metadata.wayback.ha`, when it has one.
    pub(super) ha: Option<HaShape>,
}

impl Ids {
    /// The plan of the instance (`clone`: of the clone).
    pub(super) fn plan(&self, clone: bool) -> &str {
        if clone {
            &self.clone_plan_id
        } else {
            &self.plan_id
        }
    }
}

impl<'a> Walk<'a> {
    /// Records and prints the step `name` that started at `start` and ended with `result`.
    pub(super) fn record<T>(
        &mut self,
        name: &'static str,
        start: Instant,
        result: anyhow::Result<(T, String)>,
    ) -> anyhow::Result<T> {
        let total = steps_of(self.ha);
        let n = if name == "cleanup" {
            total
        } else {
            self.steps.len() + 1
        };
        let secs = (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
        let (ok, detail) = match &result {
            Ok((_, d)) => (true, self.scrub(d)),
            Err(e) => (false, self.scrub(&format!("{e:#}"))),
        };
        let verdict = if ok { "ok" } else { "FAILED" };
        (self.print)(&format!(
            "[{n}/{total}] {name} … {verdict} ({secs:.1} s): {detail}"
        ));
        self.steps.push(StepReport {
            name,
            ok,
            secs,
            detail,
        });
        result.map(|(t, _)| t)
    }

    fn scrub(&self, text: &str) -> String {
        let mut text = text.to_string();
        for s in self.secrets.iter().filter(|s| !s.is_empty()) {
            text = text.replace(s.as_str(), "********");
        }
        text
    }

    pub(super) async fn walk(&mut self) -> anyhow::Result<()> {
        let t = Instant::now();
        let r = self.catalog().await;
        let ids = self.record("catalog", t, r)?;
        self.ha = ids.ha.is_some();
        let hex = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("wayback-smoke-{}", &hex[..8]);
        let marker = uuid::Uuid::new_v4().simple().to_string();

        let id = uuid::Uuid::new_v4().to_string();
        self.made.instance = Some(Made1 {
            id: id.clone(),
            binding: None,
            gone: false,
        });
        let t = Instant::now();
        let r = self.provision(&ids, &id, &name, None).await;
        self.record("provision", t, r)?;

        let t = Instant::now();
        let r = self.bind(&ids, false).await;
        let login = self.record("bind", t, r)?;

        let members = match &ids.ha {
            Some(shape) => {
                let t = Instant::now();
                let r = self.ha_step(shape, &login).await;
                Some(self.record("ha", t, r)?)
            }
            None => None,
        };

        let t = Instant::now();
        let r = write(&login, &marker).await;
        let mut rows = self.record("write", t, r)?;

        if let (Some(shape), Some(members)) = (&ids.ha, &members) {
            let t = Instant::now();
            let r = self
                .switchover(shape, members, &login, &rows, &marker)
                .await;
            rows = self.record("switchover", t, r)?;
        }

        let t = Instant::now();
        let r = self.unbind(&ids, false).await;
        self.record("unbind", t, r)?;

        let t = Instant::now();
        let r = self.deprovision(&ids, false).await;
        self.record("deprovision", t, r)?;

        let clone_id = uuid::Uuid::new_v4().to_string();
        self.made.clone = Some(Made1 {
            id: clone_id.clone(),
            binding: None,
            gone: false,
        });
        let t = Instant::now();
        let from = json!({ "clone-from": name });
        let r = self.provision(&ids, &clone_id, &name, Some(from)).await;
        self.record("clone", t, r)?;

        let t = Instant::now();
        let r = self.verify(&ids, &rows).await;
        self.record("verify", t, r)?;

        let t = Instant::now();
        let r = async {
            self.unbind(&ids, true).await?;
            let (_, gone) = self.deprovision(&ids, true).await?;
            Ok(((), format!("clone unbound, {gone}")))
        }
        .await;
        self.record("cleanup", t, r)
    }

    /// After a failure: unbinds and deprovisions whatever is left, clone first.
    pub(super) async fn clean_up_all(&mut self) -> anyhow::Result<((), String)> {
        let ids = self.cleanup_ids().await?;
        let mut done = Vec::new();
        let mut errors = Vec::new();
        for clone in [true, false] {
            let Some(m) = (if clone {
                &self.made.clone
            } else {
                &self.made.instance
            })
            .clone() else {
                continue;
            };
            if m.binding.is_some() {
                match self.unbind(&ids, clone).await {
                    Ok((_, d)) => done.push(d),
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
            if !m.gone {
                match self.deprovision(&ids, clone).await {
                    Ok((_, d)) => done.push(d),
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
        }
        if !errors.is_empty() {
            bail!("{}; left: {}", errors.join("; "), self.made.describe());
        }
        Ok(((), done.join(", ")))
    }

    /// The ids for the clean-up's DELETEs, from the catalog again (the failed walk may not have
    /// got them).
    async fn cleanup_ids(&mut self) -> anyhow::Result<Ids> {
        Ok(self.catalog().await?.0)
    }

    pub(super) fn instance(&self, clone: bool) -> anyhow::Result<String> {
        let m = if clone {
            &self.made.clone
        } else {
            &self.made.instance
        };
        m.as_ref()
            .map(|m| m.id.clone())
            .ok_or_else(|| anyhow!("no instance to work on"))
    }

    pub(super) fn made_mut(&mut self, clone: bool) -> &mut Made1 {
        let m = if clone {
            &mut self.made.clone
        } else {
            &mut self.made.instance
        };
        m.as_mut()
            .expect("the instance was recorded before its first call")
    }

    /// Polls a last_operation path until `succeeded` (or 410 Gone when `gone_ok`: a finished
    /// delete on an older broker; this one answers 200 `succeeded`); prints each new
    /// description as progress. Returns how it ended: `succeeded` or `410 Gone`.
    pub(super) async fn poll(&mut self, path: &str, gone_ok: bool) -> anyhow::Result<&'static str> {
        let mut wait = Duration::from_millis(250);
        let mut last = String::new();
        loop {
            let answer = self.osb.call(Method::GET, path, None).await?;
            if answer.status == 410 && gone_ok {
                return Ok("410 Gone");
            }
            let body = answer.expect(&format!("GET {}", path_only(path)), &[200])?;
            let description = body["description"].as_str().unwrap_or_default().to_string();
            if !description.is_empty() && description != last {
                (self.print)(&format!("      {description}"));
                last = description;
            }
            match body["state"].as_str() {
                Some("succeeded") => return Ok("succeeded"),
                Some("in progress") => {}
                Some("failed") => bail!("the operation failed: {}", answer.describe()),
                _ => bail!("unexpected last_operation: {}", answer.describe()),
            }
            if Instant::now() + wait > self.deadline {
                bail!(
                    "still in progress after {} s (--timeout-secs): {}",
                    self.target.timeout.as_secs(),
                    answer.describe()
                );
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_made_is_named_until_it_is_gone() {
        let mut made = Made::default();
        assert!(made.is_empty());
        assert_eq!(made.describe(), "nothing");
        made.instance = Some(Made1 {
            id: "i1".into(),
            binding: Some("b1".into()),
            gone: false,
        });
        assert!(!made.is_empty());
        assert_eq!(made.describe(), "instance i1, its binding b1");
        made.instance = Some(Made1 {
            id: "i1".into(),
            binding: None,
            gone: true,
        });
        assert!(made.is_empty());
    }
}
