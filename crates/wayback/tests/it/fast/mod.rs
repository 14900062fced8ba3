//! The fast tier: integration tests that need no PostgreSQL server, no S3 server and no
//! `initdb` — the broker on a fake runtime (`common::fake_runtime`) with a local-directory
//! archive, and checks of the source itself. `bash scripts/test --fast` runs these and every
//! crate's unit tests, for the edit-test loop.
//!
//! Here: the OSB contract, every golden body of `tests/fixtures/osb/` (`osb_api`,
//! `osb_lifecycle`, `osb_bindings`, `osb_bad_input`, and `osb_checkers` for the answers OSB
//! checkers trip on; the real tier's `osb_pg` checks the binding goldens again with real
//! credentials); the audit trail and the originating identity (`osb_audit`); identical
//! concurrent requests (`osb_concurrent`); read-only and followers' bindings and followers' lag in
//! the views and metrics (`osb_followers`); instance names from the Cloud Controller (`cc_names`) and the `/wayback/v1` authentication and space rules (`wayback_api`), against
//! wiremock; jobs an older broker queued (`resume`); what a provision does with the runtime's
//! errors (`runtime_errors`); `wayback smoke-test` of an HA plan as far as the fake runtime
//! takes it (`smoke_ha`); idle stop's clock, job and views (`idle_stop`); the worker's leases and its two lanes (`job_lanes`); the
//! operators' Grafana dashboard and alert rules against the metrics (`ops_files`); and the
//! layering of the source (`architecture`).

mod architecture;
mod cc_names;
mod diagnose;
mod ha_ops;
mod idle_stop;
mod job_lanes;
mod metrics_auth;
mod ops_files;
mod osb_api;
pub mod osb_audit;
mod osb_bad_input;
mod osb_bindings;
mod osb_checkers;
pub mod osb_concurrent;
mod osb_follow;
mod osb_followers;
mod osb_ha;
mod osb_ha_provision;
mod osb_ha_update;
mod osb_lifecycle;
mod resume;
mod runtime_errors;
mod smoke_ha;
mod wayback_api;
