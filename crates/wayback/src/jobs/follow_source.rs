//! The leader of a `follow` provision, as the broker resolved it before its 202.
//!
//! The broker's follow check (`broker::follow`) builds a [`FollowSource`]; it travels in the
//! provision job's payload under `follow`, and every progress line of the follow names it
//! through its `Display` ("following "production" (GUID)"). The system identifier is stored as
//! decimal text, as a clone's is (a `u64` is beyond what every JSON reader keeps exact).
//!
//! Imports `domain` only.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::domain::InstanceId;

/// Which instance a follower streams from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowSource {
    /// The leader (the same space as the follower).
    pub leader: InstanceId,
    /// The name the user gave in `follow` resolved to (its GUID if it never had a name).
    pub name: String,
    /// The leader's cluster identity: the standby restore refuses WAL of any other cluster.
    #[serde(serialize_with = "decimal", deserialize_with = "from_decimal")]
    pub system_identifier: u64,
}

/// `"production" (GUID)`, as last_operation shows it.
impl fmt::Display for FollowSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({})", self.name, self.leader)
    }
}

fn decimal<S: Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&n.to_string())
}

fn from_decimal<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    String::deserialize(d)?
        .parse()
        .map_err(serde::de::Error::custom)
}

/// The replication role a follower has on its leader (`wb_repl_<id>`) and its slot
/// (`wb_follower_<id>`): the id's letters and digits, lower-case (pure; `pg_hba.conf` takes the
/// role unquoted).
pub fn replication_names(follower: &InstanceId) -> (String, String) {
    let short: String = follower
        .as_str()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .take(40)
        .collect();
    (format!("wb_repl_{short}"), format!("wb_follower_{short}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_round_trips_and_names_its_leader() {
        let source = FollowSource {
            leader: InstanceId::parse("0a0a0a0a-0000-4000-8000-000000000001").unwrap(),
            name: "production".into(),
            system_identifier: u64::MAX,
        };
        let value = serde_json::to_value(&source).unwrap();
        assert_eq!(value["system_identifier"], "18446744073709551615");
        assert_eq!(
            serde_json::from_value::<FollowSource>(value).unwrap(),
            source
        );
        assert_eq!(
            source.to_string(),
            "\"production\" (0a0a0a0a-0000-4000-8000-000000000001)"
        );
    }

    #[test]
    fn replication_names_are_plain_lower_case() {
        let id = InstanceId::parse("0A0A0A0A-0000-4000-8000-00000000000B").unwrap();
        let (role, slot) = replication_names(&id);
        assert_eq!(role, "wb_repl_0a0a0a0a00004000800000000000000b");
        assert_eq!(slot, "wb_follower_0a0a0a0a00004000800000000000000b");
        assert!(slot.len() <= 63);
    }
}
