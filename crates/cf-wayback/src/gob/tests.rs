use std::collections::BTreeMap;

use super::decoder::Cursor;
use super::encoder::{put_float, put_int, put_uint};
use super::values::omitted_when_zero;
use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn encode_one(ty: &Type, v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    Encoder::new().encode(&mut out, ty, v).unwrap();
    out
}

fn decode_all(bytes: &[u8]) -> Result<Vec<Value>, GobError> {
    let mut dec = Decoder::new(bytes);
    let mut values = Vec::new();
    loop {
        match dec.decode() {
            Ok(v) => values.push(v),
            Err(GobError::Eof) => return Ok(values),
            Err(e) => return Err(e),
        }
    }
}

#[test]
fn integers_follow_the_spec_examples() {
    // (value, encoding) from the encoding/gob package documentation
    for (u, want) in [
        (0u64, "00"),
        (7, "07"),
        (127, "7f"),
        (128, "ff80"),
        (256, "fe0100"),
    ] {
        let mut out = Vec::new();
        put_uint(&mut out, u);
        assert_eq!(hex::encode(&out), want, "uint {u}");
    }
    for (i, want) in [
        (-129i64, "fe0101"),
        (-65, "ff81"),
        (65, "ff82"),
        (3, "06"),
        (-1, "01"),
    ] {
        let mut out = Vec::new();
        put_int(&mut out, i);
        assert_eq!(hex::encode(&out), want, "int {i}");
    }
    let mut out = Vec::new();
    put_float(&mut out, 17.0);
    assert_eq!(hex::encode(&out), "fe3140");
    for u in [0, 1, 127, 128, 255, 256, u32::MAX as u64, u64::MAX] {
        let mut out = Vec::new();
        put_uint(&mut out, u);
        assert_eq!(Cursor { buf: &out }.uint().unwrap(), u);
    }
    for i in [0, -1, 1, -65, 65, i64::MIN, i64::MAX] {
        let mut out = Vec::new();
        put_int(&mut out, i);
        assert_eq!(Cursor { buf: &out }.int().unwrap(), i);
    }
}

#[test]
fn point_example_from_the_spec_encodes_and_decodes() {
    let point = Type::structure("Point", vec![("X", Type::Int), ("Y", Type::Int)]);
    let p = Value::Struct(vec![
        ("X".into(), Value::Int(22)),
        ("Y".into(), Value::Int(33)),
    ]);
    let mut enc = Encoder::new();
    let (mut first, mut second) = (Vec::new(), Vec::new());
    enc.encode(&mut first, &point, &p).unwrap();
    enc.encode(&mut second, &point, &p).unwrap();
    let spec = "1fff8103010105506f696e7401ff820001020101580104000101590104000000\
                07ff82012c014200";
    assert_eq!(hex::encode(&first), spec);
    assert_eq!(
        hex::encode(&second),
        "07ff82012c014200",
        "the type is sent once per stream"
    );
    assert_eq!(
        decode_all(&[first, second].concat()).unwrap(),
        vec![p.clone(), p]
    );
    assert_eq!(
        hex::encode(encode_one(&Type::Int, &Value::Int(3))),
        "03040006"
    );
}

#[test]
fn zero_fields_are_omitted_but_nested_structs_are_always_sent() {
    let inner = Type::structure("In", vec![("A", Type::Int)]);
    let outer = Type::structure(
        "Out",
        vec![
            ("S", Type::String),
            ("I", inner),
            ("B", Type::Bool),
            ("L", Type::slice("", Type::Int)),
        ],
    );
    let v = Value::Struct(vec![
        ("S".into(), Value::String(String::new())),
        ("B".into(), Value::Bool(true)),
    ]);
    let bytes = encode_one(&outer, &v);
    let decoded = decode_all(&bytes).unwrap();
    // I (field 1) is sent as an empty struct although absent; S and L are not sent.
    let want = Value::Struct(vec![
        ("I".into(), Value::Struct(vec![])),
        ("B".into(), Value::Bool(true)),
    ]);
    assert_eq!(decoded, vec![want.clone()]);
    assert_eq!(want, v.canonical().canonical_with_field("I"));
    assert_eq!(field::<String>(&decoded[0], "S").unwrap(), "");
    assert_eq!(
        field::<Vec<i64>>(&decoded[0], "L").unwrap(),
        Vec::<i64>::new()
    );
}

