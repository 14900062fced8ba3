//! The types that cross a process boundary, shared by both sides so that neither indexes JSON
//! by string:
//!
//! - [`v1`]: the broker's read API (`/wayback/v1`), served by `wayback serve` and read by
//!   `cf-wayback`;
//! - `agent`: the broker ↔ `wayback agent` wire (`/v1/...` on an agent).
//!
//! Plain serde types only: this crate depends on nothing but serde, serde_json and chrono, so
//! the CLI that app developers install stays small and portable.

pub mod agent;
pub mod v1;
