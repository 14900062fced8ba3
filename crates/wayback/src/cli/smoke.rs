//! `wayback smoke-test [--broker-url URL] [--plan small] [--space-guid G] [--org-guid G]
//! [--timeout-secs 600] [--json] [--keep-on-failure]`: plays the Cloud Controller against a
//! running broker over OSB and walks one instance's whole life, undo included:
//!
//! 1. `catalog`: `GET /v2/catalog`, find the plan (and its service) by name;
//! 2. `provision`: a fresh instance `wayback-smoke-<8 hex>`, polled until it succeeds;
//! 3. `bind`: credentials for it (polled and fetched when the broker answers 202);
//! 4. `write`: a table and a few rows holding a random marker, read back, over the binding's uri;
//! 5. `unbind`, 6. `deprovision` (polled until 410 Gone);
//! 7. `clone`: a new instance with `{"clone-from": "<the name>"}`, the PUT repeated while the
//!    broker answers 422 because the source has no complete base backup yet; every new
//!    `last_operation` description is shown as progress;
//! 8. `verify`: bind the clone, connect, the rows and the marker are there exactly;
//! 9. `cleanup`: unbind and deprovision the clone; after a failure, whatever the walk created
//!    (unless `--keep-on-failure`, which leaves it for inspection).
//!
//! Exit codes as for the other commands: 0 passed, 1 a step failed (named, with the broker's
//! answer), 2 the settings do not say how to reach the broker. The binding's password is never
//! printed: credentials are shown without it, and every detail is scrubbed of it.
//!
//! Talks to the broker over HTTP only (reqwest) and to the clusters over the bindings' uris
//! (sqlx); it must not import the broker's internals, so it tests what a platform sees.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::{json, Value};

use super::encode;
use crate::cc::backoff::Backoff;
use crate::config::Settings;

/// The number of steps of a full walk.
const STEPS: usize = 9;
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
        let n = if failed.name == "cleanup" {
            STEPS
        } else {
            n + 1
        };
        eprintln!(
            "wayback: smoke-test: step {n}/{STEPS} ({}) failed: {}",
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
                }
            }
        },
        target,
        print,
        steps: Vec::new(),
        made: Made::default(),
        secrets: Vec::new(),
        deadline: Instant::now() + target.timeout,
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
        print(&format!(
            "smoke test passed: provisioned, bound, wrote, deprovisioned, cloned back and verified {ROWS} rows ({total:.1} s)"
        ));
    }
    Report {
        ok,
        steps: walk.steps,
        instance_id: walk.made.instance.as_ref().map(|i| i.id.clone()),
        clone_id: walk.made.clone.as_ref().map(|i| i.id.clone()),
    }
}

/// An instance the walk created, and its binding while it has one.
#[derive(Debug, Clone)]
struct Made1 {
    id: String,
    binding: Option<String>,
    gone: bool,
}

#[derive(Debug, Default)]
struct Made {
    instance: Option<Made1>,
    clone: Option<Made1>,
}

impl Made {
    fn is_empty(&self) -> bool {
        [&self.instance, &self.clone]
            .iter()
            .all(|m| m.as_ref().map_or(true, |m| m.gone && m.binding.is_none()))
    }

