//! Golden OSB bodies: a response body, with its volatile values replaced by placeholders
//! ([`Norm`]), is compared as JSON with `tests/fixtures/osb/<name>.json`; a golden table holds
//! many cases in one file. `WAYBACK_BLESS=1` rewrites the golden files from what the broker
//! answers; review the diff before committing it. Table tests collect every bad case in
//! [`Problems`] so that one run shows them all.
//!
//! Volatile values are operation ids, GUIDs, the broker's address, and binding secrets and
//! ports; catalog and CF ids are stable and shown as they are.

use std::path::PathBuf;

use reqwest::StatusCode;
use serde_json::{json, Map, Value};

use super::{TestApp, DEV, HA_SMALL, MEDIUM, ORG, SERVICE_ID, SMALL, SPACE};

/// Catalog and CF ids are stable: goldens show them as they are.
const STABLE_IDS: [&str; 7] = [SERVICE_ID, SMALL, MEDIUM, HA_SMALL, DEV, ORG, SPACE];

/// `text` with every byte but RFC 3986's unreserved ones as `%XX`, as `jdbcUrl` carries the CA.
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Replaces volatile values with placeholders.
#[derive(Clone)]
pub struct Norm {
    subs: Vec<(String, String)>,
    numbers: Vec<(u64, String)>,
}

impl Norm {
    pub fn new(app: &TestApp) -> Self {
        let subs = vec![(app.address.clone(), "<broker>".into())];
        Norm {
            subs,
            numbers: vec![],
        }
    }

    pub fn sub(mut self, from: impl Into<String>, to: &str) -> Self {
        self.subs.push((from.into(), to.into()));
        self
    }

    /// Placeholders for a binding's secret and per-cluster values.
    pub fn credentials(self, credentials: &Value) -> Self {
        let text = |k: &str| {
            credentials[k]
                .as_str()
                .expect("credentials field")
                .to_string()
        };
        let port = credentials["port"]
            .as_u64()
            .expect("credentials.port is a number");
        // The CA is the test's own (generated in its data directory); `jdbcUrl` carries it
        // percent-encoded.
        let ca = text("ca_certificate");
        let mut n = self
            .sub(percent_encoded(&ca), "<ca-certificate-percent-encoded>")
            .sub(ca, "<ca-certificate>")
            .sub(text("password"), "<password>")
            .sub(text("username"), "<username>")
            .sub(format!(":{port}/"), ":<port>/");
        n.numbers.push((port, "<port>".into()));
        n
    }

    pub fn apply(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => {
                let mut s = s.clone();
                for (from, to) in &self.subs {
                    s = s.replace(from.as_str(), to);
                }
                Value::String(replace_uuids(&s))
            }
            Value::Number(n) => match self.numbers.iter().find(|(k, _)| n.as_u64() == Some(*k)) {
                Some((_, to)) => Value::String(to.clone()),
                None => v.clone(),
            },
            Value::Array(a) => Value::Array(a.iter().map(|x| self.apply(x)).collect()),
            Value::Object(m) => {
                Value::Object(m.iter().map(|(k, x)| (k.clone(), self.apply(x))).collect())
            }
            other => other.clone(),
        }
    }
}

fn is_uuid(b: &[u8]) -> bool {
    let ok = |(i, c): (usize, &u8)| match i {
        8 | 13 | 18 | 23 => *c == b'-',
        _ => c.is_ascii_hexdigit(),
    };
    b.len() == 36 && b.iter().enumerate().all(ok)
}

/// Every GUID but the stable ones becomes `<uuid>`.
pub fn replace_uuids(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b.get(i..i + 36).filter(|c| is_uuid(c)) {
            Some(c) if !STABLE_IDS.iter().any(|k| k.as_bytes() == c) => {
                out.extend_from_slice(b"<uuid>");
                i += 36;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("only ASCII was replaced")
}

pub fn fixture_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/osb");
    dir.join(format!("{name}.json"))
}

pub fn bless() -> bool {
    std::env::var_os("WAYBACK_BLESS").is_some()
}

/// Compares a normalised body with `tests/fixtures/osb/<name>.json`.
pub fn assert_golden(name: &str, actual: &Value) {
    let path = fixture_path(name);
    let pretty = serde_json::to_string_pretty(actual).unwrap();
    if bless() {
        std::fs::write(&path, pretty + "\n").unwrap();
        return;
    }
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("golden {}: {e}; the body was:\n{pretty}", path.display()));
    let expected: Value = serde_json::from_str(&text).expect("golden is JSON");
    assert_eq!(
        actual,
        &expected,
        "golden {} differs; the body was:\n{pretty}",
        path.display()
    );
}

/// A golden table: `tests/fixtures/osb/<file>.json` maps case names to `{status, body}`.
pub struct GoldenTable {
    file: &'static str,
    expected: Map<String, Value>,
    actual: Map<String, Value>,
}

impl GoldenTable {
    pub fn load(file: &'static str) -> Self {
        let expected = match std::fs::read_to_string(fixture_path(file)) {
            Ok(text) => serde_json::from_str(&text).expect("golden table is a JSON object"),
            Err(_) if bless() => Map::new(),
            Err(e) => panic!("golden table {file}: {e}"),
        };
        GoldenTable {
            file,
            expected,
            actual: Map::new(),
        }
    }

    /// Records the case; returns how it differs from its golden, if it does.
    pub fn check(&mut self, case: &str, status: StatusCode, body: &Value) -> Option<String> {
        let got = json!({ "status": status.as_u16(), "body": body });
        self.actual.insert(case.to_string(), got.clone());
        let file = self.file;
        match self.expected.get(case) {
            _ if bless() => None,
            Some(want) if *want == got => None,
            Some(want) => Some(format!(
                "{case:?} differs from {file}:\n    want {want}\n    got  {got}"
            )),
            None => Some(format!("{case:?} has no golden in {file}; got {got}")),
        }
    }

    pub fn finish(self) -> Option<String> {
        if bless() {
            let text = serde_json::to_string_pretty(&Value::Object(self.actual)).unwrap();
            std::fs::write(fixture_path(self.file), text + "\n").unwrap();
            return None;
        }
        let stale: Vec<_> = self
            .expected
            .keys()
            .filter(|k| !self.actual.contains_key(*k))
            .collect();
        (!stale.is_empty()).then(|| format!("{}: goldens of cases not run: {stale:?}", self.file))
    }
}

/// What went wrong across a table, reported together so that one run shows every bad case.
#[derive(Default)]
pub struct Problems(Vec<String>);

impl Problems {
    pub fn check(&mut self, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            self.0.push(message());
        }
    }

    pub fn add(&mut self, problem: Option<String>) {
        self.0.extend(problem);
    }

    pub fn assert_none(self, table: &str) {
        let list = self.0.join("\n  - ");
        assert!(
            self.0.is_empty(),
            "{table}: {} problem(s):\n  - {list}",
            self.0.len()
        );
    }
}
