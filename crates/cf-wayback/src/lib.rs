//! `cf-wayback`: Wayback's command line for app developers, `backups` (what can be restored
//! in the targeted space, live and deleted instances), `undo` (restore one into a new
//! instance, through the Cloud Controller), `audit` (who did what to an instance), `followers`
//! (a leader's followers or a follower's leader, with state and lag) and `db-diagnose`,
//! `db-locks`, `db-outliers` (what the database is doing). One binary runs two ways:
//!
//! - as a **cf CLI plugin** (`cf install-plugin`, then `cf backups`, `cf undo`): cf starts it
//!   with a port ([`plugin`]) and answers its questions — token, API endpoint, space — over
//!   Go's `net/rpc`, which speaks Go's `encoding/gob` ([`rpc`], [`gob`]);
//! - **standalone** (`cf-wayback backups`): it reads the cf CLI's `config.json` itself and
//!   refreshes an expired token the way cf does ([`cfconfig`]).
//!
//! Either way a [`session::Session`] (token, API endpoint, space, HTTP client) runs the same
//! commands, which read the broker's `/wayback/v1` API with the user's own token and speak to
//! the Cloud Controller as the user. The modules, from the entry point down:
//!
//! - [`app`]: choose the mode, build the session, run the command, map the outcome to an exit
//!   code; [`commands`]: the command line (clap) and the plugin metadata;
//! - [`backups`], [`undo`], [`audit`], [`followers`], [`diagnose`]: the commands; [`output`]: the table and the `--json`
//!   document of `backups`; [`drills`]: its "verified" column and `--drills`;
//! - [`session`]: who and where; [`discovery`]: finding the broker's URL (flag, remembered,
//!   or a dashboard URL);
//! - [`broker_client`]: the broker's API, read as [`wayback_api::v1`] types, and the one HTTP
//!   client; [`cc_client`]: the Cloud Controller v3 calls; [`cfconfig`]: `config.json` and the
//!   UAA refresh; [`cli_error`]: what went wrong, as a message and an exit code;
//! - [`plugin`], [`rpc`], [`gob`]: the cf plugin protocol, net/rpc, and the gob wire format
//!   (no maintained Rust crate speaks gob).
//!
//! The crate knows the broker only through `wayback-api` and HTTP: it depends on no
//! server-side crate (actix-web, sqlx, aws-sdk, nix), and builds wherever Rust does (macOS,
//! Windows, Linux); Unix-only code, such as keeping `config.json`'s file mode, is behind
//! `cfg(unix)`.

pub mod app;
pub mod audit;
pub mod backups;
pub mod broker_client;
pub mod cc_client;
pub mod cfconfig;
pub mod cli_error;
pub mod commands;
pub mod diagnose;
pub mod discovery;
pub mod drills;
pub mod followers;
pub mod gob;
pub mod output;
pub mod plugin;
pub mod rpc;
pub mod session;
#[cfg(test)]
mod test_support;
pub mod undo;

pub use plugin::{InvocationError, PluginAction, PluginInvocation, UNINSTALL};
pub use rpc::{Client, Command, Organization, PluginMetadata, RpcError, Space, Usage, VersionType};