impl Value {
    fn canonical_with_field(self, name: &str) -> Value {
        let Value::Struct(mut fields) = self else {
            unreachable!()
        };
        fields.insert(0, (name.to_string(), Value::Struct(vec![])));
        Value::Struct(fields)
    }
}

#[test]
fn the_encoder_refuses_values_that_do_not_fit() {
    let t = Type::structure("T", vec![("A", Type::Int)]);
    let mut enc = Encoder::new();
    let mut out = Vec::new();
    // (value, why it does not fit)
    for (v, why) in [
        (
            Value::Struct(vec![("A".into(), Value::String("x".into()))]),
            "wrong field kind",
        ),
        (
            Value::Struct(vec![("A".into(), Value::Uint(0))]),
            "zero of the wrong kind",
        ),
        (
            Value::Struct(vec![("Z".into(), Value::Int(1))]),
            "unknown field",
        ),
        (Value::Int(1), "not a struct"),
    ] {
        assert!(
            matches!(enc.encode(&mut out, &t, &v), Err(GobError::Mismatch(_))),
            "{why}"
        );
    }
    assert!(
        out.is_empty(),
        "a refused value writes nothing, not even its type"
    );
}

#[test]
fn corrupt_streams_are_errors() {
    let t = Type::structure("T", vec![("A", Type::String)]);
    let good = encode_one(
        &t,
        &Value::Struct(vec![("A".into(), Value::String("hi".into()))]),
    );
    let definition = &good[..1 + good[0] as usize];
    let hexed = |s: &str| hex::decode(s).unwrap();
    // (bytes, expected error, why they are refused)
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (
            hexed("03ff8200"),
            "UnknownType(65)",
            "a value of a type never defined",
        ),
        (hexed("021f00"), "Malformed", "redefining builtin type 16"),
        (hexed("03100000"), "Unsupported", "an interface value"),
        (
            hexed("030c0005"),
            "Malformed",
            "a string longer than its message",
        ),
        (hexed("050c00014100"), "Malformed", "bytes after the value"),
        (
            hexed("030c0100"),
            "Malformed",
            "a singleton without its zero delta",
        ),
        (
            hexed("03ff8100"),
            "Malformed",
            "a type definition that defines nothing",
        ),
        (
            hexed("f9ffffffffffffff"),
            "Malformed",
            "a message length beyond the limit",
        ),
        (hexed("ff"), "Io", "a length cut short"),
        (hexed("05"), "Io", "a message cut short"),
        (
            [definition, definition].concat(),
            "Malformed",
            "a type defined twice",
        ),
        (
            [definition, &hexed("04ff820500")].concat(),
            "Malformed",
            "a field the type lacks",
        ),
        (
            [definition, &hexed("04ff8201ff")].concat(),
            "Malformed",
            "a field delta cut short",
        ),
    ];
    for (bytes, want, why) in cases {
        let err = decode_all(&bytes).expect_err(why);
        assert!(format!("{err:?}").starts_with(want), "{why}: got {err:?}");
    }
    assert!(decode_all(&good).is_ok());
}

#[test]
fn every_truncation_and_corruption_fails_cleanly() {
    let t = Type::structure(
        "T",
        vec![
            ("A", Type::String),
            ("M", Type::map("", Type::String, Type::Int)),
            (
                "L",
                Type::slice("", Type::structure("E", vec![("F", Type::Float)])),
            ),
        ],
    );
    let v = Value::Struct(vec![
        ("A".into(), Value::String("hello".into())),
        (
            "M".into(),
            Value::Map(vec![(Value::String("k".into()), Value::Int(-5))]),
        ),
        (
            "L".into(),
            Value::Slice(vec![Value::Struct(vec![("F".into(), Value::Float(1.5))])]),
        ),
    ]);
    let good = encode_one(&t, &v);
    for cut in 0..good.len() {
        assert!(
            decode_all(&good[..cut])
                .map(|v| v.is_empty())
                .unwrap_or(true),
            "cut at {cut}"
        );
    }
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..2000 {
        let mut bad = good.clone();
        let i = rng.gen_range(0..bad.len());
        bad[i] = rng.gen();
        let _ = decode_all(&bad); // must not panic or allocate wildly
    }
}

// ---- round trips of random types and values ----

