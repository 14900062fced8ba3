//! `wayback register-broker [--name NAME] [--url URL] [--space-scoped SPACE_GUID]
//! [--enable-access [--org ORG]...] [--json]`: makes the Cloud Controller know this broker,
//! through its v3 API alone (no `cf` binary), as the `cc.*` settings' UAA client, which needs
//! `cloud_controller.admin`.
//!
//! The steps, each one call or a poll:
//! 1. `GET /v3/service_brokers?names=NAME`: is there a broker of that name?
//! 2. No: `POST /v3/service_brokers` (name, url, basic-auth credentials, space if scoped).
//!    Yes: `PATCH /v3/service_brokers/:guid` (url, credentials), which makes the CC read the
//!    catalog again. Both answer 202 with a `Location` job; `GET /v3/jobs/:guid` is polled until
//!    `COMPLETE` or `FAILED` (a failed job's errors are shown as the CC wrote them).
//! 3. With `--enable-access`: the broker's plans (`GET /v3/service_plans?service_broker_guids=`)
//!    get `POST /v3/service_plans/:guid/visibility`, public, or for the `--org`s (looked up with
//!    `GET /v3/organizations?names=`).
//!
//! Running it again is safe: the second run updates instead of creating. Only the create is
//! not retried (a retry after a lost answer would fail on the taken name); every other call is
//! retried with backoff when the failure is transient, as in `cc`.
//!
//! The bearer token goes to `cc.api_url` only: a job's `Location` is followed by its path.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::encode;
use crate::cc::{CcError, CloudController};
use crate::config::{CcSettings, Settings};

/// The command line of `wayback register-broker`.
#[derive(Debug, Clone, clap::Args)]
pub struct RegisterBrokerArgs {
    /// The service broker's name in the Cloud Controller.
    #[arg(long, default_value = "wayback")]
    pub name: String,
    /// The URL the Cloud Controller reaches the broker at. Default: `external_url`.
    #[arg(long, value_name = "BROKER_URL")]
    pub url: Option<String>,
    /// Register a space-scoped broker, whose plans only this space sees.
    #[arg(long, value_name = "SPACE_GUID", conflicts_with = "enable_access")]
    pub space_scoped: Option<String>,
    /// Make every plan of the broker visible: to all orgs, or with --org to those named.
    #[arg(long)]
    pub enable_access: bool,
    /// An org to enable access for (repeatable); without it access is public.
    #[arg(long = "org", value_name = "ORG_NAME", requires = "enable_access")]
    pub orgs: Vec<String>,
    /// Print what was done as JSON (one document).
    #[arg(long)]
    pub json: bool,
    /// Directory of the broker's state, for a generated `broker-password` (as for `serve`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Seconds to wait for the Cloud Controller's catalog job.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
}

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

