//! A test-only hook that ends this process with SIGKILL at a named point of a job, so that the
//! crash tests (`tests/it/crash_steps.rs`) can kill the broker at every step instead of at one
//! lucky moment.
//!
//! The broker reads `WAYBACK_TEST_KILL_AT` once. Points are named after the job's stored step
//! names (`jobs::model::Step`):
//!
//! - `STEP` — the job is about to run the step (the step was recorded, nothing of it ran);
//! - `STEP:after` — the step returned `Next`, before the worker records the next one, so the
//!   restarted broker runs a finished step again;
//! - points inside a step, named where they are reached: the restore engine's
//!   `clone_restore:unpacking` (downloading the base backup), `clone_restore:replaying` (the
//!   recovery server has started and is replaying; it is not promoted yet) and
//!   `clone_restore:promoted` (promoted, the broker's part of the restore not done).
//!
//! The hook exists only in builds with debug assertions (the test builds). In a release build
//! (BOSH, `cargo build --release`) [`reached`] is an empty function and the variable is never
//! read: the code below vanishes with `cfg(debug_assertions)`.
//!
//! Imports nothing of the crate.

/// The environment variable naming the point at which the process kills itself.
pub const ENV: &str = "WAYBACK_TEST_KILL_AT";

/// Ends the process with SIGKILL if `point` is the one `WAYBACK_TEST_KILL_AT` names.
#[cfg(debug_assertions)]
pub fn reached(point: &str) {
    if armed().as_deref() == Some(point) {
        // Said on stderr, unconditionally: the test reads it to know the kill was ours.
        eprintln!("{ENV}: killing this process at {point}");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// A release build has no crash hook.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn reached(_point: &str) {}

#[cfg(debug_assertions)]
fn armed() -> Option<String> {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var(ENV).ok().filter(|p| !p.is_empty()))
        .clone()
}

/// Ends the process with SIGKILL if `WAYBACK_TEST_KILL_AT` names `STEP:after`.
#[cfg(debug_assertions)]
pub fn reached_after(step: &str) {
    if armed().is_some() {
        reached(&format!("{step}:after"));
    }
}

/// A release build has no crash hook.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn reached_after(_step: &str) {}

#[cfg(test)]
mod tests {
    #[test]
    fn an_unarmed_point_returns() {
        // The unit tests run without the variable set: reaching a point does nothing.
        assert!(std::env::var(super::ENV).is_err());
        super::reached("clone_restore");
        super::reached_after("start");
    }
}
