//! The parked marker and the addresses a parked cluster's port is held on — pure functions and
//! small file operations, no sockets.
//!
//! The marker is `<data_dir>/clusters/<key>/parked`, outside `pgdata` (PostgreSQL never sees
//! it): JSON with when the cluster was parked and its port. It is written after the clean stop
//! and removed only after a successful start, so a broker or agent that restarts in between
//! finds it and holds the port again (`prepare`). Must not import `osb`, `broker`, `store` or
//! `jobs`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pg::fsutil;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Marker {
    pub since: chrono::DateTime<chrono::Utc>,
    pub port: u16,
}

/// The marker's path for the cluster directory `cluster`.
pub(crate) fn path(cluster: &Path) -> PathBuf {
    cluster.join("parked")
}

pub(crate) fn is_parked(cluster: &Path) -> bool {
    path(cluster).is_file()
}

/// Writes the marker durably (the broker's user owns it; the cluster user never reads it).
pub(crate) fn write(cluster: &Path, port: u16) -> std::io::Result<()> {
    let marker = Marker {
        since: chrono::Utc::now(),
        port,
    };
    let text = serde_json::to_vec(&marker).map_err(std::io::Error::other)?;
    fsutil::write_atomic(&path(cluster), &text, 0o600, None)
}

pub(crate) fn read(cluster: &Path) -> Option<Marker> {
    let bytes = std::fs::read(path(cluster)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Removes the marker (absent is fine) and makes the removal durable.
pub(crate) fn remove(cluster: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path(cluster)) {
        Ok(()) => fsutil::fsync_dir(cluster),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The `listen_addresses` entries of a rendered `postgresql.conf` (our `name = 'value'` line).
pub(crate) fn listen_addresses(conf: &str) -> Vec<String> {
    conf.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(name, _)| name.trim() == "listen_addresses")
        .map(|(_, value)| {
            value
                .trim()
                .trim_matches('\'')
                .split(',')
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Where the holder binds for one `listen_addresses` entry (a host name is resolved by the
/// caller): `*` is every address — one dual-stack IPv6 socket, or IPv4 where there is no IPv6.
pub(crate) fn bind_candidates(entry: &str, port: u16) -> Option<Vec<SocketAddr>> {
    match entry {
        "*" => Some(vec![
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
        ]),
        other => other
            .parse::<IpAddr>()
            .ok()
            .map(|ip| vec![SocketAddr::new(ip, port)]),
    }
}

/// Where to reach the running server at an address it listens on: a wildcard's loopback.
pub(crate) fn connect_target(bound: SocketAddr) -> SocketAddr {
    let ip = match bound.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        // A dual-stack wildcard: the server listens on IPv4 as well.
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bound.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_are_read_from_the_rendered_conf() {
        let conf = "port = '40001'\nlisten_addresses = '127.0.0.1, ::1'\n";
        assert_eq!(listen_addresses(conf), ["127.0.0.1", "::1"]);
        assert!(listen_addresses("listen_addresses = ''\n").is_empty());
        assert!(listen_addresses("port = '1'\n").is_empty());
    }

    #[test]
    fn wildcards_bind_everything_and_connect_to_loopback() {
        let all = bind_candidates("*", 5).unwrap();
        assert_eq!(all[0].to_string(), "[::]:5");
        assert_eq!(connect_target(all[0]).to_string(), "127.0.0.1:5");
        let v4 = bind_candidates("0.0.0.0", 5).unwrap();
        assert_eq!(connect_target(v4[0]).to_string(), "127.0.0.1:5");
        assert_eq!(
            connect_target(bind_candidates("::1", 5).unwrap()[0]).to_string(),
            "[::1]:5"
        );
        assert!(bind_candidates("db.example", 5).is_none());
    }

    #[test]
    fn the_marker_survives_a_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_parked(dir.path()));
        write(dir.path(), 40002).unwrap();
        assert!(is_parked(dir.path()));
        assert_eq!(read(dir.path()).unwrap().port, 40002);
        remove(dir.path()).unwrap();
        remove(dir.path()).unwrap();
        assert!(!is_parked(dir.path()));
    }
}
