//! Lifecycle states, stored as short lowercase strings.

use std::fmt;
use std::str::FromStr;

macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
            pub const ALL: &'static [$name] = &[$(Self::$variant),+];
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    other => Err(format!("unknown {} {other:?}", stringify!($name))),
                }
            }
        }
    };
}

string_enum!(
    /// Where a service instance is in its life. `Deleted` records are kept forever (undo needs them).
    InstanceState {
        Provisioning => "provisioning",
        Ready => "ready",
        Updating => "updating",
        Deprovisioning => "deprovisioning",
        Failed => "failed",
        Deleted => "deleted",
    }
);

string_enum!(
    /// Where a binding is in its life.
    BindingState {
        Creating => "creating",
        Ready => "ready",
        Deleting => "deleting",
        Failed => "failed",
        Deleted => "deleted",
    }
);

string_enum!(
    /// What an asynchronous operation does.
    OperationKind {
        Provision => "provision",
        Update => "update",
        Deprovision => "deprovision",
        Bind => "bind",
        Unbind => "unbind",
    }
);

string_enum!(
    /// OSB's operation states, spelled as the spec spells them on the wire.
    OperationState {
        InProgress => "in progress",
        Succeeded => "succeeded",
        Failed => "failed",
    }
);

impl InstanceState {
    /// States in which the instance's cluster should exist and be running.
    pub fn is_live(self) -> bool {
        matches!(self, Self::Ready | Self::Updating)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_state() {
        for s in InstanceState::ALL {
            assert_eq!(s.as_str().parse::<InstanceState>().unwrap(), *s);
        }
        for s in OperationState::ALL {
            assert_eq!(s.as_str().parse::<OperationState>().unwrap(), *s);
        }
        assert!("bogus".parse::<OperationKind>().is_err());
    }
}
