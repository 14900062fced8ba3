//! The dashboard page and its static assets (owned by the page work of issue 19; this is the
//! stub the sign-in is built around). Everything the page needs is served by the broker: no
//! script, style or font is fetched from anywhere else at run time.
//!
//! Reads nothing: [`html`] is only called once the session names this instance and the Cloud
//! Controller said the user may read it (`dashboard/mod.rs`).

use crate::domain::InstanceId;

/// The page of instance `id` (its data comes later from `GET /dashboard/instances/{id}/data`).
pub fn html(id: &InstanceId) -> String {
    format!(
        "<!doctype html><html lang=en><meta charset=utf-8><title>Wayback PostgreSQL</title>\
         <h1>Wayback PostgreSQL</h1><p id=instance data-instance=\"{}\">Loading…</p></html>",
        id.as_str()
    )
}

/// A static asset by file name: its content type and bytes; `None` for any other name.
pub fn asset(name: &str) -> Option<(&'static str, &'static [u8])> {
    let _ = name;
    None
}
