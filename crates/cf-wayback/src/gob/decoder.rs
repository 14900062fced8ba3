//! Reading a gob stream: length-prefixed messages, the type definitions on the stream (the
//! [`Decoder`] learns every id from them and assumes none), and values decoded generically
//! into [`Value`]s. Bounded against corrupt or hostile input: message size, nesting depth and
//! element counts. Imports nothing outside `gob`.

use std::collections::HashMap;
use std::io::Read;

use super::{field, malformed, GobError, Value, FIRST_USER_ID, MAX_MESSAGE};

/// Values nested deeper than this are refused.
const MAX_DEPTH: usize = 100;

/// A type as the peer defined it: field and element types by id.
#[derive(Debug, Clone)]
enum WireDef {
    Struct(Vec<(String, i64)>),
    Slice(i64),
    Array(i64),
    Map(i64, i64),
    /// GobEncoder / BinaryMarshaler / TextMarshaler: an opaque byte string.
    Opaque,
}

/// The types that describe types. Their ids are fixed by the format (16–23); gobEncoderType has
/// no fixed id and never appears on the wire by itself, so it gets an internal one (24).
fn builtin_defs() -> HashMap<i64, WireDef> {
    let s = |fields: &[(&str, i64)]| {
        WireDef::Struct(fields.iter().map(|(n, id)| (n.to_string(), *id)).collect())
    };
    HashMap::from([
        (
            16,
            s(&[
                ("ArrayT", 17),
                ("SliceT", 19),
                ("StructT", 20),
                ("MapT", 23),
                ("GobEncoderT", 24),
                ("BinaryMarshalerT", 24),
                ("TextMarshalerT", 24),
            ]),
        ),
        (17, s(&[("CommonType", 18), ("Elem", 2), ("Len", 2)])),
        (18, s(&[("Name", 6), ("Id", 2)])),
        (19, s(&[("CommonType", 18), ("Elem", 2)])),
        (20, s(&[("CommonType", 18), ("Field", 22)])),
        (21, s(&[("Name", 6), ("Id", 2)])),
        (22, WireDef::Slice(21)),
        (23, s(&[("CommonType", 18), ("Key", 2), ("Elem", 2)])),
        (24, s(&[("CommonType", 18)])),
    ])
}

/// A `wireType` value, decoded generically, as a definition.
fn wire_def(wire: &Value) -> Result<WireDef, GobError> {
    let id_of = |v: &Value, name: &str| -> Result<i64, GobError> { field(v, name) };
    if let Some(st) = wire.field("StructT") {
        let fields: Vec<Value> = field(st, "Field")?;
        let fields = fields
            .iter()
            .map(|f| Ok((field::<String>(f, "Name")?, id_of(f, "Id")?)))
            .collect::<Result<_, GobError>>()?;
        return Ok(WireDef::Struct(fields));
    }
    if let Some(sl) = wire.field("SliceT") {
        return Ok(WireDef::Slice(id_of(sl, "Elem")?));
    }
    if let Some(ar) = wire.field("ArrayT") {
        return Ok(WireDef::Array(id_of(ar, "Elem")?));
    }
    if let Some(m) = wire.field("MapT") {
        return Ok(WireDef::Map(id_of(m, "Key")?, id_of(m, "Elem")?));
    }
    if ["GobEncoderT", "BinaryMarshalerT", "TextMarshalerT"]
        .iter()
        .any(|f| wire.field(f).is_some())
    {
        return Ok(WireDef::Opaque);
    }
    Err(malformed("a type definition that defines nothing"))
}

/// Reads the primitive encodings from one message.
pub(super) struct Cursor<'a> {
    pub(super) buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], GobError> {
        if n > self.buf.len() {
            return Err(malformed(format!(
                "needs {n} bytes, message has {}",
                self.buf.len()
            )));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    pub(super) fn uint(&mut self) -> Result<u64, GobError> {
        let first = self.take(1)?[0];
        if first < 0x80 {
            return Ok(first as u64);
        }
        let n = first.wrapping_neg() as usize;
        if n > 8 {
            return Err(malformed(format!("integer byte count {first:#04x}")));
        }
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | *b as u64))
    }
    pub(super) fn int(&mut self) -> Result<i64, GobError> {
        let u = self.uint()?;
        Ok(if u & 1 == 1 {
            !(u >> 1) as i64
        } else {
            (u >> 1) as i64
        })
    }
    fn float(&mut self) -> Result<f64, GobError> {
        Ok(f64::from_bits(self.uint()?.swap_bytes()))
    }
    /// An element count; every element takes at least one byte, so a count larger than what
    /// is left is corrupt (and must not drive an allocation).
    fn count(&mut self) -> Result<usize, GobError> {
        let n = self.uint()?;
        if n > self.buf.len() as u64 {
            return Err(malformed(format!(
                "count {n} exceeds the {} bytes left",
                self.buf.len()
            )));
        }
        Ok(n as usize)
    }
    pub(super) fn bytes(&mut self) -> Result<&'a [u8], GobError> {
        let n = self.count()?;
        self.take(n)
    }
}

