//! The OSB catalog: `catalog.json` loaded, validated and served verbatim.
//!
//! Plans carry their PostgreSQL settings in `metadata.postgresql.settings`. Validation happens
//! once, at start-up, and a broken catalog stops the broker with a message naming the file and
//! the problem. Only settings Wayback knows are allowed: a typo must not reach a cluster's
//! `postgresql.conf` and stop it from starting. Wayback's own per-plan policy sits under
//! `metadata.wayback`: the archive policy (`archive`) and `require_tls` (TCP connections must
//! use TLS, as with the `tls.require` setting) and `undo.keep_hours` (how long a deleted
//! instance's data directory is kept for a fast undo), and `ha` (a primary with a standby under
//! Patroni, [`ha`]), and `idle.stop_after_secs` (stop an idle instance, start it on the first
//! connection: [`idle`]). Must not import anything but `domain`.

mod ha;
mod idle;

pub use ha::{HaDurability, HaPolicy, HA_MEMBERS};
pub use idle::MAX_STOP_AFTER_SECS;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

/// The catalog compiled into the binary (the repository's `catalog.json`).
pub const BUILTIN_CATALOG: &str = include_str!("../../../../catalog.json");

/// PostgreSQL settings a plan may set. The broker manages connection, WAL and archive settings
/// itself; these are the tuning knobs.
pub const KNOWN_SETTINGS: &[&str] = &[
    "shared_buffers",
    "max_connections",
    "work_mem",
    "maintenance_work_mem",
    "effective_cache_size",
    "max_wal_size",
    "min_wal_size",
    "wal_buffers",
    "checkpoint_timeout",
    "checkpoint_completion_target",
    "random_page_cost",
    "effective_io_concurrency",
    "temp_buffers",
    "max_worker_processes",
    "max_parallel_workers",
    "max_parallel_workers_per_gather",
    "max_locks_per_transaction",
    "max_prepared_transactions",
    "max_wal_senders",
    "statement_timeout",
    "idle_in_transaction_session_timeout",
    "log_min_duration_statement",
    "default_statistics_target",
    "autovacuum_naptime",
    "autovacuum_max_workers",
];

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read catalog {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("catalog {path} is not valid: {message}")]
    Invalid { path: String, message: String },
}

/// A validated catalog.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// The document as loaded; served at `GET /v2/catalog` with the dashboard client
    /// ([`Catalog::served_document`]).
    document: Value,
    services: Vec<Service>,
    /// Advertised as every service's `dashboard_client` when the dashboard's sign-in is set up.
    dashboard_client: Option<DashboardClient>,
}

/// The UAA client of the dashboard's single sign-on, as OSB v2.17 `dashboard_client`: the Cloud
/// Controller creates a UAA client with this id, secret and redirect URI when the broker is
/// registered. `Debug` does not show the secret.
#[derive(Debug, Clone)]
pub struct DashboardClient {
    pub id: String,
    pub secret: secrecy::SecretString,
    pub redirect_uri: String,
}

#[derive(Debug, Clone)]
pub struct Service {
    pub id: String,
    pub name: String,
    pub plans: Vec<Plan>,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub id: String,
    pub name: String,
    /// PostgreSQL settings, name → value.
    pub settings: BTreeMap<String, String>,
    /// The plan's `maintenance_info.version`, if it declares one.
    pub maintenance_version: Option<String>,
    /// How the plan's instances are archived (`metadata.wayback.archive`).
    pub archive: ArchivePolicy,
    /// The plan's clusters refuse TCP connections without TLS (`metadata.wayback.require_tls`).
    pub require_tls: bool,
    /// Hours a deleted instance's data directory is kept for a fast undo
    /// (`metadata.wayback.undo.keep_hours`; 0: removed at once).
    pub undo_keep_hours: u64,
    /// The plan's instances have a standby under Patroni (`metadata.wayback.ha`); `None`: one
    /// member.
    pub ha: Option<HaPolicy>,
    /// Seconds without a client or replication session after which an instance is stopped,
    /// to be started by the next connection (`metadata.wayback.idle.stop_after_secs`); `None`:
    /// never. Never set on an HA plan.
    pub idle_stop_after_secs: Option<u64>,
}

