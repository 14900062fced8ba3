//! The commands `cf-wayback` understands — their arguments, help, and the plugin metadata cf
//! shows in `cf help -a` — parsed with clap the same way in both modes; only the program
//! name in the usage lines differs (`cf backups` as a plugin, `cf-wayback backups` alone).
//! Imports `cli_error` and `rpc` (the plugin metadata types).

use std::collections::BTreeMap;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::cli_error::EXIT_CODES_HELP;
use crate::rpc::{Command, PluginMetadata, Usage, VersionType};

const BACKUPS_ABOUT: &str =
    "List the Wayback instances of the targeted space, live and deleted, with what can be restored";
const UNDO_ABOUT: &str =
    "Restore an instance (also a deleted one) into a new instance, as it is now or was at a time";

const BACKUPS_AFTER: &str = "\
Times are shown in UTC (with --local-time, in this machine's zone). \"now\" in \"restorable to\"
means the instance is live and keeps archiving. --json prints
{\"space\": {\"guid\", \"name\"}, \"broker\": URL, \"instances\": [...]} with the broker's instance
objects as they are (fields are only ever added).";

const AUDIT_ABOUT: &str =
    "Show who provisioned, cloned, updated, renamed, bound, unbound and deleted an instance";

const AUDIT_AFTER: &str = "\
NAME is the newest instance that has or had the name (live or deleted). Users are the ids the
platform sent with each request (Cloud Foundry's user GUIDs); \"-\" when it sent none. --json
prints the broker's audit document as it is (fields are only ever added).";

const FOLLOWERS_ABOUT: &str =
    "Show an instance's followers (read-only replicas), or a follower's leader, with state and lag";

const FOLLOWERS_AFTER: &str = "\
NAME is the newest instance that has or had the name. State is streaming (from the leader),
catching_up (replaying what the leader archived), disconnected, or unknown (the broker could
not ask in time); lag is what the follower has not replayed yet. --json prints
{\"instance_id\", \"name\", \"follower\": {...} or null, \"followers\": [...]} with the broker's
objects as they are (fields are only ever added).";

const DIAGNOSE_ABOUT: &str =
    "Check an instance's database: connections, long transactions, locks, bloat, backups, …";
const LOCKS_ABOUT: &str = "Show the sessions that block others now, as a tree";
const OUTLIERS_ABOUT: &str = "Show the statements that took the most time (pg_stat_statements)";

const INSPECT_AFTER: &str = "\
NAME is the newest instance that has or had the name. Each check is GREEN, YELLOW, RED or
SKIPPED (not judged, with why: an instance stopped when idle is not woken to be checked) with
its numbers and what to do. Statements are shown as PostgreSQL normalises them ($1 for every
value), never with their parameters. --json prints the broker's document as it is (fields are
only ever added).";

const UNDO_AFTER: &str = "\
Creates NEW_NAME (default NAME-restored) through the Cloud Controller, as
`cf create-service SERVICE PLAN NEW_NAME -c '{\"clone-from\": NAME, \"point-in-time\": TIME}'`,
with the plan of NAME unless --plan is given. Without --at, the latest state is restored.
TIME is RFC 3339 with an offset: 2026-11-21T09:30:00Z or 2026-11-21T10:30:00+01:00.";

/// The broker's URL, for every command.
#[derive(Debug, Clone, Args)]
pub struct BrokerArg {
    /// The Wayback broker's URL (default: found from the space's instances, then remembered)
    #[arg(long, value_name = "URL", env = "WAYBACK_BROKER_URL")]
    pub broker_url: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct BackupsArgs {
    /// Only instances that have or had this name
    pub name: Option<String>,
    /// Print JSON for scripts instead of the table
    #[arg(long)]
    pub json: bool,
    /// Show times in this machine's time zone instead of UTC
    #[arg(long)]
    pub local_time: bool,
    /// List each instance's recent restore drills (with NAME: that instance's)
    #[arg(long)]
    pub drills: bool,
    #[command(flatten)]
    pub broker: BrokerArg,
}

#[derive(Debug, Clone, Args)]
pub struct UndoArgs {
    /// The instance to restore (live or deleted); the newest one of that name
    pub name: String,
    /// The name of the new instance [default: NAME-restored]
    pub new_name: Option<String>,
    /// Restore the state as of this time (RFC 3339 with offset) instead of the latest
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// The plan of the new instance [default: the plan of NAME]
    #[arg(long, value_name = "PLAN")]
    pub plan: Option<String>,
    /// Follow the restore until it ends, with a progress line
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub broker: BrokerArg,
}

#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// The instance (live or deleted); the newest one of that name
    pub name: String,
    /// Print the broker's JSON document instead of the table
    #[arg(long)]
    pub json: bool,
    /// Show times in this machine's time zone instead of UTC
    #[arg(long)]
    pub local_time: bool,
    #[command(flatten)]
    pub broker: BrokerArg,
}

#[derive(Debug, Clone, Args)]
pub struct FollowersArgs {
    /// The instance, leader or follower; the newest one of that name
    pub name: String,
    /// Print JSON for scripts instead of the text
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub broker: BrokerArg,
}

#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    /// The instance; the newest one of that name
    pub name: String,
    /// Print the broker's JSON document instead of the text
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub broker: BrokerArg,
}

#[derive(Debug, Clone, Subcommand)]
pub enum CliCommand {
    #[command(about = BACKUPS_ABOUT, after_help = format!("{BACKUPS_AFTER}\n\n{EXIT_CODES_HELP}"))]
    Backups(BackupsArgs),
    #[command(about = UNDO_ABOUT, after_help = format!("{UNDO_AFTER}\n\n{EXIT_CODES_HELP}"))]
    Undo(UndoArgs),
    #[command(about = AUDIT_ABOUT, after_help = format!("{AUDIT_AFTER}\n\n{EXIT_CODES_HELP}"))]
    Audit(AuditArgs),
    #[command(about = FOLLOWERS_ABOUT, after_help = format!("{FOLLOWERS_AFTER}\n\n{EXIT_CODES_HELP}"))]
    Followers(FollowersArgs),
    #[command(about = DIAGNOSE_ABOUT, after_help = format!("{INSPECT_AFTER}\n\n{EXIT_CODES_HELP}"))]
    DbDiagnose(InspectArgs),
    #[command(about = LOCKS_ABOUT, after_help = format!("{INSPECT_AFTER}\n\n{EXIT_CODES_HELP}"))]
    DbLocks(InspectArgs),
    #[command(about = OUTLIERS_ABOUT, after_help = format!("{INSPECT_AFTER}\n\n{EXIT_CODES_HELP}"))]
    DbOutliers(InspectArgs),
}

/// PostgreSQL with undo: see and restore what Wayback can bring back.
#[derive(Debug, Parser)]
#[command(version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: CliCommand,
}