/// Reads values from one gob stream, learning type ids from the definitions on it.
pub struct Decoder<R> {
    reader: R,
    defs: HashMap<i64, WireDef>,
}

impl<R: Read> Decoder<R> {
    pub fn new(reader: R) -> Self {
        Decoder {
            reader,
            defs: builtin_defs(),
        }
    }

    /// The next value on the stream, after absorbing any type definitions before it.
    /// [`GobError::Eof`] when the stream ends cleanly between messages.
    pub fn decode(&mut self) -> Result<Value, GobError> {
        loop {
            let msg = self.read_message()?;
            let mut cur = Cursor { buf: &msg };
            let id = cur.int()?;
            let value = if id < 0 {
                self.define(
                    id.checked_neg().ok_or_else(|| malformed("type id"))?,
                    &mut cur,
                )?;
                None
            } else {
                Some(self.top_level(id, &mut cur)?)
            };
            if !cur.buf.is_empty() {
                return Err(malformed(format!(
                    "{} bytes after the value",
                    cur.buf.len()
                )));
            }
            if let Some(value) = value {
                return Ok(value);
            }
        }
    }

    fn read_message(&mut self) -> Result<Vec<u8>, GobError> {
        let mut first = [0u8; 1];
        loop {
            match self.reader.read(&mut first) {
                Ok(0) => return Err(GobError::Eof),
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let len = if first[0] < 0x80 {
            first[0] as u64
        } else {
            let n = first[0].wrapping_neg() as usize;
            if n > 8 {
                return Err(malformed(format!("length byte count {:#04x}", first[0])));
            }
            let mut be = [0u8; 8];
            self.reader.read_exact(&mut be[8 - n..])?;
            u64::from_be_bytes(be)
        };
        if len > MAX_MESSAGE {
            return Err(malformed(format!(
                "message of {len} bytes (limit {MAX_MESSAGE})"
            )));
        }
        let mut msg = Vec::new();
        (&mut self.reader).take(len).read_to_end(&mut msg)?;
        if (msg.len() as u64) < len {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        Ok(msg)
    }

    fn define(&mut self, id: i64, cur: &mut Cursor) -> Result<(), GobError> {
        if id < FIRST_USER_ID || self.defs.contains_key(&id) {
            return Err(malformed(format!("type id {id} defined twice or reserved")));
        }
        let wire = self.value(cur, 16, 0)?;
        self.defs.insert(id, wire_def(&wire)?);
        Ok(())
    }

    fn top_level(&self, id: i64, cur: &mut Cursor) -> Result<Value, GobError> {
        if !matches!(self.defs.get(&id), Some(WireDef::Struct(_))) && cur.uint()? != 0 {
            return Err(malformed("a non-struct value without its zero field delta"));
        }
        self.value(cur, id, 0)
    }

    fn value(&self, cur: &mut Cursor, id: i64, depth: usize) -> Result<Value, GobError> {
        if depth > MAX_DEPTH {
            return Err(malformed("values nested too deeply"));
        }
        Ok(match id {
            1 => Value::Bool(cur.uint()? != 0),
            2 => Value::Int(cur.int()?),
            3 => Value::Uint(cur.uint()?),
            4 => Value::Float(cur.float()?),
            5 => Value::Bytes(cur.bytes()?.to_vec()),
            6 => Value::String(String::from_utf8_lossy(cur.bytes()?).into_owned()),
            7 => Value::Complex(cur.float()?, cur.float()?),
            8 => return Err(GobError::Unsupported("interface values")),
            _ => match self.defs.get(&id).ok_or(GobError::UnknownType(id))? {
                WireDef::Struct(fields) => {
                    let mut out = Vec::new();
                    let mut number = -1i64;
                    loop {
                        let delta = cur.uint()?;
                        if delta == 0 {
                            break;
                        }
                        number = i64::try_from(delta)
                            .ok()
                            .and_then(|d| number.checked_add(d))
                            .ok_or_else(|| malformed("field delta"))?;
                        let (name, fid) = usize::try_from(number)
                            .ok()
                            .and_then(|n| fields.get(n))
                            .ok_or_else(|| malformed(format!("field {number} of {id}")))?;
                        out.push((name.clone(), self.value(cur, *fid, depth + 1)?));
                    }
                    Value::Struct(out)
                }
                WireDef::Slice(elem) | WireDef::Array(elem) => {
                    let n = cur.count()?;
                    let items = (0..n).map(|_| self.value(cur, *elem, depth + 1));
                    Value::Slice(items.collect::<Result<_, _>>()?)
                }
                WireDef::Map(key, elem) => {
                    let n = cur.count()?;
                    let mut pairs = Vec::with_capacity(n);
                    for _ in 0..n {
                        let k = self.value(cur, *key, depth + 1)?;
                        pairs.push((k, self.value(cur, *elem, depth + 1)?));
                    }
                    Value::Map(pairs)
                }
                WireDef::Opaque => Value::Bytes(cur.bytes()?.to_vec()),
            },
        })
    }
}
