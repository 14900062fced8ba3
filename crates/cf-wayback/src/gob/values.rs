//! The values a gob stream carries: [`Value`], dynamic, as the decoder returns it and the
//! encoder takes it, and [`Type`], the static shape the encoder describes in a type definition.
//! Imports nothing outside `gob`.

/// A decoded (or to-be-encoded) gob value. Structs keep their fields by name, in wire order;
/// a decoded struct lists only the fields that were transmitted (zero fields are omitted on the
/// wire), so read fields through [`field`](super::field), which treats a missing field as zero.
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
pub(super) fn omitted_when_zero(v: &Value) -> bool {
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
    pub(super) fn builtin_id(&self) -> Option<i64> {
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
