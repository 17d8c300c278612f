//! Schema-driven conversion between JSON or XML documents and Avro values.
//!
//! The HTTP gateway accepts records as JSON or XML; this module turns them into Avro
//! [`Value`]s that validate against the record's schema, and back. It is strict on purpose:
//! a document that does not say exactly what the schema says is refused with a
//! [`ConvertError`] that names the field (`lines[1].quantity`) and the reason, so a client
//! can fix its request instead of guessing.
//!
//! # JSON
//! - A record is an object with one member per field. Unknown members are errors. A member
//!   may be absent when its field has an Avro default (the default is used) or is a union
//!   with `null` (it becomes null); any other absent field is an error.
//! - `int` and `long` are JSON integers within range (`1.0` is not an int); `float` and
//!   `double` are any JSON number, or the strings `"NaN"`, `"Infinity"` and `"-Infinity"`.
//! - `bytes` and `fixed` are strings whose characters are the byte values U+0000..U+00FF
//!   (Avro's JSON encoding); an enum is one of its symbols as a string.
//! - Arrays are arrays, maps are objects.
//! - Unions are *not* tagged: `null` selects the null branch, anything else the first other
//!   branch it converts to. (Avro's `{"string": "x"}` wrapping is not used.)
//!
//! # XML (see docs/formats.md)
//! - The root element (any name; conventionally the record's simple name) holds one child
//!   element per field, named after the field. Text content is parsed by the field's type.
//! - A nested record is a nested element. An array field is a wrapper element whose child
//!   elements (any name, e.g. `<line>` or `<item>`) are the items; `<lines/>` is empty. A map
//!   field is a wrapper of `<entry key="k">value</entry>` children.
//! - An optional (null-union) field is null when its element is absent or carries
//!   `xsi:nil="true"` (the prefix bound to `http://www.w3.org/2001/XMLSchema-instance`;
//!   an undeclared `xsi` prefix is taken to mean that namespace).
//! - `boolean` is `true`/`false`/`1`/`0`; numbers may have surrounding whitespace; floats also
//!   accept `NaN`, `INF`, `-INF`; `bytes` and `fixed` are base64 (`xsd:base64Binary`). Strings
//!   are taken exactly as written, whitespace included.
//! - Refused, each with a located error: DOCTYPE declarations and entities other than the five
//!   predefined ones and character references (no DTDs, so no XXE or entity expansion);
//!   mixed content (text beside child elements); a field element given twice; unknown
//!   elements or attributes; nesting deeper than [`MAX_XML_DEPTH`]; encodings other than UTF-8.
//!
//! Element and attribute names are matched by local name; namespaces other than XSI are not
//! interpreted.

use std::collections::HashMap;
use std::fmt;

use apache_avro::Schema;
use apache_avro::schema::{RecordField, RecordSchema, SchemaKind, UnionSchema};
use apache_avro::types::Value;
use quick_xml::events::{BytesStart, Event};
use serde_json::Value as Json;

use crate::error::{Classify, ErrorClass};

/// At most this many errors are collected from one document (the `*_all` functions); a
/// thoroughly wrong document does not turn into a huge error response.
pub const MAX_ERRORS: usize = 32;
/// XML elements nested deeper than this are refused (bounded recursion, bounded stack).
pub const MAX_XML_DEPTH: usize = 128;
/// The XML Schema instance namespace, whose `nil` attribute marks an optional field as null.
pub const XSI_NAMESPACE: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// Why a document does not convert to a value of the schema: which field, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertError {
    /// Dotted path of the offending field, with `[i]` for array items and `["k"]` for map
    /// values, e.g. `lines[1].quantity`; empty for the document as a whole.
    pub field: String,
    /// What is wrong, e.g. `expected int, found string "x"`.
    pub reason: String,
}

impl ConvertError {
    /// An error at `field` (empty for the whole document).
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> ConvertError {
        ConvertError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "field `{}`: {}", self.field, self.reason)
        }
    }
}

impl std::error::Error for ConvertError {}

impl Classify for ConvertError {
    /// A document that does not fit its schema never will: poison (a 400 at the HTTP edge).
    fn class(&self) -> ErrorClass {
        ErrorClass::Poison
    }
}

// ---------------------------------------------------------------------------------------------
// Public entry points

/// Converts a JSON document to a value of `schema`; the first error found, if any.
pub fn from_json(schema: &Schema, json: &Json) -> Result<Value, ConvertError> {
    from_json_all(schema, json).map_err(first)
}

/// Like [`from_json`], collecting up to [`MAX_ERRORS`] errors (for field-level error reports).
pub fn from_json_all(schema: &Schema, json: &Json) -> Result<Value, Vec<ConvertError>> {
    let mut conv = Conv::new(schema, None);
    let value = conv.json(schema, None, json);
    conv.finish(value)
}

/// Parses `bytes` as JSON and converts it; a parse error has an empty field and serde_json's
/// message with line and column.
pub fn from_json_bytes(schema: &Schema, bytes: &[u8]) -> Result<Value, ConvertError> {
    from_json_bytes_all(schema, bytes).map_err(first)
}

/// Like [`from_json_bytes`], collecting up to [`MAX_ERRORS`] errors.
pub fn from_json_bytes_all(schema: &Schema, bytes: &[u8]) -> Result<Value, Vec<ConvertError>> {
    let json: Json = serde_json::from_slice(bytes)
        .map_err(|e| vec![ConvertError::new("", format!("malformed JSON: {e}"))])?;
    from_json_all(schema, &json)
}

