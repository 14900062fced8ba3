//! The source of a clone-from provision, as the broker resolved it before its 202.
//!
//! The broker's clone check (`broker::clone`) builds a [`CloneSource`]; it travels in the
//! provision job's payload under `clone`, and every progress line of the clone names it through
//! its `Display` ("from "production" (GUID, deleted at …) as of …"). The stored form is the one
//! brokers have always written, so a job queued by an older broker resumes: times as RFC 3339
//! text (`+00:00`), the system identifier as decimal text (a `u64` is beyond what every JSON
//! reader keeps exact).
//!
//! Imports `archive` (the restore target) and `domain` only.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::archive::restore::RestoreTarget;
use crate::domain::InstanceId;

/// Which instance a clone restores, to what point, from which lineage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneSource {
    /// The source instance (the same space as the clone).
    #[serde(rename = "source")]
    pub id: InstanceId,
    /// The name the user gave in `clone-from` resolved to (its GUID if it never had a name).
    pub name: String,
    /// Not deleted at the PUT: the clone first archives the source's latest WAL (a fork).
    pub live: bool,
    /// When the source was deleted, in Unix milliseconds.
    pub deleted_at: Option<i64>,
    /// `point-in-time`, or everything archived.
    #[serde(with = "target_text")]
    pub target: RestoreTarget,
    /// The source's cluster identity: the restore refuses WAL of any other cluster.
    #[serde(with = "decimal_text")]
    pub system_identifier: u64,
    /// Where the base backup the check chose ends.
    #[serde(with = "rfc3339_text")]
    pub backup_stop_time: DateTime<Utc>,
    /// The follower `clone-from` named, when it named one: a follower has no archive of its
    /// own, so its leader's (this source) is restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via_follower: Option<String>,
    /// A deleted source's last archived commit (its final one), Unix milliseconds, when the
    /// check read it: a point in time at or after it is the latest point, which the copy kept
    /// at delete time holds (issue 16). Absent in jobs queued before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_commit_ms: Option<i64>,
}

/// `from "production" (GUID, deleted at 2026-11-21 09:42:07 UTC) as of <time|latest>`, as
/// last_operation shows it.
impl fmt::Display for CloneSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "from {:?} ({}", self.name, self.id)?;
        if let Some(ms) = self.deleted_at {
            write!(f, ", deleted at {}", utc_text(ms))?;
        }
        if let Some(follower) = &self.via_follower {
            write!(
                f,
                ", the leader of follower {follower:?}, whose archive it is"
            )?;
        }
        match self.target {
            RestoreTarget::Latest => f.write_str(") as of the latest archived commit"),
            RestoreTarget::PointInTime(t) => write!(f, ") as of {}", t.to_rfc3339()),
        }
    }
}

/// "2026-11-21 09:42:07 UTC": what `cf service` users read.
fn utc_text(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).map_or(ms.to_string(), |t| {
        t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
    })
}

/// A time as `DateTime::to_rfc3339` writes it (`2026-11-21T09:30:00+00:00`); read with any
/// offset.
mod rfc3339_text {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

/// A restore target: `null` for everything archived, else the time as RFC 3339 text.
mod target_text {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::archive::restore::RestoreTarget;

