//! `wayback smoke-test [--broker-url URL] [--plan small] [--clone-plan PLAN] [--space-guid G]
//! [--org-guid G] [--timeout-secs 600] [--json] [--keep-on-failure]`: plays the Cloud Controller against a
//! running broker over OSB and walks one instance's whole life, undo included:
//!
//! 1. `catalog`: `GET /v2/catalog`, find the plan (and its service) by name, whether it is HA
//!    (`metadata.wayback.ha`), and the plan the clone goes into (`--clone-plan`; else the same
//!    plan, or for an HA plan the service's first plan without HA: the broker clones only
//!    into those);
//! 2. `provision`: a fresh instance `wayback-smoke-<8 hex>`, polled until it succeeds;
//! 3. `bind`: credentials for it (polled and fetched when the broker answers 202);
//! 4. `write`: a table and a few rows holding a random marker, read back, over the binding's uri;
//! 5. `unbind`, 6. `deprovision` (polled until `succeeded`, or 410 Gone from an older broker);
//! 7. `clone`: a new instance with `{"clone-from": "<the name>"}`, the PUT repeated while the
//!    broker answers 422 because the source has no complete base backup yet; every new
//!    `last_operation` description is shown as progress;
//! 8. `verify`: bind the clone, connect, the rows and the marker are there exactly;
//! 9. `cleanup`: unbind and deprovision the clone; after a failure, whatever the walk created
//!    (unless `--keep-on-failure`, which leaves it for inspection).
//!
//! An HA plan walks eleven steps: `ha` after `bind` (the fetch shows every member, one leader,
//! the rest standbys; the binding names them all) and `switchover` after `write` (the operator
//! API hands the lead over; a row goes through the same uri to the new leader); see `ha`.
//!
//! Exit codes as for the other commands: 0 passed, 1 a step failed (named, with the broker's
//! answer), 2 the settings do not say how to reach the broker. The binding's password is never
//! printed: credentials are shown without it, and every detail is scrubbed of it.
//!
//! Talks to the broker over HTTP only (reqwest) and to the clusters over the bindings' uris
//! (sqlx); it must not import the broker's internals, so it tests what a platform sees.
//!
//! The parts: this file holds the command line, `main`, the [`Target`], [`run`] and the
//! [`Report`]; `walk` the `Walk` that takes the steps in order and cleans up after a
//! failure; `steps` each step's OSB calls; `plan` the walked plan's HA shape and the clone's plan; `ha` the HA plan's steps and checks; `sql` what is
//! written and read over a binding's uri; `pguri` a multi-host uri split per host; `osb` the
//! small HTTP client that plays the Cloud Controller.

mod ha;
mod osb;
mod pguri;
mod plan;
mod sql;
mod steps;
mod walk;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use secrecy::SecretString;
use serde::Serialize;

use crate::config::Settings;
use osb::Osb;
use walk::{Made, Walk};

/// The number of steps of a full walk: 9, and 11 for an HA plan (`ha`, `switchover`).
fn steps_of(ha: bool) -> usize {
    if ha {
        11
    } else {
        9
    }
}
/// Rows the write step inserts.
const ROWS: i32 = 3;

/// The command line of `wayback smoke-test`.
#[derive(Debug, Clone, clap::Args)]
pub struct SmokeTestArgs {
    /// The broker's URL. Default: `external_url`, else http://<listen>.
    #[arg(long, value_name = "URL")]
    pub broker_url: Option<String>,
    /// The plan to provision (by name, as in the catalog).
    #[arg(long, default_value = "small")]
    pub plan: String,
    /// The plan the clone step provisions into. Default: the same plan; for an HA plan the
    /// service's first plan without HA (the broker clones only into those).
    #[arg(long, value_name = "PLAN")]
    pub clone_plan: Option<String>,
    /// The space GUID the instances are created in. Default: a random one.
    #[arg(long, value_name = "GUID")]
    pub space_guid: Option<String>,
    /// The org GUID the instances are created in. Default: a random one.
    #[arg(long, value_name = "GUID")]
    pub org_guid: Option<String>,
    /// Seconds the whole walk may take (and, again, the clean-up after a failure).
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    /// Print the summary as JSON (one document).
    #[arg(long)]
    pub json: bool,
    /// After a failure, leave what was created for inspection instead of deleting it.
    #[arg(long)]
    pub keep_on_failure: bool,
    /// Directory of the broker's state, for a generated `broker-password` (as for `serve`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// The summary of one run (`--json` prints it; its shape is stable).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub steps: Vec<StepReport>,
    pub instance_id: Option<String>,
    pub clone_id: Option<String>,
    /// Whether the plan was HA (11 steps); not in the JSON, whose steps say so.
    #[serde(skip)]
    pub ha: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub name: &'static str,
    pub ok: bool,
    pub secs: f64,
    pub detail: String,
}

