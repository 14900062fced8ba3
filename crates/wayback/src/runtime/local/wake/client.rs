//! One client of a parked cluster: its first packet read within the timeout (rule 2), then
//! either spliced to the running server (rule 5) or answered with an `ErrorResponse` (rule 6).
//! Must not import `osb`, `broker`, `store` or `jobs`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::pg::wire::{self, FirstPacket, Request};

/// A client whose first packet arrived, waiting for its cluster.
pub(super) struct Arrival {
    pub stream: TcpStream,
    pub packet: FirstPacket,
    /// When its first packet was complete (the start of a wake's time).
    pub at: Instant,
}

/// Reads the first packet of `stream` within `timeout`; None (the connection closed) for a
/// silent or malformed client and for a `CancelRequest` (nothing runs to cancel).
pub(super) async fn first_packet(mut stream: TcpStream, timeout: Duration) -> Option<Arrival> {
    let peer = stream.peer_addr().ok();
    match tokio::time::timeout(timeout, wire::read_first_packet(&mut stream)).await {
        Ok(Ok(packet)) if packet.request == Request::Cancel => None,
        Ok(Ok(packet)) => Some(Arrival {
            stream,
            packet,
            at: Instant::now(),
        }),
        Ok(Err(e)) => {
            tracing::debug!(?peer, error = %e, "a client of a parked cluster sent no usable first packet");
            None
        }
        Err(_) => {
            tracing::debug!(
                ?peer,
                "a client of a parked cluster sent nothing in time; closed"
            );
            None
        }
    }
}

/// Connects `client` to the running server at `target`, writes its first packet, and copies
/// bytes both ways until either side closes.
pub(super) async fn splice(client: Arrival, target: SocketAddr, timeout: Duration) {
    let Arrival {
        stream: mut client,
        packet,
        ..
    } = client;
    let server = tokio::time::timeout(timeout, TcpStream::connect(target)).await;
    let mut server = match server {
        Ok(Ok(s)) => s,
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".into(),
            };
            tracing::warn!(%target, error = %why, "cannot reach a woken cluster for its client");
            let message = user_message("the server did not take the connection");
            refuse(
                Arrival {
                    stream: client,
                    packet,
                    at: Instant::now(),
                },
                &message,
                timeout,
            )
            .await;
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    if server.write_all(&packet.bytes).await.is_err() {
        return;
    }
    // Either side closing ends it; errors (a reset) only end it too.
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

/// What a client of a cluster that could not be started reads.
pub(super) fn user_message(reason: &str) -> String {
    format!(
        "the database is stopped and could not be started: {reason}; try again in a minute, \
         and tell the operator if it persists"
    )
}

/// Answers a waiting client with a FATAL 57P03 `ErrorResponse`. A request for TLS or GSS
/// encryption is declined ('N') first and the client's next packet read (within `timeout`), as
/// a server without TLS would; the error then follows in the clear.
pub(super) async fn refuse(client: Arrival, message: &str, timeout: Duration) {
    let Arrival {
        mut stream,
        mut packet,
        ..
    } = client;
    // At most a GSSENCRequest then an SSLRequest come before the startup packet.
    for _ in 0..2 {
        if !matches!(packet.request, Request::Ssl | Request::GssEnc) {
            break;
        }
        if stream.write_all(b"N").await.is_err() {
            return;
        }
        match tokio::time::timeout(timeout, wire::read_first_packet(&mut stream)).await {
            Ok(Ok(next)) => packet = next,
            _ => return,
        }
    }
    let error = wire::fatal_error(wire::CANNOT_CONNECT_NOW, message);
    if stream.write_all(&error).await.is_ok() {
        let _ = stream.shutdown().await;
    }
}
