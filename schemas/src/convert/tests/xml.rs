//! XML: every type and every error path of the reader, and `to_xml`.

use super::*;

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
