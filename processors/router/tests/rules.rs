//! Given/when/then tests of rule matching and validation, and a property test of the parser.
//! Pure: no servers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use apache_avro::types::Value;
use eip_router::rules::{Decision, Mode, RuleSet, Subject};
use eip_runtime::Headers;
use eip_schemas::types::samples::order_placed;
use proptest::prelude::*;

fn order_value(seq: u64) -> Value {
    apache_avro::to_value(order_placed(seq)).unwrap()
}

fn set_field(v: &mut Value, name: &str, new: Value) {
    let Value::Record(fields) = v else { panic!() };
    fields.iter_mut().find(|(k, _)| k == name).unwrap().1 = new;
}

fn subject<'a>(topic: &'a str, headers: &'a Headers, value: &'a Value) -> Subject<'a> {
    Subject {
        topic,
        type_name: "eip.orders.OrderPlaced",
        headers,
        value,
    }
}

fn matched(set: &RuleSet, s: &Subject<'_>) -> Vec<String> {
    match set.evaluate(s) {
        Decision::Matched(rs) => rs.iter().map(|r| r.name.to_string()).collect(),
        Decision::Default(_) => vec!["<default>".into()],
        Decision::Unmatched => vec![],
    }
}

const RULES: &str = r#"
version = "test-1"
mode = "first-match"

[[rules]]
name = "eur-large"
match.types = ["eip.orders.OrderPlaced"]
match.when = { all = [ { field = "currency", eq = "EUR" }, { field = "total_cents", gte = 10000 } ] }
then.to = ["orders.eur.large"]

[[rules]]
name = "gb-address"
match.when = { field = "shipping_address.country", in = ["GB", "IE"] }
then.to = ["orders.uk", "orders.audit"]
then.headers = { region = "uk" }

[[rules]]
name = "vip-header"
match.headers = { tier = "vip" }
then.to = ["orders.vip"]

[[rules]]
name = "sku-regex"
match.when = { field = "lines[*].sku", regex = "^SKU-9" }
then.to = ["orders.nines"]

[[rules]]
name = "no-test"
match.topics = ["orders.test"]
then.drop = "test traffic"

[default]
to = ["orders.other"]
"#;

#[test]
fn given_first_match_rules_when_a_record_fits_several_then_only_the_first_applies() {
    let set = RuleSet::parse("rules.toml", RULES).unwrap();
    assert_eq!(set.version.as_ref(), "test-1");
    assert_eq!(set.mode, Mode::FirstMatch);
    let mut v = order_value(1);
    set_field(&mut v, "currency", Value::String("EUR".into()));
    set_field(&mut v, "total_cents", Value::Long(25_000));
    let mut h = Headers::new();
    h.push("tier", "vip");
    assert_eq!(matched(&set, &subject("orders.raw", &h, &v)), ["eur-large"]);
}

#[test]
fn given_all_match_mode_when_a_record_fits_several_then_all_apply_in_file_order() {
    let text = RULES.replace("mode = \"first-match\"", "mode = \"all-match\"");
    let set = RuleSet::parse("rules.toml", &text).unwrap();
    let mut v = order_value(1);
    set_field(&mut v, "currency", Value::String("EUR".into()));
    set_field(&mut v, "total_cents", Value::Long(25_000));
    let mut h = Headers::new();
    h.push("tier", "vip");
    assert_eq!(
        matched(&set, &subject("orders.raw", &h, &v)),
        ["eur-large", "vip-header"]
    );
}

#[test]
fn given_a_range_when_the_value_is_on_each_side_then_only_inside_matches() {
    let set = RuleSet::parse("rules.toml", RULES).unwrap();
    let h = Headers::new();
    for (total, expect) in [(9_999, "<default>"), (10_000, "eur-large")] {
        let mut v = order_value(1);
        set_field(&mut v, "currency", Value::String("EUR".into()));
        set_field(&mut v, "total_cents", Value::Long(total));
        assert_eq!(matched(&set, &subject("orders.raw", &h, &v)), [expect]);
    }
}

