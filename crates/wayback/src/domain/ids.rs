//! Validated identifiers.
//!
//! OSB lets the platform choose instance and binding ids; Cloud Foundry sends GUIDs. Wayback uses
//! them in data directory names, object-store keys and log fields, so only a conservative
//! alphabet is accepted: ASCII letters, digits, `-`, `_` and `.`, 1–64 characters, not starting
//! with `.`. Anything else (slashes, percent-encoded bytes after decoding, spaces, NUL) is refused.

use std::fmt;

/// Why an identifier was refused; the message is shown to the user as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {what} {value:?} is not valid: {reason}")]
pub struct IdError {
    pub what: &'static str,
    pub value: String,
    pub reason: &'static str,
}

const MAX_ID_LEN: usize = 64;

fn validate(what: &'static str, value: &str) -> Result<(), IdError> {
    let err = |reason| {
        Err(IdError {
            what,
            value: value.chars().take(80).collect(),
            reason,
        })
    };
    if value.is_empty() {
        return err("it must not be empty");
    }
    if value.len() > MAX_ID_LEN {
        return err("it must be at most 64 characters long");
    }
    if value.starts_with('.') {
        return err("it must not start with '.'");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return err("use only letters, digits, '-', '_' and '.' (a GUID is typical)");
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                validate($what, &value)?;
                Ok(Self(value))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        /// Read through [`Self::parse`]: a stored or received id is checked like a new one.
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let value = String::deserialize(d)?;
                Self::parse(value).map_err(serde::de::Error::custom)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A service instance id chosen by the platform (a GUID in Cloud Foundry).
    InstanceId,
    "instance id"
);
/// Separates an instance id from an HA member's name in the member's cluster key. It never
/// occurs in an id (see [`validate`]), so a member's key cannot be another instance's id, and it
/// needs no escaping in a path or a URL.
pub const MEMBER_SEPARATOR: char = '~';

impl InstanceId {
    /// The key one member of an HA instance (issue 15) keeps its cluster under on a machine
    /// (`<id>~<member>`: its directory, lock, pidfile and superuser password), so that one
    /// machine can hold several members of one instance. A single-member instance's key is its
    /// id, as it always was. `member` is letters, digits, `-` and `_`.
    pub fn member_key(&self, member: &str) -> InstanceId {
        debug_assert!(
            !member.is_empty()
                && member
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_')),
            "member name {member:?}"
        );
        Self(format!("{}{MEMBER_SEPARATOR}{member}", self.0))
    }

    /// The instance a cluster key belongs to: the id itself, or an HA member's instance.
    pub fn instance(&self) -> InstanceId {
        match self.0.split_once(MEMBER_SEPARATOR) {
            Some((id, _)) => Self(id.to_string()),
            None => self.clone(),
        }
    }

    /// A cluster key read back (a directory name): an instance id, or an HA member's
    /// `<id>~<member>` with both parts checked as [`Self::member_key`] makes them.
    pub fn parse_cluster_key(value: &str) -> Result<Self, IdError> {
        match value.split_once(MEMBER_SEPARATOR) {
            None => Self::parse(value),
            Some((id, member)) => {
                let id = Self::parse(id)?;
                if member.is_empty()
                    || !member
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
                {
                    return Err(IdError {
                        what: "member name",
                        value: member.chars().take(80).collect(),
                        reason: "use only letters, digits, '-' and '_'",
                    });
                }
                Ok(id.member_key(member))
            }
        }
    }

    /// The member name of an HA member's cluster key; None for an instance's own id.
    pub fn member(&self) -> Option<&str> {
        self.0.split_once(MEMBER_SEPARATOR).map(|(_, m)| m)
    }
}

id_type!(
    /// A service binding id chosen by the platform.
    BindingId,
    "binding id"
);
id_type!(
    /// A Cloud Foundry space GUID.
    SpaceGuid,
    "space_guid"
);
id_type!(
    /// A Cloud Foundry organization GUID.
    OrgGuid,
    "organization_guid"
);
id_type!(
    /// A catalog service id.
    ServiceId,
    "service_id"
);
id_type!(
    /// A catalog plan id.
    PlanId,
    "plan_id"
);

#[cfg(test)]
mod tests {
    #[test]
    fn a_cluster_key_reads_back_as_an_id_or_a_member_key() {
        let id = InstanceId::parse("abc-1").unwrap();
        assert_eq!(InstanceId::parse_cluster_key("abc-1").unwrap(), id);
        let key = InstanceId::parse_cluster_key("abc-1~m2").unwrap();
        assert_eq!(key, id.member_key("m2"));
        assert_eq!(key.instance(), id);
        assert_eq!(key.member(), Some("m2"));
        for bad in ["abc-1~", "~m1", "abc-1~m.1", "abc-1~m1~m2", ".x~m1"] {
            assert!(InstanceId::parse_cluster_key(bad).is_err(), "{bad}");
        }
    }

    use super::*;

    #[test]
    fn accepts_guids_and_simple_ids() {
        for ok in ["3f2a9c1e-0000-4000-8000-000000000001", "a", "db_1.2", "A-Z"] {
            assert!(InstanceId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_dangerous_ids_with_a_reason() {
        let cases = [
            ("", "empty"),
            ("../etc", "starts with a dot"),
            ("a/b", "slash"),
            ("a b", "space"),
            ("a%2Fb", "percent sign"),
            ("a\0b", "NUL"),
            ("é", "non-ascii"),
        ];
        for (bad, why) in cases {
            assert!(InstanceId::parse(bad).is_err(), "{why}: {bad:?}");
        }
        let long = "x".repeat(65);
        let e = InstanceId::parse(long).unwrap_err();
        assert!(e.to_string().contains("at most 64"), "{e}");
    }

    #[test]
    fn a_members_key_is_never_an_instance_id_and_names_its_instance() {
        let id = InstanceId::parse("3f2a9c1e-0000-4000-8000-000000000001").unwrap();
        let key = id.member_key("m2");
        assert_eq!(key.as_str(), "3f2a9c1e-0000-4000-8000-000000000001~m2");
        assert!(
            InstanceId::parse(key.as_str()).is_err(),
            "a key is no instance id"
        );
        assert_eq!((key.instance(), key.member()), (id.clone(), Some("m2")));
        assert_eq!((id.instance(), id.member()), (id.clone(), None));
    }

    #[test]
    fn deserializing_checks_like_parse() {
        let id: InstanceId = serde_json::from_str("\"db_1\"").unwrap();
        assert_eq!(id.as_str(), "db_1");
        let e = serde_json::from_str::<InstanceId>("\"../etc\"").unwrap_err();
        assert!(e.to_string().contains("must not start with '.'"), "{e}");
    }
}
