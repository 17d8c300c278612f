//! Field paths and literals over generic Avro values.
//!
//! A path is dotted field names with optional indexes: `shipping_address.country`,
//! `lines[0].sku`, or `lines[*].sku` for "any element". Unions are looked through, so a
//! nullable field holding a string is addressed like a plain string field. A path is checked
//! against the schemas it will read ([`check_path`]) when a rules file is loaded.

use std::cmp::Ordering;
use std::fmt;

use apache_avro::Schema;
use apache_avro::types::Value;
use eip_schemas::convert::type_name;

/// One step of a [`Path`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A record field by name.
    Field(String),
    /// An array element by position.
    Index(usize),
    /// Every element of an array.
    Every,
}

/// A parsed field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    text: String,
    segments: Vec<Segment>,
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Path {
    /// Parses `text`; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Path, String> {
        if text.is_empty() {
            return Err("empty field path".into());
        }
        let mut segments = Vec::new();
        for part in text.split('.') {
            let (name, mut rest) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if !valid_name(name) {
                return Err(format!(
                    "`{text}`: `{name}` is not a field name (letters, digits, _)"
                ));
            }
            segments.push(Segment::Field(name.to_string()));
            while !rest.is_empty() {
                let close = rest
                    .find(']')
                    .ok_or_else(|| format!("`{text}`: unclosed `[`"))?;
                let inner = &rest[1..close];
                segments.push(if inner == "*" {
                    Segment::Every
                } else {
                    Segment::Index(inner.parse().map_err(|_| {
                        format!("`{text}`: `[{inner}]` is not an index (a number or *)")
                    })?)
                });
                rest = &rest[close + 1..];
                if !rest.is_empty() && !rest.starts_with('[') {
                    return Err(format!("`{text}`: unexpected `{rest}` after `]`"));
                }
            }
        }
        Ok(Path {
            text: text.to_string(),
            segments,
        })
    }

    /// The steps of the path.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// True when the path can select more than one value (`[*]`).
    pub fn is_multi(&self) -> bool {
        self.segments.contains(&Segment::Every)
    }

    /// Calls `f` with every value the path selects (none when a step is missing or null).
    pub fn select<'v>(&self, root: &'v Value, f: &mut impl FnMut(&'v Value) -> bool) -> bool {
        select_from(unwrap(root), &self.segments, f)
    }

    /// The first value the path selects.
    pub fn first<'v>(&self, root: &'v Value) -> Option<&'v Value> {
        let mut found = None;
        self.select(root, &mut |v| {
            found = Some(v);
            true
        });
        found
    }
}

/// Looks through unions.
pub fn unwrap(v: &Value) -> &Value {
    match v {
        Value::Union(_, inner) => unwrap(inner),
        other => other,
    }
}

/// Walks `segments` from `v`; `f` returns true to stop. Returns true if stopped.
fn select_from<'v>(
    v: &'v Value,
    segments: &[Segment],
    f: &mut impl FnMut(&'v Value) -> bool,
) -> bool {
    let Some((first, rest)) = segments.split_first() else {
        return match v {
            Value::Null => false,
            other => f(other),
        };
    };
    match (first, v) {
        (Segment::Field(name), Value::Record(fields)) => fields
            .iter()
            .find(|(k, _)| k == name)
            .is_some_and(|(_, child)| select_from(unwrap(child), rest, f)),
        (Segment::Field(name), Value::Map(entries)) => entries
            .get(name)
            .is_some_and(|child| select_from(unwrap(child), rest, f)),
        (Segment::Index(i), Value::Array(items)) => items
            .get(*i)
            .is_some_and(|child| select_from(unwrap(child), rest, f)),
        (Segment::Every, Value::Array(items)) => items
            .iter()
            .any(|child| select_from(unwrap(child), rest, f)),
        _ => false,
    }
}

