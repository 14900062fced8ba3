//! `wayback prune [--dry-run] [--json]`: one retention pass over every instance the state
//! database knows, as the broker's maintenance runs it every `retention.interval_secs` —
//! prune live instances to their plan's recovery window, reap deleted instances past
//! `retention.deleted_days` — and a report per instance of what was (or would be) deleted.
//!
//! Reads the same settings as `serve` (config file, environment, the same flags), so it sees
//! the same state database and archive.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::catalog::Catalog;
use crate::config::Settings;
use crate::maintenance::{ArchiveMaintenance, PassReport};

/// The command line of `wayback prune`.
#[derive(Debug, Clone, clap::Args)]
pub struct PruneArgs {
    /// Report what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON (one document) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Directory of the broker's state (as for `serve`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The archive: s3://bucket/prefix or file:///dir (as for `serve`).
    #[arg(long)]
    pub archive_url: Option<String>,
    /// Catalog file replacing the built-in one (as for `serve`).
    #[arg(long)]
    pub catalog: Option<PathBuf>,
}

/// Runs the command; exit 0 when every instance was handled, 1 when some failed, 2 when the
/// pass could not run at all.
pub fn main(mut settings: Settings, args: PruneArgs) -> ExitCode {
    if let Some(c) = args.catalog.clone() {
        settings.catalog = Some(c);
    }
    let Some(runtime) = super::start_local(
        &mut settings,
        args.data_dir.clone(),
        args.archive_url.clone(),
    ) else {
        return ExitCode::from(2);
    };
    match runtime.block_on(run(settings, args.dry_run)) {
        Ok(report) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("a report serializes")
                );
            } else {
                print!("{}", render(&report));
            }
            if report.failures() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("wayback: prune: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Opens the state database, catalog and archive the settings name, and runs one pass.
pub async fn run(settings: Settings, dry_run: bool) -> anyhow::Result<PassReport> {
    settings.validate()?;
    let super::BrokerState {
        data_dir, store, ..
    } = super::open_broker_state(&settings, "prune").await?;
    let catalog = Arc::new(Catalog::load(settings.catalog.as_deref())?);
    let archive =
        crate::open::reachable_archive(&crate::config::resolve::archive(&settings, &data_dir))
            .await?;
    let maintenance = ArchiveMaintenance::new(
        store.clone(),
        catalog,
        archive,
        settings.retention.clone(),
        Duration::from_secs(settings.supervisor.interval_secs),
    );
    let report = maintenance.prune_all(chrono::Utc::now(), dry_run).await;
    store.close().await;
    report
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The report as an aligned table, one line per instance, then totals.
pub fn render(report: &PassReport) -> String {
    let verb = if report.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    let mut out = format!(
        "{:<36}  {:<14}  {:<6}  {:>8}  {:>10}  {:>7}  note\n",
        "instance", "state", "action", "objects", "bytes", "backups"
    );
    for i in &report.instances {
        let note = i
            .error
            .as_ref()
            .map(|e| format!("ERROR: {e}"))
            .or_else(|| i.note.clone())
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<36}  {:<14}  {:<6}  {:>8}  {:>10}  {:>7}  {note}\n",
            i.instance_id,
            i.state,
            i.action,
            i.deleted_objects,
            human_bytes(i.deleted_bytes),
            i.deleted_backups.len() + i.incomplete_backups.len(),
        ));
    }
    out.push_str(&format!(
        "{} instances; {verb} {} objects ({}){}\n",
        report.instances.len(),
        report.deleted_objects(),
        human_bytes(report.deleted_bytes()),
        match report.failures() {
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
    fn sizes_read_like_sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(16 << 20), "16.0 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn an_empty_dry_run_says_so() {
        let r = PassReport {
            at: chrono::Utc::now(),
            dry_run: true,
            instances: vec![],
        };
        assert!(render(&r).contains("0 instances; would delete 0 objects"));
    }
}
