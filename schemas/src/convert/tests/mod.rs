//! The conversion's tests, by subject: [`json`], [`xml`] and [`properties`]. This module holds
//! the fixtures they share (`EVERYTHING`, the sample values).

use super::base64::{base64_decode, base64_encode};
use std::collections::HashMap;

use super::*;
use crate::catalog::Catalog;
use crate::codec::{decode_value_with, encode_value, encode_with_id};
use crate::registry::WriterSchema;
use crate::types::samples::order_placed;
use proptest::prelude::*;
use serde_json::json;

/// Every type the converter supports; `Part` is used twice, so its second use is a
/// `Schema::Ref` the converter has to follow.
const EVERYTHING: &str = r#"{
      "type": "record", "name": "Everything", "namespace": "eip.test",
      "fields": [
        {"name": "flag", "type": "boolean"},
        {"name": "count", "type": "int"},
        {"name": "total", "type": "long"},
        {"name": "ratio", "type": "float"},
        {"name": "precise", "type": "double"},
        {"name": "blob", "type": "bytes"},
        {"name": "label", "type": "string"},
        {"name": "color", "type": {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN", "BLUE"]}},
        {"name": "digest", "type": {"type": "fixed", "name": "Digest", "size": 4}},
        {"name": "tags", "type": {"type": "map", "values": "long"}},
        {"name": "parts", "type": {"type": "array", "items": {"type": "record", "name": "Part",
            "fields": [{"name": "sku", "type": "string"}, {"name": "qty", "type": "int"}]}}},
        {"name": "spare", "type": ["null", "Part"], "default": null},
        {"name": "note", "type": ["null", "string"]},
        {"name": "either", "type": ["null", "long", "string"], "default": null},
        {"name": "nothing", "type": "null"},
        {"name": "priority", "type": "int", "default": 5},
        {"name": "grid", "type": {"type": "array", "items": {"type": "array", "items": "int"}}, "default": []}
      ]
    }"#;

fn everything() -> Schema {
    Schema::parse_str(EVERYTHING).unwrap()
}

fn part(sku: &str, qty: i32) -> Value {
    Value::Record(vec![
        ("sku".into(), Value::String(sku.into())),
        ("qty".into(), Value::Int(qty)),
    ])
}

fn full_json() -> Json {
    json!({
        "flag": true,
        "count": -7,
        "total": 9_007_199_254_740_993_i64,
        "ratio": 1.5,
        "precise": -0.25,
        "blob": "\u{0}\u{ff}A",
        "label": "héllo <&> \"world\"",
        "color": "GREEN",
        "digest": "abcd",
        "tags": {"a": 1, "b": -2},
        "parts": [{"sku": "S-1", "qty": 2}, {"sku": "S-2", "qty": 3}],
        "spare": {"sku": "S-9", "qty": 1},
        "note": "fragile",
        "either": 42,
        "nothing": null,
        "priority": 1,
        "grid": [[1, 2], [], [3]]
    })
}

fn full_value() -> Value {
    Value::Record(vec![
        ("flag".into(), Value::Boolean(true)),
        ("count".into(), Value::Int(-7)),
        ("total".into(), Value::Long(9_007_199_254_740_993)),
        ("ratio".into(), Value::Float(1.5)),
        ("precise".into(), Value::Double(-0.25)),
        ("blob".into(), Value::Bytes(vec![0, 255, b'A'])),
        ("label".into(), Value::String("héllo <&> \"world\"".into())),
        ("color".into(), Value::Enum(1, "GREEN".into())),
        ("digest".into(), Value::Fixed(4, b"abcd".to_vec())),
        (
            "tags".into(),
            Value::Map(HashMap::from([
                ("a".to_string(), Value::Long(1)),
                ("b".to_string(), Value::Long(-2)),
            ])),
        ),
        (
            "parts".into(),
            Value::Array(vec![part("S-1", 2), part("S-2", 3)]),
        ),
        ("spare".into(), Value::Union(1, Box::new(part("S-9", 1)))),
        (
            "note".into(),
            Value::Union(1, Box::new(Value::String("fragile".into()))),
        ),
        ("either".into(), Value::Union(1, Box::new(Value::Long(42)))),
        ("nothing".into(), Value::Null),
        ("priority".into(), Value::Int(1)),
        (
            "grid".into(),
            Value::Array(vec![
                Value::Array(vec![Value::Int(1), Value::Int(2)]),
                Value::Array(vec![]),
                Value::Array(vec![Value::Int(3)]),
            ]),
        ),
    ])
}

fn field<'v>(value: &'v Value, name: &str) -> &'v Value {
    let Value::Record(fields) = value else {
        panic!("not a record: {value:?}")
    };
    &fields.iter().find(|(n, _)| n == name).unwrap().1
}

fn assert_valid(schema: &Schema, value: &Value) {
    assert!(value.validate(schema), "{value:?} does not validate");
    encode_value(1, schema, value).unwrap();
}

fn json_err(doc: Json) -> ConvertError {
    from_json(&everything(), &doc).unwrap_err()
}

fn with(changes: Json) -> Json {
    let mut doc = full_json();
    for (k, v) in changes.as_object().unwrap() {
        doc[k] = v.clone();
    }
    doc
}

fn without(name: &str) -> Json {
    let mut doc = full_json();
    doc.as_object_mut().unwrap().remove(name);
    doc
}

fn place_order() -> &'static Schema {
    &Catalog::global()
        .unwrap()
        .get("eip.orders.PlaceOrder")
        .unwrap()
        .schema
}

/// The typed sample as the generic value the codec reads back from its bytes.
fn sample_value(seq: u64) -> (Schema, Value) {
    let compiled = Catalog::global()
        .unwrap()
        .get("eip.orders.OrderPlaced")
        .unwrap();
    let framed = encode_with_id(1, &order_placed(seq)).unwrap();
    let writer = WriterSchema {
        id: 1,
        schema: compiled.schema.clone(),
        full_name: compiled.full_name.clone(),
        fingerprint: compiled.fingerprint,
    };
    let value = decode_value_with(&writer, &framed[5..]).unwrap();
    (compiled.schema.clone(), value)
}

mod json;
mod properties;
mod xml;
