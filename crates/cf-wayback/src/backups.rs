//! `backups [NAME] [--json] [--local-time] [--drills]`: what can be restored in the targeted
//! space, and since when each archive is proven restorable (restore drills, issue 18).
//! Imports `cli_error`, `commands`, `drills`, `output` and `session`.

use crate::cli_error::CliError;
use crate::commands::BackupsArgs;
use crate::output::{self, Zone};
use crate::session::Session;

/// Prints the table or the JSON document. A NAME that matches nothing is exit 1 (the JSON
/// document, with an empty list, is printed all the same).
pub async fn run(session: &Session, args: &BackupsArgs) -> Result<(), CliError> {
    let (broker, instances) = session
        .broker_instances(args.broker.broker_url.as_deref(), args.name.as_deref())
        .await?;
    if args.json {
        let doc = output::json_document(
            &session.space_guid,
            &session.space_name,
            &broker,
            &instances,
        );
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("JSON serialises")
        );
    } else if instances.is_empty() {
        print!(
            "{}",
            output::empty_message(&session.space_name, args.name.as_deref())
        );
    } else {
        let zone = if args.local_time {
            Zone::Local
        } else {
            Zone::Utc
        };
        if args.drills {
            print!("{}", crate::drills::render_drills(&instances, zone));
        } else {
            print!("{}", output::render_table(&instances, zone));
        }
    }
    match (&args.name, instances.is_empty()) {
        (Some(name), true) => Err(CliError::Failed(format!(
            "no instance named {name} in space {}; `{} backups` lists them all",
            session.space_name, session.prefix
        ))),
        _ => Ok(()),
    }
}
