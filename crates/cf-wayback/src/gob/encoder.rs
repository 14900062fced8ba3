//! Writing a gob stream: the primitive encodings, values against their [`Type`], and the
//! [`Encoder`], which numbers types as Go would in a fresh process and sends each definition
//! once per stream. Imports nothing outside `gob`.

use std::collections::{HashMap, HashSet};

use super::values::omitted_when_zero;
use super::{GobError, Type, Value, FIRST_USER_ID};

pub(super) fn put_uint(out: &mut Vec<u8>, x: u64) {
    if x < 0x80 {
        out.push(x as u8);
        return;
    }
    let skip = (x.leading_zeros() / 8) as usize;
    out.push((skip as u8).wrapping_sub(8)); // the byte count, negated
    out.extend_from_slice(&x.to_be_bytes()[skip..]);
}

pub(super) fn put_int(out: &mut Vec<u8>, i: i64) {
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

pub(super) fn put_float(out: &mut Vec<u8>, f: f64) {
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
