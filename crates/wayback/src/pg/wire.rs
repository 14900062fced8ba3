//! The little of PostgreSQL's wire protocol the wake listener speaks (issue 17): a client's
//! first packet, read and kept whole so that it can be written to the server once it runs, and
//! the `ErrorResponse` a client is answered with when the server cannot be started.
//!
//! A first packet has no type byte: a 4-byte big-endian length (itself included) and a body
//! whose first 4 bytes are a request code — `SSLRequest`, `GSSENCRequest`, `CancelRequest`, or
//! a protocol version (a startup packet). The length is checked before anything is allocated:
//! at least the length and the code, at most [`MAX_FIRST_PACKET`] (PostgreSQL itself allows
//! 10,000 bytes of startup packet). Nothing beyond the first packet is parsed: the rest of the
//! conversation is the server's. Imports only `pg` siblings (here: nothing).

use tokio::io::{AsyncRead, AsyncReadExt};

/// `SSLRequest`'s code (1234 << 16 | 5679).
pub const SSL_REQUEST: u32 = 80_877_103;
/// `GSSENCRequest`'s code (1234 << 16 | 5680).
pub const GSSENC_REQUEST: u32 = 80_877_104;
/// `CancelRequest`'s code (1234 << 16 | 5678).
pub const CANCEL_REQUEST: u32 = 80_877_102;
/// The largest first packet read: 10 KB, a little more than PostgreSQL's own limit.
pub const MAX_FIRST_PACKET: usize = 10 * 1024;
/// SQLSTATE `cannot_connect_now`, what PostgreSQL itself answers while it starts up.
pub const CANNOT_CONNECT_NOW: &str = "57P03";

/// What a client's first packet asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Ssl,
    GssEnc,
    Cancel,
    /// A startup packet with this protocol version (3.0 is 196608).
    Startup(u32),
}

/// A client's first packet, kept whole (length included) to be written to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstPacket {
    pub request: Request,
    pub bytes: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("a first packet of {0} bytes (want 8 to {MAX_FIRST_PACKET})")]
    BadLength(u32),
    #[error("the client closed the connection or failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one first packet (no timeout here: the caller bounds it).
pub async fn read_first_packet<R: AsyncRead + Unpin>(r: &mut R) -> Result<FirstPacket, WireError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let n = u32::from_be_bytes(len);
    if n < 8 || n as usize > MAX_FIRST_PACKET {
        return Err(WireError::BadLength(n));
    }
    let mut bytes = vec![0u8; n as usize];
    bytes[..4].copy_from_slice(&len);
    r.read_exact(&mut bytes[4..]).await?;
    let code = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let request = match code {
        SSL_REQUEST => Request::Ssl,
        GSSENC_REQUEST => Request::GssEnc,
        CANCEL_REQUEST => Request::Cancel,
        version => Request::Startup(version),
    };
    Ok(FirstPacket { request, bytes })
}

/// An `ErrorResponse` (severity FATAL) with `code` and `message`; a NUL in the message (none
/// of ours has one) is dropped, since it would end the field.
pub fn fatal_error(code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(field);
        body.extend(value.bytes().filter(|b| *b != 0));
        body.push(0);
    }
    body.push(0);
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(b'E');
    out.extend(((body.len() + 4) as u32).to_be_bytes());
    out.extend(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: u32, rest: &[u8]) -> Vec<u8> {
        let mut v = ((8 + rest.len()) as u32).to_be_bytes().to_vec();
        v.extend(code.to_be_bytes());
        v.extend(rest);
        v
    }

    async fn read(bytes: &[u8]) -> Result<FirstPacket, WireError> {
        read_first_packet(&mut &bytes[..]).await
    }

    #[tokio::test]
    async fn first_packets_are_read_whole_and_named() {
        let ssl = packet(SSL_REQUEST, &[]);
        assert_eq!(
            read(&ssl).await.unwrap(),
            FirstPacket {
                request: Request::Ssl,
                bytes: ssl.clone()
            }
        );
        assert_eq!(
            read(&packet(GSSENC_REQUEST, &[])).await.unwrap().request,
            Request::GssEnc
        );
        let cancel = packet(CANCEL_REQUEST, &[0, 0, 0, 7, 1, 2, 3, 4]);
        assert_eq!(read(&cancel).await.unwrap().request, Request::Cancel);
        let startup = packet(196_608, b"user\0app\0database\0db\0\0");
        let got = read(&startup).await.unwrap();
        assert_eq!(got.request, Request::Startup(196_608));
        assert_eq!(got.bytes, startup);
        // What follows the first packet is left unread for the server.
        let mut two = startup.clone();
        two.extend(b"Qmore");
        let mut reader = &two[..];
        read_first_packet(&mut reader).await.unwrap();
        assert_eq!(reader, b"Qmore");
    }

    #[tokio::test]
    async fn bad_lengths_and_short_packets_are_refused() {
        for (len, why) in [
            (0u32, "no room for the code"),
            (7, "one byte short of the code"),
            (MAX_FIRST_PACKET as u32 + 1, "over the limit"),
            (u32::MAX, "a hostile length must not allocate"),
        ] {
            let mut bytes = len.to_be_bytes().to_vec();
            bytes.extend([0u8; 8]);
            assert!(
                matches!(read(&bytes).await, Err(WireError::BadLength(n)) if n == len),
                "{why}"
            );
        }
        // Exactly the limit is fine.
        let big = packet(196_608, &vec![b'x'; MAX_FIRST_PACKET - 8]);
        assert_eq!(read(&big).await.unwrap().bytes.len(), MAX_FIRST_PACKET);
        // A packet cut short, or nothing at all, is an I/O error.
        let cut = &packet(196_608, b"user\0app\0\0")[..10];
        assert!(matches!(read(cut).await, Err(WireError::Io(_))));
        assert!(matches!(read(&[]).await, Err(WireError::Io(_))));
    }

    #[test]
    fn the_error_response_is_well_formed() {
        let e = fatal_error(CANNOT_CONNECT_NOW, "stopped");
        assert_eq!(e[0], b'E');
        let len = u32::from_be_bytes([e[1], e[2], e[3], e[4]]) as usize;
        assert_eq!(len, e.len() - 1);
        assert_eq!(&e[5..], b"SFATAL\0VFATAL\0C57P03\0Mstopped\0\0".as_slice());
        assert!(!fatal_error("57P03", "a\0b")[5..]
            .windows(3)
            .any(|w| w == b"a\0b"));
    }
}