/// A constant from a rules file.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Str(s) => write!(f, "{s:?}"),
            Literal::Int(i) => write!(f, "{i}"),
            Literal::Float(x) => write!(f, "{x}"),
            Literal::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl Literal {
    /// Converts a TOML value; tables, arrays and datetimes are not literals.
    pub fn from_toml(v: &toml::Value) -> Result<Literal, String> {
        match v {
            toml::Value::String(s) => Ok(Literal::Str(s.clone())),
            toml::Value::Integer(i) => Ok(Literal::Int(*i)),
            toml::Value::Float(x) => Ok(Literal::Float(*x)),
            toml::Value::Boolean(b) => Ok(Literal::Bool(*b)),
            other => Err(format!(
                "expected a string, number or boolean, found {}",
                other.type_str()
            )),
        }
    }

    /// The Avro value of the literal (strings, longs, doubles, booleans; the output schema
    /// narrows them later).
    pub fn to_value(&self) -> Value {
        match self {
            Literal::Str(s) => Value::String(s.clone()),
            Literal::Int(i) => Value::Long(*i),
            Literal::Float(x) => Value::Double(*x),
            Literal::Bool(b) => Value::Boolean(*b),
        }
    }

    /// The literal as a number, if it is one.
    pub fn number(&self) -> Option<Number> {
        match self {
            Literal::Int(i) => Some(Number::Int(*i)),
            Literal::Float(x) => Some(Number::Float(*x)),
            _ => None,
        }
    }

    /// Whether `v` equals the literal. Numbers compare by value across int/long/float/double;
    /// strings match strings and enum symbols.
    pub fn matches(&self, v: &Value) -> bool {
        match (self, v) {
            (Literal::Str(s), Value::String(x)) => s == x,
            (Literal::Str(s), Value::Enum(_, x)) => s == x,
            (Literal::Bool(b), Value::Boolean(x)) => b == x,
            (Literal::Int(_) | Literal::Float(_), _) => match (self.number(), number(v)) {
                (Some(a), Some(b)) => a.cmp_with(b) == Some(Ordering::Equal),
                _ => false,
            },
            _ => false,
        }
    }
}

/// A number from a value or a literal, compared exactly when both are integers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    /// Integer.
    Int(i64),
    /// Floating point.
    Float(f64),
}

impl Number {
    /// Compares numerically; `None` when a NaN is involved.
    pub fn cmp_with(self, other: Number) -> Option<Ordering> {
        match (self, other) {
            (Number::Int(a), Number::Int(b)) => Some(a.cmp(&b)),
            (a, b) => a.as_f64().partial_cmp(&b.as_f64()),
        }
    }

    /// As a double.
    pub fn as_f64(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(x) => x,
        }
    }
}

/// The number in `v`, if it holds one.
pub fn number(v: &Value) -> Option<Number> {
    match unwrap(v) {
        Value::Int(i) => Some(Number::Int(i64::from(*i))),
        Value::Long(i) => Some(Number::Int(*i)),
        Value::Float(x) => Some(Number::Float(f64::from(*x))),
        Value::Double(x) => Some(Number::Float(*x)),
        _ => None,
    }
}

/// The text in `v`, if it is a string or an enum symbol.
pub fn text(v: &Value) -> Option<&str> {
    match unwrap(v) {
        Value::String(s) => Some(s),
        Value::Enum(_, s) => Some(s),
        _ => None,
    }
}

/// Why a path does not name a field of a schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The record has no such field.
    #[error("no field `{field}` in {record} (fields: {fields})")]
    NoField {
        /// The missing field.
        field: String,
        /// The record's full name.
        record: String,
        /// The fields it has, comma-separated.
        fields: String,
    },
    /// A field is looked up in something that is not a record or map.
    #[error("`{field}` is looked up in a {kind} value, which has no fields")]
    NotARecord {
        /// The field looked up.
        field: String,
        /// What the value is instead.
        kind: String,
    },
    /// An index on something that is not an array.
    #[error("indexing a {kind} value")]
    NotAnArray {
        /// What the value is instead.
        kind: String,
    },
    /// The union has no branch the path fits (its last branch's reason).
    #[error(transparent)]
    NoBranch(Box<PathError>),
    /// None of the schemas has the path: why, for each.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InNoSchema(Vec<PathError>),
}

/// Checks that `path` names a field in at least one of `schemas` (when any are known).
pub(crate) fn check_path(path: &Path, schemas: &[&Schema]) -> Result<(), PathError> {
    if schemas.is_empty() {
        return Ok(());
    }
    let mut errors = Vec::new();
    for schema in schemas {
        match walk_schema(schema, path.segments()) {
            Ok(()) => return Ok(()),
            Err(e) => errors.push(e),
        }
    }
    Err(if errors.len() == 1 {
        errors.swap_remove(0)
    } else {
        PathError::InNoSchema(errors)
    })
}

