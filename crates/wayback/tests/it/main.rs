//! Wayback's integration tests, one binary (linking the crate once instead of once per file):
//! real PostgreSQL clusters, the S3-compatible server that `scripts/test` starts, the real
//! `wayback` binary for its subcommands, and wiremock for the Cloud Controller and UAA.
//!
//! `common` is the harness (`spawn_app()`, `spawn_fast_app()` on a fake runtime, typed OSB
//! helpers and goldens, the fake CF); `pg_support` drives PostgreSQL without a broker. `fast`
//! is the fast tier (no PostgreSQL or S3 server: `bash scripts/test --fast`). Each other module
//! is one area, named as its tests are filtered: `bash scripts/test clone::` runs the clone
//! tests.

mod common;
mod pg_support;

mod agents;
mod archive;
mod archive_crypt;
mod archive_faults;
mod backup;
mod backup_schedule;
mod binding_tls;
mod bosh_templates;
mod cf_diagnose;
mod cf_wayback;
mod clone;
mod clone_audit;
mod cluster_tls;
mod concurrent_load;
mod concurrent_pg;
mod crash_steps;
mod dashboard_page;
mod dashboard_sso;
mod docs;
mod drain;
mod drills;
mod fast;
mod follow_engine;
mod followers;
mod ha_agents;
mod ha_agents_osb;
mod ha_async;
mod ha_broker;
mod ha_broker_crash;
mod ha_engine;
mod ha_ops;
mod ha_standby_backup;
mod ha_timelines;
mod ha_update;
mod ha_update_agents;
mod ha_update_crash;
mod idle_stop;
mod lifecycle;
mod osb_pg;
mod pg_driver;
mod pg_runtime;
mod readonly_bindings;
mod register_broker;
mod reindex;
mod restart;
mod restore;
mod retention;
mod sampling;
mod secrets;
mod server_log;
mod sessions;
mod smoke_test;
mod state_retention;
mod storage_contract;
mod storage_outage;
mod store;
mod supervisor_idle;
mod undo_trash;
mod wake_listener;
mod wayback_api;