/// Parses an XML document (convention in the module docs) and converts it to a value of
/// `schema`; the first error found, if any.
pub fn from_xml(schema: &Schema, xml: &[u8]) -> Result<Value, ConvertError> {
    from_xml_all(schema, xml).map_err(first)
}

/// Like [`from_xml`], collecting up to [`MAX_ERRORS`] conversion errors. A document that is
/// not well-formed (or declares a DOCTYPE) gives exactly one error.
pub fn from_xml_all(schema: &Schema, xml: &[u8]) -> Result<Value, Vec<ConvertError>> {
    let root = parse_xml(xml).map_err(|e| vec![e])?;
    let mut conv = Conv::new(schema, Some(xml));
    let value = conv.xml(schema, None, &root, None);
    conv.finish(value)
}

/// The JSON form of `value`: records become objects, unions are unwrapped, enums are their
/// symbol, bytes and fixed are strings of Latin-1 code points, non-finite floats are the
/// strings `"NaN"`, `"Infinity"` and `"-Infinity"`. [`from_json`] reads it back.
pub fn to_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => Json::from(*i),
        Value::Long(i)
        | Value::TimeMicros(i)
        | Value::TimestampMillis(i)
        | Value::TimestampMicros(i)
        | Value::TimestampNanos(i)
        | Value::LocalTimestampMillis(i)
        | Value::LocalTimestampMicros(i)
        | Value::LocalTimestampNanos(i) => Json::from(*i),
        Value::Float(f) => float_json(f64::from(*f)),
        Value::Double(f) => float_json(*f),
        Value::Bytes(b) | Value::Fixed(_, b) => Json::String(latin1(b)),
        Value::String(s) | Value::Enum(_, s) => Json::String(s.clone()),
        Value::Union(_, inner) => to_json(inner),
        Value::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => Json::Object(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect(),
        ),
        Value::Record(fields) => Json::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect(),
        ),
        Value::Decimal(d) => Vec::<u8>::try_from(d)
            .map(|b| Json::String(latin1(&b)))
            .unwrap_or(Json::Null),
        Value::BigDecimal(d) => Json::String(d.to_string()),
        Value::Uuid(u) => Json::String(u.to_string()),
        Value::Duration(d) => {
            let bytes: [u8; 12] = d.into();
            Json::String(latin1(&bytes))
        }
    }
}

/// The XML form of `value` (convention in the module docs) under a root element named
/// `root_name` (it must be a valid XML name; anything else is replaced by `record`). Null
/// record fields are left out; null array items and map values are `xsi:nil="true"`; array
/// items are `<item>`; map entries are sorted by key. [`from_xml`] reads it back.
///
/// Characters XML 1.0 cannot carry (control characters other than tab, newline and carriage
/// return) are written as character references, which strict XML parsers refuse.
pub fn to_xml(root_name: &str, value: &Value) -> String {
    let root = if is_xml_name(root_name) {
        root_name
    } else {
        "record"
    };
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let xsi = if needs_nil(value, true) {
        format!(" xmlns:xsi=\"{XSI_NAMESPACE}\"")
    } else {
        String::new()
    };
    write_element(&mut out, root, value, &xsi);
    out.push('\n');
    out
}

fn first(mut errors: Vec<ConvertError>) -> ConvertError {
    if errors.is_empty() {
        ConvertError::new("", "conversion failed")
    } else {
        errors.swap_remove(0)
    }
}

// ---------------------------------------------------------------------------------------------
// Named types and paths

/// Every named type defined in a schema, by full name, so `Schema::Ref`s can be followed.
struct Names<'s> {
    by_name: HashMap<String, &'s Schema>,
}