/// A plan's archive policy, from `metadata.wayback.archive`; every field is optional.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchivePolicy {
    /// A commit reaches the archive within this many seconds; absent: the broker's
    /// `wal.archive_timeout_secs`.
    pub archive_interval_secs: Option<u64>,
    /// A base backup is taken when the newest is this old.
    pub base_backup_every_hours: u64,
    /// A base backup is also taken once the WAL archived since the newest one passes this share
    /// of the database's size, so that a restore never replays much more than it copies.
    pub base_backup_wal_share: f64,
    /// A base backup is never due for WAL volume sooner than this many minutes after the newest
    /// one: each copies the whole database, and replaying this long a stretch of WAL is cheap
    /// next to copying it again and again.
    pub base_backup_min_minutes: u64,
    /// Point-in-time restore reaches back this many days; older backups and WAL are pruned.
    pub recovery_window_days: u64,
    /// A restore drill proves the archive restorable at least this often (issue 18).
    pub drill_every_days: u64,
}

impl Default for ArchivePolicy {
    fn default() -> Self {
        Self {
            archive_interval_secs: None,
            base_backup_every_hours: 24,
            base_backup_wal_share: 0.5,
            base_backup_min_minutes: 30,
            recovery_window_days: 7,
            drill_every_days: 7,
        }
    }
}

impl ArchivePolicy {
    fn validate(&self) -> Result<(), String> {
        let p = "metadata.wayback.archive";
        if self
            .archive_interval_secs
            .is_some_and(|s| !(1..=3600).contains(&s))
        {
            return Err(format!("{p}.archive_interval_secs must be 1 to 3600"));
        }
        if !(1..=24 * 31).contains(&self.base_backup_every_hours) {
            return Err(format!("{p}.base_backup_every_hours must be 1 to 744"));
        }
        if !(self.base_backup_wal_share > 0.0 && self.base_backup_wal_share <= 100.0) {
            return Err(format!(
                "{p}.base_backup_wal_share must be more than 0 and at most 100"
            ));
        }
        if !(1..=24 * 60).contains(&self.base_backup_min_minutes) {
            return Err(format!("{p}.base_backup_min_minutes must be 1 to 1440"));
        }
        if !(1..=3650).contains(&self.recovery_window_days) {
            return Err(format!("{p}.recovery_window_days must be 1 to 3650"));
        }
        if !(1..=365).contains(&self.drill_every_days) {
            return Err(format!("{p}.drill_every_days must be 1 to 365"));
        }
        Ok(())
    }
}

/// Reads `metadata.wayback.archive`.
fn plan_archive_policy(metadata: Option<&Value>) -> Result<ArchivePolicy, String> {
    let Some(v) = metadata
        .and_then(|m| m.get("wayback"))
        .and_then(|w| w.get("archive"))
    else {
        return Ok(ArchivePolicy::default());
    };
    let policy: ArchivePolicy =
        serde_json::from_value(v.clone()).map_err(|e| format!("metadata.wayback.archive: {e}"))?;
    policy.validate()?;
    Ok(policy)
}

/// Reads `metadata.wayback.undo.keep_hours`: absent is 24; at most a year.
fn plan_undo_keep_hours(metadata: Option<&Value>) -> Result<u64, String> {
    const DEFAULT_KEEP_HOURS: u64 = 24;
    let Some(undo) = metadata
        .and_then(|m| m.get("wayback"))
        .and_then(|w| w.get("undo"))
    else {
        return Ok(DEFAULT_KEEP_HOURS);
    };
    let p = "metadata.wayback.undo";
    let Some(fields) = undo.as_object() else {
        return Err(format!("{p} must be an object"));
    };
    if let Some(k) = fields.keys().find(|k| k.as_str() != "keep_hours") {
        return Err(format!("{p}: unknown field {k:?} (expected keep_hours)"));
    }
    match fields.get("keep_hours") {
        None => Ok(DEFAULT_KEEP_HOURS),
        Some(v) => v.as_u64().filter(|h| *h <= 24 * 366).ok_or_else(|| {
            format!("{p}.keep_hours must be a whole number of hours, 0 to 8784, not {v}")
        }),
    }
}