fn walk_schema(schema: &Schema, segments: &[Segment]) -> Result<(), PathError> {
    let Some((first, rest)) = segments.split_first() else {
        return Ok(());
    };
    match (first, schema) {
        (_, Schema::Union(u)) => {
            let mut last = None;
            for variant in u.variants() {
                if matches!(variant, Schema::Null) {
                    continue;
                }
                match walk_schema(variant, segments) {
                    Ok(()) => return Ok(()),
                    Err(e) => last = Some(e),
                }
            }
            Err(PathError::NoBranch(Box::new(last.unwrap_or_else(|| {
                PathError::NotAnArray {
                    kind: type_name(schema),
                }
            }))))
        }
        (Segment::Field(name), Schema::Record(r)) => match r.lookup.get(name) {
            Some(i) => walk_schema(&r.fields[*i].schema, rest),
            None => Err(PathError::NoField {
                field: name.clone(),
                record: r.name.fullname(None),
                fields: r
                    .fields
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        },
        (Segment::Field(_), Schema::Map(m)) => walk_schema(&m.types, rest),
        (Segment::Index(_) | Segment::Every, Schema::Array(a)) => walk_schema(&a.items, rest),
        (Segment::Field(name), other) => Err(PathError::NotARecord {
            field: name.clone(),
            kind: type_name(other),
        }),
        (_, other) => Err(PathError::NotAnArray {
            kind: type_name(other),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn order() -> Value {
        Value::Record(vec![
            ("customer_id".into(), Value::String("c-1".into())),
            ("total_cents".into(), Value::Long(12_500)),
            (
                "note".into(),
                Value::Union(1, Box::new(Value::String("gift".into()))),
            ),
            ("missing".into(), Value::Union(0, Box::new(Value::Null))),
            (
                "lines".into(),
                Value::Array(vec![
                    Value::Record(vec![("sku".into(), Value::String("A".into()))]),
                    Value::Record(vec![("sku".into(), Value::String("B".into()))]),
                ]),
            ),
        ])
    }

    #[test]
    fn given_nested_paths_when_selected_then_fields_indexes_and_unions_resolve() {
        let v = order();
        let sku1 = Path::parse("lines[1].sku").unwrap();
        assert_eq!(sku1.first(&v), Some(&Value::String("B".into())));
        let note = Path::parse("note").unwrap();
        assert_eq!(note.first(&v), Some(&Value::String("gift".into())));
        assert_eq!(Path::parse("missing").unwrap().first(&v), None);
        assert_eq!(Path::parse("lines[5].sku").unwrap().first(&v), None);
        let every = Path::parse("lines[*].sku").unwrap();
        let mut seen = Vec::new();
        every.select(&v, &mut |x| {
            seen.push(x.clone());
            false
        });
        assert_eq!(
            seen,
            vec![Value::String("A".into()), Value::String("B".into())]
        );
    }

    #[test]
    fn given_bad_paths_when_parsed_then_the_error_names_the_problem() {
        assert!(Path::parse("").unwrap_err().contains("empty"));
        assert!(Path::parse("a..b").unwrap_err().contains("field name"));
        assert!(Path::parse("a[1").unwrap_err().contains("unclosed"));
        assert!(Path::parse("a[x]").unwrap_err().contains("not an index"));
        assert!(Path::parse("a[1]b").unwrap_err().contains("unexpected"));
        assert!(Path::parse("9a").unwrap_err().contains("field name"));
    }

    #[test]
    fn given_literals_when_compared_then_numbers_compare_across_widths() {
        assert!(Literal::Int(5).matches(&Value::Int(5)));
        assert!(Literal::Float(5.0).matches(&Value::Long(5)));
        assert!(!Literal::Int(5).matches(&Value::String("5".into())));
        assert!(Literal::Str("EUR".into()).matches(&Value::Enum(0, "EUR".into())));
        assert!(Literal::Bool(true).matches(&Value::Boolean(true)));
        assert_eq!(
            Number::Int(i64::MAX).cmp_with(Number::Int(i64::MAX - 1)),
            Some(Ordering::Greater)
        );
    }
}