impl<'s> Names<'s> {
    fn of(schema: &'s Schema) -> Names<'s> {
        let mut names = Names {
            by_name: HashMap::new(),
        };
        names.collect(schema);
        names
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

    /// Follows references until a concrete schema.
    fn resolve(&self, mut schema: &'s Schema, ns: Option<&str>) -> Result<&'s Schema, String> {
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

enum Seg {
    Field(String),
    Index(usize),
    Key(String),
}

fn render(path: &[Seg]) -> String {
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

fn type_name(schema: &Schema) -> String {
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

fn null_index(u: &UnionSchema) -> Option<u32> {
    u.variants()
        .iter()
        .position(|v| matches!(v, Schema::Null))
        .map(|i| i as u32)
}

fn non_null_variants(u: &UnionSchema) -> Vec<(u32, &Schema)> {
    u.variants()
        .iter()
        .enumerate()
        .filter(|(_, v)| !matches!(v, Schema::Null))
        .map(|(i, v)| (i as u32, v))
        .collect()
}

fn field_list(r: &RecordSchema) -> String {
    let names: Vec<&str> = r.fields.iter().map(|f| f.name.as_str()).collect();
    if names.is_empty() {
        "no fields".into()
    } else {
        format!("fields {}", names.join(", "))
    }
}

fn quote(s: &str) -> String {
    const MAX: usize = 40;
    if s.chars().count() > MAX {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut:?}…")
    } else {
        format!("{s:?}")
    }
}

fn describe(j: &Json) -> String {
    match j {
        Json::Null => "null".into(),
        Json::Bool(b) => format!("boolean {b}"),
        Json::Number(n) => format!("number {n}"),
        Json::String(s) => format!("string {}", quote(s)),
        Json::Array(a) => format!("an array of {} items", a.len()),
        Json::Object(_) => "an object".into(),
    }
}

fn unsupported(schema: &Schema) -> String {
    format!(
        "the schema uses {}, which the converter does not support (no logical types)",
        type_name(schema)
    )
}

fn float_json(f: f64) -> Json {
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

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|b| char::from(*b)).collect()
}

fn from_latin1(s: &str) -> Result<Vec<u8>, String> {
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

fn float_out_of_range(f: f64) -> bool {
    f.is_finite() && (f as f32).is_infinite()
}

// ---------------------------------------------------------------------------------------------
// The converter: shared by JSON and XML, collecting errors with their paths

struct Conv<'s, 'x> {
    names: Names<'s>,
    errors: Vec<ConvertError>,
    path: Vec<Seg>,
    /// The XML source, for line and column numbers in errors.
    xml: Option<&'x [u8]>,
}

impl<'s, 'x> Conv<'s, 'x> {
    fn new(schema: &'s Schema, xml: Option<&'x [u8]>) -> Self {
        Conv {
            names: Names::of(schema),
            errors: Vec::new(),
            path: Vec::new(),
            xml,
        }
    }

    fn finish(self, value: Option<Value>) -> Result<Value, Vec<ConvertError>> {
        match value {
            Some(v) if self.errors.is_empty() => Ok(v),
            _ if self.errors.is_empty() => Err(vec![ConvertError::new("", "conversion failed")]),
            _ => Err(self.errors),
        }
    }

    fn fail<T>(&mut self, reason: impl Into<String>) -> Option<T> {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(ConvertError {
                field: render(&self.path),
                reason: reason.into(),
            });
        }
        None
    }

    fn full(&self) -> bool {
        self.errors.len() >= MAX_ERRORS
    }

    /// Runs `f` and reports whether it succeeded, dropping the errors it recorded (trying
    /// union branches).
    fn attempt<T>(&mut self, f: impl FnOnce(&mut Self) -> Option<T>) -> Option<T> {
        let saved = std::mem::take(&mut self.errors);
        let out = f(self);
        let failed = !self.errors.is_empty();
        self.errors = saved;
        if failed { None } else { out }
    }

    fn resolve(&mut self, schema: &'s Schema, ns: Option<&'s str>) -> Option<&'s Schema> {
        match self.names.resolve(schema, ns) {
            Ok(s) => Some(s),
            Err(reason) => self.fail(reason),
        }
    }

    fn with<T>(&mut self, seg: Seg, f: impl FnOnce(&mut Self) -> Option<T>) -> Option<T> {
        self.path.push(seg);
        let out = f(self);
        self.path.pop();
        out
    }

    /// The value of a record field that the document leaves out.
    fn absent(&mut self, field: &'s RecordField, ns: Option<&'s str>) -> Option<Value> {
        if let Some(default) = &field.default {
            return self.default(&field.schema, ns, default);
        }
        let schema = self.resolve(&field.schema, ns)?;
        match schema {
            Schema::Union(u) => {
                if let Some(i) = null_index(u) {
                    return Some(Value::Union(i, Box::new(Value::Null)));
                }
            }
            Schema::Null => return Some(Value::Null),
            _ => {}
        }
        self.fail(format!(
            "missing required field of type {}",
            type_name(schema)
        ))
    }

    /// A field's Avro default (JSON; for a union, of its first branch) as a value.
    fn default(&mut self, schema: &'s Schema, ns: Option<&'s str>, json: &Json) -> Option<Value> {
        let resolved = self.resolve(schema, ns)?;
        let out = match resolved {
            Schema::Union(u) => {
                let first = u.variants().first()?;
                self.attempt(|c| c.json(first, ns, json))
                    .map(|v| Value::Union(0, Box::new(v)))
            }
            other => self.attempt(|c| c.json(other, ns, json)),
        };
        match out {
            Some(v) => Some(v),
            None => self.fail(format!(
                "the schema's default {json} does not fit the field's type {}",
                type_name(resolved)
            )),
        }
    }

    // ----- JSON

    fn json(&mut self, schema: &'s Schema, ns: Option<&'s str>, json: &Json) -> Option<Value> {
        let schema = self.resolve(schema, ns)?;
        let mismatch = |c: &mut Self| -> Option<Value> {
            c.fail(format!(
                "expected {}, found {}",
                type_name(schema),
                describe(json)
            ))
        };
        match schema {
            Schema::Null => match json {
                Json::Null => Some(Value::Null),
                _ => mismatch(self),
            },
            Schema::Boolean => match json {
                Json::Bool(b) => Some(Value::Boolean(*b)),
                _ => mismatch(self),
            },
            Schema::Int => match json {
                Json::Number(n) if n.is_i64() || n.is_u64() => {
                    match n.as_i64().and_then(|i| i32::try_from(i).ok()) {
                        Some(i) => Some(Value::Int(i)),
                        None => self.fail(format!("{n} is out of range for int")),
                    }
                }
                _ => mismatch(self),
            },
            Schema::Long => match json {
                Json::Number(n) if n.is_i64() => n.as_i64().map(Value::Long),
                Json::Number(n) if n.is_u64() => self.fail(format!("{n} is out of range for long")),
                _ => mismatch(self),
            },
            Schema::Float | Schema::Double => {
                let f = match json {
                    Json::Number(n) => n.as_f64(),
                    Json::String(s) => match s.as_str() {
                        "NaN" => Some(f64::NAN),
                        "Infinity" => Some(f64::INFINITY),
                        "-Infinity" => Some(f64::NEG_INFINITY),
                        _ => None,
                    },
                    _ => None,
                };
                match (f, schema) {
                    (None, _) => mismatch(self),
                    (Some(f), Schema::Float) if float_out_of_range(f) => {
                        self.fail(format!("{json} is out of range for float"))
                    }
                    (Some(f), Schema::Float) => Some(Value::Float(f as f32)),
                    (Some(f), _) => Some(Value::Double(f)),
                }
            }
            Schema::String => match json {
                Json::String(s) => Some(Value::String(s.clone())),
                _ => mismatch(self),
            },
            Schema::Bytes => match json {
                Json::String(s) => match from_latin1(s) {
                    Ok(b) => Some(Value::Bytes(b)),
                    Err(reason) => self.fail(reason),
                },
                _ => mismatch(self),
            },
            Schema::Fixed(f) => match json {
                Json::String(s) => match from_latin1(s) {
                    Ok(b) if b.len() == f.size => Some(Value::Fixed(f.size, b)),
                    Ok(b) => self.fail(format!(
                        "expected {} bytes for {}, found {}",
                        f.size,
                        type_name(schema),
                        b.len()
                    )),
                    Err(reason) => self.fail(reason),
                },
                _ => mismatch(self),
            },
            Schema::Enum(e) => match json {
                Json::String(s) => match e.symbols.iter().position(|x| x == s) {
                    Some(i) => Some(Value::Enum(i as u32, s.clone())),
                    None => self.fail(format!(
                        "expected one of the symbols {} of {}, found string {}",
                        e.symbols.join(", "),
                        type_name(schema),
                        quote(s)
                    )),
                },
                _ => mismatch(self),
            },
            Schema::Array(a) => match json {
                Json::Array(items) => {
                    let mut out = Vec::with_capacity(items.len());
                    let mut ok = true;
                    for (i, item) in items.iter().enumerate() {
                        match self.with(Seg::Index(i), |c| c.json(&a.items, ns, item)) {
                            Some(v) => out.push(v),
                            None => ok = false,
                        }
                        if self.full() {
                            return None;
                        }
                    }
                    ok.then_some(Value::Array(out))
                }
                _ => mismatch(self),
            },
            Schema::Map(m) => match json {
                Json::Object(entries) => {
                    let mut out = HashMap::with_capacity(entries.len());
                    let mut ok = true;
                    for (k, v) in entries {
                        match self.with(Seg::Key(k.clone()), |c| c.json(&m.types, ns, v)) {
                            Some(v) => {
                                out.insert(k.clone(), v);
                            }
                            None => ok = false,
                        }
                        if self.full() {
                            return None;
                        }
                    }
                    ok.then_some(Value::Map(out))
                }
                _ => mismatch(self),
            },
            Schema::Union(u) => {
                if json.is_null()
                    && let Some(i) = null_index(u)
                {
                    return Some(Value::Union(i, Box::new(Value::Null)));
                }
                let candidates = non_null_variants(u);
                if let [(i, only)] = candidates.as_slice() {
                    let i = *i;
                    return self
                        .json(only, ns, json)
                        .map(|v| Value::Union(i, Box::new(v)));
                }
                for (i, variant) in candidates {
                    if let Some(v) = self.attempt(|c| c.json(variant, ns, json)) {
                        return Some(Value::Union(i, Box::new(v)));
                    }
                }
                mismatch(self)
            }
            Schema::Record(r) => {
                let Json::Object(obj) = json else {
                    return self.fail(format!(
                        "expected {} (a JSON object), found {}",
                        type_name(schema),
                        describe(json)
                    ));
                };
                let inner_ns = r.name.namespace().or(ns);
                let mut ok = true;
                for key in obj.keys() {
                    if !r.lookup.contains_key(key) {
                        ok = false;
                        let reason = format!(
                            "unknown field; {} has {}",
                            r.name.fullname(None),
                            field_list(r)
                        );
                        self.with(Seg::Field(key.clone()), |c| c.fail::<()>(reason));
                    }
                }
                let mut out = Vec::with_capacity(r.fields.len());
                for f in &r.fields {
                    let v = self.with(Seg::Field(f.name.clone()), |c| match obj.get(&f.name) {
                        Some(j) => c.json(&f.schema, inner_ns, j),
                        None => c.absent(f, inner_ns),
                    });
                    match v {
                        Some(v) => out.push((f.name.clone(), v)),
                        None => ok = false,
                    }
                    if self.full() {
                        return None;
                    }
                }
                ok.then_some(Value::Record(out))
            }
            other => self.fail(unsupported(other)),
        }
    }

    // ----- XML

    fn at(&self, el: &Element) -> String {
        match self.xml {
            Some(xml) => {
                let (line, col) = locate(xml, el.pos);
                format!(" (<{}> at line {line}, column {col})", el.name)
            }
            None => String::new(),
        }
    }

    fn fail_at<T>(&mut self, el: &Element, reason: impl Into<String>) -> Option<T> {
        let reason = format!("{}{}", reason.into(), self.at(el));
        self.fail(reason)
    }

    /// Refuses attributes other than `allowed` (the `key` of a map entry).
    fn no_attributes(&mut self, el: &Element, allowed: Option<&str>) -> bool {
        let mut ok = true;
        for a in &el.attrs {
            if Some(a.name.as_str()) != allowed {
                ok = false;
                self.fail_at::<()>(
                    el,
                    format!(
                        "unexpected attribute `{}` (fields are child elements)",
                        a.name
                    ),
                );
            }
        }
        ok
    }

    fn no_text(&mut self, el: &Element) -> bool {
        let text = el.text.trim();
        if text.is_empty() {
            true
        } else {
            self.fail_at::<()>(
                el,
                format!(
                    "mixed content: text {} where only child elements are allowed",
                    quote(text)
                ),
            );
            false
        }
    }

    fn xml(
        &mut self,
        schema: &'s Schema,
        ns: Option<&'s str>,
        el: &Element,
        allowed_attr: Option<&str>,
    ) -> Option<Value> {
        let schema = self.resolve(schema, ns)?;
        if let Some(nil) = &el.nil {
            match nil.trim() {
                "true" | "1" => {
                    return match schema {
                        Schema::Union(u) if null_index(u).is_some() => {
                            let i = null_index(u)?;
                            if !el.children.is_empty() || !el.text.trim().is_empty() {
                                return self.fail_at(el, "xsi:nil=\"true\" element has content");
                            }
                            Some(Value::Union(i, Box::new(Value::Null)))
                        }
                        Schema::Null => Some(Value::Null),
                        other => self.fail_at(
                            el,
                            format!(
                                "xsi:nil=\"true\" on a field that is not optional (type {})",
                                type_name(other)
                            ),
                        ),
                    };
                }
                "false" | "0" => {}
                other => {
                    return self.fail_at(
                        el,
                        format!("xsi:nil must be true or false, found {}", quote(other)),
                    );
                }
            }
        }
        match schema {
            Schema::Union(u) => {
                let candidates = non_null_variants(u);
                if let [(i, only)] = candidates.as_slice() {
                    let i = *i;
                    return self
                        .xml(only, ns, el, allowed_attr)
                        .map(|v| Value::Union(i, Box::new(v)));
                }
                for (i, variant) in candidates {
                    if let Some(v) = self.attempt(|c| c.xml(variant, ns, el, allowed_attr)) {
                        return Some(Value::Union(i, Box::new(v)));
                    }
                }
                self.fail_at(
                    el,
                    format!(
                        "expected {}, found {}",
                        type_name(schema),
                        describe_element(el)
                    ),
                )
            }
            Schema::Record(r) => {
                let attrs_ok = self.no_attributes(el, allowed_attr);
                let text_ok = self.no_text(el);
                let inner_ns = r.name.namespace().or(ns);
                let mut ok = attrs_ok && text_ok;
                let mut by_field: HashMap<&str, &Element> = HashMap::new();
                for child in &el.children {
                    if !r.lookup.contains_key(&child.name) {
                        ok = false;
                        let reason = format!(
                            "unknown element <{}>; {} has {}",
                            child.name,
                            r.name.fullname(None),
                            field_list(r)
                        );
                        self.with(Seg::Field(child.name.clone()), |c| {
                            c.fail_at::<()>(child, reason)
                        });
                    } else if by_field.insert(child.name.as_str(), child).is_some() {
                        ok = false;
                        self.with(Seg::Field(child.name.clone()), |c| {
                            c.fail_at::<()>(child, "the field's element appears more than once")
                        });
                    }
                }
                let mut out = Vec::with_capacity(r.fields.len());
                for f in &r.fields {
                    let v = self.with(Seg::Field(f.name.clone()), |c| {
                        match by_field.get(f.name.as_str()) {
                            Some(child) => c.xml(&f.schema, inner_ns, child, None),
                            None => {
                                let before = c.errors.len();
                                let v = c.absent(f, inner_ns);
                                // Locate the error at the record element that lacks the field.
                                let at = c.at(el);
                                for e in c.errors.iter_mut().skip(before) {
                                    e.reason.push_str(&at);
                                }
                                v
                            }
                        }
                    });
                    match v {
                        Some(v) => out.push((f.name.clone(), v)),
                        None => ok = false,
                    }
                    if self.full() {
                        return None;
                    }
                }
                ok.then_some(Value::Record(out))
            }
            Schema::Array(a) => {
                let mut ok = self.no_attributes(el, allowed_attr) & self.no_text(el);
                let mut out = Vec::with_capacity(el.children.len());
                for (i, child) in el.children.iter().enumerate() {
                    match self.with(Seg::Index(i), |c| c.xml(&a.items, ns, child, None)) {
                        Some(v) => out.push(v),
                        None => ok = false,
                    }
                    if self.full() {
                        return None;
                    }
                }
                ok.then_some(Value::Array(out))
            }
            Schema::Map(m) => {
                let mut ok = self.no_attributes(el, allowed_attr) & self.no_text(el);
                let mut out = HashMap::with_capacity(el.children.len());
                for child in &el.children {
                    if child.name != "entry" {
                        ok = false;
                        self.fail_at::<()>(
                            child,
                            "expected <entry key=\"...\"> elements inside a map field",
                        );
                        continue;
                    }
                    let Some(key) = child.attr("key") else {
                        ok = false;
                        self.fail_at::<()>(child, "map <entry> without a key attribute");
                        continue;
                    };
                    if out.contains_key(key) {
                        ok = false;
                        self.with(Seg::Key(key.to_string()), |c| {
                            c.fail_at::<()>(child, "duplicate map key")
                        });
                        continue;
                    }
                    match self.with(Seg::Key(key.to_string()), |c| {
                        c.xml(&m.types, ns, child, Some("key"))
                    }) {
                        Some(v) => {
                            out.insert(key.to_string(), v);
                        }
                        None => ok = false,
                    }
                    if self.full() {
                        return None;
                    }
                }
                ok.then_some(Value::Map(out))
            }
            scalar => {
                let attrs_ok = self.no_attributes(el, allowed_attr);
                if let Some(child) = el.children.first() {
                    return self.fail_at(
                        el,
                        format!(
                            "expected {} as text, found element <{}>",
                            type_name(scalar),
                            child.name
                        ),
                    );
                }
                let value = match xml_scalar(scalar, &el.text) {
                    Ok(v) => v,
                    Err(reason) => return self.fail_at(el, reason),
                };
                attrs_ok.then_some(value)
            }
        }
    }
}

fn describe_element(el: &Element) -> String {
    if !el.children.is_empty() {
        format!("element <{}> with child elements", el.name)
    } else {
        format!("text {}", quote(&el.text))
    }
}

/// Parses the text of a scalar element by its Avro type.
fn xml_scalar(schema: &Schema, text: &str) -> Result<Value, String> {
    let t = text.trim();
    let mismatch = || format!("expected {}, found text {}", type_name(schema), quote(text));
    let integer = |max: i128, min: i128, name: &str| -> Result<i128, String> {
        match t.parse::<i128>() {
            Ok(i) if i >= min && i <= max => Ok(i),
            Ok(i) => Err(format!("{i} is out of range for {name}")),
            Err(_) => {
                let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
                if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                    Err(format!("{t} is out of range for {name}"))
                } else {
                    Err(mismatch())
                }
            }
        }
    };
    let float = || -> Result<f64, String> {
        match t {
            "NaN" => Ok(f64::NAN),
            "INF" | "+INF" | "Infinity" => Ok(f64::INFINITY),
            "-INF" | "-Infinity" => Ok(f64::NEG_INFINITY),
            _ if t.is_empty()
                || t.chars()
                    .any(|c| c.is_ascii_alphabetic() && !"eE".contains(c)) =>
            {
                Err(mismatch())
            }
            _ => t.parse::<f64>().map_err(|_| mismatch()),
        }
    };
    match schema {
        Schema::Null => {
            if t.is_empty() {
                Ok(Value::Null)
            } else {
                Err(mismatch())
            }
        }
        Schema::Boolean => match t {
            "true" | "1" => Ok(Value::Boolean(true)),
            "false" | "0" => Ok(Value::Boolean(false)),
            _ => Err(mismatch()),
        },
        Schema::Int => {
            integer(i128::from(i32::MAX), i128::from(i32::MIN), "int").map(|i| Value::Int(i as i32))
        }
        Schema::Long => integer(i128::from(i64::MAX), i128::from(i64::MIN), "long")
            .map(|i| Value::Long(i as i64)),
        Schema::Float => {
            let f = float()?;
            if float_out_of_range(f) {
                Err(format!("{t} is out of range for float"))
            } else {
                Ok(Value::Float(f as f32))
            }
        }
        Schema::Double => float().map(Value::Double),
        Schema::String => Ok(Value::String(text.to_string())),
        Schema::Bytes => base64_decode(text).map(Value::Bytes),
        Schema::Fixed(f) => {
            let b = base64_decode(text)?;
            if b.len() == f.size {
                Ok(Value::Fixed(f.size, b))
            } else {
                Err(format!(
                    "expected {} bytes for {}, found {}",
                    f.size,
                    type_name(schema),
                    b.len()
                ))
            }
        }
        Schema::Enum(e) => match e.symbols.iter().position(|s| s == t) {
            Some(i) => Ok(Value::Enum(i as u32, t.to_string())),
            None => Err(format!(
                "expected one of the symbols {} of {}, found text {}",
                e.symbols.join(", "),
                type_name(schema),
                quote(text)
            )),
        },
        other => Err(unsupported(other)),
    }
}

// ---------------------------------------------------------------------------------------------
// A small XML tree, built with quick-xml, refusing what the convention does not allow

struct Attr {
    name: String,
    value: String,
}

struct Element {
    /// Local name (prefix dropped).
    name: String,
    /// Attributes other than namespace declarations and `xsi:*`.
    attrs: Vec<Attr>,
    /// The raw value of `xsi:nil`, when present.
    nil: Option<String>,
    children: Vec<Element>,
    /// The element's own text, concatenated.
    text: String,
    /// Byte offset of the start tag.
    pos: usize,
}

impl Element {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.value.as_str())
    }
}

/// 1-based line and column of byte offset `pos`.
fn locate(xml: &[u8], pos: usize) -> (usize, usize) {
    let before = &xml[..pos.min(xml.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let col = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, col)
}

fn xml_error(xml: &[u8], pos: u64, reason: impl fmt::Display) -> ConvertError {
    let (line, col) = locate(xml, usize::try_from(pos).unwrap_or(usize::MAX));
    ConvertError::new(
        "",
        format!("malformed XML at line {line}, column {col}: {reason}"),
    )
}

fn utf8<'a>(bytes: &'a [u8], what: &str) -> Result<&'a str, String> {
    std::str::from_utf8(bytes).map_err(|_| format!("{what} is not valid UTF-8"))
}

