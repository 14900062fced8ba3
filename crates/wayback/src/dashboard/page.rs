//! The dashboard page of one instance: an HTML shell that names nothing but the instance id, and
//! the static assets it loads (`/dashboard/assets/{name}`), compiled into the binary so that the
//! broker downloads nothing at run time and serves everything itself.
//!
//! Everything the page shows comes from the JSON it polls (`/dashboard/instances/{id}/data`,
//! [`super::data`]); the script draws it. The shell carries no inline script or style, so the
//! dashboard's CSP (`script-src 'self'; style-src 'self'`) holds without exceptions; the script
//! finds the instance id in the `data-instance` attribute of `<body>`.
//!
//! Imports `domain` only (and the dashboard's `escape`).

use super::escape;
use crate::domain::InstanceId;

/// Bumped with the assets' content, so that a cached old script never meets a new document.
const ASSET_VERSION: &str = "1";

const CSS: &str = include_str!("assets/dashboard.css");
const JS: &str = include_str!("assets/dashboard.js");
const FAVICON: &str = include_str!("assets/favicon.svg");

/// The page shell for instance `id`.
pub fn html(id: &InstanceId) -> String {
    let id = escape(id.as_str());
    format!(
        r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>Wayback PostgreSQL</title>
<link rel="icon" href="/dashboard/assets/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/dashboard/assets/dashboard.css?v={ASSET_VERSION}">
<script src="/dashboard/assets/dashboard.js?v={ASSET_VERSION}" defer></script>
</head>
<body data-instance="{id}">
<a class="skip" href="#main">Skip to content</a>
<header class="top">
  <div class="brand"><img src="/dashboard/assets/favicon.svg" alt="" width="28" height="28"><span>Wayback</span></div>
  <div class="title">
    <h1 id="name">Loading…</h1>
    <ul class="facts" id="facts" aria-label="Instance facts"></ul>
  </div>
  <div class="status">
    <p id="refresh" class="refresh" role="status" aria-live="polite">Connecting…</p>
    <form method="post" action="/dashboard/logout"><button type="submit" class="quiet">Sign out</button></form>
  </div>
</header>
<main id="main">
  <div id="notice" class="notice" hidden role="status"></div>

  <section class="card wide" aria-labelledby="timeline-h">
    <div class="card-head">
      <h2 id="timeline-h">Restore timeline</h2>
      <div class="range" role="group" aria-label="Time range">
        <button type="button" data-range="86400" aria-pressed="false">24 h</button>
        <button type="button" data-range="604800" aria-pressed="false">7 days</button>
        <button type="button" data-range="0" aria-pressed="true">Whole window</button>
      </div>
    </div>
    <p class="lead" id="window-text"></p>
    <div class="timeline" id="timeline" tabindex="0" role="img" aria-label="Restore timeline"></div>
    <ul class="legend" id="timeline-legend" aria-label="Legend">
      <li><span class="sw sw-window"></span>Restorable</li>
      <li><span class="sw sw-backup"></span>Base backup</li>
      <li><span class="sw sw-event"></span>Rename, delete, clone, failover</li>
      <li><span class="sw sw-pass"></span>Drill passed</li>
      <li><span class="sw sw-fail"></span>Drill failed</li>
    </ul>
    <div class="hint" id="hint" aria-live="polite">
      <p class="hint-title" id="hint-title">Point at the timeline (or focus it and use ← →) to pick a moment to restore to.</p>
      <div id="hint-commands"></div>
    </div>
  </section>

  <div class="grid">
    <section class="card" aria-labelledby="archive-h">
      <h2 id="archive-h">Archive</h2>
      <dl class="stats" id="archive"></dl>
    </section>
    <section class="card" aria-labelledby="replicas-h">
      <h2 id="replicas-h">Replicas</h2>
      <div id="replicas"></div>
    </section>
  </div>

  <section class="card wide" aria-labelledby="activity-h">
    <div class="card-head">
      <h2 id="activity-h">The last hour</h2>
      <p class="sub" id="activity-sub"></p>
    </div>
    <div class="charts">
      <figure class="chart">
        <figcaption>Sessions by state</figcaption>
        <div id="chart-sessions" class="plot"></div>
        <ul class="legend" id="legend-sessions"></ul>
      </figure>
      <figure class="chart">
        <figcaption>Sessions waiting on a lock</figcaption>
        <div id="chart-locks" class="plot"></div>
      </figure>
      <figure class="chart">
        <figcaption>Longest open transaction</figcaption>
        <div id="chart-xact" class="plot"></div>
      </figure>
    </div>
  </section>

  <div class="grid">
    <section class="card" aria-labelledby="locks-h">
      <h2 id="locks-h">Blocking now</h2>
      <div id="locks"></div>
    </section>
    <section class="card" aria-labelledby="checks-h">
      <h2 id="checks-h">Health checks</h2>
      <ul class="checks" id="checks"></ul>
    </section>
  </div>

  <section class="card wide" aria-labelledby="queries-h">
    <h2 id="queries-h">Top queries <span class="sub">by total time</span></h2>
    <div id="queries" class="table-wrap"></div>
  </section>
</main>
<footer class="foot"><span>Instance <code id="instance-id">{id}</code></span><span>Served by the Wayback broker · refreshes every 5 s while this tab is visible</span></footer>
</body>
</html>
"##
    )
}

/// `/dashboard/assets/{name}`: `(content type, bytes)`, None for a name that is not one.
pub fn asset(name: &str) -> Option<(&'static str, &'static [u8])> {
    match name {
        "dashboard.css" => Some(("text/css; charset=utf-8", CSS.as_bytes())),
        "dashboard.js" => Some(("text/javascript; charset=utf-8", JS.as_bytes())),
        "favicon.svg" => Some(("image/svg+xml", FAVICON.as_bytes())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> InstanceId {
        InstanceId::parse("5b0e3c8e-6c4f-4c0b-9d7e-0c1d2e3f4a5b").unwrap()
    }

    #[test]
    fn the_shell_names_the_instance_and_nothing_inline() {
        let page = html(&id());
        assert!(page.contains(r#"data-instance="5b0e3c8e-6c4f-4c0b-9d7e-0c1d2e3f4a5b""#));
        // The CSP allows no inline script or style: every script has a src, no style at all.
        assert!(!page.contains("<style"), "inline style");
        assert!(!page.contains("style="), "inline style attribute");
        for script in page.split("<script").skip(1) {
            assert!(script.trim_start().starts_with("src="), "inline script");
        }
        // No inline event handler (` onclick=`, ` onload=`, …).
        let handler = page.split(" on").skip(1).any(|rest| {
            let word: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
            !word.is_empty() && rest[word.len()..].starts_with('=')
        });
        assert!(!handler, "inline event handler");
    }

    #[test]
    fn the_assets_are_served_by_name_and_nothing_else_is() {
        assert_eq!(asset("dashboard.css").unwrap().0, "text/css; charset=utf-8");
        assert!(asset("dashboard.js").unwrap().1.len() > 1000);
        assert_eq!(asset("favicon.svg").unwrap().0, "image/svg+xml");
        for bad in [
            "",
            "../page.rs",
            "dashboard.js/",
            "DASHBOARD.CSS",
            "page.rs",
        ] {
            assert!(asset(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn every_asset_the_shell_links_is_served() {
        let page = html(&id());
        for part in page.split("/dashboard/assets/").skip(1) {
            let name = part.split(['"', '?']).next().unwrap();
            assert!(asset(name).is_some(), "{name}");
        }
    }
}
