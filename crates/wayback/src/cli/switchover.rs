//! `wayback switchover INSTANCE_GUID [--to MEMBER] [--json]`: hands the lead of an HA instance
//! to a healthy standby (issue 15), the command-line twin of the broker API's
//! `POST /wayback/v1/instances/{id}/switchover`. Both check the same things through
//! [`crate::runtime::switch_over`]: the instance has two members or more recorded and is
//! ready, and Patroni shows a healthy standby (`--to` must be one); then Patroni's switchover
//! runs and the command returns once another member leads. Exit 0 when it switched over, 1
//! when it was refused or failed (the reason on stderr), 2 when the command could not start.
//!
//! Reads the same settings as `serve` (the state database, the runtime: agents or this
//! machine).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::config::Settings;
use crate::domain::{InstanceId, InstanceState};
use crate::runtime::switch_over;

/// The command line of `wayback switchover`.
#[derive(Debug, Clone, clap::Args)]
pub struct SwitchoverArgs {
    /// The HA service instance's GUID.
    pub instance: String,
    /// The member to hand the lead to (default: the healthy standby Patroni would pick).
    #[arg(long)]
    pub to: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Directory of the broker's state (as for `serve`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// What the command did.
#[derive(Debug, Clone, Serialize)]
pub struct Switched {
    pub instance_id: String,
    pub from: String,
    pub to: String,
}

pub fn main(mut settings: Settings, args: SwitchoverArgs) -> ExitCode {
    let Some(runtime) = super::start_local(&mut settings, args.data_dir.clone(), None) else {
        return ExitCode::from(2);
    };
    match runtime.block_on(run(settings, &args.instance, args.to.as_deref())) {
        Ok(done) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&done).expect("serializes")
                );
            } else {
                println!(
                    "instance {}: {} leads now (was {})",
                    done.instance_id, done.to, done.from
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wayback: switchover: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Switches `instance` over (to `to`, or to the best healthy standby).
pub async fn run(settings: Settings, instance: &str, to: Option<&str>) -> anyhow::Result<Switched> {
    settings.validate()?;
    let super::BrokerState {
        data_dir, store, ..
    } = super::open_broker_state(&settings, "switchover").await?;
    let id = InstanceId::parse(instance.to_string())
        .map_err(|e| anyhow::anyhow!("instance {instance:?}: {e}"))?;
    let record = store
        .get_instance(&id)
        .await?
        .with_context(|| format!("no instance {id} in the state database"))?;
    if store.ha_members(&id).await?.len() < 2 {
        bail!("instance {id} is not highly available: it has one member, so there is nothing to switch over to");
    }
    if record.state != InstanceState::Ready {
        bail!(
            "instance {id} is {}: a switchover waits until it is ready",
            record.state
        );
    }
    let ctx = super::job_context(settings, &data_dir, &store)?;
    let plan = switch_over(ctx.runtime.as_ref(), &id, to, &[])
        .await
        .with_context(|| format!("instance {id}"))?;
    store.close().await;
    Ok(Switched {
        instance_id: id.to_string(),
        from: plan.leader,
        to: plan.candidate,
    })
}