/// One level of namespace declarations: (prefix, uri); prefix "" is the default namespace.
type Scope = Vec<(String, String)>;

fn resolve_prefix<'a>(scopes: &'a [Scope], prefix: &str) -> Option<&'a str> {
    scopes
        .iter()
        .rev()
        .flat_map(|s| s.iter().rev())
        .find(|(p, _)| p == prefix)
        .map(|(_, uri)| uri.as_str())
}

fn open(start: &BytesStart<'_>, pos: usize, scopes: &mut Vec<Scope>) -> Result<Element, String> {
    let qname = start.name();
    let name = utf8(qname.local_name().as_ref(), "an element name")?.to_string();
    let mut scope = Scope::new();
    let mut raw = Vec::new();
    for attr in start.attributes() {
        let attr = attr.map_err(|e| e.to_string())?;
        let key = utf8(attr.key.as_ref(), "an attribute name")?.to_string();
        let value = attr
            .unescape_value()
            .map_err(|e| format!("attribute `{key}`: {e}"))?
            .into_owned();
        if key == "xmlns" {
            scope.push((String::new(), value));
        } else if let Some(prefix) = key.strip_prefix("xmlns:") {
            scope.push((prefix.to_string(), value));
        } else {
            raw.push((key, value));
        }
    }
    scopes.push(scope);
    let mut el = Element {
        name,
        attrs: Vec::new(),
        nil: None,
        children: Vec::new(),
        text: String::new(),
        pos,
    };
    for (key, value) in raw {
        let (prefix, local) = match key.split_once(':') {
            Some((p, l)) => (Some(p), l),
            None => (None, key.as_str()),
        };
        let is_xsi = prefix.is_some_and(|p| match resolve_prefix(scopes, p) {
            Some(uri) => uri == XSI_NAMESPACE,
            None => p == "xsi",
        });
        if is_xsi {
            if local == "nil" {
                el.nil = Some(value);
            }
            // Other xsi attributes (schemaLocation, type) carry no data: ignored.
        } else {
            el.attrs.push(Attr {
                name: key.clone(),
                value,
            });
        }
    }
    Ok(el)
}

