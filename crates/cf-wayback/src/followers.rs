//! `followers NAME [--json]`: a leader's followers, or a follower's leader, with each
//! follower's state and lag, from the `follower` / `followers` fields of the broker's
//! `INSTANCE` (docs/wayback-api.md), measured by the broker when asked. NAME is resolved like
//! `backups NAME`: the newest instance that has or had it. The text is a pure function of the
//! broker's document, golden-tested; `--json` passes the broker's objects through.
//! Imports `broker_client`, `cli_error`, `commands`, `output` and `session`.

use serde_json::{json, Value};
use wayback_api::v1;

use crate::broker_client::Listed;
use crate::cli_error::CliError;
use crate::commands::FollowersArgs;
use crate::output::align;
use crate::session::Session;

const HEADER: [&str; 5] = ["name", "instance", "state", "lag", "lag seconds"];

pub async fn run(session: &Session, args: &FollowersArgs) -> Result<(), CliError> {
    let (_broker, instances) = session
        .broker_instances(args.broker.broker_url.as_deref(), Some(&args.name))
        .await?;
    let Some(newest) = instances.first() else {
        return Err(CliError::Failed(format!(
            "no instance named {} in space {}; `{} backups` lists them all",
            args.name, session.space_name, session.prefix
        )));
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json_document(newest)).expect("JSON serialises")
        );
    } else {
        print!("{}", render(&newest.instance, &args.name));
    }
    Ok(())
}

/// `{"instance_id", "name", "follower": <the broker's object or null>, "followers": [...]}`.
pub fn json_document(listed: &Listed) -> Value {
    json!({
        "instance_id": listed.instance.instance_id,
        "name": listed.instance.name,
        "follower": listed.raw.get("follower").cloned().unwrap_or(Value::Null),
        "followers": listed.raw.get("followers").cloned().unwrap_or_else(|| json!([])),
    })
}

/// What a person reads: one line saying what the instance is, then a table of followers (a
/// leader) or of its own replication (a follower).
pub fn render(instance: &v1::Instance, asked: &str) -> String {
    let name = instance.name.as_deref().unwrap_or(asked);
    let short = |id: &str| id.chars().take(8).collect::<String>();
    let me = format!("{name} ({})", short(&instance.instance_id));
    if let Some(f) = &instance.follower {
        let leader = f.leader.name.as_deref().unwrap_or("-");
        let machine = if f.same_machine {
            " It runs on its leader's machine."
        } else {
            ""
        };
        let mut out = format!(
            "{me} follows {leader} ({}); it is read-only.{machine}\n\n",
            short(&f.leader.id)
        );
        out.push_str(&align(&[
            HEADER.map(String::from),
            [
                name.to_string(),
                short(&instance.instance_id),
                f.state.to_string(),
                bytes(f.lag_bytes),
                seconds(f.lag_seconds),
            ],
        ]));
        return out;
    }
    if instance.followers.is_empty() {
        return format!("{me} has no followers and follows no leader.\n");
    }
    let n = instance.followers.len();
    let mut out = format!(
        "{me} has {n} follower{}:\n\n",
        if n == 1 { "" } else { "s" }
    );
    let mut rows = vec![HEADER.map(String::from)];
    rows.extend(instance.followers.iter().map(|f| {
        [
            f.name.clone().unwrap_or_else(|| "-".into()),
            short(&f.id),
            f.state.to_string(),
            bytes(f.lag_bytes),
            seconds(f.lag_seconds),
        ]
    }));
    out.push_str(&align(&rows));
    out
}

/// `0 B`, `512 B`, `3.2 KiB`, `14.0 MiB`, `1.5 GiB`; `-` when unknown.
fn bytes(b: Option<u64>) -> String {
    let Some(b) = b else { return "-".into() };
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = next;
    }
    format!("{v:.1} {unit}")
}

/// `0.0`, `1.4`, `73.0`; `-` when unknown.
fn seconds(s: Option<f64>) -> String {
    s.map(|s| format!("{s:.1}")).unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::test_support::listed;

    const LEADER: &str = "3f2a0000-0000-4000-8000-00000000000a";
    const FOLLOWER: &str = "8c1d0000-0000-4000-8000-00000000000b";
    const OTHER: &str = "9e3f0000-0000-4000-8000-00000000000c";

    fn leader() -> Listed {
        listed(json!({
            "instance_id": LEADER,
            "name": "production",
            "followers": [
                {"id": FOLLOWER, "name": "reports", "state": "streaming",
                 "lag_bytes": 0, "lag_seconds": 0.0},
                {"id": OTHER, "name": null, "state": "catching_up",
                 "lag_bytes": 14_680_064, "lag_seconds": 73.25},
            ]
        }))
    }

    fn follower() -> Listed {
        listed(json!({
            "instance_id": FOLLOWER,
            "name": "reports",
            "follower": {"leader": {"id": LEADER, "name": "production"}, "state": "streaming",
                         "lag_bytes": 512, "lag_seconds": 0.4, "same_machine": true}
        }))
    }

    /// The text against `tests/fixtures/cf-wayback/followers-*.txt` (`WAYBACK_BLESS=1`
    /// rewrites them).
    fn golden(name: &str, text: &str) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/cf-wayback")
            .join(format!("followers-{name}.txt"));
        if std::env::var_os("WAYBACK_BLESS").is_some() {
            std::fs::write(&path, text).unwrap();
            return;
        }
        assert_eq!(text, std::fs::read_to_string(path).unwrap());
    }

    #[test]
    fn a_leader_lists_its_followers_with_state_and_lag() {
        golden("leader", &render(&leader().instance, "production"));
    }

    #[test]
    fn a_follower_names_its_leader_and_its_lag() {
        golden("follower", &render(&follower().instance, "reports"));
    }

    #[test]
    fn an_instance_without_followers_says_so() {
        let alone = listed(json!({"instance_id": LEADER, "name": "production"}));
        assert_eq!(
            render(&alone.instance, "production"),
            "production (3f2a0000) has no followers and follows no leader.\n"
        );
        assert_eq!(
            json_document(&alone),
            json!({"instance_id": LEADER, "name": "production", "follower": null, "followers": []})
        );
    }

    #[test]
    fn json_passes_the_brokers_objects_through() {
        let doc = json_document(&follower());
        assert_eq!(doc["follower"], follower().raw["follower"]);
        assert_eq!(doc["followers"], json!([]));
        let doc = json_document(&leader());
        assert_eq!(doc["followers"], leader().raw["followers"]);
        assert_eq!(doc["follower"], Value::Null);
    }

    #[test]
    fn a_state_this_cli_does_not_know_is_shown_as_it_came() {
        let newer = listed(json!({
            "instance_id": LEADER,
            "followers": [{"id": FOLLOWER, "state": "rewinding"}]
        }));
        assert!(render(&newer.instance, "production").contains("rewinding"));
    }

    #[test]
    fn sizes_read_like_a_person_writes_them() {
        assert_eq!(bytes(Some(0)), "0 B");
        assert_eq!(bytes(Some(1023)), "1023 B");
        assert_eq!(bytes(Some(3277)), "3.2 KiB");
        assert_eq!(bytes(Some(3 << 30)), "3.0 GiB");
        assert_eq!(bytes(None), "-");
    }
}