fn random_type(rng: &mut StdRng, depth: usize, made: &mut Vec<Type>) -> Type {
    if !made.is_empty() && rng.gen_bool(0.15) {
        return made[rng.gen_range(0..made.len())].clone(); // shared types share an id
    }
    let top = if depth >= 3 { 6 } else { 10 };
    let ty = match rng.gen_range(0..top) {
        0 => Type::Bool,
        1 => Type::Int,
        2 => Type::Uint,
        3 => Type::Float,
        4 => Type::Bytes,
        5 => Type::String,
        6 => Type::slice(&format!("S{depth}"), random_type(rng, depth + 1, made)),
        7 => Type::map("", Type::String, random_type(rng, depth + 1, made)),
        _ => {
            let n = rng.gen_range(0..5);
            let name = format!("T{}", rng.gen::<u16>());
            let fields = (0..n).map(|i| (format!("F{i}"), random_type(rng, depth + 1, made)));
            Type::Struct {
                name,
                fields: fields.collect(),
            }
        }
    };
    if ty.builtin_id().is_none() {
        made.push(ty.clone());
    }
    ty
}

/// A value exactly as a decoder returns it (zero fields absent).
fn random_value(rng: &mut StdRng, ty: &Type) -> Value {
    match ty {
        Type::Bool => Value::Bool(rng.gen()),
        Type::Int => Value::Int([0, -1, 1, i64::MIN, i64::MAX, rng.gen()][rng.gen_range(0..6)]),
        Type::Uint => Value::Uint([0, 127, 128, u64::MAX, rng.gen()][rng.gen_range(0..5)]),
        Type::Float => Value::Float([0.0, 17.0, -1.5, f64::MAX, rng.gen()][rng.gen_range(0..5)]),
        Type::Bytes => Value::Bytes((0..rng.gen_range(0..300)).map(|_| rng.gen()).collect()),
        Type::String => {
            let pool = ["", "a", "bearer eyJ", "é€𝄞", "--json"];
            Value::String(pool[rng.gen_range(0..pool.len())].repeat(rng.gen_range(1..40)))
        }
        Type::Slice { elem, .. } => Value::Slice(
            (0..rng.gen_range(0..4))
                .map(|_| random_value(rng, elem))
                .collect(),
        ),
        Type::Map { key, elem, .. } => Value::Map(
            (0..rng.gen_range(0..3))
                .map(|_| (random_value(rng, key), random_value(rng, elem)))
                .collect(),
        ),
        Type::Struct { fields, .. } => Value::Struct(
            fields
                .iter()
                .map(|(n, t)| (n.clone(), random_value(rng, t)))
                .filter(|(_, v)| !omitted_when_zero(v))
                .collect(),
        ),
    }
}

#[test]
fn random_values_round_trip_on_one_stream() {
    for seed in 0..400 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut made = Vec::new();
        let items: Vec<(Type, Value)> = (0..rng.gen_range(1..4))
            .map(|_| {
                let ty = random_type(&mut rng, 0, &mut made);
                let v = random_value(&mut rng, &ty);
                (ty, v)
            })
            .collect();
        let mut enc = Encoder::new();
        let mut stream = Vec::new();
        for (ty, v) in &items {
            enc.encode(&mut stream, ty, v).unwrap();
        }
        // The same values again: no type definitions the second time.
        let mut again = Vec::new();
        for (ty, v) in &items {
            enc.encode(&mut again, ty, v).unwrap();
        }
        let mut expected: Vec<Value> = items.iter().map(|(_, v)| v.clone()).collect();
        expected.extend(expected.clone());
        let decoded = decode_all(&[stream, again.clone()].concat()).unwrap_or_else(|e| {
            panic!("seed {seed}: {e} for {items:?}");
        });
        assert_eq!(decoded, expected, "seed {seed}");
        let mut cur = Cursor { buf: &again };
        while !cur.buf.is_empty() {
            let msg = cur.bytes().unwrap();
            assert!(
                Cursor { buf: msg }.int().unwrap() > 0,
                "seed {seed}: a definition was resent"
            );
        }
    }
}

#[test]
fn typed_conversions_read_missing_fields_as_zero_and_report_the_field() {
    let v = Value::Struct(vec![("N".into(), Value::String("x".into()))]);
    assert_eq!(field::<i64>(&v, "Missing").unwrap(), 0);
    let err = field::<i64>(&v, "N").unwrap_err().to_string();
    assert!(err.contains("N: expected int, found string"), "{err}");
    assert!(field::<String>(&Value::Int(1), "N").is_err());
    let m: BTreeMap<String, i64> = [("a".to_string(), 1)].into();
    assert_eq!(BTreeMap::<String, i64>::from_gob(&m.to_gob()).unwrap(), m);
}
