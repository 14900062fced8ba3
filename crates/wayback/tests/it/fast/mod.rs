//! The fast tier: integration tests that need no PostgreSQL server, no S3 server and no
//! `initdb` — the broker on a fake runtime (`common::fake_runtime`) with a local-directory
//! archive, and checks of the source itself. `bash scripts/test --fast` runs these and every
//! crate's unit tests, for the edit-test loop.
//!
//! The OSB contract is here, every golden body of `tests/fixtures/osb/` (`osb_api`,
//! `osb_lifecycle`, `osb_bindings`, `osb_bad_input`; the real tier's `osb_pg` checks the
//! binding goldens again with real credentials), and the instance names from the Cloud
//! Controller (`cc_names`, against wiremock).

mod architecture;
mod cc_names;
mod osb_api;
mod osb_bad_input;
mod osb_bindings;
mod osb_lifecycle;
mod resume;
mod wayback_api;
