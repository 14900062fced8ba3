//! `wayback reindex [--dry-run] [--json] [--windows]`: rebuilds the broker's index of instances
//! and their names from the archive alone (every `instance.json`), for a state database that
//! was lost, restored from an old backup or pointed at a new host. The rules are in
//! `maintenance::reindex` and `store::reindex`: unknown instances come back as deleted (no cluster
//! is started), missing names are added, nothing known is overwritten, and a second run
//! changes nothing.
//!
//! Restore windows need no rebuilding: they are computed from the backup manifests and WAL
//! headers whenever they are needed; `--windows` computes each one now, to show that every
//! instance can be restored.
//!
//! Reads the same settings as `serve`. Unlike the other commands it creates the data
//! directory (and an empty SQLite state database) when there is none: rebuilding a broker on a
//! new machine starts from nothing.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::Settings;
use crate::maintenance::reindex::{self, ReindexReport};

/// The command line of `wayback reindex`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReindexArgs {
    /// Report what would be added; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON (one document) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also compute each instance's restore window (one listing per instance).
    #[arg(long)]
    pub windows: bool,
    /// Directory of the broker's state (as for `serve`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The archive: s3://bucket/prefix or file:///dir (as for `serve`).
    #[arg(long)]
    pub archive_url: Option<String>,
}

/// Runs the command: 0 when every document was merged, 1 when some were unreadable or failed,
/// 2 when the archive or the state database could not be opened.
pub fn main(mut settings: Settings, args: ReindexArgs) -> ExitCode {
    let Some(runtime) = super::start_local(
        &mut settings,
        args.data_dir.clone(),
        args.archive_url.clone(),
    ) else {
        return ExitCode::from(2);
    };
    match runtime.block_on(run(settings, args.dry_run, args.windows)) {
        Ok(report) => {
            if args.json {
                let text = serde_json::to_string_pretty(&report).expect("a report serializes");
                println!("{text}");
            } else {
                print!("{}", render(&report));
            }
            if report.has_problems() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("wayback: reindex: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Opens (creating if needed) the state database and the archive the settings name, and
/// merges every `instance.json` into the database.
pub async fn run(
    settings: Settings,
    dry_run: bool,
    windows: bool,
) -> anyhow::Result<ReindexReport> {
    settings.validate()?;
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("create data directory {}", settings.data_dir.display()))?;
    let super::BrokerState {
        data_dir, store, ..
    } = super::open_broker_state(&settings, "reindex").await?;
    let archive =
        crate::open::reachable_archive(&crate::config::resolve::archive(&settings, &data_dir))
            .await?;
    let report = reindex::reindex(&store, &archive, dry_run, windows).await;
    store.close().await;
    report
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "-".into())
}

/// The report as an aligned table, one line per instance, then the counts.
pub fn render(report: &ReindexReport) -> String {
    let mut out = format!(
        "{:<36}  {:<20}  {:<10}  {:<9}  {:>5}  note\n",
        "instance", "name", "state", "action", "names"
    );
    for i in &report.instances {
        let mut note = i
            .error
            .as_ref()
            .map(|e| format!("ERROR: {e}"))
            .or_else(|| i.note.clone())
            .unwrap_or_default();
        if let Some(w) = &i.window {
            let window = match &w.error {
                Some(e) => format!("window: ERROR: {e}"),
                None => format!("window {} .. {}", time(w.earliest), time(w.latest)),
            };
            note = if note.is_empty() {
                window
            } else {
                format!("{window}; {note}")
            };
        }
        out.push_str(&format!(
            "{:<36}  {:<20}  {:<10}  {:<9}  {:>5}  {note}\n",
            i.instance_id,
            i.name.as_deref().unwrap_or("-"),
            i.documented_state,
            i.action,
            format!("+{}", i.names_added),
        ));
    }
    for u in &report.unreadable {
        out.push_str(&format!("unreadable: {}: {}\n", u.key, u.error));
    }
    let verb = if report.dry_run { "would add" } else { "added" };
    out.push_str(&format!(
        "{} instances found in {}; {verb} {}, updated {}, {} names; {} unreadable documents{}\n",
        report.found(),
        report.archive,
        report.added(),
        report.updated(),
        report.names_added(),
        report.unreadable.len(),
        match report.failed() {
            0 => String::new(),
            n => format!("; {n} instances failed"),
        }
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_dry_run_says_so() {
        let r = ReindexReport {
            dry_run: true,
            archive: "file:///x".into(),
            instances: vec![],
            unreadable: vec![],
        };
        assert_eq!(
            render(&r).lines().last().unwrap(),
            "0 instances found in file:///x; would add 0, updated 0, 0 names; 0 unreadable documents"
        );
    }
}
