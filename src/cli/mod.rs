//! Operator commands (`wayback prune`, …): each parses nothing itself (clap does, in `main`),
//! opens what it needs from the same settings as `serve`, calls the library and prints. Thin
//! by design: the logic lives in the subsystems, so the broker and the command share it.

pub mod backup;
pub mod prune;
pub mod restore;