/// Runs the command: 0 when every step passed, 1 when one failed, 2 on bad settings.
pub fn main(mut settings: Settings, args: SmokeTestArgs) -> ExitCode {
    let (target, runtime) =
        match super::start_command(&mut settings, args.data_dir.clone(), "smoke-test", |s| {
            Target::from_settings(s, &args)
        }) {
            Ok(started) => started,
            Err(code) => return code,
        };
    let json = args.json;
    let print = move |line: &str| {
        if !json {
            println!("{line}");
        }
    };
    let report = runtime.block_on(run(&target, &print));
    if json {
        let text = serde_json::to_string_pretty(&report).expect("a report serializes");
        println!("{text}");
    }
    if report.ok {
        return ExitCode::SUCCESS;
    }
    if let Some((n, failed)) = report.steps.iter().enumerate().find(|(_, s)| !s.ok) {
        let total = steps_of(report.ha);
        let n = if failed.name == "cleanup" {
            total
        } else {
            n + 1
        };
        eprintln!(
            "wayback: smoke-test: step {n}/{total} ({}) failed: {}",
            failed.name, failed.detail
        );
    }
    ExitCode::FAILURE
}

/// Where the broker is and how the walk goes, checked before any call.
pub struct Target {
    pub url: String,
    pub username: String,
    pub password: SecretString,
    pub plan: String,
    pub clone_plan: Option<String>,
    pub org_guid: String,
    pub space_guid: String,
    pub timeout: Duration,
    pub keep_on_failure: bool,
}

impl Target {
    pub fn from_settings(settings: &Settings, args: &SmokeTestArgs) -> anyhow::Result<Target> {
        let url = args
            .broker_url
            .clone()
            .or_else(|| settings.external_url.clone())
            .unwrap_or_else(|| format!("http://{}", settings.listen));
        let parsed = reqwest::Url::parse(&url).with_context(|| format!("broker URL {url:?}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            bail!("broker URL {url:?}: not http(s)");
        }
        let password = match &settings.broker.password {
            Some(p) => p.clone(),
            None => {
                let file = settings.data_dir.join("broker-password");
                let text = std::fs::read_to_string(&file).with_context(|| {
                    format!("no broker password: set broker.password (WAYBACK_BROKER_PASSWORD) to the broker's, or point --data-dir at the broker's data directory ({} cannot be read)", file.display())
                })?;
                SecretString::from(text.trim().to_string())
            }
        };
        let guid = |given: &Option<String>, flag: &str| match given {
            Some(g) => uuid::Uuid::parse_str(g)
                .map(|u| u.to_string())
                .map_err(|e| anyhow!("{flag} {g:?} is not a GUID: {e}")),
            None => Ok(uuid::Uuid::new_v4().to_string()),
        };
        if args.plan.trim().is_empty() {
            bail!("--plan is empty");
        }
        Ok(Target {
            url: url.trim_end_matches('/').to_string(),
            username: settings.broker.username.clone(),
            password,
            plan: args.plan.clone(),
            clone_plan: args.clone_plan.clone().filter(|p| !p.trim().is_empty()),
            org_guid: guid(&args.org_guid, "--org-guid")?,
            space_guid: guid(&args.space_guid, "--space-guid")?,
            timeout: Duration::from_secs(args.timeout_secs),
            keep_on_failure: args.keep_on_failure,
        })
    }
}

/// Walks the steps, cleans up, and reports; `print` gets the lines for a person.
pub async fn run(target: &Target, print: &dyn Fn(&str)) -> Report {
    let mut walk = Walk {
        osb: match Osb::new(target) {
            Ok(o) => o,
            Err(e) => {
                return Report {
                    ok: false,
                    steps: vec![StepReport {
                        name: "catalog",
                        ok: false,
                        secs: 0.0,
                        detail: format!("{e:#}"),
                    }],
                    instance_id: None,
                    clone_id: None,
                    ha: false,
                }
            }
        },
        target,
        print,
        steps: Vec::new(),
        made: Made::default(),
        secrets: Vec::new(),
        deadline: Instant::now() + target.timeout,
        ha: false,
    };
    let walked = walk.walk().await;
    if walked.is_err() {
        if target.keep_on_failure {
            print(&format!(
                "left for inspection (--keep-on-failure): {}",
                walk.made.describe()
            ));
        } else if !walk.made.is_empty() {
            walk.deadline = Instant::now() + target.timeout;
            let t = Instant::now();
            let r = walk.clean_up_all().await;
            let _ = walk.record("cleanup", t, r);
        }
    }
    let ok = walk.steps.iter().all(|s| s.ok) && walked.is_ok();
    if ok {
        let total: f64 = walk.steps.iter().map(|s| s.secs).sum();
        if walk.ha {
            print(&format!(
                "smoke test passed: provisioned an HA instance, checked its members and the binding's addresses, wrote, switched over and wrote through the same uri, deprovisioned, cloned back and verified {} rows ({total:.1} s)",
                ROWS + 1
            ));
        } else {
            print(&format!(
                "smoke test passed: provisioned, bound, wrote, deprovisioned, cloned back and verified {ROWS} rows ({total:.1} s)"
            ));
        }
    }
    Report {
        ok,
        steps: walk.steps,
        instance_id: walk.made.instance.as_ref().map(|i| i.id.clone()),
        clone_id: walk.made.clone.as_ref().map(|i| i.id.clone()),
        ha: walk.ha,
    }
}
