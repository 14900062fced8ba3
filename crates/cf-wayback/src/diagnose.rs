//! `db-diagnose NAME`, `db-locks NAME`, `db-outliers NAME` (each with `--json`): what an
//! instance's database is doing, from the broker's `GET /wayback/v1/instances/{id}/diagnose |
//! locks | outliers` (docs/wayback-api.md). NAME is resolved like `audit NAME`: the newest
//! instance that has or had it, in the targeted space. The text is a pure function of the
//! broker's document ([`render_diagnosis`], [`render_locks`], [`render_outliers`]).
//! Imports `cli_error`, `commands` and `session`.

use serde::de::DeserializeOwned;
use serde_json::Value;
use wayback_api::activity::{Diagnosis, LockNode, Locks, Outliers, Verdict};

use crate::cli_error::CliError;
use crate::commands::InspectArgs;
use crate::session::Session;

/// Which document a command reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inspect {
    Diagnose,
    Locks,
    Outliers,
}

impl Inspect {
    fn document(self) -> &'static str {
        match self {
            Inspect::Diagnose => "diagnose",
            Inspect::Locks => "locks",
            Inspect::Outliers => "outliers",
        }
    }
}

pub async fn run(session: &Session, args: &InspectArgs, what: Inspect) -> Result<(), CliError> {
    let text = match what {
        Inspect::Diagnose => fetch::<Diagnosis>(session, args, what)
            .await?
            .map(|d| render_diagnosis(&d)),
        Inspect::Locks => fetch::<Locks>(session, args, what)
            .await?
            .map(|l| render_locks(&l)),
        Inspect::Outliers => fetch::<Outliers>(session, args, what)
            .await?
            .map(|o| render_outliers(&o)),
    };
    match text {
        Ok(text) => print!("{text}"),
        Err(raw) => println!(
            "{}",
            serde_json::to_string_pretty(&raw).expect("JSON serialises")
        ),
    }
    Ok(())
}

/// The typed document, or (with `--json`) the raw one.
async fn fetch<T: DeserializeOwned>(
    session: &Session,
    args: &InspectArgs,
    what: Inspect,
) -> Result<Result<T, Value>, CliError> {
    let (broker, instances) = session
        .broker_instances(args.broker.broker_url.as_deref(), Some(&args.name))
        .await?;
    let Some(newest) = instances.first() else {
        return Err(CliError::Failed(format!(
            "no instance named {} in space {}; `{} backups` lists them all",
            args.name, session.space_name, session.prefix
        )));
    };
    let (raw, doc) = session
        .broker_at(&broker)
        .instance_document::<T>(
            &newest.instance.instance_id,
            what.document(),
            &session.space_name,
        )
        .await?;
    Ok(if args.json { Err(raw) } else { Ok(doc) })
}

fn verdict_word(v: &Verdict) -> String {
    match v {
        Verdict::Green => "GREEN".into(),
        Verdict::Yellow => "YELLOW".into(),
        Verdict::Red => "RED".into(),
        Verdict::Skipped => "SKIPPED".into(),
        Verdict::Other(s) => s.to_uppercase(),
    }
}

/// One block per check: `VERDICT  Title: summary`, its rows indented below, then what to do.
pub fn render_diagnosis(d: &Diagnosis) -> String {
    let mut out = format!(
        "Diagnosis of {} ({}) at {}\n\n",
        d.name.as_deref().unwrap_or("-"),
        d.instance_id,
        d.at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    for c in &d.checks {
        out += &format!(
            "{:<8} {}: {}\n",
            verdict_word(&c.verdict),
            c.title,
            c.summary
        );
        for line in &c.details {
            out += &format!("           {line}\n");
        }
        if let Some(advice) = &c.advice {
            out += &format!("         → {advice}\n");
        }
    }
    let count = |v: Verdict| d.checks.iter().filter(|c| c.verdict == v).count();
    out += &format!(
        "\n{} green, {} yellow, {} red, {} skipped\n",
        count(Verdict::Green),
        count(Verdict::Yellow),
        count(Verdict::Red),
        count(Verdict::Skipped)
    );
    out
}

fn tree(nodes: &[LockNode], depth: usize, out: &mut String) {
    for n in nodes {
        let who = format!(
            "{}pid {} {}@{}",
            "  ".repeat(depth),
            n.pid,
            n.user.as_deref().unwrap_or("?"),
            n.database.as_deref().unwrap_or("?")
        );
        let what = match &n.waiting_for {
            Some(w) => w.to_string(),
            None => format!(
                "{}, transaction open {}",
                n.state.as_deref().unwrap_or("?"),
                n.transaction_secs
                    .map_or("-".into(), |s| format!("{s:.0} s"))
            ),
        };
        *out += &format!(
            "{who}  {what}\n{}  {}\n",
            " ".repeat(who.len()),
            n.query
                .as_deref()
                .unwrap_or("(statement text not available)")
        );
        tree(&n.blocking, depth + 1, out);
    }
}

/// The blocking tree: each blocker, and indented below it the sessions that wait for it.
pub fn render_locks(l: &Locks) -> String {
    if l.roots.is_empty() {
        return "No session waits for a lock.\n".into();
    }
    let mut out = String::from("Blocking sessions (each waits for the one above it):\n\n");
    tree(&l.roots, 0, &mut out);
    out
}

/// The top statements by total time, one block each.
pub fn render_outliers(o: &Outliers) -> String {
    if !o.available {
        return "pg_stat_statements is not loaded on this instance (it loads when the \
                instance next restarts, e.g. at a plan update); no statement statistics yet.\n"
            .into();
    }
    if o.statements.is_empty() {
        return "No statement has run yet.\n".into();
    }
    let mut out = String::from("   total ms      calls    mean ms  share  query\n");
    for s in &o.statements {
        let query: String = s.query.split_whitespace().collect::<Vec<_>>().join(" ");
        out += &format!(
            "{:>11.1} {:>10} {:>10.2} {:>5.1}%  {query}\n",
            s.total_exec_ms,
            s.calls,
            s.mean_exec_ms,
            s.share * 100.0
        );
    }
    out
}
