//! Followers' gauges, measured at scrape time (never stored): lag in bytes and seconds,
//! whether each streams, and the xmin age its `hot_standby_feedback` holds on its leader (what
//! that default costs: vacuum on the leader keeps row versions the follower's queries may
//! still read). Labelled `{instance, leader}` by ids only. A follower whose figures are unknown
//! (it or its leader did not answer in time) has `streaming` 0 and no lag sample.

use std::fmt::Write;

use crate::domain::{FollowerLag, FollowerState};

/// One follower, as the scrape found it.
pub struct FollowerRow<'a> {
    pub instance: &'a str,
    pub leader: &'a str,
    pub lag: &'a FollowerLag,
}

/// One gauge's value for a follower; None: no sample.
type Sample = fn(&FollowerLag) -> Option<f64>;

/// The followers' gauges (HELP and TYPE even without followers).
pub fn render_followers(rows: &[FollowerRow<'_>]) -> String {
    let mut out = String::new();
    let gauges: [(&str, &str, Sample); 4] = [
        (
            "wayback_follower_lag_bytes",
            "WAL the follower has not replayed yet: its leader's position minus its replay position.",
            |l| l.lag_bytes.map(|b| b as f64),
        ),
        (
            "wayback_follower_lag_seconds",
            "How far behind the follower's replay is, in seconds (0 when caught up).",
            |l| l.lag_seconds,
        ),
        (
            "wayback_follower_streaming",
            "1 while the follower streams from its leader; 0 while it replays from the archive, is disconnected or did not answer.",
            |l| Some(if l.state == FollowerState::Streaming { 1.0 } else { 0.0 }),
        ),
        (
            "wayback_follower_xmin_age",
            "Transactions the follower's hot_standby_feedback holds vacuum back by on its leader (age of its slot's xmin).",
            |l| l.xmin_age.map(|a| a as f64),
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for row in rows {
            if let Some(v) = value(row.lag) {
                let _ = writeln!(
                    out,
                    "{name}{{instance=\"{}\",leader=\"{}\"}} {v}",
                    row.instance, row.leader
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::InstanceId;

    #[test]
    fn each_follower_has_its_gauges_by_id() {
        let streaming = FollowerLag {
            follower: InstanceId::parse("f1").unwrap(),
            state: FollowerState::Streaming,
            lag_bytes: Some(0),
            lag_seconds: Some(0.0),
            xmin_age: Some(3),
        };
        let away = FollowerLag::unknown(InstanceId::parse("f2").unwrap());
        let text = render_followers(&[
            FollowerRow {
                instance: "f1",
                leader: "l",
                lag: &streaming,
            },
            FollowerRow {
                instance: "f2",
                leader: "l",
                lag: &away,
            },
        ]);
        assert!(text.contains("wayback_follower_lag_bytes{instance=\"f1\",leader=\"l\"} 0\n"));
        assert!(text.contains("wayback_follower_streaming{instance=\"f1\",leader=\"l\"} 1\n"));
        assert!(text.contains("wayback_follower_streaming{instance=\"f2\",leader=\"l\"} 0\n"));
        assert!(text.contains("wayback_follower_xmin_age{instance=\"f1\",leader=\"l\"} 3\n"));
        assert!(!text.contains("wayback_follower_lag_bytes{instance=\"f2\""));
        assert!(text.contains("# TYPE wayback_follower_xmin_age gauge\n"));
    }
}
