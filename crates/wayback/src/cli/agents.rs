//! `wayback agents [--json]`: asks every agent in `agents.urls` for its capacity, as placement
//! does, and prints it beside how many live instances the state database has placed there. For
//! an operator deciding whether to add agents, or finding the one that does not answer.
//!
//! Exit status: 0 every agent answered, 1 some did not, 2 no agents configured or the settings
//! or state database cannot be read.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

use crate::config::Settings;
use crate::runtime::RemoteRuntime;

/// The command line of `wayback agents`.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentsArgs {
    /// Print the report as JSON (one document) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Directory of the broker's state (as for `serve`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// One agent as the command saw it.
#[derive(Debug, Clone, Serialize)]
pub struct AgentRow {
    pub name: String,
    pub url: String,
    pub up: bool,
    /// Live and in-flight instances the broker recorded there.
    pub placed: usize,
    pub capacity: Option<crate::runtime::Capacity>,
    pub error: Option<String>,
}

pub fn main(mut settings: Settings, args: AgentsArgs) -> ExitCode {
    let (remote, runtime) = match super::start_command(
        &mut settings,
        args.data_dir.clone(),
        "agents",
        |s| {
            s.validate()?;
            anyhow::ensure!(
                !s.agents.urls.is_empty(),
                "no agents are configured (agents.urls / WAYBACK_AGENTS): this broker runs its clusters itself"
            );
            RemoteRuntime::new(&s.agents)
        },
    ) {
        Ok(started) => started,
        Err(code) => return code,
    };
    match runtime.block_on(run(&settings, &remote)) {
        Ok(rows) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rows).expect("rows serialize")
                );
            } else {
                print!("{}", render(&rows));
            }
            if rows.iter().all(|r| r.up) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("wayback: agents: {e:#}");
            ExitCode::from(2)
        }
    }
}

pub async fn run(settings: &Settings, remote: &RemoteRuntime) -> anyhow::Result<Vec<AgentRow>> {
    let super::BrokerState { store, .. } = super::open_broker_state(settings, "agents").await?;
    let placed: HashMap<String, usize> = store.instances_per_agent().await?;
    store.close().await;
    let answers = remote.capacities().await;
    Ok(settings
        .agents
        .urls
        .iter()
        .zip(answers)
        .map(|(endpoint, (name, answer))| AgentRow {
            placed: placed.get(&name).copied().unwrap_or(0),
            url: endpoint.url.clone(),
            up: answer.is_ok(),
            error: answer.as_ref().err().map(ToString::to_string),
            capacity: answer.ok(),
            name,
        })
        .collect())
}

fn gb(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / 1e9)
}

fn render(rows: &[AgentRow]) -> String {
    let mut out = format!(
        "{:<16} {:<4} {:>9} {:>6} {:>5} {:>10} {:>10}  {:<16} {}\n",
        "AGENT", "UP", "INSTANCES", "PLACED", "MAX", "MEM FREE", "DISK FREE", "HOST", "URL"
    );
    for r in rows {
        match &r.capacity {
            Some(c) => out.push_str(&format!(
                "{:<16} {:<4} {:>9} {:>6} {:>5} {:>10} {:>10}  {:<16} {}\n",
                r.name,
                "yes",
                c.instances,
                r.placed,
                c.max_instances,
                gb(c.memory_available_bytes),
                gb(c.disk_available_bytes),
                c.advertise_host,
                r.url
            )),
            None => out.push_str(&format!(
                "{:<16} {:<4} {:>9} {:>6} {:>5} {:>10} {:>10}  {:<16} {}\n    {}\n",
                r.name,
                "NO",
                "-",
                r.placed,
                "-",
                "-",
                "-",
                "-",
                r.url,
                r.error.as_deref().unwrap_or("")
            )),
        }
    }
    out
}