#[test]
fn given_nested_in_regex_and_topic_rules_when_evaluated_then_each_matches_its_records() {
    let set = RuleSet::parse("rules.toml", RULES).unwrap();
    let h = Headers::new();
    let mut v = order_value(2);
    let Value::Record(fields) = &mut v else {
        panic!()
    };
    let addr = &mut fields
        .iter_mut()
        .find(|(k, _)| k == "shipping_address")
        .unwrap()
        .1;
    set_field(addr, "country", Value::String("IE".into()));
    assert_eq!(
        matched(&set, &subject("orders.raw", &h, &v)),
        ["gb-address"]
    );

    let mut v = order_value(3);
    let Value::Record(fields) = &mut v else {
        panic!()
    };
    let lines = &mut fields.iter_mut().find(|(k, _)| k == "lines").unwrap().1;
    let Value::Array(items) = lines else { panic!() };
    set_field(&mut items[0], "sku", Value::String("SKU-9001".into()));
    assert_eq!(matched(&set, &subject("orders.raw", &h, &v)), ["sku-regex"]);

    let v = order_value(4);
    assert_eq!(matched(&set, &subject("orders.test", &h, &v)), ["no-test"]);
    assert_eq!(matched(&set, &subject("orders.raw", &h, &v)), ["<default>"]);
}

#[test]
fn given_not_any_exists_and_ne_when_evaluated_then_absence_is_handled() {
    let text = r#"
[[rules]]
name = "no-causation"
match.when = { not = { field = "metadata.causation_id", exists = true } }
then.to = ["a"]
[[rules]]
name = "any"
match.when = { any = [ { field = "currency", ne = "USD" }, { field = "customer_id", eq = "x" } ] }
then.to = ["b"]
"#;
    let set = RuleSet::parse("r", text).unwrap();
    let h = Headers::new();
    // A first event has no causation id: the first rule matches.
    let v = order_value(5);
    assert_eq!(matched(&set, &subject("t", &h, &v)), ["no-causation"]);
    // With a causation id it does not; the currency is EUR, not USD, so `any` matches.
    let mut v2 = order_value(5);
    let Value::Record(fields) = &mut v2 else {
        panic!()
    };
    let meta = &mut fields.iter_mut().find(|(k, _)| k == "metadata").unwrap().1;
    set_field(
        meta,
        "causation_id",
        Value::Union(1, Box::new(Value::String("evt-0".into()))),
    );
    assert_eq!(matched(&set, &subject("t", &h, &v2)), ["any"]);
}

#[test]
fn given_no_default_when_nothing_matches_then_the_record_is_unmatched() {
    let set = RuleSet::parse(
        "r",
        "[[rules]]\nname = \"x\"\nmatch.topics = [\"a\"]\nthen.to = [\"b\"]\n",
    )
    .unwrap();
    let h = Headers::new();
    let v = order_value(1);
    assert!(matches!(
        set.evaluate(&subject("other", &h, &v)),
        Decision::Unmatched
    ));
}

#[test]
fn given_no_version_when_parsed_then_the_version_is_a_stable_content_hash() {
    let text = "[[rules]]\nname = \"x\"\nthen.to = [\"b\"]\n";
    let a = RuleSet::parse("r", text).unwrap();
    let b = RuleSet::parse("r", text).unwrap();
    let c = RuleSet::parse("r", &text.replace("\"b\"", "\"c\"")).unwrap();
    assert!(a.version.starts_with("sha-"));
    assert_eq!(a.version, b.version);
    assert_ne!(a.version, c.version);
}

fn error_of(text: &str) -> String {
    RuleSet::parse("rules.toml", text).unwrap_err().to_string()
}

