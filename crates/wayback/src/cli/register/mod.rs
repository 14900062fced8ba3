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
//!
//! The parts: this file holds the command line, `main`, the [`Request`] and [`run`], which
//! takes the steps; `api` the Cloud Controller's v3 API as this command calls it; `wire` the
//! JSON shapes the CC answers with and its errors as text; `report` what was done
//! ([`Registration`]) and how it reads to a person.

mod api;
mod report;
mod wire;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use crate::config::{CcSettings, Settings};
use api::Api;
pub use report::{render, BrokerRef, JobOutcome, OrgRef, PlanAccess, Registration};

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
