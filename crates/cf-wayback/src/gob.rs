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
//! This module does I/O only through the `Read` it is given and imports nothing from the crate.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;

/// First id Go hands out to a user type (0–64 are reserved by the format).
pub const FIRST_USER_ID: i64 = 65;
/// Largest message accepted; a bigger length prefix means a corrupt or hostile stream.
pub const MAX_MESSAGE: u64 = 256 << 20;
const MAX_DEPTH: usize = 100;

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

/// A decoded (or to-be-encoded) gob value. Structs keep their fields by name, in wire order;
/// a decoded struct lists only the fields that were transmitted (zero fields are omitted on the
/// wire), so read fields through [`field`], which treats a missing field as zero.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Complex(f64, f64),
    Bytes(Vec<u8>),
    String(String),
    Slice(Vec<Value>),
    Map(Vec<(Value, Value)>),
    Struct(Vec<(String, Value)>),
}

/// The zero struct: what a struct field that was not transmitted reads as.
impl Default for Value {
    fn default() -> Self {
        Value::Struct(Vec::new())
    }
}

impl Value {
    /// The field `name` of a struct value, if it was transmitted.
    pub fn field(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Struct(fields) => fields.iter().find(|(n, _)| n == name).map(|(_, v)| v),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Uint(_) => "uint",
            Value::Float(_) => "float",
            Value::Complex(..) => "complex",
            Value::Bytes(_) => "bytes",
            Value::String(_) => "string",
            Value::Slice(_) => "slice",
            Value::Map(_) => "map",
            Value::Struct(_) => "struct",
        }
    }
    /// The same value as a decoder would return it: zero-valued struct fields dropped (nested
    /// structs are always transmitted, so they stay).
    pub fn canonical(&self) -> Value {
        match self {
            Value::Struct(fields) => Value::Struct(
                fields
                    .iter()
                    .filter(|(_, v)| !omitted_when_zero(v))
                    .map(|(n, v)| (n.clone(), v.canonical()))
                    .collect(),
            ),
            Value::Slice(items) => Value::Slice(items.iter().map(Value::canonical).collect()),
            Value::Map(pairs) => Value::Map(
                pairs
                    .iter()
                    .map(|(k, v)| (k.canonical(), v.canonical()))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

/// Whether a struct field holding `v` is left out of the transmission.
fn omitted_when_zero(v: &Value) -> bool {
    match v {
        Value::Bool(b) => !b,
        Value::Int(i) => *i == 0,
        Value::Uint(u) => *u == 0,
        Value::Float(f) => *f == 0.0,
        Value::Complex(r, i) => *r == 0.0 && *i == 0.0,
        Value::Bytes(b) => b.is_empty(),
        Value::String(s) => s.is_empty(),
        Value::Slice(s) => s.is_empty(),
        Value::Map(m) => m.is_empty(),
        Value::Struct(_) => false,
    }
}

/// The static shape of a value, as the encoder describes it in a type definition. The names
/// travel on the wire but only for diagnostics: Go matches struct fields by name and checks
/// nothing else about type names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Type {
    Bool,
    Int,
    Uint,
    Float,
    Bytes,
    String,
    Slice {
        name: String,
        elem: Box<Type>,
    },
    Map {
        name: String,
        key: Box<Type>,
        elem: Box<Type>,
    },
    Struct {
        name: String,
        fields: Vec<(String, Type)>,
    },
}

impl Type {
    pub fn structure(name: &str, fields: Vec<(&str, Type)>) -> Type {
        let fields = fields
            .into_iter()
            .map(|(n, t)| (n.to_string(), t))
            .collect();
        Type::Struct {
            name: name.to_string(),
            fields,
        }
    }
    pub fn slice(name: &str, elem: Type) -> Type {
        Type::Slice {
            name: name.to_string(),
            elem: Box::new(elem),
        }
    }
    pub fn map(name: &str, key: Type, elem: Type) -> Type {
        Type::Map {
            name: name.to_string(),
            key: Box::new(key),
            elem: Box::new(elem),
        }
    }
    /// Go's `struct{}`, which net/rpc sends as the body of an error response.
    pub fn empty_struct() -> Type {
        Type::structure("", vec![])
    }
    fn builtin_id(&self) -> Option<i64> {
        Some(match self {
            Type::Bool => 1,
            Type::Int => 2,
            Type::Uint => 3,
            Type::Float => 4,
            Type::Bytes => 5,
            Type::String => 6,
            _ => return None,
        })
    }
}

// ---- primitive encodings ----

fn put_uint(out: &mut Vec<u8>, x: u64) {
    if x < 0x80 {
        out.push(x as u8);
        return;
    }
    let skip = (x.leading_zeros() / 8) as usize;
    out.push((skip as u8).wrapping_sub(8)); // the byte count, negated
    out.extend_from_slice(&x.to_be_bytes()[skip..]);
}

fn put_int(out: &mut Vec<u8>, i: i64) {
    let u = if i < 0 {
        (!(i as u64) << 1) | 1
    } else {
        (i as u64) << 1
    };
    put_uint(out, u);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_uint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_float(out: &mut Vec<u8>, f: f64) {
    put_uint(out, f.to_bits().swap_bytes());
}

fn put_message(out: &mut Vec<u8>, msg: &[u8]) {
    put_uint(out, msg.len() as u64);
    out.extend_from_slice(msg);
}

fn mismatch(ty: &Type, v: &Value) -> GobError {
    GobError::Mismatch(format!("a {} value for gob type {ty:?}", v.kind()))
}

fn put_value(out: &mut Vec<u8>, ty: &Type, v: &Value) -> Result<(), GobError> {
    match (ty, v) {
        (Type::Bool, Value::Bool(b)) => put_uint(out, *b as u64),
        (Type::Int, Value::Int(i)) => put_int(out, *i),
        (Type::Uint, Value::Uint(u)) => put_uint(out, *u),
        (Type::Float, Value::Float(f)) => put_float(out, *f),
        (Type::Bytes, Value::Bytes(b)) => put_bytes(out, b),
        (Type::String, Value::String(s)) => put_bytes(out, s.as_bytes()),
        (Type::Slice { elem, .. }, Value::Slice(items)) => {
            put_uint(out, items.len() as u64);
            for item in items {
                put_value(out, elem, item)?;
            }
        }
        (Type::Map { key, elem, .. }, Value::Map(pairs)) => {
            put_uint(out, pairs.len() as u64);
            for (k, v) in pairs {
                put_value(out, key, k)?;
                put_value(out, elem, v)?;
            }
        }
        (Type::Struct { fields, .. }, Value::Struct(values)) => put_struct(out, fields, values)?,
        _ => return Err(mismatch(ty, v)),
    }
    Ok(())
}

fn put_struct(
    out: &mut Vec<u8>,
    fields: &[(String, Type)],
    values: &[(String, Value)],
) -> Result<(), GobError> {
    if let Some((unknown, _)) = values
        .iter()
        .find(|(n, _)| !fields.iter().any(|(f, _)| f == n))
    {
        return Err(GobError::Mismatch(format!(
            "no field {unknown:?} in the struct type"
        )));
    }
    let empty = Value::Struct(Vec::new());
    let mut last = -1i64;
    for (number, (name, ty)) in fields.iter().enumerate() {
        let value = match values.iter().find(|(n, _)| n == name) {
            // Go sends nested structs even when zero; other zero fields are omitted.
            None if matches!(ty, Type::Struct { .. }) => &empty,
            None => continue,
            Some((_, v)) if omitted_when_zero(v) && value_fits(ty, v) => continue,
            Some((_, v)) => v,
        };
        put_uint(out, (number as i64 - last) as u64);
        put_value(out, ty, value)?;
        last = number as i64;
    }
    out.push(0);
    Ok(())
}

fn value_fits(ty: &Type, v: &Value) -> bool {
    matches!(
        (ty, v),
        (Type::Bool, Value::Bool(_))
            | (Type::Int, Value::Int(_))
            | (Type::Uint, Value::Uint(_))
            | (Type::Float, Value::Float(_))
            | (Type::Bytes, Value::Bytes(_))
            | (Type::String, Value::String(_))
            | (Type::Slice { .. }, Value::Slice(_))
            | (Type::Map { .. }, Value::Map(_))
    )
}

/// Writes values to one gob stream. Keep one per connection: it remembers which type
/// definitions the peer has already received.
#[derive(Debug)]
pub struct Encoder {
    ids: HashMap<Type, i64>,
    next_id: i64,
    sent: HashSet<i64>,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder {
            ids: HashMap::new(),
            next_id: FIRST_USER_ID,
            sent: HashSet::new(),
        }
    }
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The id of `ty`, numbering it (and the types inside it) on first sight in Go's order: a
    /// struct takes its id before its fields', a slice or map after its element's.
    pub fn type_id(&mut self, ty: &Type) -> i64 {
        if let Some(id) = ty.builtin_id().or_else(|| self.ids.get(ty).copied()) {
            return id;
        }
        match ty {
            Type::Struct { fields, .. } => {
                let id = self.allocate(ty);
                for (_, field) in fields {
                    self.type_id(field);
                }
                id
            }
            Type::Slice { elem, .. } => {
                self.type_id(elem);
                self.allocate(ty)
            }
            Type::Map { key, elem, .. } => {
                self.type_id(key);
                self.type_id(elem);
                self.allocate(ty)
            }
            _ => unreachable!("basic types have builtin ids"),
        }
    }

    fn allocate(&mut self, ty: &Type) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        self.ids.insert(ty.clone(), id);
        id
    }

    /// Appends to `out` the definitions of types in `ty` not yet sent on this stream, then the
    /// message carrying `value`. Nothing is appended if `value` does not fit `ty`.
    pub fn encode(&mut self, out: &mut Vec<u8>, ty: &Type, value: &Value) -> Result<(), GobError> {
        let mut body = Vec::new();
        if !matches!(ty, Type::Struct { .. }) {
            body.push(0); // a non-struct top-level value travels as field 0 of an implicit struct
        }
        put_value(&mut body, ty, value)?;
        self.send_type(out, ty);
        let mut msg = Vec::with_capacity(body.len() + 3);
        put_int(&mut msg, self.type_id(ty));
        msg.extend_from_slice(&body);
        put_message(out, &msg);
        Ok(())
    }

    /// Go's order: the definition of a type, then (depth first) the types it refers to.
    fn send_type(&mut self, out: &mut Vec<u8>, ty: &Type) {
        if ty.builtin_id().is_some() {
            return;
        }
        let id = self.type_id(ty);
        if !self.sent.insert(id) {
            return;
        }
        let mut msg = Vec::new();
        put_int(&mut msg, -id);
        self.put_wire_type(&mut msg, ty, id);
        put_message(out, &msg);
        match ty {
            Type::Struct { fields, .. } => fields.iter().for_each(|(_, f)| self.send_type(out, f)),
            Type::Slice { elem, .. } => self.send_type(out, elem),
            Type::Map { key, elem, .. } => {
                self.send_type(out, key);
                self.send_type(out, elem);
            }
            _ => {}
        }
    }

    /// A `wireType` value, written directly: its fields are pointers, so only the one describing
    /// `ty` is present (field 1 SliceT, 2 StructT, 3 MapT).
    fn put_wire_type(&mut self, msg: &mut Vec<u8>, ty: &Type, id: i64) {
        let put_common = |msg: &mut Vec<u8>, name: &str| {
            put_uint(msg, 1); // CommonType, embedded as field 0
            if !name.is_empty() {
                put_uint(msg, 1);
                put_bytes(msg, name.as_bytes());
            }
            put_uint(msg, if name.is_empty() { 2 } else { 1 });
            put_int(msg, id);
            msg.push(0);
        };
        match ty {
            Type::Slice { name, elem } => {
                put_uint(msg, 2);
                put_common(msg, name);
                put_uint(msg, 1);
                put_int(msg, self.type_id(elem));
            }
            Type::Struct { name, fields } => {
                put_uint(msg, 3);
                put_common(msg, name);
                if !fields.is_empty() {
                    put_uint(msg, 1);
                    put_uint(msg, fields.len() as u64);
                    for (field, fty) in fields {
                        put_uint(msg, 1);
                        put_bytes(msg, field.as_bytes());
                        put_uint(msg, 1);
                        put_int(msg, self.type_id(fty));
                        msg.push(0);
                    }
                }
            }
            Type::Map { name, key, elem } => {
                put_uint(msg, 4);
                put_common(msg, name);
                put_uint(msg, 1);
                put_int(msg, self.type_id(key));
                put_uint(msg, 1);
                put_int(msg, self.type_id(elem));
            }
            _ => unreachable!("basic types are never defined"),
        }
        msg.push(0); // end of sliceType/structType/mapType
        msg.push(0); // end of wireType
    }
}

// ---- decoding ----

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

struct Cursor<'a> {
    buf: &'a [u8],
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
    fn uint(&mut self) -> Result<u64, GobError> {
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
    fn int(&mut self) -> Result<i64, GobError> {
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
    fn bytes(&mut self) -> Result<&'a [u8], GobError> {
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

// ---- Rust types <-> values ----

/// A Rust type that can be sent: its gob [`Type`] and its [`Value`].
pub trait ToGob {
    fn gob_type() -> Type;
    fn to_gob(&self) -> Value;
}

/// A Rust type that can be read from a decoded [`Value`]; fields it does not know are ignored.
pub trait FromGob: Sized {
    fn from_gob(v: &Value) -> Result<Self, GobError>;
}

/// Field `name` of struct `v`; a field that was not transmitted is zero (`Default`).
pub fn field<T: FromGob + Default>(v: &Value, name: &str) -> Result<T, GobError> {
    match v {
        Value::Struct(_) => match v.field(name) {
            None => Ok(T::default()),
            Some(f) => T::from_gob(f).map_err(|e| match e {
                GobError::Mismatch(m) => GobError::Mismatch(format!("{name}: {m}")),
                other => other,
            }),
        },
        other => Err(GobError::Mismatch(format!(
            "expected a struct, found {}",
            other.kind()
        ))),
    }
}

macro_rules! basic_gob {
    ($rust:ty, $variant:ident, $ty:ident, $kind:literal) => {
        impl ToGob for $rust {
            fn gob_type() -> Type {
                Type::$ty
            }
            fn to_gob(&self) -> Value {
                Value::$variant(self.clone())
            }
        }
        impl FromGob for $rust {
            fn from_gob(v: &Value) -> Result<Self, GobError> {
                match v {
                    Value::$variant(x) => Ok(x.clone()),
                    other => Err(GobError::Mismatch(format!(
                        "expected {}, found {}",
                        $kind,
                        other.kind()
                    ))),
                }
            }
        }
    };
}
basic_gob!(bool, Bool, Bool, "bool");
basic_gob!(i64, Int, Int, "int");
basic_gob!(u64, Uint, Uint, "uint");
basic_gob!(f64, Float, Float, "float");
basic_gob!(String, String, String, "string");

impl ToGob for str {
    fn gob_type() -> Type {
        Type::String
    }
    fn to_gob(&self) -> Value {
        Value::String(self.to_string())
    }
}

/// Slices travel unnamed, as Go names a slice passed straight to `Encode`.
impl<T: ToGob> ToGob for [T] {
    fn gob_type() -> Type {
        Type::slice("", T::gob_type())
    }
    fn to_gob(&self) -> Value {
        Value::Slice(self.iter().map(T::to_gob).collect())
    }
}
impl<T: ToGob> ToGob for Vec<T> {
    fn gob_type() -> Type {
        <[T]>::gob_type()
    }
    fn to_gob(&self) -> Value {
        self.as_slice().to_gob()
    }
}
impl<T: FromGob> FromGob for Vec<T> {
    fn from_gob(v: &Value) -> Result<Self, GobError> {
        match v {
            Value::Slice(items) => items.iter().map(T::from_gob).collect(),
            other => Err(GobError::Mismatch(format!(
                "expected a slice, found {}",
                other.kind()
            ))),
        }
    }
}

impl<K: ToGob, V: ToGob> ToGob for BTreeMap<K, V> {
    fn gob_type() -> Type {
        Type::map("", K::gob_type(), V::gob_type())
    }
    fn to_gob(&self) -> Value {
        Value::Map(self.iter().map(|(k, v)| (k.to_gob(), v.to_gob())).collect())
    }
}
impl<K: FromGob + Ord, V: FromGob> FromGob for BTreeMap<K, V> {
    fn from_gob(v: &Value) -> Result<Self, GobError> {
        match v {
            Value::Map(pairs) => pairs
                .iter()
                .map(|(k, v)| Ok((K::from_gob(k)?, V::from_gob(v)?)))
                .collect(),
            other => Err(GobError::Mismatch(format!(
                "expected a map, found {}",
                other.kind()
            ))),
        }
    }
}

/// `()` is Go's `struct{}`.
impl ToGob for () {
    fn gob_type() -> Type {
        Type::empty_struct()
    }
    fn to_gob(&self) -> Value {
        Value::Struct(Vec::new())
    }
}
impl FromGob for () {
    fn from_gob(_: &Value) -> Result<Self, GobError> {
        Ok(())
    }
}

impl FromGob for Value {
    fn from_gob(v: &Value) -> Result<Self, GobError> {
        Ok(v.clone())
    }
}

#[cfg(test)]
mod tests;
