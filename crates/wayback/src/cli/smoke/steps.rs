//! The steps' calls to the broker, as the Cloud Controller makes them: the catalog, provision
//! (a clone too, repeated while the source has no base backup yet), bind, unbind, deprovision
//! and verify. Each returns its value and the detail the walk prints. Must not import the
//! broker's internals.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use reqwest::Method;
use serde_json::{json, Value};

use super::pguri::PgUri;
use super::plan::{clone_plan, HaShape};
use super::sql::{read_rows, AppLogin};
use super::walk::{Ids, Walk};
use crate::cli::encode;

impl<'a> Walk<'a> {
    pub(super) async fn catalog(&mut self) -> anyhow::Result<(Ids, String)> {
        let answer = self.osb.call(Method::GET, "/v2/catalog", None).await?;
        let body = answer.expect("GET /v2/catalog", &[200])?;
        let services = body["services"].as_array().cloned().unwrap_or_default();
        let mut names = Vec::new();
        for service in &services {
            for plan in service["plans"].as_array().into_iter().flatten() {
                let plan_name = plan["name"].as_str().unwrap_or_default();
                names.push(plan_name.to_string());
                if plan_name == self.target.plan {
                    let ha = HaShape::of_plan(plan)?;
                    let (clone_into, clone_plan_id) = clone_plan(
                        service,
                        plan,
                        ha.as_ref(),
                        self.target.clone_plan.as_deref(),
                    )?;
                    let mut detail = format!(
                        "service {} ({}), plan {} ({})",
                        service["name"].as_str().unwrap_or("?"),
                        text(&service["id"])?,
                        plan_name,
                        text(&plan["id"])?,
                    );
                    if let Some(ha) = &ha {
                        detail.push_str(&format!(
                            ", highly available: {} members, {} commits",
                            ha.members, ha.durability
                        ));
                    }
                    if clone_into != plan_name {
                        detail.push_str(&format!(
                            "; the clone goes into plan {clone_into} ({clone_plan_id})"
                        ));
                    }
                    let ids = Ids {
                        service_id: text(&service["id"])?,
                        plan_id: text(&plan["id"])?,
                        clone_plan_id,
                        ha,
                    };
                    return Ok((ids, detail));
                }
            }
        }
        bail!(
            "the catalog has no plan named {:?}; its plans: {}",
            self.target.plan,
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        )
    }

    fn context(&self, name: &str) -> Value {
        json!({
            "platform": "cloudfoundry",
            "organization_guid": self.target.org_guid,
            "space_guid": self.target.space_guid,
            "instance_name": name,
        })
    }

    /// `service_id=…&plan_id=…` of the instance (`clone`: of the clone).
    fn ids_query(ids: &Ids, clone: bool) -> String {
        format!("service_id={}&plan_id={}", ids.service_id, ids.plan(clone))
    }

