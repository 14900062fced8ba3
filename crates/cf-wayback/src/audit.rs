//! `audit NAME [--json] [--local-time]`: who did what to an instance, from the broker's
//! `GET /wayback/v1/instances/{id}/audit` (docs/wayback-api.md). NAME is resolved like
//! `backups NAME`: the newest instance that has or had it. The table is a pure function of the
//! broker's document, golden-tested against the broker's own golden trail.
//! Imports `cli_error`, `commands`, `output` and `session`.

use wayback_api::v1;

use crate::cli_error::CliError;
use crate::commands::AuditArgs;
use crate::output::{align, format_time, Zone};
use crate::session::Session;

const HEADER: [&str; 4] = ["time", "event", "user", "detail"];

pub async fn run(session: &Session, args: &AuditArgs) -> Result<(), CliError> {
    let (broker, instances) = session
        .broker_instances(args.broker.broker_url.as_deref(), Some(&args.name))
        .await?;
    let Some(newest) = instances.first() else {
        return Err(CliError::Failed(format!(
            "no instance named {} in space {}; `{} backups` lists them all",
            args.name, session.space_name, session.prefix
        )));
    };
    let (raw, trail) = session
        .broker_at(&broker)
        .audit(&newest.instance.instance_id, &session.space_name)
        .await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&raw).expect("JSON serialises")
        );
    } else {
        let zone = if args.local_time {
            Zone::Local
        } else {
            Zone::Utc
        };
        print!("{}", render(&trail, zone));
    }
    Ok(())
}

/// The table: a header and one line per event, oldest first.
pub fn render(trail: &v1::AuditTrail, zone: Zone) -> String {
    let mut rows: Vec<[String; 4]> = vec![HEADER.map(String::from)];
    rows.extend(trail.events.iter().map(|e| {
        [
            format_time(e.at, zone),
            e.event.to_string(),
            e.user_id.clone().unwrap_or_else(|| "-".into()),
            detail(e),
        ]
    }));
    align(&rows)
}

fn detail(e: &v1::AuditEvent) -> String {
    if let Some(c) = &e.clone_from {
        return format!(
            "from {:?} ({}) as of {}",
            c.name, c.instance_id, c.point_in_time
        );
    }
    if let Some(b) = &e.binding_id {
        return format!("binding {b}");
    }
    if let Some(p) = &e.plan_id {
        return format!("plan {p}");
    }
    if let Some(n) = &e.name {
        return format!("name {n:?}");
    }
    "-".into()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The broker's golden trail (`crates/wayback/tests/fixtures/api/audit.json`) as the table
    /// `tests/fixtures/cf-wayback/audit-table.txt` (`WAYBACK_BLESS=1` rewrites it).
    #[test]
    fn the_table_of_the_brokers_golden_trail() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let broker = root.join("../wayback/tests/fixtures/api/audit.json");
        let trail: v1::AuditTrail =
            serde_json::from_str(&std::fs::read_to_string(broker).unwrap()).unwrap();
        let table = render(&trail, Zone::Utc);
        let golden = root.join("tests/fixtures/cf-wayback/audit-table.txt");
        if std::env::var_os("WAYBACK_BLESS").is_some() {
            std::fs::write(&golden, &table).unwrap();
            return;
        }
        assert_eq!(table, std::fs::read_to_string(golden).unwrap());
    }
}