fn predefined_entity(name: &str) -> Option<char> {
    match name {
        "lt" => Some('<'),
        "gt" => Some('>'),
        "amp" => Some('&'),
        "apos" => Some('\''),
        "quot" => Some('"'),
        _ => None,
    }
}

fn parse_xml(xml: &[u8]) -> Result<Element, ConvertError> {
    let mut reader = quick_xml::Reader::from_reader(xml);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Element> = Vec::new();
    let mut scopes: Vec<Scope> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let pos = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
        let event = reader
            .read_event()
            .map_err(|e| xml_error(xml, reader.error_position(), e))?;
        let err = |reason: &dyn fmt::Display| xml_error(xml, pos as u64, reason);
        // Text outside the root element may only be whitespace.
        let push_text = |stack: &mut Vec<Element>, text: &str| -> Result<(), ConvertError> {
            match stack.last_mut() {
                Some(top) => {
                    top.text.push_str(text);
                    Ok(())
                }
                None if text.trim().is_empty() => Ok(()),
                None => Err(err(&format!(
                    "text {} outside the root element",
                    quote(text.trim())
                ))),
            }
        };
        match event {
            Event::Decl(decl) => {
                if let Some(Ok(enc)) = decl.encoding()
                    && !enc.eq_ignore_ascii_case(b"utf-8")
                {
                    return Err(err(&format!(
                        "encoding {} is not supported; send UTF-8",
                        String::from_utf8_lossy(&enc)
                    )));
                }
            }
            Event::DocType(_) => {
                return Err(err(
                    &"DOCTYPE declarations are not allowed (no DTDs, no entity definitions)",
                ));
            }
            Event::PI(_) | Event::Comment(_) => {}
            Event::Start(_) | Event::Empty(_) if root.is_some() && stack.is_empty() => {
                return Err(err(&"more than one root element"));
            }
            Event::Start(start) => {
                if stack.len() >= MAX_XML_DEPTH {
                    return Err(err(&format!(
                        "elements are nested deeper than {MAX_XML_DEPTH} levels"
                    )));
                }
                let el = open(&start, pos, &mut scopes).map_err(|r| err(&r))?;
                stack.push(el);
            }
            Event::Empty(start) => {
                let el = open(&start, pos, &mut scopes).map_err(|r| err(&r))?;
                scopes.pop();
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::End(_) => {
                scopes.pop();
                let Some(el) = stack.pop() else {
                    return Err(err(&"end tag without a start tag"));
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Text(text) => {
                let text = text.xml10_content().map_err(|e| err(&e))?;
                push_text(&mut stack, &text)?;
            }
            Event::CData(data) => {
                let text = data.decode().map_err(|e| err(&e))?;
                push_text(&mut stack, &text)?;
            }
            Event::GeneralRef(reference) => {
                let c = if reference.is_char_ref() {
                    reference
                        .resolve_char_ref()
                        .map_err(|e| err(&e))?
                        .ok_or_else(|| err(&"bad character reference"))?
                } else {
                    let name = reference.decode().map_err(|e| err(&e))?;
                    predefined_entity(&name).ok_or_else(|| {
                        err(&format!(
                            "undefined entity &{name}; (only &lt; &gt; &amp; &apos; &quot; and character references are allowed)"
                        ))
                    })?
                };
                let mut buf = [0u8; 4];
                push_text(&mut stack, c.encode_utf8(&mut buf))?;
            }
            Event::Eof => break,
        }
    }
    if let Some(open) = stack.last() {
        return Err(xml_error(
            xml,
            xml.len() as u64,
            format!("the document ends inside <{}>", open.name),
        ));
    }
    root.ok_or_else(|| xml_error(xml, 0, "no root element"))
}

// ---------------------------------------------------------------------------------------------
// Writing XML

fn is_xml_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.contains(':')
}

fn unwrap_union(value: &Value) -> &Value {
    match value {
        Value::Union(_, inner) => unwrap_union(inner),
        other => other,
    }
}

/// Whether writing `value` needs `xsi:nil` (a null that can't be left out).
fn needs_nil(value: &Value, position_required: bool) -> bool {
    match unwrap_union(value) {
        Value::Null => position_required,
        Value::Record(fields) => fields.iter().any(|(_, v)| needs_nil(v, false)),
        Value::Array(items) => items.iter().any(|v| needs_nil(v, true)),
        Value::Map(entries) => entries.values().any(|v| needs_nil(v, true)),
        _ => false,
    }
}

fn escape_into(out: &mut String, text: &str, attribute: bool) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' if attribute => out.push_str("&quot;"),
            '\r' => out.push_str("&#13;"),
            '\n' | '\t' if attribute => out.push_str(&format!("&#{};", u32::from(c))),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t') => {
                out.push_str(&format!("&#{};", u32::from(c)))
            }
            c => out.push(c),
        }
    }
}