    /// PUTs an instance (a clone with `parameters`) and polls it until it succeeded. A clone's
    /// PUT is repeated while the broker says the source has no complete base backup yet.
    pub(super) async fn provision(
        &mut self,
        ids: &Ids,
        id: &str,
        name: &str,
        parameters: Option<Value>,
    ) -> anyhow::Result<((), String)> {
        let cloning = parameters.is_some();
        let mut body = json!({
            "service_id": ids.service_id,
            "plan_id": ids.plan(cloning),
            "organization_guid": self.target.org_guid,
            "space_guid": self.target.space_guid,
            "context": self.context(name),
        });
        if let Some(p) = parameters {
            body["parameters"] = p;
        }
        let path = format!("/v2/service_instances/{id}?accepts_incomplete=true");
        let mut waited = false;
        let answer = loop {
            let answer = self.osb.call(Method::PUT, &path, Some(&body)).await?;
            let no_backup = answer.status == 422 && answer.description().contains("backup");
            if !(cloning && no_backup) {
                break answer;
            }
            if !waited {
                (self.print)(&format!("      {}", answer.description()));
                waited = true;
            }
            if Instant::now() + Duration::from_secs(5) > self.deadline {
                bail!(
                    "PUT the clone: still refused at the deadline: {}",
                    answer.describe()
                );
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        };
        let what = format!("PUT /v2/service_instances/{id}");
        let reply = answer.expect(&what, &[200, 201, 202])?;
        if answer.status == 202 {
            let poll = format!(
                "/v2/service_instances/{id}/last_operation?{}{}",
                Self::ids_query(ids, cloning),
                operation_query(&reply)
            );
            self.poll(&poll, false).await?;
        }
        // The descriptions were shown as progress; the detail stays short.
        let done = if cloning {
            format!("cloned from {name}")
        } else {
            "ready".into()
        };
        Ok(((), format!("instance {id} ({name}) {done}")))
    }

    /// Binds the instance (or the clone) and returns the binding's uri and CA.
    pub(super) async fn bind(
        &mut self,
        ids: &Ids,
        clone: bool,
    ) -> anyhow::Result<(AppLogin, String)> {
        let instance = self.instance(clone)?;
        let binding = uuid::Uuid::new_v4().to_string();
        let app = uuid::Uuid::new_v4().to_string();
        let path = format!("/v2/service_instances/{instance}/service_bindings/{binding}");
        let body = json!({
            "service_id": ids.service_id,
            "plan_id": ids.plan(clone),
            "app_guid": app,
            "bind_resource": {"app_guid": app},
            "context": self.context(""),
        });
        self.made_mut(clone).binding = Some(binding.clone());
        let answer = self
            .osb
            .call(
                Method::PUT,
                &format!("{path}?accepts_incomplete=true"),
                Some(&body),
            )
            .await?;
        let mut reply = answer.expect(&format!("PUT {path}"), &[200, 201, 202])?;
        if answer.status == 202 {
            let poll = format!(
                "{path}/last_operation?{}{}",
                Self::ids_query(ids, clone),
                operation_query(&reply)
            );
            self.poll(&poll, false).await?;
        }
        if reply["credentials"]["uri"].as_str().is_none() {
            let get = format!("{path}?{}", Self::ids_query(ids, clone));
            let answer = self.osb.call(Method::GET, &get, None).await?;
            reply = answer.expect(&format!("GET {path}"), &[200])?;
        }
        let creds = &reply["credentials"];
        if let Some(p) = creds["password"].as_str() {
            self.secrets.push(p.to_string());
        }
        let uri = creds["uri"]
            .as_str()
            .ok_or_else(|| anyhow!("the binding {binding} has no credentials.uri"))?
            .to_string();
        let parsed = PgUri::parse(&uri).context("the binding's uri")?;
        if let Some(p) = parsed.password()?.filter(|p| !p.is_empty()) {
            self.secrets.push(p);
        }
        let ca_certificate = creds["ca_certificate"].as_str().map(str::to_string);
        let sslmode = parsed.param("sslmode")?.unwrap_or_else(|| "prefer".into());
        let detail = format!(
            "binding {binding}: user {} at {}{} (sslmode {sslmode}{})",
            parsed.username()?,
            parsed.hosts.join(","),
            parsed.path(),
            if ca_certificate.is_some() {
                ", the credentials' CA"
            } else {
                ""
            }
        );
        Ok((
            AppLogin {
                uri,
                ca_certificate,
                credentials: creds.clone(),
            },
            detail,
        ))
    }

    pub(super) async fn unbind(&mut self, ids: &Ids, clone: bool) -> anyhow::Result<((), String)> {
        let instance = self.instance(clone)?;
        let Some(binding) = self.made_mut(clone).binding.clone() else {
            return Ok(((), "no binding".into()));
        };
        let path = format!("/v2/service_instances/{instance}/service_bindings/{binding}");
        self.delete_and_wait(&path, ids, clone).await?;
        self.made_mut(clone).binding = None;
        Ok(((), format!("binding {binding} deleted")))
    }

    /// DELETE an instance or binding as the platform does, and follow the operation until it
    /// is gone: its last_operation `succeeded` (or 410 Gone from an older broker). Returns how
    /// the broker said so.
    async fn delete_and_wait(
        &mut self,
        path: &str,
        ids: &Ids,
        clone: bool,
    ) -> anyhow::Result<String> {
        let q = Self::ids_query(ids, clone);
        let answer = self
            .osb
            .call(
                Method::DELETE,
                &format!("{path}?{q}&accepts_incomplete=true"),
                None,
            )
            .await?;
        let reply = answer.expect(&format!("DELETE {path}"), &[200, 202, 410])?;
        if answer.status == 202 {
            let poll = format!("{path}/last_operation?{q}{}", operation_query(&reply));
            let ended = self.poll(&poll, true).await?;
            return Ok(format!("last_operation {ended}"));
        }
        Ok(format!("DELETE answered {}", answer.status))
    }

    pub(super) async fn deprovision(
        &mut self,
        ids: &Ids,
        clone: bool,
    ) -> anyhow::Result<((), String)> {
        let instance = self.instance(clone)?;
        let path = format!("/v2/service_instances/{instance}");
        let how = self.delete_and_wait(&path, ids, clone).await?;
        self.made_mut(clone).gone = true;
        Ok(((), format!("instance {instance} deleted ({how})")))
    }

    pub(super) async fn verify(
        &mut self,
        ids: &Ids,
        rows: &[(i32, String)],
    ) -> anyhow::Result<((), String)> {
        let (login, _) = self.bind(ids, true).await?;
        let found = read_rows(&login).await?;
        if found != rows {
            bail!("the clone has rows {found:?}; the deleted instance had {rows:?}");
        }
        Ok((
            (),
            format!(
                "the clone has the {} rows and the marker, exactly",
                rows.len()
            ),
        ))
    }
}

/// `&operation=…` when the answer named an operation.
fn operation_query(reply: &Value) -> String {
    match reply["operation"].as_str() {
        Some(op) => format!("&operation={}", encode(op)),
        None => String::new(),
    }
}

fn text(v: &Value) -> anyhow::Result<String> {
    v.as_str()
        .map(String::from)
        .ok_or_else(|| anyhow!("the catalog has a service or plan without an id"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_tokens_are_encoded() {
        assert_eq!(
            operation_query(&json!({"operation": "a b&c"})),
            "&operation=a%20b%26c"
        );
        assert_eq!(operation_query(&json!({})), "");
    }
}
