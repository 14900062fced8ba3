//! Who asked for an operation: the platform's `X-Broker-API-Originating-Identity`, once the
//! OSB edge has parsed and bounded it (`osb::identity`). The audit trail records it with every
//! operation; an absent header is normal and recorded as no originator.

/// The user behind a request, as the platform tells it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Originator {
    /// The header's platform word (`cloudfoundry`, `kubernetes`, …), lower case.
    pub platform: String,
    /// The user: Cloud Foundry's `user_id`, else a `username` or `uid` the platform sent.
    pub user_id: Option<String>,
    /// The decoded identity object as compact JSON, at most [`Originator::MAX_IDENTITY_BYTES`].
    pub identity: String,
}

impl Originator {
    /// The largest identity JSON kept (the header's own limit is larger only by base64).
    pub const MAX_IDENTITY_BYTES: usize = 1024;

    /// The user for log lines and the audit trail: the user id, else `unknown`.
    pub fn user(&self) -> &str {
        self.user_id.as_deref().unwrap_or("unknown")
    }
}
