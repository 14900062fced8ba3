//! `wayback rekey [--json]`: re-seals every secret under the current encryption key, so that
//! older keys can then be removed from `encryption.keys`.
//!
//! Each kind of secret is one step, run in order, and the report lists what each re-sealed:
//! the state database's binding passwords, followers' replication passwords, HA instances'
//! superuser passwords and the PKCE verifiers of dashboard sign-ins not yet finished, then the
//! archive's per-instance data keys (every `spaces/*/instances/*/key.json` is rewrapped under
//! the current key; the archive's data is not rewritten, the data keys stay the same). Every
//! step is idempotent, so a rekey that stopped half-way is run again. Reads the same settings
//! as `serve`; the keys that sealed the old values must still be configured beside the new
//! current one (else opening the state database refuses, naming the missing key ids).
//! Dashboard sessions are signed, not sealed: a session signed with a removed key is refused
//! and its user signs in again.

use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

use crate::config::Settings;

/// The command line of `wayback rekey`.
#[derive(Debug, Clone, clap::Args)]
pub struct RekeyArgs {
    /// Print the report as JSON instead of lines.
    #[arg(long)]
    pub json: bool,
    /// Directory of the broker's state (as for `serve`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// What a rekey did: the key everything is now sealed with, and each step's count.
#[derive(Debug, Clone, Serialize)]
pub struct RekeyReport {
    pub current_key: String,
    pub steps: Vec<RekeyStep>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RekeyStep {
    /// What the step re-seals.
    pub secrets: &'static str,
    /// How many were sealed by another key and are now sealed by the current one.
    pub resealed: usize,
}

/// Runs the command: exit 0 when every step ran, 2 when one could not.
pub fn main(mut settings: Settings, args: RekeyArgs) -> ExitCode {
    let Some(runtime) = super::start_local(&mut settings, args.data_dir.clone(), None) else {
        return ExitCode::from(2);
    };
    match runtime.block_on(run(settings)) {
        Ok(report) => {
            if args.json {
                let text = serde_json::to_string_pretty(&report).expect("a report serializes");
                println!("{text}");
            } else {
                for step in &report.steps {
                    println!("{}: {} re-sealed", step.secrets, step.resealed);
                }
                println!("everything is sealed with key {}", report.current_key);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wayback: rekey: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Opens the broker's state with the configured keys and re-seals each kind of secret.
pub async fn run(settings: Settings) -> anyhow::Result<RekeyReport> {
    settings.validate()?;
    let super::BrokerState {
        store, data_dir, ..
    } = super::open_broker_state(&settings, "rekey").await?;
    let current_key = store.current_key_id()?.to_string();
    let resealed = store.reseal_secrets().await;
    let replication = match &resealed {
        Ok(_) => Some(store.reseal_replication_passwords().await),
        Err(_) => None,
    };
    let ha_superuser = match &replication {
        Some(Ok(_)) => Some(store.reseal_ha_superuser_passwords().await),
        _ => None,
    };
    let logins = match &ha_superuser {
        Some(Ok(_)) => Some(store.reseal_dashboard_logins().await),
        _ => None,
    };
    let rewrapped = match (&resealed, &replication, &ha_superuser, &logins) {
        (Ok(_), Some(Ok(_)), Some(Ok(_)), Some(Ok(_))) => {
            Some(rewrap_archive_keys(&settings, &data_dir, &store).await)
        }
        _ => None,
    };
    store.close().await;
    let mut steps = vec![RekeyStep {
        secrets: "binding passwords (state database)",
        resealed: resealed?,
    }];
    if let Some(replication) = replication {
        steps.push(RekeyStep {
            secrets: "followers' replication passwords (state database)",
            resealed: replication?,
        });
    }
    if let Some(ha_superuser) = ha_superuser {
        steps.push(RekeyStep {
            secrets: "HA instances' superuser passwords (state database)",
            resealed: ha_superuser?,
        });
    }
    if let Some(logins) = logins {
        steps.push(RekeyStep {
            secrets: "pending dashboard sign-ins (state database)",
            resealed: logins?,
        });
    }
    if let Some(rewrapped) = rewrapped {
        steps.push(RekeyStep {
            secrets: "archive data keys (key.json)",
            resealed: rewrapped?,
        });
    }
    Ok(RekeyReport { current_key, steps })
}

/// Rewraps every instance's archive data key under the current key; fails, naming them, when
/// some could not be (their key is not configured): run it again once they are.
async fn rewrap_archive_keys(
    settings: &Settings,
    data_dir: &std::path::Path,
    store: &crate::store::Store,
) -> anyhow::Result<usize> {
    use anyhow::Context;
    let storage = crate::config::resolve::archive(settings, data_dir);
    let archive = crate::storage::ObjectStore::open(&storage).context("open the archive")?;
    let keyring = store.keyring()?;
    let report = crate::archive::keydoc::rewrap_all(&archive, keyring)
        .await
        .context("rewrap the archive data keys")?;
    if !report.failed.is_empty() {
        let list: Vec<String> = report
            .failed
            .iter()
            .map(|(prefix, why)| format!("{prefix}: {why}"))
            .collect();
        anyhow::bail!(
            "{} of {} archive data keys could not be rewrapped ({} were): {}",
            report.failed.len(),
            report.keys,
            report.rewrapped,
            list.join("; ")
        );
    }
    Ok(report.rewrapped)
}
