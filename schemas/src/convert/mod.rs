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

use std::fmt;

use apache_avro::Schema;
use apache_avro::types::Value;
use serde_json::Value as Json;

use crate::error::{Classify, ErrorClass};

mod base64;
mod conv;
mod json;
mod names;
mod xml;
mod xml_tree;

#[cfg(test)]
mod tests;

use conv::Conv;
pub use names::{Names, type_name};
use names::{float_json, latin1};
use xml::{is_xml_name, needs_nil, write_element};
use xml_tree::parse_xml;

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
        // What is left are the integer-like values.
        integral => names::integer(integral).map_or(Json::Null, Json::from),
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