/// Reads `metadata.wayback.require_tls`: absent is false.
fn plan_require_tls(metadata: Option<&Value>) -> Result<bool, String> {
    match metadata
        .and_then(|m| m.get("wayback"))
        .and_then(|w| w.get("require_tls"))
    {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(format!(
            "metadata.wayback.require_tls must be true or false, not {other}"
        )),
    }
}

#[derive(Deserialize)]
struct RawCatalog {
    services: Vec<RawService>,
}

#[derive(Deserialize)]
struct RawService {
    id: String,
    name: String,
    description: String,
    bindable: bool,
    plans: Vec<RawPlan>,
}

#[derive(Deserialize)]
struct RawPlan {
    id: String,
    name: String,
    description: String,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    maintenance_info: Option<RawMaintenanceInfo>,
}

#[derive(Deserialize)]
struct RawMaintenanceInfo {
    version: String,
}

impl Catalog {
    /// Loads `path`, or the built-in catalog when `None`.
    pub fn load(path: Option<&Path>) -> Result<Catalog, CatalogError> {
        match path {
            None => Catalog::parse(BUILTIN_CATALOG, "built-in catalog.json"),
            Some(p) => {
                let name = p.display().to_string();
                let text = std::fs::read_to_string(p).map_err(|source| CatalogError::Read {
                    path: name.clone(),
                    source,
                })?;
                Catalog::parse(&text, &name)
            }
        }
    }

    /// Parses and validates a catalog; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Catalog, CatalogError> {
        let invalid = |message: String| CatalogError::Invalid {
            path: origin.to_string(),
            message,
        };
        let document: Value =
            serde_json::from_str(text).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let raw: RawCatalog = serde_json::from_value(document.clone())
            .map_err(|e| invalid(format!("missing or mistyped field: {e}")))?;
        if raw.services.is_empty() {
            return Err(invalid("it offers no service".into()));
        }
        let mut ids = HashSet::new();
        let mut service_names = HashSet::new();
        let mut services = Vec::new();
        for s in raw.services {
            let _ = (&s.description, s.bindable);
            for (field, value) in [
                ("id", &s.id),
                ("name", &s.name),
                ("description", &s.description),
            ] {
                if value.trim().is_empty() {
                    return Err(invalid(format!("a service has an empty {field}")));
                }
            }
            if !ids.insert(s.id.clone()) {
                return Err(invalid(format!("id {:?} is used twice", s.id)));
            }
            if !service_names.insert(s.name.clone()) {
                return Err(invalid(format!("service name {:?} is used twice", s.name)));
            }
            if s.plans.is_empty() {
                return Err(invalid(format!("service {:?} has no plan", s.name)));
            }
            let mut plan_names = HashSet::new();
            let mut plans = Vec::new();
            for p in s.plans {
                let where_ = format!("plan {:?} of service {:?}", p.name, s.name);
                for (field, value) in [
                    ("id", &p.id),
                    ("name", &p.name),
                    ("description", &p.description),
                ] {
                    if value.trim().is_empty() {
                        return Err(invalid(format!("{where_} has an empty {field}")));
                    }
                }
                if !ids.insert(p.id.clone()) {
                    return Err(invalid(format!("id {:?} is used twice", p.id)));
                }
                if !plan_names.insert(p.name.clone()) {
                    return Err(invalid(format!("{where_}: plan name used twice")));
                }
                let settings = plan_settings(p.metadata.as_ref())
                    .map_err(|m| invalid(format!("{where_}: {m}")))?;
                let archive = plan_archive_policy(p.metadata.as_ref())
                    .map_err(|m| invalid(format!("{where_}: {m}")))?;
                let require_tls = plan_require_tls(p.metadata.as_ref())
                    .map_err(|m| invalid(format!("{where_}: {m}")))?;
                let undo_keep_hours = plan_undo_keep_hours(p.metadata.as_ref())
                    .map_err(|m| invalid(format!("{where_}: {m}")))?;
                let ha = ha::plan_ha(p.metadata.as_ref())
                    .map_err(|m| invalid(format!("{where_}: {m}")))?;
                let idle_stop_after_secs = idle::plan_idle_stop(p.metadata.as_ref())
                    .and_then(|idle| idle::check_not_ha(idle, ha.is_some()).map(|()| idle))
                    .map_err(|m| invalid(format!("{where_}: {m}")))?;
                plans.push(Plan {
                    id: p.id,
                    name: p.name,
                    settings,
                    archive,
                    require_tls,
                    undo_keep_hours,
                    ha,
                    idle_stop_after_secs,
                    maintenance_version: p.maintenance_info.map(|m| m.version),
                });
            }
            services.push(Service {
                id: s.id,
                name: s.name,
                plans,
            });
        }
        Ok(Catalog {
            document,
            services,
            dashboard_client: None,
        })
    }

    /// This catalog advertising `client` (None: no dashboard client).
    pub fn with_dashboard_client(mut self, client: Option<DashboardClient>) -> Catalog {
        self.dashboard_client = client;
        self
    }

    /// The catalog document as loaded (without a dashboard client).
    pub fn document(&self) -> &Value {
        &self.document
    }

    /// The document `GET /v2/catalog` serves: every service's `dashboard_client` is the one
    /// the settings give, or absent without one (a client written into the catalog file is
    /// not served: the broker can only finish sign-ins of a client whose secret it knows).
    pub fn served_document(&self) -> Value {
        use secrecy::ExposeSecret;
        let mut document = self.document.clone();
        if let Some(services) = document.get_mut("services").and_then(Value::as_array_mut) {
            for service in services.iter_mut().filter_map(Value::as_object_mut) {
                service.remove("dashboard_client");
                if let Some(client) = &self.dashboard_client {
                    service.insert(
                        "dashboard_client".into(),
                        serde_json::json!({
                            "id": client.id,
                            "secret": client.secret.expose_secret(),
                            "redirect_uri": client.redirect_uri,
                        }),
                    );
                }
            }
        }
        document
    }

    pub fn services(&self) -> &[Service] {
        &self.services
    }

    pub fn service(&self, service_id: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.id == service_id)
    }

    /// The plan `plan_id` of service `service_id`.
    pub fn plan(&self, service_id: &str, plan_id: &str) -> Option<&Plan> {
        self.service(service_id)?
            .plans
            .iter()
            .find(|p| p.id == plan_id)
    }
}