/// Parses `args` (the command and its arguments, no program name). `Err` carries clap's
/// message (help, version or a usage error) and the exit code: 0 for help, 2 for misuse.
pub fn parse(program: &'static str, args: &[String]) -> Result<CliCommand, clap::Error> {
    let mut command = Cli::command().name(program).bin_name(program);
    let argv = std::iter::once(program.to_string()).chain(args.iter().cloned());
    let matches = command.try_get_matches_from_mut(argv)?;
    Cli::from_arg_matches(&matches).map(|cli| cli.command)
}

/// The crate version as cf wants it.
fn version() -> VersionType {
    let mut parts = env!("CARGO_PKG_VERSION")
        .split(['.', '-'])
        .map(|p| p.parse::<i64>().unwrap_or(0));
    VersionType {
        major: parts.next().unwrap_or(0),
        minor: parts.next().unwrap_or(0),
        build: parts.next().unwrap_or(0),
    }
}

/// The options of a subcommand, from its clap definition (one source of truth).
fn options_of(name: &str) -> BTreeMap<String, String> {
    let cli = Cli::command();
    let sub = cli.find_subcommand(name).expect("defined above");
    sub.get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?;
            Some((
                long.to_string(),
                a.get_help().map(|h| h.to_string()).unwrap_or_default(),
            ))
        })
        .collect()
}

