//! What `register-broker` did, as a [`Registration`] (the document `--json` prints) and as
//! lines for a person ([`render`]). Pure: no calls, no I/O.

use serde::Serialize;

/// What the command did.
#[derive(Debug, Clone, Serialize)]
pub struct Registration {
    /// `created` or `updated`.
    pub action: &'static str,
    pub broker: BrokerRef,
    /// The CC's catalog job; `None` when the update needed none.
    pub job: Option<JobOutcome>,
    /// The plans made visible (empty without `--enable-access`).
    pub access: Vec<PlanAccess>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BrokerRef {
    pub name: String,
    pub guid: String,
    pub url: String,
    pub space_guid: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobOutcome {
    pub guid: String,
    pub state: String,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanAccess {
    pub plan_guid: String,
    pub plan_name: String,
    /// `public` or `organization`.
    pub visibility: &'static str,
    pub organizations: Vec<OrgRef>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OrgRef {
    pub guid: String,
    pub name: String,
}

/// The report as lines for a person.
pub fn render(r: &Registration) -> String {
    let b = &r.broker;
    let mut out = format!(
        "{} service broker {} ({}) at {}",
        r.action, b.name, b.guid, b.url
    );
    if let Some(space) = &b.space_guid {
        out.push_str(&format!(", scoped to space {space}"));
    }
    match &r.job {
        Some(job) => out.push_str(&format!(
            "; catalog synchronised (job {} {})\n",
            job.guid, job.state
        )),
        None => out.push('\n'),
    }
    for w in r.job.iter().flat_map(|j| &j.warnings) {
        out.push_str(&format!("warning from the Cloud Controller: {w}\n"));
    }
    for p in &r.access {
        let whom = if p.organizations.is_empty() {
            "all organizations (public)".to_string()
        } else {
            let names: Vec<&str> = p.organizations.iter().map(|o| o.name.as_str()).collect();
            format!("organizations {}", names.join(", "))
        };
        out.push_str(&format!(
            "enabled access to plan {} ({}) for {whom}\n",
            p.plan_name, p.plan_guid
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_the_broker_job_and_plans() {
        let r = Registration {
            action: "created",
            broker: BrokerRef {
                name: "wayback".into(),
                guid: "b1".into(),
                url: "https://wayback.example.org".into(),
                space_guid: None,
            },
            job: Some(JobOutcome {
                guid: "j1".into(),
                state: "COMPLETE".into(),
                warnings: vec![],
            }),
            access: vec![PlanAccess {
                plan_guid: "p1".into(),
                plan_name: "small".into(),
                visibility: "public",
                organizations: vec![],
            }],
        };
        assert_eq!(
            render(&r),
            "created service broker wayback (b1) at https://wayback.example.org; catalog synchronised (job j1 COMPLETE)\n\
             enabled access to plan small (p1) for all organizations (public)\n"
        );
    }
}
