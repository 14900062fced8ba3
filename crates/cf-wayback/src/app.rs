//! `cf-wayback`'s entry point: decide the mode, build the [`Session`], run the command, and
//! turn the outcome into an exit code.
//!
//! - **Plugin mode**: cf starts the binary as `cf-wayback <port> …` (see [`PluginInvocation`]).
//!   At install it only sends its metadata; for a command it asks cf over RPC for the token
//!   (cf refreshes it itself), the API endpoint, whether SSL checks are off, and the space.
//! - **Standalone**: `cf-wayback backups …` reads the cf CLI's `config.json` and refreshes an
//!   expired token itself, writing the new one back for cf to use too.
//!
//! The RPC client is blocking, so everything cf is asked happens before the async runtime
//! starts. The entry point: it may import any module of the crate; none imports it.

use chrono::Utc;
use secrecy::SecretString;

use crate::cfconfig::{self, CfConfig};
use crate::cli_error::{exit, CliError};
use crate::commands::{self, CliCommand};
use crate::plugin::{PluginAction, PluginInvocation};
use crate::session::Session;
use crate::{broker_client, rpc};

/// Runs `cf-wayback` with its arguments (without the program name); returns the exit code.
pub fn run(args: Vec<String>) -> i32 {
    let plugin_mode = args.first().is_some_and(|a| a.parse::<u16>().is_ok());
    let outcome = if plugin_mode {
        run_plugin(args)
    } else {
        run_standalone(args)
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("FAILED\n{e}");
            e.exit_code()
        }
    }
}

/// Parses a command line; help and usage errors are printed here.
fn parse(program: &'static str, args: &[String]) -> Result<CliCommand, i32> {
    commands::parse(program, args).map_err(|e| {
        let _ = e.print();
        e.exit_code()
    })
}

fn run_plugin(args: Vec<String>) -> Result<i32, CliError> {
    let invocation = PluginInvocation::parse(args).map_err(|e| CliError::Usage(e.to_string()))?;
    let (command, args) = match invocation.action {
        PluginAction::Uninstall => return Ok(exit::OK),
        PluginAction::SendMetadata => {
            let mut cf = connect(invocation.port)?;
            cf.set_plugin_metadata(&commands::plugin_metadata())
                .map_err(|e| CliError::Failed(format!("sending the plugin metadata to cf: {e}")))?;
            return Ok(exit::OK);
        }
        PluginAction::Run { command, args } => (command, args),
    };
    let argv: Vec<String> = std::iter::once(command).chain(args).collect();
    let command = match parse("cf", &argv) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let mut cf = connect(invocation.port)?;
    let rpc_failed = |e: rpc::RpcError| CliError::Failed(format!("asking cf: {e}"));
    let token = match cf.access_token() {
        Ok(t) => t,
        Err(rpc::RpcError::Server { message, .. }) => {
            return Err(CliError::Auth(format!(
                "cf has no access token ({message}): run `cf login` first"
            )))
        }
        Err(e) => return Err(rpc_failed(e)),
    };
    let token = SecretString::from(
        cfconfig::strip_bearer(secrecy::ExposeSecret::expose_secret(&token)).to_string(),
    );
    if secrecy::ExposeSecret::expose_secret(&token).is_empty() {
        return Err(CliError::Auth("not logged in: run `cf login` first".into()));
    }
    let api = cf.api_endpoint().map_err(rpc_failed)?;
    if api.trim().is_empty() {
        return Err(CliError::Auth(
            "no API endpoint targeted: run `cf api URL` and `cf login` first".into(),
        ));
    }
    let ssl_disabled = cf.is_ssl_disabled().map_err(rpc_failed)?;
    let space = cf.get_current_space().map_err(rpc_failed)?;
    if space.guid.is_empty() {
        return Err(CliError::Usage(
            "no space targeted: run `cf target -o ORG -s SPACE` first".into(),
        ));
    }
    drop(cf);
    let session = Session {
        http: broker_client::http_client(ssl_disabled)?,
        api: cfconfig::with_scheme(&api),
        token,
        space_guid: space.guid,
        space_name: space.name,
        cf_home: cfconfig::cf_home(),
        prefix: "cf",
    };
    block_on(execute(&session, &command))
}

fn connect(port: u16) -> Result<rpc::Client, CliError> {
    rpc::Client::connect(port).map_err(|e| CliError::Unreachable(e.to_string()))
}

fn run_standalone(args: Vec<String>) -> Result<i32, CliError> {
    let command = match parse("cf-wayback", &args) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let Some(cf_home) = cfconfig::cf_home() else {
        return Err(CliError::Usage(format!(
            "neither CF_HOME nor {} is set: cannot find the cf CLI's .cf/config.json",
            cfconfig::HOME_VARIABLES
        )));
    };
    let mut config = CfConfig::load(&cfconfig::config_path(&cf_home))?;
    // Checked before any refresh: a missing login or space needs no UAA round trip.
    let ssl_disabled = config.target()?.ssl_disabled;
    let http = broker_client::http_client(ssl_disabled)?;
    block_on(async move {
        cfconfig::ensure_fresh(&mut config, &http, Utc::now()).await?;
        let target = config.target()?;
        let session = Session {
            http,
            api: target.api_endpoint,
            token: target.access_token,
            space_guid: target.space_guid,
            space_name: target.space_name,
            cf_home: Some(cf_home),
            prefix: "cf-wayback",
        };
        execute(&session, &command).await
    })
}

fn block_on<F: std::future::Future<Output = Result<i32, CliError>>>(f: F) -> Result<i32, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the async runtime: {e}")))?
        .block_on(f)
}

async fn execute(session: &Session, command: &CliCommand) -> Result<i32, CliError> {
    match command {
        CliCommand::Backups(args) => super::backups::run(session, args).await?,
        CliCommand::Undo(args) => super::undo::run(session, args).await?,
        CliCommand::Audit(args) => super::audit::run(session, args).await?,
        CliCommand::Followers(args) => super::followers::run(session, args).await?,
        CliCommand::DbDiagnose(args) => {
            super::diagnose::run(session, args, super::diagnose::Inspect::Diagnose).await?
        }
        CliCommand::DbLocks(args) => {
            super::diagnose::run(session, args, super::diagnose::Inspect::Locks).await?
        }
        CliCommand::DbOutliers(args) => {
            super::diagnose::run(session, args, super::diagnose::Inspect::Outliers).await?
        }
    }
    Ok(exit::OK)
}
