//! Properties: round trips, and garbage that never panics.

use super::*;

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
