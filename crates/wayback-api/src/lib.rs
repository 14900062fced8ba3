//! The types that cross a process boundary, shared by both sides so that neither indexes JSON
//! by string:
//!
//! - [`v1`]: the broker's read API (`/wayback/v1`), served by `wayback serve` and read by
//!   `cf-wayback`;
//! - [`activity`]: what a running database is doing (issue 19): samples, the blocking tree,
//!   top statements and the diagnose checks, on the agent wire and in `/wayback/v1` alike;
//! - `agent`: the broker ↔ `wayback agent` wire (`/v1/...` on an agent);
//! - [`drills`]: a restore drill's report (agent wire, `/wayback/v1` and the archive alike).
//!
//! Plain serde types only: this crate depends on nothing but serde, serde_json and chrono, so
//! the CLI that app developers install stays small and portable.

pub mod activity;
pub mod agent;
pub mod drills;
pub mod v1;