/// Runs the command: 0 when registered (and access enabled), 1 when the Cloud Controller
/// refused or failed, 2 when the settings do not allow a registration.
pub fn main(mut settings: Settings, args: RegisterBrokerArgs) -> ExitCode {
    let (request, runtime) = match super::start_command(
        &mut settings,
        args.data_dir.clone(),
        "register-broker",
        |s| Request::from_settings(s, &args),
    ) {
        Ok(started) => started,
        Err(code) => return code,
    };
    match runtime.block_on(run(&settings.cc, &request)) {
        Ok(done) => {
            if args.json {
                let text = serde_json::to_string_pretty(&done).expect("a report serializes");
                println!("{text}");
            } else {
                print!("{}", render(&done));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wayback: register-broker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What to register, checked before any call.
pub struct Request {
    pub name: String,
    pub url: String,
    pub username: String,
    pub password: SecretString,
    pub space_guid: Option<String>,
    /// `None`: leave access alone; `Some([])`: public; else these orgs.
    pub access: Option<Vec<String>>,
    pub timeout: Duration,
}

impl Request {
    pub fn from_settings(
        settings: &Settings,
        args: &RegisterBrokerArgs,
    ) -> anyhow::Result<Request> {
        if settings.cc.api_url.is_none() {
            bail!("cc.api_url (WAYBACK_CC_API_URL) is not set: the broker is registered through the Cloud Controller's API, as the UAA client cc.client_id");
        }
        settings.validate()?;
        let url = args
            .url
            .clone()
            .or_else(|| settings.external_url.clone())
            .ok_or_else(|| anyhow!("no broker URL: pass --url or set external_url (WAYBACK_EXTERNAL_URL) to the URL the Cloud Controller reaches the broker at"))?;
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
        Ok(Request {
            name: args.name.clone(),
            url,
            username: settings.broker.username.clone(),
            password,
            space_guid: args.space_scoped.clone(),
            access: args.enable_access.then(|| args.orgs.clone()),
            timeout: Duration::from_secs(args.timeout_secs),
        })
    }
}

/// Registers (creates or updates) the broker, waits for the catalog job and enables access.
pub async fn run(cc: &CcSettings, request: &Request) -> anyhow::Result<Registration> {
    let api = Api::connect(cc).await?;
    let existing = api.find_broker(&request.name).await?;
    let credentials = json!({
        "type": "basic",
        "credentials": {
            "username": request.username,
            "password": request.password.expose_secret(),
        }
    });
    let (action, answer) = match &existing {
        None => {
            let mut body = json!({
                "name": request.name,
                "url": request.url,
                "authentication": credentials,
            });
            if let Some(space) = &request.space_guid {
                body["relationships"] = json!({"space": {"data": {"guid": space}}});
            }
            let answer = api
                .call(
                    "create the service broker",
                    Method::POST,
                    "/v3/service_brokers",
                    Some(&body),
                    false,
                )
                .await?;
            ("created", api.expect(answer, &[202])?)
        }
        Some(broker) => {
            if broker.space_guid != request.space_guid {
                bail!(
                    "service broker {} exists {}, not {}; the Cloud Controller cannot change that: delete it (cf delete-service-broker {}) or register under another --name",
                    request.name,
                    scope(&broker.space_guid),
                    scope(&request.space_guid),
                    request.name
                );
            }
            let body = json!({"url": request.url, "authentication": credentials});
            let path = format!("/v3/service_brokers/{}", broker.guid);
            let answer = api
                .call(
                    "update the service broker",
                    Method::PATCH,
                    &path,
                    Some(&body),
                    true,
                )
                .await?;
            ("updated", api.expect(answer, &[200, 202])?)
        }
    };
    let job = match answer.location.as_deref() {
        Some(location) if answer.status == 202 => {
            Some(api.wait_for_job(location, request.timeout).await.with_context(|| {
                format!("service broker {} was {action}, but the Cloud Controller could not read its catalog", request.name)
            })?)
        }
        _ if answer.status == 202 => bail!("the Cloud Controller answered 202 without a Location job"),
        _ => None,
    };
    let broker = match existing {
        Some(b) => b,
        None => api.find_broker(&request.name).await?.ok_or_else(|| {
            anyhow!(
                "the Cloud Controller created service broker {} but does not list it",
                request.name
            )
        })?,
    };
    let access = match &request.access {
        None => Vec::new(),
        Some(orgs) => api
            .enable_access(&broker.guid, orgs)
            .await
            .with_context(|| {
                format!(
                    "service broker {} was {action}, but enabling access failed",
                    request.name
                )
            })?,
    };
    Ok(Registration {
        action,
        broker: BrokerRef {
            name: request.name.clone(),
            guid: broker.guid,
            url: request.url.clone(),
            space_guid: broker.space_guid,
        },
        job,
        access,
    })
}

fn scope(space: &Option<String>) -> String {
    match space {
        Some(s) => format!("space-scoped (space {s})"),
        None => "for the whole platform".into(),
    }
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

/// One answer of the CC, read whole.
struct Answer {
    what: &'static str,
    status: u16,
    location: Option<String>,
    body: String,
}

/// The broker's guid and scope, as the CC lists it.
#[derive(Deserialize)]
struct WireBroker {
    guid: String,
    #[serde(default)]
    relationships: Value,
}

struct Broker {
    guid: String,
    space_guid: Option<String>,
}

#[derive(Deserialize)]
struct WireList {
    #[serde(default)]
    resources: Vec<Value>,
    #[serde(default)]
    pagination: Value,
}

#[derive(Deserialize)]
struct WireJob {
    guid: String,
    state: String,
    #[serde(default)]
    operation: String,
    #[serde(default)]
    errors: Vec<WireJobError>,
    #[serde(default)]
    warnings: Vec<WireWarning>,
}

#[derive(Deserialize)]
struct WireJobError {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    title: String,
    #[serde(default)]
    detail: String,
}

#[derive(Deserialize)]
struct WireWarning {
    #[serde(default)]
    detail: String,
}

/// `title (code): detail` for each error of the CC's envelope, else the start of the body.
fn errors_text(body: &str) -> String {
    #[derive(Deserialize)]
    struct Envelope {
        errors: Vec<WireJobError>,
    }
    match serde_json::from_str::<Envelope>(body) {
        Ok(e) if !e.errors.is_empty() => join_errors(&e.errors),
        _ => {
            let body = body.trim();
            match body.char_indices().nth(300) {
                Some((cut, _)) => format!("{}…", &body[..cut]),
                None if body.is_empty() => "(empty body)".into(),
                None => body.to_string(),
            }
        }
    }
}

fn join_errors(errors: &[WireJobError]) -> String {
    errors
        .iter()
        .map(|e| match e.code {
            Some(code) => format!("{} ({code}): {}", e.title, e.detail),
            None => format!("{}: {}", e.title, e.detail),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The CC's v3 API as the UAA client of the `cc.*` settings (`cc::CloudController`, which
/// finds the UAA, keeps the token and retries transient failures).
struct Api {
    cc: CloudController,
    client_id: String,
}

impl Api {
    /// The client, with its token fetched now so that bad credentials are said first.
    async fn connect(settings: &CcSettings) -> anyhow::Result<Api> {
        let cc = CloudController::from_settings(settings)?
            .ok_or_else(|| anyhow!("cc.api_url is not set"))?;
        match cc.check_credentials().await {
            Ok(()) => {}
            Err(CcError::Unauthorized { what, status }) => bail!(
                "{what}: HTTP {status}; check cc.client_id ({}) and cc.client_secret",
                settings.client_id
            ),
            Err(e) => return Err(e.into()),
        }
        Ok(Api {
            cc,
            client_id: settings.client_id.clone(),
        })
    }

    /// One authenticated call with an optional JSON body; with `retry`, again on transient
    /// failures.
    async fn call(
        &self,
        what: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        retry: bool,
    ) -> anyhow::Result<Answer> {
        let answer = self.cc.call(what, method, path, body, retry).await?;
        Ok(Answer {
            what,
            status: answer.status,
            location: answer.location,
            body: answer.body,
        })
    }

    /// The answer if its status is one of `ok`, else an error saying what to do about it.
    fn expect(&self, answer: Answer, ok: &[u16]) -> anyhow::Result<Answer> {
        if ok.contains(&answer.status) {
            return Ok(answer);
        }
        let detail = errors_text(&answer.body);
        match answer.status {
            403 => bail!(
                "{}: HTTP 403: {detail}. The UAA client {} may not do this: registering a broker and enabling access need the `cloud_controller.admin` authority (e.g. `uaac client update {} --authorities cloud_controller.admin`), then run this again",
                answer.what, self.client_id, self.client_id
            ),
            401 => bail!(
                "{}: HTTP 401: {detail}. The Cloud Controller refused the UAA client's token: check that cc.uaa_url is this Cloud Controller's UAA",
                answer.what
            ),
            status => bail!("{}: HTTP {status}: {detail}", answer.what),
        }
    }

    /// A `GET` answered 200, its body parsed.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        path: &str,
    ) -> anyhow::Result<T> {
        let answer = self.call(what, Method::GET, path, None, true).await?;
        let answer = self.expect(answer, &[200])?;
        serde_json::from_str(&answer.body).map_err(|e| anyhow!("{what}: unexpected response: {e}"))
    }

    /// Every resource of a paginated list, following `pagination.next`.
    async fn list(&self, what: &'static str, first: String) -> anyhow::Result<Vec<Value>> {
        let mut all = Vec::new();
        let mut next = Some(first);
        while let Some(path) = next.take() {
            let page: WireList = self.get_json(what, &path).await?;
            all.extend(page.resources);
            next = page.pagination["next"]["href"].as_str().map(String::from);
        }
        Ok(all)
    }

    async fn find_broker(&self, name: &str) -> anyhow::Result<Option<Broker>> {
        let path = format!("/v3/service_brokers?names={}", encode(name));
        let found = self.list("look up the service broker", path).await?;
        let Some(first) = found.into_iter().next() else {
            return Ok(None);
        };
        let wire: WireBroker = serde_json::from_value(first)
            .map_err(|e| anyhow!("look up the service broker: unexpected response: {e}"))?;
        Ok(Some(Broker {
            space_guid: wire.relationships["space"]["data"]["guid"]
                .as_str()
                .map(String::from),
            guid: wire.guid,
        }))
    }

    /// Polls `GET /v3/jobs/:guid` until the job is `COMPLETE` (or fails, or `timeout` passes).
    async fn wait_for_job(&self, location: &str, timeout: Duration) -> anyhow::Result<JobOutcome> {
        let deadline = Instant::now() + timeout;
        let mut wait = Duration::from_millis(250);
        loop {
            let job: WireJob = self
                .get_json("poll the Cloud Controller's job", location)
                .await?;
            match job.state.as_str() {
                "COMPLETE" => {
                    return Ok(JobOutcome {
                        guid: job.guid,
                        state: job.state,
                        warnings: job.warnings.into_iter().map(|w| w.detail).collect(),
                    })
                }
                "FAILED" => bail!(
                    "the Cloud Controller's job {} ({}) FAILED: {}",
                    job.guid,
                    job.operation,
                    if job.errors.is_empty() { "(no errors given)".into() } else { join_errors(&job.errors) }
                ),
                state if Instant::now() + wait > deadline => bail!(
                    "the Cloud Controller's job {} is still {state} after {} s; look at it with `cf curl /v3/jobs/{}`",
                    job.guid,
                    timeout.as_secs(),
                    job.guid
                ),
                _ => {}
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    /// Makes every plan of the broker visible, publicly or to the named orgs.
    async fn enable_access(
        &self,
        broker_guid: &str,
        org_names: &[String],
    ) -> anyhow::Result<Vec<PlanAccess>> {
        let mut orgs = Vec::new();
        for name in org_names {
            let path = format!("/v3/organizations?names={}", encode(name));
            let found = self.list("look up the organization", path).await?;
            let guid = found
                .first()
                .and_then(|o| o["guid"].as_str())
                .ok_or_else(|| {
                    anyhow!("no organization named {name:?} (or the UAA client cannot see it)")
                })?;
            orgs.push(OrgRef {
                guid: guid.to_string(),
                name: name.clone(),
            });
        }
        let path = format!(
            "/v3/service_plans?service_broker_guids={}&per_page=5000",
            encode(broker_guid)
        );
        let plans = self.list("list the broker's service plans", path).await?;
        if plans.is_empty() {
            bail!("the Cloud Controller lists no plans of broker {broker_guid}: is the catalog empty?");
        }
        let body = if orgs.is_empty() {
            json!({"type": "public"})
        } else {
            let list: Vec<Value> = orgs.iter().map(|o| json!({"guid": o.guid})).collect();
            json!({"type": "organization", "organizations": list})
        };
        let mut done = Vec::new();
        for plan in plans {
            let guid = plan["guid"]
                .as_str()
                .ok_or_else(|| anyhow!("a service plan without a guid"))?;
            let path = format!("/v3/service_plans/{guid}/visibility");
            let answer = self
                .call(
                    "set the service plan's visibility",
                    Method::POST,
                    &path,
                    Some(&body),
                    true,
                )
                .await?;
            self.expect(answer, &[200, 201])?;
            done.push(PlanAccess {
                plan_guid: guid.to_string(),
                plan_name: plan["name"].as_str().unwrap_or_default().to_string(),
                visibility: if orgs.is_empty() {
                    "public"
                } else {
                    "organization"
                },
                organizations: orgs.clone(),
            });
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_shown_as_the_cc_wrote_them() {
        let body = r#"{"errors":[{"code":10003,"title":"CF-NotAuthorized","detail":"You are not authorized to perform the requested action"}]}"#;
        assert_eq!(
            errors_text(body),
            "CF-NotAuthorized (10003): You are not authorized to perform the requested action"
        );
        assert_eq!(errors_text(""), "(empty body)");
        assert_eq!(errors_text("gateway down"), "gateway down");
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("my org, inc & co"), "my%20org%2C%20inc%20%26%20co");
        assert_eq!(encode("wayback-1.0_x~"), "wayback-1.0_x~");
    }

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
