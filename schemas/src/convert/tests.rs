//! The conversion's tests: every type and error path of the JSON and XML readers and the
//! writers, round trips, and proptests over garbage. One subject kept in one file (past ~800
//! lines) so the shared fixtures (`EVERYTHING`, the sample values) are defined once.

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

// ----- JSON: every type

#[test]
fn given_a_document_with_every_type_when_converted_from_json_then_it_is_the_expected_value() {
    let schema = everything();
    let value = from_json(&schema, &full_json()).unwrap();
    assert_eq!(value, full_value());
    assert_valid(&schema, &value);
}

#[test]
fn given_absent_optional_and_defaulted_fields_when_converted_then_defaults_and_nulls_fill_in() {
    let mut doc = full_json();
    let obj = doc.as_object_mut().unwrap();
    for name in ["spare", "note", "either", "nothing", "priority", "grid"] {
        obj.remove(name);
    }
    let schema = everything();
    let value = from_json(&schema, &doc).unwrap();
    assert_eq!(
        field(&value, "spare"),
        &Value::Union(0, Box::new(Value::Null))
    );
    assert_eq!(
        field(&value, "note"),
        &Value::Union(0, Box::new(Value::Null))
    );
    assert_eq!(
        field(&value, "either"),
        &Value::Union(0, Box::new(Value::Null))
    );
    assert_eq!(field(&value, "nothing"), &Value::Null);
    assert_eq!(field(&value, "priority"), &Value::Int(5));
    assert_eq!(field(&value, "grid"), &Value::Array(vec![]));
    assert_valid(&schema, &value);
}

#[test]
fn given_explicit_nulls_for_optional_fields_when_converted_then_they_are_null() {
    let value = from_json(
        &everything(),
        &with(json!({"spare": null, "note": null, "either": null})),
    )
    .unwrap();
    assert_eq!(
        field(&value, "note"),
        &Value::Union(0, Box::new(Value::Null))
    );
    assert_eq!(
        field(&value, "spare"),
        &Value::Union(0, Box::new(Value::Null))
    );
}

#[test]
fn given_a_multi_branch_union_when_converted_then_the_matching_branch_is_chosen() {
    let v = from_json(&everything(), &with(json!({"either": "text"}))).unwrap();
    assert_eq!(
        field(&v, "either"),
        &Value::Union(2, Box::new(Value::String("text".into())))
    );
    let err = json_err(with(json!({"either": true})));
    assert_eq!(err.field, "either");
    assert_eq!(
        err.reason,
        "expected null or long or string, found boolean true"
    );
}

#[test]
fn given_non_finite_float_strings_when_converted_then_they_are_accepted() {
    let v = from_json(
        &everything(),
        &with(json!({"ratio": "Infinity", "precise": "-Infinity"})),
    )
    .unwrap();
    assert_eq!(field(&v, "ratio"), &Value::Float(f32::INFINITY));
    assert_eq!(field(&v, "precise"), &Value::Double(f64::NEG_INFINITY));
    let v = from_json(&everything(), &with(json!({"precise": "NaN", "ratio": 3}))).unwrap();
    assert!(matches!(field(&v, "precise"), Value::Double(f) if f.is_nan()));
    assert_eq!(field(&v, "ratio"), &Value::Float(3.0));
}

// ----- JSON: every error path