/// What `SetPluginMetadata` sends at `cf install-plugin`.
pub fn plugin_metadata() -> PluginMetadata {
    let command = |name: &str, help: &str, usage: &str| Command {
        name: name.into(),
        alias: String::new(),
        help_text: help.into(),
        usage_details: Usage {
            usage: usage.into(),
            options: options_of(name),
        },
    };
    PluginMetadata {
        name: "wayback".into(),
        version: version(),
        min_cli_version: VersionType {
            major: 6,
            minor: 7,
            build: 0,
        },
        commands: vec![
            command(
                "backups",
                BACKUPS_ABOUT,
                "cf backups [NAME] [--json] [--local-time] [--broker-url URL]",
            ),
            command(
                "undo",
                UNDO_ABOUT,
                "cf undo NAME [NEW_NAME] [--at TIME] [--plan PLAN] [--wait] [--broker-url URL]\n\n   \
                 cf undo production --at 2026-11-21T09:30:00Z\n   \
                 cf undo production production-old --wait",
            ),
            command(
                "audit",
                AUDIT_ABOUT,
                "cf audit NAME [--json] [--local-time] [--broker-url URL]",
            ),
            command(
                "followers",
                FOLLOWERS_ABOUT,
                "cf followers NAME [--json] [--broker-url URL]",
            ),
            command(
                "db-diagnose",
                DIAGNOSE_ABOUT,
                "cf db-diagnose NAME [--json] [--broker-url URL]",
            ),
            command(
                "db-locks",
                LOCKS_ABOUT,
                "cf db-locks NAME [--json] [--broker-url URL]",
            ),
            command(
                "db-outliers",
                OUTLIERS_ABOUT,
                "cf db-outliers NAME [--json] [--broker-url URL]",
            ),
        ],
        ..PluginMetadata::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_both_commands() {
        let CliCommand::Backups(b) = parse("cf", &strings(&["backups", "db", "--json"])).unwrap()
        else {
            panic!("not backups")
        };
        assert_eq!(
            (b.name.as_deref(), b.json, b.local_time),
            (Some("db"), true, false)
        );
        let CliCommand::Undo(u) = parse(
            "cf-wayback",
            &strings(&[
                "undo",
                "production",
                "--at",
                "2026-11-21T09:30:00Z",
                "--wait",
                "--plan",
                "medium",
            ]),
        )
        .unwrap() else {
            panic!("not undo")
        };
        assert_eq!(u.name, "production");
        assert_eq!(u.new_name, None);
        assert_eq!(u.at.as_deref(), Some("2026-11-21T09:30:00Z"));
        assert_eq!(u.plan.as_deref(), Some("medium"));
        assert!(u.wait);
    }

    #[test]
    fn help_exits_0_and_misuse_exits_2() {
        // (arguments, exit code, why)
        for (args, code, why) in [
            (&["backups", "-h"][..], 0, "help of a command"),
            (&["help", "undo"][..], 0, "the help command"),
            (&["--help"][..], 0, "top-level help"),
            (&["undo"][..], 2, "NAME is required"),
            (&["backups", "--nope"][..], 2, "unknown flag"),
            (&["restore"][..], 2, "unknown command"),
            (&[][..], 2, "no command"),
        ] {
            let err = parse("cf-wayback", &strings(args))
                .err()
                .unwrap_or_else(|| panic!("{why}"));
            assert_eq!(err.exit_code(), code, "{why}: {err}");
        }
        let help = parse("cf", &strings(&["undo", "--help"]))
            .err()
            .unwrap()
            .to_string();
        assert!(help.contains("Usage: cf undo"), "{help}");
        assert!(help.contains("Exit codes:"), "{help}");
    }

    #[test]
    fn metadata_lists_the_commands_with_their_options() {
        let md = plugin_metadata();
        assert_eq!(md.name, "wayback");
        let names: Vec<_> = md.commands.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "backups",
                "undo",
                "audit",
                "followers",
                "db-diagnose",
                "db-locks",
                "db-outliers"
            ]
        );
        for c in &md.commands[4..] {
            assert!(c.usage_details.options.contains_key("json"), "{}", c.name);
        }
        let followers = &md.commands[3].usage_details.options;
        assert!(followers.contains_key("json"), "{followers:?}");
        let undo = &md.commands[1].usage_details.options;
        for option in ["at", "plan", "wait", "broker-url"] {
            assert!(undo.contains_key(option), "{option}: {undo:?}");
        }
    }
}
