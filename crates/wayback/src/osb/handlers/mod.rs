//! One handler per OSB endpoint: parse, call the broker, shape the response.

pub mod bindings;
pub mod instances;
pub mod misc;

use actix_web::web;

use super::AppState;

pub type State = web::Data<AppState>;

/// Seconds the platform should wait before polling an operation again.
pub const RETRY_AFTER_SECS: &str = "2";