fn format_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "INF" } else { "-INF" }.into()
    } else {
        format!("{f}")
    }
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::Boolean(b) => b.to_string(),
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => i.to_string(),
        Value::Long(i)
        | Value::TimeMicros(i)
        | Value::TimestampMillis(i)
        | Value::TimestampMicros(i)
        | Value::TimestampNanos(i)
        | Value::LocalTimestampMillis(i)
        | Value::LocalTimestampMicros(i)
        | Value::LocalTimestampNanos(i) => i.to_string(),
        Value::Float(f) => {
            // The shortest text that reads back as the same f32.
            if f.is_finite() {
                format!("{f}")
            } else {
                format_float(f64::from(*f))
            }
        }
        Value::Double(f) => format_float(*f),
        Value::Bytes(b) | Value::Fixed(_, b) => base64_encode(b),
        Value::String(s) | Value::Enum(_, s) => s.clone(),
        Value::Decimal(d) => Vec::<u8>::try_from(d)
            .map(|b| base64_encode(&b))
            .unwrap_or_default(),
        Value::BigDecimal(d) => d.to_string(),
        Value::Uuid(u) => u.to_string(),
        Value::Duration(d) => {
            let bytes: [u8; 12] = d.into();
            base64_encode(&bytes)
        }
        Value::Null | Value::Union(..) | Value::Array(_) | Value::Map(_) | Value::Record(_) => {
            String::new()
        }
    }
}

