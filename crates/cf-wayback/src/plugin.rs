//! The cf CLI plugin protocol's entry: what cf asked this process to do.
//!
//! cf starts a plugin binary with a port as its first argument and then one of: `SendMetadata`
//! (at install: the plugin calls `CliRpcCmd.SetPluginMetadata` and exits), `CLI-MESSAGE-UNINSTALL`
//! (at uninstall), or the command the user typed and its arguments. Whatever the plugin needs
//! from cf — the access token, the API endpoint, the targeted space — it asks for over Go's
//! `net/rpc` on 127.0.0.1:`port` ([`crate::rpc`]). [`PluginInvocation`] reads the arguments.
//!
//! Imports nothing from the crate (its tests drive [`crate::rpc`] under the real harness).

/// The argument cf passes at `cf uninstall-plugin`.
pub const UNINSTALL: &str = "CLI-MESSAGE-UNINSTALL";

/// What cf asked the plugin process to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginAction {
    /// Send the metadata (`SetPluginMetadata`) and exit: `cf install-plugin`.
    SendMetadata,
    /// Clean up and exit: `cf uninstall-plugin`.
    Uninstall,
    /// Run a command; `command` is as the user typed it, so it may be an alias.
    Run { command: String, args: Vec<String> },
}

/// The arguments of a plugin process: `<port> SendMetadata | CLI-MESSAGE-UNINSTALL | COMMAND ARGS...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInvocation {
    pub port: u16,
    pub action: PluginAction,
}

#[derive(Debug, thiserror::Error)]
pub enum InvocationError {
    #[error("this is a cf CLI plugin: install it with `cf install-plugin`, then run it as `cf <command>`")]
    NotFromCf,
    #[error("this is a cf CLI plugin, run by cf; {0:?} is not the port cf passes")]
    BadPort(String),
}

impl PluginInvocation {
    /// Parses the process arguments without the program name.
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Self, InvocationError> {
        let mut args = args.into_iter();
        let (Some(port), Some(first)) = (args.next(), args.next()) else {
            return Err(InvocationError::NotFromCf);
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(InvocationError::BadPort(port)),
        };
        let action = match first.as_str() {
            "SendMetadata" => PluginAction::SendMetadata,
            UNINSTALL => PluginAction::Uninstall,
            _ => PluginAction::Run {
                command: first,
                args: args.collect(),
            },
        };
        Ok(PluginInvocation { port, action })
    }
}

#[cfg(test)]
mod tests;
