//! JSON: every type and every error path of the reader, and `to_json`.

use super::*;

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