fn write_element(out: &mut String, name: &str, value: &Value, attrs: &str) {
    match unwrap_union(value) {
        Value::Null => {
            out.push_str(&format!("<{name}{attrs} xsi:nil=\"true\"/>"));
        }
        Value::Record(fields) => {
            out.push_str(&format!("<{name}{attrs}>"));
            for (field, v) in fields {
                if !matches!(unwrap_union(v), Value::Null) {
                    write_element(out, field, v, "");
                }
            }
            out.push_str(&format!("</{name}>"));
        }
        Value::Array(items) => {
            out.push_str(&format!("<{name}{attrs}>"));
            for item in items {
                write_element(out, "item", item, "");
            }
            out.push_str(&format!("</{name}>"));
        }
        Value::Map(entries) => {
            out.push_str(&format!("<{name}{attrs}>"));
            let mut keys: Vec<&String> = entries.keys().collect();
            keys.sort();
            for key in keys {
                let mut attr = String::from(" key=\"");
                escape_into(&mut attr, key, true);
                attr.push('"');
                if let Some(v) = entries.get(key) {
                    write_element(out, "entry", v, &attr);
                }
            }
            out.push_str(&format!("</{name}>"));
        }
        scalar => {
            out.push_str(&format!("<{name}{attrs}>"));
            escape_into(out, &scalar_text(scalar), false);
            out.push_str(&format!("</{name}>"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// base64 (RFC 4648, standard alphabet, padded), for bytes in XML

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let bad = || format!("expected base64 bytes, found text {}", quote(text));
    let clean: Vec<u8> = text
        .bytes()
        .filter(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .collect();
    if !clean.len().is_multiple_of(4) {
        return Err(bad());
    }
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    let chunks = clean.len() / 4;
    for (ci, chunk) in clean.chunks(4).enumerate() {
        let pad = chunk.iter().rev().take_while(|b| **b == b'=').count();
        if pad > 2 || (pad > 0 && ci + 1 != chunks) {
            return Err(bad());
        }
        let mut n: u32 = 0;
        for (i, b) in chunk.iter().enumerate() {
            let v = if i >= 4 - pad {
                0
            } else {
                B64.iter().position(|x| x == b).ok_or_else(bad)? as u32
            };
            n = (n << 6) | v;
        }
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        // Non-canonical padding bits would make two texts decode to the same bytes.
        if (pad == 1 && decoded[2] != 0) || (pad == 2 && decoded[1] != 0) {
            return Err(bad());
        }
        out.extend_from_slice(&decoded[..3 - pad]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
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
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number)),
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
                            Value::Map(
                                tags.into_iter().map(|(k, v)| (k, Value::Long(v))).collect(),
                            ),
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
}
