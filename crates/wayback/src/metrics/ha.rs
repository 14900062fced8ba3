//! HA instances' gauges (issue 15 point 5), read from Patroni at scrape time by the caller
//! (never stored): each member's role (`wayback_ha_member_role`, 1 per member and role), the
//! changes of leader since the first (`wayback_ha_failovers_total`, from Patroni's timeline
//! history) and each standby's replication lag in bytes (`wayback_ha_replication_lag_bytes`).
//! Labelled by instance id and member name only, as the other per-instance metrics are. An
//! instance whose Patroni did not answer has no sample.

use std::fmt::Write;

/// One member of an HA instance, as the scrape found it.
pub struct HaMemberRow<'a> {
    pub member: &'a str,
    pub role: &'a str,
    pub lag_bytes: Option<u64>,
}

/// One HA instance, as the scrape found it.
pub struct HaRow<'a> {
    pub instance: &'a str,
    pub members: Vec<HaMemberRow<'a>>,
    /// None: Patroni did not answer.
    pub failovers: Option<u64>,
}

/// The HA gauges (HELP and TYPE even without HA instances).
pub fn render_ha(rows: &[HaRow<'_>]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# HELP wayback_ha_member_role The role Patroni gives each member of an HA instance now (1 per member, labelled with its role: leader, sync_standby, replica).");
    let _ = writeln!(out, "# TYPE wayback_ha_member_role gauge");
    for row in rows {
        for m in &row.members {
            let _ = writeln!(
                out,
                "wayback_ha_member_role{{instance=\"{}\",member=\"{}\",role=\"{}\"}} 1",
                row.instance, m.member, m.role
            );
        }
    }
    let _ = writeln!(out, "# HELP wayback_ha_failovers_total Changes of leader of an HA instance since its first leader (failovers and switchovers: new timelines in Patroni's history).");
    let _ = writeln!(out, "# TYPE wayback_ha_failovers_total counter");
    for row in rows {
        if let Some(n) = row.failovers {
            let _ = writeln!(
                out,
                "wayback_ha_failovers_total{{instance=\"{}\"}} {n}",
                row.instance
            );
        }
    }
    let _ = writeln!(out, "# HELP wayback_ha_replication_lag_bytes How far a standby member of an HA instance is behind its leader, in bytes of WAL (Patroni's lag).");
    let _ = writeln!(out, "# TYPE wayback_ha_replication_lag_bytes gauge");
    for row in rows {
        for m in &row.members {
            if let Some(lag) = m.lag_bytes {
                let _ = writeln!(
                    out,
                    "wayback_ha_replication_lag_bytes{{instance=\"{}\",member=\"{}\"}} {lag}",
                    row.instance, m.member
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_member_has_its_role_and_each_standby_its_lag() {
        let text = render_ha(&[
            HaRow {
                instance: "i1",
                members: vec![
                    HaMemberRow {
                        member: "m1",
                        role: "leader",
                        lag_bytes: None,
                    },
                    HaMemberRow {
                        member: "m2",
                        role: "sync_standby",
                        lag_bytes: Some(0),
                    },
                ],
                failovers: Some(2),
            },
            HaRow {
                instance: "i2",
                members: vec![],
                failovers: None,
            },
        ]);
        assert!(text
            .contains("wayback_ha_member_role{instance=\"i1\",member=\"m1\",role=\"leader\"} 1\n"));
        assert!(text.contains(
            "wayback_ha_member_role{instance=\"i1\",member=\"m2\",role=\"sync_standby\"} 1\n"
        ));
        assert!(text.contains("wayback_ha_failovers_total{instance=\"i1\"} 2\n"));
        assert!(
            text.contains("wayback_ha_replication_lag_bytes{instance=\"i1\",member=\"m2\"} 0\n")
        );
        assert!(
            !text.contains("member=\"m1\"} "),
            "the leader has no lag: {text}"
        );
        assert!(!text.contains("instance=\"i2\""), "{text}");
        assert!(text.contains("# TYPE wayback_ha_failovers_total counter\n"));
    }
}
