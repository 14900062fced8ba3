//! Rust types to and from gob values: [`ToGob`] gives a type's gob [`Type`] and its
//! [`Value`], [`FromGob`] reads one back, [`field`] reads a struct field that may not have
//! been transmitted. Imports nothing outside `gob`.

use std::collections::BTreeMap;

use super::{GobError, Type, Value};

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
