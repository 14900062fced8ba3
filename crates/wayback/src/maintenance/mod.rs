//! Periodic work that is not an OSB call: each part runs as its own loop beside the HTTP server
//! (`startup` spawns them) and stops with the root shutdown token.
//!
//! - [`Supervisor`]: keeps ready instances' clusters running, completes WAL segments on each
//!   plan's archive interval, and enqueues base backups when they are due.
//! - [`ArchiveMaintenance`] (`retention`): prunes archives to each plan's recovery window, reaps
//!   deleted instances' archives, keeps every `instance.json` current; `wayback prune` runs one
//!   pass. The same loop keeps the state database bounded (`state_retention`): finished jobs
//!   and superseded operations go after `state.retention_days`, backup rows with their backups.
//! - [`NameResolver`] (`names`): asks the Cloud Controller for names the platform did not send,
//!   and reconciles live instances' names.
//! - [`WakeWatch`] (`wakes`): wakes of clusters stopped when idle, as the runtime reports them
//!   (issue 17): the instance's `stopped_at` cleared, the wake timed in the metrics.
//! - [`drills`]: when restore drills run (enqueued from the supervisor's pass; issue 18).
//! - [`reindex`]: rebuilds the index of instances and names from the archive alone
//!   (`wayback reindex`).
//!
//! Imports `store`, `runtime`, `jobs` (to enqueue backups, write `instance.json`), `archive`,
//! `storage`, `catalog`, `cc`, `metrics`, `config` and `domain`; never `osb` or `broker`: the
//! broker's OSB rules and this module's loops share the store, not each other.

pub mod drills;
mod names;
pub mod reindex;
mod retention;
mod state_retention;
mod supervisor;
mod wakes;

pub use names::{NameResolver, ResolvePass, SOURCE_CLOUD_CONTROLLER};
pub use retention::{ArchiveMaintenance, InstanceReport, PassReport};
pub use state_retention::prune_state;
pub use supervisor::Supervisor;
pub use wakes::WakeWatch;
