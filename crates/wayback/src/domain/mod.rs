//! Domain types shared by every layer: validated identifiers, lifecycle states and the
//! originator of a request (who asked, for the audit trail).
//!
//! Must not import any other module of the crate. Identifiers are validated once, at the edge,
//! so that the rest of the code can use them in file paths, object keys and log lines safely.

mod follower;
mod ids;
mod originator;
mod secret;
mod state;

pub use follower::{follower_slot, FollowerLag, FollowerState};
pub use ids::{
    BindingId, IdError, InstanceId, OrgGuid, PlanId, ServiceId, SpaceGuid, MEMBER_SEPARATOR,
};
pub use originator::Originator;
pub use secret::new_password;
pub use state::{BindingState, InstanceState, OperationKind, OperationState};