#[test]
fn given_invalid_files_when_parsed_then_each_error_is_located_and_says_why() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[[rules]]\nname = \"a\"\nthen.to = [\"x\"]\nbogus = 1\n",
            "rules.toml:4:1",
            "unknown field `bogus`",
        ),
        (
            "\n\n[[rules]]\nname = \"a\"\nmatch.types = [\"eip.Nope\"]\nthen.to = [\"x\"]\n",
            "rules.toml:3:",
            "unknown type `eip.Nope`",
        ),
        (
            "[[rules]]\nname = \"a\"\nmatch.types = [\"eip.orders.OrderPlaced\"]\nmatch.when = { field = \"totl_cents\", gt = 1 }\nthen.to = [\"x\"]\n",
            "rules[0] `a`",
            "no field `totl_cents` in eip.orders.OrderPlaced",
        ),
        (
            "[[rules]]\nname = \"a\"\nmatch.when = { field = \"x\", regex = \"(\" }\nthen.to = [\"x\"]\n",
            "match.when.regex",
            "regex",
        ),
        (
            "[[rules]]\nname = \"a\"\nmatch.when = { field = \"x\" }\nthen.to = [\"x\"]\n",
            "rules[0]",
            "needs a test",
        ),
        (
            "[[rules]]\nname = \"a\"\nmatch.when = { field = \"x\", gt = \"ten\" }\nthen.to = [\"x\"]\n",
            "match.when.gt",
            "expected a number",
        ),
        (
            "[[rules]]\nname = \"a\"\nthen.headers = { a = \"b\" }\n",
            "rules[0]",
            "needs `to`",
        ),
        (
            "[[rules]]\nname = \"a\"\nthen.to = [\"x\"]\n[[rules]]\nname = \"a\"\nthen.to = [\"y\"]\n",
            "rules[1] `a`",
            "already used",
        ),
        ("mode = \"some-match\"\n", "rules.toml:1:", "some-match"),
        (
            "[[rules]]\nname = \"a\"\nthen.drop = \"x\"\nthen.to = [\"y\"]\n",
            "rules[0]",
            "can't be combined",
        ),
        (
            "[[rules]]\nname = \"a\"\nthen.to = [\"x\"]\nthen.map_to = \"eip.common.Address\"\n",
            "then.map_to",
            "component",
        ),
        (
            "[[rules]]\nname = \"a\"\nthen.to = [\"x\"]\nthen.transform = [ { rename = \"a\" } ]\n",
            "then.transform[0]",
            "needs `to`",
        ),
        (
            "[[sources]]\ntopic = \"legacy\"\nformat = \"csv\"\ntype = \"eip.orders.OrderPlaced\"\n",
            "rules.toml:",
            "csv",
        ),
        ("[[rules]\n", "rules.toml:1:", ""),
    ];
    for (text, location, reason) in cases {
        let e = error_of(text);
        assert!(e.contains(location), "`{e}` should contain `{location}`");
        assert!(e.contains(reason), "`{e}` should contain `{reason}`");
    }
}

#[test]
fn given_an_unknown_key_in_a_table_when_parsed_then_its_line_is_reported_on_one_line() {
    let e = RuleSet::parse(
        "rules.toml",
        "[[rules]]\nname = \"r\"\nthen.to = [\"x\"]\nthen.nope = 1\n",
    )
    .unwrap_err();
    assert_eq!(e.to_string().lines().count(), 1, "{e}");
    assert!(
        e.to_string()
            .starts_with("rules.toml:4:6: unknown field `nope`"),
        "{e}"
    );
    let e = RuleSet::parse(
        "rules.toml",
        "[[rules]]\nname = \"r\"\nmatch.when = { field = \"x\", regex = \"(\" }\nthen.to = [\"x\"]\n",
    )
    .unwrap_err();
    assert_eq!(e.to_string().lines().count(), 1, "{e}");
    assert!(e.to_string().contains("unclosed group"), "{e}");
}

#[test]
fn given_an_error_deep_in_the_file_when_parsed_then_its_line_is_reported() {
    let text = format!(
        "{}\n[[rules]]\nname = \"late\"\nthen.to = [\"x\"]\nthen.format = \"yaml\"\n",
        "# comment\n".repeat(40)
    );
    let e = RuleSet::parse("f.toml", &text).unwrap_err();
    assert!(e.line > 40, "{e}");
    assert!(e.to_string().contains("yaml"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn garbage_is_rejected_with_a_located_error_and_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = RuleSet::parse("g.toml", &text) {
            prop_assert!(e.line >= 1 && e.column >= 1);
            prop_assert!(e.to_string().starts_with("g.toml:"));
        }
    }

    #[test]
    fn mutated_valid_files_never_panic(cut in 0usize..RULES.len(), insert in "[a-z\\[\\]{}=\"., \n]{0,12}") {
        let mut text = RULES.to_string();
        let at = (0..=cut).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        text.insert_str(at, &insert);
        match RuleSet::parse("m.toml", &text) {
            Ok(set) => prop_assert!(!set.version.is_empty()),
            Err(e) => prop_assert!(e.line >= 1 && e.to_string().starts_with("m.toml:")),
        }
    }
}
