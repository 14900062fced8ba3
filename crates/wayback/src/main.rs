//! `wayback`: thin entry point. Parses the command line, sets up logging, dispatches, and maps
//! errors to exit codes. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wayback::config::{Overrides, Settings};
use wayback::startup::Application;

#[derive(Parser)]
#[command(
    name = "wayback",
    version,
    about = "PostgreSQL for Cloud Foundry with undo: an Open Service Broker"
)]
struct Cli {
    /// TOML config file (settings from the environment override it).
    #[arg(long, global = true, env = "WAYBACK_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Serve {
        /// Address and port to listen on, e.g. 127.0.0.1:8080.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Directory for state, clusters and the template.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Catalog file replacing the built-in one.
        #[arg(long)]
        catalog: Option<PathBuf>,
        /// Where to archive WAL: s3://bucket/prefix or file:///dir.
        #[arg(long)]
        archive_url: Option<String>,
    },
    /// Archive one WAL file (PostgreSQL's archive_command): exits 0 only once it is durable.
    WalPush {
        /// The instance's archive target file.
        #[arg(long)]
        target: PathBuf,
        /// Refuse WAL of a timeline past where a later archived timeline began (HA members:
        /// an old primary after a failover).
        #[arg(long)]
        fence: bool,
        /// %p: the WAL file to archive.
        path: PathBuf,
    },
    /// Restore one WAL file (PostgreSQL's restore_command): exit 1 means "not in the archive",
    /// 126 means "cannot tell" (recovery must stop rather than end early).
    WalFetch {
        #[arg(long)]
        target: PathBuf,
        /// %f: the file name PostgreSQL wants.
        name: String,
        /// %p: where to put it.
        path: PathBuf,
    },
    /// Keeps the next WAL segments of a recovery downloaded (started by wal-fetch; internal).
    #[command(hide = true)]
    WalPrefetch {
        #[arg(long)]
        target: PathBuf,
    },
    /// Load and validate the configuration (and catalog), then exit.
    CheckConfig,
    /// Print every setting: environment variable, config key, default, meaning (Markdown).
    ConfigReference,
    /// Delete base backups and WAL older than each plan's recovery window, and reap deleted
    /// instances' archives past retention.deleted_days; prints what was (or would be) deleted.
    Prune(wayback::cli::prune::PruneArgs),
    /// Take a base backup of one instance now (through the broker's backup job) and print it.
    Backup(wayback::cli::backup::BackupArgs),
    /// Run a restore drill of one instance's archive now (restore into a scratch copy, check,
    /// delete) and print its report; exit 1 when it failed.
    Drill(wayback::cli::drill::DrillArgs),
    /// Restore an instance's archive into a new data directory, recover and promote it, and
    /// print what it took (latest state, or --point-in-time).
    Restore(wayback::cli::restore::RestoreArgs),
    /// Rebuild the index of instances and their names from the archive's instance.json files
    /// (after the state database was lost); prints what was (or would be) added.
    Reindex(wayback::cli::reindex::ReindexArgs),
    /// Re-seal every secret under the current encryption key (encryption.current_key), so
    /// that older keys can then be removed from encryption.keys.
    Rekey(wayback::cli::rekey::RekeyArgs),
    /// Create or update this service broker in the Cloud Controller (v3 API, as the cc.* UAA
    /// client with cloud_controller.admin) and optionally enable access to its plans.
    RegisterBroker(wayback::cli::register::RegisterBrokerArgs),
    /// Walk one instance's life against a running broker over OSB (provision, bind, write,
    /// deprovision, clone-from, verify the rows, clean up); exits 1 naming the failing step.
    SmokeTest(wayback::cli::smoke::SmokeTestArgs),
    /// Before this machine stops: complete every running instance's current WAL segment and
    /// wait until it is archived, so that everything committed so far is in the archive.
    Drain(wayback::cli::drain::DrainArgs),
    /// Run this VM's clusters for a broker: the agent API (agent.*) over the local runtime.
    Agent,
    /// Ask every agent of agents.urls for its capacity and print it beside the instances the
    /// state database placed there; exits 1 when an agent does not answer.
    Agents(wayback::cli::agents::AgentsArgs),
    /// Hand the lead of an HA instance to a healthy standby (Patroni's switchover) and return
    /// once the other member leads.
    Switchover(wayback::cli::switchover::SwitchoverArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wayback: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Prune(args) => wayback::cli::prune::main(settings, args),
        Command::Backup(args) => wayback::cli::backup::main(settings, args),
        Command::Drill(args) => wayback::cli::drill::main(settings, args),
        Command::Restore(args) => wayback::cli::restore::main(settings, args),
        Command::Reindex(args) => wayback::cli::reindex::main(settings, args),
        Command::Rekey(args) => wayback::cli::rekey::main(settings, args),
        Command::RegisterBroker(args) => wayback::cli::register::main(settings, args),
        Command::SmokeTest(args) => wayback::cli::smoke::main(settings, args),
        Command::Drain(args) => wayback::cli::drain::main(settings, args),
        Command::Agent => wayback::agent::main(settings),
        Command::Agents(args) => wayback::cli::agents::main(settings, args),
        Command::Switchover(args) => wayback::cli::switchover::main(settings, args),
        Command::ConfigReference => {
            print!("{}", Settings::reference_markdown());
            ExitCode::SUCCESS
        }
        Command::CheckConfig => {
            let checked = settings
                .validate()
                .map_err(anyhow::Error::from)
                .and_then(|()| {
                    wayback::catalog::Catalog::load(settings.catalog.as_deref()).map_err(Into::into)
                });
            match checked {
                Ok(_) => {
                    println!("configuration is valid");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("wayback: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::WalPush {
            target,
            fence,
            path,
        } => {
            wayback::telemetry::init_for_postgres();
            ExitCode::from(wayback::archive::wal_push_main(&target, &path, fence))
        }
        Command::WalPrefetch { target } => {
            ExitCode::from(wayback::archive::wal_prefetch_main(&target))
        }
        Command::WalFetch { target, name, path } => {
            wayback::telemetry::init_for_postgres();
            ExitCode::from(wayback::archive::wal_fetch_main(&target, &name, &path))
        }
        Command::Serve {
            listen,
            data_dir,
            catalog,
            archive_url,
        } => {
            let mut settings = settings;
            settings.apply(Overrides {
                listen,
                data_dir,
                catalog,
                archive_url,
            });
            wayback::telemetry::init(&settings.log);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("wayback: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(settings)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "wayback stopped with an error");
                    eprintln!("wayback: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let app = Application::build(settings).await?;
    wayback::shutdown::cancel_on_signal(app.shutdown_token());
    app.run_until_stopped().await
}
