//! `undo NAME [NEW_NAME] [--at TIME] [--plan PLAN] [--wait]`: a new instance holding NAME's
//! data, created through the Cloud Controller as the user so that the platform knows it.
//!
//! The broker does the restore (`clone-from` / `point-in-time` provision parameters); this
//! command only finds NAME's plan through the broker API, asks the CC for the instance and,
//! with `--wait`, follows the CC's `last_operation`, whose description is the broker's own
//! progress text. Imports `broker_client`, `cli_error`, `commands`, `session` and
//! `wayback_api::v1`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use wayback_api::v1;

use crate::broker_client::Listed;
use crate::cli_error::CliError;
use crate::commands::UndoArgs;
use crate::session::Session;

/// How often `--wait` asks the Cloud Controller.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// `--wait` gives up following (the restore goes on) after this long.
pub const MAX_WAIT: Duration = Duration::from_secs(12 * 3600);
/// Consecutive failed polls tolerated before giving up following.
const POLL_FAILURES: u32 = 5;

/// `--at`, checked here so a typo costs no round trip: RFC 3339 with an offset, as UTC.
pub fn parse_at(at: &str) -> Result<DateTime<Utc>, CliError> {
    DateTime::parse_from_rfc3339(at.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            CliError::Usage(format!(
                "--at {at:?} is not an RFC 3339 time with an offset ({e}); write it like \
                 2026-11-21T09:30:00Z or 2026-11-21T10:30:00+01:00"
            ))
        })
}

/// The `POST /v3/service_instances` body (shape of `cf create-service -c`).
pub fn create_body(
    new_name: &str,
    space_guid: &str,
    plan_guid: &str,
    source: &str,
    at: Option<DateTime<Utc>>,
) -> Value {
    let mut parameters = json!({ "clone-from": source });
    if let Some(at) = at {
        parameters["point-in-time"] = json!(at.to_rfc3339_opts(SecondsFormat::AutoSi, true));
    }
    json!({
        "type": "managed",
        "name": new_name,
        "relationships": {
            "space": { "data": { "guid": space_guid } },
            "service_plan": { "data": { "guid": plan_guid } },
        },
        "parameters": parameters,
    })
}

pub async fn run(session: &Session, args: &UndoArgs) -> Result<(), CliError> {
    let at = args.at.as_deref().map(parse_at).transpose()?;
    let new_name = args
        .new_name
        .clone()
        .unwrap_or_else(|| format!("{}-restored", args.name));
    let p = session.prefix;

    let (_, sources) = session
        .broker_instances(args.broker.broker_url.as_deref(), Some(&args.name))
        .await?;
    let Some(source) = newest(&sources) else {
        return Err(CliError::Failed(format!(
            "Wayback knows no instance named {} in space {}, live or deleted; `{p} backups` \
             lists what can be restored",
            args.name, session.space_name
        )));
    };

    let cc = session.cc();
    let (plan_guid, plan_label) = match &args.plan {
        Some(plan) => {
            let offering = source.service_name.as_deref().unwrap_or("");
            let guid = cc
                .plan_guid(&[
                    ("names", plan.as_str()),
                    ("service_offering_names", offering),
                ])
                .await?;
            (guid, plan.clone())
        }
        None => {
            let id = source.plan_id.as_str();
            let guid = cc.plan_guid(&[("broker_catalog_ids", id)]).await?;
            (guid, source.plan_name.as_deref().unwrap_or(id).to_string())
        }
    };
    let Some(plan_guid) = plan_guid else {
        return Err(CliError::Failed(format!(
            "the Cloud Controller shows no plan {plan_label} of {} to this space; \
             `cf marketplace` lists the plans you may use (choose one with --plan)",
            source.service_name.as_deref().unwrap_or("the service")
        )));
    };

    let when = at.map_or("its latest state".to_string(), |t| {
        format!(
            "its state at {}",
            t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
        )
    });
    println!(
        "Creating service instance {new_name} from {} ({when}) in space {}...",
        args.name, session.space_name
    );
    let body = create_body(&new_name, &session.space_guid, &plan_guid, &args.name, at);
    let hint = format!(
        "Nothing was created. `{p} backups {}` shows the restorable window; an existing \
         {new_name} needs another NEW_NAME.",
        args.name
    );
    cc.create_service_instance(&body, &hint).await?;

    let created = cc
        .service_instances(&session.space_guid, Some(&new_name))
        .await?;
    let Some(guid) = created
        .first()
        .and_then(|i| i["guid"].as_str())
        .map(str::to_string)
    else {
        return Err(CliError::Failed(format!(
            "the Cloud Controller accepted {new_name} but does not list it; check `cf service {new_name}`"
        )));
    };
    if !args.wait {
        println!("OK\n\nThe restore runs in the background. Follow it with: cf service {new_name}");
        return Ok(());
    }
    follow(session, &guid, &new_name, &args.name).await
}

/// The newest of the broker's instances (it sorts newest first; sorted again to be sure).
fn newest(instances: &[Listed]) -> Option<&v1::Instance> {
    instances
        .iter()
        .map(|i| &i.instance)
        .max_by_key(|i| i.created_at)
}

