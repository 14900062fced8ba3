//! Go's `encoding/gob` wire format: the subset the cf CLI's plugin RPC uses.
//!
//! A gob stream is a sequence of length-prefixed messages. A message holds either a *type
//! definition* (a negative type id followed by a `wireType` value describing a struct, slice,
//! array or map) or a *value* (a positive type id followed by the value). Ids 1–8 are the
//! basic types; everything else is defined on the stream before first use, and the numbers are
//! chosen by the sending *process* (Go hands out ids from a process-wide counter starting at 65).
//! So the [`Decoder`] learns every id from the definitions it receives on its own stream and
//! never assumes a number, and the [`Encoder`] numbers types the way Go would in a fresh
//! process and sends each definition once per stream, before the first value that needs it.
//!
//! Values are dynamic ([`Value`]); the encoder additionally needs a static [`Type`], because a
//! gob type definition lists every struct field, including those whose value is zero and hence
//! omitted. [`ToGob`] / [`FromGob`] connect Rust types to both.
//!
//! Deliberate limits: interface values are refused (the plugin RPC has none); an empty map is
//! omitted from a struct like a nil map (Go sends empty non-nil maps, but a receiver sees no
//! difference); invalid UTF-8 in a string is replaced rather than failing the whole message.
//! The parts: `values` (the dynamic [`Value`] and the static [`Type`]), `convert` (Rust types
//! to and from values: [`ToGob`], [`FromGob`], [`field`]), `encoder` and `decoder`.
//! This module does I/O only through the `Read` it is given and imports nothing from the crate.

mod convert;
mod decoder;
mod encoder;
mod values;

pub use convert::{field, FromGob, ToGob};
pub use decoder::Decoder;
pub use encoder::Encoder;
pub use values::{Type, Value};

/// First id Go hands out to a user type (0–64 are reserved by the format).
pub const FIRST_USER_ID: i64 = 65;
/// Largest message accepted; a bigger length prefix means a corrupt or hostile stream.
pub const MAX_MESSAGE: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum GobError {
    #[error("gob stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("gob stream ended")]
    Eof,
    #[error("malformed gob stream: {0}")]
    Malformed(String),
    #[error("gob type id {0} was never defined on this stream")]
    UnknownType(i64),
    #[error("gob feature not supported: {0}")]
    Unsupported(&'static str),
    #[error("gob value does not fit: {0}")]
    Mismatch(String),
}

fn malformed(msg: impl Into<String>) -> GobError {
    GobError::Malformed(msg.into())
}

#[cfg(test)]
mod tests;