    fn describe(&self) -> String {
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

struct Walk<'a> {
    osb: Osb,
    target: &'a Target,
    print: &'a dyn Fn(&str),
    steps: Vec<StepReport>,
    made: Made,
    /// Passwords seen in credentials: scrubbed from every detail.
    secrets: Vec<String>,
    deadline: Instant,
}

/// What the catalog step found.
struct Ids {
    service_id: String,
    plan_id: String,
}

impl<'a> Walk<'a> {
    /// Records and prints the step `name` that started at `start` and ended with `result`.
    fn record<T>(
        &mut self,
        name: &'static str,
        start: Instant,
        result: anyhow::Result<(T, String)>,
    ) -> anyhow::Result<T> {
        let n = if name == "cleanup" {
            STEPS
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
            "[{n}/{STEPS}] {name} … {verdict} ({secs:.1} s): {detail}"
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

    async fn walk(&mut self) -> anyhow::Result<()> {
        let t = Instant::now();
        let r = self.catalog().await;
        let ids = self.record("catalog", t, r)?;
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
        let uri = self.record("bind", t, r)?;

        let t = Instant::now();
        let r = write(&uri, &marker).await;
        let rows = self.record("write", t, r)?;

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

    async fn catalog(&mut self) -> anyhow::Result<(Ids, String)> {
        let answer = self.osb.call(Method::GET, "/v2/catalog", None).await?;
        let body = answer.expect("GET /v2/catalog", &[200])?;
        let services = body["services"].as_array().cloned().unwrap_or_default();
        let mut names = Vec::new();
        for service in &services {
            for plan in service["plans"].as_array().into_iter().flatten() {
                let plan_name = plan["name"].as_str().unwrap_or_default();
                names.push(plan_name.to_string());
                if plan_name == self.target.plan {
                    let ids = Ids {
                        service_id: text(&service["id"])?,
                        plan_id: text(&plan["id"])?,
                    };
                    let detail = format!(
                        "service {} ({}), plan {} ({})",
                        service["name"].as_str().unwrap_or("?"),
                        ids.service_id,
                        plan_name,
                        ids.plan_id
                    );
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

    fn ids_query(ids: &Ids) -> String {
        format!("service_id={}&plan_id={}", ids.service_id, ids.plan_id)
    }

    /// PUTs an instance (a clone with `parameters`) and polls it until it succeeded. A clone's
    /// PUT is repeated while the broker says the source has no complete base backup yet.
    async fn provision(
        &mut self,
        ids: &Ids,
        id: &str,
        name: &str,
        parameters: Option<Value>,
    ) -> anyhow::Result<((), String)> {
        let mut body = json!({
            "service_id": ids.service_id,
            "plan_id": ids.plan_id,
            "organization_guid": self.target.org_guid,
            "space_guid": self.target.space_guid,
            "context": self.context(name),
        });
        let cloning = parameters.is_some();
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
                Self::ids_query(ids),
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

    /// Binds the instance (or the clone) and returns the binding's uri.
    async fn bind(&mut self, ids: &Ids, clone: bool) -> anyhow::Result<(String, String)> {
        let instance = self.instance(clone)?;
        let binding = uuid::Uuid::new_v4().to_string();
        let app = uuid::Uuid::new_v4().to_string();
        let path = format!("/v2/service_instances/{instance}/service_bindings/{binding}");
        let body = json!({
            "service_id": ids.service_id,
            "plan_id": ids.plan_id,
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
                Self::ids_query(ids),
                operation_query(&reply)
            );
            self.poll(&poll, false).await?;
        }
        if reply["credentials"]["uri"].as_str().is_none() {
            let get = format!("{path}?{}", Self::ids_query(ids));
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
        let url = reqwest::Url::parse(&uri).context("the binding's uri")?;
        if !url.password().unwrap_or_default().is_empty() {
            self.secrets
                .push(url.password().unwrap_or_default().to_string());
        }
        let detail = format!(
            "binding {binding}: user {} at {}:{}{}",
            url.username(),
            url.host_str().unwrap_or("?"),
            url.port().unwrap_or(5432),
            url.path()
        );
        Ok((uri, detail))
    }

    async fn unbind(&mut self, ids: &Ids, clone: bool) -> anyhow::Result<((), String)> {
        let instance = self.instance(clone)?;
        let Some(binding) = self.made_mut(clone).binding.clone() else {
            return Ok(((), "no binding".into()));
        };
        let path = format!("/v2/service_instances/{instance}/service_bindings/{binding}");
        self.delete_and_wait(&path, ids).await?;
        self.made_mut(clone).binding = None;
        Ok(((), format!("binding {binding} deleted")))
    }

    /// DELETE an instance or binding as the platform does, and follow the operation until it
    /// is gone.
    async fn delete_and_wait(&mut self, path: &str, ids: &Ids) -> anyhow::Result<()> {
        let q = Self::ids_query(ids);
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
            self.poll(&poll, true).await?;
        }
        Ok(())
    }

    async fn deprovision(&mut self, ids: &Ids, clone: bool) -> anyhow::Result<((), String)> {
        let instance = self.instance(clone)?;
        let path = format!("/v2/service_instances/{instance}");
        self.delete_and_wait(&path, ids).await?;
        self.made_mut(clone).gone = true;
        Ok(((), format!("instance {instance} deleted (410 Gone)")))
    }

    async fn verify(&mut self, ids: &Ids, rows: &[(i32, String)]) -> anyhow::Result<((), String)> {
        let (uri, _) = self.bind(ids, true).await?;
        let found = read_rows(&uri).await?;
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

    /// After a failure: unbinds and deprovisions whatever is left, clone first.
    async fn clean_up_all(&mut self) -> anyhow::Result<((), String)> {
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

    fn instance(&self, clone: bool) -> anyhow::Result<String> {
        let m = if clone {
            &self.made.clone
        } else {
            &self.made.instance
        };
        m.as_ref()
            .map(|m| m.id.clone())
            .ok_or_else(|| anyhow!("no instance to work on"))
    }

    fn made_mut(&mut self, clone: bool) -> &mut Made1 {
        let m = if clone {
            &mut self.made.clone
        } else {
            &mut self.made.instance
        };
        m.as_mut()
            .expect("the instance was recorded before its first call")
    }

    /// Polls a last_operation path until `succeeded` (or 410 Gone when `gone_ok`); prints each
    /// new description as progress.
    async fn poll(&mut self, path: &str, gone_ok: bool) -> anyhow::Result<()> {
        let mut wait = Duration::from_millis(250);
        let mut last = String::new();
        loop {
            let answer = self.osb.call(Method::GET, path, None).await?;
            if answer.status == 410 && gone_ok {
                return Ok(());
            }
            let body = answer.expect(&format!("GET {}", path_only(path)), &[200])?;
            let description = body["description"].as_str().unwrap_or_default().to_string();
            if !description.is_empty() && description != last {
                (self.print)(&format!("      {description}"));
                last = description;
            }
            match body["state"].as_str() {
                Some("succeeded") => return Ok(()),
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

/// Creates the table, writes the rows and reads them back.
async fn write(uri: &str, marker: &str) -> anyhow::Result<(Vec<(i32, String)>, String)> {
    let mut conn = connect(uri).await?;
    sqlx::raw_sql("CREATE TABLE wayback_smoke (id integer PRIMARY KEY, marker text NOT NULL)")
        .execute(&mut conn)
        .await
        .context("CREATE TABLE wayback_smoke")?;
    let rows: Vec<(i32, String)> = (1..=ROWS).map(|i| (i, format!("{marker}-{i}"))).collect();
    for (id, m) in &rows {
        sqlx::query("INSERT INTO wayback_smoke (id, marker) VALUES ($1, $2)")
            .bind(id)
            .bind(m)
            .execute(&mut conn)
            .await
            .context("INSERT INTO wayback_smoke")?;
    }
    let found = read_from(&mut conn).await?;
    if found != rows {
        bail!("read back {found:?}, wrote {rows:?}");
    }
    Ok((
        rows,
        format!("{ROWS} rows with marker {marker} written and read back"),
    ))
}

async fn read_rows(uri: &str) -> anyhow::Result<Vec<(i32, String)>> {
    let mut conn = connect(uri).await?;
    read_from(&mut conn).await
}

async fn read_from(conn: &mut sqlx::PgConnection) -> anyhow::Result<Vec<(i32, String)>> {
    sqlx::query_as("SELECT id, marker FROM wayback_smoke ORDER BY id")
        .fetch_all(conn)
        .await
        .context("SELECT FROM wayback_smoke")
}

/// Connects with the binding's uri, a few times: the cluster may still be opening up.
async fn connect(uri: &str) -> anyhow::Result<sqlx::PgConnection> {
    use sqlx::Connection;
    let mut attempt = 0;
    loop {
        match sqlx::PgConnection::connect(uri).await {
            Ok(c) => return Ok(c),
            Err(e) if attempt >= 4 => {
                return Err(anyhow!("connect with the binding's uri: {e}"));
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
        attempt += 1;
    }
}

/// `&operation=…` when the answer named an operation.
fn operation_query(reply: &Value) -> String {
    match reply["operation"].as_str() {
        Some(op) => format!("&operation={}", encode(op)),
        None => String::new(),
    }
}

fn path_only(path: &str) -> &str {
    path.split('?').next().unwrap_or(path)
}

fn text(v: &Value) -> anyhow::Result<String> {
    v.as_str()
        .map(String::from)
        .ok_or_else(|| anyhow!("the catalog has a service or plan without an id"))
}

/// The broker over OSB, as the Cloud Controller calls it.
struct Osb {
    http: reqwest::Client,
    url: String,
    username: String,
    password: SecretString,
    backoff: Backoff,
}

/// One answer of the broker, read whole.
struct Answer {
    status: u16,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The OSB error's `description` (or `error`), else the body.
    fn description(&self) -> String {
        let v = self.json();
        v["description"]
            .as_str()
            .or(v["error"].as_str())
            .map(String::from)
            .unwrap_or_else(|| short(&self.body))
    }

    fn describe(&self) -> String {
        format!("HTTP {}: {}", self.status, self.description())
    }

    /// The body as JSON if the status is one of `ok`, else an error with the broker's answer.
    fn expect(&self, what: &str, ok: &[u16]) -> anyhow::Result<Value> {
        if ok.contains(&self.status) {
            return Ok(self.json());
        }
        if self.status == 401 {
            bail!(
                "{}: {}; check broker.username and broker.password (WAYBACK_BROKER_USERNAME / WAYBACK_BROKER_PASSWORD)",
                path_only(what),
                self.describe()
            );
        }
        bail!("{}: {}", path_only(what), self.describe())
    }
}

fn short(body: &str) -> String {
    let body = body.trim();
    match body.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &body[..cut]),
        None if body.is_empty() => "(empty body)".into(),
        None => body.to_string(),
    }
}

impl Osb {
    fn new(target: &Target) -> anyhow::Result<Osb> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("wayback-smoke-test/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("build the HTTP client")?;
        Ok(Osb {
            http,
            url: target.url.clone(),
            username: target.username.clone(),
            password: target.password.clone(),
            backoff: Backoff {
                base: Duration::from_millis(250),
                max: Duration::from_secs(4),
            },
        })
    }

    /// One call; again (up to 4 times) on transport errors and 502/503/504, which OSB's
    /// idempotent PUTs and DELETEs allow.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        let what = format!("{method} {}", path_only(path));
        let mut attempt = 0;
        loop {
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.url))
                .basic_auth(&self.username, Some(self.password.expose_secret()))
                .header("X-Broker-API-Version", "2.17");
            if let Some(b) = body {
                request = request.json(b);
            }
            let failure = match request.send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body = r.text().await.unwrap_or_default();
                    let answer = Answer { status, body };
                    if !matches!(status, 502..=504) {
                        return Ok(answer);
                    }
                    anyhow!("{what}: {}", answer.describe())
                }
                Err(e) => anyhow!("{what}: {}", e.without_url()),
            };
            attempt += 1;
            if attempt >= 4 {
                return Err(failure);
            }
            tokio::time::sleep(self.backoff.delay(attempt - 1)).await;
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

    #[test]
    fn answers_show_the_osb_description() {
        let a = Answer {
            status: 422,
            body: r#"{"error":"X","description":"no complete base backup yet"}"#.into(),
        };
        assert_eq!(a.describe(), "HTTP 422: no complete base backup yet");
        let a = Answer {
            status: 401,
            body: String::new(),
        };
        let e = a.expect("GET /v2/catalog?x=1", &[200]).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("GET /v2/catalog: HTTP 401: (empty body); check broker.username"));
    }

    #[test]
    fn operation_tokens_are_encoded() {
        assert_eq!(
            operation_query(&json!({"operation": "a b&c"})),
            "&operation=a%20b%26c"
        );
        assert_eq!(operation_query(&json!({})), "");
    }
}