/// Prints progress lines: rewritten in place on a terminal, one per change otherwise.
struct Progress {
    tty: bool,
    last: Option<String>,
}

impl Progress {
    fn show(&mut self, line: &str) {
        if self.last.as_deref() == Some(line) {
            return;
        }
        let mut out = std::io::stdout().lock();
        let _ = if self.tty {
            write!(out, "\r\x1b[2K{line}")
        } else {
            writeln!(out, "{line}")
        };
        let _ = out.flush();
        self.last = Some(line.to_string());
    }

    fn end(&self) {
        if self.tty && self.last.is_some() {
            println!();
        }
    }
}

/// Polls `GET /v3/service_instances/:guid` until `last_operation` ends.
async fn follow(
    session: &Session,
    guid: &str,
    new_name: &str,
    source: &str,
) -> Result<(), CliError> {
    let cc = session.cc();
    let mut progress = Progress {
        tty: std::io::stdout().is_terminal(),
        last: None,
    };
    let started = Instant::now();
    let mut failures = 0;
    loop {
        let instance = match cc.service_instance(guid).await {
            Ok(i) => {
                failures = 0;
                i
            }
            Err(e) if failures + 1 < POLL_FAILURES && e.exit_code() == 4 => {
                failures += 1;
                tokio::time::sleep(POLL_INTERVAL).await;
                continue;
            }
            Err(e) => {
                progress.end();
                return Err(e);
            }
        };
        let op = &instance["last_operation"];
        let state = op["state"].as_str().unwrap_or("in progress");
        let description = op["description"].as_str().unwrap_or("");
        let elapsed = started.elapsed().as_secs();
        let line = match description {
            "" => format!("{new_name}: {state} ({}:{:02})", elapsed / 60, elapsed % 60),
            d => format!("{new_name}: {d}"),
        };
        match state {
            "succeeded" => {
                progress.show(&line);
                progress.end();
                println!("OK: {new_name} is ready, holding the data of {source}.");
                return Ok(());
            }
            "failed" => {
                progress.end();
                return Err(CliError::Failed(format!(
                    "The restore of {source} into {new_name} failed:\n{description}\n\
                     `cf service {new_name}` shows the details; remove the failed instance with \
                     `cf delete-service {new_name}`, then try again (`{} backups {source}` shows \
                     the restorable window).",
                    session.prefix
                )));
            }
            _ => progress.show(&line),
        }
        if started.elapsed() > MAX_WAIT {
            progress.end();
            return Err(CliError::Failed(format!(
                "stopped following after {} hours; the restore goes on: cf service {new_name}",
                MAX_WAIT.as_secs() / 3600
            )));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::listed;

    #[test]
    fn at_must_be_rfc3339_with_an_offset() {
        assert_eq!(
            parse_at("2026-11-21T10:30:00+01:00")
                .unwrap()
                .to_rfc3339_opts(SecondsFormat::AutoSi, true),
            "2026-11-21T09:30:00Z"
        );
        assert_eq!(
            parse_at("2026-11-21T09:30:00.250Z")
                .unwrap()
                .to_rfc3339_opts(SecondsFormat::AutoSi, true),
            "2026-11-21T09:30:00.250Z"
        );
        // (input, why it is refused)
        for (bad, why) in [
            ("2026-11-21T09:30:00", "no offset"),
            ("2026-11-21 09:30", "no seconds, no offset"),
            ("2026-11-21", "a date only"),
            ("yesterday", "words"),
            ("2026-13-01T00:00:00Z", "month 13"),
        ] {
            let err = parse_at(bad)
                .err()
                .unwrap_or_else(|| panic!("{why}: {bad} accepted"));
            assert_eq!(err.exit_code(), 2, "{why}");
            assert!(
                err.to_string().contains("2026-11-21T09:30:00Z"),
                "{why}: {err}"
            );
        }
    }

    #[test]
    fn the_create_body_has_the_cc_shape() {
        let at = parse_at("2026-11-21T09:30:00Z").unwrap();
        let body = create_body(
            "production-restored",
            "space-1",
            "plan-1",
            "production",
            Some(at),
        );
        assert_eq!(
            body,
            json!({
                "type": "managed",
                "name": "production-restored",
                "relationships": {
                    "space": {"data": {"guid": "space-1"}},
                    "service_plan": {"data": {"guid": "plan-1"}}
                },
                "parameters": {"clone-from": "production", "point-in-time": "2026-11-21T09:30:00Z"}
            })
        );
        let latest = create_body("n", "s", "p", "production", None);
        assert_eq!(latest["parameters"], json!({"clone-from": "production"}));
    }

    #[test]
    fn the_newest_source_wins() {
        let list = [
            listed(json!({"instance_id": "old", "created_at": "2026-11-01T00:00:00Z"})),
            listed(json!({"instance_id": "new", "created_at": "2026-11-20T00:00:00Z"})),
        ];
        assert_eq!(newest(&list).unwrap().instance_id, "new");
        assert!(newest(&[]).is_none());
    }
}