#[test]
fn given_a_wrong_type_in_an_array_item_when_converted_then_the_error_names_the_path() {
    let err = json_err(with(
        json!({"parts": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": "x"}]}),
    ));
    assert_eq!(err.field, "parts[1].qty");
    assert_eq!(
        err.to_string(),
        "field `parts[1].qty`: expected int, found string \"x\""
    );
    assert_eq!(err.class(), ErrorClass::Poison);
}

#[test]
fn given_a_missing_required_field_when_converted_then_it_is_an_error() {
    let err = json_err(without("label"));
    assert_eq!(err.field, "label");
    assert_eq!(err.reason, "missing required field of type string");
    let err = json_err(with(json!({"parts": [{"sku": "a"}]})));
    assert_eq!(err.field, "parts[0].qty");
    assert_eq!(err.reason, "missing required field of type int");
}

#[test]
fn given_an_unknown_field_when_converted_then_it_is_an_error() {
    let err = json_err(with(
        json!({"spare": {"sku": "a", "qty": 1, "colour": "red"}}),
    ));
    assert_eq!(err.field, "spare.colour");
    assert_eq!(
        err.reason,
        "unknown field; eip.test.Part has fields sku, qty"
    );
}

#[test]
fn given_scalars_of_the_wrong_kind_when_converted_then_each_is_refused_with_what_was_found() {
    let cases = [
        (
            json!({"flag": "true"}),
            "flag",
            "expected boolean, found string \"true\"",
        ),
        (
            json!({"count": 1.5}),
            "count",
            "expected int, found number 1.5",
        ),
        (
            json!({"count": 2_147_483_648_i64}),
            "count",
            "2147483648 is out of range for int",
        ),
        (
            json!({"count": -2_147_483_649_i64}),
            "count",
            "-2147483649 is out of range for int",
        ),
        (
            json!({"total": u64::MAX}),
            "total",
            "18446744073709551615 is out of range for long",
        ),
        (
            json!({"total": "5"}),
            "total",
            "expected long, found string \"5\"",
        ),
        (
            json!({"ratio": 1e300}),
            "ratio",
            "1e+300 is out of range for float",
        ),
        (
            json!({"precise": "fast"}),
            "precise",
            "expected double, found string \"fast\"",
        ),
        (
            json!({"label": 5}),
            "label",
            "expected string, found number 5",
        ),
        (
            json!({"label": null}),
            "label",
            "expected string, found null",
        ),
        (
            json!({"blob": [1, 2]}),
            "blob",
            "expected bytes, found an array of 2 items",
        ),
        (
            json!({"blob": "€"}),
            "blob",
            "expected bytes as a string of code points U+0000..U+00FF, found U+20AC at character 0",
        ),
        (
            json!({"digest": "abc"}),
            "digest",
            "expected 4 bytes for fixed eip.test.Digest of 4 bytes, found 3",
        ),
        (
            json!({"digest": 4}),
            "digest",
            "expected fixed eip.test.Digest of 4 bytes, found number 4",
        ),
        (
            json!({"color": "PINK"}),
            "color",
            "expected one of the symbols RED, GREEN, BLUE of enum eip.test.Color, found string \"PINK\"",
        ),
        (
            json!({"color": 1}),
            "color",
            "expected enum eip.test.Color, found number 1",
        ),
        (
            json!({"tags": {"a": "x"}}),
            "tags[\"a\"]",
            "expected long, found string \"x\"",
        ),
        (
            json!({"tags": [1]}),
            "tags",
            "expected map of long, found an array of 1 items",
        ),
        (
            json!({"parts": {}}),
            "parts",
            "expected array of record eip.test.Part, found an object",
        ),
        (
            json!({"spare": 3}),
            "spare",
            "expected record eip.test.Part (a JSON object), found number 3",
        ),
        (
            json!({"nothing": 0}),
            "nothing",
            "expected null, found number 0",
        ),
        (
            json!({"note": false}),
            "note",
            "expected string, found boolean false",
        ),
        (
            json!({"grid": [[1], ["x"]]}),
            "grid[1][0]",
            "expected int, found string \"x\"",
        ),
    ];
    for (change, path, reason) in cases {
        let err = json_err(with(change.clone()));
        assert_eq!(
            (err.field.as_str(), err.reason.as_str()),
            (path, reason),
            "{change}"
        );
    }
}

#[test]
fn given_a_document_that_is_not_an_object_when_converted_then_the_whole_document_is_refused() {
    let err = from_json(&everything(), &json!([1])).unwrap_err();
    assert_eq!(err.field, "");
    assert_eq!(
        err.to_string(),
        "expected record eip.test.Everything (a JSON object), found an array of 1 items"
    );
}

#[test]
fn given_malformed_json_bytes_when_converted_then_the_error_has_line_and_column() {
    let err = from_json_bytes(&everything(), b"{\"flag\": tru}").unwrap_err();
    assert_eq!(err.field, "");
    assert!(err.reason.starts_with("malformed JSON: "), "{err}");
    assert!(err.reason.contains("line 1 column"), "{err}");
    let err = from_json_bytes(&everything(), b"{} {}").unwrap_err();
    assert!(err.reason.contains("trailing characters"), "{err}");
    let ok = from_json_bytes(&everything(), full_json().to_string().as_bytes()).unwrap();
    assert_eq!(ok, full_value());
}

#[test]
fn given_many_errors_when_converted_with_all_then_each_is_reported_up_to_the_limit() {
    let errors = from_json_all(
        &everything(),
        &with(json!({"flag": 1, "count": "x", "extra": 1})),
    )
    .unwrap_err();
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, vec!["extra", "flag", "count"]);

    let many: Vec<Json> = (0..100).map(|_| json!({"sku": 1, "qty": 1})).collect();
    let errors = from_json_all(&everything(), &with(json!({ "parts": many }))).unwrap_err();
    assert_eq!(errors.len(), MAX_ERRORS);
    assert_eq!(errors[0].field, "parts[0].sku");
}

#[test]
fn given_a_schema_with_a_dangling_reference_or_a_logical_type_then_the_reason_says_so() {
    let dangling = Schema::Ref {
        name: apache_avro::schema::Name::new("eip.nope.Missing").unwrap(),
    };
    let err = from_json(&dangling, &json!({})).unwrap_err();
    assert_eq!(
        err.reason,
        "the schema refers to eip.nope.Missing, which it does not define"
    );
    let logical = Schema::parse_str(
            r#"{"type":"record","name":"L","fields":[{"name":"d","type":{"type":"int","logicalType":"date"}}]}"#,
        )
        .unwrap();
    let err = from_json(&logical, &json!({"d": 1})).unwrap_err();
    assert_eq!(err.field, "d");
    assert!(err.reason.contains("does not support"), "{err}");
    let err = from_xml(&logical, b"<L><d>1</d></L>").unwrap_err();
    assert!(err.reason.contains("does not support"), "{err}");
}

#[test]
fn given_a_default_that_does_not_fit_its_type_then_the_error_names_the_field() {
    // The parser accepts some defaults the converter can't use; the error says whose.
    let schema = Schema::parse_str(
        r#"{"type":"record","name":"D","fields":[{"name":"m","type":{"type":"map","values":"int"},"default":{"a":"x"}}]}"#,
    );
    if let Ok(schema) = schema {
        let err = from_json(&schema, &json!({})).unwrap_err();
        assert_eq!(err.field, "m");
        assert!(err.reason.starts_with("the schema's default"), "{err}");
    }
}

#[test]
fn an_error_without_a_field_displays_just_the_reason() {
    assert_eq!(ConvertError::new("", "nope").to_string(), "nope");
    assert_eq!(
        ConvertError::new("a.b", "nope").to_string(),
        "field `a.b`: nope"
    );
}

// ----- to_json

#[test]
fn given_a_typed_sample_when_written_as_json_and_read_back_then_it_is_the_same_value() {
    for seq in 0..20 {
        let (schema, value) = sample_value(seq);
        let json = to_json(&value);
        assert_eq!(json["metadata"]["causation_id"], Json::Null);
        assert!(json["lines"].is_array());
        let back = from_json(&schema, &json).unwrap();
        assert_eq!(back, value);
    }
}

#[test]
fn given_every_type_when_written_as_json_then_it_follows_the_convention() {
    let json = to_json(&full_value());
    assert_eq!(json, full_json());
    assert_eq!(from_json(&everything(), &json).unwrap(), full_value());
    assert_eq!(to_json(&Value::Float(f32::NAN)), json!("NaN"));
    assert_eq!(to_json(&Value::Double(f64::INFINITY)), json!("Infinity"));
    assert_eq!(
        to_json(&Value::Double(f64::NEG_INFINITY)),
        json!("-Infinity")
    );
    assert_eq!(to_json(&Value::Bytes(vec![0x41, 0xe9])), json!("Aé"));
}

// ----- XML: every type

const FULL_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- a comment is fine -->
<Everything xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <flag>true</flag>
  <count> -7 </count>
  <total>9007199254740993</total>
  <ratio>1.5</ratio>
  <precise>-0.25</precise>
  <blob>AP9B</blob>
  <label>h&#233;llo &lt;&amp;&gt; <![CDATA["world"]]></label>
  <color>GREEN</color>
  <digest>YWJjZA==</digest>
  <tags><entry key="b">-2</entry><entry key="a">1</entry></tags>
  <parts>
    <line><sku>S-1</sku><qty>2</qty></line>
    <part><qty>3</qty><sku>S-2</sku></part>
  </parts>
  <spare><sku>S-9</sku><qty>1</qty></spare>
  <note>fragile</note>
  <either>42</either>
  <nothing/>
  <priority>1</priority>
  <grid><row><i>1</i><i>2</i></row><row/><row><i>3</i></row></grid>
</Everything>"#;

fn xml_err(xml: &str) -> ConvertError {
    from_xml(&everything(), xml.as_bytes()).unwrap_err()
}

/// FULL_XML with one element replaced (by its opening tag name).
fn xml_with(name: &str, replacement: &str) -> String {
    let start = FULL_XML.find(&format!("<{name}")).unwrap();
    let end_tag = format!("</{name}>");
    let end = match FULL_XML[start..].find(&end_tag) {
        Some(i) => start + i + end_tag.len(),
        None => start + FULL_XML[start..].find("/>").unwrap() + 2,
    };
    format!("{}{replacement}{}", &FULL_XML[..start], &FULL_XML[end..])
}

#[test]
fn given_a_document_with_every_type_when_converted_from_xml_then_it_is_the_expected_value() {
    let schema = everything();
    let value = from_xml(&schema, FULL_XML.as_bytes()).unwrap();
    assert_eq!(value, full_value());
    assert_valid(&schema, &value);
}

#[test]
fn given_absent_and_nil_optional_elements_when_converted_from_xml_then_they_are_null() {
    let xml = xml_with("note", "<note xsi:nil=\"true\"/>");
    let xml = xml.replace("<spare><sku>S-9</sku><qty>1</qty></spare>", "");
    let xml = xml.replace("<either>42</either>", "<either xsi:nil=\"1\"></either>");
    let xml = xml
        .replace("<nothing/>", "")
        .replace("<priority>1</priority>", "");
    let v = from_xml(&everything(), xml.as_bytes()).unwrap();
    assert_eq!(field(&v, "note"), &Value::Union(0, Box::new(Value::Null)));
    assert_eq!(field(&v, "spare"), &Value::Union(0, Box::new(Value::Null)));
    assert_eq!(field(&v, "either"), &Value::Union(0, Box::new(Value::Null)));
    assert_eq!(field(&v, "nothing"), &Value::Null);
    assert_eq!(field(&v, "priority"), &Value::Int(5));
    // Another prefix bound to the XSI namespace works; xsi:nil="false" is not null.
    let xml = FULL_XML.replace(
        "<note>fragile</note>",
        "<note xmlns:i=\"http://www.w3.org/2001/XMLSchema-instance\" i:nil=\"true\"/>",
    );
    let v = from_xml(&everything(), xml.as_bytes()).unwrap();
    assert_eq!(field(&v, "note"), &Value::Union(0, Box::new(Value::Null)));
    let xml = FULL_XML.replace("<note>fragile</note>", "<note xsi:nil=\"false\">x</note>");
    let v = from_xml(&everything(), xml.as_bytes()).unwrap();
    assert_eq!(
        field(&v, "note"),
        &Value::Union(1, Box::new(Value::String("x".into())))
    );
    // An undeclared xsi prefix is taken to be XSI.
    let v = from_xml(
        &everything(),
        FULL_XML
            .replace(
                " xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"",
                "",
            )
            .replace("<note>fragile</note>", "<note xsi:nil=\"true\"/>")
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(field(&v, "note"), &Value::Union(0, Box::new(Value::Null)));
}

#[test]
fn given_empty_wrappers_and_varied_scalars_when_converted_from_xml_then_they_parse() {
    let xml = xml_with("parts", "<parts/>");
    let xml = xml.replace("<flag>true</flag>", "<flag> 0 </flag>");
    let xml = xml.replace(
        "<tags><entry key=\"b\">-2</entry><entry key=\"a\">1</entry></tags>",
        "<tags></tags>",
    );
    let xml = xml.replace("<ratio>1.5</ratio>", "<ratio>-INF</ratio>");
    let xml = xml.replace("<precise>-0.25</precise>", "<precise>NaN</precise>");
    let xml = xml
        .replace("<label>", "<label>  ")
        .replace("<either>42</either>", "<either>forty-two</either>");
    let v = from_xml(&everything(), xml.as_bytes()).unwrap();
    assert_eq!(field(&v, "parts"), &Value::Array(vec![]));
    assert_eq!(field(&v, "tags"), &Value::Map(HashMap::new()));
    assert_eq!(field(&v, "flag"), &Value::Boolean(false));
    assert_eq!(field(&v, "ratio"), &Value::Float(f32::NEG_INFINITY));
    assert!(matches!(field(&v, "precise"), Value::Double(f) if f.is_nan()));
    assert_eq!(
        field(&v, "label"),
        &Value::String("  héllo <&> \"world\"".into()),
        "strings keep their whitespace"
    );
    assert_eq!(
        field(&v, "either"),
        &Value::Union(2, Box::new(Value::String("forty-two".into())))
    );
}

// ----- XML: every error path

#[test]
fn given_xml_documents_that_break_the_schema_then_each_error_names_the_field_and_line() {
    let cases: Vec<(String, &str, &str)> = vec![
        (
            xml_with("count", "<count>x</count>"),
            "count",
            "expected int, found text \"x\"",
        ),
        (
            xml_with("count", "<count>2147483648</count>"),
            "count",
            "2147483648 is out of range for int",
        ),
        (
            xml_with(
                "total",
                "<total>99999999999999999999999999999999999999999</total>",
            ),
            "total",
            "is out of range for long",
        ),
        (
            xml_with("total", "<total></total>"),
            "total",
            "expected long, found text \"\"",
        ),
        (
            xml_with("flag", "<flag>yes</flag>"),
            "flag",
            "expected boolean, found text \"yes\"",
        ),
        (
            xml_with("ratio", "<ratio>1e300</ratio>"),
            "ratio",
            "1e300 is out of range for float",
        ),
        (
            xml_with("precise", "<precise>infinity</precise>"),
            "precise",
            "expected double",
        ),
        (
            xml_with("blob", "<blob>@@@@</blob>"),
            "blob",
            "expected base64 bytes, found text \"@@@@\"",
        ),
        (
            xml_with("blob", "<blob>AP9</blob>"),
            "blob",
            "expected base64 bytes",
        ),
        (
            xml_with("digest", "<digest>YWJj</digest>"),
            "digest",
            "expected 4 bytes for fixed eip.test.Digest of 4 bytes, found 3",
        ),
        (
            xml_with("color", "<color>PINK</color>"),
            "color",
            "expected one of the symbols RED, GREEN, BLUE",
        ),
        (
            xml_with("label", "<label><b>bold</b></label>"),
            "label",
            "expected string as text, found element <b>",
        ),
        (
            xml_with("label", "<label foo=\"1\">x</label>"),
            "label",
            "unexpected attribute `foo`",
        ),
        (
            xml_with(
                "parts",
                "<parts>loose<line><sku>a</sku><qty>1</qty></line></parts>",
            ),
            "parts",
            "mixed content: text \"loose\"",
        ),
        (
            xml_with(
                "parts",
                "<parts><line><sku>a</sku><qty>x</qty></line><line><sku>b</sku><qty>y</qty></line></parts>",
            ),
            "parts[0].qty",
            "expected int, found text \"x\"",
        ),
        (
            xml_with("spare", "<spare><sku>a</sku></spare>"),
            "spare.qty",
            "missing required field of type int",
        ),
        (
            xml_with(
                "spare",
                "<spare><sku>a</sku><qty>1</qty><planet>x</planet></spare>",
            ),
            "spare.planet",
            "unknown element <planet>; eip.test.Part has fields sku, qty",
        ),
        (
            xml_with("spare", "<spare>note<sku>a</sku><qty>1</qty></spare>"),
            "spare",
            "mixed content",
        ),
        (
            xml_with("note", "<note>a</note><note>b</note>"),
            "note",
            "the field's element appears more than once",
        ),
        (
            xml_with("label", ""),
            "label",
            "missing required field of type string",
        ),
        (
            xml_with("count", "<count xsi:nil=\"true\"/>"),
            "count",
            "xsi:nil=\"true\" on a field that is not optional (type int)",
        ),
        (
            xml_with("note", "<note xsi:nil=\"maybe\"/>"),
            "note",
            "xsi:nil must be true or false",
        ),
        (
            xml_with("note", "<note xsi:nil=\"true\">text</note>"),
            "note",
            "xsi:nil=\"true\" element has content",
        ),
        (
            xml_with("tags", "<tags><item key=\"a\">1</item></tags>"),
            "tags",
            "expected <entry key=\"...\"> elements",
        ),
        (
            xml_with("tags", "<tags><entry>1</entry></tags>"),
            "tags",
            "map <entry> without a key attribute",
        ),
        (
            xml_with(
                "tags",
                "<tags><entry key=\"a\">1</entry><entry key=\"a\">2</entry></tags>",
            ),
            "tags[\"a\"]",
            "duplicate map key",
        ),
        (
            xml_with("tags", "<tags><entry key=\"a\">x</entry></tags>"),
            "tags[\"a\"]",
            "expected long, found text \"x\"",
        ),
        (
            xml_with("nothing", "<nothing>x</nothing>"),
            "nothing",
            "expected null, found text \"x\"",
        ),
        (
            xml_with("either", "<either><a/></either>"),
            "either",
            "expected null or long or string, found element <either> with child elements",
        ),
    ];
    for (xml, path, reason) in cases {
        let err = xml_err(&xml);
        assert_eq!(err.field, path, "{xml}\n{err}");
        assert!(
            err.reason.contains(reason),
            "{xml}\nwanted {reason:?}, got {err}"
        );
        assert!(err.reason.contains(" at line "), "located: {err}");
    }
}

#[test]
fn given_an_unknown_element_when_converted_then_the_error_gives_its_line_and_column() {
    let xml = "<Everything>\n  <flag>true</flag>\n  <colour>RED</colour>\n</Everything>";
    let errors = from_xml_all(&everything(), xml.as_bytes()).unwrap_err();
    let unknown = errors.iter().find(|e| e.field == "colour").unwrap();
    assert_eq!(
        unknown.reason,
        "unknown element <colour>; eip.test.Everything has fields flag, count, total, ratio, precise, blob, label, color, digest, tags, parts, spare, note, either, nothing, priority, grid (<colour> at line 3, column 3)"
    );
}

#[test]
fn given_xml_that_is_unsafe_or_not_well_formed_then_it_is_refused_before_conversion() {
    let xxe = r#"<?xml version="1.0"?><!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><Everything><label>&xxe;</label></Everything>"#;
    let cases: Vec<(String, &str)> = vec![
        (xxe.to_string(), "DOCTYPE declarations are not allowed"),
        (
            "<Everything><label>&xxe;</label></Everything>".into(),
            "undefined entity &xxe;",
        ),
        (
            "<Everything><label>a</lab></Everything>".into(),
            "malformed XML at line 1",
        ),
        (
            "<Everything><label>a</label>".into(),
            "the document ends inside <Everything>",
        ),
        ("<a/><b/>".into(), "more than one root element"),
        (
            "hello <a/>".into(),
            "text \"hello\" outside the root element",
        ),
        ("".into(), "no root element"),
        ("<!-- only a comment -->".into(), "no root element"),
        (
            "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a/>".into(),
            "encoding ISO-8859-1 is not supported",
        ),
        ("<a x=\"1\" x=\"2\"/>".into(), "malformed XML"),
        ("<a>&#0;</a>".into(), "malformed XML"),
        (
            format!(
                "{}{}",
                "<a>".repeat(MAX_XML_DEPTH + 1),
                "</a>".repeat(MAX_XML_DEPTH + 1)
            ),
            "nested deeper than 128 levels",
        ),
    ];
    for (xml, reason) in cases {
        let err = xml_err(&xml);
        assert_eq!(err.field, "", "{xml}: {err}");
        assert!(
            err.reason.contains(reason),
            "{xml}\nwanted {reason:?}, got {err}"
        );
    }
    let err = from_xml(
        &everything(),
        &[0x3c, 0x61, 0x3e, 0xff, 0x3c, 0x2f, 0x61, 0x3e],
    )
    .unwrap_err();
    assert!(err.reason.contains("malformed XML"), "{err}");
}

// ----- to_xml

#[test]
fn given_a_typed_sample_when_written_as_xml_and_read_back_then_it_is_the_same_value() {
    for seq in 0..20 {
        let (schema, value) = sample_value(seq);
        let xml = to_xml("OrderPlaced", &value);
        assert!(xml.contains("<lines><item><sku>"), "{xml}");
        let back = from_xml(&schema, xml.as_bytes()).unwrap();
        assert_eq!(back, value, "{xml}");
    }
}

#[test]
fn given_every_type_when_written_as_xml_then_it_reads_back_unchanged() {
    let mut value = full_value();
    if let Value::Record(fields) = &mut value {
        fields[6].1 = Value::String(" <&>\"' \r\n\ttabs & \u{1} ".into());
        fields[9].1 = Value::Map(HashMap::from([
            ("a \"q\"\n<".to_string(), Value::Long(1)),
            ("".to_string(), Value::Long(2)),
        ]));
    }
    let xml = to_xml("Everything", &value);
    assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Everything>"));
    let back = from_xml(&everything(), xml.as_bytes()).unwrap();
    assert_eq!(back, value, "{xml}");
    // Nulls: optional fields are left out, null items are xsi:nil.
    let list = Schema::parse_str(r#"{"type":"array","items":["null","string"]}"#).unwrap();
    let items = Value::Array(vec![
        Value::Union(0, Box::new(Value::Null)),
        Value::Union(1, Box::new(Value::String("x".into()))),
    ]);
    let xml = to_xml("list", &items);
    assert!(
        xml.contains("xmlns:xsi=") && xml.contains("<item xsi:nil=\"true\"/>"),
        "{xml}"
    );
    assert_eq!(from_xml(&list, xml.as_bytes()).unwrap(), items);
    assert!(to_xml("bad name", &Value::Int(1)).contains("<record>1</record>"));
}

#[test]
fn base64_round_trips_and_refuses_non_canonical_text() {
    for len in 0..10 {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 250) as u8).collect();
        assert_eq!(base64_decode(&base64_encode(&bytes)).unwrap(), bytes);
    }
    assert_eq!(base64_encode(b"abcd"), "YWJjZA==");
    assert_eq!(base64_decode(" YWJj\nZA== ").unwrap(), b"abcd");
    for bad in ["YWJjZB==", "YQ=a", "Y===", "YWJjZA=", "YW=jZA=="] {
        assert!(base64_decode(bad).is_err(), "{bad}");
    }
}

// ----- properties

fn arb_json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number)),
        ".{0,12}".prop_map(Json::String),
        prop_oneof![
            Just("RED"),
            Just("NaN"),
            Just("abcd"),
            Just("sku"),
            Just("qty")
        ]
        .prop_map(|s| Json::String(s.into())),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("flag".to_string()),
                    Just("count".to_string()),
                    Just("parts".to_string()),
                    Just("sku".to_string()),
                    Just("qty".to_string()),
                    Just("tags".to_string()),
                    "[a-z]{1,6}"
                ],
                inner,
                0..8
            )
            .prop_map(|m| Json::Object(m.into_iter().collect())),
        ]
    })
}

