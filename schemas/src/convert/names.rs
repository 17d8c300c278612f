//! Named types and paths: following `Schema::Ref`s, rendering a field's path, and the
//! descriptions of schemas and values that errors use.

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::schema::{RecordSchema, SchemaKind, UnionSchema};
use apache_avro::types::Value;
use serde_json::Value as Json;

// ---------------------------------------------------------------------------------------------
// Named types and paths

/// Every named type defined in a schema (records, enums and fixed), by full name, so
/// `Schema::Ref`s can be followed. The one collector of named types in eip: the converter and
/// the router's transforms both resolve references through it.
pub struct Names<'s> {
    by_name: HashMap<String, &'s Schema>,
}

impl<'s> Names<'s> {
    /// Collects the named types `schema` defines.
    pub fn of(schema: &'s Schema) -> Names<'s> {
        let mut names = Names {
            by_name: HashMap::new(),
        };
        names.collect(schema);
        names
    }

    /// Every named type, by full name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &'s Schema)> + '_ {
        self.by_name
            .iter()
            .map(|(name, schema)| (name.as_str(), *schema))
    }

    fn collect(&mut self, schema: &'s Schema) {
        match schema {
            Schema::Record(r) if self.by_name.insert(r.name.fullname(None), schema).is_none() => {
                for f in &r.fields {
                    self.collect(&f.schema);
                }
            }
            Schema::Enum(e) => {
                self.by_name.insert(e.name.fullname(None), schema);
            }
            Schema::Fixed(f) => {
                self.by_name.insert(f.name.fullname(None), schema);
            }
            Schema::Array(a) => self.collect(&a.items),
            Schema::Map(m) => self.collect(&m.types),
            Schema::Union(u) => {
                for v in u.variants() {
                    self.collect(v);
                }
            }
            _ => {}
        }
    }

    /// Follows references until a concrete schema; `ns` is the enclosing namespace, for
    /// names written without one.
    pub fn resolve(&self, mut schema: &'s Schema, ns: Option<&str>) -> Result<&'s Schema, String> {
        for _ in 0..64 {
            let Schema::Ref { name } = schema else {
                return Ok(schema);
            };
            let full = name.fully_qualified_name(ns).fullname(None);
            schema = self
                .by_name
                .get(&full)
                .or_else(|| self.by_name.get(&name.fullname(None)))
                .copied()
                .ok_or_else(|| format!("the schema refers to {full}, which it does not define"))?;
        }
        Err("the schema's references do not end in a type".into())
    }
}

pub(super) enum Seg {
    Field(String),
    Index(usize),
    Key(String),
}

pub(super) fn render(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Field(name) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(name);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
            Seg::Key(k) => out.push_str(&format!("[{k:?}]")),
        }
    }
    out
}

/// How a schema is named in error messages: `int`, `array of string`, `record eip.x.Y`,
/// `long or null`.
pub fn type_name(schema: &Schema) -> String {
    match schema {
        Schema::Null => "null".into(),
        Schema::Boolean => "boolean".into(),
        Schema::Int => "int".into(),
        Schema::Long => "long".into(),
        Schema::Float => "float".into(),
        Schema::Double => "double".into(),
        Schema::Bytes => "bytes".into(),
        Schema::String => "string".into(),
        Schema::Array(a) => format!("array of {}", type_name(&a.items)),
        Schema::Map(m) => format!("map of {}", type_name(&m.types)),
        Schema::Union(u) => u
            .variants()
            .iter()
            .map(type_name)
            .collect::<Vec<_>>()
            .join(" or "),
        Schema::Record(r) => format!("record {}", r.name.fullname(None)),
        Schema::Enum(e) => format!("enum {}", e.name.fullname(None)),
        Schema::Fixed(f) => format!("fixed {} of {} bytes", f.name.fullname(None), f.size),
        Schema::Ref { name } => name.fullname(None),
        other => format!("{:?}", SchemaKind::from(other)).to_lowercase(),
    }
}

pub(super) fn null_index(u: &UnionSchema) -> Option<u32> {
    u.variants()
        .iter()
        .position(|v| matches!(v, Schema::Null))
        .map(|i| i as u32)
}

pub(super) fn non_null_variants(u: &UnionSchema) -> Vec<(u32, &Schema)> {
    u.variants()
        .iter()
        .enumerate()
        .filter(|(_, v)| !matches!(v, Schema::Null))
        .map(|(i, v)| (i as u32, v))
        .collect()
}

pub(super) fn field_list(r: &RecordSchema) -> String {
    let names: Vec<&str> = r.fields.iter().map(|f| f.name.as_str()).collect();
    if names.is_empty() {
        "no fields".into()
    } else {
        format!("fields {}", names.join(", "))
    }
}

/// The whole number an integer-like value holds (`int`, `long` and the date and time logical
/// types over them), or `None` for any other value.
pub(super) fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => Some(i64::from(*i)),
        Value::Long(i)
        | Value::TimeMicros(i)
        | Value::TimestampMillis(i)
        | Value::TimestampMicros(i)
        | Value::TimestampNanos(i)
        | Value::LocalTimestampMillis(i)
        | Value::LocalTimestampMicros(i)
        | Value::LocalTimestampNanos(i) => Some(*i),
        _ => None,
    }
}

pub(super) fn quote(s: &str) -> String {
    const MAX: usize = 40;
    if s.chars().count() > MAX {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut:?}…")
    } else {
        format!("{s:?}")
    }
}

pub(super) fn describe(j: &Json) -> String {
    match j {
        Json::Null => "null".into(),
        Json::Bool(b) => format!("boolean {b}"),
        Json::Number(n) => format!("number {n}"),
        Json::String(s) => format!("string {}", quote(s)),
        Json::Array(a) => format!("an array of {} items", a.len()),
        Json::Object(_) => "an object".into(),
    }
}

pub(super) fn unsupported(schema: &Schema) -> String {
    format!(
        "the schema uses {}, which the converter does not support (no logical types)",
        type_name(schema)
    )
}

pub(super) fn float_json(f: f64) -> Json {
    if f.is_nan() {
        Json::String("NaN".into())
    } else if f.is_infinite() {
        Json::String(if f > 0.0 { "Infinity" } else { "-Infinity" }.into())
    } else {
        serde_json::Number::from_f64(f)
            .map(Json::Number)
            .unwrap_or(Json::Null)
    }
}

pub(super) fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|b| char::from(*b)).collect()
}

pub(super) fn from_latin1(s: &str) -> Result<Vec<u8>, String> {
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            u8::try_from(u32::from(c)).map_err(|_| {
                format!(
                    "expected bytes as a string of code points U+0000..U+00FF, found U+{:04X} at character {i}",
                    u32::from(c)
                )
            })
        })
        .collect()
}

pub(super) fn float_out_of_range(f: f64) -> bool {
    f.is_finite() && (f as f32).is_infinite()
}
