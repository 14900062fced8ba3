//! Finding the Wayback broker for a Cloud Foundry API endpoint.
//!
//! In order: `--broker-url` / `WAYBACK_BROKER_URL`; the URL remembered for this API endpoint
//! in `$CF_HOME/.cf/wayback.json`; the `dashboard_url` of the targeted space's service
//! instances, which the broker sets to `<its external URL>/dashboard/instances/<id>`. What
//! discovery finds is remembered; a remembered URL that no longer answers is discovered
//! again. A space whose Wayback instances are all deleted has no dashboard URL to learn from,
//! which is why remembering matters (and why `--broker-url` exists).
//!
//! Imports `cc_client` and `cli_error`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::cc_client::CcClient;
use crate::cli_error::CliError;

const DASHBOARD_PATH: &str = "/dashboard/instances/";

/// The broker's base URL from an instance's `dashboard_url`; `None` for other brokers'.
pub fn broker_base_from_dashboard(dashboard_url: &str) -> Option<String> {
    let (base, id) = dashboard_url.split_once(DASHBOARD_PATH)?;
    let scheme_ok = base.starts_with("https://") || base.starts_with("http://");
    let host = base.split_once("://").map(|(_, h)| h).unwrap_or("");
    if !scheme_ok || host.is_empty() || id.is_empty() || id.contains('/') {
        return None;
    }
    Some(base.trim_end_matches('/').to_string())
}

/// Where the broker URL came from; a remembered one may be stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flag,
    Remembered,
    Discovered,
}

/// `$CF_HOME/.cf/wayback.json`: `{"brokers": {"<api endpoint>": "<broker url>"}}`.
pub struct BrokerMemory {
    path: Option<PathBuf>,
}

impl BrokerMemory {
    pub fn new(cf_home: Option<&Path>) -> BrokerMemory {
        BrokerMemory {
            path: cf_home.map(|h| h.join(".cf").join("wayback.json")),
        }
    }

    fn read(&self) -> BTreeMap<String, String> {
        let Some(text) = self
            .path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
        else {
            return BTreeMap::new();
        };
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        serde_json::from_value(v["brokers"].clone()).unwrap_or_default()
    }

    pub fn recall(&self, api: &str) -> Option<String> {
        self.read().remove(api)
    }

    /// Best effort: failing to remember only costs a discovery next time.
    pub fn remember(&self, api: &str, broker: &str) {
        let Some(path) = &self.path else { return };
        let mut brokers = self.read();
        if brokers.get(api).map(String::as_str) == Some(broker) {
            return;
        }
        brokers.insert(api.to_string(), broker.to_string());
        let text = serde_json::to_string_pretty(&serde_json::json!({ "brokers": brokers }))
            .expect("a map of strings serialises");
        let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        let _ = std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")));
        if std::fs::write(&tmp, text + "\n").is_ok() && std::fs::rename(&tmp, path).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

/// The broker base URLs named by the space's instances' dashboard URLs, most common first.
pub async fn discover(cc: &CcClient<'_>, space_guid: &str) -> Result<Vec<String>, CliError> {
    let instances = cc.service_instances(space_guid, None).await?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for i in &instances {
        if let Some(base) = i["dashboard_url"]
            .as_str()
            .and_then(broker_base_from_dashboard)
        {
            *counts.entry(base).or_default() += 1;
        }
    }
    let mut found: Vec<(String, usize)> = counts.into_iter().collect();
    found.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    Ok(found.into_iter().map(|(url, _)| url).collect())
}

/// The error when nothing names a broker.
pub fn not_found(space_name: &str, prefix: &str) -> CliError {
    CliError::Usage(format!(
        "cannot find the Wayback broker: no service instance in space {space_name} has a Wayback \
         dashboard URL. Pass the broker's URL once with `{prefix} --broker-url https://…` (or set \
         WAYBACK_BROKER_URL); it is remembered for this API endpoint."
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broker_base_is_what_precedes_the_dashboard_path() {
        // (dashboard_url, expected base, why)
        for (url, want, why) in [
            (
                "https://wayback.sys.example.com/dashboard/instances/3f2a9c1e-8b7a-4d6c-b5e4-1a2b3c4d5e6f",
                Some("https://wayback.sys.example.com"),
                "the broker's own shape",
            ),
            (
                "http://127.0.0.1:8080/dashboard/instances/abc",
                Some("http://127.0.0.1:8080"),
                "a port, plain http",
            ),
            (
                "https://example.com/brokers/wayback/dashboard/instances/abc",
                Some("https://example.com/brokers/wayback"),
                "the broker behind a path prefix",
            ),
            ("https://service-broker.example.org/dashboard", None, "another broker's dashboard"),
            ("https://x.example.com/dashboard/instances/", None, "no instance id"),
            ("https://x.example.com/dashboard/instances/a/b", None, "more path after the id"),
            ("/dashboard/instances/abc", None, "no scheme and host"),
            ("ftp://x/dashboard/instances/abc", None, "not http"),
        ] {
            assert_eq!(broker_base_from_dashboard(url).as_deref(), want, "{why}: {url}");
        }
    }

    #[test]
    fn remembers_per_api_endpoint() {
        let home = tempfile::tempdir().unwrap();
        let memory = BrokerMemory::new(Some(home.path()));
        assert_eq!(memory.recall("https://api.a"), None);
        memory.remember("https://api.a", "https://wayback.a");
        memory.remember("https://api.b", "https://wayback.b");
        assert_eq!(
            memory.recall("https://api.a").as_deref(),
            Some("https://wayback.a")
        );
        memory.remember("https://api.a", "https://wayback.a2");
        let again = BrokerMemory::new(Some(home.path()));
        assert_eq!(
            again.recall("https://api.a").as_deref(),
            Some("https://wayback.a2")
        );
        assert_eq!(
            again.recall("https://api.b").as_deref(),
            Some("https://wayback.b")
        );
        // No home: nothing remembered, nothing fails.
        let nowhere = BrokerMemory::new(None);
        nowhere.remember("https://api.a", "x");
        assert_eq!(nowhere.recall("https://api.a"), None);
    }
}
