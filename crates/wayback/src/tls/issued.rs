//! The record kept beside a server certificate (`issued.json`): when it was issued, for how
//! long, for which names and by which CA. Renewal is decided from it alone — pure and tested.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    pub issued_at: DateTime<Utc>,
    pub lifetime_secs: u64,
    pub hosts: Vec<String>,
    /// [`super::Ca::fingerprint`] of the CA that signed it.
    pub ca_fingerprint: String,
}

impl Issued {
    /// Whether a certificate must be issued again: at two thirds of its life (a third is left
    /// for a renewal that fails a few times), or when the names or the CA changed.
    pub fn due(&self, now: DateTime<Utc>, hosts: &[String], ca_fingerprint: &str) -> bool {
        let renew_after = Duration::from_secs(self.lifetime_secs / 3 * 2);
        let renew_at = chrono::Duration::from_std(renew_after)
            .ok()
            .and_then(|d| self.issued_at.checked_add_signed(d));
        renew_at.map_or(true, |at| now >= at)
            || self.hosts != hosts
            || self.ca_fingerprint != ca_fingerprint
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plain data serialises") + "\n"
    }

    /// None for a record that does not parse (then the certificate is issued again).
    pub fn parse(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_at_two_thirds_or_when_names_or_ca_change() {
        let at = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let hosts = vec!["db.example.com".to_string()];
        let rec = Issued {
            issued_at: at,
            lifetime_secs: 90 * 86_400,
            hosts: hosts.clone(),
            ca_fingerprint: "ab".into(),
        };
        let day = chrono::Duration::days(1);
        assert!(!rec.due(at + day * 59, &hosts, "ab"));
        assert!(
            rec.due(at + day * 60, &hosts, "ab"),
            "two thirds of 90 days"
        );
        assert!(rec.due(at, &["other".to_string()], "ab"), "names changed");
        assert!(rec.due(at, &hosts, "cd"), "CA changed");
        assert_eq!(Issued::parse(&rec.to_json()), Some(rec));
        assert_eq!(Issued::parse("{"), None);
    }
}