fn xml_text() -> impl Strategy<Value = String> {
    // Any text XML 1.0 can carry (no control characters but tab, newline, return).
    "[^\u{0}-\u{8}\u{b}\u{c}\u{e}-\u{1f}]{0,16}"
}

fn arb_everything() -> impl Strategy<Value = Value> {
    (
        (
            any::<bool>(),
            any::<i32>(),
            any::<i64>(),
            -1e30f32..1e30f32,
            any::<f64>().prop_filter("finite", |f| f.is_finite()),
        ),
        (
            proptest::collection::vec(any::<u8>(), 0..12),
            xml_text(),
            0u32..3,
            proptest::array::uniform4(any::<u8>()),
        ),
        proptest::collection::hash_map(xml_text(), any::<i64>(), 0..4),
        proptest::collection::vec((xml_text(), any::<i32>()), 0..4),
        (
            proptest::option::of((xml_text(), any::<i32>())),
            proptest::option::of(xml_text()),
            proptest::option::of(prop_oneof![
                any::<i64>().prop_map(Value::Long),
                xml_text()
                    .prop_filter("not a number", |s| s.trim().parse::<i64>().is_err())
                    .prop_map(Value::String)
            ]),
        ),
        (
            any::<i32>(),
            proptest::collection::vec(proptest::collection::vec(any::<i32>(), 0..3), 0..3),
        ),
    )
        .prop_map(
            |(
                (flag, count, total, ratio, precise),
                (blob, label, color, digest),
                tags,
                parts,
                (spare, note, either),
                (priority, grid),
            )| {
                let opt = |v: Option<Value>, i: u32| match v {
                    None => Value::Union(0, Box::new(Value::Null)),
                    Some(v) => Value::Union(i, Box::new(v)),
                };
                let either_index = match either {
                    Some(Value::String(_)) => 2,
                    _ => 1,
                };
                Value::Record(vec![
                    ("flag".into(), Value::Boolean(flag)),
                    ("count".into(), Value::Int(count)),
                    ("total".into(), Value::Long(total)),
                    ("ratio".into(), Value::Float(ratio)),
                    ("precise".into(), Value::Double(precise)),
                    ("blob".into(), Value::Bytes(blob)),
                    ("label".into(), Value::String(label)),
                    (
                        "color".into(),
                        Value::Enum(color, ["RED", "GREEN", "BLUE"][color as usize].into()),
                    ),
                    ("digest".into(), Value::Fixed(4, digest.to_vec())),
                    (
                        "tags".into(),
                        Value::Map(tags.into_iter().map(|(k, v)| (k, Value::Long(v))).collect()),
                    ),
                    (
                        "parts".into(),
                        Value::Array(parts.into_iter().map(|(s, q)| part(&s, q)).collect()),
                    ),
                    ("spare".into(), opt(spare.map(|(s, q)| part(&s, q)), 1)),
                    ("note".into(), opt(note.map(Value::String), 1)),
                    ("either".into(), opt(either, either_index)),
                    ("nothing".into(), Value::Null),
                    ("priority".into(), Value::Int(priority)),
                    (
                        "grid".into(),
                        Value::Array(
                            grid.into_iter()
                                .map(|r| Value::Array(r.into_iter().map(Value::Int).collect()))
                                .collect(),
                        ),
                    ),
                ])
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        for schema in [&everything(), place_order()] {
            for result in [from_json_bytes(schema, &bytes), from_xml(schema, &bytes)] {
                match result {
                    Ok(value) => prop_assert!(value.validate(schema)),
                    Err(e) => prop_assert!(!e.reason.is_empty()),
                }
            }
        }
    }

    #[test]
    fn arbitrary_xml_like_text_never_panics(text in "[<>/a-z =\"&;#x0-9!\\[\\]?-]{0,80}") {
        let schema = everything();
        if let Ok(value) = from_xml(&schema, text.as_bytes()) {
            prop_assert!(value.validate(&schema));
        }
    }

    #[test]
    fn arbitrary_json_values_convert_or_give_an_error(doc in arb_json()) {
        for schema in [&everything(), place_order()] {
            match from_json_all(schema, &doc) {
                Ok(value) => {
                    prop_assert!(value.validate(schema));
                    prop_assert!(encode_value(1, schema, &value).is_ok());
                }
                Err(errors) => {
                    prop_assert!(!errors.is_empty() && errors.len() <= MAX_ERRORS);
                    prop_assert!(errors.iter().all(|e| !e.reason.is_empty()));
                }
            }
        }
    }

    #[test]
    fn arbitrary_values_round_trip_through_json_and_xml(value in arb_everything()) {
        let schema = everything();
        prop_assert!(value.validate(&schema));
        prop_assert_eq!(&from_json(&schema, &to_json(&value)).unwrap(), &value);
        let xml = to_xml("Everything", &value);
        prop_assert_eq!(&from_xml(&schema, xml.as_bytes()).unwrap(), &value, "{}", xml);
    }

    #[test]
    fn sample_orders_round_trip(seq in 0u64..100_000) {
        let (schema, value) = sample_value(seq);
        prop_assert_eq!(&from_json(&schema, &to_json(&value)).unwrap(), &value);
        prop_assert_eq!(&from_xml(&schema, to_xml("OrderPlaced", &value).as_bytes()).unwrap(), &value);
    }
}