/// Reads `metadata.postgresql.settings`: known names only, values as plain strings.
fn plan_settings(metadata: Option<&Value>) -> Result<BTreeMap<String, String>, String> {
    let Some(settings) = metadata
        .and_then(|m| m.get("postgresql"))
        .and_then(|p| p.get("settings"))
    else {
        return Ok(BTreeMap::new());
    };
    let Some(map) = settings.as_object() else {
        return Err("metadata.postgresql.settings must be an object".into());
    };
    let mut out = BTreeMap::new();
    for (name, value) in map {
        if !KNOWN_SETTINGS.contains(&name.as_str()) {
            return Err(format!(
                "unknown PostgreSQL setting {name:?} in metadata.postgresql.settings (known: {})",
                KNOWN_SETTINGS.join(", ")
            ));
        }
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return Err(format!("setting {name:?} must be a string or a number")),
        };
        let ok = !text.is_empty()
            && text.len() <= 64
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_ ".contains(&b));
        if !ok {
            return Err(format!(
                "setting {name:?} has value {text:?}; use letters, digits, '.', '-', '_' and spaces only"
            ));
        }
        out.insert(name.clone(), text);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dashboard_client_is_served_only_when_given_and_never_in_debug() {
        let plain = Catalog::load(None).unwrap();
        let served = plain.served_document();
        assert!(served["services"][0].get("dashboard_client").is_none());
        let with = plain.with_dashboard_client(Some(DashboardClient {
            id: "wayback-dashboard".into(),
            secret: "s3cret-value".to_string().into(),
            redirect_uri: "https://broker.example.org/dashboard/callback".into(),
        }));
        let served = with.served_document();
        assert_eq!(
            served["services"][0]["dashboard_client"],
            serde_json::json!({
                "id": "wayback-dashboard",
                "secret": "s3cret-value",
                "redirect_uri": "https://broker.example.org/dashboard/callback",
            })
        );
        assert!(with.document()["services"][0]
            .get("dashboard_client")
            .is_none());
        assert!(!format!("{with:?}").contains("s3cret-value"));
    }

    #[test]
    fn builtin_catalog_is_valid_and_has_two_plans_with_settings() {
        let c = Catalog::load(None).unwrap();
        let s = &c.services()[0];
        assert_eq!(s.name, "postgresql");
        assert!(s.plans.len() >= 2);
        for p in &s.plans {
            assert!(p.settings.contains_key("shared_buffers"), "{}", p.name);
            assert!(p.settings.contains_key("max_connections"), "{}", p.name);
        }
        let doc = c.document();
        for flag in [
            "bindable",
            "instances_retrievable",
            "bindings_retrievable",
            "plan_updateable",
            "allow_context_updates",
        ] {
            assert_eq!(doc["services"][0][flag], true, "{flag}");
        }
    }

    fn with(mutate: impl FnOnce(&mut Value)) -> Result<Catalog, CatalogError> {
        let mut doc: Value = serde_json::from_str(BUILTIN_CATALOG).unwrap();
        mutate(&mut doc);
        Catalog::parse(&doc.to_string(), "test.json")
    }

    #[test]
    fn broken_catalogs_are_refused_with_the_reason() {
        type Mutation = fn(&mut Value);
        let cases: &[(&str, Mutation, &str)] = &[
            (
                "duplicate plan id",
                |d| {
                    let id = d["services"][0]["plans"][0]["id"].clone();
                    d["services"][0]["plans"][1]["id"] = id;
                },
                "used twice",
            ),
            (
                "duplicate plan name",
                |d| d["services"][0]["plans"][1]["name"] = "small".into(),
                "plan name used twice",
            ),
            (
                "missing plan id",
                |d| {
                    d["services"][0]["plans"][0]
                        .as_object_mut()
                        .unwrap()
                        .remove("id");
                },
                "missing",
            ),
            (
                "empty description",
                |d| d["services"][0]["plans"][0]["description"] = "".into(),
                "empty description",
            ),
            (
                "unknown setting",
                |d| {
                    d["services"][0]["plans"][0]["metadata"]["postgresql"]["settings"]
                        ["shared_bufers"] = "1".into()
                },
                "unknown PostgreSQL setting",
            ),
            (
                "injection in value",
                |d| {
                    d["services"][0]["plans"][0]["metadata"]["postgresql"]["settings"]["work_mem"] =
                        "4MB'\nfsync=off".into()
                },
                "use letters",
            ),
            (
                "require_tls not a boolean",
                |d| {
                    d["services"][0]["plans"][0]["metadata"]["wayback"]["require_tls"] =
                        "yes".into()
                },
                "require_tls must be true or false",
            ),
            (
                "no plans",
                |d| d["services"][0]["plans"] = serde_json::json!([]),
                "has no plan",
            ),
            (
                "no services",
                |d| d["services"] = serde_json::json!([]),
                "no service",
            ),
        ];
        for (why, mutate, expect) in cases {
            let err = with(mutate).expect_err(why).to_string();
            assert!(err.contains("test.json"), "{why}: {err}");
            assert!(err.contains(expect), "{why}: {err}");
        }
    }

    #[test]
    fn require_tls_is_read_from_the_plans_wayback_metadata() {
        let c = Catalog::load(None).unwrap();
        assert!(c.services()[0].plans.iter().all(|p| !p.require_tls));
        let c = with(|d| {
            d["services"][0]["plans"][1]["metadata"]["wayback"]["require_tls"] = true.into()
        })
        .unwrap();
        let plans = &c.services()[0].plans;
        assert_eq!((plans[0].require_tls, plans[1].require_tls), (false, true));
    }

    #[test]
    fn undo_keep_hours_is_read_from_the_plans_wayback_metadata() {
        let c = Catalog::load(None).unwrap();
        assert!(c.services()[0]
            .plans
            .iter()
            .all(|p| p.undo_keep_hours == 24));
        let c = with(|d| {
            d["services"][0]["plans"][1]["metadata"]["wayback"]["undo"] =
                serde_json::json!({"keep_hours": 0})
        })
        .unwrap();
        assert_eq!(c.services()[0].plans[1].undo_keep_hours, 0);
        for bad in [
            serde_json::json!({"keep_hours": -1}),
            serde_json::json!({"keep_hours": "24"}),
            serde_json::json!({"keep_hours": 1.5}),
            serde_json::json!({"keep": 1}),
            serde_json::json!(3),
        ] {
            let e = with(|d| d["services"][0]["plans"][0]["metadata"]["wayback"]["undo"] = bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("metadata.wayback.undo"), "{e}");
        }
    }

    #[test]
    fn ha_is_read_from_the_plans_wayback_metadata() {
        let c = Catalog::load(None).unwrap();
        let plans = &c.services()[0].plans;
        let ha = plans
            .iter()
            .find(|p| p.name == "ha-small")
            .expect("ha-small");
        assert_eq!(
            ha.ha,
            Some(HaPolicy {
                members: 2,
                durability: HaDurability::Sync
            })
        );
        assert!(plans
            .iter()
            .filter(|p| p.name != "ha-small")
            .all(|p| p.ha.is_none()));
        let c = with(|d| {
            d["services"][0]["plans"][0]["metadata"]["wayback"]["ha"] =
                serde_json::json!({"members": 2, "durability": "async"})
        })
        .unwrap();
        assert_eq!(
            c.services()[0].plans[0].ha.unwrap().durability,
            HaDurability::Async
        );
        for (bad, expect) in [
            (
                serde_json::json!({"members": 3, "durability": "sync"}),
                "members must be 2",
            ),
            (
                serde_json::json!({"members": 2, "durability": "quorum"}),
                "durability must be",
            ),
            (serde_json::json!({"members": 2}), "durability is missing"),
            (
                serde_json::json!({"durability": "sync"}),
                "members is missing",
            ),
            (
                serde_json::json!({"members": "2", "durability": "sync"}),
                "metadata.wayback.ha",
            ),
            (
                serde_json::json!({"members": 2, "durability": "sync", "x": 1}),
                "unknown field",
            ),
            (serde_json::json!(true), "must be an object"),
        ] {
            let e = with(|d| d["services"][0]["plans"][0]["metadata"]["wayback"]["ha"] = bad)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("metadata.wayback.ha") && e.contains(expect),
                "{e}"
            );
            assert!(e.contains("plan \"small\""), "{e}");
        }
    }

    #[test]
    fn idle_stop_is_read_from_the_plans_wayback_metadata() {
        let c = Catalog::load(None).unwrap();
        let plans = &c.services()[0].plans;
        let dev = plans.iter().find(|p| p.name == "dev").expect("dev");
        assert_eq!(dev.idle_stop_after_secs, Some(300));
        assert!(plans
            .iter()
            .filter(|p| p.name != "dev")
            .all(|p| p.idle_stop_after_secs.is_none()));
        let c = with(|d| {
            d["services"][0]["plans"][0]["metadata"]["wayback"]["idle"] =
                serde_json::json!({"stop_after_secs": 60})
        })
        .unwrap();
        assert_eq!(c.services()[0].plans[0].idle_stop_after_secs, Some(60));
        let e = with(|d| {
            d["services"][0]["plans"][0]["metadata"]["wayback"]["idle"] =
                serde_json::json!({"stop_after_secs": 0})
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("plan \"small\"") && e.contains("stop_after_secs"),
            "{e}"
        );
        let ha = plans.iter().position(|p| p.name == "ha-small").unwrap();
        let e = with(|d| {
            d["services"][0]["plans"][ha]["metadata"]["wayback"]["idle"] =
                serde_json::json!({"stop_after_secs": 300})
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("plan \"ha-small\"") && e.contains("cannot be set on an HA plan"),
            "{e}"
        );
    }

    #[test]
    fn finds_plans_by_service_and_id() {
        let c = Catalog::load(None).unwrap();
        let s = &c.services()[0];
        assert_eq!(c.plan(&s.id, &s.plans[1].id).unwrap().name, s.plans[1].name);
        assert!(c.plan("nope", &s.plans[0].id).is_none());
    }
}