    #[derive(Serialize, Deserialize)]
    struct Time(#[serde(with = "super::rfc3339_text")] DateTime<Utc>);

    pub fn serialize<S: Serializer>(t: &RestoreTarget, s: S) -> Result<S::Ok, S::Error> {
        match t {
            RestoreTarget::Latest => None::<Time>.serialize(s),
            RestoreTarget::PointInTime(t) => Some(Time(*t)).serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<RestoreTarget, D::Error> {
        Ok(match Option::<Time>::deserialize(d)? {
            None => RestoreTarget::Latest,
            Some(Time(t)) => RestoreTarget::PointInTime(t),
        })
    }
}

/// A `u64` as decimal text.
mod decimal_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&n.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A payload's `clone` as brokers before typed jobs wrote it (`broker::clone::check_clone`).
    fn stored(deleted_at: Option<i64>, target: Option<&str>) -> serde_json::Value {
        json!({
            "source": "6c1f0e7a-9f3b-4d2e-8a11-2b3c4d5e6f70",
            "name": "production",
            "live": deleted_at.is_none(),
            "deleted_at": deleted_at,
            "target": target,
            "system_identifier": "7441839221348675302",
            "backup_stop_time": "2026-11-21T08:00:05.123+00:00",
        })
    }

    #[test]
    fn reads_and_writes_the_stored_shape() {
        for value in [
            stored(Some(1_795_254_127_000), Some("2026-11-21T09:30:00+00:00")),
            stored(None, None),
        ] {
            let source: CloneSource = serde_json::from_value(value.clone()).unwrap();
            assert_eq!(source.system_identifier, 7_441_839_221_348_675_302);
            assert_eq!(serde_json::to_value(&source).unwrap(), value);
        }
    }

    #[test]
    fn names_the_source_as_before() {
        let deleted: CloneSource = serde_json::from_value(stored(
            Some(1_795_254_127_000),
            Some("2026-11-21T09:30:00+00:00"),
        ))
        .unwrap();
        assert_eq!(
            deleted.to_string(),
            "from \"production\" (6c1f0e7a-9f3b-4d2e-8a11-2b3c4d5e6f70, deleted at 2026-11-21 \
             09:42:07 UTC) as of 2026-11-21T09:30:00+00:00"
        );
        let live: CloneSource = serde_json::from_value(stored(None, None)).unwrap();
        assert_eq!(
            live.to_string(),
            "from \"production\" (6c1f0e7a-9f3b-4d2e-8a11-2b3c4d5e6f70) as of the latest \
             archived commit"
        );
        // A target with a fraction of a second and given with another offset reads back as
        // the broker wrote it (`to_rfc3339` of the UTC time).
        let t = DateTime::parse_from_rfc3339("2026-11-21T10:30:00.25+01:00")
            .unwrap()
            .with_timezone(&Utc);
        let exact = CloneSource {
            target: RestoreTarget::PointInTime(t),
            ..live
        };
        assert!(exact
            .to_string()
            .ends_with(") as of 2026-11-21T09:30:00.250+00:00"));
    }

    /// `broker::clone::describe` before typed jobs, which read the payload by hand.
    fn describe_before(payload: &serde_json::Value) -> String {
        let c = &payload["clone"];
        let deleted = c["deleted_at"]
            .as_i64()
            .map_or(String::new(), |ms| format!(", deleted at {}", utc_text(ms)));
        let target = c["target"].as_str().unwrap_or("the latest archived commit");
        format!(
            "from {:?} ({}{deleted}) as of {target}",
            c["name"].as_str().unwrap_or(""),
            c["source"].as_str().unwrap_or("")
        )
    }

    #[test]
    fn display_equals_the_former_description() {
        for (deleted_at, target) in [
            (None, None),
            (Some(1_795_254_127_000), None),
            (None, Some("2026-11-21T09:30:00+00:00")),
            (Some(0), Some("2026-11-21T09:30:00.123456+00:00")),
        ] {
            let mut value = stored(deleted_at, target);
            value["name"] = json!("quote \" and ü");
            let source: CloneSource = serde_json::from_value(value.clone()).unwrap();
            assert_eq!(
                source.to_string(),
                describe_before(&json!({ "clone": value }))
            );
        }
    }

    #[test]
    fn a_bad_system_identifier_or_time_is_refused() {
        let mut v = stored(None, None);
        v["system_identifier"] = json!(7_441_839_221_348_675_302u64);
        assert!(serde_json::from_value::<CloneSource>(v).is_err());
        let mut v = stored(None, Some("yesterday"));
        assert!(serde_json::from_value::<CloneSource>(v.clone()).is_err());
        v["target"] = json!(null);
        v["source"] = json!("../x");
        assert!(serde_json::from_value::<CloneSource>(v).is_err());
    }
}
